//! Scripted session runs, faster than real time: exact `clear` / `truncate` / `cancel`
//! outputs for given marks and speech, pacing, the response queue, the apology, the record.

use super::*;
use std::collections::HashMap;

use serde_json::{Value, json};

const SPEECH: &[u8] = include_bytes!("../../../fixtures/it_caller_booking.ulaw");

fn params(format: AudioFormat) -> SessionParams {
    SessionParams {
        tenant_id: "trattoria-mario".into(),
        call_sid: "CA1".into(),
        stream_sid: "MZ1".into(),
        from: "+393331234567".into(),
        to: "+39021111111".into(),
        started_at_unix_ms: 1_700_000_000_000,
        language: "it".into(),
        greeting: "Trattoria da Mario, buongiorno!".into(),
        audio_format: format,
        barge_in: BargeIn::default(),
        apology: &[0x55; 1600],
        filler: &[0x66; 800],
        max_reconnects: 0,
        rotate_after_ms: 0,
        backlog_frames: 3,
        frames_per_mark: 1,
        idle_prompt_ms: 0,
        transfer_targets: Vec::new(),
        key_actions: Vec::new(),
        side_effect_tools: Vec::new(),
    }
}

fn drain(s: &mut CallSession) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn json_of(o: &Output) -> Value {
    match o {
        Output::Twilio(t) | Output::Realtime(t) => serde_json::from_str(t).expect("outputs are JSON"),
        other => json!({"other": format!("{other:?}")}),
    }
}

fn media(bytes: &[u8], ts: u64) -> String {
    json!({"event":"media","streamSid":"MZ1","media":{"track":"inbound","chunk":"1","timestamp":ts.to_string(),"payload":B64.encode(bytes)}}).to_string()
}

fn mark(name: &str) -> String {
    json!({"event":"mark","streamSid":"MZ1","mark":{"name":name}}).to_string()
}

fn rt(v: Value) -> String {
    v.to_string()
}

fn delta(item: &str, resp: &str, bytes: &[u8]) -> String {
    rt(
        json!({"type":"response.output_audio.delta","response_id":resp,"item_id":item,"output_index":0,"content_index":0,"delta":B64.encode(bytes)}),
    )
}

/// A ready session whose greeting response is active and has produced `ms` of item_1 audio.
fn speaking(ms: usize) -> (CallSession, Vec<Output>) {
    let mut s = CallSession::new(params(AudioFormat::Pcmu), 0, true);
    drain(&mut s);
    s.handle_realtime_text(
        10,
        &rt(json!({"type":"response.created","response":{"id":"resp_1","status":"in_progress"}})),
    );
    s.handle_realtime_text(11, &rt(json!({"type":"response.output_item.added","response_id":"resp_1","item":{"id":"item_1","type":"message","role":"assistant"}})));
    let audio: Vec<u8> = (0..ms * 8).map(|i| (i % 251) as u8).collect();
    s.handle_realtime_text(12, &delta("item_1", "resp_1", &audio));
    let out = drain(&mut s);
    (s, out)
}

fn twilio_payloads(out: &[Output]) -> Vec<Vec<u8>> {
    out.iter()
        .map(json_of)
        .filter(|v| v["event"] == "media")
        .map(|v| B64.decode(v["media"]["payload"].as_str().unwrap()).unwrap())
        .collect()
}

