//! `POST /v1/batch`: items reported one by one, successes remembered for a
//! re-run, retries of retryable failures.

#[path = "../common/mod.rs"]
mod common;
mod items;
mod retries;
