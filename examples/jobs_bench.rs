//! Throughput of a batch run as jobs on 1, 2 and 4 apalis worker processes,
//! with the queue and the `JobStore` on Redis, then both on PostgreSQL, beside
//! the same batch in one process through `PartialBatchLayer`, in one run:
//!
//! ```sh
//! cargo run --release --features apalis-postgres --example jobs_bench
//! ```
//!
//! The batch: 10,000 items against a mock upstream that answers each call after
//! 20 ms; every worker (and the in-process layer) runs 32 items at a time.
//! It starts its own servers on free ports, stopped at the end: `redis-server`
//! (Debian's `redis-server`; no snapshots, no append-only file) and PostgreSQL
//! (Debian's `postgresql`: `initdb` into a temporary directory, run as an
//! unprivileged user when we are root; `fsync=off`, or `on` with
//! `JOBS_BENCH_PG_FSYNC=on`), each PostgreSQL run on a fresh database; and its
//! worker processes (this binary, `worker` and `worker-pg` mode). Figures are
//! items per second from submission to the last result, medians of `ROUNDS`
//! interleaved rounds. Optional arguments: `ITEMS ROUNDS` (default 10000 3).
//! With `--features apalis` alone it measures Redis only.
//!
//! Environment: `JOBS_BENCH_FETCH=N` fetches N jobs at a time (both queues;
//! default 1, as the `jobs` module expects), `JOBS_BENCH_VERBOSE` prints each
//! run's submission time.

use std::future::Future;
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

#[cfg(feature = "apalis-postgres")]
#[path = "../tests/support/postgres.rs"]
mod postgres_server;

#[cfg(feature = "apalis-postgres")]
use apalis_postgres::{PgPool, PostgresStorage};
#[cfg(feature = "apalis-postgres")]
use postgres_server::PostgresServer;
#[cfg(feature = "apalis-postgres")]
use tower_llm_resilience::postgres::{Postgres, PostgresJobStore};

const LATENCY: Duration = Duration::from_millis(20);
const CONCURRENCY: usize = 32;
const WORKERS: [usize; 3] = [1, 2, 4];
const BATCH: &str = "bench";

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

fn items_of(count: usize) -> Vec<(String, u32)> {
    (0..count as u32)
        .map(|i| (format!("item-{i:05}"), i))
        .collect()
}

/// `JOBS_BENCH_FETCH`: jobs per fetch, when set.
fn jobs_per_fetch() -> Option<usize> {
    std::env::var("JOBS_BENCH_FETCH")
        .ok()
        .and_then(|n| n.parse().ok())
}

fn redis_config(queue: &str) -> apalis_redis::Config {
    let config = jobs::redis_storage_config(queue);
    match jobs_per_fetch() {
        Some(n) => config.batch_size(n),
        None => config,
    }
}

/// llm-proxy's settings (one job per fetch, a worker silent for six
/// heartbeats taken for dead) with the tests' 500 ms heartbeat: an
/// apalis-postgres 1.0.0 worker that found the queue empty looks again only
/// at its next heartbeat (it has no poll interval).
#[cfg(feature = "apalis-postgres")]
fn postgres_config(queue: &str) -> apalis_postgres::Config {
    apalis_postgres::Config::default()
        .queue(queue)
        .batch_size(jobs_per_fetch().unwrap_or(1))
        .heartbeat_interval(Duration::from_millis(500))
        .missed_heartbeats(6)
}

fn worker_name() -> String {
    format!("bench-{}-{}", std::process::id(), fastrand::u32(..))
}

/// `worker URL QUEUE PREFIX`: one worker on Redis, until killed.
async fn worker_redis(url: &str, queue: &str, prefix: &str) -> Result<(), BoxError> {
    let client = redis::Client::open(url)?;
    let store = RedisJobStore::new(client.clone())?.prefix(prefix);
    let conn = client.get_connection_manager().await?;
    let storage = RedisStorage::<ItemJob<u32>>::new(conn.clone()).with_config(redis_config(queue));
    let _promoter =
        jobs::spawn_redis_promoter(conn, redis_config(queue), Duration::from_millis(100));
    let service = BatchWorker::builder(store)
        .classifier(ErrorOnlyClassifier)
        .build(upstream())?;
    WorkerBuilder::new(worker_name())
        .backend(storage)
        .concurrency(CONCURRENCY)
        .build(service)
        .run()
        .await?;
    Ok(())
}

