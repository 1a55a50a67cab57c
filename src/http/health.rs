//! `GET /healthz`, `GET /public-url`, `GET /metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::bridge::CallRuntime;
use crate::http::error::ApiError;

pub fn router() -> Router<super::AppState> {
    Router::new().route("/healthz", get(healthz)).route("/public-url", get(public_url)).route("/metrics", get(metrics))
}

/// 200 while serving, 503 while draining (so a load balancer stops sending calls).
async fn healthz(State(rt): State<Arc<CallRuntime>>) -> impl IntoResponse {
    let draining = rt.is_draining();
    let body = Json(json!({
        "status": if draining { "draining" } else { "ok" },
        "liveCalls": rt.live.len(),
        "tenants": rt.tenants.current().tenants().len(),
        "readyForCalls": rt.config.call_readiness_problems().is_empty(),
    }));
    let status = if draining { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (status, body)
}

/// Where Twilio must be pointed.
async fn public_url(State(rt): State<Arc<CallRuntime>>) -> Result<impl IntoResponse, ApiError> {
    let base = rt
        .config
        .public_base_url
        .as_deref()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_configured", "PUBLIC_BASE_URL is not set"))?;
    Ok(Json(json!({
        "publicBaseUrl": base,
        "webhookUrl": format!("{base}/twiml"),
        "streamUrl": rt.config.stream_url(),
    })))
}

async fn metrics(State(rt): State<Arc<CallRuntime>>) -> impl IntoResponse {
    let mut body = rt.metrics.render();
    body.push_str(&format!(
        "# HELP switchboard_prewarm_pending Pre-warmed sessions waiting for their stream.\n# TYPE switchboard_prewarm_pending gauge\nswitchboard_prewarm_pending {}\n",
        rt.prewarm.pending()
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
