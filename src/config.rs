//! Settings: compiled defaults → TOML file → `KAFKA_DELAY__SECTION__KEY`
//! environment overrides → [`Settings::validate`].
//!
//! Durations are human strings (`"1s"`, `"250ms"`, `"365d"`, humantime
//! syntax). Unknown keys are rejected. Every validation error names the key
//! and the fix; `main` exits with code 64 (EX_USAGE) on any of them.
//!
//! Over 500 lines: every section of the configuration with its validation,
//! read top to bottom (docs/architecture.md, "Files over 500 lines").

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use humantime_serde::Serde;
use regex::Regex;
use serde::Deserialize;
use thiserror::Error;

use crate::model::envelope::{is_valid_topic_name, TargetPolicy};
pub use crate::wheel::SlotOrder;
use crate::wheel::{TierTable, WheelError};

/// A configuration that cannot be loaded or cannot work.
///
/// Each variant's `#[error]` message is its documentation: what happened,
/// with the fix where there is one (docs/architecture.md, "Errors").
#[allow(missing_docs)]
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("cannot read configuration file {}: {problem}", path.display())]
    File { path: PathBuf, problem: String },
    #[error("configuration key `{key}`: {problem}. Fix: {fix}")]
    Invalid {
        key: &'static str,
        problem: String,
        fix: String,
    },
}

fn invalid(key: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[kafka]`: bootstrap servers and librdkafka properties.
    pub kafka: KafkaSettings,
    /// `[topics]`: topic names and target rules.
    pub topics: TopicSettings,
    /// `[wheel]`: ticks, slots and lead time of the tiers.
    pub wheel: WheelSettings,
    /// `[service]`: limits, intervals and timeouts of the loops.
    pub service: ServiceSettings,
    /// `[delivery]`: at-least-once or exactly-once.
    pub delivery: DeliverySettings,
    /// `[http]`: the metrics and probe endpoints.
    pub http: HttpSettings,
    /// `[log]`: level and format.
    pub log: LogSettings,
}

/// `[kafka]`: how to reach the cluster. Property maps are passed to
/// librdkafka unchanged (in environment overrides `_` stands for `.`).
/// Its `Debug` shows the values of secret-looking properties as
/// `<redacted>` ([`is_secret_key`]).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`, comma-separated `host:port`.
    pub bootstrap_servers: String,
    /// The one consumer group all instances share.
    pub group_id: String,
    /// librdkafka properties for every client (consumer, producer, admin).
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only.
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only.
    pub producer_properties: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".into(),
            group_id: "kafka-delay".into(),
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
        }
    }
}

/// `[topics]`: topic names and target rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicSettings {
    /// The topic producers publish delayed records to (default `delay.ingress`).
    pub ingress: String,
    /// Where records that cannot be delivered go, with a reason header (default `delay.dead-letter`).
    pub dead_letter: String,
    /// Compacted topic of cancellations, keyed by `x-delay-id`
    /// ([`crate::engine::cancellations`]).
    pub cancel: String,
    /// The clock topic (default `delay.clock`): each instance writes a small
    /// record to it every second and reads the broker's clock from its
    /// `LogAppendTime` stamp ([`crate::model::clock`]).
    pub clock: String,
    /// Tier topics are `tier_prefix` + tick label (+ `.s<partitions>` in the
    /// spread slot order): `delay.1s.s64`, `delay.50ms.s23`.
    pub tier_prefix: String,
    /// Tier prefixes used before (`["delay."]` after a change to
    /// `delay.v2.`): their tier topics are drained into the current wheel
    /// (docs/configuration.md, "Changing the wheel"). In an environment override:
    /// comma-separated.
    #[serde(deserialize_with = "load::strings_or_list")]
    pub previous_tier_prefixes: Vec<String>,
    /// Target for records without `x-target-topic`.
    pub default_target: Option<String>,
    /// Regex a target must match in full (e.g. `"orders|billing\\..*"`).
    pub allowed_targets: Option<String>,
    /// Topic specs (partitions, retention); the built-in `topics/topics.toml`
    /// when unset.
    pub spec_file: Option<PathBuf>,
    /// The tier topics' names as found in the cluster
    /// ([`crate::kafka::layout::resolve`]); not configurable. None: the
    /// plain names (`tier_prefix` + tick label).
    #[serde(skip)]
    pub resolved_tiers: Option<Vec<String>>,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            ingress: "delay.in".into(),
            dead_letter: "delay.dlq".into(),
            cancel: "delay.cancel".into(),
            clock: "delay.clock".into(),
            tier_prefix: "delay.".into(),
            previous_tier_prefixes: Vec::new(),
            default_target: None,
            allowed_targets: None,
            spec_file: None,
            resolved_tiers: None,
        }
    }
}

