//! Pre-recorded apology played to the caller when the AI upstream fails, and the short filler
//! said while a dropped upstream session is being restored.
//!
//! When the Realtime session dies there is nothing left to generate speech, so the message
//! is rendered ahead of time (fixtures/make_fixtures.sh) and compiled into the binary: it
//! cannot fail to load at the moment it is needed. The audio is already G.711 mu-law 8 kHz,
//! so it goes to Twilio without any transcoding.

static IT: &[u8] = include_bytes!("apology/it.ulaw");
static FR: &[u8] = include_bytes!("apology/fr.ulaw");
static EN: &[u8] = include_bytes!("apology/en.ulaw");

/// The apology (mu-law, 8 kHz, mono) for a BCP 47 language tag.
///
/// Only the primary subtag matters, case-insensitively ("it-IT" and "IT" give Italian).
/// Languages without a recording fall back to English, because saying something the caller
/// may understand beats dead air.
pub fn apology_ulaw(language: &str) -> &'static [u8] {
    pick(language, [IT, FR, EN])
}

static FILLER_IT: &[u8] = include_bytes!("apology/filler_it.ulaw");
static FILLER_FR: &[u8] = include_bytes!("apology/filler_fr.ulaw");
static FILLER_EN: &[u8] = include_bytes!("apology/filler_en.ulaw");

/// "One moment, please" (mu-law, 8 kHz, mono), same language rules as [`apology_ulaw`].
pub fn filler_ulaw(language: &str) -> &'static [u8] {
    pick(language, [FILLER_IT, FILLER_FR, FILLER_EN])
}

fn pick(language: &str, [it, fr, en]: [&'static [u8]; 3]) -> &'static [u8] {
    let primary = language.trim().split(['-', '_']).next().unwrap_or_default();
    if primary.eq_ignore_ascii_case("it") {
        it
    } else if primary.eq_ignore_ascii_case("fr") {
        fr
    } else {
        en
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fillers_are_short() {
        for lang in ["it", "fr", "en"] {
            let secs = filler_ulaw(lang).len() as f64 / 8000.0;
            assert!((0.5..=2.5).contains(&secs), "{lang}: {secs:.2} s");
        }
        assert_ne!(filler_ulaw("it"), filler_ulaw("fr"));
    }

    #[test]
    fn each_language_lasts_between_2_and_10_seconds() {
        for lang in ["it", "fr", "en"] {
            let audio = apology_ulaw(lang);
            assert!(!audio.is_empty(), "{lang}");
            let secs = audio.len() as f64 / 8000.0;
            assert!((2.0..=10.0).contains(&secs), "{lang}: {secs:.2} s");
        }
    }

    #[test]
    fn primary_subtag_selects_case_insensitively() {
        assert!(apology_ulaw("it-IT") == IT, "it-IT");
        assert!(apology_ulaw("IT") == IT, "IT");
        assert!(apology_ulaw("it_CH") == IT, "it_CH");
        assert!(apology_ulaw("fr-CA") == FR, "fr-CA");
        assert!(apology_ulaw("Fr") == FR, "Fr");
        assert!(apology_ulaw("en-GB") == EN, "en-GB");
        assert!(apology_ulaw("de-DE") == EN, "de-DE");
        assert!(apology_ulaw("") == EN, "");
        assert!(apology_ulaw("italian") == EN, "italian");
    }

    #[test]
    fn recordings_are_distinct() {
        assert_ne!(IT, FR);
        assert_ne!(IT, EN);
        assert_ne!(FR, EN);
    }
}
