//! Invitations: how people get into an organization (and, with `auth.registration =
//! "invite"`, into the deployment). An owner or administrator invites an e-mail with a role
//! (who may invite which role is `Role::allows`, as for adding members); the answer holds a
//! single-use token, shown once and stored only as its SHA-256, which the inviter passes on
//! (no mail is sent). The invitee registers with it (`POST /auth/register` with
//! `invitation`) or, with an account already, accepts it here. Every step is audited.

use std::sync::Arc;

use http::StatusCode;
use redisgate_core::account::Email;
use redisgate_core::ids::{InvitationId, OrgId};
use redisgate_core::org::{Action, Invitation, Member, Role};
use redisgate_core::store::{Invitee, NewInvitation, StoreError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use super::auth::{Admitted, CurrentUser, hash_secret, random_token};
use super::error::ErrorBody;
use super::orgs::may_manage;
use super::{ApiError, ApiJson, ApiPath, ApiResult, ApiState, RequestMeta, State, authorize};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInvite {
    /// Who may accept: only an account with this e-mail.
    pub email: String,
    /// The role they get (inviting an owner takes an owner).
    pub role: Role,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedInvitation {
    /// The invitation token (`rgi_…`). Shown this once; pass it on to the invitee.
    pub token: String,
    pub invitation: Invitation,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Acceptance {
    /// The invitation token.
    pub token: String,
}

/// Invite an e-mail into the organization (owner, admin; only owners invite owners). The
/// answer holds the token, once; it expires after `auth.invitation_ttl`.
#[utoipa::path(post, path = "/api/organizations/{org_id}/invitations", tag = "invitations", security(("session" = [])),
    params(("org_id" = OrgId, Path)), request_body = NewInvite,
    responses((status = 201, body = CreatedInvitation), (status = 403, description = "role, or too many pending invitations", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "already a member", body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
    ApiJson(req): ApiJson<NewInvite>,
) -> ApiResult<(StatusCode, axum::Json<CreatedInvitation>)> {
    let result = async {
        let role = authorize(&state, user.id, org, Action::ManageMembers).await?;
        may_manage(role, req.role == Role::Owner)?;
        let email = Email::parse(&req.email).map_err(|m| ApiError::validation("email", m))?;
        if let Some(existing) = state.store.credentials(&email).await?
            && state.store.role_of(org, existing.user.id).await?.is_some()
        {
            return Err(already_member());
        }
        let token = random_token("rgi_");
        let new = NewInvitation {
            org_id: org,
            email,
            role: req.role,
            invited_by: user.id,
            expires_at: OffsetDateTime::now_utc() + state.auth.invitation_ttl,
            token_hash: hash_secret(&token),
        };
        let invitation = state.store.create_invitation(new).await?;
        Ok(CreatedInvitation { token, invitation })
    }
    .await;
    let target = result.as_ref().ok().map(|c| described(&c.invitation));
    let created =
        audit::outcome(&state, &user, Some(org), "invitation.create", target, &meta, result).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// What an audit entry names: the invitation, its addressee and role (no token).
fn described(inv: &Invitation) -> String {
    format!("{} ({} as {})", inv.id, inv.email.as_str(), inv.role.as_str())
}

fn already_member() -> ApiError {
    ApiError::Conflict { code: "already_member", message: "this user is already a member".into() }
}

/// The organization's pending invitations (owner, admin), oldest first. Never their tokens.
#[utoipa::path(get, path = "/api/organizations/{org_id}/invitations", tag = "invitations", security(("session" = [])),
    params(("org_id" = OrgId, Path)),
    responses((status = 200, body = Vec<Invitation>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
) -> ApiResult<axum::Json<Vec<Invitation>>> {
    authorize(&state, user.id, org, Action::ManageMembers).await?;
    Ok(axum::Json(state.store.invitations(org, OffsetDateTime::now_utc()).await?))
}

/// Revoke a pending invitation (owner, admin; only owners revoke an owner's invitation).
#[utoipa::path(delete, path = "/api/organizations/{org_id}/invitations/{invitation_id}", tag = "invitations", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("invitation_id" = InvitationId, Path)),
    responses((status = 200, body = Invitation), (status = 403, body = ErrorBody), (status = 404, description = "no such pending invitation", body = ErrorBody)))]
async fn revoke(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InvitationId)>,
) -> ApiResult<axum::Json<Invitation>> {
    let result = async {
        let role = authorize(&state, user.id, org, Action::ManageMembers).await?;
        let now = OffsetDateTime::now_utc();
        let pending = state.store.invitations(org, now).await?;
        let inv = pending.iter().find(|i| i.id == id).ok_or(ApiError::NotFound("invitation"))?;
        may_manage(role, inv.role == Role::Owner)?;
        state.store.revoke_invitation(org, id, now).await.map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound("invitation"),
            e => e.into(),
        })
    }
    .await;
    let target = Some(id.to_string());
    let inv = audit::outcome(&state, &user, Some(org), "invitation.revoke", target, &meta, result).await?;
    Ok(axum::Json(inv))
}

/// Accept an invitation with the account you are logged in as (its e-mail must be the
/// invited one): you join the organization with the invited role.
#[utoipa::path(post, path = "/api/invitations/accept", tag = "invitations", security(("session" = [])),
    request_body = Acceptance,
    responses((status = 200, body = Member), (status = 403, description = "the invitation is for another e-mail", body = ErrorBody),
        (status = 404, description = "unknown invitation", body = ErrorBody), (status = 409, description = "already a member", body = ErrorBody),
        (status = 410, description = "used, revoked or expired", body = ErrorBody),
        (status = 429, description = "too many requests from this address (`auth.anonymous_rate`)", body = ErrorBody)))]
async fn accept(
    state: State,
    // Before the session lookup: guessing tokens is held to the same per-address budget.
    Admitted(meta): Admitted,
    CurrentUser(user): CurrentUser,
    ApiJson(req): ApiJson<Acceptance>,
) -> ApiResult<axum::Json<Member>> {
    let token_hash = hash_secret(&req.token);
    let result = state
        .store
        .accept_invitation(&token_hash, Invitee::Existing(user.id), OffsetDateTime::now_utc())
        .await
        .map(|(_, member)| member)
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound("invitation"),
            StoreError::Conflict(_) => already_member(),
            e => e.into(),
        });
    // A success is the organization's business; a failure is not yet (the caller is no
    // member), so it is a deployment-level entry.
    let org = result.as_ref().ok().map(|m| m.org_id);
    let target = result.as_ref().ok().map(|m| format!("{} as {}", m.user_id, m.role.as_str()));
    let member = audit::outcome(&state, &user, org, "invitation.accept", target, &meta, result).await?;
    Ok(axum::Json(member))
}

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new().routes(routes!(create, list)).routes(routes!(revoke)).routes(routes!(accept))
}
