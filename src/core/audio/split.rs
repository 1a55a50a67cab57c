//! Cutting a long meeting recording into uploads the transcription API accepts.
//!
//! OpenAI's `/audio/transcriptions` takes at most 25 MB per request. A recording over the limit
//! is decoded to 16 kHz mono (see `media::decode_mono_16k`), cut here into ranges that each fit,
//! and every range is sent as its own 16-bit WAV ([`wav_16k_mono`]). The transcripts are later
//! stitched back with each range's start as the time offset.
//!
//! A cut through a word loses it in both chunks, so [`split_on_silence`] looks for the longest
//! quiet stretch shortly before the limit (the last 20 %, or the last 8 s if that is more) and
//! cuts in its middle. Only when that zone has no pause at all (continuous speech or noise)
//! does it cut exactly at the limit.
//!
//! Pure: works on samples in memory; no I/O, no clock.

use std::ops::Range;

/// The sample rate of every chunk sent for transcription.
pub const CHUNK_RATE: u32 = 16_000;

/// Size of the canonical RIFF/WAVE header written by [`wav_16k_mono`].
pub const WAV_HEADER_LEN: usize = 44;

/// Length of the RMS window that judges how quiet a point is: long enough to average over a
/// few pitch periods (so the zero crossings of a voiced sound do not look like silence), short
/// enough to fit in the gap between two words.
const WINDOW_MS: u32 = 25;

/// Fraction of the limit, counted back from it, in which a cut is searched.
const SEARCH_FRACTION: usize = 5; // the last 1/5 = 20 %

/// The search zone is at least this long (but at most half the limit), so that short limits
/// still see a gap between sentences: a spoken sentence lasts a few seconds, and within one
/// only stop consonants (< 150 ms) go quiet. With the 25 MB limit (13 min) 20 % dominates.
const MIN_SEARCH_SECS: usize = 8;

/// How far past either end of the search zone a quiet run is followed to measure its length
/// (the cut itself stays in the zone): a sentence gap straddling the zone's edge must still
/// beat a stop consonant inside it.
const RUN_LOOKAROUND_SECS: usize = 2;

/// A window counts as a pause if its RMS is at most this fraction of the chunk's RMS: −6 dB
/// below the average level. Against steady noise or a tone no window is, and the cut falls at
/// the limit.
const PAUSE_MAX_RELATIVE_RMS: f64 = 0.5;

/// Splits `samples` (mono, `rate` Hz) into contiguous ranges, each at most `max_chunk_samples`
/// long, which together cover `0..samples.len()` in order. An empty input gives no ranges.
///
/// Each cut (except where the remaining audio already fits) lies in the search zone before the
/// limit (the last 20 %, at least [`MIN_SEARCH_SECS`] unless that is over half the limit), in
/// the middle of the longest run of windows ([`WINDOW_MS`]) whose RMS is close to the quietest
/// one there (a run reaching past the zone's edge counts in full, and the cut goes to its
/// middle or, if that is outside the zone, the zone's nearest edge); ties go to the later run,
/// so chunks stay as long as possible. If even the quietest window is not clearly below the
/// chunk's average level, there is no pause to find and the cut is at the limit.
/// Deterministic: the same input always gives the same cuts.
///
/// `max_chunk_samples` of 0 is treated as 1 (every chunk must hold at least one sample to make
/// progress).
pub fn split_on_silence(samples: &[i16], rate: u32, max_chunk_samples: usize) -> Vec<Range<usize>> {
    let max = max_chunk_samples.max(1);
    let len = samples.len();
    let mut ranges = Vec::with_capacity(len.div_ceil(max));
    if len == 0 {
        return ranges;
    }
    // Prefix sums of squares make every window's energy O(1). u64 cannot overflow: each term is
    // at most 2^30, so it holds 2^34 samples, about 12 days at 16 kHz.
    let mut energy = Vec::with_capacity(len + 1);
    energy.push(0u64);
    let mut acc = 0u64;
    for &s in samples {
        acc += (i64::from(s) * i64::from(s)) as u64;
        energy.push(acc);
    }
    let window = ((rate as usize * WINDOW_MS as usize) / 1000).max(1);

    let mut start = 0;
    while len - start > max {
        let cut = find_cut(&energy, start, max, window, rate as usize);
        debug_assert!(cut > start && cut <= start + max);
        ranges.push(start..cut);
        start = cut;
    }
    ranges.push(start..len);
    ranges
}

/// RMS of `samples[from..to]` (clamped to the input) from the prefix sums.
fn rms(energy: &[u64], from: usize, to: usize) -> f64 {
    let to = to.min(energy.len() - 1);
    if to <= from {
        return 0.0;
    }
    ((energy[to] - energy[from]) as f64 / (to - from) as f64).sqrt()
}

