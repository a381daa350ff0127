//! What each tier receives: the client's request bytes with only `model`
//! replaced, for the first tier and every later one, checked at hand-written
//! upstreams; bodies that cannot be rewritten are a 400 before any tier is called.

use crate::common::raw::{
    self, completion, json_answer, server_error, two_tier_config, RawUpstream, Reply,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};

/// A failing first tier and an answering second one, both recording.
async fn upstreams() -> (RawUpstream, RawUpstream) {
    let first = RawUpstream::start(|_, _| Reply::Close(server_error())).await;
    let second = RawUpstream::start(|_, _| Reply::Close(json_answer(&completion("ok")))).await;
    (first, second)
}

async fn post_raw(http: &reqwest::Client, base: &str, body: &str) -> reqwest::Response {
    http.post(format!("{base}/v1/chat/completions"))
        .bearer_auth(raw::CLIENT_KEY)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("proxy answers")
}

/// `body` with its one `"model":"two"` member's value set to `model`.
fn with_model(body: &str, model: &str) -> String {
    assert_eq!(body.matches(r#""model":"two""#).count(), 1, "{body}");
    body.replace(r#""model":"two""#, &format!(r#""model":"{model}""#))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tier_gets_the_clients_bytes_with_only_the_model_changed() {
    let (first, second) = upstreams().await;
    let proxy =
        llm_proxy::Proxy::start(&two_tier_config(&first.base_url(), &second.base_url(), ""))
            .unwrap();
    let http = reqwest::Client::new();
    let deep = format!("{}1{}", "[".repeat(3000), "]".repeat(3000));
    let cases = [
        // A number no f64 holds, and one no integer type holds.
        r#"{"model":"two","messages":[{"role":"user","content":"hi"}],"temperature":1e400}"#
            .to_owned(),
        r#"{"seed":12345678901234567890123,"model":"two","messages":[],"x":-0.000000000000000000000001e-5}"#
            .to_owned(),
        // Nesting far over serde_json's recursion limit.
        format!(r#"{{"model":"two","messages":[],"metadata":{deep}}}"#),
        // Escapes kept as written: surrogate pairs, a lone surrogate, NUL, a key.
        r#"{ "model":"two" , "messages":[{"role":"user","content":"\ud83d\ude00 \ud800 \u0000 \"q\" \/"}],"k\u0065y":"\u00e9"}"#
            .to_owned(),
        // Duplicate keys, each sent as the client wrote it.
        r#"{"n":1,"model":"two","messages":[],"n":2,"user":"a","user":{"b":[]}}"#.to_owned(),
    ];
    for (i, body) in cases.iter().enumerate() {
        let response = post_raw(&http, &proxy.url(), body).await;
        assert_eq!(response.status(), 200, "case {i}");
        assert_eq!(response.headers()["x-llm-proxy-tier"], "second", "case {i}");
        let sent_first = String::from_utf8(first.bodies()[i].clone()).unwrap();
        let sent_second = String::from_utf8(second.bodies()[i].clone()).unwrap();
        assert_eq!(sent_first, with_model(body, "model-a"), "case {i}");
        assert_eq!(sent_second, with_model(body, "model-b"), "case {i}");
    }
    // A duplicated model: every copy is the tier's.
    let body = r#"{"model":"other","messages":[],"model":"two"}"#;
    let response = post_raw(&http, &proxy.url(), body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        second.bodies().last().unwrap(),
        br#"{"model":"model-b","messages":[],"model":"model-b"}"#
    );
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_cannot_be_rewritten_is_a_400_before_any_tier() {
    let (first, second) = upstreams().await;
    let proxy =
        llm_proxy::Proxy::start(&two_tier_config(&first.base_url(), &second.base_url(), ""))
            .unwrap();
    let http = reqwest::Client::new();
    for body in [
        r#"{"model":"two","messages":[] "#,
        r#"{"model":"two","messages":[],"x":01}"#,
        r#"{"model":"two","messages":[],"x":"\q"}"#,
        r#"{"model":"two","messages":[]} {}"#,
        r#"{"model":"two","messages":"no"}"#,
    ] {
        let response = post_raw(&http, &proxy.url(), body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{body}");
    }
    assert_eq!(first.requests() + second.requests(), 0);
    // A normal request still works.
    let ok = r#"{"model":"two","messages":[]}"#;
    assert_eq!(post_raw(&http, &proxy.url(), ok).await.status(), 200);
    proxy.stop();
}

/// JSON text for arbitrary values, written with arbitrary (valid) spacing,
/// numbers and escapes.
fn json_text() -> impl Strategy<Value = String> {
    let space = prop::sample::select(vec!["", " ", "\n", "\t", " \r\n "]);
    let number = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?",
    ];
    let string = prop::collection::vec(
        prop_oneof![
            "[a-zA-Z0-9 ,:{}\\[\\]]{1,8}",
            any::<char>()
                .prop_filter("not a control", |c| !c.is_control()
                    && *c != '"'
                    && *c != '\\')
                .prop_map(String::from),
            prop::sample::select(vec![
                "\\\"",
                "\\\\",
                "\\/",
                "\\b",
                "\\f",
                "\\n",
                "\\r",
                "\\t",
                "\\u00e9",
                "\\uD83D\\uDE00",
                "\\ud800",
                "\\u0000",
            ])
            .prop_map(String::from),
        ],
        0..6,
    )
    .prop_map(|pieces| format!("\"{}\"", pieces.concat()));
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        number,
        string.clone(),
    ];
    leaf.prop_recursive(4, 32, 5, move |inner| {
        let space = space.clone();
        prop_oneof![
            (
                prop::collection::vec((inner.clone(), space.clone()), 0..5),
                space.clone()
            )
                .prop_map(|(items, before)| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(v, s)| format!("{s}{v}{s}"))
                        .collect();
                    format!("[{before}{}]", items.join(","))
                }),
            (
                prop::collection::vec((string.clone(), inner, space.clone()), 0..5),
                space.clone()
            )
                .prop_map(|(members, before)| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, v, s)| format!("{s}{k}{s}:{s}{v}{s}"))
                        .collect();
                    format!("{{{before}{}}}", members.join(","))
                }),
        ]
    })
}

