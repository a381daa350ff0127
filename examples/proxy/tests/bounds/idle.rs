//! The idle limits the connection task times itself (no hyper timer per
//! request): a request head started after an answer is still bounded, and a
//! request in flight is never cut by them.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_started_on_a_kept_alive_connection_must_finish_in_time() {
    let env = Bounded::start(
        "client_header_timeout_secs = 0.3\nkeepalive_timeout_secs = 600",
        "",
        "",
    )
    .await;
    let mut tcp = TcpStream::connect(env.addr()).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until(&mut tcp, "ok").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Kept alive (the keep-alive timeout is far away), then a head that stalls.
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let rest = read_until_closed(&mut tcp).await;
    assert_eq!(rest, "", "the stalled head is not answered");
    assert!(started.elapsed() < Duration::from_secs(5));
    env.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_outlives_the_idle_limits() {
    let env = Bounded::start(
        "client_header_timeout_secs = 0.2\nkeepalive_timeout_secs = 0.2\n\
         client_body_timeout_secs = 600",
        "",
        "",
    )
    .await;
    let mut busy = stalled_request(&env).await;
    // Five times both idle limits: the request is in flight, not idle.
    let mut buf = [0u8; 16];
    let early = tokio::time::timeout(Duration::from_secs(1), busy.read(&mut buf)).await;
    assert!(early.is_err(), "the request in flight was cut: {early:?}");
    busy.write_all(&[b' '; 91]).await.unwrap();
    let answer = read_until(&mut busy, "\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    env.still_works().await;
}
