//! The circuit controls (`/v1/admin/circuits/{upstream}/...`): who may use
//! them, what they do to `/v1/circuits` and to requests, and the sign-in that
//! comes back to the dashboard.

use crate::common::*;
use serde_json::{json, Value};

fn circuit<'a>(list: &'a [Value], upstream: &str) -> &'a Value {
    list.iter()
        .find(|c| c["upstream"] == upstream)
        .unwrap_or_else(|| panic!("{upstream} in {list:?}"))
}

/// `text` for a form field (what a browser sends).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Signs in on the form (with `next`), returns the session cookie and where
/// the sign-in redirected.
async fn sign_in(env: &Env, next: &str) -> (String, String) {
    let response = env
        .http
        .post(env.url("/escalations/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={ADMIN_KEY}&next={}", encode(next)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let location = header(&response, "location");
    let cookie = header(&response, "set-cookie");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    (cookie, location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forcing_a_circuit_shows_in_v1_circuits_and_in_requests() {
    let env = Env::start().await;
    let base = env.proxy.url();
    let post = |path: &str| {
        let request = env.http.post(env.url(path)).bearer_auth(ADMIN_KEY);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };

    let opened = post("/v1/admin/circuits/primary/force-open").await;
    assert_eq!(opened["upstream"], "primary");
    assert_eq!(opened["state"], "open");
    assert_eq!(opened["forced"], true);
    let list = circuits(&env.http, &base).await;
    assert_eq!(circuit(&list, "primary")["state"], "open");
    assert_eq!(circuit(&list, "primary")["forced"], true);
    assert_eq!(circuit(&list, "secondary")["state"], "closed");
    // The admin list is the same list.
    let admin_list = get_json(&env.http, &env.url("/v1/admin/circuits"), ADMIN_KEY).await;
    assert_eq!(
        circuit(admin_list["data"].as_array().unwrap(), "primary")["state"],
        "open"
    );
    // Requests see it: the fallback answers, a single-tier model fails fast.
    let before = env.primary.requests();
    let answer = env.chat(ask("smart")).await;
    assert_eq!(header(&answer, "x-llm-proxy-tier"), "secondary");
    let refused = env.chat(ask("solo")).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(
        env.primary.requests(),
        before,
        "nothing reached the open upstream"
    );

    // Forced closed: it stays closed whatever fails.
    let closed = post("/v1/admin/circuits/primary/force-closed").await;
    assert_eq!(
        (closed["state"].as_str(), closed["forced"].as_bool()),
        (Some("closed"), Some(true))
    );
    env.primary.set(|o| o.fail_rate = 1.0);
    for _ in 0..3 {
        assert_eq!(env.chat(ask("solo")).await.status(), 502);
    }
    let list = circuits(&env.http, &base).await;
    assert_eq!(circuit(&list, "primary")["state"], "closed", "{list:?}");
    assert_eq!(circuit(&list, "primary")["failures"], 3);

    // Reset: a fresh circuit, no longer forced, that trips again on failures.
    let reset = post("/v1/admin/circuits/primary/reset").await;
    assert_eq!(
        (reset["state"].as_str(), reset["forced"].as_bool()),
        (Some("closed"), Some(false))
    );
    for _ in 0..2 {
        env.chat(ask("solo")).await;
    }
    let list = circuits(&env.http, &base).await;
    assert_eq!(circuit(&list, "primary")["state"], "open", "{list:?}");
    assert_eq!(circuit(&list, "primary")["forced"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_circuit_is_a_404_in_the_openai_format() {
    let env = Env::start().await;
    for action in ["force-open", "force-closed", "reset"] {
        let response = env
            .http
            .post(env.url(&format!("/v1/admin/circuits/nowhere/{action}")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{action}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "circuit_not_found", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["param"].is_null());
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nowhere"));
    }
    // An unknown action on a known circuit is no endpoint, and changes nothing.
    let response = env
        .http
        .post(env.url("/v1/admin/circuits/primary/explode"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let list = circuits(&env.http, &env.proxy.url()).await;
    assert_eq!(circuit(&list, "primary")["state"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controls_need_an_admin_and_a_session_needs_its_csrf_proof() {
    let env = Env::start_edited(|text| text).await;
    let url = env.url("/v1/admin/circuits/primary/force-open");
    let origin = env.proxy.url();
    let state = |env: &Env| {
        let http = env.http.clone();
        let base = env.proxy.url();
        async move { circuit(&circuits(&http, &base).await, "primary")["state"].clone() }
    };

    // Nobody, a client key, a wrong key: 401.
    for key in [None, Some(CLIENT_KEY), Some("not-a-key")] {
        let mut request = env.http.post(&url).json(&json!({}));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{key:?}");
    }
    // A session cookie without proof it comes from the page (no Origin), or
    // with an Origin but neither JSON nor the CSRF token, or from another
    // site: 403, and the circuit is untouched.
    let (cookie, _) = sign_in(&env, "/dashboard").await;
    let refusals = [
        (None, Some("application/json")),
        (Some(origin.as_str()), Some("text/plain")),
        (Some(origin.as_str()), None),
        (Some("http://evil.example"), Some("application/json")),
    ];
    for (from, content_type) in refusals {
        let mut request = env.http.post(&url).header("cookie", &cookie).body("{}");
        if let Some(from) = from {
            request = request.header("origin", from);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403, "{from:?} {content_type:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "cross_origin");
    }
    assert_eq!(state(&env).await, "closed");

    // The session's own CSRF token proves it, as JSON does (what the page sends).
    let session: Value = env
        .http
        .get(env.url("/v1/admin/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = session["csrf_token"].as_str().unwrap();
    let response = env
        .http
        .post(&url)
        .header("cookie", &cookie)
        .header("origin", &origin)
        .header("content-type", "text/plain")
        .header("x-csrf-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(state(&env).await, "open");
    let response = env
        .http
        .post(env.url("/v1/admin/circuits/primary/reset"))
        .header("cookie", &cookie)
        .header("origin", &origin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(state(&env).await, "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_like_the_review_page_and_comes_back() {
    let env = Env::start_edited(|text| text).await;
    // Without a session: the sign-in form, which comes back to the dashboard.
    let page = env.http.get(env.url("/dashboard")).send().await.unwrap();
    assert_eq!(page.status(), 401);
    let form = page.text().await.unwrap();
    assert!(form.contains(r#"name="next" value="/dashboard""#), "{form}");
    assert!(
        !form.contains("dashboard.js"),
        "no dashboard before signing in"
    );
    let (cookie, location) = sign_in(&env, "/dashboard").await;
    assert_eq!(location, "/dashboard");
    // Only known pages: anything else goes to the review page.
    for next in ["https://evil.example/", "//evil.example", ""] {
        assert_eq!(sign_in(&env, next).await.1, "/escalations", "{next:?}");
    }
    let page = env
        .http
        .get(env.url("/dashboard"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = header(&page, "content-security-policy");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("/dashboard/dashboard.js"));
    let script = env
        .http
        .get(env.url("/dashboard/dashboard.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(header(&script, "content-type").starts_with("text/javascript"));
    // The admin endpoints behind it refuse a client key.
    for path in ["/v1/admin/stats", "/v1/admin/batches", "/v1/admin/circuits"] {
        let refused = env
            .http
            .get(env.url(path))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "{path}");
    }
}

/// A path parameter that does not decode (`%FF` is not UTF-8) is a 400 in the
/// OpenAI error format, on the circuit controls and the escalation API alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_path_parameters_are_json_400s() {
    let env = Env::start().await;
    for (method, path) in [
        (reqwest::Method::POST, "/v1/admin/circuits/%FF/reset"),
        (reqwest::Method::GET, "/v1/escalations/%FF"),
    ] {
        let response = env
            .http
            .request(method, env.url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["type"], "invalid_request_error",
            "{path}: {body}"
        );
    }
}
