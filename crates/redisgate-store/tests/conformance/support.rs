//! Fresh, isolated stores for each test: a temporary SQLite file, or a throw-away
//! PostgreSQL database that is dropped again whatever way the test ends.

use std::sync::Arc;

use redisgate_core::store::Store;
use redisgate_store::{PgStore, SqliteStore};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A store in its own temporary directory, removed when this is dropped.
pub struct SqliteDb {
    // Declared before the directory so the pool closes before its files go.
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

impl SqliteDb {
    pub async fn new() -> SqliteDb {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("redisgate.db");
        let store = SqliteStore::open(path.to_str().expect("a UTF-8 temporary path"))
            .await
            .expect("opening a fresh SQLite store");
        SqliteDb { store: Arc::new(store), _dir: dir }
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
}

/// A store on a database created for one test and dropped afterwards.
pub struct PgDb {
    // Declared before the guard: the pool goes first, then the database.
    store: Arc<dyn Store>,
    _guard: DropDatabase,
}

impl PgDb {
    pub async fn new() -> PgDb {
        let admin_url =
            std::env::var("REDISGATE_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
        // v7's simple form is lowercase hex: a valid identifier with no quoting needed.
        let name = format!("rg_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at REDISGATE_TEST_DATABASE_URL ({admin_url}) is not reachable: {e}")
        });
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE for the test");
        let _ = admin.close().await;
        // Armed before the store opens, so a store that fails to open still cleans up.
        let guard = DropDatabase { admin_url: admin_url.clone(), name: name.clone() };
        let store =
            PgStore::connect(&with_database(&admin_url, &name)).await.expect("opening a fresh PgStore");
        PgDb { store: Arc::new(store), _guard: guard }
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
}

/// `url` with its database name replaced by `name`, keeping any `?options`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Drops the test database on drop, best-effort. Drop cannot be async and may run inside
/// the test's runtime (or while unwinding from a failed assertion), so the cleanup runs on
/// its own thread with its own runtime, and nothing in it may panic.
struct DropDatabase {
    admin_url: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (std::mem::take(&mut self.admin_url), std::mem::take(&mut self.name));
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    // FORCE: pool connections may still be closing, or leaked by a panic.
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

#[test]
fn database_urls_are_rewritten() {
    assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
    assert_eq!(
        with_database("postgres://u@h/postgres?sslmode=disable", "x"),
        "postgres://u@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
}
