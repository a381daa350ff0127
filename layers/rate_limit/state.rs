//! What one layer knows about its upstream's limits, shared by every clone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use tokio::time::Instant;

use super::builder::Config;
use crate::classify::{announced_limits, FailureKind};

/// The length of the window of our own per-minute limits.
const MINUTE: Duration = Duration::from_secs(60);

/// A limit the upstream announced: what was left, until when.
#[derive(Clone, Copy, Debug)]
struct Learned {
    name: &'static str,
    counts_requests: bool,
    remaining: u64,
    reset_at: Instant,
}

/// Our own fixed window for the configured per-minute limits.
#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    requests: u32,
    tokens: u64,
}

#[derive(Debug, Default)]
struct Limits {
    /// At most one entry per provider limit header (6 exist).
    learned: Vec<Learned>,
    /// Set by a `429`: nothing goes until then.
    blocked_until: Option<Instant>,
    window: Option<Window>,
}

/// The shared state of one layer.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    limits: Mutex<Limits>,
    pub(crate) waits: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

/// One limit that is exhausted now, as [`Handle::exhausted`](super::Handle::exhausted) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exhausted {
    /// Which limit: a provider's "remaining" header name, `retry-after` (a
    /// `429`), `requests_per_minute` or `tokens_per_minute`.
    pub limit: &'static str,
    /// How long until it resets.
    pub resets_in: Duration,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        Self {
            config,
            limits: Mutex::new(Limits::default()),
            waits: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Limits> {
        self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take one call's share of every limit, or say until when none is left.
    pub(crate) fn admit(&self, now: Instant) -> Result<(), Instant> {
        let mut limits = self.lock();
        if let Some(until) = limits.blocked_until {
            if until > now {
                return Err(until);
            }
            limits.blocked_until = None;
        }
        limits.learned.retain(|l| l.reset_at > now);
        if let Some(until) = limits
            .learned
            .iter()
            .filter(|l| l.remaining == 0)
            .map(|l| l.reset_at)
            .max()
        {
            return Err(until);
        }
        if let Some(until) = self.window_full(&mut limits, now) {
            return Err(until);
        }
        for learned in limits.learned.iter_mut().filter(|l| l.counts_requests) {
            learned.remaining = learned.remaining.saturating_sub(1);
        }
        if let Some(window) = &mut limits.window {
            window.requests = window.requests.saturating_add(1);
        }
        Ok(())
    }

    /// The end of our own window, if its requests or tokens are used up.
    fn window_full(&self, limits: &mut Limits, now: Instant) -> Option<Instant> {
        let (rpm, tpm) = (
            self.config.requests_per_minute,
            self.config.tokens_per_minute,
        );
        if rpm.is_none() && tpm.is_none() {
            return None;
        }
        let window = match &mut limits.window {
            Some(w) if now < w.started + MINUTE => w,
            slot => slot.insert(Window {
                started: now,
                requests: 0,
                tokens: 0,
            }),
        };
        let full =
            rpm.is_some_and(|n| window.requests >= n) || tpm.is_some_and(|n| window.tokens >= n);
        full.then_some(window.started + MINUTE)
    }

    /// Count the tokens a call sent against our own window.
    pub(crate) fn charge_tokens(&self, tokens: u64) {
        if tokens == 0 {
            return;
        }
        if let Some(window) = &mut self.lock().window {
            window.tokens = window.tokens.saturating_add(tokens);
        }
    }

    /// Learn from an answer: a `429`'s wait, and the limits its headers announce.
    pub(crate) fn learn(&self, kind: Option<&FailureKind>, headers: Option<&HeaderMap>) {
        let now = Instant::now();
        let mut limits = self.lock();
        if let Some(FailureKind::RateLimited { retry_after }) = kind {
            let wait = retry_after.unwrap_or(self.config.unannounced_429_wait);
            let until = now + wait;
            limits.blocked_until = Some(limits.blocked_until.map_or(until, |b| b.max(until)));
        }
        let Some(headers) = headers else { return };
        for announced in announced_limits(headers, SystemTime::now()) {
            let (Some(remaining), Some(reset)) = (announced.remaining, announced.reset) else {
                continue;
            };
            let learned = Learned {
                name: announced.name,
                counts_requests: announced.counts_requests(),
                remaining,
                reset_at: now + reset,
            };
            // The latest answer is the upstream's latest word on this limit.
            match limits.learned.iter_mut().find(|l| l.name == announced.name) {
                Some(slot) => *slot = learned,
                None => limits.learned.push(learned),
            }
        }
    }

    /// The limits exhausted now.
    pub(crate) fn exhausted(&self) -> Vec<Exhausted> {
        let now = Instant::now();
        let limits = self.lock();
        let mut out = Vec::new();
        let mut push = |limit, until: Instant| {
            if until > now {
                out.push(Exhausted {
                    limit,
                    resets_in: until - now,
                });
            }
        };
        if let Some(until) = limits.blocked_until {
            push("retry-after", until);
        }
        for l in limits.learned.iter().filter(|l| l.remaining == 0) {
            push(l.name, l.reset_at);
        }
        if let Some(w) = limits.window {
            let (rpm, tpm) = (
                self.config.requests_per_minute,
                self.config.tokens_per_minute,
            );
            if rpm.is_some_and(|n| w.requests >= n) {
                push("requests_per_minute", w.started + MINUTE);
            }
            if tpm.is_some_and(|n| w.tokens >= n) {
                push("tokens_per_minute", w.started + MINUTE);
            }
        }
        out
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
