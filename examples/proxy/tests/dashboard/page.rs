//! The dashboard in real headless Chromium (Debian's `chromium` and
//! `chromium-driver`): sign in, force a circuit open from the page and see
//! `/v1/circuits` report it, see the fallback's share appear without a reload,
//! send a test prompt; a screenshot is saved as a test artefact.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::browser::{click_in, Browser};
use crate::common::*;
use fantoccini::Locator;
use serde_json::Value;

/// Waits (bounded) until the text of `selector` satisfies `wanted`; its text.
async fn text_until(
    browser: &Browser,
    selector: &str,
    wait: Duration,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < wait {
        if let Ok(element) = browser.find(Locator::Css(selector)).await {
            // The page redraws every poll: an element may go stale under us.
            if let Ok(text) = element.text().await {
                if wanted(&text) {
                    return text;
                }
                last = text;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{selector} never matched; last text: {last:?}");
}

fn artefact_path() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp: the artefacts go next to it.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = target.parent().unwrap_or(&target).join("test-artefacts");
    std::fs::create_dir_all(&dir).expect("the artefacts directory");
    dir.join("dashboard.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_forces_a_circuit_watches_the_fallback_and_sends_a_test_prompt() {
    // A webhook that cannot be reached (nothing listens on port 9): the
    // failed delivery shows on the dashboard.
    let (url_var, secret_var) = (
        format!("LLM_PROXY_DASHBOARD_WEBHOOK_URL_{}", std::process::id()),
        format!("LLM_PROXY_DASHBOARD_WEBHOOK_SECRET_{}", std::process::id()),
    );
    std::env::set_var(&url_var, "http://127.0.0.1:9/hook");
    std::env::set_var(&secret_var, "a webhook secret");
    let env = Env::start_edited(|text| {
        format!(
            "{text}\n[usage]\nenabled = true\n[escalation.webhook]\nurl_env = \"{url_var}\"\n\
             secret_env = \"{secret_var}\"\nattempts = 1\n"
        )
    })
    .await;
    let browser = Browser::start().await;
    let wait = Duration::from_secs(20);
    let base = env.proxy.url();

    // Unauthenticated: the sign-in form, which comes back to the dashboard.
    let primary_row = r#"#circuits tr[data-upstream="primary"]"#;
    browser
        .sign_in_to(&env.url("/dashboard"), ADMIN_KEY, primary_row, wait)
        .await;
    assert!(browser
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/dashboard"));
    text_until(&browser, &format!("{primary_row} td.state"), wait, |t| {
        t == "closed"
    })
    .await;

    // Force the primary's circuit open from the page.
    let row = browser.find(Locator::Css(primary_row)).await.unwrap();
    click_in(&row, "button.force-open").await;
    text_until(&browser, &format!("{primary_row} td.state"), wait, |t| {
        t == "open (forced)"
    })
    .await;
    let list = circuits(&env.http, &base).await;
    let primary = list.iter().find(|c| c["upstream"] == "primary").unwrap();
    assert_eq!(primary["state"], "open", "{list:?}");
    assert_eq!(primary["forced"], true);

    // Mark this page load: a reload would lose the mark.
    browser
        .execute("window.dashboardMark = 'same page'; return null;", vec![])
        .await
        .unwrap();
    // The first tier fails fast, the fallback answers: its share shows up.
    let second = r#"section.model[data-model="smart"] tr.tier[data-tier="1"] td.w-5m"#;
    text_until(&browser, second, wait, |t| t == "–").await;
    for _ in 0..2 {
        let answer = env.chat(ask("smart")).await;
        assert_eq!(header(&answer, "x-llm-proxy-tier"), "secondary");
    }
    text_until(&browser, second, wait, |t| t == "100% (2)").await;
    let degraded = r#"section.model[data-model="smart"] tr.degraded td.w-5m"#;
    text_until(&browser, degraded, wait, |t| t == "100% (2)").await;
    let failures = r#"section.model[data-model="smart"] p.failures.w-5m"#;
    text_until(&browser, failures, wait, |t| t.ends_with("circuit_open 2")).await;
    let mark = browser
        .execute("return window.dashboardMark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, Value::from("same page"), "updated without a reload");

    // A test prompt through "smart": the secondary answers; its text is shown
    // as text, never as HTML.
    let reply = r#"<b id="injected">not bold</b>"#;
    env.secondary.set(|o| o.reply = Some(reply.to_owned()));
    browser
        .find(Locator::Css(r#"#test-model option[value="smart"]"#))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let sent_before = env.secondary.requests();
    let prompt = browser.find(Locator::Css("#test-prompt")).await.unwrap();
    prompt.clear().await.unwrap();
    prompt.send_keys("Are you there?").await.unwrap();
    browser
        .find(Locator::Css("#test-send"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_until(&browser, "#test-result .tier", wait, |t| t == "secondary").await;
    assert_eq!(
        text_until(&browser, "#test-result .degraded", wait, |_| true).await,
        "true"
    );
    assert_eq!(
        text_until(&browser, "#test-result .answer", wait, |_| true).await,
        reply
    );
    assert!(
        browser.find(Locator::Css("#injected")).await.is_err(),
        "no HTML injection"
    );
    assert_eq!(
        env.secondary.requests(),
        sent_before + 1,
        "sent upstream once"
    );
    // It counts like any answer: three from the secondary now.
    text_until(&browser, second, wait, |t| t == "100% (3)").await;

    // A request waiting for a human shows with a link to its review card; a
    // batch shows in the recent batches; usage per model shows.
    let waiting = env.waiting_for_approval(ask("smart"));
    let pending = env.pending(1).await;
    let id = pending[0]["id"].as_str().unwrap().to_owned();
    let link = browser
        .shown(
            &format!(r#"#escalations a[href="/escalations/{id}"]"#),
            wait,
        )
        .await;
    assert_eq!(link.text().await.unwrap(), id);
    let note = text_until(
        &browser,
        "#escalations li .notification.failed",
        wait,
        |_| true,
    )
    .await;
    assert!(
        note.contains("notification failed after 1 attempt(s): transport"),
        "{note}"
    );
    let batch = serde_json::json!({"batch_id": "nightly-1", "requests": [{"key": "a", "body": ask("smart")}]});
    let response = env
        .http
        .post(env.url("/v1/batch"))
        .bearer_auth(CLIENT_KEY)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let row = text_until(&browser, "#batches tbody tr", wait, |t| {
        t.contains("nightly-1")
    })
    .await;
    assert!(row.contains("nightly-1"), "{row}");
    // Four answers of "smart" were recorded: three chat requests and the
    // batch's item (batches spend usage and budgets like chat).
    text_until(&browser, "#usage tbody tr", wait, |t| {
        t.starts_with("smart 4 ")
    })
    .await;

    // The whole page in one picture.
    browser.set_window_size(1280, 2200).await.unwrap();
    browser
        .execute("window.scrollTo(0, 0); return null;", vec![])
        .await
        .unwrap();
    let png = browser.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = artefact_path();
    std::fs::write(&path, &png).expect("the screenshot is saved");
    println!("dashboard screenshot: {}", path.display());

    // Reset from the page: closed again, no longer forced.
    let row = browser.find(Locator::Css(primary_row)).await.unwrap();
    click_in(&row, "button.reset").await;
    text_until(&browser, &format!("{primary_row} td.state"), wait, |t| {
        t == "closed"
    })
    .await;
    let list = circuits(&env.http, &base).await;
    let primary = list.iter().find(|c| c["upstream"] == "primary").unwrap();
    assert_eq!(
        (primary["state"].as_str(), primary["forced"].as_bool()),
        (Some("closed"), Some(false))
    );
    let resolved = env
        .resolve(&id, serde_json::json!({"decision": "approve"}))
        .await;
    assert_eq!(resolved.status(), 200);
    waiting.abort();
    browser.close().await.unwrap();
}
