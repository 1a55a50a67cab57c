//! Binds a Media Stream to the webhook that created it. The TwiML carries the time it was
//! issued and a token derived from the Auth Token, the CallSid, the tenant and that time; the
//! stream's `start` must present both for its CallSid within a short window. Stateless, so any
//! daemon sharing the Auth Token can verify it; the bridge also refuses a CallSid that already
//! streamed, so a captured token cannot be replayed.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Name of the `<Parameter>` carrying the token.
pub const TOKEN_PARAM: &str = "token";
/// Name of the `<Parameter>` carrying the issue time (Unix seconds).
pub const ISSUED_PARAM: &str = "issued";
/// How long after the webhook a stream may start.
pub const MAX_AGE_SECS: u64 = 120;

/// `base64url(HMAC-SHA256(auth_token, "switchboard-stream:" call_sid ":" tenant ":" issued))`.
pub fn stream_token(auth_token: &str, call_sid: &str, tenant_id: &str, issued_unix_s: u64) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for Hmac<Sha256>.
    let mut mac = match Hmac::<Sha256>::new_from_slice(auth_token.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(b"switchboard-stream:");
    mac.update(call_sid.as_bytes());
    mac.update(b":");
    mac.update(tenant_id.as_bytes());
    mac.update(b":");
    mac.update(issued_unix_s.to_string().as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// Why a presented token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("stream token or issue time missing")]
    Missing,
    #[error("stream token does not match its call")]
    Mismatch,
    #[error("stream token expired")]
    Expired,
}

/// Constant-time check of a presented token, `now_unix_s` passed in.
pub fn verify_stream_token(
    auth_token: &str,
    call_sid: &str,
    tenant_id: &str,
    issued: &str,
    presented: &str,
    now_unix_s: u64,
) -> Result<(), TokenError> {
    let issued_s: u64 = issued.parse().map_err(|_| TokenError::Missing)?;
    if presented.is_empty() {
        return Err(TokenError::Missing);
    }
    let want = stream_token(auth_token, call_sid, tenant_id, issued_s);
    let same = !want.is_empty()
        && want.len() == presented.len()
        && want.bytes().zip(presented.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same {
        return Err(TokenError::Mismatch);
    }
    // A little slack for clock differences between instances.
    if issued_s > now_unix_s + 30 || now_unix_s.saturating_sub(issued_s) > MAX_AGE_SECS {
        return Err(TokenError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_binds_call_tenant_and_time() {
        let t = stream_token("12345", "CA1", "mario", 1000);
        assert_eq!(t.len(), 43);
        let ok = |sid: &str, tenant: &str, issued: &str, tok: &str, now: u64| {
            verify_stream_token("12345", sid, tenant, issued, tok, now)
        };
        assert_eq!(ok("CA1", "mario", "1000", &t, 1001), Ok(()));
        assert_eq!(ok("CA2", "mario", "1000", &t, 1001), Err(TokenError::Mismatch));
        assert_eq!(ok("CA1", "gino", "1000", &t, 1001), Err(TokenError::Mismatch));
        assert_eq!(ok("CA1", "mario", "1001", &t, 1001), Err(TokenError::Mismatch));
        assert_eq!(verify_stream_token("54321", "CA1", "mario", "1000", &t, 1001), Err(TokenError::Mismatch));
        assert_eq!(ok("CA1", "mario", "1000", "", 1001), Err(TokenError::Missing));
        assert_eq!(ok("CA1", "mario", "", &t, 1001), Err(TokenError::Missing));
        assert_eq!(ok("CA1", "mario", "1000", &t, 1000 + MAX_AGE_SECS + 1), Err(TokenError::Expired));
        assert_eq!(ok("CA1", "mario", "1000", &t, 900), Err(TokenError::Expired));
    }
}
