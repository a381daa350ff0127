//! PartialBatchLayer against an in-process scripted service (paused time, seeded
//! failures). The real-HTTP tests are in `partial_batch_http.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
use tower_llm_resilience::partial_batch::{
    Batch, BatchError, BatchStore, ConfigError, InMemoryBatchStore, ItemOutcome, PartialBatchLayer,
    ProgressEvent, StoreError, StoreFuture, StoredSuccess,
};
use tower_llm_resilience::BoxError;

/// What the scripted service does on one attempt of one item.
#[derive(Clone, Debug)]
enum Act {
    Ok,
    Fail(FailureKind),
}

fn rate_limited(after: Option<Duration>) -> Act {
    Act::Fail(FailureKind::RateLimited { retry_after: after })
}

/// A service over item keys: answers per a per-key script (attempt n uses entry n,
/// past the end: Ok), after a per-key latency; records what happened.
#[derive(Clone, Default)]
struct Scripted {
    scripts: Arc<HashMap<String, Vec<Act>>>,
    latency: Arc<HashMap<String, Duration>>,
    default_latency: Duration,
    log: Arc<Log>,
}

#[derive(Default)]
struct Log {
    calls: Mutex<Vec<(String, Instant)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Log {
    fn calls(&self) -> Vec<(String, Instant)> {
        self.calls.lock().unwrap().clone()
    }
    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
    fn calls_for(&self, key: &str) -> usize {
        self.calls().iter().filter(|(k, _)| k == key).count()
    }
}

impl Scripted {
    fn new(scripts: impl IntoIterator<Item = (String, Vec<Act>)>) -> Self {
        Self {
            scripts: Arc::new(scripts.into_iter().collect()),
            default_latency: Duration::from_millis(10),
            ..Default::default()
        }
    }
    fn latency(mut self, default: Duration, per_key: HashMap<String, Duration>) -> Self {
        self.default_latency = default;
        self.latency = Arc::new(per_key);
        self
    }
}

impl Service<String> for Scripted {
    type Response = String;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: String) -> Self::Future {
        let attempt = {
            let mut calls = self.log.calls.lock().unwrap();
            calls.push((key.clone(), Instant::now()));
            calls.iter().filter(|(k, _)| *k == key).count() - 1
        };
        let act = self
            .scripts
            .get(&key)
            .and_then(|s| s.get(attempt).cloned())
            .unwrap_or(Act::Ok);
        let latency = self
            .latency
            .get(&key)
            .copied()
            .unwrap_or(self.default_latency);
        let log = self.log.clone();
        let now = log.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        log.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            log.in_flight.fetch_sub(1, Ordering::SeqCst);
            match act {
                Act::Ok => Ok(format!("done:{key}")),
                Act::Fail(kind) => {
                    let message = match kind {
                        FailureKind::ContextLengthExceeded => "TOKEN_LIMIT",
                        FailureKind::RateLimited { .. } => "RATE_LIMIT",
                        _ => "injected failure",
                    };
                    Err(ClassifiedError::new(kind, message).into())
                }
            }
        })
    }
}

fn layer() -> tower_llm_resilience::partial_batch::PartialBatchLayerBuilder<ErrorOnlyClassifier> {
    PartialBatchLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .backoff(Duration::from_millis(100), Duration::from_secs(2))
        .seed(42)
}

fn keys(batch: &[&str]) -> Batch<String> {
    Batch::from_pairs(batch.iter().map(|k| (k.to_string(), k.to_string())))
}

fn key_batch(keys: &[String]) -> Batch<String> {
    Batch::from_pairs(keys.iter().map(|k| (k.clone(), k.clone())))
}

