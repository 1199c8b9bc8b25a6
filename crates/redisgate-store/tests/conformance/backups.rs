//! Backups and their daily schedules: the same behaviour on every `Store`.

use std::sync::Arc;

use redisgate_core::account::Email;
use redisgate_core::backup::{BackupCaps, BackupKind, BackupState, NewBackup};
use redisgate_core::ids::{BackupId, InstanceId, OrgId};
use redisgate_core::instance::{BackendKind, ProvisionerKind};
use redisgate_core::quota::{Limit, Plan};
use redisgate_core::store::{Admission, NewInstance, Store, StoreError};
use time::{Duration, OffsetDateTime};

type S = Arc<dyn Store>;

const ROOMY: BackupCaps = BackupCaps { max_count: 100, max_bytes: u64::MAX };

async fn org_and_instance(store: &S, name: &str) -> (OrgId, InstanceId) {
    let email = Email::parse(&format!("{name}@example.com")).unwrap();
    let user = store.create_user(&email, "h", Admission::Anyone).await.unwrap();
    let org = store.create_org(name, Plan::Pro, user.id, u32::MAX).await.unwrap();
    let rec = store
        .create_instance(NewInstance {
            id: InstanceId::new(),
            org_id: org.id,
            name: "db".into(),
            provisioner: ProvisionerKind::Local,
            kind: BackendKind::Standalone,
            memory_bytes: 1,
            eviction_policy: Default::default(),
            sealed_url: None,
            tls_ca_pem: None,
        })
        .await
        .unwrap();
    (org.id, rec.instance.id)
}

fn new_backup(org: OrgId, instance: InstanceId, name: &str) -> NewBackup {
    let id = BackupId::new();
    NewBackup {
        id,
        instance_id: instance,
        org_id: org,
        name: name.into(),
        kind: BackupKind::Manual,
        object_key: format!("{org}/{instance}/{id}.rdb"),
    }
}

pub async fn backups_round_trip_finish_and_delete(store: S) {
    let (org, instance) = org_and_instance(&store, "acme").await;
    let first = store.create_backup(new_backup(org, instance, "first"), ROOMY).await.unwrap();
    assert_eq!((first.state, first.size_bytes, first.error.as_deref()), (BackupState::Pending, 0, None));
    assert_eq!((first.org_id, first.instance_id, first.kind), (org, instance, BackupKind::Manual));
    assert_eq!(store.backup(first.id).await.unwrap(), first);
    let second = store
        .create_backup(NewBackup { kind: BackupKind::Daily, ..new_backup(org, instance, "second") }, ROOMY)
        .await
        .unwrap();
    let ready = store.finish_backup(first.id, BackupState::Ready, 12345, None).await.unwrap();
    assert_eq!(
        (ready.state, ready.size_bytes, ready.created_at),
        (BackupState::Ready, 12345, first.created_at)
    );
    let failed = store.finish_backup(second.id, BackupState::Failed, 0, Some("no space")).await.unwrap();
    assert_eq!(
        (failed.state, failed.error.as_deref(), failed.kind),
        (BackupState::Failed, Some("no space"), BackupKind::Daily)
    );
    // Newest first.
    let listed = store.backups(instance).await.unwrap();
    assert_eq!(listed, vec![failed.clone(), ready.clone()]);
    store.delete_backup(first.id).await.unwrap();
    assert_eq!(store.backup(first.id).await, Err(StoreError::NotFound));
    assert_eq!(store.delete_backup(first.id).await, Err(StoreError::NotFound));
    assert_eq!(store.finish_backup(first.id, BackupState::Ready, 1, None).await, Err(StoreError::NotFound));
    // They go with their instance.
    store.delete_instance(instance).await.unwrap();
    assert_eq!(store.backup(second.id).await, Err(StoreError::NotFound));
}

pub async fn a_backup_of_another_orgs_instance_is_not_found(store: S) {
    let (org_a, _) = org_and_instance(&store, "a").await;
    let (_, instance_b) = org_and_instance(&store, "b").await;
    let refused = store.create_backup(new_backup(org_a, instance_b, "x"), ROOMY).await;
    assert_eq!(refused, Err(StoreError::NotFound));
    assert_eq!(
        store.create_backup(new_backup(org_a, InstanceId::new(), "x"), ROOMY).await,
        Err(StoreError::NotFound)
    );
}

