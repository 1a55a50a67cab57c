//! Zero-copy string fields for serde. serde borrows a `Cow<str>` field marked `borrow`, but not
//! one inside an `Option`: that one is always copied. These helpers borrow when the JSON
//! string has no escapes (base64 payloads never do) and copy only when they must.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);

/// `deserialize_with` for `Option<Cow<'de, str>>`.
pub fn opt_cow<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Option::<Borrowed<'de>>::deserialize(d).map(|o| o.map(|b| b.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T<'a> {
        #[serde(borrow, default, deserialize_with = "opt_cow")]
        a: Option<Cow<'a, str>>,
        #[serde(borrow, default, deserialize_with = "opt_cow")]
        b: Option<Cow<'a, str>>,
        #[serde(borrow, default, deserialize_with = "opt_cow")]
        c: Option<Cow<'a, str>>,
    }

    #[test]
    fn borrows_plain_strings_and_copies_escaped_ones() {
        let t: T = serde_json::from_str(r#"{"a":"AH+A/w==","b":"x\/y"}"#).unwrap();
        assert!(matches!(t.a, Some(Cow::Borrowed("AH+A/w=="))));
        assert!(matches!(t.b.as_deref(), Some("x/y")));
        assert!(t.c.is_none());
    }
}
