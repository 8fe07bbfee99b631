//! Operations: what an operator sees and controls — metrics, health and
//! readiness, the HTTP endpoint that serves them, logging, signals. The
//! engine reports here; nothing here decides about a record.
//!
//! * [`metrics`] — Prometheus metrics, one atomic per hot-path event;
//! * [`health`] — liveness and readiness from each loop's heartbeat;
//! * [`http`] — `/metrics`, `/healthz`, `/readyz`;
//! * [`telemetry`] — the tracing subscriber (text or JSON logs);
//! * [`shutdown`] — SIGTERM and SIGINT to a stop flag.

pub mod health;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
