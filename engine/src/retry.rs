//! Exponential backoff with jitter, for the outbox and for reconnects.

use rand::Rng;

/// How long to wait between attempts, and when to give up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt (doubles after each further one).
    pub base_ms: u64,
    /// Upper bound of the delay.
    pub max_ms: u64,
    /// Attempts before giving up (the outbox then shows the message FAILED). `u32::MAX`: never.
    pub max_attempts: u32,
    /// Jitter as a percentage of the delay, drawn uniformly in ±`jitter_pct`, so that many
    /// devices that lost the relay at once do not come back in lockstep.
    pub jitter_pct: u8,
}

impl Default for RetryPolicy {
    /// 1 s, 2 s, 4 s … capped at 60 s, ±20 %, FAILED after 10 attempts without an ack.
    fn default() -> Self {
        RetryPolicy {
            base_ms: 1_000,
            max_ms: 60_000,
            max_attempts: 10,
            jitter_pct: 20,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempts + 1`, given `attempts` failed ones (≥ 1).
    pub fn delay_ms(&self, attempts: u32, rng: &mut impl Rng) -> u64 {
        let exp = attempts.saturating_sub(1).min(63);
        let raw = self
            .base_ms
            .saturating_mul(1u64.checked_shl(exp).unwrap_or(u64::MAX))
            .min(self.max_ms);
        let spread = raw * u64::from(self.jitter_pct.min(100)) / 100;
        if spread == 0 {
            return raw;
        }
        raw - spread + rng.random_range(0..=2 * spread)
    }

    /// Whether `attempts` failed attempts exhaust the policy.
    pub fn exhausted(&self, attempts: u32) -> bool {
        attempts >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    #[test]
    fn doubles_caps_and_jitters_within_bounds() {
        let p = RetryPolicy::default();
        let mut rng = SmallRng::seed_from_u64(1);
        for (attempts, nominal) in [
            (1, 1_000u64),
            (2, 2_000),
            (3, 4_000),
            (7, 60_000),
            (40, 60_000),
        ] {
            for _ in 0..100 {
                let d = p.delay_ms(attempts, &mut rng);
                assert!(
                    d >= nominal * 8 / 10 && d <= nominal * 12 / 10,
                    "{attempts}: {d}"
                );
            }
        }
        let exact = RetryPolicy {
            jitter_pct: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(exact.delay_ms(2, &mut rng), 2_000);
        assert!(!p.exhausted(9));
        assert!(p.exhausted(10));
    }
}
