use std::fmt;

use serde_json::Value;

/// A policy's answer: go on, or ask a human (and why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on without a human.
    Proceed,
    /// Escalate. The reason is stored, shown to the human and sent in notifications,
    /// so it must not contain prompt text or secrets.
    Escalate {
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// Escalate with this reason.
    pub fn escalate(reason: impl Into<String>) -> Self {
        Verdict::Escalate {
            reason: reason.into(),
        }
    }
}

/// Decides, before the call (approval gate) and after it (review), whether a human
/// must look at it.
///
/// Both methods default to [`Verdict::Proceed`]. Policies compose as tuples:
/// `(a, b)` escalates when either does, `a` first.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an escalation policy for `{Req}` and `{Res}`",
    label = "not an `EscalationPolicy<{Req}, {Res}>`",
    note = "implement `EscalationPolicy<{Req}, {Res}>`, or combine the built-in policies as a tuple `(a, b)`"
)]
pub trait EscalationPolicy<Req, Res> {
    /// Before the inner service is called.
    fn check_request(&self, _request: &Req) -> Verdict {
        Verdict::Proceed
    }

    /// After the inner service answered successfully.
    fn check_response(&self, _response: &Res) -> Verdict {
        Verdict::Proceed
    }

    /// Whether [`check_response`](Self::check_response) can ever escalate. When it
    /// cannot, the layer skips snapshotting every request up front (a response-stage
    /// escalation needs the request's snapshot after the request is gone).
    fn reviews_responses(&self) -> bool {
        true
    }

    /// Whether the response to this request can be reviewed (defaults to
    /// [`reviews_responses`](Self::reviews_responses)). A policy that reviews the
    /// answers to some requests only (for example those that asked for JSON) says
    /// so here, and the layer skips snapshotting the others.
    fn reviews_response_to(&self, _request: &Req) -> bool {
        self.reviews_responses()
    }
}

impl<Req, Res, A, B> EscalationPolicy<Req, Res> for (A, B)
where
    A: EscalationPolicy<Req, Res>,
    B: EscalationPolicy<Req, Res>,
{
    fn check_request(&self, request: &Req) -> Verdict {
        match self.0.check_request(request) {
            Verdict::Proceed => self.1.check_request(request),
            escalate => escalate,
        }
    }

    fn check_response(&self, response: &Res) -> Verdict {
        match self.0.check_response(response) {
            Verdict::Proceed => self.1.check_response(response),
            escalate => escalate,
        }
    }

    fn reviews_responses(&self) -> bool {
        self.0.reviews_responses() || self.1.reviews_responses()
    }

    fn reviews_response_to(&self, request: &Req) -> bool {
        self.0.reviews_response_to(request) || self.1.reviews_response_to(request)
    }
}

/// An approval gate: escalate every request for which the predicate is true.
///
/// ```
/// use tower_llm_resilience::escalation::{EscalationPolicy, RequestPredicate, Verdict};
///
/// let gate = RequestPredicate::new("refunds need approval", |req: &http::Request<String>| {
///     req.uri().path().starts_with("/refunds")
/// });
/// let req = http::Request::post("/refunds/7").body(String::new()).unwrap();
/// let verdict = EscalationPolicy::<_, ()>::check_request(&gate, &req);
/// assert_eq!(verdict, Verdict::escalate("refunds need approval"));
/// ```
#[derive(Clone)]
pub struct RequestPredicate<F> {
    reason: String,
    predicate: F,
}

impl<F> RequestPredicate<F> {
    /// Escalate with `reason` whenever `predicate(request)` is true.
    pub fn new(reason: impl Into<String>, predicate: F) -> Self {
        Self {
            reason: reason.into(),
            predicate,
        }
    }
}

