//! Usage history of an instance: what the data plane counted (reads, writes, errors, a latency
//! histogram) and what the instance's Redis said of itself (keys, memory, hits, misses,
//! connections), kept at three resolutions and down-sampled as it ages.
//!
//! - [`Meter`]: the per-instance counters the data plane bumps (relaxed atomics, no lock, no
//!   allocation), which the sampler takes every interval.
//! - [`Histogram`]: fixed latency buckets, two per doubling, from 32 µs to 16.8 s.
//! - [`UsageRow`]: one stored sample; rows are additive, so the samples several replicas write
//!   for one instance, and the rows down-sampling merges, combine the same way ([`merge`]).
//! - [`Resolution`] and [`TIERS`]: 10 s rows for 3 hours, 1 min rows until a day, 10 min rows
//!   until 7 days; [`Period`]: what the API serves, at which resolution.
//! - [`series`]: rows into the points of one period.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use time::OffsetDateTime;

use crate::ids::InstanceId;
use crate::store::{Store, StoreResult};

/// The resolutions rows are stored at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resolution {
    /// What the sampler writes: one row per replica per sample.
    TenSeconds,
    Minute,
    TenMinutes,
}

impl Resolution {
    pub const fn seconds(self) -> i64 {
        match self {
            Resolution::TenSeconds => 10,
            Resolution::Minute => 60,
            Resolution::TenMinutes => 600,
        }
    }

    pub fn from_seconds(s: i64) -> Option<Resolution> {
        [Resolution::TenSeconds, Resolution::Minute, Resolution::TenMinutes]
            .into_iter()
            .find(|r| r.seconds() == s)
    }

    /// The start of the interval of this resolution that holds `unix` (seconds).
    pub fn floor(self, unix: i64) -> i64 {
        unix.div_euclid(self.seconds()) * self.seconds()
    }
}

/// One retention tier: rows of `resolution` are kept while they are younger than `keep`;
/// then they are merged into the next tier's resolution (or, for the last, deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub resolution: Resolution,
    pub keep: Duration,
}

/// The retention rule: 10 s for 3 h, 1 min for a day, 10 min for 7 days.
pub const TIERS: [Tier; 3] = [
    Tier { resolution: Resolution::TenSeconds, keep: Duration::from_secs(3 * 3600) },
    Tier { resolution: Resolution::Minute, keep: Duration::from_secs(24 * 3600) },
    Tier { resolution: Resolution::TenMinutes, keep: Duration::from_secs(7 * 24 * 3600) },
];

/// The most rows one instance holds when `replicas` replicas sample it every `interval`
/// without a pause and down-sampling runs every `every`: each tier's span at its resolution
/// (the finest once per replica and sample), plus what accumulates between two runs, plus one
/// row per bucket a run may split (a batch boundary, two replicas running at once).
pub fn max_rows(replicas: u64, interval: Duration, every: Duration) -> u64 {
    let interval = interval.as_millis().max(1) as u64;
    let lag_ms = every.as_millis() as u64;
    let raw = TIERS[0].keep.as_millis() as u64;
    let mut bound = replicas * (raw + lag_ms).div_ceil(interval);
    let mut from = TIERS[0].keep.as_secs();
    for tier in &TIERS[1..] {
        let span = tier.keep.as_secs() - from + every.as_secs();
        // Two per bucket: a merged row and one a later batch or replica added.
        bound += 2 * span.div_ceil(tier.resolution.seconds() as u64) + 1;
        from = tier.keep.as_secs();
    }
    bound
}

