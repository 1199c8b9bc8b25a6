//! Following the metadata store by change: every replica reads the store's change feed
//! (`Store::changes_after`, rows written by database triggers on instances, API keys and
//! organizations) from where it last stopped, every [`POLL`] (500 ms), so what one replica creates,
//! deletes or revokes takes effect on the others within a second, at a cost that does not
//! grow with the number of instances.
//!
//! - An instance's row changed: the instance service follows it ([`Instances::follow`]):
//!   adopts an external instance another replica started, stops serving a deleted one.
//! - An API key or an organization changed: the key cache forgets that key (the
//!   organization's keys), so a revoked key or a changed plan applies at the next request.
//!
//! PostgreSQL numbers rows when they are written but they become visible when their
//! transaction commits, so a row can appear after higher ones (a gap that fills). The
//! follower therefore keeps its cursor at the last row below which it has seen everything,
//! follows rows above it as they appear (following is idempotent: it re-reads the subject),
//! and gives a gap up after [`GAP_WAIT`] (a rolled-back transaction's number never comes).
//! When the store has pruned rows the follower has not read, it follows everything again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use redisgate_core::store::{Change, ChangeSubject, Store};
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::gateway::keys::KeyAuth;
use crate::instances::Instances;

/// How often the feed is read.
pub const POLL: Duration = Duration::from_millis(500);
/// How long a missing row is waited for before it is taken for a rolled-back transaction.
const GAP_WAIT: Duration = Duration::from_secs(10);
/// Rows read at most per poll.
const BATCH: u32 = 500;
/// How long rows are kept: a replica that stopped reading for longer follows everything again.
const RETENTION: Duration = Duration::from_secs(3600);
/// How often a replica prunes what is older than [`RETENTION`].
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Where a follower stands in the feed.
struct Cursor {
    /// Every row up to here is followed (or given up).
    through: i64,
    /// Rows above `through` already followed.
    ahead: BTreeSet<i64>,
    /// Since when the row after `through` has been missing while later ones are there.
    gap_since: Option<Instant>,
}

impl Cursor {
    fn new(through: i64) -> Self {
        Cursor { through, ahead: BTreeSet::new(), gap_since: None }
    }

    /// Marks `seq` followed and moves `through` up over every row followed without a gap; a
    /// gap older than [`GAP_WAIT`] is skipped.
    fn advance(&mut self, now: Instant) {
        loop {
            while self.ahead.remove(&(self.through + 1)) {
                self.through += 1;
                self.gap_since = None;
            }
            let Some(&next) = self.ahead.first() else {
                self.gap_since = None;
                return;
            };
            let since = *self.gap_since.get_or_insert(now);
            if now - since < GAP_WAIT {
                return;
            }
            tracing::debug!(from = self.through + 1, to = next - 1, "change feed gap given up");
            self.through = next - 1;
            self.gap_since = None;
        }
    }
}

/// Follows the feed from `start` (read before the instances were first loaded) until
/// `cancel`; prunes old rows now and then.
pub async fn follow(
    store: Arc<dyn Store>,
    instances: Arc<Instances>,
    keys: Arc<KeyAuth>,
    start: i64,
    cancel: CancellationToken,
) {
    let mut cursor = Cursor::new(start);
    let mut pruned_at: Option<Instant> = None;
    let mut behind = false;
    loop {
        // A full batch means more are waiting: read on at once, so a burst of changes (an
        // organization creating thousands of instances) is followed within the second too,
        // not at one batch per poll.
        if !behind {
            tokio::select! {
                () = crate::beat::sleep(POLL) => {}
                () = cancel.cancelled() => return,
            }
        } else if cancel.is_cancelled() {
            return;
        }
        behind = false;
        let changes = match store.changes_after(cursor.through, BATCH).await {
            Ok(Some(changes)) => changes,
            Ok(None) => {
                cursor = resync(&*store, &instances, &keys).await.unwrap_or(cursor);
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not read the change feed");
                continue;
            }
        };
        let (full, before) = (changes.len() >= BATCH as usize, cursor.through);
        apply(&mut cursor, changes, &instances, &keys).await;
        // (Not when waiting at a gap: the same rows would come back at once.)
        behind = full && cursor.through > before;
        if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            pruned_at = Some(Instant::now());
            if let Err(e) = store.prune_changes(OffsetDateTime::now_utc() - RETENTION).await {
                tracing::debug!(error = %e, "could not prune the change feed");
            }
        }
    }
}

/// Follows the rows not followed yet, each subject once.
async fn apply(cursor: &mut Cursor, changes: Vec<Change>, instances: &Instances, keys: &KeyAuth) {
    let mut followed_instances = Vec::new();
    for change in changes {
        if change.seq <= cursor.through || cursor.ahead.contains(&change.seq) {
            continue;
        }
        let done = match change.subject {
            ChangeSubject::Instance(id) if followed_instances.contains(&id) => true,
            ChangeSubject::Instance(id) => match instances.follow(id).await {
                Ok(()) => {
                    followed_instances.push(id);
                    true
                }
                Err(e) => {
                    tracing::debug!(instance.id = %id, error = %e, "could not follow an instance change");
                    false
                }
            },
            ChangeSubject::ApiKey(id) => {
                keys.forget_key(id);
                true
            }
            ChangeSubject::Organization(org) => {
                keys.forget_org(org);
                true
            }
        };
        if !done {
            break; // followed again from here at the next poll
        }
        cursor.ahead.insert(change.seq);
    }
    cursor.advance(Instant::now());
}

/// Follows everything again, from the feed's end as it is now.
async fn resync(store: &dyn Store, instances: &Instances, keys: &KeyAuth) -> Option<Cursor> {
    let through = store.last_change().await.ok()?;
    tracing::info!("the change feed was pruned past this replica's cursor; following the whole store again");
    instances.follow_all().await.ok()?;
    keys.invalidate_all();
    Some(Cursor::new(through))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_waits_for_a_gap_then_gives_it_up() {
        let t0 = Instant::now();
        let mut c = Cursor::new(4);
        c.ahead.extend([5, 6, 8]);
        c.advance(t0);
        assert_eq!((c.through, c.ahead.len()), (6, 1), "5 and 6 are contiguous; 7 is missing");
        c.advance(t0 + GAP_WAIT / 2);
        assert_eq!(c.through, 6, "a young gap is waited for");
        c.ahead.insert(7); // the late transaction committed
        c.advance(t0 + GAP_WAIT / 2);
        assert_eq!((c.through, c.ahead.len()), (8, 0));
        c.ahead.insert(10);
        c.advance(t0 + GAP_WAIT);
        assert_eq!(c.through, 8);
        c.advance(t0 + GAP_WAIT * 2 + Duration::from_millis(1));
        assert_eq!((c.through, c.ahead.len()), (10, 0), "an old gap is given up");
    }
}
