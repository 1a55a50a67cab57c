//! Adapter: reads and validates `tenants.toml` (and the prompt files it names) into a
//! [`TenantDirectory`]. Every problem in the file is collected and reported at once, so an
//! operator fixes them in one go and a bad reload never replaces a good directory.
//!
//! ```toml
//! [[tenants]]
//! id = "trattoria-mario"
//! name = "Trattoria da Mario"
//! numbers = ["+39021111111"]
//! language = "it"
//! voice = "marin"
//! prompt_file = "prompts/trattoria-mario.md"   # relative to this file's directory
//! greeting = "Trattoria da Mario, buongiorno! Come posso aiutarla?"
//! summary_to = ["mario@example.com"]
//! api_keys_sha256 = ["<64 hex>"]
//! audio_format = "pcmu"      # optional: "pcmu" (default) or "pcm24k"
//! fallback = false           # optional: answers numbers no tenant lists (at most one)
//! idle_prompt_ms = 10000      # optional: silence before "are you still there?"; 0 = off
//! timezone = "Europe/Rome"    # optional (default UTC): times in emails and summaries are local
//! tools = ["end_call", "business_info"]   # optional (default: every built-in the tenant can use)
//! transfer_number = "+39021111199"  # optional: shorthand for one transfer target named "staff"
//! [tenants.turn_detection]   # optional: threshold, prefix_padding_ms, silence_duration_ms
//! [tenants.barge_in]         # optional: enabled, min_speech_ms, vad_mode, playback_lead_ms
//! [tenants.business]         # optional: address, hours, highlights, notes (business_info)
//!
//! [[tenants.transfer]]       # optional, instead of transfer_number: named targets, first = default
//! name = "kitchen"           # lowercase letters, digits, `_`, `-`; unique
//! number = "+39021111198"    # E.164; not one of the tenant's own numbers
//!
//! [tenants.booking]          # optional: enables take_booking
//! min_party = 1              # default 1
//! max_party = 12             # required, >= min_party
//! last_booking_minutes = 30  # default 30: last booking this long before a service closes
//! max_days_ahead = 60        # default 60
//! [tenants.booking.hours]    # required: per day (mon..sun) a list of "HH:MM-HH:MM"; missing = closed
//! tue = ["12:00-14:30", "19:00-22:30"]
//! fri = ["19:00-01:00"]      # a close earlier than the open runs past midnight
//!
//! [tenants.dtmf]             # optional: key (0-9, *, #) -> "transfer", "transfer:<name>", "end_call"
//! "0" = "transfer"
//!
//! [[tenants.webhook_tools]]  # optional: tools answered by an HTTP POST to the business's server
//! name = "check_loyalty"     # ^[a-z][a-z0-9_]{0,63}$, not a built-in tool's name, unique
//! description = "Loyalty points of a customer, by phone number"
//! parameters = { type = "object", properties = { phone = { type = "string" } }, required = ["phone"] }
//! url = "https://crm.example.com/hooks/loyalty"  # https; http only to 127.0.0.1/localhost
//! secret = "at least 16 characters"  # or secret_env = "CRM_SECRET" (read from the environment)
//! timeout_ms = 5000          # default 5000, 100..=30000
//! side_effects = false       # default false: true if the call changes something
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::domain::tenant::{
    AudioFormat, BargeIn, BookingRules, BuiltinTool, BusinessInfo, DAY_MINUTES, DEFAULT_IDLE_PROMPT_MS, DtmfAction,
    Tenant, TenantDirectory, TransferTarget, TurnDetection, WebhookTool, WeeklyHours, hhmm, normalize_e164,
};

/// Voices the Realtime API accepts.
pub const VOICES: &[&str] = &["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"];

#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{}", invalid_message(path, problems))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

fn invalid_message(path: &Path, problems: &[String]) -> String {
    let mut s = format!(
        "{} is invalid ({} problem{}):",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push_str("\n  - ");
        s.push_str(p);
    }
    s
}

// ---- file format -------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenants: Vec<RawTenant>,
}

/// Required fields are `Option`s so that a missing one is reported alongside every other
/// problem instead of aborting the parse.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: Option<String>,
    name: Option<String>,
    numbers: Option<Vec<String>>,
    language: Option<String>,
    voice: Option<String>,
    prompt_file: Option<String>,
    greeting: Option<String>,
    summary_to: Option<Vec<String>>,
    api_keys_sha256: Option<Vec<String>>,
    #[serde(default)]
    audio_format: AudioFormat,
    #[serde(default)]
    fallback: bool,
    turn_detection: Option<RawTurnDetection>,
    barge_in: Option<RawBargeIn>,
    idle_prompt_ms: Option<i64>,
    /// IANA zone, e.g. "Europe/Rome" (default "UTC").
    timezone: Option<String>,
    /// Built-in tools the agent may use (default: all).
    tools: Option<Vec<String>>,
    business: Option<RawBusiness>,
    /// Shorthand for one transfer target named [`DEFAULT_TRANSFER_NAME`].
    transfer_number: Option<String>,
    /// Named transfer targets; the first is the default.
    transfer: Option<Vec<RawTransfer>>,
    booking: Option<RawBooking>,
    /// Key -> action; a map so that bad keys are reported as problems, not parse errors.
    dtmf: Option<BTreeMap<String, String>>,
    #[serde(default)]
    webhook_tools: Vec<RawWebhookTool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransfer {
    name: Option<String>,
    number: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBooking {
    min_party: Option<i64>,
    max_party: Option<i64>,
    last_booking_minutes: Option<i64>,
    max_days_ahead: Option<i64>,
    /// Day name -> ranges; a map so that a misspelt day is reported with the other problems.
    hours: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhookTool {
    name: Option<String>,
    description: Option<String>,
    parameters: Option<serde_json::Value>,
    url: Option<String>,
    secret: Option<String>,
    secret_env: Option<String>,
    timeout_ms: Option<i64>,
    #[serde(default)]
    side_effects: bool,
}

impl std::fmt::Debug for RawWebhookTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawWebhookTool")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_env", &self.secret_env)
            .finish_non_exhaustive()
    }
}

/// The name `transfer_number` gives its target.
pub const DEFAULT_TRANSFER_NAME: &str = "staff";
/// Shortest webhook secret accepted.
pub const MIN_WEBHOOK_SECRET_CHARS: usize = 16;
/// Day keys of `[tenants.booking.hours]`, index 0 = Monday.
const DAY_KEYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBusiness {
    address: Option<String>,
    hours: Option<String>,
    highlights: Option<String>,
    notes: Option<String>,
}

/// Integers are read as `i64` so out-of-range values (negative ones too) become readable
/// validation problems rather than parse errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTurnDetection {
    threshold: Option<f64>,
    prefix_padding_ms: Option<i64>,
    silence_duration_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBargeIn {
    enabled: Option<bool>,
    min_speech_ms: Option<i64>,
    vad_mode: Option<i64>,
    playback_lead_ms: Option<i64>,
}

// ---- loading -----------------------------------------------------------------------------

/// Reads `path`, validates every tenant and resolves each `prompt_file` relative to the
/// directory of `path`.
pub fn load(path: &Path) -> Result<TenantDirectory, TenantsError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| TenantsError::Read { path: path.to_path_buf(), source })?;
    let file: TenantsFile =
        toml::from_str(&text).map_err(|source| TenantsError::Parse { path: path.to_path_buf(), source })?;
    let base = path.parent().unwrap_or_else(|| Path::new(""));
    let tenants = build(file, |p| read_prompt(base, p), |k| std::env::var(k).ok())
        .map_err(|problems| TenantsError::Invalid { path: path.to_path_buf(), problems })?;
    Ok(TenantDirectory::new(tenants))
}

