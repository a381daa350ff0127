//! Parsing of the headers that say how long to wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The default ceiling on a wait a server asks for: 10 minutes.
///
/// Providers ask for seconds to a few minutes (OpenAI's token resets reach a few
/// minutes, Anthropic's a minute, Gemini's per-minute quotas under one). A larger
/// value is either a daily quota, which a fallback handles better than waiting, or a
/// misbehaving server; without a ceiling, `retry-after: 10000000000000000000` or a
/// date in year 9999 would pause a batch or a circuit for ever.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// The ceiling in milliseconds; one process-wide value, read on every parse.
static MAX_RETRY_AFTER_MS: AtomicU64 = AtomicU64::new(10 * 60 * 1000);

/// Sets the ceiling on every wait a server can ask for, process-wide (default
/// [`DEFAULT_MAX_RETRY_AFTER`]). It is applied where waits are parsed
/// ([`retry_after`], [`parse_retry_after_value`], and the retry delays in provider
/// error bodies), so every layer and client sees capped values: a longer wait is
/// taken as this one. Millisecond precision; at least 1 ms.
pub fn set_max_retry_after(max: Duration) {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    MAX_RETRY_AFTER_MS.store(ms, Ordering::Relaxed);
}

/// The ceiling set by [`set_max_retry_after`] (default [`DEFAULT_MAX_RETRY_AFTER`]).
pub fn max_retry_after() -> Duration {
    Duration::from_millis(MAX_RETRY_AFTER_MS.load(Ordering::Relaxed))
}

/// `wait`, cut to [`max_retry_after`].
pub fn cap_retry_after(wait: Duration) -> Duration {
    wait.min(max_retry_after())
}

/// OpenAI's reset headers, paired with the "remaining" header of the same limit.
const OPENAI_RESETS: [(&str, &str); 2] = [
    (
        "x-ratelimit-reset-requests",
        "x-ratelimit-remaining-requests",
    ),
    ("x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens"),
];

/// Anthropic's reset headers (RFC 3339 instants), paired the same way.
const ANTHROPIC_RESETS: [(&str, &str); 4] = [
    (
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-requests-remaining",
    ),
    (
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-tokens-remaining",
    ),
    (
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-input-tokens-remaining",
    ),
    (
        "anthropic-ratelimit-output-tokens-reset",
        "anthropic-ratelimit-output-tokens-remaining",
    ),
];

/// How long the server asked the client to wait, read from the response headers.
///
/// In order of preference: `retry-after-ms` (milliseconds, as OpenAI sends it),
/// `Retry-After` as delay-seconds or as an HTTP date, then the provider rate-limit
/// reset headers (OpenAI's `x-ratelimit-reset-*` durations such as `6m0s`,
/// Anthropic's `anthropic-ratelimit-*-reset` instants) of the limits that are
/// exhausted. Malformed values are ignored. A date in the past is a zero wait. A
/// wait longer than [`max_retry_after`] (10 minutes by default) is cut to it.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

/// [`retry_after`] with an explicit "now", for dates.
pub fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    uncapped_retry_after(headers, now).map(cap_retry_after)
}

fn uncapped_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = header_str(headers, "retry-after-ms").and_then(parse_seconds_f64) {
        // The value is in milliseconds.
        return saturating_secs(ms.as_secs_f64() / 1000.0);
    }
    if let Some(value) = header_str(headers, "retry-after") {
        if let Some(wait) = uncapped_retry_after_value(value, now) {
            return Some(wait);
        }
    }
    let openai = OPENAI_RESETS
        .iter()
        .filter(|(_, remaining)| is_exhausted(headers, remaining))
        .filter_map(|(reset, _)| header_str(headers, reset).and_then(parse_go_duration));
    let anthropic = ANTHROPIC_RESETS
        .iter()
        .filter(|(_, remaining)| is_exhausted(headers, remaining))
        .filter_map(|(reset, _)| {
            let at = humantime::parse_rfc3339_weak(header_str(headers, reset)?).ok()?;
            Some(at.duration_since(now).unwrap_or(Duration::ZERO))
        });
    openai.chain(anthropic).max()
}

/// One provider rate limit as a response announced it (OpenAI's
/// `x-ratelimit-*`, Anthropic's `anthropic-ratelimit-*`): the name of its
/// "remaining" header, what is left, and the wait until it resets (capped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AnnouncedLimit {
    pub(crate) name: &'static str,
    pub(crate) remaining: Option<u64>,
    pub(crate) reset: Option<Duration>,
}

impl AnnouncedLimit {
    /// Whether this limit counts requests (rather than tokens).
    pub(crate) fn counts_requests(&self) -> bool {
        self.name.ends_with("requests") || self.name.ends_with("requests-remaining")
    }
}

