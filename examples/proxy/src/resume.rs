//! A resume token works only for the client key that got it.
//!
//! The escalation snapshot of a chat request keeps the id of the client key
//! that sent it ([`CLIENT_HEADER`], see
//! [`client_key_id`](crate::client_id::client_key_id)). A request that presents
//! a resume token of an escalation created under another key (or with a key
//! when the record has none) is refused exactly like an unknown token (400
//! `invalid_resume_token`), before the escalation layer sees it: the token is
//! not used up and the answer does not tell that the escalation exists.

use http::HeaderValue;
use tower_llm_resilience::escalation::ResumeToken;

use crate::client_id::ClientId;
use crate::error::ApiError;
use crate::routes::chat::CLIENT_HEADER;
use crate::state::AppState;

/// `Err` is the answer for a token that belongs to another client (the same
/// one the escalation layer gives for an invalid token).
pub(crate) async fn check_owner(
    state: &AppState,
    token: &HeaderValue,
    client: &ClientId,
) -> Result<(), ApiError> {
    let token = ResumeToken::from_string(token.to_str().unwrap_or_default());
    // A token that names no escalation, or an escalation that is not there,
    // is the escalation layer's to refuse.
    let Some(id) = token.escalation_id() else {
        return Ok(());
    };
    let Ok(Some(record)) = state.pipeline.escalations.get(&id).await else {
        return Ok(());
    };
    let owner = record
        .request
        .pointer(&format!("/headers/{}", CLIENT_HEADER.as_str()))
        .and_then(serde_json::Value::as_str);
    if owner == client.0.as_deref() {
        Ok(())
    } else {
        tracing::warn!(
            target: "llm_proxy::auth",
            escalation_id = %id,
            client = client.as_str(),
            "resume token presented by another client; refused"
        );
        Err(ApiError::invalid_resume_token())
    }
}
