//! PartialBatchLayer against a real HTTP upstream on 127.0.0.1 (hyper server from
//! `support`, hyper-util legacy client), in paused time.
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{Reply, Upstream};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_llm_resilience::classify::{
    classify_buffered, ClassifiedError, ErrorOnlyClassifier, FailureKind, JsonBodyClassifier,
    Outcome,
};
use tower_llm_resilience::partial_batch::{Batch, InMemoryBatchStore, PartialBatchLayer};
use tower_llm_resilience::BoxError;

const RATE_LIMIT_BODY: &str =
    r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
const CONTEXT_BODY: &str = r#"{"error":{"message":"maximum context length is 8192 tokens","type":"invalid_request_error","code":"context_length_exceeded"}}"#;

/// An upstream that rate-limits its first request (Retry-After: 3), refuses
/// "too-long" documents with an OpenAI context-length error, and echoes the rest;
/// it records when each request arrived.
async fn upstream(arrivals: Arc<Mutex<Vec<(String, Instant)>>>) -> Upstream {
    Upstream::start(move |req, index| {
        arrivals
            .lock()
            .unwrap()
            .push((req.path.clone(), Instant::now()));
        if index == 0 {
            Reply::status(429, RATE_LIMIT_BODY).with_header("retry-after", "3")
        } else if req.path.contains("too-long") {
            Reply::status(400, CONTEXT_BODY)
        } else {
            Reply::ok_json(&format!(r#"{{"summary":"{}"}}"#, req.path))
        }
    })
    .await
}

/// `POST {base}/summarise/{doc}` and buffer the answer.
fn http_service(
    base: String,
) -> impl Service<String, Response = http::Response<Bytes>, Error = BoxError, Future = impl Send> + Clone
{
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    service_fn(move |doc: String| {
        let (client, uri) = (client.clone(), format!("{base}/summarise/{doc}"));
        async move {
            let request = http::Request::post(uri).body(Full::new(Bytes::from(doc)))?;
            let (parts, body) = client.request(request).await?.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, BoxError>(http::Response::from_parts(parts, body))
        }
    })
}

fn docs() -> Batch<String> {
    let names = ["d1", "d2", "d3", "d4", "too-long", "d6", "d7", "d8", "d9"];
    Batch::from_pairs(names.iter().map(|n| (n.to_string(), n.to_string())))
}

#[tokio::test(start_paused = true)]
async fn http_429_with_retry_after_pauses_the_batch() {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let up = upstream(arrivals.clone()).await;
    let layer = PartialBatchLayer::builder()
        .concurrency(3)
        .backoff(Duration::from_millis(100), Duration::from_secs(5))
        .classifier(JsonBodyClassifier)
        .seed(3)
        .build()
        .unwrap();
    let mut batches = layer.layer(http_service(up.url()));
    let started = Instant::now();
    let report = batches.ready().await.unwrap().call(docs()).await.unwrap();

    assert_eq!((report.ok, report.failed), (8, 1));
    let refused = report.get("too-long").unwrap();
    assert_eq!(refused.attempts, 1);
    let failure = refused.failure().unwrap();
    assert_eq!(failure.kind, FailureKind::ContextLengthExceeded);
    assert!(failure.fatal);
    assert_eq!(report.items.iter().map(|i| i.attempts).sum::<u32>(), 10);
    assert_eq!(up.hits(), 10, "9 documents and one retry");
    let d6 = report.get("d6").unwrap().response().unwrap();
    assert_eq!(d6.body().as_ref(), br#"{"summary":"/summarise/d6"}"#);

    // The first three went out together; the 429 came back at once; nothing
    // reached the server again until its Retry-After had elapsed.
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 10);
    assert!(arrivals[..3].iter().all(|(_, at)| *at == started));
    let resume = started + Duration::from_secs(3);
    for (path, at) in &arrivals[3..] {
        assert!(*at >= resume, "{path} arrived {:?} early", resume - *at);
    }
    let limited_path = &arrivals[0].0;
    assert_eq!(
        arrivals.iter().filter(|(p, _)| p == limited_path).count(),
        2,
        "the limited item was retried"
    );
}

#[tokio::test(start_paused = true)]
async fn http_rerun_sends_only_what_failed() {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let up = upstream(arrivals.clone()).await;
    // A client that answers the summary text and turns every failed answer into a
    // classified error: what a typed LLM client does. Its answers are serde
    // values, so they can be stored.
    let client = http_service(up.url()).and_then(|response: http::Response<Bytes>| async move {
        match classify_buffered(response.status(), response.headers(), response.body()) {
            Outcome::Success => Ok(String::from_utf8(response.body().to_vec())?),
            Outcome::Failure(kind) => {
                Err::<_, BoxError>(ClassifiedError::new(kind, "upstream refused").into())
            }
        }
    });
    let store = InMemoryBatchStore::new();
    let layer = PartialBatchLayer::builder()
        .concurrency(4)
        .max_attempts(1)
        .classifier(ErrorOnlyClassifier)
        .store(store.clone())
        .build()
        .unwrap();
    let mut batches = layer.layer(client);

    let first = batches
        .ready()
        .await
        .unwrap()
        .call(docs().with_id("b1"))
        .await
        .unwrap();
    // max_attempts(1): the rate-limited item and the too-long one failed.
    assert_eq!((first.ok, first.failed), (7, 2));
    assert_eq!(store.recorded("b1"), 7);
    assert_eq!(up.hits(), 9);

    let second = batches
        .ready()
        .await
        .unwrap()
        .call(docs().with_id("b1"))
        .await
        .unwrap();
    assert_eq!((second.ok, second.failed, second.cached), (8, 1, 7));
    assert_eq!(up.hits(), 11, "only the two failed items were sent again");
    let resent: Vec<_> = arrivals.lock().unwrap()[9..]
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert!(resent.contains(&"/summarise/too-long".to_string()));
    assert_eq!(
        second.get("too-long").unwrap().failure().unwrap().kind,
        FailureKind::ContextLengthExceeded
    );
}
