//! Process-wide counters rendered in the Prometheus text format at `/metrics`.
//! Lock-free relaxed atomics: the hot path adds to a handful of counters per event.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::core::domain::call::CallStats;

/// A fixed-bucket histogram (milliseconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: u64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum.fetch_add(v, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.buckets) {
            cum += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cum}", *b as f64 / 1000.0);
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum.load(Relaxed) as f64 / 1000.0);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const LATENCY_MS: &[u64] = &[50, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000];

#[derive(Debug)]
pub struct Metrics {
    pub live_calls: AtomicU64,
    pub calls_started: AtomicU64,
    pub calls_ended: AtomicU64,
    pub calls_rejected: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub reconnects: AtomicU64,
    pub rotations: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub malformed_frames: AtomicU64,
    pub malformed_upstream: AtomicU64,
    pub oversized_messages: AtomicU64,
    pub barge_ins: AtomicU64,
    pub webhooks: AtomicU64,
    pub signature_failures: AtomicU64,
    pub prewarm_started: AtomicU64,
    pub prewarm_claimed: AtomicU64,
    pub prewarm_expired: AtomicU64,
    pub tenant_reloads: AtomicU64,
    pub tenant_reload_failures: AtomicU64,
    pub calls_persisted: AtomicU64,
    pub call_records_duplicate: AtomicU64,
    pub call_records_unsaved: AtomicU64,
    pub call_records_spooled: AtomicU64,
    pub summaries_ready: AtomicU64,
    pub summaries_unavailable: AtomicU64,
    pub summary_attempt_failures: AtomicU64,
    pub emails_sent: AtomicU64,
    pub emails_rejected: AtomicU64,
    pub emails_failed: AtomicU64,
    pub email_attempt_failures: AtomicU64,
    pub jobs_completed: AtomicU64,
    pub jobs_retried: AtomicU64,
    pub jobs_dead: AtomicU64,
    pub job_panics: AtomicU64,
    pub bookings: AtomicU64,
    pub transfers: AtomicU64,
    pub barge_in_latency: Histogram,
    pub first_audio_latency: Histogram,
    pub realtime_connect: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            live_calls: AtomicU64::new(0),
            calls_started: AtomicU64::new(0),
            calls_ended: AtomicU64::new(0),
            calls_rejected: AtomicU64::new(0),
            upstream_failures: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            malformed_frames: AtomicU64::new(0),
            malformed_upstream: AtomicU64::new(0),
            oversized_messages: AtomicU64::new(0),
            barge_ins: AtomicU64::new(0),
            webhooks: AtomicU64::new(0),
            signature_failures: AtomicU64::new(0),
            prewarm_started: AtomicU64::new(0),
            prewarm_claimed: AtomicU64::new(0),
            prewarm_expired: AtomicU64::new(0),
            tenant_reloads: AtomicU64::new(0),
            tenant_reload_failures: AtomicU64::new(0),
            calls_persisted: AtomicU64::new(0),
            call_records_duplicate: AtomicU64::new(0),
            call_records_unsaved: AtomicU64::new(0),
            call_records_spooled: AtomicU64::new(0),
            summaries_ready: AtomicU64::new(0),
            summaries_unavailable: AtomicU64::new(0),
            summary_attempt_failures: AtomicU64::new(0),
            emails_sent: AtomicU64::new(0),
            emails_rejected: AtomicU64::new(0),
            emails_failed: AtomicU64::new(0),
            email_attempt_failures: AtomicU64::new(0),
            jobs_completed: AtomicU64::new(0),
            jobs_retried: AtomicU64::new(0),
            jobs_dead: AtomicU64::new(0),
            job_panics: AtomicU64::new(0),
            bookings: AtomicU64::new(0),
            transfers: AtomicU64::new(0),
            barge_in_latency: Histogram::new(LATENCY_MS),
            first_audio_latency: Histogram::new(LATENCY_MS),
            realtime_connect: Histogram::new(LATENCY_MS),
        }
    }
}

