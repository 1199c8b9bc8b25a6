//! The `usage_samples` rows both stores read and write the same way: the columns, a row as
//! the values bound for it, and a row read back.

use redisgate_core::ids::InstanceId;
use redisgate_core::store::{StoreError, StoreResult};
use redisgate_core::usage::{Histogram, Resolution, ServerFigures, UsageRow};
use sqlx::{ColumnIndex, Decode, Row, Type};
use time::OffsetDateTime;
use uuid::Uuid;

/// The columns of a row, in the order [`Values`] binds them.
macro_rules! usage_cols {
    () => {
        "instance_id, resolution, start_unix, reads, writes, errors, latency, server_unix, keys, \
         memory_bytes, hits, misses, connections"
    };
}
pub(crate) use usage_cols;

/// One row as bound: both stores keep integers as signed 64-bit, and a count beyond that is
/// kept as the largest one.
pub(crate) struct Values {
    pub instance_id: Uuid,
    pub resolution: i64,
    pub start: i64,
    pub reads: i64,
    pub writes: i64,
    pub errors: i64,
    pub latency: String,
    pub server: [Option<i64>; 6],
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Values {
    pub fn of(r: &UsageRow) -> Values {
        let s = r.server.as_ref();
        Values {
            instance_id: r.instance_id.0,
            resolution: r.resolution.seconds(),
            start: r.start.unix_timestamp(),
            reads: int(r.reads),
            writes: int(r.writes),
            errors: int(r.errors),
            latency: r.latency.encode(),
            server: [
                s.map(|s| s.at.unix_timestamp()),
                s.map(|s| int(s.keys)),
                s.map(|s| int(s.memory_bytes)),
                s.map(|s| int(s.hits)),
                s.map(|s| int(s.misses)),
                s.map(|s| int(s.connections)),
            ],
        }
    }
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("unreadable usage {what}: {detail}"))
}

fn time_of(unix: i64) -> StoreResult<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|e| corrupt("time", e))
}

fn count(v: i64) -> StoreResult<u64> {
    u64::try_from(v).map_err(|e| corrupt("count", e))
}

/// A row read back, in either store.
pub(crate) fn usage_from<'r, R>(row: &'r R) -> StoreResult<UsageRow>
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Uuid: Decode<'r, R::Database> + Type<R::Database>,
{
    let get_i64 = |col: &'r str| row.try_get::<i64, _>(col).map_err(|e| corrupt(col, e));
    let get_opt = |col: &'r str| row.try_get::<Option<i64>, _>(col).map_err(|e| corrupt(col, e));
    let resolution = get_i64("resolution")?;
    let latency: String = row.try_get("latency").map_err(|e| corrupt("latency", e))?;
    let server = match get_opt("server_unix")? {
        None => None,
        Some(at) => {
            let figure = |col: &'r str| count(get_opt(col)?.unwrap_or(0));
            Some(ServerFigures {
                at: time_of(at)?,
                keys: figure("keys")?,
                memory_bytes: figure("memory_bytes")?,
                hits: figure("hits")?,
                misses: figure("misses")?,
                connections: figure("connections")?,
            })
        }
    };
    Ok(UsageRow {
        instance_id: InstanceId(row.try_get("instance_id").map_err(|e| corrupt("instance_id", e))?),
        resolution: Resolution::from_seconds(resolution).ok_or_else(|| corrupt("resolution", resolution))?,
        start: time_of(get_i64("start_unix")?)?,
        reads: count(get_i64("reads")?)?,
        writes: count(get_i64("writes")?)?,
        errors: count(get_i64("errors")?)?,
        latency: Histogram::decode(&latency).ok_or_else(|| corrupt("latency", &latency))?,
        server,
    })
}
