//! A simulation, in one run: three replicas of one model, one of them slow, then
//! failing, then healthy again (in phases), under a steady stream of calls.
//!
//! - p99 latency and success rate of p2c over peak EWMA with a circuit breaker
//!   per replica (`balance::Builder`), against round-robin and random choice;
//! - the retry amplification factor (upstream calls per client request) during
//!   a total outage, with the retry budget and without it.
//!
//! Time is tokio's paused clock: replica latencies are virtual, so the figures
//! are the same on any machine and in any build profile.
//!
//! `cargo bench --bench balance` (prints a table; no criterion).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::buffer::Buffer;
use tower::{Service, ServiceExt};
use tower_llm_resilience::balance;
use tower_llm_resilience::circuit_breaker::CircuitBreakerLayer;
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
use tower_llm_resilience::retry::RetryLayer;
use tower_llm_resilience::BoxError;

/// Calls arrive every `ARRIVAL` for `RUN`.
const ARRIVAL: Duration = Duration::from_millis(5);
const RUN: Duration = Duration::from_secs(60);
/// A call that has not answered after this long counts as failed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a replica does at a given moment of the run.
#[derive(Clone, Copy)]
enum Behaviour {
    Answer(Duration),
    Fail(Duration),
}

/// The replicas' phases: `c` is healthy, then 10x slower, then failing, then
/// healthy; `a` and `b` are healthy throughout.
fn phases(replica: usize, at: Duration) -> Behaviour {
    let normal = Behaviour::Answer(Duration::from_millis(50));
    if replica != 2 {
        return normal;
    }
    match at.as_secs() {
        0..15 => normal,
        15..30 => Behaviour::Answer(Duration::from_millis(500)),
        30..45 => Behaviour::Fail(Duration::from_millis(20)),
        _ => normal,
    }
}

/// A simulated replica: answers or fails after a virtual delay, by phase.
#[derive(Clone)]
struct Replica {
    index: usize,
    started: Instant,
    behaviour: fn(usize, Duration) -> Behaviour,
    calls: Arc<AtomicUsize>,
}

type Answer = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

impl Service<()> for Replica {
    type Response = ();
    type Error = BoxError;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: ()) -> Answer {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let behaviour = (self.behaviour)(self.index, self.started.elapsed());
        Box::pin(async move {
            match behaviour {
                Behaviour::Answer(latency) => {
                    tokio::time::sleep(latency).await;
                    Ok(())
                }
                Behaviour::Fail(latency) => {
                    tokio::time::sleep(latency).await;
                    Err(ClassifiedError::new(FailureKind::ServerError, "replica failed").into())
                }
            }
        })
    }
}

fn replicas(behaviour: fn(usize, Duration) -> Behaviour) -> Vec<Replica> {
    let started = Instant::now();
    (0..3)
        .map(|index| Replica {
            index,
            started,
            behaviour,
            calls: Arc::new(AtomicUsize::new(0)),
        })
        .collect()
}

/// Round-robin or random choice over the replicas, without breakers.
#[derive(Clone)]
struct Pick {
    replicas: Vec<Replica>,
    next: Arc<AtomicUsize>,
    rng: Option<Arc<Mutex<fastrand::Rng>>>,
}

impl Service<()> for Pick {
    type Response = ();
    type Error = BoxError;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ()) -> Answer {
        let index = match &self.rng {
            Some(rng) => rng.lock().unwrap().usize(..self.replicas.len()),
            None => self.next.fetch_add(1, Ordering::Relaxed) % self.replicas.len(),
        };
        self.replicas[index].call(request)
    }
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    ok: usize,
    total: usize,
}

/// Sends one call every `ARRIVAL` for `RUN` through `service`, each on its own
/// task; waits for all of them.
async fn drive<S>(service: S) -> Tally
where
    S: Service<(), Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    let started = Instant::now();
    while started.elapsed() < RUN {
        let (service, tally) = (service.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let result = tokio::time::timeout(CLIENT_TIMEOUT, service.oneshot(())).await;
            let mut tally = tally.lock().unwrap();
            tally.total += 1;
            tally.latencies.push(sent.elapsed());
            if matches!(result, Ok(Ok(()))) {
                tally.ok += 1;
            }
        }));
        tokio::time::sleep(ARRIVAL).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(tally)
        .ok()
        .expect("every task finished")
        .into_inner()
        .unwrap()
}

fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    latencies.sort_unstable();
    let rank = ((latencies.len() as f64) * p).ceil() as usize;
    latencies[rank.saturating_sub(1).min(latencies.len() - 1)]
}

fn row(name: &str, mut tally: Tally, replicas: &[Replica]) {
    let shares: Vec<String> = replicas
        .iter()
        .map(|r| r.calls.load(Ordering::Relaxed).to_string())
        .collect();
    println!(
        "| {name} | {} | {} | {:.2}% | {} ms | {} ms | {} |",
        tally.total,
        tally.total - tally.ok,
        100.0 * tally.ok as f64 / tally.total as f64,
        percentile(&mut tally.latencies, 0.50).as_millis(),
        percentile(&mut tally.latencies, 0.99).as_millis(),
        shares.join(" / "),
    );
}

async fn balancing() {
    println!("three replicas, c: 50 ms for 15 s, 500 ms for 15 s, failing for 15 s, 50 ms for 15 s; a call every 5 ms for 60 s (virtual time)\n");
    println!("| strategy | calls | failed | success | p50 | p99 | calls to a / b / c |");
    println!("|---|---|---|---|---|---|---|");

    for (name, trip_after) in [
        ("p2c (peak EWMA) + breakers", 5),
        ("p2c (peak EWMA), breakers never trip", u32::MAX),
    ] {
        let sims = replicas(phases);
        let breaker = CircuitBreakerLayer::builder()
            .consecutive_failures(trip_after)
            .cooldown(Duration::from_secs(5))
            .jitter_seed(1)
            .classifier(ErrorOnlyClassifier);
        let (p2c, _handle) = balance::Builder::new()
            .breaker(breaker)
            .default_rtt(Duration::from_millis(50))
            .seed(1)
            .build([
                ("a", sims[0].clone()),
                ("b", sims[1].clone()),
                ("c", sims[2].clone()),
            ])
            .unwrap();
        let tally = drive(Buffer::new(p2c, 1024)).await;
        row(name, tally, &sims);
    }

    let sims = replicas(phases);
    let round_robin = Pick {
        replicas: sims.clone(),
        next: Arc::default(),
        rng: None,
    };
    row("round-robin", drive(round_robin).await, &sims);

    let sims = replicas(phases);
    let random = Pick {
        replicas: sims.clone(),
        next: Arc::default(),
        rng: Some(Arc::new(Mutex::new(fastrand::Rng::with_seed(1)))),
    };
    row("random", drive(random).await, &sims);
}

/// Every replica fails: upstream calls per client request.
async fn amplification() {
    println!("\ntotal outage (every call fails after 20 ms), a call every 5 ms for 60 s, up to 3 attempts, backoff from 100 ms\n");
    println!("| retry | requests | upstream calls | amplification |");
    println!("|---|---|---|---|");
    let down = |_: usize, _: Duration| Behaviour::Fail(Duration::from_millis(20));
    for (name, budget) in [
        ("no budget", None),
        ("budget 20% (+1/s), 10 s window", Some(0.2)),
    ] {
        let sims = replicas(down);
        let builder = RetryLayer::builder()
            .max_attempts(3)
            .base_backoff(Duration::from_millis(100))
            .seed(1)
            .classifier(ErrorOnlyClassifier);
        let layer = match budget {
            Some(ratio) => builder.budget(Duration::from_secs(10), 1, ratio),
            None => builder.without_budget(),
        }
        .build()
        .unwrap();
        let handle = layer.handle();
        let client = tower::ServiceBuilder::new()
            .layer(layer)
            .service(sims[0].clone());
        let tally = drive(client).await;
        let upstream = sims[0].calls.load(Ordering::Relaxed);
        println!(
            "| {name} | {} | {upstream} | {:.2}x |",
            tally.total,
            upstream as f64 / tally.total as f64
        );
        assert_eq!(handle.requests() as usize, tally.total);
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        balancing().await;
        amplification().await;
    });
}
