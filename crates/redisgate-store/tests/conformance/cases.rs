//! The behaviour every `Store` must have, each written once against `Arc<dyn Store>`.
//! `main.rs` runs every case on every backend.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use redisgate_core::account::{Email, User};
use redisgate_core::apikey::{ApiKey, Scope, TokenKind};
use redisgate_core::audit::{AuditEntry, AuditQuery, NewAuditEntry, Outcome};
use redisgate_core::ids::{ApiKeyId, AuditId, InstanceId, OrgId, UserId};
use redisgate_core::instance::{BackendKind, EvictionPolicy, Instance, InstanceStatus, ProvisionerKind};
use redisgate_core::org::{InvitationError, MAX_PENDING_INVITATIONS};
use redisgate_core::org::{Member, Organization, Role};
use redisgate_core::quota::{Limit, Plan, Quota};
use redisgate_core::ratelimit::Rate;
use redisgate_core::store::{
    Admission, InstanceChange, InstanceRecord, Invitee, NewApiKey, NewInstance, NewInstanceToken,
    NewInvitation, SecretHash, Store, StoreError, StoreResult,
};
use time::OffsetDateTime;
use time::macros::datetime;

pub use crate::backups::*;
pub use crate::changes::*;

type S = Arc<dyn Store>;

const GIB: u64 = 1024 * 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Fixtures.

fn email(s: &str) -> Email {
    Email::parse(s).expect("a valid test e-mail")
}

pub(crate) async fn user(store: &S, name: &str) -> User {
    store
        .create_user(&email(&format!("{name}@example.com")), "argon2-hash", Admission::Anyone)
        .await
        .expect("create_user")
}

/// A distinct 32-byte hash per call; v7 ids never repeat within a process.
fn hash() -> SecretHash {
    let mut h = [0u8; 32];
    h[..16].copy_from_slice(uuid::Uuid::now_v7().as_bytes());
    h[16..].copy_from_slice(uuid::Uuid::now_v7().as_bytes());
    h
}

/// Every instance of `org`, as one large page.
async fn instances_of(store: &S, org: OrgId) -> StoreResult<Vec<Instance>> {
    store.instances_page(org, None, 1000).await
}

/// Every API key of `org`, as one large page.
async fn keys_of(store: &S, org: OrgId) -> StoreResult<Vec<ApiKey>> {
    store.api_keys_page(org, None, 1000).await
}

pub(crate) fn quota(max_instances: u32, max_memory_bytes: u64, max_api_keys: u32) -> Quota {
    Quota { max_instances, max_memory_bytes, max_api_keys }
}

async fn org_with(store: &S, owner: UserId, q: Quota) -> Organization {
    let org = store.create_org("Acme", Plan::Free, owner, u32::MAX).await.expect("create_org");
    store.set_quota(org.id, q).await.expect("set_quota")
}

pub(crate) fn new_instance(org: OrgId, memory_bytes: u64) -> NewInstance {
    NewInstance {
        id: InstanceId::new(),
        org_id: org,
        name: "cache".to_owned(),
        provisioner: ProvisionerKind::Local,
        kind: BackendKind::Standalone,
        memory_bytes,
        eviction_policy: Default::default(),
        sealed_url: None,
        tls_ca_pem: None,
    }
}

pub(crate) fn new_key(org: OrgId) -> NewApiKey {
    NewApiKey {
        id: ApiKeyId::new(),
        org_id: org,
        name: "ci".to_owned(),
        scope: Scope::ReadWrite,
        instance_ids: None,
        rate_limit: None,
        expires_at: None,
        secret_hash: hash(),
        created_by: None,
    }
}

fn entry(org: Option<OrgId>, action: &str) -> NewAuditEntry {
    NewAuditEntry {
        org_id: org,
        actor_user_id: None,
        actor: "anonymous".to_owned(),
        action: action.to_owned(),
        target: None,
        ip: None,
        user_agent: None,
        outcome: Outcome::Success,
        detail: None,
    }
}

fn ids(entries: &[AuditEntry]) -> Vec<AuditId> {
    entries.iter().map(|e| e.id).collect()
}

/// Runs `n` copies of `f` at once and returns their results.
async fn race<T, F, Fut>(n: usize, f: F) -> Vec<Result<T, StoreError>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("task panicked"));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Users and sessions.

pub async fn ping_answers(store: S) {
    store.ping().await.unwrap();
}

pub async fn first_user_is_admin_later_ones_are_not(store: S) {
    assert_eq!(store.counts().await.unwrap().users, 0);
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    assert!(ann.is_admin);
    assert!(!bob.is_admin);
    assert_eq!(ann.email.as_str(), "ann@example.com");
    assert_eq!(store.user(ann.id).await.unwrap(), ann);
    assert_eq!(store.user(bob.id).await.unwrap(), bob);
    assert_eq!(store.counts().await.unwrap().users, 2);
}

pub async fn concurrent_first_sign_ups_make_exactly_one_admin(store: S) {
    let results = race(12, |i| {
        let store = store.clone();
        async move { store.create_user(&email(&format!("u{i}@example.com")), "h", Admission::Anyone).await }
    })
    .await;
    let users: Vec<User> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(users.iter().filter(|u| u.is_admin).count(), 1);
    assert_eq!(store.counts().await.unwrap().users, 12);
}

pub async fn duplicate_email_is_a_conflict(store: S) {
    user(&store, "ann").await;
    // Email::parse normalizes, so a differently-cased address is the same one.
    let again = store.create_user(&email(" ANN@Example.com "), "other", Admission::Anyone).await;
    assert_eq!(again, Err(StoreError::Conflict("email")));
    assert_eq!(store.counts().await.unwrap().users, 1);
}

pub async fn unknown_user_is_not_found(store: S) {
    assert_eq!(store.user(UserId::new()).await, Err(StoreError::NotFound));
}

pub async fn credentials_are_found_by_email(store: S) {
    let ann =
        store.create_user(&email("ann@example.com"), "$argon2id$v=19$abc", Admission::Anyone).await.unwrap();
    let creds = store.credentials(&email("ann@example.com")).await.unwrap().expect("credentials");
    assert_eq!(creds.user, ann);
    assert_eq!(creds.password_hash, "$argon2id$v=19$abc");
    assert!(store.credentials(&email("nobody@example.com")).await.unwrap().is_none());
}

pub async fn sessions_live_until_they_expire(store: S) {
    let ann = user(&store, "ann").await;
    let token = hash();
    let expires = datetime!(2030-01-01 00:00:00 UTC);
    store.create_session(&token, ann.id, expires).await.unwrap();
    let second = time::Duration::seconds(1);
    assert_eq!(store.session_user(&token, expires - second).await.unwrap(), Some(ann.clone()));
    // Expired means expires_at <= now: the instant of expiry is already too late.
    assert_eq!(store.session_user(&token, expires).await.unwrap(), None);
    assert_eq!(store.session_user(&token, expires + second).await.unwrap(), None);
    assert_eq!(store.session_user(&hash(), expires - second).await.unwrap(), None);
}

pub async fn revoked_sessions_are_dead(store: S) {
    let ann = user(&store, "ann").await;
    let now = OffsetDateTime::now_utc();
    let expires = now + time::Duration::hours(1);
    let (laptop, phone) = (hash(), hash());
    store.create_session(&laptop, ann.id, expires).await.unwrap();
    store.create_session(&phone, ann.id, expires).await.unwrap();
    store.revoke_session(&laptop).await.unwrap();
    assert_eq!(store.session_user(&laptop, now).await.unwrap(), None);
    assert_eq!(store.session_user(&phone, now).await.unwrap(), Some(ann));
    // Logging out twice, or with a token that never existed, is not an error.
    store.revoke_session(&laptop).await.unwrap();
    store.revoke_session(&hash()).await.unwrap();
    assert_eq!(store.session_user(&laptop, now).await.unwrap(), None);
}

pub async fn session_of_unknown_user_is_not_found(store: S) {
    let expires = OffsetDateTime::now_utc() + time::Duration::hours(1);
    assert_eq!(store.create_session(&hash(), UserId::new(), expires).await, Err(StoreError::NotFound));
}

// ---------------------------------------------------------------------------------------
// Organizations and members.

pub async fn create_org_applies_the_plan_quota_and_owner(store: S) {
    let ann = user(&store, "ann").await;
    for plan in [Plan::Free, Plan::Pro, Plan::Enterprise] {
        let org = store.create_org("Acme", plan, ann.id, u32::MAX).await.unwrap();
        assert_eq!(org.name, "Acme");
        assert_eq!(org.plan, plan);
        assert_eq!(org.quota, plan.default_quota());
        assert_eq!(store.org(org.id).await.unwrap(), org);
        assert_eq!(store.role_of(org.id, ann.id).await.unwrap(), Some(Role::Owner));
        let members = store.members(org.id).await.unwrap();
        assert_eq!(members.len(), 1);
        let m = &members[0];
        assert_eq!(
            (m.org_id, m.user_id, m.email.as_str(), m.role),
            (org.id, ann.id, "ann@example.com", Role::Owner)
        );
    }
}

pub async fn create_org_with_unknown_owner_is_not_found(store: S) {
    let ghost = UserId::new();
    assert_eq!(store.create_org("Ghost", Plan::Free, ghost, u32::MAX).await, Err(StoreError::NotFound));
    assert!(store.orgs_of(ghost).await.unwrap().is_empty());
}

pub async fn unknown_org_is_not_found(store: S) {
    let id = OrgId::new();
    assert_eq!(store.org(id).await, Err(StoreError::NotFound));
    assert_eq!(store.rename_org(id, "x").await, Err(StoreError::NotFound));
    assert_eq!(store.set_quota(id, quota(1, 1, 1)).await, Err(StoreError::NotFound));
    assert_eq!(store.delete_org(id).await, Err(StoreError::NotFound));
    // Listings of an unknown organization are empty rather than errors.
    assert!(store.members(id).await.unwrap().is_empty());
    assert!(instances_of(&store, id).await.unwrap().is_empty());
    assert!(keys_of(&store, id).await.unwrap().is_empty());
    assert_eq!(store.role_of(id, UserId::new()).await.unwrap(), None);
}

