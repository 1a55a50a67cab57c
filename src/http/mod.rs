//! HTTP surface: router, errors, health, TwiML webhook, media stream, metrics. Features own
//! their routes; this module merges them.

pub mod error;
pub mod health;
pub mod media_stream;
pub mod twiml;

use std::sync::Arc;

use axum::Router;

use crate::bridge::CallRuntime;

/// The whole router.
pub fn router(rt: Arc<CallRuntime>) -> Router {
    Router::new().merge(health::router()).merge(twiml::router()).merge(media_stream::router()).with_state(rt)
}
