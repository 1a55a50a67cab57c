//! The after-call email to the business owner: subject, plain text and HTML, in the tenant's
//! language (Italian, French, English; anything else falls back to English).
//!
//! The owner reads it on a phone, so the gist goes first: what the caller wants, then the
//! details, then the transcript to check them against.
//!
//! Pure: it renders, the mailer sends. It must not trust its input: the summary comes from a
//! model and the transcript from a caller, so every such value is escaped in the HTML (the
//! template's name ends in `.html`, which turns minijinja's auto-escaping on) and stripped of
//! line breaks in the subject (a CR/LF there would be header injection).

use minijinja::value::Value;
use minijinja::{Environment, UndefinedBehavior, context};
use time::{Date, Weekday};

use super::call::{CallRecord, EndReason, Speaker, TranscriptTurn};
use super::summary::{
    Booking, CallSummary, Intent, Sentiment, format_duration, hhmm, language_name, local_time, offset_label, one_line,
    parse_date, parse_time,
};
use super::tenant::Tenant;

const TEMPLATE_NAME: &str = "call_email.html";
const TEMPLATE: &str = include_str!("templates/call_email.html");

/// The longest gist in a subject; mail apps on phones show about this much.
const MAX_GIST_CHARS: usize = 80;

/// Everything the email shows about one call.
#[derive(Debug, Clone, Copy)]
pub struct CallEmail<'a> {
    pub tenant_name: &'a str,
    /// The tenant's language code: labels and dates follow it.
    pub language: &'a str,
    /// Caller ID (Twilio `From`).
    pub caller: &'a str,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    /// Times are shown at this offset from UTC, labelled (`UTC`, `UTC+01:00`).
    pub utc_offset_minutes: i32,
    pub duration_ms: u64,
    pub end_reason: EndReason,
    pub summary: Option<&'a CallSummary>,
    /// Why there is no summary (the model stayed unavailable…), shown small under the note.
    pub summary_unavailable_reason: Option<&'a str>,
    pub transcript: &'a [TranscriptTurn],
}

