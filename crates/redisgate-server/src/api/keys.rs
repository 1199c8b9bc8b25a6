//! API keys: `rg_<id>_<secret>`, shown once at creation; only the SHA-256 is stored. Scopes
//! (read-only, read-write, admin), an optional list of instances, an optional expiry. Listed
//! in pages (see `super::paging`).

use std::sync::Arc;

use http::StatusCode;
use redisgate_core::account::User;
use redisgate_core::apikey::{ApiKey, Scope, format_key};
use redisgate_core::ids::{ApiKeyId, InstanceId, OrgId};
use redisgate_core::org::Action;
use redisgate_core::page::Cursor;
use redisgate_core::ratelimit::Rate;
use redisgate_core::store::{NewApiKey, StoreError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use super::auth::{CurrentUser, hash_secret};
use super::error::ErrorBody;
use super::paging::{PageParams, PageQuery, Paged};
use super::{ApiError, ApiJson, ApiPath, ApiResult, ApiState, RequestMeta, State, authorize};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// 1–100 characters, for people.
    pub name: String,
    pub scope: Scope,
    /// Instances of this organization the key may reach; absent means all of them.
    pub instance_ids: Option<Vec<InstanceId>>,
    /// This key's own rate limit; absent means the organization's plan rate.
    pub rate_limit: Option<Rate>,
    /// RFC 3339; absent means the key does not expire.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
}

fn check_rate(rate: Option<Rate>) -> Result<(), ApiError> {
    let ok = |n| (1..=1_000_000_000).contains(&n);
    if rate.is_some_and(|r| !ok(r.per_second) || !ok(r.burst)) {
        return Err(ApiError::validation(
            "rate_limit",
            "per_second and burst must be between 1 and 1000000000",
        ));
    }
    Ok(())
}

/// Refuses a key rate above the organization's plan rate (the one its keys get without a
/// rate of their own) unless the caller administers the deployment: a tenant cannot buy
/// itself capacity by writing a larger number.
async fn within_plan(state: &ApiState, user: &User, org: OrgId, rate: Option<Rate>) -> ApiResult<()> {
    let Some(rate) = rate else { return Ok(()) };
    if user.is_admin {
        return Ok(());
    }
    let plan = state.store.org(org).await?.plan;
    let max = state.keys.plan_rate(plan, &state.rate_limit);
    if rate.per_second > max.per_second || rate.burst > max.burst {
        return Err(ApiError::RateAbovePlan(max));
    }
    Ok(())
}

/// The most instances a key may be limited to (`instance_ids`).
const MAX_KEY_INSTANCES: usize = 100;

