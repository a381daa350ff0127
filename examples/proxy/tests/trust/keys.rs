//! Keys fail closed: an empty or missing client or admin key stops the proxy
//! at startup, never turning into "no auth".

use super::*;

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
