//! A reqwest client behind a circuit breaker and a timeout, calling a local
//! upstream that fails for a while and then recovers.
//!
//! Run: `cargo run --example circuit_breaker --features reqwest`

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::{Reply, Upstream};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // Fails with 503 for its first 4 requests, then answers.
    let upstream = Upstream::start(|_, n| {
        if n < 4 {
            Reply::status(
                503,
                r#"{"error":{"type":"overloaded_error","message":"busy"}}"#,
            )
        } else {
            Reply::ok_json(r#"{"choices":[{"message":{"content":"hello"}}]}"#)
        }
    })
    .await;

    let breaker = CircuitBreakerLayer::builder()
        .name("local-llm")
        .consecutive_failures(3)
        .cooldown(Duration::from_millis(300))
        .build()?;
    let handle = breaker.handle();
    let mut events = handle.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            println!(
                "  circuit {} -> {} ({:?})",
                event.from, event.to, event.cause
            );
        }
    });

    let mut client = ServiceBuilder::new()
        .layer(breaker)
        .timeout(Duration::from_secs(30))
        .service(reqwest::Client::new());

    let url: reqwest::Url = format!("{}/v1/chat/completions", upstream.url()).parse()?;
    for attempt in 1..=8 {
        let request = reqwest::Request::new(reqwest::Method::POST, url.clone());
        match client.ready().await?.call(request).await {
            Ok(response) => println!("call {attempt}: HTTP {}", response.status()),
            Err(e) => match e.downcast_ref::<CircuitOpen>() {
                Some(open) => println!("call {attempt}: rejected, {open}"),
                None => println!("call {attempt}: error: {e}"),
            },
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("upstream saw {} requests for 8 calls", upstream.hits());
    Ok(())
}
