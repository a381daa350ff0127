//! `[cache]`: hits, bypass, opt-in, streams replayed from the cache, degraded
//! answers never stored, and a hit recorded as a cached request of no cost.

use super::common::{ask, get_json, header, sse_text, Env, CLIENT_KEY};
use serde_json::Value;

async fn env(mode: &str) -> Env {
    let mode = mode.to_owned();
    Env::start_edited(move |text| {
        format!(
            "{text}\n[usage]\nenabled = true\n[usage.prices.\"gpt-4o\"]\ninput = 2.5\noutput = 10.0\n\
             [cache]\nmode = \"{mode}\"\n"
        )
    })
    .await
}

fn deterministic(model: &str) -> Value {
    let mut body = ask(model);
    body["temperature"] = 0.into();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_deterministic_request_is_a_hit_and_costs_nothing() {
    let env = env("deterministic").await;
    let first = env.chat(deterministic("solo")).await;
    assert_eq!(header(&first, "x-llm-proxy-cache"), "miss");
    let first = first.text().await.unwrap();
    let second = env.chat(deterministic("solo")).await;
    assert_eq!(header(&second, "x-llm-proxy-cache"), "hit");
    assert_eq!(header(&second, "x-llm-proxy-degraded"), "false");
    assert_eq!(second.text().await.unwrap(), first);
    assert_eq!(env.primary.requests(), 1);

    // Bypassed on request, or not deterministic: the upstream answers.
    let bypass = env
        .chat_with(deterministic("solo"), &[("x-llm-proxy-cache", "bypass")])
        .await;
    assert_eq!(header(&bypass, "x-llm-proxy-cache"), "bypass");
    assert_eq!(
        header(&env.chat(ask("solo")).await, "x-llm-proxy-cache"),
        "bypass"
    );
    assert_eq!(env.primary.requests(), 3);

    let usage = get_json(&env.http, &env.url("/v1/usage"), CLIENT_KEY).await;
    let totals = &usage["totals"];
    assert_eq!(totals["requests"], 4);
    assert_eq!(totals["cached"], 1);
    // Three answers paid (62 500 each); the hit cost nothing.
    assert_eq!(totals["cost_nano_usd"], 3 * 62_500);
    assert_eq!(totals["input_tokens"], 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_in_mode_caches_only_what_asks() {
    let env = env("opt_in").await;
    assert_eq!(
        header(&env.chat(deterministic("solo")).await, "x-llm-proxy-cache"),
        "bypass"
    );
    let opted = [("x-llm-proxy-cache", "use")];
    assert_eq!(
        header(
            &env.chat_with(ask("solo"), &opted).await,
            "x-llm-proxy-cache"
        ),
        "miss"
    );
    assert_eq!(
        header(
            &env.chat_with(ask("solo"), &opted).await,
            "x-llm-proxy-cache"
        ),
        "hit"
    );
    assert_eq!(env.primary.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_request_is_served_the_stored_answer_as_an_event_stream() {
    let env = env("deterministic").await;
    let stored: Value = env.chat(deterministic("solo")).await.json().await.unwrap();
    let mut stream = deterministic("solo");
    stream["stream"] = true.into();
    let response = env.chat(stream).await;
    assert_eq!(header(&response, "x-llm-proxy-cache"), "hit");
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    let (text, done, error) = sse_text(&response.text().await.unwrap());
    assert_eq!(text, super::common::content(&stored));
    assert!(done && !error);
    // A real SSE client (the library's OpenAI-compatible client, which also asks
    // for stream usage) reads the replay as a whole, well-ended stream.
    let client = tower_llm_resilience::client::OpenAiClient::builder()
        .base_url(format!("{}/v1", env.proxy.url()))
        .api_key(CLIENT_KEY)
        .build()
        .unwrap();
    let request = tower_llm_resilience::client::ChatRequest::new(vec![
        tower_llm_resilience::client::Message::user("Say hello"),
    ])
    .model("solo")
    .temperature(0.0)
    .stream(true);
    let stream = tower::ServiceExt::oneshot(client.streaming(), request)
        .await
        .expect("the stream opens");
    let answer = stream.into_response().await.expect("a whole stream");
    assert_eq!(answer.content, super::common::content(&stored));
    assert_eq!(
        env.primary.requests(),
        1,
        "both streams came from the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_answers_are_never_stored() {
    let env = env("deterministic").await;
    env.primary.set(|o| o.fail_rate = 1.0);
    for _ in 0..2 {
        let response = env.chat(deterministic("strict")).await;
        assert_eq!(header(&response, "x-llm-proxy-degraded"), "true");
        assert_eq!(header(&response, "x-llm-proxy-cache"), "miss");
    }
    assert_eq!(env.secondary.requests(), 2);
}

/// 100 identical deterministic requests at once: the upstream is asked once,
/// the other 99 wait for that answer and are served it as hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_misses_make_one_upstream_call() {
    use super::common::raw::{completion, json_answer, read_request, two_tier_config};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    // An upstream that holds every answer until the test opens its gate.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let (open, gate) = tokio::sync::watch::channel(false);
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (counted, mut gate) = (counted.clone(), gate.clone());
            tokio::spawn(async move {
                if read_request(&mut socket).await.is_some() {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.wait_for(|open| *open).await;
                    let _ = socket.write_all(&json_answer(&completion("once"))).await;
                }
            });
        }
    });
    let config = two_tier_config(&base, &base, "[cache]\nmode = \"deterministic\"\n");
    let proxy = llm_proxy::Proxy::start(&config).unwrap();
    let http = reqwest::Client::new();
    let asks = (0..100).map(|_| {
        let request = http
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .bearer_auth(super::common::CLIENT_KEY)
            .json(&deterministic("one"))
            .send();
        tokio::spawn(request)
    });
    let asks: Vec<_> = asks.collect();

    // Open the gate once the other 99 wait for the first.
    let waiting = || async {
        let metrics = http
            .get(format!("{}/metrics", proxy.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("llm_proxy_cache_waiting "))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while waiting().await < 99.0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("99 requests wait for the first");
    // The leader's call may still be on its way to the upstream: it arrives,
    // alone.
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first request reaches the upstream");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    open.send_replace(true);

    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for ask in asks {
        let answer = ask.await.unwrap().unwrap();
        assert_eq!(answer.status(), 200);
        *outcomes
            .entry(header(&answer, "x-llm-proxy-cache"))
            .or_default() += 1;
        let body: Value = answer.json().await.unwrap();
        assert_eq!(super::common::content(&body), "once");
    }
    assert_eq!(outcomes.get("miss"), Some(&1), "{outcomes:?}");
    assert_eq!(outcomes.get("hit"), Some(&99), "{outcomes:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one upstream call");
    assert_eq!(waiting().await, 0.0);
}
