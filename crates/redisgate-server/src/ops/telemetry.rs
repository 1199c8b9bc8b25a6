//! Tracing: the log (text or JSON lines on stderr, filtered by `REDISGATE_LOG`, default
//! `info`) and, when an OTLP endpoint is configured, OpenTelemetry spans exported over
//! OTLP/HTTP.
//!
//! # Spans
//! One server span per HTTP request ([`http_span`]), its parent taken from the W3C
//! `traceparent`/`tracestate` headers, and under it `auth`, `rate_limit`, `redis` (one per
//! command, pipeline or transaction) and `store` (one per metadata query) spans. Their fields
//! come from closed sets (method, route template, command name, store operation, outcome):
//! never a token, a Redis key or value, a raw path or a URL.
//!
//! # Cost when not configured
//! Every span is at [`SPAN_LEVEL`] (DEBUG), which the log's default filter (`info`) does not
//! enable. Without an OTLP endpoint the OpenTelemetry layer does not exist, the subscriber's
//! maximum level is the log's, and `debug_span!` stops at its static level check: no span is
//! created, nothing allocated, nothing exported. With an endpoint, the OpenTelemetry layer has
//! its own filter (`otel_filter`) that enables exactly these spans (plus warnings and errors
//! inside them, as span events), whatever `REDISGATE_LOG` says.
//!
//! # Configuration (environment only, the OpenTelemetry names)
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is appended) or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is): turns export on. `http://` only.
//! - `OTEL_EXPORTER_OTLP_PROTOCOL` / `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`: `http/protobuf`
//!   (default) or `http/json`. `grpc` is refused at start: this build carries no gRPC client.
//! - `OTEL_SERVICE_NAME` (default `redisgate`), `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_TRACES_SAMPLER(_ARG)`,
//!   `OTEL_BSP_*` (batching): as the OpenTelemetry SDK reads them.
//! - `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`: no export even with an endpoint.

use std::time::Duration;

use anyhow::{Context as _, bail};
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HeaderExtractor, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry};

/// The level of every span of ours: above the log's default, so they cost nothing unless the
/// OpenTelemetry layer (or `REDISGATE_LOG=debug`) asks for them.
pub const SPAN_LEVEL: Level = Level::DEBUG;

/// Name of the span around each metadata store query ([`crate::ops::metered`]).
pub const STORE_SPAN: &str = "store";

