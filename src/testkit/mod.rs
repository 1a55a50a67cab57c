//! In-repo fakes for what lies outside the daemon. Used by integration tests, the load
//! generator and benchmarks; never by the daemon itself.
//!
//! - [`fake_realtime`]: a fake OpenAI Realtime server (GA dialect) on `127.0.0.1:0`, scripted
//!   with a [`FakeScript`]: agent audio, transcripts, server-VAD emulation, faults.
//! - [`fake_openai_http`]: the same server's `POST /v1/chat/completions`, answering from a
//!   queue of [`ChatReply`]s (valid summary, error status, malformed content, hang), and its
//!   `POST /v1/audio/transcriptions`, answering from a queue of [`TranscriptionReply`]s.
//! - [`twilio_client`]: a fake Twilio (signed webhook `POST`, then a Media Streams WebSocket
//!   client that streams caller audio in real time and plays the daemon's audio back on a
//!   real-time playback clock, echoing marks and honouring `clear`).
//! - [`fake_twilio_rest`]: Twilio's REST "update a Call" endpoint (hang up, redirect), with
//!   basic-auth and form checks, recorded requests and scripted error replies.
//! - [`fake_webhook`]: a tenant's webhook-tool endpoint that verifies the request signature,
//!   records the calls and answers a scripted JSON, status or delay.
//! - [`smtp_sink`]: a fake SMTP server (plain TCP) that records what it is sent, with fault
//!   modes (`451`, `550`, hang-up) and stop/restart on the same port; see its module docs.
//!
//! Both fakes are written from `docs/protocols.md`, independently of `crate::core`, on purpose:
//! they must catch the daemon's protocol mistakes rather than share them. They never panic on
//! odd input; whatever breaks the protocol is recorded as a human-readable string in a
//! `violations()` list the test can assert empty.
//!
//! # Using the two fakes together
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use switchboard::testkit::{self, FakeRealtime, FakeScript, StartParams, TwilioCall};
//!
//! // 1. The upstream: agent audio is 2 s of "voice", answered after each caller turn.
//! let fake = FakeRealtime::start(FakeScript {
//!     expected_api_key: Some("sk-test".into()),
//!     greeting_audio: testkit::ulaw_voice(2_000, 8_000),
//!     greeting_transcript: "Hello, how can I help?".into(),
//!     reply_audio: testkit::ulaw_voice(3_000, 8_000),
//!     reply_transcript: "We open at nine.".into(),
//!     caller_transcripts: vec!["When do you open?".into()],
//!     ..FakeScript::default()
//! })
//! .await?;
//! // Start the daemon with OPENAI_BASE_URL = fake.base_url(), OPENAI_API_KEY = "sk-test",
//! // PUBLIC_BASE_URL = "https://sb.example.com", TWILIO_AUTH_TOKEN = "tok" … on 127.0.0.1:PORT.
//! let daemon = "http://127.0.0.1:8080";
//!
//! // 2. Twilio's webhook, signed over the public URL, then the stream it describes.
//! let (status, twiml) = testkit::post_webhook(
//!     daemon,
//!     "https://sb.example.com",
//!     Some("tok"),
//!     &[("CallSid", "CA0123456789abcdef0123456789abcdef"), ("From", "+15551234567"), ("To", "+15557654321")],
//! )
//! .await?;
//! assert_eq!(status, 200);
//! let stream = testkit::parse_twiml_stream(&twiml).expect("a <Stream>");
//! let sig = testkit::sign("tok", &stream.url, &[]);
//! let ws_url = stream.url.replacen("wss://sb.example.com", "ws://127.0.0.1:8080", 1);
//! let start = StartParams::from_stream(&stream).with_call_sid("CA0123456789abcdef0123456789abcdef");
//! let mut call = TwilioCall::connect(&ws_url, Some(sig), start).await?;
//!
//! // 3. Let the greeting start, then barge in while it plays.
//! call.wait_for(|s| s.played_ms > 500, Duration::from_secs(5)).await?;
//! let speech_at = call.play(&testkit::ulaw_voice(1_000, 8_000));
//! call.wait_for(|s| s.clears >= 1, Duration::from_secs(5)).await?;
//! let clear = call.clears()[0].clone();
//! let barge_in_delay_ms = clear.caller_audio_ms - speech_at; // in caller-audio time
//! fake.wait_for(|ev| ev.iter().any(|e| e.kind() == "conversation.item.truncate"), Duration::from_secs(2)).await?;
//! let truncate = fake.truncates()[0].clone();
//! // What the caller heard of the interrupted item: the run the clear cut, or (robust to
//! // underruns) what played of the audio that arrived after the item's first delta was sent.
//! let heard_ms = clear.run_played_ms;
//! let item_start = fake.item_audio_started(&truncate.item_id).expect("item had audio");
//! let heard_exact_ms = call.played_ms_between(item_start, clear.at);
//! let error_ms = truncate.audio_end_ms - heard_exact_ms as i64; // daemon's audio_end_ms error
//! # let _ = (barge_in_delay_ms, error_ms, heard_ms);
//! call.stop().await;
//! assert!(call.violations().is_empty() && fake.violations().is_empty());
//! # Ok(()) }
//! ```

