//! Tenant API keys: `Authorization: Bearer <key>`, checked against every tenant's
//! `api_keys_sha256` in constant time (no early exit on a match or a mismatch, so the answer
//! time tells nothing about which key or tenant came close).

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::bridge::CallRuntime;
use crate::core::domain::tenant::{Tenant, TenantDirectory};

/// The tenant whose key the request carries.
#[derive(Debug, Clone)]
pub struct TenantAuth(pub Arc<Tenant>);

/// A 401 with `WWW-Authenticate: Bearer` and the usual JSON error body.
#[derive(Debug)]
pub struct Unauthorized(pub &'static str);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", self.0)
            .with_header(header::WWW_AUTHENTICATE, "Bearer")
            .into_response()
    }
}

impl<S> FromRequestParts<S> for TenantAuth
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = Unauthorized;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let key = bearer(parts).ok_or(Unauthorized("missing bearer token (Authorization: Bearer <API key>)"))?;
        let rt: Arc<CallRuntime> = AppState::from_ref(state).calls;
        let dir = rt.tenants.current();
        find_tenant(&dir, key).map(TenantAuth).ok_or(Unauthorized("invalid API key"))
    }
}

/// The bearer token, if the header has one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The tenant holding `key`, comparing its digest with every configured digest.
pub fn find_tenant(dir: &TenantDirectory, key: &str) -> Option<Arc<Tenant>> {
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let mut found = None;
    for tenant in dir.tenants() {
        for stored in &tenant.api_keys_sha256 {
            let mut want = [0u8; 32];
            // Validated as 64 hex characters when the tenants file was loaded.
            if hex::decode_to_slice(stored, &mut want).is_err() {
                continue;
            }
            if ct_eq(&digest, &want) && found.is_none() {
                found = Some(Arc::clone(tenant));
            }
        }
    }
    found
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// SHA-256 hex of a key, as `api_keys_sha256` wants it.
pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_digests_only() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(ct_eq(&a, &b));
        b[31] ^= 1;
        assert!(!ct_eq(&a, &b));
        b = a;
        b[0] ^= 0x80;
        assert!(!ct_eq(&a, &b));
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(key_digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
