//! Selfcast gateway: serves a peer's verified segments to browsers as HLS, with the player page
//! and a status API.
//!
//! # Layout
//!
//! - [`store`](MediaStore): `MediaStore`, the init segment and media segments of one stream, the
//!   live window rule and the playlist it implies; shared as `Arc<MediaStore>`.
//! - `playlist`: pure HLS text formatting (version 7, fMP4 behind `EXT-X-MAP`).
//! - `http`: [`router`] (an explicit allow-list of routes), the handlers, [`AppError`] and
//!   [`serve`] with graceful shutdown.
//!
//! # Data flow
//!
//! ```text
//! peer (verifies) ──set_init / declare / insert / end / evict_before──▶ MediaStore
//!                                                                         │
//! browser ◀── GET /stream.m3u8, /init.mp4, /seg/{seq}.m4s ── router ◀────┘ playlist / init /
//!         ◀── GET /, /player.js, /style.css, /hls.js ─────── web_root     segment / wait_segment
//!         ◀── GET /api/status ─────────────────────────────── StatusFn (the peer's QoS JSON)
//! ```
//!
//! A request for a declared but missing segment waits up to [`GatewayConfig::segment_wait`] for
//! the peer to insert it; the gateway never fetches anything itself. `gateway` depends on no
//! other Selfcast crate: `peer` depends on it.

use std::path::PathBuf;

mod http;
mod playlist;
mod store;

pub use http::{router, serve, AppError, AppState, GatewayConfig, StatusFn};
pub use store::{MediaStore, StoreStats, StreamMode};

/// The `web-player` directory: `$SELFCAST_WEB_ROOT` if set, else the one next to this crate in
/// the source tree.
pub fn default_web_root() -> PathBuf {
    match std::env::var_os("SELFCAST_WEB_ROOT") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../web-player")),
    }
}
