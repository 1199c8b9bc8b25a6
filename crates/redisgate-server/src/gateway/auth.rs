//! Who is calling the data plane. Standalone tokens (each mapping to one backend) live here;
//! API keys for `/redis/{id}` are in [`super::keys`].
//!
//! Standalone tokens come from the configuration (`REDISGATE_TOKEN`, the SRH variables or
//! tokens file), so the process holds them in its environment for its whole life anyway: the
//! table keeps them as they are (zeroed when dropped) and compares every candidate in
//! constant time, without stopping at the first match, so response timing says nothing about
//! a token beyond its length. Hashing each request's token first, as before, cost a SHA-256
//! per request (3.4k instructions without SHA extensions) and protected nothing more.

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderMap;
use redisgate_core::policy::Access;
use secrecy::{ExposeSecret, SecretBox};
use subtle::ConstantTimeEq;

use crate::backend::Backend;

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
    token: SecretBox<[u8]>,
    principal: Principal,
}

/// The standalone token table.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl Tokens {
    pub fn add(&mut self, token: &str, principal: Principal) {
        self.entries.push(Entry { token: SecretBox::new(token.as_bytes().into()), principal });
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal of a standalone token.
    pub fn find(&self, token: &str) -> Option<Principal> {
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.token.expose_secret().ct_eq(token.as_bytes())) {
                found = Some(&e.principal);
            }
        }
        found.cloned()
    }
}

/// The request's token: `Authorization: Bearer` wins over `_token`.
pub fn token<'a>(headers: &'a HeaderMap, query: Option<&str>) -> Option<Cow<'a, str>> {
    bearer(headers).map(Cow::Borrowed).or_else(|| query_token(query).map(Cow::Owned))
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case); shared by
/// the data plane and the management API's sessions.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    redisgate_core::request::bearer_token(headers.get(http::header::AUTHORIZATION)?.as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_in_any_case_of_the_scheme() {
        let token = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            bearer(&h).map(str::to_owned)
        };
        assert_eq!(token("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(token("bearer  abc ").as_deref(), Some("abc"));
        assert_eq!(token("BEARER abc").as_deref(), Some("abc"));
        assert_eq!(token("Basic abc"), None);
        assert_eq!(token("Bearerabc"), None);
        assert_eq!(token("Bearer"), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
