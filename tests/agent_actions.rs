//! The agent acting, through the real daemon with the in-repo fakes (Realtime, Twilio REST, a
//! webhook endpoint, SMTP): a booking by tool call lands in the record, the summary and the
//! email subject; `end_call` waits for the goodbye's mark, then ends the call through the REST
//! API once; transfers redirect with `<Dial>`; a keypad key transfers; a webhook tool is signed
//! and its timeout handled.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchboard::core::domain::call::EndReason;
use switchboard::testkit::{ChatReply, FakeScript, FakeTwilioRest, FakeWebhook, SmtpSink};

const T: Duration = Duration::from_secs(20);
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const HOOK_SECRET: &str = "whsec-test-0123456789abcdef";

/// One tenant (mario) that can transfer, take bookings (every day 12:00–23:30, up to 8
/// people), maps key 0 to a transfer, and has a webhook tool.
fn tenants_file(hook_url: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-actions-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("prompts")).unwrap();
    std::fs::write(dir.join("prompts/test.md"), "Sei l'assistente di un ristorante di prova.\n").unwrap();
    let key = switchboard::http::auth::key_digest(&api_key("mario"));
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].map(|d| format!("{d} = [\"12:00-23:30\"]\n")).concat();
    let text = format!(
        "[[tenants]]\nid = \"mario\"\nname = \"Trattoria Test\"\nnumbers = [\"{MARIO}\"]\nlanguage = \"it\"\n\
         voice = \"marin\"\nprompt_file = \"prompts/test.md\"\ngreeting = \"Pronto!\"\n\
         summary_to = [\"mario@owner.test\"]\napi_keys_sha256 = [\"{key}\"]\ntimezone = \"Europe/Rome\"\n\
         transfer_number = \"+39021111199\"\n\
         [tenants.booking]\nmax_party = 8\nlast_booking_minutes = 0\n[tenants.booking.hours]\n{days}\
         [tenants.dtmf]\n\"0\" = \"transfer\"\n\
         [[tenants.webhook_tools]]\nname = \"check_loyalty\"\ndescription = \"Loyalty points of a caller\"\n\
         parameters = {{ type = \"object\", properties = {{ phone = {{ type = \"string\" }} }}, required = [\"phone\"] }}\n\
         url = \"{hook_url}\"\nsecret = \"{HOOK_SECRET}\"\ntimeout_ms = 500\n"
    );
    std::fs::write(dir.join("tenants.toml"), text).unwrap();
    dir.join("tenants.toml")
}

struct Rig {
    h: Harness,
    rest: FakeTwilioRest,
    hook: FakeWebhook,
}

async fn rig(script: FakeScript, extra: &[(&str, &str)]) -> Rig {
    let rest = FakeTwilioRest::start(ACCOUNT, AUTH).await.unwrap();
    let hook = FakeWebhook::start(HOOK_SECRET).await.unwrap();
    let base = rest.base_url();
    let mut env: Vec<(&str, &str)> =
        vec![("TWILIO_ACCOUNT_SID", ACCOUNT), ("TWILIO_API_BASE", base.as_str()), ("JOB_POLL_MS", "50")];
    env.extend_from_slice(extra);
    let h = Harness::start_with(script, Some(tenants_file(&hook.url())), &env).await;
    Rig { h, rest, hook }
}

fn with_tool(name: &str, args: Value) -> FakeScript {
    FakeScript {
        greeting_audio: AGENT_LONG[..1_600].to_vec(),
        reply_audio: AGENT_LONG[1_600..9_600].to_vec(),
        reply_function_call: Some((name.into(), args.to_string())),
        ..script()
    }
}

/// The JSON the daemon handed back to the model for its (first) tool call.
async fn tool_output(h: &Harness) -> Value {
    h.fake
        .wait_for(|ev| ev.iter().any(|e| e.event["item"]["type"] == "function_call_output"), T)
        .await
        .expect("the tool answered");
    let out = h.fake.events().into_iter().find(|e| e.event["item"]["type"] == "function_call_output").unwrap();
    serde_json::from_str(out.event["item"]["output"].as_str().unwrap()).unwrap()
}

