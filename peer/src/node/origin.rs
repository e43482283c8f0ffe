//! The HTTP origin: a server laid out like the gateway (`/init.mp4`, `/seg/N.m4s`), such as a
//! CDN in front of the broadcaster's gateway, asked for the segments no peer can deliver in
//! time (`peer watch --origin URL`). What it sends is checked against the broadcaster's
//! statements like anything a peer sends.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::segment::SegmentId;

/// How long one fetch may take, headers and body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// An origin's base URL: `http://host[:port][/path]`, without query or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginUrl(String);

/// Why a URL cannot be an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginUrlError {
    /// Only plain HTTP is spoken.
    #[error("the origin must be an http:// URL (https is not supported)")]
    Scheme,
    /// It does not parse.
    #[error("not a URL: {0}")]
    Invalid(String),
    /// A query or fragment has no place in a base URL.
    #[error("the origin URL must not have a query or fragment")]
    Query,
}

impl FromStr for OriginUrl {
    type Err = OriginUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.starts_with("http://") {
            return Err(OriginUrlError::Scheme);
        }
        if s.contains(['?', '#']) {
            return Err(OriginUrlError::Query);
        }
        let uri: Uri = s
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| OriginUrlError::Invalid(e.to_string()))?;
        if uri.host().is_none() {
            return Err(OriginUrlError::Invalid("no host".into()));
        }
        Ok(Self(s.trim_end_matches('/').to_owned()))
    }
}

impl fmt::Display for OriginUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl OriginUrl {
    /// Where segment `id` is.
    pub fn segment(&self, id: SegmentId) -> String {
        match id {
            SegmentId::Init => format!("{}/init.mp4", self.0),
            SegmentId::Media(n) => format!("{}/seg/{n}.m4s", self.0),
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request failed (connection, protocol).
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    /// The origin answered something other than 200.
    #[error("origin answered {0}")]
    Status(StatusCode),
    /// The body broke off or was longer than the broadcaster signed.
    #[error("bad body: {0}")]
    Body(String),
    /// It took too long.
    #[error("timed out")]
    Timeout,
    /// The URL built for the segment does not parse.
    #[error("bad segment URL")]
    Url,
}

/// A client of one origin.
#[derive(Clone)]
pub struct Origin {
    url: OriginUrl,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Origin {
    /// A client of `url`.
    pub fn new(url: OriginUrl) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self { url, client }
    }

    /// Fetches segment `id`, at most `limit` bytes.
    pub async fn fetch(&self, id: SegmentId, limit: usize) -> Result<Bytes, FetchError> {
        let uri: Uri = self.url.segment(id).parse().map_err(|_| FetchError::Url)?;
        let fetch = async {
            let response = self.client.get(uri).await?;
            if response.status() != StatusCode::OK {
                return Err(FetchError::Status(response.status()));
            }
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| FetchError::Body(e.to_string()))?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| FetchError::Timeout)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_urls_are_checked_and_name_segments_like_the_gateway() {
        let url: OriginUrl = "http://cdn.example:8080/live/".parse().unwrap();
        assert_eq!(
            url.segment(SegmentId::Init),
            "http://cdn.example:8080/live/init.mp4"
        );
        assert_eq!(
            url.segment(SegmentId::Media(7)),
            "http://cdn.example:8080/live/seg/7.m4s"
        );
        assert_eq!(
            "https://cdn.example".parse::<OriginUrl>(),
            Err(OriginUrlError::Scheme)
        );
        assert_eq!(
            "http://cdn.example/?a=1".parse::<OriginUrl>(),
            Err(OriginUrlError::Query)
        );
        assert!(matches!(
            "http://".parse::<OriginUrl>(),
            Err(OriginUrlError::Invalid(_))
        ));
    }
}
