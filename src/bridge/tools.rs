//! Runs the tools the model calls. Built-ins answer from the tenant's configuration; every
//! tool runs in its own task with a timeout, so a slow one never stalls the call's loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::core::domain::tenant::{BuiltinTool, Tenant};
use crate::core::realtime::tools;

/// A tool that takes longer than this answers with an error instead.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(8);

/// `(call_id, JSON output)`
pub type ToolResult = (String, String);

/// Starts `name` for `call_id`; its result arrives on `results`.
pub fn spawn(
    tracker: &TaskTracker,
    tenant: Arc<Tenant>,
    call_id: String,
    name: String,
    arguments: String,
    results: mpsc::Sender<ToolResult>,
) {
    tracker.spawn(async move {
        let output = match tokio::time::timeout(TOOL_TIMEOUT, run(&tenant, &name, &arguments)).await {
            Ok(out) => out,
            Err(_) => {
                warn!(tool = %name, "tool timed out");
                serde_json::json!({"error": format!("the tool {name} did not answer in time")}).to_string()
            }
        };
        info!(tool = %name, "tool answered");
        let _ = results.send((call_id, output)).await;
    });
}

async fn run(tenant: &Tenant, name: &str, _arguments: &str) -> String {
    match BuiltinTool::from_name(name).filter(|t| tenant.tools.contains(t)) {
        Some(BuiltinTool::BusinessInfo) => tools::business_info(&tenant.name, &tenant.business),
        // `end_call` is handled by the session itself; anything else is unknown.
        _ => tools::unknown_tool(name),
    }
}
