//! Windowed answer statistics per model: successful answers by where they came
//! from (each tier, the template, a human, the cache), degraded answers,
//! requests that got no answer, and failures by kind, over the last 5 minutes,
//! the last hour and since the start (`GET /v1/admin/stats`).
//!
//! # What is counted
//!
//! Every chat completion the proxy answers for a model (the dashboard's test
//! prompts included, batch items not: batches have their summaries):
//!
//! - an answer with a success status counts once in `by_tier` (the tier that
//!   answered, by its index in the model's `tiers`; the template is the last),
//!   or in `human` (an escalation answered by a person) or `cache`, and in
//!   `degraded` when no first-tier answer was given;
//! - a request that got no answer (every tier failed, or an error answer)
//!   counts once in `failed_requests`;
//! - `failures` counts failed tier attempts by the shared taxonomy's kind
//!   (`server_error`, `circuit_open`, ...): the tiers that failed before a
//!   fallback answered, every tier of a request that got no answer, or the kind
//!   of the error answer itself. Escalation outcomes (waiting, rejected, ...)
//!   are not failures.
//!
//! # Windows and bounds
//!
//! Time is cut in fixed one-minute buckets ([`BUCKET`]); a ring of
//! [`BUCKETS`] of them is kept, so "5m" is the current minute and the 4 before
//! it, "1h" the current one and the 59 before. Memory is fixed when the state
//! is built: each model of the config has one ring, and each bucket one counter
//! per tier of that model, [`FIXED`] counters and one per
//! [`FailureCategory`] (a closed enum). Nothing grows with traffic.
//!
//! # Cost
//!
//! One call per answer: a short uncontended mutex per model (a few additions
//! under it), no allocation. Reading the windows allocates (admin side only).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tower_llm_resilience::classify::{classify_dyn_error, Classify, FailureCategory, Outcome};
use tower_llm_resilience::escalation::EscalationError;
use tower_llm_resilience::fallback::{AllTiersFailed, MarkDegraded};
use tower_llm_resilience::BoxError;

use crate::pipeline::{AnsweredBy, ProxyClassifier, Res, NO_TIER, TEMPLATE_TIER};

/// The length of one bucket.
pub(crate) const BUCKET: Duration = Duration::from_secs(60);
/// How many buckets are kept (one hour).
pub(crate) const BUCKETS: usize = 60;
/// The windows reported, by name, in buckets.
pub(crate) const WINDOWS: [(&str, usize); 2] = [("5m", 5), ("1h", BUCKETS)];

const KINDS: usize = FailureCategory::ALL.len();

// The counters after each bucket's per-tier counters.
const HUMAN: usize = 0;
const CACHE: usize = 1;
const DEGRADED: usize = 2;
const FAILED: usize = 3;
/// How many fixed counters a bucket has besides its tiers' and kinds'.
pub(crate) const FIXED: usize = 4;

/// Where a successful answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The tier of this index in the model's tiers (the template last).
    Tier(usize),
    /// A person, through an escalation.
    Human,
    /// The response cache.
    Cache,
}

/// The statistics of one model.
pub(crate) struct ModelStats {
    tiers: usize,
    template: bool,
    start: Instant,
    ring: Mutex<Ring>,
}

impl std::fmt::Debug for ModelStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStats")
            .field("tiers", &self.tiers)
            .finish_non_exhaustive()
    }
}

struct Ring {
    /// The bucket number (time since `start` / [`BUCKET`]) each slot holds;
    /// `u64::MAX`: none yet.
    stamps: [u64; BUCKETS],
    /// [`BUCKETS`] rows of `width` counters.
    counts: Box<[u64]>,
    /// Everything since the start.
    total: Box<[u64]>,
}

fn kind_index(kind: FailureCategory) -> usize {
    FailureCategory::ALL
        .iter()
        .position(|c| *c == kind)
        .unwrap_or(KINDS - 1)
}

impl ModelStats {
    /// Statistics for a model of `tiers` tiers (its template counted as the
    /// last, when `template`).
    pub(crate) fn new(tiers: usize, template: bool) -> Self {
        Self::starting(tiers, template, Instant::now())
    }

    fn starting(tiers: usize, template: bool, start: Instant) -> Self {
        let tiers = tiers.max(1);
        let width = tiers + FIXED + KINDS;
        Self {
            tiers,
            template,
            start,
            ring: Mutex::new(Ring {
                stamps: [u64::MAX; BUCKETS],
                counts: vec![0; width * BUCKETS].into_boxed_slice(),
                total: vec![0; width].into_boxed_slice(),
            }),
        }
    }

    fn width(&self) -> usize {
        self.tiers + FIXED + KINDS
    }

