// Selfcast player: plays the local peer's HLS stream with hls.js (native HLS as a fallback) and
// shows the peer's status next to the player's own measurements.
//
// The page is served by the gateway: /hls.js (from node_modules), /stream.m3u8, /init.mp4,
// /seg/N.m4s, /api/status. The stream may not exist yet when the page opens (the peer is still
// joining): the player polls the playlist until it answers, and starts over after fatal errors.
'use strict';

const PLAYLIST_URL = '/stream.m3u8';
const STATUS_URL = '/api/status';
const HLS_URL = '/hls.js';

/// Retry a load error every second or so, without end: a not-yet-ready playlist or a segment the
/// peer is still fetching is normal in a swarm.
const RETRY_FOREVER = { maxNumRetry: Infinity, retryDelayMs: 500, maxRetryDelayMs: 2000, backoff: 'linear' };

/// hls.js tuned for ~1 s segments near the live edge.
const HLS_CONFIG = {
  lowLatencyMode: false, // no LL-HLS parts: the peer serves whole ~1 s segments
  liveSyncDurationCount: 3, // play 3 segments behind the live edge
  liveMaxLatencyDurationCount: 8, // further behind than this: jump forward
  maxLiveSyncPlaybackRate: 1.1, // or catch up gently by playing up to 10 % faster
  maxBufferLength: 8,
  backBufferLength: 30,
  startFragPrefetch: true,
  manifestLoadPolicy: {
    default: { maxTimeToFirstByteMs: 5000, maxLoadTimeMs: 10000, timeoutRetry: RETRY_FOREVER, errorRetry: RETRY_FOREVER },
  },
  playlistLoadPolicy: {
    default: { maxTimeToFirstByteMs: 5000, maxLoadTimeMs: 10000, timeoutRetry: RETRY_FOREVER, errorRetry: RETRY_FOREVER },
  },
  // The gateway holds a request for a declared but missing segment up to 10 s.
  fragLoadPolicy: {
    default: {
      maxTimeToFirstByteMs: 12000,
      maxLoadTimeMs: 20000,
      timeoutRetry: { maxNumRetry: 4, retryDelayMs: 0, maxRetryDelayMs: 0 },
      errorRetry: { maxNumRetry: 6, retryDelayMs: 500, maxRetryDelayMs: 4000 },
    },
  },
};

const video = document.getElementById('video');
const message = document.getElementById('message');
const badge = document.getElementById('badge');
const playerStats = document.getElementById('player-stats');
const peerStats = document.getElementById('peer-stats');

/// What the page measured, also readable by tests as `window.selfcast`.
const state = {
  engine: 'none',
  hls: null,
  pageOpened: performance.now(),
  startupMs: null,
  playingSince: null,
  stalls: 0,
  stalledMs: 0,
  stallStarted: null,
  restarts: 0,
  lastError: null,
  live: null,
};
window.selfcast = state;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function showMessage(html, isError = false) {
  message.innerHTML = html;
  message.classList.toggle('error', isError);
  message.hidden = false;
}

function hideMessage() {
  message.hidden = true;
}

// ---- starting the stream ------------------------------------------------------------------

async function main() {
  trackPlayback();
  setInterval(renderPlayerStats, 500);
  pollStatus();

  const hlsLoaded = await loadScript(HLS_URL);
  if (hlsLoaded && window.Hls && window.Hls.isSupported()) {
    state.engine = `hls.js ${window.Hls.version}`;
    startHlsJs();
  } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
    state.engine = 'native HLS';
    if (!hlsLoaded) state.lastError = 'hls.js missing (run npm ci in web-player/)';
    startNative();
  } else if (!hlsLoaded) {
    showMessage(
      'hls.js is missing. On the machine running the peer, run <code>npm ci</code> in ' +
        '<code>web-player/</code>, then reload this page.',
      true,
    );
  } else {
    showMessage('This browser cannot play HLS (no Media Source Extensions).', true);
  }
}

