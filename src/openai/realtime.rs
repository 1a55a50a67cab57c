//! Opens and configures a Realtime session (GA dialect): connect, `session.update`, wait for
//! `session.updated` and check it. Only a checked session is handed to a call.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::config::Secret;
use crate::core::realtime::server::ServerEvent;
use crate::core::realtime::session_config::SessionSpec;

/// The upstream WebSocket (TLS for `wss://`), owned by the call's task ([`crate::ws`]).
pub type RealtimeSocket = crate::ws::WsStream<MaybeTlsStream<TcpStream>>;

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
    let io = connect(req.uri()).await?;
    let (mut socket, _resp) = crate::ws::client_handshake(req, io, cfg).await.map_err(|e| match e {
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

/// Opens the TCP connection for `uri` (`ws://` or `wss://`), with TLS for `wss://`: rustls,
/// the webpki roots, aws-lc-rs.
async fn connect(uri: &Uri) -> Result<MaybeTlsStream<TcpStream>, RealtimeError> {
    let (tls, host, port) = endpoint(uri)?;
    let tcp = TcpStream::connect((host, port)).await.map_err(|e| RealtimeError::Connect(e.to_string()))?;
    // Small messages both ways at 50 a second: never hold one back for Nagle.
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok(MaybeTlsStream::Plain(tcp));
    }
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| RealtimeError::Request(format!("{host} is not a valid server name")))?;
    let stream = tokio_rustls::TlsConnector::from(tls_config())
        .connect(name, tcp)
        .await
        .map_err(|e| RealtimeError::Connect(format!("TLS: {e}")))?;
    Ok(MaybeTlsStream::Rustls(stream))
}

/// Whether `uri` needs TLS, and the host and port to connect to (`[::1]` in a URL is `::1`
/// to connect to and to name the server).
fn endpoint(uri: &Uri) -> Result<(bool, &str, u16), RealtimeError> {
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        other => return Err(RealtimeError::Request(format!("not a WebSocket URL (scheme {other:?})"))),
    };
    let host = uri.host().ok_or_else(|| RealtimeError::Request("the URL has no host".into()))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    Ok((tls, host, uri.port_u16().unwrap_or(if tls { 443 } else { 80 })))
}

/// One client configuration for every upstream connection (it also keeps their TLS sessions
/// for resumption).
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            // Invariant: aws-lc-rs supports the default protocol versions.
            .expect("aws-lc-rs supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> Result<(bool, String, u16), RealtimeError> {
        let uri: Uri = url.parse().expect("valid uri");
        endpoint(&uri).map(|(tls, host, port)| (tls, host.to_owned(), port))
    }

    #[test]
    fn endpoints_of_websocket_urls() {
        let ok = |url: &str| parts(url).expect(url);
        assert_eq!(ok("wss://api.openai.com/v1/realtime?model=m"), (true, "api.openai.com".into(), 443));
        assert_eq!(ok("ws://127.0.0.1:9100/v1/realtime"), (false, "127.0.0.1".into(), 9100));
        assert_eq!(ok("ws://localhost/v1/realtime"), (false, "localhost".into(), 80));
        assert_eq!(ok("wss://[::1]:8443/v1/realtime"), (true, "::1".into(), 8443));
        for bad in ["https://example.com/v1/realtime", "/v1/realtime"] {
            assert!(matches!(parts(bad), Err(RealtimeError::Request(_))), "{bad}");
        }
    }
}
