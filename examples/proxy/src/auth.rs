//! Client and admin keys. Only SHA-256 hashes are kept, compared in constant time.

use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The cookie the review page's login sets (the hash of the admin key, never the key).
pub const ADMIN_COOKIE: &str = "llm_proxy_admin";

/// A set of accepted keys.
#[derive(Clone, Default)]
pub struct Keys {
    hashes: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} keys)", self.hashes.len())
    }
}

/// SHA-256 of a key.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

impl Keys {
    /// Accept these keys.
    pub fn new(keys: &[String]) -> Self {
        Self {
            hashes: keys.iter().map(|k| hash(k)).collect(),
        }
    }

    /// No key configured.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `key` is one of them.
    pub fn accepts(&self, key: &str) -> bool {
        self.accepts_hash(&hash(key))
    }

    fn accepts_hash(&self, candidate: &[u8; 32]) -> bool {
        // Check every key so the time taken does not say which one matched.
        self.hashes
            .iter()
            .fold(0u8, |found, h| found | h.ct_eq(candidate).unwrap_u8())
            == 1
    }

    /// Whether the request carries one of them as a bearer token.
    pub fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|key| self.accepts(key))
    }

    /// Whether the request carries one of them as a bearer token or in the
    /// review page's cookie.
    pub fn admin_ok(&self, headers: &HeaderMap) -> bool {
        if self.bearer_ok(headers) {
            return true;
        }
        cookie(headers, ADMIN_COOKIE)
            .and_then(unhex)
            .is_some_and(|h| self.accepts_hash(&h))
    }
}

/// The bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_by_bearer_and_cookie() {
        let keys = Keys::new(&["k1".into(), "k2".into()]);
        let mut headers = HeaderMap::new();
        assert!(!keys.admin_ok(&headers));
        headers.insert(AUTHORIZATION, "Bearer k2".parse().unwrap());
        assert!(keys.bearer_ok(&headers));
        headers.insert(AUTHORIZATION, "Bearer k3".parse().unwrap());
        assert!(!keys.bearer_ok(&headers));
        let cookie_value = format!("a=b; {ADMIN_COOKIE}={}", hex(&hash("k1")));
        headers.insert(COOKIE, cookie_value.parse().unwrap());
        assert!(keys.admin_ok(&headers));
        headers.insert(COOKIE, format!("{ADMIN_COOKIE}=zz").parse().unwrap());
        assert!(!keys.admin_ok(&headers));
    }
}
