//! Resume tokens belong to the client key that got them.

use super::*;

const OTHER_KEY: &str = "other-client-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_works_only_for_the_client_that_got_it() {
    let env = Env::start_edited(|text| {
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