pub async fn orgs_of_lists_memberships_in_org_creation_order(store: S) {
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    let first = store.create_org("First", Plan::Free, ann.id, u32::MAX).await.unwrap();
    let second = store.create_org("Second", Plan::Pro, bob.id, u32::MAX).await.unwrap();
    let third = store.create_org("Third", Plan::Free, ann.id, u32::MAX).await.unwrap();
    // Joined last, listed by when the organization was created.
    store.add_member(second.id, ann.id, Role::Viewer).await.unwrap();
    assert_eq!(
        store.orgs_of(ann.id).await.unwrap(),
        vec![(first, Role::Owner), (second.clone(), Role::Viewer), (third, Role::Owner)]
    );
    assert_eq!(store.orgs_of(bob.id).await.unwrap(), vec![(second, Role::Owner)]);
    assert!(store.orgs_of(UserId::new()).await.unwrap().is_empty());
}

pub async fn rename_and_set_quota_return_the_updated_org(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let renamed = store.rename_org(org.id, "Acme Ltd").await.unwrap();
    assert_eq!(renamed, Organization { name: "Acme Ltd".to_owned(), ..org.clone() });
    assert_eq!(store.org(org.id).await.unwrap(), renamed);

    let q = quota(7, 5 << 40, 9);
    let updated = store.set_quota(org.id, q).await.unwrap();
    assert_eq!(updated, Organization { quota: q, ..renamed });
    assert_eq!(updated.plan, Plan::Pro, "a quota change leaves the plan alone");
    assert_eq!(store.org(org.id).await.unwrap(), updated);
}

pub async fn members_are_listed_in_join_order_with_emails(store: S) {
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    let cat = user(&store, "cat").await;
    let org = store.create_org("Acme", Plan::Free, ann.id, u32::MAX).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await;
    let b = store.add_member(org.id, bob.id, Role::Admin).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await;
    let c = store.add_member(org.id, cat.id, Role::Viewer).await.unwrap();
    assert_eq!(
        (b.org_id, b.user_id, b.email.as_str(), b.role),
        (org.id, bob.id, "bob@example.com", Role::Admin)
    );
    assert_eq!(c.email, "cat@example.com");
    let members = store.members(org.id).await.unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!((members[0].user_id, members[0].role), (ann.id, Role::Owner));
    assert_eq!(&members[1..], &[b, c]);
    assert!(members[0].joined_at <= members[1].joined_at && members[1].joined_at <= members[2].joined_at);
}

pub async fn add_member_rejects_duplicates_and_unknowns(store: S) {
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    let org = store.create_org("Acme", Plan::Free, ann.id, u32::MAX).await.unwrap();
    assert_eq!(store.add_member(org.id, ann.id, Role::Member).await, Err(StoreError::Conflict("member")));
    store.add_member(org.id, bob.id, Role::Member).await.unwrap();
    assert_eq!(store.add_member(org.id, bob.id, Role::Admin).await, Err(StoreError::Conflict("member")));
    assert_eq!(
        store.role_of(org.id, bob.id).await.unwrap(),
        Some(Role::Member),
        "a refused add changes nothing"
    );
    assert_eq!(store.add_member(org.id, UserId::new(), Role::Member).await, Err(StoreError::NotFound));
    assert_eq!(store.add_member(OrgId::new(), bob.id, Role::Member).await, Err(StoreError::NotFound));
}

pub async fn set_role_changes_a_members_role(store: S) {
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    let cat = user(&store, "cat").await;
    let org = store.create_org("Acme", Plan::Free, ann.id, u32::MAX).await.unwrap();
    let added = store.add_member(org.id, bob.id, Role::Member).await.unwrap();
    let changed = store.set_role(org.id, bob.id, Role::Admin).await.unwrap();
    assert_eq!(changed, Member { role: Role::Admin, ..added });
    assert_eq!(store.role_of(org.id, bob.id).await.unwrap(), Some(Role::Admin));
    assert_eq!(store.members(org.id).await.unwrap()[1], changed);
    // Promoting to owner needs no check; owner to owner is a no-op, even for the last one.
    assert_eq!(store.set_role(org.id, bob.id, Role::Owner).await.unwrap().role, Role::Owner);
    assert_eq!(store.set_role(org.id, ann.id, Role::Owner).await.unwrap().role, Role::Owner);
    assert_eq!(store.set_role(org.id, cat.id, Role::Admin).await, Err(StoreError::NotFound));
    assert_eq!(store.set_role(OrgId::new(), bob.id, Role::Admin).await, Err(StoreError::NotFound));
}

pub async fn last_owner_cannot_be_demoted(store: S) {
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    let org = store.create_org("Acme", Plan::Free, ann.id, u32::MAX).await.unwrap();
    for role in [Role::Admin, Role::Member, Role::Viewer] {
        assert_eq!(store.set_role(org.id, ann.id, role).await, Err(StoreError::LastOwner));
    }
    assert_eq!(store.role_of(org.id, ann.id).await.unwrap(), Some(Role::Owner));
    store.add_member(org.id, bob.id, Role::Owner).await.unwrap();
    store.set_role(org.id, ann.id, Role::Member).await.unwrap();
    assert_eq!(store.set_role(org.id, bob.id, Role::Viewer).await, Err(StoreError::LastOwner));
    assert_eq!(store.role_of(org.id, bob.id).await.unwrap(), Some(Role::Owner));
}

pub async fn last_owner_cannot_be_removed(store: S) {
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    let cat = user(&store, "cat").await;
    let org = store.create_org("Acme", Plan::Free, ann.id, u32::MAX).await.unwrap();
    assert_eq!(store.remove_member(org.id, ann.id).await, Err(StoreError::LastOwner));
    store.add_member(org.id, bob.id, Role::Admin).await.unwrap();
    store.remove_member(org.id, bob.id).await.unwrap();
    assert_eq!(store.role_of(org.id, bob.id).await.unwrap(), None);
    assert_eq!(store.remove_member(org.id, bob.id).await, Err(StoreError::NotFound));
    assert_eq!(store.remove_member(OrgId::new(), ann.id).await, Err(StoreError::NotFound));
    store.add_member(org.id, cat.id, Role::Owner).await.unwrap();
    store.remove_member(org.id, ann.id).await.unwrap();
    let members = store.members(org.id).await.unwrap();
    assert_eq!(members.iter().map(|m| (m.user_id, m.role)).collect::<Vec<_>>(), vec![(cat.id, Role::Owner)]);
    assert_eq!(store.remove_member(org.id, cat.id).await, Err(StoreError::LastOwner));
}

pub async fn concurrent_owner_changes_always_leave_an_owner(store: S) {
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    for round in 0..6 {
        let org = store.create_org("Acme", Plan::Free, ann.id, u32::MAX).await.unwrap();
        store.add_member(org.id, bob.id, Role::Owner).await.unwrap();
        // Each change alone is allowed; both together would leave no owner.
        let (s1, s2) = (store.clone(), store.clone());
        let demote = tokio::spawn(async move { s1.set_role(org.id, ann.id, Role::Admin).await.map(drop) });
        let remove = tokio::spawn(async move {
            if round % 2 == 0 {
                s2.remove_member(org.id, bob.id).await
            } else {
                s2.set_role(org.id, bob.id, Role::Viewer).await.map(drop)
            }
        });
        let results = [demote.await.unwrap(), remove.await.unwrap()];
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "round {round}: {results:?}");
        assert!(results.contains(&Err(StoreError::LastOwner)), "round {round}: {results:?}");
        let owners =
            store.members(org.id).await.unwrap().into_iter().filter(|m| m.role == Role::Owner).count();
        assert_eq!(owners, 1, "round {round}");
    }
}

