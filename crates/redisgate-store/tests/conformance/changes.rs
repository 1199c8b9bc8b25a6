//! The change feed: the same rows, cursor and pruning on every `Store`. Rows are written by
//! the database's triggers, so these cases drive the ordinary store methods and read what
//! they left behind.

use std::collections::BTreeSet;
use std::sync::Arc;

use redisgate_core::apikey::TokenKind;
use redisgate_core::ids::InstanceId;
use redisgate_core::instance::InstanceStatus;
use redisgate_core::quota::Plan;
use redisgate_core::ratelimit::Rate;
use redisgate_core::store::{Change, ChangeSubject, InstanceChange, Store};
use time::{Duration, OffsetDateTime};

use crate::cases::{new_instance, new_key, new_token, quota, user};

type S = Arc<dyn Store>;

/// Every row after `after` (the feed of one test stays far below the limit).
async fn feed(store: &S, after: i64) -> Vec<Change> {
    store.changes_after(after, 1000).await.unwrap().expect("nothing pruned")
}

fn subjects(changes: &[Change]) -> Vec<ChangeSubject> {
    changes.iter().map(|c| c.subject).collect()
}

/// The feed's cursor now.
async fn cursor(store: &S) -> i64 {
    store.last_change().await.unwrap()
}

pub async fn instance_writes_record_one_change_each_in_order(store: S) {
    assert_eq!(cursor(&store).await, 0, "an empty feed");
    assert_eq!(store.changes_after(0, 10).await.unwrap(), Some(vec![]));
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    assert_eq!(cursor(&store).await, 0, "creating an organization records nothing");

    let started = OffsetDateTime::now_utc() - Duration::seconds(1);
    let id = store.create_instance(new_instance(org.id, 1)).await.unwrap().instance.id;
    store.set_instance_status(id, InstanceStatus::Running, None).await.unwrap();
    let change = InstanceChange { name: Some("renamed".into()), ..Default::default() };
    store.update_instance(id, change).await.unwrap();
    store.delete_instance(id).await.unwrap();
    let ended = OffsetDateTime::now_utc() + Duration::seconds(1);

    let rows = feed(&store, 0).await;
    assert_eq!(subjects(&rows), [ChangeSubject::Instance(id); 4]);
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq), "ascending seqs: {rows:?}");
    assert!(rows.iter().all(|c| started <= c.at && c.at <= ended), "the database's clock: {rows:?}");
    assert_eq!(cursor(&store).await, rows[3].seq);
    assert_eq!(feed(&store, rows[1].seq).await, rows[2..]);
    // Failed writes record nothing.
    assert!(store.delete_instance(id).await.is_err());
    assert!(store.set_instance_status(id, InstanceStatus::Error, None).await.is_err());
    assert_eq!(cursor(&store).await, rows[3].seq);
}

pub async fn api_key_writes_record_changes_but_touches_do_not(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let inst = store.create_instance(new_instance(org.id, 1)).await.unwrap().instance.id;
    let start = cursor(&store).await;

    let key = store.create_api_key(new_key(org.id)).await.unwrap().id;
    let rate = Rate { per_second: 5, burst: 10 };
    store.set_api_key_rate_limit(key, Some(rate)).await.unwrap();
    store.revoke_api_key(key, OffsetDateTime::now_utc()).await.unwrap();
    assert_eq!(subjects(&feed(&store, start).await), [ChangeSubject::ApiKey(key); 3]);

    // last_used_at is no change: the data plane touches used keys every second.
    let before_touch = cursor(&store).await;
    store.touch_api_keys(&[(key, OffsetDateTime::now_utc())]).await.unwrap();
    assert_eq!(feed(&store, before_touch).await, []);

    // Instance tokens are API keys too: replacing them records the old ones' deletes and the
    // new ones' inserts, and touching them records nothing either.
    let pair = || TokenKind::BOTH.map(|k| new_token(org.id, inst, k)).to_vec();
    let first: Vec<_> =
        store.replace_instance_tokens(inst, pair()).await.unwrap().into_iter().map(|t| t.key.id).collect();
    let after_first = cursor(&store).await;
    let first_rows: BTreeSet<_> = subjects(&feed(&store, before_touch).await).into_iter().collect();
    assert_eq!(first_rows, first.iter().map(|&k| ChangeSubject::ApiKey(k)).collect());
    store.touch_api_keys(&[(first[0], OffsetDateTime::now_utc())]).await.unwrap();
    assert_eq!(cursor(&store).await, after_first);
    let second: Vec<_> =
        store.replace_instance_tokens(inst, pair()).await.unwrap().into_iter().map(|t| t.key.id).collect();
    let rows = subjects(&feed(&store, after_first).await);
    assert_eq!(rows.len(), 4, "two deletes and two inserts: {rows:?}");
    let keys: BTreeSet<_> = first.iter().chain(&second).map(|&k| ChangeSubject::ApiKey(k)).collect();
    assert_eq!(rows.into_iter().collect::<BTreeSet<_>>(), keys);

    // Deleting the instance takes its tokens with it, and says so.
    let before_delete = cursor(&store).await;
    store.delete_instance(inst).await.unwrap();
    let rows: BTreeSet<_> = subjects(&feed(&store, before_delete).await).into_iter().collect();
    let expected: BTreeSet<_> =
        second.iter().map(|&k| ChangeSubject::ApiKey(k)).chain([ChangeSubject::Instance(inst)]).collect();
    assert_eq!(rows, expected);
}

