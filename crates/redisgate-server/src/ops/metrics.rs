//! Prometheus metrics. Names and label keys are defined here once; label values come only
//! from closed sets (route templates, known Redis command names, store operation names), so
//! the number of series stays bounded whatever clients send.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::Method;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use redisgate_core::catalog;
use redisgate_core::command::Command;
use tracing::Instrument as _;

pub use crate::backend::{
    CLUSTER_REDIRECTS, REDIS_CONNECTION_RETRIES, REDIS_CONNECTIONS_ACTIVE, REDIS_RECONNECTS, TOPOLOGY_CHANGES,
};
pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_ERRORS: &str = "http_request_errors_total";
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
pub const REDIS_COMMANDS: &str = "redis_commands_total";
pub const REDIS_COMMAND_ERRORS: &str = "redis_command_errors_total";
pub const REDIS_COMMAND_DURATION: &str = "redis_command_duration_seconds";
pub const DB_QUERIES: &str = "database_queries_total";
pub const DB_ERRORS: &str = "database_query_errors_total";
pub const DB_DURATION: &str = "database_query_duration_seconds";
pub const INSTANCES: &str = "redis_instances_total";
pub const INSTANCES_UNHEALTHY: &str = "redis_instances_unhealthy";
pub const ORGANIZATIONS: &str = "organizations_total";
pub const USERS: &str = "users_total";
pub const READY: &str = "redisgate_ready";
pub const API_KEY_REQUESTS: &str = "api_key_requests_total";
pub const API_KEY_AUTH_FAILURES: &str = "api_key_auth_failures_total";
pub const RATE_LIMIT_REJECTIONS: &str = "rate_limit_rejections_total";
pub const RATE_LIMIT_FALLBACKS: &str = "rate_limit_fallbacks_total";
pub const AUTH_RATE_LIMIT_REJECTIONS: &str = "auth_rate_limit_rejections_total";
pub const AUDIT_PRUNED: &str = "audit_entries_pruned_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "tls_handshake_failures_total";
pub const TLS_RELOADS: &str = "tls_certificate_reloads_total";

/// Latency buckets (seconds) for every `_seconds` histogram: 100 µs to 10 s.
const BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process-wide recorder (metrics are global in the `metrics` crate: several RedisGates in
/// one process, as in tests, share it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder installed first (a host embedding us) keeps its place.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        // Series without labels exist from the start, at 0: an alert on their rate, or a
        // dashboard panel, then sees a value instead of "no data" on a quiet deployment.
        // (Labelled families appear with their first label set.)
        for name in [
            REDIS_CONNECTION_RETRIES,
            REDIS_RECONNECTS,
            API_KEY_REQUESTS,
            API_KEY_AUTH_FAILURES,
            RATE_LIMIT_REJECTIONS,
            RATE_LIMIT_FALLBACKS,
            AUDIT_PRUNED,
        ] {
            metrics::counter!(name).increment(0);
        }
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS, "HTTP requests by method, route template and status");
    describe_counter!(HTTP_ERRORS, "HTTP responses with status >= 400");
    describe_histogram!(HTTP_DURATION, metrics::Unit::Seconds, "HTTP request duration");
    describe_counter!(REDIS_COMMANDS, "Redis commands run, by command name (or other)");
    describe_counter!(REDIS_COMMAND_ERRORS, "Redis commands answered with an error or not answered");
    describe_histogram!(
        REDIS_COMMAND_DURATION,
        metrics::Unit::Seconds,
        "Redis command latency (a batch's time is shared by its commands)"
    );
    describe_gauge!(
        REDIS_CONNECTIONS_ACTIVE,
        "Open Redis connections: shared ones that are up, plus SSE streams"
    );
    describe_counter!(REDIS_CONNECTION_RETRIES, "Failed Redis connection attempts");
    describe_counter!(REDIS_RECONNECTS, "Redis connections re-established after being lost");
    describe_counter!(DB_QUERIES, "Metadata store operations, by operation");
    describe_counter!(DB_ERRORS, "Failed metadata store operations");
    describe_histogram!(DB_DURATION, metrics::Unit::Seconds, "Metadata store operation latency");
    describe_gauge!(INSTANCES, "Redis instances in the metadata store");
    describe_gauge!(INSTANCES_UNHEALTHY, "Instances that should run but whose Redis does not answer");
    describe_gauge!(ORGANIZATIONS, "Organizations");
    describe_gauge!(USERS, "Users");
    describe_gauge!(READY, "1 when this RedisGate is ready to serve, else 0");
    describe_counter!(API_KEY_REQUESTS, "Data-plane requests authenticated by an API key");
    describe_counter!(API_KEY_AUTH_FAILURES, "Data-plane requests refused for a bad key");
    describe_counter!(RATE_LIMIT_REJECTIONS, "Requests refused by the rate limiter (429)");
    describe_counter!(
        AUTH_RATE_LIMIT_REJECTIONS,
        "Requests to register, log in or accept an invitation refused by auth.anonymous_rate (429, not audited), by route"
    );
    describe_counter!(AUDIT_PRUNED, "Audit log entries deleted by audit.retention");
    describe_counter!(
        TOPOLOGY_CHANGES,
        "Sentinel primaries followed and cluster slot maps installed, by kind (sentinel, cluster)"
    );
    describe_counter!(CLUSTER_REDIRECTS, "MOVED and ASK redirections followed, by kind (moved, ask)");
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes on the listener that failed (error) or did not finish within tls.handshake_timeout (timeout)"
    );
    describe_counter!(
        TLS_RELOADS,
        "Changed TLS files loaded (ok) or kept out because they did not load (error)"
    );
    describe_counter!(
        RATE_LIMIT_FALLBACKS,
        "Requests limited locally because the shared (distributed) limiter could not answer"
    );
}

