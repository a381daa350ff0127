//! `GET /v1/admin/stats` after a known mix of requests (numbers checked
//! exactly), the test prompt, and `GET /v1/admin/batches`.

use crate::common::*;
use serde_json::{json, Value};

fn model<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == name)
        .unwrap_or_else(|| panic!("{name} in {stats}"))
}

fn window(
    answers: u64,
    by_tier: Value,
    degraded: u64,
    template: u64,
    failed: u64,
    failures: Value,
) -> Value {
    json!({
        "answers": answers,
        "by_tier": by_tier,
        "template": template,
        "human": 0,
        "cache": 0,
        "degraded": degraded,
        "failed_requests": failed,
        "failures": failures,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_count_tiers_degraded_answers_and_failures_by_kind() {
    let env = Env::start().await;
    let stats_url = env.url("/v1/admin/stats");

    // Three answers from the first tier.
    for _ in 0..3 {
        assert_eq!(
            header(&env.chat(ask("smart")).await, "x-llm-proxy-tier"),
            "primary"
        );
    }
    // The primary fails twice (500): the secondary answers, and the circuit
    // opens ([circuit] consecutive_failures = 2).
    env.primary.set(|o| o.fail_rate = 1.0);
    for _ in 0..2 {
        assert_eq!(
            header(&env.chat(ask("smart")).await, "x-llm-proxy-tier"),
            "secondary"
        );
    }
    // The open circuit: the secondary answers again.
    assert_eq!(
        header(&env.chat(ask("smart")).await, "x-llm-proxy-tier"),
        "secondary"
    );
    // The secondary fails too: the template answers.
    env.secondary.set(|o| o.fail_rate = 1.0);
    assert_eq!(
        header(&env.chat(ask("smart")).await, "x-llm-proxy-tier"),
        "template"
    );
    // Without a template, no answer: every tier's failure counts (the
    // secondary's second failure opens its circuit).
    assert_eq!(env.chat(ask("strict")).await.status(), 502);
    // A single tier behind an open circuit: one failure (its placeholder tier
    // is not counted).
    assert_eq!(env.chat(ask("solo")).await.status(), 503);
    // A request refused before any model (malformed) counts nowhere.
    assert_eq!(env.chat(json!({"model": "smart"})).await.status(), 400);

    let stats = get_json(&env.http, &stats_url, ADMIN_KEY).await;
    assert_eq!(stats["bucket_secs"], 60);
    assert_eq!(stats["windows"], json!(["5m", "1h"]));
    let smart = model(&stats, "smart");
    assert_eq!(
        smart["tiers"],
        json!(["primary/gpt-4o", "secondary/gpt-4o-mini", "template"])
    );
    let expected = window(
        7,
        json!([3, 3, 1]),
        4,
        1,
        0,
        json!({"server_error": 3, "circuit_open": 2}),
    );
    for name in ["5m", "1h", "total"] {
        assert_eq!(smart["windows"][name], expected, "smart {name}: {stats}");
    }
    let strict = model(&stats, "strict");
    assert_eq!(
        strict["windows"]["5m"],
        window(
            0,
            json!([0, 0]),
            0,
            0,
            1,
            json!({"server_error": 1, "circuit_open": 1})
        ),
        "{stats}"
    );
    let solo = model(&stats, "solo");
    assert_eq!(
        solo["windows"]["total"],
        window(0, json!([0]), 0, 0, 1, json!({"circuit_open": 1})),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_prompt_runs_through_the_pipeline_and_says_which_tier_answered() {
    let env = Env::start().await;
    let send = |body: Value| {
        env.http
            .post(env.url("/v1/admin/test-prompt"))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
    };
    let report_of = |body: Value| {
        let sent = send(body);
        async move { sent.await.unwrap().json::<Value>().await.unwrap() }
    };
    let report = report_of(json!({"model": "smart", "prompt": "ping"})).await;
    assert_eq!(env.primary.requests(), 1, "sent upstream");
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["tier"], "primary");
    assert_eq!(report["degraded"], false);
    assert_eq!(report["answer"], "Hello from primary.");

    env.primary.set(|o| o.fail_rate = 1.0);
    let report = report_of(json!({"model": "smart", "prompt": "ping"})).await;
    assert_eq!(
        (report["tier"].as_str(), report["degraded"].as_bool()),
        (Some("secondary"), Some(true)),
        "{report}"
    );
    assert_eq!(report["answer"], "Hello from secondary.");
    // A failure is shown as the error the client would get.
    let report = report_of(json!({"model": "solo", "prompt": "ping"})).await;
    assert_eq!(report["status"], 502, "{report}");
    assert_eq!(report["error"]["code"], "all_tiers_failed");
    assert!(report["answer"].is_null());
    // It counts like any answer.
    let stats = get_json(&env.http, &env.url("/v1/admin/stats"), ADMIN_KEY).await;
    assert_eq!(
        model(&stats, "smart")["windows"]["5m"]["by_tier"],
        json!([1, 1, 0])
    );

    // Unknown model, empty prompt, not JSON: refused, nothing sent upstream.
    let before = env.primary.requests() + env.secondary.requests();
    for (body, status) in [
        (json!({"model": "nope", "prompt": "ping"}), 404),
        (json!({"model": "smart", "prompt": "  "}), 400),
        (json!({"model": "smart"}), 400),
    ] {
        assert_eq!(send(body.clone()).await.unwrap().status(), status, "{body}");
    }
    assert_eq!(env.primary.requests() + env.secondary.requests(), before);
    // Not for clients.
    let refused = env
        .http
        .post(env.url("/v1/admin/test-prompt"))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": "smart", "prompt": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_batches_are_summarised_newest_first() {
    let env = Env::start().await;
    let empty = get_json(&env.http, &env.url("/v1/admin/batches"), ADMIN_KEY).await;
    assert_eq!(empty["data"], json!([]));
    for (id, items) in [("first", 1), ("second", 2)] {
        let requests: Vec<Value> = (0..items)
            .map(|i| json!({"key": format!("k{i}"), "body": ask("smart")}))
            .collect();
        let response = env
            .http
            .post(env.url("/v1/batch"))
            .bearer_auth(CLIENT_KEY)
            .json(&json!({"batch_id": id, "requests": requests}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let list = get_json(&env.http, &env.url("/v1/admin/batches"), ADMIN_KEY).await;
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{list}");
    assert_eq!(data[0]["batch_id"], "second");
    assert_eq!(
        (data[0]["items"].as_u64(), data[0]["ok"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(data[0]["failed"], 0);
    assert_eq!(data[1]["batch_id"], "first");
    assert_eq!(
        data[0]["client"],
        llm_proxy::client_id::client_key_id(CLIENT_KEY)
    );
}
