//! Classification of HTTP responses by status and headers.

use http::{HeaderMap, StatusCode};

use super::{headers::retry_after, ClassifyResponse, FailureKind, Outcome};

/// Classify an HTTP answer by its status and headers alone.
///
/// | status | outcome |
/// |---|---|
/// | 1xx, 2xx, 3xx | `Success` |
/// | 408 | `Timeout` |
/// | 401, 403 | `Auth` |
/// | 429 | `RateLimited { retry_after }` |
/// | other 4xx | `BadRequest` |
/// | 503, 529 | `Overloaded { retry_after }` |
/// | other 5xx | `ServerError` |
///
/// `retry_after` comes from [`retry_after`](super::retry_after).
pub fn classify_status(status: StatusCode, headers: &HeaderMap) -> Outcome {
    let kind = match status.as_u16() {
        100..=399 => return Outcome::Success,
        408 => FailureKind::Timeout,
        401 | 403 => FailureKind::Auth,
        429 => FailureKind::RateLimited {
            retry_after: retry_after(headers),
        },
        503 | 529 => FailureKind::Overloaded {
            retry_after: retry_after(headers),
        },
        400..=499 => FailureKind::BadRequest,
        _ => FailureKind::ServerError,
    };
    Outcome::Failure(kind)
}

impl<B> ClassifyResponse for http::Response<B> {
    fn classify_response(&self) -> Outcome {
        classify_status(self.status(), self.headers())
    }
}

impl ClassifyResponse for http::response::Parts {
    fn classify_response(&self) -> Outcome {
        classify_status(self.status, &self.headers)
    }
}

#[cfg(feature = "reqwest")]
impl ClassifyResponse for reqwest::Response {
    fn classify_response(&self) -> Outcome {
        classify_status(self.status(), self.headers())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    fn outcome(code: u16, retry: Option<&'static str>) -> Outcome {
        let mut builder = http::Response::builder().status(code);
        if let Some(v) = retry {
            builder = builder.header("retry-after", HeaderValue::from_static(v));
        }
        builder.body(()).unwrap().classify_response()
    }

    #[test]
    fn status_table() {
        let fail = Outcome::Failure;
        assert_eq!(outcome(200, None), Outcome::Success);
        assert_eq!(outcome(204, None), Outcome::Success);
        assert_eq!(outcome(302, None), Outcome::Success);
        assert_eq!(outcome(408, None), fail(FailureKind::Timeout));
        assert_eq!(outcome(401, None), fail(FailureKind::Auth));
        assert_eq!(outcome(403, None), fail(FailureKind::Auth));
        assert_eq!(outcome(400, None), fail(FailureKind::BadRequest));
        assert_eq!(outcome(404, None), fail(FailureKind::BadRequest));
        assert_eq!(outcome(422, None), fail(FailureKind::BadRequest));
        assert_eq!(outcome(500, None), fail(FailureKind::ServerError));
        assert_eq!(outcome(502, None), fail(FailureKind::ServerError));
        assert_eq!(outcome(504, None), fail(FailureKind::ServerError));
        assert_eq!(
            outcome(429, Some("3")),
            fail(FailureKind::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            })
        );
        assert_eq!(
            outcome(429, Some("garbage")),
            fail(FailureKind::RateLimited { retry_after: None })
        );
        assert_eq!(
            outcome(503, Some("1")),
            fail(FailureKind::Overloaded {
                retry_after: Some(Duration::from_secs(1))
            })
        );
        assert_eq!(
            outcome(529, None),
            fail(FailureKind::Overloaded { retry_after: None })
        );
        assert_eq!(outcome(599, None), fail(FailureKind::ServerError));
    }
}
