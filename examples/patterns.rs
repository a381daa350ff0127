//! A tour of the four patterns: each scenario of the original project, run in
//! process against in-memory services with scripted failures, in milliseconds.
//!
//! ```sh
//! cargo run --example patterns
//! ```
//!
//! Prints one line per pattern and the total time, and exits non-zero if any
//! outcome is not what the scenario expects. Time is tokio's paused clock, so
//! cooldowns and `Retry-After` waits pass at once. `tests/patterns_example.rs`
//! runs the same scenarios in CI.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier};
use tower_llm_resilience::escalation::{EscalationError, InvalidJsonAnswer, RESUME_TOKEN_HEADER};
use tower_llm_resilience::partial_batch::{Batch, InMemoryBatchStore};
use tower_llm_resilience::{
    BoxError, CircuitBreakerLayer, CircuitOpen, EscalationLayer, FailureKind, FallbackLayer,
    MarkDegraded, PartialBatchLayer,
};

/// One pattern's line: what happened, or how it differs from the scenario.
type Line = Result<String, String>;

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> ExitCode {
    let started = Instant::now();
    let lines = run().await;
    let mut failed = 0;
    for (pattern, line) in &lines {
        match line {
            Ok(what) => println!("ok   {pattern}: {what}"),
            Err(why) => {
                failed += 1;
                println!("FAIL {pattern}: {why}");
            }
        }
    }
    println!(
        "{} passed, {failed} failed in {:.1?}",
        lines.len() - failed,
        started.elapsed()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Every scenario, in the order of the original project's README.
pub async fn run() -> Vec<(&'static str, Line)> {
    vec![
        ("circuit breaker", circuit_breaker().await),
        ("partial success", partial_success().await),
        ("human escalation", human_escalation().await),
        ("graceful degradation", graceful_degradation().await),
    ]
}

/// One call, its error as text.
async fn call<S, Req>(service: &mut S, request: Req) -> Result<S::Response, String>
where
    S: Service<Req>,
    S::Error: std::fmt::Display,
{
    let ready = service.ready().await.map_err(|e| e.to_string())?;
    ready.call(request).await.map_err(|e| e.to_string())
}

/// `expected == actual`, or the difference.
fn expect<T: PartialEq + std::fmt::Debug>(
    what: &str,
    expected: T,
    actual: T,
) -> Result<(), String> {
    if expected == actual {
        Ok(())
    } else {
        Err(format!("{what}: expected {expected:?}, got {actual:?}"))
    }
}

/// 20 calls to an upstream that answers 4 times, then fails for good: 5 failures
/// in a row open the circuit, the other 11 calls fail fast without reaching it.
/// After the cooldown the upstream is back, and one probe closes the circuit.
async fn circuit_breaker() -> Line {
    let calls = Arc::new(AtomicUsize::new(0));
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let upstream = {
        let (calls, healthy) = (calls.clone(), healthy.clone());
        service_fn(move |_prompt: &'static str| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let up = n < 4 || healthy.load(Ordering::SeqCst);
            async move {
                let status = if up { 200 } else { 500 };
                let response = http::Response::builder().status(status).body(())?;
                Ok::<_, BoxError>(response)
            }
        })
    };
    let layer = CircuitBreakerLayer::builder()
        .name("upstream")
        .consecutive_failures(5)
        .cooldown(Duration::from_secs(30))
        .jitter(0.0)
        .build()
        .map_err(|e| e.to_string())?;
    let handle = layer.handle();
    let mut service = layer.layer(upstream);

    let (mut ok, mut failed, mut rejected) = (0, 0, 0);
    for _ in 0..20 {
        match service
            .ready()
            .await
            .map_err(|e| e.to_string())?
            .call("hi")
            .await
        {
            Ok(response) if response.status().is_success() => ok += 1,
            Ok(_) => failed += 1,
            Err(error) if error.is::<CircuitOpen>() => rejected += 1,
            Err(_) => failed += 1,
        }
    }
    expect("ok, failed, rejected", (4, 5, 11), (ok, failed, rejected))?;
    expect("upstream calls", 9, calls.load(Ordering::SeqCst))?;

    healthy.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(31)).await;
    let probe = service
        .ready()
        .await
        .map_err(|e| e.to_string())?
        .call("hi")
        .await;
    expect("probe answered", true, probe.is_ok())?;
    let state = format!("{:?}", handle.circuit().state());
    expect("state after the probe", "Closed", state.as_str())?;
    Ok(format!(
        "{ok} ok, {failed} failed, {rejected} rejected without a call; closed again by a probe after the 30s cooldown"
    ))
}

