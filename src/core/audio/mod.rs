//! Audio: G.711 mu-law, voice activity detection, resampling, 20 ms framing, and cutting
//! meeting recordings into transcription-sized chunks.

pub mod apology;
pub mod framing;
pub mod mulaw;
pub mod resample;
pub mod split;
pub mod vad;
