//! OpenAI adapters: the Realtime WebSocket client, chat completions and audio transcriptions.

pub mod chat;
pub mod realtime;
pub mod transcribe;