/// The prompt text, or a description of why it cannot be used.
fn read_prompt(base: &Path, prompt_file: &str) -> Result<String, String> {
    let resolved = base.join(prompt_file);
    let bytes = std::fs::read(&resolved).map_err(|e| format!("cannot read prompt file {}: {e}", resolved.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| format!("prompt file {} is not UTF-8: {e}", resolved.display()))?;
    if text.trim().is_empty() {
        return Err(format!("prompt file {} is empty", resolved.display()));
    }
    Ok(text)
}

/// Validates all tenants; on any problem returns every problem found. `env` looks up the
/// environment variables named by `secret_env`.
fn build(
    file: TenantsFile,
    mut read_prompt: impl FnMut(&str) -> Result<String, String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Tenant>, Vec<String>> {
    let mut problems = Vec::new();
    if file.tenants.is_empty() {
        problems.push("no tenants: add at least one [[tenants]] table".to_owned());
    }
    let mut tenants = Vec::with_capacity(file.tenants.len());
    for (i, raw) in file.tenants.into_iter().enumerate() {
        let label = match raw.id.as_deref() {
            Some(id) if !id.is_empty() => format!("tenant #{} ({id})", i + 1),
            _ => format!("tenant #{}", i + 1),
        };
        let mut local = Vec::new();
        let tenant = check_tenant(raw, &mut read_prompt, &env, &mut local);
        problems.extend(local.into_iter().map(|p| format!("{label}: {p}")));
        tenants.push(tenant);
    }
    check_across(&tenants, &mut problems);
    if problems.is_empty() { Ok(tenants) } else { Err(problems) }
}

/// Checks one tenant and builds it with whatever is usable, pushing problems to `problems`.
fn check_tenant(
    raw: RawTenant,
    read_prompt: &mut impl FnMut(&str) -> Result<String, String>,
    env: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Tenant {
    let id = required("id", raw.id, problems);
    if !id.is_empty() && !is_slug(&id) {
        problems.push(format!("`id` {id:?} must be lowercase letters, digits and dashes only"));
    }
    let name = required("name", raw.name, problems);
    let greeting = required("greeting", raw.greeting, problems);

    let mut numbers = Vec::new();
    match raw.numbers {
        None => problems.push("missing `numbers`".to_owned()),
        Some(list) if list.is_empty() => problems.push("`numbers` is empty".to_owned()),
        Some(list) => {
            for raw_number in list {
                match normalize_e164(&raw_number) {
                    Some(n) => numbers.push(n),
                    None => problems.push(format!(
                        "number {raw_number:?} is not a phone number (E.164 expected, e.g. +39021111111)"
                    )),
                }
            }
        }
    }

    let language = required("language", raw.language, problems);
    if !language.is_empty() && !is_language_code(&language) {
        problems.push(format!(
            "`language` {language:?} must be a 2-3 letter code, optionally with a region (it, fr, en-US)"
        ));
    }

    let voice = required("voice", raw.voice, problems);
    if !voice.is_empty() && !VOICES.contains(&voice.as_str()) {
        problems.push(format!("`voice` {voice:?} is not one of {}", VOICES.join(", ")));
    }

    let prompt_file = required("prompt_file", raw.prompt_file, problems);
    let mut instructions = String::new();
    if !prompt_file.trim().is_empty() {
        match read_prompt(&prompt_file) {
            Ok(text) => instructions = instructions_for(&text, &language),
            Err(p) => problems.push(p),
        }
    }

    let summary_to = raw.summary_to.unwrap_or_else(|| {
        problems.push("missing `summary_to` (use [] for none)".to_owned());
        Vec::new()
    });
    for addr in &summary_to {
        if !is_email(addr) {
            problems.push(format!("`summary_to` entry {addr:?} is not an email address"));
        }
    }

    let raw_keys = raw.api_keys_sha256.unwrap_or_else(|| {
        problems.push("missing `api_keys_sha256` (use [] for none)".to_owned());
        Vec::new()
    });
    let mut api_keys_sha256 = Vec::with_capacity(raw_keys.len());
    for key in raw_keys {
        if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
            api_keys_sha256.push(key.to_ascii_lowercase());
        } else {
            problems.push(format!("`api_keys_sha256` entry {key:?} is not a SHA-256 digest (64 hex characters)"));
        }
    }

    let td = raw.turn_detection.unwrap_or_default();
    let defaults = TurnDetection::default();
    let mut turn_detection = defaults.clone();
    if let Some(t) = td.threshold {
        if (0.0..=1.0).contains(&t) {
            // Precision loss is fine: the value is a VAD threshold in 0..=1.
            turn_detection.threshold = t as f32;
        } else {
            problems.push(format!("`turn_detection.threshold` must be in 0..=1 (got {t})"));
        }
    }
    turn_detection.prefix_padding_ms =
        ranged("turn_detection.prefix_padding_ms", td.prefix_padding_ms, 0, 2000, defaults.prefix_padding_ms, problems);
    turn_detection.silence_duration_ms = ranged(
        "turn_detection.silence_duration_ms",
        td.silence_duration_ms,
        100,
        3000,
        defaults.silence_duration_ms,
        problems,
    );

    let bi = raw.barge_in.unwrap_or_default();
    let defaults = BargeIn::default();
    let vad_mode = ranged("barge_in.vad_mode", bi.vad_mode, 0, 3, defaults.vad_mode.into(), problems);
    let barge_in = BargeIn {
        enabled: bi.enabled.unwrap_or(defaults.enabled),
        min_speech_ms: ranged("barge_in.min_speech_ms", bi.min_speech_ms, 40, 2000, defaults.min_speech_ms, problems),
        vad_mode: u8::try_from(vad_mode).unwrap_or(defaults.vad_mode),
        playback_lead_ms: ranged(
            "barge_in.playback_lead_ms",
            bi.playback_lead_ms,
            60,
            2000,
            defaults.playback_lead_ms,
            problems,
        ),
    };

    // 0 turns the idle prompt off; otherwise at least 3 s, so a caller has time to think.
    let timezone = match raw.timezone.as_deref().map(str::trim) {
        None | Some("") => "UTC".to_owned(),
        Some(z) => {
            if jiff::tz::TimeZone::get(z).is_err() {
                problems.push(format!("`timezone` {z:?} is not an IANA time zone (e.g. \"Europe/Rome\")"));
            }
            z.to_owned()
        }
    };
    let idle_prompt_ms = match raw.idle_prompt_ms {
        Some(0) => 0,
        v => ranged("idle_prompt_ms", v, 3000, 300_000, DEFAULT_IDLE_PROMPT_MS, problems),
    };

    let transfer = check_transfer(raw.transfer_number, raw.transfer, &numbers, problems);
    let booking = raw.booking.map(|b| check_booking(b, problems));
    let dtmf = check_dtmf(raw.dtmf.unwrap_or_default(), &transfer, problems);
    let webhook_tools = check_webhook_tools(raw.webhook_tools, env, problems);

    // Transfer and booking need their configuration: by default they are offered only with it,
    // and listing them without it is a mistake.
    let missing_config = |t: BuiltinTool| match t {
        BuiltinTool::TransferCall if transfer.is_empty() => Some("`transfer_number` or [[tenants.transfer]]"),
        BuiltinTool::TakeBooking if booking.is_none() => Some("[tenants.booking]"),
        _ => None,
    };
    let tools = match raw.tools {
        None => BuiltinTool::ALL.into_iter().filter(|&t| missing_config(t).is_none()).collect(),
        Some(names) => names
            .iter()
            .filter_map(|n| {
                let t = BuiltinTool::from_name(n);
                match t.map(|t| (t, missing_config(t))) {
                    None => {
                        let known: Vec<&str> = BuiltinTool::ALL.iter().map(|t| t.name()).collect();
                        problems.push(format!("unknown tool {n:?} (known: {})", known.join(", ")));
                    }
                    Some((_, Some(needs))) => problems.push(format!("tool {n:?} needs {needs}")),
                    Some((_, None)) => {}
                }
                t
            })
            .collect(),
    };
    let b = raw.business.unwrap_or_default();
    let clean = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let business = BusinessInfo {
        address: clean(b.address),
        hours: clean(b.hours),
        highlights: clean(b.highlights),
        notes: clean(b.notes),
    };

    Tenant {
        id,
        name,
        numbers,
        language,
        voice,
        prompt_file,
        instructions,
        greeting,
        summary_to,
        api_keys_sha256,
        audio_format: raw.audio_format,
        fallback: raw.fallback,
        turn_detection,
        barge_in,
        idle_prompt_ms,
        timezone,
        tools,
        business,
        transfer,
        booking,
        dtmf,
        webhook_tools,
    }
}

/// `transfer_number` or `[[tenants.transfer]]` (not both) as targets, numbers normalised.
fn check_transfer(
    number: Option<String>,
    list: Option<Vec<RawTransfer>>,
    own_numbers: &[String],
    problems: &mut Vec<String>,
) -> Vec<TransferTarget> {
    let (raw, shorthand) = match (number, list) {
        (Some(_), Some(_)) => {
            problems.push("use either `transfer_number` or [[tenants.transfer]], not both".to_owned());
            return Vec::new();
        }
        (Some(n), None) => (vec![RawTransfer { name: Some(DEFAULT_TRANSFER_NAME.to_owned()), number: Some(n) }], true),
        (None, Some(list)) => (list, false),
        (None, None) => return Vec::new(),
    };
    let mut targets: Vec<TransferTarget> = Vec::with_capacity(raw.len());
    for (i, RawTransfer { name, number }) in raw.into_iter().enumerate() {
        let name = name.map(|n| n.trim().to_owned()).unwrap_or_default();
        let label = match (shorthand, name.is_empty()) {
            (true, _) => "`transfer_number`".to_owned(),
            (false, true) => format!("transfer target #{}", i + 1),
            (false, false) => format!("transfer target {name:?}"),
        };
        if name.is_empty() {
            problems.push(format!("{label}: missing `name`"));
        } else if !is_target_name(&name) {
            problems.push(format!(
                "{label}: the name must be lowercase letters, digits, `_` or `-`, starting with a letter (at most 32)"
            ));
        } else if targets.iter().any(|t| t.name == name) {
            problems.push(format!("{label} is listed twice"));
        }
        let number = match number.as_deref().map(normalize_e164) {
            None => {
                problems.push(format!("{label}: missing `number`"));
                String::new()
            }
            Some(None) => {
                problems.push(format!(
                    "{label}: {:?} is not a phone number (E.164 expected, e.g. +39021111199)",
                    number.unwrap_or_default()
                ));
                String::new()
            }
            Some(Some(n)) => {
                if own_numbers.contains(&n) {
                    problems
                        .push(format!("{label}: {n} is one of this tenant's own numbers (the call would come back)"));
                }
                n
            }
        };
        targets.push(TransferTarget { name, number });
    }
    targets
}

/// `^[a-z][a-z0-9_-]{0,31}$`
fn is_target_name(s: &str) -> bool {
    let mut b = s.bytes();
    s.len() <= 32
        && b.next().is_some_and(|c| c.is_ascii_lowercase())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// `[tenants.booking]` as rules; problems for whatever is wrong (the rules are then unusable,
/// but the tenant is rejected anyway).
fn check_booking(raw: RawBooking, problems: &mut Vec<String>) -> BookingRules {
    let min_party = ranged("booking.min_party", raw.min_party, 1, 1000, 1, problems);
    let max_party = match raw.max_party {
        None => {
            problems.push("missing `booking.max_party`".to_owned());
            min_party
        }
        v => ranged("booking.max_party", v, 1, 1000, min_party, problems),
    };
    if max_party < min_party {
        problems.push(format!("`booking.max_party` ({max_party}) must be at least `booking.min_party` ({min_party})"));
    }
    let last_booking_before_close_min =
        ranged("booking.last_booking_minutes", raw.last_booking_minutes, 0, 720, 30, problems);
    let max_days_ahead = ranged("booking.max_days_ahead", raw.max_days_ahead, 0, 730, 60, problems);
    let hours = match raw.hours {
        None => {
            problems.push("missing [tenants.booking.hours] (e.g. tue = [\"12:00-14:30\", \"19:00-22:30\"])".to_owned());
            WeeklyHours::default()
        }
        Some(days) => check_hours(days, problems),
    };
    BookingRules { min_party, max_party, hours, last_booking_before_close_min, max_days_ahead }
}

/// `mon..sun` -> `"HH:MM-HH:MM"` lists as sorted services, with overlaps reported.
fn check_hours(days: BTreeMap<String, Vec<String>>, problems: &mut Vec<String>) -> WeeklyHours {
    let mut hours = WeeklyHours::default();
    for (day, ranges) in days {
        let Some(d) = DAY_KEYS.iter().position(|&k| k == day) else {
            problems.push(format!("`booking.hours` has an unknown day {day:?} (use {})", DAY_KEYS.join(", ")));
            continue;
        };
        for range in ranges {
            match parse_range(&range) {
                Ok(service) => hours.days[d].push(service),
                Err(why) => problems.push(format!("`booking.hours.{day}` entry {range:?} {why}")),
            }
        }
        hours.days[d].sort_unstable();
        for pair in hours.days[d].windows(2) {
            if pair[1].0 < pair[0].1 {
                problems.push(format!(
                    "`booking.hours.{day}`: {}-{} and {}-{} overlap",
                    hhmm(pair[0].0),
                    hhmm(pair[0].1),
                    hhmm(pair[1].0),
                    hhmm(pair[1].1)
                ));
            }
        }
    }
    // A service past midnight must end before the next day's first one starts.
    for (d, day) in DAY_KEYS.iter().enumerate() {
        let next = (d + 1) % 7;
        let spill = hours.days[d].iter().map(|&(_, c)| c).max().filter(|&c| c > DAY_MINUTES);
        if let (Some(close), Some(&(open, _))) = (spill, hours.days[next].first())
            && open < close - DAY_MINUTES
        {
            problems.push(format!(
                "`booking.hours.{day}` runs until {} and `booking.hours.{}` opens at {}: they overlap",
                hhmm(close),
                DAY_KEYS[next],
                hhmm(open)
            ));
        }
    }
    if hours.is_always_closed() {
        problems.push("`booking.hours` has no open day: no booking could ever be taken".to_owned());
    }
    hours
}

/// `"19:00-22:30"` -> `(1140, 1350)`; `"19:00-01:00"` (past midnight) -> `(1140, 1500)`;
/// `24:00` is accepted as a closing time.
fn parse_range(s: &str) -> Result<(u16, u16), &'static str> {
    const SHAPE: &str = "is not a time range HH:MM-HH:MM (24-hour clock)";
    let (open, close) = s.split_once('-').ok_or(SHAPE)?;
    let minute = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|c| c.is_ascii_digit()) {
            return None;
        }
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
    };
    let (open, close) = (minute(open).ok_or(SHAPE)?, minute(close).ok_or(SHAPE)?);
    if open >= DAY_MINUTES {
        return Err("cannot open at 24:00 (use 00:00 of the next day)");
    }
    match close.cmp(&open) {
        std::cmp::Ordering::Greater => Ok((open, close)),
        std::cmp::Ordering::Equal => Err("opens and closes at the same time"),
        // Closes after midnight.
        std::cmp::Ordering::Less => Ok((open, close + DAY_MINUTES)),
    }
}

