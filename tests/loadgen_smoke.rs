//! A small, fast run of the load generator against the debug binaries: 20 calls, 3 s steady.
//! Correctness only (every call completed, no frame lost either way, barge-ins produced a
//! `clear`); timings are never asserted here — they are measured in BENCHMARKS.md.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn loadgen_drives_twenty_calls_without_losing_a_frame() {
    let out = std::env::temp_dir().join(format!("loadgen-smoke-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--calls", "20", "--rate", "20", "--steady", "3", "--settle", "1", "--barge-first-ms", "1500"])
        .args(["--daemon-bin", env!("CARGO_BIN_EXE_switchboard")])
        .args(["--fake-bin", env!("CARGO_BIN_EXE_fake-realtime")])
        .args(["--tenants", concat!(env!("CARGO_MANIFEST_DIR"), "/tenants.toml")])
        .arg("--no-calibration")
        .arg("--json")
        .arg(&out)
        .spawn()
        .expect("loadgen starts");
    let deadline = Instant::now() + Duration::from_secs(25);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen did not finish within 25 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&out).expect("loadgen wrote its JSON result");
    let _ = std::fs::remove_file(&out);
    let r: serde_json::Value = serde_json::from_str(&text).expect("JSON result");
    let f = &r["frames"];
    assert_eq!(r["calls_completed"], 20, "{text}");
    assert_eq!(r["calls_failed"], 0, "{text}");
    assert!(f["caller_sent"].as_u64().unwrap() > 20 * 200, "{text}");
    assert_eq!(f["caller_lost"], 0, "{text}");
    assert_eq!(f["caller_appended_at_fake"], f["caller_sent"], "{text}");
    assert_eq!(f["caller_seq_gaps_at_fake"], 0, "{text}");
    assert!(f["agent_received"].as_u64().unwrap() > 0, "{text}");
    assert_eq!(f["agent_lost"], 0, "{text}");
    assert_eq!(f["agent_unmarked"], 0, "{text}");
    assert!(r["barge_in_ms"]["clears"].as_u64().unwrap() >= 1, "{text}");
    // The host figures are there (steal apart from busy); the calibration was skipped.
    assert!(r["host"]["steal_cores"].is_number(), "{text}");
    assert!(r["host"]["busy_cores"].is_number(), "{text}");
    assert!(r["host"].get("calibration").is_none(), "{text}");
    assert!(status.success(), "loadgen exit {status:?}\n{text}");
}
