//! `FirstEvent` settings through the public `SettleResponse` API: the default
//! limits (prefix, event, answer) are the documented ones, zero values mean what the docs say, and
//! `try_settle` settles at once exactly when nothing needs reading.
use std::convert::Infallible;
use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tower_llm_resilience::fallback::{
    FirstEvent, FirstEventError, IncompleteAnswer, SettleResponse, Settlement, StreamFault,
    StreamInterrupted, DEFAULT_MAX_ANSWER_BYTES, DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_PREFIX_BYTES,
};

type Frames = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A body of these chunks, one frame each, all ready at once.
fn frames(chunks: Vec<Vec<u8>>) -> Frames {
    let frames: Vec<_> = chunks
        .into_iter()
        .map(|chunk| Ok(Frame::data(Bytes::from(chunk))))
        .collect();
    StreamBody::new(stream::iter(frames))
}

fn event_stream<B>(body: B) -> http::Response<B> {
    http::Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

/// `n` bytes of SSE comment lines (`:` lines of 64 bytes each, the last shorter).
fn comments(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let line = (n - out.len()).min(64);
        out.push(b':');
        out.extend(std::iter::repeat_n(b'x', line.saturating_sub(2)));
        if line >= 2 {
            out.push(b'\n');
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn the_default_prefix_limit_is_64_kib() {
    assert_eq!(DEFAULT_MAX_PREFIX_BYTES, 64 * 1024);
    let settle = FirstEvent::new(Duration::from_secs(10));
    assert_eq!(settle.limits().0, DEFAULT_MAX_PREFIX_BYTES);
    // 60 KiB of keep-alive comments before the first event: still an answer.
    let body = frames(vec![
        comments(60 * 1024),
        b"\ndata: {\"a\":1}\n\ndata: [DONE]\n\n".to_vec(),
    ]);
    let response = settle.settle(event_stream(body)).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert!(bytes.ends_with(b"data: [DONE]\n\n"));
    // Past 64 KiB without an event: refused before the event arrives.
    let body = frames(vec![
        comments(64 * 1024 + 1),
        b"\ndata: {\"a\":1}\n\n".to_vec(),
    ]);
    let error = settle.settle(event_stream(body)).await.unwrap_err();
    assert!(
        matches!(
            error.downcast_ref::<FirstEventError>(),
            Some(FirstEventError::TooLarge(limit)) if *limit == 64 * 1024
        ),
        "{error}"
    );
}

/// The error a stream's body ends with, after its first event.
async fn stream_fault(settle: FirstEvent, chunks: Vec<Vec<u8>>) -> Option<StreamFault> {
    let response = settle.settle(event_stream(frames(chunks))).await.unwrap();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if let Err(error) = frame {
            let interrupted = error
                .downcast_ref::<StreamInterrupted>()
                .unwrap_or_else(|| panic!("not a StreamInterrupted: {error}"));
            let fault = interrupted
                .source()
                .and_then(|source| source.downcast_ref::<StreamFault>())
                .expect("a stream fault");
            return Some(match fault {
                StreamFault::EventTooLarge(limit) => StreamFault::EventTooLarge(*limit),
                StreamFault::NoTerminalEvent => StreamFault::NoTerminalEvent,
                StreamFault::Silent(limit) => StreamFault::Silent(*limit),
                other => panic!("unexpected fault {other}"),
            });
        }
    }
    None
}

fn data_event(payload_len: usize) -> Vec<u8> {
    let mut event = b"data: ".to_vec();
    event.extend(std::iter::repeat_n(b'y', payload_len));
    event.extend_from_slice(b"\n\n");
    event
}

#[tokio::test(start_paused = true)]
async fn the_default_event_limit_is_1_mib() {
    assert_eq!(DEFAULT_MAX_EVENT_BYTES, 1024 * 1024);
    let settle = FirstEvent::new(Duration::from_secs(10));
    assert_eq!(settle.limits().1, DEFAULT_MAX_EVENT_BYTES);
    let first = b"data: {\"a\":1}\n\n".to_vec();
    let done = b"data: [DONE]\n\n".to_vec();
    // An event of 900 KiB passes whole.
    let fault = stream_fault(
        settle,
        vec![first.clone(), data_event(900 * 1024), done.clone()],
    )
    .await;
    assert!(fault.is_none(), "{fault:?}");
    // One over 1 MiB ends the stream with a clear error.
    let fault = stream_fault(settle, vec![first, data_event(1024 * 1024 + 16), done]).await;
    assert!(
        matches!(fault, Some(StreamFault::EventTooLarge(limit)) if limit == 1024 * 1024),
        "{fault:?}"
    );
}

/// A plain (not JSON) answer of `len` bytes, in frames of 1 MiB.
fn plain_answer(len: usize) -> http::Response<Frames> {
    let mut chunks = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(1024 * 1024);
        chunks.push(vec![b'z'; n]);
        left -= n;
    }
    http::Response::builder()
        .header("content-type", "text/plain")
        .body(frames(chunks))
        .unwrap()
}

#[tokio::test]
async fn the_default_answer_limit_is_16_mib() {
    assert_eq!(DEFAULT_MAX_ANSWER_BYTES, 16 * 1024 * 1024);
    let settle = FirstEvent::new(Duration::from_secs(10));
    assert_eq!(settle.limits().2, DEFAULT_MAX_ANSWER_BYTES);
    // Exactly 16 MiB, unannounced: read whole and passed on.
    let response = settle.settle(plain_answer(16 * 1024 * 1024)).await.unwrap();
    let bytes = response.into_body().into_buffered().unwrap();
    assert_eq!(bytes.len(), 16 * 1024 * 1024);
    // One byte more: refused while reading.
    let error = settle
        .settle(plain_answer(16 * 1024 * 1024 + 1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.downcast_ref::<IncompleteAnswer>(),
            Some(IncompleteAnswer::TooLarge(limit)) if *limit == 16 * 1024 * 1024
        ),
        "{error}"
    );
}

#[test]
fn zero_limits_mean_the_smallest_or_none() {
    let settle = FirstEvent::new(Duration::from_secs(3))
        .max_prefix_bytes(0)
        .max_event_bytes(0)
        .max_answer_bytes(0);
    assert_eq!(settle.limits(), (1, 1, 0));
    assert_eq!(settle.timeout(), Duration::from_secs(3));
    let settle = FirstEvent::new(Duration::from_secs(3))
        .max_prefix_bytes(7)
        .max_event_bytes(9)
        .max_answer_bytes(11);
    assert_eq!(settle.limits(), (7, 9, 11));
}

#[tokio::test(start_paused = true)]
async fn a_zero_idle_timeout_means_no_idle_limit() {
    for (idle, silent_fails) in [
        (Some(Duration::ZERO), false),
        (None, false),
        (Some(Duration::from_secs(30)), true),
    ] {
        let settle = FirstEvent::new(Duration::from_secs(10)).idle_timeout(idle);
        // The first event, an hour of silence, then the terminal event.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: {\"a\":1}\n\n"))))
            .await
            .unwrap();
        let body = StreamBody::new(tokio_stream_from(rx));
        let response = settle.settle(event_stream(body)).await.unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
                .await;
        });
        let collected = response.into_body().collect().await;
        assert_eq!(collected.is_err(), silent_fails, "idle timeout {idle:?}");
    }
}

