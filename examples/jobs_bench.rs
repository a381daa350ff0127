//! Throughput of a batch run as jobs on 1, 2 and 4 apalis worker processes on
//! Redis, beside the same batch in one process through `PartialBatchLayer`,
//! in one run:
//!
//! ```sh
//! cargo run --release --features apalis --example jobs_bench
//! ```
//!
//! The batch: 10,000 items against a mock upstream that answers each call after
//! 20 ms; every worker (and the in-process layer) runs 32 items at a time.
//! It starts its own `redis-server` (Debian's `redis-server`) on a free port and
//! its worker processes (this binary, `worker` mode); figures are items per
//! second from submission to the last result, medians of `ROUNDS` rounds.
//! Optional arguments: `ITEMS ROUNDS` (default 10000 3).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::classify::ErrorOnlyClassifier;
use tower_llm_resilience::jobs::{self, BatchWorker, ItemJob, JobStore};
use tower_llm_resilience::partial_batch::{Batch, PartialBatchLayer};
use tower_llm_resilience::redis::RedisJobStore;
use tower_llm_resilience::BoxError;

const LATENCY: Duration = Duration::from_millis(20);
const CONCURRENCY: usize = 32;

/// The mock upstream: answers after [`LATENCY`].
fn upstream() -> impl Service<
    u32,
    Response = u32,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<u32, BoxError>> + Send,
> + Clone
       + Send
       + 'static {
    service_fn(|i: u32| async move {
        tokio::time::sleep(LATENCY).await;
        Ok::<_, BoxError>(i)
    })
}

fn config(queue: &str) -> apalis_redis::Config {
    let config = jobs::redis_storage_config(queue);
    match std::env::var("JOBS_BENCH_FETCH")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        Some(jobs_per_fetch) => config.batch_size(jobs_per_fetch),
        None => config,
    }
}

