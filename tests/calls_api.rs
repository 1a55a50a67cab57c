//! The calls API through the real daemon, on SQLite and on PostgreSQL: keys, tenant
//! isolation, history with cursors and filters, one call in full, search and analytics over a
//! seeded set of calls.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use switchboard::core::domain::call::{CallRecord, CallStats, EndReason, Speaker, TranscriptTurn};
use switchboard::core::realtime::server::Usage;
use switchboard::store::{CallSummaryUpdate, NewJob, Store};
use switchboard::testkit::pg::PgSchema;

const T0: u64 = 1_790_000_000_000; // 2026-09-21T…Z
const DAY: u64 = 86_400_000;

struct Api {
    h: Harness,
    store: Store,
    pg: Option<PgSchema>,
    http: reqwest::Client,
}

impl Api {
    async fn start(postgres: bool) -> Api {
        let pg = if postgres { Some(PgSchema::create().await.expect("postgres")) } else { None };
        let extra: Vec<(&str, &str)> = pg.as_ref().map(|p| vec![("DATABASE_URL", p.url.as_str())]).unwrap_or_default();
        let h = Harness::start_with(script(), None, &extra).await;
        let url = match &pg {
            Some(p) => p.url.clone(),
            None => format!("sqlite://{}/data/switchboard.db", h.dir.display()),
        };
        let store = Store::open(&url, 2).await.expect("the daemon's database");
        Api { h, store, pg, http: reqwest::Client::new() }
    }

    async fn get(&self, path: &str, key: Option<&str>) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut rq = self.http.get(format!("{}{path}", self.h.http));
        if let Some(k) = key {
            rq = rq.bearer_auth(k);
        }
        let r = rq.send().await.expect("request");
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, body, headers)
    }

    async fn ok(&self, path: &str) -> Value {
        let (s, body, _) = self.get(path, Some(&api_key("mario"))).await;
        assert_eq!(s, StatusCode::OK, "{path}: {body}");
        body
    }

    async fn finish(self) {
        self.store.close().await;
        self.h.daemon.shutdown();
        let _ = self.h.daemon.wait().await;
        if let Some(p) = self.pg {
            p.drop_schema().await.expect("drop schema");
        }
    }
}

fn record(tenant: &str, sid: &str, at: u64, end: EndReason, caller: &str) -> CallRecord {
    let turn = |speaker, start_ms, text: &str, interrupted| TranscriptTurn {
        speaker,
        start_ms,
        text: text.into(),
        item_id: None,
        interrupted,
        heard_ms: None,
        generated_ms: None,
        generated_text: None,
    };
    CallRecord {
        tenant_id: tenant.into(),
        call_sid: sid.into(),
        stream_sid: format!("MZ{sid}"),
        from: "+393331234567".into(),
        to: MARIO.into(),
        started_at_ms: at,
        ended_at_ms: at + 90_000,
        duration_ms: 90_000,
        end_reason: end,
        end_detail: None,
        transcript: vec![
            turn(Speaker::Agent, 0, "Trattoria Mario, buonasera!", true),
            turn(Speaker::Caller, 2_000, caller, false),
        ],
        interruptions: 1,
        caller_talk_ms: 30_000,
        agent_talk_ms: 40_000,
        usage: Usage { input_tokens: 1_000, output_tokens: 500, total_tokens: 1_500, ..Usage::default() },
        stats: CallStats::default(),
        reconnects: Vec::new(),
        bookings: Vec::new(),
        transferred_to: None,
    }
}