/// Loads a classic script; resolves to whether it loaded (a 503 from the gateway is a failure).
function loadScript(src) {
  return new Promise((resolve) => {
    const script = document.createElement('script');
    script.src = src;
    script.onload = () => resolve(true);
    script.onerror = () => resolve(false);
    document.head.appendChild(script);
  });
}

/// Resolves to the playlist's text once the gateway answers it: until then the peer has nothing
/// to play.
async function waitForStream() {
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await fetch(PLAYLIST_URL, { cache: 'no-store' });
      if (response.ok) {
        const text = await response.text();
        // VOD and EVENT playlists are on demand; a live window has no playlist type.
        const vod = text.includes('#EXT-X-PLAYLIST-TYPE:');
        state.live = !vod;
        badge.textContent = vod ? 'VOD' : 'LIVE';
        badge.classList.toggle('vod', vod);
        badge.hidden = false;
        return text;
      }
    } catch (_) {
      // The peer may be restarting; keep polling.
    }
    if (attempt === 1) showMessage('Waiting for the stream…');
    await sleep(1000);
  }
}

async function startHlsJs() {
  showMessage('Connecting…');
  const playlist = await waitForStream();
  // An on-demand stream that is still being announced (EVENT playlist) plays from its beginning
  // at normal speed; hls.js would otherwise treat it as live, start near its end and keep
  // jumping to the edge.
  const event = playlist.includes('#EXT-X-PLAYLIST-TYPE:EVENT');
  const config = event
    ? { ...HLS_CONFIG, startPosition: 0, liveMaxLatencyDurationCount: Infinity, maxLiveSyncPlaybackRate: 1 }
    : HLS_CONFIG;
  const hls = new window.Hls(config);
  state.hls = hls;
  let mediaRecoveries = 0;
  hls.on(window.Hls.Events.MANIFEST_PARSED, () => {
    video.play().catch(() => {
      // Autoplay refused (should not happen muted): the controls let the viewer start.
    });
  });
  hls.on(window.Hls.Events.ERROR, (_event, data) => {
    state.lastError = `${data.type}/${data.details}${data.fatal ? ' (fatal)' : ''}`;
    if (!data.fatal) return;
    if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR && mediaRecoveries < 3) {
      mediaRecoveries++;
      hls.recoverMediaError();
      return;
    }
    // Anything else: start over once the playlist answers again.
    hls.destroy();
    state.hls = null;
    state.restarts++;
    showMessage('Stream interrupted, reconnecting…');
    setTimeout(startHlsJs, 1000);
  });
  hls.loadSource(PLAYLIST_URL);
  hls.attachMedia(video);
}

async function startNative() {
  showMessage('Connecting…');
  await waitForStream();
  video.src = PLAYLIST_URL;
  video.addEventListener(
    'error',
    () => {
      state.restarts++;
      state.lastError = video.error ? `media error ${video.error.code}` : 'media error';
      setTimeout(startNative, 1000);
    },
    { once: true },
  );
  video.play().catch(() => {});
}

// ---- measuring playback -------------------------------------------------------------------

/// Startup delay, stalls and the rebuffering ratio (stalled time / watched time).
function trackPlayback() {
  video.addEventListener('playing', () => {
    hideMessage();
    const now = performance.now();
    if (state.startupMs === null) {
      state.startupMs = now - state.pageOpened;
      state.playingSince = now;
    }
    if (state.stallStarted !== null) {
      state.stalledMs += now - state.stallStarted;
      state.stallStarted = null;
    }
  });
  video.addEventListener('waiting', () => {
    if (state.playingSince !== null && state.stallStarted === null) {
      state.stalls++;
      state.stallStarted = performance.now();
    }
  });
  video.addEventListener('ended', () => showMessage('The stream has ended.'));
}