impl Metrics {
    /// Adds what a call's counters gained since `last` (then remembers them).
    pub fn sync_call(&self, last: &mut CallStats, now: &CallStats) {
        let add = |c: &AtomicU64, new: u64, old: u64| {
            if new > old {
                c.fetch_add(new - old, Relaxed);
            }
        };
        add(&self.frames_in, now.frames_in, last.frames_in);
        add(&self.frames_out, now.frames_out, last.frames_out);
        add(&self.frames_dropped, now.frames_dropped, last.frames_dropped);
        add(&self.malformed_frames, now.malformed_in, last.malformed_in);
        add(&self.malformed_upstream, now.malformed_upstream, last.malformed_upstream);
        *last = *now;
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Relaxed));
        };
        one("switchboard_live_calls", "gauge", "Calls currently bridged.", &self.live_calls);
        one("switchboard_calls_started_total", "counter", "Media streams that started a call.", &self.calls_started);
        one("switchboard_calls_ended_total", "counter", "Calls that ended and produced a record.", &self.calls_ended);
        one(
            "switchboard_calls_rejected_total",
            "counter",
            "Webhooks or streams refused (signature, draining, unknown stream).",
            &self.calls_rejected,
        );
        one(
            "switchboard_upstream_failures_total",
            "counter",
            "Calls whose Realtime session failed (the caller heard the apology).",
            &self.upstream_failures,
        );
        one(
            "switchboard_reconnects_total",
            "counter",
            "Realtime sessions reopened after dropping mid-call.",
            &self.reconnects,
        );
        one(
            "switchboard_rotations_total",
            "counter",
            "Realtime sessions replaced between two turns before their time limit.",
            &self.rotations,
        );
        one(
            "switchboard_frames_in_total",
            "counter",
            "Caller media frames received from Twilio (live calls add theirs once a second).",
            &self.frames_in,
        );
        one(
            "switchboard_frames_out_total",
            "counter",
            "Agent 20 ms frames sent to Twilio (live calls add theirs once a second).",
            &self.frames_out,
        );
        one(
            "switchboard_frames_dropped_total",
            "counter",
            "Caller frames dropped while the upstream was not ready (live calls add theirs once a second).",
            &self.frames_dropped,
        );
        one(
            "switchboard_malformed_frames_total",
            "counter",
            "Malformed Media Streams messages, counted and ignored (live calls add theirs once a second).",
            &self.malformed_frames,
        );
        one(
            "switchboard_malformed_upstream_total",
            "counter",
            "Unreadable Realtime events (live calls add theirs once a second).",
            &self.malformed_upstream,
        );
        one(
            "switchboard_oversized_messages_total",
            "counter",
            "Streams closed for an oversized message.",
            &self.oversized_messages,
        );
        one(
            "switchboard_calls_persisted_total",
            "counter",
            "Call records written to the database (with their summary job).",
            &self.calls_persisted,
        );
        one(
            "switchboard_call_records_duplicate_total",
            "counter",
            "Records for a CallSid already stored (kept the first).",
            &self.call_records_duplicate,
        );
        one(
            "switchboard_call_records_spooled_total",
            "counter",
            "Call records written to the spool folder while the database was down.",
            &self.call_records_spooled,
        );
        one(
            "switchboard_call_records_unsaved_total",
            "counter",
            "Call records the database refused after retries (logged in full).",
            &self.call_records_unsaved,
        );
        one(
            "switchboard_summaries_ready_total",
            "counter",
            "Call summaries written by the model.",
            &self.summaries_ready,
        );
        one(
            "switchboard_summaries_unavailable_total",
            "counter",
            "Calls emailed without a summary (the model stayed unavailable).",
            &self.summaries_unavailable,
        );
        one(
            "switchboard_summary_attempt_failures_total",
            "counter",
            "Failed summary attempts (rate limits, errors, invalid output).",
            &self.summary_attempt_failures,
        );
        one(
            "switchboard_emails_sent_total",
            "counter",
            "Emails accepted by the SMTP server (or written to the file outbox).",
            &self.emails_sent,
        );
        one(
            "switchboard_emails_rejected_total",
            "counter",
            "Emails refused for good by the SMTP server (5xx).",
            &self.emails_rejected,
        );
        one(
            "switchboard_emails_failed_total",
            "counter",
            "Emails given up after retrying past the deadline.",
            &self.emails_failed,
        );
        one(
            "switchboard_email_attempt_failures_total",
            "counter",
            "Delivery attempts that failed and will be retried.",
            &self.email_attempt_failures,
        );
        one("switchboard_jobs_completed_total", "counter", "Jobs finished by this daemon.", &self.jobs_completed);
        one(
            "switchboard_jobs_retried_total",
            "counter",
            "Job attempts that failed and were rescheduled.",
            &self.jobs_retried,
        );
        one("switchboard_jobs_dead_total", "counter", "Jobs given up (dead) by this daemon.", &self.jobs_dead);
        one(
            "switchboard_job_panics_total",
            "counter",
            "Job handlers that panicked (caught; counted as a failed attempt).",
            &self.job_panics,
        );
        one(
            "switchboard_bookings_total",
            "counter",
            "Bookings taken by the agent (take_booking, validated).",
            &self.bookings,
        );
        one("switchboard_transfers_total", "counter", "Calls transferred to a person.", &self.transfers);
        one("switchboard_barge_ins_total", "counter", "Times a caller interrupted the agent.", &self.barge_ins);
        one("switchboard_webhooks_total", "counter", "Voice webhooks answered.", &self.webhooks);
        one(
            "switchboard_signature_failures_total",
            "counter",
            "Requests refused for a bad or missing X-Twilio-Signature.",
            &self.signature_failures,
        );
        one(
            "switchboard_prewarm_started_total",
            "counter",
            "Realtime sessions opened at webhook time.",
            &self.prewarm_started,
        );
        one(
            "switchboard_prewarm_claimed_total",
            "counter",
            "Pre-warmed sessions claimed by their stream.",
            &self.prewarm_claimed,
        );
        one(
            "switchboard_prewarm_expired_total",
            "counter",
            "Pre-warmed sessions closed unclaimed.",
            &self.prewarm_expired,
        );
        one("switchboard_tenant_reloads_total", "counter", "Successful tenants.toml reloads.", &self.tenant_reloads);
        one(
            "switchboard_tenant_reload_failures_total",
            "counter",
            "Rejected tenants.toml reloads (old file kept).",
            &self.tenant_reload_failures,
        );
        self.barge_in_latency.render(&mut out, "switchboard_barge_in_seconds", "Caller speech onset to clear.");
        self.first_audio_latency.render(
            &mut out,
            "switchboard_first_audio_seconds",
            "Stream start to first greeting audio.",
        );
        self.realtime_connect.render(
            &mut out,
            "switchboard_realtime_connect_seconds",
            "Realtime connect and configure.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.live_calls.store(3, Relaxed);
        m.barge_in_latency.observe(120);
        m.barge_in_latency.observe(4000);
        let mut last = CallStats::default();
        m.sync_call(&mut last, &CallStats { frames_in: 10, ..Default::default() });
        m.sync_call(&mut last, &CallStats { frames_in: 15, ..Default::default() });
        let s = m.render();
        assert!(s.contains("switchboard_live_calls 3\n"));
        assert!(s.contains("switchboard_frames_in_total 15\n"));
        assert!(s.contains("switchboard_barge_in_seconds_bucket{le=\"0.15\"} 1\n"));
        assert!(s.contains("switchboard_barge_in_seconds_count 2\n"));
    }
}
