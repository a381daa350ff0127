//! FallbackLayer against real HTTP upstreams on loopback: ordered tiers, what
//! triggers a fallback, degraded markers, the combined error, request mapping.
mod support;

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use support::client::{chat, dead_url, http_tier, text, Body, BoxError};
use support::{Reply, Upstream};
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{
    ClassifiedError, ErrorOnlyClassifier, FailureCategory, FailureKind, JsonBodyClassifier,
};
use tower_llm_resilience::fallback::{
    rewrite_model, AllTiersFailed, FallbackConfigError, FallbackLayer, MarkDegraded, Marked, Tier,
};

fn template(_request: http::Request<Bytes>) -> http::Response<Body> {
    use http_body_util::BodyExt;
    let body = http_body_util::Full::new(Bytes::from_static(b"{\"answer\":\"template\"}"))
        .map_err(|never| match never {})
        .boxed();
    http::Response::new(body)
}

fn kinds(degraded: &tower_llm_resilience::Degraded) -> Vec<(usize, String, FailureKind)> {
    degraded
        .failed()
        .iter()
        .map(|t| (t.index(), t.name().to_owned(), t.kind().clone()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn primary_down_secondary_answers_marked_degraded() {
    let primary = Upstream::always(Reply::status(503, "{}")).await;
    let secondary = Upstream::always(Reply::ok_json(r#"{"answer":"secondary"}"#)).await;
    let layer = FallbackLayer::builder()
        .primary_name("gpt")
        .alternate("claude", http_tier(secondary.url()))
        .final_responder("template", template)
        .build()
        .unwrap();
    let mut service = layer.layer(http_tier(primary.url()));

    let response = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap();
    let degraded = response.degraded().expect("marked degraded").clone();
    assert_eq!((degraded.tier(), degraded.name()), (1, "claude"));
    assert!(!degraded.hedged());
    assert_eq!(
        kinds(&degraded),
        vec![(
            0,
            "gpt".into(),
            FailureKind::Overloaded { retry_after: None }
        )]
    );
    assert_eq!(response.status(), 200);
    assert_eq!(text(response).await.unwrap(), r#"{"answer":"secondary"}"#);
    assert_eq!((primary.hits(), secondary.hits()), (1, 1));
    // The secondary got the same request as the primary.
    assert_eq!(secondary.requests()[0].json(), primary.requests()[0].json());
}

#[tokio::test(start_paused = true)]
async fn primary_and_secondary_down_template_answers() {
    let secondary = Upstream::always(Reply::status(500, "{}")).await;
    let layer = FallbackLayer::builder()
        .primary_name("gpt")
        .alternate("claude", http_tier(secondary.url()))
        .final_responder("template", template)
        .build()
        .unwrap();
    let mut service = layer.layer(http_tier(dead_url()));

    let response = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap();
    let degraded = response.degraded().expect("marked degraded").clone();
    assert_eq!((degraded.tier(), degraded.name()), (2, "template"));
    assert_eq!(
        kinds(&degraded),
        vec![
            (0, "gpt".into(), FailureKind::Connect),
            (1, "claude".into(), FailureKind::ServerError),
        ]
    );
    assert_eq!(text(response).await.unwrap(), r#"{"answer":"template"}"#);
    assert_eq!(secondary.hits(), 1);
}

#[tokio::test(start_paused = true)]
async fn all_down_without_template_is_one_error_listing_every_tier() {
    let secondary = Upstream::always(Reply::status(502, "{}")).await;
    let third = Upstream::always(Reply::status(429, "{}").with_header("retry-after", "7")).await;
    let layer = FallbackLayer::builder()
        .primary_name("gpt")
        .alternate("claude", http_tier(secondary.url()))
        .alternate("mistral", http_tier(third.url()))
        .build()
        .unwrap();
    let mut service = layer.layer(http_tier(dead_url()));

    let error = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap_err();
    let all = error
        .downcast_ref::<AllTiersFailed>()
        .expect("AllTiersFailed");
    let listed: Vec<_> = all
        .tiers()
        .iter()
        .map(|t| (t.index(), t.name(), t.kind().clone()))
        .collect();
    let limited = FailureKind::RateLimited {
        retry_after: Some(Duration::from_secs(7)),
    };
    assert_eq!(
        listed,
        vec![
            (0, "gpt", FailureKind::Connect),
            (1, "claude", FailureKind::ServerError),
            (2, "mistral", limited.clone()),
        ]
    );
    // The connect error is kept; the failed responses are described by their kind.
    let errors: Vec<bool> = all.failures().map(|(_, e)| e.is_some()).collect();
    assert_eq!(errors, vec![true, false, false]);
    assert!(error
        .to_string()
        .starts_with("all 3 fallback tiers failed: gpt: connect"));
    // Classified as the chain's failure: the retryable one with the shortest
    // wait, the earliest tier on a tie (here the primary's connect error, not
    // the last tier's 7 s rate limit).
    use tower_llm_resilience::classify::ClassifyError;
    assert_eq!(error.classify_error(), FailureKind::Connect);
    assert_eq!(all.last_kind(), &limited);
}

#[tokio::test(start_paused = true)]
async fn bad_request_from_the_primary_is_not_hidden() {
    let primary = Upstream::always(Reply::status(400, r#"{"error":{"message":"bad"}}"#)).await;
    let secondary = Upstream::always(Reply::ok_json("{}")).await;
    let layer = FallbackLayer::builder()
        .alternate("claude", http_tier(secondary.url()))
        .final_responder("template", template)
        .build()
        .unwrap();
    let mut service = layer.layer(http_tier(primary.url()));

    let response = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.degraded().is_none());
    assert_eq!(
        text(response).await.unwrap(),
        r#"{"error":{"message":"bad"}}"#
    );
    assert_eq!(secondary.hits(), 0);

    // A 401 is not the caller's: the tier's own key failed, and the next tier
    // (with credentials of its own) answers.
    let auth = Upstream::always(Reply::status(401, r#"{"error":{"message":"bad key"}}"#)).await;
    let mut service = layer.layer(http_tier(auth.url()));
    let response = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let degraded = response.degraded().expect("answered by the alternate");
    assert_eq!(degraded.failed()[0].kind(), &FailureKind::Auth);
    assert_eq!((auth.hits(), secondary.hits()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn rate_limit_falls_back_and_reports_retry_after() {
    let primary = Upstream::always(
        Reply::status(429, r#"{"error":{"type":"rate_limit_error"}}"#)
            .with_header("retry-after", "5"),
    )
    .await;
    let secondary = Upstream::always(Reply::ok_json(r#"{"answer":"claude"}"#)).await;
    let layer = FallbackLayer::builder()
        .primary_name("gpt")
        .alternate("claude", http_tier(secondary.url()))
        .build()
        .unwrap();
    let mut service = layer.layer(http_tier(primary.url()));

    let response = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap();
    let degraded = response.degraded().unwrap();
    assert_eq!(degraded.name(), "claude");
    assert_eq!(
        degraded.failed()[0].kind(),
        &FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(5))
        }
    );
    assert_eq!(secondary.hits(), 1);
}

#[tokio::test(start_paused = true)]
async fn context_length_skips_to_the_larger_context_tier() {
    let too_long = r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
    let primary = Upstream::always(Reply::status(400, too_long)).await;
    let small = Upstream::always(Reply::ok_json(r#"{"answer":"small"}"#)).await;
    let large = Upstream::always(Reply::ok_json(r#"{"answer":"large"}"#)).await;
    let layer = FallbackLayer::builder()
        .primary_name("gpt-4o")
        .classifier(JsonBodyClassifier)
        .alternate("gpt-4o-mini", http_tier(small.url()).buffered())
        .tier(
            Tier::new("gpt-4.1", http_tier(large.url()).buffered())
                .map_request(rewrite_model("gpt-4.1"))
                .accepts(FailureCategory::ContextLengthExceeded),
        )
        .build()
        .unwrap();
    let mut service = layer.layer(http_tier(primary.url()).buffered());

    let response = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(response.body().as_ref(), br#"{"answer":"large"}"#);
    let degraded = response.degraded().unwrap();
    assert_eq!((degraded.tier(), degraded.name()), (2, "gpt-4.1"));
    assert_eq!(
        kinds(degraded),
        vec![(0, "gpt-4o".into(), FailureKind::ContextLengthExceeded)]
    );
    assert_eq!(small.hits(), 0, "the smaller-context tier is skipped");
    let sent = large.requests()[0].json();
    assert_eq!(sent["model"], "gpt-4.1");
    assert_eq!(sent["messages"][0]["content"], "hello");

    // A 503 from the primary goes to the next tier in order, as usual.
    let overloaded = Upstream::always(Reply::status(503, "{}")).await;
    let mut service = layer.layer(http_tier(overloaded.url()).buffered());
    let response = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(response.body().as_ref(), br#"{"answer":"small"}"#);
}

#[tokio::test(start_paused = true)]
async fn context_length_without_a_larger_tier_returns_the_primary_answer() {
    let too_long = r#"{"error":{"code":"context_length_exceeded"}}"#;
    let primary = Upstream::always(Reply::status(400, too_long)).await;
    let secondary = Upstream::always(Reply::ok_json("{}")).await;
    let layer = FallbackLayer::builder()
        .classifier(JsonBodyClassifier)
        .alternate("claude", http_tier(secondary.url()).buffered())
        .final_responder("template", |_| http::Response::new(Bytes::new()))
        .build()
        .unwrap();
    let mut service = layer.layer(http_tier(primary.url()).buffered());

    let response = service
        .ready()
        .await
        .unwrap()
        .call(chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.body().as_ref(), too_long.as_bytes());
    assert!(response.degraded().is_none());
    assert_eq!(secondary.hits(), 0);
}

/// An alternate that never becomes ready.
#[derive(Clone)]
struct NeverReady;

impl Service<http::Request<Bytes>> for NeverReady {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Pending
    }

    fn call(&mut self, _request: http::Request<Bytes>) -> Self::Future {
        unreachable!("never ready, never called")
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_alternate_never_blocks_calls_the_primary_answers() {
    let primary = Upstream::always(Reply::ok_json(r#"{"answer":"primary"}"#)).await;
    let layer = FallbackLayer::builder()
        .alternate("stuck", NeverReady)
        .build()
        .unwrap();
    let mut service = layer.layer(http_tier(primary.url()));
    for _ in 0..3 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(chat("gpt-4o"))
            .await
            .unwrap();
        assert!(response.degraded().is_none());
        assert_eq!(text(response).await.unwrap(), r#"{"answer":"primary"}"#);
    }
    assert_eq!(primary.hits(), 3);
}

#[tokio::test(start_paused = true)]
async fn other_response_types_read_the_marker_through_marked() {
    let primary = tower::service_fn(|_: String| async {
        Err::<Marked<String>, BoxError>(
            ClassifiedError::new(FailureKind::QuotaExhausted, "out of credit").into(),
        )
    });
    let secondary =
        tower::service_fn(|prompt: String| async move { Ok::<_, BoxError>(Marked::new(prompt)) });
    let layer = FallbackLayer::builder()
        .classifier(ErrorOnlyClassifier)
        .alternate("local", secondary)
        .build()
        .unwrap();
    let answer = layer.layer(primary).oneshot("hi".to_owned()).await.unwrap();
    assert_eq!(answer.value, "hi");
    let degraded = answer.degraded().unwrap();
    assert_eq!(degraded.failed()[0].kind(), &FailureKind::QuotaExhausted);
}

#[test]
fn bad_configurations_are_errors() {
    // `build()` checks the layer's bounds too, so the types must fit a fallback.
    type Layer = FallbackLayer<String, http::Response<String>, BoxError>;
    let ok =
        || tower::service_fn(|s: String| async move { Ok::<_, BoxError>(http::Response::new(s)) });
    assert_eq!(
        Layer::builder().build().unwrap_err(),
        FallbackConfigError::NoTiers
    );
    assert_eq!(
        Layer::builder()
            .alternate("a", ok())
            .alternate("a", ok())
            .build()
            .unwrap_err(),
        FallbackConfigError::DuplicateName("a".into())
    );
    assert_eq!(
        Layer::builder()
            .primary_name("a")
            .alternate("a", ok())
            .build()
            .unwrap_err(),
        FallbackConfigError::DuplicateName("a".into())
    );
    assert_eq!(
        Layer::builder().alternate("", ok()).build().unwrap_err(),
        FallbackConfigError::EmptyName
    );
    assert_eq!(
        Layer::builder()
            .final_responder("t", http::Response::new)
            .hedge_after(Duration::from_secs(1))
            .build()
            .unwrap_err(),
        FallbackConfigError::HedgeWithoutAlternate
    );
    assert_eq!(
        Layer::builder()
            .alternate("a", ok())
            .hedge_after(Duration::ZERO)
            .build()
            .unwrap_err(),
        FallbackConfigError::ZeroDuration("hedge_after")
    );
    let error = Layer::builder()
        .alternate("a", ok())
        .first_event_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(
        error,
        FallbackConfigError::ZeroDuration("first_event_timeout")
    );
    assert!(error.to_string().contains("first_event_timeout"));
    assert!(Layer::builder()
        .final_responder("t", http::Response::new)
        .build()
        .is_ok());
}

#[test]
fn services_and_futures_are_send() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let layer = FallbackLayer::builder()
        .alternate("claude", http_tier(dead_url()))
        .first_event_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    send_sync(&layer);
    let mut service = layer.layer(http_tier(dead_url()));
    send_sync(&service);
    let future = service.call(chat("gpt-4o"));
    send(&future);
}
