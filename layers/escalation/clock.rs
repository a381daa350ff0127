use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest wait, detach lifetime or poll interval a builder accepts: ten years.
/// Longer values would overflow `Instant`/`SystemTime` arithmetic on some platforms
/// (`Duration::MAX` always does), so they are refused at build time instead of
/// panicking at call time.
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Wall-clock time that advances with tokio's clock, so expiry follows paused time in
/// tests. Millisecond precision, as stores keep it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    /// Whole milliseconds, so `now()` never reads earlier than `wall`.
    wall: SystemTime,
    mono: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            wall: truncate_ms(SystemTime::now()),
            mono: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> SystemTime {
        truncate_ms(self.wall + self.mono.elapsed())
    }

    /// The tokio instant at which this clock reads `at`: a waiter's deadline is the
    /// very instant its record expires, so the two can never disagree.
    pub(crate) fn instant_at(&self, at: SystemTime) -> tokio::time::Instant {
        let since_start = at.duration_since(self.wall).unwrap_or_default();
        self.mono
            .checked_add(since_start)
            .unwrap_or_else(|| self.mono + MAX_LIFETIME)
    }
}

fn truncate_ms(time: SystemTime) -> SystemTime {
    let ms = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}
