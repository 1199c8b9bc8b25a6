//! Who is calling the data plane. Standalone tokens (each mapping to one backend) live here;
//! API keys for `/redis/{id}` are in [`super::keys`].
//!
//! Tokens are kept only as SHA-256 digests and every candidate is compared in constant time,
//! without stopping at the first match, so response timing says nothing about a token.

use std::sync::Arc;

use http::HeaderMap;
use redisgate_core::policy::Access;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::backend::Backend;

/// Who is calling, once the token checked out.
#[derive(Clone)]
pub struct Principal {
    pub access: Access,
    pub backend: Arc<Backend>,
    /// Who is calling, for the per-caller concurrency limits ([`super::slots`]).
    pub caller: crate::ops::ratelimit::Bucket,
    /// Whose rate-limit budget the request spends, at which rate (`None`: unlimited).
    pub limit: Option<(crate::ops::ratelimit::Bucket, redisgate_core::ratelimit::Rate)>,
}

struct Entry {
    digest: [u8; 32],
    principal: Principal,
}

/// The standalone token table.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl Tokens {
    pub fn add(&mut self, token: &str, principal: Principal) {
        self.entries.push(Entry { digest: Sha256::digest(token.as_bytes()).into(), principal });
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal of a standalone token.
    pub fn find(&self, token: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&digest)) {
                found = Some(&e.principal);
            }
        }
        found.cloned()
    }
}

/// The request's token: `Authorization: Bearer` wins over `_token`.
pub fn token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    bearer(headers).map(str::to_owned).or_else(|| query_token(query))
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case); shared by
/// the data plane and the management API's sessions.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let v = pair.strip_prefix("_token=")?;
        Some(percent_decode_str(v))
    })
}

fn percent_decode_str(s: &str) -> String {
    String::from_utf8_lossy(&redisgate_core::request::percent_decode(s)).into_owned()
}