/// `[wheel]`: the tier table (docs/architecture.md, "The wheel").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WheelSettings {
    /// Tier ticks, ascending, each more than twice the previous. In an
    /// environment override: comma-separated (`100ms,1s,10s`).
    #[serde(deserialize_with = "load::durations_or_list")]
    pub ticks: Vec<Serde<Duration>>,
    /// Longest accepted delay; longer ones are dead-lettered.
    pub max_delay: Serde<Duration>,
    /// Slots of the top tier.
    pub top_slots: i64,
    /// K: partitions per slot (parallelism of one draining slot).
    pub partitions_per_slot: u32,
    /// Replication factor of every topic the service creates.
    pub replication_factor: i32,
    /// `min.insync.replicas` of every topic the service creates.
    pub min_insync_replicas: Option<i32>,
    /// Lead time of tier 0: how long before its bucket starts it is moved to
    /// the in-memory timer.
    pub lead: Serde<Duration>,
    /// How long a drained tier partition stays resumed for late appends
    /// before it sleeps until its next turn.
    pub grace: Serde<Duration>,
    /// Largest error of an instance's reading of the broker's clock
    /// (`kafka_delay_clock_error_seconds`) that the tier table is built to
    /// absorb (slot margin); beyond it the clock alert fires (docs/guarantees.md,
    /// "Time"). Hosts' own clocks may be off by any amount: every decision
    /// reads the broker's clock.
    pub max_clock_skew: Serde<Duration>,
    /// Whose clock decisions read: `broker` (the default: the broker's,
    /// from clock probes) or `host` (this host's wall clock, for brokers
    /// that cannot stamp `LogAppendTime`; docs/guarantees.md, "Time").
    pub clock: ClockSource,
    /// How slots map onto a tier's partitions ([`SlotOrder`]); a change
    /// drains the other order's tier topics (docs/configuration.md).
    pub slot_order: SlotOrder,
}

/// Whose clock decides when a record is due (`wheel.clock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockSource {
    /// The broker's, read from `LogAppendTime` stamps of clock probes
    /// ([`crate::model::clock`]): hosts' clocks may be off by any amount.
    #[default]
    Broker,
    /// This host's wall clock: for brokers that ignore
    /// `message.timestamp.type=LogAppendTime` (Tansu). A host clock ahead of
    /// the broker's delivers early by as much; `kafka_delay_clock_error_seconds`
    /// stays +Inf (unknown).
    Host,
}

impl Default for WheelSettings {
    fn default() -> Self {
        let d = |s: &str| Serde::from(humantime::parse_duration(s).expect("valid default"));
        Self {
            ticks: ["1s", "1m", "1h", "1d"].iter().map(|s| d(s)).collect(),
            max_delay: d("365d"),
            top_slots: 32,
            partitions_per_slot: 1,
            replication_factor: 3,
            min_insync_replicas: None,
            lead: d("200ms"),
            grace: d("1s"),
            max_clock_skew: d("500ms"),
            clock: ClockSource::Broker,
            slot_order: SlotOrder::Spread,
        }
    }
}

/// `[service]`: process behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings {
    /// Deadline for a graceful stop (flush, commit, leave the group); keep it
    /// below the pod's termination grace period.
    pub shutdown_timeout: Serde<Duration>,
    /// How often acknowledged offsets are committed. A crash redelivers at
    /// most this much (plus what was in flight).
    pub commit_interval: Serde<Duration>,
    /// How often end and committed offsets are fetched for each loop's
    /// partitions: bounds how late a record appended to a sleeping
    /// partition is noticed.
    pub watch_interval: Serde<Duration>,
    /// A target or tier write failing transiently for this long is
    /// dead-lettered with its last error.
    pub delivery_timeout: Serde<Duration>,
    /// How long start-up retries an unreachable cluster before giving up.
    pub startup_timeout: Serde<Duration>,
    /// Records read and not yet acknowledged, over the whole instance:
    /// above it, source partitions pause (backpressure).
    pub max_in_flight: usize,
    /// Key and value bytes of the records read and not yet acknowledged,
    /// over the whole instance: above it, source partitions pause. Bounds
    /// memory when records are large (retries, overflow, parked records).
    pub max_in_flight_bytes: usize,
    /// Records read and not yet acknowledged from one partition.
    pub max_in_flight_per_partition: usize,
    /// Records held in the due-soon timers, over the whole instance.
    pub max_timer_records: usize,
    /// Key, value and header bytes held in the due-soon timers, over the
    /// whole instance.
    pub max_timer_bytes: usize,
    /// Most outstanding cancellations held in memory (about 110 bytes
    /// each); beyond it cancellations of new ids are refused and counted
    /// (`kafka_delay_cancellations_refused_total`), never old ones dropped.
    pub max_cancellations: usize,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            shutdown_timeout: Duration::from_secs(20).into(),
            commit_interval: Duration::from_secs(1).into(),
            watch_interval: Duration::from_secs(1).into(),
            delivery_timeout: Duration::from_secs(600).into(),
            startup_timeout: Duration::from_secs(60).into(),
            max_in_flight: 100_000,
            max_in_flight_bytes: 64 << 20,
            max_in_flight_per_partition: 20_000,
            max_timer_records: 200_000,
            max_timer_bytes: 64 << 20,
            max_cancellations: 1_000_000,
        }
    }
}