/// RMS of the window centred on sample boundary `c`.
fn window_rms(energy: &[u64], c: usize, window: usize) -> f64 {
    let from = c.saturating_sub(window / 2);
    rms(energy, from, from + window)
}

/// Length of the search zone before a limit of `max` samples.
fn search_zone(max: usize, rate: usize) -> usize {
    (max / SEARCH_FRACTION).max((MIN_SEARCH_SECS * rate).min(max / 2)).max(1)
}

/// Where to end the chunk that starts at `start` and may be at most `max` long (the audio
/// continues past `start + max`). `energy` holds the prefix sums of squares.
fn find_cut(energy: &[u64], start: usize, max: usize, window: usize, rate: usize) -> usize {
    let len = energy.len() - 1;
    let limit = start + max;
    let lo = (limit - search_zone(max, rate)).max(start + 1);
    let around = RUN_LOOKAROUND_SECS * rate;
    let (scan_lo, scan_hi) = (lo.saturating_sub(around).max(start + 1), (limit + around).min(len));

    let score = |c: usize| window_rms(energy, c, window);
    let quietest = (lo..=limit).map(score).fold(f64::INFINITY, f64::min);
    let chunk_rms = rms(energy, start, limit);
    if quietest > chunk_rms * PAUSE_MAX_RELATIVE_RMS {
        return limit;
    }
    // Everything within ~6 dB of the quietest window (or 4 LSB of it, for digital silence where
    // the quietest is 0) belongs to a pause; capped at the pause threshold so a loud stretch
    // never joins one.
    let threshold = (quietest * 2.0).max(quietest + 4.0).min(chunk_rms * PAUSE_MAX_RELATIVE_RMS);

    // Longest quiet run that reaches into the zone; `>=` hands ties to the later run.
    let mut best: Option<(usize, usize)> = None; // (first, last) candidate of the run
    let mut run_start = None;
    for c in scan_lo..=scan_hi {
        if score(c) <= threshold {
            let rs = *run_start.get_or_insert(c);
            let in_zone = c >= lo && rs <= limit;
            if in_zone && best.is_none_or(|(bs, be)| c - rs >= be - bs) {
                best = Some((rs, c));
            }
        } else {
            run_start = None;
        }
    }
    // The quietest window of the zone is under the threshold, so a run exists; the fallback
    // only keeps this total.
    let Some((first, last)) = best else { return limit };
    (first + (last - first) / 2).clamp(lo, limit)
}

/// Bytes per second of 16-bit mono PCM at `rate`.
pub fn wav_bytes_per_second(rate: u32) -> u64 {
    u64::from(rate) * 2
}

/// The most samples one 16-bit mono WAV ([`wav_16k_mono`]) can hold without exceeding
/// `max_bytes` including its header: the `max_chunk_samples` for [`split_on_silence`] under an
/// upload limit (25 MB for OpenAI transcriptions: 13 min 6 s at 16 kHz). 0 if even the header
/// does not fit.
pub fn max_samples_for_bytes(max_bytes: u64) -> usize {
    let samples = max_bytes.saturating_sub(WAV_HEADER_LEN as u64) / 2;
    usize::try_from(samples).unwrap_or(usize::MAX)
}

/// Milliseconds from the start of the recording to sample `index` at `rate`: a chunk's offset
/// for stitching its transcript back.
pub fn samples_to_ms(index: usize, rate: u32) -> u64 {
    if rate == 0 {
        return 0;
    }
    (index as u64).saturating_mul(1000) / u64::from(rate)
}

/// `samples` as a complete RIFF/WAVE file: PCM, 16-bit little-endian, mono, 16 kHz, with the
/// canonical 44-byte header. This is the format every chunk is uploaded in.
///
/// WAV sizes are 32-bit; a chunk is at most 25 MB, far below that, and longer input saturates
/// the size fields rather than wrapping.
pub fn wav_16k_mono(samples: &[i16]) -> Vec<u8> {
    wav_mono(samples, CHUNK_RATE)
}

