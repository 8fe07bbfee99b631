//! `[delivery]`: the delivery guarantee and, in exactly-once mode, the
//! transactions' cadence and the instance's name.

use std::time::Duration;

use humantime_serde::Serde;
use serde::Deserialize;

use super::{invalid, ConfigError, Settings};

/// How each record reaches its target: at least once (the default) or
/// exactly once for `read_committed` readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// Offsets are committed after the broker acknowledged the writes: a
    /// crash or a lost rebalance can write a record twice.
    AtLeastOnce,
    /// Every write and the source offsets it consumed are committed in one
    /// Kafka transaction (`send_offsets_to_transaction`); see
    /// [`crate::delivery::exactly_once`].
    ExactlyOnce,
}

/// `[delivery]`: delivery guarantee and, for `exactly_once`, the
/// transactions' cadence.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    /// At-least-once (default) or exactly-once.
    pub mode: DeliveryMode,
    /// A transaction commits once this many records were written in it…
    pub transaction_max_records: usize,
    /// …or once it is this old (the extra lateness of exactly-once mode).
    pub transaction_interval: Serde<Duration>,
    /// The broker aborts a transaction left open this long
    /// (`transaction.timeout.ms`): bounds how long `read_committed` readers
    /// wait behind an instance that died mid-transaction and did not
    /// come back under the same `instance_id`.
    pub transaction_timeout: Serde<Duration>,
    /// Stable name of this instance, part of each producer's
    /// `transactional.id`: an instance restarted under the same name fences
    /// its predecessor at once. Default: the host name and the HTTP port.
    /// Two live instances must never share it.
    pub instance_id: Option<String>,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            mode: DeliveryMode::AtLeastOnce,
            transaction_max_records: 10_000,
            transaction_interval: Duration::from_millis(100).into(),
            transaction_timeout: Duration::from_secs(60).into(),
            instance_id: None,
        }
    }
}

impl DeliverySettings {
    /// True in `exactly_once` mode.
    pub fn exactly_once(&self) -> bool {
        self.mode == DeliveryMode::ExactlyOnce
    }
}

impl Settings {
    pub(super) fn validate_delivery(&self) -> Result<(), ConfigError> {
        let d = &self.delivery;
        if d.transaction_max_records == 0 {
            return Err(invalid(
                "delivery.transaction_max_records",
                "is 0",
                "commit every few thousand records, e.g. 10000",
            ));
        }
        if d.transaction_interval.is_zero() {
            return Err(invalid(
                "delivery.transaction_interval",
                "is 0",
                "commit every few tens of milliseconds or more, e.g. \"100ms\"",
            ));
        }
        if *d.transaction_timeout < *d.transaction_interval * 10 {
            return Err(invalid(
                "delivery.transaction_timeout",
                "is less than ten transaction intervals",
                "give the broker time to commit, e.g. \"60s\"",
            ));
        }
        if let Some(id) = &d.instance_id {
            let ok = !id.is_empty()
                && id.len() <= 100
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(invalid(
                    "delivery.instance_id",
                    format!("{id:?} is not 1–100 characters of a-z A-Z 0-9 . _ -"),
                    "use the pod or host name, e.g. kafka-delay-0",
                ));
            }
        }
        Ok(())
    }

    /// The `transactional.id` of one loop's producer in exactly-once mode:
    /// `<group_id>.<loop label>.<instance_id>`.
    pub fn transactional_id(&self, label: &str) -> String {
        let instance = self.delivery.instance_id.clone().unwrap_or_else(|| {
            let host = hostname();
            let port = self.http.bind.rsplit(':').next().unwrap_or_default();
            format!("{host}-{port}")
        });
        format!("{}.{label}.{instance}", self.kafka.group_id)
    }
}

/// The host name (`HOSTNAME`, else the kernel's), for default instance ids.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}
