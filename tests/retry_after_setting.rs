//! The Retry-After ceiling is a process-wide setting (its own test binary, so no
//! other test sees the changed value).
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tower_llm_resilience::classify::{
    classify_status, max_retry_after, set_max_retry_after, FailureKind, Outcome,
    DEFAULT_MAX_RETRY_AFTER,
};

#[test]
fn the_ceiling_can_be_changed() {
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", HeaderValue::from_static("3600"));
    let wait =
        |headers: &HeaderMap| match classify_status(http::StatusCode::TOO_MANY_REQUESTS, headers) {
            Outcome::Failure(FailureKind::RateLimited { retry_after }) => retry_after,
            other => panic!("{other:?}"),
        };
    assert_eq!(wait(&headers), Some(DEFAULT_MAX_RETRY_AFTER));
    set_max_retry_after(Duration::from_secs(7200));
    assert_eq!(wait(&headers), Some(Duration::from_secs(3600)));
    set_max_retry_after(Duration::from_secs(30));
    assert_eq!(wait(&headers), Some(Duration::from_secs(30)));
    set_max_retry_after(Duration::ZERO);
    assert_eq!(max_retry_after(), Duration::from_millis(1), "at least 1 ms");
    set_max_retry_after(Duration::MAX);
    assert_eq!(wait(&headers), Some(Duration::from_secs(3600)));
}
