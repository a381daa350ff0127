//! Escalation snapshots sealed at rest, and a key rotation.

use super::*;

const SEAL_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const NEW_SEAL_KEY: &str = "HxceHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_snapshots_are_sealed_at_rest_and_survive_a_key_rotation() {
    std::env::set_var("TRUST_TEST_SEAL_KEY", SEAL_KEY);
    std::env::set_var("TRUST_TEST_NEW_SEAL_KEY", NEW_SEAL_KEY);
    let secret = "My passport number is X1234567";
    let env = Env::start_edited(|t| {
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
