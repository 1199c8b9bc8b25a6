//! Accounts against hostile strangers, on the defaults a deployment gets: invite-only
//! registration, invitations, the organization cap, key rates within the plan, login
//! throttling that parallel guesses cannot outrun, client addresses behind proxies, and an
//! audit log outsiders cannot write into.

use redisgate_server::config::Settings;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::api::Api;
use crate::common::Gate;

const PASSWORD: &str = "correct horse battery";

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!((status, body["code"].as_str()), (want_status, Some(want_code)), "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
}

async fn register(g: &Gate, body: Value) -> (u16, Value) {
    Api::anon(g).post("/auth/register", body).await
}

async fn login<'a>(g: &'a Gate, email: &str) -> Api<'a> {
    let (s, body) = Api::anon(g).post("/auth/login", json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(s, 200, "{body}");
    Api { g, token: Some(body["token"].as_str().unwrap().to_owned()) }
}

/// A POST with an `X-Forwarded-For` header, answering (status, body).
async fn post_from(g: &Gate, forwarded_for: &str, path: &str, body: Value) -> (u16, Value) {
    let r =
        g.http.post(g.url(path)).header("x-forwarded-for", forwarded_for).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The first account (the administrator), its session and a fresh organization of its own.
async fn bootstrap(g: &Gate) -> (Api<'_>, String) {
    let (s, root) = register(g, json!({"email": "root@example.com", "password": PASSWORD})).await;
    assert_eq!((s, root["is_admin"].as_bool()), (201, Some(true)), "{root}");
    let root = login(g, "root@example.com").await;
    let (s, org) = root.post("/api/organizations", json!({"name": "Acme"})).await;
    assert_eq!(s, 201, "{org}");
    (root, format!("/api/organizations/{}", org["id"].as_str().unwrap()))
}

async fn audit_actions(api: &Api<'_>, base: &str) -> Vec<(String, String, String)> {
    let (s, page) = api.get(&format!("{base}/audit-logs?limit=500")).await;
    assert_eq!(s, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (text("actor"), text("action"), text("outcome"))
        })
        .collect()
}

#[tokio::test]
async fn registration_is_by_invitation_unless_opened() {
    // Default: the first account bootstraps the deployment, strangers after it are refused.
    let g = Gate::start_as_deployed(Settings::default()).await;
    bootstrap(&g).await;
    let (s, body) = register(&g, json!({"email": "eve@example.com", "password": PASSWORD})).await;
    assert_error(s, &body, 403, "invitation_required");
    let (s, body) =
        register(&g, json!({"email": "eve@example.com", "password": PASSWORD, "invitation": "rgi_made_up"}))
            .await;
    assert_error(s, &body, 404, "not_found");
    drop(g);

    // "open" is the administrator's explicit choice.
    let mut open = Settings::default();
    open.auth.registration = redisgate_core::account::Registration::Open;
    let g = Gate::start_as_deployed(open).await;
    bootstrap(&g).await;
    let (s, eve) = register(&g, json!({"email": "eve@example.com", "password": PASSWORD})).await;
    assert_eq!((s, eve["is_admin"].as_bool()), (201, Some(false)), "{eve}");
    drop(g);

    // "closed": the first account still bootstraps; nobody after it, not even invited.
    let mut closed = Settings::default();
    closed.auth.registration = redisgate_core::account::Registration::Closed;
    let g = Gate::start_as_deployed(closed).await;
    let (root, base) = bootstrap(&g).await;
    let (s, inv) = root
        .post(&format!("{base}/invitations"), json!({"email": "bob@example.com", "role": "member"}))
        .await;
    assert_eq!(s, 201, "{inv}");
    let (s, body) = register(&g, json!({"email": "bob@example.com", "password": PASSWORD})).await;
    assert_error(s, &body, 403, "registration_closed");
    let token = inv["token"].as_str().unwrap();
    let (s, body) =
        register(&g, json!({"email": "bob@example.com", "password": PASSWORD, "invitation": token})).await;
    assert_error(s, &body, 403, "registration_closed");
}