/// Five calls of mario over three days (one failed, one with a booking summary), one of gino.
async fn seed(store: &Store) {
    let job = |sid: &str| NewJob {
        kind: "test.noop",
        dedupe_key: sid.into(),
        tenant_id: None,
        payload: serde_json::json!({}),
        run_at_ms: u64::MAX / 4,
        max_attempts: 1,
    };
    let calls = [
        ("CA01", T0, EndReason::CallerHangup, "Vorrei prenotare un tavolo per quattro alle venti"),
        ("CA02", T0 + 3_600_000, EndReason::CallerHangup, "A che ora chiudete la domenica?"),
        ("CA03", T0 + DAY, EndReason::UpstreamFailed, "Pronto? Non sento niente"),
        ("CA04", T0 + DAY + 60_000, EndReason::CallerHangup, "Avete piatti senza glutine? <b>grazie</b>"),
        ("CA05", T0 + 2 * DAY, EndReason::AgentEnded, "Volevo disdire la prenotazione di sabato"),
    ];
    for (sid, at, end, text) in calls {
        assert!(store.insert_call(&record("mario", sid, at, end, text), "it", &job(sid), at).await.unwrap());
    }
    let gino = record("gino24k", "CA99", T0, EndReason::CallerHangup, "Vorrei prenotare un tavolo segreto");
    assert!(store.insert_call(&gino, "it", &job("CA99"), T0).await.unwrap());
    let summary = serde_json::json!({
        "summary": "Tavolo per 4 alle 20:00.",
        "intent": "booking",
        "caller_name": "Giulia",
        "booking": { "date": "2026-09-21", "time": "20:00", "party_size": 4 },
        "sentiment": "positive",
    });
    let update = CallSummaryUpdate {
        status: "ready",
        summary_json: Some(summary.to_string()),
        summary_text: Some("Tavolo per 4 alle 20:00. Prenotazione confermata.".into()),
        sentiment: Some("positive".into()),
        has_booking: true,
        error: None,
        tokens: 321,
    };
    store.save_summary("CA01", &update, None, T0).await.unwrap();
    let negative = CallSummaryUpdate {
        summary_json: Some(serde_json::json!({"summary": "Nessun audio.", "sentiment": "negative"}).to_string()),
        summary_text: Some("Nessun audio.".into()),
        sentiment: Some("negative".into()),
        has_booking: false,
        tokens: 100,
        ..update.clone()
    };
    store.save_summary("CA03", &negative, None, T0).await.unwrap();
}

