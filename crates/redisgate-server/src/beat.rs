//! Shared beats for periodic work: a periodic task sleeps until the next multiple of its
//! period, counted from one instant for the whole process, so tasks with the same period wake
//! in the same timer tick.
//!
//! An idle gateway's cost is mostly wake-ups (a worker leaving `epoll_wait`, and the others it
//! wakes to steal work), not the work itself: a hundred connections' health checks due at one
//! instant cost about one wake-up, a hundred staggered ones a hundred. Measured with 10,000
//! instances registered and 100 of them connected but unused (bench/README.md, "Scale").

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// The next beat of `period` after now.
pub fn next(period: Duration) -> Instant {
    let now = Instant::now();
    let origin = *ORIGIN.get_or_init(|| now);
    let period_ns = period.as_nanos().max(1);
    // (A clock behind the origin, as a paused test clock can be: a plain period from now.)
    let Some(since) = now.checked_duration_since(origin) else {
        return now + period;
    };
    let beats = since.as_nanos() / period_ns + 1;
    origin + Duration::from_nanos(u64::try_from(beats * period_ns).unwrap_or(u64::MAX))
}

/// Sleeps until the next beat of `period`.
pub async fn sleep(period: Duration) {
    tokio::time::sleep_until(next(period)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tasks_of_one_period_wake_together() {
        let period = Duration::from_secs(1);
        let first = next(period);
        tokio::time::advance((first - Instant::now()) / 2).await;
        assert_eq!(next(period), first, "a task starting later wakes at the same beat");
        assert!(first - Instant::now() <= period);
        tokio::time::sleep_until(first).await;
        assert_eq!(next(period), first + period, "at a beat, the next one is a period later");
    }
}