#[tokio::test(start_paused = true)]
async fn seed_scenario_token_limit_is_fatal_rate_limit_is_retried() {
    // Seeded failure injection: each of the 8 items gets TOKEN_LIMIT (20%),
    // RATE_LIMIT on its first one or two attempts (35%), or nothing.
    let mut rng = fastrand::Rng::with_seed(2024);
    let names: Vec<String> = ('a'..='h').map(|c| format!("item:{c}")).collect();
    let mut scripts = HashMap::new();
    let (mut token_limited, mut rate_limited_items) = (Vec::new(), Vec::new());
    for name in &names {
        let roll = rng.u8(0..100);
        if roll < 20 {
            scripts.insert(
                name.clone(),
                vec![Act::Fail(FailureKind::ContextLengthExceeded)],
            );
            token_limited.push(name.clone());
        } else if roll < 55 {
            let times = rng.usize(1..=2);
            scripts.insert(name.clone(), vec![rate_limited(None); times]);
            rate_limited_items.push((name.clone(), times));
        }
    }
    assert!(
        !token_limited.is_empty() && !rate_limited_items.is_empty(),
        "the seed injects both kinds"
    );

    let inner = Scripted::new(scripts);
    let log = inner.log.clone();
    let mut service = layer()
        .max_attempts(3)
        .concurrency(4)
        .build()
        .unwrap()
        .layer(inner);
    let report = service
        .ready()
        .await
        .unwrap()
        .call(key_batch(&names))
        .await
        .unwrap();

    assert_eq!(report.ok, 8 - token_limited.len());
    assert_eq!(report.failed, token_limited.len());
    assert_eq!((report.cached, report.unfinished), (0, 0));
    let order: Vec<_> = report.items.iter().map(|i| i.key.clone()).collect();
    assert_eq!(order, names, "input order kept");
    for key in &token_limited {
        let item = report.get(key).unwrap();
        assert_eq!(item.attempts, 1, "{key}: TOKEN_LIMIT is never retried");
        let failure = item.failure().unwrap();
        assert_eq!(failure.kind, FailureKind::ContextLengthExceeded);
        assert!(failure.fatal);
        assert!(failure.message.contains("TOKEN_LIMIT"));
        assert_eq!(log.calls_for(key), 1);
    }
    for (key, times) in &rate_limited_items {
        let item = report.get(key).unwrap();
        assert_eq!(
            item.attempts as usize,
            times + 1,
            "{key}: retried until it succeeds"
        );
        assert_eq!(item.response().unwrap(), &format!("done:{key}"));
    }
    let expected_calls = 8 + rate_limited_items.iter().map(|(_, t)| t).sum::<usize>();
    assert_eq!(log.count(), expected_calls);
}

#[tokio::test(start_paused = true)]
async fn hundred_items_five_fail_rerun_sends_only_the_five() {
    let names: Vec<String> = (0..100).map(|i| format!("doc-{i:03}")).collect();
    let broken: Vec<String> = [7, 23, 50, 51, 99]
        .iter()
        .map(|i| names[*i].clone())
        .collect();
    let scripts = broken
        .iter()
        .map(|k| (k.clone(), vec![Act::Fail(FailureKind::ServerError); 10]));
    let inner = Scripted::new(scripts);
    let log = inner.log.clone();
    let store = InMemoryBatchStore::new();
    let mut service = layer()
        .max_attempts(3)
        .concurrency(10)
        .store(store.clone())
        .build()
        .unwrap()
        .layer(inner);

    let batch = || key_batch(&names).with_id("docs-run-1");
    let first = service.ready().await.unwrap().call(batch()).await.unwrap();
    assert_eq!((first.ok, first.failed, first.cached), (95, 5, 0));
    for key in &broken {
        let item = first.get(key).unwrap();
        let failure = item.failure().unwrap();
        assert_eq!(
            (failure.kind.clone(), failure.fatal),
            (FailureKind::ServerError, false)
        );
        assert_eq!(failure.message, "server_error: injected failure");
        assert_eq!(item.attempts, 3, "retryable: used every attempt");
    }
    assert_eq!(log.count(), 95 + 5 * 3);
    assert_eq!(store.recorded("docs-run-1"), 95);

    let before = log.count();
    let second = service.ready().await.unwrap().call(batch()).await.unwrap();
    assert_eq!((second.ok, second.failed, second.cached), (95, 5, 95));
    assert_eq!(log.count() - before, 5 * 3, "only the five are sent again");
    let resent: std::collections::HashSet<_> = log.calls()[before..]
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(resent, broken.iter().cloned().collect());
    let cached = second.get("doc-000").unwrap();
    assert!(cached.from_store);
    assert_eq!(cached.attempts, 0);
    assert_eq!(cached.response().unwrap(), "done:doc-000");

    // Another batch id shares nothing.
    let before = log.count();
    let other = service
        .ready()
        .await
        .unwrap()
        .call(key_batch(&names[..3]).with_id("docs-run-2"))
        .await
        .unwrap();
    assert_eq!((other.ok, other.cached), (3, 0));
    assert_eq!(log.count() - before, 3);
}

