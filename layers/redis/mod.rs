//! Shared state on Redis (feature `redis`): many instances, one circuit, one
//! escalation queue, one batch record.
//!
//! TODO docs
mod batch_store;
mod circuit;
mod circuit_sync;
mod error;
mod escalation_store;
mod link;
mod subscriber;

pub use self::batch_store::RedisBatchStore;
pub use self::circuit::{RedisCircuitSync, RedisCircuitSyncBuilder, SyncKey};
pub use self::error::ConfigError;
pub use self::escalation_store::{RedisEscalationStore, RedisEscalationStoreBuilder};