pub async fn org_updates_and_deletes_record_changes_with_cascaded_children(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Doomed", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let kept = store.create_org("Kept", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let inst = store.create_instance(new_instance(org.id, 1)).await.unwrap().instance.id;
    let key = store.create_api_key(new_key(org.id)).await.unwrap().id;
    let tokens: Vec<_> = store
        .replace_instance_tokens(inst, TokenKind::BOTH.map(|k| new_token(org.id, inst, k)).to_vec())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.key.id)
        .collect();
    store.create_instance(new_instance(kept.id, 1)).await.unwrap();
    store.create_api_key(new_key(kept.id)).await.unwrap();

    let start = cursor(&store).await;
    store.set_quota(org.id, quota(3, 1 << 30, 3)).await.unwrap();
    store.rename_org(org.id, "Still doomed").await.unwrap();
    assert_eq!(subjects(&feed(&store, start).await), [ChangeSubject::Organization(org.id); 2]);

    let before_delete = cursor(&store).await;
    store.delete_org(org.id).await.unwrap();
    let rows = subjects(&feed(&store, before_delete).await);
    let mut expected: Vec<_> = [ChangeSubject::Organization(org.id), ChangeSubject::Instance(inst)]
        .into_iter()
        .chain([key].iter().chain(&tokens).map(|&k| ChangeSubject::ApiKey(k)))
        .collect();
    assert_eq!(rows.len(), expected.len(), "one row per deleted row: {rows:?}");
    let mut rows = rows;
    rows.sort();
    expected.sort();
    assert_eq!(rows, expected, "the organization and everything that went with it, nothing else");
}

pub async fn changes_after_pages_by_limit(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let mut made = Vec::new();
    for _ in 0..5 {
        made.push(store.create_instance(new_instance(org.id, 1)).await.unwrap().instance.id);
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = store.changes_after(after, 2).await.unwrap().expect("nothing pruned");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = last.seq;
        seen.extend(subjects(&page));
    }
    assert_eq!(seen, made.iter().map(|&i| ChangeSubject::Instance(i)).collect::<Vec<_>>());
    assert_eq!(after, cursor(&store).await);
    assert_eq!(store.changes_after(0, 0).await.unwrap(), Some(vec![]));
    assert_eq!(store.changes_after(after + 100, 10).await.unwrap(), Some(vec![]), "a cursor ahead");
}

pub async fn pruning_moves_the_watermark_below_which_cursors_are_stale(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let ancient = OffsetDateTime::UNIX_EPOCH;
    assert_eq!(store.prune_changes(OffsetDateTime::now_utc()).await.unwrap(), 0, "an empty feed");

    let old: Vec<InstanceId> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(store.create_instance(new_instance(org.id, 1)).await.unwrap().instance.id);
        }
        v
    };
    let old_rows = feed(&store, 0).await;
    let mark = old_rows.last().unwrap().at;
    // The next rows must be later than `mark` on the database's clock (milliseconds on
    // SQLite): wait until the clock has passed it.
    while OffsetDateTime::now_utc() <= mark + Duration::milliseconds(5) {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let new = store.create_instance(new_instance(org.id, 1)).await.unwrap().instance.id;
    let last_old = old_rows.last().unwrap().seq;

    assert_eq!(store.prune_changes(ancient).await.unwrap(), 0, "nothing that old");
    assert_eq!(feed(&store, 0).await.len(), 4);
    assert_eq!(store.prune_changes(mark + Duration::microseconds(1)).await.unwrap(), old.len() as u64);
    assert_eq!(store.changes_after(0, 10).await.unwrap(), None, "a cursor from before the prune");
    assert_eq!(store.changes_after(last_old - 1, 10).await.unwrap(), None);
    assert_eq!(subjects(&feed(&store, last_old).await), [ChangeSubject::Instance(new)]);

    // Everything goes: the cursor stays where it was, and the next row continues from it.
    let last = cursor(&store).await;
    assert_eq!(store.prune_changes(OffsetDateTime::now_utc() + Duration::minutes(1)).await.unwrap(), 1);
    assert_eq!(cursor(&store).await, last, "the highest pruned seq");
    assert_eq!(store.changes_after(last_old, 10).await.unwrap(), None);
    assert_eq!(store.changes_after(last, 10).await.unwrap(), Some(vec![]));
    assert_eq!(store.prune_changes(OffsetDateTime::now_utc() + Duration::minutes(1)).await.unwrap(), 0);
    store.delete_instance(new).await.unwrap();
    let rows = feed(&store, last).await;
    assert_eq!(subjects(&rows), [ChangeSubject::Instance(new)]);
    assert!(rows[0].seq > last, "seqs are never handed out twice");
}