#[tokio::test(start_paused = true)]
async fn concurrency_never_exceeds_the_limit() {
    let names: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    let mut rng = fastrand::Rng::with_seed(9);
    let latencies = names
        .iter()
        .map(|k| (k.clone(), Duration::from_millis(rng.u64(1..200))))
        .collect();
    let scripts = names
        .iter()
        .step_by(7)
        .map(|k| (k.clone(), vec![Act::Fail(FailureKind::Timeout)]));
    let inner = Scripted::new(scripts).latency(Duration::ZERO, latencies);
    let log = inner.log.clone();
    let mut service = layer().concurrency(5).build().unwrap().layer(inner);
    let report = service
        .ready()
        .await
        .unwrap()
        .call(key_batch(&names))
        .await
        .unwrap();
    assert_eq!(report.ok, 60);
    assert_eq!(
        log.max_in_flight.load(Ordering::SeqCst),
        5,
        "reaches the limit, never more"
    );
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_is_respected() {
    // The inner service only admits 2 at a time; the batch allows 8.
    let names: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let inner = Scripted::new([]);
    let log = inner.log.clone();
    let limited = tower::ServiceBuilder::new()
        .concurrency_limit(2)
        .service(inner);
    let mut service = layer().concurrency(8).build().unwrap().layer(limited);
    let started = Instant::now();
    let report = service
        .ready()
        .await
        .unwrap()
        .call(key_batch(&names))
        .await
        .unwrap();
    assert_eq!(report.ok, 20);
    assert_eq!(log.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(started.elapsed(), Duration::from_millis(10 * 20 / 2));
}

#[tokio::test(start_paused = true)]
async fn retry_after_pauses_every_dispatch_until_it_elapses() {
    let names: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let wait = Duration::from_secs(5);
    let inner = Scripted::new([("k0".to_string(), vec![rate_limited(Some(wait))])]).latency(
        Duration::from_millis(30),
        [("k0".to_string(), Duration::from_millis(10))].into(),
    );
    let log = inner.log.clone();
    let mut service = layer().concurrency(3).build().unwrap().layer(inner);
    let started = Instant::now();
    let report = service
        .ready()
        .await
        .unwrap()
        .call(key_batch(&names))
        .await
        .unwrap();

    assert_eq!(report.ok, 12);
    let limited_at = started + Duration::from_millis(10);
    let calls = log.calls();
    assert_eq!(calls.len(), 13);
    // k0, k1, k2 went out at once; k1 and k2 were in flight and were not cancelled.
    assert!(calls[..3].iter().all(|(_, at)| *at == started));
    for (key, at) in &calls[3..] {
        assert!(
            *at >= limited_at + wait,
            "{key} sent {:?} after the 429",
            *at - limited_at
        );
    }
    // The rate-limited item went first once the pause was over.
    assert_eq!(calls[3].0, "k0");
    assert_eq!(report.get("k0").unwrap().attempts, 2);
    assert_eq!(report.get("k1").unwrap().attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_longer_than_backoff_wins_for_that_item() {
    let wait = Duration::from_secs(60);
    let inner = Scripted::new([("only".to_string(), vec![rate_limited(Some(wait))])]);
    let log = inner.log.clone();
    let mut service = layer().build().unwrap().layer(inner);
    service
        .ready()
        .await
        .unwrap()
        .call(keys(&["only"]))
        .await
        .unwrap();
    let calls = log.calls();
    assert!(calls[1].1 - calls[0].1 >= Duration::from_millis(10) + wait);
}

#[tokio::test(start_paused = true)]
async fn deadline_keeps_finished_and_reports_the_rest() {
    let names: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    // k1 fails once (retryable) and is waiting for its retry at the deadline.
    let inner = Scripted::new([("k1".to_string(), vec![Act::Fail(FailureKind::ServerError)])])
        .latency(Duration::from_secs(1), HashMap::new());
    let log = inner.log.clone();
    let mut service = layer()
        .concurrency(2)
        .backoff(Duration::from_secs(10), Duration::from_secs(10))
        .seed(1)
        .build()
        .unwrap()
        .layer(inner);
    let started = Instant::now();
    let batch = key_batch(&names).with_deadline(Duration::from_millis(2500));
    let report = service.ready().await.unwrap().call(batch).await.unwrap();

    assert_eq!(started.elapsed(), Duration::from_millis(2500));
    assert_eq!(report.ok + report.failed, 10);
    // t=1s: k0 ok, k1 failed (waits); t=2s: k2, k3 ok; k4, k5 in flight at 2.5s.
    let ok: Vec<_> = report.responses().map(|(k, _)| k.to_string()).collect();
    assert_eq!(ok, ["k0", "k2", "k3"]);
    assert_eq!(report.unfinished, 7);
    match &report.get("k1").unwrap().outcome {
        ItemOutcome::TimedOut {
            last_failure: Some(f),
        } => assert_eq!(f.kind, FailureKind::ServerError),
        other => panic!("k1: {other:?}"),
    }
    for key in ["k4", "k5"] {
        let item = report.get(key).unwrap();
        assert!(
            matches!(item.outcome, ItemOutcome::TimedOut { last_failure: None }),
            "{key}"
        );
        assert_eq!(item.attempts, 1);
    }
    for key in &names[6..] {
        let item = report.get(key).unwrap();
        assert!(matches!(item.outcome, ItemOutcome::NotAttempted), "{key}");
        assert_eq!(item.attempts, 0);
    }
    assert_eq!(log.count(), 6);
}

#[tokio::test(start_paused = true)]
async fn layer_deadline_applies_when_the_batch_sets_none() {
    let inner = Scripted::new([]).latency(Duration::from_secs(10), HashMap::new());
    let mut service = layer()
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(inner);
    let report = service
        .ready()
        .await
        .unwrap()
        .call(keys(&["a", "b"]))
        .await
        .unwrap();
    assert_eq!((report.ok, report.unfinished), (0, 2));
}

#[tokio::test(start_paused = true)]
async fn fatal_kinds_are_never_retried_retryable_use_every_attempt() {
    let fatal = [
        FailureKind::ContextLengthExceeded,
        FailureKind::BadRequest,
        FailureKind::Auth,
        FailureKind::ContentFiltered,
    ];
    let retryable = [
        rate_limited(None),
        Act::Fail(FailureKind::Overloaded { retry_after: None }),
        Act::Fail(FailureKind::ServerError),
        Act::Fail(FailureKind::Timeout),
        Act::Fail(FailureKind::Connect),
    ];
    let mut scripts = Vec::new();
    for (i, kind) in fatal.iter().enumerate() {
        scripts.push((format!("fatal{i}"), vec![Act::Fail(kind.clone()); 9]));
    }
    for (i, act) in retryable.iter().enumerate() {
        scripts.push((format!("retry{i}"), vec![act.clone(); 9]));
    }
    let names: Vec<String> = scripts.iter().map(|(k, _)| k.clone()).collect();
    let inner = Scripted::new(scripts);
    let mut service = layer().max_attempts(4).build().unwrap().layer(inner);
    let report = service
        .ready()
        .await
        .unwrap()
        .call(key_batch(&names))
        .await
        .unwrap();
    assert_eq!(report.failed, 9);
    for item in &report.items {
        let failure = item.failure().unwrap();
        if item.key.starts_with("fatal") {
            assert_eq!((item.attempts, failure.fatal), (1, true), "{}", item.key);
        } else {
            assert_eq!((item.attempts, failure.fatal), (4, false), "{}", item.key);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn empty_batch_is_an_empty_report() {
    let inner = Scripted::new([]);
    let log = inner.log.clone();
    let mut service = layer().build().unwrap().layer(inner);
    let report = service
        .ready()
        .await
        .unwrap()
        .call(Batch::new([]))
        .await
        .unwrap();
    assert!(report.items.is_empty());
    assert_eq!((report.ok, report.failed, report.cached), (0, 0, 0));
    assert!(report.all_ok());
    assert_eq!(log.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn duplicate_keys_fail_before_any_call() {
    let inner = Scripted::new([]);
    let log = inner.log.clone();
    let mut service = layer().build().unwrap().layer(inner);
    let err = service
        .ready()
        .await
        .unwrap()
        .call(keys(&["a", "b", "a"]))
        .await
        .unwrap_err();
    assert!(matches!(&err, BatchError::DuplicateKey { key } if key == "a"));
    assert!(err.to_string().contains("duplicate item key \"a\""));
    assert_eq!(log.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn progress_sees_every_item_finish_and_each_retry() {
    let inner = Scripted::new([
        ("b".to_string(), vec![Act::Fail(FailureKind::ServerError)]),
        ("c".to_string(), vec![Act::Fail(FailureKind::Auth)]),
    ]);
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let store = InMemoryBatchStore::new();
    let mut service = layer().store(store).build().unwrap().layer(inner);
    let batch = keys(&["a", "b", "c"]).with_id("p").on_progress(move |p| {
        seen.lock().unwrap().push((
            p.key.to_string(),
            p.event.clone(),
            p.finished,
            p.total,
            p.batch_id.map(String::from),
        ));
    });
    service.ready().await.unwrap().call(batch).await.unwrap();
    let events = events.lock().unwrap().clone();
    let finished: Vec<_> = events.iter().filter(|e| e.1.is_finished()).collect();
    assert_eq!(finished.len(), 3);
    assert_eq!(finished.iter().map(|e| e.2).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(events
        .iter()
        .all(|e| e.3 == 3 && e.4.as_deref() == Some("p")));
    assert!(events
        .iter()
        .any(|e| e.0 == "b" && matches!(e.1, ProgressEvent::Retrying { attempts: 1, .. })));
    assert!(events
        .iter()
        .any(|e| e.0 == "c" && matches!(e.1, ProgressEvent::Failed { fatal: true, .. })));

    // A re-run reports the cached items through the observer too.
    let cached = Arc::new(AtomicUsize::new(0));
    let count = cached.clone();
    let batch = keys(&["a", "b", "c"]).with_id("p").on_progress(move |p| {
        if matches!(
            p.event,
            ProgressEvent::Succeeded {
                cached: true,
                attempts: 0
            }
        ) {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    service.ready().await.unwrap().call(batch).await.unwrap();
    assert_eq!(cached.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_schedule() {
    async fn schedule(seed: u64) -> Vec<Duration> {
        let names: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
        let scripts = names
            .iter()
            .map(|k| (k.clone(), vec![Act::Fail(FailureKind::ServerError); 2]));
        let inner = Scripted::new(scripts);
        let log = inner.log.clone();
        let mut service = layer()
            .seed(seed)
            .max_attempts(3)
            .build()
            .unwrap()
            .layer(inner);
        let start = Instant::now();
        service
            .ready()
            .await
            .unwrap()
            .call(key_batch(&names))
            .await
            .unwrap();
        log.calls().iter().map(|(_, at)| *at - start).collect()
    }
    let (a, b, c) = (schedule(5).await, schedule(5).await, schedule(6).await);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn builder_rejects_bad_settings() {
    let err =
        |b: tower_llm_resilience::partial_batch::PartialBatchLayerBuilder| b.build().unwrap_err();
    assert_eq!(
        err(PartialBatchLayer::builder().concurrency(0)),
        ConfigError::ZeroConcurrency
    );
    assert_eq!(
        err(PartialBatchLayer::builder().max_attempts(0)),
        ConfigError::ZeroMaxAttempts
    );
    let bad = PartialBatchLayer::builder().backoff(Duration::from_secs(2), Duration::from_secs(1));
    assert!(matches!(err(bad), ConfigError::InvalidBackoff { .. }));
    let zero = PartialBatchLayer::builder().backoff(Duration::ZERO, Duration::from_secs(1));
    assert!(matches!(err(zero), ConfigError::InvalidBackoff { .. }));
    assert_eq!(
        err(PartialBatchLayer::builder().deadline(Duration::ZERO)),
        ConfigError::ZeroDeadline
    );
    assert!(ConfigError::ZeroConcurrency
        .to_string()
        .contains("concurrency"));
    assert_eq!(PartialBatchLayer::new().concurrency(), 8);
}

/// A store that cannot be read, or cannot be written.
#[derive(Debug)]
struct BrokenStore {
    load_fails: bool,
}

impl BatchStore for BrokenStore {
    fn load<'a>(&'a self, _: &'a str) -> StoreFuture<'a, HashMap<String, StoredSuccess>> {
        let fails = self.load_fails;
        Box::pin(async move {
            if fails {
                Err(StoreError::new("connection refused"))
            } else {
                Ok(HashMap::new())
            }
        })
    }
    fn record<'a>(&'a self, _: &'a str, _: &'a str, _: StoredSuccess) -> StoreFuture<'a, ()> {
        Box::pin(async { Err(StoreError::new("disk full")) })
    }
    fn forget<'a>(&'a self, _: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(start_paused = true)]
async fn store_failures() {
    let inner = Scripted::new([]);
    let log = inner.log.clone();
    let mut unreadable = layer()
        .store(BrokenStore { load_fails: true })
        .build()
        .unwrap()
        .layer(inner.clone());
    let err = unreadable
        .ready()
        .await
        .unwrap()
        .call(keys(&["a"]).with_id("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, BatchError::Store(_)));
    assert_eq!(
        log.count(),
        0,
        "nothing is sent when the store cannot say what is done"
    );

    // Without a batch id the store is not consulted.
    let report = unreadable
        .ready()
        .await
        .unwrap()
        .call(keys(&["a"]))
        .await
        .unwrap();
    assert_eq!(report.ok, 1);

    let mut unwritable = layer()
        .store(BrokenStore { load_fails: false })
        .build()
        .unwrap()
        .layer(inner);
    let report = unwritable
        .ready()
        .await
        .unwrap()
        .call(keys(&["a", "b"]).with_id("x"))
        .await
        .unwrap();
    assert_eq!((report.ok, report.unrecorded), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_error_fails_the_unsent_items_and_keeps_the_rest() {
    // A service that answers two calls, then reports itself broken.
    #[derive(Clone)]
    struct Dying(Arc<AtomicUsize>);
    impl Service<String> for Dying {
        type Response = String;
        type Error = BoxError;
        type Future = std::future::Ready<Result<String, BoxError>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            if self.0.load(Ordering::SeqCst) >= 2 {
                std::task::Poll::Ready(Err(ClassifiedError::new(
                    FailureKind::Connect,
                    "pool closed",
                )
                .into()))
            } else {
                std::task::Poll::Ready(Ok(()))
            }
        }
        fn call(&mut self, key: String) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(key))
        }
    }
    let mut service = layer()
        .concurrency(1)
        .build()
        .unwrap()
        .layer(Dying(Arc::default()));
    let report = service
        .ready()
        .await
        .unwrap()
        .call(keys(&["a", "b", "c", "d"]))
        .await
        .unwrap();
    assert_eq!((report.ok, report.failed), (2, 2));
    let failure = report.get("c").unwrap().failure().unwrap();
    assert_eq!(failure.kind, FailureKind::Connect);
    assert!(failure.message.contains("pool closed"));
    assert_eq!(report.get("d").unwrap().attempts, 0);
}

#[tokio::test(start_paused = true)]
async fn report_serialises_with_serde() {
    let inner = Scripted::new([("b".to_string(), vec![Act::Fail(FailureKind::BadRequest)])]);
    let mut service = layer().build().unwrap().layer(inner);
    let report = service
        .ready()
        .await
        .unwrap()
        .call(keys(&["a", "b"]))
        .await
        .unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["ok"], 1);
    assert_eq!(json["items"][0]["outcome"]["status"], "success");
    assert_eq!(json["items"][0]["outcome"]["detail"], "done:a");
    assert_eq!(
        json["items"][1]["outcome"]["detail"]["kind"]["kind"],
        "bad_request"
    );
    assert_eq!(json["items"][1]["outcome"]["detail"]["fatal"], true);
    let back: tower_llm_resilience::partial_batch::BatchReport<String> =
        serde_json::from_value(json).unwrap();
    assert_eq!(
        back.get("b").unwrap().failure().unwrap().kind,
        FailureKind::BadRequest
    );
}
