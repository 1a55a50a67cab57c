//! Opens and configures a Realtime session (GA dialect): connect, `session.update`, wait for
//! `session.updated` and check it. Only a checked session is handed to a call.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::Secret;
use crate::core::realtime::server::ServerEvent;
use crate::core::realtime::session_config::SessionSpec;

pub type RealtimeSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct RealtimeSettings {
    /// `wss://…/v1/realtime?model=…`
    pub url: String,
    pub api_key: Secret,
    pub timeout: Duration,
}

/// A configured session whose `session.updated` passed the check.
#[derive(Debug)]
pub struct RealtimeConn {
    pub socket: RealtimeSocket,
    pub session_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("upgrade refused with HTTP {0}")]
    Refused(u16),
    #[error("session.update rejected: {0}")]
    Rejected(String),
    #[error("session.updated does not match: {}", .0.join("; "))]
    Mismatch(Vec<String>),
    #[error("socket closed during setup")]
    Closed,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("invalid request: {0}")]
    Request(String),
}

/// Connects and configures, within `settings.timeout`.
pub async fn open(settings: &RealtimeSettings, spec: &SessionSpec) -> Result<RealtimeConn, RealtimeError> {
    tokio::time::timeout(settings.timeout, open_inner(settings, spec))
        .await
        .map_err(|_| RealtimeError::Timeout(settings.timeout))?
}

async fn open_inner(settings: &RealtimeSettings, spec: &SessionSpec) -> Result<RealtimeConn, RealtimeError> {
    let mut req = settings.url.as_str().into_client_request().map_err(|e| RealtimeError::Request(e.to_string()))?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", settings.api_key.expose()))
        .map_err(|_| RealtimeError::Request("API key is not a valid header value".into()))?;
    req.headers_mut().insert("authorization", auth);
    // GA only: never send `OpenAI-Beta` (the server rejects the beta dialect).
    let mut cfg = WebSocketConfig::default();
    // session.updated echoes the full instructions; audio deltas can be large.
    cfg.max_message_size = Some(32 << 20);
    cfg.max_frame_size = Some(32 << 20);
    // 128 KiB default buffers per socket would dominate a call's memory, and tungstenite zeroes
    // the read buffer's spare room on every read; deltas are a few KiB. The bridge flushes once
    // per loop turn.
    cfg.read_buffer_size = 4 * 1024;
    cfg.write_buffer_size = 4 * 1024;
    let (mut socket, _resp) =
        tokio_tungstenite::connect_async_with_config(req, Some(cfg), true).await.map_err(|e| match e {
            tungstenite::Error::Http(resp) => RealtimeError::Refused(resp.status().as_u16()),
            other => RealtimeError::Connect(other.to_string()),
        })?;
    socket.send(Message::text(spec.session_update())).await.map_err(|e| RealtimeError::Connect(e.to_string()))?;
    loop {
        let msg =
            socket.next().await.ok_or(RealtimeError::Closed)?.map_err(|e| RealtimeError::Connect(e.to_string()))?;
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => return Err(RealtimeError::Closed),
            _ => continue,
        };
        match ServerEvent::parse(&text) {
            Ok(ServerEvent::SessionUpdated { session }) => {
                spec.check_updated(&session).map_err(RealtimeError::Mismatch)?;
                let session_id = session.get("id").and_then(|v| v.as_str()).map(str::to_owned);
                return Ok(RealtimeConn { socket, session_id });
            }
            Ok(ServerEvent::Error(e)) => {
                let code = e.code.unwrap_or_else(|| "error".into());
                let msg = e.message.unwrap_or_default();
                return Err(RealtimeError::Rejected(format!("{code}: {msg}")));
            }
            _ => {}
        }
    }
}