pub async fn delete_org_removes_what_it_owns_but_not_audit(store: S) {
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    let org = store.create_org("Doomed", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let kept = store.create_org("Kept", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    store.add_member(org.id, bob.id, Role::Member).await.unwrap();
    let inst = store.create_instance(new_instance(org.id, GIB)).await.unwrap();
    let kept_inst = store.create_instance(new_instance(kept.id, GIB)).await.unwrap();
    let key = new_key(org.id);
    let key_hash = key.secret_hash;
    let key = store.create_api_key(key).await.unwrap();
    let kept_key = store.create_api_key(new_key(kept.id)).await.unwrap();
    store.append_audit(entry(Some(org.id), "org.delete")).await.unwrap();

    store.delete_org(org.id).await.unwrap();

    assert_eq!(store.org(org.id).await, Err(StoreError::NotFound));
    assert_eq!(store.role_of(org.id, ann.id).await.unwrap(), None);
    assert_eq!(store.role_of(org.id, bob.id).await.unwrap(), None);
    assert!(store.members(org.id).await.unwrap().is_empty());
    assert_eq!(store.orgs_of(ann.id).await.unwrap(), vec![(kept.clone(), Role::Owner)]);
    assert!(store.orgs_of(bob.id).await.unwrap().is_empty());
    assert_eq!(store.instance(inst.instance.id).await, Err(StoreError::NotFound));
    assert!(instances_of(&store, org.id).await.unwrap().is_empty());
    assert_eq!(store.all_instances().await.unwrap(), vec![kept_inst]);
    assert_eq!(store.api_key(key.id).await, Err(StoreError::NotFound));
    assert_eq!(store.api_key_by_hash(&key_hash).await.unwrap(), None);
    assert_eq!(keys_of(&store, kept.id).await.unwrap(), vec![kept_key]);
    let audit = store.audit_logs(org.id, &AuditQuery::default()).await.unwrap();
    assert_eq!(audit.len(), 1, "audit entries outlive their organization");
    assert_eq!(store.user(bob.id).await.unwrap(), bob, "users outlive their organizations");
    assert_eq!(store.delete_org(org.id).await, Err(StoreError::NotFound));
}

// ---------------------------------------------------------------------------------------
// Instances.

pub async fn new_instances_are_pending_and_round_trip(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let local = store.create_instance(new_instance(org.id, 64 << 20)).await.unwrap();
    assert_eq!(local.instance.status, InstanceStatus::Pending);
    assert_eq!(local.instance.status_reason, None);
    assert_eq!((local.sealed_url.as_ref(), local.tls_ca_pem.as_ref()), (None, None));
    assert_eq!((local.instance.org_id, local.instance.memory_bytes), (org.id, 64 << 20));
    assert_eq!(store.instance(local.instance.id).await.unwrap(), local);

    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_owned();
    for (sealed, tls_ca_pem) in [(vec![0u8, 1, 2, 0xfe, 0xff, 0], Some(ca)), (vec![], None)] {
        let new = NewInstance {
            name: "bring-your-own".to_owned(),
            provisioner: ProvisionerKind::External,
            sealed_url: Some(sealed.clone()),
            tls_ca_pem: tls_ca_pem.clone(),
            ..new_instance(org.id, 0)
        };
        let id = new.id;
        let external = store.create_instance(new).await.unwrap();
        assert_eq!(external.instance.id, id);
        assert_eq!(external.instance.provisioner, ProvisionerKind::External);
        assert_eq!(external.instance.name, "bring-your-own");
        assert_eq!(external.sealed_url.as_deref(), Some(&sealed[..]));
        assert_eq!(external.instance.kind, BackendKind::Standalone);
        assert_eq!(external.tls_ca_pem, tls_ca_pem);
        assert_eq!(store.instance(id).await.unwrap(), external);
    }
    // Sentinel and Cluster instances keep their kind; their sealed topology is just bytes.
    for kind in [BackendKind::Sentinel, BackendKind::Cluster] {
        let new = NewInstance {
            provisioner: ProvisionerKind::External,
            kind,
            sealed_url: Some(b"sealed topology".to_vec()),
            ..new_instance(org.id, 0)
        };
        let created = store.create_instance(new).await.unwrap();
        assert_eq!(created.instance.kind, kind);
        assert_eq!(store.instance(created.instance.id).await.unwrap(), created);
        let listed = instances_of(&store, org.id).await.unwrap();
        assert!(listed.iter().any(|i| i.id == created.instance.id && i.kind == kind), "{listed:?}");
    }
    assert_eq!(store.instance(local.instance.id).await.unwrap().instance.kind, BackendKind::Standalone);
}

pub async fn unknown_instance_is_not_found(store: S) {
    let id = InstanceId::new();
    assert_eq!(store.instance(id).await, Err(StoreError::NotFound));
    assert_eq!(store.set_instance_status(id, InstanceStatus::Running, None).await, Err(StoreError::NotFound));
    assert_eq!(store.delete_instance(id).await, Err(StoreError::NotFound));
}

pub async fn instance_in_unknown_org_is_not_found(store: S) {
    assert_eq!(store.create_instance(new_instance(OrgId::new(), 1)).await, Err(StoreError::NotFound));
    assert!(store.all_instances().await.unwrap().is_empty());
}

pub async fn instance_count_quota_is_enforced(store: S) {
    let ann = user(&store, "ann").await;
    let org = org_with(&store, ann.id, quota(2, GIB, 10)).await;
    let first = store.create_instance(new_instance(org.id, 1)).await.unwrap();
    store.create_instance(new_instance(org.id, 1)).await.unwrap();
    assert_eq!(
        store.create_instance(new_instance(org.id, 1)).await,
        Err(StoreError::QuotaExceeded(Limit::MaxInstances))
    );
    assert_eq!(instances_of(&store, org.id).await.unwrap().len(), 2);
    // Deleting frees the slot.
    store.delete_instance(first.instance.id).await.unwrap();
    store.create_instance(new_instance(org.id, 1)).await.unwrap();

    let none = org_with(&store, ann.id, quota(0, GIB, 10)).await;
    assert_eq!(
        store.create_instance(new_instance(none.id, 1)).await,
        Err(StoreError::QuotaExceeded(Limit::MaxInstances))
    );
}

pub async fn instance_memory_quota_is_enforced(store: S) {
    let ann = user(&store, "ann").await;
    let org = org_with(&store, ann.id, quota(10, 1000, 10)).await;
    store.create_instance(new_instance(org.id, 600)).await.unwrap();
    assert_eq!(
        store.create_instance(new_instance(org.id, 401)).await,
        Err(StoreError::QuotaExceeded(Limit::MaxMemoryBytes))
    );
    // Up to the limit exactly is allowed.
    store.create_instance(new_instance(org.id, 400)).await.unwrap();
    assert_eq!(
        store.create_instance(new_instance(org.id, 1)).await,
        Err(StoreError::QuotaExceeded(Limit::MaxMemoryBytes))
    );
    store.create_instance(new_instance(org.id, 0)).await.unwrap();
    // A size near u64::MAX must not wrap around the sum and slip under the limit.
    assert_eq!(
        store.create_instance(new_instance(org.id, u64::MAX)).await,
        Err(StoreError::QuotaExceeded(Limit::MaxMemoryBytes))
    );
    assert_eq!(instances_of(&store, org.id).await.unwrap().iter().map(|i| i.memory_bytes).sum::<u64>(), 1000);

    // The count is checked first when both limits would break.
    let full = org_with(&store, ann.id, quota(1, 100, 10)).await;
    store.create_instance(new_instance(full.id, 100)).await.unwrap();
    assert_eq!(
        store.create_instance(new_instance(full.id, 50)).await,
        Err(StoreError::QuotaExceeded(Limit::MaxInstances))
    );
}

pub async fn lowering_a_quota_blocks_new_creates_only(store: S) {
    let ann = user(&store, "ann").await;
    let org = org_with(&store, ann.id, quota(5, GIB, 5)).await;
    for _ in 0..3 {
        store.create_instance(new_instance(org.id, 1)).await.unwrap();
        store.create_api_key(new_key(org.id)).await.unwrap();
    }
    store.set_quota(org.id, quota(2, GIB, 2)).await.unwrap();
    assert_eq!(instances_of(&store, org.id).await.unwrap().len(), 3);
    assert_eq!(keys_of(&store, org.id).await.unwrap().len(), 3);
    assert_eq!(
        store.create_instance(new_instance(org.id, 1)).await,
        Err(StoreError::QuotaExceeded(Limit::MaxInstances))
    );
    assert_eq!(
        store.create_api_key(new_key(org.id)).await,
        Err(StoreError::QuotaExceeded(Limit::MaxApiKeys))
    );
}

pub async fn concurrent_instance_creates_never_exceed_the_count(store: S) {
    let ann = user(&store, "ann").await;
    let org = org_with(&store, ann.id, quota(5, GIB, 10)).await;
    let results = race(20, |_| {
        let store = store.clone();
        async move { store.create_instance(new_instance(org.id, 1)).await }
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
    let refused =
        results.iter().filter(|r| **r == Err(StoreError::QuotaExceeded(Limit::MaxInstances))).count();
    assert_eq!(refused, 15, "{results:?}");
    assert_eq!(instances_of(&store, org.id).await.unwrap().len(), 5);
}

pub async fn concurrent_instance_creates_never_exceed_memory(store: S) {
    let ann = user(&store, "ann").await;
    let org = org_with(&store, ann.id, quota(100, 550, 10)).await;
    let results = race(20, |_| {
        let store = store.clone();
        async move { store.create_instance(new_instance(org.id, 100)).await }
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
    let refused =
        results.iter().filter(|r| **r == Err(StoreError::QuotaExceeded(Limit::MaxMemoryBytes))).count();
    assert_eq!(refused, 15, "{results:?}");
    assert_eq!(instances_of(&store, org.id).await.unwrap().iter().map(|i| i.memory_bytes).sum::<u64>(), 500);
}

pub async fn instance_status_updates_and_deletes(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let rec = store.create_instance(new_instance(org.id, GIB)).await.unwrap();
    let id = rec.instance.id;
    let status = |s: InstanceRecord| (s.instance.status, s.instance.status_reason);

    store.set_instance_status(id, InstanceStatus::Running, None).await.unwrap();
    assert_eq!(status(store.instance(id).await.unwrap()), (InstanceStatus::Running, None));
    store.set_instance_status(id, InstanceStatus::Error, Some("port 6379 in use")).await.unwrap();
    assert_eq!(
        status(store.instance(id).await.unwrap()),
        (InstanceStatus::Error, Some("port 6379 in use".to_owned()))
    );
    // A new status without a reason clears the old reason.
    store.set_instance_status(id, InstanceStatus::Stopped, None).await.unwrap();
    let after = store.instance(id).await.unwrap();
    assert_eq!(status(after.clone()), (InstanceStatus::Stopped, None));
    assert_eq!(after.instance.created_at, rec.instance.created_at);
    assert_eq!(after.instance.name, rec.instance.name);

    store.delete_instance(id).await.unwrap();
    assert_eq!(store.instance(id).await, Err(StoreError::NotFound));
    assert_eq!(store.delete_instance(id).await, Err(StoreError::NotFound));
}

pub async fn instances_are_listed_per_org_and_overall(store: S) {
    let ann = user(&store, "ann").await;
    let a = store.create_org("A", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let b = store.create_org("B", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let a1 = store.create_instance(new_instance(a.id, 1)).await.unwrap();
    let b1 = store
        .create_instance(NewInstance {
            provisioner: ProvisionerKind::External,
            sealed_url: Some(b"sealed".to_vec()),
            ..new_instance(b.id, 2)
        })
        .await
        .unwrap();
    let a2 = store.create_instance(new_instance(a.id, 3)).await.unwrap();
    assert_eq!(instances_of(&store, a.id).await.unwrap(), vec![a1.instance.clone(), a2.instance.clone()]);
    assert_eq!(instances_of(&store, b.id).await.unwrap(), vec![b1.instance.clone()]);
    let mut everything = store.all_instances().await.unwrap();
    everything.sort_by_key(|r| r.instance.id);
    let mut expected = vec![a1, b1, a2];
    expected.sort_by_key(|r| r.instance.id);
    assert_eq!(everything, expected, "all_instances carries the sealed URLs too");
}

// ---------------------------------------------------------------------------------------
// API keys.

pub async fn api_keys_round_trip_their_optional_fields(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let i1 = store.create_instance(new_instance(org.id, 1)).await.unwrap().instance.id;
    let i2 = store.create_instance(new_instance(org.id, 1)).await.unwrap().instance.id;
    let rate = Some(Rate { per_second: 7, burst: 21 });
    let variants = [
        (Scope::ReadOnly, None, None, None, None),
        (Scope::Admin, Some(vec![]), Some(datetime!(2031-02-03 04:05:06 UTC)), Some(ann.id), rate),
        (Scope::ReadWrite, Some(vec![i2, i1]), Some(datetime!(2031-02-03 04:05:06.123456 UTC)), None, None),
    ];
    for (scope, instance_ids, expires_at, created_by, rate_limit) in variants {
        let new = NewApiKey {
            name: format!("key {}", scope.as_str()),
            scope,
            instance_ids: instance_ids.clone(),
            rate_limit,
            expires_at,
            created_by,
            ..new_key(org.id)
        };
        let (id, secret_hash) = (new.id, new.secret_hash);
        let key = store.create_api_key(new).await.unwrap();
        assert_eq!(key.id, id);
        assert_eq!(key.org_id, org.id);
        assert_eq!(key.name, format!("key {}", scope.as_str()));
        assert_eq!(key.scope, scope);
        assert_eq!(key.instance_ids, instance_ids, "None, empty and a list are three different things");
        assert_eq!(key.expires_at, expires_at);
        assert_eq!(key.rate_limit, rate_limit);
        assert_eq!((key.revoked_at, key.last_used_at), (None, None));
        assert_eq!(store.api_key(id).await.unwrap(), key);
        assert_eq!(store.api_key_by_hash(&secret_hash).await.unwrap(), Some(key));
    }
}

pub async fn a_keys_own_rate_is_changed_and_cleared(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let key = store.create_api_key(new_key(org.id)).await.unwrap();
    let rate = Rate { per_second: 3, burst: 9 };
    let set = store.set_api_key_rate_limit(key.id, Some(rate)).await.unwrap();
    assert_eq!(set, ApiKey { rate_limit: Some(rate), ..key.clone() });
    assert_eq!(store.api_key(key.id).await.unwrap(), set);
    assert_eq!(store.set_api_key_rate_limit(key.id, None).await.unwrap(), key);
    assert_eq!(store.set_api_key_rate_limit(ApiKeyId::new(), Some(rate)).await, Err(StoreError::NotFound));
}

pub async fn unknown_api_key_is_not_found(store: S) {
    let id = ApiKeyId::new();
    assert_eq!(store.api_key(id).await, Err(StoreError::NotFound));
    assert_eq!(store.api_key_by_hash(&hash()).await.unwrap(), None);
    assert_eq!(store.revoke_api_key(id, OffsetDateTime::now_utc()).await, Err(StoreError::NotFound));
    assert_eq!(store.create_api_key(new_key(OrgId::new())).await, Err(StoreError::NotFound));
}

pub async fn api_key_quota_counts_only_unrevoked_keys(store: S) {
    let ann = user(&store, "ann").await;
    let org = org_with(&store, ann.id, quota(10, GIB, 2)).await;
    let first = store.create_api_key(new_key(org.id)).await.unwrap();
    store.create_api_key(new_key(org.id)).await.unwrap();
    let over = Err(StoreError::QuotaExceeded(Limit::MaxApiKeys));
    assert_eq!(store.create_api_key(new_key(org.id)).await, over);
    store.revoke_api_key(first.id, OffsetDateTime::now_utc()).await.unwrap();
    store.create_api_key(new_key(org.id)).await.unwrap();
    assert_eq!(store.create_api_key(new_key(org.id)).await, over);
    assert_eq!(keys_of(&store, org.id).await.unwrap().len(), 3, "revoked keys are still listed");

    // Expired but unrevoked keys still count: only revocation frees a slot.
    let small = org_with(&store, ann.id, quota(10, GIB, 1)).await;
    let past = Some(datetime!(2020-01-01 00:00:00 UTC));
    store.create_api_key(NewApiKey { expires_at: past, ..new_key(small.id) }).await.unwrap();
    assert_eq!(store.create_api_key(new_key(small.id)).await, over);
}

pub async fn concurrent_api_key_creates_never_exceed_the_quota(store: S) {
    let ann = user(&store, "ann").await;
    let org = org_with(&store, ann.id, quota(10, GIB, 5)).await;
    let results = race(20, |_| {
        let store = store.clone();
        async move { store.create_api_key(new_key(org.id)).await }
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
    let refused = results.iter().filter(|r| **r == Err(StoreError::QuotaExceeded(Limit::MaxApiKeys))).count();
    assert_eq!(refused, 15, "{results:?}");
    assert_eq!(keys_of(&store, org.id).await.unwrap().len(), 5);
}

pub async fn revoking_is_idempotent_and_keeps_the_first_time(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let new = new_key(org.id);
    let secret_hash = new.secret_hash;
    let key = store.create_api_key(new).await.unwrap();
    let first = datetime!(2030-05-01 10:00:00 UTC);
    let revoked = store.revoke_api_key(key.id, first).await.unwrap();
    assert_eq!(revoked, ApiKey { revoked_at: Some(first), ..key.clone() });
    assert!(!revoked.is_active(first));
    let again = store.revoke_api_key(key.id, first + time::Duration::hours(1)).await.unwrap();
    assert_eq!(again.revoked_at, Some(first));
    assert_eq!(store.api_key(key.id).await.unwrap(), revoked);
    // Lookup by hash still finds a revoked key: the caller decides, and can say why.
    assert_eq!(store.api_key_by_hash(&secret_hash).await.unwrap(), Some(revoked));
}

pub async fn touch_only_moves_last_use_forward(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let k1 = store.create_api_key(new_key(org.id)).await.unwrap().id;
    let k2 = store.create_api_key(new_key(org.id)).await.unwrap().id;
    let t0 = datetime!(2030-01-01 00:00:00 UTC);
    let at = |s: i64| t0 + time::Duration::seconds(s);
    let last_used = |id| {
        let store = store.clone();
        async move { store.api_key(id).await.unwrap().last_used_at }
    };

    store.touch_api_keys(&[]).await.unwrap();
    store.touch_api_keys(&[(k1, at(10)), (k2, at(5))]).await.unwrap();
    assert_eq!((last_used(k1).await, last_used(k2).await), (Some(at(10)), Some(at(5))));
    // A late batch with an older time does not move it back.
    store.touch_api_keys(&[(k1, at(3))]).await.unwrap();
    assert_eq!(last_used(k1).await, Some(at(10)));
    // Within one batch the latest wins whatever the order; unknown (deleted) keys are skipped.
    store.touch_api_keys(&[(k2, at(7)), (ApiKeyId::new(), at(8)), (k2, at(6)), (k1, at(20))]).await.unwrap();
    assert_eq!((last_used(k1).await, last_used(k2).await), (Some(at(20)), Some(at(7))));
}

pub async fn duplicate_secret_hash_is_a_conflict(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let first = new_key(org.id);
    let twin = NewApiKey { id: ApiKeyId::new(), ..first.clone() };
    store.create_api_key(first).await.unwrap();
    assert!(matches!(store.create_api_key(twin).await, Err(StoreError::Conflict(_))));
    assert_eq!(keys_of(&store, org.id).await.unwrap().len(), 1);
}

pub async fn api_keys_are_listed_per_org_in_creation_order(store: S) {
    let ann = user(&store, "ann").await;
    let a = store.create_org("A", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let b = store.create_org("B", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let a1 = store.create_api_key(new_key(a.id)).await.unwrap();
    let b1 = store.create_api_key(new_key(b.id)).await.unwrap();
    let a2 = store.create_api_key(new_key(a.id)).await.unwrap();
    let a1 = store.revoke_api_key(a1.id, datetime!(2030-01-01 00:00:00 UTC)).await.unwrap();
    assert_eq!(keys_of(&store, a.id).await.unwrap(), vec![a1, a2]);
    assert_eq!(keys_of(&store, b.id).await.unwrap(), vec![b1]);
}

/// Walks `org`'s instances `limit` at a time; `between(pages so far)` runs after each full page.
async fn walk_instances(
    store: &S,
    org: OrgId,
    limit: u32,
    mut between: impl AsyncFnMut(usize),
) -> Vec<Vec<InstanceId>> {
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page: Vec<InstanceId> =
            store.instances_page(org, after, limit).await.unwrap().iter().map(|i| i.id).collect();
        let full = page.len() == limit as usize;
        after = page.last().copied();
        pages.push(page);
        if !full {
            return pages;
        }
        between(pages.len()).await;
    }
}

pub async fn instances_are_paged_by_id_after_a_cursor(store: S) {
    let ann = user(&store, "ann").await;
    let a = org_with(&store, ann.id, quota(100, 100 * GIB, 100)).await;
    let b = org_with(&store, ann.id, quota(100, 100 * GIB, 100)).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(store.create_instance(new_instance(a.id, 1)).await.unwrap().instance.id);
        if i % 3 == 0 {
            store.create_instance(new_instance(b.id, 1)).await.unwrap();
        }
    }
    ids.sort();
    let pages = walk_instances(&store, a.id, 3, async |_| {}).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), ids, "every instance once, by id, none of the other organization");
    // A page of exactly `limit` rows ends the walk with an empty one.
    let pages = walk_instances(&store, a.id, 7, async |_| {}).await;
    assert_eq!((pages[0].len(), pages[1].len()), (7, 0));
    // The cursor is a position, not a row: another organization's id, a deleted instance's or
    // one that never existed still pages this organization's instances after it.
    let b_first = instances_of(&store, b.id).await.unwrap()[0].id;
    let after_b = store.instances_page(a.id, Some(b_first), 100).await.unwrap();
    assert!(after_b.iter().all(|i| i.org_id == a.id && i.id > b_first));
    store.delete_instance(ids[2]).await.unwrap();
    let after_deleted: Vec<_> =
        store.instances_page(a.id, Some(ids[2]), 2).await.unwrap().iter().map(|i| i.id).collect();
    assert_eq!(after_deleted, ids[3..5]);
    assert!(store.instances_page(a.id, Some(InstanceId(uuid::Uuid::max())), 10).await.unwrap().is_empty());
}

pub async fn instance_pages_see_every_lasting_row_once_while_rows_come_and_go(store: S) {
    let ann = user(&store, "ann").await;
    let org = org_with(&store, ann.id, quota(100, 100 * GIB, 100)).await;
    let mut lasting = Vec::new();
    for _ in 0..9 {
        lasting.push(store.create_instance(new_instance(org.id, 1)).await.unwrap().instance.id);
    }
    let doomed = lasting.remove(4);
    let mut created = Vec::new();
    let pages = walk_instances(&store, org.id, 3, async |n| {
        if n == 1 {
            // A row of the next page goes, and a new one comes (after every existing id).
            store.delete_instance(doomed).await.unwrap();
            created.push(store.create_instance(new_instance(org.id, 1)).await.unwrap().instance.id);
        }
    })
    .await;
    let seen = pages.concat();
    for id in &lasting {
        assert_eq!(seen.iter().filter(|s| *s == id).count(), 1, "{id} exactly once");
    }
    assert!(!seen.contains(&doomed));
    assert_eq!(seen.last(), created.last(), "a row created mid-walk after the cursor is seen");
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

pub async fn api_key_pages_hold_revoked_keys_but_no_instance_tokens(store: S) {
    let ann = user(&store, "ann").await;
    let a = org_with(&store, ann.id, quota(10, GIB, 100)).await;
    let b = org_with(&store, ann.id, quota(10, GIB, 100)).await;
    let inst = store.create_instance(new_instance(a.id, 1)).await.unwrap().instance.id;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(store.create_api_key(new_key(a.id)).await.unwrap().id);
        if i == 2 {
            let tokens = TokenKind::BOTH.map(|k| new_token(a.id, inst, k)).to_vec();
            store.replace_instance_tokens(inst, tokens).await.unwrap();
            store.create_api_key(new_key(b.id)).await.unwrap();
        }
    }
    let first: Vec<_> = store.api_keys_page(a.id, None, 2).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(first, ids[..2]);
    // Mid-walk: a key of the next page is revoked (it stays listed) and a new one is made.
    store.revoke_api_key(ids[2], datetime!(2030-01-01 00:00:00 UTC)).await.unwrap();
    ids.push(store.create_api_key(new_key(a.id)).await.unwrap().id);
    let rest = store.api_keys_page(a.id, Some(ids[1]), 100).await.unwrap();
    assert_eq!(rest.iter().map(|k| k.id).collect::<Vec<_>>(), ids[2..]);
    assert!(rest[0].revoked_at.is_some());
    assert!(rest.iter().all(|k| k.org_id == a.id));
    assert_eq!(store.api_keys_page(a.id, Some(ids[5]), 100).await.unwrap(), vec![]);
    assert_eq!(keys_of(&store, b.id).await.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------
// Audit.

pub async fn audit_is_newest_first_and_per_org(store: S) {
    let ann = user(&store, "ann").await;
    let a = store.create_org("A", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let b = store.create_org("B", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let full = NewAuditEntry {
        org_id: Some(a.id),
        actor_user_id: Some(ann.id),
        actor: "ann@example.com".to_owned(),
        action: "instance.create".to_owned(),
        target: Some("cache".to_owned()),
        ip: Some("203.0.113.7".to_owned()),
        user_agent: Some("curl/8.5".to_owned()),
        outcome: Outcome::Denied,
        detail: Some("quota".to_owned()),
    };
    let before = OffsetDateTime::now_utc() - time::Duration::seconds(5);
    store.append_audit(full.clone()).await.unwrap();
    store.append_audit(entry(Some(b.id), "org.rename")).await.unwrap();
    store.append_audit(entry(None, "auth.login")).await.unwrap();
    store.append_audit(entry(Some(a.id), "key.create")).await.unwrap();
    store.append_audit(entry(Some(a.id), "key.revoke")).await.unwrap();

    let listed = store.audit_logs(a.id, &AuditQuery::default()).await.unwrap();
    let actions: Vec<_> = listed.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.revoke", "key.create", "instance.create"]);
    let e = &listed[2];
    assert_eq!(
        (&e.org_id, &e.actor_user_id, &e.actor, &e.target, &e.ip, &e.user_agent, e.outcome, &e.detail),
        (
            &full.org_id,
            &full.actor_user_id,
            &full.actor,
            &full.target,
            &full.ip,
            &full.user_agent,
            full.outcome,
            &full.detail
        )
    );
    assert!(e.created_at > before && e.created_at < OffsetDateTime::now_utc() + time::Duration::seconds(5));
    let ids: BTreeSet<_> = listed.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 3, "every entry has its own id");
    assert_eq!(listed[1].org_id, Some(a.id));
    assert_eq!(listed[1].actor_user_id, None);

    let other = store.audit_logs(b.id, &AuditQuery::default()).await.unwrap();
    assert_eq!(other.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["org.rename"]);
}

pub async fn audit_prune_removes_old_entries_in_batches_and_keeps_new_ones(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    for action in ["old.1", "old.2", "old.3"] {
        store.append_audit(entry(Some(org.id), action)).await.unwrap();
    }
    store.append_audit(entry(None, "old.deployment")).await.unwrap();
    let all = AuditQuery { limit: 100, ..AuditQuery::default() };
    let newest_old = store.audit_logs(org.id, &all).await.unwrap()[0].created_at;
    // Stores keep microseconds: wait (without sleeping) until the clock has moved past them.
    while OffsetDateTime::now_utc() <= newest_old + time::Duration::milliseconds(1) {
        tokio::task::yield_now().await;
    }
    let cutoff = OffsetDateTime::now_utc();
    store.append_audit(entry(Some(org.id), "new")).await.unwrap();
    store.append_audit(entry(None, "new.deployment")).await.unwrap();

    // Nothing is older than a cutoff before every entry.
    assert_eq!(store.prune_audit(cutoff - time::Duration::days(1), 10).await.unwrap(), 0);
    // Batches: at most `limit` at a time, oldest first, across organizations.
    assert_eq!(store.prune_audit(cutoff, 2).await.unwrap(), 2);
    let left: Vec<_> = store.audit_logs(org.id, &all).await.unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(left, ["new", "old.3"]);
    assert_eq!(store.prune_audit(cutoff, 10).await.unwrap(), 2);
    assert_eq!(store.prune_audit(cutoff, 10).await.unwrap(), 0, "nothing old is left");
    let left: Vec<_> = store.audit_logs(org.id, &all).await.unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(left, ["new"]);
    let deployment: Vec<_> =
        store.deployment_audit_logs(&all).await.unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(deployment, ["new.deployment"]);
}

pub async fn audit_filters_by_action_actor_and_outcome(store: S) {
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    let rows = [
        (Some(ann.id), "instance.create", Outcome::Success),
        (Some(bob.id), "instance.create", Outcome::Failure),
        (Some(ann.id), "key.create", Outcome::Denied),
        (None, "auth.login", Outcome::Failure),
    ];
    for (actor_user_id, action, outcome) in rows {
        store
            .append_audit(NewAuditEntry { actor_user_id, outcome, ..entry(Some(org.id), action) })
            .await
            .unwrap();
    }
    let count = |q: AuditQuery| {
        let store = store.clone();
        async move { store.audit_logs(org.id, &q).await.unwrap() }
    };
    let by_action = count(AuditQuery { action: Some("instance.create".into()), ..Default::default() }).await;
    assert_eq!(by_action.len(), 2);
    assert!(by_action.iter().all(|e| e.action == "instance.create"));
    let by_actor = count(AuditQuery { actor_user_id: Some(ann.id), ..Default::default() }).await;
    assert_eq!(
        by_actor.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["key.create", "instance.create"]
    );
    let failures = count(AuditQuery { outcome: Some(Outcome::Failure), ..Default::default() }).await;
    assert_eq!(
        failures.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["auth.login", "instance.create"]
    );
    let combined = count(AuditQuery {
        action: Some("instance.create".into()),
        outcome: Some(Outcome::Failure),
        ..Default::default()
    })
    .await;
    assert_eq!(combined.iter().map(|e| e.actor_user_id).collect::<Vec<_>>(), [Some(bob.id)]);
    let nothing = count(AuditQuery {
        actor_user_id: Some(bob.id),
        action: Some("key.create".into()),
        ..Default::default()
    })
    .await;
    assert!(nothing.is_empty());
}

pub async fn audit_time_window_is_since_inclusive_until_exclusive(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    for i in 0..5 {
        store.append_audit(entry(Some(org.id), &format!("step.{i}"))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut all = store.audit_logs(org.id, &AuditQuery::default()).await.unwrap();
    all.reverse();
    let t: Vec<_> = all.iter().map(|e| e.created_at).collect();
    assert!(t.windows(2).all(|w| w[0] < w[1]), "entries 3 ms apart have distinct times: {t:?}");
    let window = |since, until| {
        let store = store.clone();
        async move {
            let q = AuditQuery { since, until, ..Default::default() };
            let mut got = store.audit_logs(org.id, &q).await.unwrap();
            got.reverse();
            got.into_iter().map(|e| e.action).collect::<Vec<_>>()
        }
    };
    assert_eq!(window(Some(t[1]), None).await, ["step.1", "step.2", "step.3", "step.4"]);
    assert_eq!(window(None, Some(t[3])).await, ["step.0", "step.1", "step.2"]);
    assert_eq!(window(Some(t[1]), Some(t[3])).await, ["step.1", "step.2"]);
    assert!(window(Some(t[2]), Some(t[2])).await.is_empty());
}

pub async fn audit_pages_backwards_with_a_cursor(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    // No pauses: entries may share a timestamp, and the id must still order them.
    for i in 0..10 {
        let action = if i % 2 == 0 { "even" } else { "odd" };
        store
            .append_audit(NewAuditEntry { detail: Some(i.to_string()), ..entry(Some(org.id), action) })
            .await
            .unwrap();
    }
    let everything = store.audit_logs(org.id, &AuditQuery::default()).await.unwrap();
    let details: Vec<_> = everything.iter().map(|e| e.detail.clone().unwrap()).collect();
    assert_eq!(details, ["9", "8", "7", "6", "5", "4", "3", "2", "1", "0"]);

    let mut walked = Vec::new();
    let mut before = None;
    let mut sizes = Vec::new();
    loop {
        let page =
            store.audit_logs(org.id, &AuditQuery { before, limit: 3, ..Default::default() }).await.unwrap();
        if page.is_empty() {
            break;
        }
        sizes.push(page.len());
        before = page.last().map(|e| e.id);
        walked.extend(page);
        assert!(sizes.len() < 10, "the cursor must make progress");
    }
    assert_eq!(sizes, [3, 3, 3, 1]);
    assert_eq!(ids(&walked), ids(&everything));

    // The cursor combines with filters.
    let q = AuditQuery { action: Some("odd".into()), before: Some(everything[2].id), ..Default::default() };
    let odd: Vec<_> = store
        .audit_logs(org.id, &q)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.detail.unwrap())
        .collect::<Vec<_>>();
    assert_eq!(odd, ["5", "3", "1"]);

    let unknown = AuditQuery { before: Some(AuditId::new()), ..Default::default() };
    assert!(store.audit_logs(org.id, &unknown).await.unwrap().is_empty(), "an unknown cursor yields nothing");
}

pub async fn audit_limit_defaults_to_50_and_is_capped_at_500(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    for _ in 0..510 {
        store.append_audit(entry(Some(org.id), "bulk")).await.unwrap();
    }
    let len = |limit| {
        let store = store.clone();
        async move { store.audit_logs(org.id, &AuditQuery { limit, ..Default::default() }).await.unwrap().len() }
    };
    assert_eq!(len(0).await, 50);
    assert_eq!(len(7).await, 7);
    assert_eq!(len(500).await, 500);
    assert_eq!(len(1000).await, 500);
    assert_eq!(len(u32::MAX).await, 500);
}

// ---------------------------------------------------------------------------------------
// Time.

pub async fn timestamps_round_trip(store: S) {
    let ann = user(&store, "ann").await;
    let now = OffsetDateTime::now_utc();
    assert!((ann.created_at - now).abs() < time::Duration::seconds(5), "created_at is the current time");
    assert_eq!(
        store.user(ann.id).await.unwrap().created_at,
        ann.created_at,
        "what is returned is what is stored"
    );

    let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    assert_eq!(store.org(org.id).await.unwrap().created_at, org.created_at);
    let member = &store.members(org.id).await.unwrap()[0];
    assert!((member.joined_at - now).abs() < time::Duration::seconds(5));
    let inst = store.create_instance(new_instance(org.id, 1)).await.unwrap();
    assert_eq!(store.instance(inst.instance.id).await.unwrap().instance.created_at, inst.instance.created_at);

    // Another offset is the same instant; sub-microsecond digits may be lost, whole seconds
    // never are.
    let cases = [
        datetime!(2031-06-07 08:09:10 +02:00),
        datetime!(2031-06-07 08:09:10.5 -07:30),
        datetime!(1999-12-31 23:59:59.999999 UTC),
        datetime!(2031-01-01 00:00:00.123456789 UTC),
    ];
    for expires in cases {
        let key =
            store.create_api_key(NewApiKey { expires_at: Some(expires), ..new_key(org.id) }).await.unwrap();
        let read = store.api_key(key.id).await.unwrap();
        assert_eq!(read, key, "what is returned is what is stored");
        let read = read.expires_at.unwrap();
        assert!((read - expires).abs() < time::Duration::microseconds(1), "{expires} came back as {read}");
        assert_eq!(read.unix_timestamp(), expires.unix_timestamp());
    }
}

// ---------------------------------------------------------------------------------------
// Plan rate limits.

pub async fn plan_rates_are_set_replaced_and_cleared(store: S) {
    assert_eq!(store.plan_rates().await.unwrap(), []);
    store.set_plan_rate(Plan::Pro, Some(Rate { per_second: 500, burst: 50 })).await.unwrap();
    store.set_plan_rate(Plan::Free, Some(Rate { per_second: 10, burst: 10 })).await.unwrap();
    store.set_plan_rate(Plan::Pro, Some(Rate { per_second: 1000, burst: 100 })).await.unwrap();
    let mut rates = store.plan_rates().await.unwrap();
    rates.sort_by_key(|(p, _)| p.as_str());
    assert_eq!(
        rates,
        [
            (Plan::Free, Rate { per_second: 10, burst: 10 }),
            (Plan::Pro, Rate { per_second: 1000, burst: 100 })
        ]
    );
    store.set_plan_rate(Plan::Free, None).await.unwrap();
    store.set_plan_rate(Plan::Enterprise, None).await.unwrap();
    assert_eq!(store.plan_rates().await.unwrap(), [(Plan::Pro, Rate { per_second: 1000, burst: 100 })]);
}

// ---------------------------------------------------------------------------------------
// Abuse limits: registration, organizations per user, invitations.

pub async fn first_user_only_admits_exactly_one_even_when_racing(store: S) {
    let results =
        race(8, |i| {
            let store = store.clone();
            async move {
                store.create_user(&email(&format!("u{i}@example.com")), "h", Admission::FirstUserOnly).await
            }
        })
        .await;
    let (ok, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!(ok.len(), 1, "{refused:?}");
    assert!(ok[0].as_ref().unwrap().is_admin);
    assert!(refused.iter().all(|r| r == &Err(StoreError::RegistrationClosed)), "{refused:?}");
    // Open admission still works afterwards.
    assert!(!user(&store, "later").await.is_admin);
    assert_eq!(store.counts().await.unwrap().users, 2);
}

pub async fn owned_organizations_are_capped_even_when_racing(store: S) {
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    let results = race(10, |i| {
        let store = store.clone();
        async move { store.create_org(&format!("org{i}"), Plan::Free, ann.id, 3).await }
    })
    .await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 3, "{results:?}");
    assert!(
        results
            .iter()
            .filter(|r| r.is_err())
            .all(|r| r == &Err(StoreError::QuotaExceeded(Limit::MaxOrganizations))),
        "{results:?}"
    );
    // Being a member (not an owner) elsewhere does not count; another user has their own cap.
    let theirs = store.create_org("Bob's", Plan::Free, bob.id, 3).await.unwrap();
    store.add_member(theirs.id, ann.id, Role::Admin).await.unwrap();
    assert_eq!(
        store.create_org("fourth", Plan::Free, ann.id, 3).await,
        Err(StoreError::QuotaExceeded(Limit::MaxOrganizations))
    );
    assert_eq!(store.orgs_of(ann.id).await.unwrap().len(), 4);
    // Deleting one frees a slot.
    let first = store.orgs_of(ann.id).await.unwrap()[0].0.id;
    store.delete_org(first).await.unwrap();
    store.create_org("again", Plan::Free, ann.id, 3).await.unwrap();
}

fn invitation(
    org: OrgId,
    to: &str,
    role: Role,
    by: UserId,
    ttl: time::Duration,
) -> (NewInvitation, SecretHash) {
    let token_hash = hash();
    let new = NewInvitation {
        org_id: org,
        email: email(to),
        role,
        invited_by: by,
        expires_at: OffsetDateTime::now_utc() + ttl,
        token_hash,
    };
    (new, token_hash)
}

pub async fn invitations_are_single_use_and_only_for_their_address(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Free, ann.id, 3).await.unwrap();
    let (new, token) = invitation(org.id, "bob@example.com", Role::Member, ann.id, time::Duration::hours(1));
    let inv = store.create_invitation(new).await.unwrap();
    assert_eq!(inv.invited_by, Some(ann.id));
    assert_eq!(store.invitations(org.id, OffsetDateTime::now_utc()).await.unwrap(), vec![inv.clone()]);
    assert_eq!(store.invitation_by_hash(&token).await.unwrap(), Some(inv.clone()));
    assert_eq!(store.invitation_by_hash(&hash()).await.unwrap(), None);
    let now = OffsetDateTime::now_utc();
    let eve = email("eve@example.com");
    assert_eq!(
        store.accept_invitation(&token, Invitee::New { email: &eve, password_hash: "h" }, now).await,
        Err(StoreError::Invitation(InvitationError::WrongEmail))
    );
    assert!(store.credentials(&eve).await.unwrap().is_none(), "a refused invitee gets no account");
    assert_eq!(
        store.accept_invitation(&hash(), Invitee::New { email: &eve, password_hash: "h" }, now).await,
        Err(StoreError::NotFound)
    );
    // Two racing registrations with the one token: exactly one account, one membership.
    let results = race(4, |_| {
        let store = store.clone();
        async move {
            let bob = email("bob@example.com");
            store.accept_invitation(&token, Invitee::New { email: &bob, password_hash: "h" }, now).await
        }
    })
    .await;
    let (ok, lost): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!(ok.len(), 1, "{lost:?}");
    assert!(lost.iter().all(|r| r == &Err(StoreError::Invitation(InvitationError::Used))), "{lost:?}");
    let (bob, member) = ok.into_iter().next().unwrap().unwrap();
    assert!(!bob.is_admin);
    assert_eq!((member.org_id, member.user_id, member.role), (org.id, bob.id, Role::Member));
    assert_eq!(store.user(bob.id).await.unwrap(), bob);
    assert_eq!(store.role_of(org.id, bob.id).await.unwrap(), Some(Role::Member));
    assert!(store.invitations(org.id, OffsetDateTime::now_utc()).await.unwrap().is_empty());
    assert_eq!(
        store.revoke_invitation(org.id, inv.id, OffsetDateTime::now_utc()).await,
        Err(StoreError::Invitation(InvitationError::Used))
    );
}

pub async fn existing_users_accept_and_revoked_or_expired_invitations_are_refused(store: S) {
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    let org = store.create_org("Acme", Plan::Free, ann.id, 3).await.unwrap();
    let other = store.create_org("Other", Plan::Free, ann.id, 3).await.unwrap();
    let hour = time::Duration::hours(1);
    let (new, revoked) = invitation(org.id, "bob@example.com", Role::Admin, ann.id, hour);
    let inv = store.create_invitation(new).await.unwrap();
    // Revoking goes through the invitation's own organization only.
    assert_eq!(
        store.revoke_invitation(other.id, inv.id, OffsetDateTime::now_utc()).await,
        Err(StoreError::NotFound)
    );
    let gone = store.revoke_invitation(org.id, inv.id, OffsetDateTime::now_utc()).await.unwrap();
    assert!(gone.revoked_at.is_some());
    let now = OffsetDateTime::now_utc();
    assert_eq!(
        store.accept_invitation(&revoked, Invitee::Existing(bob.id), now).await,
        Err(StoreError::Invitation(InvitationError::Revoked))
    );
    let (new, expiring) = invitation(org.id, "bob@example.com", Role::Admin, ann.id, hour);
    store.create_invitation(new).await.unwrap();
    let later = now + hour * 2;
    assert_eq!(
        store.accept_invitation(&expiring, Invitee::Existing(bob.id), later).await,
        Err(StoreError::Invitation(InvitationError::Expired))
    );
    assert!(store.invitations(org.id, later).await.unwrap().is_empty());
    assert_eq!(store.role_of(org.id, bob.id).await.unwrap(), None);
    let (user2, member) = store.accept_invitation(&expiring, Invitee::Existing(bob.id), now).await.unwrap();
    assert_eq!((user2, member.role), (bob.clone(), Role::Admin));
    // Already a member: a second invitation cannot add them twice, and stays pending.
    let (new, again) = invitation(org.id, "bob@example.com", Role::Viewer, ann.id, hour);
    store.create_invitation(new).await.unwrap();
    assert_eq!(
        store.accept_invitation(&again, Invitee::Existing(bob.id), now).await,
        Err(StoreError::Conflict("member"))
    );
    assert_eq!(store.invitations(org.id, now).await.unwrap().len(), 1);
    // Deleting the organization takes its invitations with it.
    store.delete_org(org.id).await.unwrap();
    assert_eq!(store.invitation_by_hash(&again).await.unwrap(), None);
}

pub async fn pending_invitations_are_capped_per_org(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("Acme", Plan::Free, ann.id, 3).await.unwrap();
    let results = race(MAX_PENDING_INVITATIONS as usize + 5, |i| {
        let store = store.clone();
        let (new, _) =
            invitation(org.id, &format!("u{i}@example.com"), Role::Viewer, ann.id, time::Duration::hours(1));
        async move { store.create_invitation(new).await }
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), MAX_PENDING_INVITATIONS as usize);
    assert!(
        results
            .iter()
            .filter(|r| r.is_err())
            .all(|r| r == &Err(StoreError::QuotaExceeded(Limit::MaxInvitations)))
    );
    let (new, _) = invitation(OrgId::new(), "x@example.com", Role::Viewer, ann.id, time::Duration::hours(1));
    assert_eq!(store.create_invitation(new).await, Err(StoreError::NotFound));
}

pub async fn deployment_audit_lists_only_entries_without_an_org(store: S) {
    let ann = user(&store, "ann").await;
    let org = store.create_org("A", Plan::Pro, ann.id, u32::MAX).await.unwrap();
    for action in ["auth.login", "auth.register", "auth.login", "api_key.create"] {
        store.append_audit(entry(None, action)).await.unwrap();
        store.append_audit(entry(Some(org.id), action)).await.unwrap();
    }
    let all = store.deployment_audit_logs(&AuditQuery::default()).await.unwrap();
    let actions: Vec<_> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["api_key.create", "auth.login", "auth.register", "auth.login"]);
    assert!(all.iter().all(|e| e.org_id.is_none()));
    let logins = AuditQuery { action: Some("auth.login".into()), ..AuditQuery::default() };
    assert_eq!(store.deployment_audit_logs(&logins).await.unwrap().len(), 2);
    // Pages go backwards with the same cursor as an organization's.
    let page = AuditQuery { limit: 2, ..AuditQuery::default() };
    let first = store.deployment_audit_logs(&page).await.unwrap();
    let next = AuditQuery { before: Some(first[1].id), ..page.clone() };
    let second = store.deployment_audit_logs(&next).await.unwrap();
    assert_eq!(second.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["auth.register", "auth.login"]);
    assert_eq!(store.audit_logs(org.id, &AuditQuery::default()).await.unwrap().len(), 4);
}

// ---------------------------------------------------------------------------------------
// Instance configuration and tokens.

pub async fn instances_are_renamed_resized_within_quota_and_reconfigured(store: S) {
    let ann = user(&store, "ann").await;
    let org = org_with(&store, ann.id, quota(10, 100, 10)).await;
    let a = store.create_instance(new_instance(org.id, 40)).await.unwrap();
    store.create_instance(new_instance(org.id, 40)).await.unwrap();
    assert_eq!(a.instance.eviction_policy, EvictionPolicy::Noeviction);
    let change = InstanceChange {
        name: Some("sessions".into()),
        memory_bytes: Some(60),
        eviction_policy: Some(EvictionPolicy::AllkeysLfu),
    };
    let updated = store.update_instance(a.instance.id, change).await.unwrap();
    assert_eq!(
        (updated.instance.name.as_str(), updated.instance.memory_bytes, updated.instance.eviction_policy),
        ("sessions", 60, EvictionPolicy::AllkeysLfu)
    );
    assert_eq!(store.instance(a.instance.id).await.unwrap(), updated);
    // The quota counts the new size in place of the old one: 60 + 40 fits 100, 61 + 40 does not.
    let over =
        store.update_instance(a.instance.id, InstanceChange { memory_bytes: Some(61), ..Default::default() });
    assert_eq!(over.await, Err(StoreError::QuotaExceeded(Limit::MaxMemoryBytes)));
    let grow = InstanceChange { memory_bytes: Some(u64::MAX), ..Default::default() };
    assert_eq!(
        store.update_instance(a.instance.id, grow).await,
        Err(StoreError::QuotaExceeded(Limit::MaxMemoryBytes))
    );
    assert_eq!(store.instance(a.instance.id).await.unwrap(), updated, "a refused change changes nothing");
    // Nothing to change is a no-op; an unknown instance is not found.
    assert_eq!(store.update_instance(a.instance.id, InstanceChange::default()).await.unwrap(), updated);
    let missing = store.update_instance(InstanceId::new(), InstanceChange::default()).await;
    assert_eq!(missing, Err(StoreError::NotFound));
}

pub(crate) fn new_token(org: OrgId, instance: InstanceId, kind: TokenKind) -> NewInstanceToken {
    let key = NewApiKey { scope: kind.scope(), instance_ids: Some(vec![instance]), ..new_key(org) };
    NewInstanceToken { key, kind, sealed_key: format!("sealed {}", kind.as_str()).into_bytes() }
}

pub async fn instance_tokens_are_replaced_whole_and_kept_apart_from_api_keys(store: S) {
    let ann = user(&store, "ann").await;
    let org = org_with(&store, ann.id, quota(10, GIB, 1)).await;
    let inst = store.create_instance(new_instance(org.id, 1)).await.unwrap().instance.id;
    assert!(store.instance_tokens(inst).await.unwrap().is_empty());
    let pair = |org, inst| TokenKind::BOTH.map(|k| new_token(org, inst, k)).to_vec();
    let first = store.replace_instance_tokens(inst, pair(org.id, inst)).await.unwrap();
    let listed = store.instance_tokens(inst).await.unwrap();
    assert_eq!(listed, first);
    assert_eq!(listed.iter().map(|t| t.kind).collect::<Vec<_>>(), TokenKind::BOTH);
    assert_eq!(listed[1].sealed_key, b"sealed read-only");
    assert_eq!(listed[0].key.instance_ids, Some(vec![inst]));

    // Not API keys to manage: not listed, found, revoked or counted; the data plane finds them.
    assert!(keys_of(&store, org.id).await.unwrap().is_empty());
    let token = &first[0].key;
    assert_eq!(store.api_key(token.id).await, Err(StoreError::NotFound));
    assert_eq!(store.revoke_api_key(token.id, OffsetDateTime::now_utc()).await, Err(StoreError::NotFound));
    store.create_api_key(new_key(org.id)).await.expect("tokens take no room in the key quota");
    let hash = hash();
    let mut minted = pair(org.id, inst);
    minted[0].key.secret_hash = hash;
    let second = store.replace_instance_tokens(inst, minted).await.unwrap();
    assert_eq!(store.api_key_by_hash(&hash).await.unwrap().as_ref(), Some(&second[0].key));

    // Replacing leaves only the new pair: the old keys are gone for the data plane too.
    let ids: BTreeSet<ApiKeyId> =
        store.instance_tokens(inst).await.unwrap().iter().map(|t| t.key.id).collect();
    assert_eq!(ids, second.iter().map(|t| t.key.id).collect());
    assert!(!ids.contains(&token.id));
    let unknown = store.replace_instance_tokens(InstanceId::new(), pair(org.id, inst)).await;
    assert_eq!(unknown, Err(StoreError::NotFound));

    // They go with their instance.
    store.delete_instance(inst).await.unwrap();
    assert!(store.instance_tokens(inst).await.unwrap().is_empty());
    assert_eq!(store.api_key_by_hash(&hash).await.unwrap(), None);
}
// Usage history.

mod usage_cases {
    use redisgate_core::ids::InstanceId;
    use redisgate_core::usage::{self, Histogram, Resolution, ServerFigures, UsageRow};
    use time::OffsetDateTime;
    use time::macros::datetime;

    use super::*;

    /// An organization with two instances.
    async fn two_instances(store: &S) -> (InstanceId, InstanceId) {
        let ann = user(store, "ann").await;
        let org = store.create_org("Acme", Plan::Pro, ann.id, u32::MAX).await.unwrap();
        let a = store.create_instance(new_instance(org.id, 0)).await.unwrap().instance.id;
        let b = store.create_instance(new_instance(org.id, 0)).await.unwrap().instance.id;
        (a, b)
    }

    fn sample(instance: InstanceId, start: OffsetDateTime, reads: u64) -> UsageRow {
        let mut latency = Histogram::default();
        latency.0[usage::bucket_of(900)] = reads;
        UsageRow {
            instance_id: instance,
            resolution: Resolution::TenSeconds,
            start,
            reads,
            writes: 1,
            errors: 0,
            latency,
            server: Some(ServerFigures {
                at: start + time::Duration::seconds(9),
                keys: reads,
                memory_bytes: 1 << 40,
                hits: 3,
                misses: 4,
                connections: 5,
            }),
        }
    }

    const T0: OffsetDateTime = datetime!(2026-03-01 00:00:00 UTC);

    fn secs(n: i64) -> time::Duration {
        time::Duration::seconds(n)
    }

    pub async fn usage_rows_round_trip_per_instance_time_and_resolution(store: S) {
        let (a, b) = two_instances(&store).await;
        let mut quiet = sample(a, T0 + secs(10), 0);
        quiet.server = None;
        quiet.latency = Histogram::default();
        let mut huge = sample(a, T0, 7);
        huge.server.as_mut().unwrap().memory_bytes = u64::MAX;
        store.append_usage(&[huge.clone(), quiet.clone(), sample(b, T0, 1)]).await.unwrap();
        store.append_usage(&[]).await.unwrap();
        let mut back = store.usage(a, T0, Resolution::TenMinutes).await.unwrap();
        // The largest count a column holds is kept, not wrapped.
        huge.server.as_mut().unwrap().memory_bytes = i64::MAX as u64;
        assert_eq!(back, [huge, quiet]);
        assert_eq!(store.usage(a, T0 + secs(1), Resolution::TenSeconds).await.unwrap().len(), 1, "since");
        assert_eq!(store.usage(b, T0, Resolution::TenSeconds).await.unwrap().len(), 1, "per instance");
        // A minute row is left out of a ten-second read.
        let mut minute = sample(a, T0 + secs(60), 2);
        minute.resolution = Resolution::Minute;
        store.append_usage(std::slice::from_ref(&minute)).await.unwrap();
        assert_eq!(store.usage(a, T0, Resolution::TenSeconds).await.unwrap().len(), 2);
        back = store.usage(a, T0, Resolution::Minute).await.unwrap();
        assert_eq!(back.last(), Some(&minute));
        // Rows of an instance that is gone (or never was) are dropped, the others kept.
        let ghost = sample(InstanceId::new(), T0, 9);
        store.append_usage(&[ghost, sample(b, T0 + secs(10), 1)]).await.unwrap();
        assert_eq!(store.usage(b, T0, Resolution::TenSeconds).await.unwrap().len(), 2);
        // And they go with their instance.
        store.delete_instance(a).await.unwrap();
        assert!(store.usage(a, T0, Resolution::TenMinutes).await.unwrap().is_empty());
    }

    pub async fn usage_roll_up_merges_old_rows_in_batches_and_prune_deletes_them(store: S) {
        let (a, b) = two_instances(&store).await;
        // Two replicas' samples of `a` for the first minute, one of `b`, and a recent one.
        let mut rows: Vec<UsageRow> = (0..6).map(|i| sample(a, T0 + secs(10 * i), 1)).collect();
        rows.extend((0..6).map(|i| sample(a, T0 + secs(10 * i), 2)));
        rows.push(sample(b, T0, 5));
        rows.push(sample(a, T0 + secs(600), 100));
        store.append_usage(&rows).await.unwrap();
        let cutoff = T0 + secs(60);
        let ten_minutes = Resolution::TenMinutes;
        assert_eq!(
            store.roll_up_usage(Resolution::TenSeconds, Resolution::Minute, cutoff, 5).await.unwrap(),
            5
        );
        assert_eq!(
            store.roll_up_usage(Resolution::TenSeconds, Resolution::Minute, cutoff, 100).await.unwrap(),
            8
        );
        assert_eq!(
            store.roll_up_usage(Resolution::TenSeconds, Resolution::Minute, cutoff, 100).await.unwrap(),
            0
        );
        let back = store.usage(a, T0, ten_minutes).await.unwrap();
        let minutes: Vec<&UsageRow> = back.iter().filter(|r| r.resolution == Resolution::Minute).collect();
        // The batch boundary may split a minute in two rows; together they hold every count.
        assert!((1..=2).contains(&minutes.len()), "{minutes:?}");
        assert!(minutes.iter().all(|r| r.start == T0));
        assert_eq!(minutes.iter().map(|r| r.reads).sum::<u64>(), 18);
        assert_eq!(minutes.iter().map(|r| r.writes).sum::<u64>(), 12);
        assert_eq!(minutes.iter().map(|r| r.latency.count()).sum::<u64>(), 18);
        let latest = minutes.iter().filter_map(|r| r.server).max_by_key(|s| s.at).unwrap();
        assert_eq!(latest.at, T0 + secs(59), "the latest reading of the minute");
        assert_eq!(back.last().unwrap().resolution, Resolution::TenSeconds, "the recent row stays");
        let b_rows = store.usage(b, T0, ten_minutes).await.unwrap();
        assert_eq!((b_rows.len(), b_rows[0].resolution, b_rows[0].reads), (1, Resolution::Minute, 5));
        // Pruning: only the resolution asked, only before the cutoff, in batches.
        assert_eq!(store.prune_usage(Resolution::Minute, T0, 10).await.unwrap(), 0);
        let n = store.prune_usage(Resolution::Minute, cutoff, 1).await.unwrap();
        assert_eq!(n, 1);
        while store.prune_usage(Resolution::Minute, cutoff, 1).await.unwrap() > 0 {}
        let left = store.usage(a, T0, ten_minutes).await.unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].reads, 100);
        assert!(store.usage(b, T0, ten_minutes).await.unwrap().is_empty());
    }

    /// Eight days of one sample every 10 s, with down-sampling every simulated hour: the rows
    /// of the instance stay under `usage::max_rows`, and down-sampling loses no count.
    pub async fn usage_rows_per_instance_stay_bounded(store: S) {
        let (a, _) = two_instances(&store).await;
        let every = std::time::Duration::from_secs(3600);
        let bound = usage::max_rows(1, std::time::Duration::from_secs(10), every);
        let mut now = T0;
        let mut most = 0;
        for hour in 1..=8 * 24 {
            let samples: Vec<UsageRow> = (0..360).map(|i| sample(a, now + secs(10 * i), 2)).collect();
            store.append_usage(&samples).await.unwrap();
            now += secs(3600);
            usage::maintain(store.as_ref(), now, 1000).await.unwrap();
            // Read back every fourth hour only: reading is what costs here.
            if hour % 4 != 0 {
                continue;
            }
            let rows = store.usage(a, T0, Resolution::TenMinutes).await.unwrap();
            most = most.max(rows.len() as u64);
            assert!(rows.len() as u64 <= bound, "{} rows at {now}, above {bound}", rows.len());
        }
        let rows = store.usage(a, T0, Resolution::TenMinutes).await.unwrap();
        assert!(rows.iter().all(|r| r.start >= now - time::Duration::days(7) - secs(600)), "7 days kept");
        // Full tiers: 3 h of 10 s rows, then minutes to a day, then 10 minutes to 7 days.
        assert!(most > 1080 + 1260 + 864 - 10, "only {most} rows: the tiers never filled");
        let count = |r: Resolution| rows.iter().filter(|x| x.resolution == r).count();
        assert!(count(Resolution::TenSeconds) <= 1080 + 360, "{}", count(Resolution::TenSeconds));
        // The last 20 hours, read back from 10 s and minute rows, hold every read sampled.
        let since = now - time::Duration::hours(20);
        let recent = store.usage(a, since, Resolution::TenMinutes).await.unwrap();
        assert!(recent.iter().all(|r| r.resolution != Resolution::TenMinutes));
        assert_eq!(recent.iter().map(|r| r.reads).sum::<u64>(), 20 * 360 * 2);
    }
}

pub use usage_cases::*;
