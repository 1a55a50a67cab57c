//! `X-Twilio-Signature` (protocols.md A.3): base64 HMAC-SHA1, keyed with the account Auth Token,
//! of the full URL Twilio requested followed by every form field as `name` + `value`, the fields
//! sorted by name and then by value (byte-wise). For a `GET` webhook and for the Media Streams
//! WebSocket upgrade the parameter list is empty (query-string pairs are already in the URL).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The signature Twilio sends for `url` + `params` (URL-decoded form fields, any order).
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sign(auth_token, url, &sorted)
}

/// Checks `header` (the `X-Twilio-Signature` value) in constant time against the signature of
/// `url` + `params`. Like Twilio's own validators it also accepts the signature computed over
/// the URL with the scheme's default port toggled (`https://h/p` ⇄ `https://h:443/p`, `:80`
/// for `http`/`ws`, `:443` for `wss`), and the signature over the parameters with identical
/// name/value pairs de-duplicated (twilio-python's behaviour).
pub fn validate(auth_token: &str, url: &str, params: &[(String, String)], header: &str) -> bool {
    let header = header.trim().as_bytes();
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut deduped = sorted.clone();
    deduped.dedup();

    let mut urls = vec![url.to_owned()];
    urls.extend(toggle_default_port(url));
    let mut param_sets = vec![sorted.as_slice()];
    if deduped.len() != sorted.len() {
        param_sets.push(deduped.as_slice());
    }

    let mut ok = false;
    for u in &urls {
        for ps in &param_sets {
            // No short-circuit: every candidate is computed and compared.
            ok |= ct_eq(sign(auth_token, u, ps).as_bytes(), header);
        }
    }
    ok
}