/// `worker URL QUEUE PREFIX`: one worker, until killed.
async fn worker(url: &str, queue: &str, prefix: &str) -> Result<(), BoxError> {
    let client = redis::Client::open(url)?;
    let store = RedisJobStore::new(client.clone())?.prefix(prefix);
    let conn = client.get_connection_manager().await?;
    let storage = RedisStorage::<ItemJob<u32>>::new(conn.clone()).with_config(config(queue));
    let _promoter = jobs::spawn_redis_promoter(conn, config(queue), Duration::from_millis(100));
    let service = BatchWorker::builder(store)
        .classifier(ErrorOnlyClassifier)
        .build(upstream())?;
    WorkerBuilder::new(format!(
        "bench-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ))
    .backend(storage)
    .concurrency(CONCURRENCY)
    .build(service)
    .run()
    .await?;
    Ok(())
}

/// CPU seconds (user + system) process `pid` has used, from `/proc` (Linux;
/// 0 elsewhere).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command name's closing parenthesis: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Clock ticks of 10 ms (USER_HZ is 100 on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

/// One run: items per second, and CPU milliseconds per item spent by the
/// processes that did the work (the workers and Redis, or this process).
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    cpu_ms_per_item: f64,
    /// Of which Redis.
    redis_ms_per_item: f64,
}

/// Items per second of one in-process batch.
async fn in_process(items: usize) -> Result<Run, BoxError> {
    let layer = PartialBatchLayer::builder()
        .concurrency(CONCURRENCY)
        .classifier(ErrorOnlyClassifier)
        .build()?;
    let mut service = layer.layer(upstream());
    let batch = Batch::from_pairs((0..items as u32).map(|i| (format!("item-{i:05}"), i)));
    let cpu = cpu_secs(std::process::id());
    let started = Instant::now();
    let report = service.ready().await?.call(batch).await?;
    assert_eq!(report.ok, items);
    Ok(Run {
        rate: items as f64 / started.elapsed().as_secs_f64(),
        cpu_ms_per_item: (cpu_secs(std::process::id()) - cpu) * 1000.0 / items as f64,
        redis_ms_per_item: 0.0,
    })
}

/// Items per second of one batch on `workers` worker processes.
async fn distributed(
    url: &str,
    redis_pid: u32,
    items: usize,
    workers: usize,
    round: usize,
) -> Result<Run, BoxError> {
    let queue = format!("bench-q-{workers}-{round}");
    let prefix = format!("bench-{workers}-{round}");
    let client = redis::Client::open(url)?;
    let store = RedisJobStore::new(client.clone())?.prefix(prefix.as_str());
    let conn = client.get_connection_manager().await?;
    let mut storage = RedisStorage::<ItemJob<u32>>::new(conn.clone()).with_config(config(&queue));
    // The workers first (started and connected), then the batch.
    let exe = std::env::current_exe()?;
    let mut children: Vec<Killed> = (0..workers)
        .map(|_| {
            Command::new(&exe)
                .args(["worker", url, &queue, &prefix])
                .stdout(Stdio::null())
                .spawn()
                .map(Killed)
        })
        .collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = |children: &[Killed]| {
        cpu_secs(redis_pid) + children.iter().map(|c| cpu_secs(c.0.id())).sum::<f64>()
    };
    let cpu = busy(&children);
    let redis_cpu = cpu_secs(redis_pid);
    let started = Instant::now();
    let batch: Vec<(String, u32)> = (0..items as u32)
        .map(|i| (format!("item-{i:05}"), i))
        .collect();
    jobs::submit_to_redis(&mut storage, &conn, &config(&queue), &store, "bench", batch).await?;
    if std::env::var_os("JOBS_BENCH_VERBOSE").is_some() {
        eprintln!("{workers} workers: submitted in {:?}", started.elapsed());
    }
    loop {
        let progress = store.progress("bench").await?.ok_or("the batch is gone")?;
        if progress.is_finished() {
            assert_eq!(progress.done, items, "{progress:?}");
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!("not finished in 10 minutes: {progress:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = items as f64 / started.elapsed().as_secs_f64();
    let cpu_ms_per_item = (busy(&children) - cpu) * 1000.0 / items as f64;
    let redis_ms_per_item = (cpu_secs(redis_pid) - redis_cpu) * 1000.0 / items as f64;
    children.clear();
    Ok(Run {
        rate,
        cpu_ms_per_item,
        redis_ms_per_item,
    })
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        return worker(&args[2], &args[3], &args[4]).await;
    }
    let items: usize = args.get(1).map_or(Ok(10_000), |a| a.parse())?;
    let rounds: usize = args.get(2).map_or(Ok(3), |a| a.parse())?;
    let port = free_port();
    let redis = Killed(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot start redis-server (apt-get install redis-server): {e}")
            })?,
    );
    let url = format!("redis://127.0.0.1:{port}/");
    let started = Instant::now();
    while redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .is_err()
    {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("redis-server did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{items} items, mock latency {LATENCY:?}, {CONCURRENCY} in flight per process, median of {rounds} rounds"
    );
    let mut baseline = Vec::new();
    let mut by_workers = vec![Vec::new(); 3];
    // Interleaved rounds: a slow moment of the machine hits every column.
    for round in 0..rounds {
        baseline.push(in_process(items).await?);
        for (slot, workers) in [1, 2, 4].into_iter().enumerate() {
            by_workers[slot].push(distributed(&url, redis.0.id(), items, workers, round).await?);
        }
    }
    let rate = |runs: &[Run]| median(runs.iter().map(|r| r.rate).collect());
    let cpu = |runs: &[Run]| median(runs.iter().map(|r| r.cpu_ms_per_item).collect());
    let (base, one) = (rate(&baseline), rate(&by_workers[0]));
    let redis_cpu = |runs: &[Run]| median(runs.iter().map(|r| r.redis_ms_per_item).collect());
    println!(
        "| run | items/s | vs in-process | scaling vs 1 worker | CPU ms per item | of which Redis |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| in-process PartialBatchLayer | {base:.0} | 1.00x | | {:.3} | |",
        cpu(&baseline)
    );
    for (slot, workers) in [1, 2, 4].into_iter().enumerate() {
        let runs = &by_workers[slot];
        println!(
            "| {workers} worker process{} | {:.0} | {:.2}x | {:.2}x | {:.3} | {:.3} |",
            if workers > 1 { "es" } else { "" },
            rate(runs),
            rate(runs) / base,
            rate(runs) / one,
            cpu(runs),
            redis_cpu(runs)
        );
    }
    println!(
        "CPU ms per item: user + system time of this process (in-process) or of the \
         workers and redis-server (distributed), from /proc; {} CPUs here.",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    Ok(())
}
