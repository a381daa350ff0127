//! The review page in real headless Chromium (Debian's `chromium` and
//! `chromium-driver`): a request waits for approval, the page shows it, a human
//! types an answer, and the waiting client receives it.

use std::time::Duration;

use crate::common::browser::{click_in, Browser};
use crate::common::*;
use fantoccini::Locator;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_answers_from_the_review_page_and_the_waiting_client_gets_it() {
    let env = Env::start().await;
    let browser = Browser::start().await;
    let wait = Duration::from_secs(20);

    // Without the admin key, the page is a login form.
    browser
        .sign_in(&env.url("/escalations"), ADMIN_KEY, wait)
        .await;

    // A client asks for something that needs approval, and waits.
    let request = json!({
        "model": "smart",
        "messages": [{"role": "user", "content": "Refund order 1234?"}],
    });
    let waiting = env.waiting_for_approval(request);

    // The page shows it (it polls the API).
    let card = browser.shown("article.escalation", wait).await;
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
    click_in(&card, "button.send-answer").await;

    // The waiting client receives exactly that answer.
    let response = answer_within(wait, waiting).await;
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
    let request = json!({
        "model": "smart",
        "messages": [{"role": "user", "content": "Cancel order 99?"}],
    });
    let leaving = env.waiting_for_approval(request);
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
    browser.shown("article.escalation.abandoned", wait).await;
    let text = card.text().await.unwrap();
    assert!(text.contains("The waiting client went away"), "{text}");
    let approve = card.find(Locator::Css("button.approve")).await.unwrap();
    assert_eq!(
        approve.attr("disabled").await.unwrap().as_deref(),
        Some("true")
    );
    browser.close().await.unwrap();
}
