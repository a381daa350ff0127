//! Budgets per client key: over a limit the client gets a 429 in the OpenAI
//! format with a clear code and `Retry-After`, and no upstream is called.

use super::common::{ask, header, Env, CLIENT_KEY};
use llm_proxy::client_id::client_key_id;
use serde_json::Value;

/// The test config with gpt-4o priced (an answer of the mock, 5 + 5 tokens,
/// costs 62 500 nano-dollars) and `budgets` appended.
async fn env_with(budgets: &str) -> Env {
    let budgets = budgets.to_owned();
    Env::start_edited(move |text| {
        format!("{text}\n[usage]\nenabled = true\n[usage.prices.\"gpt-4o\"]\ninput = 2.5\noutput = 10.0\n{budgets}")
    })
    .await
}

/// The 429's code and `Retry-After`, after checking its format.
async fn refusal(response: reqwest::Response) -> (String, u64) {
    assert_eq!(response.status(), 429);
    let retry_after: u64 = header(&response, "retry-after").parse().unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    (
        body["error"]["code"].as_str().unwrap().to_owned(),
        retry_after,
    )
}

fn minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_is_a_429_before_any_upstream_call() {
    let env = env_with("[budgets.default]\nbudget_usd = 0.0001\nbudget_period = \"30d\"\n").await;
    // 62 500, then 125 000 of 100 000 nano-dollars: the second still fits.
    assert_eq!(env.chat(ask("solo")).await.status(), 200);
    assert_eq!(env.chat(ask("solo")).await.status(), 200);
    let calls = env.primary.requests();
    let (code, retry_after) = refusal(env.chat(ask("solo")).await).await;
    assert_eq!(code, "budget_exceeded");
    assert!((1..=30 * 24 * 3600).contains(&retry_after), "{retry_after}");
    assert_eq!(env.primary.requests(), calls, "no upstream call");
    // Streams too.
    let mut stream = ask("solo");
    stream["stream"] = true.into();
    refusal(env.chat(stream).await).await;
    assert_eq!(env.primary.requests(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_its_own_overrides_the_default() {
    let id = client_key_id(CLIENT_KEY);
    let env = env_with(&format!(
        "[budgets.default]\nbudget_usd = 100\n[budgets.keys.\"{id}\"]\nbudget_usd = 0\n"
    ))
    .await;
    let (code, _) = refusal(env.chat(ask("solo")).await).await;
    assert_eq!(code, "budget_exceeded");
    assert_eq!(env.primary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_tokens_per_minute() {
    // Fixed one-minute windows on the wall clock: a run that crosses a minute
    // boundary is run again (once), so the test never depends on the time.
    for attempt in 0..2 {
        let start = minute();
        let env = env_with("[budgets.default]\nrpm = 2\n").await;
        let statuses = [
            env.chat(ask("solo")).await.status().as_u16(),
            env.chat(ask("solo")).await.status().as_u16(),
        ];
        let third = env.chat(ask("solo")).await;
        if minute() != start && attempt == 0 {
            continue;
        }
        assert_eq!(statuses, [200, 200]);
        let (code, retry_after) = refusal(third).await;
        assert_eq!(code, "requests_per_minute_exceeded");
        assert!((1..=60).contains(&retry_after));
        assert_eq!(env.primary.requests(), 2);
        break;
    }
    for attempt in 0..2 {
        let start = minute();
        // One answer is 10 tokens: the minute's tokens are used up.
        let env = env_with("[budgets.default]\ntpm = 10\n").await;
        let first = env.chat(ask("solo")).await.status();
        let second = env.chat(ask("solo")).await;
        if minute() != start && attempt == 0 {
            continue;
        }
        assert_eq!(first, 200);
        assert_eq!(refusal(second).await.0, "tokens_per_minute_exceeded");
        break;
    }
}

#[test]
fn bad_budgets_are_config_errors() {
    let base = super::common::config_text(
        "http://127.0.0.1:1/v1",
        "http://127.0.0.1:2/v1",
        std::path::Path::new("/tmp/x.db"),
        "",
    );
    for (extra, says) in [
        ("[budgets.default]\nbudget_usd = -1\n", "budget_usd"),
        (
            "[budgets.default]\nbudget_period = \"soon\"\n",
            "budget_period",
        ),
        ("[budgets.default]\nrpm = 0\n", "rpm"),
        (
            "[usage]\nenabled = false\n[budgets.default]\nrpm = 5\n",
            "needs [usage]",
        ),
    ] {
        let error = llm_proxy::Config::from_toml(&format!("{base}\n{extra}")).unwrap_err();
        assert!(error.to_string().contains(says), "{extra}: {error}");
    }
}

/// `POST /v1/batch` spends the same budget: its items are recorded and charged
/// like chat requests, and a spent budget refuses the batch before any item runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_recorded_charged_and_refused_like_chat() {
    let env = env_with("[budgets.default]\nbudget_usd = 0.0001\nbudget_period = \"30d\"\n").await;
    let batch = |keys: &[&str]| {
        let requests: Vec<Value> = keys
            .iter()
            .map(|key| serde_json::json!({"key": key, "body": ask("solo")}))
            .collect();
        env.http
            .post(env.url("/v1/batch"))
            .bearer_auth(CLIENT_KEY)
            .json(&serde_json::json!({"requests": requests}))
            .send()
    };
    // Two items: 2 × 62 500 nano-dollars, past the 100 000 budget.
    let report: Value = batch(&["a", "b"]).await.unwrap().json().await.unwrap();
    assert_eq!(report["ok"], 2, "{report}");
    let usage = super::common::get_json(&env.http, &env.url("/v1/usage"), CLIENT_KEY).await;
    assert_eq!(usage["totals"]["requests"], 2, "{usage}");
    assert_eq!(usage["totals"]["cost_nano_usd"], 125_000, "{usage}");
    assert_eq!(usage["totals"]["input_tokens"], 10, "{usage}");

    let calls = env.primary.requests();
    let (code, _) = refusal(batch(&["c"]).await.unwrap()).await;
    assert_eq!(code, "budget_exceeded");
    assert_eq!(env.primary.requests(), calls, "no item ran");
    let (code, _) = refusal(env.chat(ask("solo")).await).await;
    assert_eq!(code, "budget_exceeded");
}
