//! Per-call overhead of circuit breakers in the closed state, side by side:
//! a bare no-op service, this crate's breaker, tower-resilience's breaker and the
//! failsafe crate's breaker; once on one thread and once with two threads
//! hammering one shared breaker.
//!
//! Run: `cargo bench --bench circuit_breaker` (add `--features redis` for the
//! `closed_call_redis` groups: the same breaker with a `RedisCircuitSync` attached,
//! against a redis-server the bench starts itself).
//!
//! The inner service answers with a ready future, and each call is polled once
//! with a no-op waker, so what is measured is the breakers' own work.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use failsafe::futures::CircuitBreaker as _;
use tower::{service_fn, Layer, Service, ServiceExt};

type Inner = tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, std::io::Error>>>;

fn inner() -> Inner {
    service_fn((|x: u64| std::future::ready(Ok(x))) as fn(u64) -> _)
}

/// Poll a future that is expected to be ready at once.
#[inline(always)]
fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("benchmark futures are ready at once"),
    }
}

/// One call through a tower service: poll_ready then call.
#[inline(always)]
fn call<S: Service<u64>>(svc: &mut S, x: u64) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => unreachable!("benchmark services are always ready"),
    }
    now(svc.call(x))
}

fn ours() -> impl Service<u64, Response = u64> + Clone + Send + 'static {
    tower_llm_resilience::CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .classifier(tower_llm_resilience::classify::ErrorOnlyClassifier)
        .build()
        .unwrap()
        .layer(inner())
}

fn tower_resilience() -> impl Service<u64, Response = u64> + Clone + Send + 'static {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .build()
        .unwrap()
        .layer(inner())
}

fn single_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("closed_call");
    let mut bare = inner();
    group.bench_function("bare", |b| b.iter(|| call(&mut bare, black_box(1))));
    let mut svc = ours();
    group.bench_function("tower-llm-resilience", |b| {
        b.iter(|| call(&mut svc, black_box(1)))
    });
    let mut svc = tower_resilience();
    group.bench_function("tower-resilience", |b| {
        b.iter(|| call(&mut svc, black_box(1)))
    });
    let breaker = failsafe::Config::new().build();
    let mut bare = inner();
    group.bench_function("failsafe", |b| {
        b.iter(|| {
            let mut cx = Context::from_waker(Waker::noop());
            let _ = bare.poll_ready(&mut cx);
            now(breaker.call(bare.call(black_box(1))))
        })
    });
    group.finish();
}

/// Two threads share one breaker; reports time per call per thread. Under
/// contention a breaker may have to wait (tower-resilience takes an async lock),
/// so here every call runs on a tokio runtime, for every contender alike.
fn two_threads<S>(make: impl Fn() -> S, iters: u64) -> Duration
where
    S: Service<u64> + Clone + Send + 'static,
{
    let svc = make();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let mut svc = svc.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                barrier.wait();
                let start = Instant::now();
                rt.block_on(async {
                    for i in 0..iters {
                        let ready = svc.ready().await.ok().expect("always ready");
                        let _ = black_box(ready.call(i).await);
                    }
                });
                start.elapsed()
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .max()
        .unwrap()
}

fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("closed_call_two_threads");
    group.bench_function("bare", |b| b.iter_custom(|n| two_threads(inner, n)));
    group.bench_function("tower-llm-resilience", |b| {
        b.iter_custom(|n| two_threads(ours, n))
    });
    group.bench_function("tower-resilience", |b| {
        b.iter_custom(|n| two_threads(tower_resilience, n))
    });
    group.bench_function("failsafe", |b| {
        b.iter_custom(|n| {
            let breaker = failsafe::Config::new().build();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (breaker, barrier) = (breaker.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        let mut svc = inner();
                        barrier.wait();
                        let start = Instant::now();
                        rt.block_on(async {
                            for i in 0..n {
                                let svc = svc.ready().await.unwrap();
                                let _ = black_box(breaker.call(svc.call(i)).await);
                            }
                        });
                        start.elapsed()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .max()
                .unwrap()
        })
    });
    group.finish();
}

#[cfg(feature = "redis")]
#[path = "../tests/support/redis.rs"]
mod redis_server;

/// The closed path with a Redis backend attached, next to the in-process breaker:
/// the backend publishes transitions and flushes outcome counts in the background,
/// so a call makes no round trip; what it adds is counting calls for the shared
/// failure rate.
#[cfg(feature = "redis")]
fn with_redis(c: &mut Criterion) {
    use tower_llm_resilience::redis::RedisCircuitSync;

    if redis_server::binary().is_none() {
        println!("closed_call_redis: skipped, redis-server is not installed");
        return;
    }
    let redis = redis_server::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let layer = tower_llm_resilience::CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .classifier(tower_llm_resilience::classify::ErrorOnlyClassifier)
        .build()
        .unwrap();
    let sync = RedisCircuitSync::attach(redis.client(), &layer.handle()).unwrap();
    let started = Instant::now();
    while !sync.is_connected() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis unreachable"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let redis_backed = move || layer.layer(inner());

    let mut group = c.benchmark_group("closed_call_redis");
    let mut svc = ours();
    group.bench_function("in-process", |b| b.iter(|| call(&mut svc, black_box(1))));
    let mut svc = redis_backed();
    group.bench_function("redis-backed", |b| b.iter(|| call(&mut svc, black_box(1))));
    group.finish();

    let mut group = c.benchmark_group("closed_call_redis_two_threads");
    group.bench_function("in-process", |b| b.iter_custom(|n| two_threads(ours, n)));
    group.bench_function("redis-backed", |b| {
        b.iter_custom(|n| two_threads(&redis_backed, n))
    });
    group.finish();
    drop(sync);
}

#[cfg(not(feature = "redis"))]
fn with_redis(_: &mut Criterion) {
    println!("closed_call_redis: skipped, run with --features redis");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = single_thread, contended, with_redis
}
criterion_main!(benches);