#[tokio::test]
async fn invitations_are_single_use_addressed_and_revocable() {
    let g = Gate::start_as_deployed(Settings::default()).await;
    let (root, base) = bootstrap(&g).await;
    let invite = |email: &str, role: &str| {
        let body = json!({"email": email, "role": role});
        let path = format!("{base}/invitations");
        let root = &root;
        async move { root.post(&path, body).await }
    };

    let (s, inv) = invite("Bob@Example.com", "member").await;
    assert_eq!(s, 201, "{inv}");
    let token = inv["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("rgi_") && token.len() > 40, "{token}");
    assert_eq!(inv["invitation"]["email"], "bob@example.com");
    // Listed while pending, never with the token.
    let (s, list) = root.get(&format!("{base}/invitations")).await;
    assert_eq!((s, list.as_array().unwrap().len()), (200, 1), "{list}");
    assert!(!list.to_string().contains(&token));

    // Only the invited address can use it, and only once.
    let (s, body) =
        register(&g, json!({"email": "eve@example.com", "password": PASSWORD, "invitation": token})).await;
    assert_error(s, &body, 403, "invitation_email_mismatch");
    let (s, bob) =
        register(&g, json!({"email": "bob@example.com", "password": PASSWORD, "invitation": token})).await;
    assert_eq!((s, bob["is_admin"].as_bool()), (201, Some(false)), "{bob}");
    let bob = login(&g, "bob@example.com").await;
    let (_, me) = bob.get("/auth/me").await;
    assert_eq!(me["organizations"][0]["role"], "member", "{me}");
    let (s, body) =
        register(&g, json!({"email": "bob2@example.com", "password": PASSWORD, "invitation": token})).await;
    assert_error(s, &body, 410, "invitation_used");
    let (s, body) = bob.post("/api/invitations/accept", json!({"token": token})).await;
    assert_error(s, &body, 410, "invitation_used");
    assert_eq!(root.get(&format!("{base}/invitations")).await.1, json!([]));
    // Inviting a member again is a conflict.
    let (s, body) = invite("bob@example.com", "admin").await;
    assert_error(s, &body, 409, "already_member");

    // Revoked: refused with its own code.
    let (_, inv) = invite("carol@example.com", "viewer").await;
    let carol_token = inv["token"].as_str().unwrap().to_owned();
    let id = inv["invitation"]["id"].as_str().unwrap();
    let (s, revoked) = root.delete(&format!("{base}/invitations/{id}")).await;
    assert!(s == 200 && revoked["revoked_at"].is_string(), "{s} {revoked}");
    let (s, body) = root.delete(&format!("{base}/invitations/{id}")).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) =
        register(&g, json!({"email": "carol@example.com", "password": PASSWORD, "invitation": carol_token}))
            .await;
    assert_error(s, &body, 410, "invitation_revoked");

    // An existing account accepts with its session; expired invitations are refused.
    let (s, other) = root.post("/api/organizations", json!({"name": "Other"})).await;
    assert_eq!(s, 201);
    let other_base = format!("/api/organizations/{}", other["id"].as_str().unwrap());
    let (_, inv) = root
        .post(&format!("{other_base}/invitations"), json!({"email": "bob@example.com", "role": "admin"}))
        .await;
    let (s, member) = bob.post("/api/invitations/accept", json!({"token": inv["token"]})).await;
    assert_eq!((s, member["role"].as_str()), (200, Some("admin")), "{member}");
    // Every step is in the organization's audit log, with the actor.
    let log = audit_actions(&root, &base).await;
    for (actor, action, outcome) in [
        ("root@example.com", "invitation.create", "success"),
        ("bob@example.com", "auth.register", "success"),
        ("root@example.com", "invitation.revoke", "success"),
        ("root@example.com", "invitation.create", "failure"),
    ] {
        assert!(
            log.iter().any(|e| (e.0.as_str(), e.1.as_str(), e.2.as_str()) == (actor, action, outcome)),
            "{actor} {action} {outcome} missing from {log:?}"
        );
    }
    let other_log = audit_actions(&root, &other_base).await;
    assert!(
        other_log.iter().any(|e| e.0 == "bob@example.com" && e.1 == "invitation.accept"),
        "{other_log:?}"
    );
}

