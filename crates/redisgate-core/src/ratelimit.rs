//! GCRA (the generic cell rate algorithm), as pure arithmetic on a "theoretical arrival
//! time" (TAT), so it can be checked exactly with any clock — a test's paused clock, the
//! process clock, or Redis' clock in the distributed mode.
//!
//! ```text
//! rate r/s, burst b:  T = 1/r (emission interval), τ = b·T (tolerance)
//! at time t with TAT:  allow iff  max(TAT, t) + T − τ ≤ t,  then TAT' = max(TAT, t) + T
//! ```
//! A full bucket admits `burst` requests at once, then one every `T`.

use std::time::Duration;

/// A rate: `per_second` requests on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// What the limiter decided, with what the `RateLimit-*` headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests that could still be made right now.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset_after: Duration,
    /// When refused: until the next request would be admitted.
    pub retry_after: Duration,
}

/// A clock's resolution: nanoseconds for the process clock, microseconds for Redis' `TIME`
/// (whose timestamps must stay exact in a Lua double, below 2^53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    per_second: u64,
}

impl Unit {
    pub const NANOS: Unit = Unit { per_second: 1_000_000_000 };
    pub const MICROS: Unit = Unit { per_second: 1_000_000 };

    fn duration(self, n: u64) -> Duration {
        Duration::from_nanos(n.saturating_mul(1_000_000_000 / self.per_second))
    }
}

impl Rate {
    /// The emission interval `T` and the tolerance `τ` in `unit`. A rate above the unit's
    /// resolution still spaces requests by one tick.
    pub fn params(self, unit: Unit) -> (u64, u64) {
        let t = (unit.per_second / u64::from(self.per_second.max(1))).max(1);
        (t, t * u64::from(self.burst.max(1)))
    }

    /// Checks one request at `now` (nanoseconds on any monotonic clock) against the stored
    /// `tat` (0 for a key never seen) and returns the decision and the TAT to store.
    pub fn check(self, tat: u64, now: u64) -> (Decision, u64) {
        self.check_in(Unit::NANOS, tat, now)
    }

    /// [`Rate::check`] with times in `unit`.
    pub fn check_in(self, unit: Unit, tat: u64, now: u64) -> (Decision, u64) {
        let (t, tolerance) = self.params(unit);
        let base = tat.max(now);
        let new_tat = base + t;
        // Allowed iff new_tat − tolerance ≤ now.
        if new_tat <= now + tolerance {
            let remaining = ((now + tolerance - new_tat) / t) as u32;
            let decision = Decision {
                allowed: true,
                remaining,
                reset_after: unit.duration(new_tat - now),
                retry_after: Duration::ZERO,
            };
            (decision, new_tat)
        } else {
            let decision = Decision {
                allowed: false,
                remaining: 0,
                reset_after: unit.duration(base - now),
                retry_after: unit.duration(new_tat - tolerance - now),
            };
            (decision, tat)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn run(rate: Rate, times: &[u64]) -> Vec<bool> {
        let mut tat = 0;
        times
            .iter()
            .map(|&now| {
                let (d, t) = rate.check(tat, now);
                tat = t;
                d.allowed
            })
            .collect()
    }

    #[test]
    fn a_full_bucket_admits_the_burst_then_the_rate() {
        let r = Rate { per_second: 10, burst: 3 };
        let start = 100 * SEC;
        // Three at once, the fourth refused.
        assert_eq!(run(r, &[start, start, start, start]), [true, true, true, false]);
        // Then one per 100 ms.
        let mut tat = 0;
        for _ in 0..3 {
            tat = r.check(tat, start).1;
        }
        let (d, _) = r.check(tat, start);
        assert_eq!((d.allowed, d.retry_after), (false, Duration::from_millis(100)));
        assert!(r.check(tat, start + SEC / 10).0.allowed);
        assert!(!r.check(tat, start + SEC / 10 - 1).0.allowed);
    }

    #[test]
    fn remaining_and_reset_count_down() {
        let r = Rate { per_second: 100, burst: 5 };
        let now = 10 * SEC;
        let mut tat = 0;
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let (d, t) = r.check(tat, now);
            tat = t;
            remaining.push(d.remaining);
        }
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let (d, _) = r.check(tat, now);
        assert_eq!(d.reset_after, Duration::from_millis(50));
    }

    #[test]
    fn steady_traffic_at_the_rate_is_never_refused() {
        let r = Rate { per_second: 100, burst: 1 };
        let times: Vec<u64> = (0..1000).map(|i| SEC + i * SEC / 100).collect();
        assert!(run(r, &times).into_iter().all(|a| a));
        // Twice the rate: every other request is refused.
        let times: Vec<u64> = (0..1000).map(|i| SEC + i * SEC / 200).collect();
        let admitted = run(r, &times).into_iter().filter(|a| *a).count();
        assert_eq!(admitted, 500);
    }

    #[test]
    fn over_any_window_admissions_stay_within_rate_times_window_plus_burst() {
        // A pseudo-random arrival pattern; check the GCRA bound on every window.
        let r = Rate { per_second: 50, burst: 10 };
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut now = SEC;
        let mut tat = 0;
        let mut admitted = Vec::new();
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += x % (SEC / 40);
            let (d, t) = r.check(tat, now);
            tat = t;
            if d.allowed {
                admitted.push(now);
            }
        }
        for (i, &start) in admitted.iter().enumerate() {
            let window = SEC;
            let n = admitted[i..].iter().take_while(|&&t| t < start + window).count() as u64;
            assert!(n <= 50 + 10, "{n} admitted within one second");
        }
    }

    #[test]
    fn microseconds_give_the_same_decisions() {
        let r = Rate { per_second: 10, burst: 3 };
        let start = 100 * 1_000_000;
        let mut tat = 0;
        let mut allowed = Vec::new();
        for now in [start, start, start, start, start + 100_000 - 1, start + 100_000] {
            let (d, t) = r.check_in(Unit::MICROS, tat, now);
            tat = t;
            allowed.push(d.allowed);
        }
        assert_eq!(allowed, [true, true, true, false, false, true]);
        let (d, _) = r.check_in(Unit::MICROS, tat, start + 100_000);
        assert_eq!(d.retry_after, Duration::from_millis(100));
        // Rates finer than the unit still advance the TAT.
        assert_eq!(Rate { per_second: 5_000_000, burst: 2 }.params(Unit::MICROS), (1, 2));
    }
}
