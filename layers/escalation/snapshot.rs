//! What the record keeps of a request and a response: the [`Adapter`] trait, the
//! built-in [`HttpAdapter`], and the helpers to write an adapter of your own
//! (snapshots without credentials, the fingerprint a resume token is bound to).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::token::ResumeToken;
use crate::BoxError;

mod bound;

use self::bound::{is_sensitive_name, snapshot_body, REDACTED};

/// The header a detached caller resends its token in.
pub const RESUME_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-resume-token");

/// Connects the layer to your request and response types: how to snapshot them for
/// the record, where a resume token travels, and how a human's answer becomes a
/// response.
///
/// Snapshots are stored and shown to reviewers: they must never contain credentials.
/// [`HttpAdapter`] is the built-in one for buffered `http` types; use
/// [`snapshot_http_request`] and [`redact_headers`] in your own.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot snapshot and answer `{Req}` / `{Res}` for an escalation",
    label = "not an `Adapter<{Req}, {Res}>`",
    note = "`HttpAdapter` fits buffered `http::Request<B>` and `http::Response<B>` (bodies `AsRef<[u8]>`, such as `Bytes`); implement `Adapter` for other types"
)]
pub trait Adapter<Req, Res> {
    /// A serialisable picture of the request, without secrets.
    fn snapshot_request(&self, request: &Req) -> Value;

    /// A serialisable picture of the response under review, without secrets.
    fn snapshot_response(&self, response: &Res) -> Value;

    /// Removes and returns the resume token the caller sent, if any. It is removed
    /// so it never reaches the inner service.
    fn take_resume_token(&self, request: &mut Req) -> Option<ResumeToken>;

    /// The response to return for a human's answer.
    fn answer(&self, payload: Value) -> Result<Res, BoxError>;

    /// A fingerprint of what the request asks for, kept on the record: a resume
    /// token is accepted only with a request whose fingerprint is the same, so an
    /// approval resumes exactly the request the human saw, never another one
    /// ([`EscalationError::RequestMismatch`](super::EscalationError::RequestMismatch)).
    /// It must not depend on the resume token or on credentials, and should be a
    /// digest (it is stored). The default, `None`, binds nothing: any request
    /// resumes. [`HttpAdapter`] digests the method, path and query, and body.
    fn fingerprint_request(&self, request: &Req) -> Option<String> {
        let _ = request;
        None
    }
}

/// The [`Adapter`] for `http::Request<B>` and `http::Response<B>` with buffered bodies
/// (`Bytes`, `Vec<u8>`, `String` requests; `Bytes`, `Vec<u8>` responses).
///
/// - Snapshots: method, URI (user info dropped, secret-looking query parameters
///   redacted), headers without credentials (see [`redact_headers`]), and the body as
///   JSON or as text. Secret-looking fields are redacted at any size first; then
///   the body is bounded to about `max_body_bytes` and 32
///   levels, each cut marked (`[cut: ...]`), so a stored record always parses back.
/// - Token: a [`ResumeToken`] request extension, else the `x-resume-token` header.
/// - Answer: `200 OK`, `content-type: application/json`, the payload as the body.
#[derive(Clone, Copy, Debug)]
pub struct HttpAdapter {
    max_body_bytes: usize,
}

impl Default for HttpAdapter {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpAdapter {
    /// Snapshots bodies up to 64 KiB.
    pub const fn new() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
        }
    }

    /// Cut snapshot bodies at this many bytes.
    pub const fn max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }
}