    fn bucket(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / BUCKET.as_secs()
    }

    /// An answer a client gets (`degraded`: not from the first tier).
    pub(crate) fn answer(&self, answer: &Res, degraded: bool) {
        self.answer_at(answer, degraded, Instant::now());
    }

    fn answer_at(&self, answer: &Res, degraded: bool, now: Instant) {
        let failed_before = answer
            .degraded()
            .map_or(&[][..], |marker| marker.failed())
            .iter()
            .filter(|tier| tier.name() != NO_TIER)
            .map(|tier| tier.kind().category());
        if answer.status().is_success() {
            let source = self.source_of(answer);
            self.count(now, Some(source), degraded, false, failed_before);
            return;
        }
        // An error answer (a failure no tier was worth trying after): its own
        // kind, read only now, off the path of successful answers.
        let own = match ProxyClassifier.classify(&Ok::<_, BoxError>(clone_head(answer))) {
            Outcome::Failure(kind) => kind.category(),
            _ => FailureCategory::Other,
        };
        self.count(
            now,
            None,
            false,
            true,
            failed_before.chain(std::iter::once(own)),
        );
    }

    /// An answer from the response cache.
    pub(crate) fn cached(&self) {
        self.count(
            Instant::now(),
            Some(Source::Cache),
            false,
            false,
            std::iter::empty(),
        );
    }

    /// A request the model's service failed (an escalation outcome is not
    /// counted: it is not a failure).
    pub(crate) fn error(&self, error: &BoxError) {
        self.error_at(error, Instant::now());
    }

    fn error_at(&self, error: &BoxError, now: Instant) {
        if let Some(all) = error.downcast_ref::<AllTiersFailed>() {
            let kinds = all
                .tiers()
                .iter()
                .filter(|tier| tier.name() != NO_TIER)
                .map(|tier| tier.kind().category());
            self.count(now, None, false, true, kinds);
        } else if error.downcast_ref::<EscalationError>().is_none() {
            let kind = classify_dyn_error(&**error).category();
            self.count(now, None, false, true, std::iter::once(kind));
        }
    }

    fn source_of(&self, answer: &Res) -> Source {
        let last = self.tiers - 1;
        match answer.extensions().get::<AnsweredBy>() {
            Some(AnsweredBy("human")) => Source::Human,
            Some(AnsweredBy(TEMPLATE_TIER)) if self.template => Source::Tier(last),
            _ => Source::Tier(answer.degraded().map_or(0, |m| m.tier()).min(last)),
        }
    }

    fn count<K>(&self, now: Instant, source: Option<Source>, degraded: bool, failed: bool, kinds: K)
    where
        K: Iterator<Item = FailureCategory> + Clone,
    {
        let tiers = self.tiers;
        let apply = |row: &mut [u64]| {
            match source {
                Some(Source::Tier(index)) => row[index.min(tiers - 1)] += 1,
                Some(Source::Human) => row[tiers + HUMAN] += 1,
                Some(Source::Cache) => row[tiers + CACHE] += 1,
                None => {}
            }
            row[tiers + DEGRADED] += u64::from(degraded);
            row[tiers + FAILED] += u64::from(failed);
            for kind in kinds.clone() {
                row[tiers + FIXED + kind_index(kind)] += 1;
            }
        };
        let bucket = self.bucket(now);
        let slot = (bucket % BUCKETS as u64) as usize;
        let width = self.width();
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let Ring {
            stamps,
            counts,
            total,
        } = &mut *ring;
        let row = &mut counts[slot * width..(slot + 1) * width];
        if stamps[slot] != bucket {
            row.fill(0);
            stamps[slot] = bucket;
        }
        apply(row);
        apply(total);
    }