fn tomorrow_in_rome() -> String {
    let now = switchboard::tenants::local_datetime("Europe/Rome", switchboard::worker::now_ms());
    let d = now.date().next_day().unwrap();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_lands_in_the_record_the_summary_and_the_email_subject() {
    let date = tomorrow_in_rome();
    let smtp = SmtpSink::start().await.unwrap();
    let args = json!({"date": date, "time": "20:00", "party_size": 4, "name": "Rossi", "phone": "+39 333 1234567", "notes": "seggiolone"});
    let r = rig(with_tool("take_booking", args), &[("SMTP_URL", &smtp.url())]).await;
    // The model's own reading of the call is off (2 people at 19:00): the booking made by the
    // tool is the truth.
    let mut summary = switchboard::testkit::fake_openai_http::default_summary();
    summary["booking"] = json!({"date": date, "time": "19:00", "party_size": 2, "name": "Rossi", "notes": null});
    r.h.fake.set_default_chat_reply(ChatReply::Summary(summary));
    let mut call = r.h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 200, T).await.unwrap();
    call.play(SPEECH_IT);
    let out = tool_output(&r.h).await;
    assert_eq!(out["booked"], true, "{out}");
    call.wait_for(|s| s.received_ms >= 2_000, T).await.unwrap();
    call.stop().await;
    let rec = r.h.next_record(T).await.unwrap();
    assert_eq!(rec.bookings.len(), 1);
    let b = &rec.bookings[0];
    assert_eq!((b.date.as_str(), b.time.as_str(), b.party_size, b.name.as_str()), (date.as_str(), "20:00", 4, "Rossi"));
    let mail = smtp.wait_for_messages(1, T).await.unwrap().remove(0);
    let subject = mail.header("Subject").unwrap();
    assert!(subject.contains('4') && subject.contains("20:00"), "the tool's booking is in the subject: {subject}");
    assert!(!subject.contains("19:00"));
    let detail: Value = reqwest::Client::new()
        .get(format!("{}/api/calls/{}", r.h.http, rec.call_sid))
        .bearer_auth(api_key("mario"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["bookings"][0]["partySize"], 4, "{detail}");
    assert_eq!(detail["summary"]["booking"]["time"], "20:00");
    assert_eq!(detail["hasBooking"], true);
    assert!(r.h.metric("switchboard_bookings_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_booking_is_refused_with_reasons_and_not_recorded() {
    let args = json!({"date": tomorrow_in_rome(), "time": "20:00", "party_size": 20, "name": "Rossi"});
    let r = rig(with_tool("take_booking", args), &[]).await;
    let mut call = r.h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 200, T).await.unwrap();
    call.play(SPEECH_IT);
    let out = tool_output(&r.h).await;
    assert_eq!(out["booked"], false, "{out}");
    assert!(out["problems"].to_string().contains('8'), "the limit is given to the model: {out}");
    call.stop().await;
    assert!(r.h.next_record(T).await.unwrap().bookings.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_call_waits_for_the_goodbye_mark_then_ends_the_call_through_rest_once() {
    let r = rig(with_tool("end_call", json!({"reason": "done"})), &[]).await;
    let call = r.h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 200, T).await.unwrap();
    call.play(SPEECH_IT);
    assert!(call.wait_closed(T).await, "the daemon hangs up");
    let reqs = r.rest.wait_for_requests(1, T).await.expect("the REST API was called");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].call_sid, call.call_sid());
    assert!(reqs[0].params.contains(&("Status".into(), "completed".into())), "{:?}", reqs[0].params);
    let last_echo = call.mark_echoes().iter().map(|m| m.echoed_at).max().expect("marks echoed");
    assert!(reqs[0].at >= last_echo, "hung up only after the goodbye's last mark was echoed");
    assert!(call.stats().played_ms + 40 >= 1_200, "the whole goodbye played");
    assert_eq!(r.h.next_record(T).await.unwrap().end_reason, EndReason::AgentEnded);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.rest.requests().len(), 1, "once");
    assert!(r.rest.violations().is_empty(), "{:?}", r.rest.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_404_means_the_call_already_ended() {
    let r = rig(with_tool("end_call", json!({"reason": "done"})), &[]).await;
    r.rest.push_reply(
        404,
        json!({"code": 20404, "message": "The requested resource was not found", "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404}),
    );
    let call = r.h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 200, T).await.unwrap();
    call.play(SPEECH_IT);
    assert!(call.wait_closed(T).await);
    assert_eq!(r.h.next_record(T).await.unwrap().end_reason, EndReason::AgentEnded);
}

fn twiml_of(req: &switchboard::testkit::fake_twilio_rest::RestRequest) -> String {
    req.params.iter().find(|(k, _)| k == "Twiml").map(|(_, v)| v.clone()).expect("a Twiml parameter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_announces_then_redirects_with_dial() {
    let r = rig(with_tool("transfer_call", json!({"reason": "wants the manager"})), &[]).await;
    let call = r.h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 200, T).await.unwrap();
    call.play(SPEECH_IT);
    let reqs = r.rest.wait_for_requests(1, T).await.expect("redirected");
    let twiml = twiml_of(&reqs[0]);
    assert!(twiml.starts_with("<?xml") && twiml.contains("<Dial><Number>+39021111199</Number></Dial>"), "{twiml}");
    let last_echo = call.mark_echoes().iter().map(|m| m.echoed_at).max().expect("the announcement played");
    assert!(reqs[0].at >= last_echo, "redirected after the announcement was heard");
    assert!(call.wait_closed(T).await);
    let rec = r.h.next_record(T).await.unwrap();
    assert_eq!(rec.end_reason, EndReason::Transferred);
    assert_eq!(rec.transferred_to.as_deref(), Some("+39021111199"));
    assert_eq!(r.rest.requests().len(), 1, "no hang-up after a transfer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transfer_lets_the_agent_go_on() {
    let r = rig(with_tool("transfer_call", json!({})), &[]).await;
    r.rest.push_reply(
        400,
        json!({"code": 21220, "message": "Invalid call state", "more_info": "https://www.twilio.com/docs/errors/21220", "status": 400}),
    );
    let mut call = r.h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 200, T).await.unwrap();
    call.play(SPEECH_IT);
    r.rest.wait_for_requests(1, T).await.unwrap();
    // The agent is asked to apologise; the call stays up.
    r.h.fake
        .wait_for(
            |ev| ev.iter().any(|e| e.kind() == "response.create" && e.event.to_string().contains("did not work")),
            T,
        )
        .await
        .expect("the agent is told");
    assert!(!call.is_closed());
    call.stop().await;
    assert_eq!(r.h.next_record(T).await.unwrap().end_reason, EndReason::CallerHangup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_zero_transfers_the_call() {
    let r = rig(FakeScript { greeting_audio: AGENT_LONG[..1_600].to_vec(), ..script() }, &[]).await;
    let call = r.h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 200, T).await.unwrap();
    call.dtmf('0');
    let reqs = r.rest.wait_for_requests(1, T).await.expect("redirected");
    assert!(twiml_of(&reqs[0]).contains("<Number>+39021111199</Number>"));
    assert!(call.wait_closed(T).await);
    assert_eq!(r.h.next_record(T).await.unwrap().end_reason, EndReason::Transferred);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_tools_are_signed_and_their_timeout_is_handled() {
    let r = rig(with_tool("check_loyalty", json!({"phone": "+393331234567"})), &[]).await;
    r.hook.set_reply(json!({"points": 120, "tier": "gold"}));
    let mut call = r.h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 200, T).await.unwrap();
    call.play(SPEECH_IT);
    let out = tool_output(&r.h).await;
    assert_eq!(out, json!({"points": 120, "tier": "gold"}));
    let reqs = r.hook.requests();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].signature_ok, "signed with the tenant's secret");
    assert_eq!(reqs[0].body["tool"], "check_loyalty");
    assert_eq!(reqs[0].body["arguments"]["phone"], "+393331234567");
    assert_eq!(reqs[0].body["call"]["callSid"], call.call_sid());
    call.stop().await;

    // A slow endpoint: the model hears that the service did not answer.
    let r = rig(with_tool("check_loyalty", json!({"phone": "+393331234567"})), &[]).await;
    r.hook.set_delay(Duration::from_secs(3));
    let mut call = r.h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 200, T).await.unwrap();
    call.play(SPEECH_IT);
    let out = tool_output(&r.h).await;
    assert!(out["error"].as_str().unwrap().contains("did not answer in time"), "{out}");
    call.stop().await;
}
