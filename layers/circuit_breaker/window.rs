//! Rolling windows of recent outcomes, lock-free.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Duration;

/// Which recent calls the rate policies look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The last `n` calls: a real ring of outcomes, so old outcomes fall out of the
    /// window as new ones come in.
    Count(u32),
    /// The calls of the last `span`, kept in `buckets` equal time buckets; each
    /// bucket is dropped whole once it is older than `span`.
    Time {
        /// How far back the window reaches.
        span: Duration,
        /// How many buckets `span` is cut into (precision of the window's edge).
        buckets: u32,
    },
}

impl Window {
    /// A window of the last `calls` calls.
    pub const fn count(calls: u32) -> Self {
        Window::Count(calls)
    }

    /// A window of the last `span`, in `buckets` buckets.
    pub const fn time(span: Duration, buckets: u32) -> Self {
        Window::Time { span, buckets }
    }
}

/// What one call contributes to a window.
pub(crate) const FAILED: u8 = 0b010;
pub(crate) const SLOW: u8 = 0b100;
const RECORDED: u8 = 0b001;

/// Sums over the current window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

#[derive(Debug)]
pub(crate) enum RollingWindow {
    Count(CountWindow),
    Time(TimeWindow),
}

impl RollingWindow {
    pub(crate) fn new(window: Window) -> Self {
        match window {
            Window::Count(n) => RollingWindow::Count(CountWindow::new(n)),
            Window::Time { span, buckets } => RollingWindow::Time(TimeWindow::new(span, buckets)),
        }
    }

    /// Record one outcome (`FAILED`/`SLOW` bits) at `now_nanos` and return the
    /// window's totals including it.
    pub(crate) fn record(&self, flags: u8, now_nanos: u64) -> Totals {
        match self {
            RollingWindow::Count(w) => w.record(flags),
            RollingWindow::Time(w) => w.record(flags, now_nanos),
        }
    }

    pub(crate) fn totals(&self, now_nanos: u64) -> Totals {
        match self {
            RollingWindow::Count(w) => w.totals(),
            RollingWindow::Time(w) => w.totals(now_nanos),
        }
    }

    pub(crate) fn clear(&self) {
        match self {
            RollingWindow::Count(w) => w.clear(),
            RollingWindow::Time(w) => w.clear(),
        }
    }

    pub(crate) const fn needs_clock(&self) -> bool {
        matches!(self, RollingWindow::Time(_))
    }
}

/// A ring of the last `n` outcomes. Each slot holds one outcome; recording swaps
/// the oldest slot and adjusts the running sums by the difference, so the sums are
/// always those of the slots, without a lock.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    cursor: AtomicU64,
    failures: AtomicU32,
    slow: AtomicU32,
    recorded: AtomicU32,
}

impl CountWindow {
    fn new(n: u32) -> Self {
        Self {
            slots: (0..n.max(1)).map(|_| AtomicU8::new(0)).collect(),
            cursor: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
            recorded: AtomicU32::new(0),
        }
    }

    fn record(&self, flags: u8) -> Totals {
        let len = self.slots.len() as u64;
        let index = (self.cursor.fetch_add(1, Relaxed) % len) as usize;
        let new = flags | RECORDED;
        let old = self.slots[index].swap(new, Relaxed);
        let calls = if old & RECORDED == 0 {
            self.recorded.fetch_add(1, Relaxed) + 1
        } else {
            self.recorded.load(Relaxed)
        };
        let failures = adjust(&self.failures, old & FAILED != 0, new & FAILED != 0);
        let slow = adjust(&self.slow, old & SLOW != 0, new & SLOW != 0);
        Totals {
            calls,
            failures,
            slow,
        }
    }

    fn totals(&self) -> Totals {
        Totals {
            calls: self.recorded.load(Relaxed),
            failures: self.failures.load(Relaxed),
            slow: self.slow.load(Relaxed),
        }
    }

    fn clear(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, Relaxed);
            if old & RECORDED != 0 {
                self.recorded.fetch_sub(1, Relaxed);
            }
            adjust(&self.failures, old & FAILED != 0, false);
            adjust(&self.slow, old & SLOW != 0, false);
        }
    }
}