async fn keys_and_isolation_on_every_endpoint(postgres: bool) {
    let api = Api::start(postgres).await;
    seed(&api.store).await;
    let endpoints = ["/api/calls", "/api/calls/CA01", "/api/calls/search?q=tavolo", "/api/analytics"];
    for path in endpoints {
        for key in [None, Some("wrong-key"), Some("")] {
            let (s, body, headers) = api.get(path, key).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{path} with {key:?}");
            assert_eq!(body["error"]["code"], "unauthorized", "{path}: {body}");
            assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert_eq!(headers.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
        }
        let r = api.http.get(format!("{}{path}", api.h.http)).basic_auth("mario", Some(api_key("mario"))).send().await;
        assert_eq!(r.unwrap().status(), StatusCode::UNAUTHORIZED, "{path}: Basic is not a bearer key");
    }
    // Gino's key never sees mario's calls, and mario's never sees gino's.
    let gino = api_key("gino24k");
    let (s, body, _) = api.get("/api/calls/CA01", Some(&gino)).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (s, body, _) = api.get("/api/calls/CA99", Some(&api_key("mario"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    let (_, list, _) = api.get("/api/calls", Some(&gino)).await;
    let sids: Vec<&str> = list["calls"].as_array().unwrap().iter().map(|c| c["callSid"].as_str().unwrap()).collect();
    assert_eq!(sids, ["CA99"]);
    let found = api.ok("/api/calls/search?q=segreto").await;
    assert_eq!(found["results"].as_array().unwrap().len(), 0, "gino's words are not in mario's search");
    let (_, gino_stats, _) = api.get("/api/analytics?from=2026-09-01&to=2026-10-01", Some(&gino)).await;
    assert_eq!(gino_stats["totals"]["calls"], 1);
    api.finish().await;
}

async fn history_detail_search_and_analytics(postgres: bool) {
    let api = Api::start(postgres).await;
    seed(&api.store).await;

    // Newest first, in pages of two, following nextCursor to the end.
    let mut seen = Vec::new();
    let mut path = "/api/calls?limit=2".to_owned();
    loop {
        let page = api.ok(&path).await;
        let calls = page["calls"].as_array().unwrap();
        assert!(calls.len() <= 2);
        seen.extend(calls.iter().map(|c| c["callSid"].as_str().unwrap().to_owned()));
        match page["nextCursor"].as_str() {
            Some(c) => path = format!("/api/calls?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["CA05", "CA04", "CA03", "CA02", "CA01"]);
    let failed = api.ok("/api/calls?status=failed").await;
    assert_eq!(failed["calls"][0]["callSid"], "CA03");
    assert_eq!(failed["calls"].as_array().unwrap().len(), 1);
    let day2 = api.ok(&format!("/api/calls?from={}&to={}", T0 + DAY, T0 + 2 * DAY)).await;
    let sids: Vec<&str> = day2["calls"].as_array().unwrap().iter().map(|c| c["callSid"].as_str().unwrap()).collect();
    assert_eq!(sids, ["CA04", "CA03"]);
    for bad in ["/api/calls?status=weird", "/api/calls?limit=0", "/api/calls?cursor=zzz", "/api/calls?from=yesterday"] {
        let (s, body, _) = api.get(bad, Some(&api_key("mario"))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }

    // One call in full.
    let c = api.ok("/api/calls/CA01").await;
    assert_eq!(c["status"], "completed");
    assert_eq!(c["durationMs"], 90_000);
    assert_eq!(c["startedAt"], "2026-09-21T14:13:20Z");
    assert_eq!(c["summaryStatus"], "ready");
    assert_eq!(c["summary"]["callerName"], "Giulia", "summary keys are camelCase: {c}");
    assert_eq!(c["summary"]["booking"]["partySize"], 4);
    assert_eq!(c["hasBooking"], true);
    assert_eq!(c["transcript"][1]["text"], "Vorrei prenotare un tavolo per quattro alle venti");
    assert_eq!(c["transcript"][0]["interrupted"], true);
    assert_eq!(c["analytics"]["silenceMs"], 20_000);
    assert_eq!(c["usage"]["summaryTokens"], 321);
    assert_eq!(c["email"], Value::Null, "no email was queued for the seeded call");

    // Search: ranked, with escaped and marked snippets.
    let r = api.ok("/api/calls/search?q=prenotazione").await;
    let hits: Vec<&str> = r["results"].as_array().unwrap().iter().map(|h| h["callSid"].as_str().unwrap()).collect();
    assert!(hits.contains(&"CA01") && hits.contains(&"CA05"), "{r}");
    assert!(r["results"][0]["snippetHtml"].as_str().unwrap().contains("<mark>"), "{r}");
    let g = api.ok("/api/calls/search?q=glutine").await;
    assert_eq!(g["results"][0]["callSid"], "CA04");
    let html = g["results"][0]["snippetHtml"].as_str().unwrap();
    // Never raw markup from a caller (SQLite keeps the text escaped; PostgreSQL's headline
    // parser drops tags altogether).
    assert!(!html.contains("<b>") && !html.replace("<mark>", "").replace("</mark>", "").contains('<'), "{html}");
    assert!(!g["results"][0]["snippet"].as_str().unwrap().contains('\u{2}'));
    let (s, _, _) = api.get("/api/calls/search", Some(&api_key("mario"))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "q is required");
    let odd = api.ok("/api/calls/search?q=%22NEAR(%20*%20OR").await;
    assert!(odd["results"].is_array(), "operators in the query are inert");

    // Analytics over the three days (and the empty days around them).
    let a = api.ok("/api/analytics?from=2026-09-20&to=2026-09-25").await;
    let t = &a["totals"];
    assert_eq!(t["calls"], 5);
    assert_eq!(t["failedCalls"], 1);
    assert_eq!(t["avgDurationMs"], 90_000);
    assert_eq!(t["silenceMs"], 5 * 20_000);
    assert_eq!(t["interruptions"], 5);
    assert_eq!(t["bookings"], 1);
    assert_eq!(t["sentiment"]["positive"], 1);
    assert_eq!(t["sentiment"]["negative"], 1);
    assert_eq!(t["sentiment"]["unknown"], 3);
    assert_eq!(t["tokens"]["realtimeInput"], 5_000);
    assert_eq!(t["tokens"]["summary"], 421);
    let days: Vec<(String, u64)> = a["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["date"].as_str().unwrap().to_owned(), d["calls"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        days,
        [("2026-09-20", 0), ("2026-09-21", 2), ("2026-09-22", 2), ("2026-09-23", 1), ("2026-09-24", 0)]
            .map(|(d, n)| (d.to_owned(), n))
    );
    let (s, _, _) = api.get("/api/analytics?from=2026-09-25&to=2026-09-20", Some(&api_key("mario"))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_isolation_sqlite() {
    keys_and_isolation_on_every_endpoint(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_isolation_postgres() {
    keys_and_isolation_on_every_endpoint(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_detail_search_and_analytics_sqlite() {
    history_detail_search_and_analytics(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_detail_search_and_analytics_postgres() {
    history_detail_search_and_analytics(true).await;
}
