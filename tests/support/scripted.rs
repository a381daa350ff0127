//! An in-process upstream answering scripted `http::Response<Bytes>`s, counting
//! calls: for tests whose point is a timer (paused time), with no I/O in flight.
//! Include with `#[path = "support/scripted.rs"] mod scripted;`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use std::task::{Context, Poll};

use tower::Service;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Answers with its replies in order (the last one repeats), counting calls.
#[derive(Clone, Debug)]
pub struct Scripted {
    replies: Arc<Vec<http::Response<Bytes>>>,
    calls: Arc<AtomicUsize>,
}

impl Service<http::Request<Bytes>> for Scripted {
    type Response = http::Response<Bytes>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<Bytes>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let reply = self.replies[n.min(self.replies.len() - 1)].clone();
        std::future::ready(Ok(reply))
    }
}

/// A [`Scripted`] upstream with `replies`, and its call counter.
pub fn scripted(replies: Vec<http::Response<Bytes>>) -> (Scripted, Arc<AtomicUsize>) {
    assert!(!replies.is_empty());
    let calls = Arc::new(AtomicUsize::new(0));
    let service = Scripted {
        replies: Arc::new(replies),
        calls: calls.clone(),
    };
    (service, calls)
}

/// A response with this status and these headers, and an empty body.
pub fn response(status: u16, headers: &[(&str, &str)]) -> http::Response<Bytes> {
    let mut builder = http::Response::builder().status(status);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Bytes::new()).unwrap()
}

/// How many calls the counter saw.
pub fn count(calls: &AtomicUsize) -> usize {
    calls.load(Ordering::SeqCst)
}