impl<'a> CallEmail<'a> {
    /// The email for `call`, taken by `tenant`, with times in UTC.
    pub fn new(tenant: &'a Tenant, call: &'a CallRecord, summary: Option<&'a CallSummary>) -> Self {
        CallEmail {
            tenant_name: &tenant.name,
            language: &tenant.language,
            caller: &call.from,
            started_at_ms: call.started_at_ms,
            utc_offset_minutes: 0,
            duration_ms: call.duration_ms,
            end_reason: call.end_reason,
            summary,
            summary_unavailable_reason: None,
            transcript: &call.transcript,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    /// One line, no CR/LF.
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EmailRenderError {
    #[error("email template failed: {0}")]
    Template(String),
}

impl From<minijinja::Error> for EmailRenderError {
    fn from(e: minijinja::Error) -> Self {
        EmailRenderError::Template(format!("{e:#}"))
    }
}

pub fn render(ctx: &CallEmail) -> Result<RenderedEmail, EmailRenderError> {
    let t = labels(ctx.language);
    let view = View::build(ctx, t);
    let text = view.text(t);
    let html = view.html(t)?;
    Ok(RenderedEmail { subject: view.subject, text, html })
}

// ------------------------------------------------------------------------------------------
// Labels: a small table per language, not a framework.

struct Labels {
    /// `lang` attribute of the HTML.
    code: &'static str,
    /// Monday first.
    weekdays: [&'static str; 7],
    months: [&'static str; 12],
    /// Subject heads, by intent: booking, change, cancellation.
    booking_head: [&'static str; 3],
    /// "for 4", "per 4", "pour 4".
    party_prefix: &'static str,
    /// "at 20:00", "alle 20:00", "à 20h".
    time_prefix: &'static str,
    call_from: &'static str,
    unavailable_subject: &'static str,
    unavailable_note: &'static str,
    summary: &'static str,
    booking: &'static str,
    date: &'static str,
    time: &'static str,
    party: &'static str,
    name: &'static str,
    notes: &'static str,
    action_items: &'static str,
    key_points: &'static str,
    follow_up: &'static str,
    transcript: &'static str,
    caller: &'static str,
    agent: &'static str,
    cut_off: &'static str,
    no_transcript: &'static str,
    call_details: &'static str,
    number: &'static str,
    callback: &'static str,
    when: &'static str,
    duration: &'static str,
    ended: &'static str,
    intent: &'static str,
    mood: &'static str,
    spoken_language: &'static str,
    reason: &'static str,
    unknown_number: &'static str,
    footer: &'static str,
    /// By `Intent::ALL` order.
    intents: [&'static str; 8],
    /// By `Sentiment::ALL` order.
    sentiments: [&'static str; 3],
}

static EN: Labels = Labels {
    code: "en",
    weekdays: ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
    months: ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"],
    booking_head: ["Booking", "Booking change", "Cancellation"],
    party_prefix: "for",
    time_prefix: "at",
    call_from: "Call from",
    unavailable_subject: "(summary unavailable)",
    unavailable_note: "The automatic summary is not available for this call. The transcript is below.",
    summary: "Summary",
    booking: "Booking",
    date: "Date",
    time: "Time",
    party: "People",
    name: "Name",
    notes: "Notes",
    action_items: "To do",
    key_points: "Key points",
    follow_up: "Follow-up needed",
    transcript: "Transcript",
    caller: "Caller",
    agent: "Agent",
    cut_off: "cut off",
    no_transcript: "Nothing was said.",
    call_details: "Call details",
    number: "Number",
    callback: "Callback number",
    when: "When",
    duration: "Duration",
    ended: "End",
    intent: "Reason",
    mood: "Caller's mood",
    spoken_language: "Language spoken",
    reason: "Reason",
    unknown_number: "unknown number",
    footer: "Automatic summary of a call answered by the phone assistant. Check important details against the transcript.",
    intents: ["Booking", "Booking change", "Cancellation", "Question", "Order", "Complaint", "Unrelated", "Other"],
    sentiments: ["positive", "neutral", "negative"],
};

static IT: Labels = Labels {
    code: "it",
    weekdays: ["lun", "mar", "mer", "gio", "ven", "sab", "dom"],
    months: ["gen", "feb", "mar", "apr", "mag", "giu", "lug", "ago", "set", "ott", "nov", "dic"],
    booking_head: ["Prenotazione", "Modifica prenotazione", "Cancellazione"],
    party_prefix: "per",
    time_prefix: "alle",
    call_from: "Chiamata da",
    unavailable_subject: "(riepilogo non disponibile)",
    unavailable_note: "Il riepilogo automatico non è disponibile per questa chiamata. La trascrizione è qui sotto.",
    summary: "Riepilogo",
    booking: "Prenotazione",
    date: "Data",
    time: "Ora",
    party: "Persone",
    name: "Nome",
    notes: "Note",
    action_items: "Da fare",
    key_points: "Punti chiave",
    follow_up: "Da ricontattare",
    transcript: "Trascrizione",
    caller: "Cliente",
    agent: "Assistente",
    cut_off: "interrotto",
    no_transcript: "Non è stato detto nulla.",
    call_details: "Dettagli della chiamata",
    number: "Numero",
    callback: "Numero da richiamare",
    when: "Quando",
    duration: "Durata",
    ended: "Fine",
    intent: "Motivo",
    mood: "Umore del cliente",
    spoken_language: "Lingua parlata",
    reason: "Motivo",
    unknown_number: "numero sconosciuto",
    footer: "Riepilogo automatico di una chiamata gestita dall'assistente telefonico. Verifica i dettagli importanti nella trascrizione.",
    intents: [
        "Prenotazione",
        "Modifica prenotazione",
        "Cancellazione",
        "Domanda",
        "Ordine",
        "Reclamo",
        "Non pertinente",
        "Altro",
    ],
    sentiments: ["positivo", "neutro", "negativo"],
};

static FR: Labels = Labels {
    code: "fr",
    weekdays: ["lun.", "mar.", "mer.", "jeu.", "ven.", "sam.", "dim."],
    months: ["janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août", "sept.", "oct.", "nov.", "déc."],
    booking_head: ["Réservation", "Modification de réservation", "Annulation"],
    party_prefix: "pour",
    time_prefix: "à",
    call_from: "Appel de",
    unavailable_subject: "(résumé indisponible)",
    unavailable_note: "Le résumé automatique n'est pas disponible pour cet appel. La transcription est ci-dessous.",
    summary: "Résumé",
    booking: "Réservation",
    date: "Date",
    time: "Heure",
    party: "Personnes",
    name: "Nom",
    notes: "Remarques",
    action_items: "À faire",
    key_points: "Points clés",
    follow_up: "À rappeler",
    transcript: "Transcription",
    caller: "Client",
    agent: "Assistant",
    cut_off: "interrompu",
    no_transcript: "Rien n'a été dit.",
    call_details: "Détails de l'appel",
    number: "Numéro",
    callback: "Numéro de rappel",
    when: "Quand",
    duration: "Durée",
    ended: "Fin",
    intent: "Motif",
    mood: "Humeur du client",
    spoken_language: "Langue parlée",
    reason: "Raison",
    unknown_number: "numéro inconnu",
    footer: "Résumé automatique d'un appel pris par l'assistant téléphonique. Vérifiez les détails importants dans la transcription.",
    intents: [
        "Réservation",
        "Modification de réservation",
        "Annulation",
        "Question",
        "Commande",
        "Réclamation",
        "Sans rapport",
        "Autre",
    ],
    sentiments: ["positive", "neutre", "négative"],
};

fn labels(language: &str) -> &'static Labels {
    match language.split(['-', '_']).next().unwrap_or_default().to_ascii_lowercase().as_str() {
        "it" => &IT,
        "fr" => &FR,
        _ => &EN,
    }
}

impl Labels {
    fn intent(&self, i: Intent) -> &'static str {
        let idx = Intent::ALL.iter().position(|x| *x == i).unwrap_or(Intent::ALL.len() - 1);
        self.intents[idx]
    }

    fn sentiment(&self, s: Sentiment) -> &'static str {
        let idx = Sentiment::ALL.iter().position(|x| *x == s).unwrap_or(1);
        self.sentiments[idx]
    }

    fn end_reason(&self, r: EndReason) -> &'static str {
        use EndReason::*;
        match (self.code, r) {
            ("it", CallerHangup) => "Il cliente ha riagganciato",
            ("it", StreamClosed) => "Connessione chiusa",
            ("it", UpstreamFailed) => "Assistente non disponibile (problema tecnico)",
            ("it", Shutdown) => "Servizio riavviato durante la chiamata",
            ("it", ProtocolError) => "Errore tecnico",
            ("it", IdleCaller) => "Il cliente è rimasto in silenzio",
            ("it", AgentEnded) => "L'assistente ha chiuso la chiamata",
            ("it", Transferred) => "Trasferita a un collega",
            ("fr", CallerHangup) => "Le client a raccroché",
            ("fr", StreamClosed) => "Connexion fermée",
            ("fr", UpstreamFailed) => "Assistant indisponible (problème technique)",
            ("fr", Shutdown) => "Service redémarré pendant l'appel",
            ("fr", ProtocolError) => "Erreur technique",
            ("fr", IdleCaller) => "Le client est resté silencieux",
            ("fr", AgentEnded) => "L'assistant a mis fin à l'appel",
            ("fr", Transferred) => "Transféré à un collègue",
            (_, CallerHangup) => "Caller hung up",
            (_, StreamClosed) => "Connection closed",
            (_, UpstreamFailed) => "Assistant unavailable (technical problem)",
            (_, Shutdown) => "Service restarted during the call",
            (_, ProtocolError) => "Technical error",
            (_, IdleCaller) => "Caller stayed silent",
            (_, AgentEnded) => "The assistant ended the call",
            (_, Transferred) => "Transferred to a person",
        }
    }

    /// `Sat 28 Nov`, `sab 28 nov`, `sam. 28 nov.`
    fn short_date(&self, d: Date) -> String {
        format!("{} {} {}", self.weekday(d.weekday()), d.day(), self.months[usize::from(u8::from(d.month())) - 1])
    }

    fn long_date(&self, d: Date) -> String {
        format!("{} {}", self.short_date(d), d.year())
    }

    fn weekday(&self, w: Weekday) -> &'static str {
        self.weekdays[usize::from(w.number_days_from_monday())]
    }

    /// `20:00`; French writes `20h` / `20h30`.
    fn clock(&self, hour: u8, minute: u8) -> String {
        match (self.code, minute) {
            ("fr", 0) => format!("{hour}h"),
            ("fr", m) => format!("{hour}h{m:02}"),
            _ => hhmm(hour, minute),
        }
    }
}

// ------------------------------------------------------------------------------------------
// The view: every string shown, computed once for both parts.

struct Row {
    label: &'static str,
    value: String,
}

struct TurnView {
    at: String,
    speaker: &'static str,
    agent: bool,
    text: String,
    cut: bool,
}

struct BookingView {
    title: &'static str,
    rows: Vec<Row>,
}

struct View {
    subject: String,
    gist: String,
    tenant: String,
    caller_line: String,
    /// `Some("")` when a follow-up is needed without a stated reason.
    follow_up: Option<String>,
    summary: Option<String>,
    booking: Option<BookingView>,
    action_items: Vec<String>,
    key_points: Vec<String>,
    unavailable: Option<&'static str>,
    unavailable_reason: Option<String>,
    transcript: Vec<TurnView>,
    details: Vec<Row>,
}

impl View {
    fn build(ctx: &CallEmail, t: &'static Labels) -> View {
        let tenant = one_line(ctx.tenant_name);
        let number = Some(one_line(ctx.caller)).filter(|n| !n.is_empty());
        let s = ctx.summary;
        let caller_name = s.and_then(|s| s.caller_name.as_deref()).map(one_line).filter(|n| !n.is_empty());
        // Who called, as short as possible for the subject: the name if known, else the number.
        let who = caller_name.clone().or_else(|| number.clone()).unwrap_or_else(|| t.unknown_number.to_string());
        let caller_line = match (&caller_name, &number) {
            (Some(name), Some(number)) => format!("{name} · {number}"),
            _ => who.clone(),
        };

        let gist = match s {
            Some(s) => gist(s, t),
            None => format!("{} {} {}", t.call_from, shorten(&who, 40), t.unavailable_subject),
        };
        // one_line again over the whole: whatever a value held, the subject stays one header line.
        let subject = one_line(&match s {
            Some(_) => format!("{}: {gist} – {}", shorten(&tenant, 60), shorten(&who, 40)),
            None => format!("{}: {gist}", shorten(&tenant, 60)),
        });

        let start = local_time(ctx.started_at_ms, ctx.utc_offset_minutes);
        let mut details = vec![Row { label: t.number, value: number.unwrap_or_else(|| t.unknown_number.into()) }];
        if let Some(p) = s.and_then(|s| s.caller_phone.as_deref()) {
            details.push(Row { label: t.callback, value: p.to_string() });
        }
        details.push(Row {
            label: t.when,
            value: format!(
                "{}, {} {}",
                t.long_date(start.date()),
                t.clock(start.hour(), start.minute()),
                offset_label(ctx.utc_offset_minutes)
            ),
        });
        details.push(Row { label: t.duration, value: format_duration(ctx.duration_ms) });
        details.push(Row { label: t.ended, value: t.end_reason(ctx.end_reason).into() });
        if let Some(s) = s {
            details.push(Row { label: t.intent, value: t.intent(s.intent).into() });
            details.push(Row { label: t.mood, value: t.sentiment(s.sentiment).into() });
            if !same_language(&s.language, ctx.language) {
                let name = language_name(&s.language).map(str::to_string).unwrap_or_else(|| s.language.clone());
                details.push(Row { label: t.spoken_language, value: name });
            }
        }

        let transcript = ctx
            .transcript
            .iter()
            .filter(|turn| !turn.text.trim().is_empty() || is_cut(turn))
            .map(|turn| TurnView {
                at: mm_ss(turn.start_ms),
                speaker: if turn.speaker == Speaker::Agent { t.agent } else { t.caller },
                agent: turn.speaker == Speaker::Agent,
                text: one_line(&turn.text),
                cut: is_cut(turn),
            })
            .collect();

        View {
            subject,
            gist,
            tenant,
            caller_line,
            follow_up: s
                .filter(|s| s.follow_up_needed)
                .map(|s| s.follow_up_reason.as_deref().map(one_line).unwrap_or_default()),
            summary: s.map(|s| s.summary.clone()),
            booking: s.and_then(|s| s.booking.as_ref().map(|b| booking_view(b, s.intent, t))),
            action_items: s.map(|s| s.action_items.clone()).unwrap_or_default(),
            key_points: s.map(|s| s.key_points.clone()).unwrap_or_default(),
            unavailable: s.is_none().then_some(t.unavailable_note),
            unavailable_reason: if s.is_none() {
                ctx.summary_unavailable_reason.map(one_line).filter(|r| !r.is_empty())
            } else {
                None
            },
            transcript,
            details,
        }
    }

    fn text(&self, t: &Labels) -> String {
        fn section(out: &mut String, title: &str) {
            out.push('\n');
            out.push_str(&title.to_uppercase());
            out.push('\n');
        }
        let mut out = String::with_capacity(2_048);
        out.push_str(&format!("{}\n{}\n{}\n", self.tenant, self.gist, self.caller_line));
        match self.follow_up.as_deref() {
            None => {}
            Some("") => out.push_str(&format!("\n>> {}\n", t.follow_up)),
            Some(reason) => out.push_str(&format!("\n>> {}: {reason}\n", t.follow_up)),
        }
        if let Some(summary) = &self.summary {
            section(&mut out, t.summary);
            out.push_str(summary);
            out.push('\n');
        }
        if let Some(b) = &self.booking {
            section(&mut out, b.title);
            for row in &b.rows {
                out.push_str(&format!("{}: {}\n", row.label, row.value));
            }
        }
        for (title, items) in [(t.action_items, &self.action_items), (t.key_points, &self.key_points)] {
            if !items.is_empty() {
                section(&mut out, title);
                for item in items {
                    out.push_str(&format!("- {item}\n"));
                }
            }
        }
        if let Some(note) = self.unavailable {
            out.push('\n');
            out.push_str(note);
            out.push('\n');
            if let Some(reason) = &self.unavailable_reason {
                out.push_str(&format!("{}: {reason}\n", t.reason));
            }
        }
        section(&mut out, t.transcript);
        if self.transcript.is_empty() {
            out.push_str(t.no_transcript);
            out.push('\n');
        }
        for turn in &self.transcript {
            let sep = if turn.text.is_empty() { "" } else { " " };
            let cut = if turn.cut { format!("{sep}({})", t.cut_off) } else { String::new() };
            out.push_str(&format!("[{}] {}: {}{cut}\n", turn.at, turn.speaker, turn.text));
        }
        section(&mut out, t.call_details);
        for row in &self.details {
            out.push_str(&format!("{}: {}\n", row.label, row.value));
        }
        out.push('\n');
        out.push_str(t.footer);
        out.push('\n');
        out
    }

    fn html(&self, t: &'static Labels) -> Result<String, EmailRenderError> {
        let mut env = Environment::new();
        // A typo in the template must fail the tests, not render as an empty string.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_syntax(minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build()?);
        env.add_template(TEMPLATE_NAME, TEMPLATE)?;
        let rows = |rows: &[Row]| -> Value {
            rows.iter().map(|r| context! { label => r.label, value => r.value.as_str() }).collect()
        };
        let ctx = context! {
            lang => t.code,
            subject => self.subject.as_str(),
            gist => self.gist.as_str(),
            tenant => self.tenant.as_str(),
            caller_line => self.caller_line.as_str(),
            follow_up => self.follow_up.as_deref(),
            summary => self.summary.as_deref(),
            booking => self.booking.as_ref().map(|b| context! { title => b.title, rows => rows(&b.rows) }),
            action_items => self.action_items.clone(),
            key_points => self.key_points.clone(),
            unavailable => self.unavailable,
            unavailable_reason => self.unavailable_reason.as_deref(),
            transcript => self.transcript.iter().map(|turn| context! {
                at => turn.at.as_str(),
                speaker => turn.speaker,
                agent => turn.agent,
                text => turn.text.as_str(),
                cut => turn.cut,
            }).collect::<Vec<_>>(),
            details => rows(&self.details),
            t => context! {
                follow_up => t.follow_up,
                summary => t.summary,
                action_items => t.action_items,
                key_points => t.key_points,
                reason => t.reason,
                transcript => t.transcript,
                cut_off => t.cut_off,
                no_transcript => t.no_transcript,
                call_details => t.call_details,
                footer => t.footer,
            },
        };
        Ok(env.get_template(TEMPLATE_NAME)?.render(ctx)?)
    }
}

/// An agent turn the caller cut off (a caller turn is never "cut off").
fn is_cut(turn: &TranscriptTurn) -> bool {
    turn.speaker == Speaker::Agent && turn.interrupted
}

fn booking_view(b: &Booking, intent: Intent, t: &'static Labels) -> BookingView {
    let mut rows = Vec::new();
    if let Some(d) = b.date.as_deref() {
        rows.push(Row { label: t.date, value: parse_date(d).map(|d| t.long_date(d)).unwrap_or_else(|| d.into()) });
    }
    if let Some(time) = b.time.as_deref() {
        rows.push(Row {
            label: t.time,
            value: parse_time(time).map(|(h, m)| t.clock(h, m)).unwrap_or_else(|| time.into()),
        });
    }
    if let Some(n) = b.party_size {
        rows.push(Row { label: t.party, value: n.to_string() });
    }
    if let Some(name) = &b.name {
        rows.push(Row { label: t.name, value: name.clone() });
    }
    if let Some(notes) = &b.notes {
        rows.push(Row { label: t.notes, value: notes.clone() });
    }
    let title = if intent.is_about_booking() { t.intent(intent) } else { t.booking };
    BookingView { title, rows }
}

/// The subject's gist: the booking in numbers when the call was about one and gave any, else
/// the model's few words (or the summary's first sentence), shortened.
fn gist(s: &CallSummary, t: &Labels) -> String {
    let has_numbers = |b: &&Booking| b.party_size.is_some() || b.time.is_some() || b.date.is_some();
    if let Some(b) = s.booking.as_ref().filter(|_| s.intent.is_about_booking()).filter(has_numbers) {
        let head = match s.intent {
            Intent::BookingChange => t.booking_head[1],
            Intent::Cancellation => t.booking_head[2],
            _ => t.booking_head[0],
        };
        let mut out = head.to_string();
        if let Some(n) = b.party_size {
            out.push_str(&format!(" {} {n}", t.party_prefix));
        }
        if let Some((h, m)) = b.time.as_deref().and_then(parse_time) {
            out.push_str(&format!(" {} {}", t.time_prefix, t.clock(h, m)));
        }
        if let Some(d) = b.date.as_deref().and_then(parse_date) {
            out.push_str(&format!(", {}", t.short_date(d)));
        }
        return out;
    }
    let detail = one_line(&s.intent_detail);
    let text = if detail.is_empty() { first_sentence(&one_line(&s.summary)) } else { detail };
    if text.is_empty() { t.intent(s.intent).to_string() } else { shorten(&text, MAX_GIST_CHARS) }
}

fn first_sentence(s: &str) -> String {
    let end = s
        .char_indices()
        .find(|&(i, c)| matches!(c, '.' | '!' | '?') && s[i + c.len_utf8()..].starts_with(' '))
        .map(|(i, c)| i + c.len_utf8());
    s[..end.unwrap_or(s.len())].to_string()
}

/// At most `max` characters, cut at a word boundary when there is one in the second half,
/// with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    // Room for the ellipsis.
    let hard: String = s.chars().take(max.saturating_sub(1)).collect();
    let cut = match hard.rfind(' ') {
        Some(i) if hard[..i].chars().count() >= max / 2 => &hard[..i],
        _ => hard.as_str(),
    };
    format!("{}…", cut.trim_end_matches([' ', ',', ';', ':', '-', '–']))
}

fn same_language(a: &str, b: &str) -> bool {
    let primary = |s: &str| s.split(['-', '_']).next().unwrap_or_default().to_ascii_lowercase();
    primary(a) == primary(b)
}

/// `mm:ss` from the start of the call (`h:mm:ss` past an hour).
fn mm_ss(ms: u64) -> String {
    let s = ms / 1_000;
    if s >= 3_600 {
        format!("{}:{:02}:{:02}", s / 3_600, (s % 3_600) / 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(speaker: Speaker, start_ms: u64, text: &str, interrupted: bool) -> TranscriptTurn {
        TranscriptTurn {
            speaker,
            start_ms,
            text: text.into(),
            item_id: None,
            interrupted,
            heard_ms: None,
            generated_ms: None,
            generated_text: None,
        }
    }

    fn transcript() -> Vec<TranscriptTurn> {
        vec![
            turn(Speaker::Agent, 0, "Trattoria Da Mario, buonasera! Come posso", true),
            turn(Speaker::Caller, 1_800, "Vorrei prenotare un tavolo per quattro sabato alle otto.", false),
            turn(Speaker::Agent, 5_200, "Certo, a che nome?", false),
            turn(Speaker::Caller, 7_900, "Rossi.", false),
        ]
    }

    fn booking_summary(language: &str) -> CallSummary {
        CallSummary {
            language: language.into(),
            intent: Intent::Booking,
            intent_detail: "Tavolo per 4 sabato".into(),
            caller_name: Some("Marco Rossi".into()),
            caller_phone: None,
            booking: Some(Booking {
                date: Some("2026-11-28".into()),
                time: Some("20:00".into()),
                party_size: Some(4),
                name: Some("Rossi".into()),
                notes: Some("Un seggiolone".into()),
            }),
            key_points: vec!["Allergia alle noci".into()],
            action_items: vec!["Confermare la prenotazione".into()],
            follow_up_needed: true,
            follow_up_reason: Some("Prenotazione da confermare.".into()),
            sentiment: Sentiment::Positive,
            summary: "Marco Rossi ha chiesto un tavolo per 4 sabato alle 20:00. Un ospite è allergico alle noci."
                .into(),
        }
    }

    fn question_summary() -> CallSummary {
        CallSummary {
            language: "en".into(),
            intent: Intent::Question,
            intent_detail:
                "Asked whether the terrace is open on Sunday evenings in winter and if dogs are welcome there".into(),
            caller_name: None,
            caller_phone: Some("+44 20 7946 0000".into()),
            booking: None,
            key_points: vec![],
            action_items: vec![],
            follow_up_needed: false,
            follow_up_reason: None,
            sentiment: Sentiment::Neutral,
            summary: "A caller asked about the terrace. The agent did not know.".into(),
        }
    }

    fn email<'a>(
        language: &'a str,
        summary: Option<&'a CallSummary>,
        transcript: &'a [TranscriptTurn],
    ) -> CallEmail<'a> {
        CallEmail {
            tenant_name: "Trattoria Da Mario",
            language,
            caller: "+393331234567",
            // Sat 21 Nov 2026 20:03:00 UTC
            started_at_ms: 1_795_291_380_000,
            utc_offset_minutes: 0,
            duration_ms: 192_400,
            end_reason: EndReason::CallerHangup,
            summary,
            summary_unavailable_reason: None,
            transcript,
        }
    }

    #[test]
    fn booking_subjects_in_italian_english_and_french() {
        let turns = transcript();
        let s = booking_summary("it");
        let it = render(&email("it", Some(&s), &turns)).unwrap();
        assert_eq!(it.subject, "Trattoria Da Mario: Prenotazione per 4 alle 20:00, sab 28 nov – Marco Rossi");
        let en = render(&email("en", Some(&s), &turns)).unwrap();
        assert_eq!(en.subject, "Trattoria Da Mario: Booking for 4 at 20:00, Sat 28 Nov – Marco Rossi");
        let fr = render(&email("fr", Some(&s), &turns)).unwrap();
        assert_eq!(fr.subject, "Trattoria Da Mario: Réservation pour 4 à 20h, sam. 28 nov. – Marco Rossi");
        // Unknown languages fall back to English.
        assert_eq!(render(&email("sw", Some(&s), &turns)).unwrap().subject, en.subject);

        let mut cancel = booking_summary("en");
        cancel.intent = Intent::Cancellation;
        cancel.caller_name = None;
        cancel.booking.as_mut().unwrap().party_size = None;
        cancel.booking.as_mut().unwrap().time = Some("19:30".into());
        let en = render(&email("en", Some(&cancel), &turns)).unwrap();
        assert_eq!(en.subject, "Trattoria Da Mario: Cancellation at 19:30, Sat 28 Nov – +393331234567");

        // A booking without any number says it in words instead.
        let mut vague = booking_summary("en");
        vague.booking = Some(Booking { date: None, time: None, party_size: None, name: None, notes: None });
        vague.intent_detail = "Wants a table next week".into();
        let en = render(&email("en", Some(&vague), &turns)).unwrap();
        assert_eq!(en.subject, "Trattoria Da Mario: Wants a table next week – Marco Rossi");
    }

    #[test]
    fn other_subjects_use_the_detail_shortened_on_a_word() {
        let turns = transcript();
        let s = question_summary();
        let en = render(&email("en", Some(&s), &turns)).unwrap();
        let gist = en.subject.strip_prefix("Trattoria Da Mario: ").unwrap().strip_suffix(" – +393331234567").unwrap();
        assert_eq!(gist, "Asked whether the terrace is open on Sunday evenings in winter and if dogs are…");
        assert!(gist.chars().count() <= MAX_GIST_CHARS);

        // No detail: the summary's first sentence.
        let mut s = question_summary();
        s.intent_detail = String::new();
        let it = render(&email("it", Some(&s), &turns)).unwrap();
        assert_eq!(it.subject, "Trattoria Da Mario: A caller asked about the terrace. – +393331234567");

        // A booking object on a question does not make it a booking subject.
        let mut s = question_summary();
        s.booking = booking_summary("en").booking;
        s.intent_detail = "Parking".into();
        assert_eq!(
            render(&email("en", Some(&s), &turns)).unwrap().subject,
            "Trattoria Da Mario: Parking – +393331234567"
        );
    }

    #[test]
    fn unavailable_subjects_and_body() {
        let turns = transcript();
        let mut ctx = email("it", None, &turns);
        ctx.summary_unavailable_reason = Some("OpenAI rate limited after 5 attempts");
        let it = render(&ctx).unwrap();
        assert_eq!(it.subject, "Trattoria Da Mario: Chiamata da +393331234567 (riepilogo non disponibile)");
        assert!(it.text.contains("Il riepilogo automatico non è disponibile"));
        assert!(it.text.contains("Motivo: OpenAI rate limited after 5 attempts"));
        assert!(it.text.contains("[00:07] Cliente: Rossi."), "{}", it.text);
        assert!(it.html.contains("Il riepilogo automatico non è disponibile"));
        assert!(it.html.contains("Rossi."), "the transcript is still there");
        assert!(!it.html.contains(">Riepilogo<"), "no summary section");
        let en = render(&email("en", None, &turns)).unwrap();
        assert_eq!(en.subject, "Trattoria Da Mario: Call from +393331234567 (summary unavailable)");
        assert_balanced(&en.html);
        let nobody = CallEmail { caller: "", ..email("en", None, &[]) };
        let r = render(&nobody).unwrap();
        assert_eq!(r.subject, "Trattoria Da Mario: Call from unknown number (summary unavailable)");
        assert!(r.text.contains("Nothing was said."));
        assert!(r.html.contains("Nothing was said."));
    }

    #[test]
    fn text_part_has_everything_in_order() {
        let turns = transcript();
        let s = booking_summary("it");
        let r = render(&email("en", Some(&s), &turns)).unwrap();
        let text = &r.text;
        let expect_in_order = [
            "Trattoria Da Mario\nBooking for 4 at 20:00, Sat 28 Nov\nMarco Rossi · +393331234567\n",
            ">> Follow-up needed: Prenotazione da confermare.\n",
            "SUMMARY\nMarco Rossi ha chiesto",
            "BOOKING\nDate: Sat 28 Nov 2026\nTime: 20:00\nPeople: 4\nName: Rossi\nNotes: Un seggiolone\n",
            "TO DO\n- Confermare la prenotazione\n",
            "KEY POINTS\n- Allergia alle noci\n",
            "TRANSCRIPT\n[00:00] Agent: Trattoria Da Mario, buonasera! Come posso (cut off)\n[00:01] Caller: Vorrei",
            "[00:07] Caller: Rossi.\n",
            "CALL DETAILS\nNumber: +393331234567\nWhen: Sat 21 Nov 2026, 20:03 UTC\nDuration: 3 min 12 s\nEnd: Caller hung up\nReason: Booking\nCaller's mood: positive\nLanguage spoken: Italian\n",
        ];
        let mut at = 0;
        for piece in expect_in_order {
            let found = text[at..].find(piece).unwrap_or_else(|| panic!("missing or out of order: {piece:?}\n{text}"));
            at += found + piece.len();
        }
        assert!(!r.subject.contains('\n'));
    }

    #[test]
    fn times_follow_the_offset() {
        let turns = transcript();
        let s = booking_summary("fr");
        let mut ctx = email("fr", Some(&s), &turns);
        ctx.utc_offset_minutes = 60;
        let r = render(&ctx).unwrap();
        assert!(r.text.contains("Quand: sam. 21 nov. 2026, 21h03 UTC+01:00"), "{}", r.text);
        assert!(!r.text.contains("Langue parlée"), "the caller spoke the tenant's language");
    }

    #[test]
    fn html_has_the_sections_and_balanced_tags() {
        let turns = transcript();
        let s = booking_summary("it");
        let r = render(&email("it", Some(&s), &turns)).unwrap();
        let html = &r.html;
        assert!(html.starts_with("<!DOCTYPE html>"), "{}", &html[..80]);
        assert!(html.contains("<html lang=\"it\">"));
        assert!(html.contains("name=\"viewport\""));
        assert!(!html.contains("<style"), "inline CSS only");
        for needle in [
            "Prenotazione per 4 alle 20:00, sab 28 nov",
            "Marco Rossi · +393331234567",
            "Da ricontattare",
            "Prenotazione da confermare.",
            "sab 28 nov 2026",
            "Un seggiolone",
            "Confermare la prenotazione",
            "Allergia alle noci",
            "(interrotto)",
            "Vorrei prenotare un tavolo",
            "Il cliente ha riagganciato",
        ] {
            assert!(html.contains(needle), "missing {needle:?}");
        }
        assert_balanced(html);
    }

    #[test]
    fn caller_and_model_values_are_escaped() {
        const SCRIPT: &str = "<script>alert(1)</script>";
        const IMG: &str = "\"><img src=x onerror=alert(1)>";
        let turns = vec![
            turn(Speaker::Caller, 0, &format!("Hello {SCRIPT} & bye"), false),
            turn(Speaker::Agent, 1_000, IMG, true),
        ];
        let mut s = booking_summary("en");
        s.summary = format!("Summary {SCRIPT} with Fish & Chips");
        s.caller_name = Some(format!("Eve{IMG}"));
        s.intent_detail = format!("{SCRIPT}\r\nBcc: victim@example.com");
        s.booking.as_mut().unwrap().notes = Some(format!("Notes {IMG} & {SCRIPT}"));
        s.key_points = vec![SCRIPT.into()];
        s.action_items = vec![IMG.into()];
        s.follow_up_reason = Some(SCRIPT.into());
        let mut ctx = email("en", Some(&s), &turns);
        ctx.tenant_name = "Bar & Grill <b>";
        ctx.caller = IMG;
        let r = render(&ctx).unwrap();

        for raw in ["<script", "<img", "onerror=alert(1)>", "Fish & Chips", "Bar & Grill", "<b>"] {
            assert!(!r.html.contains(raw), "raw {raw:?} in the HTML");
        }
        for escaped in [
            "&lt;script&gt;alert(1)&lt;&#x2f;script&gt;",
            "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;",
            "Fish &amp; Chips",
            "Bar &amp; Grill &lt;b&gt;",
            "Eve&quot;&gt;&lt;img",
            "Notes &quot;&gt;&lt;img",
            "Hello &lt;script&gt;",
        ] {
            assert!(r.html.contains(escaped), "missing escaped {escaped:?}");
        }
        assert_balanced(&r.html);

        // The subject is one line whatever the values hold: no header injection.
        let intent_subject = {
            let mut q = s.clone();
            q.booking = None;
            q.intent = Intent::Other;
            render(&CallEmail { summary: Some(&q), ..ctx }).unwrap().subject
        };
        for subject in [&r.subject, &intent_subject] {
            assert!(!subject.contains(['\r', '\n']), "{subject:?}");
        }
        assert!(intent_subject.contains("Bcc: victim@example.com"), "kept, but on the same line: {intent_subject}");
    }

    /// Every opened tag of the layout is closed, in order (void elements aside).
    fn assert_balanced(html: &str) {
        const VOID: &[&str] = &["meta", "br", "img", "hr", "link", "!doctype"];
        let mut stack: Vec<String> = Vec::new();
        let mut rest = html;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            let end = rest.find('>').expect("unterminated tag");
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().unwrap_or_else(|| panic!("</{name}> closes nothing"));
                assert_eq!(open, name.trim().to_ascii_lowercase(), "mismatched close");
            } else {
                let name = tag.split(|c: char| c.is_whitespace() || c == '/').next().unwrap().to_ascii_lowercase();
                if !VOID.contains(&name.as_str()) && !tag.ends_with('/') {
                    stack.push(name);
                }
            }
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        for tag in ["html", "head", "body", "table", "tr", "td", "ul", "li"] {
            let opened = html.matches(&format!("<{tag}>")).count() + html.matches(&format!("<{tag} ")).count();
            assert_eq!(opened, html.matches(&format!("</{tag}>")).count(), "<{tag}>");
        }
    }

    #[test]
    fn shortening_and_sentences() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("one two three four", 10), "one two…");
        assert_eq!(shorten("abcdefghijklmnop", 10), "abcdefghi…");
        assert_eq!(first_sentence("Hi there. Bye."), "Hi there.");
        assert_eq!(first_sentence("No end"), "No end");
        assert_eq!(first_sentence("Version 2.5 is out. Yes"), "Version 2.5 is out.");
        assert_eq!(mm_ss(3_723_000), "1:02:03");
    }
}