#[tokio::test]
async fn expired_invitations_are_refused() {
    let mut settings = Settings::default();
    settings.auth.invitation_ttl = std::time::Duration::from_millis(100);
    let g = Gate::start_as_deployed(settings).await;
    let (root, base) = bootstrap(&g).await;
    let (s, inv) = root
        .post(&format!("{base}/invitations"), json!({"email": "dave@example.com", "role": "member"}))
        .await;
    assert_eq!(s, 201, "{inv}");
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let expires = OffsetDateTime::parse(inv["invitation"]["expires_at"].as_str().unwrap(), rfc3339).unwrap();
    // Wait on the clock the server compares with (the invitation's own expiry), not a guess.
    while OffsetDateTime::now_utc() <= expires {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (s, body) =
        register(&g, json!({"email": "dave@example.com", "password": PASSWORD, "invitation": inv["token"]}))
            .await;
    assert_error(s, &body, 410, "invitation_expired");
    assert_eq!(root.get(&format!("{base}/invitations")).await.1, json!([]), "no longer pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_owns_at_most_the_configured_number_of_organizations() {
    let mut settings = Settings::default();
    settings.auth.registration = redisgate_core::account::Registration::Open;
    let g = Gate::start_as_deployed(settings).await;
    let (root, _) = bootstrap(&g).await;
    let (s, _) = register(&g, json!({"email": "eve@example.com", "password": PASSWORD})).await;
    assert_eq!(s, 201);
    let eve = login(&g, "eve@example.com").await;
    // Parallel creates cannot slip past the cap (3 by default).
    let answers = futures_util::future::join_all(
        (0..8).map(|i| eve.post("/api/organizations", json!({"name": format!("org {i}")}))),
    )
    .await;
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(created, 3, "{answers:?}");
    for (s, body) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_error(*s, body, 403, "quota_exceeded");
        assert_eq!(body["limit"], "max_organizations", "{body}");
    }
    // The deployment's administrator is not held to it.
    for i in 0..4 {
        assert_eq!(root.post("/api/organizations", json!({"name": format!("ops {i}")})).await.0, 201);
    }
}

#[tokio::test]
async fn key_rates_above_the_plan_and_admin_scope_take_the_right_privileges() {
    let mut settings = Settings::default();
    settings.auth.registration = redisgate_core::account::Registration::Open;
    // Not the default 100/100, which the fixture lifts.
    settings.rate_limit.per_second = 200;
    settings.rate_limit.burst = 300;
    let g = Gate::start_as_deployed(settings).await;
    let (root, root_org) = bootstrap(&g).await;
    register(&g, json!({"email": "eve@example.com", "password": PASSWORD})).await;
    register(&g, json!({"email": "mia@example.com", "password": PASSWORD})).await;
    let eve = login(&g, "eve@example.com").await;
    let mia = login(&g, "mia@example.com").await;
    let (_, org) = eve.post("/api/organizations", json!({"name": "Eve's"})).await;
    let base = format!("/api/organizations/{}", org["id"].as_str().unwrap());
    let (s, _) =
        eve.post(&format!("{base}/members"), json!({"email": "mia@example.com", "role": "member"})).await;
    assert_eq!(s, 201);
    let keys = format!("{base}/api-keys");

    // An owner may not outbid the plan (at creation or later)...
    let huge =
        json!({"name": "k", "scope": "read-write", "rate_limit": {"per_second": 1_000_000_000, "burst": 1}});
    let (s, body) = eve.post(&keys, huge).await;
    assert_error(s, &body, 403, "rate_limit_above_plan");
    assert_eq!(
        (body["limit"].as_str(), &body["max_rate"]),
        (Some("rate_limit"), &json!({"per_second": 200, "burst": 300}))
    );
    let (s, body) = eve
        .post(
            &keys,
            json!({"name": "k", "scope": "read-write", "rate_limit": {"per_second": 1, "burst": 301}}),
        )
        .await;
    assert_error(s, &body, 403, "rate_limit_above_plan");
    // ... but may go lower, or up to it.
    let (s, key) = eve
        .post(
            &keys,
            json!({"name": "k", "scope": "read-write", "rate_limit": {"per_second": 200, "burst": 300}}),
        )
        .await;
    assert_eq!(s, 201, "{key}");
    let key_url = format!("{keys}/{}", key["api_key"]["id"].as_str().unwrap());
    let (s, body) = eve.patch(&key_url, json!({"rate_limit": {"per_second": 201, "burst": 10}})).await;
    assert_error(s, &body, 403, "rate_limit_above_plan");
    assert_eq!(eve.patch(&key_url, json!({"rate_limit": {"per_second": 5, "burst": 5}})).await.0, 200);
    // A deployment administrator may.
    let root_keys = format!("{root_org}/api-keys");
    let (s, body) = root
        .post(&root_keys, json!({"name": "ops", "scope": "read-write", "rate_limit": {"per_second": 100000, "burst": 100000}}))
        .await;
    assert_eq!(s, 201, "{body}");

    // Admin-scope keys (FLUSHALL, scripts) take an owner or admin; a member gets read-write.
    let (s, body) = mia.post(&keys, json!({"name": "flusher", "scope": "admin"})).await;
    assert_error(s, &body, 403, "forbidden");
    assert_eq!(mia.post(&keys, json!({"name": "app", "scope": "read-write"})).await.0, 201);
    assert_eq!(eve.post(&keys, json!({"name": "ops", "scope": "admin"})).await.0, 201);
}

#[tokio::test]
async fn outsiders_cannot_write_into_another_organizations_audit_log() {
    let mut settings = Settings::default();
    settings.auth.registration = redisgate_core::account::Registration::Open;
    let g = Gate::start_as_deployed(settings).await;
    let (root, base) = bootstrap(&g).await;
    register(&g, json!({"email": "eve@example.com", "password": PASSWORD})).await;
    let eve = login(&g, "eve@example.com").await;
    for (method, path, body) in [
        (reqwest::Method::PATCH, base.clone(), json!({"name": "pwned"})),
        (reqwest::Method::DELETE, base.clone(), Value::Null),
        (reqwest::Method::POST, format!("{base}/api-keys"), json!({"name": "k", "scope": "admin"})),
        (
            reqwest::Method::POST,
            format!("{base}/members"),
            json!({"email": "eve@example.com", "role": "owner"}),
        ),
        (
            reqwest::Method::POST,
            format!("{base}/invitations"),
            json!({"email": "eve@example.com", "role": "owner"}),
        ),
        (reqwest::Method::POST, format!("{base}/redis-instances"), json!({"name": "x", "memory_mb": 8})),
    ] {
        let (s, answer) = eve.call(method.clone(), &path, Some(body)).await;
        assert_error(s, &answer, 404, "not_found");
    }
    let log = audit_actions(&root, &base).await;
    assert!(log.iter().all(|e| e.0 != "eve@example.com"), "an outsider wrote into the log: {log:?}");
    assert!(log.iter().any(|e| e.1 == "org.create"), "{log:?}");
    // The attempts are the deployment's business: in its own log, for its administrators.
    let (s, page) = root.get("/api/audit-logs?outcome=denied&limit=500").await;
    assert_eq!(s, 200, "{page}");
    let probes: Vec<&Value> =
        page["items"].as_array().unwrap().iter().filter(|e| e["actor"] == "eve@example.com").collect();
    assert_eq!(probes.len(), 6, "{page}");
    let org_id = base.rsplit('/').next().unwrap();
    assert!(
        probes.iter().all(|e| e["org_id"].is_null() && e["detail"].as_str().unwrap().contains(org_id)),
        "{page}"
    );
    let (s, page) = root.get("/api/audit-logs?action=auth.register").await;
    assert_eq!((s, page["items"].as_array().unwrap().len()), (200, 2), "{page}");
    let (s, body) = eve.get("/api/audit-logs").await;
    assert_error(s, &body, 403, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_guesses_get_no_more_password_checks_than_the_limit() {
    let g = Gate::start_as_deployed(Settings::default()).await;
    bootstrap(&g).await;
    let anon = Api::anon(&g);
    let wrong = json!({"email": "root@example.com", "password": "not the password"});
    let answers =
        futures_util::future::join_all((0..20).map(|_| anon.post("/auth/login", wrong.clone()))).await;
    // 401 means the password was verified; 429 that it was refused before.
    let checked = answers.iter().filter(|(s, _)| *s == 401).count();
    let throttled = answers.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(
        (checked + throttled, checked <= 5),
        (20, true),
        "{checked} checked, {throttled} throttled: {answers:?}"
    );
    assert_eq!(checked, 5, "the limit's worth of guesses is checked");
    for (s, body) in answers.iter().filter(|(s, _)| *s == 429) {
        assert_error(*s, body, 429, "too_many_requests");
    }
    // The guesser's address stays locked out of this e-mail, even with the right password.
    let (s, _) = anon.post("/auth/login", json!({"email": "root@example.com", "password": PASSWORD})).await;
    assert_eq!(s, 429);
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    // No trusted proxy (the default): a forged header changes nothing, so rotating it does
    // not escape the per-address limit.
    let mut settings = Settings::default();
    settings.auth.max_failed_logins_per_ip = 3;
    let g = Gate::start_as_deployed(settings).await;
    bootstrap(&g).await;
    for i in 0..3 {
        let body = json!({"email": format!("u{i}@example.com"), "password": "not the password"});
        assert_eq!(post_from(&g, &format!("127.0.0.{}", 10 + i), "/auth/login", body).await.0, 401);
    }
    let body = json!({"email": "root@example.com", "password": PASSWORD});
    let (s, answer) = post_from(&g, "127.0.0.99", "/auth/login", body).await;
    assert_error(s, &answer, 429, "too_many_requests");
    drop(g);

    // Behind a trusted proxy (the test client is on 127.0.0.1), each client is itself: a
    // guesser locks the e-mail for its own address, and the owner elsewhere still gets in.
    let mut settings = Settings::default();
    settings.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let g = Gate::start_as_deployed(settings).await;
    let (root, base) = bootstrap(&g).await;
    let guess = json!({"email": "root@example.com", "password": "not the password"});
    for _ in 0..5 {
        assert_eq!(post_from(&g, "127.0.0.2", "/auth/login", guess.clone()).await.0, 401);
    }
    let right = json!({"email": "root@example.com", "password": PASSWORD});
    assert_eq!(
        post_from(&g, "127.0.0.2", "/auth/login", right.clone()).await.0,
        429,
        "the guesser is locked"
    );
    // A client-written left part of the chain does not help the guesser either.
    assert_eq!(post_from(&g, "127.0.0.3, 127.0.0.2", "/auth/login", right.clone()).await.0, 429);
    let (s, session) = post_from(&g, "127.0.0.4", "/auth/login", right).await;
    assert_eq!(s, 200, "the owner, from another address, gets in: {session}");
    // The audit log records the client, not the proxy.
    let r = g
        .http
        .patch(g.url(&base))
        .bearer_auth(session["token"].as_str().unwrap())
        .header("x-forwarded-for", "127.0.0.5")
        .json(&json!({"name": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, page) = root.get(&format!("{base}/audit-logs?action=org.update")).await;
    assert_eq!(page["items"][0]["ip"], "127.0.0.5", "{page}");
}

#[tokio::test]
async fn invitation_routes_are_in_the_openapi_document() {
    let g = Gate::start_as_deployed(Settings::default()).await;
    let (s, doc) = Api::anon(&g).get("/openapi.json").await;
    assert_eq!(s, 200);
    for p in [
        "/api/organizations/{org_id}/invitations",
        "/api/organizations/{org_id}/invitations/{invitation_id}",
        "/api/invitations/accept",
        "/api/audit-logs",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing from /openapi.json");
    }
    let register = &doc["components"]["schemas"]["NewAccount"]["properties"];
    assert!(register.get("invitation").is_some(), "{register}");
}

/// The per-address budget of the anonymous auth routes (`auth.anonymous_rate`'s default).
const ANONYMOUS_BURST: usize = 30;

/// The deployment's own audit entries from client address `ip`.
async fn deployment_entries_from(root: &Api<'_>, ip: &str) -> Vec<Value> {
    let (s, page) = root.get("/api/audit-logs?limit=500").await;
    assert_eq!(s, 200, "{page}");
    page["items"].as_array().unwrap().iter().filter(|e| e["ip"] == ip).cloned().collect()
}

#[tokio::test]
async fn a_flood_of_anonymous_requests_is_refused_before_it_writes_anything() {
    // Clients are told apart by the header the (trusted) test client writes; all loopback.
    let mut settings = Settings::default();
    settings.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let g = Gate::start_as_deployed(settings).await;
    let (root, _) = bootstrap(&g).await;
    let stranger = json!({"email": "eve@example.com", "password": PASSWORD});
    let guess = json!({"email": "root@example.com", "password": "not the password"});
    let mut answers = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..ANONYMOUS_BURST + 20 {
        // Refused registrations and failed logins: each used to leave an audit row.
        let (path, body) = if i % 2 == 0 { ("/auth/register", &stranger) } else { ("/auth/login", &guess) };
        let r =
            g.http.post(g.url(path)).header("x-forwarded-for", "127.0.0.2").json(body).send().await.unwrap();
        let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        answers.push((r.status().as_u16(), retry_after, r.json::<Value>().await.unwrap()));
    }
    // The budget refills at 1/s (`auth.anonymous_rate`'s default): on a slow host the flood
    // takes seconds (each login hashes a password), and each of them admits one more.
    let refilled = started.elapsed().as_secs() as usize + 1;
    let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    // The login throttle (past 5 failures per e-mail) answers 429 too, but with an audit row;
    // the address limit refuses everything past the burst, registrations included.
    let admitted_after = answers[ANONYMOUS_BURST + 1..].iter().filter(|(s, _, _)| *s != 429).count();
    assert!(admitted_after <= refilled, "past the burst only the refill is admitted: {answers:?}");
    for (s, retry_after, body) in &refused {
        assert_error(*s, body, 429, "too_many_requests");
        assert!(retry_after.as_deref().is_some_and(|v| v.parse::<u64>().unwrap() >= 1), "{body}");
    }
    // The metadata store grew by at most the burst, not by the flood.
    let written = deployment_entries_from(&root, "127.0.0.2").await.len();
    assert!(written <= ANONYMOUS_BURST + refilled, "{written} audit rows for one address in {refilled} s");
    // Another address has its own budget.
    let (s, body) = post_from(&g, "127.0.0.3", "/auth/register", stranger.clone()).await;
    assert_error(s, &body, 403, "invitation_required");
    let other = json!({"email": "nobody@example.com", "password": "not the password"});
    let (s, body) = post_from(&g, "127.0.0.3", "/auth/login", other).await;
    assert_error(s, &body, 401, "invalid_credentials");
    // The refusals are counted where an operator sees them.
    let (_, metrics) = Api::anon(&g).get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.lines().any(|l| l.starts_with("auth_rate_limit_rejections_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn audit_entries_older_than_the_retention_are_pruned() {
    let data = tempfile::tempdir().unwrap();
    let settings = Settings { data_dir: data.path().to_owned(), ..Settings::default() };
    let g = Gate::start_with_data_dir(settings.clone()).await;
    let (root, base) = bootstrap(&g).await;
    assert_eq!(audit_actions(&root, &base).await.len(), 1, "org.create");
    g.shutdown().await;
    // The registration becomes a year old (the stores write the time themselves).
    {
        use sqlx::Connection as _;
        let url = format!("sqlite://{}", data.path().join("redisgate.db").display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let aged = sqlx::query("UPDATE audit_logs SET created_at = ?1 WHERE action = 'auth.register'")
            .bind("2025-01-01T00:00:00.000000Z")
            .execute(&mut db)
            .await
            .unwrap();
        assert_eq!(aged.rows_affected(), 1);
    }
    let g = Gate::start_with_data_dir(settings).await;
    let root = login(&g, "root@example.com").await;
    // Retention runs at start and then periodically: poll until the old entry is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (s, page) = root.get("/api/audit-logs?action=auth.register").await;
        assert_eq!(s, 200, "{page}");
        if page["items"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the year-old entry was never pruned: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Recent entries stay.
    let (_, logins) = root.get("/api/audit-logs?action=auth.login").await;
    assert_eq!(logins["items"].as_array().unwrap().len(), 2, "{logins}");
    assert_eq!(audit_actions(&root, &base).await.len(), 1, "org.create stays");
    g.shutdown().await;
}
