//! The HTTP side: routes, handlers, [`AppError`] and the server loop.
//!
//! Every route is listed in [`router`]; there is no generic file serving, so no request path can
//! reach a file outside the allow-list (`/`, `/player.js`, `/style.css`, `/hls.js`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use tracing::{debug, warn};

use crate::MediaStore;

/// How the gateway serves.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The `web-player` directory: `index.html`, `player.js`, `style.css` and
    /// `node_modules/hls.js` (after `npm ci`).
    pub web_root: PathBuf,
    /// How long a request for a declared but missing segment waits for it before a 404.
    pub segment_wait: Duration,
}

impl Default for GatewayConfig {
    /// [`crate::default_web_root`] and a 10 s segment wait.
    fn default() -> Self {
        Self {
            web_root: crate::default_web_root(),
            segment_wait: Duration::from_secs(10),
        }
    }
}

/// The peer's QoS/status JSON, served at `/api/status`.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// The state every handler shares: the store, the configuration and the status source.
#[derive(Clone)]
pub struct AppState {
    store: Arc<MediaStore>,
    config: Arc<GatewayConfig>,
    status: StatusFn,
    /// Set once the missing-hls.js warning was logged.
    warned_hls_missing: Arc<AtomicBool>,
}

impl AppState {
    /// State over `store`, answering `/api/status` with `status()`.
    pub fn new(store: Arc<MediaStore>, config: GatewayConfig, status: StatusFn) -> Self {
        Self {
            store,
            config: Arc::new(config),
            status,
            warned_hls_missing: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why a request failed; each variant maps to one status code and a plain-text body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// No such route, or the playlist, init segment or segment is not (or no longer) here.
    #[error("not found")]
    NotFound,
    /// hls.js is not installed under the web root.
    #[error("hls.js is not installed at {path}: run `npm ci` in the web-player directory (see its README)")]
    HlsJsMissing {
        /// Where the gateway looked for it.
        path: PathBuf,
    },
    /// A page asset could not be read from the web root.
    #[error("cannot read {path}: {source} (is SELFCAST_WEB_ROOT the web-player directory?)")]
    Asset {
        /// The asset's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::HlsJsMissing { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Asset { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, no_cache(), format!("{self}\n")).into_response()
    }
}

/// The gateway's routes over `state`; anything else is a 404.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/player.js", get(player_js))
        .route("/style.css", get(style_css))
        .route("/hls.js", get(hls_js))
        .route("/stream.m3u8", get(playlist))
        .route("/init.mp4", get(init))
        .route("/seg/{file}", get(segment))
        .route("/api/status", get(status))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(check_host))
        .with_state(state)
}