pub mod fake_openai_http;
pub mod fake_realtime;
pub mod fake_twilio_rest;
pub mod fake_webhook;
pub mod pg;
pub mod smtp_sink;
pub mod twilio_client;

pub use fake_openai_http::{ChatReply, TranscriptionReply, TranscriptionRequest};
pub use fake_realtime::{FakeRealtime, FakeScript, Handshake, RecordedEvent, TruncateRecord};
pub use fake_twilio_rest::{FakeTwilioRest, RestRequest};
pub use fake_webhook::{FakeWebhook, WebhookRequest};
pub use smtp_sink::{ReceivedMail, SinkMode, SmtpSink};
pub use twilio_client::{
    CallStats, ClearRecord, MarkEcho, PlaybackRun, StartParams, TwilioCall, TwimlStream, UpgradeRefused,
    parse_twiml_stream, post_webhook, sign, xml_unescape,
};

/// G.711 μ-law decode (protocols.md B.2), written here independently of `crate::core`.
pub fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

/// G.711 μ-law encode (protocols.md B.3).
pub fn ulaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign: u8 = if s < 0 { 0x80 } else { 0 };
    s = s.abs().min(32_635) + 0x84;
    let mut exponent = 7u8;
    while exponent > 0 && s & (0x80 << exponent) == 0 {
        exponent -= 1;
    }
    let mantissa = ((s >> (exponent + 3)) & 0x0F) as u8;
    !(sign | (exponent << 4) | mantissa)
}

/// G.711 A-law decode (only used by the fake's VAD when a session asks for `audio/pcma`).
pub fn alaw_decode(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let exponent = i32::from((a >> 4) & 0x07);
    let mantissa = i32::from(a & 0x0F);
    let magnitude = if exponent == 0 { (mantissa << 4) + 8 } else { ((mantissa << 4) + 0x108) << (exponent - 1) };
    (if a & 0x80 != 0 { magnitude } else { -magnitude }) as i16
}

/// Converts μ-law 8 kHz to PCM16 little-endian 24 kHz (decode + 3× linear interpolation),
/// for scripts whose session uses `audio/pcm`. Output is 48 bytes per ms (6 bytes per input byte).
pub fn ulaw_to_pcm24k(ulaw: &[u8]) -> Vec<u8> {
    let samples: Vec<i32> = ulaw.iter().map(|&b| i32::from(ulaw_decode(b))).collect();
    let mut out = Vec::with_capacity(samples.len() * 6);
    for (i, &s) in samples.iter().enumerate() {
        let next = samples.get(i + 1).copied().unwrap_or(s);
        for k in 0..3 {
            let v = s + (next - s) * k / 3;
            out.extend_from_slice(&(v as i16).to_le_bytes());
        }
    }
    out
}

/// `ms` of μ-law digital silence (`0xFF`), what Twilio streams while the caller is quiet.
pub fn ulaw_silence(ms: u32) -> Vec<u8> {
    vec![0xFF; ms as usize * 8]
}