impl<F> fmt::Debug for RequestPredicate<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestPredicate")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<Req, Res, F: Fn(&Req) -> bool> EscalationPolicy<Req, Res> for RequestPredicate<F> {
    fn check_request(&self, request: &Req) -> Verdict {
        if (self.predicate)(request) {
            Verdict::escalate(self.reason.clone())
        } else {
            Verdict::Proceed
        }
    }

    fn reviews_responses(&self) -> bool {
        false
    }
}

/// A review: escalate every successful response for which the predicate is true.
#[derive(Clone)]
pub struct ResponsePredicate<F> {
    reason: String,
    predicate: F,
}

impl<F> ResponsePredicate<F> {
    /// Escalate with `reason` whenever `predicate(response)` is true.
    pub fn new(reason: impl Into<String>, predicate: F) -> Self {
        Self {
            reason: reason.into(),
            predicate,
        }
    }
}

impl<F> fmt::Debug for ResponsePredicate<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponsePredicate")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<Req, Res, F: Fn(&Res) -> bool> EscalationPolicy<Req, Res> for ResponsePredicate<F> {
    fn check_response(&self, response: &Res) -> Verdict {
        if (self.predicate)(response) {
            Verdict::escalate(self.reason.clone())
        } else {
            Verdict::Proceed
        }
    }
}

/// What a [`PolicyFn`] is asked about.
#[derive(Debug)]
pub enum Check<'a, Req, Res> {
    /// A request, before the call.
    Request(&'a Req),
    /// A successful response, after the call.
    Response(&'a Res),
}

/// A policy from one closure over [`Check`]; see [`policy_fn`].
#[derive(Clone)]
pub struct PolicyFn<F>(F);

/// A policy from a closure that sees both the request and the response.
///
/// ```
/// use tower_llm_resilience::escalation::{policy_fn, Check, EscalationPolicy, Verdict};
///
/// let policy = policy_fn(|check: Check<'_, String, String>| match check {
///     Check::Request(prompt) if prompt.contains("wire money") => Verdict::escalate("payment"),
///     Check::Response(answer) if answer.is_empty() => Verdict::escalate("empty answer"),
///     _ => Verdict::Proceed,
/// });
/// assert_eq!(policy.check_response(&String::new()), Verdict::escalate("empty answer"));
/// ```
pub fn policy_fn<F>(f: F) -> PolicyFn<F> {
    PolicyFn(f)
}

impl<F> fmt::Debug for PolicyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PolicyFn")
    }
}

