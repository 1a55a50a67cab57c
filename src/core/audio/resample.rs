//! Per-call 8 kHz ⇄ 24 kHz conversion for tenants whose Realtime session uses `audio/pcm`.
//!
//! Twilio carries 8 kHz mu-law, the Realtime API's PCM format is 24 kHz. The conversion uses
//! rubato's synchronous FFT resampler with both chunk sizes fixed (160 ⇄ 480 samples, i.e.
//! 20 ms on either side): measured by the tests below, 77–93 dB SNR for tones over
//! 300–3400 Hz, 3.4 kHz passes a down/up round trip at −0.002 dB, and the downsampler turns
//! every tone from 4 kHz up into exact zeros, so agent audio never aliases into the phone
//! band. It costs ~1.4 µs per frame in release builds (crates.md §5). Its price is a fixed
//! 10 ms algorithmic delay per direction ([`DELAY_MS`]).
//!
//! The converters are stateful (the FFT overlap carries across chunks) and therefore one per
//! call and direction. Twilio and OpenAI deliver audio in arbitrary sizes, so each converter
//! keeps a FIFO of input and emits output whenever a whole chunk is available; feeding the
//! same signal in any split yields bit-identical output.

use audioadapter_buffers::SizeError;
use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler, ResamplerConstructionError};

/// Algorithmic delay of each direction, in milliseconds: the FFT resampler outputs a sample
/// half an FFT block (= one 20 ms chunk) after it went in.
pub const DELAY_MS: u32 = 10;

