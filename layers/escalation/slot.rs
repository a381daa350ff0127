//! One waiting call's slot, shared by the engine (which wakes it) and the waiter.

use std::sync::atomic::AtomicBool;

use tokio::sync::Notify;

/// One waiting call: how to wake it, and whether it was released.
#[derive(Debug, Default)]
pub(crate) struct WaiterSlot {
    pub(super) notify: Notify,
    pub(super) released: AtomicBool,
}
