//! End to end: the real daemon on 127.0.0.1:0, the fake Realtime server, and a fake Twilio that
//! streams caller audio in real time and plays the daemon's audio on a real-time clock,
//! echoing marks the way Twilio does. Latencies are measured in audio time and printed;
//! assertions are about correctness, with bounds far above the budget.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use switchboard::core::audio::apology::apology_ulaw;
use switchboard::core::domain::call::{EndReason, Speaker};
use switchboard::testkit::{self, FakeScript, StartParams, TwilioCall};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const T: Duration = Duration::from_secs(15);

#[tokio::test]
async fn greeting_first_relay_byte_exact_both_ways_and_one_record() {
    let h = Harness::start(script()).await;
    let call_sid = new_call_sid();
    let (status, twiml) = h.webhook(&call_sid, MARIO).await;
    assert_eq!(status, 200);
    let stream = testkit::parse_twiml_stream(&twiml).expect("stream");
    assert_eq!(stream.url, "wss://sb.example.test/media-stream");
    assert_eq!(stream.parameter("tenant"), Some("mario"));
    assert_eq!(stream.parameter("call_sid"), Some(call_sid.as_str()));
    assert!(twiml.contains("<Connect>") && twiml.ends_with("</Response>"), "{twiml}");
    // Pre-warm: the upstream session is opened and configured before the stream exists.
    h.fake.wait_for(|ev| ev.iter().any(|e| e.kind() == "session.update"), T).await.expect("pre-warmed");
    assert_eq!(h.fake.connections(), 1);

    let sig = testkit::sign(AUTH, &stream.url, &[]);
    let mut call =
        TwilioCall::connect(&h.ws_url(&stream), Some(sig), StartParams::from_stream(&stream).with_call_sid(&call_sid))
            .await
            .unwrap();
    // Greeting first: the first thing the caller hears is the greeting, byte for byte.
    call.wait_for(|s| s.played_ms >= 2_000, T).await.expect("greeting played");
    assert_eq!(call.received_audio(), script().greeting_audio, "agent → caller is byte-exact");
    assert_eq!(h.fake.connections(), 1, "the pre-warmed session was claimed, not reopened");
    let first_create = h.fake.events().iter().position(|e| e.kind() == "response.create").unwrap();
    let first_append =
        h.fake.events().iter().position(|e| e.kind() == "input_audio_buffer.append").unwrap_or(usize::MAX);
    assert!(first_create < first_append, "the greeting is requested before any caller audio is relayed");

    // Caller speech reaches the model unchanged.
    let at = call.play(SPEECH_IT);
    call.wait_for(|s| s.caller_audio_ms >= at + 3_600, T).await.unwrap();
    h.fake.wait_for(|ev| ev.iter().any(|e| e.kind() == "response.create" && e.conn == 0), T).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(contains_run(&h.fake.appended_audio(0), SPEECH_IT), "caller → agent is byte-exact");

    // The reply to the caller's turn plays, then the caller hangs up.
    call.wait_for(|s| s.received_ms >= 3_000, T).await.expect("reply received");
    call.stop().await;
    let rec = h.next_record(T).await.expect("a record");
    assert_eq!(rec.call_sid, call_sid);
    assert_eq!(rec.tenant_id, "mario");
    assert_eq!(rec.end_reason, EndReason::CallerHangup);
    assert_eq!(rec.from, "+393331234567");
    let texts: Vec<(Speaker, &str)> = rec.transcript.iter().map(|t| (t.speaker, t.text.as_str())).collect();
    assert_eq!(texts[0], (Speaker::Agent, "Pronto, come posso aiutarla?"));
    assert!(texts.contains(&(Speaker::Caller, "Vorrei prenotare un tavolo per quattro.")), "{texts:?}");
    assert!(rec.usage.total_tokens > 0);
    assert!(rec.caller_talk_ms >= 2_000, "VAD talk time {}", rec.caller_talk_ms);
    assert!(rec.agent_talk_ms >= 2_000);
    assert_eq!(rec.stats.malformed_in, 0);
    assert!(rec.stats.first_audio_ms.is_some());
    assert!(h.next_record(Duration::from_millis(300)).await.is_none(), "exactly one record per call");
    assert!(call.violations().is_empty(), "{:?}", call.violations());
    assert!(h.fake.violations().is_empty(), "{:?}", h.fake.violations());
    println!("first greeting audio after start: {:?} ms", rec.stats.first_audio_ms);
}