/// How long shutdown waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Holds the OpenTelemetry exporter, if any; [`Telemetry::shutdown`] (or drop) flushes it.
/// Keep it until the server has stopped.
#[must_use = "dropping the guard stops the span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            tracing::warn!(error = %e, "could not export the last OpenTelemetry spans");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the process-wide subscriber: the log, as `json` says, and the OpenTelemetry
/// export when the environment configures it (see the module docs). Fails on a bad
/// OpenTelemetry configuration, naming the variable, and when a subscriber is already set.
pub fn init(json: bool) -> anyhow::Result<Telemetry> {
    let config = OtelConfig::from_env(|name| std::env::var(name).ok())?;
    let provider = config.map(OtelConfig::provider).transpose()?;
    let log_filter = EnvFilter::try_from_env("REDISGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    Registry::default()
        .with(layers(json, log_filter, provider.as_ref()))
        .try_init()
        .context("installing the tracing subscriber")?;
    if provider.is_some() {
        tracing::info!("exporting OpenTelemetry traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The log layer with its own filter, and the OpenTelemetry layer with [`otel_filter`] when
/// there is a provider. Per-layer filters: each sees only what it asked for.
fn layers(json: bool, log_filter: EnvFilter, provider: Option<&SdkTracerProvider>) -> Vec<BoxedLayer> {
    // Colours only for a person at a terminal: in a file, journald or a collector they are
    // escape codes in the text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let log =
        if json { log.json().with_filter(log_filter).boxed() } else { log.with_filter(log_filter).boxed() };
    let mut layers = vec![log];
    if let Some(provider) = provider {
        let otel = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("redisgate"))
            // Only what the spans say: no thread, source location or timing attributes.
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            // Nothing here reads the OpenTelemetry context from a thread-local.
            .with_context_activation(false)
            .with_filter(otel_filter());
        layers.push(otel.boxed());
    }
    layers
}

fn ours(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with("redisgate")
}

/// What the OpenTelemetry layer sees: our spans up to [`SPAN_LEVEL`], and our warnings and
/// errors (as events of the span they happen in). A store query outside any request (the
/// background refreshes, the health check) is not exported: a trace per second of
/// `plan_rates` would bury the requests. (Its span still takes a registry slot, as a span
/// every per-layer filter refused does; that costs nothing without an endpoint, where the
/// store span's callsite is off altogether.)
fn otel_filter() -> impl tracing_subscriber::layer::Filter<Registry> + Send + Sync + 'static {
    fn wanted(meta: &Metadata<'_>) -> bool {
        ours(meta) && if meta.is_span() { *meta.level() <= SPAN_LEVEL } else { *meta.level() <= Level::WARN }
    }
    tracing_subscriber::filter::dynamic_filter_fn(|meta: &Metadata<'_>, cx: &Context<'_, Registry>| {
        wanted(meta) && (!is_store_span(meta) || cx.lookup_current().is_some())
    })
    .with_callsite_filter(|meta| match (wanted(meta), is_store_span(meta)) {
        (false, _) => Interest::never(),
        (true, false) => Interest::always(),
        (true, true) => Interest::sometimes(),
    })
    .with_max_level_hint(LevelFilter::from_level(SPAN_LEVEL))
}

fn is_store_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.name() == STORE_SPAN
}

/// The server span of one request, its parent from the request's `traceparent` and
/// `tracestate` (W3C Trace Context). `method` is the label from a closed set; the route and
/// the status come later, in [`finish_http_span`].
pub fn http_span(method: &'static str, headers: &HeaderMap) -> Span {
    let span = tracing::debug_span!(
        "http",
        otel.name = method,
        otel.kind = "server",
        http.request.method = method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if !span.is_disabled() && headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        // Only fails when the span was already started, which it cannot be yet.
        let _ = span.set_parent(parent);
    }
    span
}

/// Completes the server span once the response is known: the route template (`None` for a
/// request outside the routes, such as the standalone data plane, whose raw path holds keys),
/// the status, and the name `{method} {route}`. 5xx marks the span as an error.
pub fn finish_http_span(span: &Span, method: &'static str, route: Option<&'static str>, status: u16) {
    if span.is_disabled() {
        return;
    }
    // As i64: the OpenTelemetry layer would turn an unsigned value into text.
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    if let Some(route) = route {
        span.record("http.route", route);
        // The OpenTelemetry span was started by its first child, before the route was known.
        span.context().span().update_name(format!("{method} {route}"));
    }
}

/// What the environment says about the export.
#[derive(Debug, PartialEq)]
struct OtelConfig {
    protocol: Protocol,
    service: String,
    timeout: Duration,
}

impl OtelConfig {
    /// `None` when no endpoint is configured (or export is switched off).
    fn from_env(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let var = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let either = |specific: &'static str, general: &'static str| {
            var(specific).map(|v| (specific, v)).or_else(|| var(general).map(|v| (general, v)))
        };
        let Some((name, endpoint)) =
            either("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        else {
            return Ok(None);
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        // The URL is not repeated: it may carry credentials.
        if !endpoint.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://")) {
            bail!(
                "{name}: only http:// OTLP endpoints are supported (no TLS client in this build); \
                 export to a local OpenTelemetry Collector"
            );
        }
        let protocol = match either("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") {
            None => Protocol::HttpBinary,
            Some((_, p)) if p == "http/protobuf" => Protocol::HttpBinary,
            Some((_, p)) if p == "http/json" => Protocol::HttpJson,
            Some((name, p)) if p == "grpc" => bail!(
                "{name}=grpc is not supported (this build has no gRPC client): use http/protobuf \
                 (the Collector's port 4318) or http/json"
            ),
            Some((name, p)) => bail!("{name}={p:?}: expected http/protobuf or http/json"),
        };
        let timeout = match either("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT") {
            None => Duration::from_secs(10),
            Some((name, ms)) => Duration::from_millis(
                ms.parse().with_context(|| format!("{name}={ms:?}: expected milliseconds"))?,
            ),
        };
        let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| "redisgate".to_owned());
        Ok(Some(OtelConfig { protocol, service, timeout }))
    }

    /// The tracer provider: OTLP/HTTP exporter (endpoint and headers from the environment)
    /// behind the SDK's batch processor, which exports from its own thread.
    fn provider(self) -> anyhow::Result<SdkTracerProvider> {
        let client = ExportClient {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the OpenTelemetry export runtime")?,
            inner: HyperClient::with_default_connector(self.timeout, None),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(self.protocol)
            .with_timeout(self.timeout)
            .with_http_client(client)
            .build()
            .context("configuring the OpenTelemetry exporter")?;
        let resource = Resource::builder()
            .with_service_name(self.service)
            .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
    }
}

/// The exporter's HTTP client: hyper on a private single-threaded tokio runtime. The SDK's
/// batch processor exports from its own thread with a plain `block_on`, where hyper finds no
/// reactor; this client brings its own, so export never runs on the gateway's runtime and
/// still works before it starts and after it stops (the final flush).
#[derive(Debug)]
struct ExportClient {
    runtime: tokio::runtime::Runtime,
    inner: HyperClient,
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            // Blocking a runtime's thread would stall it (and `block_on` panics there).
            return Err("the OTLP export client runs on the batch processor's thread only".into());
        }
        self.runtime.block_on(self.inner.send_bytes(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Option<OtelConfig>> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        OtelConfig::from_env(|name| vars.get(name).cloned())
    }

    #[test]
    fn export_is_on_only_with_an_http_endpoint() {
        assert_eq!(config(&[]).unwrap(), None);
        assert_eq!(config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(), None);
        let on = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]).unwrap().unwrap();
        assert_eq!(on.protocol, Protocol::HttpBinary);
        assert_eq!(on.service, "redisgate");
        assert_eq!(on.timeout, Duration::from_secs(10));
        let json = config(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "edge-gateway"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(json.protocol, Protocol::HttpJson);
        assert_eq!(json.service, "edge-gateway");
        assert_eq!(json.timeout, Duration::from_millis(2500));
        let off = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(config(&off).unwrap(), None);
        let off = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_TRACES_EXPORTER", "none")];
        assert_eq!(config(&off).unwrap(), None);
    }

    #[test]
    fn unsupported_settings_fail_naming_the_variable() {
        let grpc =
            [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
        let e = config(&grpc).unwrap_err().to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc") && e.contains("http/protobuf"), "{e}");
        let tls = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://user:secret@c:4318/v1/traces")];
        let e = config(&tls).unwrap_err().to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") && !e.contains("secret"), "{e}");
        let odd =
            [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp")];
        assert!(config(&odd).unwrap_err().to_string().contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"));
    }

    /// The spans of the request path, as the gateway's modules create them.
    fn request_spans() -> Vec<Span> {
        let http = http_span("POST", &HeaderMap::new());
        let _in_http = http.enter();
        let auth = tracing::debug_span!("auth");
        let store = tracing::debug_span!(STORE_SPAN);
        vec![http.clone(), auth, store]
    }

    #[test]
    fn without_an_endpoint_the_span_callsites_are_off() {
        let subscriber = Registry::default().with(layers(false, EnvFilter::new("info"), None));
        // The subscriber's hint becomes the global maximum level, which `debug_span!` checks
        // before anything else: INFO means the span callsites are not even asked.
        assert_eq!(tracing::Subscriber::max_level_hint(&subscriber), Some(LevelFilter::INFO));
        // And asked, they say never (asked directly: other tests' subscribers in this
        // process share the callsites' cached interest).
        let spans =
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), request_spans);
        for span in spans {
            let meta = span.metadata().expect("a disabled span keeps its metadata");
            assert!(tracing::Subscriber::register_callsite(&subscriber, meta).is_never(), "{}", meta.name());
        }
    }

    /// An exporter that keeps what it is given.
    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[test]
    fn with_an_endpoint_the_spans_reach_opentelemetry_only() {
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(kept.clone()).build();
        let subscriber = Registry::default().with(layers(false, EnvFilter::new("info"), Some(&provider)));
        assert_eq!(tracing::Subscriber::max_level_hint(&subscriber), Some(LevelFilter::DEBUG));
        tracing::subscriber::with_default(subscriber, || {
            let spans = request_spans();
            assert!(spans.iter().all(|s| !s.is_disabled()));
            drop(spans);
            // Not exported: other crates' debug spans, and a store query outside any request.
            drop(tracing::debug_span!(target: "hyper", "conn"));
            drop(tracing::debug_span!(STORE_SPAN));
        });
        let kept = kept.0.lock().unwrap();
        let mut names: Vec<&str> = kept.iter().map(|s| s.name.as_ref()).collect();
        names.sort_unstable();
        assert_eq!(names, ["POST", "auth", "store"]);
        let server = kept.iter().find(|s| s.name == "POST").unwrap();
        assert_eq!(server.span_kind, opentelemetry::trace::SpanKind::Server);
        for child in kept.iter().filter(|s| s.name != "POST") {
            assert_eq!(child.parent_span_id, server.span_context.span_id(), "{}", child.name);
            assert_eq!(child.span_context.trace_id(), server.span_context.trace_id());
        }
    }

    #[test]
    fn the_incoming_traceparent_is_the_parent() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = Registry::default().with(layers(false, EnvFilter::new("off"), Some(&provider)));
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = http_span("GET", &headers);
            let cx = span.context();
            let own = cx.span().span_context().clone();
            assert_eq!(own.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_ne!(own.span_id().to_string(), "00f067aa0ba902b7");
            assert!(own.is_sampled());
        });
    }
}
