//! Audio: G.711 mu-law, voice activity detection, resampling, 20 ms framing.

pub mod apology;
pub mod framing;
pub mod mulaw;
pub mod resample;
pub mod vad;