/// HMAC-SHA1 over `url` followed by the already sorted pairs, base64 (standard, padded).
fn sign(auth_token: &str, url: &str, sorted: &[&(String, String)]) -> String {
    // Invariant: HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Constant-time equality for equal lengths (the length itself is not secret: always 28).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `url` with the scheme's default port added when absent or removed when present; `None` for
/// an unknown scheme, an unparseable authority or an explicit non-default port.
fn toggle_default_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => "443",
        "http" | "ws" => "80",
        _ => return None,
    };
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_len);
    // Skip any `user:password@` so its colon is not taken for the port separator.
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host_port = &authority[host_start..];
    // The port separator is the last colon after any IPv6 literal's closing bracket.
    let search_from = host_port.rfind(']').map_or(0, |i| i + 1);
    let prefix = &url[..scheme.len() + 3 + host_start];
    match host_port[search_from..].rfind(':').map(|i| search_from + i) {
        Some(colon) => {
            let port = &host_port[colon + 1..];
            (port == default).then(|| format!("{prefix}{}{tail}", &host_port[..colon]))
        }
        None if host_port.is_empty() => None,
        None => Some(format!("{prefix}{host_port}:{default}{tail}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// A.3.1 form vector, fields deliberately not in sorted order.
    fn form_params() -> Vec<(String, String)> {
        pairs(&[
            ("To", "+18005551212"),
            ("CallSid", "CA1234567890ABCDE"),
            ("From", "+14158675309"),
            ("Digits", "1234"),
            ("Caller", "+14158675309"),
        ])
    }

    const FORM_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const FORM_SIG: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
    const WSS_URL: &str = "wss://agent.example.com/twilio/media";
    const WSS_SIG: &str = "jnHHJVRuc+5O5HxzOjyUz1Q19Bc=";

    #[test]
    fn form_vector() {
        assert_eq!(compute("12345", FORM_URL, &form_params()), FORM_SIG);
        assert!(validate("12345", FORM_URL, &form_params(), FORM_SIG));
    }

    #[test]
    fn wss_upgrade_vector() {
        assert_eq!(compute("12345", WSS_URL, &[]), WSS_SIG);
        assert!(validate("12345", WSS_URL, &[], WSS_SIG));
    }

    #[test]
    fn json_body_vector() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        assert_eq!(compute("12345", url, &[]), "a9nBmqA0ju/hNViExpshrM61xv4=");
    }

    #[test]
    fn tampered_inputs_are_rejected() {
        let mut params = form_params();
        params[0].1 = "+18005551213".to_owned();
        assert!(!validate("12345", FORM_URL, &params, FORM_SIG));

        let mut extra = form_params();
        extra.push(("Evil".to_owned(), "1".to_owned()));
        assert!(!validate("12345", FORM_URL, &extra, FORM_SIG));

        assert!(!validate("12346", FORM_URL, &form_params(), FORM_SIG));
        assert!(!validate("12345", "https://mycompany.com/myapp.php?foo=1&bar=3", &form_params(), FORM_SIG));
        assert!(!validate("12345", "wss://agent.example.com/twilio/media2", &[], WSS_SIG));
        assert!(!validate("12345", WSS_URL, &[], ""));
        assert!(!validate("12345", WSS_URL, &[], "jnHHJVRuc+5O5HxzOjyUz1Q19Bc"));
        assert!(!validate("12345", WSS_URL, &[], "JnHHJVRuc+5O5HxzOjyUz1Q19Bc="));
    }

    #[test]
    fn header_whitespace_is_ignored() {
        assert!(validate("12345", WSS_URL, &[], " jnHHJVRuc+5O5HxzOjyUz1Q19Bc=\t"));
    }

    #[test]
    fn default_port_is_toggled_both_ways() {
        // Twilio signed the URL without a port; we know it with the explicit default port.
        assert!(validate("12345", "https://mycompany.com:443/myapp.php?foo=1&bar=2", &form_params(), FORM_SIG));
        assert!(validate("12345", "wss://agent.example.com:443/twilio/media", &[], WSS_SIG));

        // Twilio signed the URL with the explicit port; we know it without.
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        let sig = compute("12345", with_port, &form_params());
        assert_ne!(sig, FORM_SIG);
        assert!(validate("12345", FORM_URL, &form_params(), &sig));

        let http = "http://example.com/twiml";
        let sig = compute("t", "http://example.com:80/twiml", &[]);
        assert!(validate("t", http, &[], &sig));
        let ws = "ws://example.com:80/media";
        assert!(validate("t", ws, &[], &compute("t", "ws://example.com/media", &[])));
    }

    #[test]
    fn non_default_or_wrong_ports_are_not_toggled() {
        let sig = compute("t", "https://example.com/twiml", &[]);
        assert!(!validate("t", "https://example.com:8443/twiml", &[], &sig));
        assert!(!validate("t", "https://example.com:80/twiml", &[], &sig));
        assert!(!validate("t", "http://example.com:443/twiml", &[], &compute("t", "http://example.com/twiml", &[])));
    }

    #[test]
    fn port_toggling_shapes() {
        let t = |u: &str| toggle_default_port(u);
        assert_eq!(t("https://h/p").as_deref(), Some("https://h:443/p"));
        assert_eq!(t("https://h:443/p").as_deref(), Some("https://h/p"));
        assert_eq!(t("HTTPS://h").as_deref(), Some("HTTPS://h:443"));
        assert_eq!(t("https://h?x=1").as_deref(), Some("https://h:443?x=1"));
        assert_eq!(t("wss://h:443").as_deref(), Some("wss://h"));
        assert_eq!(t("http://u:pw@h/p").as_deref(), Some("http://u:pw@h:80/p"));
        assert_eq!(t("http://u:pw@h:80/p").as_deref(), Some("http://u:pw@h/p"));
        assert_eq!(t("https://[::1]/p").as_deref(), Some("https://[::1]:443/p"));
        assert_eq!(t("https://[::1]:443/p").as_deref(), Some("https://[::1]/p"));
        assert_eq!(t("https://h:8443/p"), None);
        assert_eq!(t("ftp://h/p"), None);
        assert_eq!(t("no-scheme"), None);
        assert_eq!(t("https:///p"), None);
    }

    #[test]
    fn duplicate_names_are_sorted_by_value() {
        let url = "https://example.com/hook";
        let a = pairs(&[("B", "x"), ("A", "2"), ("A", "10"), ("A", "1")]);
        let b = pairs(&[("A", "1"), ("A", "10"), ("A", "2"), ("B", "x")]);
        let sig = compute("secret", url, &a);
        assert_eq!(sig, compute("secret", url, &b));
        // Byte-wise order: "1" < "10" < "2".
        let mut mac = Hmac::<Sha1>::new_from_slice(b"secret").unwrap();
        mac.update(b"https://example.com/hookA1A10A2Bx");
        assert_eq!(sig, STANDARD.encode(mac.finalize().into_bytes()));
        assert!(validate("secret", url, &a, &sig));
        // Name order is case-sensitive byte order: "CallSid" < "Caller" ('S' < 'e').
        let c = pairs(&[("Caller", "1"), ("CallSid", "2")]);
        let mut mac = Hmac::<Sha1>::new_from_slice(b"secret").unwrap();
        mac.update(b"https://example.com/hookCallSid2Caller1");
        assert_eq!(compute("secret", url, &c), STANDARD.encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn identical_duplicate_pairs_accept_both_conventions() {
        let url = "https://example.com/hook";
        let dup = pairs(&[("A", "1"), ("A", "1"), ("B", "2")]);
        let once = pairs(&[("A", "1"), ("B", "2")]);
        assert!(validate("k", url, &dup, &compute("k", url, &dup)));
        assert!(validate("k", url, &dup, &compute("k", url, &once)));
        // But a pair that was sent once cannot be counted twice.
        assert!(!validate("k", url, &once, &compute("k", url, &dup)));
    }
}
