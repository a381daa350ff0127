//! A batch of 200 "documents" through a flaky summariser, with a progress bar.
//!
//! The summariser (a stand-in for an LLM client) is rate limited now and then and
//! cannot fit a few long documents. `PartialBatchLayer` retries the rate limits,
//! reports the long documents as fatal after one attempt, and drives an
//! `indicatif` bar from its progress events. A second run with the same batch id
//! takes every success from the store and sends only the failures again.
//!
//! ```sh
//! cargo run --example partial_batch_progress
//! ```

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};
use tower_llm_resilience::partial_batch::{
    Batch, BatchReport, InMemoryBatchStore, PartialBatchLayer, ProgressEvent,
};
use tower_llm_resilience::BoxError;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let summarise = service_fn(|doc: String| async move {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(5..40))).await;
        if doc.len() > 60 {
            let kind = FailureKind::ContextLengthExceeded;
            return Err::<String, BoxError>(ClassifiedError::new(kind, "TOKEN_LIMIT").into());
        }
        if fastrand::u8(0..100) < 10 {
            let kind = FailureKind::RateLimited {
                retry_after: Some(Duration::from_millis(200)),
            };
            return Err(ClassifiedError::new(kind, "RATE_LIMIT").into());
        }
        Ok(format!("{} words", doc.split_whitespace().count()))
    });

    let store = InMemoryBatchStore::new();
    let mut batches = ServiceBuilder::new()
        .layer(
            PartialBatchLayer::builder()
                .concurrency(16)
                .max_attempts(4)
                .backoff(Duration::from_millis(50), Duration::from_secs(1))
                .deadline(Duration::from_secs(60))
                .classifier(ErrorOnlyClassifier)
                .store(store)
                .build()?,
        )
        .service(summarise);

    for run in 1..=2 {
        let bar = ProgressBar::new(200).with_style(ProgressStyle::with_template(
            "{prefix} [{bar:40}] {pos}/{len} {msg}",
        )?);
        bar.set_prefix(format!("run {run}"));
        let observer = bar.clone();
        let batch = documents()
            .with_id("example-batch")
            .on_progress(move |p| match &p.event {
                ProgressEvent::Retrying { kind, delay, .. } => {
                    observer.set_message(format!("{}: {kind}, retry in {delay:?}", p.key));
                }
                event if event.is_finished() => observer.set_position(p.finished as u64),
                _ => {}
            });
        let report = batches.ready().await?.call(batch).await?;
        bar.finish_with_message("done");
        print_summary(&report);
    }
    Ok(())
}

fn documents() -> Batch<String> {
    Batch::from_pairs((0..200).map(|i| {
        let words = if i % 40 == 7 { 20 } else { 5 };
        (format!("doc-{i:03}"), "lorem ipsum ".repeat(words))
    }))
}

fn print_summary(report: &BatchReport<String>) {
    println!(
        "ok {} (cached {}), failed {}, unfinished {}, in {:?}",
        report.ok, report.cached, report.failed, report.unfinished, report.duration
    );
    for item in report.failures() {
        if let Some(failure) = item.failure() {
            let fatal = if failure.fatal { "fatal" } else { "gave up" };
            println!(
                "  {}: {} ({fatal}, {} attempts)",
                item.key, failure.kind, item.attempts
            );
        }
    }
}
