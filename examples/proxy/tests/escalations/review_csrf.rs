//! Cross-site request forgery against the review page, in real headless
//! Chromium: a page on another port of the same host (same site, so the
//! `SameSite=Strict` session cookie is sent) posts a `text/plain` form that
//! would approve an escalation. The proxy must refuse it; the same approval
//! from the review page itself must work.

use std::time::Duration;

use crate::common::browser::{click_in, Browser};
use crate::common::*;
use fantoccini::Locator;
use serde_json::Value;

/// Another site on the same host: one page that posts `form` at once.
async fn attacker_page(form_action: String) -> String {
    let page = format!(
        r#"<!doctype html><html><body>
<form id="f" method="POST" action="{form_action}" enctype="text/plain">
<input type="hidden" name='{{"decision":"approve","pad":"' value='"}}'>
</form>
<script>document.getElementById("f").submit();</script>
</body></html>"#
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_form_cannot_approve_but_the_review_page_can() {
    let env = Env::start().await;
    let browser = Browser::start().await;
    let wait = Duration::from_secs(20);

    // The reviewer signs in.
    browser
        .sign_in(&env.url("/escalations"), ADMIN_KEY, wait)
        .await;

    // A client waits for approval.
    let waiting = env.waiting_for_approval(ask("smart"));
    let id = env.pending(1).await[0]["id"].as_str().unwrap().to_owned();

    // The reviewer, still signed in, opens the other site's page: its form
    // posts to the proxy with the session cookie attached.
    let resolve = env.url(&format!("/v1/escalations/{id}/resolve"));
    let attacker = attacker_page(resolve.clone()).await;
    browser.goto(&attacker).await.unwrap();
    let mut submitted = false;
    for _ in 0..400 {
        if browser.current_url().await.unwrap().as_str() == resolve {
            submitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(submitted, "the form was submitted");
    let refusal = browser
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(refusal.contains("cross_origin"), "{refusal}");
    let still: Value = env
        .admin_get(&format!("/v1/escalations/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        still["status"], "pending",
        "the forged approval was refused"
    );

    // The same approval from the review page works.
    browser.goto(&env.url("/escalations")).await.unwrap();
    let card = browser.shown("article.escalation", wait).await;
    click_in(&card, "button.approve").await;
    let response = answer_within(wait, waiting).await;
    assert_eq!(response.status(), 200);
    let approved: Value = env
        .admin_get(&format!("/v1/escalations/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["resolution"]["resolved_by"], "review page");

    // Signing out from the page ends the session: the page asks to sign in again.
    browser
        .find(Locator::Css("#sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.shown("#admin-key", wait).await;
    browser.close().await.unwrap();
}