/// Refuses requests whose `Host` is a DNS name other than `localhost`.
///
/// A web page on another site can point a DNS name it controls at 127.0.0.1 ("DNS
/// rebinding") and then read this gateway's pages as same-origin. Browsers send that name in
/// `Host`, so only IP literals and `localhost` are served.
async fn check_host(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    match host {
        Some(host) if !is_local_host(host) => (
            StatusCode::FORBIDDEN,
            no_cache(),
            "forbidden: unexpected Host header\n",
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

/// `localhost` or an IP literal, with or without a port.
fn is_local_host(host: &str) -> bool {
    if host.parse::<std::net::SocketAddr>().is_ok() || host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    name.eq_ignore_ascii_case("localhost")
        || (name.starts_with('[')
            && name.ends_with(']')
            && name[1..name.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_ok())
}

/// Serves `router` on `listener` until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "gateway listening");
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const PLAYLIST: &str = "application/vnd.apple.mpegurl";
const MP4: &str = "video/mp4";

async fn index(State(state): State<AppState>) -> Result<Response, AppError> {
    asset(&state, "index.html", HTML).await
}

async fn player_js(State(state): State<AppState>) -> Result<Response, AppError> {
    asset(&state, "player.js", JAVASCRIPT).await
}

async fn style_css(State(state): State<AppState>) -> Result<Response, AppError> {
    asset(&state, "style.css", CSS).await
}

async fn hls_js(State(state): State<AppState>) -> Result<Response, AppError> {
    let path = state
        .config
        .web_root
        .join("node_modules/hls.js/dist/hls.min.js");
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok(typed(JAVASCRIPT, Bytes::from(bytes))),
        Err(_) => {
            if !state.warned_hls_missing.swap(true, Ordering::Relaxed) {
                warn!(path = %path.display(), "hls.js is missing: run `npm ci` in web-player");
            }
            Err(AppError::HlsJsMissing { path })
        }
    }
}

async fn playlist(State(state): State<AppState>) -> Result<Response, AppError> {
    let text = state.store.playlist().ok_or(AppError::NotFound)?;
    Ok((no_cache(), typed(PLAYLIST, Bytes::from(text))).into_response())
}

async fn init(State(state): State<AppState>) -> Result<Response, AppError> {
    let bytes = state.store.init().ok_or(AppError::NotFound)?;
    Ok(typed(MP4, bytes))
}

async fn segment(
    State(state): State<AppState>,
    file: Result<Path<String>, PathRejection>,
) -> Result<Response, AppError> {
    let Path(file) = file.map_err(|_| AppError::NotFound)?;
    let seq = parse_segment_name(&file).ok_or(AppError::NotFound)?;
    if state.store.is_declared(seq) {
        state.store.note_request(seq);
    }
    if let Some(bytes) = state.store.segment(seq) {
        return Ok(typed(MP4, bytes));
    }
    if !state.store.is_declared(seq) {
        return Err(AppError::NotFound);
    }
    debug!(seq, "waiting for a declared segment");
    let bytes = state
        .store
        .wait_segment(seq, state.config.segment_wait)
        .await
        .ok_or_else(|| {
            debug!(seq, "declared segment did not arrive in time");
            AppError::NotFound
        })?;
    Ok(typed(MP4, bytes))
}

async fn status(State(state): State<AppState>) -> Response {
    (no_cache(), Json((state.status)())).into_response()
}

async fn not_found() -> AppError {
    AppError::NotFound
}

/// `N.m4s` with `N` plain decimal digits fitting a `u64`.
fn parse_segment_name(file: &str) -> Option<u64> {
    let digits = file.strip_suffix(".m4s")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // One name per segment: `/seg/007.m4s` is not segment 7.
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

async fn asset(
    state: &AppState,
    name: &str,
    content_type: &'static str,
) -> Result<Response, AppError> {
    let path = state.config.web_root.join(name);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|source| AppError::Asset { path, source })?;
    // Pages change with the checkout; always revalidate them.
    Ok((no_cache(), typed(content_type, Bytes::from(bytes))).into_response())
}

fn typed(content_type: &'static str, body: Bytes) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

fn no_cache() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::StreamMode;

    const SEC: Duration = Duration::from_secs(1);

    /// A web root with the three page assets and, if `with_hls`, a fake hls.js, in a fresh
    /// directory under the system temp dir.
    fn web_root(name: &str, with_hls: bool) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("selfcast-gateway-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("node_modules/hls.js/dist")).expect("mkdir");
        std::fs::write(dir.join("index.html"), "<title>Selfcast</title>").expect("write");
        std::fs::write(dir.join("player.js"), "// player").expect("write");
        std::fs::write(dir.join("style.css"), "body{}").expect("write");
        std::fs::write(dir.join("Cargo.toml"), "secret").expect("write");
        if with_hls {
            std::fs::write(dir.join("node_modules/hls.js/dist/hls.min.js"), "// hls")
                .expect("write");
        }
        dir
    }

    fn app(store: Arc<MediaStore>, web_root: PathBuf) -> Router {
        let config = GatewayConfig {
            web_root,
            segment_wait: Duration::from_secs(10),
        };
        let status: StatusFn = Arc::new(|| serde_json::json!({"mode": "live", "partners": 3}));
        router(AppState::new(store, config, status))
    }

    fn live_store() -> Arc<MediaStore> {
        let store = MediaStore::new(StreamMode::Live { window: 3 });
        store.set_init(Bytes::from_static(b"INIT"));
        for seq in 0..4 {
            store.insert(seq, SEC, Bytes::from(format!("SEG{seq}")));
        }
        store
    }

    struct Reply {
        status: StatusCode,
        content_type: Option<String>,
        cache_control: Option<String>,
        body: Bytes,
    }

    async fn get(app: &Router, uri: &str) -> Reply {
        let request = Request::get(uri).body(Body::empty()).expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(header::CONTENT_TYPE);
        let cache_control = header(header::CACHE_CONTROL);
        let status = parts.status;
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status,
            content_type,
            cache_control,
            body,
        }
    }

    #[tokio::test]
    async fn serves_media_with_content_types() {
        let app = app(live_store(), web_root("media", true));

        let playlist = get(&app, "/stream.m3u8").await;
        assert_eq!(playlist.status, StatusCode::OK);
        assert_eq!(playlist.content_type.as_deref(), Some(PLAYLIST));
        assert_eq!(playlist.cache_control.as_deref(), Some("no-cache"));
        let text = String::from_utf8(playlist.body.to_vec()).expect("utf-8");
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:1\n"), "{text}");
        assert!(text.contains("seg/3.m4s"), "{text}");

        let init = get(&app, "/init.mp4").await;
        assert_eq!(init.status, StatusCode::OK);
        assert_eq!(init.content_type.as_deref(), Some(MP4));
        assert_eq!(init.body, Bytes::from_static(b"INIT"));

        let seg = get(&app, "/seg/2.m4s").await;
        assert_eq!(seg.status, StatusCode::OK);
        assert_eq!(seg.content_type.as_deref(), Some(MP4));
        assert_eq!(seg.body, Bytes::from_static(b"SEG2"));
    }

    #[tokio::test]
    async fn serves_the_allow_listed_pages() {
        let app = app(live_store(), web_root("pages", true));
        for (uri, content_type, body) in [
            ("/", HTML, "<title>Selfcast</title>"),
            ("/player.js", JAVASCRIPT, "// player"),
            ("/style.css", CSS, "body{}"),
            ("/hls.js", JAVASCRIPT, "// hls"),
        ] {
            let reply = get(&app, uri).await;
            assert_eq!(reply.status, StatusCode::OK, "{uri}");
            assert_eq!(reply.content_type.as_deref(), Some(content_type), "{uri}");
            assert_eq!(reply.body, Bytes::from(body), "{uri}");
        }
        let status = get(&app, "/api/status").await;
        assert_eq!(status.status, StatusCode::OK);
        assert_eq!(status.content_type.as_deref(), Some("application/json"));
        let json: serde_json::Value = serde_json::from_slice(&status.body).expect("json");
        assert_eq!(json["partners"], 3);
    }

    #[tokio::test]
    async fn missing_hls_js_says_how_to_install_it() {
        let app = app(live_store(), web_root("nohls", false));
        let reply = get(&app, "/hls.js").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        let body = String::from_utf8(reply.body.to_vec()).expect("utf-8");
        assert!(body.contains("npm ci"), "{body}");
    }

    #[tokio::test]
    async fn nothing_to_play_is_a_404() {
        let app = app(MediaStore::new(StreamMode::Vod), web_root("empty", true));
        assert_eq!(
            get(&app, "/stream.m3u8").await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(get(&app, "/init.mp4").await.status, StatusCode::NOT_FOUND);
        assert_eq!(get(&app, "/seg/0.m4s").await.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn unknown_and_traversal_paths_are_404() {
        let app = app(live_store(), web_root("traversal", true));
        for uri in [
            "/../Cargo.toml",
            "/Cargo.toml",
            "/%2e%2e/Cargo.toml",
            "/%2e%2e/",
            "/index.html",
            "/node_modules/hls.js/dist/hls.min.js",
            "/player.js/../Cargo.toml",
            "/seg/..%2F..%2Fx.m4s",
            "/seg/..%2F..%2FCargo.toml",
            "/seg/%2e%2e/Cargo.toml",
            "/seg/1",
            "/seg/1.mp4",
            "/seg/.m4s",
            "/seg/-1.m4s",
            "/seg/+1.m4s",
            "/seg/1.5.m4s",
            "/seg/18446744073709551616.m4s",
            "/seg/%FF.m4s",
            "/seg/",
            "/stream.m3u8/",
            "/api",
        ] {
            let reply = get(&app, uri).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{uri}");
            assert!(!reply.body.starts_with(b"secret"), "{uri} leaked a file");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn undeclared_segment_is_404_at_once() {
        let app = app(live_store(), web_root("undeclared", true));
        let started = tokio::time::Instant::now();
        assert_eq!(get(&app, "/seg/9.m4s").await.status, StatusCode::NOT_FOUND);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn declared_segment_waits_then_404() {
        let store = live_store();
        store.declare(4, SEC);
        let app = app(store, web_root("timeout", true));
        let started = tokio::time::Instant::now();
        assert_eq!(get(&app, "/seg/4.m4s").await.status, StatusCode::NOT_FOUND);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn declared_segment_is_served_when_it_arrives() {
        let store = live_store();
        store.declare(4, SEC);
        let app = app(store.clone(), web_root("arrives", true));
        let request = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let reply = get(&app, "/seg/4.m4s").await;
            (reply, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        store.insert(4, SEC, Bytes::from_static(b"SEG4"));
        let (reply, waited) = request.await.expect("task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, Bytes::from_static(b"SEG4"));
        assert_eq!(waited, Duration::from_millis(2_500));
    }

    #[tokio::test]
    async fn serve_shuts_down_gracefully() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            app(live_store(), web_root("serve", true)),
            async move {
                let _ = stopped.await;
            },
        ));
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /init.mp4 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.expect("read");
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("INIT"), "{reply}");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stopped")
            .expect("task")
            .expect("serve");
    }

    #[test]
    fn only_local_hosts_are_served() {
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:80",
            "[::1]:8080",
            "192.0.2.7",
            "[::1]",
        ] {
            assert!(is_local_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_local_host(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_rebound_dns_name_is_forbidden() {
        let app = app(live_store(), web_root("host", true));
        let request = Request::builder()
            .uri("/api/status")
            .header(header::HOST, "attacker.example:8080")
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let request = Request::builder()
            .uri("/api/status")
            .header(header::HOST, "127.0.0.1:8080")
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.oneshot(request).await.unwrap().status(), StatusCode::OK);
    }

    #[test]
    fn segment_names_have_no_leading_zeros() {
        assert_eq!(parse_segment_name("0.m4s"), Some(0));
        assert_eq!(parse_segment_name("70.m4s"), Some(70));
        assert_eq!(parse_segment_name("07.m4s"), None);
        assert_eq!(parse_segment_name("00.m4s"), None);
    }
}