/// `ms` of a pure sine tone at `freq_hz`, peak `amplitude` (i16 scale), μ-law 8 kHz.
pub fn ulaw_tone(ms: u32, freq_hz: f32, amplitude: i16) -> Vec<u8> {
    let n = ms as usize * 8;
    (0..n)
        .map(|i| {
            let t = i as f32 / 8_000.0;
            ulaw_encode((f32::from(amplitude) * (2.0 * std::f32::consts::PI * freq_hz * t).sin()) as i16)
        })
        .collect()
}

/// `ms` of a crude voice-like signal (μ-law 8 kHz): a 130–150 Hz glottal pulse train with
/// harmonics shaped around three formants and a 4 Hz syllable envelope that never reaches
/// silence. Loud enough (peak about `amplitude`) for energy VADs; for the daemon's webrtc-vad
/// prefer the espeak fixtures in `fixtures/` when the test depends on real speech detection.
pub fn ulaw_voice(ms: u32, amplitude: i16) -> Vec<u8> {
    use std::f32::consts::PI;
    let n = ms as usize * 8;
    let formants = [(600.0f32, 1.0f32), (1_400.0, 0.6), (2_600.0, 0.3)];
    let mut phase = 0.0f32;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = i as f32 / 8_000.0;
        let f0 = 140.0 + 10.0 * (2.0 * PI * 3.0 * t).sin();
        phase += 2.0 * PI * f0 / 8_000.0;
        let mut v = 0.0f32;
        for h in 1..=25u32 {
            let fh = f0 * h as f32;
            if fh > 3_600.0 {
                break;
            }
            let gain: f32 = formants.iter().map(|(f, g)| g / (1.0 + ((fh - f) / 250.0).powi(2))).sum::<f32>() + 0.05;
            v += gain * (phase * h as f32).sin();
        }
        let envelope = 0.65 + 0.35 * (2.0 * PI * 4.0 * t).sin();
        out.push(ulaw_encode((v * envelope * f32::from(amplitude) / 3.0).clamp(-32_000.0, 32_000.0) as i16));
    }
    out
}

/// RMS (i16 scale) of μ-law bytes; a convenience for tests that check what was played.
pub fn ulaw_rms(ulaw: &[u8]) -> f64 {
    if ulaw.is_empty() {
        return 0.0;
    }
    let sum: f64 = ulaw.iter().map(|&b| f64::from(ulaw_decode(b)).powi(2)).sum();
    (sum / ulaw.len() as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_matches_the_reference_vectors() {
        for (byte, value) in
            [(0x00u8, -32124i16), (0x80, 32124), (0x0F, -16764), (0xF0, 120), (0x7E, -8), (0xFF, 0), (0x7F, 0)]
        {
            assert_eq!(ulaw_decode(byte), value, "decode {byte:#04x}");
        }
        for (sample, byte) in [
            (0i16, 0xFFu8),
            (-1, 0x7F),
            (4, 0xFE),
            (100, 0xF2),
            (-1000, 0x4E),
            (16000, 0x90),
            (32767, 0x80),
            (-32768, 0x00),
            (-31611, 0x01),
        ] {
            assert_eq!(ulaw_encode(sample), byte, "encode {sample}");
        }
        for b in 0..=255u8 {
            if b != 0x7F {
                assert_eq!(ulaw_encode(ulaw_decode(b)), b);
            }
        }
    }

    #[test]
    fn alaw_decodes_known_codes() {
        // 0xD5 / 0x55 are the A-law codes closest to zero (+8 / -8).
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
    }

    #[test]
    fn pcm24k_is_three_times_longer_and_interpolated() {
        let pcm = ulaw_to_pcm24k(&[0xFF, 0x80]);
        assert_eq!(pcm.len(), 12);
        let s: Vec<i16> = pcm.chunks(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
        assert_eq!(s, vec![0, 10708, 21416, 32124, 32124, 32124]);
    }

    #[test]
    fn generated_audio_has_the_expected_level() {
        assert_eq!(ulaw_rms(&ulaw_silence(100)), 0.0);
        let tone = ulaw_tone(100, 440.0, 10_000);
        assert_eq!(tone.len(), 800);
        assert!((ulaw_rms(&tone) - 7_071.0).abs() < 300.0);
        let voice = ulaw_voice(500, 8_000);
        assert_eq!(voice.len(), 4_000);
        assert!(ulaw_rms(&voice) > 1_000.0, "{}", ulaw_rms(&voice));
    }
}
