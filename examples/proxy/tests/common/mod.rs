//! Shared set-up: two mock upstreams on loopback and a proxy in front of them.
#![allow(dead_code)]

pub mod browser;
pub mod raw;

use std::path::Path;
use std::time::Duration;

use llm_proxy::mock::{MockOptions, MockUpstream};
use llm_proxy::{Config, Proxy};
use serde_json::{json, Value};

pub const CLIENT_KEY: &str = "client-key";
pub const ADMIN_KEY: &str = "admin-key";
pub const TEMPLATE: &str = "We are experiencing issues; please try again shortly.";

/// The proxy's configuration in front of `primary` and `secondary`, plus `extra`
/// TOML appended (tables that are not set here).
pub fn config_text(primary: &str, secondary: &str, db: &Path, escalation: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"

[[upstreams]]
name = "primary"
kind = "openai"
base_url = "{primary}"
timeout_secs = 5

[[upstreams]]
name = "secondary"
kind = "openai"
base_url = "{secondary}"
timeout_secs = 5

[[models]]
name = "smart"
tiers = [ {{ upstream = "primary", model = "gpt-4o" }},
          {{ upstream = "secondary", model = "gpt-4o-mini" }} ]
template = "{TEMPLATE}"

[[models]]
name = "strict"
tiers = [ {{ upstream = "primary", model = "gpt-4o" }},
          {{ upstream = "secondary", model = "gpt-4o-mini" }} ]

[[models]]
name = "solo"
tiers = [ {{ upstream = "primary", model = "gpt-4o" }} ]

[auth]
client_keys = ["{CLIENT_KEY}"]
admin_keys = ["{ADMIN_KEY}"]

[limits]
max_body_bytes = 4096
first_event_timeout_secs = 1
shutdown_grace_secs = 1

[circuit]
consecutive_failures = 2
cooldown_secs = 60

[batch]
seed = 7
max_attempts = 2

[escalation]
timeout_secs = 120
poll_interval_secs = 0.1
sqlite_path = {db:?}
{escalation}
"#,
        db = db.display().to_string(),
    )
}

/// Mocks, a proxy, a client and a temporary directory.
pub struct Env {
    pub primary: MockUpstream,
    pub secondary: MockUpstream,
    pub proxy: Proxy,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

pub async fn mock(name: &str) -> MockUpstream {
    MockUpstream::start(MockOptions {
        name: name.into(),
        ..MockOptions::default()
    })
    .await
    .expect("mock upstream starts")
}

impl Env {
    pub async fn start() -> Env {
        Env::with_escalation("").await
    }

    /// With extra keys in the `[escalation]` table.
    pub async fn with_escalation(escalation: &str) -> Env {
        Env::build(escalation, |text| text, reqwest::Client::new()).await
    }

    /// With the shared config edited by `edit`, and an HTTP client that does
    /// not follow redirects (to see the review page's own).
    pub async fn start_edited(edit: impl Fn(String) -> String) -> Env {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client");
        Env::build("", edit, http).await
    }

    async fn build(
        escalation: &str,
        edit: impl Fn(String) -> String,
        http: reqwest::Client,
    ) -> Env {
        let primary = mock("primary").await;
        let secondary = mock("secondary").await;
        let dir = tempfile::tempdir().expect("temp dir");
        let text = edit(config_text(
            &primary.base_url(),
            &secondary.base_url(),
            &dir.path().join("escalations.db"),
            escalation,
        ));
        let config = Config::from_toml(&text).expect("test config is valid");
        let proxy = Proxy::start(&config).expect("proxy starts");
        Env {
            primary,
            secondary,
            proxy,
            http,
            dir,
            config,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy.url())
    }

    /// POST a chat completion with the client key.
    pub async fn chat(&self, body: Value) -> reqwest::Response {
        self.chat_with(body, &[]).await
    }

    pub async fn chat_with(&self, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("proxy answers")
    }

    /// A client that asks for approval (`x-require-approval: true`) and waits
    /// for the human, in the background: its answer, once there is one.
    pub fn waiting_for_approval(
        &self,
        body: Value,
    ) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        let request = self
            .http
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("x-require-approval", "true")
            .json(&body);
        tokio::spawn(request.send())
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("proxy answers")
    }

    pub async fn resolve(&self, id: &str, decision: Value) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/escalations/{id}/resolve")))
            .bearer_auth(ADMIN_KEY)
            .json(&decision)
            .send()
            .await
            .expect("proxy answers")
    }

    /// Wait (bounded) until `n` escalations are pending; returns them.
    pub async fn pending(&self, n: usize) -> Vec<Value> {
        wait_pending(&self.http, &self.proxy.url(), n).await
    }
}

/// The answer of a client started with [`Env::waiting_for_approval`], which
/// must come within `wait`.
pub async fn answer_within(
    wait: Duration,
    waiting: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) -> reqwest::Response {
    tokio::time::timeout(wait, waiting)
        .await
        .expect("the client got an answer")
        .expect("the client's task ran")
        .expect("proxy answers")
}

pub async fn wait_pending(http: &reqwest::Client, base: &str, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        let list = get_json(http, &format!("{base}/v1/escalations"), ADMIN_KEY).await;
        let data = list["data"].as_array().cloned().unwrap_or_default();
        if data.len() >= n {
            return data;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} escalations never became pending");
}

/// POST a chat request to the proxy at `base` with the client key.
pub async fn post_chat(http: &reqwest::Client, base: &str, body: &Value) -> reqwest::Response {
    http.post(format!("{base}/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(body)
        .send()
        .await
        .expect("proxy answers")
}

/// `GET /v1/circuits` of the proxy at `base`: each upstream's circuit.
pub async fn circuits(http: &reqwest::Client, base: &str) -> Vec<Value> {
    let list = get_json(http, &format!("{base}/v1/circuits"), CLIENT_KEY).await;
    list["data"].as_array().cloned().unwrap_or_default()
}

/// GET `url` with the bearer `key`; its JSON body.
pub async fn get_json(http: &reqwest::Client, url: &str, key: &str) -> Value {
    http.get(url)
        .bearer_auth(key)
        .send()
        .await
        .expect("proxy answers")
        .json()
        .await
        .expect("a JSON body")
}

/// A chat request for `model`.
pub fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}]})
}

pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The assistant's text of a `chat.completion`.
pub fn content(body: &Value) -> &str {
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
}

/// The `data:` payloads of an event stream and whether it ended with an error event.
pub fn sse_text(stream: &str) -> (String, bool, bool) {
    let mut text = String::new();
    let mut done = false;
    let mut error = false;
    for event in stream.split("\n\n") {
        if event.contains("event: error") {
            error = true;
        }
        for line in event.lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            if let Ok(chunk) = serde_json::from_str::<Value>(data) {
                if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
                    text.push_str(piece);
                }
            }
        }
    }
    (text, done, error)
}