fn mark_names(out: &[Output]) -> Vec<String> {
    out.iter()
        .map(json_of)
        .filter(|v| v["event"] == "mark")
        .map(|v| v["mark"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn greeting_is_requested_first_once_upstream_is_ready() {
    let mut s = CallSession::new(params(AudioFormat::Pcmu), 0, false);
    assert!(drain(&mut s).is_empty(), "nothing before the upstream is ready");
    s.on_realtime_ready(5);
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    let v = json_of(&out[0]);
    assert_eq!(v["type"], "response.create");
    assert!(v["response"]["instructions"].as_str().unwrap().contains("Trattoria da Mario, buongiorno!"));
    s.on_realtime_ready(6);
    assert!(drain(&mut s).is_empty(), "greeting never doubled");
}

#[test]
fn caller_audio_passes_through_byte_exact_and_backlog_is_bounded() {
    let mut s = CallSession::new(params(AudioFormat::Pcmu), 0, false);
    let frames: Vec<Vec<u8>> = (0..5u8).map(|k| vec![0xF0 | k; 160]).collect();
    for (i, f) in frames.iter().enumerate() {
        s.handle_twilio_text(i as u64 * 20, &media(f, i as u64 * 20));
    }
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.stats().frames_dropped, 2, "backlog of 3 keeps the newest");
    s.on_realtime_ready(100);
    let out = drain(&mut s);
    let appended: Vec<Vec<u8>> = out
        .iter()
        .map(json_of)
        .filter(|v| v["type"] == "input_audio_buffer.append")
        .map(|v| B64.decode(v["audio"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(appended, frames[2..].to_vec());
    // Once ready: the exact same base64 string is forwarded.
    let text = media(&frames[0], 120);
    s.handle_twilio_text(120, &text);
    let out = drain(&mut s);
    let Output::Realtime(msg) = &out[0] else { panic!("{out:?}") };
    assert!(msg.contains(&B64.encode(&frames[0])));
}

#[test]
fn agent_audio_is_framed_marked_and_paced_by_echoes_one_mark_per_frame() {
    let (mut s, out) = speaking(1000);
    // 300 ms lead: 15 frames of 160 bytes, each followed by its mark.
    let payloads = twilio_payloads(&out);
    assert_eq!(payloads.len(), 15);
    assert!(payloads.iter().all(|p| p.len() == 160));
    let marks = mark_names(&out);
    assert_eq!(marks.len(), 15);
    assert_eq!(marks[0], "g0.1");
    // Every media is directly followed by its mark.
    let kinds: Vec<String> = out.iter().map(json_of).map(|v| v["event"].as_str().unwrap_or("").to_owned()).collect();
    assert!(kinds.chunks(2).all(|c| c == ["media", "mark"]), "{kinds:?}");
    // Echo two marks: two more frames go out.
    s.handle_twilio_text(100, &mark(&marks[1]));
    let more = drain(&mut s);
    assert_eq!(twilio_payloads(&more).len(), 2);
    // Bytes are the generated bytes, in order.
    let audio: Vec<u8> = (0..8000).map(|i| (i % 251) as u8).collect();
    let sent: Vec<u8> = payloads.into_iter().chain(twilio_payloads(&more)).flatten().collect();
    assert_eq!(sent, audio[..sent.len()]);
}

#[test]
fn server_barge_in_clears_and_truncates_to_what_was_heard() {
    let (mut s, out) = speaking(1000);
    let marks = mark_names(&out);
    // Marks 1-3 echoed: 60 ms heard; 4 outstanding frames more were queued by pacing.
    for m in &marks[..3] {
        s.handle_twilio_text(50, &mark(m));
    }
    drain(&mut s);
    s.handle_realtime_text(
        200,
        &rt(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":900,"item_id":"item_u1"})),
    );
    let out = drain(&mut s);
    let v: Vec<Value> = out.iter().map(json_of).collect();
    // The server cancelled the response itself (interrupt_response): clear + truncate only.
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(v[0], json!({"event":"clear","streamSid":"MZ1"}));
    assert_eq!(
        v[1],
        // 60 ms echoed, and the 4th frame has been playing since the last echo (t=50) long
        // enough to finish: 80 ms, never beyond its unechoed end.
        json!({"type":"conversation.item.truncate","item_id":"item_1","content_index":0,"audio_end_ms":80})
    );
    // Echoes of cleared marks are ignored: no more audio, heard stays at 60 ms.
    for m in &marks[3..] {
        s.handle_twilio_text(210, &mark(m));
    }
    assert!(drain(&mut s).is_empty());
    // Late deltas of the cut item are dropped.
    s.handle_realtime_text(220, &delta("item_1", "resp_1", &[1; 800]));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.stats().late_deltas_dropped, 1);
    // A second speech_started with nothing playing does nothing.
    s.handle_realtime_text(230, &rt(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":950})));
    assert!(drain(&mut s).is_empty());
    s.handle_realtime_text(240, &rt(json!({"type":"response.output_audio_transcript.done","item_id":"item_1","transcript":"Buongiorno, siamo aperti tutti i giorni dalle dodici."})));
    s.handle_twilio_text(300, r#"{"event":"stop","stop":{"callSid":"CA1"}}"#);
    let rec = s.into_record(300);
    assert_eq!(rec.interruptions, 1);
    assert_eq!(rec.end_reason, EndReason::CallerHangup);
    let agent = rec.transcript.iter().find(|t| t.speaker == Speaker::Agent).unwrap();
    assert!(agent.interrupted);
    assert_eq!(agent.heard_ms, Some(80));
    assert_eq!(agent.generated_ms, Some(1000));
    assert_eq!(rec.agent_talk_ms, 80);
}

#[test]
fn truncate_never_exceeds_generated_audio_and_is_skipped_when_all_heard() {
    // 50 ms generated: 2 full frames + a partial once the item is done.
    let (mut s, out) = speaking(50);
    assert_eq!(twilio_payloads(&out).len(), 2, "partial frame waits for the rest");
    s.handle_realtime_text(20, &rt(json!({"type":"response.output_audio.done","item_id":"item_1"})));
    let out = drain(&mut s);
    let p = twilio_payloads(&out);
    assert_eq!(p.iter().map(Vec::len).collect::<Vec<_>>(), vec![80]);
    let names = mark_names(&out);
    s.handle_twilio_text(30, &mark(&names[0])); // everything heard
    drain(&mut s);
    s.handle_realtime_text(40, &rt(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":1})));
    assert!(drain(&mut s).is_empty(), "nothing playing: no barge-in");
}

#[test]
fn local_vad_barges_in_on_real_speech_after_min_speech() {
    let (mut s, out) = speaking(3000);
    let marks = mark_names(&out);
    s.handle_twilio_text(30, &mark(&marks[4])); // 100 ms heard
    drain(&mut s);
    // Feed the real Italian speech fixture, 20 ms at a time, until a clear appears.
    let mut clear_at = None;
    let mut first_speech_frame = None;
    let mut vad = FrameVad::new(3);
    let mut pcm = Vec::new();
    for (i, f) in SPEECH.chunks(160).enumerate() {
        let now = 1000 + i as u64 * 20;
        mulaw::decode_into(f, &mut pcm);
        if first_speech_frame.is_none() && f.len() == 160 && vad.is_speech(&pcm) {
            first_speech_frame = Some(now);
        }
        s.handle_twilio_text(now, &media(f, now));
        let out = drain(&mut s);
        if out.iter().map(json_of).any(|v| v["event"] == "clear") {
            let v: Vec<Value> = out
                .iter()
                .map(json_of)
                .filter(|v| v["type"].is_string() && v["type"] != "input_audio_buffer.append")
                .collect();
            assert_eq!(v[0]["type"], "conversation.item.truncate");
            // 100 ms echoed at t=30 plus the next frame, long finished by now: 120 ms.
            assert_eq!(v[0]["audio_end_ms"], 120);
            // Our own VAD cut the agent: the active response is cancelled, once.
            assert_eq!(v[1], json!({"type":"response.cancel"}));
            assert_eq!(v.len(), 2);
            clear_at = Some(now);
            break;
        }
    }
    let (onset, clear) = (first_speech_frame.expect("fixture has speech"), clear_at.expect("barge-in fired"));
    let delay = clear - onset;
    assert!((180..=300).contains(&delay), "onset→clear {delay} ms (min speech 200 ms)");
}

#[test]
fn barge_in_can_be_disabled() {
    let mut p = params(AudioFormat::Pcmu);
    p.barge_in.enabled = false;
    let mut s = CallSession::new(p, 0, true);
    drain(&mut s);
    s.handle_realtime_text(1, &delta("item_1", "resp_1", &[1; 1600]));
    drain(&mut s);
    s.handle_realtime_text(2, &rt(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":1})));
    assert!(drain(&mut s).is_empty());
}

#[test]
fn responses_are_queued_never_doubled() {
    let (mut s, _) = speaking(100);
    // DTMF while a response is active: the item goes now, the response.create waits.
    s.handle_twilio_text(20, r#"{"event":"dtmf","streamSid":"MZ1","dtmf":{"track":"inbound_track","digit":"3"}}"#);
    let out: Vec<Value> = drain(&mut s).iter().map(json_of).collect();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["type"], "conversation.item.create");
    assert!(out[0]["item"]["content"][0]["text"].as_str().unwrap().contains('3'));
    s.handle_realtime_text(30, &rt(json!({"type":"response.done","response":{"id":"resp_1","status":"completed","usage":{"total_tokens":10,"input_tokens":4,"output_tokens":6}}})));
    let out: Vec<Value> = drain(&mut s).iter().map(json_of).filter(|v| v["type"].is_string()).collect();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["type"], "response.create");
    let id = out[0]["event_id"].as_str().unwrap().to_owned();
    // The server started its own response first: ours is re-queued, then sent after it.
    s.handle_realtime_text(31, &rt(json!({"type":"response.created","response":{"id":"resp_2"}})));
    s.handle_realtime_text(32, &rt(json!({"type":"error","error":{"type":"invalid_request_error","code":"conversation_already_has_active_response","message":"busy","event_id":id}})));
    assert!(drain(&mut s).iter().map(json_of).all(|v| v["type"] != "response.create"));
    s.handle_realtime_text(40, &rt(json!({"type":"response.done","response":{"id":"resp_2","status":"completed","usage":{"total_tokens":5,"input_tokens":2,"output_tokens":3}}})));
    let creates = drain(&mut s).iter().map(json_of).filter(|v| v["type"] == "response.create").count();
    assert_eq!(creates, 1);
    let rec = s.into_record(50);
    assert_eq!(rec.usage.total_tokens, 15);
    assert_eq!(rec.stats.dtmf_digits, 1);
}

#[test]
fn upstream_failure_plays_the_apology_then_hangs_up() {
    let (mut s, _) = speaking(1000);
    s.on_realtime_failed(100, "upstream closed (1011 boom)");
    let out = drain(&mut s);
    assert_eq!(out[0], Output::CloseRealtime);
    assert_eq!(json_of(&out[1])["event"], "clear");
    let apology: Vec<u8> = twilio_payloads(&out).concat();
    assert_eq!(apology, vec![0x55; apology.len()], "only apology audio after the clear");
    assert!(!s.is_ended());
    // Echo everything as Twilio plays it; the call ends after the last apology frame.
    let mut pending = mark_names(&out);
    let mut t = 200;
    while let Some(m) = pending.first().cloned() {
        s.handle_twilio_text(t, &mark(&m));
        pending.remove(0);
        let o = drain(&mut s);
        pending.extend(mark_names(&o));
        t += 20;
        if o.contains(&Output::Hangup) {
            break;
        }
    }
    assert!(s.is_finished());
    let rec = s.into_record(t);
    assert_eq!(rec.end_reason, EndReason::UpstreamFailed);
    assert_eq!(rec.end_detail.as_deref(), Some("upstream closed (1011 boom)"));
}

#[test]
fn apology_hangs_up_at_the_deadline_without_echoes() {
    let mut s = CallSession::new(params(AudioFormat::Pcmu), 0, false);
    s.on_realtime_failed(10, "refused");
    drain(&mut s);
    let deadline = s.poll_timeout().expect("a deadline while apologising");
    assert_eq!(deadline, 10 + 200 + APOLOGY_SLACK_MS);
    s.handle_timeout(deadline - 1);
    assert!(!s.is_ended());
    s.handle_timeout(deadline);
    assert!(drain(&mut s).contains(&Output::Hangup));
}

#[test]
fn malformed_input_is_counted_and_ignored() {
    let mut s = CallSession::new(params(AudioFormat::Pcmu), 0, true);
    drain(&mut s);
    for bad in [
        "",
        "nope",
        "{}",
        r#"{"event":"media","media":{"payload":"!!!"}}"#,
        r#"{"event":"weird"}"#,
        r#"{"event":"dtmf","dtmf":{"digit":"xx"}}"#,
    ] {
        s.handle_twilio_text(1, bad);
    }
    assert_eq!(s.stats().malformed_in, 6);
    s.handle_realtime_text(1, "garbage");
    assert_eq!(s.stats().malformed_upstream, 1);
    assert!(drain(&mut s).is_empty());
    // Still healthy.
    s.handle_twilio_text(2, &media(&[0xFF; 160], 2));
    assert_eq!(drain(&mut s).len(), 1);
}

#[test]
fn transcript_orders_turns_and_records_the_call() {
    let mut s = CallSession::new(params(AudioFormat::Pcmu), 0, true);
    drain(&mut s);
    s.handle_realtime_text(10, &rt(json!({"type":"response.created","response":{"id":"r1"}})));
    s.handle_realtime_text(11, &delta("a1", "r1", &[0x11; 160]));
    s.handle_realtime_text(
        12,
        &rt(json!({"type":"response.output_audio_transcript.done","item_id":"a1","transcript":"Buongiorno!"})),
    );
    let out = drain(&mut s);
    s.handle_twilio_text(40, &mark(&mark_names(&out)[0]));
    s.handle_realtime_text(50, &rt(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})));
    s.handle_realtime_text(
        1000,
        &rt(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":900,"item_id":"u1"})),
    );
    s.handle_realtime_text(3000, &rt(json!({"type":"conversation.item.input_audio_transcription.completed","item_id":"u1","transcript":" Vorrei prenotare. "})));
    s.handle_twilio_text(4000, r#"{"event":"stop","stop":{"callSid":"CA1"}}"#);
    let out = drain(&mut s);
    assert_eq!(out, vec![Output::CloseRealtime, Output::Hangup]);
    let rec = s.into_record(4000);
    let turns: Vec<(Speaker, u64, &str)> =
        rec.transcript.iter().map(|t| (t.speaker, t.start_ms, t.text.as_str())).collect();
    assert_eq!(turns, vec![(Speaker::Agent, 11, "Buongiorno!"), (Speaker::Caller, 1000, "Vorrei prenotare.")]);
    assert_eq!((rec.duration_ms, rec.ended_at_ms), (4000, 1_700_000_004_000));
    assert_eq!(rec.agent_talk_ms, 20);
    assert_eq!(rec.stats.first_audio_ms, Some(11));
}

#[test]
fn pcm24k_converts_both_ways() {
    let mut s = CallSession::new(params(AudioFormat::Pcm24k), 0, true);
    drain(&mut s);
    // Inbound: 20 ms mu-law become 20 ms of 24 kHz s16le (960 bytes).
    s.handle_twilio_text(0, &media(&SPEECH[1600..1760], 0));
    let out = drain(&mut s);
    let v = json_of(&out[0]);
    assert_eq!(v["type"], "input_audio_buffer.append");
    assert_eq!(B64.decode(v["audio"].as_str().unwrap()).unwrap().len(), 960);
    // Outbound: 100 ms of a 24 kHz 440 Hz tone becomes 8 kHz mu-law frames with the tone's level.
    let pcm: Vec<u8> = (0..2400)
        .flat_map(|n| {
            ((((n as f32) * 2.0 * std::f32::consts::PI * 440.0 / 24000.0).sin() * 8000.0) as i16).to_le_bytes()
        })
        .collect();
    s.handle_realtime_text(10, &rt(json!({"type":"response.output_audio.delta","response_id":"r1","item_id":"a1","delta":B64.encode(&pcm[..4799])})));
    s.handle_realtime_text(11, &rt(json!({"type":"response.output_audio.delta","response_id":"r1","item_id":"a1","delta":B64.encode(&pcm[4799..])})));
    s.handle_realtime_text(12, &rt(json!({"type":"response.output_audio.done","item_id":"a1"})));
    let out = drain(&mut s);
    let bytes: Vec<u8> = twilio_payloads(&out).concat();
    assert!(bytes.len() >= 800, "100 ms of audio at 8 kHz, got {}", bytes.len());
    let mut decoded = Vec::new();
    mulaw::decode_into(&bytes[160..720], &mut decoded);
    let rms = (decoded.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / decoded.len() as f64).sqrt();
    assert!((4500.0..6800.0).contains(&rms), "tone level kept (8000/sqrt2 ≈ 5657), got {rms}");
}

#[test]
fn a_refused_response_create_does_not_block_the_queue() {
    let mut s = CallSession::new(params(AudioFormat::Pcmu), 0, true);
    let greet = drain(&mut s);
    let id = json_of(&greet[0])["event_id"].as_str().unwrap().to_owned();
    s.handle_realtime_text(5, &rt(json!({"type":"error","error":{"type":"server_error","code":"server_error","message":"boom","event_id":id}})));
    drain(&mut s);
    // A later request goes out at once instead of waiting forever behind the refused one.
    s.handle_twilio_text(10, r#"{"event":"dtmf","streamSid":"MZ1","dtmf":{"digit":"5"}}"#);
    let kinds: Vec<Value> = drain(&mut s).iter().map(json_of).map(|v| v["type"].clone()).collect();
    assert_eq!(kinds, vec![json!("conversation.item.create"), json!("response.create")]);
}

#[test]
fn barge_in_also_cuts_an_active_response_that_has_no_audio_yet() {
    let (mut s, out) = speaking(400);
    // item_1 is fully generated but still playing; a second response starts, silent so far.
    s.handle_realtime_text(20, &rt(json!({"type":"response.output_audio.done","item_id":"item_1"})));
    s.handle_realtime_text(21, &rt(json!({"type":"response.done","response":{"id":"resp_1","status":"completed"}})));
    s.handle_realtime_text(22, &rt(json!({"type":"response.created","response":{"id":"resp_2"}})));
    drain(&mut s);
    s.handle_twilio_text(30, &mark(&mark_names(&out)[0]));
    drain(&mut s);
    s.handle_realtime_text(40, &rt(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":1})));
    let v: Vec<Value> = drain(&mut s).iter().map(json_of).collect();
    assert_eq!(v[0]["event"], "clear");
    // 20 ms echoed at t=30, then 10 ms into the next frame at t=40.
    assert_eq!(v[1]["audio_end_ms"], 30);
    assert!(v.iter().all(|e| e["type"] != "response.cancel"), "the server already cancelled on its own VAD: {v:?}");
    // resp_2's first audio arrives late: dropped, never played over the caller.
    s.handle_realtime_text(50, &delta("item_2", "resp_2", &[7; 800]));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.stats().late_deltas_dropped, 1);
}

#[test]
fn hanging_up_mid_reply_records_only_what_was_heard() {
    let (mut s, out) = speaking(2000);
    s.handle_realtime_text(20, &rt(json!({"type":"response.output_audio_transcript.done","item_id":"item_1","transcript":"Uno due tre quattro cinque sei sette otto nove dieci."})));
    for m in &mark_names(&out)[..10] {
        s.handle_twilio_text(30, &mark(m));
    }
    s.handle_twilio_text(40, r#"{"event":"stop","stop":{"callSid":"CA1"}}"#);
    let rec = s.into_record(40);
    let t = &rec.transcript[0];
    assert_eq!((t.heard_ms, t.generated_ms, t.interrupted), (Some(200), Some(2000), false));
    assert!(t.text.starts_with("Uno") && t.text.ends_with('…') && t.text.len() < 20, "{}", t.text);
    assert!(t.generated_text.as_deref().unwrap().ends_with("dieci."));
}

#[test]
fn marks_close_chunks_of_frames_and_items() {
    let mut p = params(AudioFormat::Pcmu);
    p.frames_per_mark = DEFAULT_FRAMES_PER_MARK;
    let mut s = CallSession::new(p, 0, true);
    drain(&mut s);
    s.handle_realtime_text(10, &delta("item_1", "resp_1", &[1; 8000]));
    let out = drain(&mut s);
    let kinds: Vec<String> = out.iter().map(json_of).map(|v| v["event"].as_str().unwrap_or("").to_owned()).collect();
    // 300 ms lead = 15 frames in three chunks of five, each sent as one media message (of
    // 100 ms) and closed by a mark.
    let chunk = ["media", "mark"];
    assert_eq!(kinds, chunk.repeat(3), "{kinds:?}");
    let sizes: Vec<usize> = out
        .iter()
        .map(json_of)
        .filter(|v| v["event"] == "media")
        .map(|v| B64.decode(v["media"]["payload"].as_str().unwrap()).unwrap().len())
        .collect();
    assert_eq!(sizes, [800, 800, 800]);
    // One echo releases one more chunk.
    s.handle_twilio_text(110, &mark(&mark_names(&out)[0]));
    let more = drain(&mut s);
    assert_eq!(
        more.iter().map(json_of).map(|v| v["event"].as_str().unwrap_or("").to_owned()).collect::<Vec<_>>(),
        chunk
    );
    // Barge-in 30 ms after that echo: 100 ms echoed + 30 ms into the second chunk.
    s.handle_realtime_text(140, &rt(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":1})));
    let v: Vec<Value> = drain(&mut s).iter().map(json_of).collect();
    assert_eq!(v[1]["audio_end_ms"], 130);
    // A short item's chunk is closed when nothing more is available, not left waiting for
    // five frames, and two items never share a mark.
    let mut p = params(AudioFormat::Pcmu);
    p.frames_per_mark = DEFAULT_FRAMES_PER_MARK;
    let mut s = CallSession::new(p, 0, true);
    drain(&mut s);
    s.handle_realtime_text(10, &delta("a", "r1", &[1; 400]));
    s.handle_realtime_text(11, &rt(json!({"type":"response.output_audio.done","item_id":"a"})));
    s.handle_realtime_text(12, &delta("b", "r2", &[2; 160]));
    s.handle_realtime_text(13, &rt(json!({"type":"response.output_audio.done","item_id":"b"})));
    let kinds: Vec<String> =
        drain(&mut s).iter().map(json_of).map(|v| v["event"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(kinds, ["media", "mark", "media", "mark", "media", "mark"], "{kinds:?}");
}

/// A tiny deterministic generator (xorshift), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random valid, mutated and garbage messages on both sides, in any order: the session never
/// panics, only ever sends Twilio `media`/`mark`/`clear`, never truncates beyond the audio it
/// generated, and ends with exactly one record.
#[test]
fn random_and_hostile_input_never_breaks_the_session() {
    let mut truncates = 0;
    for seed in 1..=40u64 {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let format = if seed % 3 == 0 { AudioFormat::Pcm24k } else { AudioFormat::Pcmu };
        let mut p = params(format);
        p.frames_per_mark = 1 + (seed % 5) as u32;
        p.max_reconnects = (seed % 3) as u32;
        let mut s = CallSession::new(p, 0, seed % 2 == 0);
        let mut now = 0u64;
        let mut marks: Vec<String> = Vec::new();
        let mut generated_ms: HashMap<String, u64> = HashMap::new();
        let items = ["item_a", "item_b", "item_c"];
        for _ in 0..600 {
            now += r.below(30);
            let item = items[r.below(3) as usize];
            let resp = format!("resp_{}", r.below(3));
            let len = (r.below(2000) + 1) as usize;
            let audio: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
            match r.below(16) {
                0 => s.on_realtime_ready(now),
                1 => s.handle_twilio_text(now, &media(&audio[..len.min(320)], now)),
                2 => s.handle_twilio_text(now, &media(&SPEECH[(now as usize * 8) % 20_000..][..160], now)),
                3 => {
                    if let Some(m) = marks.get(r.below(marks.len() as u64 + 1) as usize) {
                        s.handle_twilio_text(now, &mark(m));
                    }
                }
                4 => {
                    *generated_ms.entry(item.to_owned()).or_default() += if format == AudioFormat::Pcmu { len as u64 / 8 } else { len as u64 / 48 };
                    s.handle_realtime_text(now, &delta(item, &resp, &audio));
                }
                5 => s.handle_realtime_text(now, &rt(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":now,"item_id":"u"}))),
                6 => s.handle_realtime_text(now, &rt(json!({"type":"response.created","response":{"id":resp}}))),
                7 => s.handle_realtime_text(now, &rt(json!({"type":"response.done","response":{"id":resp,"status":"completed","usage":{"total_tokens":3}}}))),
                8 => s.handle_realtime_text(now, &rt(json!({"type":"response.output_audio.done","item_id":item}))),
                9 => s.handle_realtime_text(now, &rt(json!({"type":"error","error":{"code":"conversation_already_has_active_response","event_id":"sb_resp_1"}}))),
                10 => s.handle_twilio_text(now, r#"{"event":"dtmf","dtmf":{"digit":"7"}}"#),
                11 => {
                    // Byte-level garbage and truncated JSON.
                    let text = media(&audio[..len.min(160)], now);
                    let cut = r.below(text.len() as u64) as usize;
                    s.handle_twilio_text(now, text.get(..cut).unwrap_or(""));
                    s.handle_realtime_text(now, &String::from_utf8_lossy(&audio[..len.min(64)]));
                }
                12 => s.handle_timeout(now),
                13 => s.handle_realtime_text(now, &rt(json!({"type":"conversation.item.input_audio_transcription.completed","item_id":"u","transcript":"ciao"}))),
                14 if r.below(40) == 0 => s.on_realtime_failed(now, "random failure"),
                14 if r.below(20) == 0 => s.on_realtime_lost(now, "random drop"),
                _ => s.handle_realtime_text(now, &rt(json!({"type":"response.output_audio_transcript.done","item_id":item,"transcript":"parole parole"}))),
            }
            while let Some(o) = s.poll_output() {
                match &o {
                    Output::Twilio(t) => {
                        let v: Value = serde_json::from_str(t).expect("Twilio output is JSON");
                        let ev = v["event"].as_str().unwrap_or_default().to_owned();
                        assert!(["media", "mark", "clear"].contains(&ev.as_str()), "seed {seed}: {t}");
                        if ev == "mark" {
                            marks.push(v["mark"]["name"].as_str().unwrap().to_owned());
                        }
                    }
                    Output::Realtime(t) => {
                        let v: Value = serde_json::from_str(t).expect("Realtime output is JSON");
                        if v["type"] == "conversation.item.truncate" {
                            let id = v["item_id"].as_str().unwrap();
                            let end = v["audio_end_ms"].as_u64().unwrap();
                            let generated = generated_ms.get(id).copied().unwrap_or(0);
                            assert!(
                                end <= generated,
                                "seed {seed}: truncate {id} at {end} ms > {generated} ms generated"
                            );
                            truncates += 1;
                        }
                    }
                    Output::CloseRealtime
                    | Output::Hangup
                    | Output::Reconnect
                    | Output::Rotate
                    | Output::RunTool { .. }
                    | Output::Transfer { .. } => {}
                }
            }
            if s.is_finished() {
                break;
            }
        }
        let rec = s.into_record(now + 1);
        assert_eq!(rec.call_sid, "CA1");
        for t in &rec.transcript {
            if let (Some(h), Some(g)) = (t.heard_ms, t.generated_ms) {
                // pcm24k: heard is counted after resampling, generated on the model's clock.
                assert!(h <= g + 40, "seed {seed}: heard {h} > generated {g}");
            }
        }
    }
    assert!(truncates > 20, "the generator must exercise barge-ins, saw {truncates}");
}

/// Plays one whole response (created, audio, done, every mark echoed) and returns the
/// `response.create` instructions that were sent before it, if any.
fn play_response(s: &mut CallSession, now: u64, resp: &str, item: &str) {
    s.handle_realtime_text(now, &rt(json!({"type":"response.created","response":{"id":resp}})));
    s.handle_realtime_text(now, &delta(item, resp, &[3; 320]));
    s.handle_realtime_text(now, &rt(json!({"type":"response.output_audio.done","item_id":item})));
    s.handle_realtime_text(now, &rt(json!({"type":"response.done","response":{"id":resp,"status":"completed"}})));
    let out = drain(s);
    for m in mark_names(&out) {
        s.handle_twilio_text(now + 40, &mark(&m));
    }
}

fn creates(out: &[Output]) -> Vec<String> {
    out.iter()
        .map(json_of)
        .filter(|v| v["type"] == "response.create")
        .map(|v| v["response"]["instructions"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn a_silent_caller_is_asked_then_told_goodbye_then_the_call_ends() {
    let mut p = params(AudioFormat::Pcmu);
    p.idle_prompt_ms = 8_000;
    let mut s = CallSession::new(p, 0, true);
    drain(&mut s); // greeting request
    play_response(&mut s, 100, "r_greet", "i_greet");
    drain(&mut s);
    // Not yet: 7.9 s of silence after the greeting was heard.
    s.handle_timeout(8_000);
    assert!(creates(&drain(&mut s)).is_empty());
    s.handle_timeout(8_200);
    let c = creates(&drain(&mut s));
    assert_eq!(c.len(), 1);
    assert!(c[0].contains("still on the line"), "{c:?}");
    play_response(&mut s, 8_300, "r_idle", "i_idle");
    drain(&mut s);
    // Silence again: goodbye, then the call ends once the goodbye has been heard.
    s.handle_timeout(16_400);
    let c = creates(&drain(&mut s));
    assert!(c.len() == 1 && c[0].contains("goodbye"), "{c:?}");
    assert!(!s.is_ended());
    play_response(&mut s, 16_500, "r_bye", "i_bye");
    assert!(drain(&mut s).contains(&Output::Hangup), "hang up right after the goodbye's last mark");
    let rec = s.into_record(16_600);
    assert_eq!(rec.end_reason, EndReason::IdleCaller);
}

#[test]
fn caller_speech_resets_the_idle_prompt() {
    let mut p = params(AudioFormat::Pcmu);
    p.idle_prompt_ms = 8_000;
    let mut s = CallSession::new(p, 0, true);
    drain(&mut s);
    play_response(&mut s, 100, "r_greet", "i_greet");
    s.handle_timeout(8_200);
    assert_eq!(creates(&drain(&mut s)).len(), 1, "first prompt");
    play_response(&mut s, 8_300, "r_idle", "i_idle");
    drain(&mut s);
    // The caller answers (server VAD), then is silent again: a first prompt again, no goodbye.
    s.handle_realtime_text(9_000, &rt(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":1})));
    s.handle_timeout(16_000);
    assert!(creates(&drain(&mut s)).is_empty());
    s.handle_timeout(17_100);
    let c = creates(&drain(&mut s));
    assert!(c.len() == 1 && c[0].contains("still on the line"), "{c:?}");
    // Idle prompts off: never.
    let mut s = CallSession::new(params(AudioFormat::Pcmu), 0, true);
    drain(&mut s);
    play_response(&mut s, 100, "r_greet", "i_greet");
    s.handle_timeout(1_000_000);
    assert!(creates(&drain(&mut s)).is_empty());
    assert!(!s.is_ended());
}

#[test]
fn a_dropped_upstream_is_restored_with_a_filler_and_the_conversation_so_far() {
    let mut p = params(AudioFormat::Pcmu);
    p.max_reconnects = 1;
    let mut s = CallSession::new(p, 0, true);
    drain(&mut s);
    s.handle_realtime_text(10, &rt(json!({"type":"response.created","response":{"id":"r1"}})));
    s.handle_realtime_text(11, &delta("a1", "r1", &[0x11; 1600]));
    s.handle_realtime_text(12, &rt(json!({"type":"response.output_audio_transcript.done","item_id":"a1","transcript":"Buongiorno, come posso aiutarla?"})));
    s.handle_realtime_text(13, &rt(json!({"type":"conversation.item.input_audio_transcription.completed","item_id":"u0","transcript":"Vorrei prenotare."})));
    let out = drain(&mut s);
    for m in &mark_names(&out)[..5] {
        s.handle_twilio_text(100, &mark(m));
    }
    drain(&mut s);
    s.on_realtime_lost(120, "upstream closed (1006 )");
    let out = drain(&mut s);
    assert!(!out.contains(&Output::CloseRealtime) && !out.contains(&Output::Hangup), "the call goes on: {out:?}");
    assert_eq!(json_of(&out[0])["event"], "clear", "the lost response stops playing");
    assert_eq!(twilio_payloads(&out).concat(), vec![0x66; 800], "then the filler plays");
    assert_eq!(out.last(), Some(&Output::Reconnect));
    // The caller keeps talking meanwhile: buffered, not lost.
    s.handle_twilio_text(200, &media(&[0xF3; 160], 200));
    assert!(drain(&mut s).iter().all(|o| !matches!(o, Output::Realtime(_))));
    s.on_realtime_ready(600);
    let v: Vec<Value> = drain(&mut s).iter().map(json_of).collect();
    assert_eq!(v[0]["item"]["role"], "system");
    let seed = v[0]["item"]["content"][0]["text"].as_str().unwrap();
    assert!(seed.contains("Caller: Vorrei prenotare.") && seed.contains("Agent: Buongiorno"), "{seed}");
    assert_eq!(v[1]["type"], "input_audio_buffer.append", "buffered caller audio follows");
    assert_eq!(v[2]["type"], "response.create");
    // A second drop is over the budget: apology, then hang up.
    s.on_realtime_lost(900, "again");
    let out = drain(&mut s);
    assert_eq!(out[0], Output::CloseRealtime);
    let rec = s.into_record(1000);
    assert_eq!(rec.reconnects.len(), 1);
    assert_eq!(rec.reconnects[0].at_ms, 120);
    assert_eq!(rec.reconnects[0].restored_after_ms, Some(480));
    assert_eq!(rec.end_reason, EndReason::UpstreamFailed);
}

#[test]
fn an_old_session_is_rotated_only_between_turns() {
    let mut p = params(AudioFormat::Pcmu);
    p.rotate_after_ms = 5_000;
    let mut s = CallSession::new(p, 0, true);
    drain(&mut s);
    play_response(&mut s, 100, "r_greet", "i_greet");
    drain(&mut s);
    s.handle_timeout(4_000);
    assert!(!drain(&mut s).contains(&Output::Rotate), "not old enough");
    // Old enough, but the agent is talking: wait.
    s.handle_realtime_text(5_100, &rt(json!({"type":"response.created","response":{"id":"r2"}})));
    s.handle_timeout(5_200);
    assert!(!drain(&mut s).contains(&Output::Rotate), "not during a turn");
    play_response(&mut s, 5_300, "r2b", "i2");
    s.handle_realtime_text(5_301, &rt(json!({"type":"response.done","response":{"id":"r2","status":"completed"}})));
    drain(&mut s);
    s.handle_timeout(6_000);
    assert_eq!(drain(&mut s), vec![Output::Rotate]);
    s.handle_timeout(6_500);
    assert!(drain(&mut s).is_empty(), "one rotation at a time");
    s.handle_realtime_text(6_600, &rt(json!({"type":"conversation.item.input_audio_transcription.completed","item_id":"u1","transcript":"Grazie."})));
    assert!(s.rotation_ready(7_000));
    let v: Vec<Value> = drain(&mut s).iter().map(json_of).collect();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["item"]["role"], "system");
    assert!(v[0]["item"]["content"][0]["text"].as_str().unwrap().contains("taking over"));
    s.handle_timeout(11_000);
    assert!(drain(&mut s).is_empty(), "the fresh session is young");
    // A turn starting while the fresh one opens: keep the old one, try again later.
    s.handle_timeout(12_100);
    assert_eq!(drain(&mut s), vec![Output::Rotate]);
    s.handle_realtime_text(12_200, &rt(json!({"type":"response.created","response":{"id":"r3"}})));
    assert!(!s.rotation_ready(12_300));
    assert_eq!(s.stats().rotations, 1);
}

fn function_call(name: &str, call_id: &str, resp: &str) -> String {
    rt(
        json!({"type":"response.function_call_arguments.done","response_id":resp,"item_id":"fc1","output_index":1,"call_id":call_id,"name":name,"arguments":"{\"reason\":\"done\"}"}),
    )
}

#[test]
fn end_call_lets_the_goodbye_play_uninterrupted_then_hangs_up() {
    let (mut s, out) = speaking(300); // the goodbye, in the same response as the call
    s.handle_realtime_text(20, &function_call("end_call", "call_1", "resp_1"));
    let v: Vec<Value> = drain(&mut s).iter().map(json_of).collect();
    assert_eq!(v[0]["item"]["type"], "function_call_output");
    assert_eq!(v[0]["item"]["call_id"], "call_1");
    s.handle_realtime_text(21, &rt(json!({"type":"response.output_audio.done","item_id":"item_1"})));
    s.handle_realtime_text(22, &rt(json!({"type":"response.done","response":{"id":"resp_1","status":"completed"}})));
    let out2 = drain(&mut s);
    assert!(creates(&out2).is_empty(), "a goodbye was already said: no new response");
    // The caller talks over the goodbye: no barge-in.
    s.handle_realtime_text(30, &rt(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":1})));
    assert!(drain(&mut s).iter().map(json_of).all(|v| v["event"] != "clear"));
    // Every mark echoed: hang up.
    let mut names = mark_names(&out);
    names.extend(mark_names(&out2));
    for m in names {
        s.handle_twilio_text(400, &mark(&m));
    }
    assert!(drain(&mut s).contains(&Output::Hangup));
    assert_eq!(s.into_record(500).end_reason, EndReason::AgentEnded);
}

#[test]
fn end_call_without_a_spoken_goodbye_asks_for_one() {
    let mut s = CallSession::new(params(AudioFormat::Pcmu), 0, true);
    drain(&mut s);
    s.handle_realtime_text(10, &rt(json!({"type":"response.created","response":{"id":"r1"}})));
    s.handle_realtime_text(11, &function_call("end_call", "call_9", "r1"));
    s.handle_realtime_text(12, &rt(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})));
    let c = creates(&drain(&mut s));
    assert!(c.len() == 1 && c[0].contains("goodbye"), "{c:?}");
    assert!(!s.is_ended());
    play_response(&mut s, 20, "r2", "bye");
    assert!(drain(&mut s).contains(&Output::Hangup));
}

#[test]
fn other_tools_run_in_the_shell_and_their_result_goes_back_to_the_model() {
    let (mut s, _) = speaking(100);
    s.handle_realtime_text(20, &function_call("business_info", "call_2", "resp_1"));
    let out = drain(&mut s);
    assert_eq!(
        out,
        vec![Output::RunTool {
            call_id: "call_2".into(),
            name: "business_info".into(),
            arguments: "{\"reason\":\"done\"}".into()
        }]
    );
    s.on_tool_result(30, "call_2", r#"{"opening_hours":"12-15"}"#);
    let v: Vec<Value> = drain(&mut s).iter().map(json_of).collect();
    assert_eq!(v[0]["item"]["output"], r#"{"opening_hours":"12-15"}"#);
    assert_eq!(v.len(), 1, "the response.create waits for the active response to end");
    s.handle_realtime_text(40, &rt(json!({"type":"response.done","response":{"id":"resp_1","status":"completed"}})));
    assert_eq!(creates(&drain(&mut s)).len(), 1);
}

fn with(p: impl FnOnce(&mut SessionParams)) -> SessionParams {
    let mut params = params(AudioFormat::Pcmu);
    p(&mut params);
    params
}

#[test]
fn transfer_is_announced_then_requested_and_ends_the_stream_when_done() {
    let mut s = CallSession::new(with(|p| p.transfer_targets = vec!["staff".into(), "kitchen".into()]), 0, true);
    drain(&mut s);
    s.handle_realtime_text(10, &rt(json!({"type":"response.created","response":{"id":"r1"}})));
    s.handle_realtime_text(
        11,
        &rt(json!({"type":"response.function_call_arguments.done","response_id":"r1","item_id":"fc1","call_id":"c1","name":"transfer_call","arguments":"{\"target\":\"kitchen\"}"})),
    );
    let v: Vec<Value> = drain(&mut s).iter().map(json_of).collect();
    assert_eq!(v[0]["item"]["type"], "function_call_output");
    assert!(v[0]["item"]["output"].as_str().unwrap().contains("\"ok\":true"));
    s.handle_realtime_text(12, &rt(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})));
    let c = creates(&drain(&mut s));
    assert!(c.len() == 1 && c[0].contains("transferring"), "the announcement is requested: {c:?}");
    // The announcement plays (every mark echoed): only then the transfer is asked for.
    play_response(&mut s, 20, "r2", "announce");
    let out = drain(&mut s);
    assert!(out.contains(&Output::Transfer { target: Some("kitchen".into()) }), "{out:?}");
    assert!(!s.is_ended(), "the stream stays until the redirect succeeded");
    s.on_transferred(40, "+39021111198");
    assert!(drain(&mut s).contains(&Output::Hangup));
    let rec = s.into_record(50);
    assert_eq!(rec.end_reason, EndReason::Transferred);
    assert_eq!(rec.transferred_to.as_deref(), Some("+39021111198"));
}

#[test]
fn unknown_transfer_targets_and_failed_redirects_keep_the_call_going() {
    let fc = |call_id: &str, args: &str| {
        rt(
            json!({"type":"response.function_call_arguments.done","response_id":"r1","item_id":"fc","call_id":call_id,"name":"transfer_call","arguments":args}),
        )
    };
    let mut s = CallSession::new(with(|p| p.transfer_targets = vec!["staff".into()]), 0, true);
    drain(&mut s);
    s.handle_realtime_text(10, &rt(json!({"type":"response.created","response":{"id":"r1"}})));
    s.handle_realtime_text(11, &fc("c1", "{\"target\":\"pope\"}"));
    let v: Vec<Value> = drain(&mut s).iter().map(json_of).collect();
    assert!(v[0]["item"]["output"].as_str().unwrap().contains("choose one of: staff"), "{v:?}");

    // A transfer that the REST API refuses: the agent is told to apologise.
    let mut s = CallSession::new(with(|p| p.transfer_targets = vec!["staff".into()]), 0, true);
    drain(&mut s);
    s.handle_realtime_text(10, &rt(json!({"type":"response.created","response":{"id":"r1"}})));
    s.handle_realtime_text(11, &fc("c2", "{}"));
    s.handle_realtime_text(12, &rt(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})));
    drain(&mut s);
    play_response(&mut s, 20, "r2", "announce");
    assert!(drain(&mut s).contains(&Output::Transfer { target: None }));
    s.on_transfer_failed(40, "21220 invalid call state");
    let c = creates(&drain(&mut s));
    assert!(c.iter().any(|c| c.contains("did not work")), "{c:?}");
    assert!(!s.is_ended());
    // The agent can end the call normally afterwards.
    play_response(&mut s, 50, "r3", "sorry");
    assert!(!s.is_ended());
}

#[test]
fn mapped_keys_act_and_other_keys_reach_the_model() {
    let params = with(|p| {
        p.transfer_targets = vec!["staff".into()];
        p.key_actions = vec![('0', KeyAction::Transfer(None)), ('9', KeyAction::EndCall)];
    });
    let dtmf =
        |d: &str| json!({"event":"dtmf","streamSid":"MZ1","dtmf":{"track":"inbound_track","digit":d}}).to_string();
    let mut s = CallSession::new(params.clone(), 0, true);
    drain(&mut s);
    play_response(&mut s, 5, "r0", "greeting");
    drain(&mut s);
    s.handle_twilio_text(10, &dtmf("3"));
    let v: Vec<Value> = drain(&mut s).iter().map(json_of).collect();
    assert!(v[0]["item"]["content"][0]["text"].as_str().unwrap().contains("pressed the key 3"), "{v:?}");
    let mut s = CallSession::new(params.clone(), 0, true);
    drain(&mut s);
    play_response(&mut s, 5, "r0", "greeting");
    drain(&mut s);
    s.handle_twilio_text(10, &dtmf("0"));
    let c = creates(&drain(&mut s));
    assert!(c.iter().any(|c| c.contains("transferring")), "{c:?}");
    play_response(&mut s, 20, "r1", "announce");
    assert!(drain(&mut s).contains(&Output::Transfer { target: None }));
    let mut s = CallSession::new(params, 0, true);
    drain(&mut s);
    play_response(&mut s, 5, "r0", "greeting");
    drain(&mut s);
    s.handle_twilio_text(10, &dtmf("9"));
    let c = creates(&drain(&mut s));
    assert!(c.iter().any(|c| c.contains("goodbye")), "{c:?}");
    play_response(&mut s, 20, "r1", "bye");
    assert!(drain(&mut s).contains(&Output::Hangup));
    assert_eq!(s.into_record(30).end_reason, EndReason::AgentEnded);
}

#[test]
fn barge_in_waits_for_a_side_effecting_tool() {
    let mut params = with(|p| p.side_effect_tools = vec!["take_booking".into()]);
    params.barge_in.min_speech_ms = 0;
    let mut s = CallSession::new(params, 0, true);
    drain(&mut s);
    s.handle_realtime_text(10, &rt(json!({"type":"response.created","response":{"id":"resp_1"}})));
    s.handle_realtime_text(11, &rt(json!({"type":"response.output_item.added","response_id":"resp_1","item":{"id":"item_1","type":"message","role":"assistant"}})));
    s.handle_realtime_text(12, &delta("item_1", "resp_1", &vec![7u8; 4000]));
    s.handle_realtime_text(
        13,
        &rt(json!({"type":"response.function_call_arguments.done","response_id":"resp_1","item_id":"fc1","call_id":"b1","name":"take_booking","arguments":"{}"})),
    );
    assert!(drain(&mut s).iter().any(|o| matches!(o, Output::RunTool { name, .. } if name == "take_booking")));
    // The caller talks over "one moment, I'm booking": no clear while the booking runs.
    s.handle_realtime_text(20, &rt(json!({"type":"input_audio_buffer.speech_started","audio_start_ms":5})));
    assert!(drain(&mut s).iter().map(json_of).all(|v| v["event"] != "clear"), "the barge-in waits");
    s.on_tool_result(30, "b1", r#"{"booked":true}"#);
    let v: Vec<Value> = drain(&mut s).iter().map(json_of).collect();
    assert_eq!(v[0]["item"]["type"], "function_call_output", "the result reaches the model first");
    // The caller is still talking (no speech_stopped yet): the interruption happens now.
    assert!(v.iter().any(|v| v["event"] == "clear"), "{v:?}");
}

#[test]
fn a_stream_stopped_by_the_redirect_itself_is_recorded_as_transferred() {
    let mut s = CallSession::new(with(|p| p.transfer_targets = vec!["staff".into()]), 0, true);
    drain(&mut s);
    s.handle_realtime_text(10, &rt(json!({"type":"response.created","response":{"id":"r1"}})));
    s.handle_realtime_text(
        11,
        &rt(json!({"type":"response.function_call_arguments.done","response_id":"r1","item_id":"fc","call_id":"c1","name":"transfer_call","arguments":"{}"})),
    );
    s.handle_realtime_text(12, &rt(json!({"type":"response.done","response":{"id":"r1","status":"completed"}})));
    drain(&mut s);
    play_response(&mut s, 20, "r2", "announce");
    assert!(drain(&mut s).contains(&Output::Transfer { target: None }));
    s.on_transfer_started("+39021111199");
    // Twilio's `stop` (the redirect ended the stream) arrives before the REST answer.
    s.handle_twilio_text(30, r#"{"event":"stop","stop":{"callSid":"CA1"}}"#);
    let rec = s.into_record(40);
    assert_eq!(rec.end_reason, EndReason::Transferred);
    assert_eq!(rec.transferred_to.as_deref(), Some("+39021111199"));
}