/// A request body: `model` (as `MODEL`), `messages`, and arbitrary other
/// members (keys that are not ones the proxy reads), in any order, with
/// arbitrary spacing.
fn request_body() -> impl Strategy<Value = String> {
    let key = "[a-z_]{1,8}"
        .prop_filter("not a member the proxy reads", |k| {
            !["model", "messages", "stream", "stream_options"].contains(&k.as_str())
        })
        .prop_map(|k| format!("\"{k}\""));
    let others = prop::collection::vec((key, json_text()), 0..6);
    let messages = json_text().prop_map(|v| format!("[{v}]"));
    let space = prop::sample::select(vec!["", " ", "\n  "]);
    (others, messages, any::<prop::sample::Index>(), space).prop_map(
        |(others, messages, at, space)| {
            let mut members: Vec<String> = others
                .into_iter()
                .map(|(k, v)| format!("{space}{k}{space}:{space}{v}{space}"))
                .collect();
            members.insert(at.index(members.len() + 1), "\"model\":MODEL".to_owned());
            members.push(format!("\"messages\":{space}{messages}"));
            format!("{space}{{{}}}{space}", members.join(","))
        },
    )
}

#[test]
fn what_every_tier_receives_is_the_clients_body_with_only_model_changed() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (first, second) = runtime.block_on(upstreams());
    let proxy =
        llm_proxy::Proxy::start(&two_tier_config(&first.base_url(), &second.base_url(), ""))
            .unwrap();
    let http = reqwest::Client::new();
    let config = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let sent = std::cell::Cell::new(0usize);
    runner
        .run(&request_body(), |body| {
            let client = body.replace("MODEL", "\"two\"");
            // Only for generated bodies that are JSON (the generator's strings
            // may hold "MODEL" too: then the reference below does not apply).
            prop_assume!(client.matches("\"two\"").count() == 1);
            let status =
                runtime.block_on(async { post_raw(&http, &proxy.url(), &client).await.status() });
            prop_assert_eq!(status, 200, "{}", client);
            let n = sent.get();
            sent.set(n + 1);
            let expect = |model: &str| body.replace("MODEL", &format!("\"{model}\""));
            prop_assert_eq!(
                String::from_utf8(first.bodies()[n].clone()).unwrap(),
                expect("model-a")
            );
            prop_assert_eq!(
                String::from_utf8(second.bodies()[n].clone()).unwrap(),
                expect("model-b")
            );
            Ok(())
        })
        .unwrap();
    assert!(sent.get() > 64, "too few cases ran: {}", sent.get());
    proxy.stop();
    drop((first, second));
}
