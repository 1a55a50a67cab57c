//! Meeting recordings on disk: is this upload real audio, and its samples at 16 kHz mono.
//!
//! Adapter over symphonia 0.6 (containers and decoders, pure Rust) and rubato (resampling).
//! [`probe`] proves an upload is decodable audio before it is accepted; [`decode_mono_16k`]
//! turns a recording over the transcription upload limit into samples that
//! [`crate::core::audio::split`] cuts into chunks.
//!
//! # Formats
//!
//! | upload | container | codec | [`probe`] | [`decode_mono_16k`] |
//! |---|---|---|---|---|
//! | .wav | RIFF/WAVE | PCM (8–32 bit int, float), A-law, mu-law | decodes | yes |
//! | .flac | FLAC | FLAC | decodes | yes |
//! | .mp3 | MPEG audio | MP3 | decodes | yes |
//! | .m4a / .mp4 | ISO MP4 | AAC-LC | decodes | yes |
//! | .ogg / .oga | Ogg | Vorbis | decodes | yes |
//! | .ogg / .opus | Ogg | Opus | container and packets only | no: [`MediaError::Unsupported`] |
//! | .webm / .mkv | Matroska/WebM | Vorbis, AAC, FLAC, MP3, PCM | decodes | yes |
//! | .webm / .mkv | Matroska/WebM | Opus | container and packets only | no: [`MediaError::Unsupported`] |
//!
//! **Opus.** symphonia 0.6 has no Opus decoder (its readers recognise Opus tracks, but no
//! codec is registered for them), and the daemon links no C codec. Browsers record WebM/Opus
//! and phones Ogg/Opus, and OpenAI's transcription endpoint accepts both files as they are
//! (its list of extensions has `ogg` and `webm`, not `opus`: an Ogg/Opus upload must be sent
//! with an `.ogg` file name). So [`probe`] accepts an Opus track when the container parses and
//! its packets can be read (`decodable: false` in [`AudioInfo`]): such an upload is sent
//! unchanged when it is under the upload limit. It cannot be split locally, so over the limit
//! the caller must refuse it (asking for another format) rather than send it;
//! [`decode_mono_16k`] says so with [`MediaError::Unsupported`]. Only the container is
//! verified for Opus: garbage inside intact Ogg pages or WebM blocks is not detected here (the
//! API will reject it). Tracks in other codecs without a decoder here (ADPCM WAV, ALAC, AC-3,
//! …) are refused as `Unsupported` by both functions.
//!
//! **Encoder delay.** symphonia trims the priming samples of Vorbis, and of MP3 only when a
//! LAME/Xing header states them; measured on the fixtures, MP3 without that header and AAC in
//! MP4 come out 60–70 ms late (and that much longer). Transcript offsets inherit that shift,
//! which is below a word's length.
//!
//! # Cost
//!
//! Both functions are blocking CPU and file work: callers run them in
//! `tokio::task::spawn_blocking`, never on the async runtime. [`decode_mono_16k`] streams the
//! file through the demuxer and decoder (the compressed file is never held in memory) and
//! keeps only the 16 kHz mono output: 32 000 bytes per second, 115 MB per hour, bounded by its
//! `max_duration` argument.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};
use symphonia::core::codecs::audio::well_known::CODEC_ID_OPUS;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, Track, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use crate::core::audio::split::CHUNK_RATE;

/// What [`probe`] found out about a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioInfo {
    /// symphonia's short name of the container: "wave", "flac", "ogg", "isomp4", "matroska",
    /// "mp3", …
    pub container: String,
    /// Short name of the audio codec: "pcm_s16le", "flac", "vorbis", "aac", "mp3", "opus", …
    pub codec: String,
    pub sample_rate: Option<u32>,
    pub channels: Option<u16>,
    /// From the container's header when it states one (most do; a live-recorded WebM may not).
    pub duration_ms: Option<u64>,
    /// Whether this daemon can decode it, i.e. [`decode_mono_16k`] works on it. `false` only
    /// for accepted codecs without a decoder (Opus, see the module docs).
    pub decodable: bool,
}

