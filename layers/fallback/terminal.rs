//! When an event stream is complete: the rule for its terminal event.

use std::fmt;

use serde::Deserialize;

/// One dispatched event of an event stream (see the scanner in `scan.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Event<'a> {
    /// The `event:` field, empty when none was given.
    pub(crate) name: &'a [u8],
    /// The `data:` lines, joined with `\n`.
    pub(crate) data: &'a [u8],
}

/// The rule that says which event completes an event stream. A stream whose body
/// ends before such an event is an interrupted answer, however the body ends (a
/// cut, a clean close of the connection, the end of a chunked body).
///
/// Two rules are built in, and the default accepts either, so one fallback chain
/// can mix providers:
///
/// - [`openai`](Self::openai): `data: [DONE]`, or a chunk whose `choices` carry a
///   non-null `finish_reason` (some OpenAI-compatible servers never send
///   `[DONE]`);
/// - [`anthropic`](Self::anthropic): the `message_stop` event (named so, or with
///   `"type": "message_stop"` in its data).
///
/// [`custom`](Self::custom) takes a function of the event's name and data.
///
/// ```
/// use tower_llm_resilience::fallback::TerminalEvent;
///
/// let rule = TerminalEvent::default();
/// assert!(rule.matches("", b"[DONE]"));
/// assert!(rule.matches("", br#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#));
/// assert!(rule.matches("message_stop", br#"{"type":"message_stop"}"#));
/// assert!(!rule.matches("", br#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#));
///
/// let custom = TerminalEvent::custom(|name, _data| name == b"end");
/// assert!(custom.matches("end", b"{}"));
/// ```
#[derive(Clone, Copy)]
pub struct TerminalEvent {
    rule: Rule,
}

#[derive(Clone, Copy)]
enum Rule {
    OpenAi,
    Anthropic,
    Either,
    Custom(fn(&[u8], &[u8]) -> bool),
}

impl TerminalEvent {
    /// OpenAI-compatible streams: `data: [DONE]`, or a chunk with a non-null
    /// `finish_reason`.
    pub const fn openai() -> Self {
        Self { rule: Rule::OpenAi }
    }

    /// Anthropic Messages streams: `message_stop`.
    pub const fn anthropic() -> Self {
        Self {
            rule: Rule::Anthropic,
        }
    }

    /// Either built-in rule (the default).
    pub const fn openai_or_anthropic() -> Self {
        Self { rule: Rule::Either }
    }

    /// A rule of your own: `is_terminal(event_name, data)`, where the name is
    /// empty when the event has no `event:` field and the data is the `data:`
    /// lines joined with `\n`.
    pub const fn custom(is_terminal: fn(&[u8], &[u8]) -> bool) -> Self {
        Self {
            rule: Rule::Custom(is_terminal),
        }
    }

    /// Whether an event with this name and data completes the stream.
    pub fn matches(&self, name: &str, data: &[u8]) -> bool {
        self.is_terminal(Event {
            name: name.as_bytes(),
            data,
        })
    }

    pub(crate) fn is_terminal(&self, event: Event<'_>) -> bool {
        match self.rule {
            Rule::OpenAi => openai_terminal(event.data),
            Rule::Anthropic => anthropic_terminal(event),
            Rule::Either => openai_terminal(event.data) || anthropic_terminal(event),
            Rule::Custom(is_terminal) => is_terminal(event.name, event.data),
        }
    }
}

impl Default for TerminalEvent {
    fn default() -> Self {
        Self::openai_or_anthropic()
    }
}

impl fmt::Debug for TerminalEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.rule {
            Rule::OpenAi => "openai",
            Rule::Anthropic => "anthropic",
            Rule::Either => "openai_or_anthropic",
            Rule::Custom(_) => "custom",
        };
        f.debug_tuple("TerminalEvent").field(&name).finish()
    }
}

fn openai_terminal(data: &[u8]) -> bool {
    if data.trim_ascii() == b"[DONE]" {
        return true;
    }
    // Only chunks that mention it are parsed: most chunks are text deltas.
    if !contains(data, b"\"finish_reason\"") {
        return false;
    }
    #[derive(Deserialize)]
    struct Chunk {
        #[serde(default)]
        choices: Vec<Choice>,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        finish_reason: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Chunk>(data)
        .is_ok_and(|chunk| chunk.choices.iter().any(|c| c.finish_reason.is_some()))
}

fn anthropic_terminal(event: Event<'_>) -> bool {
    if event.name == b"message_stop" {
        return true;
    }
    if !event.name.is_empty() || !contains(event.data, b"message_stop") {
        return false;
    }
    #[derive(Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a str>,
    }
    serde_json::from_slice::<Typed<'_>>(event.data).is_ok_and(|t| t.kind == Some("message_stop"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_rule() {
        let rule = TerminalEvent::openai();
        assert!(rule.matches("", b" [DONE] "));
        assert!(rule.matches(
            "",
            br#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#
        ));
        assert!(!rule.matches(
            "",
            br#"{"choices":[{"delta":{"content":"\"finish_reason\""}}]}"#
        ));
        assert!(!rule.matches("", br#"{"choices":[],"usage":{"total_tokens":3}}"#));
        assert!(!rule.matches("message_stop", b"{}"));
    }

    #[test]
    fn anthropic_rule() {
        let rule = TerminalEvent::anthropic();
        assert!(rule.matches("message_stop", b"{}"));
        assert!(rule.matches("", br#"{"type":"message_stop"}"#));
        assert!(!rule.matches("content_block_delta", br#"{"type":"message_stop"}"#));
        assert!(!rule.matches("", br#"{"type":"message_delta"}"#));
        assert!(!rule.matches("", b"[DONE]"));
    }

    #[test]
    fn either_and_custom() {
        let rule = TerminalEvent::default();
        assert!(rule.matches("", b"[DONE]") && rule.matches("message_stop", b"{}"));
        assert!(!rule.matches("ping", b"{}"));
        let custom = TerminalEvent::custom(|_, data| data == b"bye");
        assert!(custom.matches("", b"bye") && !custom.matches("", b"[DONE]"));
        assert_eq!(format!("{custom:?}"), "TerminalEvent(\"custom\")");
    }
}
