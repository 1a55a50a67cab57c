//! HTTP surface: router, errors, auth, health, TwiML webhook, media stream, calls API, metrics. Features own
//! their routes; this module merges them.

pub mod auth;
pub mod calls;
pub mod error;
pub mod health;
pub mod media_stream;
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
        .with_state(state)
}
