//! An incremental, bounded scanner of event streams (`text/event-stream`): it
//! sees every byte of a stream once, as it passes through, and reports each
//! dispatched event.
//!
//! It follows the WHATWG event-stream rules: lines end in `\n`, `\r\n` or a lone
//! `\r` (a line ending in `\r` is complete at once, without waiting for a `\n`
//! that may never come); a UTF-8 byte order mark before the first line is
//! dropped; a blank line dispatches the event; `data` lines join with `\n`; one
//! space after the colon is dropped; `:` starts a comment; other fields are
//! ignored. An event (its name, its data and the line being read) larger than
//! the limit is an error, so a server cannot make it buffer without bound.

use std::fmt;

use super::terminal::{Event, TerminalEvent};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// An event (with the line being read) grew past the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EventTooLarge(pub(crate) usize);

impl fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an event-stream event is larger than {} bytes", self.0)
    }
}

/// Feed it bytes as they arrive; each complete event goes to the callback.
#[derive(Debug)]
pub(crate) struct Scanner {
    max_event_bytes: usize,
    line: Vec<u8>,
    name: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    /// The last byte fed was a `\r`: a `\n` first in the next chunk ends nothing.
    after_cr: bool,
    /// No line has been completed yet: a byte order mark may still lead it.
    first_line: bool,
}

impl Scanner {
    pub(crate) fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            line: Vec::new(),
            name: Vec::new(),
            data: Vec::new(),
            has_data: false,
            after_cr: false,
            first_line: true,
        }
    }

    /// Scan `chunk`, calling `on_event` for each event it completes.
    pub(crate) fn feed(
        &mut self,
        mut chunk: &[u8],
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), EventTooLarge> {
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.reserve(end)?;
            self.line.extend_from_slice(&chunk[..end]);
            self.end_line(on_event);
            let crlf = chunk[end] == b'\r' && chunk.get(end + 1) == Some(&b'\n');
            self.after_cr = chunk[end] == b'\r' && end + 1 == chunk.len();
            chunk = &chunk[end + 1 + usize::from(crlf)..];
        }
        self.reserve(chunk.len())?;
        self.line.extend_from_slice(chunk);
        Ok(())
    }

    /// The stream ended: an event whose last line was complete is dispatched even
    /// without its closing blank line; a partial last line is dropped, as the
    /// rules say (the server was cut off while writing it).
    pub(crate) fn finish(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        if self.line.is_empty() {
            self.dispatch(on_event);
        }
        self.clear();
    }

    /// Forget the event being read and free its memory.
    pub(crate) fn clear(&mut self) {
        self.line = Vec::new();
        self.name = Vec::new();
        self.data = Vec::new();
        self.has_data = false;
    }

    /// Bytes held for the event being read (for tests and size checks).
    pub(crate) fn buffered(&self) -> usize {
        self.line.len() + self.name.len() + self.data.len()
    }

    fn reserve(&self, more: usize) -> Result<(), EventTooLarge> {
        if self.buffered().saturating_add(more) > self.max_event_bytes {
            return Err(EventTooLarge(self.max_event_bytes));
        }
        Ok(())
    }

    fn end_line(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        let mut line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.first_line) && line.starts_with(BOM) {
            line.drain(..BOM.len());
        }
        self.field(&line, on_event);
        // Keep the allocation for the next line.
        line.clear();
        self.line = line;
    }

    fn field(&mut self, line: &[u8], on_event: &mut dyn FnMut(Event<'_>)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name.extend_from_slice(value);
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        if self.has_data {
            on_event(Event {
                name: &self.name,
                data: &self.data,
            });
        }
        self.name.clear();
        self.data.clear();
        self.has_data = false;
    }
}

/// What a stream has shown so far: how many data events, the first one's verdict,
/// and whether its terminal event arrived.
#[derive(Debug)]
pub(crate) struct Progress {
    pub(crate) scanner: Scanner,
    pub(crate) terminal: TerminalEvent,
    pub(crate) events: u64,
    pub(crate) first_error: Option<crate::classify::FailureKind>,
    pub(crate) complete: bool,
}

impl Progress {
    pub(crate) fn new(max_event_bytes: usize, terminal: TerminalEvent) -> Self {
        Self {
            scanner: Scanner::new(max_event_bytes),
            terminal,
            events: 0,
            first_error: None,
            complete: false,
        }
    }

