//! One conformance suite for every `Store`: each case in `cases.rs` is written once and
//! run here against SQLite (a temporary file per test) and PostgreSQL (a database created
//! per test on `REDISGATE_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`,
//! and dropped afterwards).
//!
//! ```text
//! cargo test -p redisgate-store --test conformance sqlite     # one backend
//! cargo test -p redisgate-store --test conformance postgres
//! ```

mod backups;
mod cases;
mod changes;
mod support;

/// Instantiates every listed case once per backend, as `sqlite::<case>` and
/// `postgres::<case>`, so a test filter picks a backend.
macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                // Several workers, so the concurrency cases really run in parallel.
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = crate::support::SqliteDb::new().await;
                    crate::cases::$case(db.store()).await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = crate::support::PgDb::new().await;
                    crate::cases::$case(db.store()).await;
                }
            )+
        }
    };
}

conformance!(
    ping_answers,
    plan_rates_are_set_replaced_and_cleared,
    // Users and sessions.
    first_user_is_admin_later_ones_are_not,
    concurrent_first_sign_ups_make_exactly_one_admin,
    duplicate_email_is_a_conflict,
    unknown_user_is_not_found,
    credentials_are_found_by_email,
    sessions_live_until_they_expire,
    revoked_sessions_are_dead,
    session_of_unknown_user_is_not_found,
    // Organizations and members.
    create_org_applies_the_plan_quota_and_owner,
    create_org_with_unknown_owner_is_not_found,
    unknown_org_is_not_found,
    orgs_of_lists_memberships_in_org_creation_order,
    rename_and_set_quota_return_the_updated_org,
    members_are_listed_in_join_order_with_emails,
    add_member_rejects_duplicates_and_unknowns,
    set_role_changes_a_members_role,
    last_owner_cannot_be_demoted,
    last_owner_cannot_be_removed,
    concurrent_owner_changes_always_leave_an_owner,
    delete_org_removes_what_it_owns_but_not_audit,
    // Instances.
    new_instances_are_pending_and_round_trip,
    unknown_instance_is_not_found,
    instance_in_unknown_org_is_not_found,
    instance_count_quota_is_enforced,
    instance_memory_quota_is_enforced,
    lowering_a_quota_blocks_new_creates_only,
    concurrent_instance_creates_never_exceed_the_count,
    concurrent_instance_creates_never_exceed_memory,
    instance_status_updates_and_deletes,
    instances_are_listed_per_org_and_overall,
    instances_are_paged_by_id_after_a_cursor,
    instance_pages_see_every_lasting_row_once_while_rows_come_and_go,
    // API keys.
    api_keys_round_trip_their_optional_fields,
    a_keys_own_rate_is_changed_and_cleared,
    unknown_api_key_is_not_found,
    api_key_quota_counts_only_unrevoked_keys,
    concurrent_api_key_creates_never_exceed_the_quota,
    revoking_is_idempotent_and_keeps_the_first_time,
    touch_only_moves_last_use_forward,
    duplicate_secret_hash_is_a_conflict,
    api_keys_are_listed_per_org_in_creation_order,
    api_key_pages_hold_revoked_keys_but_no_instance_tokens,
    // Audit.
    audit_is_newest_first_and_per_org,
    audit_prune_removes_old_entries_in_batches_and_keeps_new_ones,
    audit_filters_by_action_actor_and_outcome,
    audit_time_window_is_since_inclusive_until_exclusive,
    audit_pages_backwards_with_a_cursor,
    audit_limit_defaults_to_50_and_is_capped_at_500,
    // Time.
    timestamps_round_trip,
    first_user_only_admits_exactly_one_even_when_racing,
    owned_organizations_are_capped_even_when_racing,
    invitations_are_single_use_and_only_for_their_address,
    existing_users_accept_and_revoked_or_expired_invitations_are_refused,
    pending_invitations_are_capped_per_org,
    deployment_audit_lists_only_entries_without_an_org,
    // Instance configuration and tokens.
    instances_are_renamed_resized_within_quota_and_reconfigured,
    instance_tokens_are_replaced_whole_and_kept_apart_from_api_keys,
    // Usage history.
    usage_rows_round_trip_per_instance_time_and_resolution,
    usage_roll_up_merges_old_rows_in_batches_and_prune_deletes_them,
    usage_rows_per_instance_stay_bounded,
    // Backups.
    backups_round_trip_finish_and_delete,
    a_backup_of_another_orgs_instance_is_not_found,
    backup_caps_count_every_backup_and_ready_bytes,
    schedules_are_set_replaced_and_removed,
    a_due_schedule_is_claimed_once_even_when_racing,
    // Change feed.
    instance_writes_record_one_change_each_in_order,
    api_key_writes_record_changes_but_touches_do_not,
    org_updates_and_deletes_record_changes_with_cascaded_children,
    changes_after_pages_by_limit,
    pruning_moves_the_watermark_below_which_cursors_are_stale,
);

