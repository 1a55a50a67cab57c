//! OpenAI Realtime API, GA dialect: client events we send, server events we receive, and the
//! session configuration built from a tenant.

pub mod client;
pub mod server;
pub mod session_config;
pub mod tools;
