//! Trust boundaries over real sockets: keys fail closed, an upstream's rejected
//! key neither leaks nor blocks the next tier, resume tokens belong to their
//! client, review-page sessions, CORS, the access log, and snapshots sealed at
//! rest.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use llm_proxy::client_id::client_key_id;
use llm_proxy::{Config, Proxy};
use serde_json::{json, Value};
use sha2::Digest as _;

/// Mocks and a proxy from the shared config, edited by `edit`.
async fn start_edited(edit: impl Fn(String) -> String) -> Env {
    let primary = mock("primary").await;
    let secondary = mock("secondary").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let text = edit(config_text(
        &primary.base_url(),
        &secondary.base_url(),
        &dir.path().join("escalations.db"),
        "",
    ));
    let config = Config::from_toml(&text).expect("test config is valid");
    let proxy = Proxy::start(&config).expect("proxy starts");
    Env {
        primary,
        secondary,
        proxy,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        dir,
        config,
    }
}

fn start_error(text: &str) -> String {
    match Config::from_toml(text).map(|c| Proxy::start(&c)) {
        Err(e) => e.to_string(),
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => panic!("the proxy started with:\n{text}"),
    }
}

fn base_text() -> String {
    config_text(
        "http://127.0.0.1:1/v1",
        "http://127.0.0.1:2/v1",
        std::path::Path::new("/nonexistent/never-opened.db"),
        "store = \"memory\"",
    )
}

#[test]
fn empty_or_missing_keys_stop_the_proxy_at_startup() {
    let text = base_text();
    let keys = format!("client_keys = [\"{CLIENT_KEY}\"]");
    let e = start_error(&text.replace(&keys, "client_keys = [\"\"]"));
    assert!(e.contains("auth.client_keys holds an empty key"), "{e}");
    let e = start_error(&text.replace(&keys, "client_keys_env = \"TRUST_TEST_UNSET_VAR\""));
    assert!(e.contains("TRUST_TEST_UNSET_VAR is not set"), "{e}");
    std::env::set_var("TRUST_TEST_EMPTY_VAR", " ");
    let e = start_error(&text.replace(&keys, "client_keys_env = \"TRUST_TEST_EMPTY_VAR\""));
    assert!(e.contains("TRUST_TEST_EMPTY_VAR is empty"), "{e}");
    let e = start_error(&text.replace(
        &format!("admin_keys = [\"{ADMIN_KEY}\"]"),
        "admin_keys_env = \"TRUST_TEST_UNSET_VAR\"",
    ));
    assert!(e.contains("auth.admin_keys_env"), "{e}");
    let e = start_error(&text.replacen(
        "kind = \"openai\"",
        "kind = \"openai\"\napi_key_env = \"TRUST_TEST_EMPTY_VAR\"",
        1,
    ));
    assert!(e.contains("TRUST_TEST_EMPTY_VAR is empty"), "{e}");

    // Open to the network only on purpose.
    let open = text
        .replace(&keys, "")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"");
    let e = start_error(&open);
    assert!(e.contains("allow_unauthenticated"), "{e}");
    let on_purpose = open.replace("[auth]", "[auth]\nallow_unauthenticated = true");
    let proxy = Proxy::start(&Config::from_toml(&on_purpose).unwrap()).expect("starts");
    proxy.stop();
    // Loopback without client keys is fine (a local development proxy).
    let local = text.replace(&keys, "");
    Proxy::start(&Config::from_toml(&local).unwrap())
        .expect("starts")
        .stop();
}

/// An upstream that refuses every key, and echoes it in its body and a header.
async fn key_echoing_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move |headers: http::HeaderMap| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = json!({"error": {
                "message": format!("Incorrect API key provided: {auth}"),
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }});
            (
                http::StatusCode::UNAUTHORIZED,
                [
                    ("x-echo-authorization", auth),
                    ("content-type", "application/json".to_owned()),
                ],
                body.to_string(),
            )
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1"), hits)
}