#[tokio::test]
async fn pcm24k_tenant_is_resampled_faithfully_both_ways() {
    let greeting = AGENT_LONG[..12_000].to_vec();
    let h = Harness::start(FakeScript {
        greeting_audio: testkit::ulaw_to_pcm24k(&greeting),
        reply_audio: Vec::new(),
        ..script()
    })
    .await;
    let mut call = h.call(PCM24K).await;
    call.wait_for(|s| s.played_ms >= 1_500, T).await.expect("greeting");
    let update = h.fake.events().into_iter().find(|e| e.kind() == "session.update").unwrap();
    assert_eq!(update.event["session"]["audio"]["output"]["format"], json!({"type":"audio/pcm","rate":24000}));

    // Agent → caller: 24 kHz PCM became 8 kHz mu-law that matches the original.
    let got: Vec<i16> = call.received_audio().iter().map(|&b| testkit::ulaw_decode(b)).collect();
    let want: Vec<i16> = greeting.iter().map(|&b| testkit::ulaw_decode(b)).collect();
    let received_ms = got.len() / 8;
    assert!((1_480..=1_560).contains(&received_ms), "received {received_ms} ms of 1500");
    let (corr, lag) = best_correlation(&want, &got, 400);
    println!("outbound pcm24k: correlation {corr:.3} at lag {lag} samples");
    assert!(corr > 0.9, "outbound correlation {corr}");

    // Caller → agent: mu-law became 24 kHz PCM that matches the caller's audio.
    let at = call.play(SPEECH_IT);
    call.wait_for(|s| s.caller_audio_ms >= at + 3_600, T).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pcm = h.fake.appended_audio(0);
    let up: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let decimated: Vec<i16> = up.iter().step_by(3).copied().collect();
    let speech: Vec<i16> = SPEECH_IT.iter().map(|&b| testkit::ulaw_decode(b)).collect();
    // Find the speech within everything appended (silence frames before it).
    let skip = (at as usize) * 8;
    let (corr, lag) = best_correlation(&speech, &decimated[skip.saturating_sub(200)..], 600);
    println!("inbound pcm24k: correlation {corr:.3} at lag {lag} samples");
    assert!(corr > 0.9, "inbound correlation {corr}");
    call.stop().await;
    let rec = h.next_record(T).await.unwrap();
    assert_eq!(rec.tenant_id, "gino24k");
    assert!(call.violations().is_empty() && h.fake.violations().is_empty());
}

/// The caller talks over a long agent turn: the local VAD cuts it.
#[tokio::test]
async fn barge_in_on_local_vad_clears_truncates_to_what_was_heard_and_cancels() {
    let h = Harness::start(FakeScript {
        greeting_audio: AGENT_LONG.to_vec(),
        server_vad: false,
        delta_interval: Duration::from_millis(40),
        ..script()
    })
    .await;
    let mut call = h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 1_500, T).await.expect("agent speaking");
    let at = call.play(SPEECH_IT);
    let onset = at + speech_onset_ms(SPEECH_IT);
    call.wait_for(|s| s.clears >= 1, T).await.expect("clear");
    let clear = call.clears()[0].clone();
    h.fake.wait_for(|ev| ev.iter().any(|e| e.kind() == "conversation.item.truncate"), T).await.expect("truncate");
    let tr = h.fake.truncates()[0].clone();
    let delay = clear.caller_audio_ms as i64 - onset as i64;
    let error = tr.audio_end_ms - clear.run_played_ms as i64;
    println!(
        "barge-in (local VAD): onset→clear {delay} ms of audio; audio_end_ms {} vs heard {} (error {error} ms)",
        tr.audio_end_ms, clear.run_played_ms
    );
    assert!(delay > 0 && delay < 1_000, "clear {delay} ms after speech onset");
    assert!(tr.accepted, "truncate within the generated audio");
    assert!(error.abs() <= 100, "audio_end_ms off by {error} ms");
    h.fake.wait_for(|ev| ev.iter().any(|e| e.kind() == "response.cancel"), T).await.expect("cancel");
    // Nothing more of the cut item plays.
    let played_after = call.stats().played_ms;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(call.stats().played_ms - played_after <= 20, "agent audio kept playing after clear");
    call.stop().await;
    let rec = h.next_record(T).await.unwrap();
    assert_eq!(rec.interruptions, 1);
    let agent = rec.transcript.iter().find(|t| t.speaker == Speaker::Agent).unwrap();
    assert!(agent.interrupted);
    assert_eq!(agent.heard_ms, Some(tr.audio_end_ms as u64));
    assert!(call.violations().is_empty(), "{:?}", call.violations());
    assert!(h.fake.violations().is_empty(), "{:?}", h.fake.violations());
}

