//! G.711 mu-law codec (ITU-T G.711, the encoding of Twilio Media Streams).
//!
//! Decoding is a 256-entry table lookup built at compile time from the reference algorithm
//! (protocols.md B.2), so the table cannot drift from the algorithm it documents. Encoding
//! follows the reference algorithm (B.3/B.4) but finds the segment with `leading_zeros`
//! instead of a loop, because it runs on every outbound sample in `audio/pcm` mode.

/// Bias added to the magnitude before segment search (G.711).
const BIAS: i32 = 0x84;
/// Largest magnitude that is encoded without clipping; `CLIP + BIAS == i16::MAX`.
const CLIP: i32 = 32635;

/// The reference decoder (protocols.md B.2), `const` so it can build [`DECODE_TABLE`].
const fn decode_reference(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    // Magnitude is at most ((15 << 3) + 132) << 7 - 132 = 32124, so it fits an i16.
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

const fn build_decode_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = decode_reference(i as u8);
        i += 1;
    }
    table
}

/// Linear value of every mu-law byte, indexed by the byte as it appears on the wire.
pub const DECODE_TABLE: [i16; 256] = build_decode_table();

/// Decodes one mu-law byte to a 16-bit linear sample (range −32124..=32124).
#[inline]
pub fn decode(byte: u8) -> i16 {
    DECODE_TABLE[byte as usize]
}

/// Encodes one 16-bit linear sample to mu-law, bit-identical to the reference algorithm.
///
/// Magnitudes above 32635 clip to the largest code, and `i16::MIN` is handled (the
/// magnitude is computed in `i32`).
#[inline]
pub fn encode(sample: i16) -> u8 {
    let s = sample as i32;
    let sign: u8 = if s < 0 { 0x80 } else { 0x00 };
    let mag = s.abs().min(CLIP) + BIAS; // 132..=32767
    // Segment = index of the highest set bit among bits 14..7, i.e. floor(log2(mag >> 7)),
    // with 0 when none of those bits is set. `| 1` makes the 0 case come out as 0.
    let exponent = 31 - ((mag >> 7) | 1).leading_zeros();
    let mantissa = ((mag >> (exponent + 3)) & 0x0F) as u8;
    !(sign | ((exponent as u8) << 4) | mantissa)
}

/// Decodes `src` into `dst`, replacing its contents (the buffer is reused across frames so
/// the hot path does not allocate once it has grown to frame size).
pub fn decode_into(src: &[u8], dst: &mut Vec<i16>) {
    dst.clear();
    dst.extend(src.iter().map(|&b| DECODE_TABLE[b as usize]));
}

