//! HTTP surface: router, errors, auth, health, TwiML webhook, media stream, calls API, metrics. Features own
//! their routes; this module merges them.

pub mod auth;
pub mod calls;
pub mod error;
pub mod health;
pub mod media_stream;
pub mod meetings;
pub mod twiml;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;

use crate::bridge::CallRuntime;
use crate::store::Store;

/// What handlers share. Call-path handlers extract only the `CallRuntime` part.
#[derive(Clone)]
pub struct AppState {
    pub calls: Arc<CallRuntime>,
    pub store: Store,
    /// Wakes this daemon's job workers after an enqueue.
    pub waker: Arc<tokio::sync::Notify>,
    pub meetings: Arc<MeetingsState>,
}

/// What the meetings routes need beyond the store.
pub struct MeetingsState {
    /// Derives Jitsi room names (shared by every daemon on the database).
    pub room_secret: Vec<u8>,
}

impl FromRef<AppState> for Arc<CallRuntime> {
    fn from_ref(s: &AppState) -> Self {
        Arc::clone(&s.calls)
    }
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(twiml::router())
        .merge(media_stream::router())
        .merge(calls::router())
        .merge(meetings::router())
        .layer(cors(&state.calls.config))
        .with_state(state)
}

/// CORS for browser frontends: only the configured origins; preflights answered here.
fn cors(config: &crate::config::Config) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins = &config.allowed_origins;
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .allow_credentials(config.cors_allow_credentials)
        .max_age(std::time::Duration::from_secs(600))
}