/// 8 documents: one too long for the model (fatal, tried once), two rate limited
/// once (retried after the server's wait). A re-run of the same batch id takes the
/// 7 answers from the store and sends only the failed document again.
async fn partial_success() -> Line {
    let calls = Arc::new(AtomicUsize::new(0));
    let summarise = {
        let calls = calls.clone();
        let limited = Arc::new(std::sync::Mutex::new(vec!["item:b", "item:e"]));
        service_fn(move |doc: &'static str| {
            calls.fetch_add(1, Ordering::SeqCst);
            let first_try_of_limited = {
                let mut limited = limited.lock().expect("not poisoned");
                let position = limited.iter().position(|d| *d == doc);
                position.map(|at| limited.remove(at)).is_some()
            };
            async move {
                if doc == "item:g" {
                    let error =
                        ClassifiedError::new(FailureKind::ContextLengthExceeded, "too long");
                    return Err::<String, BoxError>(error.into());
                }
                if first_try_of_limited {
                    let wait = Some(Duration::from_secs(2));
                    let error =
                        ClassifiedError::new(FailureKind::RateLimited { retry_after: wait }, "429");
                    return Err(error.into());
                }
                Ok(format!("summary of {doc}"))
            }
        })
    };
    let layer = PartialBatchLayer::builder()
        .concurrency(4)
        .max_attempts(3)
        .classifier(ErrorOnlyClassifier)
        .store(InMemoryBatchStore::new())
        .seed(7)
        .build()
        .map_err(|e| e.to_string())?;
    let mut batches = layer.layer(summarise);
    let docs = || {
        let keys = [
            "item:a", "item:b", "item:c", "item:d", "item:e", "item:f", "item:g", "item:h",
        ];
        Batch::from_pairs(keys.map(|key| (key, key))).with_id("nightly")
    };

    let report = call(&mut batches, docs()).await?;
    let retried = report.items.iter().filter(|item| item.attempts > 1).count();
    let fatal = report
        .get("item:g")
        .and_then(|item| item.failure())
        .map(|f| (f.kind.clone(), f.fatal));
    expect("ok, failed", (7, 1), (report.ok, report.failed))?;
    expect("items retried", 2, retried)?;
    expect(
        "item:g",
        Some((FailureKind::ContextLengthExceeded, true)),
        fatal,
    )?;
    expect("calls", 10, calls.load(Ordering::SeqCst))?;

    let again = call(&mut batches, docs()).await?;
    expect("re-run ok, cached", (7, 7), (again.ok, again.cached))?;
    expect("calls after the re-run", 11, calls.load(Ordering::SeqCst))?;
    Ok(format!(
        "{} ok ({retried} after a retry), {} failed (context length, not retried); re-run: {} from the store, 1 call",
        report.ok, report.failed, again.cached
    ))
}

