use std::time::Duration;

/// Exponential backoff with full jitter: before retry `n` (after `n` attempts),
/// wait a uniformly random time in `[0, min(max, base * 2^(n-1))]`.
///
/// Full jitter spreads the retries of a batch whose items failed together, so they
/// do not come back together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The ceiling of the wait after `attempts` attempts (at least 1).
    pub(crate) fn ceiling(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// A jittered wait after `attempts` attempts.
    pub(crate) fn delay(&self, attempts: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempts).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };

    #[test]
    fn ceiling_doubles_then_caps() {
        let ms = |a| BACKOFF.ceiling(a).as_millis();
        assert_eq!(
            (ms(1), ms(2), ms(3), ms(4), ms(5), ms(100)),
            (100, 200, 400, 800, 1000, 1000)
        );
    }

    #[test]
    fn delays_stay_under_the_ceiling_and_repeat_with_the_seed() {
        let mut a = fastrand::Rng::with_seed(7);
        let mut b = fastrand::Rng::with_seed(7);
        let mut distinct = std::collections::HashSet::new();
        for attempts in 1..50 {
            let d = BACKOFF.delay(attempts, &mut a);
            assert!(d <= BACKOFF.ceiling(attempts));
            assert_eq!(d, BACKOFF.delay(attempts, &mut b));
            distinct.insert(d);
        }
        assert!(distinct.len() > 40, "jitter is spread out");
    }
}
