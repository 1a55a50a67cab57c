//! How fast is this host right now? Three short fixed workloads, run on an idle host before the
//! processes start and again after they stop, so that a result file says what kind of machine
//! (or what moment of a shared one) produced it.
//!
//! The VMs of one machine kind differ, and a shared one changes speed with its neighbours: the
//! same daemon has needed 0.67 core for 1,000 calls on one and 0.94 on another. Nearly all of
//! the rig's kernel time is loopback TCP (each message is sent, received and woken up for), so
//! the second workload measures exactly that: a small message bounced between two threads over
//! a loopback TCP connection. The first is plain arithmetic (no memory, no system calls).
//!
//! The third is how late a sleeping thread wakes on the idle host. Every relayed message waits
//! for at least one wake-up of the daemon, so where the hypervisor keeps a vCPU off its core
//! for milliseconds at a time (seen as steal), a relay p99 below this figure is not to be
//! expected from any process: it is the floor under the relay delays a run measures.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use serde_json::{Value, json};

use crate::common::Hist;

/// The size of a caller `media` message as sent (a 20 ms frame in JSON, WebSocket-framed).
const MSG: usize = 320;
/// Round trips per sample.
const TRIPS: u32 = 2_000;
const SAMPLES: usize = 5;
/// A loopback peer silent this long is stalled: the measurement gives up.
const STALL: std::time::Duration = std::time::Duration::from_secs(5);
/// Multiply-xorshift steps per sample (about 50 ms on the VMs here).
const STEPS: u64 = 20_000_000;
/// The sleep whose lateness is measured, and how many (about 2.2 s in all).
const NAP: std::time::Duration = std::time::Duration::from_millis(1);
const NAPS: usize = 2_000;

/// One measurement, each figure but the last the median of five samples:
/// * `cpu_ns_per_step`: one multiply-xorshift step (no memory, no system calls);
/// * `loopback_same_cpu_us`: one small message over a loopback TCP connection between two
///   threads on the same CPU (half a round trip): what sending, receiving and switching cost;
/// * `loopback_cross_cpu_us`: the same between two CPUs, which adds waking an idle CPU (on the
///   VMs here several times the cost of the message itself);
/// * `wake_late`: how late a thread sleeping 1 ms wakes, over `NAPS` sleeps.
///
/// A loopback figure is `None` if it could not be measured (a single CPU has no cross figure).
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    pub cpu_ns_per_step: f64,
    pub loopback_same_cpu_us: Option<f64>,
    pub loopback_cross_cpu_us: Option<f64>,
    pub wake_late: Option<Lateness>,
}

/// Percentiles of a lateness, in µs, as loadgen takes all its percentiles ([`Hist`]: 10 µs
/// buckets, each read as its upper bound, the max exact).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lateness {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Lateness {
    /// `None` for no samples.
    fn of(h: &Hist) -> Option<Lateness> {
        (h.count() > 0).then(|| Lateness { p50_us: h.quantile(0.5), p99_us: h.quantile(0.99), max_us: h.quantile(1.0) })
    }
}