/// The model cannot answer in JSON: the call escalates and hands out a resume
/// token; a human answers; the caller resumes with the token and gets the
/// human's answer; the same token does not work twice.
async fn human_escalation() -> Line {
    let layer = EscalationLayer::builder(InvalidJsonAnswer)
        .detach(Duration::from_secs(3600))
        .build()
        .map_err(|e| e.to_string())?;
    let handle = layer.handle();
    let mut llm = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: http::Request<Bytes>| async {
            let body = r#"{"choices":[{"message":{"content":"I am not sure, sorry"}}]}"#;
            Ok::<_, BoxError>(http::Response::new(Bytes::from(body)))
        });
    let request = || {
        http::Request::post("/v1/chat/completions")
            .body(Bytes::from(
                r#"{"messages":[{"role":"user","content":"parse this form"}]}"#,
            ))
            .expect("a valid request")
    };

    let error = match llm
        .ready()
        .await
        .map_err(|e| e.to_string())?
        .call(request())
        .await
    {
        Ok(_) => return Err("the first call answered instead of escalating".into()),
        Err(error) => error,
    };
    let Some(EscalationError::Escalated(escalated)) = error.downcast_ref::<EscalationError>()
    else {
        return Err(format!("expected an escalation, got {error}"));
    };
    let token = escalated.token().expose().to_owned();
    handle
        .answer(&escalated.id, "alice", serde_json::json!({"name": "Ada"}))
        .await
        .map_err(|e| e.to_string())?;

    let resume = || {
        let mut resumed = request();
        resumed
            .headers_mut()
            .insert(RESUME_TOKEN_HEADER, token.parse().expect("a header value"));
        resumed
    };
    let answer = call(&mut llm, resume()).await?;
    expect(
        "resumed answer",
        &br#"{"name":"Ada"}"#[..],
        answer.body().as_ref(),
    )?;
    let again = llm
        .ready()
        .await
        .map_err(|e| e.to_string())?
        .call(resume())
        .await;
    let reused = matches!(
        again
            .as_ref()
            .map_err(|e| e.downcast_ref::<EscalationError>()),
        Err(Some(EscalationError::AlreadyUsed { .. }))
    );
    expect("token refused the second time", true, reused)?;
    Ok("escalated with a resume token, answered by a human, resumed once; the token is refused after".into())
}

/// GPT-4 is rate limited: Claude answers, marked degraded. Then Claude is down
/// too: the template answers. Every call gets an answer.
async fn graceful_degradation() -> Line {
    let claude_up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let gpt = service_fn(|_prompt: String| async {
        let limited = http::Response::builder()
            .status(429)
            .header("retry-after", "20")
            .body(String::new())?;
        Ok::<_, BoxError>(limited)
    });
    let claude = {
        let up = claude_up.clone();
        service_fn(move |prompt: String| {
            let up = up.load(Ordering::SeqCst);
            async move {
                let status = if up { 200 } else { 503 };
                Ok::<_, BoxError>(
                    http::Response::builder()
                        .status(status)
                        .body(format!("claude: {prompt}"))?,
                )
            }
        })
    };
    let fallback = FallbackLayer::builder()
        .primary_name("gpt-4")
        .alternate("claude", claude)
        .final_responder("template", |_: String| {
            http::Response::new("We are busy; please retry shortly.".to_owned())
        })
        .build()
        .map_err(|e| e.to_string())?;
    let mut service = fallback.layer(gpt);

    let first = call(&mut service, "Explain the".to_owned()).await?;
    let by = |r: &http::Response<String>| r.degraded().map(|d| d.name().to_owned());
    expect("first answer from", Some("claude".to_owned()), by(&first))?;
    expect("first answer", "claude: Explain the", first.body().as_str())?;
    let first_failure = first
        .degraded()
        .and_then(|d| d.failed().first())
        .map(|f| f.kind().clone());
    expect(
        "gpt-4 failed with",
        Some(FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(20)),
        }),
        first_failure,
    )?;

    claude_up.store(false, Ordering::SeqCst);
    let second = call(&mut service, "Explain the".to_owned()).await?;
    expect(
        "second answer from",
        Some("template".to_owned()),
        by(&second),
    )?;
    Ok(
        "gpt-4 rate limited: claude answered (degraded); claude down too: the template answered"
            .into(),
    )
}
