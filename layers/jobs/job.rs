//! [`ItemJob`]: one batch item as an apalis job.

use serde::{Deserialize, Serialize};

/// One item of a distributed batch, as pushed to the job storage: which batch,
/// which item, and the request to send. Jobs are identified in the
/// [`JobStore`](super::JobStore) by `batch_id` + `key`; apalis gives each
/// push its own task id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemJob<Req> {
    /// The batch.
    pub batch_id: String,
    /// The item's key, unique in its batch.
    pub key: String,
    /// The request for the worker's service.
    pub request: Req,
}