/// `[tenants.dtmf]` in key order; transfer targets must exist.
fn check_dtmf(
    map: BTreeMap<String, String>,
    transfer: &[TransferTarget],
    problems: &mut Vec<String>,
) -> Vec<(char, DtmfAction)> {
    let mut out = Vec::with_capacity(map.len());
    for (key, action) in map {
        let mut chars = key.chars();
        let k = match (chars.next(), chars.next()) {
            (Some(c), None) if c.is_ascii_digit() || c == '*' || c == '#' => c,
            _ => {
                problems.push(format!("`dtmf` key {key:?} must be one of 0-9, * or #"));
                continue;
            }
        };
        let parsed = match action.trim() {
            "end_call" => DtmfAction::EndCall,
            "transfer" => {
                if transfer.is_empty() {
                    problems
                        .push(format!("`dtmf` {key:?} = \"transfer\" needs `transfer_number` or [[tenants.transfer]]"));
                }
                DtmfAction::Transfer(None)
            }
            a => match a.strip_prefix("transfer:") {
                Some(name) => {
                    let name = name.trim();
                    if !transfer.iter().any(|t| t.name == name) {
                        let known: Vec<&str> = transfer.iter().map(|t| t.name.as_str()).collect();
                        problems.push(format!(
                            "`dtmf` {key:?} = {action:?}: no transfer target named {name:?} (known: {})",
                            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                        ));
                    }
                    DtmfAction::Transfer(Some(name.to_owned()))
                }
                None => {
                    problems.push(format!(
                        "`dtmf` {key:?} = {action:?} is not an action (use \"transfer\", \"transfer:<name>\" or \"end_call\")"
                    ));
                    continue;
                }
            },
        };
        out.push((k, parsed));
    }
    out
}

/// `[[tenants.webhook_tools]]`, with secrets resolved from the environment where asked.
fn check_webhook_tools(
    raw: Vec<RawWebhookTool>,
    env: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Vec<WebhookTool> {
    let mut tools: Vec<WebhookTool> = Vec::with_capacity(raw.len());
    for (i, w) in raw.into_iter().enumerate() {
        let name = w.name.map(|n| n.trim().to_owned()).unwrap_or_default();
        let label = if name.is_empty() { format!("webhook tool #{}", i + 1) } else { format!("webhook tool {name:?}") };
        if name.is_empty() {
            problems.push(format!("{label}: missing `name`"));
        } else if !is_tool_name(&name) {
            problems.push(format!(
                "{label}: the name must match ^[a-z][a-z0-9_]{{0,63}}$ (lowercase letters, digits, `_`)"
            ));
        } else if BuiltinTool::from_name(&name).is_some() {
            problems.push(format!("{label}: the name is a built-in tool's"));
        } else if tools.iter().any(|t| t.name == name) {
            problems.push(format!("{label} is listed twice"));
        }

        let description = w.description.map(|d| d.trim().to_owned()).unwrap_or_default();
        if description.is_empty() {
            problems.push(format!("{label}: missing `description` (the model decides from it when to call the tool)"));
        }

        let parameters = match w.parameters {
            None => {
                problems.push(format!(
                    "{label}: missing `parameters` (a JSON schema, e.g. {{ type = \"object\", properties = {{}} }})"
                ));
                serde_json::json!({"type": "object", "properties": {}})
            }
            Some(p) => {
                if let Err(why) = check_schema(&p) {
                    problems.push(format!("{label}: `parameters` {why}"));
                }
                p
            }
        };

        let url = w.url.map(|u| u.trim().to_owned()).unwrap_or_default();
        if url.is_empty() {
            problems.push(format!("{label}: missing `url`"));
        } else if let Err(why) = check_webhook_url(&url) {
            problems.push(format!("{label}: `url` {url:?} {why}"));
        }

        let secret = match (w.secret, w.secret_env) {
            (Some(_), Some(_)) => {
                problems.push(format!("{label}: use either `secret` or `secret_env`, not both"));
                String::new()
            }
            (None, None) => {
                problems.push(format!("{label}: missing `secret` (or `secret_env`, to read it from the environment)"));
                String::new()
            }
            (Some(s), None) => {
                if s.chars().count() < MIN_WEBHOOK_SECRET_CHARS {
                    problems.push(format!("{label}: `secret` must be at least {MIN_WEBHOOK_SECRET_CHARS} characters"));
                }
                s
            }
            (None, Some(var)) => match env(var.trim()) {
                None => {
                    problems.push(format!("{label}: `secret_env` {var:?} is not set in the environment"));
                    String::new()
                }
                Some(s) => {
                    if s.chars().count() < MIN_WEBHOOK_SECRET_CHARS {
                        problems.push(format!(
                            "{label}: the secret in ${var} must be at least {MIN_WEBHOOK_SECRET_CHARS} characters"
                        ));
                    }
                    s
                }
            },
        };

        let timeout_ms = ranged("webhook_tools.timeout_ms", w.timeout_ms, 100, 30_000, 5000, problems);
        tools.push(WebhookTool {
            name,
            description,
            parameters,
            url,
            secret,
            timeout_ms,
            side_effects: w.side_effects,
        });
    }
    tools
}

/// `^[a-z][a-z0-9_]{0,63}$` (what the Realtime API accepts, kept simple).
fn is_tool_name(s: &str) -> bool {
    let mut b = s.bytes();
    s.len() <= 64
        && b.next().is_some_and(|c| c.is_ascii_lowercase())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// A JSON schema for function arguments: an object schema whose `properties` (if any) is an
/// object and whose `required` (if any) lists declared properties.
fn check_schema(p: &serde_json::Value) -> Result<(), String> {
    let Some(obj) = p.as_object() else {
        return Err("must be a table (a JSON schema object)".to_owned());
    };
    if obj.get("type").and_then(serde_json::Value::as_str) != Some("object") {
        return Err("must have type = \"object\"".to_owned());
    }
    let properties = match obj.get("properties") {
        None => None,
        Some(serde_json::Value::Object(props)) => Some(props),
        Some(_) => return Err("`properties` must be a table".to_owned()),
    };
    if let Some(required) = obj.get("required") {
        let Some(list) = required.as_array() else {
            return Err("`required` must be a list of property names".to_owned());
        };
        for r in list {
            let Some(name) = r.as_str() else {
                return Err("`required` must be a list of property names".to_owned());
            };
            if !properties.is_some_and(|props| props.contains_key(name)) {
                return Err(format!("`required` names {name:?}, which is not in `properties`"));
            }
        }
    }
    Ok(())
}

/// `https://…`; plain `http://` only to this machine (tests, a local sidecar). No credentials
/// in the URL (they would end up in logs).
fn check_webhook_url(url: &str) -> Result<(), &'static str> {
    let parsed = reqwest::Url::parse(url).map_err(|_| "is not a URL")?;
    let host = parsed.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err("has no host");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not contain credentials (use `secret`)");
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if matches!(host, "127.0.0.1" | "localhost" | "[::1]") => Ok(()),
        "http" => Err("must use https (http is allowed only to 127.0.0.1 or localhost)"),
        _ => Err("must be an https URL"),
    }
}

