//! Health probes. Answers come from background checks, never from a probe per request:
//! the metadata store is pinged every `interval`; an instance's Redis is checked by its
//! backend while it has a connection, and by the idle checks at a bounded total rate while it
//! has none (see `backend` and `Instances::check_idle`), so `/health` says how long a round of
//! those takes and, for each unhealthy instance, when it was last seen answering.
//!
//! - `GET /health/live`: 200 whenever the process serves.
//! - `GET /health/ready`: 200 only when start-up is complete and the last store ping
//!   answered; else 503 with a JSON reason (a fixed text: never the store's error, which can
//!   name hosts, users or paths).
//! - `GET /health`: `status`, `uptime_seconds` and `version` for anyone; every component
//!   (metadata store, provisioner, instances, rate limiter) with `healthy` / `degraded` /
//!   `unhealthy`, unhealthy instances' ids and the store's error text only for a deployment
//!   administrator's session, and on the metrics listener (`metrics_listen`, the operators'
//!   side), which needs no session: it must answer while the store, which holds sessions,
//!   does not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use redisgate_core::store::Store;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::metrics::{INSTANCES, INSTANCES_UNHEALTHY, ORGANIZATIONS, READY, USERS};
use crate::instances::Instances;

#[derive(Clone, Default)]
struct Check {
    /// `None` before the first check.
    result: Option<Result<Duration, String>>,
}

pub struct Health {
    started: Instant,
    startup_done: AtomicBool,
    store: Arc<dyn Store>,
    instances: Arc<Instances>,
    store_check: RwLock<Check>,
    /// The instances by health, from the last sweep.
    census: RwLock<crate::instances::Census>,
    /// `backend.idle_checks_per_second`.
    idle_checks_per_second: u32,
    redis_server_found: bool,
    limiter: Arc<super::ratelimit::RateLimiter>,
}

impl Health {
    pub fn new(
        store: Arc<dyn Store>,
        instances: Arc<Instances>,
        redis_server: &std::path::Path,
        limiter: Arc<super::ratelimit::RateLimiter>,
        idle_checks_per_second: u32,
    ) -> Arc<Self> {
        Arc::new(Health {
            started: Instant::now(),
            startup_done: AtomicBool::new(false),
            store,
            instances,
            store_check: RwLock::default(),
            census: RwLock::default(),
            idle_checks_per_second,
            redis_server_found: binary_exists(redis_server),
            limiter,
        })
    }

    /// Start-up work (migrations, restoring instances) is over.
    pub fn startup_complete(&self) {
        self.startup_done.store(true, Ordering::Release);
    }

    /// `Ok` when this RedisGate should get traffic, else the reason.
    pub fn ready(&self) -> Result<(), String> {
        if !self.startup_done.load(Ordering::Acquire) {
            return Err("start-up is not complete".into());
        }
        match &self.store_check.read().expect("health lock").result {
            Some(Ok(_)) => Ok(()),
            Some(Err(_)) => Err("metadata store unreachable".into()),
            None => Err("metadata store not checked yet".into()),
        }
    }

    /// The background checks: store every `interval`, totals and instances every 5th time.
    pub async fn run(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        let mut round = 0u64;
        loop {
            let started = Instant::now();
            let ping = tokio::time::timeout(interval, self.store.ping()).await;
            let result = match ping {
                Ok(Ok(())) => Ok(started.elapsed()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {interval:?}")),
            };
            let store_ok = result.is_ok();
            self.store_check.write().expect("health lock").result = Some(result);
            metrics::gauge!(READY).set(if self.ready().is_ok() { 1.0 } else { 0.0 });
            if store_ok && round.is_multiple_of(5) {
                self.sweep().await;
            }
            round += 1;
            tokio::select! {
                () = crate::beat::sleep(interval) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    async fn sweep(&self) {
        if let Ok(c) = self.store.counts().await {
            metrics::gauge!(USERS).set(c.users as f64);
            metrics::gauge!(ORGANIZATIONS).set(c.organizations as f64);
            metrics::gauge!(INSTANCES).set(c.instances as f64);
        }
        // From memory (the checks and the change feed): no instance row is read.
        let census = self.instances.census();
        metrics::gauge!(INSTANCES_UNHEALTHY).set(census.unhealthy.len() as f64);
        *self.census.write().expect("health lock") = census;
    }
}

fn binary_exists(p: &std::path::Path) -> bool {
    if p.components().count() > 1 {
        return p.is_file();
    }
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(p).is_file()))
}

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "live"}))
}

