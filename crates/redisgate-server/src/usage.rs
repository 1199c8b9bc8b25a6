//! The usage history of instances (docs/USAGE.md): a sampler that every `usage.interval`
//! takes what the data plane counted for each served instance ([`Meter`], bumped on the
//! request path through the backend the request already holds), reads the INFO of those that
//! had traffic or whose usage a member is looking at, and writes one row each; and, every
//! minute, the down-sampling and pruning of [`usage::TIERS`].
//!
//! Idle instances cost the sampler three atomic loads each and nothing else: no INFO, no row.
//! Every replica samples the instances it serves and writes its own rows; reads combine them.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use redisgate_core::catalog::{self, Class};
use redisgate_core::ids::InstanceId;
use redisgate_core::store::{Store, StoreResult};
use redisgate_core::usage::{self, Meter, Period, Point, Resolution, ServerFigures, UsageRow};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::instances::Instances;

/// How long after a member last asked for an instance's usage it is sampled even when idle,
/// so its memory and keys keep showing while the console polls.
const WATCH_FOR_SECS: i64 = 120;

/// How often down-sampling and pruning run.
const MAINTAIN_EVERY: Duration = Duration::from_secs(60);

/// Rows per down-sampling statement: short transactions, so writers never wait long.
const BATCH: u32 = 1000;

/// INFO calls in flight at once, and how long one may take: a slow server delays only its
/// own figures, which are then left out.
const INFO_CONCURRENCY: usize = 16;
const INFO_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the command at catalog position `index` counts as a read: the catalog's read
/// classes. Everything else (writes, scripts, administration) counts as a write. One array
/// index and a compare: this runs on the request path.
#[inline]
pub fn is_read(index: Option<usize>) -> bool {
    index
        .and_then(|i| catalog::COMMANDS.get(i))
        .is_some_and(|c| matches!(c.class, Class::Read | Class::ExpensiveRead))
}

/// Samples every `interval` and maintains the tiers every minute, until `cancel`.
pub async fn run(
    store: Arc<dyn Store>,
    instances: Arc<Instances>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut sample = tokio::time::interval(interval);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut maintain = tokio::time::interval(MAINTAIN_EVERY);
    maintain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sample.tick() => sample_once(store.as_ref(), &instances, interval).await,
            _ = maintain.tick() => {
                // Dropped at shutdown between two statements: each commits or not.
                let work = usage::maintain(store.as_ref(), OffsetDateTime::now_utc(), BATCH);
                tokio::select! {
                    done = work => match done {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(usage.rows = n, "usage rows down-sampled or pruned"),
                        Err(e) => tracing::warn!(error = %e, "could not down-sample the usage history; retrying in a minute"),
                    },
                    () = cancel.cancelled() => return,
                }
            }
            () = cancel.cancelled() => return,
        }
    }
}

/// One sample of every instance with something to say.
async fn sample_once(store: &dyn Store, instances: &Instances, interval: Duration) {
    let now = OffsetDateTime::now_utc();
    let mut active = Vec::new();
    instances.each_served(|id, backend| {
        if let Some(taken) = backend.usage().take(now.unix_timestamp()) {
            active.push((id, Arc::clone(backend), taken));
        }
    });
    if active.is_empty() {
        return;
    }
    // The counts cover the interval that ends now.
    let start = now - interval;
    let rows: Vec<UsageRow> = futures_util::stream::iter(active)
        .map(|(instance_id, backend, taken)| async move {
            UsageRow {
                instance_id,
                resolution: Resolution::TenSeconds,
                start,
                reads: taken.reads,
                writes: taken.writes,
                errors: taken.errors,
                latency: taken.latency,
                server: server_figures(&backend, now).await,
            }
        })
        .buffer_unordered(INFO_CONCURRENCY)
        .collect()
        .await;
    if let Err(e) = store.append_usage(&rows).await {
        tracing::warn!(error = %e, usage.rows = rows.len(), "could not record usage samples; they are lost");
    }
}

/// The instance's INFO figures; a cluster's primaries added up. `None` if any does not answer.
async fn server_figures(backend: &Arc<Backend>, at: OffsetDateTime) -> Option<ServerFigures> {
    let mut total: Option<ServerFigures> = None;
    for text in backend.info(Some(INFO_TIMEOUT)).await? {
        let figures = ServerFigures::parse_info(&text, at)?;
        total = Some(total.map_or(figures, |t| t.plus(figures)));
    }
    total
}

/// The points of `period` for `instance`, now; and from now on (for a while) the instance is
/// sampled even when idle, since someone is looking.
pub async fn history(
    store: &dyn Store,
    meter: Option<&Meter>,
    instance: InstanceId,
    period: Period,
) -> StoreResult<Vec<Point>> {
    let now = OffsetDateTime::now_utc();
    if let Some(meter) = meter {
        meter.watch(now.unix_timestamp() + WATCH_FOR_SECS);
    }
    let since = now - period.span() - Duration::from_secs(period.resolution().seconds() as u64);
    let rows = store.usage(instance, since, period.resolution()).await?;
    Ok(usage::series(&rows, period, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_the_catalogs_read_classes() {
        let index = |name: &str| catalog::index(name);
        assert!(is_read(index("GET")));
        assert!(is_read(index("SCAN")));
        assert!(!is_read(index("SET")));
        assert!(!is_read(index("EVAL")));
        assert!(!is_read(None));
    }
}
