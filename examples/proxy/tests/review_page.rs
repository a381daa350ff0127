//! The review page in real headless Chromium (Debian's `chromium` and
//! `chromium-driver`): a request waits for approval, the page shows it, a human
//! types an answer, and the waiting client receives it.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{ClientBuilder, Locator};
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver on a free port, killed on drop.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {CHROMEDRIVER} ({e}): apt-get install chromium chromium-driver")
            });
        ChromeDriver { child, port }
    }

    /// Wait (bounded) until it accepts connections.
    async fn ready(&self) {
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("chromedriver did not start listening on port {}", self.port);
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_answers_from_the_review_page_and_the_waiting_client_gets_it() {
    let env = Env::start().await;
    let driver = ChromeDriver::start();
    driver.ready().await;
    let profile = tempfile::tempdir().expect("a profile directory");
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session");
    let wait = Duration::from_secs(20);

    // Without the admin key, the page is a login form.
    browser.goto(&env.url("/escalations")).await.unwrap();
    let key_field = browser.find(Locator::Css("#admin-key")).await.unwrap();
    key_field.send_keys(ADMIN_KEY).await.unwrap();
    browser
        .find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Css("#list"))
        .await
        .expect("the review page after signing in");

    // A client asks for something that needs approval, and waits.
    let waiting = {
        let http = env.http.clone();
        let url = env.url("/v1/chat/completions");
        tokio::spawn(async move {
            let request = json!({
                "model": "smart",
                "messages": [{"role": "user", "content": "Refund order 1234?"}],
            });
            http.post(url)
                .bearer_auth(CLIENT_KEY)
                .header("x-require-approval", "true")
                .json(&request)
                .send()
                .await
                .unwrap()
        })
    };

    // The page shows it (it polls the API).
    let card = browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Css("article.escalation"))
        .await
        .expect("the pending escalation on the page");
    let text = card.text().await.unwrap();
    assert!(
        text.contains("the client asked for human approval"),
        "{text}"
    );
    assert!(text.contains("Refund order 1234?"), "{text}");
    assert!(text.contains("smart"), "{text}");

    // A human types the answer and sends it.
    let answer = "Yes: order 1234 is refunded.";
    card.find(Locator::Css("textarea.answer"))
        .await
        .unwrap()
        .send_keys(answer)
        .await
        .unwrap();
    card.find(Locator::Css("button.send-answer"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The waiting client receives exactly that answer.
    let response = tokio::time::timeout(wait, waiting)
        .await
        .expect("the client got an answer")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "human");
    let body: Value = response.json().await.unwrap();
    assert_eq!(content(&body), answer);

    // The record names the page as the reviewer, and nothing is pending.
    let all: Value = env
        .admin_get("/v1/escalations?status=answered")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["data"][0]["resolution"]["resolved_by"], "review page");
    assert_eq!(all["data"][0]["resolution"]["payload"], answer);

    // A second client waits, then goes away: the page says so instead of
    // letting the card vanish as if someone had decided.
    let leaving = {
        let http = env.http.clone();
        let url = env.url("/v1/chat/completions");
        tokio::spawn(async move {
            let request = json!({
                "model": "smart",
                "messages": [{"role": "user", "content": "Cancel order 99?"}],
            });
            http.post(url)
                .bearer_auth(CLIENT_KEY)
                .header("x-require-approval", "true")
                .json(&request)
                .send()
                .await
        })
    };
    let card = browser
        .wait()
        .at_most(wait)
        .for_element(Locator::XPath(
            "//article[contains(@class,'escalation')][contains(.,'Cancel order 99?')]",
        ))
        .await
        .expect("the second escalation on the page");
    leaving.abort();
    let _ = leaving.await;
    browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Css("article.escalation.abandoned"))
        .await
        .expect("the card marked as abandoned");
    let text = card.text().await.unwrap();
    assert!(text.contains("The waiting client went away"), "{text}");
    let approve = card.find(Locator::Css("button.approve")).await.unwrap();
    assert_eq!(
        approve.attr("disabled").await.unwrap().as_deref(),
        Some("true")
    );
    browser.close().await.unwrap();
}