const UPSTREAM_KEY: &str = "sk-upstream-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_falls_back_counts_and_never_reaches_the_client() {
    std::env::set_var("TRUST_TEST_UPSTREAM_KEY", UPSTREAM_KEY);
    let (refusing, refused) = key_echoing_upstream().await;
    let env = start_edited(|text| {
        text.replacen(
            "kind = \"openai\"",
            "kind = \"openai\"\napi_key_env = \"TRUST_TEST_UPSTREAM_KEY\"",
            1,
        )
        .replacen(
            &text[text.find("base_url = \"").unwrap()..]
                .lines()
                .next()
                .unwrap()
                .to_owned(),
            &format!("base_url = \"{refusing}\""),
            1,
        )
    })
    .await;

    // The next tier, with its own key, answers.
    let response = env.chat(ask("strict")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "secondary");
    assert_eq!(header(&response, "x-llm-proxy-degraded"), "true");
    assert_eq!(refused.load(Ordering::SeqCst), 1);

    // A second refusal opens the primary's circuit (consecutive_failures = 2).
    assert_eq!(env.chat(ask("strict")).await.status(), 200);
    let circuits = circuits(&env.http, &env.proxy.url()).await;
    let primary = circuits
        .iter()
        .find(|c| c["upstream"] == "primary")
        .unwrap();
    assert_eq!(primary["state"], "open", "{primary}");
    assert_eq!(refused.load(Ordering::SeqCst), 2);

    // Its circuit open, a single-tier model fails fast; nothing of the
    // upstream's answer reaches the client.
    let response = env.chat(ask("solo")).await;
    assert_eq!(response.status(), 503);
    let headers = format!("{:?}", response.headers());
    let body = response.text().await.unwrap();
    assert!(!body.contains(UPSTREAM_KEY) && !headers.contains(UPSTREAM_KEY));
    assert!(!headers.contains("x-echo-authorization"), "{headers}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "circuit_open", "{body}");

    // Every tier refusing its key: a 502 naming each failure's kind.
    let (refusing_too, _) = key_echoing_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&refusing, &refusing_too, &dir.path().join("e.db"), "").replacen(
        "kind = \"openai\"",
        "kind = \"openai\"\napi_key_env = \"TRUST_TEST_UPSTREAM_KEY\"",
        2,
    );
    let proxy = Proxy::start(&Config::from_toml(&text).unwrap()).unwrap();
    let response = post_chat(&env.http, &proxy.url(), &ask("strict")).await;
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    assert!(!text.contains(UPSTREAM_KEY), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], "all_tiers_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("primary: auth"), "{message}");
    assert!(message.contains("secondary: auth"), "{message}");
    // Right after: a model with a template still answers.
    let response = post_chat(&env.http, &proxy.url(), &ask("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-llm-proxy-tier"), "template");
    tokio::task::spawn_blocking(move || proxy.stop())
        .await
        .unwrap();
}