/// A tenant whose local barge-in needs 2 s of speech: the server's `speech_started` cuts first.
#[tokio::test]
async fn barge_in_on_server_speech_started() {
    let h = Harness::start(FakeScript { greeting_audio: AGENT_LONG.to_vec(), ..script() }).await;
    let mut call = h.call(SERVER_VAD_ONLY).await;
    call.wait_for(|s| s.played_ms >= 1_000, T).await.unwrap();
    let at = call.play(SPEECH_IT);
    let onset = at + speech_onset_ms(SPEECH_IT);
    call.wait_for(|s| s.clears >= 1, T).await.expect("clear");
    let clear = call.clears()[0].clone();
    let delay = clear.caller_audio_ms as i64 - onset as i64;
    println!("barge-in (server VAD): onset→clear {delay} ms of audio");
    assert!(delay > 0 && delay < 1_000, "{delay}");
    h.fake.wait_for(|ev| ev.iter().any(|e| e.kind() == "conversation.item.truncate"), T).await.unwrap();
    assert!(h.fake.truncates()[0].accepted);
    call.stop().await;
    assert_eq!(h.next_record(T).await.unwrap().interruptions, 1);
    assert!(h.fake.violations().is_empty(), "{:?}", h.fake.violations());
}

#[tokio::test]
async fn unknown_number_gets_a_spoken_apology_and_hangup() {
    let h = Harness::start(script()).await;
    let (status, twiml) = testkit::post_webhook(
        &h.http,
        PUBLIC,
        Some(AUTH),
        &[("CallSid", &new_call_sid()), ("From", "+33600000000"), ("To", "+33199999999"), ("ToCountry", "FR")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(twiml.contains(r#"<Say language="fr-FR">"#) && twiml.contains("<Hangup/>"), "{twiml}");
    assert!(!twiml.contains("<Connect>"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.fake.connections(), 0, "no upstream session for an unknown number");
}

#[tokio::test]
async fn the_shipped_fallback_tenant_answers_unlisted_numbers() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tenants.toml");
    let h = Harness::start_with(script(), Some(shipped), &[]).await;
    let (status, twiml) = h.webhook(&new_call_sid(), "+14155550100").await;
    assert_eq!(status, 200);
    let stream = testkit::parse_twiml_stream(&twiml).expect("connects to the fallback");
    assert_eq!(stream.parameter("tenant"), Some("ava"));
    let (_, twiml) = h.webhook(&new_call_sid(), "+39 02 111 1111").await;
    assert_eq!(testkit::parse_twiml_stream(&twiml).unwrap().parameter("tenant"), Some("trattoria-mario"));
}

#[tokio::test]
async fn bad_signatures_are_refused_on_webhook_and_stream() {
    let h = Harness::start(script()).await;
    let sid = new_call_sid();
    let params = [("CallSid", sid.as_str()), ("From", "+393331234567"), ("To", MARIO)];
    // No signature, a wrong token, a signature over another URL.
    for auth in [None, Some("wrong-token")] {
        let (status, body) = testkit::post_webhook(&h.http, PUBLIC, auth, &params).await.unwrap();
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("\"error\""), "JSON error body: {body}");
    }
    let (status, _) = testkit::post_webhook(&h.http, "https://evil.example", Some(AUTH), &params).await.unwrap();
    assert_eq!(status, 403);
    assert_eq!(h.fake.connections(), 0, "nothing pre-warmed for refused webhooks");

    // The stream upgrade: missing and wrong signatures.
    let url = format!("ws://{}/media-stream", h.daemon.addr);
    for sig in [
        None,
        Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned()),
        Some(testkit::sign("wrong", "wss://sb.example.test/media-stream", &[])),
    ] {
        let Err(err) = TwilioCall::connect(&url, sig, StartParams::default()).await else { panic!("upgrade accepted") };
        let refused = err.downcast_ref::<testkit::twilio_client::UpgradeRefused>().map(|r| r.0);
        assert_eq!(refused, Some(403), "{err:#}");
    }

    // A request that is not a WebSocket upgrade: 400 with a JSON body, signed or not.
    let sig = testkit::sign(AUTH, "wss://sb.example.test/media-stream", &[]);
    for signature in [Some(sig.as_str()), None] {
        let mut req = reqwest::Client::new().get(format!("{}/media-stream", h.http)).header("connection", "upgrade");
        if let Some(sig) = signature {
            req = req.header("x-twilio-signature", sig);
        }
        let plain = req.send().await.unwrap();
        assert_eq!(plain.status(), 400);
        let body = plain.text().await.unwrap();
        assert!(body.contains("\"error\"") && body.contains("not a WebSocket upgrade"), "{body}");
    }

    // A signed upgrade whose start is not bound to a call the webhook issued: closed 1008.
    let forged = StartParams {
        custom_parameters: vec![("tenant".into(), "mario".into()), ("token".into(), "forged".into())],
        ..StartParams::default()
    };
    let call = TwilioCall::connect(&url, Some(sig), forged).await.expect("upgrade is signed");
    assert!(call.wait_closed(T).await);
    assert_eq!(call.close_frame().map(|f| f.0), Some(1008));
    assert!(h.next_record(Duration::from_millis(300)).await.is_none(), "no call was started");
    assert!(h.metric("switchboard_signature_failures_total").await >= 6);
}

#[tokio::test]
async fn missing_auth_token_refuses_calls_with_503() {
    let fake = testkit::FakeRealtime::start(script()).await.unwrap();
    let dir = tenants_dir();
    let mut env = env_for(&fake.base_url(), &dir.join("tenants.toml"), &[]);
    env.remove("TWILIO_AUTH_TOKEN");
    let config = switchboard::config::Config::from_lookup(|k| env.get(k).cloned()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let d = switchboard::app::start(config, listener, None).await.unwrap();
    let (status, _) =
        testkit::post_webhook(&format!("http://{}", d.addr), PUBLIC, None, &[("CallSid", "CA1"), ("To", MARIO)])
            .await
            .unwrap();
    assert_eq!(status, 503);
    let err = TwilioCall::connect(&format!("ws://{}/media-stream", d.addr), None, StartParams::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.downcast_ref::<testkit::twilio_client::UpgradeRefused>().map(|r| r.0), Some(503));
}

/// A misbehaving stream beside a healthy one: the bad one's junk is counted and ignored, its
/// oversized message closes it, and the healthy call never notices.
#[tokio::test]
async fn malformed_input_never_touches_a_healthy_concurrent_call() {
    let h = Harness::start(FakeScript { reply_audio: Vec::new(), auto_respond: false, ..script() }).await;
    let mut good = h.call(MARIO).await;

    // The bad stream: signed, bound to its own webhook, then garbage.
    let sid = new_call_sid();
    let (_, twiml) = h.webhook(&sid, MARIO).await;
    let stream = testkit::parse_twiml_stream(&twiml).unwrap();
    let mut req = h.ws_url(&stream).into_client_request().unwrap();
    req.headers_mut().insert("x-twilio-signature", testkit::sign(AUTH, &stream.url, &[]).parse().unwrap());
    let (mut bad, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let params: serde_json::Map<String, serde_json::Value> =
        stream.parameters.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let junk_before = [
        "not json".to_owned(),
        json!({"event":"media","media":{"payload":"/////w=="}}).to_string(), // media before start
        json!({"event":"connected","protocol":"Call","version":"1.0.0"}).to_string(),
    ];
    for j in &junk_before {
        bad.send(Message::text(j.clone())).await.unwrap();
    }
    bad.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    bad.send(Message::text(json!({"event":"start","sequenceNumber":"1","streamSid":"MZbad","start":{"streamSid":"MZbad","callSid":sid,"accountSid":"AC1","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":params}}).to_string())).await.unwrap();
    let junk_after = [
        "{".to_owned(),
        "[1,2,3]".to_owned(),
        json!({"event":"launch_missiles"}).to_string(),
        json!({"event":"media","media":{"payload":"***not base64***"}}).to_string(),
        json!({"event":"media","media":{}}).to_string(),
        json!({"event":"mark","mark":{"name":"g999.1"}}).to_string(),
        json!({"event":"mark"}).to_string(),
        json!({"event":"dtmf","dtmf":{"digit":"ABC"}}).to_string(),
        json!({"event":"start","start":{"streamSid":"MZx","callSid":"CAx"}}).to_string(),
    ];
    for j in &junk_after {
        bad.send(Message::text(j.clone())).await.unwrap();
    }
    bad.send(Message::text("x".repeat(200_000))).await.ok();
    // The daemon closes the bad stream.
    let closed = tokio::time::timeout(T, async {
        while let Some(m) = bad.next().await {
            if matches!(m, Ok(Message::Close(_)) | Err(_)) {
                return true;
            }
        }
        true
    })
    .await;
    assert_eq!(closed, Ok(true));
    let bad_rec = h.next_record(T).await.expect("the bad call is recorded too");
    assert_eq!(bad_rec.call_sid, sid);
    assert_eq!(bad_rec.end_reason, EndReason::ProtocolError);
    assert!(bad_rec.stats.malformed_in >= 7, "{:?}", bad_rec.stats);

    // The healthy call: its greeting and its caller audio are intact.
    good.wait_for(|s| s.played_ms >= 2_000, T).await.unwrap();
    assert_eq!(good.received_audio(), script().greeting_audio);
    let at = good.play(SPEECH_IT);
    good.wait_for(|s| s.caller_audio_ms >= at + 3_600, T).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(contains_run(&h.fake.appended_audio(0), SPEECH_IT), "healthy call's audio relayed intact");
    good.stop().await;
    let rec = h.next_record(T).await.unwrap();
    assert_eq!((rec.end_reason, rec.stats.malformed_in), (EndReason::CallerHangup, 0));
    assert!(h.metric("switchboard_malformed_frames_total").await >= 10);
    assert_eq!(h.metric("switchboard_oversized_messages_total").await, 1);
    assert!(good.violations().is_empty(), "{:?}", good.violations());
}

#[tokio::test]
async fn upstream_refused_plays_the_apology_then_hangs_up() {
    let h = Harness::start(FakeScript { refuse_connections: true, ..script() }).await;
    let call = h.call(MARIO).await;
    assert!(call.wait_closed(T).await, "the daemon ends the call after the apology");
    let apology = apology_ulaw("it");
    assert_eq!(call.received_audio(), apology, "the caller heard the Italian apology");
    assert!(call.stats().played_ms + 40 >= apology.len() as u64 / 8, "apology played out before hang-up");
    let rec = h.next_record(T).await.unwrap();
    assert_eq!(rec.end_reason, EndReason::UpstreamFailed);
    assert!(rec.end_detail.unwrap_or_default().contains("503"));
    assert_eq!(h.metric("switchboard_upstream_failures_total").await, 1);
}

#[tokio::test]
async fn upstream_dropped_mid_call_plays_the_apology() {
    let h = Harness::start(FakeScript {
        drop_after: Some(Duration::from_millis(1_500)),
        greeting_audio: AGENT_LONG.to_vec(),
        ..script()
    })
    .await;
    let call = h.call(MARIO).await;
    assert!(call.wait_closed(Duration::from_secs(20)).await);
    let received = call.received_audio();
    let apology = apology_ulaw("it");
    assert!(received.ends_with(apology), "the call ends with the apology");
    assert!(received.len() > apology.len(), "some greeting played before the drop");
    assert!(!call.clears().is_empty(), "the greeting still queued was cleared for the apology");
    let rec = h.next_record(T).await.unwrap();
    assert_eq!(rec.end_reason, EndReason::UpstreamFailed);
    assert_eq!(rec.reconnects.len(), 3, "three reconnects, each dropped again, then the apology");
}

#[tokio::test]
async fn a_dropped_upstream_is_restored_and_the_callers_next_words_reach_the_model() {
    let h = Harness::start(FakeScript {
        drop_after: Some(Duration::from_millis(1_500)),
        fault_connections: Some(1),
        greeting_audio: AGENT_LONG.to_vec(),
        ..script()
    })
    .await;
    let mut call = h.call(MARIO).await;
    h.fake.wait_for_connections(2, T).await.expect("a second session is opened");
    h.fake
        .wait_for(|ev| ev.iter().any(|e| e.conn == 1 && e.kind() == "conversation.item.create"), T)
        .await
        .expect("the new session is seeded");
    let seed = h.fake.events().into_iter().find(|e| e.conn == 1 && e.kind() == "conversation.item.create").unwrap();
    assert_eq!(seed.event["item"]["role"], "system");
    assert!(seed.event["item"]["content"][0]["text"].as_str().unwrap().contains("Agent: "), "{}", seed.event);
    // The caller heard the filler, not dead air, and the call goes on.
    assert!(contains_run(&call.received_audio(), &switchboard::core::audio::apology::filler_ulaw("it")[..800]));
    let at = call.play(SPEECH_IT);
    call.wait_for(|s| s.caller_audio_ms >= at + 3_600, T).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(contains_run(&h.fake.appended_audio(1), SPEECH_IT), "caller audio reaches the new session");
    assert!(!call.is_closed());
    call.stop().await;
    let rec = h.next_record(T).await.unwrap();
    assert_eq!(rec.end_reason, EndReason::CallerHangup);
    assert_eq!(rec.reconnects.len(), 1);
    assert!(rec.reconnects[0].restored_after_ms.is_some());
    assert_eq!(h.metric("switchboard_reconnects_total").await, 1);
    assert!(h.fake.violations().is_empty(), "{:?}", h.fake.violations());
}

#[tokio::test]
async fn unclaimed_prewarm_is_closed_after_its_ttl() {
    let h = Harness::start_with(script(), None, &[("SWITCHBOARD_PREWARM_TTL_SECS", "1")]).await;
    let (status, _) = h.webhook(&new_call_sid(), MARIO).await;
    assert_eq!(status, 200);
    h.fake.wait_for(|ev| ev.iter().any(|e| e.kind() == "session.update"), T).await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while h.metric("switchboard_prewarm_expired_total").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "pre-warm never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.metric("switchboard_prewarm_pending").await, 0);
}

#[tokio::test]
async fn health_public_url_and_metrics() {
    let h = Harness::start(script()).await;
    let (s, body) = h.get("/healthz").await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["tenants"].as_u64(), v["readyForCalls"].as_bool()),
        (Some("ok"), Some(4), Some(true))
    );
    let (s, body) = h.get("/public-url").await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["webhookUrl"], "https://sb.example.test/twiml");
    assert_eq!(v["streamUrl"], "wss://sb.example.test/media-stream");
    let mut call = h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 300, T).await.unwrap();
    assert_eq!(h.metric("switchboard_live_calls").await, 1);
    // A live call's frame counters reach the process metrics once a second.
    let deadline = tokio::time::Instant::now() + T;
    while h.metric("switchboard_frames_out_total").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "frames_out_total never moved during the call");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    call.stop().await;
    h.next_record(T).await.unwrap();
    assert_eq!(h.metric("switchboard_live_calls").await, 0);
    assert!(h.metric("switchboard_frames_in_total").await > 0);
    assert_eq!(h.metric("switchboard_calls_ended_total").await, 1);
}

