//! Shared by the `loadgen` and `fake-realtime` binaries (the fake includes this file with
//! `#[path]`): the in-audio timing marker, a lock-free latency histogram, tiny HTTP/`/proc`
//! helpers.
//!
//! # The marker
//!
//! pcmu audio passes through the daemon byte-exact, so a sender can stamp a 20 ms frame (160
//! μ-law bytes) with its send time and the receiver, another process on the same host, reads
//! it back and subtracts: both use `CLOCK_REALTIME` (`SystemTime`) in microseconds. The marker
//! is the first [`MARKER_BYTES`] = 30 bytes of the frame (3.75 ms): 3 magic bytes, then 27
//! bytes each carrying one nibble as a μ-law code of magnitude ≤ 56 (`0xF8..=0xFF` for 0..7,
//! `0x78..=0x7F`, the same magnitudes negative, for 8..15): below -55 dBFS, i.e. digital
//! near-silence, so the marker neither trips a VAD nor defeats a "skip silent frames" check.
//! 30 bytes are exactly 40 base64 chars, so a pre-encoded frame is stamped by overwriting its
//! first 40 characters.
//!
//! Fields: `ts_us` (56 bits), `a` (20 bits), `b` (16 bits), `c` (16 bits). Caller frames carry
//! `a` = frame number in the call; agent frames carry `a` = response number in the connection,
//! `b` = frame index in the response, `c` = frames in the response.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

pub const FRAME_BYTES: usize = 160;
pub const MARKER_BYTES: usize = 30;
pub const MARKER_B64: usize = 40;
const MAGIC: [u8; 3] = [0xFD, 0x7D, 0xFB]; // +16, -16, +32

/// Microseconds since the Unix epoch (CLOCK_REALTIME).
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub ts_us: u64,
    pub a: u32,
    pub b: u32,
    pub c: u32,
}

fn put_nibbles(out: &mut [u8], mut v: u64, n: usize) {
    for i in (0..n).rev() {
        let n = (v & 0xF) as u8;
        out[i] = if n < 8 { 0xF8 | n } else { 0x78 | (n - 8) };
        v >>= 4;
    }
}

fn get_nibbles(b: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &x in b {
        if x & 0x78 != 0x78 {
            return None;
        }
        let n = (x & 0x07) | if x & 0x80 == 0 { 8 } else { 0 };
        v = (v << 4) | u64::from(n);
    }
    Some(v)
}

impl Marker {
    pub fn encode(&self, out: &mut [u8]) {
        out[..3].copy_from_slice(&MAGIC);
        put_nibbles(&mut out[3..17], self.ts_us, 14);
        put_nibbles(&mut out[17..22], u64::from(self.a), 5);
        put_nibbles(&mut out[22..26], u64::from(self.b), 4);
        put_nibbles(&mut out[26..30], u64::from(self.c), 4);
    }

    pub fn decode(b: &[u8]) -> Option<Marker> {
        if b.len() < MARKER_BYTES || b[..3] != MAGIC {
            return None;
        }
        Some(Marker {
            ts_us: get_nibbles(&b[3..17])?,
            a: get_nibbles(&b[17..22])? as u32,
            b: get_nibbles(&b[22..26])? as u32,
            c: get_nibbles(&b[26..30])? as u32,
        })
    }

    /// The marker as 40 base64 characters (to overwrite the start of a base64 frame).
    pub fn b64(&self) -> [u8; MARKER_B64] {
        let mut raw = [0u8; MARKER_BYTES];
        self.encode(&mut raw);
        let mut out = [0u8; MARKER_B64];
        let _ = B64.encode_slice(raw, &mut out);
        out
    }
}

