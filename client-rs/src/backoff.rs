//! Exponential backoff with jitter, shared by reconnection, producer retries and consumer fetch retries.
//!
//! The jitter comes from the standard library's randomly keyed SipHash over a counter, so the crate needs no
//! random-number dependency: it only has to keep many clients that failed together from retrying in lockstep.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Fraction of the delay that jitter may add or remove: 20%, as Kafka's clients do.
const JITTER_PERCENT: u64 = 20;

/// A backoff schedule: `initial * 2^(attempt - 1)`, capped at `max`, then moved by up to 20% either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (1 for the first retry).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1u32 << exponent).min(self.max);
        let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
        let spread_ms = base_ms.saturating_mul(JITTER_PERCENT) / 100;
        if spread_ms == 0 {
            return base;
        }
        // A value in [0, 2 * spread], shifted to [-spread, +spread].
        let offset_ms = random_u64() % (2 * spread_ms + 1);
        Duration::from_millis(base_ms.saturating_sub(spread_ms).saturating_add(offset_ms))
    }
}

/// A pseudo-random number: SipHash, with keys the standard library draws from the operating system, of a counter.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::hash::RandomState::new().hash_one(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_up_to_the_cap_within_twenty_percent() {
        let backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1) };
        for (attempt, expected_ms) in [(1, 100u64), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000)] {
            for _ in 0..50 {
                let delay = u64::try_from(backoff.delay(attempt).as_millis()).expect("small");
                assert!(delay >= expected_ms * 8 / 10 && delay <= expected_ms * 12 / 10, "attempt {attempt}: {delay}");
            }
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let backoff = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(1) };
        let delays: std::collections::HashSet<Duration> = (0..100).map(|_| backoff.delay(1)).collect();
        assert!(delays.len() > 10, "only {} distinct delays", delays.len());
    }
}
