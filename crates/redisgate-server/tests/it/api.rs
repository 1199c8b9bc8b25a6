//! The management API end to end: accounts, organizations, members, quotas, audit, OpenAPI.

use std::time::Duration;

use redisgate_server::config::Settings;
use serde_json::{Value, json};

use crate::common::Gate;

/// A management API client, optionally logged in.
pub struct Api<'a> {
    pub g: &'a Gate,
    pub token: Option<String>,
}

impl<'a> Api<'a> {
    pub fn anon(g: &'a Gate) -> Self {
        Api { g, token: None }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.g.http.request(method, self.g.url(path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            },
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Registers `email` and logs in as it.
    pub async fn signup(g: &'a Gate, email: &str) -> (Api<'a>, String) {
        let anon = Api::anon(g);
        let (s, user) =
            anon.post("/auth/register", json!({"email": email, "password": "correct horse battery"})).await;
        assert_eq!(s, 201, "{user}");
        let (s, login) =
            anon.post("/auth/login", json!({"email": email, "password": "correct horse battery"})).await;
        assert_eq!(s, 200, "{login}");
        let id = user["id"].as_str().unwrap().to_owned();
        (Api { g, token: Some(login["token"].as_str().unwrap().to_owned()) }, id)
    }
}

pub async fn control_plane() -> Gate {
    Gate::start_unchecked(Settings::default()).await
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
}

#[tokio::test]
async fn accounts_and_sessions() {
    let g = control_plane().await;
    let anon = Api::anon(&g);
    let creds = json!({"email": "Ann@Example.com", "password": "correct horse battery"});
    let (s, ann) = anon.post("/auth/register", creds.clone()).await;
    assert_eq!(s, 201, "{ann}");
    assert_eq!((ann["email"].as_str(), ann["is_admin"].as_bool()), (Some("ann@example.com"), Some(true)));
    assert!(ann.get("password_hash").is_none());
    let (s, body) = anon
        .post("/auth/register", json!({"email": "ann@example.com", "password": "another long one"}))
        .await;
    assert_error(s, &body, 409, "email_taken");
    let (s, body) =
        anon.post("/auth/register", json!({"email": "nope", "password": "correct horse battery"})).await;
    assert_error(s, &body, 422, "validation_failed");
    assert_eq!(body["field"], "email");
    let (s, body) =
        anon.post("/auth/register", json!({"email": "bob@example.com", "password": "short"})).await;
    assert_error(s, &body, 422, "validation_failed");
    assert_eq!(body["field"], "password");
    let (s, body) = anon.post("/auth/register", json!({"email": "bob@example.com"})).await;
    assert_error(s, &body, 422, "validation_failed");
    assert!(body["error"].as_str().unwrap().contains("password"), "{body}");
    let (s, bob) = anon
        .post("/auth/register", json!({"email": "bob@example.com", "password": "correct horse battery"}))
        .await;
    assert_eq!((s, bob["is_admin"].as_bool()), (201, Some(false)), "only the first account administers");

    let (s, body) =
        anon.post("/auth/login", json!({"email": "ann@example.com", "password": "wrong password!!"})).await;
    assert_error(s, &body, 401, "invalid_credentials");
    let (s, body) = anon
        .post("/auth/login", json!({"email": "nobody@example.com", "password": "wrong password!!"}))
        .await;
    assert_error(s, &body, 401, "invalid_credentials");
    let (s, login) = anon.post("/auth/login", creds).await;
    assert_eq!(s, 200, "{login}");
    let token = login["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("rgs_") && token.len() > 40);
    let ann = Api { g: &g, token: Some(token) };
    let (s, me) = ann.get("/auth/me").await;
    assert_eq!((s, me["user"]["email"].as_str()), (200, Some("ann@example.com")));
    assert_eq!(me["organizations"], json!([]));
    assert_eq!(ann.post("/auth/logout", json!(null)).await.0, 204);
    let (s, body) = ann.get("/auth/me").await;
    assert_error(s, &body, 401, "unauthenticated");
    let (s, body) = Api { g: &g, token: Some("rgs_forged".into()) }.get("/auth/me").await;
    assert_error(s, &body, 401, "unauthenticated");
}

#[tokio::test]
async fn failed_logins_are_throttled() {
    let mut settings = Settings::default();
    settings.auth.max_failed_logins_per_email = 3;
    let g = Gate::start_unchecked(settings).await;
    let anon = Api::anon(&g);
    anon.post("/auth/register", json!({"email": "ann@example.com", "password": "correct horse battery"}))
        .await;
    for _ in 0..3 {
        let (s, _) = anon
            .post("/auth/login", json!({"email": "ann@example.com", "password": "wrong password!!"}))
            .await;
        assert_eq!(s, 401);
    }
    // Even the right password waits out the window now.
    let r = g
        .http
        .post(g.url("/auth/login"))
        .json(&json!({"email": "ann@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 15 * 60);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "too_many_requests");
}

#[tokio::test]
async fn organizations_members_and_last_owner() {
    let g = control_plane().await;
    let (ann, ann_id) = Api::signup(&g, "ann@example.com").await;
    let (bob, bob_id) = Api::signup(&g, "bob@example.com").await;
    let (s, org) = ann.post("/api/organizations", json!({"name": "Acme"})).await;
    assert_eq!(s, 201, "{org}");
    assert_eq!(
        (org["name"].as_str(), org["role"].as_str(), org["plan"].as_str()),
        (Some("Acme"), Some("owner"), Some("free"))
    );
    let id = org["id"].as_str().unwrap().to_owned();
    let base = format!("/api/organizations/{id}");
    // Outsiders cannot tell the organization exists.
    let (s, body) = bob.get(&base).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) = ann.get("/api/organizations/00000000-0000-0000-0000-000000000000").await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) = ann.get("/api/organizations/not-a-uuid").await;
    assert_error(s, &body, 404, "not_found");

    let (s, m) =
        ann.post(&format!("{base}/members"), json!({"email": "bob@example.com", "role": "viewer"})).await;
    assert_eq!((s, m["role"].as_str()), (201, Some("viewer")), "{m}");
    let (s, body) =
        ann.post(&format!("{base}/members"), json!({"email": "bob@example.com", "role": "viewer"})).await;
    assert_error(s, &body, 409, "already_member");
    let (s, body) =
        ann.post(&format!("{base}/members"), json!({"email": "carol@example.com", "role": "viewer"})).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) =
        ann.post(&format!("{base}/members"), json!({"email": "bob@example.com", "role": "emperor"})).await;
    assert_error(s, &body, 422, "validation_failed");
    let (s, list) = bob.get("/api/organizations").await;
    assert_eq!((s, list[0]["role"].as_str()), (200, Some("viewer")));
    let (s, body) = bob.patch(&base, json!({"name": "Bob's"})).await;
    assert_error(s, &body, 403, "forbidden");
    assert_eq!(ann.patch(&format!("{base}/members/{bob_id}"), json!({"role": "admin"})).await.0, 200);
    let (s, renamed) = bob.patch(&base, json!({"name": "Acme Corp"})).await;
    assert_eq!((s, renamed["name"].as_str()), (200, Some("Acme Corp")));
    // Admins cannot touch owners.
    let (s, body) = bob.patch(&format!("{base}/members/{bob_id}"), json!({"role": "owner"})).await;
    assert_error(s, &body, 403, "forbidden");
    let (s, body) = bob.delete(&format!("{base}/members/{ann_id}")).await;
    assert_error(s, &body, 403, "forbidden");
    let (s, body) = bob.delete(&base).await;
    assert_error(s, &body, 403, "forbidden");

    // The last owner can neither leave nor be demoted.
    let (s, body) = ann.delete(&format!("{base}/members/{ann_id}")).await;
    assert_error(s, &body, 409, "last_owner");
    let (s, body) = ann.patch(&format!("{base}/members/{ann_id}"), json!({"role": "admin"})).await;
    assert_error(s, &body, 409, "last_owner");
    assert_eq!(ann.patch(&format!("{base}/members/{bob_id}"), json!({"role": "owner"})).await.0, 200);
    assert_eq!(ann.delete(&format!("{base}/members/{ann_id}")).await.0, 204, "another owner exists now");
    let (s, body) = ann.get(&base).await;
    assert_error(s, &body, 404, "not_found");
    let (s, members) = bob.get(&format!("{base}/members")).await;
    assert_eq!((s, members.as_array().unwrap().len()), (200, 1));
    assert_eq!(bob.delete(&base).await.0, 204);
    assert_eq!(bob.get(&base).await.0, 404);
}

#[tokio::test]
async fn quotas_are_for_deployment_admins() {
    let g = control_plane().await;
    let (admin, _) = Api::signup(&g, "root@example.com").await;
    let (ann, _) = Api::signup(&g, "ann@example.com").await;
    let (_, org) = ann.post("/api/organizations", json!({"name": "Acme"})).await;
    let q = format!("/api/organizations/{}/quota", org["id"].as_str().unwrap());
    let (s, quota) = ann.get(&q).await;
    assert_eq!(s, 200);
    assert_eq!(quota, json!({"max_instances": 3, "max_memory_bytes": 268435456, "max_api_keys": 10}));
    let bigger = json!({"max_instances": 10, "max_memory_bytes": 1073741824, "max_api_keys": 50});
    let (s, body) = ann.put(&q, bigger.clone()).await;
    assert_error(s, &body, 403, "forbidden");
    assert_eq!(admin.put(&q, bigger.clone()).await, (200, bigger.clone()));
    assert_eq!(ann.get(&q).await.1, bigger);
    let (s, body) =
        admin.put(&q, json!({"max_instances": -1, "max_memory_bytes": 1, "max_api_keys": 1})).await;
    assert_error(s, &body, 422, "validation_failed");
    // Choosing a paid plan is for deployment admins too.
    let (s, body) = ann.post("/api/organizations", json!({"name": "Big", "plan": "enterprise"})).await;
    assert_error(s, &body, 403, "forbidden");
    assert_eq!(admin.post("/api/organizations", json!({"name": "Big", "plan": "enterprise"})).await.0, 201);
}

#[tokio::test]
async fn audit_log_records_and_pages() {
    let g = control_plane().await;
    let (ann, _) = Api::signup(&g, "ann@example.com").await;
    let (bob, bob_id) = Api::signup(&g, "bob@example.com").await;
    let (_, org) = ann.post("/api/organizations", json!({"name": "Acme"})).await;
    let base = format!("/api/organizations/{}", org["id"].as_str().unwrap());
    ann.post(&format!("{base}/members"), json!({"email": "bob@example.com", "role": "member"})).await;
    assert_eq!(bob.patch(&base, json!({"name": "mine"})).await.0, 403);
    ann.patch(&format!("{base}/members/{bob_id}"), json!({"role": "admin"})).await;
    let (s, page) = ann.get(&format!("{base}/audit-logs")).await;
    assert_eq!(s, 200, "{page}");
    let actions: Vec<&str> =
        page["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["member.role", "org.update", "member.add", "org.create"], "newest first");
    let denied = &page["items"][1];
    assert_eq!(
        (denied["outcome"].as_str(), denied["actor"].as_str()),
        (Some("denied"), Some("bob@example.com"))
    );
    assert!(page["items"][0]["ip"].as_str().is_some_and(|ip| ip == "127.0.0.1"));
    let text = page.to_string();
    assert!(!text.contains("correct horse battery") && !text.contains("rgs_"), "no secret in the audit log");

    let (_, only) = ann.get(&format!("{base}/audit-logs?action=member.add")).await;
    assert_eq!(only["items"].as_array().unwrap().len(), 1);
    let (_, denied_only) = ann.get(&format!("{base}/audit-logs?outcome=denied")).await;
    assert_eq!(denied_only["items"].as_array().unwrap().len(), 1);
    let (_, p1) = ann.get(&format!("{base}/audit-logs?limit=3")).await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 3);
    let next = p1["next"].as_str().unwrap();
    let (_, p2) = ann.get(&format!("{base}/audit-logs?limit=3&before={next}")).await;
    assert_eq!(p2["items"][0]["action"], "org.create");
    assert!(p2.get("next").is_none());
    let (s, body) = ann.get(&format!("{base}/audit-logs?limit=0")).await;
    assert_error(s, &body, 422, "validation_failed");
    // Members below admin cannot read it.
    ann.patch(&format!("{base}/members/{bob_id}"), json!({"role": "member"})).await;
    let (s, body) = bob.get(&format!("{base}/audit-logs")).await;
    assert_error(s, &body, 403, "forbidden");
}

#[tokio::test]
async fn openapi_document_and_docs_page() {
    let g = control_plane().await;
    let (s, doc) = Api::anon(&g).get("/openapi.json").await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/auth/register",
        "/auth/login",
        "/auth/me",
        "/auth/logout",
        "/api/organizations",
        "/api/organizations/{org_id}",
        "/api/organizations/{org_id}/members",
        "/api/organizations/{org_id}/members/{user_id}",
        "/api/organizations/{org_id}/quota",
        "/api/organizations/{org_id}/audit-logs",
        "/api/organizations/{org_id}/redis-instances",
        "/api/organizations/{org_id}/redis-instances/{instance_id}",
        "/api/organizations/{org_id}/redis-instances/{instance_id}/stats",
        "/api/organizations/{org_id}/api-keys",
        "/api/organizations/{org_id}/api-keys/{key_id}",
    ] {
        assert!(paths.contains_key(p), "{p} missing from /openapi.json");
    }
    // The data plane is served beside the router, by path: no API path may fall to it.
    for p in paths.keys() {
        let first = p.trim_start_matches('/').split('/').next().unwrap();
        assert!(redisgate_server::serve::ROUTER_SEGMENTS.contains(&first), "{p} is not routed to the API");
    }
    let r = g.http.get(g.url("/docs/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("swagger"), "{html}");
    assert!(!html.contains("https://"), "the docs page loads nothing from the internet");
    let (s, body) = Api::anon(&g).get("/no/such/route").await;
    assert_error(s, &body, 404, "not_found");
    let _ = Duration::ZERO;
}
