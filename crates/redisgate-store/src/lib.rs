//! The metadata store behind [`redisgate_core::store::Store`]: SQLite, embedded and the
//! default, and PostgreSQL for production. Both pass one conformance suite
//! (`tests/conformance`), and each runs its own append-only migrations
//! (`migrations/{sqlite,postgres}`) when opened.
//!
//! # Layout
//! - [`sqlite`]: the embedded default, [`SqliteStore`].
//! - [`postgres`]: for production, [`PgStore`].
//! - [`connect`]: picks one from a URL.
#![forbid(unsafe_code)]

pub mod postgres;
pub mod sqlite;
mod usage;

use std::sync::Arc;

use redisgate_core::store::{Store, StoreError};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Opens the store a URL names and brings its schema up to date:
/// `postgres://…` / `postgresql://…` → PostgreSQL, `sqlite://PATH` (or a bare path) → SQLite.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else {
        Ok(Arc::new(SqliteStore::open(url.strip_prefix("sqlite://").unwrap_or(url)).await?))
    }
}

/// Maps a driver error to the store's error kinds: uniqueness violations become `Conflict`,
/// and a dangling reference (an unknown org or user id) is the caller's `NotFound`.
pub(crate) fn db_error(e: sqlx::Error, conflict: &'static str) -> StoreError {
    match &e {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(conflict),
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound,
        _ => StoreError::Unavailable(e.to_string()),
    }
}
