//! Operations: Prometheus metrics, health probes and tracing.
//!
//! # Layout
//! - [`metrics`]: metric names (defined once), the recorder, the HTTP middleware, label
//!   helpers that keep every label in a closed set.
//! - [`metered`]: the store decorator that times every metadata query.
//! - [`health`]: `/health/live`, `/health/ready`, `/health` and the background checks
//!   behind them.
//! - [`telemetry`]: the log and the OpenTelemetry spans (OTLP export when configured).

pub mod health;
pub mod metered;
pub mod metrics;
pub mod ratelimit;
pub mod telemetry;