/// One round of down-sampling and pruning as of `now`: each tier's rows older than its
/// `keep` are merged into the next tier's resolution (the last tier's are deleted), `batch`
/// rows per store call (each its own short transaction), until none is left. Answers how many
/// rows were taken. Dropping the future between calls is safe: each call commits or not.
pub async fn maintain(store: &dyn Store, now: OffsetDateTime, batch: u32) -> StoreResult<u64> {
    let mut total = 0;
    for (i, tier) in TIERS.iter().enumerate() {
        let before = now - tier.keep;
        loop {
            let n = match TIERS.get(i + 1) {
                Some(next) => store.roll_up_usage(tier.resolution, next.resolution, before, batch).await?,
                None => store.prune_usage(tier.resolution, before, batch).await?,
            };
            total += n;
            if n < u64::from(batch) {
                break;
            }
        }
    }
    Ok(total)
}

/// A period the usage API serves, and the resolution of its points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    ThreeHours,
    TwelveHours,
    Day,
    ThreeDays,
    Week,
}

impl Period {
    pub const ALL: [Period; 6] =
        [Period::Hour, Period::ThreeHours, Period::TwelveHours, Period::Day, Period::ThreeDays, Period::Week];

    pub fn parse(s: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "1h",
            Period::ThreeHours => "3h",
            Period::TwelveHours => "12h",
            Period::Day => "1d",
            Period::ThreeDays => "3d",
            Period::Week => "7d",
        }
    }

    pub fn span(self) -> Duration {
        let hours = match self {
            Period::Hour => 1,
            Period::ThreeHours => 3,
            Period::TwelveHours => 12,
            Period::Day => 24,
            Period::ThreeDays => 72,
            Period::Week => 168,
        };
        Duration::from_secs(hours * 3600)
    }

    /// The finest resolution every part of the period is still kept at.
    pub fn resolution(self) -> Resolution {
        TIERS.iter().find(|t| t.keep >= self.span()).map_or(Resolution::TenMinutes, |t| t.resolution)
    }
}

/// Latency buckets: bucket 0 holds everything under 32 µs, then two buckets per doubling
/// (32–48 µs, 48–64 µs, 64–96 µs, …) up to 16.8 s, and the last everything above.
pub const BUCKETS: usize = 40;
const FIRST_OCTAVE: u32 = 5; // 2^5 µs = 32 µs

/// The bucket of a latency of `micros`: a leading-zeros count and a shift, no loop.
#[inline]
pub fn bucket_of(micros: u64) -> usize {
    if micros < 1 << FIRST_OCTAVE {
        return 0;
    }
    let octave = 63 - micros.leading_zeros();
    let half = ((micros >> (octave - 1)) & 1) as usize;
    (1 + 2 * (octave - FIRST_OCTAVE) as usize + half).min(BUCKETS - 1)
}

/// The lower bound, in microseconds, of bucket `i` (0 for the first).
pub fn bucket_floor(i: usize) -> u64 {
    if i == 0 {
        return 0;
    }
    let octave = FIRST_OCTAVE + ((i - 1) / 2) as u32;
    let half = ((i - 1) % 2) as u64;
    (1u64 << octave) + half * (1u64 << (octave - 1))
}

/// Request latencies counted in [`BUCKETS`] buckets.
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram(pub [u64; BUCKETS]);

impl Default for Histogram {
    fn default() -> Self {
        Histogram([0; BUCKETS])
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }

    /// The `q` quantile (0 < q ≤ 1) in milliseconds: the upper bound of the bucket it falls
    /// in (the lower bound for the last, open bucket), so never below the true value and at
    /// most 50% above it. `None` without requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let edge = if i + 1 < BUCKETS { bucket_floor(i + 1) } else { bucket_floor(i) };
                return Some(edge as f64 / 1000.0);
            }
        }
        None
    }

    /// The stored form: `index:count` for the non-empty buckets, comma-separated (most rows
    /// use a few buckets of the forty).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.0.iter().enumerate().filter(|(_, n)| **n > 0) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&format!("{i}:{n}"));
        }
        out
    }

    pub fn decode(s: &str) -> Option<Histogram> {
        let mut h = Histogram::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (i, n) = part.split_once(':')?;
            let i: usize = i.parse().ok()?;
            *h.0.get_mut(i)? = n.parse().ok()?;
        }
        Some(h)
    }
}