    /// Scan the next bytes of the stream. Once complete, nothing more is scanned.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<(), EventTooLarge> {
        if self.complete {
            return Ok(());
        }
        let Self {
            scanner,
            terminal,
            events,
            first_error,
            complete,
        } = self;
        scanner.feed(chunk, &mut |event| {
            observe(event, terminal, events, first_error, complete)
        })
    }

    /// Stop scanning and free the memory held for the event being read.
    pub(crate) fn release(&mut self) {
        self.scanner.clear();
    }

    /// The stream's body ended.
    pub(crate) fn finish(&mut self) {
        if self.complete {
            return;
        }
        let Self {
            scanner,
            terminal,
            events,
            first_error,
            complete,
        } = self;
        scanner.finish(&mut |event| observe(event, terminal, events, first_error, complete));
    }
}

fn observe(
    event: Event<'_>,
    terminal: &TerminalEvent,
    events: &mut u64,
    first_error: &mut Option<crate::classify::FailureKind>,
    complete: &mut bool,
) {
    if *complete {
        return;
    }
    if *events == 0 {
        *first_error = match crate::classify::classify_error_body(event.data) {
            Some(kind) => Some(kind),
            None if event.name == b"error" => Some(crate::classify::FailureKind::Other),
            None => None,
        };
    }
    *events += 1;
    if terminal.is_terminal(event) {
        *complete = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(input: &[u8], piece: usize) -> Vec<(String, String)> {
        let mut scanner = Scanner::new(1024);
        let mut out = Vec::new();
        let mut push = |e: Event<'_>| {
            out.push((
                String::from_utf8_lossy(e.name).into_owned(),
                String::from_utf8_lossy(e.data).into_owned(),
            ))
        };
        for chunk in input.chunks(piece) {
            scanner.feed(chunk, &mut push).unwrap();
        }
        scanner.finish(&mut push);
        out
    }

    #[test]
    fn events_split_anywhere_scan_the_same() {
        let input = b"\xef\xbb\xbfevent: start\r\ndata: {\"a\":1}\r\n\r\n: keep-alive\n\ndata:x\rdata:  y\r\rid: 7\nretry: 10\ndata\n\nevent: ping\n\n";
        let expected = vec![
            ("start".to_owned(), "{\"a\":1}".to_owned()),
            (String::new(), "x\n y".to_owned()),
            (String::new(), String::new()),
        ];
        for piece in 1..input.len() {
            assert_eq!(scan_in_pieces(input, piece), expected, "{piece}");
        }
    }

    #[test]
    fn cr_only_line_endings_dispatch_without_waiting() {
        let mut scanner = Scanner::new(64);
        let mut seen = 0;
        scanner
            .feed(b"data: a\r\r", &mut |e| {
                assert_eq!(e.data, b"a");
                seen += 1;
            })
            .unwrap();
        assert_eq!(seen, 1);
    }

    #[test]
    fn a_bom_only_counts_before_the_first_line() {
        assert_eq!(
            scan_in_pieces(b"data: a\n\n\xef\xbb\xbfdata: b\n\n", 64),
            vec![(String::new(), "a".to_owned())]
        );
    }

    #[test]
    fn the_last_complete_event_is_dispatched_without_its_blank_line() {
        assert_eq!(
            scan_in_pieces(b"data: [DONE]\n", 64),
            vec![(String::new(), "[DONE]".to_owned())]
        );
        assert_eq!(scan_in_pieces(b"data: [DONE]", 64), vec![]);
    }

    #[test]
    fn events_are_bounded_across_lines_and_chunks() {
        let mut scanner = Scanner::new(16);
        let mut ignore = |_: Event<'_>| {};
        scanner.feed(b"data: 0123\n", &mut ignore).unwrap();
        scanner.feed(b"data: 4567\n", &mut ignore).unwrap();
        assert_eq!(
            scanner.feed(b"data: 89", &mut ignore),
            Err(EventTooLarge(16))
        );
        let mut long_line = Scanner::new(16);
        assert!(long_line.feed(&[b'x'; 17], &mut ignore).is_err());
        // A dispatched event frees its room.
        let mut many = Scanner::new(16);
        for _ in 0..100 {
            many.feed(b"data: 0123456\n\n", &mut ignore).unwrap();
        }
        assert_eq!(many.buffered(), 0);
    }
}