pub async fn ready(State(h): State<Arc<Health>>) -> Response {
    match h.ready() {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "error": reason})))
                .into_response()
        }
    }
}

/// How long `/health` waits for the store to tell whether a session is an administrator's.
const SESSION_WAIT: Duration = Duration::from_millis(250);

impl Health {
    /// Whether `token` is the session of a deployment administrator. `false` when the store
    /// cannot say in time: the details are then only on the metrics listener.
    async fn administrator(&self, token: &str) -> bool {
        let hash = crate::secrets::hash_secret(token);
        let user = self.store.session_user(&hash, time::OffsetDateTime::now_utc());
        matches!(tokio::time::timeout(SESSION_WAIT, user).await, Ok(Ok(Some(u))) if u.is_admin)
    }
}

/// `GET /health` on the main listener: the details for deployment administrators only.
pub async fn health(State(h): State<Arc<Health>>, headers: HeaderMap) -> Response {
    let detailed = match headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| redisgate_core::request::bearer_token(v.as_bytes()))
    {
        Some(token) => h.administrator(token).await,
        None => false,
    };
    report(&h, detailed)
}

/// `GET /health` on the metrics listener: always the details.
pub async fn operator_health(State(h): State<Arc<Health>>) -> Response {
    report(&h, true)
}

fn report(h: &Health, detailed: bool) -> Response {
    let store = match &h.store_check.read().expect("health lock").result {
        Some(Ok(d)) => json!({"status": "healthy", "latency_ms": d.as_secs_f64() * 1000.0}),
        Some(Err(e)) => json!({"status": "unhealthy", "error": e}),
        None => json!({"status": "unhealthy", "error": "not checked yet"}),
    };
    let store_ok = store["status"] == "healthy";
    let provisioner = if h.redis_server_found {
        json!({"status": "healthy", "kind": "local"})
    } else {
        json!({"status": "unhealthy", "kind": "local", "error": "redis-server binary not found"})
    };
    let census = h.census.read().expect("health lock").clone();
    let (local, local_bytes) = census.local;
    let cap = h.instances.capacity();
    let unhealthy: Vec<serde_json::Value> = census
        .unhealthy
        .iter()
        .map(|(id, seen)| json!({"id": id, "last_seen_healthy": seen.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())}))
        .collect();
    let rate = h.idle_checks_per_second;
    let instances = json!({
        "status": if unhealthy.is_empty() { "healthy" } else { "degraded" },
        "total": census.total,
        "unhealthy": unhealthy,
        // Idle instances (no connection) are checked one by one at a bounded total rate: each
        // once per round, and a round over all of them takes this long.
        "unchecked": census.unchecked,
        "idle_checks": {
            "per_second": rate,
            "round_seconds": if rate == 0 { None } else { Some(census.total.div_ceil(u64::from(rate))) },
        },
        // How full the host is against `instances.max_local_*`.
        "local": {
            "count": local,
            "max_count": cap.max_local_instances,
            "memory_mb": local_bytes / (1024 * 1024),
            "max_memory_mb": cap.max_local_memory_bytes / (1024 * 1024),
        },
    });
    let limiter_up = h.limiter.shared_up();
    let rate_limiter = match limiter_up {
        None => json!({"status": "healthy", "mode": "local"}),
        Some(true) => json!({"status": "healthy", "mode": "distributed"}),
        Some(false) => json!({
            "status": "degraded",
            "mode": "distributed",
            "error": "the shared rate-limit Redis does not answer; each replica limits on its own",
        }),
    };
    let status = if !store_ok {
        "unhealthy"
    } else if !census.unhealthy.is_empty()
        || !h.redis_server_found
        || h.ready().is_err()
        || limiter_up == Some(false)
    {
        "degraded"
    } else {
        "healthy"
    };
    let code = if store_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({
        "status": status,
        "uptime_seconds": h.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if detailed {
        body["components"] = json!({
            "metadata_store": store,
            "provisioner": provisioner,
            "instances": instances,
            "rate_limiter": rate_limiter,
        });
    }
    if !store_ok {
        body["error"] = json!("the metadata store is unavailable");
    }
    (code, Json(body)).into_response()
}
