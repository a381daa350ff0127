//! Client and admin keys. Only SHA-256 hashes are kept, compared in constant time.

use http::header::AUTHORIZATION;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A set of accepted keys.
#[derive(Clone, Default)]
pub(crate) struct Keys {
    hashes: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} keys)", self.hashes.len())
    }
}

/// SHA-256 of a key.
pub(crate) fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether two byte strings are equal, in time that depends only on their
/// lengths.
pub(crate) fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

impl Keys {
    /// Accept these keys.
    pub(crate) fn new(keys: &[String]) -> Self {
        Self {
            hashes: keys.iter().map(|k| hash(k)).collect(),
        }
    }

    /// No key configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The id of `key` ([`client_key_id`](crate::client_id::client_key_id))
    /// when it is one of them.
    pub(crate) fn id_of(&self, key: &str) -> Option<String> {
        let digest = hash(key);
        // The id is the head of the same digest: one hash per request.
        self.accepts_hash(&digest).then(|| hex(&digest[..8]))
    }

    fn accepts_hash(&self, candidate: &[u8; 32]) -> bool {
        // Check every key so the time taken does not say which one matched.
        self.hashes
            .iter()
            .fold(0u8, |found, h| found | h.ct_eq(candidate).unwrap_u8())
            == 1
    }
}

/// The bearer token of a request.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_by_bearer() {
        let keys = Keys::new(&["k1".into(), "k2".into()]);
        let bearer_ok = |headers: &HeaderMap| bearer(headers).and_then(|k| keys.id_of(k)).is_some();
        let mut headers = HeaderMap::new();
        assert!(!bearer_ok(&headers));
        headers.insert(AUTHORIZATION, "Bearer k2".parse().unwrap());
        assert!(bearer_ok(&headers));
        headers.insert(AUTHORIZATION, "bearer  k2 ".parse().unwrap());
        assert!(bearer_ok(&headers));
        headers.insert(AUTHORIZATION, "Bearer k3".parse().unwrap());
        assert!(!bearer_ok(&headers));
        assert_eq!(
            keys.id_of("k1").as_deref(),
            Some(crate::client_id::client_key_id("k1").as_str())
        );
        assert_eq!(keys.id_of("k3"), None);
        assert!(equal(b"abc", b"abc") && !equal(b"abc", b"abd") && !equal(b"ab", b"abc"));
    }
}
