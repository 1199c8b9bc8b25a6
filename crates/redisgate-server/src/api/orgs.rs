//! Organizations, their members and quotas. Every route checks the caller's role against
//! `Role::allows` (the one permission table); non-members get 404 as for a missing org.

use std::sync::Arc;

use http::StatusCode;
use redisgate_core::account::Email;
use redisgate_core::ids::{OrgId, UserId};
use redisgate_core::org::{Action, Member, Organization, Role};
use redisgate_core::page::MAX_LIMIT;
use redisgate_core::quota::{Plan, Quota};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use super::auth::CurrentUser;
use super::error::ErrorBody;
use super::{ApiError, ApiJson, ApiPath, ApiResult, ApiState, RequestMeta, State, authorize};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrg {
    /// 1–100 characters.
    pub name: String,
    /// `free` (default); other plans only for deployment administrators.
    pub plan: Option<Plan>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgUpdate {
    pub name: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OrgView {
    #[serde(flatten)]
    pub org: Organization,
    /// The caller's role.
    pub role: Role,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// The e-mail of a registered user.
    pub email: String,
    pub role: Role,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleUpdate {
    pub role: Role,
}

fn org_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    match name.chars().count() {
        1..=100 if !name.chars().any(char::is_control) => Ok(name.to_owned()),
        _ => Err(ApiError::validation("name", "must be 1 to 100 printable characters")),
    }
}

/// Create an organization; the caller becomes its owner. A user owns at most
/// `quota.max_organizations_per_user` (403 `quota_exceeded`, `limit: max_organizations`);
/// deployment administrators have no cap.
#[utoipa::path(post, path = "/api/organizations", tag = "organizations", security(("session" = [])), request_body = NewOrg,
    responses((status = 201, body = OrgView), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiJson(req): ApiJson<NewOrg>,
) -> ApiResult<(StatusCode, axum::Json<OrgView>)> {
    let result = async {
        let name = org_name(&req.name)?;
        let plan = req.plan.unwrap_or(Plan::Free);
        if plan != Plan::Free && !user.is_admin {
            return Err(ApiError::Forbidden);
        }
        let cap = if user.is_admin { u32::MAX } else { state.max_orgs_per_user };
        Ok(state.store.create_org(&name, plan, user.id, cap).await?)
    }
    .await;
    let target = result.as_ref().ok().map(|o| o.id.to_string());
    let org = audit::outcome(
        &state,
        &user,
        result.as_ref().ok().map(|o| o.id),
        "org.create",
        target,
        &meta,
        result,
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(OrgView { org, role: Role::Owner })))
}

/// The caller's organizations.
#[utoipa::path(get, path = "/api/organizations", tag = "organizations", security(("session" = [])),
    responses((status = 200, body = Vec<OrgView>), (status = 401, body = ErrorBody)))]
async fn list(state: State, CurrentUser(user): CurrentUser) -> ApiResult<axum::Json<Vec<OrgView>>> {
    let orgs = state.store.orgs_of(user.id).await?;
    Ok(axum::Json(orgs.into_iter().map(|(org, role)| OrgView { org, role }).collect()))
}

/// One organization.
#[utoipa::path(get, path = "/api/organizations/{org_id}", tag = "organizations", security(("session" = [])),
    params(("org_id" = OrgId, Path)), responses((status = 200, body = OrgView), (status = 404, body = ErrorBody)))]
async fn get(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
) -> ApiResult<axum::Json<OrgView>> {
    let role = authorize(&state, user.id, org, Action::ViewOrg).await?;
    Ok(axum::Json(OrgView { org: state.store.org(org).await?, role }))
}