/// Every provider rate limit these headers announce, with what is left and when
/// it resets; malformed values are `None`.
pub(crate) fn announced_limits(
    headers: &HeaderMap,
    now: SystemTime,
) -> impl Iterator<Item = AnnouncedLimit> + '_ {
    let remaining = move |name| header_str(headers, name).and_then(|v| v.parse::<u64>().ok());
    let openai = OPENAI_RESETS
        .iter()
        .map(move |&(reset, name)| AnnouncedLimit {
            name,
            remaining: remaining(name),
            reset: header_str(headers, reset).and_then(parse_go_duration),
        });
    let anthropic = ANTHROPIC_RESETS
        .iter()
        .map(move |&(reset, name)| AnnouncedLimit {
            name,
            remaining: remaining(name),
            reset: header_str(headers, reset)
                .and_then(|v| humantime::parse_rfc3339_weak(v).ok())
                .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO)),
        });
    openai
        .chain(anthropic)
        .filter(|limit| limit.remaining.is_some() || limit.reset.is_some())
        .map(|limit| AnnouncedLimit {
            reset: limit.reset.map(cap_retry_after),
            ..limit
        })
}

/// Parse one `Retry-After` value: delay-seconds or an HTTP date, cut to
/// [`max_retry_after`].
pub fn parse_retry_after_value(value: &str, now: SystemTime) -> Option<Duration> {
    uncapped_retry_after_value(value, now).map(cap_retry_after)
}

fn uncapped_retry_after_value(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Some(wait) = parse_seconds_f64(value) {
        return Some(wait);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// A limit counts as exhausted when its "remaining" header says 0 or is absent.
fn is_exhausted(headers: &HeaderMap, remaining: &str) -> bool {
    match header_str(headers, remaining) {
        None => true,
        Some(v) => v.parse::<u64>().map_or(true, |n| n == 0),
    }
}

/// Non-negative decimal seconds: `120`, `1.5`.
fn parse_seconds_f64(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let secs: f64 = value.parse().ok()?;
    saturating_secs(secs)
}

/// Seconds as a `Duration`; a finite, non-negative value too large for one is
/// the longest wait (then capped), not ignored.
fn saturating_secs(secs: f64) -> Option<Duration> {
    match Duration::try_from_secs_f64(secs) {
        Ok(wait) => Some(wait),
        Err(_) if secs.is_finite() && secs > 0.0 => Some(Duration::MAX),
        Err(_) => None,
    }
}

/// Go-style durations as OpenAI sends them: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub(crate) fn parse_go_duration(value: &str) -> Option<Duration> {
    let mut rest = value.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    saturating_secs(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_seconds_and_fractions() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(
            retry_after_at(&headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after_at(&headers(&[("retry-after", " 1.5 ")]), now),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn retry_after_http_date_future_and_past() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let h = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT")]);
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(30)));
        let past = headers(&[("retry-after", "Wed, 21 Oct 2015 07:00:00 GMT")]);
        assert_eq!(retry_after_at(&past, now), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_ms_wins() {
        let h = headers(&[("retry-after", "10"), ("retry-after-ms", "250")]);
        assert_eq!(
            retry_after_at(&h, SystemTime::UNIX_EPOCH),
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn malformed_values_are_ignored_without_panic() {
        let now = SystemTime::UNIX_EPOCH;
        for bad in [
            "",
            "-1",
            "soon",
            "1e400",
            "NaN",
            "inf",
            "1.2.3",
            "99999999999999999999999999",
            "Wed, 99 Foo 2015",
        ] {
            let got = retry_after_at(&headers(&[("retry-after", bad)]), now);
            assert!(got.is_none() || got.unwrap() < Duration::MAX, "{bad}");
        }
        assert_eq!(
            retry_after_at(&headers(&[("retry-after", "soon")]), now),
            None
        );
        assert_eq!(
            retry_after_at(&headers(&[("retry-after-ms", "-5")]), now),
            None
        );
        let mut map = HeaderMap::new();
        map.insert("retry-after", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert_eq!(retry_after_at(&map, now), None);
    }

    #[test]
    fn openai_reset_headers_of_exhausted_limits() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-remaining-tokens", "5000"),
            ("x-ratelimit-reset-tokens", "1h"),
        ]);
        assert_eq!(
            retry_after_at(&h, SystemTime::UNIX_EPOCH),
            Some(Duration::from_secs(360))
        );
    }

    #[test]
    fn anthropic_reset_header_is_an_instant() {
        let now = humantime::parse_rfc3339_weak("2024-05-01T12:00:00Z").unwrap();
        let h = headers(&[
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2024-05-01T12:00:20Z"),
        ]);
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(20)));
    }

    #[test]
    fn announced_limits_pair_remaining_and_reset() {
        let now = humantime::parse_rfc3339_weak("2024-05-01T12:00:00Z").unwrap();
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "3"),
            ("x-ratelimit-reset-requests", "1s"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "2024-05-01T12:00:20Z"),
        ]);
        let limits: Vec<_> = announced_limits(&h, now).collect();
        assert_eq!(limits.len(), 2);
        assert_eq!(
            (
                limits[0].remaining,
                limits[0].reset,
                limits[0].counts_requests()
            ),
            (Some(3), Some(Duration::from_secs(1)), true)
        );
        assert_eq!(
            (
                limits[1].remaining,
                limits[1].reset,
                limits[1].counts_requests()
            ),
            (Some(0), Some(Duration::from_secs(20)), false)
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_go_duration("1x"), None);
        assert_eq!(parse_go_duration("s"), None);
        assert_eq!(parse_go_duration(""), None);
    }
}
