//! Binds a Media Stream to the webhook that created it: the TwiML carries a token derived from
//! the Auth Token and the CallSid, and the stream's `start` must present it for that CallSid.
//! Stateless, so any daemon sharing the Auth Token can verify it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Name of the `<Parameter>` carrying the token.
pub const TOKEN_PARAM: &str = "token";

/// `base64url(HMAC-SHA256(auth_token, "switchboard-stream:" + call_sid + ":" + tenant))`.
pub fn stream_token(auth_token: &str, call_sid: &str, tenant_id: &str) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for Hmac<Sha256>.
    let mut mac = match Hmac::<Sha256>::new_from_slice(auth_token.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(b"switchboard-stream:");
    mac.update(call_sid.as_bytes());
    mac.update(b":");
    mac.update(tenant_id.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// Constant-time check of a presented token.
pub fn verify_stream_token(auth_token: &str, call_sid: &str, tenant_id: &str, presented: &str) -> bool {
    let want = stream_token(auth_token, call_sid, tenant_id);
    !want.is_empty()
        && want.len() == presented.len()
        && want.bytes().zip(presented.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_binds_call_and_tenant() {
        let t = stream_token("12345", "CA1", "mario");
        assert_eq!(t.len(), 43);
        assert!(verify_stream_token("12345", "CA1", "mario", &t));
        assert!(!verify_stream_token("12345", "CA2", "mario", &t));
        assert!(!verify_stream_token("12345", "CA1", "gino", &t));
        assert!(!verify_stream_token("54321", "CA1", "mario", &t));
        assert!(!verify_stream_token("12345", "CA1", "mario", ""));
    }
}
