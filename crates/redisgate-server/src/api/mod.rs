//! The control plane: a JSON API over the metadata store, one module per noun.
//!
//! # Layout
//! - [`error`]: [`ApiError`], the JSON error body of every management answer.
//! - [`auth`]: register, log in, sessions; the [`auth::CurrentUser`] extractor.
//! - [`orgs`]: organizations, members and quotas, guarded by the role table in
//!   `redisgate_core::org::Role::allows`.
//! - [`invitations`]: inviting people into an organization by e-mail, single-use tokens.
//! - [`audit`]: recording and listing the audit log.
//! - [`instances`]: Redis instances (provisioned by RedisGate or brought by the user).
//! - [`backups`]: instances' backups, restores, daily schedules and RDB imports.
//! - [`keys`]: API keys for the data plane.
//! - [`commands`]: running Redis commands from a member's session (the console), through the
//!   gateway's own path.
//! - [`paging`]: the `limit`/`after` pages of the listings, with their `Link` header.
//! - [`plans`]: plans, their quotas and rate limits.
//! - [`usage`]: an instance's usage history.
//!
//! Handlers are thin: extract, authorize, call the store or a service, map to a response.
//! Every route is registered through `utoipa_axum`, so `/openapi.json` is generated from the
//! same code that serves the requests.

pub mod audit;
pub mod auth;
pub mod backups;
pub mod commands;
pub mod error;
pub mod instances;
pub mod invitations;
pub mod keys;
pub mod orgs;
pub mod paging;
pub mod plans;
pub mod usage;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use http::request::Parts;
use redisgate_core::ids::{OrgId, UserId};
use redisgate_core::org::{Action, Role};
use redisgate_core::store::Store;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use self::error::{ApiError, ApiResult};
use crate::config::AuthSettings;

/// Shared state of the management API.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub instances: Arc<crate::instances::Instances>,
    pub backups: Arc<crate::backups::Backups>,
    /// For revocations to take effect at once on this server.
    pub keys: Arc<crate::gateway::keys::KeyAuth>,
    /// The data plane, for the commands members run from the console.
    pub gateway: Arc<crate::gateway::Gateway>,
    /// The configured rates (what a plan gets when the API has not set one).
    pub rate_limit: crate::config::RateLimitSettings,
    pub auth: AuthSettings,
    pub throttle: auth::LoginThrottle,
    /// `auth.anonymous_rate`.
    pub anonymous: auth::AnonymousLimit,
    /// `quota.max_organizations_per_user`.
    pub max_orgs_per_user: u32,
    /// `http.trusted_proxies`: peers whose forwarding headers name the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `http.public_url`: the base of the REST URLs on connect pages.
    pub public_url: Option<url::Url>,
}

pub type State = axum::extract::State<Arc<ApiState>>;

/// A JSON body whose rejections are [`ApiError`]s (so they are JSON too).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Path parameters whose rejections are [`ApiError`]s: a malformed id is a 404, as for an
/// id that does not exist.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Where a request came from, for the audit log and the login throttle.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl FromRequestParts<Arc<ApiState>> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| client_ip(c.0.ip(), &parts.headers, &state.trusted_proxies).to_string());
        let user_agent = parts
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect());
        Ok(RequestMeta { ip, user_agent })
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in which case the
/// right-most address of the forwarding chain that is not a trusted proxy (the left-most
/// entries are whatever the client wrote, so only what trusted hops appended counts).
/// `X-Forwarded-For` is read, or `Forwarded` when there is none: a proxy that writes only
/// `Forwarded` must drop incoming `X-Forwarded-For`. An entry that is not an address
/// (`unknown`, an obfuscated name) ends the walk at the trusted hop that wrote it.
pub fn client_ip(peer: IpAddr, headers: &http::HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let xff = headers.get_all("x-forwarded-for");
    let hops: Vec<Option<IpAddr>> = if xff.iter().next().is_some() {
        xff.iter().flat_map(|v| v.to_str().unwrap_or("?").split(',')).map(parse_hop).collect()
    } else {
        headers
            .get_all(http::header::FORWARDED)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("for=?").split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| parse_hop(v))
                })
            })
            .collect()
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) if is_trusted(&ip) => client = ip,
            Some(ip) => return ip,
            None => return client,
        }
    }
    client
}