/// Latency histogram in microseconds: 10 µs buckets up to 2 s, then an overflow bucket;
/// exact max. Lock-free (relaxed atomics), shareable.
pub struct Hist {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

const BUCKET_US: u64 = 10;
const NBUCKETS: usize = 200_001;

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    pub fn new() -> Self {
        Self {
            buckets: (0..NBUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    pub fn record(&self, us: u64) {
        let i = ((us / BUCKET_US) as usize).min(NBUCKETS - 1);
        self.buckets[i].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(us, Relaxed);
        self.max.fetch_max(us, Relaxed);
    }

    pub fn merge(&self, other: &Hist) {
        for (a, b) in self.buckets.iter().zip(&other.buckets) {
            let v = b.load(Relaxed);
            if v > 0 {
                a.fetch_add(v, Relaxed);
            }
        }
        self.count.fetch_add(other.count.load(Relaxed), Relaxed);
        self.sum.fetch_add(other.sum.load(Relaxed), Relaxed);
        self.max.fetch_max(other.max.load(Relaxed), Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The value (µs, bucket upper bound, capped at the max) at quantile `q`.
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= rank {
                return ((i as u64 + 1) * BUCKET_US).min(self.max.load(Relaxed));
            }
        }
        self.max.load(Relaxed)
    }

    /// `{count, mean, p50, p99, p999, max}` in milliseconds (3 decimals).
    pub fn summary_ms(&self) -> serde_json::Value {
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        let n = self.count();
        serde_json::json!({
            "count": n,
            "mean": self.sum.load(Relaxed).checked_div(n).map_or(0.0, ms),
            "p50": ms(self.quantile(0.50)),
            "p99": ms(self.quantile(0.99)),
            "p999": ms(self.quantile(0.999)),
            "max": ms(self.max.load(Relaxed)),
        })
    }
}

/// One plain HTTP/1.1 request to a loopback server (`Connection: close`); returns (status, body).
pub async fn http_request(authority: &str, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let fut = async {
        let mut tcp = tokio::net::TcpStream::connect(authority).await?;
        tcp.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(std::time::Duration::from_secs(5), fut).await??;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// utime + stime of a process, in seconds (from `/proc/PID/stat`).
pub fn proc_cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Host CPU from `/proc/stat`, in seconds since boot over all CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct HostCpu {
    /// user + nice + system + irq + softirq: what ran on this VM's CPUs.
    pub busy: f64,
    pub nice: f64,
    pub softirq: f64,
    /// Time the hypervisor ran something else while this VM had work: on a shared host, CPU
    /// this run did not get.
    pub steal: f64,
}

pub fn host_cpu_secs() -> Option<HostCpu> {
    parse_host_cpu(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The aggregate `cpu` line of a `/proc/stat` text (USER_HZ = 100 ticks a second).
pub fn parse_host_cpu(stat: &str) -> Option<HostCpu> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let t = |i: usize| v.get(i).copied().unwrap_or(0.0) / 100.0;
    Some(HostCpu { busy: t(0) + t(1) + t(2) + t(5) + t(6), nice: t(1), softirq: t(6), steal: t(7) })
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
}

/// The string value of `"key":"…"` in a compact JSON text (no escapes inside): enough for the
/// messages these tools exchange, without a JSON parse per frame.
pub fn str_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = text.find(&pat)? + pat.len();
    let end = text[start..].find('"')?;
    Some(&text[start..start + end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_through_base64() {
        let m = Marker { ts_us: now_us(), a: 0xABCDE, b: 0x1234, c: 0xFFFF };
        let mut frame = vec![0x55u8; FRAME_BYTES];
        m.encode(&mut frame);
        assert_eq!(Marker::decode(&frame), Some(m));
        let b64 = B64.encode(&frame);
        assert_eq!(&b64.as_bytes()[..MARKER_B64], &m.b64());
        let stamped = B64.decode(&b64).expect("valid base64");
        assert_eq!(stamped.len(), FRAME_BYTES);
        assert_eq!(Marker::decode(&stamped), Some(m));
        assert_eq!(Marker::decode(&[0xFF; 40]), None);
        // Every marker byte decodes to a magnitude ≤ 56 (below -55 dBFS).
        let peak = frame[..MARKER_BYTES]
            .iter()
            .map(|&b| {
                let u = !b;
                let (e, m) = (i32::from((u >> 4) & 7), i32::from(u & 0x0F));
                (((m << 3) + 0x84) << e) - 0x84
            })
            .max()
            .unwrap();
        assert!(peak <= 56, "{peak}");
    }

    #[test]
    fn histogram_quantiles() {
        let h = Hist::new();
        for us in 1..=1000 {
            h.record(us);
        }
        // 10 µs buckets: a quantile is its bucket's upper bound.
        assert!((500..=510).contains(&h.quantile(0.5)), "{}", h.quantile(0.5));
        assert_eq!(h.quantile(1.0), 1000);
        assert!(h.quantile(0.99) >= 990);
    }

    #[test]
    fn host_cpu_separates_steal_from_busy() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  1000 50 300 9000 20 0 150 400 0 0\ncpu0 500 25 150 4500 10 0 75 200 0 0\n";
        let h = parse_host_cpu(stat).expect("a cpu line");
        assert_eq!(h, HostCpu { busy: 15.0, nice: 0.5, softirq: 1.5, steal: 4.0 });
        assert_eq!(parse_host_cpu("intr 1 2 3\n"), None);
    }
}
