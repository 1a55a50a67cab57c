//! `GET /media-stream`: the Media Streams WebSocket. The upgrade is signed like a webhook
//! (over the `wss://` URL, no parameters); the stream then runs in the per-call bridge task.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;

use crate::bridge::{self, CallRuntime, StreamGuard};
use crate::http::error::ApiError;
use crate::http::twiml::check_signature;

pub fn router() -> Router<super::AppState> {
    Router::new().route("/media-stream", get(upgrade))
}

async fn upgrade(
    State(rt): State<Arc<CallRuntime>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // While draining, webhooks are refused, so a stream arriving now belongs to a call that was
    // answered before the drain: accept it until the grace period is over.
    if rt.calls_cancel.is_cancelled() {
        return Err(ApiError::unavailable("draining", "shutting down; not taking new calls"));
    }
    let url =
        rt.config.stream_url().ok_or_else(|| ApiError::unavailable("not_configured", "PUBLIC_BASE_URL is not set"))?;
    check_signature(&rt, &headers, &url, &[])?;
    let max = rt.config.max_stream_message_bytes;
    // The stream is counted from here: shutdown waits for it even before its `start`.
    let guard = StreamGuard::new(&rt);
    // Twilio messages are a few hundred bytes: tungstenite's 128 KiB default buffers would be
    // most of a call's memory, and it zero-fills the read buffer before every read (a longer
    // message just takes two reads). Writes are flushed once per loop turn anyway.
    let ws = ws.max_message_size(max).max_frame_size(max).read_buffer_size(2 * 1024).write_buffer_size(4 * 1024);
    Ok(ws.on_upgrade(move |socket| async move {
        bridge::run(rt, socket).await;
        drop(guard);
    }))
}
