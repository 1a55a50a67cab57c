//! Twilio: Media Streams messages, `X-Twilio-Signature`, TwiML.

pub mod binding;
pub mod messages;
pub mod signature;
pub mod twiml;
