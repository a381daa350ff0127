//! Failed authentications, logged on `llm_proxy::auth` at most once a second
//! per kind (with the count of the lines left out) and counted in
//! `llm_proxy_auth_failures_total{kind}`.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Logs at most one line per second, counting the ones it leaves out.
#[derive(Debug)]
pub(crate) struct FailureLog {
    kind: &'static str,
    last: Mutex<(Option<Instant>, u64)>,
}

impl FailureLog {
    /// A log of failed `kind` authentications.
    pub(crate) const fn new(kind: &'static str) -> Self {
        Self {
            kind,
            last: Mutex::new((None, 0)),
        }
    }

    /// One failure, from `addr`, for `reason` (never a key).
    pub(crate) fn record(&self, addr: Option<IpAddr>, reason: &str) {
        metrics::counter!("llm_proxy_auth_failures_total", "kind" => self.kind).increment(1);
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last
            .0
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            last.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut last.1);
        last.0 = Some(now);
        drop(last);
        let addr = addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
        tracing::warn!(
            target: "llm_proxy::auth",
            kind = %self.kind,
            client_addr = %addr,
            reason = %reason,
            suppressed,
            "authentication failed"
        );
    }
}
