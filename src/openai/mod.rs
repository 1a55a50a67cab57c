//! OpenAI adapters: the Realtime WebSocket client.

pub mod realtime;