const OTHER_KEY: &str = "other-client-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_works_only_for_the_client_that_got_it() {
    let env = start_edited(|text| {
        text.replace(
            &format!("client_keys = [\"{CLIENT_KEY}\"]"),
            &format!("client_keys = [\"{CLIENT_KEY}\", \"{OTHER_KEY}\"]"),
        )
        .replace("[escalation]", "[escalation]\nmode = \"detach\"")
    })
    .await;
    let response = env
        .chat_with(ask("smart"), &[("x-require-approval", "true")])
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let token = body["escalation"]["resume_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = body["escalation"]["id"].as_str().unwrap().to_owned();

    // The record names the client by its key's id, never the key.
    let record: Value = get_json(
        &env.http,
        &env.url(&format!("/v1/escalations/{id}")),
        ADMIN_KEY,
    )
    .await;
    let snapshot = record["request"].to_string();
    assert!(snapshot.contains(&client_key_id(CLIENT_KEY)), "{snapshot}");
    assert!(!snapshot.contains(CLIENT_KEY), "{snapshot}");
    assert_eq!(
        env.resolve(&id, json!({"decision": "approve"}))
            .await
            .status(),
        200
    );

    // Another client holding the token: refused like an unknown token.
    let resume = |key: &'static str| {
        env.http
            .post(env.url("/v1/chat/completions"))
            .bearer_auth(key)
            .header("x-resume-token", token.clone())
            .json(&ask("smart"))
            .send()
    };
    let stolen = resume(OTHER_KEY).await.unwrap();
    assert_eq!(stolen.status(), 400);
    let stolen: Value = stolen.json().await.unwrap();
    assert_eq!(stolen["error"]["code"], "invalid_resume_token");
    let unknown = env
        .chat_with(ask("smart"), &[("x-resume-token", "esc_nope.nothing")])
        .await;
    assert_eq!(unknown.status(), 400);
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(unknown["error"], stolen["error"]);

    // The owner with another request: 409, and the token is kept.
    let mut changed = ask("smart");
    changed["messages"][0]["content"] = json!("Transfer all the money");
    let mismatch = env.chat_with(changed, &[("x-resume-token", &token)]).await;
    assert_eq!(mismatch.status(), 409);
    let mismatch: Value = mismatch.json().await.unwrap();
    assert_eq!(mismatch["error"]["code"], "resume_request_mismatch");
    assert_eq!(mismatch["error"]["type"], "invalid_request_error");
    let other_model = env
        .chat_with(ask("strict"), &[("x-resume-token", &token)])
        .await;
    assert_eq!(other_model.status(), 409);

    // The owner's token was not used up.
    let owned = resume(CLIENT_KEY).await.unwrap();
    assert_eq!(owned.status(), 200);
    assert_eq!(header(&owned, "x-llm-proxy-tier"), "primary");
    assert_eq!(resume(CLIENT_KEY).await.unwrap().status(), 409);
}

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
        start_edited(|text| text.replace("[auth]", "[auth]\nlogin_attempts_per_minute = 5")).await;
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
    let waiting = {
        let http = env.http.clone();
        let url = env.url("/v1/chat/completions");
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(CLIENT_KEY)
                .header("x-require-approval", "true")
                .json(&ask("smart"))
                .send()
                .await
                .unwrap()
        })
    };
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
    assert_eq!(waiting.await.unwrap().status(), 200);

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
    let env2 = start_edited(|t| t).await;
    let cross = sign_in(&env2, ADMIN_KEY, &[("origin", "http://evil.example")]).await;
    assert_eq!(cross.status(), 403);
    assert!(cross.headers().get("set-cookie").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default_and_lists_origins_for_client_endpoints_only() {
    let preflight = |env: &Env, path: &str, origin: &str| {
        env.http
            .request(reqwest::Method::OPTIONS, env.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let off = start_edited(|t| t).await;
    let response = preflight(&off, "/v1/chat/completions", "https://app.example.com")
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let on = start_edited(|t| {
        t.replace(
            "[auth]",
            "[auth]\ncors_allowed_origins = [\"https://app.example.com\"]",
        )
    })
    .await;
    let response = preflight(&on, "/v1/chat/completions", "https://app.example.com")
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        "https://app.example.com"
    );
    assert!(response
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    let other = preflight(&on, "/v1/chat/completions", "https://evil.example")
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let admin = preflight(&on, "/v1/escalations/x/resolve", "https://app.example.com")
        .await
        .unwrap();
    assert!(admin.headers().get("access-control-allow-origin").is_none());
    // An actual request from the allowed origin works and says so.
    let response = on
        .chat_with(ask("smart"), &[("origin", "https://app.example.com")])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        "https://app.example.com"
    );
    assert!(header(&response, "access-control-expose-headers").contains("x-llm-proxy-tier"));
}

/// Everything the proxy logs in this test binary.
fn captured() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        struct Writer;
        impl std::io::Write for Writer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                captured().lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter("llm_proxy::access=info,llm_proxy::auth=warn,llm_proxy::audit=info")
            .with_writer(|| Writer)
            .with_ansi(false)
            .try_init();
        Mutex::new(Vec::new())
    })
}

