//! `GET|POST /twiml`: Twilio's voice webhook. Verifies `X-Twilio-Signature`, picks the tenant
//! from the dialed number, answers `<Connect><Stream>` and pre-warms the Realtime session.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::{info, warn};

use crate::bridge::CallRuntime;
use crate::core::twilio::binding::{ISSUED_PARAM, TOKEN_PARAM, stream_token};
use crate::core::twilio::{signature, twiml};
use crate::http::error::ApiError;

pub fn router() -> Router<super::AppState> {
    Router::new().route("/twiml", get(webhook).post(webhook))
}

/// Twilio may not send bodies above this; a webhook is a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

/// Refuses the request unless it carries a valid signature for `url` + `params`.
/// Shared with the media-stream upgrade.
pub(crate) fn check_signature(
    rt: &CallRuntime,
    headers: &HeaderMap,
    url: &str,
    params: &[(String, String)],
) -> Result<(), ApiError> {
    if !rt.config.verify_signatures() {
        return Ok(());
    }
    let Some(token) = rt.config.twilio_auth_token.as_ref() else {
        return Err(ApiError::unavailable("not_configured", "TWILIO_AUTH_TOKEN is not set; refusing unsigned traffic"));
    };
    let header = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if header.is_empty() || !signature::validate(token.expose(), url, params, header) {
        rt.metrics.signature_failures.fetch_add(1, Relaxed);
        rt.metrics.calls_rejected.fetch_add(1, Relaxed);
        warn!(url, "bad or missing X-Twilio-Signature");
        return Err(ApiError::forbidden("invalid X-Twilio-Signature"));
    }
    Ok(())
}

fn xml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

fn language_for_country(country: Option<&str>) -> &'static str {
    match country.unwrap_or_default() {
        "IT" | "SM" | "VA" => "it",
        "FR" | "MC" | "BE" | "LU" => "fr",
        _ => "en",
    }
}

async fn webhook(
    State(rt): State<Arc<CallRuntime>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if rt.is_draining() {
        return Err(ApiError::unavailable("draining", "shutting down; not taking new calls"));
    }
    let base = rt
        .config
        .public_base_url
        .as_deref()
        .ok_or_else(|| ApiError::unavailable("not_configured", "PUBLIC_BASE_URL is not set"))?;
    if body.len() > MAX_BODY {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "webhook body too large"));
    }
    // The URL Twilio requested, rebuilt from the public base (not from the proxy's view).
    let mut url = format!("{base}{}", uri.path());
    if let Some(q) = uri.query() {
        url.push('?');
        url.push_str(q);
    }
    let query: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let form: Vec<(String, String)> =
        if method == Method::POST { form_urlencoded::parse(&body).into_owned().collect() } else { Vec::new() };
    check_signature(&rt, &headers, &url, &form)?;

    let fields: BTreeMap<String, String> = query.into_iter().chain(form).collect();
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
    let (call_sid, from, to) = (get("CallSid"), get("From"), get("To"));
    if call_sid.is_empty() {
        return Err(ApiError::bad_request("missing CallSid"));
    }
    rt.metrics.webhooks.fetch_add(1, Relaxed);
    let Some(tenant) = rt.tenants.current().resolve(to) else {
        let lang = language_for_country(fields.get("ToCountry").map(String::as_str));
        info!(call_sid, to, "no tenant for the dialed number; apologising");
        return Ok(xml(twiml::say_and_hangup(twiml::unknown_number_apology(lang), lang)));
    };
    let stream_url =
        rt.config.stream_url().ok_or_else(|| ApiError::unavailable("not_configured", "PUBLIC_BASE_URL is not set"))?;
    let issued = crate::bridge::unix_ms() / 1000;
    let token = rt
        .config
        .twilio_auth_token
        .as_ref()
        .map(|t| stream_token(t.expose(), call_sid, &tenant.id, issued))
        .unwrap_or_default();
    let issued = issued.to_string();
    let answer = twiml::connect_stream(
        &stream_url,
        &[
            ("tenant", tenant.id.as_str()),
            ("from", from),
            ("to", to),
            ("call_sid", call_sid),
            (ISSUED_PARAM, issued.as_str()),
            (TOKEN_PARAM, token.as_str()),
        ],
    );
    if let Some(settings) = rt.realtime_settings() {
        rt.prewarm.start(call_sid, settings, rt.session_spec(&tenant));
    }
    info!(call_sid, tenant = %tenant.id, from, "webhook answered");
    Ok(xml(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_number_language_follows_the_country() {
        assert_eq!(language_for_country(Some("IT")), "it");
        assert_eq!(language_for_country(Some("FR")), "fr");
        assert_eq!(language_for_country(None), "en");
    }
}