/// Folds recorded histogram samples into their buckets every second. The exporter keeps raw
/// samples until then: without this, memory grows with traffic between scrapes (seen in the
/// benchmark: 20 MB to 200 MB of RSS in a minute without a scraper).
pub async fn upkeep(cancel: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = crate::beat::sleep(std::time::Duration::from_secs(1)) => handle().run_upkeep(),
            () = cancel.cancelled() => return,
        }
    }
}

/// Renders the text exposition, with fresh process CPU and memory figures.
pub fn render() -> String {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    let collector = PROCESS.get_or_init(|| {
        let c = metrics_process::Collector::default();
        c.describe();
        c
    });
    collector.collect();
    handle().render()
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Route templates as `'static` labels. The set is closed (the router's routes), so
/// interning them by leaking is bounded.
fn path_label(template: &str) -> &'static str {
    static PATHS: OnceLock<RwLock<HashMap<String, &'static str>>> = OnceLock::new();
    let paths = PATHS.get_or_init(Default::default);
    if let Some(p) = paths.read().expect("paths lock").get(template) {
        return p;
    }
    let mut w = paths.write().expect("paths lock");
    w.entry(template.to_owned()).or_insert_with(|| Box::leak(template.to_owned().into_boxed_str()))
}

/// Which label a request without a matched route gets.
#[derive(Clone, Copy)]
pub struct FallbackLabel(pub &'static str);

/// The HTTP series of one (method, route, status), registered once and reused: building a
/// labelled key per request cost more than the rest of the metrics work together.
struct HttpSeries {
    requests: metrics::Counter,
    errors: Option<metrics::Counter>,
    duration: metrics::Histogram,
}

fn http_series(method: &'static str, path: &'static str, status: u16) -> Arc<HttpSeries> {
    // Keys are interned labels from closed sets: the fast hash is safe, and SipHash cost
    // more than the rest of this function.
    type Map = HashMap<(&'static str, &'static str, u16), Arc<HttpSeries>, rustc_hash::FxBuildHasher>;
    static SERIES: OnceLock<RwLock<Map>> = OnceLock::new();
    let map = SERIES.get_or_init(Default::default);
    if let Some(s) = map.read().expect("series lock").get(&(method, path, status)) {
        return Arc::clone(s);
    }
    let code = status.to_string();
    let series = Arc::new(HttpSeries {
        requests: metrics::counter!(HTTP_REQUESTS, "method" => method, "path" => path, "status" => code.clone()),
        errors: (status >= 400)
            .then(|| metrics::counter!(HTTP_ERRORS, "method" => method, "path" => path, "status" => code)),
        duration: metrics::histogram!(HTTP_DURATION, "method" => method, "path" => path),
    });
    Arc::clone(map.write().expect("series lock").entry((method, path, status)).or_insert(series))
}

/// One request being counted, timed and traced: what the router's [`track_http`] layer and
/// the data plane's direct path ([`crate::serve`]) share.
pub struct Observation {
    started: Instant,
    method: &'static str,
    span: tracing::Span,
}

impl Observation {
    /// Starts the clock and the server span (see [`super::telemetry`]; disabled, so free,
    /// unless exported).
    pub fn start<B>(req: &http::Request<B>) -> Self {
        let method = method_label(req.method());
        Observation {
            started: Instant::now(),
            method,
            span: super::telemetry::http_span(method, req.headers()),
        }
    }

    /// The request's server span, to run its handling in.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Records the answer under `route` (a route template), or `unrouted` when there is none.
    pub fn finish(self, route: Option<&'static str>, unrouted: &'static str, res: &Response) {
        let status = res.status().as_u16();
        super::telemetry::finish_http_span(&self.span, self.method, route, status);
        let series = http_series(self.method, route.unwrap_or(unrouted), status);
        series.requests.increment(1);
        if let Some(errors) = &series.errors {
            errors.increment(1);
        }
        series.duration.record(self.started.elapsed().as_secs_f64());
    }
}

/// The router's layer: counts and times every request by method, route template and status,
/// and runs it in its server span. It runs after routing (a `Router::layer`), so a matched
/// request already carries its template.
pub async fn track_http(State(fallback): State<FallbackLabel>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| path_label(p.as_str()));
    let observation = Observation::start(&req);
    let res = next.run(req).instrument(observation.span().clone()).await;
    observation.finish(route, fallback.0, &res);
    res
}

/// The label of a command: its name if the command catalog ([`redisgate_core::catalog`], the
/// one list of commands) has it, else `other`.
pub fn command_label(cmd: &Command) -> &'static str {
    cmd.spec().map_or("other", |c| c.name)
}

