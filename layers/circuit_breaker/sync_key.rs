//! [`SyncKey`]: a circuit key that can travel between instances (through Redis
//! or PostgreSQL), so keyed circuits are shared per key.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

/// A circuit key that can travel between instances (the `redis` and `postgres`
/// circuit syncs): keyed circuits
/// ([`Builder::key_by`](crate::circuit_breaker::Builder::key_by)) are shared per
/// key, so the key is written into shared state and messages.
///
/// [`decode`](Self::decode) lets an instance apply another instance's state to a
/// key it has not served yet; without it (the default), remote states reach only
/// the circuits this instance already has.
pub trait SyncKey: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static {
    /// The key as text (the same on every instance).
    fn encode(&self) -> String;

    /// The key back from [`encode`](Self::encode)'s text, if it can be rebuilt.
    fn decode(text: &str) -> Option<Self> {
        let _ = text;
        None
    }
}

impl SyncKey for () {
    fn encode(&self) -> String {
        String::new()
    }

    fn decode(_: &str) -> Option<Self> {
        Some(())
    }
}

impl SyncKey for String {
    fn encode(&self) -> String {
        self.clone()
    }

    fn decode(text: &str) -> Option<Self> {
        Some(text.to_owned())
    }
}

impl SyncKey for Arc<str> {
    fn encode(&self) -> String {
        self.to_string()
    }

    fn decode(text: &str) -> Option<Self> {
        Some(text.into())
    }
}

impl SyncKey for &'static str {
    fn encode(&self) -> String {
        (*self).to_owned()
    }
}

impl SyncKey for http::uri::Authority {
    fn encode(&self) -> String {
        self.as_str().to_owned()
    }

    fn decode(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

macro_rules! sync_key_via_parse {
    ($($t:ty),*) => {$(
        impl SyncKey for $t {
            fn encode(&self) -> String {
                self.to_string()
            }

            fn decode(text: &str) -> Option<Self> {
                text.parse().ok()
            }
        }
    )*};
}

sync_key_via_parse!(u16, u32, u64, usize, i32, i64);