pub async fn backup_caps_count_every_backup_and_ready_bytes(store: S) {
    let (org, instance) = org_and_instance(&store, "acme").await;
    let caps = BackupCaps { max_count: 2, max_bytes: 100 };
    let a = store.create_backup(new_backup(org, instance, "a"), caps).await.unwrap();
    store.finish_backup(a.id, BackupState::Ready, 100, None).await.unwrap();
    // The bytes cap: 100 ready bytes reach it.
    let over = store.create_backup(new_backup(org, instance, "b"), caps).await;
    assert_eq!(over, Err(StoreError::QuotaExceeded(Limit::MaxBackupBytes)));
    let roomier = BackupCaps { max_bytes: 1000, ..caps };
    store.create_backup(new_backup(org, instance, "b"), roomier).await.unwrap();
    let over = store.create_backup(new_backup(org, instance, "c"), roomier).await;
    assert_eq!(over, Err(StoreError::QuotaExceeded(Limit::MaxBackups)));
    // Racing creates never end above the count.
    let (org2, instance2) = org_and_instance(&store, "racing").await;
    let tries = (0..8).map(|i| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .create_backup(
                    new_backup(org2, instance2, &format!("r{i}")),
                    BackupCaps { max_count: 3, max_bytes: 10 },
                )
                .await
        })
    });
    let mut made = 0;
    for t in tries {
        match t.await.unwrap() {
            Ok(_) => made += 1,
            Err(e) => assert_eq!(e, StoreError::QuotaExceeded(Limit::MaxBackups)),
        }
    }
    assert_eq!(made, 3);
    assert_eq!(store.backups(instance2).await.unwrap().len(), 3);
}

pub async fn schedules_are_set_replaced_and_removed(store: S) {
    let (org, instance) = org_and_instance(&store, "acme").await;
    assert_eq!(store.backup_schedule(instance).await.unwrap(), None);
    let at = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
    let s = store.set_backup_schedule(instance, Some((7, at))).await.unwrap().unwrap();
    assert_eq!((s.instance_id, s.org_id, s.retention_days, s.next_run_at), (instance, org, 7, at));
    let s = store.set_backup_schedule(instance, Some((30, at + Duration::hours(1)))).await.unwrap().unwrap();
    assert_eq!((s.retention_days, s.next_run_at), (30, at + Duration::hours(1)));
    assert_eq!(store.backup_schedule(instance).await.unwrap(), Some(s));
    assert_eq!(store.set_backup_schedule(instance, None).await.unwrap(), None);
    assert_eq!(store.backup_schedule(instance).await.unwrap(), None);
    let unknown = InstanceId::new();
    assert_eq!(store.set_backup_schedule(unknown, Some((1, at))).await, Err(StoreError::NotFound));
    assert_eq!(store.set_backup_schedule(unknown, None).await, Err(StoreError::NotFound));
}

pub async fn a_due_schedule_is_claimed_once_even_when_racing(store: S) {
    let (org, instance) = org_and_instance(&store, "acme").await;
    let (_, later) = org_and_instance(&store, "later").await;
    let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
    let next = now + Duration::days(1);
    store.set_backup_schedule(instance, Some((3, now - Duration::minutes(5)))).await.unwrap();
    store.set_backup_schedule(later, Some((3, now + Duration::minutes(5)))).await.unwrap();
    // Only among the instances the caller serves.
    assert_eq!(store.claim_due_backup(now, next, &[later]).await.unwrap(), None);
    assert_eq!(store.claim_due_backup(now, next, &[]).await.unwrap(), None);
    let claims = (0..8).map(|_| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.claim_due_backup(now, next, &[instance, later]).await.unwrap() })
    });
    let mut won = Vec::new();
    for c in claims {
        won.extend(c.await.unwrap());
    }
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!((won[0].instance_id, won[0].org_id), (instance, org));
    // Answered as it was claimed; the row moved on.
    assert_eq!(won[0].next_run_at, now - Duration::minutes(5));
    assert_eq!(store.backup_schedule(instance).await.unwrap().unwrap().next_run_at, next);
    assert_eq!(store.claim_due_backup(now, next, &[instance, later]).await.unwrap(), None);
    // The later one is due later.
    let claimed =
        store.claim_due_backup(now + Duration::minutes(5), next, &[instance, later]).await.unwrap().unwrap();
    assert_eq!(claimed.instance_id, later);
    // Schedules go with their instance.
    store.delete_instance(instance).await.unwrap();
    assert_eq!(
        store
            .claim_due_backup(next + Duration::days(9), next, &[instance, later])
            .await
            .unwrap()
            .map(|s| s.instance_id),
        Some(later)
    );
    // …and moved on to `next` again, not due before it.
    assert_eq!(
        store.claim_due_backup(next - Duration::seconds(1), next, &[instance, later]).await.unwrap(),
        None
    );
}
