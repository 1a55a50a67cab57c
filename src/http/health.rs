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
async fn healthz(State(state): State<super::AppState>) -> impl IntoResponse {
    let rt = &state.calls;
    let draining = rt.is_draining();
    // Calls go on without the database (their records wait and retry); say so, but stay 200.
    let db = tokio::time::timeout(std::time::Duration::from_secs(1), state.store.ping()).await;
    let body = Json(json!({
        "status": if draining { "draining" } else { "ok" },
        "liveCalls": rt.live.len(),
        "tenants": rt.tenants.current().tenants().len(),
        "readyForCalls": rt.config.call_readiness_problems().is_empty(),
        "database": if matches!(db, Ok(Ok(()))) { "ok" } else { "unavailable" },
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

async fn metrics(State(state): State<super::AppState>) -> impl IntoResponse {
    use std::fmt::Write as _;
    let rt = &state.calls;
    let mut body = rt.metrics.render();
    let _ = write!(
        body,
        "# HELP switchboard_prewarm_pending Pre-warmed sessions waiting for their stream.\n# TYPE switchboard_prewarm_pending gauge\nswitchboard_prewarm_pending {}\n",
        rt.prewarm.pending()
    );
    // Queue and outbox depth, shared by every daemon on the database. A database that does not
    // answer is itself a signal: `switchboard_store_up 0`.
    let counts = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        Ok::<_, crate::store::StoreError>((state.store.job_counts().await?, state.store.email_counts().await?))
    })
    .await;
    match counts {
        Ok(Ok((jobs, emails))) => {
            body.push_str("# HELP switchboard_store_up The database answered this scrape.\n# TYPE switchboard_store_up gauge\nswitchboard_store_up 1\n");
            body.push_str("# HELP switchboard_jobs Jobs in the queue by status (all daemons).\n# TYPE switchboard_jobs gauge\n");
            for (status, n) in [("queued", jobs.queued), ("running", jobs.running), ("done", jobs.done), ("dead", jobs.dead)] {
                let _ = writeln!(body, "switchboard_jobs{{status=\"{status}\"}} {n}");
            }
            body.push_str("# HELP switchboard_emails Emails in the outbox by status (all daemons).\n# TYPE switchboard_emails gauge\n");
            for status in ["pending", "sent", "rejected", "failed"] {
                let n = emails.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
                let _ = writeln!(body, "switchboard_emails{{status=\"{status}\"}} {n}");
            }
        }
        _ => body.push_str("# HELP switchboard_store_up The database answered this scrape.\n# TYPE switchboard_store_up gauge\nswitchboard_store_up 0\n"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