/// `worker-pg URL QUEUE`: one worker on PostgreSQL (queue and store on the
/// same database, a pool of 16 connections each, as llm-proxy's default),
/// until killed.
#[cfg(feature = "apalis-postgres")]
async fn worker_postgres(url: &str, queue: &str) -> Result<(), BoxError> {
    let store = PostgresJobStore::new(&Postgres::builder(url).pool_size(16).build()?);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await?;
    let storage = PostgresStorage::<ItemJob<u32>>::new(&pool).with_config(postgres_config(queue));
    let service = BatchWorker::builder(store)
        .classifier(ErrorOnlyClassifier)
        .build(upstream())?;
    WorkerBuilder::new(worker_name())
        .backend(storage)
        .concurrency(CONCURRENCY)
        .build(service)
        .run()
        .await?;
    Ok(())
}

/// The fields of `/proc/PID/stat` after the command name (Linux): state is
/// `[0]`, the parent's pid `[1]`, user and system ticks `[11]` and `[12]`,
/// those of waited-for children `[13]` and `[14]`.
fn proc_stat(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // The state is a letter: 0 in its place keeps the indices.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// Clock ticks of 10 ms (USER_HZ is 100 on Linux).
fn ticks_to_secs(ticks: u64) -> f64 {
    ticks as f64 / 100.0
}

/// CPU seconds (user + system) process `pid` has used, from `/proc` (Linux;
/// 0 elsewhere).
fn cpu_secs(pid: u32) -> f64 {
    proc_stat(pid).map_or(0.0, |f| ticks_to_secs(f[11] + f[12]))
}

/// CPU seconds of PostgreSQL: the postmaster `pid`, the children it has now
/// (a backend per connection, the background processes) and those that exited
/// (counted in its own stat once it waited for them).
#[cfg(feature = "apalis-postgres")]
fn cpu_secs_with_children(pid: u32) -> f64 {
    let own = proc_stat(pid).map_or(0, |f| f[11] + f[12] + f[13] + f[14]);
    let children: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_stat)
        .filter(|f| f[1] == u64::from(pid))
        .map(|f| f[11] + f[12])
        .sum();
    ticks_to_secs(own + children)
}

/// One run: items per second, and CPU milliseconds per item spent by the
/// processes that did the work (the workers and the store's server, or this
/// process).
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    cpu_ms_per_item: f64,
    /// Of which the server (Redis, or PostgreSQL and its backends).
    server_ms_per_item: f64,
}

/// Items per second of one in-process batch.
async fn in_process(items: usize) -> Result<Run, BoxError> {
    let layer = PartialBatchLayer::builder()
        .concurrency(CONCURRENCY)
        .classifier(ErrorOnlyClassifier)
        .build()?;
    let mut service = layer.layer(upstream());
    let batch = Batch::from_pairs(items_of(items));
    let cpu = cpu_secs(std::process::id());
    let started = Instant::now();
    let report = service.ready().await?.call(batch).await?;
    assert_eq!(report.ok, items);
    Ok(Run {
        rate: items as f64 / started.elapsed().as_secs_f64(),
        cpu_ms_per_item: (cpu_secs(std::process::id()) - cpu) * 1000.0 / items as f64,
        server_ms_per_item: 0.0,
    })
}

