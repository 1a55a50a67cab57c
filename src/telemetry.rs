//! Logging: structured, per-call spans (`call_sid`, `tenant`); JSON for production.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    // `try_init` fails only if a subscriber is already installed (tests); that is fine.
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.compact().try_init() };
}