#[tokio::test]
async fn a_stream_token_cannot_be_replayed_after_its_call() {
    let h = Harness::start(FakeScript { greeting_audio: AGENT_LONG[..1_600].to_vec(), ..script() }).await;
    let sid = new_call_sid();
    let (_, twiml) = h.webhook(&sid, MARIO).await;
    let stream = testkit::parse_twiml_stream(&twiml).unwrap();
    assert!(stream.parameter("issued").is_some() && stream.parameter("token").is_some());
    let sig = testkit::sign(AUTH, &stream.url, &[]);
    let start = StartParams::from_stream(&stream).with_call_sid(&sid);
    let mut first = TwilioCall::connect(&h.ws_url(&stream), Some(sig.clone()), start.clone()).await.unwrap();
    first.wait_for(|s| s.played_ms >= 100, T).await.unwrap();
    first.stop().await;
    h.next_record(T).await.expect("the real call is recorded");
    // The same signed upgrade and the same start again: refused, no second call.
    let replay = TwilioCall::connect(&h.ws_url(&stream), Some(sig), start).await.unwrap();
    assert!(replay.wait_closed(T).await);
    assert_eq!(replay.close_frame().map(|f| f.0), Some(1008));
    assert!(h.next_record(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn dtmf_reaches_the_model_and_the_record() {
    let h = Harness::start(FakeScript { greeting_audio: AGENT_LONG[..1_600].to_vec(), ..script() }).await;
    let mut call = h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 200, T).await.unwrap();
    call.dtmf('3');
    h.fake
        .wait_for(
            |ev| {
                ev.iter().any(|e| {
                    e.kind() == "conversation.item.create"
                        && e.event["item"]["content"][0]["text"].as_str().is_some_and(|t| t.contains('3'))
                })
            },
            T,
        )
        .await
        .expect("the key press reaches the model as a text item");
    call.stop().await;
    let rec = h.next_record(T).await.unwrap();
    assert_eq!(rec.stats.dtmf_digits, 1);
    assert!(rec.transcript.iter().any(|t| t.speaker == Speaker::Caller && t.text == "[pressed 3]"));
}

#[tokio::test]
async fn a_silent_caller_is_prompted_then_the_agent_says_goodbye_and_hangs_up() {
    let h = Harness::start(FakeScript {
        greeting_audio: AGENT_LONG[..1_600].to_vec(),
        reply_audio: AGENT_LONG[1_600..3_200].to_vec(),
        ..script()
    })
    .await;
    let call = h.call(IDLE_3S).await;
    // Greeting (0.2 s), 3 s of silence, the prompt (0.2 s), 3 s of silence, the goodbye.
    assert!(call.wait_closed(Duration::from_secs(20)).await, "the daemon ends the call");
    let creates: Vec<String> = h
        .fake
        .events()
        .iter()
        .filter(|e| e.kind() == "response.create")
        .map(|e| e.event["response"]["instructions"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(creates.len(), 3, "{creates:?}");
    assert!(creates[1].contains("still on the line") && creates[2].contains("goodbye"), "{creates:?}");
    assert_eq!(call.received_audio().len(), 1_600 * 3, "greeting, prompt and goodbye were all played");
    let rec = h.next_record(T).await.unwrap();
    assert_eq!(rec.end_reason, EndReason::IdleCaller);
    assert!(rec.duration_ms >= 6_000, "{}", rec.duration_ms);
}

#[tokio::test]
async fn an_old_session_is_replaced_between_turns_without_the_caller_noticing() {
    let h = Harness::start_with(
        FakeScript { greeting_audio: AGENT_LONG[..4_000].to_vec(), ..script() },
        None,
        &[("SWITCHBOARD_SESSION_ROTATE_SECS", "2")],
    )
    .await;
    let mut call = h.call(MARIO).await;
    h.fake.wait_for_connections(2, T).await.expect("a fresh session is opened");
    h.fake
        .wait_for(|ev| ev.iter().any(|e| e.conn == 1 && e.kind() == "conversation.item.create"), T)
        .await
        .expect("and seeded with the conversation");
    // No filler, no apology: only the greeting was played.
    call.wait_for(|s| s.played_ms >= 500, T).await.unwrap();
    assert_eq!(call.received_audio(), AGENT_LONG[..4_000].to_vec());
    let at = call.play(SPEECH_IT);
    call.wait_for(|s| s.caller_audio_ms >= at + 3_600, T).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n = h.fake.connections();
    assert!(
        (0..n).any(|c| contains_run(&h.fake.appended_audio(c), SPEECH_IT)),
        "the caller's turn reached one session whole"
    );
    call.stop().await;
    let rec = h.next_record(T).await.unwrap();
    assert!(rec.stats.rotations >= 1, "{:?}", rec.stats);
    assert!(rec.reconnects.is_empty());
    assert_eq!(rec.end_reason, EndReason::CallerHangup);
    assert!(h.fake.violations().is_empty(), "{:?}", h.fake.violations());
}

#[tokio::test]
async fn the_model_ends_the_call_after_its_goodbye_has_been_heard() {
    let h = Harness::start(FakeScript {
        greeting_audio: AGENT_LONG[..1_600].to_vec(),
        reply_audio: AGENT_LONG[1_600..9_600].to_vec(),
        reply_function_call: Some(("end_call".into(), r#"{"reason":"caller said goodbye"}"#.into())),
        ..script()
    })
    .await;
    let call = h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 200, T).await.unwrap();
    call.play(SPEECH_IT);
    assert!(call.wait_closed(Duration::from_secs(20)).await, "the daemon hangs up");
    // The goodbye (1 s) was played out before the hang-up.
    assert!(call.stats().played_ms + 40 >= 1_200, "played {} ms", call.stats().played_ms);
    let output =
        h.fake.events().into_iter().find(|e| e.event["item"]["type"] == "function_call_output").expect("tool answered");
    assert!(output.event["item"]["call_id"].as_str().unwrap().starts_with("call_"));
    let rec = h.next_record(T).await.unwrap();
    assert_eq!(rec.end_reason, EndReason::AgentEnded);
}

#[tokio::test]
async fn business_info_answers_from_tenants_toml_and_the_model_goes_on() {
    let h = Harness::start(FakeScript {
        greeting_audio: AGENT_LONG[..1_600].to_vec(),
        reply_audio: AGENT_LONG[1_600..3_200].to_vec(),
        reply_function_call: Some(("business_info".into(), "{}".into())),
        ..script()
    })
    .await;
    let update = {
        let mut call = h.call(MARIO).await;
        call.wait_for(|s| s.played_ms >= 200, T).await.unwrap();
        call.play(SPEECH_IT);
        h.fake
            .wait_for(|ev| ev.iter().any(|e| e.event["item"]["type"] == "function_call_output"), T)
            .await
            .expect("the tool's answer reaches the model");
        // …and the model is asked to go on with it.
        h.fake.wait_for(|ev| ev.iter().filter(|e| e.kind() == "response.create").count() >= 2, T).await.unwrap();
        call.stop().await;
        h.fake.events().into_iter().find(|e| e.kind() == "session.update").unwrap()
    };
    let names: Vec<&str> =
        update.event["session"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["end_call", "business_info"]);
    let out = h.fake.events().into_iter().find(|e| e.event["item"]["type"] == "function_call_output").unwrap();
    let answer: serde_json::Value = serde_json::from_str(out.event["item"]["output"].as_str().unwrap()).unwrap();
    assert_eq!(answer["address"], "Via Roma 1, Milano");
    assert_eq!(answer["opening_hours"], "mar-dom 12-15, 19-23");
    assert_eq!(h.next_record(T).await.unwrap().end_reason, EndReason::CallerHangup);
}
