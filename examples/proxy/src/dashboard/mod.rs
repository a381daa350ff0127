//! What the operator dashboard (`GET /dashboard`, see
//! [`crate::routes::dashboard`]) shows that the proxy does not keep anywhere
//! else: per model, answers by tier and failures by kind over recent windows
//! ([`stats`]), and the summaries of the last batches ([`batches`]).
//!
//! Both are bounded by construction: the statistics have one fixed ring of
//! buckets per model of the config, each with one counter per tier, a few
//! fixed counters and one per failure kind of the shared taxonomy (a closed
//! enum); the batches are a ring of [`batches::RECENT_BATCHES`] summaries.

pub(crate) mod batches;
pub(crate) mod stats;