/// The series of one command label, registered once (see [`HttpSeries`]).
struct CommandSeries {
    commands: metrics::Counter,
    errors: metrics::Counter,
    duration: metrics::Histogram,
}

fn command_series(index: Option<usize>) -> &'static CommandSeries {
    // One slot per catalog command, and the last for `other`.
    static SLOTS: OnceLock<Vec<OnceLock<CommandSeries>>> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| (0..=catalog::COMMANDS.len()).map(|_| OnceLock::new()).collect());
    let index = index.filter(|i| *i < catalog::COMMANDS.len()).unwrap_or(catalog::COMMANDS.len());
    slots[index].get_or_init(|| {
        let label = catalog::COMMANDS.get(index).map_or("other", |c| c.name);
        CommandSeries {
            commands: metrics::counter!(REDIS_COMMANDS, "command" => label),
            errors: metrics::counter!(REDIS_COMMAND_ERRORS, "command" => label),
            duration: metrics::histogram!(REDIS_COMMAND_DURATION, "command" => label),
        }
    })
}

/// Records `count` runs of one Redis command, `errors` of them failed, each taking `seconds`,
/// under its catalog position ([`Command::catalog_index`]; `None`: `other`).
pub fn redis_commands(index: Option<usize>, count: u64, errors: u64, seconds: f64) {
    let series = command_series(index);
    series.commands.increment(count);
    // Touched on success too, so the error series exists (at 0) for every command seen.
    series.errors.increment(errors);
    series.duration.record_many(seconds, usize::try_from(count).unwrap_or(usize::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_labels_are_the_catalog() {
        let label = |name: &str| command_label(&Command::from_strs(&[name]).unwrap());
        assert_eq!(label("JSON.GET"), "JSON.GET");
        assert_eq!(label("get"), "GET", "any case");
        assert_eq!(label("ZRANGESTORE"), "ZRANGESTORE");
        assert_eq!(label("NOSUCHCOMMAND"), "other");
    }
}
