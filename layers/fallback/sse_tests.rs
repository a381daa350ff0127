//! Unit tests of `FirstEvent` and `SseBody`.

use super::*;
use crate::classify::FailureKind;

#[derive(Debug, PartialEq, Eq)]
enum Scan {
    Data,
    Error(FailureKind),
    Incomplete,
}

fn first_event(buffer: &[u8]) -> Scan {
    let mut progress = Progress::new(DEFAULT_MAX_EVENT_BYTES, TerminalEvent::default());
    progress.feed(buffer).unwrap();
    match (progress.events, progress.first_error) {
        (0, _) => Scan::Incomplete,
        (_, Some(kind)) => Scan::Error(kind),
        (_, None) => Scan::Data,
    }
}

#[test]
fn first_event_needs_a_complete_data_event() {
    assert_eq!(first_event(b""), Scan::Incomplete);
    assert_eq!(first_event(b": keep-alive\n\n"), Scan::Incomplete);
    assert_eq!(first_event(b"event: ping\n\n"), Scan::Incomplete);
    assert_eq!(first_event(b"data: {\"a\":1}\n"), Scan::Incomplete);
    assert_eq!(first_event(b"data: {\"a\":1}\n\n"), Scan::Data);
    assert_eq!(first_event(b": hi\r\n\r\ndata: x\r\n\r\n"), Scan::Data);
    assert_eq!(first_event(b"data\n\n"), Scan::Data);
    // Lone CRs end lines; a byte order mark may lead the stream.
    assert_eq!(first_event(b": hi\r\rdata: x\r\r"), Scan::Data);
    assert_eq!(first_event(b"data: x\r"), Scan::Incomplete);
    assert_eq!(first_event(b"\xef\xbb\xbfdata: x\n\n"), Scan::Data);
    assert_eq!(
        first_event(b"\xef\xbb\xbfdata: {\"error\":{\"code\":\"content_filter\"}}\n\n"),
        Scan::Error(FailureKind::ContentFiltered)
    );
}

#[test]
fn error_events_are_classified() {
    let anthropic = b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"x\"}}\n\n";
    assert_eq!(
        first_event(anthropic),
        Scan::Error(FailureKind::Overloaded { retry_after: None })
    );
    let openai = b"data: {\"error\":{\"code\":\"context_length_exceeded\"}}\n\n";
    assert_eq!(
        first_event(openai),
        Scan::Error(FailureKind::ContextLengthExceeded)
    );
    assert_eq!(
        first_event(b"event: error\ndata: nope\n\n"),
        Scan::Error(FailureKind::Other)
    );
}

#[test]
fn multi_line_data_is_joined() {
    let split = b"data: {\"error\":\ndata: {\"code\":\"content_filter\"}}\n\n";
    assert_eq!(
        first_event(split),
        Scan::Error(FailureKind::ContentFiltered)
    );
}

mod bodies {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body::{Body, Frame};
    use http_body_util::{BodyExt, Full};

    use super::super::*;
    use crate::fallback::{FirstEventError, SseBody};

    /// A body that is always ready with an empty frame.
    struct EmptyFrames;

