//! Review-page sessions: random, revocable, same-origin only.

use super::*;

fn session_cookie(response: &reqwest::Response) -> (String, String) {
    let set = header(response, "set-cookie");
    let value = set
        .strip_prefix("llm_proxy_session=")
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("a session cookie: {set:?}"))
        .to_owned();
    (format!("llm_proxy_session={value}"), set)
}

async fn sign_in(env: &Env, key: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut request = env
        .http
        .post(env.url("/escalations/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={key}"));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_sessions_are_random_revocable_and_same_origin_only() {
    let env =
        Env::start_edited(|text| text.replace("[auth]", "[auth]\nlogin_attempts_per_minute = 5"))
            .await;
    let origin = env.proxy.url();

    let signed_in = sign_in(&env, ADMIN_KEY, &[("origin", &origin)]).await;
    assert_eq!(signed_in.status(), 303);
    let (cookie, set) = session_cookie(&signed_in);
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plain http: {set}");
    let key_hash: String = sha2::Sha256::digest(ADMIN_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        !set.contains(&key_hash),
        "the cookie holds no hash of the key"
    );
    let (again, _) = session_cookie(&sign_in(&env, ADMIN_KEY, &[]).await);
    assert_ne!(again, cookie, "every sign-in is a new random session");
    let (_, tls) =
        session_cookie(&sign_in(&env, ADMIN_KEY, &[("x-forwarded-proto", "https")]).await);
    assert!(tls.contains("; Secure"), "{tls}");

    // The page: framing forbidden.
    let page = env
        .http
        .get(env.url("/escalations"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(header(&page, "content-security-policy").contains("frame-ancestors 'none'"));

    // A pending escalation to act on.
    let waiting = env.waiting_for_approval(ask("smart"));
    let id = env.pending(1).await[0]["id"].as_str().unwrap().to_owned();
    let resolve_url = env.url(&format!("/v1/escalations/{id}/resolve"));
    let post = |headers: &[(&str, &str)], body: &str| {
        let mut request = env.http.post(&resolve_url).header("cookie", &cookie);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(body.to_owned()).send()
    };
    let approve = r#"{"decision":"approve"}"#;
    let refused = [
        // A form from another port of the same host (the cookie is sent: same site).
        vec![
            ("origin", "http://127.0.0.1:1"),
            ("content-type", "text/plain"),
        ],
        vec![
            ("sec-fetch-site", "same-site"),
            ("content-type", "application/json"),
        ],
        // From the page's origin, but neither JSON nor the CSRF token.
        vec![("origin", origin.as_str()), ("content-type", "text/plain")],
        // JSON without saying where it comes from.
        vec![("content-type", "application/json")],
    ];
    for headers in &refused {
        let response = post(headers, approve).await.unwrap();
        assert_eq!(response.status(), 403, "{headers:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "cross_origin");
    }
    assert_eq!(env.pending(1).await.len(), 1, "nothing was approved");

    // The CSRF token makes a non-JSON request from the page acceptable.
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
    let csrf = session["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(session["admin_id"], client_key_id(ADMIN_KEY));
    let ok = post(
        &[
            ("origin", origin.as_str()),
            ("content-type", "text/plain"),
            ("x-csrf-token", &csrf),
        ],
        approve,
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(waiting.await.unwrap().expect("proxy answers").status(), 200);

    // Signing out ends the session at once.
    let out = env
        .http
        .post(env.url("/escalations/logout"))
        .header("cookie", &cookie)
        .header("origin", &origin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(header(&out, "set-cookie").contains("Max-Age=0"));
    let after = env
        .http
        .get(env.url("/v1/escalations"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    // Bearer keys (no browser, no cookie) need no origin.
    assert_eq!(env.admin_get("/v1/escalations").await.status(), 200);

    // Guessing: 5 attempts a minute per address (3 used above), then 429.
    assert_eq!(sign_in(&env, "guess-1", &[]).await.status(), 401);
    assert_eq!(sign_in(&env, "guess-2", &[]).await.status(), 401);
    let throttled = sign_in(&env, ADMIN_KEY, &[]).await;
    assert_eq!(throttled.status(), 429);
    let wait: u64 = header(&throttled, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Sign-in from another site: refused.
    let env2 = Env::start_edited(|t| t).await;
    let cross = sign_in(&env2, ADMIN_KEY, &[("origin", "http://evil.example")]).await;
    assert_eq!(cross.status(), 403);
    assert!(cross.headers().get("set-cookie").is_none());
}