    /// The counters of the last `buckets` buckets up to `now` (`None`: since
    /// the start).
    fn sum(&self, now: Instant, buckets: Option<usize>) -> Vec<u64> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let Some(buckets) = buckets else {
            return ring.total.to_vec();
        };
        let width = self.width();
        let mut out = vec![0; width];
        let current = self.bucket(now);
        for back in 0..buckets.min(BUCKETS) as u64 {
            let Some(bucket) = current.checked_sub(back) else {
                break;
            };
            let slot = (bucket % BUCKETS as u64) as usize;
            if ring.stamps[slot] == bucket {
                let row = &ring.counts[slot * width..(slot + 1) * width];
                out.iter_mut().zip(row).for_each(|(sum, n)| *sum += n);
            }
        }
        out
    }

    /// Every window (`5m`, `1h`, `total`), as JSON.
    pub(crate) fn report(&self) -> Value {
        self.report_at(Instant::now())
    }

    fn report_at(&self, now: Instant) -> Value {
        let mut windows = Map::new();
        for (name, buckets) in WINDOWS {
            windows.insert(name.into(), self.window_json(&self.sum(now, Some(buckets))));
        }
        windows.insert("total".into(), self.window_json(&self.sum(now, None)));
        Value::Object(windows)
    }

    fn window_json(&self, counts: &[u64]) -> Value {
        let tiers = self.tiers;
        let by_tier = &counts[..tiers];
        let failures: Map<String, Value> = FailureCategory::ALL
            .iter()
            .zip(&counts[tiers + FIXED..])
            .filter(|(_, n)| **n > 0)
            .map(|(kind, n)| (kind.name().to_owned(), json!(n)))
            .collect();
        json!({
            "answers": by_tier.iter().sum::<u64>() + counts[tiers + HUMAN] + counts[tiers + CACHE],
            "by_tier": by_tier,
            "template": if self.template { by_tier[tiers - 1] } else { 0 },
            "human": counts[tiers + HUMAN],
            "cache": counts[tiers + CACHE],
            "degraded": counts[tiers + DEGRADED],
            "failed_requests": counts[tiers + FAILED],
            "failures": failures,
        })
    }
}

/// A copy of an error answer's head and (buffered) body for its classifier.
fn clone_head(answer: &Res) -> Res {
    let body = match answer.body() {
        crate::body::ProxyBody::Full(bytes) => crate::body::ProxyBody::Full(bytes.clone()),
        crate::body::ProxyBody::Stream(_) => crate::body::ProxyBody::Full(Default::default()),
    };
    let mut copy = http::Response::new(body);
    *copy.status_mut() = answer.status();
    *copy.headers_mut() = answer.headers().clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_llm_resilience::classify::{ClassifiedError, FailureKind};

    const MINUTE: Duration = BUCKET;

    fn ok() -> Res {
        http::Response::new(crate::body::ProxyBody::Full("{}".into()))
    }

    #[test]
    fn windows_roll_over_in_whole_buckets() {
        let t0 = Instant::now();
        let stats = ModelStats::starting(2, true, t0);
        stats.answer_at(&ok(), false, t0);
        stats.count(t0, Some(Source::Tier(1)), true, false, std::iter::empty());
        let later = t0 + 4 * MINUTE;
        stats.count(
            later,
            Some(Source::Tier(1)),
            true,
            false,
            [FailureCategory::ServerError].into_iter(),
        );
        let report = stats.report_at(later);
        assert_eq!(report["5m"]["by_tier"], json!([1, 2]));
        assert_eq!(report["5m"]["template"], 2);
        assert_eq!(report["5m"]["degraded"], 2);
        assert_eq!(report["5m"]["failures"], json!({"server_error": 1}));
        // A minute on, the first bucket has left the 5-minute window only.
        let report = stats.report_at(t0 + 5 * MINUTE);
        assert_eq!(report["5m"]["by_tier"], json!([0, 1]));
        assert_eq!(report["1h"]["by_tier"], json!([1, 2]));
        // An hour on, the ring slot is reused: the old counts are gone from the
        // windows, and kept in the total.
        let hour = t0 + 60 * MINUTE;
        stats.count(hour, Some(Source::Cache), false, false, std::iter::empty());
        let report = stats.report_at(hour);
        assert_eq!(report["1h"]["by_tier"], json!([0, 1]));
        assert_eq!(report["1h"]["cache"], 1);
        assert_eq!(report["1h"]["answers"], 2);
        assert_eq!(report["total"]["by_tier"], json!([1, 2]));
        assert_eq!(report["total"]["answers"], 4);
        let report = stats.report_at(hour + 59 * MINUTE);
        assert_eq!(report["1h"]["answers"], 1);
        assert_eq!(report["5m"]["answers"], 0);
    }

    #[test]
    fn errors_count_by_kind_and_escalations_do_not() {
        let t0 = Instant::now();
        let stats = ModelStats::starting(1, false, t0);
        let timeout: BoxError = ClassifiedError::new(FailureKind::Timeout, "slow").into();
        stats.error_at(&timeout, t0);
        let escalated: BoxError = EscalationError::InvalidToken.into();
        stats.error_at(&escalated, t0);
        let mut refused = ok();
        *refused.status_mut() = http::StatusCode::UNAUTHORIZED;
        stats.answer_at(&refused, false, t0);
        let report = stats.report_at(t0);
        assert_eq!(report["5m"]["failed_requests"], 2);
        assert_eq!(
            report["5m"]["failures"],
            json!({"timeout": 1, "auth": 1}),
            "{report}"
        );
        assert_eq!(report["5m"]["answers"], 0);
        assert_eq!(report["5m"]["template"], 0);
    }
}