/// Checks that every one of `ids` is an instance of `org`, one lookup per distinct id: a key
/// names a few instances, and an organization may have thousands.
async fn of_org(state: &ApiState, org: OrgId, ids: &[InstanceId]) -> ApiResult<()> {
    let mut seen = std::collections::HashSet::new();
    for &id in ids.iter().filter(|&&id| seen.insert(id)) {
        let theirs = match state.store.instance(id).await {
            Ok(rec) => rec.instance.org_id == org,
            Err(StoreError::NotFound) => false,
            Err(e) => return Err(e.into()),
        };
        if !theirs {
            return Err(ApiError::validation(
                "instance_ids",
                format!("{id} is not an instance of this organization"),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyUpdate {
    /// The key's own rate limit; `null` returns the key to its organization's plan rate.
    /// Required: an absent field is a mistake, not a request to clear it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Rate>)]
    pub rate_limit: Option<Option<Rate>>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The key itself. It is shown this once and cannot be recovered.
    pub key: String,
    pub api_key: ApiKey,
}

/// Create a key (owner, admin, member; `admin` scope: owner, admin). A `rate_limit` above
/// the organization's plan rate takes a deployment administrator. The answer holds the key,
/// once.
#[utoipa::path(post, path = "/api/organizations/{org_id}/api-keys", tag = "api-keys", security(("session" = [])),
    params(("org_id" = OrgId, Path)), request_body = NewKey,
    responses((status = 201, body = CreatedKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
    ApiJson(req): ApiJson<NewKey>,
) -> ApiResult<(StatusCode, axum::Json<CreatedKey>)> {
    let result = async {
        let role = authorize(&state, user.id, org, Action::ManageApiKeys).await?;
        if req.scope == Scope::Admin && !role.allows(Action::MintAdminKeys) {
            return Err(ApiError::Forbidden);
        }
        let name = req.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ApiError::validation("name", "must be 1 to 100 characters"));
        }
        check_rate(req.rate_limit)?;
        within_plan(&state, &user, org, req.rate_limit).await?;
        if req.expires_at.is_some_and(|e| e <= OffsetDateTime::now_utc()) {
            return Err(ApiError::validation("expires_at", "must be in the future"));
        }
        if let Some(ids) = &req.instance_ids {
            // Each is looked up here, and searched on every request the key makes.
            if ids.len() > MAX_KEY_INSTANCES {
                return Err(ApiError::validation("instance_ids", "at most 100 instances per key"));
            }
            of_org(&state, org, ids).await?;
        }
        let id = ApiKeyId::new();
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|_| ApiError::Internal)?;
        let key = format_key(id, &secret);
        let new = NewApiKey {
            id,
            org_id: org,
            name: name.to_owned(),
            scope: req.scope,
            instance_ids: req.instance_ids,
            rate_limit: req.rate_limit,
            expires_at: req.expires_at,
            secret_hash: hash_secret(&key),
            created_by: Some(user.id),
        };
        let api_key = state.store.create_api_key(new).await?;
        Ok(CreatedKey { key, api_key })
    }
    .await;
    let target = result.as_ref().ok().map(|c| c.api_key.id.to_string());
    let created = audit::outcome(&state, &user, Some(org), "api_key.create", target, &meta, result).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// The organization's keys (never their secrets; revoked ones too), by id (creation order),
/// a page at a time: while more follow, the `Link` header holds the next page's URL.
#[utoipa::path(get, path = "/api/organizations/{org_id}/api-keys", tag = "api-keys", security(("session" = [])),
    params(("org_id" = OrgId, Path), PageParams),
    responses((status = 200, body = Vec<ApiKey>, headers(("link" = String, description = "`<…?limit=N&after=CURSOR>; rel=\"next\"` (RFC 8288, a relative URL) while more follow; absent on the last page"))),
        (status = 404, body = ErrorBody), (status = 422, description = "a bad `limit` or `after`", body = ErrorBody)))]
async fn list(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
    page: PageQuery,
) -> ApiResult<Paged<ApiKey>> {
    authorize(&state, user.id, org, Action::ViewApiKeys).await?;
    let rows = state.store.api_keys_page(org, page.after().map(|c| ApiKeyId(c.0)), page.fetch()).await?;
    Ok(page.answer(rows, |k| Cursor(k.id.0)))
}

async fn key_of(state: &ApiState, org: OrgId, id: ApiKeyId) -> ApiResult<ApiKey> {
    match state.store.api_key(id).await {
        Ok(k) if k.org_id == org => Ok(k),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::NotFound("API key")),
        Err(e) => Err(e.into()),
    }
}

/// One key.
#[utoipa::path(get, path = "/api/organizations/{org_id}/api-keys/{key_id}", tag = "api-keys", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("key_id" = ApiKeyId, Path)), responses((status = 200, body = ApiKey), (status = 404, body = ErrorBody)))]
async fn get(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, ApiKeyId)>,
) -> ApiResult<axum::Json<ApiKey>> {
    authorize(&state, user.id, org, Action::ViewApiKeys).await?;
    Ok(axum::Json(key_of(&state, org, id).await?))
}

/// Change a key's own rate limit (owner, admin, member; above the plan rate: deployment
/// administrators only). This server applies it at once,
/// other replicas within `auth.key_cache_ttl`.
#[utoipa::path(patch, path = "/api/organizations/{org_id}/api-keys/{key_id}", tag = "api-keys", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("key_id" = ApiKeyId, Path)), request_body = KeyUpdate,
    responses((status = 200, body = ApiKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, ApiKeyId)>,
    ApiJson(req): ApiJson<KeyUpdate>,
) -> ApiResult<axum::Json<ApiKey>> {
    let result = async {
        authorize(&state, user.id, org, Action::ManageApiKeys).await?;
        let rate = req.rate_limit.ok_or_else(|| {
            ApiError::validation("rate_limit", "required ({\"rate_limit\": null} clears it)")
        })?;
        check_rate(rate)?;
        within_plan(&state, &user, org, rate).await?;
        key_of(&state, org, id).await?;
        let key = state.store.set_api_key_rate_limit(id, rate).await?;
        state.keys.invalidate_all();
        Ok(key)
    }
    .await;
    let key = audit::outcome(&state, &user, Some(org), "api_key.update", Some(id.to_string()), &meta, result)
        .await?;
    Ok(axum::Json(key))
}

/// Revoke a key (owner, admin, member): it stops working within a second everywhere, at once
/// on this server. The key stays listed with `revoked_at`.
#[utoipa::path(delete, path = "/api/organizations/{org_id}/api-keys/{key_id}", tag = "api-keys", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("key_id" = ApiKeyId, Path)), responses((status = 200, body = ApiKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, ApiKeyId)>,
) -> ApiResult<axum::Json<ApiKey>> {
    let result = async {
        authorize(&state, user.id, org, Action::ManageApiKeys).await?;
        key_of(&state, org, id).await?;
        let key = state.store.revoke_api_key(id, OffsetDateTime::now_utc()).await?;
        state.keys.invalidate_all();
        Ok(key)
    }
    .await;
    let key = audit::outcome(&state, &user, Some(org), "api_key.revoke", Some(id.to_string()), &meta, result)
        .await?;
    Ok(axum::Json(key))
}

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new().routes(routes!(create, list)).routes(routes!(get, update, revoke))
}