/// Why a recording was refused.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Unknown format, no audio track, or corrupt or truncated data.
    #[error("not a readable audio recording: {0}")]
    NotAudio(String),
    /// Audio in a codec this daemon cannot decode (Opus in [`decode_mono_16k`]; anything
    /// without a symphonia decoder elsewhere).
    #[error("audio codec {codec} cannot be decoded here")]
    Unsupported { codec: String },
    /// Longer than the caller's `max_duration`: `duration_ms` is the stated duration, or as
    /// much as was decoded before giving up (a lower bound).
    #[error("recording is at least {duration_ms} ms long, over the limit of {max_ms} ms")]
    TooLong { duration_ms: u64, max_ms: u64 },
    /// The file could not be read (missing, permissions, disk error).
    #[error("reading the recording: {0}")]
    Io(#[from] std::io::Error),
    /// rubato refused the conversion (a bug here, not a property of the file).
    #[error("resampling to 16 kHz: {0}")]
    Resample(String),
}

/// [`probe_with_hint`] with the file name's extension as the only hint.
pub fn probe(path: &Path) -> Result<AudioInfo, MediaError> {
    probe_with_hint(path, None)
}

/// Packets of the audio track [`probe_with_hint`] reads (and, if it can, decodes) before
/// trusting the file. Enough to get past any header and into the encoded audio, so a real
/// header followed by garbage fails (about 0.4–2 s of audio, depending on the codec).
const PROBE_PACKETS: usize = 20;

/// Checks that the file at `path` is audio this daemon accepts: opens the container (format
/// guessed from the content, hinted by the extension and by `mime`, e.g. an upload's
/// Content-Type), takes its default audio track and decodes its first [`PROBE_PACKETS`]
/// packets. Opus tracks, which have no decoder here, are accepted when the container yields
/// their packets (`decodable: false`).
///
/// Uncompressed PCM has no structure to check: any bytes after a valid WAV header are valid
/// samples. Corrupt WAV files are caught where their chunk structure breaks.
pub fn probe_with_hint(path: &Path, mime: Option<&str>) -> Result<AudioInfo, MediaError> {
    let mut opened = Opened::open(path, mime)?;
    let mut info = opened.info();

    let Some(mut decoder) = opened.decoder()? else {
        opened.check_packets_without_decoder()?;
        return Ok(info);
    };
    let mut good = 0;
    let mut bad = 0;
    while good < PROBE_PACKETS {
        let Some(packet) = opened.next_packet(good > 0)? else { break };
        match decoder.decode(&packet) {
            Ok(buf) => {
                if buf.frames() > 0 {
                    good += 1;
                    // Some containers only learn the layout from the first decoded packet.
                    info.sample_rate.get_or_insert(buf.spec().rate());
                    info.channels.get_or_insert(buf.spec().channels().count() as u16);
                }
            }
            Err(SymphoniaError::DecodeError(e)) => {
                bad += 1;
                // A real encoder's first packets decode; one bad one is tolerated (a cut-off
                // first frame), more means the data after the header is not audio.
                if bad > 1 {
                    return Err(MediaError::NotAudio(format!("audio data does not decode: {e}")));
                }
            }
            Err(e) => return Err(classify(e, "decoding")),
        }
    }
    if good == 0 {
        return Err(MediaError::NotAudio("no audio could be decoded".into()));
    }
    Ok(info)
}