/// Tenants that still accept the shipped example's API key (`demo-key-<id>`), which anyone
/// who has read the repository knows.
pub fn demo_key_tenants(dir: &TenantDirectory) -> Vec<String> {
    use sha2::Digest as _;
    dir.tenants()
        .iter()
        .filter(|t| {
            let demo = hex::encode(sha2::Sha256::digest(format!("demo-key-{}", t.id).as_bytes()));
            t.api_keys_sha256.contains(&demo)
        })
        .map(|t| t.id.clone())
        .collect()
}

/// Minutes east of UTC in `zone` at `at_ms` (Unix ms), daylight saving included. A zone that
/// does not resolve (it was validated at load, so this is not expected) counts as UTC.
pub fn utc_offset_minutes(zone: &str, at_ms: u64) -> i32 {
    let Ok(tz) = jiff::tz::TimeZone::get(zone) else { return 0 };
    let Ok(ts) = jiff::Timestamp::from_millisecond(i64::try_from(at_ms).unwrap_or(0)) else { return 0 };
    tz.to_offset(ts).seconds() / 60
}

/// The local date and time in `zone` at `at_ms` (Unix ms), for booking checks and the
/// session's "Today is …" line. A zone that does not resolve counts as UTC.
pub fn local_datetime(zone: &str, at_ms: u64) -> time::PrimitiveDateTime {
    let nanos = i128::from(at_ms) * 1_000_000;
    let utc = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let local = utc + time::Duration::minutes(i64::from(utc_offset_minutes(zone, at_ms)));
    time::PrimitiveDateTime::new(local.date(), local.time())
}

/// A required string field: the value, or a problem if it is missing or blank.
fn required(field: &str, value: Option<String>, problems: &mut Vec<String>) -> String {
    match value {
        None => {
            problems.push(format!("missing `{field}`"));
            String::new()
        }
        Some(s) if s.trim().is_empty() => {
            problems.push(format!("`{field}` is empty"));
            s
        }
        Some(s) => s,
    }
}

/// `value` if given and within `min..=max`; the default if absent; a problem otherwise.
fn ranged(field: &str, value: Option<i64>, min: u32, max: u32, default: u32, problems: &mut Vec<String>) -> u32 {
    match value {
        None => default,
        Some(v) => match u32::try_from(v) {
            Ok(v) if (min..=max).contains(&v) => v,
            _ => {
                problems.push(format!("`{field}` must be in {min}..={max} (got {v})"));
                default
            }
        },
    }
}

/// Uniqueness of ids, numbers and API keys across tenants; at most one fallback.
fn check_across(tenants: &[Tenant], problems: &mut Vec<String>) {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut numbers: HashMap<&str, &str> = HashMap::new();
    let mut keys: HashMap<&str, &str> = HashMap::new();
    for (i, t) in tenants.iter().enumerate() {
        if !t.id.is_empty()
            && let Some(first) = ids.insert(&t.id, i)
        {
            problems.push(format!("tenant #{} and tenant #{} both have id {:?}", first + 1, i + 1, t.id));
        }
        for n in &t.numbers {
            if let Some(owner) = numbers.insert(n, &t.id) {
                if owner == t.id {
                    problems.push(format!("tenant {}: number {n} is listed twice", t.id));
                } else {
                    problems.push(format!("number {n} is listed by both {owner} and {}", t.id));
                }
            }
        }
        for k in &t.api_keys_sha256 {
            if let Some(owner) = keys.insert(k, &t.id)
                && owner != t.id
            {
                problems.push(format!(
                    "API key hash {}… is listed by both {owner} and {} (a key must identify one tenant)",
                    k.get(..12).unwrap_or(k),
                    t.id
                ));
            }
        }
    }
    let fallbacks: Vec<&str> = tenants.iter().filter(|t| t.fallback).map(|t| t.id.as_str()).collect();
    if fallbacks.len() > 1 {
        problems.push(format!(
            "at most one tenant may have `fallback = true`; found {}: {}",
            fallbacks.len(),
            fallbacks.join(", ")
        ));
    }
}

fn is_slug(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `it`, `fra`, `en-US`, `es-419`: a 2–3 letter lowercase language, optionally a region of two
/// letters or three digits.
fn is_language_code(s: &str) -> bool {
    let (lang, region) = match s.split_once('-') {
        Some((l, r)) => (l, Some(r)),
        None => (s, None),
    };
    let lang_ok = (2..=3).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_lowercase());
    let region_ok = match region {
        None => true,
        Some(r) => {
            (r.len() == 2 && r.bytes().all(|b| b.is_ascii_alphabetic()))
                || (r.len() == 3 && r.bytes().all(|b| b.is_ascii_digit()))
        }
    };
    lang_ok && region_ok
}

/// `local@domain.tld` with no spaces or other obviously invalid characters.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let bad = |c: char| c.is_whitespace() || c.is_control() || "<>,;:\"()[]\\@".contains(c);
    let labels: Vec<&str> = domain.split('.').collect();
    !local.is_empty()
        && !local.chars().any(bad)
        && !domain.chars().any(bad)
        && labels.len() >= 2
        && labels.iter().all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'))
        && labels.last().is_some_and(|tld| tld.len() >= 2 && tld.chars().all(char::is_alphabetic))
}

// ---- instructions ------------------------------------------------------------------------

/// English name of a language code's primary subtag, for the languages we ship prompts in.
fn language_name(code: &str) -> Option<&'static str> {
    let primary = code.split('-').next().unwrap_or_default();
    Some(match primary {
        "it" => "Italian",
        "fr" => "French",
        "en" => "English",
        "de" => "German",
        "es" => "Spanish",
        _ => return None,
    })
}

/// The line appended to every prompt telling the model which language to speak.
pub fn language_directive(language: &str) -> String {
    let spoken = match language_name(language) {
        Some(name) => format!("{name} ({language})"),
        None => format!("the language with code {language}"),
    };
    format!(
        "Language: always speak {spoken} with the caller, unless the caller clearly speaks another \
         language; then answer in theirs."
    )
}

/// Prompt file content, a blank line, then the language directive.
fn instructions_for(prompt: &str, language: &str) -> String {
    format!("{}\n\n{}", prompt.trim_end(), language_directive(language))
}

/// The prompt part of `t.instructions` (what came from the prompt file, trailing whitespace
/// trimmed).
fn prompt_text(t: &Tenant) -> &str {
    let directive = language_directive(&t.language);
    t.instructions.strip_suffix(directive.as_str()).and_then(|s| s.strip_suffix("\n\n")).unwrap_or(&t.instructions)
}

// ---- describe ----------------------------------------------------------------------------

