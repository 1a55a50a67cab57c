//! Per-frame costs of the pure call path (no sockets): what the daemon spends per 20 ms
//! frame of caller audio (inbound) and of agent audio (outbound), in both audio formats,
//! plus the message parsing and base64 work on its own.
//!
//! Run: `cargo bench --bench frame_paths`

use std::hint::black_box;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use switchboard::core::domain::tenant::{AudioFormat, BargeIn};
use switchboard::core::realtime::server::ServerEvent;
use switchboard::core::session::{CallSession, Output, SessionParams};
use switchboard::core::twilio::messages::Inbound;

const SPEECH: &[u8] = include_bytes!("../fixtures/it_caller_booking.ulaw");

fn session(format: AudioFormat) -> CallSession {
    let p = SessionParams {
        tenant_id: "t".into(),
        call_sid: "CA00000000000000000000000000000000".into(),
        stream_sid: "MZ00000000000000000000000000000000".into(),
        from: "+393331234567".into(),
        to: "+39021111111".into(),
        started_at_unix_ms: 0,
        language: "it".into(),
        greeting: "Ciao".into(),
        audio_format: format,
        barge_in: BargeIn { enabled: false, ..BargeIn::default() },
        apology: &[],
        filler: &[],
        max_reconnects: 0,
        rotate_after_ms: 0,
        backlog_frames: 50,
        frames_per_mark: switchboard::core::session::DEFAULT_FRAMES_PER_MARK,
        idle_prompt_ms: 0,
        transfer_targets: Vec::new(),
        key_actions: Vec::new(),
        side_effect_tools: Vec::new(),
    };
    let mut s = CallSession::new(p, 0, true);
    while s.poll_output().is_some() {}
    s
}

fn media_frames() -> Vec<String> {
    SPEECH
        .chunks_exact(160)
        .enumerate()
        .map(|(i, f)| {
            json!({"event":"media","sequenceNumber":(i + 2).to_string(),"media":{"track":"inbound","chunk":(i + 1).to_string(),"timestamp":(i * 20).to_string(),"payload":B64.encode(f)},"streamSid":"MZ00000000000000000000000000000000"}).to_string()
        })
        .collect()
}

fn inbound(c: &mut Criterion) {
    let frames = media_frames();
    for (name, format) in [("inbound_frame/pcmu", AudioFormat::Pcmu), ("inbound_frame/pcm24k", AudioFormat::Pcm24k)] {
        let mut s = session(format);
        let mut i = 0usize;
        let mut now = 0u64;
        c.bench_function(name, |b| {
            b.iter(|| {
                now += 20;
                s.handle_twilio_text(now, &frames[i % frames.len()]);
                i += 1;
                while let Some(o) = s.poll_output() {
                    black_box(o);
                }
            })
        });
    }
}

fn outbound(c: &mut Criterion) {
    for (name, format, bytes_per_frame) in
        [("outbound_frame/pcmu", AudioFormat::Pcmu, 160usize), ("outbound_frame/pcm24k", AudioFormat::Pcm24k, 960)]
    {
        let audio: Vec<u8> = (0..bytes_per_frame).map(|i| (i * 7 % 256) as u8).collect();
        let delta = json!({"type":"response.output_audio.delta","event_id":"event_1","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":B64.encode(&audio)}).to_string();
        let mut s = session(format);
        let mut now = 0u64;
        let mut marks: Vec<String> = Vec::new();
        c.bench_function(name, |b| {
            b.iter(|| {
                now += 20;
                s.handle_realtime_text(now, &delta);
                // Echo the marks as Twilio would, so pacing keeps sending.
                while let Some(o) = s.poll_output() {
                    if let Output::Twilio(t) = &o
                        && t.starts_with(r#"{"event":"mark""#)
                    {
                        marks.push(t.clone());
                    }
                    black_box(o);
                }
                for m in marks.drain(..) {
                    s.handle_twilio_text(now, &m);
                }
                while let Some(o) = s.poll_output() {
                    black_box(o);
                }
            })
        });
    }
}

fn parsing(c: &mut Criterion) {
    let frames = media_frames();
    let frame = &frames[40];
    c.bench_function("parse/twilio_media", |b| b.iter(|| black_box(Inbound::parse(black_box(frame)).ok())));
    let delta = json!({"type":"response.output_audio.delta","event_id":"event_1","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":B64.encode([0x55u8; 800])}).to_string();
    c.bench_function("parse/realtime_delta_100ms", |b| {
        b.iter(|| black_box(ServerEvent::parse(black_box(&delta)).ok()))
    });
    let payload = B64.encode(&SPEECH[..160]);
    let mut buf = Vec::with_capacity(160);
    c.bench_function("base64/decode_160", |b| {
        b.iter(|| {
            buf.clear();
            B64.decode_vec(black_box(&payload), &mut buf).ok();
            black_box(&buf);
        })
    });
    let mut out = String::with_capacity(256);
    c.bench_function("base64/encode_160", |b| {
        b.iter(|| {
            out.clear();
            B64.encode_string(black_box(&SPEECH[..160]), &mut out);
            black_box(&out);
        })
    });
}

criterion_group!(benches, inbound, outbound, parsing);
criterion_main!(benches);