/// Decodes the whole recording, downmixes it to mono, resamples it to 16 kHz and returns it as
/// 16-bit samples: the input of [`crate::core::audio::split::split_on_silence`].
///
/// Refuses recordings longer than `max_duration` with [`MediaError::TooLong`]: up front when
/// the container states a duration, otherwise as soon as the output passes it, so a lying
/// header cannot make it allocate more than `max_duration` of output (115 MB per hour).
/// Occasional corrupt packets are skipped, as players do (the transcript loses a few
/// milliseconds); a stream where more than one packet in ten is corrupt is refused as
/// [`MediaError::NotAudio`]. A stream truncated mid-packet yields the audio before the cut.
///
/// Blocking and CPU-heavy (the whole file is decoded, and resampled unless it is already at
/// 16 kHz): run it in `spawn_blocking`.
pub fn decode_mono_16k(path: &Path, mime: Option<&str>, max_duration: Duration) -> Result<Vec<i16>, MediaError> {
    let max_ms = u64::try_from(max_duration.as_millis()).unwrap_or(u64::MAX);
    let max_samples = usize::try_from(max_ms.saturating_mul(u64::from(CHUNK_RATE)) / 1000).unwrap_or(usize::MAX);

    let mut opened = Opened::open(path, mime)?;
    let info = opened.info();
    if let Some(duration_ms) = info.duration_ms
        && duration_ms > max_ms
    {
        return Err(MediaError::TooLong { duration_ms, max_ms });
    }
    let Some(mut decoder) = opened.decoder()? else {
        return Err(MediaError::Unsupported { codec: info.codec });
    };

    // Reserve the stated duration (plus the resampler's rounding) so the output grows once.
    let expected = info.duration_ms.map_or(0, |ms| ms.saturating_mul(u64::from(CHUNK_RATE)) / 1000 + 16);
    let mut out: Vec<i16> = Vec::with_capacity(usize::try_from(expected).unwrap_or(0).min(max_samples));

    let mut resampler: Option<(u32, ToMono16k)> = None;
    let mut interleaved: Vec<f32> = Vec::new();
    let mut mono: Vec<f32> = Vec::new();
    let (mut good, mut bad) = (0u64, 0u64);

    while let Some(packet) = opened.next_packet(good > 0)? {
        let buf = match decoder.decode(&packet) {
            Ok(buf) => buf,
            Err(SymphoniaError::DecodeError(e)) => {
                bad += 1;
                if bad > 3 && bad * 10 > good + bad {
                    return Err(MediaError::NotAudio(format!("{bad} of {} packets do not decode: {e}", good + bad)));
                }
                continue;
            }
            Err(e) => return Err(classify(e, "decoding")),
        };
        if buf.frames() == 0 {
            continue;
        }
        good += 1;
        let rate = buf.spec().rate();
        let channels = buf.spec().channels().count().max(1);
        buf.copy_to_vec_interleaved(&mut interleaved);
        mono.clear();
        mono.extend(interleaved.chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() / channels as f32));

        let (first_rate, conv) = match &mut resampler {
            Some(r) => r,
            None => resampler.insert((rate, ToMono16k::new(rate)?)),
        };
        if *first_rate != rate {
            return Err(MediaError::NotAudio(format!("sample rate changes mid-stream ({first_rate} -> {rate} Hz)")));
        }
        conv.push(&mono, &mut out)?;
        if out.len() > max_samples {
            return Err(MediaError::TooLong { duration_ms: out.len() as u64 * 1000 / u64::from(CHUNK_RATE), max_ms });
        }
    }
    let Some((_, conv)) = resampler else {
        return Err(MediaError::NotAudio("no audio could be decoded".into()));
    };
    conv.finish(&mut out)?;
    // The resampler's tail can carry the total over the limit only after the last packet.
    if out.len() > max_samples {
        return Err(MediaError::TooLong { duration_ms: out.len() as u64 * 1000 / u64::from(CHUNK_RATE), max_ms });
    }
    Ok(out)
}

/// A probed container with its chosen audio track.
struct Opened {
    format: Box<dyn FormatReader>,
    track: Track,
    params: AudioCodecParameters,
}

impl Opened {
    fn open(path: &Path, mime: Option<&str>) -> Result<Self, MediaError> {
        let file = File::open(path)?;
        // The stream reads the file through a small ring buffer: it is never loaded whole.
        let mss = MediaSourceStream::new(Box::new(file), Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        if let Some(mime) = mime {
            hint.mime_type(mime);
        }
        let format = symphonia::default::get_probe()
            .probe(&hint, mss, FormatOptions::default(), MetadataOptions::default())
            .map_err(|e| classify(e, "reading the container"))?;
        let track = format
            .default_track(TrackType::Audio)
            .ok_or_else(|| MediaError::NotAudio("no audio track".into()))?
            .clone();
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or_else(|| MediaError::NotAudio("the audio track has no codec parameters".into()))?
            .clone();
        Ok(Self { format, track, params })
    }

    fn info(&self) -> AudioInfo {
        let p = &self.params;
        let sample_rate = p.sample_rate.filter(|&r| r > 0);
        let duration_ms = self
            .track
            .time_base
            .zip(self.track.duration)
            .and_then(|(tb, d)| tb.calc_duration(d))
            .and_then(|t| u64::try_from(t.as_millis()).ok())
            .or_else(|| Some(self.track.num_frames? * 1000 / u64::from(sample_rate?)));
        AudioInfo {
            container: self.format.format_info().short_name.to_owned(),
            codec: codec_name(p),
            sample_rate,
            channels: p.channels.as_ref().map(|c| c.count() as u16).filter(|&c| c > 0),
            duration_ms,
            decodable: symphonia::default::get_codecs().get_audio_decoder(p.codec).is_some(),
        }
    }

    /// The decoder for the track; `None` for Opus (accepted, not decodable here); an error for
    /// any other codec without a decoder.
    fn decoder(&self) -> Result<Option<Box<dyn AudioDecoder>>, MediaError> {
        let codecs = symphonia::default::get_codecs();
        if codecs.get_audio_decoder(self.params.codec).is_none() {
            if self.params.codec == CODEC_ID_OPUS {
                return Ok(None);
            }
            return Err(MediaError::Unsupported { codec: codec_name(&self.params) });
        }
        codecs
            .make_audio_decoder(&self.params, &AudioDecoderOptions::default())
            .map(Some)
            .map_err(|e| classify(e, "opening the decoder"))
    }

    /// The next packet of the chosen track; `None` at the end. `tolerate_truncation`: a file
    /// cut off mid-packet ends there instead of failing (once audio has been seen).
    fn next_packet(
        &mut self,
        tolerate_truncation: bool,
    ) -> Result<Option<symphonia::core::packet::Packet>, MediaError> {
        loop {
            match self.format.next_packet() {
                Ok(Some(p)) if p.track_id == self.track.id => return Ok(Some(p)),
                Ok(Some(_)) => continue, // another track (video, a second language)
                Ok(None) => return Ok(None),
                Err(SymphoniaError::IoError(e))
                    if tolerate_truncation && e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    return Ok(None);
                }
                Err(SymphoniaError::ResetRequired) => {
                    // A chained Ogg stream or a track list change: the track and decoder chosen
                    // would be stale. Real meeting recordings are one stream.
                    return Err(MediaError::NotAudio("the stream changes its tracks mid-file".into()));
                }
                Err(e) => return Err(classify(e, "reading packets")),
            }
        }
    }

