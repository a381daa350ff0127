//! The test upstream itself behaves as the other tests assume.
mod support;

use std::time::Duration;
use support::{Reply, Step, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn raw_get(upstream: &Upstream) -> String {
    let mut stream = tokio::net::TcpStream::connect(upstream.addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET /x HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(start_paused = true)]
async fn sequence_then_repeat_last() {
    let up = Upstream::sequence(vec![
        Reply::status(500, "{}"),
        Reply::ok_json("{\"ok\":true}").with_header("x-a", "1"),
    ])
    .await;
    assert!(raw_get(&up).await.starts_with("HTTP/1.1 500"));
    let second = raw_get(&up).await;
    assert!(second.starts_with("HTTP/1.1 200") && second.contains("x-a: 1"));
    assert!(raw_get(&up).await.contains("{\"ok\":true}"));
    assert_eq!(up.hits(), 3);
    assert_eq!(up.requests()[0].path, "/x");
}

#[tokio::test(start_paused = true)]
async fn stream_cut_has_no_terminal_chunk() {
    let up = Upstream::always(Reply::sse(vec![
        Step::data("{\"n\":1}"),
        Step::Wait(Duration::from_secs(1)),
        Step::Cut,
    ]))
    .await;
    let text = raw_get(&up).await;
    assert!(text.contains("data: {\"n\":1}"));
    assert!(!text.ends_with("0\r\n\r\n"), "{text:?}");
}
