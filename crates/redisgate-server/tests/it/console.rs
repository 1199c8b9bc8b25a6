//! The web console: its embedded assets and their headers, cookie sessions with CSRF tokens,
//! the command route it runs Redis commands through, and the whole console in a real
//! browser (`tests/browser/console.mjs`: playwright-core driving Debian's chromium, axe-core
//! on every page).

use std::time::Duration;

use redisgate_server::config::{CookieSecure, Settings};
use serde_json::{Value, json};

use crate::api::{Api, control_plane};
use crate::common::{Gate, Redis, repo_root, run_to_report, settings};
use crate::instances::{Tenant, redis_cmd};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn check_console_assets(g: &Gate) {
    let http = no_redirects();
    let page = http.get(g.url("/console/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "content-security-policy"), CSP);
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "referrer-policy"), "no-referrer");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let etag = header(&page, "etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    let html = page.text().await.unwrap();
    // No inline script or style: the CSP would block them, and they are not needed.
    assert!(html.contains(r#"<script type="module" src="app.js"></script>"#), "{html}");
    assert!(!html.contains("<style") && !html.contains(" style=") && !html.contains("<script>"), "{html}");
    let again = http.get(g.url("/console/")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(header(&again, "content-security-policy"), CSP);
    for (file, kind) in
        [("app.js", "text/javascript; charset=utf-8"), ("style.css", "text/css; charset=utf-8")]
    {
        let r = http.get(g.url(&format!("/console/{file}"))).send().await.unwrap();
        assert_eq!((r.status().as_u16(), header(&r, "content-type")), (200, kind), "{file}");
        assert_eq!(header(&r, "content-security-policy"), CSP);
    }
    let missing = http.get(g.url("/console/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(header(&missing, "content-security-policy"), CSP);
    let body: Value = missing.json().await.unwrap();
    assert!(body["error"].is_string() && body["code"] == "not_found", "{body}");
    let bare = http.get(g.url("/console")).send().await.unwrap();
    assert_eq!((bare.status().as_u16(), header(&bare, "location")), (308, "/console/"));
}

#[tokio::test]
async fn console_assets_carry_a_strict_csp() {
    let g = control_plane().await;
    check_console_assets(&g).await;
    let root = no_redirects().get(g.url("/")).send().await.unwrap();
    assert_eq!((root.status().as_u16(), header(&root, "location")), (308, "/console/"));
}

#[tokio::test]
async fn standalone_mode_leaves_the_console_to_the_router() {
    let redis = Redis::start().await;
    let g = Gate::start(settings(&redis)).await;
    check_console_assets(&g).await;
    // Every other path is still a command.
    let (s, body) = g.post_json("/echo/console", "").await;
    assert_eq!((s, body["result"].as_str()), (200, Some("console")), "{body}");
}

/// Logs in with `cookie: true`; the `Set-Cookie` line and the answer.
async fn cookie_login(g: &Gate, email: &str, headers: &[(&str, &str)]) -> (String, Value) {
    let mut r = g
        .http
        .post(g.url("/auth/login"))
        .json(&json!({"email": email, "password": "correct horse battery", "cookie": true}));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let set_cookie = header(&r, "set-cookie").to_owned();
    (set_cookie, r.json().await.unwrap())
}

/// A console session: the `rg_session` cookie and its CSRF token, as the browser holds them.
pub struct CookieSession<'a> {
    g: &'a Gate,
    cookie: String,
    csrf: String,
}

impl<'a> CookieSession<'a> {
    pub async fn login(g: &'a Gate, email: &str) -> CookieSession<'a> {
        let (set_cookie, answer) = cookie_login(g, email, &[]).await;
        let csrf = answer["csrf_token"].as_str().unwrap().to_owned();
        CookieSession { g, cookie: cookie_pair(&set_cookie), csrf }
    }

    /// Calls `path` with the cookie, and with the CSRF token when `csrf`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        csrf: bool,
    ) -> (u16, Value) {
        let mut r = self.g.http.request(method, self.g.url(path)).header("cookie", &self.cookie);
        if csrf {
            r = r.header("x-csrf-token", &self.csrf);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// The `rg_session=…` pair of a `Set-Cookie` line, as a browser sends it back.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn cookie_sessions_need_the_csrf_token_to_change_anything() {
    let g = control_plane().await;
    let (bearer, _) = Api::signup(&g, "ann@example.com").await;
    let (set_cookie, answer) = cookie_login(&g, "ann@example.com", &[]).await;
    let attrs: Vec<&str> = set_cookie.split(';').map(str::trim).collect();
    assert!(attrs[0].starts_with("rg_session=rgs_"), "{set_cookie}");
    for want in ["Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=86400"] {
        assert!(attrs.contains(&want), "{want} missing: {set_cookie}");
    }
    assert!(!attrs.contains(&"Secure"), "plain HTTP, no trusted proxy: {set_cookie}");
    // The page never sees the session: only its CSRF token.
    assert!(answer.get("token").is_none(), "{answer}");
    let csrf = answer["csrf_token"].as_str().unwrap().to_owned();
    let cookie = cookie_pair(&set_cookie);

    let call = |method: reqwest::Method, path: &str, csrf: Option<&str>| {
        let mut r = g.http.request(method, g.url(path)).header("cookie", &cookie);
        if let Some(t) = csrf {
            r = r.header("x-csrf-token", t);
        }
        r
    };
    let me: Value = call(reqwest::Method::GET, "/auth/me", None).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (me["user"]["email"].as_str(), me["csrf_token"].as_str()),
        (Some("ann@example.com"), Some(&*csrf))
    );
    // A state change with the cookie alone (what another site's form could send) is refused.
    for token in [None, Some("wrong"), Some("")] {
        let r = call(reqwest::Method::POST, "/api/organizations", token).json(&json!({"name": "Acme"}));
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 403, "{token:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "csrf_token_invalid", "{body}");
        assert!(body["error"].as_str().unwrap().contains("x-csrf-token"), "{body}");
    }
    assert!(bearer.get("/api/organizations").await.1.as_array().unwrap().is_empty(), "nothing was created");
    let r = call(reqwest::Method::POST, "/api/organizations", Some(&csrf)).json(&json!({"name": "Acme"}));
    let (s, org) = {
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(s, 201, "{org}");
    let path = format!("/api/organizations/{}", org["id"].as_str().unwrap());
    let r = call(reqwest::Method::DELETE, &path, None).send().await.unwrap();
    assert_eq!(r.status(), 403, "DELETE needs it too");
    let r = call(reqwest::Method::PATCH, &path, Some("x")).json(&json!({"name": "B"})).send().await.unwrap();
    assert_eq!(r.status(), 403, "PATCH needs it too");
    // Bearer sessions need none: another site cannot know the token.
    let (s, _) = bearer.post("/api/organizations", json!({"name": "Other"})).await;
    assert_eq!(s, 201);
    // A made-up bearer token is not completed by the cookie.
    let r = call(reqwest::Method::GET, "/auth/me", None).bearer_auth("rgs_made_up").send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Another session's CSRF token does not fit this one.
    let (other, other_answer) = cookie_login(&g, "ann@example.com", &[]).await;
    assert_ne!(cookie_pair(&other), cookie);
    let r = call(reqwest::Method::POST, "/api/organizations", other_answer["csrf_token"].as_str())
        .json(&json!({"name": "C"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Logging out needs the token, revokes the session and clears the cookie.
    let r = call(reqwest::Method::POST, "/auth/logout", None).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = call(reqwest::Method::POST, "/auth/logout", Some(&csrf)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let cleared = header(&r, "set-cookie");
    assert!(cleared.starts_with("rg_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
    let r = call(reqwest::Method::GET, "/auth/me", None).send().await.unwrap();
    assert_eq!(r.status(), 401, "revoked on the server, not only forgotten by the browser");
}

#[tokio::test]
async fn the_cookie_is_secure_over_tls_only_as_the_settings_say() {
    // Behind a trusted proxy that says the client came over HTTPS.
    let mut s = Settings::default();
    s.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let g = Gate::start_unchecked(s).await;
    Api::signup(&g, "ann@example.com").await;
    let (c, _) = cookie_login(&g, "ann@example.com", &[("x-forwarded-proto", "https")]).await;
    assert!(c.split(';').any(|a| a.trim() == "Secure"), "{c}");
    let (c, _) = cookie_login(&g, "ann@example.com", &[("x-forwarded-proto", "http")]).await;
    assert!(!c.split(';').any(|a| a.trim() == "Secure"), "{c}");
    // An untrusted peer's header is ignored.
    let g = control_plane().await;
    Api::signup(&g, "ann@example.com").await;
    let (c, _) = cookie_login(&g, "ann@example.com", &[("x-forwarded-proto", "https")]).await;
    assert!(!c.split(';').any(|a| a.trim() == "Secure"), "{c}");
    // `auth.cookie_secure = "always"` (TLS terminated by something that does not say so).
    let mut s = Settings::default();
    s.auth.cookie_secure = CookieSecure::Always;
    let g = Gate::start_unchecked(s).await;
    Api::signup(&g, "ann@example.com").await;
    let (c, _) = cookie_login(&g, "ann@example.com", &[]).await;
    assert!(c.split(';').any(|a| a.trim() == "Secure"), "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_route_is_the_data_plane_at_the_roles_scope() {
    let g = control_plane().await;
    let owner = Tenant::new(&g, "owner@example.com").await;
    let (viewer, _) = Api::signup(&g, "viewer@example.com").await;
    let (s, _) = owner
        .api
        .post(
            &format!("/api/organizations/{}/members", owner.org),
            json!({"email": "viewer@example.com", "role": "viewer"}),
        )
        .await;
    assert_eq!(s, 201);
    let path = format!("/api/organizations/{}/redis-instances/{}/command", owner.org, owner.instance);
    let (s, r) = owner.api.post(&path, json!({"command": ["SET", "greeting", "hello"]})).await;
    assert_eq!((s, r), (200, json!({"result": "OK"})));
    let (s, r) = viewer.post(&path, json!({"command": ["GET", "greeting"]})).await;
    assert_eq!((s, r), (200, json!({"result": "hello"})));
    // Binary-safe answers on request.
    let (s, r) = owner.api.post(&path, json!({"command": ["GET", "greeting"], "encoding": "base64"})).await;
    assert_eq!((s, r), (200, json!({"result": "aGVsbG8="})));
    let (s, r) =
        owner.api.post(&path, json!({"pipeline": [["INCR", "n"], ["INCR", "greeting"], ["TTL", "n"]]})).await;
    assert_eq!(s, 200);
    assert_eq!(
        r,
        json!([{"result": 1}, {"error": "ERR value is not an integer or out of range"}, {"result": -1}])
    );

    // A viewer writes nothing, and is told so in the data plane's words: compare with a
    // read-only key on the data plane itself.
    let (ro_key, _) = owner.key(json!({"name": "ro", "scope": "read-only"})).await;
    let (s, plane) = redis_cmd(&g, &owner.instance, &ro_key, json!(["SET", "greeting", "x"])).await;
    assert_eq!(s, 400);
    let (s, r) = viewer.post(&path, json!({"command": ["SET", "greeting", "x"]})).await;
    assert_eq!((s, &r["error"], r["code"].as_str()), (400, &plane["error"], Some("command_failed")), "{r}");
    assert!(r["error"].as_str().unwrap().starts_with("NOPERM"), "{r}");
    // What the gateway refuses to everyone, it refuses here, with its text.
    let (admin_key, _) = owner.key(json!({"name": "admin", "scope": "admin"})).await;
    for cmd in [json!(["CONFIG", "GET", "*"]), json!(["NOSUCHCOMMAND"]), json!(["BLPOP", "q", "0"])] {
        let (s, plane) = redis_cmd(&g, &owner.instance, &admin_key, cmd.clone()).await;
        let (s2, r) = owner.api.post(&path, json!({"command": cmd})).await;
        assert_eq!((s2, &r["error"]), (s, &plane["error"]), "{cmd}: {r}");
        assert_eq!(s, 400, "{plane}");
    }
    let (s, v) = redis_cmd(&g, &owner.instance, &ro_key, json!(["GET", "greeting"])).await;
    assert_eq!((s, v), (200, json!({"result": "hello"})), "the viewer's SET never ran");

    // Running as an API key: its scope (never above the role), until it is revoked.
    let (_, rw_id) = owner.key(json!({"name": "rw", "scope": "read-write"})).await;
    let (s, r) = owner.api.post(&path, json!({"command": ["SET", "k", "1"], "api_key_id": rw_id})).await;
    assert_eq!((s, r), (200, json!({"result": "OK"})));
    let (s, r) = owner.api.post(&path, json!({"command": ["FLUSHDB"], "api_key_id": rw_id})).await;
    assert_eq!(s, 400, "read-write keys do not flush: {r}");
    let (s, r) = viewer.post(&path, json!({"command": ["SET", "k", "2"], "api_key_id": rw_id})).await;
    assert_eq!(s, 400, "a key does not lift a viewer above read-only: {r}");
    let (s, _) = owner.api.delete(&format!("/api/organizations/{}/api-keys/{rw_id}", owner.org)).await;
    assert_eq!(s, 200);
    let (s, r) = owner.api.post(&path, json!({"command": ["GET", "k"], "api_key_id": rw_id})).await;
    assert_eq!((s, r["code"].as_str()), (401, Some("api_key_refused")), "{r}");
    assert_eq!(r["error"], "WRONGPASS invalid or missing auth token");

    // Strangers: anonymous 401, another organization's member 404, another organization's
    // instance under one's own organization 404.
    let (s, r) = Api::anon(&g).post(&path, json!({"command": ["GET", "greeting"]})).await;
    assert_eq!((s, r["code"].as_str()), (401, Some("unauthenticated")));
    let other = Tenant::new(&g, "other@example.com").await;
    let (s, r) = other.api.post(&path, json!({"command": ["GET", "greeting"]})).await;
    assert_eq!((s, r["code"].as_str()), (404, Some("not_found")));
    let cross = format!("/api/organizations/{}/redis-instances/{}/command", other.org, owner.instance);
    let (s, r) = other.api.post(&cross, json!({"command": ["GET", "greeting"]})).await;
    assert_eq!((s, r["code"].as_str()), (404, Some("not_found")), "{r}");
    // A key of another organization is no key here.
    let (_, other_key) = other.key(json!({"name": "theirs", "scope": "admin"})).await;
    let (s, r) =
        owner.api.post(&path, json!({"command": ["GET", "greeting"], "api_key_id": other_key})).await;
    assert_eq!(s, 401, "{r}");
    // Malformed requests are the API's 422s.
    let (s, r) = owner.api.post(&path, json!({"command": ["GET", "a"], "pipeline": [["GET", "b"]]})).await;
    assert_eq!((s, r["code"].as_str()), (422, Some("validation_failed")), "{r}");
    let (s, r) = owner.api.post(&path, json!({})).await;
    assert_eq!((s, r["code"].as_str()), (422, Some("validation_failed")), "{r}");
    let (s, r) = owner.api.post(&path, json!({"command": "GET"})).await;
    assert_eq!(s, 400, "the data plane's parser decides what a command is: {r}");
}

/// The whole console in Debian's chromium: `tests/browser/console.mjs` (its flow is described
/// there). `scripts/test.sh` installs chromium and the pinned npm packages and sets
/// `REDISGATE_TEST_REQUIRE_BROWSER=1`; without them this test says it skipped, unless
/// required, and then it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let required =
        std::env::var_os("REDISGATE_TEST_REQUIRE_BROWSER").is_some_and(|v| !v.is_empty() && v != "0");
    let dir = repo_root().join("tests/browser");
    let chromium = std::path::Path::new("/usr/bin/chromium");
    let ready = chromium.exists() && dir.join("node_modules/playwright-core").exists();
    if !ready {
        assert!(
            !required,
            "REDISGATE_TEST_REQUIRE_BROWSER is set but /usr/bin/chromium or tests/browser/node_modules is missing \
             (scripts/test.sh installs both)"
        );
        eprintln!(
            "SKIPPED: the_console_in_a_real_browser needs /usr/bin/chromium and `npm ci --prefix tests/browser` \
             (scripts/test.sh installs both and sets REDISGATE_TEST_REQUIRE_BROWSER=1)"
        );
        return;
    }
    let g = control_plane().await;
    // A server of the tenant's own, for an external instance.
    let external = Redis::start().await;
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("console.mjs").arg(&g.base).arg(external.url()).current_dir(&dir);
    if let Some(out) = std::env::var_os("REDISGATE_CONSOLE_SCREENSHOTS") {
        cmd.env("SCREENSHOTS", out);
    }
    let (status, report) = run_to_report(&mut cmd, Duration::from_secs(150), "the browser run").await;
    assert!(status.success(), "the browser flow failed ({status}):\n{report}");
    assert!(report.lines().any(|l| l.starts_with("ok console flow")), "{report}");
    println!("{report}");
    g.shutdown().await;
}
