//! The cancellation contract: what a record of the cancel topic says and
//! how it is checked. The registry that applies them is
//! `engine::cancellations`; the CLI's `cancel` publishes them.
//!
//!
//! A cancellation is a record on the cancel topic (`topics.cancel`, default
//! `delay.cancel`; compacted, so the latest cancellation per id is kept),
//! keyed by the `x-delay-id` it cancels. Its value is JSON:
//!
//! ```json
//! {"before": 1796000000000, "until": 1796003600000, "target": "orders.timeouts"}
//! ```
//!
//! It cancels every record with that id — and that target, when `target` is
//! given — whose ingress timestamp (`x-delay-original-timestamp`, epoch ms)
//! is before `before`, so that a record published again with the same id
//! after the cancellation (a reschedule) is delivered. `until` is the
//! latest due time (epoch ms) it can still affect: a cancellation is
//! forgotten [`EXPIRY_SLACK_MS`] after it, so memory grows with the
//! outstanding cancellations only, never with the pending records. An
//! empty value (a tombstone) withdraws the cancellation of its id.
//!
//! Every instance reads the whole topic on a thread of its own
//! ([`CancelReader`](crate::engine::cancellations::CancelReader); no consumer group: each needs every cancellation), from the
//! beginning at start-up — the service forwards nothing before it has
//! caught up, so a restart or a rebalance never forgets one — then follows
//! it. The loops look a record up just before they forward it or write it
//! to a tier; a record without an id costs nothing.
//!
//! Trust boundary: any principal that may write the cancel topic can cancel
//! any record with an `x-delay-id`, for any target. The service bounds what
//! such a writer can cost it: a cancellation's `until` is clamped to the
//! time it is read plus `wheel.max_delay` (no record published before then
//! can be due later), its `target` must be a valid topic name, its id at
//! most [`ID_MAX_BYTES`], and at most `service.max_cancellations` are held —
//! beyond that, cancellations of new ids are refused and counted
//! (`kafka_delay_cancellations_refused_total`, an alert), never the old
//! ones dropped.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest accepted `x-delay-id`, bytes.
pub const ID_MAX_BYTES: usize = 256;

/// How long after its `until` a cancellation is kept (ms): records
/// delivered late (a failover, a slow writer) are still cancelled.
pub const EXPIRY_SLACK_MS: i64 = 10 * 60 * 1000;

/// The value of a cancellation record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// Cancels records whose ingress timestamp is before this (epoch ms).
    pub before: i64,
    /// The latest due time it can affect (epoch ms).
    pub until: i64,
    /// Only records for this target, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Why a cancellation record was ignored.
///
/// Each variant's `#[error]` message is its documentation: what happened,
/// with the fix where there is one (docs/architecture.md, "Errors").
#[allow(missing_docs)]
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CancelError {
    #[error("the key must be an x-delay-id: UTF-8, 1 to {ID_MAX_BYTES} bytes")]
    BadId,
    #[error("the value must be JSON {{\"before\": ms, \"until\": ms, \"target\"?: topic}}: {0}")]
    BadValue(String),
    #[error("until ({until}) is before before ({before})")]
    Inverted { before: i64, until: i64 },
    #[error("target {0:?} is not a valid Kafka topic name")]
    BadTarget(String),
}

impl Cancel {
    /// This cancellation with `until` clamped to `now_ms + max_delay_ms`:
    /// a record published before `now_ms` cannot be due later, so a larger
    /// `until` (up to `i64::MAX`) would only keep it in memory for ever.
    /// `until` never drops below `before`.
    pub fn bounded(mut self, now_ms: i64, max_delay_ms: i64) -> Self {
        let latest = now_ms.saturating_add(max_delay_ms).max(self.before);
        self.until = self.until.min(latest);
        self
    }
}

#[cfg(test)]
impl Cancel {
    /// A cancellation of records published before `before` and due by
    /// `until` (epoch ms), for `target` when given.
    pub(crate) fn of(before: i64, until: i64, target: Option<&str>) -> Self {
        Self {
            before,
            until,
            target: target.map(str::to_owned),
        }
    }
}

/// Checks an `x-delay-id` value: UTF-8, 1 to [`ID_MAX_BYTES`] bytes.
pub fn parse_id(raw: &[u8]) -> Option<&str> {
    if raw.is_empty() || raw.len() > ID_MAX_BYTES {
        return None;
    }
    std::str::from_utf8(raw).ok()
}

/// Parses a cancellation record: `Ok(None)` for a tombstone.
pub fn parse_record<'a>(
    key: Option<&'a [u8]>,
    value: Option<&[u8]>,
) -> Result<(&'a str, Option<Cancel>), CancelError> {
    let id = key.and_then(parse_id).ok_or(CancelError::BadId)?;
    let value = match value {
        None | Some([]) => return Ok((id, None)),
        Some(v) => v,
    };
    let cancel: Cancel =
        serde_json::from_slice(value).map_err(|e| CancelError::BadValue(e.to_string()))?;
    if cancel.until < cancel.before {
        return Err(CancelError::Inverted {
            before: cancel.before,
            until: cancel.until,
        });
    }
    if let Some(target) = &cancel.target {
        if !crate::model::envelope::is_valid_topic_name(target) {
            let shown: String = target.chars().take(64).collect();
            return Err(CancelError::BadTarget(shown));
        }
    }
    Ok((id, Some(cancel)))
}

#[cfg(test)]
mod tests;