/// What the instance's Redis said of itself (INFO), at `at`. A cluster's figures are its
/// primaries' added up. `hits` and `misses` are INFO's totals since the server started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFigures {
    pub at: OffsetDateTime,
    pub keys: u64,
    pub memory_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub connections: u64,
}

impl ServerFigures {
    /// The figures of one INFO reply (`None` when it holds none of them).
    pub fn parse_info(text: &str, at: OffsetDateTime) -> Option<ServerFigures> {
        let mut f = ServerFigures { at, keys: 0, memory_bytes: 0, hits: 0, misses: 0, connections: 0 };
        let mut any = false;
        for line in text.lines() {
            let Some((name, value)) = line.trim_end().split_once(':') else { continue };
            let slot = match name {
                "used_memory" => &mut f.memory_bytes,
                "keyspace_hits" => &mut f.hits,
                "keyspace_misses" => &mut f.misses,
                "connected_clients" => &mut f.connections,
                // db0:keys=3,expires=0,avg_ttl=0
                db if db.starts_with("db") => {
                    let keys = value.split(',').find_map(|kv| kv.strip_prefix("keys="));
                    f.keys += keys.and_then(|k| k.parse::<u64>().ok()).unwrap_or(0);
                    continue;
                }
                _ => continue,
            };
            if let Ok(v) = value.parse() {
                *slot = v;
                any = true;
            }
        }
        any.then_some(f)
    }

    /// Two servers of one instance (a cluster's primaries) read at about the same time.
    pub fn plus(self, o: ServerFigures) -> ServerFigures {
        ServerFigures {
            at: self.at.max(o.at),
            keys: self.keys + o.keys,
            memory_bytes: self.memory_bytes + o.memory_bytes,
            hits: self.hits + o.hits,
            misses: self.misses + o.misses,
            connections: self.connections + o.connections,
        }
    }
}

/// One stored usage row: the requests one replica (or, once merged, every replica) counted
/// for `instance_id` in the `resolution`-long interval from `start`, and the latest server
/// figures read in it.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub instance_id: InstanceId,
    pub resolution: Resolution,
    pub start: OffsetDateTime,
    pub reads: u64,
    pub writes: u64,
    pub errors: u64,
    pub latency: Histogram,
    pub server: Option<ServerFigures>,
}

impl UsageRow {
    /// Adds `o` in: counts and histograms add up (replicas count different requests), the
    /// server figures are the latest (replicas read the same server). Times are stored to the
    /// second, so on a tie the row absorbed last (rows are read in insertion order) wins.
    pub fn absorb(&mut self, o: &UsageRow) {
        self.reads = self.reads.saturating_add(o.reads);
        self.writes = self.writes.saturating_add(o.writes);
        self.errors = self.errors.saturating_add(o.errors);
        self.latency.add(&o.latency);
        self.server = match (self.server, o.server) {
            (Some(a), Some(b)) => Some(if b.at >= a.at { b } else { a }),
            (a, b) => a.or(b),
        };
    }
}

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn at_unix(s: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(s).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Merges `rows` into one row per instance and `to`-long interval, ordered by instance and
/// time: the down-sampling rule, and how the API combines replicas' samples.
pub fn merge(rows: &[UsageRow], to: Resolution) -> Vec<UsageRow> {
    let mut merged: std::collections::BTreeMap<(InstanceId, i64), UsageRow> = Default::default();
    for r in rows {
        let start = to.floor(unix(r.start));
        merged.entry((r.instance_id, start)).and_modify(|m| m.absorb(r)).or_insert_with(|| UsageRow {
            resolution: to,
            start: at_unix(start),
            ..r.clone()
        });
    }
    merged.into_values().collect()
}

/// One point of a usage answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub at: OffsetDateTime,
    pub reads_per_sec: f64,
    pub writes_per_sec: f64,
    pub errors_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub server: Option<ServerFigures>,
}

