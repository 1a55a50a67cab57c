//! `GET /media-stream`: the Media Streams WebSocket. The upgrade is signed like a webhook
//! (over the `wss://` URL, no parameters); the stream then runs in the per-call bridge task.
//!
//! The upgrade is answered here rather than by axum's `WebSocketUpgrade`, with the same checks
//! (RFC 6455 §4.2.1, HTTP/1.1), so that the call's task owns the upgraded connection through
//! [`crate::ws::WsStream`] instead of tokio-tungstenite's multi-task wrapper: at 50 messages a
//! second per call, its proxy wakers were the bridge's largest own cost.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::debug;

use crate::bridge::{self, CallRuntime, StreamGuard, TwilioSocket};
use crate::http::error::ApiError;
use crate::http::twiml::check_signature;
use crate::ws::WsStream;

pub fn router() -> Router<super::AppState> {
    Router::new().route("/media-stream", get(upgrade))
}

async fn upgrade(State(rt): State<Arc<CallRuntime>>, req: Request) -> Response {
    accept(rt, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn accept(rt: Arc<CallRuntime>, mut req: Request) -> Result<Response, ApiError> {
    let key = upgrade_key(req.method(), req.version(), req.headers())?;
    // While draining, webhooks are refused, so a stream arriving now belongs to a call that was
    // answered before the drain: accept it until the grace period is over.
    if rt.calls_cancel.is_cancelled() {
        return Err(ApiError::unavailable("draining", "shutting down; not taking new calls"));
    }
    let url =
        rt.config.stream_url().ok_or_else(|| ApiError::unavailable("not_configured", "PUBLIC_BASE_URL is not set"))?;
    check_signature(&rt, req.headers(), &url, &[])?;
    let on_upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>().ok_or_else(|| {
        ApiError::new(StatusCode::UPGRADE_REQUIRED, "not_upgradable", "this connection cannot be upgraded")
    })?;
    let max = rt.config.max_stream_message_bytes;
    // The stream is counted from here: shutdown waits for it even before its `start`.
    let guard = StreamGuard::new(&rt);
    let tracker = rt.tracker.clone();
    tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "media stream upgrade failed");
                return;
            }
        };
        let socket: TwilioSocket = WsStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, ws_config(max));
        bridge::run(rt, socket).await;
        drop(guard);
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // Invariant: base64 is always a valid header value.
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&key).expect("base64 header value"));
    Ok(resp)
}

/// Twilio messages are a few hundred bytes: tungstenite's 128 KiB default buffers would be most
/// of a call's memory, and it zero-fills the read buffer before every read (a longer message
/// just takes two reads). Writes are flushed once per loop turn anyway.
fn ws_config(max_message: usize) -> WebSocketConfig {
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(max_message);
    cfg.max_frame_size = Some(max_message);
    cfg.read_buffer_size = 2 * 1024;
    cfg.write_buffer_size = 4 * 1024;
    cfg
}

/// The `Sec-WebSocket-Accept` for a valid HTTP/1.1 WebSocket upgrade request, or why it is
/// not one (the checks and statuses of axum's `WebSocketUpgrade`, with a JSON body).
fn upgrade_key(method: &Method, version: Version, headers: &HeaderMap) -> Result<String, ApiError> {
    let bad = |what: &str| ApiError::bad_request(format!("not a WebSocket upgrade: {what}"));
    if version != Version::HTTP_11 {
        return Err(ApiError::new(StatusCode::UPGRADE_REQUIRED, "not_upgradable", "WebSocket needs HTTP/1.1")
            .with_header(header::UPGRADE, "websocket")
            .with_header(header::CONNECTION, "Upgrade"));
    }
    if method != Method::GET {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")
            .with_header(header::ALLOW, "GET"));
    }
    let value = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !value(header::CONNECTION).split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")) {
        return Err(bad("`Connection` does not include `upgrade`"));
    }
    if !value(header::UPGRADE).eq_ignore_ascii_case("websocket") {
        return Err(bad("`Upgrade` is not `websocket`"));
    }
    if value(header::SEC_WEBSOCKET_VERSION) != "13" {
        return Err(bad("`Sec-WebSocket-Version` is not 13"));
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or_else(|| bad("no `Sec-WebSocket-Key`"))?;
    Ok(derive_accept_key(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    const GOOD: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn accepts_an_upgrade_with_the_rfc_accept_key() {
        let key = upgrade_key(&Method::GET, Version::HTTP_11, &headers(GOOD)).expect("valid upgrade");
        // RFC 6455 §1.3's worked example.
        assert_eq!(key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn refuses_what_is_not_an_upgrade() {
        let status = |m: Method, v: Version, h: &HeaderMap| upgrade_key(&m, v, h).unwrap_err().status;
        assert_eq!(status(Method::POST, Version::HTTP_11, &headers(GOOD)), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(status(Method::GET, Version::HTTP_10, &headers(GOOD)), StatusCode::UPGRADE_REQUIRED);
        for skip in 0..GOOD.len() {
            let partial: Vec<_> = GOOD.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, p)| *p).collect();
            assert_eq!(status(Method::GET, Version::HTTP_11, &headers(&partial)), StatusCode::BAD_REQUEST, "{skip}");
        }
        let mut wrong_version = headers(GOOD);
        wrong_version.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(status(Method::GET, Version::HTTP_11, &wrong_version), StatusCode::BAD_REQUEST);
        let mut upgrade_substring = headers(GOOD);
        upgrade_substring.insert(header::CONNECTION, HeaderValue::from_static("noupgrade"));
        assert_eq!(status(Method::GET, Version::HTTP_11, &upgrade_substring), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn refusals_carry_the_headers_their_status_requires() {
        let too_old = upgrade_key(&Method::GET, Version::HTTP_10, &headers(GOOD)).unwrap_err().into_response();
        assert_eq!(too_old.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(too_old.headers()[header::UPGRADE], "websocket");
        assert_eq!(too_old.headers()[header::CONNECTION], "Upgrade");
        let head = upgrade_key(&Method::HEAD, Version::HTTP_11, &headers(GOOD)).unwrap_err().into_response();
        assert_eq!(head.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(head.headers()[header::ALLOW], "GET");
        let bad = upgrade_key(&Method::GET, Version::HTTP_11, &HeaderMap::new()).unwrap_err().into_response();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert!(bad.headers().get(header::UPGRADE).is_none() && bad.headers().get(header::ALLOW).is_none());
        assert_eq!(bad.headers()[header::CONTENT_TYPE], "application/json");
    }
}