/// A human-readable table of the tenants, for `switchboard check`.
pub fn describe(dir: &TenantDirectory) -> String {
    const HEADER: [&str; 12] = [
        "ID",
        "NAME",
        "NUMBERS",
        "LANG",
        "TIMEZONE",
        "VOICE",
        "AUDIO",
        "FALLBACK",
        "KEYS",
        "TOOLS",
        "PROMPT",
        "SUMMARY TO",
    ];
    let rows: Vec<[String; 12]> = dir
        .tenants()
        .iter()
        .map(|t| {
            let prompt = prompt_text(t);
            [
                t.id.clone(),
                t.name.clone(),
                t.numbers.join(", "),
                t.language.clone(),
                t.timezone.clone(),
                t.voice.clone(),
                match t.audio_format {
                    AudioFormat::Pcmu => "pcmu".to_owned(),
                    AudioFormat::Pcm24k => "pcm24k".to_owned(),
                },
                if t.fallback { "yes" } else { "no" }.to_owned(),
                t.api_keys_sha256.len().to_string(),
                t.tools
                    .iter()
                    .map(|b| b.name().to_owned())
                    .chain(t.webhook_tools.iter().map(|w| format!("{} (webhook)", w.name)))
                    .collect::<Vec<_>>()
                    .join(", "),
                format!("{} ({} bytes, {} words)", t.prompt_file, prompt.len(), prompt.split_whitespace().count()),
                if t.summary_to.is_empty() { "-".to_owned() } else { t.summary_to.join(", ") },
            ]
        })
        .collect();

    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let pad = w - cell.chars().count();
                l.push_str(cell);
                l.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&HEADER);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }

    let numbers: usize = dir.tenants().iter().map(|t| t.numbers.len()).sum();
    let fallback = dir.tenants().iter().find(|t| t.fallback).map(|t| t.id.as_str());
    let _ = writeln!(
        out,
        "{} tenant{}, {} number{}; fallback for unlisted numbers: {}",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        numbers,
        if numbers == 1 { "" } else { "s" },
        fallback.unwrap_or("none (unlisted numbers hear an apology)")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, unique directory under the system temp dir; removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "switchboard-tenants-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const KEY: &str = "a9f6d7a2e5b5c09e1f4bd2d0d3f2b0a1c2e3f405162738495a6b7c8d9e0f1a2b";

    fn tenant_toml(id: &str, number: &str, extra: &str) -> String {
        format!(
            r#"
[[tenants]]
id = "{id}"
name = "Name of {id}"
numbers = ["{number}"]
language = "it"
voice = "marin"
prompt_file = "prompts/p.md"
greeting = "Ciao!"
summary_to = ["owner@example.com"]
api_keys_sha256 = []
{extra}
"#
        )
    }

    /// Writes `toml` as tenants.toml plus a valid `prompts/p.md`, then loads it.
    fn load_str(toml: &str) -> Result<TenantDirectory, TenantsError> {
        let dir = TempDir::new();
        dir.write("prompts/p.md", "Sei l'assistente.\n");
        let path = dir.write("tenants.toml", toml);
        load(&path)
    }

    fn problems(toml: &str) -> Vec<String> {
        match load_str(toml) {
            Err(TenantsError::Invalid { problems, .. }) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn assert_problem(toml: &str, needle: &str) {
        let ps = problems(toml);
        assert!(ps.iter().any(|p| p.contains(needle)), "no problem containing {needle:?} in {ps:#?}");
    }

    #[test]
    fn shipped_tenants_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tenants.toml");
        let dir = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dir.tenants().len(), 4);

        let mario = dir.resolve("+39 02 111 1111").unwrap();
        assert_eq!(mario.id, "trattoria-mario");
        assert_eq!(mario.tools, BuiltinTool::ALL.to_vec());
        assert_eq!(mario.transfer, vec![TransferTarget { name: "staff".into(), number: "+39021111199".into() }]);
        assert_eq!(mario.dtmf, vec![('0', DtmfAction::Transfer(None))]);
        let booking = mario.booking.as_ref().unwrap();
        assert_eq!((booking.min_party, booking.max_party), (1, 10));
        // The booking hours say what `business.hours` says.
        assert_eq!(
            booking.hours.describe(),
            "Mon closed; Tue 12:00–14:30, 19:00–22:30; Wed 12:00–14:30, 19:00–22:30; Thu 12:00–14:30, \
             19:00–22:30; Fri 12:00–14:30, 19:00–22:30; Sat 12:00–14:30, 19:00–22:30; Sun 12:00–14:30"
        );
        assert!(
            mario.business.hours.as_deref().unwrap().contains("pranzo mar-dom 12:00-14:30; cena mar-sab 19:00-22:30")
        );
        assert_eq!(mario.language, "it");
        assert_eq!(mario.greeting, "Trattoria da Mario, buongiorno! Come posso aiutarla?");
        assert!(mario.instructions.ends_with(
            "Language: always speak Italian (it) with the caller, unless the caller clearly speaks \
             another language; then answer in theirs."
        ));

        let gino = dir.resolve("+39062222222").unwrap();
        assert_eq!(gino.id, "pizzeria-gino");
        assert_eq!(gino.audio_format, AudioFormat::Pcmu);

        let elegante = dir.resolve("0039 06 3333333").unwrap();
        assert_eq!(elegante.id, "ristorante-elegante");
        assert_eq!(elegante.voice, "cedar");

        let ava = dir.resolve("+33144556677").unwrap();
        assert_eq!(ava.id, "ava");
        assert_eq!(ava.language, "fr");
        assert!(ava.fallback);
        // Numbers nobody lists go to Ava.
        assert_eq!(dir.resolve("+4930123456").unwrap().id, "ava");

        for t in dir.tenants() {
            assert_eq!(t.api_keys_sha256.len(), 1, "{}", t.id);
            let lines = prompt_text(t).lines().count();
            assert!((40..=90).contains(&lines), "{}: prompt has {lines} lines", t.id);
        }
        // The demo key hashes are what the comments in tenants.toml say they are.
        for t in dir.tenants() {
            use sha2::Digest as _;
            let demo = hex::encode(sha2::Sha256::digest(format!("demo-key-{}", t.id)));
            assert_eq!(t.api_keys_sha256, vec![demo], "{}", t.id);
        }

        let table = describe(&dir);
        for needle in
            ["trattoria-mario", "+39021111111", "prompts/ava.md", "cedar", "pcmu", "fallback for unlisted numbers: ava"]
        {
            assert!(table.contains(needle), "{needle:?} missing from\n{table}");
        }
    }

    #[test]
    fn minimal_tenant_gets_defaults() {
        let dir = load_str(&tenant_toml("mario", "+39021111111", "")).unwrap();
        let t = dir.by_id("mario").unwrap();
        assert_eq!(t.numbers, vec!["+39021111111"]);
        assert_eq!(t.audio_format, AudioFormat::Pcmu);
        assert!(!t.fallback);
        assert_eq!(t.turn_detection, TurnDetection::default());
        assert_eq!(t.barge_in, BargeIn::default());
        assert_eq!(
            t.instructions,
            "Sei l'assistente.\n\nLanguage: always speak Italian (it) with the caller, unless the \
             caller clearly speaks another language; then answer in theirs."
        );
        assert_eq!(prompt_text(&t), "Sei l'assistente.");
    }

    #[test]
    fn optional_tables_are_applied_and_numbers_normalised() {
        let extra = r#"
audio_format = "pcm24k"
fallback = true
[tenants.turn_detection]
threshold = 1
prefix_padding_ms = 2000
silence_duration_ms = 100
[tenants.barge_in]
enabled = false
min_speech_ms = 40
vad_mode = 0
playback_lead_ms = 2000
"#;
        let toml = tenant_toml("x", "0039 02-111.1111", extra)
            .replace("api_keys_sha256 = []", &format!("api_keys_sha256 = [\"{}\"]", KEY.to_ascii_uppercase()));
        let dir = load_str(&toml).unwrap();
        let t = dir.by_id("x").unwrap();
        assert_eq!(t.numbers, vec!["+39021111111"]);
        assert_eq!(t.audio_format, AudioFormat::Pcm24k);
        assert!(t.fallback);
        assert_eq!(t.api_keys_sha256, vec![KEY.to_owned()]);
        assert_eq!(
            t.turn_detection,
            TurnDetection { threshold: 1.0, prefix_padding_ms: 2000, silence_duration_ms: 100 }
        );
        assert_eq!(t.barge_in, BargeIn { enabled: false, min_speech_ms: 40, vad_mode: 0, playback_lead_ms: 2000 });
    }

    #[test]
    fn relative_prompt_path_is_resolved_against_the_tenants_file() {
        let dir = TempDir::new();
        dir.write("conf/prompts/p.md", "From conf/prompts.");
        dir.write("prompts/p.md", "Wrong file: relative to the cwd-like root.");
        let path = dir.write("conf/tenants.toml", tenant_toml("a", "+39021111111", ""));
        let loaded = load(&path).unwrap();
        assert!(loaded.by_id("a").unwrap().instructions.starts_with("From conf/prompts.\n\n"));

        // An absolute prompt path is used as is.
        let abs = dir.write("elsewhere/abs.md", "Absolute.");
        let toml = tenant_toml("b", "+39021111111", "")
            .replace("prompts/p.md", &abs.display().to_string().replace('\\', "\\\\"));
        let path = dir.write("conf/abs.toml", toml);
        assert!(load(&path).unwrap().by_id("b").unwrap().instructions.starts_with("Absolute.\n\n"));
    }

    #[test]
    fn unknown_fields_are_rejected_everywhere() {
        for extra in
            ["colour = \"red\"", "[tenants.turn_detection]\nthreshhold = 0.5", "[tenants.barge_in]\nenable = true"]
        {
            let err = load_str(&tenant_toml("a", "+39021111111", extra)).unwrap_err();
            assert!(matches!(err, TenantsError::Parse { .. }), "{extra}: {err}");
        }
        let err = load_str(&format!("title = \"x\"\n{}", tenant_toml("a", "+39021111111", ""))).unwrap_err();
        assert!(matches!(err, TenantsError::Parse { .. }), "{err}");
    }

    #[test]
    fn syntax_error_and_missing_file() {
        let err = load_str("[[tenants]\nid = ").unwrap_err();
        assert!(matches!(err, TenantsError::Parse { .. }));
        assert!(err.to_string().contains("tenants.toml"), "{err}");

        let dir = TempDir::new();
        let err = load(&dir.0.join("nope.toml")).unwrap_err();
        assert!(matches!(err, TenantsError::Read { .. }));
        assert!(err.to_string().contains("nope.toml"), "{err}");
    }

    #[test]
    fn no_tenants() {
        assert_problem("", "no tenants");
        assert_problem("tenants = []", "no tenants");
    }

    #[test]
    fn ids_must_be_slugs_and_unique() {
        assert_problem(&tenant_toml("Trattoria Mario", "+39021111111", ""), "lowercase letters, digits and dashes");
        assert_problem(&tenant_toml("", "+39021111111", ""), "`id` is empty");
        let two = tenant_toml("a", "+39021111111", "") + &tenant_toml("a", "+39062222222", "");
        assert_problem(&two, "tenant #1 and tenant #2 both have id \"a\"");
    }

    #[test]
    fn name_and_greeting_must_not_be_empty() {
        let toml = tenant_toml("a", "+39021111111", "").replace("name = \"Name of a\"", "name = \" \"");
        assert_problem(&toml, "tenant #1 (a): `name` is empty");
        let toml = tenant_toml("a", "+39021111111", "").replace("greeting = \"Ciao!\"", "greeting = \"\"");
        assert_problem(&toml, "`greeting` is empty");
        let toml = tenant_toml("a", "+39021111111", "").replace("greeting = \"Ciao!\"", "");
        assert_problem(&toml, "missing `greeting`");
    }

    #[test]
    fn numbers_must_be_phone_numbers_and_unique() {
        let toml = tenant_toml("a", "+39021111111", "").replace("numbers = [\"+39021111111\"]", "numbers = []");
        assert_problem(&toml, "`numbers` is empty");
        assert_problem(&tenant_toml("a", "client:alice", ""), "number \"client:alice\" is not a phone number");
        assert_problem(&tenant_toml("a", "021111111", ""), "not a phone number");
        // Same number in two spellings across tenants.
        let two = tenant_toml("a", "+39021111111", "") + &tenant_toml("b", "0039 02 1111111", "");
        assert_problem(&two, "number +39021111111 is listed by both a and b");
        let toml = tenant_toml("a", "+39021111111", "")
            .replace("numbers = [\"+39021111111\"]", "numbers = [\"+39021111111\", \"+39 02 1111111\"]");
        assert_problem(&toml, "number +39021111111 is listed twice");
    }

    #[test]
    fn at_most_one_fallback() {
        let two =
            tenant_toml("a", "+39021111111", "fallback = true") + &tenant_toml("b", "+39062222222", "fallback = true");
        assert_problem(&two, "at most one tenant may have `fallback = true`; found 2: a, b");
        let one = tenant_toml("a", "+39021111111", "fallback = true") + &tenant_toml("b", "+39062222222", "");
        assert!(load_str(&one).is_ok());
    }

    #[test]
    fn prompt_file_must_exist_and_be_non_empty_utf8() {
        let missing = tenant_toml("a", "+39021111111", "").replace("prompts/p.md", "prompts/missing.md");
        assert_problem(&missing, "cannot read prompt file");

        let dir = TempDir::new();
        dir.write("prompts/p.md", " \n\t\n");
        let path = dir.write("tenants.toml", tenant_toml("a", "+39021111111", ""));
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");

        dir.write("prompts/p.md", [0x66, 0x6f, 0xff, 0xfe]);
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("is not UTF-8"), "{err}");

        let empty = tenant_toml("a", "+39021111111", "").replace("prompts/p.md", "");
        assert_problem(&empty, "`prompt_file` is empty");
    }

    #[test]
    fn language_codes() {
        for ok in ["it", "fr", "en-US", "es-419", "fil"] {
            assert!(is_language_code(ok), "{ok}");
        }
        for bad in ["", "i", "italian", "IT", "en_US", "en-", "en-USA", "en-U1"] {
            assert!(!is_language_code(bad), "{bad}");
        }
        let toml = tenant_toml("a", "+39021111111", "").replace("language = \"it\"", "language = \"italiano\"");
        assert_problem(&toml, "`language` \"italiano\" must be a 2-3 letter code");
    }

    #[test]
    fn voice_must_be_known() {
        let toml = tenant_toml("a", "+39021111111", "").replace("voice = \"marin\"", "voice = \"nova\"");
        assert_problem(&toml, "`voice` \"nova\" is not one of alloy, ash");
    }

    #[test]
    fn summary_recipients_must_look_like_emails() {
        for ok in ["a@example.com", "first.last+tag@mail.example.co.uk"] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "",
            "example.com",
            "@example.com",
            "a@example",
            "a@.com",
            "a b@example.com",
            "a@example.c",
            "a@b@c.com",
            "Mario <m@example.com>",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
        let toml = tenant_toml("a", "+39021111111", "").replace("owner@example.com", "owner at example");
        assert_problem(&toml, "`summary_to` entry \"owner at example\" is not an email address");
        let empty = tenant_toml("a", "+39021111111", "").replace("[\"owner@example.com\"]", "[]");
        assert!(load_str(&empty).is_ok());
    }

    #[test]
    fn api_key_hashes_must_be_sha256_hex_and_not_shared() {
        let toml = tenant_toml("a", "+39021111111", "").replace("api_keys_sha256 = []", "api_keys_sha256 = [\"abc\"]");
        assert_problem(&toml, "`api_keys_sha256` entry \"abc\" is not a SHA-256 digest");
        let bad_hex = format!("{}zz", &KEY[..62]);
        let toml = tenant_toml("a", "+39021111111", "")
            .replace("api_keys_sha256 = []", &format!("api_keys_sha256 = [\"{bad_hex}\"]"));
        assert_problem(&toml, "is not a SHA-256 digest");
        let with_key = |id: &str, n: &str| {
            tenant_toml(id, n, "").replace("api_keys_sha256 = []", &format!("api_keys_sha256 = [\"{KEY}\"]"))
        };
        assert_problem(&(with_key("a", "+39021111111") + &with_key("b", "+39062222222")), "is listed by both a and b");
    }

    #[test]
    fn tools_default_to_all_and_unknown_ones_are_problems() {
        let all = load_str(&tenant_toml("a", "+39021111111", "")).unwrap();
        // Without transfer targets or booking rules, only the tools that need no configuration.
        assert_eq!(all.by_id("a").unwrap().tools, vec![BuiltinTool::EndCall, BuiltinTool::BusinessInfo]);
        let some = load_str(&tenant_toml("a", "+39021111111", "tools = [\"business_info\"]")).unwrap();
        assert_eq!(some.by_id("a").unwrap().tools, vec![BuiltinTool::BusinessInfo]);
        assert_problem(&tenant_toml("a", "+39021111111", "tools = [\"launch\"]"), "unknown tool \"launch\"");
        let biz =
            load_str(&tenant_toml("a", "+39021111111", "[tenants.business]\naddress = \" Via Roma 1 \"\nhours = \"\""))
                .unwrap();
        let b = &biz.by_id("a").unwrap().business;
        assert_eq!((b.address.as_deref(), b.hours.as_deref()), (Some("Via Roma 1"), None));
    }

    #[test]
    fn idle_prompt_defaults_can_be_tuned_or_turned_off() {
        let default = load_str(&tenant_toml("a", "+39021111111", "")).unwrap();
        assert_eq!(default.by_id("a").unwrap().idle_prompt_ms, DEFAULT_IDLE_PROMPT_MS);
        let off = load_str(&tenant_toml("a", "+39021111111", "idle_prompt_ms = 0")).unwrap();
        assert_eq!(off.by_id("a").unwrap().idle_prompt_ms, 0);
        let tuned = load_str(&tenant_toml("a", "+39021111111", "idle_prompt_ms = 15000")).unwrap();
        assert_eq!(tuned.by_id("a").unwrap().idle_prompt_ms, 15_000);
    }

    #[test]
    fn tuning_ranges() {
        let cases = [
            ("[tenants.turn_detection]\nthreshold = 1.5", "`turn_detection.threshold` must be in 0..=1 (got 1.5)"),
            ("[tenants.turn_detection]\nthreshold = -0.1", "`turn_detection.threshold` must be in 0..=1"),
            ("[tenants.turn_detection]\nthreshold = nan", "`turn_detection.threshold` must be in 0..=1"),
            (
                "[tenants.turn_detection]\nprefix_padding_ms = 2001",
                "`turn_detection.prefix_padding_ms` must be in 0..=2000 (got 2001)",
            ),
            (
                "[tenants.turn_detection]\nprefix_padding_ms = -1",
                "`turn_detection.prefix_padding_ms` must be in 0..=2000 (got -1)",
            ),
            (
                "[tenants.turn_detection]\nsilence_duration_ms = 99",
                "`turn_detection.silence_duration_ms` must be in 100..=3000",
            ),
            (
                "[tenants.turn_detection]\nsilence_duration_ms = 3001",
                "`turn_detection.silence_duration_ms` must be in 100..=3000",
            ),
            ("[tenants.barge_in]\nmin_speech_ms = 39", "`barge_in.min_speech_ms` must be in 40..=2000"),
            ("[tenants.barge_in]\nmin_speech_ms = 2001", "`barge_in.min_speech_ms` must be in 40..=2000"),
            ("[tenants.barge_in]\nvad_mode = 4", "`barge_in.vad_mode` must be in 0..=3 (got 4)"),
            ("[tenants.barge_in]\nplayback_lead_ms = 59", "`barge_in.playback_lead_ms` must be in 60..=2000"),
            ("[tenants.barge_in]\nplayback_lead_ms = 2001", "`barge_in.playback_lead_ms` must be in 60..=2000"),
            ("idle_prompt_ms = 2999", "`idle_prompt_ms` must be in 3000..=300000 (got 2999)"),
            ("idle_prompt_ms = -5", "`idle_prompt_ms` must be in 3000..=300000"),
        ];
        for (extra, needle) in cases {
            assert_problem(&tenant_toml("a", "+39021111111", extra), needle);
        }
    }

    #[test]
    fn all_problems_are_reported_together() {
        let toml = tenant_toml("Bad Id", "not-a-number", "fallback = true\n[tenants.barge_in]\nvad_mode = 9")
            .replace("voice = \"marin\"", "voice = \"robot\"")
            .replace("prompts/p.md", "prompts/none.md")
            + &tenant_toml("b", "+39062222222", "fallback = true").replace("greeting = \"Ciao!\"", "");
        let ps = problems(&toml);
        let expected = [
            "tenant #1 (Bad Id): `id` \"Bad Id\" must be lowercase",
            "tenant #1 (Bad Id): number \"not-a-number\" is not a phone number",
            "tenant #1 (Bad Id): `voice` \"robot\"",
            "tenant #1 (Bad Id): cannot read prompt file",
            "tenant #1 (Bad Id): `barge_in.vad_mode` must be in 0..=3 (got 9)",
            "tenant #2 (b): missing `greeting`",
            "at most one tenant may have `fallback = true`",
        ];
        for needle in expected {
            assert!(ps.iter().any(|p| p.contains(needle)), "no {needle:?} in {ps:#?}");
        }
        assert_eq!(ps.len(), expected.len(), "{ps:#?}");

        // Display: a header line, then one line per problem.
        let err = load_str(&toml).unwrap_err().to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert!(lines[0].ends_with("tenants.toml is invalid (7 problems):"), "{err}");
        assert_eq!(lines.len(), 1 + expected.len(), "{err}");
        assert!(lines[1..].iter().all(|l| l.starts_with("  - ")), "{err}");
    }

    #[test]
    fn language_directive_names_known_languages() {
        assert_eq!(
            language_directive("fr"),
            "Language: always speak French (fr) with the caller, unless the caller clearly speaks \
             another language; then answer in theirs."
        );
        assert!(language_directive("en-GB").contains("always speak English (en-GB)"));
        assert!(language_directive("de").contains("German (de)"));
        assert!(language_directive("es").contains("Spanish (es)"));
        assert!(language_directive("pt-BR").contains("always speak the language with code pt-BR with"));
    }

    #[test]
    fn describe_lists_every_column() {
        let toml = tenant_toml("a", "+39021111111", "fallback = true")
            + &tenant_toml("b", "+39062222222", "audio_format = \"pcm24k\"");
        let dir = load_str(&toml).unwrap();
        let table = describe(&dir);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        for h in ["ID", "NAME", "NUMBERS", "LANG", "VOICE", "AUDIO", "FALLBACK", "KEYS", "PROMPT", "SUMMARY TO"] {
            assert!(lines[0].contains(h), "{table}");
        }
        assert!(lines[1].starts_with("a  "), "{table}");
        assert!(lines[1].contains("prompts/p.md (17 bytes, 2 words)"), "{table}");
        assert!(lines[1].contains("yes"), "{table}");
        assert!(lines[2].contains("pcm24k") && lines[2].contains("owner@example.com"), "{table}");
        // Columns line up.
        let col = lines[0].find("NUMBERS").unwrap();
        assert_eq!(&lines[1][col..col + 12], "+39021111111");
        assert_eq!(lines[3], "2 tenants, 2 numbers; fallback for unlisted numbers: a");
    }
}