/// The points of `period` up to `now` from the rows of one instance (any replicas, any
/// resolution at most the period's): one per interval of the period's resolution that has a
/// row, oldest first. Intervals without traffic (and without a member looking) have none.
pub fn series(rows: &[UsageRow], period: Period, now: OffsetDateTime) -> Vec<Point> {
    let resolution = period.resolution();
    let from = resolution.floor(unix(now) - period.span().as_secs() as i64);
    let seconds = resolution.seconds() as f64;
    let rows: Vec<UsageRow> =
        rows.iter().filter(|r| r.resolution <= resolution && unix(r.start) >= from).cloned().collect();
    merge(&rows, resolution)
        .into_iter()
        .map(|r| Point {
            at: r.start,
            reads_per_sec: r.reads as f64 / seconds,
            writes_per_sec: r.writes as f64 / seconds,
            errors_per_sec: r.errors as f64 / seconds,
            p50_ms: r.latency.quantile_ms(0.50),
            p99_ms: r.latency.quantile_ms(0.99),
            server: r.server,
        })
        .collect()
}

/// What the data plane counts for one instance between two samples. Relaxed atomics: each
/// counter is independent, and a request counted a sample late is still counted once.
pub struct Meter {
    reads: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    /// Until when (unix seconds) a member looks at the usage: sampled even when idle.
    watched_until: AtomicI64,
}

impl Default for Meter {
    fn default() -> Self {
        Meter {
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            watched_until: AtomicI64::new(i64::MIN),
        }
    }
}

/// What [`Meter::take`] took: the counts since the previous take.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    pub reads: u64,
    pub writes: u64,
    pub errors: u64,
    pub latency: Histogram,
}

impl Meter {
    /// One command: a read (the catalog's read classes) or not, failed or not.
    #[inline]
    pub fn command(&self, read: bool, failed: bool) {
        if read { &self.reads } else { &self.writes }.fetch_add(1, Relaxed);
        if failed {
            self.errors.fetch_add(1, Relaxed);
        }
    }