/// An mpsc receiver as a stream, without another dependency.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Unpin {
    Box::pin(stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

#[tokio::test]
async fn try_settle_settles_at_once_only_when_nothing_needs_reading() {
    let json = || {
        http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
            .unwrap()
    };
    let settle = FirstEvent::new(Duration::from_secs(1));
    // Buffered (the default): a JSON answer with a body must be read first.
    let Settlement::Wait(future) = settle.try_settle(json()) else {
        panic!("a body to read");
    };
    let body = future.await.unwrap().into_body();
    assert_eq!(body.into_buffered().unwrap(), "{\"a\":1}");
    // Not buffered: passed on at once, unread.
    let unbuffered = settle.buffer_answers(false);
    let Settlement::Now(Ok(response)) = unbuffered.try_settle(json()) else {
        panic!("passed on at once");
    };
    let body = response.into_body();
    assert!(!body.is_event_stream());
    assert_eq!(body.collect().await.unwrap().to_bytes(), "{\"a\":1}");
    // An event stream waits for its first event either way.
    for settle in [settle, unbuffered] {
        let stream = event_stream(Full::new(Bytes::from_static(b"data: {}\n\n")));
        let Settlement::Wait(future) = settle.try_settle(stream) else {
            panic!("a stream waits for its first event");
        };
        assert!(future.await.unwrap().into_body().is_event_stream());
    }
    // An empty plain answer settles on the spot; an empty JSON answer fails there.
    let empty = http::Response::new(http_body_util::Empty::<Bytes>::new());
    assert!(matches!(settle.try_settle(empty), Settlement::Now(Ok(_))));
    let empty_json = http::Response::builder()
        .header("content-type", "application/json")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    assert!(matches!(
        settle.try_settle(empty_json),
        Settlement::Now(Err(_))
    ));
}