#[cfg(test)]
mod timezone_tests {
    use super::*;

    fn one(extra: &str) -> Result<TenantDirectory, TenantsError> {
        let dir = std::env::temp_dir().join(format!("sb-tz-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p.md"), "prompt").unwrap();
        let text = format!(
            "[[tenants]]\nid = \"a\"\nname = \"A\"\nnumbers = [\"+39021111111\"]\nlanguage = \"it\"\nvoice = \"marin\"\n\
             prompt_file = \"p.md\"\ngreeting = \"Ciao\"\nsummary_to = []\napi_keys_sha256 = []\n{extra}\n"
        );
        std::fs::write(dir.join("t.toml"), text).unwrap();
        let r = load(&dir.join("t.toml"));
        let _ = std::fs::remove_dir_all(dir);
        r
    }

    #[test]
    fn time_zones_are_validated_and_daylight_saving_is_applied() {
        assert_eq!(one("").unwrap().by_id("a").unwrap().timezone, "UTC");
        let rome = one("timezone = \"Europe/Rome\"").unwrap();
        assert_eq!(rome.by_id("a").unwrap().timezone, "Europe/Rome");
        let err = one("timezone = \"Mars/Olympus\"").unwrap_err().to_string();
        assert!(err.contains("Mars/Olympus"), "{err}");
        // 2026-07-01 is summer time in Rome (+02:00), 2026-01-15 is not (+01:00).
        assert_eq!(utc_offset_minutes("Europe/Rome", 1_782_864_000_000), 120);
        assert_eq!(utc_offset_minutes("Europe/Rome", 1_768_435_200_000), 60);
        assert_eq!(utc_offset_minutes("UTC", 1_768_435_200_000), 0);
        assert_eq!(utc_offset_minutes("America/New_York", 1_768_435_200_000), -300);
    }
}