/// Why a converter could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// rubato rejected the rates or chunk size.
    #[error("cannot build the resampler: {0}")]
    Construction(#[from] ResamplerConstructionError),
    /// rubato chose chunk sizes other than the 20 ms ones this module relies on.
    #[error("resampler chunk sizes are {actual_in} -> {actual_out}, expected {expected_in} -> {expected_out}")]
    ChunkSize { expected_in: usize, expected_out: usize, actual_in: usize, actual_out: usize },
    /// A buffer did not have the size rubato expects (a bug in this module).
    #[error("resampler buffer size: {0}")]
    Buffer(#[from] SizeError),
    /// rubato failed to process a chunk.
    #[error("resampling failed: {0}")]
    Process(#[from] rubato::ResampleError),
}

/// Shared FIFO + FFT machinery of both directions.
struct Converter {
    fft: Fft<f32>,
    chunk_in: usize,
    chunk_out: usize,
    /// Output samples (at the output rate) by which the output lags the input.
    delay_out: usize,
    /// Input not yet processed, already converted to f32; always shorter than `chunk_in`
    /// between calls, and pre-sized so it never reallocates.
    fifo: Vec<f32>,
    /// One chunk of output, reused for every chunk.
    out_buf: Vec<f32>,
    /// Whether any input arrived since construction or the last reset, i.e. whether the
    /// delay line may hold audio that `flush` owes.
    fed: bool,
}

/// Full scale of i16 as f32 (the f32 signal lives in −1.0..1.0).
const SCALE: f32 = 32768.0;

#[inline]
fn to_f32(s: i16) -> f32 {
    s as f32 / SCALE
}

/// Rounds and clamps, because FFT ringing can overshoot a full-scale input.
#[inline]
fn to_i16(x: f32) -> i16 {
    (x * SCALE).round().clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

impl Converter {
    fn new(rate_in: usize, rate_out: usize, chunk_in: usize, chunk_out: usize) -> Result<Self, ResampleError> {
        let fft = Fft::<f32>::new(rate_in, rate_out, chunk_in, 1, FixedSync::Both)?;
        let (actual_in, actual_out) = (fft.input_frames_next(), fft.output_frames_next());
        if actual_in != chunk_in || actual_out != chunk_out {
            return Err(ResampleError::ChunkSize {
                expected_in: chunk_in,
                expected_out: chunk_out,
                actual_in,
                actual_out,
            });
        }
        let delay_out = fft.output_delay();
        Ok(Self {
            fft,
            chunk_in,
            chunk_out,
            delay_out,
            fifo: Vec::with_capacity(chunk_in),
            out_buf: vec![0.0; chunk_out],
            fed: false,
        })
    }

    fn process(&mut self, mut input: &[i16], out: &mut Vec<i16>) {
        self.fed |= !input.is_empty();
        while !input.is_empty() {
            let take = (self.chunk_in - self.fifo.len()).min(input.len());
            let (head, rest) = input.split_at(take);
            self.fifo.extend(head.iter().map(|&s| to_f32(s)));
            input = rest;
            if self.fifo.len() == self.chunk_in {
                self.run_chunk(out);
            }
        }
    }

    /// Resamples the full FIFO into `out` and empties the FIFO.
    fn run_chunk(&mut self, out: &mut Vec<i16>) {
        match self.resample_fifo() {
            Ok(()) => out.extend(self.out_buf.iter().map(|&x| to_i16(x))),
            Err(e) => {
                // Unreachable while the buffers have the sizes checked in `new`. Should it
                // happen anyway, keep the stream's timing with a chunk of silence rather
                // than take the call down.
                debug_assert!(false, "resampler chunk failed: {e}");
                out.extend(std::iter::repeat_n(0, self.chunk_out));
            }
        }
        self.fifo.clear();
    }

    fn resample_fifo(&mut self) -> Result<(), ResampleError> {
        let input = InterleavedSlice::new(&self.fifo[..], 1, self.chunk_in)?;
        let mut output = InterleavedSlice::new_mut(&mut self.out_buf[..], 1, self.chunk_out)?;
        self.fft.process_into_buffer(&input, &mut output, None)?;
        Ok(())
    }

    /// Output samples still owed for input already accepted: the FIFO plus the delay line.
    fn pending_out(&self) -> usize {
        (self.fifo.len() * self.chunk_out).div_ceil(self.chunk_in) + self.delay_out
    }

    fn flush(&mut self, out: &mut Vec<i16>) {
        if !self.fed {
            return;
        }
        let owed = self.pending_out();
        let start = out.len();
        while out.len() - start < owed {
            self.fifo.resize(self.chunk_in, 0.0);
            self.run_chunk(out);
        }
        out.truncate(start + owed);
        self.reset();
    }

    fn reset(&mut self) {
        self.fed = false;
        self.fifo.clear();
        self.fft.reset();
    }
}

macro_rules! converter {
    ($(#[$doc:meta])* $name:ident, $rate_in:expr, $rate_out:expr, $chunk_in:expr, $chunk_out:expr) => {
        $(#[$doc])*
        pub struct $name {
            inner: Converter,
        }

        impl $name {
            /// Algorithmic delay in milliseconds (see the module-level [`DELAY_MS`]).
            pub const DELAY_MS: u32 = DELAY_MS;
            /// Input sample rate in Hz.
            pub const RATE_IN: u32 = $rate_in;
            /// Output sample rate in Hz.
            pub const RATE_OUT: u32 = $rate_out;
            /// Input samples per processed chunk (20 ms).
            pub const CHUNK_IN: usize = $chunk_in;
            /// Output samples per processed chunk (20 ms).
            pub const CHUNK_OUT: usize = $chunk_out;

            /// Builds the converter; fails only if rubato rejects the fixed parameters.
            pub fn new() -> Result<Self, ResampleError> {
                Ok(Self { inner: Converter::new($rate_in, $rate_out, $chunk_in, $chunk_out)? })
            }

            /// Feeds `input` (any length, including empty) and appends every output chunk
            /// that became complete to `out`. Input that does not fill a chunk is kept for
            /// the next call. Does not allocate except to grow `out`.
            pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
                self.inner.process(input, out);
            }

            /// Pushes out everything accepted so far (the FIFO and the delay line), padding
            /// with silence, appends exactly that many samples to `out`, then resets. Use at
            /// the end of a stream so its last syllable is not held back. Does nothing if no
            /// input arrived since the last reset.
            pub fn flush(&mut self, out: &mut Vec<i16>) {
                self.inner.flush(out);
            }

            /// Drops buffered input and the filter history, e.g. when playback is cut on
            /// barge-in, so stale audio does not leak into the next stream.
            pub fn reset(&mut self) {
                self.inner.reset();
            }

            /// Input samples held in the FIFO, waiting for a full chunk (< `CHUNK_IN`).
            pub fn buffered(&self) -> usize {
                self.inner.fifo.len()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("rate_in", &Self::RATE_IN)
                    .field("rate_out", &Self::RATE_OUT)
                    .field("buffered", &self.buffered())
                    .finish_non_exhaustive()
            }
        }
    };
}

converter!(
    /// Caller audio, 8 kHz → 24 kHz (160 → 480 samples per chunk), for the Realtime input.
    Upsampler,
    8000,
    24000,
    160,
    480
);

converter!(
    /// Agent audio, 24 kHz → 8 kHz (480 → 160 samples per chunk), for Twilio. The FFT
    /// resampler low-passes below 4 kHz, so content above the telephone band is removed
    /// rather than aliased.
    Downsampler,
    24000,
    8000,
    480,
    160
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn sine(freq: f64, rate: f64, amp: f64, n: usize, delay: usize) -> Vec<f64> {
        (0..n).map(|i| amp * (2.0 * PI * freq * (i as f64 - delay as f64) / rate).sin()).collect()
    }

    fn to_pcm(x: &[f64]) -> Vec<i16> {
        x.iter().map(|&v| v.round() as i16).collect()
    }

    fn rms(x: impl Iterator<Item = f64>) -> f64 {
        let (sum, n) = x.fold((0.0, 0usize), |(s, n), v| (s + v * v, n + 1));
        (sum / n as f64).sqrt()
    }

    fn snr_db(got: &[i16], want: &[f64]) -> f64 {
        let signal: f64 = want.iter().map(|w| w * w).sum();
        let noise: f64 = got.iter().zip(want).map(|(&g, w)| (g as f64 - w).powi(2)).sum();
        10.0 * (signal / noise).log10()
    }

    /// Irregular split sizes, including empty and single-sample calls.
    const SPLITS: [usize; 10] = [7, 160, 33, 500, 0, 1, 319, 161, 480, 12];

    fn feed_irregular(input: &[i16], mut process: impl FnMut(&[i16], &mut Vec<i16>)) -> Vec<i16> {
        let mut out = Vec::new();
        let mut rest = input;
        for &n in SPLITS.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (head, tail) = rest.split_at(n.min(rest.len()));
            process(head, &mut out);
            rest = tail;
        }
        out
    }

    #[test]
    fn delay_matches_rubato() {
        let up = Upsampler::new().unwrap();
        let down = Downsampler::new().unwrap();
        assert_eq!(up.inner.delay_out, 24 * DELAY_MS as usize);
        assert_eq!(down.inner.delay_out, 8 * DELAY_MS as usize);
        assert_eq!(Upsampler::DELAY_MS, 10);
        assert_eq!(format!("{up:?}"), "Upsampler { rate_in: 8000, rate_out: 24000, buffered: 0, .. }");
    }

    #[test]
    fn upsampler_is_split_invariant_and_clean() {
        // 1.5 s of a 1 kHz sine at half scale.
        let n = 12_000;
        let input = to_pcm(&sine(1000.0, 8000.0, 16384.0, n, 0));

        let mut up = Upsampler::new().unwrap();
        let mut regular = Vec::new();
        for chunk in input.chunks(160) {
            up.process(chunk, &mut regular);
        }
        let mut up2 = Upsampler::new().unwrap();
        let irregular = feed_irregular(&input, |i, o| up2.process(i, o));
        assert_eq!(regular.len(), n * 3);
        assert_eq!(irregular, regular);
        assert_eq!(up2.buffered(), 0);

        let delay = 240;
        let want = sine(1000.0, 24000.0, 16384.0, regular.len(), delay);
        // Skip the start-up transient (delay + one chunk) and compare the steady state.
        let skip = delay + 480;
        let snr = snr_db(&regular[skip..], &want[skip..]);
        eprintln!("8k->24k 1 kHz SNR: {snr:.1} dB");
        assert!(snr > 40.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn upsampler_is_clean_across_the_telephone_band() {
        // Measured: 300 Hz 89.6 dB, 1234.5 Hz 90.0 dB, 2999 Hz 90.0 dB, 3400 Hz 77.4 dB.
        for freq in [300.0, 1234.5, 2999.0, 3400.0] {
            let input = to_pcm(&sine(freq, 8000.0, 16384.0, 12_000, 0));
            let mut up = Upsampler::new().unwrap();
            let mut out = Vec::new();
            up.process(&input, &mut out);
            let want = sine(freq, 24000.0, 16384.0, out.len(), 240);
            let skip = 240 + 480;
            let snr = snr_db(&out[skip..], &want[skip..]);
            eprintln!("8k->24k {freq} Hz SNR: {snr:.1} dB");
            assert!(snr > 40.0, "{freq} Hz: SNR {snr:.1} dB");
        }
    }

    #[test]
    fn downsampler_is_split_invariant_and_clean() {
        let n = 36_000; // 1.5 s at 24 kHz
        let input = to_pcm(&sine(1000.0, 24000.0, 16384.0, n, 0));
        let mut down = Downsampler::new().unwrap();
        let mut regular = Vec::new();
        for chunk in input.chunks(480) {
            down.process(chunk, &mut regular);
        }
        let mut down2 = Downsampler::new().unwrap();
        let irregular = feed_irregular(&input, |i, o| down2.process(i, o));
        assert_eq!(regular.len(), n / 3);
        assert_eq!(irregular, regular);

        let want = sine(1000.0, 8000.0, 16384.0, regular.len(), 80);
        let skip = 80 + 160;
        let snr = snr_db(&regular[skip..], &want[skip..]);
        eprintln!("24k->8k 1 kHz SNR: {snr:.1} dB");
        assert!(snr > 40.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn telephone_band_edge_survives_round_trip() {
        let n = 12_000;
        let input = to_pcm(&sine(3400.0, 8000.0, 16384.0, n, 0));
        let mut up = Upsampler::new().unwrap();
        let mut down = Downsampler::new().unwrap();
        let mut mid = Vec::new();
        let mut out = Vec::new();
        for chunk in input.chunks(160) {
            mid.clear();
            up.process(chunk, &mut mid);
            down.process(&mid, &mut out);
        }
        assert_eq!(out.len(), n);
        // Total delay 20 ms = 160 samples at 8 kHz; skip it plus a chunk of settling.
        let skip = 160 + 160;
        let gain_db =
            20.0 * (rms(out[skip..].iter().map(|&s| s as f64)) / rms(input[skip..].iter().map(|&s| s as f64))).log10();
        let want = sine(3400.0, 8000.0, 16384.0, n, 160);
        let snr = snr_db(&out[skip..], &want[skip..]);
        eprintln!("3.4 kHz round trip gain: {gain_db:.3} dB, SNR {snr:.1} dB");
        assert!(gain_db.abs() < 1.0, "gain {gain_db:.3} dB");
    }

    /// Attenuation in dB of a `freq` tone at 24 kHz through the downsampler (steady state).
    fn downsampled_attenuation_db(freq: f64) -> f64 {
        let input = to_pcm(&sine(freq, 24000.0, 16384.0, 36_000, 0));
        let mut down = Downsampler::new().unwrap();
        let mut out = Vec::new();
        down.process(&input, &mut out);
        let skip = 80 + 160;
        let in_rms = rms(input.iter().map(|&s| s as f64));
        let out_rms = rms(out[skip..].iter().map(|&s| s as f64));
        // The FFT resampler is a brick wall: measured, every tone from 4 kHz up comes out as
        // exact zeros (3.8 kHz: -29 dB, 3.9 kHz: -65 dB). An all-zero output counts as the
        // quantisation floor of half an LSB (87 dB below this input) instead of infinity.
        20.0 * (in_rms / out_rms.max(0.5)).log10()
    }

    #[test]
    fn downsampler_rejects_content_above_4khz() {
        let atten = downsampled_attenuation_db(6000.0);
        eprintln!("6 kHz rejection: {atten:.1} dB");
        assert!(atten > 40.0, "6 kHz attenuation {atten:.1} dB");
        // Other tones, including ones that do not fall on an FFT bin, are rejected as well.
        for freq in [4700.0, 5130.0, 6789.0, 9321.0, 11_111.0] {
            let atten = downsampled_attenuation_db(freq);
            eprintln!("{freq} Hz rejection: {atten:.1} dB");
            assert!(atten > 40.0, "{freq} Hz attenuation {atten:.1} dB");
        }
    }

    #[test]
    fn flush_emits_every_owed_sample_then_starts_fresh() {
        let mut down = Downsampler::new().unwrap();
        let input = to_pcm(&sine(1000.0, 24000.0, 16384.0, 1000, 0));
        let mut out = Vec::new();
        down.process(&input, &mut out);
        assert_eq!(out.len(), 320); // two whole chunks; 40 samples wait in the FIFO
        assert_eq!(down.buffered(), 40);
        down.flush(&mut out);
        // 1000 input samples = 333.3 output samples, rounded up, plus the 80-sample delay.
        assert_eq!(out.len(), 334 + 80);
        assert_eq!(down.buffered(), 0);
        // The delayed tail carries the sine: its last 10 ms are not silent.
        assert!(out[334..].iter().any(|&s| s.abs() > 1000));

        // A second flush owes nothing.
        let len = out.len();
        down.flush(&mut out);
        assert_eq!(out.len(), len);

        // After the flush the state is as new: same output as a fresh converter.
        let mut fresh = Downsampler::new().unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        down.process(&input, &mut a);
        fresh.process(&input, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn clamps_full_scale_overshoot_and_never_grows_fifo() {
        // A full-scale square wave makes the FFT ring beyond i16 range; it must clamp, not wrap.
        let input: Vec<i16> = (0..8000).map(|i| if (i / 20) % 2 == 0 { i16::MAX } else { i16::MIN }).collect();
        let mut up = Upsampler::new().unwrap();
        let mut out = Vec::with_capacity(24_000);
        for chunk in input.chunks(37) {
            up.process(chunk, &mut out);
            assert_eq!(up.inner.fifo.capacity(), 160);
        }
        assert_eq!(out.len(), 24_000);
        // Wrap-around would show up as a jump between neighbours of nearly 65536.
        let max_step = out.windows(2).map(|w| (w[1] as i32 - w[0] as i32).abs()).max().unwrap();
        assert!(max_step < 40_000, "max step {max_step}");
        assert!(out.contains(&i16::MAX) || out.contains(&i16::MIN));
    }
}
