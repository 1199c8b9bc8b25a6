//! Plans: what each gives (quota, rate limit), and per-plan rate limits that deployment
//! administrators set through the API (they win over the configuration's, on every replica
//! within a second).

use std::sync::Arc;

use http::StatusCode;
use redisgate_core::quota::{Plan, Quota};
use redisgate_core::ratelimit::Rate;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use super::auth::CurrentUser;
use super::error::ErrorBody;
use super::{ApiError, ApiJson, ApiPath, ApiResult, ApiState, RequestMeta, State};

#[derive(Serialize, utoipa::ToSchema)]
pub struct PlanView {
    pub plan: Plan,
    /// The quota a new organization on this plan starts with.
    pub default_quota: Quota,
    /// The rate limit keys of this plan get (unless a key has its own).
    pub rate_limit: Rate,
    /// `api` when set through this API, `config` otherwise.
    pub rate_limit_source: &'static str,
}

/// Every plan with its default quota and effective rate limit.
#[utoipa::path(get, path = "/api/plans", tag = "plans", security(("session" = [])),
    responses((status = 200, body = Vec<PlanView>), (status = 401, body = ErrorBody)))]
async fn list(state: State, CurrentUser(_): CurrentUser) -> ApiResult<axum::Json<Vec<PlanView>>> {
    let set = state.store.plan_rates().await?;
    let views = [Plan::Free, Plan::Pro, Plan::Enterprise]
        .into_iter()
        .map(|plan| {
            let api = set.iter().find(|(p, _)| *p == plan).map(|(_, r)| *r);
            PlanView {
                plan,
                default_quota: plan.default_quota(),
                rate_limit: api.unwrap_or_else(|| state.rate_limit.for_plan(plan)),
                rate_limit_source: if api.is_some() { "api" } else { "config" },
            }
        })
        .collect();
    Ok(axum::Json(views))
}

fn admin(user: &redisgate_core::account::User) -> ApiResult<()> {
    if user.is_admin { Ok(()) } else { Err(ApiError::Forbidden) }
}

/// Set a plan's rate limit (deployment administrators).
#[utoipa::path(put, path = "/api/plans/{plan}/rate-limit", tag = "plans", security(("session" = [])),
    params(("plan" = Plan, Path)), request_body = Rate,
    responses((status = 200, body = Rate), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn set(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath(plan): ApiPath<Plan>,
    ApiJson(rate): ApiJson<Rate>,
) -> ApiResult<axum::Json<Rate>> {
    let result = async {
        admin(&user)?;
        if !(1..=1_000_000_000).contains(&rate.per_second) || !(1..=1_000_000_000).contains(&rate.burst) {
            return Err(ApiError::validation(
                "per_second",
                "per_second and burst must be between 1 and 1000000000",
            ));
        }
        state.store.set_plan_rate(plan, Some(rate)).await?;
        state.keys.refresh_plan_rates().await;
        Ok(rate)
    }
    .await;
    let detail = Some(format!("{} {}/s burst {}", plan.as_str(), rate.per_second, rate.burst));
    let rate = audit::outcome(&state, &user, None, "plan.rate_limit", detail, &meta, result).await?;
    Ok(axum::Json(rate))
}

/// Go back to the configuration's rate for a plan (deployment administrators).
#[utoipa::path(delete, path = "/api/plans/{plan}/rate-limit", tag = "plans", security(("session" = [])),
    params(("plan" = Plan, Path)), responses((status = 204), (status = 403, body = ErrorBody)))]
async fn clear(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath(plan): ApiPath<Plan>,
) -> ApiResult<StatusCode> {
    let result = async {
        admin(&user)?;
        state.store.set_plan_rate(plan, None).await?;
        state.keys.refresh_plan_rates().await;
        Ok(())
    }
    .await;
    audit::outcome(
        &state,
        &user,
        None,
        "plan.rate_limit",
        Some(format!("{} cleared", plan.as_str())),
        &meta,
        result,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(set, clear))
}
