#!/usr/bin/env bash
# Starts the Selfcast demo: a source on the built-in test pattern and three viewers on loopback,
# all in one process. It prints the player page URL; Ctrl-C stops it.
# Extra arguments go to `peer demo` (for example: --viewers 20 --http-port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run -p peer -- demo "$@"