    /// For a track without a decoder: the container must still deliver its first packets,
    /// which proves at least the container (pages, CRCs, block structure) is intact.
    fn check_packets_without_decoder(&mut self) -> Result<(), MediaError> {
        let mut packets = 0;
        while packets < PROBE_PACKETS {
            match self.next_packet(packets > 0)? {
                Some(p) if p.data.is_empty() => {
                    return Err(MediaError::NotAudio("empty audio packet".into()));
                }
                Some(_) => packets += 1,
                None => break,
            }
        }
        if packets == 0 {
            return Err(MediaError::NotAudio("the audio track has no packets".into()));
        }
        Ok(())
    }
}

fn codec_name(params: &AudioCodecParameters) -> String {
    if params.codec == CODEC_ID_OPUS {
        return "opus".into();
    }
    match symphonia::default::get_codecs().get_audio_decoder(params.codec) {
        Some(d) => d.codec.info.short_name.to_owned(),
        None => format!("codec {}", params.codec),
    }
}

/// Sorts symphonia's errors: a failure to read the file is I/O, everything about its content
/// (unknown format, malformed or truncated data, unsupported feature) means "not audio".
/// symphonia also reports malformed content as `IoError` (an end of file where a header said
/// there was more, "unexpected end of bitstream" from a codec's bit reader); only errors that
/// came from the operating system (they carry an OS error code) are really I/O.
fn classify(e: SymphoniaError, doing: &str) -> MediaError {
    match e {
        SymphoniaError::IoError(io) if io.raw_os_error().is_some() => MediaError::Io(io),
        SymphoniaError::IoError(io) => {
            MediaError::NotAudio(format!("{doing}: the data ends early or is malformed ({io})"))
        }
        other => MediaError::NotAudio(format!("{doing}: {other}")),
    }
}

/// Input chunk of the resampler, in input frames. Latency is irrelevant offline, so it is
/// large: one FFT block per chunk (`sub_chunks = 1`) keeps the anti-alias cutoff close to
/// 8 kHz and the per-call overhead low.
const RESAMPLE_CHUNK: usize = 4096;

/// Streaming mono conversion from any rate to 16 kHz.
enum ToMono16k {
    /// Already 16 kHz: samples only need rounding to i16.
    Passthrough,
    Fft(Box<FftStream>),
}

struct FftStream {
    fft: Fft<f32>,
    rate_in: u32,
    /// Input not yet resampled; shorter than a chunk between calls.
    fifo: Vec<f32>,
    out_buf: Vec<f32>,
    /// Output frames still to drop: the resampler's delay, leading zeros that are not audio.
    to_trim: usize,
    frames_in: u64,
    frames_out: u64,
}