/// One hop: `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80`, `::1`, optionally quoted.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip())
}

/// The caller's role in `org`, if it allows `action`. A caller who is not a member gets
/// `NotFound`, exactly as for an organization that does not exist, so ids leak nothing.
pub async fn authorize(state: &ApiState, user: UserId, org: OrgId, action: Action) -> ApiResult<Role> {
    let role = state.store.role_of(org, user).await?.ok_or(ApiError::NotMember)?;
    if role.allows(action) { Ok(role) } else { Err(ApiError::Forbidden) }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "RedisGate management API", description = "Users, organizations, members, quotas and the audit log. Errors are JSON `{\"error\", \"code\"}`."),
    components(schemas(error::ErrorBody)),
    modifiers(&SessionAuth)
)]
struct ApiDoc;

struct SessionAuth;

impl utoipa::Modify for SessionAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "a session token from POST /auth/login; the console sends the `rg_session` cookie instead \
                         (login with `cookie: true`), and then every POST, PUT, PATCH and DELETE needs the \
                         session's `csrf_token` (from the login answer or GET /auth/me) as `x-csrf-token`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The management routes and their OpenAPI document.
pub fn router(state: Arc<ApiState>) -> (axum::Router, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(auth::routes())
        .merge(orgs::routes())
        .merge(invitations::routes())
        .merge(audit::routes())
        .merge(instances::routes())
        .merge(backups::routes())
        .merge(keys::routes())
        .merge(commands::routes())
        .merge(plans::routes())
        .merge(usage::routes())
        .split_for_parts();
    let mut api = api;
    qualify_operation_ids(&mut api);
    (router.with_state(state), api)
}

/// utoipa names an operation after its handler, and most modules have a `list`, a `get` and a
/// `delete`; OpenAPI wants operation ids unique (generators and fuzzers key on them), so each
/// is qualified by its tag, which is its module: `redis_instances_list`.
fn qualify_operation_ids(api: &mut utoipa::openapi::OpenApi) {
    for item in api.paths.paths.values_mut() {
        let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for op in ops.into_iter().flatten() {
            if let (Some(id), Some(tag)) = (&op.operation_id, op.tags.as_ref().and_then(|t| t.first())) {
                op.operation_id = Some(format!("{}_{id}", tag.replace('-', "_")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    // Pure classification: addresses are only compared, nothing is connected to.
    #[test]
    fn forwarding_headers_count_only_from_trusted_peers() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let forged = headers(&[("x-forwarded-for", "1.1.1.1")]);
        // An untrusted peer's header is ignored.
        assert_eq!(client_ip(ip("8.8.8.8"), &forged, &trusted), ip("8.8.8.8"));
        assert_eq!(client_ip(ip("8.8.8.8"), &forged, &[]), ip("8.8.8.8"));
        // Through a trusted proxy: the right-most untrusted address, not what the client wrote.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 9.9.9.9, 10.1.1.1")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("9.9.9.9"));
        let h = headers(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "9.9.9.9:5000")]);
        assert_eq!(client_ip(ip("::1"), &h, &trusted), ip("9.9.9.9"));
        // Every hop trusted: the left-most one.
        let h = headers(&[("x-forwarded-for", "10.2.2.2, 10.3.3.3")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.2.2.2"));
        // No header: the proxy itself.
        assert_eq!(client_ip(ip("10.0.0.1"), &http::HeaderMap::new(), &trusted), ip("10.0.0.1"));
        // An entry that is no address stops at the trusted hop that appended it.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, unknown, 10.4.4.4")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.4.4.4"));
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("forwarded", r#"for=1.1.1.1;proto=http, for="[2001:db8::1]:4711";by=10.0.0.1"#)]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("2001:db8::1"));
        let h = headers(&[("forwarded", "for=9.9.9.9"), ("x-forwarded-for", "8.8.4.4")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("8.8.4.4"));
        let h = headers(&[("forwarded", "for=_hidden, for=10.5.5.5")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.5.5.5"));
    }
}