    impl Body for EmptyFrames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(Some(Ok(Frame::data(Bytes::new()))))
        }
    }

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn sse<B>(body: B) -> http::Response<B> {
        http::Response::builder()
            .header("content-type", "Text/Event-Stream; charset=utf-8")
            .body(body)
            .unwrap()
    }

    async fn settle<B>(
        settings: FirstEvent,
        body: B,
    ) -> Result<http::Response<SseBody<B>>, BoxError>
    where
        B: Body + Unpin,
        B::Data: Buf,
        B::Error: Into<BoxError>,
    {
        settings.settle(sse(body)).await
    }

    #[tokio::test]
    async fn a_body_always_ready_with_empty_frames_yields() {
        let mut future = FirstEvent::new(Duration::from_secs(1)).settle(sse(EmptyFrames));
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        for round in 1..=3 {
            assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
            assert_eq!(
                wakes.0.load(Ordering::SeqCst),
                round,
                "asks to be polled again"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_always_ready_with_empty_frames_still_times_out() {
        let settings = FirstEvent::new(Duration::from_secs(1));
        let mut future = settings.settle(sse(EmptyFrames));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        tokio::time::advance(Duration::from_secs(2)).await;
        let Poll::Ready(Err(error)) = Pin::new(&mut future).poll(&mut cx) else {
            panic!("the time-to-first-token limit applies");
        };
        assert!(matches!(
            error.downcast_ref::<FirstEventError>(),
            Some(FirstEventError::TimedOut(_))
        ));
    }

    #[tokio::test]
    async fn the_prefix_limit_counts_bytes_before_the_first_event() {
        let settings = FirstEvent::new(Duration::from_secs(1)).max_prefix_bytes(16);
        // 16 bytes of comments, then the event in the same frame: accepted.
        let at_limit = Full::new(Bytes::from_static(b": 3456789abcde\n\ndata: x\n\n"));
        assert!(settle(settings, at_limit).await.is_ok());
        // 17 bytes and no event: refused, before the rest arrives.
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b": 3456789abcdef\n\n"))),
            Ok(Frame::data(Bytes::from_static(b"data: x\n\n"))),
        ];
        let over = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let error = settle(settings, over).await.unwrap_err();
        assert!(matches!(
            error.downcast_ref::<FirstEventError>(),
            Some(FirstEventError::TooLarge(16))
        ));
        // At exactly 16 bytes without an event, it waits for more.
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b": 3456789abcde\n\n"))),
            Ok(Frame::data(Bytes::from_static(b"data: x\n\n"))),
        ];
        let exact = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        assert!(settle(settings, exact).await.is_ok());
    }

    #[tokio::test]
    async fn a_started_stream_reports_its_end_and_size_honestly() {
        let stream = b"data: a\n\ndata: [DONE]\n\n";
        let settings = FirstEvent::new(Duration::from_secs(1)).idle_timeout(None);
        let response = settle(settings, Full::new(Bytes::from_static(stream)))
            .await
            .unwrap();
        let mut body = response.into_body();
        assert!(body.is_event_stream());
        // The whole stream was read ahead into the prefix.
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().lower(), stream.len() as u64);
        assert_eq!(body.size_hint().upper(), Some(stream.len() as u64));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, &stream[..]);
        // The prefix is gone; the end has not been checked yet.
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().upper(), Some(0));
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn an_incomplete_stream_is_not_at_its_end_until_its_error_is_read() {
        let settings = FirstEvent::new(Duration::from_secs(1)).idle_timeout(None);
        let response = settle(settings, Full::new(Bytes::from_static(b"data: a\n\n")))
            .await
            .unwrap();
        let mut body = response.into_body();
        body.frame().await.unwrap().unwrap();
        assert!(!body.is_end_stream(), "an error is still to come");
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.to_string().contains("terminal event"), "{error}");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn buffered_and_passed_bodies_report_their_size() {
        let json = http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
            .unwrap();
        let settings = FirstEvent::new(Duration::from_secs(1));
        let mut body = settings.settle(json).await.unwrap().into_body();
        assert!(!body.is_event_stream());
        assert_eq!(body.size_hint().exact(), Some(7));
        assert!(!body.is_end_stream());
        body.frame().await.unwrap().unwrap();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));

        let passed = SseBody::new(Full::new(Bytes::from_static(b"abc")));
        assert_eq!(passed.size_hint().exact(), Some(3));
        assert!(!passed.is_end_stream());
        assert!(SseBody::new(http_body_util::Empty::<Bytes>::new()).is_end_stream());
    }

    #[tokio::test]
    async fn an_empty_answer_settles_at_once() {
        let settings = FirstEvent::new(Duration::from_secs(1));
        let empty = http::Response::new(http_body_util::Empty::<Bytes>::new());
        let Settlement::Now(Ok(response)) = settings.try_settle(empty) else {
            panic!("nothing to read");
        };
        assert_eq!(response.into_body().into_buffered().unwrap(), "");
        let empty_json = http::Response::builder()
            .header("content-type", "application/json")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        assert!(matches!(
            settings.try_settle(empty_json),
            Settlement::Now(Err(_))
        ));
    }
}
