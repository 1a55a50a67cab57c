//! TwiML documents we answer the voice webhook with (protocols.md A.2). Every value is
//! XML-escaped; a malformed document makes Twilio fail the call (error 12100).

const DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// `<Connect><Stream url>` with one `<Parameter>` per pair (delivered verbatim in
/// `start.customParameters`), then `<Hangup/>`, which Twilio runs once our server closes the
/// media WebSocket.
pub fn connect_stream(stream_url: &str, params: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(160 + params.len() * 48);
    out.push_str(DECLARATION);
    out.push_str(r#"<Response><Connect><Stream url=""#);
    push_escaped(&mut out, stream_url);
    out.push_str(r#"">"#);
    for (name, value) in params {
        out.push_str(r#"<Parameter name=""#);
        push_escaped(&mut out, name);
        out.push_str(r#"" value=""#);
        push_escaped(&mut out, value);
        out.push_str(r#""/>"#);
    }
    out.push_str("</Stream></Connect><Hangup/></Response>");
    out
}

/// `<Say language>text</Say><Hangup/>`. `language` may be short (`it`); it is mapped to the
/// locale Twilio's `<Say>` expects (`it-IT`), see [`say_language`].
pub fn say_and_hangup(text: &str, language: &str) -> String {
    let mut out = String::with_capacity(128 + text.len());
    out.push_str(DECLARATION);
    out.push_str(r#"<Response><Say language=""#);
    push_escaped(&mut out, say_language(language));
    out.push_str(r#"">"#);
    push_escaped(&mut out, text);
    out.push_str("</Say><Hangup/></Response>");
    out
}

/// Transfer to a human: `[<Say language>text</Say>]<Dial [callerId]><Number>number</Number></Dial>`
/// (protocols.md A.2.2). `say_first` is `(text, language)`, spoken before dialing; the
/// language is mapped like [`say_and_hangup`]'s (see [`say_language`]). Without `action`,
/// Twilio hangs up once the dialed party does, which is what a transfer wants.
pub fn dial(number: &str, caller_id: Option<&str>, say_first: Option<(&str, &str)>) -> String {
    let mut out = String::with_capacity(160 + number.len() + say_first.map_or(0, |(t, _)| t.len()));
    out.push_str(DECLARATION);
    out.push_str("<Response>");
    if let Some((text, language)) = say_first {
        out.push_str(r#"<Say language=""#);
        push_escaped(&mut out, say_language(language));
        out.push_str(r#"">"#);
        push_escaped(&mut out, text);
        out.push_str("</Say>");
    }
    out.push_str("<Dial");
    if let Some(caller_id) = caller_id {
        out.push_str(r#" callerId=""#);
        push_escaped(&mut out, caller_id);
        out.push('"');
    }
    out.push_str("><Number>");
    push_escaped(&mut out, number);
    out.push_str("</Number></Dial></Response>");
    out
}

/// Twilio `<Say>` locale for a short language code (`it` → `it-IT`, `fr` → `fr-FR`, `en` →
/// `en-US`, `de` → `de-DE`, `es` → `es-ES`, case-insensitive); anything else (including a code
/// that already has a region) is passed through unchanged.
pub fn say_language(language: &str) -> &str {
    match language.to_ascii_lowercase().as_str() {
        "it" => "it-IT",
        "fr" => "fr-FR",
        "en" => "en-US",
        "de" => "de-DE",
        "es" => "es-ES",
        _ => language,
    }
}

/// What a caller hears when the dialed number belongs to no tenant (and there is no fallback),
/// in `language` (`it`, `fr`, otherwise English; a region such as `fr-FR` is ignored).
///
/// Returns a `&'static str` (rather than an owned `String`) so it can be handed straight to
/// [`say_and_hangup`].
pub fn unknown_number_apology(language: &str) -> &'static str {
    let primary = language.split(['-', '_']).next().unwrap_or_default();
    match primary.to_ascii_lowercase().as_str() {
        "it" => "Siamo spiacenti, il numero che ha chiamato non è attivo. Arrivederci.",
        "fr" => "Nous sommes désolés, le numéro que vous avez composé n'est pas en service. Au revoir.",
        _ => "We're sorry, the number you have dialed is not in service. Goodbye.",
    }
}

/// Escapes `s` for an XML attribute value or text node: `& < > " '` become entities, tab/CR/LF
/// become character references (so attribute-value normalisation cannot turn them into spaces),
/// and characters XML 1.0 cannot represent at all (other C0 controls, U+FFFE, U+FFFF) are dropped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s);
    out
}

fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => {}
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

    #[test]
    fn connect_stream_golden() {
        let got = connect_stream(
            "wss://agent.example.com/twilio/media",
            &[("tenant", "trattoria-mario"), ("from", "+15551234567")],
        );
        assert_eq!(
            got,
            format!(
                "{DECL}<Response><Connect><Stream url=\"wss://agent.example.com/twilio/media\">\
                 <Parameter name=\"tenant\" value=\"trattoria-mario\"/>\
                 <Parameter name=\"from\" value=\"+15551234567\"/>\
                 </Stream></Connect><Hangup/></Response>"
            )
        );
    }

    #[test]
    fn connect_stream_without_parameters() {
        assert_eq!(
            connect_stream("wss://h/m", &[]),
            format!("{DECL}<Response><Connect><Stream url=\"wss://h/m\"></Stream></Connect><Hangup/></Response>")
        );
    }

    #[test]
    fn connect_stream_escapes_hostile_values() {
        let got = connect_stream("wss://h/m?a=1&b=\"2\"", &[("n\"&<>'", "v\"&<>'"), ("from", "\"/><Hangup/><x a=\"")]);
        assert_eq!(
            got,
            format!(
                "{DECL}<Response><Connect><Stream url=\"wss://h/m?a=1&amp;b=&quot;2&quot;\">\
                 <Parameter name=\"n&quot;&amp;&lt;&gt;&apos;\" value=\"v&quot;&amp;&lt;&gt;&apos;\"/>\
                 <Parameter name=\"from\" value=\"&quot;/&gt;&lt;Hangup/&gt;&lt;x a=&quot;\"/>\
                 </Stream></Connect><Hangup/></Response>"
            )
        );
    }

    #[test]
    fn say_and_hangup_golden() {
        assert_eq!(
            say_and_hangup("We are experiencing problems. Please call again later.", "en"),
            format!(
                "{DECL}<Response><Say language=\"en-US\">We are experiencing problems. \
                 Please call again later.</Say><Hangup/></Response>"
            )
        );
    }

    #[test]
    fn say_and_hangup_escapes_text_and_language() {
        assert_eq!(
            say_and_hangup("Tom & Jerry's <b>\"bar\"</b>", "x\"&<>'"),
            format!(
                "{DECL}<Response><Say language=\"x&quot;&amp;&lt;&gt;&apos;\">\
                 Tom &amp; Jerry&apos;s &lt;b&gt;&quot;bar&quot;&lt;/b&gt;</Say><Hangup/></Response>"
            )
        );
    }

    #[test]
    fn dial_golden() {
        assert_eq!(
            dial("+390212345678", Some("+390298765432"), Some(("Ti passo un collega.", "it"))),
            format!(
                "{DECL}<Response><Say language=\"it-IT\">Ti passo un collega.</Say>\
                 <Dial callerId=\"+390298765432\"><Number>+390212345678</Number></Dial></Response>"
            )
        );
    }

    #[test]
    fn dial_without_options() {
        assert_eq!(
            dial("+15557654321", None, None),
            format!("{DECL}<Response><Dial><Number>+15557654321</Number></Dial></Response>")
        );
    }

    #[test]
    fn dial_escapes_hostile_values() {
        let got = dial(
            "+39</Number><Number>+1900",
            Some("\"><Hangup/><x y=\"&"),
            Some(("Tom & Jerry's <Hangup/>\nline two\r", "it\" voice=\"x")),
        );
        assert_eq!(
            got,
            format!(
                "{DECL}<Response><Say language=\"it&quot; voice=&quot;x\">\
                 Tom &amp; Jerry&apos;s &lt;Hangup/&gt;&#10;line two&#13;</Say>\
                 <Dial callerId=\"&quot;&gt;&lt;Hangup/&gt;&lt;x y=&quot;&amp;\">\
                 <Number>+39&lt;/Number&gt;&lt;Number&gt;+1900</Number></Dial></Response>"
            )
        );
        // Structure is intact: exactly one of each element we emit, none injected.
        for tag in ["<Say ", "<Dial", "<Number>", "</Number>", "</Dial>"] {
            assert_eq!(got.matches(tag).count(), 1, "{tag} in {got}");
        }
        assert!(!got.contains("<Hangup"));
    }

    #[test]
    fn language_mapping() {
        assert_eq!(say_language("it"), "it-IT");
        assert_eq!(say_language("fr"), "fr-FR");
        assert_eq!(say_language("en"), "en-US");
        assert_eq!(say_language("de"), "de-DE");
        assert_eq!(say_language("es"), "es-ES");
        assert_eq!(say_language("IT"), "it-IT");
        assert_eq!(say_language("en-GB"), "en-GB");
        assert_eq!(say_language("pt-BR"), "pt-BR");
        assert_eq!(say_language("nl"), "nl");
    }

    #[test]
    fn apology_in_the_callers_language() {
        assert!(unknown_number_apology("it").contains("non è attivo"));
        assert!(unknown_number_apology("it-IT").contains("non è attivo"));
        assert!(unknown_number_apology("fr").contains("n'est pas en service"));
        assert!(unknown_number_apology("FR-fr").contains("n'est pas en service"));
        assert!(unknown_number_apology("en").contains("not in service"));
        assert!(unknown_number_apology("de").contains("not in service"));
        assert!(unknown_number_apology("").contains("not in service"));
    }

    #[test]
    fn apology_document_golden() {
        assert_eq!(
            say_and_hangup(unknown_number_apology("fr"), "fr"),
            format!(
                "{DECL}<Response><Say language=\"fr-FR\">Nous sommes désolés, le numéro que vous avez \
                 composé n&apos;est pas en service. Au revoir.</Say><Hangup/></Response>"
            )
        );
    }

    #[test]
    fn escape_handles_controls_and_unicode() {
        assert_eq!(escape("a\tb\nc\rd"), "a&#9;b&#10;c&#13;d");
        assert_eq!(escape("x\u{0}\u{1}\u{1b}y\u{fffe}\u{ffff}z"), "xyz");
        assert_eq!(escape("città ☕ 🍕"), "città ☕ 🍕");
        assert_eq!(escape(""), "");
    }
}
