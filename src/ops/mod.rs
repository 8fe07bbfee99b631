//! Operations: what an operator sees and controls — metrics, health and
//! readiness, the HTTP endpoint that serves them, logging, signals. The
//! engine reports here; nothing here decides about a record.
//!
//! * [`metrics`] — Prometheus metrics, one atomic per hot-path event;
//! * [`clock`] — the clock metrics and warnings (the estimate's error, the
//!   host's offset);
//! * [`health`] — liveness and readiness from each loop's heartbeat;
//! * [`http`] — `/metrics`, `/healthz`, `/readyz`;
//! * [`telemetry`] — the tracing subscriber (text or JSON logs);
//! * [`shutdown`] — SIGTERM and SIGINT to a stop flag.

pub mod clock;
pub mod health;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;

#[cfg(test)]
mod tests {
    /// Every alert of the chart has a section in docs/runbooks.md, and
    /// every rule a `runbook_url` pointing at it.
    #[test]
    fn every_alert_has_a_runbook() {
        let rules = include_str!("../../helm/templates/prometheusrule.yaml");
        let runbooks = include_str!("../../docs/runbooks.md");
        let alerts: Vec<&str> = rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- alert: "))
            .collect();
        assert!(alerts.len() >= 12, "found {} alerts", alerts.len());
        for alert in &alerts {
            assert!(
                runbooks.contains(&format!("\n## {alert}\n")),
                "docs/runbooks.md has no section {alert}"
            );
            assert!(
                rules.contains(&format!("#{}\n", alert.to_lowercase())),
                "{alert} has no runbook_url"
            );
        }
    }
}