impl<ReqB, ResB> Adapter<http::Request<ReqB>, http::Response<ResB>> for HttpAdapter
where
    ReqB: AsRef<[u8]>,
    ResB: AsRef<[u8]> + From<Vec<u8>>,
{
    fn snapshot_request(&self, request: &http::Request<ReqB>) -> Value {
        snapshot_http_request(request, Some(request.body().as_ref()), self.max_body_bytes)
    }

    fn snapshot_response(&self, response: &http::Response<ResB>) -> Value {
        let mut out = Map::new();
        out.insert("status".into(), response.status().as_u16().into());
        out.insert("headers".into(), redact_headers(response.headers()));
        out.insert(
            "body".into(),
            snapshot_body(response.body().as_ref(), self.max_body_bytes),
        );
        Value::Object(out)
    }

    fn take_resume_token(&self, request: &mut http::Request<ReqB>) -> Option<ResumeToken> {
        let header = request.headers_mut().remove(RESUME_TOKEN_HEADER);
        if let Some(token) = request.extensions_mut().remove::<ResumeToken>() {
            return Some(token);
        }
        // A header that is not text cannot be a valid token; keep it as one that
        // fails validation rather than silently running the request unescalated.
        header.map(|v| ResumeToken::from_string(v.to_str().unwrap_or_default()))
    }

    fn fingerprint_request(&self, request: &http::Request<ReqB>) -> Option<String> {
        Some(fingerprint_http_request(request, request.body().as_ref()))
    }

    fn answer(&self, payload: Value) -> Result<http::Response<ResB>, BoxError> {
        let body = serde_json::to_vec(&payload)?;
        Ok(http::Response::builder()
            .status(http::StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(ResB::from(body))?)
    }
}

/// The fingerprint [`HttpAdapter`] keeps: `sha256:` and the hex SHA-256 of the
/// method, the path and query, and the SHA-256 of the body bytes. Headers are left
/// out (they carry credentials and the resume token, and proxies rewrite them).
pub fn fingerprint_http_request<B>(request: &http::Request<B>, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let mut digest = Sha256::new();
    for part in [request.method().as_str().as_bytes(), path.as_bytes()] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    digest.update(Sha256::digest(body));
    format!("sha256:{}", super::token::hex(&digest.finalize()))
}

/// A snapshot of an http request without credentials: `method`, `uri`, `headers`, and
/// `body` when given (JSON, or text when it is not JSON; cut at `max_body_bytes`).
///
/// ```
/// use tower_llm_resilience::escalation::snapshot::snapshot_http_request;
///
/// let req = http::Request::post("https://api.example.com/v1/chat?key=abc123")
///     .header("authorization", "Bearer sk-secret")
///     .header("content-type", "application/json")
///     .body(r#"{"model":"m","api_key":"sk-other"}"#)
///     .unwrap();
/// let snap = snapshot_http_request(&req, Some(req.body().as_bytes()), 4096);
/// let text = snap.to_string();
/// assert!(!text.contains("sk-secret") && !text.contains("sk-other") && !text.contains("abc123"));
/// assert_eq!(snap["headers"]["content-type"], "application/json");
/// assert_eq!(snap["body"]["model"], "m");
/// ```
pub fn snapshot_http_request<B>(
    request: &http::Request<B>,
    body: Option<&[u8]>,
    max_body_bytes: usize,
) -> Value {
    let mut out = Map::new();
    out.insert("method".into(), request.method().as_str().into());
    out.insert("uri".into(), redact_uri(request.uri()).into());
    out.insert("headers".into(), redact_headers(request.headers()));
    if let Some(body) = body {
        out.insert("body".into(), snapshot_body(body, max_body_bytes));
    }
    Value::Object(out)
}

/// Headers as a JSON object (`name -> value`, repeated names joined with `, `)
/// without anything that can carry a credential: `authorization`, cookies, API-key,
/// token, secret, password and signature headers, and values marked sensitive.
/// Dropped names are listed under `"[redacted]"`.
pub fn redact_headers(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    let mut dropped = Vec::new();
    for (name, value) in headers {
        if is_sensitive_header(name, value) {
            if !dropped.contains(&name.as_str()) {
                dropped.push(name.as_str());
            }
            continue;
        }
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match out.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&text);
            }
            _ => {
                out.insert(name.as_str().into(), text.into());
            }
        }
    }
    if !dropped.is_empty() {
        out.insert(REDACTED.into(), dropped.into());
    }
    Value::Object(out)
}

/// Whether a header may carry a credential and must never be stored or sent on.
pub fn is_sensitive_header(name: &HeaderName, value: &HeaderValue) -> bool {
    const WORDS: [&str; 8] = [
        "auth",
        "cookie",
        "key",
        "token",
        "secret",
        "password",
        "signature",
        "session",
    ];
    let name = name.as_str();
    value.is_sensitive() || WORDS.iter().any(|w| name.contains(w))
}

fn redact_uri(uri: &http::Uri) -> String {
    let mut out = String::new();
    if let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) {
        out.push_str(scheme);
        out.push_str("://");
        out.push_str(host);
        if let Some(port) = uri.port_u16() {
            out.push_str(&format!(":{port}"));
        }
    }
    out.push_str(uri.path());
    if let Some(query) = uri.query() {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_sensitive_name(name) => format!("{name}={REDACTED}"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_without_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer sk-1".parse().unwrap());
        headers.insert("x-api-key", "sk-2".parse().unwrap());
        headers.insert("cookie", "s=3".parse().unwrap());
        headers.insert(RESUME_TOKEN_HEADER, "t".parse().unwrap());
        headers.append("accept", "a".parse().unwrap());
        headers.append("accept", "b".parse().unwrap());
        let out = redact_headers(&headers);
        assert_eq!(out["accept"], "a, b");
        let text = out.to_string();
        for secret in ["sk-1", "sk-2", "s=3", "\"t\""] {
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(out[REDACTED].as_array().unwrap().len(), 4);
    }

    #[test]
    fn long_or_non_json_bodies_are_text() {
        assert_eq!(snapshot_body(b"hello", 10), Value::String("hello".into()));
        assert_eq!(
            snapshot_body(b"0123456789abc", 10),
            Value::String("0123456789... [cut: 3 more bytes]".into())
        );
        // `max_tokens` is a number: kept; `token` strings are redacted.
        let json = snapshot_body(br#"{"max_tokens":5,"n":{"token":"x"}}"#, 100);
        assert_eq!(json["max_tokens"], 5);
        assert_eq!(json["n"]["token"], REDACTED);
    }

    #[test]
    fn uri_loses_user_info_and_keys() {
        let uri: http::Uri = "https://u:p@h.example:8443/v1/x?key=k1&model=m"
            .parse()
            .unwrap();
        assert_eq!(
            redact_uri(&uri),
            "https://h.example:8443/v1/x?key=[redacted]&model=m"
        );
    }
}