    /// One request's time, from its parse to its reply from Redis.
    #[inline]
    pub fn request(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket_of(micros)].fetch_add(1, Relaxed);
    }

    /// A member looks at the usage: sample until `until` (unix seconds) even without traffic.
    pub fn watch(&self, until: i64) {
        self.watched_until.fetch_max(until, Relaxed);
    }

    /// The counts since the last take, reset; `None` (and nothing else touched) when there
    /// were no commands and nobody is looking at `now` (unix seconds): an idle instance costs
    /// the sampler three loads.
    pub fn take(&self, now: i64) -> Option<Taken> {
        let idle = self.reads.load(Relaxed) == 0 && self.writes.load(Relaxed) == 0;
        if idle && self.watched_until.load(Relaxed) < now {
            return None;
        }
        let mut latency = Histogram::default();
        for (out, slot) in latency.0.iter_mut().zip(&self.latency) {
            *out = slot.swap(0, Relaxed);
        }
        Some(Taken {
            reads: self.reads.swap(0, Relaxed),
            writes: self.writes.swap(0, Relaxed),
            errors: self.errors.swap(0, Relaxed),
            latency,
        })
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn buckets_are_two_per_doubling_and_contiguous() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(31), 0);
        assert_eq!(bucket_of(32), 1);
        assert_eq!(bucket_of(47), 1);
        assert_eq!(bucket_of(48), 2);
        assert_eq!(bucket_of(64), 3);
        assert_eq!(bucket_of(1_000), bucket_of(999));
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_floor(BUCKETS - 1), 1 << 24, "the open bucket starts at 16.8 s");
        for i in 1..BUCKETS {
            let floor = bucket_floor(i);
            assert_eq!(bucket_of(floor), i, "bucket {i} starts at {floor}");
            assert_eq!(bucket_of(floor - 1), i - 1, "bucket {i} follows {}", i - 1);
            // Adjacent bounds are at most 1.5 apart: the resolution the docs state.
            if i > 1 {
                assert!(floor as f64 / bucket_floor(i - 1) as f64 <= 1.5 + 1e-9);
            }
        }
    }

    #[test]
    fn quantiles_are_the_upper_bound_of_their_bucket() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        // 98 requests at 1 ms, 2 at 100 ms.
        h.0[bucket_of(1_000)] = 98;
        h.0[bucket_of(100_000)] = 2;
        let p50 = h.quantile_ms(0.5).unwrap();
        assert!((1.0..=1.5).contains(&p50), "{p50}");
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((100.0..=150.0).contains(&p99), "{p99}");
        assert_eq!(h.quantile_ms(0.98).unwrap(), p50, "the 98th request is still a 1 ms one");
        let mut slow = Histogram::default();
        slow.0[BUCKETS - 1] = 1;
        assert_eq!(slow.quantile_ms(0.99), Some(16_777.216));
    }

    #[test]
    fn histograms_encode_sparsely_and_round_trip() {
        let mut h = Histogram::default();
        assert_eq!(h.encode(), "");
        assert_eq!(Histogram::decode(""), Some(h.clone()));
        h.0[3] = 7;
        h.0[39] = 1;
        assert_eq!(h.encode(), "3:7,39:1");
        assert_eq!(Histogram::decode(&h.encode()), Some(h));
        assert_eq!(Histogram::decode("40:1"), None, "out of range");
        assert_eq!(Histogram::decode("3"), None);
    }

    #[test]
    fn periods_pick_the_finest_resolution_they_are_kept_at() {
        let res: Vec<_> = Period::ALL.iter().map(|p| (p.as_str(), p.resolution().seconds())).collect();
        assert_eq!(res, [("1h", 10), ("3h", 10), ("12h", 60), ("1d", 60), ("3d", 600), ("7d", 600)]);
        assert_eq!(Period::parse("12h"), Some(Period::TwelveHours));
        assert_eq!(Period::parse("2h"), None);
        // No period asks for more than ~1500 points.
        assert!(Period::ALL.iter().all(|p| p.span().as_secs() / p.resolution().seconds() as u64 <= 1440));
    }

    fn row(instance: InstanceId, start: OffsetDateTime, reads: u64) -> UsageRow {
        UsageRow {
            instance_id: instance,
            resolution: Resolution::TenSeconds,
            start,
            reads,
            writes: 1,
            errors: 0,
            latency: Histogram::default(),
            server: None,
        }
    }

    fn figures(at: OffsetDateTime, keys: u64) -> ServerFigures {
        ServerFigures { at, keys, memory_bytes: 1, hits: 2, misses: 3, connections: 4 }
    }

    #[test]
    fn merging_adds_counts_and_keeps_the_latest_server_figures() {
        let (a, b) = (InstanceId::new(), InstanceId::new());
        let t = datetime!(2026-01-01 00:00:00 UTC);
        let mut r1 = row(a, t, 5);
        r1.latency.0[2] = 1;
        r1.server = Some(figures(t + time::Duration::seconds(50), 10));
        let mut r2 = row(a, t + time::Duration::seconds(20), 7);
        r2.latency.0[2] = 2;
        r2.server = Some(figures(t + time::Duration::seconds(20), 99));
        let r3 = row(a, t + time::Duration::seconds(60), 1);
        let other = row(b, t, 100);
        let merged = merge(&[r1, r2, r3, other], Resolution::Minute);
        assert_eq!(merged.len(), 3);
        let first = merged.iter().find(|r| r.instance_id == a && r.start == t).unwrap();
        assert_eq!((first.reads, first.writes, first.resolution), (12, 2, Resolution::Minute));
        assert_eq!(first.latency.0[2], 3);
        assert_eq!(first.server.unwrap().keys, 10, "the later reading wins, whichever row has it");
        assert!(merged.iter().any(|r| r.instance_id == b && r.reads == 100));
        // Two readings within one second: the later row's.
        let (mut x, mut y) = (row(a, t, 1), row(a, t, 1));
        x.server = Some(figures(t, 1));
        y.server = Some(figures(t, 2));
        assert_eq!(merge(&[x, y], Resolution::Minute)[0].server.unwrap().keys, 2);
    }

    #[test]
    fn series_are_rates_at_the_periods_resolution_within_the_period() {
        let id = InstanceId::new();
        let now = datetime!(2026-01-01 12:00:05 UTC);
        let rows = [
            // Two replicas' samples in one 10 s interval.
            row(id, datetime!(2026-01-01 11:59:50 UTC), 30),
            row(id, datetime!(2026-01-01 11:59:52 UTC), 20),
            row(id, datetime!(2026-01-01 11:59:40 UTC), 10),
            // Before the hour.
            row(id, datetime!(2026-01-01 10:59:00 UTC), 1000),
        ];
        let points = series(&rows, Period::Hour, now);
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].at, datetime!(2026-01-01 11:59:40 UTC));
        assert_eq!(points[0].reads_per_sec, 1.0);
        assert_eq!(points[1].reads_per_sec, 5.0);
        assert_eq!(points[1].writes_per_sec, 0.2);
        assert_eq!(points[1].p50_ms, None);
        let day = series(&rows, Period::Day, now);
        assert_eq!(day.len(), 2, "one minute point, and the older one");
        assert_eq!(day[1].reads_per_sec, 1.0, "60 reads in the minute");
    }

    #[test]
    fn info_figures_are_parsed_and_added() {
        let at = datetime!(2026-01-01 00:00:00 UTC);
        let info = "# Clients\r\nconnected_clients:3\r\n# Memory\r\nused_memory:1048576\r\n\
                    used_memory_human:1.00M\r\n# Stats\r\nkeyspace_hits:7\r\nkeyspace_misses:2\r\n\
                    # Keyspace\r\ndb0:keys=5,expires=0,avg_ttl=0\r\ndb1:keys=2,expires=1,avg_ttl=9\r\n";
        let f = ServerFigures::parse_info(info, at).unwrap();
        assert_eq!(
            f,
            ServerFigures { at, keys: 7, memory_bytes: 1_048_576, hits: 7, misses: 2, connections: 3 }
        );
        assert_eq!(f.plus(f).keys, 14);
        assert_eq!(ServerFigures::parse_info("# nothing here\r\n", at), None);
    }

    #[test]
    fn an_idle_meter_is_not_taken_and_a_busy_one_is_reset() {
        let m = Meter::default();
        assert_eq!(m.take(100), None);
        m.command(true, false);
        m.command(false, true);
        m.request(Duration::from_micros(40));
        let t = m.take(100).unwrap();
        assert_eq!((t.reads, t.writes, t.errors, t.latency.0[1]), (1, 1, 1, 1));
        assert_eq!(m.take(100), None, "taken means reset");
        m.watch(150);
        let watched = m.take(120).unwrap();
        assert_eq!((watched.reads, watched.latency.count()), (0, 0), "watched: taken, empty");
        assert_eq!(m.take(151), None, "no longer watched");
    }

    #[test]
    fn the_row_bound_covers_every_tier() {
        let bound = max_rows(1, Duration::from_secs(10), Duration::from_secs(60));
        // 3 h of 10 s rows, 21 h of minutes and 6 days of 10 minutes, with slack.
        assert!(bound >= 1080 + 1260 + 864, "{bound}");
        assert!(bound < 10_000, "{bound}");
        assert!(max_rows(2, Duration::from_secs(10), Duration::from_secs(60)) > bound);
    }
}
