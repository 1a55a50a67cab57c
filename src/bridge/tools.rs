//! Runs the tools the model calls: built-ins answer from the tenant's configuration
//! (`business_info`) or validate and record (`take_booking`); webhook tools POST to the
//! tenant's endpoint, signed. Every tool runs in its own task with a timeout, so a slow one
//! never stalls the call's loop. (`end_call` and `transfer_call` are the session's own.)

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::core::domain::booking::{self, Booking};
use crate::core::domain::tenant::{BuiltinTool, Tenant};
use crate::core::realtime::tools;

/// A built-in tool that takes longer than this answers with an error instead.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(8);

/// A tool's answer, and what it changed.
#[derive(Debug)]
pub struct ToolDone {
    pub call_id: String,
    /// JSON for `function_call_output`.
    pub output: String,
    /// A booking `take_booking` made.
    pub booking: Option<Booking>,
}

/// What a tool may know about its call.
#[derive(Debug, Clone)]
pub struct ToolContext {
    pub call_sid: String,
    pub caller: String,
    pub http: reqwest::Client,
}

/// Starts `name` for `call_id`; its result arrives on `results`.
pub fn spawn(
    tracker: &TaskTracker,
    tenant: Arc<Tenant>,
    ctx: ToolContext,
    call_id: String,
    name: String,
    arguments: String,
    results: mpsc::Sender<ToolDone>,
) {
    let limit = tenant
        .webhook_tools
        .iter()
        .find(|t| t.name == name)
        .map_or(TOOL_TIMEOUT, |t| Duration::from_millis(u64::from(t.timeout_ms)) + Duration::from_secs(1));
    tracker.spawn(async move {
        let (output, booking) = match tokio::time::timeout(limit, run(&tenant, &ctx, &name, &arguments)).await {
            Ok(out) => out,
            Err(_) => {
                warn!(tool = %name, "tool timed out");
                (serde_json::json!({"error": format!("the tool {name} did not answer in time")}).to_string(), None)
            }
        };
        info!(tool = %name, booked = booking.is_some(), "tool answered");
        let _ = results.send(ToolDone { call_id, output, booking }).await;
    });
}

async fn run(tenant: &Tenant, ctx: &ToolContext, name: &str, arguments: &str) -> (String, Option<Booking>) {
    if let Some(hook) = tenant.webhook_tools.iter().find(|t| t.name == name) {
        let wctx = super::webhook::WebhookContext {
            call_sid: ctx.call_sid.clone(),
            tenant_id: tenant.id.clone(),
            caller: ctx.caller.clone(),
        };
        let timeout = Duration::from_millis(u64::from(hook.timeout_ms));
        let out = super::webhook::call(&ctx.http, &hook.url, &hook.secret, timeout, name, arguments, &wctx).await;
        return (out, None);
    }
    match BuiltinTool::from_name(name).filter(|t| tenant.tools.contains(t)) {
        Some(BuiltinTool::BusinessInfo) => (tools::business_info(&tenant.name, &tenant.business), None),
        Some(BuiltinTool::TakeBooking) => match &tenant.booking {
            Some(rules) => {
                let now_local = crate::tenants::local_datetime(&tenant.timezone, super::unix_ms());
                match booking::validate(arguments, rules, now_local) {
                    Ok(b) => (booking::tool_output_ok(&b), Some(b)),
                    Err(problems) => (booking::tool_output_rejected(&problems, rules), None),
                }
            }
            None => (tools::unknown_tool(name), None),
        },
        _ => (tools::unknown_tool(name), None),
    }
}
