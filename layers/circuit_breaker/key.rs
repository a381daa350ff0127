//! How a request picks its circuit.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

/// A way of choosing circuits; see [`SelectKey`].
pub trait KeySelector {
    /// The key circuits are told apart by.
    type Key: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static;
}

/// Picks the circuit of one request: `None` is the layer's single (or overflow)
/// circuit, `Some(key)` that key's circuit.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot pick a circuit for a request of type `{Req}`",
    label = "the key function does not take this request type",
    note = "`key_by` takes a closure `|request: &{Req}| -> Option<Key>`"
)]
pub trait SelectKey<Req>: KeySelector {
    /// The key of this request.
    fn select(&self, request: &Req) -> Option<Self::Key>;
}

/// One circuit for every request (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;

impl KeySelector for NoKey {
    type Key = ();
}

impl<Req> SelectKey<Req> for NoKey {
    #[inline]
    fn select(&self, _: &Req) -> Option<()> {
        None
    }
}

/// One circuit per key, made by [`Builder::key_by`](super::Builder::key_by).
pub struct KeyBy<F, K> {
    pub(crate) key_fn: F,
    pub(crate) _key: PhantomData<fn() -> K>,
}

impl<F: Clone, K> Clone for KeyBy<F, K> {
    fn clone(&self) -> Self {
        Self {
            key_fn: self.key_fn.clone(),
            _key: PhantomData,
        }
    }
}

impl<F, K> fmt::Debug for KeyBy<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBy")
            .field("key", &std::any::type_name::<K>())
            .finish_non_exhaustive()
    }
}

impl<F, K> KeySelector for KeyBy<F, K>
where
    K: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    type Key = K;
}

impl<F, K, Req> SelectKey<Req> for KeyBy<F, K>
where
    F: Fn(&Req) -> K,
    K: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    #[inline]
    fn select(&self, request: &Req) -> Option<K> {
        Some((self.key_fn)(request))
    }
}
