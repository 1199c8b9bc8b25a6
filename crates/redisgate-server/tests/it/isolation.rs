//! Tenant isolation: every management route (the console's command route included), called by
//! every role of an organization, by its owner through the console's cookie session (with and
//! without the CSRF token), by a member of another organization, and anonymously. Each case runs
//! on a fresh organization, so destructive routes cannot mask each other.

use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, control_plane};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Owner,
    /// The owner through the console's cookie session: the same answers, once the CSRF token
    /// is sent (a state change without it is refused before anything happens).
    OwnerByCookie,
    Admin,
    Member,
    Viewer,
    /// The owner of another organization.
    Outsider,
    Anonymous,
}

/// One management route: method, path under the organization, body, and the expected status
/// for each role (outsiders always get 404, anonymous callers 401).
struct Route {
    method: Method,
    path: &'static str,
    body: Option<Value>,
    owner: u16,
    admin: u16,
    member: u16,
    viewer: u16,
}

fn routes() -> Vec<Route> {
    let r = |method: Method,
             path: &'static str,
             body: Option<Value>,
             [owner, admin, member, viewer]: [u16; 4]| Route {
        method,
        path,
        body,
        owner,
        admin,
        member,
        viewer,
    };
    vec![
        r(Method::GET, "", None, [200, 200, 200, 200]),
        r(Method::PATCH, "", Some(json!({"name": "renamed"})), [200, 200, 403, 403]),
        r(Method::DELETE, "", None, [204, 403, 403, 403]),
        r(Method::GET, "/members", None, [200, 200, 200, 200]),
        r(
            Method::POST,
            "/members",
            Some(json!({"email": "new@example.com", "role": "member"})),
            [201, 201, 403, 403],
        ),
        r(
            Method::POST,
            "/members",
            Some(json!({"email": "new@example.com", "role": "owner"})),
            [201, 403, 403, 403],
        ),
        r(Method::PATCH, "/members/{target}", Some(json!({"role": "member"})), [200, 200, 403, 403]),
        r(Method::PATCH, "/members/{target}", Some(json!({"role": "owner"})), [200, 403, 403, 403]),
        r(Method::DELETE, "/members/{target}", None, [204, 204, 403, 403]),
        r(Method::GET, "/quota", None, [200, 200, 200, 200]),
        r(
            Method::PUT,
            "/quota",
            Some(json!({"max_instances": 9, "max_memory_bytes": 1, "max_api_keys": 9})),
            [403, 403, 403, 403],
        ),
        r(Method::GET, "/audit-logs", None, [200, 200, 403, 403]),
        r(Method::GET, "/redis-instances", None, [200, 200, 200, 200]),
        r(Method::POST, "/redis-instances", Some(json!({"name": "x", "memory_mb": 8})), [201, 201, 201, 403]),
        r(Method::GET, "/redis-instances/{instance}", None, [200, 200, 200, 200]),
        r(Method::GET, "/redis-instances/{instance}/stats", None, [200, 200, 200, 200]),
        r(Method::GET, "/redis-instances/{instance}/usage", None, [200, 200, 200, 200]),
        r(Method::GET, "/redis-instances/{instance}/usage?period=7d", None, [200, 200, 200, 200]),
        r(Method::DELETE, "/redis-instances/{instance}", None, [204, 204, 204, 403]),
        r(Method::PATCH, "/redis-instances/{instance}", Some(json!({"name": "y"})), [200, 200, 200, 403]),
        r(
            Method::PATCH,
            "/redis-instances/{instance}",
            Some(json!({"memory_mb": 9, "eviction_policy": "allkeys-lru"})),
            [200, 200, 200, 403],
        ),
        // The tokens: whoever may use the instance read-write may copy them; viewers may not.
        r(Method::GET, "/redis-instances/{instance}/connect", None, [200, 200, 200, 403]),
        r(Method::POST, "/redis-instances/{instance}/reset-credentials", None, [200, 200, 200, 403]),
        // The console's command line: the data plane's policy at the role's scope.
        r(
            Method::POST,
            "/redis-instances/{instance}/command",
            Some(json!({"command": ["GET", "k"]})),
            [200, 200, 200, 200],
        ),
        r(
            Method::POST,
            "/redis-instances/{instance}/command",
            Some(json!({"command": ["SET", "k", "v"]})),
            [200, 200, 200, 400],
        ),
        // Flushing is for admin-scoped keys: owners and administrators.
        r(
            Method::POST,
            "/redis-instances/{instance}/command",
            Some(json!({"command": ["FLUSHDB"]})),
            [200, 200, 400, 400],
        ),
        // Backups: taking, deleting, restoring and downloading (it holds the data) need
        // ManageInstances; listing and reading ViewInstances.
        r(Method::GET, "/redis-instances/{instance}/backups", None, [200, 200, 200, 200]),
        r(
            Method::POST,
            "/redis-instances/{instance}/backups",
            Some(json!({"name": "b"})),
            [202, 202, 202, 403],
        ),
        r(Method::GET, "/redis-instances/{instance}/backups/{backup}", None, [200, 200, 200, 200]),
        r(Method::GET, "/redis-instances/{instance}/backups/{backup}/download", None, [200, 200, 200, 403]),
        r(
            Method::POST,
            "/redis-instances/{instance}/backups/{backup}/restore",
            Some(json!({"confirm": true})),
            [200, 200, 200, 403],
        ),
        r(Method::DELETE, "/redis-instances/{instance}/backups/{backup}", None, [204, 204, 204, 403]),
        r(Method::GET, "/redis-instances/{instance}/backup-schedule", None, [200, 200, 200, 200]),
        r(
            Method::PUT,
            "/redis-instances/{instance}/backup-schedule",
            Some(json!({"retention_days": 3})),
            [200, 200, 200, 403],
        ),
        r(Method::DELETE, "/redis-instances/{instance}/backup-schedule", None, [204, 204, 204, 403]),
        // An upload that is no RDB file: refused after the role is checked.
        r(Method::POST, "/redis-instances/import?name=up", Some(json!({})), [422, 422, 422, 403]),
        r(Method::GET, "/api-keys", None, [200, 200, 200, 200]),
        r(Method::POST, "/api-keys", Some(json!({"name": "k", "scope": "read-only"})), [201, 201, 201, 403]),
        // Admin-scope keys may flush and script: owners and admins only (Action::MintAdminKeys).
        r(Method::POST, "/api-keys", Some(json!({"name": "k", "scope": "admin"})), [201, 201, 403, 403]),
        r(Method::GET, "/api-keys/{key}", None, [200, 200, 200, 200]),
        r(
            Method::PATCH,
            "/api-keys/{key}",
            Some(json!({"rate_limit": {"per_second": 5, "burst": 5}})),
            [200, 200, 200, 403],
        ),
        r(Method::DELETE, "/api-keys/{key}", None, [200, 200, 200, 403]),
        r(Method::GET, "/invitations", None, [200, 200, 403, 403]),
        r(
            Method::POST,
            "/invitations",
            Some(json!({"email": "invitee@example.com", "role": "member"})),
            [201, 201, 403, 403],
        ),
        r(
            Method::POST,
            "/invitations",
            Some(json!({"email": "invitee@example.com", "role": "owner"})),
            [201, 403, 403, 403],
        ),
        r(Method::DELETE, "/invitations/{invitation}", None, [200, 200, 403, 403]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_by_every_role_and_outsiders() {
    let g = control_plane().await;
    // The deployment administrator is someone else: no role below gets admin powers by accident.
    let (_root, _) = Api::signup(&g, "root@example.com").await;
    let (owner, _) = Api::signup(&g, "owner@example.com").await;
    let (admin, _) = Api::signup(&g, "admin@example.com").await;
    let (member, _) = Api::signup(&g, "member@example.com").await;
    let (viewer, _) = Api::signup(&g, "viewer@example.com").await;
    let (outsider, _) = Api::signup(&g, "outsider@example.com").await;
    let (_target, target_id) = Api::signup(&g, "target@example.com").await;
    Api::signup(&g, "new@example.com").await;
    let anonymous = Api::anon(&g);
    let owner_cookie = crate::console::CookieSession::login(&g, "owner@example.com").await;
    let (s, other) = outsider.post("/api/organizations", json!({"name": "Other"})).await;
    assert_eq!(s, 201);
    let other_id = other["id"].as_str().unwrap().to_owned();

    let mut cases = 0;
    for route in routes() {
        for who in [
            Who::Owner,
            Who::OwnerByCookie,
            Who::Admin,
            Who::Member,
            Who::Viewer,
            Who::Outsider,
            Who::Anonymous,
        ] {
            // A fresh organization with every role filled.
            let (s, org) = owner.post("/api/organizations", json!({"name": "Acme"})).await;
            assert_eq!(s, 201);
            let base = format!("/api/organizations/{}", org["id"].as_str().unwrap());
            for (email, role) in
                [("admin", "admin"), ("member", "member"), ("viewer", "viewer"), ("target", "viewer")]
            {
                let (s, body) = owner
                    .post(
                        &format!("{base}/members"),
                        json!({"email": format!("{email}@example.com"), "role": role}),
                    )
                    .await;
                assert_eq!(s, 201, "{body}");
            }
            // Instances and keys only where the route names one (each instance is a process).
            let mut instance = String::new();
            if route.path.contains("{instance}") {
                let (s, i) = owner
                    .post(&format!("{base}/redis-instances"), json!({"name": "i", "memory_mb": 8}))
                    .await;
                assert_eq!(s, 201, "{i}");
                instance = i["id"].as_str().unwrap().to_owned();
            }
            let mut backup = String::new();
            if route.path.contains("{backup}") {
                let backups = format!("{base}/redis-instances/{instance}/backups");
                let (s, b) = owner.post(&backups, json!({"name": "b"})).await;
                assert_eq!(s, 202, "{b}");
                backup = b["id"].as_str().unwrap().to_owned();
                crate::backups::wait_ready(&owner, &format!("{backups}/{backup}")).await;
            }
            let mut key = String::new();
            if route.path.contains("{key}") {
                let (s, k) =
                    owner.post(&format!("{base}/api-keys"), json!({"name": "k", "scope": "admin"})).await;
                assert_eq!(s, 201, "{k}");
                key = k["api_key"]["id"].as_str().unwrap().to_owned();
            }
            let mut invitation = String::new();
            if route.path.contains("{invitation}") {
                let (s, i) = owner
                    .post(
                        &format!("{base}/invitations"),
                        json!({"email": "invitee@example.com", "role": "viewer"}),
                    )
                    .await;
                assert_eq!(s, 201, "{i}");
                invitation = i["invitation"]["id"].as_str().unwrap().to_owned();
            }
            let fill = |p: &str| {
                p.replace("{target}", &target_id)
                    .replace("{instance}", &instance)
                    .replace("{key}", &key)
                    .replace("{backup}", &backup)
                    .replace("{invitation}", &invitation)
            };
            let path = format!("{base}{}", fill(route.path));
            if who == Who::OwnerByCookie {
                let body = route.body.clone();
                if route.method != Method::GET {
                    let (status, refused) =
                        owner_cookie.call(route.method.clone(), &path, body.clone(), false).await;
                    assert_eq!(
                        (status, refused["code"].as_str()),
                        (403, Some("csrf_token_invalid")),
                        "{path}"
                    );
                }
                let (status, body) = owner_cookie.call(route.method.clone(), &path, body, true).await;
                assert_eq!(status, route.owner, "by cookie {} {path}: {body}", route.method);
                cases += 1;
                let (s, _) = owner.delete(&base).await;
                assert!(s == 204 || s == 404, "cleanup: {s}");
                continue;
            }
            let (caller, want) = match who {
                Who::OwnerByCookie => unreachable!("answered above"),
                Who::Owner => (&owner, route.owner),
                Who::Admin => (&admin, route.admin),
                Who::Member => (&member, route.member),
                Who::Viewer => (&viewer, route.viewer),
                Who::Outsider => (&outsider, 404),
                Who::Anonymous => (&anonymous, 401),
            };
            let (status, body) = caller.call(route.method.clone(), &path, route.body.clone()).await;
            assert_eq!(status, want, "{who:?} {} {path}: {body}", route.method);
            if status >= 400 {
                assert!(body["error"].is_string() && body["code"].is_string(), "{who:?} {path}: {body}");
            }
            cases += 1;

            // The same caller against the other organization learns nothing.
            if matches!(who, Who::Owner | Who::Admin | Who::Member | Who::Viewer) {
                let path = format!("/api/organizations/{other_id}{}", fill(route.path));
                let (status, body) = caller.call(route.method.clone(), &path, route.body.clone()).await;
                assert_eq!(
                    (status, body["code"].as_str()),
                    (404, Some("not_found")),
                    "{who:?} {} {path}: {body}",
                    route.method
                );
                cases += 1;
            }
            // Clean up (stops this case's redis-server processes); a no-op if the case deleted it.
            let (s, _) = owner.delete(&base).await;
            assert!(s == 204 || s == 404, "cleanup: {s}");
        }
    }
    // The other organization is untouched by all of it.
    let (s, o) = outsider.get(&format!("/api/organizations/{other_id}")).await;
    assert_eq!((s, o["name"].as_str()), (200, Some("Other")));
    assert_eq!(
        outsider.get(&format!("/api/organizations/{other_id}/members")).await.1.as_array().unwrap().len(),
        1
    );
    assert!(cases >= 200, "{cases} cases");
}
