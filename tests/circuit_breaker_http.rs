//! Composition: `ServiceBuilder` + circuit breaker + `tower::timeout` + a reqwest
//! client, against a real HTTP server on 127.0.0.1 that fails on demand.
#![cfg(feature = "reqwest")]

mod support;

use std::time::Duration;

use support::{Reply, Upstream};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_llm_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
use tower_llm_resilience::classify::{Classify, DefaultClassifier, FailureKind, Outcome};

#[tokio::test(start_paused = true)]
async fn breaker_over_timeout_over_reqwest() {
    let upstream = Upstream::sequence(vec![
        Reply::status(500, r#"{"error":{"type":"server_error","message":"boom"}}"#),
        Reply::status(503, "{}").with_header("retry-after", "1"),
        Reply::Stall,
        Reply::ok_json(r#"{"choices":[]}"#),
    ])
    .await;
    let breaker = CircuitBreakerLayer::builder()
        .name("upstream")
        .consecutive_failures(3)
        .cooldown(Duration::from_secs(10))
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let mut client = ServiceBuilder::new()
        .layer(breaker)
        .timeout(Duration::from_secs(5))
        .service(reqwest::Client::new());
    let url = format!("{}/v1/chat/completions", upstream.url());
    async fn post<S>(client: &mut S, url: &str) -> Result<reqwest::Response, BoxError>
    where
        S: Service<reqwest::Request, Response = reqwest::Response, Error = BoxError>,
    {
        let request = reqwest::Request::new(reqwest::Method::POST, url.parse().unwrap());
        client.ready().await?.call(request).await
    }

    // Two failing statuses: the responses come back (they are not errors) but count.
    let first = post(&mut client, &url).await.unwrap();
    assert_eq!(first.status(), 500);
    let second = post(&mut client, &url).await.unwrap();
    let result: Result<_, BoxError> = Ok(second);
    assert_eq!(
        DefaultClassifier.classify(&result),
        Outcome::Failure(FailureKind::Overloaded {
            retry_after: Some(Duration::from_secs(1))
        })
    );
    // A stalled upstream: tower's timeout fires (paused time), the third failure.
    let timed_out = post(&mut client, &url).await.unwrap_err();
    assert!(
        timed_out.is::<tower::timeout::error::Elapsed>(),
        "{timed_out}"
    );
    assert_eq!(handle.circuit().state(), CircuitState::Open);

    // Open: rejected at once, the server sees nothing.
    let rejected = post(&mut client, &url).await.unwrap_err();
    assert!(rejected.is::<CircuitOpen>());
    assert_eq!(upstream.hits(), 3);

    tokio::time::advance(Duration::from_secs(10)).await;
    let recovered = post(&mut client, &url).await.unwrap();
    assert_eq!(recovered.status(), 200);
    assert_eq!(handle.circuit().state(), CircuitState::Closed);
    assert_eq!(upstream.hits(), 4);
}
