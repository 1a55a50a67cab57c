//! OpenAI adapters: the Realtime WebSocket client and chat completions.

pub mod chat;
pub mod realtime;