/// `[http]`: the metrics and probe endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Serve `/metrics`, `/healthz` and `/readyz` (default true).
    pub enabled: bool,
    /// `host:port` to listen on.
    pub bind: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: "0.0.0.0:9090".into(),
        }
    }
}

/// `[log]`: structured logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn ms(d: &Serde<Duration>) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Settings {
    /// Checks that the configuration can work; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(invalid(
                "kafka.bootstrap_servers",
                "is empty",
                "set it to host:port[,host:port…] of your brokers",
            ));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid(
                "kafka.group_id",
                "is empty",
                "set one group id shared by all instances",
            ));
        }
        for (key, name) in self.fixed_topics() {
            check_topic_name(key, name)?;
        }
        if self.topics.cancel == self.topics.ingress
            || self.topics.cancel == self.topics.dead_letter
        {
            return Err(invalid(
                "topics.cancel",
                "is the same topic as topics.ingress or topics.dead_letter",
                "give the cancel topic its own name",
            ));
        }
        if self.topics.ingress == self.topics.dead_letter {
            return Err(invalid(
                "topics.dead_letter",
                "is the same topic as topics.ingress",
                "give the dead-letter topic its own name",
            ));
        }
        let fixed = self.fixed_topics();
        if let Some((key, _)) = fixed
            .iter()
            .enumerate()
            .find(|(i, (_, name))| fixed[..*i].iter().any(|(_, other)| other == name))
            .map(|(_, pair)| *pair)
        {
            return Err(invalid(
                key,
                "names the same topic as another of topics.ingress, dead_letter, cancel and clock",
                "give each of them its own name",
            ));
        }
        let table = self.tier_table()?;
        for name in self.tier_topics(&table) {
            check_topic_name("topics.tier_prefix", &name)?;
            if self.fixed_topics().iter().any(|(_, fixed)| **fixed == name) {
                return Err(invalid(
                    "topics.tier_prefix",
                    format!(
                        "tier topic {name} collides with the ingress, dead-letter, cancel or clock topic"
                    ),
                    "choose another tier_prefix",
                ));
            }
        }
        for previous in &self.topics.previous_tier_prefixes {
            check_topic_name("topics.previous_tier_prefixes", &format!("{previous}1s"))?;
            if *previous == self.topics.tier_prefix {
                return Err(invalid(
                    "topics.previous_tier_prefixes",
                    format!("lists the current tier_prefix {previous:?}"),
                    "list only prefixes used before",
                ));
            }
        }
        if self.wheel.partitions_per_slot == 0 {
            return Err(invalid(
                "wheel.partitions_per_slot",
                "is 0",
                "use 1 or more (partitions per slot)",
            ));
        }
        if self.wheel.replication_factor < 1 {
            return Err(invalid(
                "wheel.replication_factor",
                "must be at least 1",
                "use 3 in production, 1 for a single local broker",
            ));
        }
        if let Some(min_isr) = self.wheel.min_insync_replicas {
            if min_isr < 1 || min_isr > self.wheel.replication_factor {
                return Err(invalid(
                    "wheel.min_insync_replicas",
                    format!("{min_isr} is outside 1..=replication_factor"),
                    "use replication_factor − 1 (e.g. 2 of 3)",
                ));
            }
        }
        if self.service.commit_interval.is_zero() {
            return Err(invalid(
                "service.commit_interval",
                "is 0",
                "commit every few hundred milliseconds or more, e.g. \"1s\"",
            ));
        }
        for (key, value) in [
            ("service.watch_interval", &self.service.watch_interval),
            ("service.delivery_timeout", &self.service.delivery_timeout),
            ("service.startup_timeout", &self.service.startup_timeout),
            ("wheel.max_clock_skew", &self.wheel.max_clock_skew),
        ] {
            if value.is_zero() {
                return Err(invalid(
                    key,
                    "is 0",
                    "give a positive duration, e.g. \"1s\"",
                ));
            }
        }
        for (key, value) in [
            ("service.max_in_flight", self.service.max_in_flight),
            (
                "service.max_in_flight_bytes",
                self.service.max_in_flight_bytes,
            ),
            (
                "service.max_in_flight_per_partition",
                self.service.max_in_flight_per_partition,
            ),
            ("service.max_timer_records", self.service.max_timer_records),
            ("service.max_timer_bytes", self.service.max_timer_bytes),
            ("service.max_cancellations", self.service.max_cancellations),
        ] {
            if value == 0 {
                return Err(invalid(
                    key,
                    "is 0",
                    "give a positive cap (see config/example.toml for the defaults)",
                ));
            }
        }
        if self.wheel.grace.is_zero() {
            return Err(invalid(
                "wheel.grace",
                "is 0",
                "allow late appends some time, e.g. \"1s\"",
            ));
        }
        self.target_policy()?;
        self.validate_delivery()?;
        if self.http.enabled {
            self.http.bind.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "http.bind",
                    e.to_string(),
                    "use host:port, e.g. 0.0.0.0:9090",
                )
            })?;
        }
        Ok(())
    }

    /// Derives the tier table; errors name the `[wheel]` key at fault.
    pub fn tier_table(&self) -> Result<TierTable, ConfigError> {
        let ticks: Vec<i64> = self.wheel.ticks.iter().map(ms).collect();
        TierTable::derive(
            &ticks,
            self.wheel.top_slots,
            ms(&self.wheel.lead),
            ms(&self.wheel.max_delay),
            ms(&self.wheel.max_clock_skew),
        )
        .map(|table| table.with_slot_order(self.wheel.slot_order))
        .map_err(|e| {
            let key = match e {
                WheelError::TooFewTopSlots(_) | WheelError::TopTooShort { .. } => "wheel.top_slots",
                WheelError::BadLead(_) => "wheel.lead",
                WheelError::BadMaxDelay(_) => "wheel.max_delay",
                _ => "wheel.ticks",
            };
            invalid(
                key,
                e.to_string(),
                "see the [wheel] section of config/example.toml",
            )
        })
    }

    /// The topics whose names are configured one by one, with their keys:
    /// ingress, dead-letter, cancel, clock.
    pub fn fixed_topics(&self) -> [(&'static str, &String); 4] {
        [
            ("topics.ingress", &self.topics.ingress),
            ("topics.dead_letter", &self.topics.dead_letter),
            ("topics.cancel", &self.topics.cancel),
            ("topics.clock", &self.topics.clock),
        ]
    }

    /// The rules targets are checked against.
    pub fn target_policy(&self) -> Result<TargetPolicy, ConfigError> {
        let table = self.tier_table()?;
        let mut own_topics = self.tier_topics(&table);
        own_topics.push(self.topics.ingress.clone());
        own_topics.push(self.topics.dead_letter.clone());
        own_topics.push(self.topics.cancel.clone());
        own_topics.push(self.topics.clock.clone());
        let allowed = match &self.topics.allowed_targets {
            Some(pattern) => Some(Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                invalid(
                    "topics.allowed_targets",
                    e.to_string(),
                    "give a valid regex",
                )
            })?),
            None => None,
        };
        let policy = TargetPolicy {
            default_target: self.topics.default_target.clone(),
            allowed,
            own_topics,
            max_delay_ms: table.max_delay_ms(),
        };
        if let Some(target) = &policy.default_target {
            check_topic_name("topics.default_target", target)?;
            if policy.own_topics.contains(target) {
                return Err(invalid(
                    "topics.default_target",
                    "is one of the service's own topics",
                    "name an application topic",
                ));
            }
        }
        Ok(policy)
    }
}

fn check_topic_name(key: &'static str, name: &str) -> Result<(), ConfigError> {
    if is_valid_topic_name(name) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{name:?} is not a valid topic name"),
            "use 1–249 characters of a-z A-Z 0-9 . _ -",
        ))
    }
}

mod delivery;
mod labels;
mod load;
mod secrets;
mod tiers;

pub use labels::{parse_tick_label, tick_label};
pub use secrets::is_secret_key;

pub use delivery::{DeliveryMode, DeliverySettings};

#[cfg(test)]
mod tests;
