//! Switchboard: a realtime voice-agent daemon bridging Twilio Media Streams to the
//! OpenAI Realtime API (GA dialect), per tenant, with barge-in.
//!
//! Layout (imports point down):
//! - [`core`]: pure logic (codecs, VAD, resampling, protocol messages, signatures, TwiML,
//!   the per-call session state machine). No sockets, files, env or clock.
//! - [`tenants`], [`openai`], [`mail`], [`media`], [`twilio_rest`]: adapters.
//! - [`ws`]: one-task WebSockets (tungstenite on a tokio socket) for the call's two sockets.
//! - [`bridge`]: the per-call owner task.
//! - [`http`]: routes. [`app`]: composition root.
//! - [`testkit`]: in-repo fakes (Realtime server, Twilio Media Streams client) shared by the
//!   integration tests, the load generator and benchmarks.

pub mod app;
pub mod bridge;
pub mod config;
pub mod core;
pub mod http;
pub mod mail;
pub mod media;
pub mod metrics;
pub mod openai;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tenants;
pub mod testkit;
pub mod twilio_rest;
pub mod worker;
pub mod ws;