/// f32 in -1.0..1.0 to i16, rounding and clamping: lossy codecs and the resampler's ringing
/// overshoot full scale, which must saturate rather than wrap.
fn to_i16(x: f32) -> i16 {
    (x * 32768.0).round().clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

impl ToMono16k {
    fn new(rate_in: u32) -> Result<Self, MediaError> {
        if rate_in == CHUNK_RATE {
            return Ok(Self::Passthrough);
        }
        // Fft handles any rate pair: its block sizes are multiples of rate / gcd(rates), e.g.
        // 441 -> 160 for 44.1 kHz; a coprime rate just makes one large block.
        let fft = Fft::<f32>::new_custom(
            rate_in as usize,
            CHUNK_RATE as usize,
            RESAMPLE_CHUNK,
            1,
            1,
            WindowFunction::BlackmanHarris2,
            FixedSync::Input,
        )
        .map_err(|e| MediaError::Resample(e.to_string()))?;
        let to_trim = fft.output_delay();
        let out_buf = vec![0.0; fft.output_frames_max()];
        Ok(Self::Fft(Box::new(FftStream {
            fft,
            rate_in,
            fifo: Vec::with_capacity(RESAMPLE_CHUNK),
            out_buf,
            to_trim,
            frames_in: 0,
            frames_out: 0,
        })))
    }

    fn push(&mut self, mut mono: &[f32], out: &mut Vec<i16>) -> Result<(), MediaError> {
        let s = match self {
            Self::Passthrough => {
                out.extend(mono.iter().map(|&x| to_i16(x)));
                return Ok(());
            }
            Self::Fft(s) => s,
        };
        s.frames_in += mono.len() as u64;
        while !mono.is_empty() {
            let take = (RESAMPLE_CHUNK - s.fifo.len()).min(mono.len());
            s.fifo.extend_from_slice(&mono[..take]);
            mono = &mono[take..];
            if s.fifo.len() == RESAMPLE_CHUNK {
                s.run_chunk(out)?;
            }
        }
        Ok(())
    }

    /// Flushes the FIFO and the resampler's delay line: the output ends up exactly
    /// `ceil(frames_in * 16000 / rate_in)` long, the last input sample included.
    fn finish(self, out: &mut Vec<i16>) -> Result<(), MediaError> {
        let Self::Fft(mut s) = self else { return Ok(()) };
        let owed = (s.frames_in * u64::from(CHUNK_RATE)).div_ceil(u64::from(s.rate_in));
        // Each zero-padded chunk yields ~RESAMPLE_CHUNK * ratio frames (or 0 while a block
        // larger than a chunk fills); the delay line is one block. The bound only stops a
        // resampler that never outputs from spinning forever.
        let mut rounds = 0;
        while s.frames_out < owed {
            rounds += 1;
            if rounds > 64 + (s.fft.fft_size_in() / RESAMPLE_CHUNK) * 4 {
                return Err(MediaError::Resample(format!("flush stalled at {} of {owed} frames", s.frames_out)));
            }
            s.fifo.resize(RESAMPLE_CHUNK, 0.0);
            s.run_chunk(out)?;
        }
        let extra = usize::try_from(s.frames_out - owed).unwrap_or(usize::MAX);
        out.truncate(out.len().saturating_sub(extra));
        Ok(())
    }
}

impl FftStream {
    /// Resamples the full FIFO, appends the output after the delay trim, empties the FIFO.
    fn run_chunk(&mut self, out: &mut Vec<i16>) -> Result<(), MediaError> {
        let err = |e: &dyn std::fmt::Display| MediaError::Resample(e.to_string());
        let input = InterleavedSlice::new(&self.fifo[..], 1, RESAMPLE_CHUNK).map_err(|e| err(&e))?;
        let cap = self.out_buf.len();
        let mut output = InterleavedSlice::new_mut(&mut self.out_buf[..], 1, cap).map_err(|e| err(&e))?;
        let (_, produced) = self.fft.process_into_buffer(&input, &mut output, None).map_err(|e| err(&e))?;
        self.fifo.clear();
        let skip = self.to_trim.min(produced);
        self.to_trim -= skip;
        out.extend(self.out_buf[skip..produced].iter().map(|&x| to_i16(x)));
        self.frames_out += (produced - skip) as u64;
        Ok(())
    }
}

/// The extension to give a recording: its own when it has a known one, else from its type.
pub fn file_extension(name: &str, mime: &str) -> &'static str {
    const KNOWN: [&str; 10] = ["wav", "mp3", "m4a", "mp4", "aac", "ogg", "oga", "opus", "flac", "webm"];
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    KNOWN.iter().find(|k| **k == ext).copied().unwrap_or_else(|| extension_for(mime))
}

