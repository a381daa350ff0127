//! Who a client is, without its key: the id records and logs carry.

use sha2::{Digest, Sha256};

/// The id of a client key: the first 16 hex digits of its SHA-256. Records
/// (escalations, batches) and the access log keep this, never the key; it
/// cannot be turned back into the key, and two keys get the same id only by a
/// 64-bit collision.
pub fn client_key_id(key: &str) -> String {
    hex16(&Sha256::digest(key.as_bytes()))
}

/// The first 8 bytes of `digest` as 16 lower-case hex characters.
pub(crate) fn hex16(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(16);
    for byte in digest.iter().take(8) {
        id.push(HEX[usize::from(byte >> 4)] as char);
        id.push(HEX[usize::from(byte & 0xf)] as char);
    }
    id
}

/// The client a request was authenticated as, in its extensions (`None`
/// inside: the proxy runs without client keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientId(pub(crate) Option<String>);

impl ClientId {
    /// The id, or `-` for an open proxy (as the access log shows it).
    pub(crate) fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("-")
    }
}

/// The client key id of a request's `Authorization: Bearer KEY`, if any.
pub(crate) fn from_headers(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!key.is_empty()).then(|| client_key_id(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_16_hex_digits_of_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(client_key_id("abc"), "ba7816bf8f01cfea");
        assert_ne!(client_key_id("k1"), client_key_id("k2"));
    }

    #[test]
    fn ids_are_short_stable_and_distinct() {
        let a = client_key_id("key-a");
        assert_eq!(a.len(), 16);
        assert_eq!(a, client_key_id("key-a"));
        assert_ne!(a, client_key_id("key-b"));
        assert!(!a.contains("key"));
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer key-a".parse().unwrap());
        assert_eq!(from_headers(&headers), Some(a));
    }
}