impl<Req, Res, F> EscalationPolicy<Req, Res> for PolicyFn<F>
where
    F: Fn(Check<'_, Req, Res>) -> Verdict,
{
    fn check_request(&self, request: &Req) -> Verdict {
        (self.0)(Check::Request(request))
    }

    fn check_response(&self, response: &Res) -> Verdict {
        (self.0)(Check::Response(response))
    }
}

/// Review: the model's answer is not valid JSON. Use it on routes where JSON was asked
/// for (`response_format`, a tool, a schema in the prompt).
///
/// Reads buffered `http::Response<B>` bodies of OpenAI chat completions
/// (`choices[].message.content`, every choice), OpenAI legacy completions
/// (`choices[].text`) and Anthropic messages (the `text` content blocks). A body that
/// is itself not JSON, or has no answer text, also escalates.
#[derive(Clone, Copy, Debug, Default)]
pub struct InvalidJsonAnswer;

impl<Req, B: AsRef<[u8]>> EscalationPolicy<Req, http::Response<B>> for InvalidJsonAnswer {
    fn check_response(&self, response: &http::Response<B>) -> Verdict {
        if answer_is_json(response.body().as_ref()) {
            Verdict::Proceed
        } else {
            Verdict::escalate("the model's answer is not valid JSON")
        }
    }
}

/// Review: the provider filtered the answer: OpenAI `finish_reason:
/// "content_filter"` on any choice, or Anthropic `stop_reason: "refusal"`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ContentFiltered;

impl<Req, B: AsRef<[u8]>> EscalationPolicy<Req, http::Response<B>> for ContentFiltered {
    fn check_response(&self, response: &http::Response<B>) -> Verdict {
        if is_content_filtered(response.body().as_ref()) {
            Verdict::escalate("the provider filtered the answer (content_filter)")
        } else {
            Verdict::Proceed
        }
    }
}

fn answer_texts(body: &Value) -> Vec<&str> {
    let mut texts = Vec::new();
    if let Some(choices) = body.get("choices").and_then(Value::as_array) {
        for choice in choices {
            let text = choice
                .pointer("/message/content")
                .or_else(|| choice.get("text"))
                .and_then(Value::as_str);
            texts.extend(text);
        }
    }
    if let Some(blocks) = body.get("content").and_then(Value::as_array) {
        for block in blocks {
            if block.get("type").and_then(Value::as_str) == Some("text") {
                texts.extend(block.get("text").and_then(Value::as_str));
            }
        }
    }
    texts
}

/// Whether every answer text in a provider response body parses as JSON (false when
/// there is no answer text). Code fences around the JSON are tolerated.
pub fn answer_is_json(body: &[u8]) -> bool {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let texts = answer_texts(&body);
    !texts.is_empty()
        && texts
            .into_iter()
            .all(|text| serde_json::from_str::<Value>(strip_fence(text)).is_ok())
}

fn strip_fence(text: &str) -> &str {
    let trimmed = text.trim();
    let Some(inner) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    let inner = inner.strip_prefix("json").unwrap_or(inner);
    inner.strip_suffix("```").unwrap_or(inner).trim()
}

/// Whether a provider response body says the answer was filtered.
pub fn is_content_filtered(body: &[u8]) -> bool {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let openai = body
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|choices| {
            choices
                .iter()
                .any(|c| c.get("finish_reason").and_then(Value::as_str) == Some("content_filter"))
        });
    openai || body.get("stop_reason").and_then(Value::as_str) == Some("refusal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers() {
        let ok = br#"{"choices":[{"message":{"content":"{\"a\":1}"},"finish_reason":"stop"}]}"#;
        let fenced = br#"{"choices":[{"message":{"content":"```json\n[1,2]\n```"}}]}"#;
        let prose = br#"{"choices":[{"message":{"content":"Sure! Here it is"}}]}"#;
        let anthropic = br#"{"content":[{"type":"text","text":"{\"b\":2}"}]}"#;
        assert!(answer_is_json(ok));
        assert!(answer_is_json(fenced));
        assert!(answer_is_json(anthropic));
        assert!(!answer_is_json(prose));
        assert!(!answer_is_json(b"not json"));
        assert!(!answer_is_json(b"{}"));
    }

    #[test]
    fn content_filter() {
        assert!(is_content_filtered(
            br#"{"choices":[{"finish_reason":"stop"},{"finish_reason":"content_filter"}]}"#
        ));
        assert!(is_content_filtered(br#"{"stop_reason":"refusal"}"#));
        assert!(!is_content_filtered(
            br#"{"choices":[{"finish_reason":"stop"}]}"#
        ));
    }

    #[test]
    fn tuples_escalate_when_either_does() {
        let gate = RequestPredicate::new("gate", |r: &u32| *r > 10);
        let review = ResponsePredicate::new("review", |r: &u32| *r == 0);
        let both = (gate, review);
        assert_eq!(both.check_request(&11), Verdict::escalate("gate"));
        assert_eq!(both.check_request(&1), Verdict::Proceed);
        assert_eq!(both.check_response(&0), Verdict::escalate("review"));
        assert!(EscalationPolicy::<u32, u32>::reviews_responses(&both));
        assert!(!EscalationPolicy::<u32, u32>::reviews_responses(&both.0));
        assert!(EscalationPolicy::<u32, u32>::reviews_response_to(&both, &1));
        assert!(!EscalationPolicy::<u32, u32>::reviews_response_to(
            &both.0, &1
        ));
    }
}