fn log_lines(containing: &str) -> Vec<String> {
    let log = captured().lock().unwrap();
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|l| l.contains(containing))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_access_line_per_request_and_failed_logins_logged_without_secrets() {
    captured();
    const KEY: &str = "access-log-client-key";
    let env = start_edited(|t| t.replace(CLIENT_KEY, KEY)).await;
    let id = client_key_id(KEY);
    env.primary.set(|m| m.fail_rate = 1.0);
    let response = env
        .http
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&ask("smart"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.bytes().await;
    let wrong = env
        .http
        .get(env.url("/v1/models"))
        .bearer_auth("a-wrong-key-never-logged")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let models = env
        .http
        .get(env.url("/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let lines = log_lines(&format!("client={id}"));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("path=/v1/models") && lines[1].contains("status=200"));
    let line = &lines[0];
    for field in [
        "llm_proxy::access",
        "method=POST",
        "path=/v1/chat/completions",
        "status=200",
        "model=smart",
        "tier=secondary",
        "degraded=true",
        "duration_ms=",
    ] {
        assert!(line.contains(field), "{field}: {line}");
    }
    let failures = log_lines("wrong client key");
    assert!(!failures.is_empty());
    assert!(failures[0].contains("llm_proxy::auth") && failures[0].contains("127.0.0.1"));
    let all = String::from_utf8_lossy(&captured().lock().unwrap()).into_owned();
    assert!(!all.contains("a-wrong-key-never-logged") && !all.contains(KEY));
    assert!(!all.contains("Say hello"), "no prompt in any log");
}

const SEAL_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const NEW_SEAL_KEY: &str = "HxceHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_snapshots_are_sealed_at_rest_and_survive_a_key_rotation() {
    std::env::set_var("TRUST_TEST_SEAL_KEY", SEAL_KEY);
    std::env::set_var("TRUST_TEST_NEW_SEAL_KEY", NEW_SEAL_KEY);
    let secret = "My passport number is X1234567";
    let env = start_edited(|t| {
        t.replace(
            "[escalation]",
            "[escalation]\nmode = \"detach\"\nencryption_key_env = \"TRUST_TEST_SEAL_KEY\"",
        )
    })
    .await;
    let request = json!({"model": "smart", "messages": [{"role": "user", "content": secret}]});
    let response = env
        .chat_with(request.clone(), &[("x-require-approval", "true")])
        .await;
    assert_eq!(response.status(), 202);
    let pending = env.pending(1).await;
    assert!(pending[0]["request"].to_string().contains(secret));
    let db = env.dir.path().join("escalations.db");
    let on_disk = |path: &std::path::Path| {
        let mut bytes = Vec::new();
        for suffix in ["", "-wal"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            bytes.extend(std::fs::read(&name).unwrap_or_default());
        }
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let stored = on_disk(&db);
    assert!(
        stored.contains("xchacha20poly1305"),
        "sealed values are stored"
    );
    assert!(
        !stored.contains("passport"),
        "the prompt is not readable on disk"
    );

    // Rotation: the new key seals, the old one still opens.
    let Env {
        proxy,
        config,
        http,
        dir,
        ..
    } = env;
    tokio::task::spawn_blocking(move || proxy.stop())
        .await
        .unwrap();
    let mut rotated = config.clone();
    rotated.escalation.encryption_key_env = Some("TRUST_TEST_NEW_SEAL_KEY".into());
    rotated.escalation.previous_encryption_keys_env = Some("TRUST_TEST_SEAL_KEY".into());
    let proxy = Proxy::start(&rotated).unwrap();
    let pending = wait_pending(&http, &proxy.url(), 1).await;
    assert!(pending[0]["request"].to_string().contains(secret));
    tokio::task::spawn_blocking(move || proxy.stop())
        .await
        .unwrap();

    // Without the old key the record cannot be opened: skipped, never a 500.
    let mut forgot = config;
    forgot.escalation.encryption_key_env = Some("TRUST_TEST_NEW_SEAL_KEY".into());
    let proxy = Proxy::start(&forgot).unwrap();
    let list = http
        .get(format!("{}/v1/escalations", proxy.url()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    let list: Value = list.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");
    // New escalations still work.
    let response = post_chat_with(&http, &proxy.url(), &request).await;
    assert_eq!(response.status(), 202);
    assert_eq!(wait_pending(&http, &proxy.url(), 1).await.len(), 1);
    tokio::task::spawn_blocking(move || proxy.stop())
        .await
        .unwrap();
    drop(dir);
}

async fn post_chat_with(http: &reqwest::Client, base: &str, body: &Value) -> reqwest::Response {
    http.post(format!("{base}/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-require-approval", "true")
        .json(body)
        .send()
        .await
        .unwrap()
}