#[cfg(test)]
mod tools_config_tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "[[tenants]]\nid = \"a\"\nname = \"A\"\nnumbers = [\"+39021111111\"]\nlanguage = \"it\"\n\
                        voice = \"marin\"\nprompt_file = \"p.md\"\ngreeting = \"Ciao\"\nsummary_to = []\n\
                        api_keys_sha256 = []\n";

    /// Builds one tenant from `extra` (appended to a valid base) with a fake environment.
    fn build_with_env(extra: &str, env: &[(&str, &str)]) -> Result<Tenant, Vec<String>> {
        let file: TenantsFile = toml::from_str(&format!("{BASE}{extra}\n")).unwrap_or_else(|e| panic!("{e}"));
        let env: HashMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        build(file, |_| Ok("prompt".to_owned()), |k| env.get(k).cloned()).map(|mut v| v.remove(0))
    }

    fn ok(extra: &str) -> Tenant {
        build_with_env(extra, &[]).unwrap_or_else(|ps| panic!("{ps:#?}"))
    }

    fn problems(extra: &str) -> Vec<String> {
        build_with_env(extra, &[]).expect_err("should be invalid")
    }

    fn assert_problem(extra: &str, needle: &str) {
        let ps = problems(extra);
        assert!(ps.iter().any(|p| p.contains(needle)), "no problem containing {needle:?} in {ps:#?}");
    }

    const BOOKING: &str = "[tenants.booking]\nmax_party = 12\n[tenants.booking.hours]\n\
                           tue = [\"12:00-14:30\", \"19:00-22:30\"]\nfri = [\"19:00-01:00\"]\n";

    #[test]
    fn transfer_number_is_a_target_named_staff() {
        let t = ok("transfer_number = \"+39 02 1111199\"");
        assert_eq!(t.transfer, vec![TransferTarget { name: "staff".into(), number: "+39021111199".into() }]);
        assert!(t.tools.contains(&BuiltinTool::TransferCall));
        assert!(!t.tools.contains(&BuiltinTool::TakeBooking));
    }

    #[test]
    fn named_transfer_targets_keep_their_order() {
        let t = ok("[[tenants.transfer]]\nname = \"kitchen\"\nnumber = \"+39021111198\"\n\
                    [[tenants.transfer]]\nname = \"front_desk\"\nnumber = \"0039 02 1111199\"");
        let names: Vec<(&str, &str)> = t.transfer.iter().map(|x| (x.name.as_str(), x.number.as_str())).collect();
        assert_eq!(names, [("kitchen", "+39021111198"), ("front_desk", "+39021111199")]);
    }

    #[test]
    fn transfer_problems() {
        assert_problem(
            "transfer_number = \"+39021111199\"\n[[tenants.transfer]]\nname = \"k\"\nnumber = \"+39021111198\"",
            "use either `transfer_number` or [[tenants.transfer]], not both",
        );
        assert_problem("transfer_number = \"021111199\"", "`transfer_number`: \"021111199\" is not a phone number");
        assert_problem("transfer_number = \"+39021111111\"", "is one of this tenant's own numbers");
        assert_problem("[[tenants.transfer]]\nnumber = \"+39021111198\"", "transfer target #1: missing `name`");
        assert_problem("[[tenants.transfer]]\nname = \"bar\"", "transfer target \"bar\": missing `number`");
        assert_problem(
            "[[tenants.transfer]]\nname = \"Bar Desk\"\nnumber = \"+39021111198\"",
            "transfer target \"Bar Desk\": the name must be lowercase",
        );
        assert_problem(
            "[[tenants.transfer]]\nname = \"bar\"\nnumber = \"+39021111198\"\n\
             [[tenants.transfer]]\nname = \"bar\"\nnumber = \"+39021111197\"",
            "transfer target \"bar\" is listed twice",
        );
    }

    #[test]
    fn booking_rules_are_parsed_with_defaults() {
        let t = ok(BOOKING);
        let b = t.booking.as_ref().unwrap();
        assert_eq!((b.min_party, b.max_party, b.last_booking_before_close_min, b.max_days_ahead), (1, 12, 30, 60));
        assert_eq!(b.hours.days[1], vec![(720, 870), (1140, 1350)]);
        assert_eq!(b.hours.days[4], vec![(1140, 1500)]);
        assert!(b.hours.days[0].is_empty() && b.hours.days[6].is_empty());
        assert!(t.tools.contains(&BuiltinTool::TakeBooking));
        assert!(!t.tools.contains(&BuiltinTool::TransferCall));

        let t = ok("[tenants.booking]\nmin_party = 2\nmax_party = 2\nlast_booking_minutes = 0\nmax_days_ahead = 7\n\
                    [tenants.booking.hours]\nsun = [\"19:00 - 22:00\", \"12:00-14:00\"]\nmon = [\"18:00-24:00\"]");
        let b = t.booking.unwrap();
        assert_eq!((b.min_party, b.max_party, b.last_booking_before_close_min, b.max_days_ahead), (2, 2, 0, 7));
        // Sorted by opening; 24:00 is a closing time.
        assert_eq!(b.hours.days[6], vec![(720, 840), (1140, 1320)]);
        assert_eq!(b.hours.days[0], vec![(1080, 1440)]);
    }

    #[test]
    fn booking_problems_are_all_reported() {
        let extra = "[tenants.booking]\nmin_party = 4\nmax_party = 2\nlast_booking_minutes = -1\n\
                     max_days_ahead = 1000\n[tenants.booking.hours]\ntues = [\"12:00-14:00\"]\n\
                     wed = [\"12:00-25:00\", \"12:00\", \"13:00-13:00\", \"12:60-13:00\", \"24:00-01:00\"]\n\
                     thu = [\"12:00-15:00\", \"14:00-16:00\"]\nfri = [\"19:00-03:00\"]\nsat = [\"02:00-04:00\"]";
        let ps = problems(extra);
        let expected = [
            "`booking.max_party` (2) must be at least `booking.min_party` (4)",
            "`booking.last_booking_minutes` must be in 0..=720 (got -1)",
            "`booking.max_days_ahead` must be in 0..=730 (got 1000)",
            "`booking.hours` has an unknown day \"tues\" (use mon, tue, wed, thu, fri, sat, sun)",
            "`booking.hours.wed` entry \"12:00-25:00\" is not a time range HH:MM-HH:MM",
            "`booking.hours.wed` entry \"12:00\" is not a time range",
            "`booking.hours.wed` entry \"13:00-13:00\" opens and closes at the same time",
            "`booking.hours.wed` entry \"12:60-13:00\" is not a time range",
            "`booking.hours.wed` entry \"24:00-01:00\" cannot open at 24:00",
            "`booking.hours.thu`: 12:00-15:00 and 14:00-16:00 overlap",
            "`booking.hours.fri` runs until 03:00 and `booking.hours.sat` opens at 02:00: they overlap",
        ];
        for needle in expected {
            assert!(ps.iter().any(|p| p.contains(needle)), "no {needle:?} in {ps:#?}");
        }
        assert_eq!(ps.len(), expected.len(), "{ps:#?}");
        assert!(ps.iter().all(|p| p.starts_with("tenant #1 (a): ")), "{ps:#?}");

        assert_problem(
            "[tenants.booking]\n[tenants.booking.hours]\ntue = [\"12:00-14:00\"]",
            "missing `booking.max_party`",
        );
        assert_problem("[tenants.booking]\nmax_party = 4", "missing [tenants.booking.hours]");
        assert_problem("[tenants.booking]\nmax_party = 4\n[tenants.booking.hours]", "`booking.hours` has no open day");
        assert_problem(
            "[tenants.booking]\nmin_party = 0\nmax_party = 4\n[tenants.booking.hours]\ntue = [\"12:00-14:00\"]",
            "`booking.min_party` must be in 1..=1000 (got 0)",
        );
        // Unknown fields in the booking table are parse errors, like everywhere else.
        let file = format!("{BASE}[tenants.booking]\nmax_party = 4\nlast_booking = 30\n");
        assert!(toml::from_str::<TenantsFile>(&file).is_err());
    }

    #[test]
    fn dtmf_keys_and_actions() {
        let t = ok("[[tenants.transfer]]\nname = \"kitchen\"\nnumber = \"+39021111198\"\n\
                    [[tenants.transfer]]\nname = \"staff\"\nnumber = \"+39021111199\"\n\
                    [tenants.dtmf]\n\"0\" = \"transfer\"\n\"1\" = \"transfer:staff\"\n\"#\" = \"end_call\"");
        assert_eq!(
            t.dtmf,
            vec![
                ('#', DtmfAction::EndCall),
                ('0', DtmfAction::Transfer(None)),
                ('1', DtmfAction::Transfer(Some("staff".into()))),
            ]
        );
        let ps = problems(
            "transfer_number = \"+39021111199\"\n[tenants.dtmf]\n\"10\" = \"end_call\"\n\
                           \"a\" = \"end_call\"\n\"2\" = \"transfer:bar\"\n\"3\" = \"dance\"\n\"*\" = \"end_call\"",
        );
        let expected = [
            "`dtmf` key \"10\" must be one of 0-9, * or #",
            "`dtmf` key \"a\" must be one of 0-9, * or #",
            "`dtmf` \"2\" = \"transfer:bar\": no transfer target named \"bar\" (known: staff)",
            "`dtmf` \"3\" = \"dance\" is not an action",
        ];
        for needle in expected {
            assert!(ps.iter().any(|p| p.contains(needle)), "no {needle:?} in {ps:#?}");
        }
        assert_eq!(ps.len(), expected.len(), "{ps:#?}");
        assert_problem("[tenants.dtmf]\n\"0\" = \"transfer\"", "`dtmf` \"0\" = \"transfer\" needs `transfer_number`");
    }

    #[test]
    fn builtin_tools_that_need_configuration() {
        assert_problem(
            "tools = [\"transfer_call\"]",
            "tool \"transfer_call\" needs `transfer_number` or [[tenants.transfer]]",
        );
        assert_problem("tools = [\"take_booking\"]", "tool \"take_booking\" needs [tenants.booking]");
        let t = ok(&format!("transfer_number = \"+39021111199\"\ntools = [\"take_booking\", \"end_call\"]\n{BOOKING}"));
        assert_eq!(t.tools, vec![BuiltinTool::TakeBooking, BuiltinTool::EndCall]);
        let t = ok(&format!("transfer_number = \"+39021111199\"\n{BOOKING}"));
        assert_eq!(t.tools, BuiltinTool::ALL.to_vec());
    }

    const WEBHOOK: &str = "[[tenants.webhook_tools]]\nname = \"check_loyalty\"\ndescription = \"Loyalty points\"\n\
                           parameters = { type = \"object\", properties = { phone = { type = \"string\" } }, \
                           required = [\"phone\"] }\nurl = \"https://crm.example.com/hooks/loyalty\"\n";

    #[test]
    fn webhook_tools_are_parsed_with_defaults() {
        let t = ok(&format!("{WEBHOOK}secret = \"0123456789abcdef\""));
        assert_eq!(t.webhook_tools.len(), 1);
        let w = &t.webhook_tools[0];
        assert_eq!(w.name, "check_loyalty");
        assert_eq!(w.description, "Loyalty points");
        assert_eq!(
            w.parameters,
            json!({"type": "object", "properties": {"phone": {"type": "string"}}, "required": ["phone"]})
        );
        assert_eq!(w.url, "https://crm.example.com/hooks/loyalty");
        assert_eq!(w.secret, "0123456789abcdef");
        assert_eq!((w.timeout_ms, w.side_effects), (5000, false));

        // secret_env is read through the environment lookup; localhost may use http.
        let extra = format!("{WEBHOOK}secret_env = \"CRM_SECRET\"\ntimeout_ms = 100\nside_effects = true")
            .replace("https://crm.example.com", "http://127.0.0.1:8080");
        let t = build_with_env(&extra, &[("CRM_SECRET", "from-the-environment")]).unwrap();
        let w = &t.webhook_tools[0];
        assert_eq!((w.secret.as_str(), w.timeout_ms, w.side_effects), ("from-the-environment", 100, true));
        assert_eq!(w.url, "http://127.0.0.1:8080/hooks/loyalty");
        // The secret never shows in Debug output of the tenant.
        assert!(!format!("{t:?}").contains("from-the-environment"));
    }

    #[test]
    fn webhook_tool_problems() {
        let secret = "secret = \"0123456789abcdef\"";
        let cases = [
            (
                format!("{WEBHOOK}{secret}").replace("check_loyalty", "Check-Loyalty"),
                "the name must match ^[a-z][a-z0-9_]{0,63}$",
            ),
            (format!("{WEBHOOK}{secret}").replace("check_loyalty", &"a".repeat(65)), "the name must match"),
            (
                format!("{WEBHOOK}{secret}").replace("check_loyalty", "end_call"),
                "webhook tool \"end_call\": the name is a built-in tool's",
            ),
            (format!("{WEBHOOK}{secret}\n{WEBHOOK}{secret}"), "webhook tool \"check_loyalty\" is listed twice"),
            (
                format!("{WEBHOOK}{secret}").replace("description = \"Loyalty points\"", "description = \" \""),
                "missing `description`",
            ),
            (
                format!("{WEBHOOK}{secret}").replace("type = \"object\", properties", "type = \"array\", properties"),
                "`parameters` must have type = \"object\"",
            ),
            (
                format!("{WEBHOOK}{secret}").replace("required = [\"phone\"]", "required = [\"email\"]"),
                "`required` names \"email\", which is not in `properties`",
            ),
            (
                format!("{WEBHOOK}{secret}")
                    .replace("properties = { phone = { type = \"string\" } }", "properties = [1]"),
                "`properties` must be a table",
            ),
            (
                format!("{WEBHOOK}{secret}\nparameters = \"x\"").replace("parameters = { type", "#"),
                "`parameters` must be a table",
            ),
            (
                format!("{WEBHOOK}{secret}").replace("https://crm.example.com", "http://crm.example.com"),
                "must use https (http is allowed only to 127.0.0.1 or localhost)",
            ),
            (
                format!("{WEBHOOK}{secret}").replace("https://crm.example.com", "ftp://crm.example.com"),
                "must be an https URL",
            ),
            (
                format!("{WEBHOOK}{secret}").replace("https://crm.example.com", "https://user:pw@crm.example.com"),
                "must not contain credentials",
            ),
            (
                format!("{WEBHOOK}{secret}").replace("https://crm.example.com/hooks/loyalty", "not a url"),
                "`url` \"not a url\" is not a URL",
            ),
            (format!("{WEBHOOK}secret = \"short\""), "`secret` must be at least 16 characters"),
            (WEBHOOK.to_owned(), "missing `secret` (or `secret_env`"),
            (format!("{WEBHOOK}{secret}\nsecret_env = \"X\""), "use either `secret` or `secret_env`, not both"),
            (
                format!("{WEBHOOK}secret_env = \"NOT_SET_ANYWHERE\""),
                "`secret_env` \"NOT_SET_ANYWHERE\" is not set in the environment",
            ),
            (
                format!("{WEBHOOK}{secret}\ntimeout_ms = 99"),
                "`webhook_tools.timeout_ms` must be in 100..=30000 (got 99)",
            ),
            (format!("{WEBHOOK}{secret}\ntimeout_ms = 30001"), "`webhook_tools.timeout_ms` must be in 100..=30000"),
        ];
        for (extra, needle) in cases {
            assert_problem(&extra, needle);
        }
        // A short secret from the environment is a problem too; an unknown field a parse error.
        let ps = build_with_env(&format!("{WEBHOOK}secret_env = \"S\""), &[("S", "tiny")]).unwrap_err();
        assert!(ps.iter().any(|p| p.contains("the secret in $S must be at least 16 characters")), "{ps:#?}");
        let file = format!("{BASE}{WEBHOOK}{secret}\nmethod = \"GET\"\n");
        assert!(toml::from_str::<TenantsFile>(&file).is_err());
    }

    #[test]
    fn local_datetime_applies_the_zone() {
        // 2026-11-21T19:05:00Z is 20:05 in Rome (winter, +01:00).
        let ms = 1_795_287_900_000;
        assert_eq!(local_datetime("Europe/Rome", ms), time::macros::datetime!(2026-11-21 20:05));
        assert_eq!(local_datetime("UTC", ms), time::macros::datetime!(2026-11-21 19:05));
    }
}