/// One batch of `items` on `workers` worker processes (this binary with
/// `worker_args`): the workers first (started and connected), then `submit`,
/// then `store`'s progress until the batch is finished.
async fn distributed(
    store: &dyn JobStore,
    worker_args: &[&str],
    server_cpu: &dyn Fn() -> f64,
    items: usize,
    workers: usize,
    submit: impl Future<Output = Result<(), BoxError>>,
) -> Result<Run, BoxError> {
    let exe = std::env::current_exe()?;
    let mut children: Vec<Killed> = (0..workers)
        .map(|_| {
            Command::new(&exe)
                .args(worker_args)
                .stdout(Stdio::null())
                .spawn()
                .map(Killed)
        })
        .collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = |children: &[Killed]| {
        server_cpu() + children.iter().map(|c| cpu_secs(c.0.id())).sum::<f64>()
    };
    let cpu = busy(&children);
    let server = server_cpu();
    let started = Instant::now();
    submit.await?;
    if std::env::var_os("JOBS_BENCH_VERBOSE").is_some() {
        eprintln!(
            "{} {workers} workers: submitted in {:?}",
            worker_args[0],
            started.elapsed()
        );
    }
    loop {
        let progress = store.progress(BATCH).await?.ok_or("the batch is gone")?;
        if progress.is_finished() {
            assert_eq!(progress.done, items, "{progress:?}");
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!("not finished in 10 minutes: {progress:?}").into());
        }
        for child in &mut children {
            if let Some(status) = child.0.try_wait()? {
                return Err(format!("a worker exited ({status}): {progress:?}").into());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = items as f64 / started.elapsed().as_secs_f64();
    let cpu_ms_per_item = (busy(&children) - cpu) * 1000.0 / items as f64;
    let server_ms_per_item = (server_cpu() - server) * 1000.0 / items as f64;
    children.clear();
    Ok(Run {
        rate,
        cpu_ms_per_item,
        server_ms_per_item,
    })
}

/// One batch on `workers` processes, queue and store on Redis.
async fn on_redis(
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
    let mut storage =
        RedisStorage::<ItemJob<u32>>::new(conn.clone()).with_config(redis_config(&queue));
    let config = redis_config(&queue);
    let submit = async {
        jobs::submit_to_redis(&mut storage, &conn, &config, &store, BATCH, items_of(items))
            .await
            .map(drop)
    };
    let args = ["worker", url, &queue, &prefix];
    distributed(
        &store,
        &args,
        &|| cpu_secs(redis_pid),
        items,
        workers,
        submit,
    )
    .await
}

/// One batch on `workers` processes, queue and store on PostgreSQL, in a
/// fresh database (apalis-postgres keeps every job's row: each run starts on
/// empty tables).
#[cfg(feature = "apalis-postgres")]
async fn on_postgres(
    server: &PostgresServer,
    postmaster: u32,
    items: usize,
    workers: usize,
) -> Result<Run, BoxError> {
    let url = server.url(&server.create_database());
    let pg = Postgres::builder(&url).build()?;
    pg.migrate().await?;
    let pool = PgPool::connect(&url).await?;
    PostgresStorage::<()>::setup(&pool).await?;
    let store = PostgresJobStore::new(&pg);
    let queue = format!("bench-q-{workers}");
    let mut storage =
        PostgresStorage::<ItemJob<u32>>::new(&pool).with_config(postgres_config(&queue));
    let submit = async {
        jobs::submit(&mut storage, &store, BATCH, items_of(items))
            .await
            .map(drop)
    };
    let args = ["worker-pg", &url, &queue];
    let server_cpu = || cpu_secs_with_children(postmaster);
    distributed(&store, &args, &server_cpu, items, workers, submit).await
}

/// The postmaster's pid: the parent of a backend.
#[cfg(feature = "apalis-postgres")]
async fn postmaster_pid(server: &PostgresServer) -> Result<u32, BoxError> {
    let pool = PgPool::connect(&server.url("postgres")).await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    let parent = proc_stat(backend as u32).ok_or("no /proc: CPU time needs Linux")?[1];
    pool.close().await;
    Ok(parent as u32)
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

/// A `redis-server` on a free port, without persistence; stopped when dropped.
async fn start_redis() -> Result<(Killed, String), BoxError> {
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
    Ok((redis, url))
}

fn rate(runs: &[Run]) -> f64 {
    median(runs.iter().map(|r| r.rate).collect())
}

/// The table's rows of one backend: a column of runs per worker count.
fn print_rows(backend: &str, by_workers: &[Vec<Run>], base: f64) {
    let one = rate(&by_workers[0]);
    for (runs, workers) in by_workers.iter().zip(WORKERS) {
        println!(
            "| {backend}, {workers} worker process{} | {:.0} | {:.2}x | {:.2}x | {:.3} | {:.3} |",
            if workers > 1 { "es" } else { "" },
            rate(runs),
            rate(runs) / base,
            rate(runs) / one,
            median(runs.iter().map(|r| r.cpu_ms_per_item).collect()),
            median(runs.iter().map(|r| r.server_ms_per_item).collect()),
        );
    }
}

async fn bench(items: usize, rounds: usize) -> Result<(), BoxError> {
    let (redis, redis_url) = start_redis().await?;
    #[cfg(feature = "apalis-postgres")]
    let fsync = std::env::var("JOBS_BENCH_PG_FSYNC").is_ok_and(|v| v == "on");
    #[cfg(feature = "apalis-postgres")]
    let (postgres, postmaster) = {
        // Stopped when dropped, on an error or Ctrl-C too.
        let server = if fsync {
            PostgresServer::start_durable()
        } else {
            PostgresServer::start()
        };
        let postmaster = postmaster_pid(&server).await?;
        (server, postmaster)
    };
    println!(
        "{items} items, mock latency {LATENCY:?}, {CONCURRENCY} in flight per process, median of {rounds} rounds"
    );
    let mut baseline = Vec::new();
    let mut redis_runs = vec![Vec::new(); WORKERS.len()];
    #[cfg(feature = "apalis-postgres")]
    let mut postgres_runs = vec![Vec::new(); WORKERS.len()];
    // Interleaved rounds: a slow moment of the machine hits every column.
    for round in 0..rounds {
        baseline.push(in_process(items).await?);
        for (slot, workers) in WORKERS.into_iter().enumerate() {
            let run = on_redis(&redis_url, redis.0.id(), items, workers, round).await?;
            redis_runs[slot].push(run);
        }
        #[cfg(feature = "apalis-postgres")]
        for (slot, workers) in WORKERS.into_iter().enumerate() {
            let run = on_postgres(&postgres, postmaster, items, workers).await?;
            postgres_runs[slot].push(run);
        }
    }
    let base = rate(&baseline);
    println!(
        "| run | items/s | vs in-process | scaling vs 1 worker | CPU ms per item | of which the server |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| in-process PartialBatchLayer | {base:.0} | 1.00x | | {:.3} | |",
        median(baseline.iter().map(|r| r.cpu_ms_per_item).collect())
    );
    print_rows("Redis", &redis_runs, base);
    #[cfg(feature = "apalis-postgres")]
    print_rows("PostgreSQL", &postgres_runs, base);
    #[cfg(not(feature = "apalis-postgres"))]
    let postgres_note = "";
    #[cfg(feature = "apalis-postgres")]
    let postgres_note = if fsync {
        " PostgreSQL with fsync=on."
    } else {
        " PostgreSQL with fsync=off."
    };
    println!(
        "CPU ms per item: user + system time of this process (in-process) or of the \
         workers and the server (redis-server; PostgreSQL's postmaster and its \
         backends), from /proc; {} CPUs here.{postgres_note}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("missing argument");
    match args.get(1).map(String::as_str) {
        Some("worker") => return worker_redis(arg(2)?, arg(3)?, arg(4)?).await,
        #[cfg(feature = "apalis-postgres")]
        Some("worker-pg") => return worker_postgres(arg(2)?, arg(3)?).await,
        _ => {}
    }
    let items: usize = args.get(1).map_or(Ok(10_000), |a| a.parse())?;
    let rounds: usize = args.get(2).map_or(Ok(3), |a| a.parse())?;
    // On Ctrl-C the benchmark is dropped, and with it the servers and workers
    // it started.
    tokio::select! {
        result = bench(items, rounds) => result,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    }
}
