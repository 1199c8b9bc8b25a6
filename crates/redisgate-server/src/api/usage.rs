//! An instance's usage history (docs/USAGE.md): what the sampler recorded, as points of one
//! period.

use std::sync::Arc;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use redisgate_core::ids::{InstanceId, OrgId};
use redisgate_core::org::Action;
use redisgate_core::usage::{Period, Point};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::CurrentUser;
use super::error::ErrorBody;
use super::{ApiError, ApiPath, ApiResult, ApiState, State, authorize};

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// `1h` (default), `3h`, `12h`, `1d`, `3d` or `7d`.
    period: Option<String>,
}

/// One interval of the period.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UsagePoint {
    /// The interval's start; it lasts `resolution_seconds`.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// Commands a read-only key may run (GET, SCAN …), per second, through every replica.
    pub reads_per_sec: f64,
    /// Every other command (writes, scripts …), per second.
    pub writes_per_sec: f64,
    /// Commands answered with a Redis error or not answered at all, per second.
    pub errors_per_sec: f64,
    /// Median request time (RedisGate to Redis and back), from histogram buckets: the
    /// bucket's upper bound, at most 50% above the true value. Absent without requests.
    pub p50_ms: Option<f64>,
    /// 99th percentile request time, as `p50_ms`.
    pub p99_ms: Option<f64>,
    /// From the latest INFO read in the interval (absent when none was): keys in all databases.
    pub keys: Option<u64>,
    /// INFO's `used_memory`.
    pub memory_bytes: Option<u64>,
    /// INFO's `keyspace_hits`: the server's total since it started.
    pub hits: Option<u64>,
    /// INFO's `keyspace_misses`: the server's total since it started.
    pub misses: Option<u64>,
    /// INFO's `connected_clients` (RedisGate's own connections included).
    pub connections: Option<u64>,
}

impl From<Point> for UsagePoint {
    fn from(p: Point) -> Self {
        let s = p.server;
        UsagePoint {
            at: p.at,
            reads_per_sec: p.reads_per_sec,
            writes_per_sec: p.writes_per_sec,
            errors_per_sec: p.errors_per_sec,
            p50_ms: p.p50_ms,
            p99_ms: p.p99_ms,
            keys: s.map(|s| s.keys),
            memory_bytes: s.map(|s| s.memory_bytes),
            hits: s.map(|s| s.hits),
            misses: s.map(|s| s.misses),
            connections: s.map(|s| s.connections),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub period: &'static str,
    /// Seconds each point covers: 10 (1h, 3h), 60 (12h, 1d), 600 (3d, 7d).
    pub resolution_seconds: i64,
    /// Oldest first; intervals without traffic (and nobody looking) have no point.
    pub points: Vec<UsagePoint>,
}

/// The instance's usage over a period: request rates, latency, and its Redis' figures.
#[utoipa::path(get, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/usage", tag = "redis-instances", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path), UsageQuery),
    responses((status = 200, body = Usage), (status = 404, body = ErrorBody), (status = 422, description = "unknown period", body = ErrorBody)))]
async fn usage(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InstanceId)>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> ApiResult<axum::Json<Usage>> {
    authorize(&state, user.id, org, Action::ViewInstances).await?;
    let Query(q) = query?;
    let period = match q.period.as_deref() {
        None => Period::Hour,
        Some(p) => Period::parse(p)
            .ok_or_else(|| ApiError::validation("period", "must be one of 1h, 3h, 12h, 1d, 3d, 7d"))?,
    };
    super::instances::record_of(&state, org, id).await?;
    let served = state.instances.backend(id);
    let meter = served.as_ref().map(|(_, backend)| backend.usage());
    let points = crate::usage::history(state.store.as_ref(), meter, id, period).await?;
    Ok(axum::Json(Usage {
        period: period.as_str(),
        resolution_seconds: period.resolution().seconds(),
        points: points.into_iter().map(UsagePoint::from).collect(),
    }))
}

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new().routes(routes!(usage))
}
