use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::id::EscalationId;

/// Random bytes in the secret part of a token: 256 bits.
const SECRET_BYTES: usize = 32;
/// Random bytes in an escalation id: 96 bits (ids are public, uniqueness is enough).
const ID_BYTES: usize = 12;
/// Separates the id from the secret; not in the URL-safe base64 alphabet.
const SEPARATOR: char = '.';

/// The secret a detached caller presents to resume: `<escalation id>.<secret>`.
///
/// The secret is 256 bits from the operating system's random source, URL-safe
/// base64 without padding, so the whole token can travel in a header or a URL.
/// Stores keep only its SHA-256 hash. `Debug` and `Display` do not print it: use
/// [`ResumeToken::expose`] where the caller must hand it on.
///
/// Put it in a request's extensions (`http::Request::extensions_mut().insert(token)`)
/// or in the `x-resume-token` header to resume.
#[derive(Clone, PartialEq, Eq)]
pub struct ResumeToken(String);

impl ResumeToken {
    /// A token as received from a caller (not validated until it is used).
    pub fn from_string(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token text, to hand to the caller.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The escalation id part, if the token is well formed.
    pub fn escalation_id(&self) -> Option<EscalationId> {
        self.split().map(|(id, _)| EscalationId::new(id))
    }

    fn split(&self) -> Option<(&str, &str)> {
        let (id, secret) = self.0.split_once(SEPARATOR)?;
        let url_safe = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        (url_safe(id) && url_safe(secret)).then_some((id, secret))
    }

    /// Whether this token's hash is `expected`, compared in constant time.
    pub fn matches(&self, expected: &TokenHash) -> bool {
        bool::from(TokenHash::of(self).0.ct_eq(&expected.0))
    }
}

impl fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeToken(<redacted>)")
    }
}

/// The SHA-256 hash of a [`ResumeToken`]: what stores keep. Serialises as hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of `token`.
    pub fn of(token: &ResumeToken) -> Self {
        Self(Sha256::digest(token.0.as_bytes()).into())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses [`TokenHash::to_hex`] output.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}..)", &self.to_hex()[..8])
    }
}

impl Serialize for TokenHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        TokenHash::from_hex(&text).ok_or_else(|| serde::de::Error::custom("invalid token hash"))
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// The OS random source failed; no escalation can be created safely.
#[derive(Debug)]
pub struct RandomUnavailable(getrandom::Error);

impl fmt::Display for RandomUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the operating system's random source failed: {}", self.0)
    }
}

impl std::error::Error for RandomUnavailable {}

fn random_text(bytes: usize) -> Result<String, RandomUnavailable> {
    let mut buf = [0u8; SECRET_BYTES];
    let buf = &mut buf[..bytes];
    getrandom::fill(buf).map_err(RandomUnavailable)?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// A fresh escalation id.
pub(crate) fn new_id() -> Result<EscalationId, RandomUnavailable> {
    Ok(EscalationId::new(format!("esc_{}", random_text(ID_BYTES)?)))
}

/// A fresh token for `id`.
pub(crate) fn new_token(id: &EscalationId) -> Result<ResumeToken, RandomUnavailable> {
    let secret = random_text(SECRET_BYTES)?;
    Ok(ResumeToken(format!("{id}{SEPARATOR}{secret}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_url_safe_long_and_distinct() {
        let id = new_id().unwrap();
        let a = new_token(&id).unwrap();
        let b = new_token(&id).unwrap();
        assert_ne!(a, b);
        let (_, secret) = a.split().unwrap();
        // 32 bytes in unpadded base64 are 43 characters: 256 bits.
        assert_eq!(secret.len(), 43);
        assert!(a
            .expose()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)));
        assert_eq!(a.escalation_id(), Some(id));
    }

    #[test]
    fn hash_matches_only_its_token() {
        let id = new_id().unwrap();
        let token = new_token(&id).unwrap();
        let hash = TokenHash::of(&token);
        assert!(token.matches(&hash));
        assert!(!new_token(&id).unwrap().matches(&hash));
        assert_eq!(TokenHash::from_hex(&hash.to_hex()), Some(hash));
        assert!(!format!("{token:?}").contains(token.expose()));
    }

    #[test]
    fn malformed_tokens_have_no_id() {
        for bad in ["", "abc", ".x", "x.", "a b.c", "a.b/c"] {
            assert_eq!(ResumeToken::from_string(bad).escalation_id(), None, "{bad}");
        }
    }
}