/// What only the SQLite backend has: a file it creates, keeps and re-opens.
mod sqlite_only {
    use redisgate_core::account::Email;
    use redisgate_core::store::{Admission, Store};
    use redisgate_store::SqliteStore;

    #[tokio::test]
    async fn open_creates_missing_directories_and_reopens_with_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/deeper/redisgate.db");
        let path = path.to_str().unwrap();
        let email = Email::parse("ann@example.com").unwrap();
        let ann = {
            let store = SqliteStore::open(path).await.unwrap();
            store.create_user(&email, "h", Admission::Anyone).await.unwrap()
        };
        // Re-opening runs the migrations again, which must be a no-op.
        let store = SqliteStore::open(path).await.unwrap();
        assert_eq!(store.user(ann.id).await.unwrap(), ann);
        assert!(
            !store
                .create_user(&Email::parse("bob@example.com").unwrap(), "h", Admission::Anyone)
                .await
                .unwrap()
                .is_admin
        );
    }

    /// Replicas sharing one file may start at the same moment: one migrates, the others wait
    /// for it and find the schema up to date (they used to apply the same migration twice and
    /// fail with "duplicate column name").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_opening_one_new_file_at_once_all_start() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..5 {
            let path = dir.path().join(format!("r{round}.db"));
            let path = path.to_str().unwrap().to_owned();
            let opens = (0..4).map(|_| {
                let path = path.clone();
                tokio::spawn(async move { SqliteStore::open(&path).await.map(|_| ()) })
            });
            for opened in futures_util::future::join_all(opens).await {
                opened.unwrap().unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
    }

    #[tokio::test]
    async fn connect_accepts_sqlite_urls_and_bare_paths() {
        let dir = tempfile::tempdir().unwrap();
        for (i, url) in [
            format!("sqlite://{}", dir.path().join("a.db").display()),
            dir.path().join("b.db").display().to_string(),
        ]
        .into_iter()
        .enumerate()
        {
            let store = redisgate_store::connect(&url).await.unwrap();
            store.ping().await.unwrap();
            assert_eq!(store.counts().await.unwrap().users, 0, "case {i}");
        }
    }

    #[tokio::test]
    async fn in_memory_store_works_for_tests() {
        let store = SqliteStore::open(":memory:").await.unwrap();
        let ann = store
            .create_user(&Email::parse("ann@example.com").unwrap(), "h", Admission::Anyone)
            .await
            .unwrap();
        assert!(ann.is_admin);
        assert_eq!(store.user(ann.id).await.unwrap(), ann);
    }

    /// The api_keys update trigger lists its columns (all but last_used_at, which
    /// touch_api_keys writes every second); a column added later must be added to it. Also
    /// checks what no store method does yet: a plan change is recorded.
    #[tokio::test]
    async fn change_triggers_cover_plan_changes_and_every_api_key_column_but_last_used_at() {
        use redisgate_core::quota::Plan;
        use sqlx::Connection;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redisgate.db");
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
        let trigger: String = sqlx::query_scalar(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'api_keys_update_change'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let trigger = trigger.split_whitespace().collect::<Vec<_>>().join(" ");
        let listed = trigger.split(" OF ").nth(1).and_then(|s| s.split(" ON ").next()).unwrap();
        let listed: Vec<&str> = listed.split(',').map(str::trim).collect();
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info('api_keys') WHERE name != 'last_used_at'")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let mut columns: Vec<&str> = columns.iter().map(String::as_str).collect();
        let mut listed_sorted = listed.clone();
        columns.sort_unstable();
        listed_sorted.sort_unstable();
        assert_eq!(listed_sorted, columns);

        let ann = store
            .create_user(&Email::parse("ann@example.com").unwrap(), "h", Admission::Anyone)
            .await
            .unwrap();
        let org = store.create_org("Acme", Plan::Free, ann.id, u32::MAX).await.unwrap();
        let before = store.last_change().await.unwrap();
        sqlx::query("UPDATE organizations SET plan = 'pro' WHERE id = ?1")
            .bind(org.id.0)
            .execute(&mut conn)
            .await
            .unwrap();
        let rows = store.changes_after(before, 10).await.unwrap().unwrap();
        assert_eq!(
            rows.iter().map(|c| c.subject).collect::<Vec<_>>(),
            [redisgate_core::store::ChangeSubject::Organization(org.id)]
        );
    }

    #[tokio::test]
    async fn database_file_is_in_wal_mode_with_the_schema() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redisgate.db");
        drop(SqliteStore::open(path.to_str().unwrap()).await.unwrap());
        // WAL is a property of the file, so a plain connection sees it.
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut conn).await.unwrap();
        assert_eq!(mode, "wal");
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite%' ORDER BY name")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(
            tables,
            [
                "api_keys",
                "audit_logs",
                "backup_schedules",
                "backups",
                "change_watermark",
                "changes",
                "invitations",
                "memberships",
                "organizations",
                "plan_rate_limits",
                "redis_instances",
                "sessions",
                "usage_samples",
                "users"
            ]
        );
    }
}