/// Rename an organization (owner, admin).
#[utoipa::path(patch, path = "/api/organizations/{org_id}", tag = "organizations", security(("session" = [])),
    params(("org_id" = OrgId, Path)), request_body = OrgUpdate,
    responses((status = 200, body = OrgView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
    ApiJson(req): ApiJson<OrgUpdate>,
) -> ApiResult<axum::Json<OrgView>> {
    let result = async {
        let role = authorize(&state, user.id, org, Action::UpdateOrg).await?;
        let name = org_name(&req.name)?;
        Ok(OrgView { org: state.store.rename_org(org, &name).await?, role })
    }
    .await;
    let view =
        audit::outcome(&state, &user, Some(org), "org.update", Some(org.to_string()), &meta, result).await?;
    Ok(axum::Json(view))
}

/// Delete an organization and everything it owns (owner).
#[utoipa::path(delete, path = "/api/organizations/{org_id}", tag = "organizations", security(("session" = [])),
    params(("org_id" = OrgId, Path)), responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
) -> ApiResult<StatusCode> {
    let result = async {
        authorize(&state, user.id, org, Action::DeleteOrg).await?;
        // The organization's servers go with it: stop them (and remove local data) first, so
        // no process outlives the rows that describe it.
        // Page by page, so that thousands of instances are never held at once.
        let mut after = None;
        loop {
            let page = state.store.instances_page(org, after, MAX_LIMIT).await?;
            for inst in &page {
                let rec = state.store.instance(inst.id).await?;
                if let Err(reason) = state.instances.delete(&rec).await {
                    tracing::error!(instance.id = %inst.id, %reason, "could not destroy an instance's server");
                    return Err(ApiError::Internal);
                }
            }
            match page.last() {
                Some(last) if page.len() == MAX_LIMIT as usize => after = Some(last.id),
                _ => break,
            }
        }
        Ok(state.store.delete_org(org).await?)
    }
    .await;
    audit::outcome(&state, &user, Some(org), "org.delete", Some(org.to_string()), &meta, result).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The organization's members.
#[utoipa::path(get, path = "/api/organizations/{org_id}/members", tag = "members", security(("session" = [])),
    params(("org_id" = OrgId, Path)), responses((status = 200, body = Vec<Member>), (status = 404, body = ErrorBody)))]
async fn members(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
) -> ApiResult<axum::Json<Vec<Member>>> {
    authorize(&state, user.id, org, Action::ViewOrg).await?;
    Ok(axum::Json(state.store.members(org).await?))
}

/// Checks that `role` may hand out or take away `target_role`s: only owners touch owners.
pub(super) fn may_manage(role: Role, touches_owner: bool) -> ApiResult<()> {
    let action = if touches_owner { Action::ManageOwners } else { Action::ManageMembers };
    if role.allows(action) { Ok(()) } else { Err(ApiError::Forbidden) }
}

/// Add a registered user by e-mail (owner, admin; only owners add owners).
#[utoipa::path(post, path = "/api/organizations/{org_id}/members", tag = "members", security(("session" = [])),
    params(("org_id" = OrgId, Path)), request_body = NewMember,
    responses((status = 201, body = Member), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_member(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
    ApiJson(req): ApiJson<NewMember>,
) -> ApiResult<(StatusCode, axum::Json<Member>)> {
    let result = async {
        let role = authorize(&state, user.id, org, Action::ManageMembers).await?;
        may_manage(role, req.role == Role::Owner)?;
        let email = Email::parse(&req.email).map_err(|m| ApiError::validation("email", m))?;
        let target = state.store.credentials(&email).await?.ok_or(ApiError::NotFound("user"))?.user;
        state.store.add_member(org, target.id, req.role).await.map_err(|e| match e {
            redisgate_core::store::StoreError::Conflict(_) => {
                ApiError::Conflict { code: "already_member", message: "this user is already a member".into() }
            }
            e => e.into(),
        })
    }
    .await;
    let target = result.as_ref().ok().map(|m| m.user_id.to_string());
    let member = audit::outcome(&state, &user, Some(org), "member.add", target, &meta, result).await?;
    Ok((StatusCode::CREATED, axum::Json(member)))
}

/// Change a member's role (owner, admin; only owners grant or revoke owner).
#[utoipa::path(patch, path = "/api/organizations/{org_id}/members/{user_id}", tag = "members", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("user_id" = UserId, Path)), request_body = RoleUpdate,
    responses((status = 200, body = Member), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "last owner", body = ErrorBody)))]