/// Move a running sum by the change of one slot's bit; returns the new sum.
fn adjust(sum: &AtomicU32, was: bool, is: bool) -> u32 {
    match (was, is) {
        (false, true) => sum.fetch_add(1, Relaxed) + 1,
        (true, false) => sum.fetch_sub(1, Relaxed) - 1,
        _ => sum.load(Relaxed),
    }
}

#[derive(Debug)]
struct Bucket {
    /// Which bucket-width interval (since the circuit's epoch) this bucket counts.
    interval: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

/// Time buckets. A bucket is reused for a newer interval by whoever first sees it
/// stale; counts racing with that reset may be lost, which only makes the window
/// a little more forgiving.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    bucket_nanos: u64,
    buckets: Box<[Bucket]>,
}

impl TimeWindow {
    fn new(span: Duration, buckets: u32) -> Self {
        let buckets = buckets.max(1);
        let span_nanos = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
        Self {
            bucket_nanos: (span_nanos / u64::from(buckets)).max(1),
            buckets: (0..buckets)
                .map(|_| Bucket {
                    // u64::MAX marks "never used".
                    interval: AtomicU64::new(u64::MAX),
                    calls: AtomicU32::new(0),
                    failures: AtomicU32::new(0),
                    slow: AtomicU32::new(0),
                })
                .collect(),
        }
    }

    fn record(&self, flags: u8, now_nanos: u64) -> Totals {
        let interval = now_nanos / self.bucket_nanos;
        let bucket = &self.buckets[(interval % self.buckets.len() as u64) as usize];
        let seen = bucket.interval.load(Relaxed);
        if seen != interval
            && bucket
                .interval
                .compare_exchange(seen, interval, Relaxed, Relaxed)
                .is_ok()
        {
            bucket.calls.store(0, Relaxed);
            bucket.failures.store(0, Relaxed);
            bucket.slow.store(0, Relaxed);
        }
        bucket.calls.fetch_add(1, Relaxed);
        if flags & FAILED != 0 {
            bucket.failures.fetch_add(1, Relaxed);
        }
        if flags & SLOW != 0 {
            bucket.slow.fetch_add(1, Relaxed);
        }
        self.totals(now_nanos)
    }

    fn totals(&self, now_nanos: u64) -> Totals {
        let current = now_nanos / self.bucket_nanos;
        let oldest = current.saturating_sub(self.buckets.len() as u64 - 1);
        let mut totals = Totals::default();
        for bucket in self.buckets.iter() {
            let interval = bucket.interval.load(Relaxed);
            if interval != u64::MAX && (oldest..=current).contains(&interval) {
                totals.calls += bucket.calls.load(Relaxed);
                totals.failures += bucket.failures.load(Relaxed);
                totals.slow += bucket.slow.load(Relaxed);
            }
        }
        totals
    }

    fn clear(&self) {
        for bucket in self.buckets.iter() {
            bucket.interval.store(u64::MAX, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_is_a_ring_of_the_last_n() {
        let w = RollingWindow::new(Window::count(4));
        let seq = [FAILED, 0, FAILED, FAILED, 0, 0, 0];
        let mut last = Totals::default();
        for flags in seq {
            last = w.record(flags, 0);
        }
        // The last four are [FAILED, 0, 0, 0].
        assert_eq!(
            last,
            Totals {
                calls: 4,
                failures: 1,
                slow: 0
            }
        );
        w.clear();
        assert_eq!(w.totals(0), Totals::default());
        assert_eq!(w.record(SLOW | FAILED, 0).calls, 1);
    }

    #[test]
    fn time_window_drops_old_buckets() {
        let second = 1_000_000_000;
        let w = RollingWindow::new(Window::time(Duration::from_secs(10), 10));
        w.record(FAILED, 0);
        w.record(FAILED, 5 * second);
        assert_eq!(w.totals(9 * second).failures, 2);
        // At t=10s the bucket of t=0 is out of the 10 s window.
        assert_eq!(w.totals(10 * second).failures, 1);
        let t = w.record(0, 15 * second);
        assert_eq!((t.calls, t.failures), (1, 0));
    }
}
