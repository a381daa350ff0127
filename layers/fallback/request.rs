//! Per-tier request mapping helpers.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::HeaderValue;
use serde_json::Value;

/// A request mapping for [`Tier::map_request`](super::Tier::map_request) that sets
/// the `model` field of a JSON request body, so an alternate can call another
/// model with the same request.
///
/// The `Content-Length` header, if present, is updated. A body that is not a JSON
/// object is sent unchanged (and a `debug` event says so).
///
/// ```
/// use bytes::Bytes;
/// use tower_llm_resilience::fallback::rewrite_model;
///
/// let to_mini = rewrite_model("gpt-4o-mini");
/// let request = http::Request::new(Bytes::from_static(br#"{"model":"gpt-4o","stream":true}"#));
/// let mapped = to_mini(request);
/// let body: serde_json::Value = serde_json::from_slice(mapped.body()).unwrap();
/// assert_eq!(body["model"], "gpt-4o-mini");
/// assert_eq!(body["stream"], true);
/// ```
pub fn rewrite_model(
    model: impl Into<Arc<str>>,
) -> impl Fn(http::Request<Bytes>) -> http::Request<Bytes> + Clone + Send + Sync + 'static {
    let model: Arc<str> = model.into();
    move |request| set_json_model(request, &model)
}

/// Set the `model` field of a JSON request body; see [`rewrite_model`].
pub fn set_json_model(request: http::Request<Bytes>, model: &str) -> http::Request<Bytes> {
    let (mut parts, body) = request.into_parts();
    let body = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut object)) => {
            object.insert("model".to_owned(), Value::String(model.to_owned()));
            match serde_json::to_vec(&object) {
                Ok(bytes) => {
                    if parts.headers.contains_key(CONTENT_LENGTH) {
                        parts
                            .headers
                            .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                    }
                    Bytes::from(bytes)
                }
                Err(_) => body,
            }
        }
        _ => {
            tracing::debug!(
                model,
                "request body is not a JSON object; model not rewritten"
            );
            body
        }
    };
    http::Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_model_and_content_length() {
        let body =
            Bytes::from_static(br#"{"model":"a","messages":[{"role":"user","content":"hi"}]}"#);
        let request = http::Request::builder()
            .header(CONTENT_LENGTH, body.len())
            .header("authorization", "Bearer x")
            .body(body)
            .unwrap();
        let mapped = rewrite_model("a-much-longer-model-name")(request);
        let value: Value = serde_json::from_slice(mapped.body()).unwrap();
        assert_eq!(value["model"], "a-much-longer-model-name");
        assert_eq!(value["messages"][0]["content"], "hi");
        assert_eq!(
            mapped.headers()[CONTENT_LENGTH],
            mapped.body().len().to_string().as_str()
        );
        assert_eq!(mapped.headers()["authorization"], "Bearer x");
    }

    #[test]
    fn adds_a_missing_model_and_leaves_non_json_alone() {
        let mapped = set_json_model(http::Request::new(Bytes::from_static(b"{}")), "m");
        assert_eq!(mapped.body().as_ref(), br#"{"model":"m"}"#);
        let raw = set_json_model(http::Request::new(Bytes::from_static(b"not json")), "m");
        assert_eq!(raw.body().as_ref(), b"not json");
        let array = set_json_model(http::Request::new(Bytes::from_static(b"[1]")), "m");
        assert_eq!(array.body().as_ref(), b"[1]");
        assert!(!array.headers().contains_key(CONTENT_LENGTH));
    }
}
