//! An incremental parser for server-sent events (`text/event-stream`), shared by
//! both providers.
//!
//! It follows the WHATWG event-stream rules (lines end in `\n`, `\r\n` or `\r`; a
//! blank line dispatches; `data` lines join with `\n`; one space after the colon is
//! dropped; `:` starts a comment), with two deliberate strictnesses, because an LLM
//! stream that does not parse is a broken answer, not something to skip past: a
//! line with a field other than `data`, `event`, `id` or `retry` is an error, and so
//! is a line that is not UTF-8. An event (its data, name and the line being read)
//! larger than a limit is an error too, so a server cannot make the client buffer
//! without bound, whether it sends one endless line or endless `data:` lines
//! without the blank line that ends the event.

use std::collections::VecDeque;
use std::fmt;

/// The largest event accepted unless configured: far above any real chunk, low
/// enough to bound memory.
pub(crate) const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, if one was given.
    pub(crate) event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub(crate) data: String,
}

/// The bytes are not a well-formed event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SseError(String);

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed event stream: {}", self.0)
    }
}

impl std::error::Error for SseError {}

/// Feed it bytes as they arrive; take complete events out.
#[derive(Debug)]
pub(crate) struct SseParser {
    max_event_bytes: usize,
    buffer: Vec<u8>,
    /// The last byte fed was a `\r`: a `\n` at the start of the next chunk belongs
    /// to the same line ending.
    after_cr: bool,
    started: bool,
    event: Option<String>,
    data: Option<String>,
    data_lines: usize,
    ready: VecDeque<SseEvent>,
}

impl SseParser {
    /// A parser that accepts events of at most `max_event_bytes`.
    pub(crate) fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            buffer: Vec::new(),
            after_cr: false,
            started: false,
            event: None,
            data: None,
            data_lines: 0,
            ready: VecDeque::new(),
        }
    }

    /// Bytes held for the event being read.
    fn held(&self) -> usize {
        self.buffer.len()
            + self.data.as_ref().map_or(0, String::len)
            + self.event.as_ref().map_or(0, String::len)
    }

    fn check_room(&self, more: usize) -> Result<(), SseError> {
        if self.held().saturating_add(more) > self.max_event_bytes {
            return Err(SseError(format!(
                "an event is larger than {} bytes",
                self.max_event_bytes
            )));
        }
        Ok(())
    }

    /// Parse `chunk`; complete events become available through [`Self::next_event`].
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) -> Result<(), SseError> {
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.check_room(end)?;
            self.buffer.extend_from_slice(&chunk[..end]);
            let line = std::mem::take(&mut self.buffer);
            self.line(&line)?;
            if chunk[end] == b'\r' {
                match chunk.get(end + 1) {
                    Some(b'\n') => chunk = &chunk[end + 2..],
                    Some(_) => chunk = &chunk[end + 1..],
                    None => {
                        self.after_cr = true;
                        chunk = &[];
                    }
                }
            } else {
                chunk = &chunk[end + 1..];
            }
        }
        self.check_room(chunk.len())?;
        self.buffer.extend_from_slice(chunk);
        Ok(())
    }

    /// The next complete event, if one is ready.
    pub(crate) fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    fn line(&mut self, mut line: &[u8]) -> Result<(), SseError> {
        if !self.started {
            self.started = true;
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = std::str::from_utf8(line)
            .map_err(|_| SseError("a line is not valid UTF-8".to_owned()))?;
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                let data = self.data.get_or_insert_with(String::new);
                if self.data_lines > 0 {
                    data.push('\n');
                }
                data.push_str(value);
                self.data_lines += 1;
            }
            "event" => self.event = Some(value.to_owned()),
            "id" | "retry" => {}
            _ => {
                return Err(SseError(format!(
                    "unexpected line starting {:?}",
                    line.chars().take(24).collect::<String>()
                )))
            }
        }
        Ok(())
    }

    /// The body ended. An event whose last line was complete but that lacked the
    /// closing blank line is still dispatched; a partial last line is dropped, as
    /// the event-stream rules say, since the server was cut off while writing it.
    pub(crate) fn finish(&mut self) {
        if self.buffer.is_empty() {
            self.dispatch();
        }
        self.buffer.clear();
        self.event = None;
        self.data = None;
        self.data_lines = 0;
    }

    fn dispatch(&mut self) {
        let event = self.event.take();
        self.data_lines = 0;
        if let Some(data) = self.data.take() {
            self.ready.push_back(SseEvent { event, data });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Result<Vec<SseEvent>, SseError> {
        let mut parser = SseParser::new(DEFAULT_MAX_EVENT_BYTES);
        for chunk in input.chunks(piece) {
            parser.feed(chunk)?;
        }
        parser.finish();
        Ok(std::iter::from_fn(|| parser.next_event()).collect())
    }

    fn event(name: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: name.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    #[test]
    fn events_split_anywhere_parse_the_same() {
        let input = b"\xef\xbb\xbfevent: message_start\r\ndata: {\"a\":1}\r\n\r\n: keep-alive\n\ndata:x\rdata:  y\r\rid: 7\nretry: 10\ndata\n\n";
        let expected = vec![
            event(Some("message_start"), "{\"a\":1}"),
            event(None, "x\n y"),
            event(None, ""),
        ];
        for piece in 1..input.len() {
            assert_eq!(parse_in_pieces(input, piece).unwrap(), expected, "{piece}");
        }
    }

    #[test]
    fn event_without_data_is_not_dispatched() {
        assert_eq!(parse_in_pieces(b"event: ping\n\n", 64).unwrap(), vec![]);
    }

    #[test]
    fn complete_last_line_is_kept_partial_one_dropped() {
        assert_eq!(
            parse_in_pieces(b"data: [DONE]\n", 64).unwrap(),
            vec![event(None, "[DONE]")]
        );
        assert_eq!(parse_in_pieces(b"data: [DO", 64).unwrap(), vec![]);
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            &b"{\"choices\":[]}\n\n"[..],
            b"dta: x\n\n",
            b"data: \xff\xfe\n\n",
        ] {
            assert!(parse_in_pieces(bad, 64).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn overlong_line_is_an_error() {
        let mut parser = SseParser::new(DEFAULT_MAX_EVENT_BYTES);
        let chunk = vec![b'a'; 256 * 1024];
        let result = (0..5).try_for_each(|_| parser.feed(&chunk));
        assert!(result.is_err());
    }

    #[test]
    fn data_lines_without_a_blank_line_are_bounded() {
        let mut parser = SseParser::new(64);
        let result = (0..10).try_for_each(|_| parser.feed(b"data: 0123456789\n"));
        assert!(result.is_err());
        // Events that end keep the parser well under its limit.
        let mut parser = SseParser::new(64);
        for _ in 0..100 {
            parser.feed(b"data: 0123456789\n\n").unwrap();
            assert!(parser.next_event().is_some());
        }
    }
}