async fn set_role(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath((org, target)): ApiPath<(OrgId, UserId)>,
    ApiJson(req): ApiJson<RoleUpdate>,
) -> ApiResult<axum::Json<Member>> {
    let result = async {
        let role = authorize(&state, user.id, org, Action::ManageMembers).await?;
        let current = state.store.role_of(org, target).await?.ok_or(ApiError::NotFound("member"))?;
        may_manage(role, current == Role::Owner || req.role == Role::Owner)?;
        Ok(state.store.set_role(org, target, req.role).await?)
    }
    .await;
    let detail_target = Some(format!("{target} -> {}", req.role.as_str()));
    let member =
        audit::outcome(&state, &user, Some(org), "member.role", detail_target, &meta, result).await?;
    Ok(axum::Json(member))
}

/// Remove a member, or leave (any member may remove themselves, except the last owner).
#[utoipa::path(delete, path = "/api/organizations/{org_id}/members/{user_id}", tag = "members", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("user_id" = UserId, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "last owner", body = ErrorBody)))]
async fn remove_member(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath((org, target)): ApiPath<(OrgId, UserId)>,
) -> ApiResult<StatusCode> {
    let result = async {
        if target == user.id {
            authorize(&state, user.id, org, Action::ViewOrg).await?;
        } else {
            let role = authorize(&state, user.id, org, Action::ManageMembers).await?;
            let current = state.store.role_of(org, target).await?.ok_or(ApiError::NotFound("member"))?;
            may_manage(role, current == Role::Owner)?;
        }
        Ok(state.store.remove_member(org, target).await?)
    }
    .await;
    audit::outcome(&state, &user, Some(org), "member.remove", Some(target.to_string()), &meta, result)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The organization's quota.
#[utoipa::path(get, path = "/api/organizations/{org_id}/quota", tag = "organizations", security(("session" = [])),
    params(("org_id" = OrgId, Path)), responses((status = 200, body = Quota), (status = 404, body = ErrorBody)))]
async fn get_quota(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
) -> ApiResult<axum::Json<Quota>> {
    authorize(&state, user.id, org, Action::ViewOrg).await?;
    Ok(axum::Json(state.store.org(org).await?.quota))
}

/// Change the organization's quota (deployment administrators only).
#[utoipa::path(put, path = "/api/organizations/{org_id}/quota", tag = "organizations", security(("session" = [])),
    params(("org_id" = OrgId, Path)), request_body = Quota,
    responses((status = 200, body = Quota), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_quota(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
    ApiJson(quota): ApiJson<Quota>,
) -> ApiResult<axum::Json<Quota>> {
    let result = async {
        // The store keeps these as signed 32/64-bit numbers; larger values are not quotas.
        if quota.max_instances > 1_000_000 || quota.max_api_keys > 1_000_000 {
            return Err(ApiError::validation(
                "max_instances",
                "max_instances and max_api_keys must be at most 1000000",
            ));
        }
        if i64::try_from(quota.max_memory_bytes).is_err() {
            return Err(ApiError::validation("max_memory_bytes", "must be below 2^63"));
        }
        if !user.is_admin {
            // Members see a 403, everyone else the same 404 as for a missing organization.
            authorize(&state, user.id, org, Action::ViewOrg).await?;
            return Err(ApiError::Forbidden);
        }
        state.store.set_quota(org, quota).await.map_err(|e| match e {
            redisgate_core::store::StoreError::NotFound => ApiError::NotFound("organization"),
            e => e.into(),
        })
    }
    .await;
    let org_after =
        audit::outcome(&state, &user, Some(org), "quota.update", Some(org.to_string()), &meta, result)
            .await?;
    Ok(axum::Json(org_after.quota))
}

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete))
        .routes(routes!(members, add_member))
        .routes(routes!(set_role, remove_member))
        .routes(routes!(get_quota, set_quota))
}
