//! Structured logs with `tracing`: text or JSON, filtered by `RUST_LOG` or
//! `[log] filter`. librdkafka's own logs arrive through rdkafka's `tracing`
//! feature.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber (once; later calls are no-ops). Logs go to
/// stderr so that stdout stays free for command output.
pub fn init(log: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