impl Calibration {
    pub fn json(&self) -> Value {
        json!({
            "cpu_ns_per_step": round3(self.cpu_ns_per_step),
            "loopback_same_cpu_us": self.loopback_same_cpu_us.map(round3),
            "loopback_cross_cpu_us": self.loopback_cross_cpu_us.map(round3),
            "wake_late_p50_us": self.wake_late.map(|l| l.p50_us),
            "wake_late_p99_us": self.wake_late.map(|l| l.p99_us),
            "wake_late_max_us": self.wake_late.map(|l| l.max_us),
        })
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Blocking; about three seconds on the hosts this was written on. Runs on threads of its own
/// (they are pinned to CPUs, which must not outlive the measurement). The CPUs are the first
/// two this process may run on; with only one, there is no cross-CPU figure.
pub fn measure() -> Calibration {
    let cpus = allowed_cpus();
    let cpu = std::thread::spawn(|| median((0..SAMPLES).map(|_| cpu_sample()).collect())).join().unwrap_or(f64::NAN);
    let same = cpus.first().and_then(|&c| loopback(c, c).ok());
    let cross = match cpus[..] {
        [a, b, ..] => loopback(a, b).ok(),
        _ => None,
    };
    // Not pinned, like the daemon's threads: the scheduler may wake it on either CPU.
    let wake_late = std::thread::spawn(wake_lateness).join().ok().flatten();
    Calibration { cpu_ns_per_step: cpu, loopback_same_cpu_us: same, loopback_cross_cpu_us: cross, wake_late }
}

/// How much later than asked `NAPS` sleeps of `NAP` end.
fn wake_lateness() -> Option<Lateness> {
    let late = Hist::new();
    for _ in 0..NAPS {
        let t = Instant::now();
        std::thread::sleep(NAP);
        late.record(t.elapsed().saturating_sub(NAP).as_micros() as u64);
    }
    Lateness::of(&late)
}

/// The CPUs this process may run on (its affinity mask, e.g. under `taskset`), lowest first.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity(0, …) fills it for the
    // calling thread, and CPU_ISSET only reads inside it (its index is below CPU_SETSIZE).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

fn cpu_sample() -> f64 {
    let t = Instant::now();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..STEPS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    std::hint::black_box(x);
    t.elapsed().as_nanos() as f64 / STEPS as f64
}

/// Pins the calling thread to one CPU.
fn pin(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it (it checks its
    // index against CPU_SETSIZE), and sched_setaffinity(0, …) applies to the calling thread only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Half the median round trip of a `MSG`-byte message between a client thread on CPU `a` and
/// an echo thread on CPU `b`, in µs. An error if either thread cannot be pinned (the figure
/// would not be what its name says) or the connection fails; a stalled peer ends it after
/// `STALL`, so it cannot hang the run it belongs to.
fn loopback(a: usize, b: usize) -> std::io::Result<f64> {
    // Connected before any thread starts: a failure here leaves no thread waiting for a peer.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut c = TcpStream::connect(listener.local_addr()?)?;
    let (mut s, _) = listener.accept()?;
    for sock in [&c, &s] {
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(STALL))?;
        sock.set_write_timeout(Some(STALL))?;
    }
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        pin(b)?;
        let mut buf = [0u8; MSG];
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => s.write_all(&buf)?,
                // The other side is done.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let client = std::thread::spawn(move || -> std::io::Result<f64> {
        pin(a)?;
        let mut buf = [0x5Au8; MSG];
        let mut samples = Vec::with_capacity(SAMPLES);
        // One warm-up sample, not kept (first wake-ups).
        for i in 0..=SAMPLES {
            let t = Instant::now();
            for _ in 0..TRIPS {
                c.write_all(&buf)?;
                c.read_exact(&mut buf)?;
            }
            if i > 0 {
                samples.push(t.elapsed().as_nanos() as f64 / 1e3 / (2.0 * TRIPS as f64));
            }
        }
        Ok(median(samples))
    });
    let panicked = |_| std::io::Error::other("calibration thread panicked");
    // Each thread's socket is closed when it ends (either way), which ends the other one.
    let figure = client.join().map_err(panicked)?;
    echo.join().map_err(panicked)??;
    figure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_all_three_workloads() {
        let c = measure();
        assert!(c.cpu_ns_per_step > 0.0 && c.cpu_ns_per_step.is_finite());
        let same = c.loopback_same_cpu_us.expect("a loopback TCP pair works here");
        assert!(same > 0.0 && same.is_finite());
        let j = c.json();
        assert!(j["cpu_ns_per_step"].as_f64().is_some_and(|v| v > 0.0));
        assert!(j["loopback_same_cpu_us"].as_f64().is_some_and(|v| v > 0.0));
        assert_eq!(c.loopback_cross_cpu_us.is_some(), allowed_cpus().len() > 1);
        let w = c.wake_late.expect("sleeps were timed");
        assert!(w.p50_us <= w.p99_us && w.p99_us <= w.max_us, "{w:?}");
        assert_eq!(j["wake_late_p99_us"].as_u64(), Some(w.p99_us));
    }

    #[test]
    fn lateness_percentiles_come_from_the_samples() {
        let h = Hist::new();
        for us in (1..=200).rev() {
            h.record(us * 10 + 3);
        }
        // The 100th and 198th of 200 samples (1003 and 1983 µs), read as their buckets' upper
        // bounds; the max exact.
        let l = Lateness::of(&h).expect("samples");
        assert_eq!(l, Lateness { p50_us: 1010, p99_us: 1990, max_us: 2003 });
        assert_eq!(Lateness::of(&Hist::new()), None);
    }

    #[test]
    fn allowed_cpus_are_those_of_the_affinity_mask() {
        let cpus = allowed_cpus();
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        assert_eq!(cpus.len(), n, "{cpus:?}");
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "{cpus:?}");
    }

    #[test]
    fn a_cpu_outside_the_machine_cannot_be_pinned() {
        // Pinning happens on a thread of its own: the test harness's thread keeps its mask.
        let r = std::thread::spawn(|| pin(libc::CPU_SETSIZE as usize - 1)).join().expect("no panic");
        assert!(r.is_err(), "no machine here has {} CPUs", libc::CPU_SETSIZE);
    }

    #[test]
    fn median_is_the_middle_sample() {
        assert_eq!(median(vec![5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(vec![2.0, 9.0, 4.0, 1.0, 7.0]), 4.0);
    }
}