/// [`wav_16k_mono`] at any rate (tests use it to build inputs at other rates).
pub fn wav_mono(samples: &[i16], rate: u32) -> Vec<u8> {
    let data_len = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX - 36);
    let mut out = Vec::with_capacity(WAV_HEADER_LEN + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // channels
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&rate.saturating_mul(2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for &s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 16_000;

    /// Deterministic pseudo-random noise in -amp..=amp (a 32-bit LCG).
    fn noise(n: usize, amp: i32, seed: u32) -> Vec<i16> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (((x >> 16) as i32 % (2 * amp + 1)) - amp) as i16
            })
            .collect()
    }

    /// Speech-like audio: bursts of voiced sound (a 150 Hz buzz with harmonics, amplitude-
    /// modulated at syllable rate, plus noise) separated by pauses of low background hiss.
    /// Returns the samples and the pauses as ranges.
    fn speechlike(bursts_s: &[f64], pause_s: f64) -> (Vec<i16>, Vec<Range<usize>>) {
        let mut out = Vec::new();
        let mut pauses = Vec::new();
        for (k, &b) in bursts_s.iter().enumerate() {
            let n = (b * RATE as f64) as usize;
            let hiss = noise(n, 1500, k as u32 + 7);
            for (i, h) in hiss.iter().enumerate() {
                let t = i as f64 / RATE as f64;
                let syllable = 0.55 + 0.45 * (2.0 * std::f64::consts::PI * 4.0 * t).sin().abs();
                let buzz: f64 =
                    (1..=5).map(|h| (2.0 * std::f64::consts::PI * 150.0 * h as f64 * t).sin() / h as f64).sum();
                out.push((syllable * (9000.0 * buzz) + *h as f64) as i16);
            }
            let p = (pause_s * RATE as f64) as usize;
            pauses.push(out.len()..out.len() + p);
            out.extend(noise(p, 40, k as u32 + 100));
        }
        (out, pauses)
    }

    fn assert_covers(ranges: &[Range<usize>], len: usize, max: usize) {
        let mut next = 0;
        for r in ranges {
            assert_eq!(r.start, next, "ranges must be contiguous: {ranges:?}");
            assert!(r.end > r.start, "empty range in {ranges:?}");
            assert!(r.len() <= max, "range {r:?} longer than {max}");
            next = r.end;
        }
        assert_eq!(next, len, "ranges must end at the input's end");
    }

    #[test]
    fn cuts_land_in_the_pauses_between_bursts() {
        // Bursts of 1.1–1.8 s with 0.6 s pauses, ~60 s in all; 15 s chunks, so the 3 s search
        // zone before each limit always holds a whole pause.
        let bursts: Vec<f64> = (0..25).map(|k| 1.1 + 0.1 * ((k * 7) % 8) as f64).collect();
        let (samples, pauses) = speechlike(&bursts, 0.6);
        let max = 15 * RATE as usize;
        let ranges = split_on_silence(&samples, RATE, max);
        assert_covers(&ranges, samples.len(), max);
        // Each chunk but the last is 7.5–15 s long (the zone is 8 s capped at half the limit).
        let n = ranges.len();
        assert_eq!(search_zone(max, RATE as usize), max / 2);
        assert!(n >= samples.len().div_ceil(max) && n <= samples.len().div_ceil(max / 2), "{ranges:?}");
        for r in &ranges[..ranges.len() - 1] {
            let cut = r.end;
            let pause = pauses.iter().find(|p| p.contains(&cut));
            let pause = pause.unwrap_or_else(|| panic!("cut at {cut} is not in a pause: {pauses:?}"));
            // Not at a pause's edge: at least one RMS window of silence on either side.
            let margin = (RATE as usize * WINDOW_MS as usize) / 1000;
            assert!(cut >= pause.start + margin && cut + margin <= pause.end, "cut {cut} at the edge of {pause:?}");
            // Within the search zone.
            assert!(r.len() >= max - search_zone(max, RATE as usize), "chunk {r:?} cut too early");
        }
    }

    #[test]
    fn digital_silence_cut_goes_mid_pause() {
        // Exact zeros in the pause: every window there ties at RMS 0; the cut must be in the
        // middle of the pause, not at the first or last zero window.
        let mut samples = noise(9 * RATE as usize, 8000, 1);
        samples.extend(std::iter::repeat_n(0, RATE as usize)); // 9..10 s
        samples.extend(noise(5 * RATE as usize, 8000, 2));
        // 11 s chunks: the search zone 8.8..11 s holds the whole pause.
        let ranges = split_on_silence(&samples, RATE, 11 * RATE as usize);
        assert_eq!(ranges.len(), 2);
        let cut = ranges[0].end as i64;
        let centre = 95 * RATE as i64 / 10;
        assert!((cut - centre).abs() < 200, "cut at {cut}, pause centre {centre}");
    }

    #[test]
    fn a_sentence_gap_at_the_zone_edge_beats_a_stop_consonant_inside() {
        // 20 s limit, zone 12..20 s. A 1 s gap at 11.5..12.5 s (half outside the zone) and a
        // 100 ms "closure" at 17 s (all inside): the gap is the longer pause, so the cut goes
        // to its in-zone part, not into the word around the closure.
        let r = RATE as usize;
        let mut samples = noise(40 * r, 8000, 4);
        samples[23 * r / 2..25 * r / 2].fill(0);
        samples[17 * r..17 * r + r / 10].fill(0);
        let ranges = split_on_silence(&samples, RATE, 20 * r);
        let cut = ranges[0].end;
        assert!((12 * r..25 * r / 2).contains(&cut), "cut at {cut}, expected in the gap's in-zone part");
    }

    #[test]
    fn without_any_pause_the_cut_is_at_the_limit() {
        // Continuous loud noise: no window is 6 dB under the average.
        let samples = noise(35 * RATE as usize, 12_000, 3);
        let max = 10 * RATE as usize;
        let ranges = split_on_silence(&samples, RATE, max);
        assert_eq!(ranges, vec![0..max, max..2 * max, 2 * max..3 * max, 3 * max..samples.len()]);

        // A steady tone, likewise.
        let tone: Vec<i16> = (0..25 * RATE as usize).map(|i| (10_000.0 * (i as f64 * 0.157).sin()) as i16).collect();
        let ranges = split_on_silence(&tone, RATE, max);
        assert_eq!(ranges, vec![0..max, max..2 * max, 2 * max..tone.len()]);
    }

    #[test]
    fn empty_short_and_exact_inputs() {
        assert!(split_on_silence(&[], RATE, 100).is_empty());
        assert_eq!(split_on_silence(&[5; 10], RATE, 100), vec![0..10]);
        assert_eq!(split_on_silence(&[5; 100], RATE, 100), vec![0..100]);
        // One sample over: two chunks, both within the limit.
        let r = split_on_silence(&[5; 101], RATE, 100);
        assert_covers(&r, 101, 100);
        assert_eq!(r.len(), 2);
        // A limit of 0 behaves as 1.
        assert_eq!(split_on_silence(&[1, 2, 3], RATE, 0), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn coverage_and_determinism_over_many_limits() {
        let (samples, _) = speechlike(&[1.3, 0.7, 2.2, 0.4, 1.9, 1.1], 0.3);
        for max in [1, 7, 160, 399, 400, 4_000, 12_345, 30_000, samples.len() - 1, samples.len()] {
            let a = split_on_silence(&samples, RATE, max);
            assert_covers(&a, samples.len(), max);
            assert_eq!(a, split_on_silence(&samples, RATE, max), "not deterministic for {max}");
        }
    }

    #[test]
    fn wav_header_parses_back() {
        let samples: Vec<i16> = vec![0, 1, -1, i16::MAX, i16::MIN, 1234];
        let wav = wav_16k_mono(&samples);
        assert_eq!(wav.len(), WAV_HEADER_LEN + samples.len() * 2);
        let u32_at = |o: usize| u32::from_le_bytes([wav[o], wav[o + 1], wav[o + 2], wav[o + 3]]);
        let u16_at = |o: usize| u16::from_le_bytes([wav[o], wav[o + 1]]);
        assert_eq!(&wav[0..4], b"RIFF");
        assert_eq!(u32_at(4) as usize, wav.len() - 8);
        assert_eq!(&wav[8..12], b"WAVE");
        assert_eq!(&wav[12..16], b"fmt ");
        assert_eq!(u32_at(16), 16);
        assert_eq!(u16_at(20), 1, "PCM");
        assert_eq!(u16_at(22), 1, "mono");
        assert_eq!(u32_at(24), 16_000, "sample rate");
        assert_eq!(u32_at(28), 32_000, "byte rate");
        assert_eq!(u16_at(32), 2, "block align");
        assert_eq!(u16_at(34), 16, "bits per sample");
        assert_eq!(&wav[36..40], b"data");
        assert_eq!(u32_at(40) as usize, samples.len() * 2);
        let back: Vec<i16> = wav[44..].chunks(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
        assert_eq!(back, samples);

        // Other rates only change the rate fields.
        let w8 = wav_mono(&samples, 8000);
        assert_eq!(&w8[24..28], &8000u32.to_le_bytes());
        assert_eq!(&w8[28..32], &16_000u32.to_le_bytes());
        assert_eq!(w8[44..], wav[44..]);
    }

    #[test]
    fn byte_limit_to_samples() {
        assert_eq!(wav_bytes_per_second(16_000), 32_000);
        let max = max_samples_for_bytes(25 * 1024 * 1024);
        assert_eq!(wav_16k_mono(&vec![0; max]).len() as u64, 25 * 1024 * 1024);
        assert_eq!(max / 16_000, 819, "about 13.6 min per 25 MiB chunk");
        assert!(wav_16k_mono(&vec![0; max + 1]).len() as u64 > 25 * 1024 * 1024);
        assert_eq!(max_samples_for_bytes(44), 0);
        assert_eq!(max_samples_for_bytes(0), 0);
        assert_eq!(samples_to_ms(16_000 * 90 + 8, 16_000), 90_000);
        assert_eq!(samples_to_ms(24, 16_000), 1);
    }
}
