#!/usr/bin/env bash
# Installs what Selfcast needs on a Debian machine, only where it is missing.
#
#   scripts/setup.sh            build and demo needs: FFmpeg dev libraries, clang, pkg-config,
#                               the ffmpeg CLI, a font for the simulator's plots, Node.js/npm
#                               and the web player's npm packages
#   scripts/setup.sh --tests    also what the tests need: Chromium
#
# As root it installs Debian packages with apt-get; as another user it prints the command to
# run and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1

packages=(libavcodec-dev libavformat-dev libavutil-dev libavdevice-dev libavfilter-dev
          libswscale-dev libswresample-dev clang libclang-dev pkg-config ffmpeg
          fonts-dejavu-core)
# Node.js may come from elsewhere than Debian (NodeSource ships npm inside nodejs): only ask
# Debian for it when the commands are missing.
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
[ "$want_tests" = 1 ] && packages+=(chromium)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: not root; please run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: Rust is missing; install it from https://rustup.rs (stable, 1.85 or newer)" >&2
  exit 1
fi

# The web player's npm packages (hls.js; playwright-core drives Chromium in the tests).
if [ ! -d web-player/node_modules/hls.js ] || [ ! -d web-player/node_modules/playwright-core ] \
   || [ web-player/package-lock.json -nt web-player/node_modules/.package-lock.json ]; then
  echo "setup: installing the web player's npm packages"
  (cd web-player && npm ci --no-audit --no-fund --loglevel=error)
fi
