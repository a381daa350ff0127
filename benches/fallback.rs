//! Overhead of a FallbackLayer whose primary answers, over the bare service, and
//! the cost of one fallback hop, in one criterion run. The services answer at
//! once, so this measures the layer alone (one `call` and one poll with a no-op
//! waker, no runtime). Target (issue 3): "primary answers" at most 25 ns over
//! "bare service", with no allocation on that path (`tests/fallback_alloc.rs`).
//!
//! `cargo bench --bench fallback`. On a shared machine, compare the three in the
//! same run, and run it more than once.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, Criterion};
use tower::{service_fn, Layer, Service};
use tower_llm_resilience::classify::ErrorOnlyClassifier;
use tower_llm_resilience::fallback::{FallbackLayer, Marked};

type Answer = Result<Marked<&'static str>, std::io::Error>;

fn call_once<S>(service: &mut S, request: &'static str) -> S::Response
where
    S: Service<&'static str>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    let future = pin!(service.call(request));
    match future.poll(&mut cx) {
        Poll::Ready(result) => result.unwrap(),
        Poll::Pending => unreachable!("every service here answers at once"),
    }
}

fn bench(c: &mut Criterion) {
    let answer = |request: &'static str| std::future::ready::<Answer>(Ok(Marked::new(request)));
    let down = |_: &'static str| std::future::ready::<Answer>(Err(std::io::Error::other("down")));
    let layer = FallbackLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .alternate("secondary", service_fn(answer))
        .final_responder("template", |_| Marked::new("sorry"))
        .build()
        .unwrap();

    let mut group = c.benchmark_group("fallback");
    let mut bare = service_fn(answer);
    group.bench_function("bare service", |b| {
        b.iter(|| call_once(&mut bare, black_box("hi")))
    });
    let mut primary_answers = layer.layer(service_fn(answer));
    group.bench_function("primary answers", |b| {
        b.iter(|| call_once(&mut primary_answers, black_box("hi")))
    });
    let mut one_hop = layer.layer(service_fn(down));
    group.bench_function("one fallback hop", |b| {
        b.iter(|| {
            let answer = call_once(&mut one_hop, black_box("hi"));
            assert!(answer.degraded.is_some());
            answer
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