/// Encodes `src` and appends the bytes to `dst` (appends, so several chunks can be
/// accumulated into one outbound buffer).
pub fn encode_into(src: &[i16], dst: &mut Vec<u8>) {
    dst.extend(src.iter().map(|&s| encode(s)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop-based reference encoder verbatim from protocols.md B.4.
    fn encode_reference(sample: i16) -> u8 {
        let mut s = sample as i32;
        let sign: u8 = if s < 0 { 0x80 } else { 0x00 };
        if s < 0 {
            s = -s;
        }
        if s > CLIP {
            s = CLIP;
        }
        s += BIAS;
        let mut exponent: i32 = 7;
        let mut mask: i32 = 0x4000;
        while exponent > 0 && (s & mask) == 0 {
            exponent -= 1;
            mask >>= 1;
        }
        let mantissa = ((s >> (exponent + 3)) & 0x0F) as u8;
        !(sign | ((exponent as u8) << 4) | mantissa)
    }

    #[test]
    fn decode_vectors_b5() {
        let cases: [(u8, i16); 12] = [
            (0x00, -32124),
            (0x01, -31100),
            (0x0F, -16764),
            (0x10, -15996),
            (0x7E, -8),
            (0x7F, 0),
            (0x80, 32124),
            (0x8F, 16764),
            (0x90, 15996),
            (0xF0, 120),
            (0xFE, 8),
            (0xFF, 0),
        ];
        for (byte, value) in cases {
            assert_eq!(decode(byte), value, "decode({byte:#04x})");
        }
    }

    #[test]
    fn encode_vectors_b5() {
        let cases: [(i16, u8, i16); 25] = [
            (0, 0xFF, 0),
            (1, 0xFF, 0),
            (2, 0xFF, 0),
            (3, 0xFF, 0),
            (-1, 0x7F, 0),
            (-2, 0x7F, 0),
            (4, 0xFE, 8),
            (7, 0xFE, 8),
            (8, 0xFE, 8),
            (-4, 0x7E, -8),
            (100, 0xF2, 104),
            (-100, 0x72, -104),
            (1000, 0xCE, 988),
            (-1000, 0x4E, -988),
            (4000, 0xAF, 4092),
            (-4000, 0x2F, -4092),
            (8159, 0x9F, 8316),
            (16000, 0x90, 15996),
            (-16000, 0x10, -15996),
            (32124, 0x80, 32124),
            (32635, 0x80, 32124),
            (32767, 0x80, 32124),
            (-32124, 0x00, -32124),
            (-32768, 0x00, -32124),
            (-31611, 0x01, -31100),
        ];
        for (sample, byte, decoded) in cases {
            assert_eq!(encode(sample), byte, "encode({sample})");
            assert_eq!(decode(byte), decoded, "decode(encode({sample}))");
        }
    }

    #[test]
    fn encode_matches_reference_for_every_input() {
        for s in i16::MIN..=i16::MAX {
            assert_eq!(encode(s), encode_reference(s), "sample {s}");
        }
    }

    #[test]
    fn round_trip_every_byte() {
        for b in 0..=255u8 {
            let expected = if b == 0x7F { 0xFF } else { b };
            assert_eq!(encode(decode(b)), expected, "byte {b:#04x}");
        }
    }

    #[test]
    fn encode_error_is_within_one_quantisation_step() {
        // Step size of segment e is 8 << e; the error after a round trip is at most one step
        // (half a step plus the asymmetric bias handling at segment edges), and clipping
        // beyond ±32124 is expected.
        for s in i16::MIN..=i16::MAX {
            let d = decode(encode(s)) as i32;
            let clipped = (s as i32).clamp(-32124, 32124);
            let step = 8i32 << ((!encode(s) >> 4) & 0x07);
            assert!((d - clipped).abs() <= step, "sample {s} -> {d}, step {step}");
        }
    }

    #[test]
    fn decode_table_rows() {
        let rows: [(usize, [i16; 16]); 5] = [
            (
                0x00,
                [
                    -32124, -31100, -30076, -29052, -28028, -27004, -25980, -24956, -23932, -22908, -21884, -20860,
                    -19836, -18812, -17788, -16764,
                ],
            ),
            (
                0x30,
                [
                    -3900, -3772, -3644, -3516, -3388, -3260, -3132, -3004, -2876, -2748, -2620, -2492, -2364, -2236,
                    -2108, -1980,
                ],
            ),
            (0x70, [-120, -112, -104, -96, -88, -80, -72, -64, -56, -48, -40, -32, -24, -16, -8, 0]),
            (0xA0, [7932, 7676, 7420, 7164, 6908, 6652, 6396, 6140, 5884, 5628, 5372, 5116, 4860, 4604, 4348, 4092]),
            (0xD0, [876, 844, 812, 780, 748, 716, 684, 652, 620, 588, 556, 524, 492, 460, 428, 396]),
        ];
        for (start, row) in rows {
            assert_eq!(DECODE_TABLE[start..start + 16], row, "row {start:#04x}");
        }
        // Symmetry: byte b and b ^ 0x80 decode to opposite values.
        for b in 0..128usize {
            assert_eq!(DECODE_TABLE[b], -DECODE_TABLE[b | 0x80]);
        }
    }

    #[test]
    fn into_helpers_clear_and_append() {
        let mut pcm = vec![1, 2, 3];
        decode_into(&[0x00, 0x7F, 0x80, 0xFF], &mut pcm);
        assert_eq!(pcm, [-32124, 0, 32124, 0]);
        let mut bytes = vec![0xAB];
        encode_into(&pcm, &mut bytes);
        assert_eq!(bytes, [0xAB, 0x00, 0xFF, 0x80, 0xFF]);
        decode_into(&[], &mut pcm);
        assert!(pcm.is_empty());
    }
}