function bufferAhead() {
  const t = video.currentTime;
  for (let i = 0; i < video.buffered.length; i++) {
    if (video.buffered.start(i) <= t + 0.1 && t < video.buffered.end(i)) {
      return video.buffered.end(i) - t;
    }
  }
  return 0;
}

function renderPlayerStats() {
  const now = performance.now();
  const stalledMs = state.stalledMs + (state.stallStarted !== null ? now - state.stallStarted : 0);
  const watchedMs = state.playingSince !== null ? now - state.playingSince : 0;
  const hls = state.live ? state.hls : null; // latency means nothing on demand
  const quality = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
  const rows = [
    ['engine', state.engine],
    ['state', video.ended ? 'ended' : video.paused ? 'paused' : state.stallStarted !== null ? 'stalled' : 'playing'],
    ['position', seconds(video.currentTime)],
    ['buffer ahead', seconds(bufferAhead())],
    ['live latency', hls && Number.isFinite(hls.latency) && hls.latency > 0 ? seconds(hls.latency) : '—'],
    ['target latency', hls && hls.targetLatency ? seconds(hls.targetLatency) : '—'],
    ['playback rate', `${video.playbackRate.toFixed(2)}×`],
    ['resolution', video.videoWidth ? `${video.videoWidth}×${video.videoHeight}` : '—'],
    ['startup', state.startupMs !== null ? seconds(state.startupMs / 1000) : '—'],
    ['stalls', String(state.stalls)],
    ['rebuffering', watchedMs > 0 ? `${((100 * stalledMs) / watchedMs).toFixed(1)} %` : '—'],
    ['dropped frames', quality ? String(quality.droppedVideoFrames) : '—'],
  ];
  if (state.restarts) rows.push(['restarts', String(state.restarts)]);
  if (state.lastError) rows.push(['last error', state.lastError]);
  renderKv(playerStats, rows);
}

// ---- the peer's status ------------------------------------------------------------------------

async function pollStatus() {
  for (;;) {
    try {
      const response = await fetch(STATUS_URL, { cache: 'no-store' });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      renderKv(peerStats, flatten(await response.json()));
    } catch (e) {
      renderKv(peerStats, [['status', `peer unreachable (${e.message})`]]);
    }
    await sleep(1000);
  }
}

/// `{a: {b: 1}, c: [1, 2]}` → `[['a.b', '1'], ['c', '1, 2']]`: whatever the peer reports, as
/// key/value rows in the order it sent them.
function flatten(value, prefix = '', rows = []) {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    for (const [key, inner] of Object.entries(value)) {
      flatten(inner, prefix ? `${prefix}.${key}` : key, rows);
    }
    if (prefix && Object.keys(value).length === 0) rows.push([prefix, '—']);
  } else {
    rows.push([prefix || 'value', format(value)]);
  }
  return rows;
}

function format(value) {
  if (value === null || value === undefined) return '—';
  if (typeof value === 'number') return Number.isInteger(value) ? String(value) : String(+value.toFixed(3));
  if (typeof value === 'boolean') return value ? 'yes' : 'no';
  if (Array.isArray(value)) {
    if (value.length === 0) return '—';
    if (value.length <= 8 && value.every((v) => v === null || typeof v !== 'object')) {
      return value.map(format).join(', ');
    }
    return `${value.length} items`;
  }
  return String(value);
}

function seconds(s) {
  return `${s.toFixed(2)} s`;
}

/// Replaces a <dl>'s rows, reusing its nodes when the keys did not change (no flicker).
function renderKv(dl, rows) {
  const keys = rows.map(([k]) => k).join('\n');
  if (dl.dataset.keys !== keys) {
    dl.replaceChildren(
      ...rows.flatMap(([k]) => {
        const dt = document.createElement('dt');
        dt.textContent = k;
        return [dt, document.createElement('dd')];
      }),
    );
    dl.dataset.keys = keys;
  }
  const dds = dl.querySelectorAll('dd');
  rows.forEach(([, v], i) => {
    dds[i].textContent = v;
  });
}

main();
