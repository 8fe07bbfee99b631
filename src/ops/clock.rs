//! The clock as operators see it: the error of this instance's reading of
//! the broker's clock against `wheel.max_clock_skew`, and how far the
//! host's own clock is off (for NTP's keepers; nothing decides on it).

use crate::model::clock::{broker, mono_us, now_ms, wall_ms};
use crate::ops::metrics::Metrics;

/// Warnings are repeated at most this often while their cause lasts, ms.
const REPEAT_MS: i64 = 600_000;

/// Sets the clock metrics and logs when the estimate's error crosses the
/// bound or the host's clock is off by more than it. Called every 100 ms.
#[derive(Debug, Default)]
pub struct ClockWatch {
    /// When the error bound was last reported over the limit (monotonic ms).
    error_warned_ms: Option<i64>,
    /// When the host offset was last reported over the limit (monotonic ms).
    offset_told_ms: Option<i64>,
}

impl ClockWatch {
    /// One look: metrics, and a log line on a change.
    pub fn check(&mut self, metrics: &Metrics, limit_ms: i64) {
        let at = mono_us();
        let error = broker().error_ms(at);
        let offset = broker().now_ms(at).map(|now| wall_ms() - now);
        metrics.set_clock(offset, error, limit_ms);
        let mono_ms = at / 1_000;
        let due = |last: Option<i64>| last.is_none_or(|t| mono_ms - t >= REPEAT_MS);
        match error {
            Some(ms) if ms > limit_ms => {
                if due(self.error_warned_ms) {
                    tracing::warn!(error_ms = ms, limit_ms, "the broker's clock is known to within {ms} ms only (wheel.max_clock_skew: {limit_ms} ms): clock probes fail or are slow; records may be late by that much, never early");
                    self.error_warned_ms = Some(mono_ms);
                }
            }
            _ => {
                if self.error_warned_ms.take().is_some() {
                    tracing::info!(error_ms = ?error, "the broker's clock is known within wheel.max_clock_skew again");
                }
            }
        }
        match offset {
            Some(ms) if ms.abs() > limit_ms => {
                if due(self.offset_told_ms) {
                    tracing::warn!(offset_ms = ms, "this host's clock is {ms} ms off the broker's (positive: ahead); deliveries follow the broker's clock and are not affected, but logs and other software on this host are: fix its time sync (NTP)");
                    self.offset_told_ms = Some(mono_ms);
                }
            }
            _ => self.offset_told_ms = None,
        }
    }
}

/// Logs the first reading of the broker's clock.
pub fn log_first_reading() {
    let at = mono_us();
    let error = broker().error_ms(at);
    let now = now_ms();
    tracing::info!(
        broker_time = %crate::model::clock::rfc3339_ms(now),
        host_offset_ms = wall_ms() - now,
        error_ms = ?error,
        "read the broker's clock"
    );
}