/// The usual extension of an audio media type (`bin` when unknown).
pub fn extension_for(media_type: &str) -> &'static str {
    match media_type {
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "wav",
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/mp4" | "audio/m4a" | "audio/x-m4a" | "audio/aac" | "video/mp4" => "m4a",
        "audio/ogg" | "audio/opus" | "application/ogg" => "ogg",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/webm" | "video/webm" => "webm",
        _ => "bin",
    }
}

/// Deletes a spool file however its owner ends (an upload handler, a job).
pub struct RemoveOnDrop(pub std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::audio::split::{split_on_silence, wav_mono};
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/meeting").join(name)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// The master recording's length, from its WAV header (44-byte canonical header, s16 mono).
    fn master_samples() -> usize {
        (std::fs::metadata(fixture("two_voices.wav")).unwrap().len() as usize - 44) / 2
    }

    fn rms(x: &[i16]) -> f64 {
        if x.is_empty() {
            return 0.0;
        }
        (x.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// Normalised cross-correlation at lag 0.
    fn correlation(a: &[i16], b: &[i16]) -> f64 {
        let n = a.len().min(b.len());
        let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
        for i in 0..n {
            let (x, y) = (f64::from(a[i]), f64::from(b[i]));
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        ab / (aa * bb).sqrt()
    }

    fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("switchboard-media-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn probes_every_decodable_format_with_its_duration() {
        let want_ms = master_samples() as f64 / 16.0;
        for (file, container, codec) in [
            ("two_voices.wav", "wave", "pcm_s16le"),
            ("two_voices.flac", "flac", "flac"),
            ("two_voices.ogg", "ogg", "vorbis"),
            ("two_voices.mp3", "mp3", "mp3"),
            ("two_voices.m4a", "isomp4", "aac"),
        ] {
            let info = probe(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            eprintln!("{file}: {info:?}");
            assert!(info.decodable, "{file}");
            assert_eq!(info.container, container, "{file}");
            assert_eq!(info.codec, codec, "{file}");
            assert_eq!(info.sample_rate, Some(16_000), "{file}");
            assert_eq!(info.channels, Some(1), "{file}");
            let ms = info.duration_ms.unwrap_or_else(|| panic!("{file}: no duration")) as f64;
            assert!((ms - want_ms).abs() < want_ms * 0.05, "{file}: {ms} ms, want {want_ms}");
        }
    }

    #[test]
    fn opus_is_recognised_but_not_decodable() {
        for (file, container) in [("two_voices.opus", "ogg"), ("two_voices.webm", "matroska")] {
            let info = probe(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            eprintln!("{file}: {info:?}");
            assert_eq!(info.codec, "opus", "{file}");
            assert_eq!(info.container, container, "{file}");
            assert!(!info.decodable, "{file}");
            let err = decode_mono_16k(&fixture(file), None, HOUR).unwrap_err();
            assert!(matches!(&err, MediaError::Unsupported { codec } if codec == "opus"), "{file}: {err:?}");
        }
        // The same bytes under another name: detection is by content, and the MIME type of an
        // upload is a hint, not a requirement.
        let bytes = std::fs::read(fixture("two_voices.opus")).unwrap();
        let renamed = write_temp("recording.bin", &bytes);
        assert_eq!(probe_with_hint(&renamed, Some("audio/ogg")).unwrap().codec, "opus");
    }

    #[test]
    fn corrupt_and_fake_files_are_not_audio() {
        for file in ["corrupt.wav", "fake.mp3"] {
            let err = probe(&fixture(file)).unwrap_err();
            eprintln!("{file}: {err}");
            assert!(matches!(err, MediaError::NotAudio(_)), "{file}: {err:?}");
            let err = decode_mono_16k(&fixture(file), None, HOUR).unwrap_err();
            assert!(matches!(err, MediaError::NotAudio(_)), "{file}: {err:?}");
        }
        let empty = write_temp("empty.wav", b"");
        assert!(matches!(probe(&empty), Err(MediaError::NotAudio(_))));
    }

    #[test]
    fn a_missing_file_is_io_not_audio() {
        let err = probe(&fixture("no_such_file.wav")).unwrap_err();
        assert!(matches!(&err, MediaError::Io(e) if e.kind() == std::io::ErrorKind::NotFound), "{err:?}");
    }

    /// Garbage in place of the encoded audio, after an intact header: in each compressed
    /// fixture, the bytes after the header are replaced by deterministic pseudo-random bytes.
    #[test]
    fn valid_header_then_garbage_is_not_audio() {
        // Offsets read from the fixtures: FLAC's metadata blocks end at 172 (STREAMINFO,
        // SEEKTABLE, VORBIS_COMMENT); Ogg/Vorbis' identification, comment and setup headers
        // fill the first two pages (3452 bytes); the MP3 (no ID3 tag, no Xing frame) keeps its
        // first two 216-byte frames; the M4A's mdat payload spans 44..140310, before the moov
        // atom that describes it, which stays intact.
        for (file, garbage) in [
            ("two_voices.flac", 172..usize::MAX),
            ("two_voices.ogg", 3452..usize::MAX),
            ("two_voices.mp3", 432..usize::MAX),
            ("two_voices.m4a", 44..140_310),
        ] {
            let mut bytes = std::fs::read(fixture(file)).unwrap();
            let end = garbage.end.min(bytes.len());
            let mut x = 0x1234_5678u32;
            for b in &mut bytes[garbage.start..end] {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (x >> 24) as u8;
            }
            let path = write_temp(&format!("garbage_{file}"), &bytes);
            let res = probe(&path);
            eprintln!("{file} with garbage in {garbage:?}: {res:?}");
            assert!(matches!(res, Err(MediaError::NotAudio(_))), "{file}: {res:?}");
        }
    }

    #[test]
    fn flac_decodes_to_the_same_samples_as_the_wav() {
        let n = master_samples();
        let wav = decode_mono_16k(&fixture("two_voices.wav"), None, HOUR).unwrap();
        let flac = decode_mono_16k(&fixture("two_voices.flac"), None, HOUR).unwrap();
        assert_eq!(wav.len(), n);
        assert!((flac.len() as f64 - n as f64).abs() <= n as f64 * 0.01, "{} vs {n}", flac.len());
        let c = correlation(&wav, &flac);
        assert!(c > 0.99, "correlation {c}");
        // FLAC is lossless: in fact identical.
        assert_eq!(flac, wav);
    }

    #[test]
    fn lossy_formats_decode_to_the_right_length_and_shape() {
        let n = master_samples();
        let wav = decode_mono_16k(&fixture("two_voices.wav"), None, HOUR).unwrap();
        for file in ["two_voices.ogg", "two_voices.mp3", "two_voices.m4a"] {
            let pcm = decode_mono_16k(&fixture(file), None, HOUR).unwrap_or_else(|e| panic!("{file}: {e}"));
            let diff = (pcm.len() as f64 - n as f64).abs();
            // Lossy codecs pad to whole frames; the containers' gapless info removes most of it.
            assert!(diff <= n as f64 * 0.01, "{file}: {} samples vs {n}", pcm.len());
            // Encoder delay shifts the waveform (an MP3 without a LAME/Xing header carries no
            // gapless info, so its ~1100-sample delay stays): compare 10 ms RMS envelopes at
            // the best lag within ±200 ms.
            let env = |x: &[i16]| x.chunks(160).map(rms).collect::<Vec<_>>();
            let (a, b) = (env(&wav), env(&pcm));
            let corr_at = |lag: usize| {
                let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
                for (x, y) in a.iter().zip(&b[lag..]) {
                    ab += x * y;
                    aa += x * x;
                    bb += y * y;
                }
                ab / (aa * bb).sqrt()
            };
            let (lag, c) =
                (0..20).map(|l| (l, corr_at(l))).fold((0, 0.0), |best, x| if x.1 > best.1 { x } else { best });
            eprintln!("{file}: {} samples, envelope correlation {c:.4} at a lag of {} ms", pcm.len(), lag * 10);
            assert!(c > 0.95, "{file}: envelope correlation {c}");
        }
    }

    /// A sine at `freq` Hz, `secs` long, at `rate`, as a WAV file with `channels` channels
    /// (stereo: the same tone on the left, silence on the right, to check the downmix).
    fn sine_wav(name: &str, rate: u32, channels: u16, freq: f64, secs: f64) -> PathBuf {
        let n = (rate as f64 * secs) as usize;
        let tone: Vec<i16> = (0..n)
            .map(|i| (16_000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as i16)
            .collect();
        let bytes = if channels == 1 {
            wav_mono(&tone, rate)
        } else {
            // Reuse the mono writer's header and patch the stereo fields.
            let stereo: Vec<i16> = tone.iter().flat_map(|&s| [s, 0]).collect();
            let mut b = wav_mono(&stereo, rate);
            b[22..24].copy_from_slice(&2u16.to_le_bytes());
            b[24..28].copy_from_slice(&rate.to_le_bytes());
            b[28..32].copy_from_slice(&(rate * 4).to_le_bytes());
            b[32..34].copy_from_slice(&4u16.to_le_bytes());
            b
        };
        write_temp(name, &bytes)
    }

    #[test]
    fn any_rate_comes_out_at_16k_with_the_right_length() {
        for (rate, channels) in [(8_000, 1), (11_025, 1), (22_050, 1), (44_100, 2), (48_000, 1), (32_001, 1)] {
            let secs = 2.5;
            let path = sine_wav(&format!("sine_{rate}_{channels}.wav"), rate, channels, 440.0, secs);
            let info = probe(&path).unwrap();
            assert_eq!((info.sample_rate, info.channels), (Some(rate), Some(channels)));
            let out = decode_mono_16k(&path, None, HOUR).unwrap();
            let n_in = (rate as f64 * secs) as u64;
            assert_eq!(out.len() as u64, (n_in * 16_000).div_ceil(u64::from(rate)), "{rate} Hz");

            // The tone survives: compare with an ideal 16 kHz sine after the edges. Stereo with
            // one silent channel downmixes to half amplitude.
            let amp = 16_000.0 / f64::from(channels);
            let want: Vec<i16> = (0..out.len())
                .map(|i| (amp * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 16_000.0).sin()) as i16)
                .collect();
            let mid = 1600..out.len() - 1600;
            let c = correlation(&out[mid.clone()], &want[mid.clone()]);
            let gain = rms(&out[mid.clone()]) / rms(&want[mid]);
            eprintln!("{rate} Hz x{channels}: {} samples, correlation {c:.5}, gain {gain:.4}", out.len());
            assert!(c > 0.999, "{rate} Hz: correlation {c}");
            assert!((gain - 1.0).abs() < 0.01, "{rate} Hz: gain {gain}");
            // The last input sample made it out: the tail is tone, not flushed silence.
            assert!(rms(&out[out.len() - 160..]) > amp * 0.5, "{rate} Hz: tail lost");
        }
    }

    #[test]
    fn too_long_is_refused() {
        let err = decode_mono_16k(&fixture("two_voices.flac"), None, Duration::from_secs(10)).unwrap_err();
        assert!(matches!(err, MediaError::TooLong { max_ms: 10_000, duration_ms } if duration_ms > 20_000), "{err:?}");
        // A header that states no duration: caught while decoding. A WAV whose data size is
        // "unknown" (0xFFFFFFFF, what streaming recorders write) has none.
        let mut bytes = std::fs::read(fixture("two_voices.wav")).unwrap();
        bytes[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let path = write_temp("unknown_length.wav", &bytes);
        let info = probe(&path).unwrap();
        eprintln!("unknown length: {info:?}");
        let err = decode_mono_16k(&path, None, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, MediaError::TooLong { max_ms: 5_000, .. }), "{err:?}");
        // Under the limit it decodes.
        assert_eq!(decode_mono_16k(&path, None, HOUR).unwrap().len(), master_samples());
    }

    #[test]
    fn long_speech_splits_in_its_pauses() {
        let samples = decode_mono_16k(&fixture("long_speech.flac"), Some("audio/flac"), HOUR).unwrap();
        let secs = samples.len() as f64 / 16_000.0;
        assert!((55.0..70.0).contains(&secs), "{secs} s");
        let max = 20 * 16_000;
        let ranges = split_on_silence(&samples, 16_000, max);
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert_eq!(ranges.last().map(|r| r.end), Some(samples.len()));
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        assert!(ranges.iter().all(|r| r.len() <= max));
        assert!(ranges.len() >= 4, "{} chunks for {secs} s", ranges.len());

        // Average level of speech: RMS over 20 ms windows that are clearly not silent.
        let speech: Vec<f64> = samples.chunks(320).map(rms).filter(|&r| r > 300.0).collect();
        let speech_rms = speech.iter().sum::<f64>() / speech.len() as f64;
        for r in &ranges[..ranges.len() - 1] {
            let cut = r.end;
            // 100 ms either side of the cut.
            let around = rms(&samples[cut - 1600..cut + 1600]);
            eprintln!("cut at {:.2} s: RMS around {around:.1}, speech {speech_rms:.0}", cut as f64 / 16_000.0);
            assert!(around < speech_rms * 0.01, "cut at {cut} is not in a pause: {around} vs {speech_rms}");
        }
    }
}
