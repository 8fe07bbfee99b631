//! Topics as code: the specs in `topics/topics.toml` and `topics apply`.
//!
//! `apply` creates missing topics with derived partition counts and reports
//! drift; a wrong partition count is an error, never silently "fixed". It is
//! idempotent. Brokers that answer DescribeConfigs with no entries (such as
//! Tansu) are reported as "configs not verifiable", not as drift.
//!
//! Over 500 lines: one pipeline: spec, plan, apply, drift report, ACLs
//! (docs/architecture.md, "Files over 500 lines").

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use humantime_serde::Serde;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Deserialize;
use thiserror::Error;

use crate::config::{ConfigError, Settings};
use crate::kafka;

/// The built-in spec, identical to `topics/topics.toml`.
pub const DEFAULT_SPEC: &str = include_str!("../../topics/topics.toml");

/// Errors of loading specs or talking to the cluster.
///
/// Each variant's `#[error]` message is its documentation: what happened,
/// with the fix where there is one (docs/architecture.md, "Errors").
#[allow(missing_docs)]
#[derive(Debug, Error)]
pub enum TopicsError {
    #[error("cannot read topic spec {path}: {error}")]
    SpecRead {
        path: String,
        #[source]
        error: std::io::Error,
    },
    #[error("topic spec {path}: {error}")]
    SpecParse {
        path: String,
        #[source]
        error: toml::de::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("kafka: {}", crate::kafka::describe(.0))]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Drift(String),
    #[error("no answer from the cluster at {bootstrap} (kafka.bootstrap_servers) within {waited:?}: {}. Fix: check the address, the network and the credentials, or raise service.startup_timeout", crate::kafka::describe(.error))]
    Unreachable {
        bootstrap: String,
        waited: Duration,
        #[source]
        error: KafkaError,
    },
    #[error("cannot start the admin client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The spec file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The ingress topic.
    pub ingress: FixedTopic,
    /// The dead-letter topic.
    pub dead_letter: FixedTopic,
    /// The cancel topic (compacted); default: 3 partitions, retention of
    /// `wheel.max_delay` + 1 day (a cancellation matters until the latest
    /// due time it can affect).
    #[serde(default)]
    pub cancel: Option<FixedTopic>,
    /// The clock topic (`LogAppendTime`); default: 1 partition, retention 1
    /// hour (a probe is read by no one: its acknowledgement is the point).
    #[serde(default)]
    pub clock: Option<FixedTopic>,
    /// How tier topics' retention is derived (their partitions come from the wheel).
    pub tiers: TierTopics,
    #[serde(default)]
    /// Topic configs set on every topic created (`min.insync.replicas`, …).
    pub configs: BTreeMap<String, String>,
}

/// A topic whose partition count is configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedTopic {
    /// Partition count.
    pub partitions: i32,
    /// Retention (`retention.ms`).
    pub retention: Serde<Duration>,
}

/// How tier retention is derived.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierTopics {
    /// A tier keeps records this many times its horizon.
    pub retention_factor: u32,
    /// Plus this margin.
    pub retention_margin: Serde<Duration>,
}

/// One topic to create or check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopicPlan {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Retention, ms.
    pub retention_ms: i64,
    /// Shortest retention that still works (ms): a tier's horizon.
    pub min_retention_ms: i64,
    /// `cleanup.policy=compact,delete` (the cancel topic).
    pub compacted: bool,
    /// `message.timestamp.type=LogAppendTime`: the broker stamps each record
    /// with its own clock (the tiers and the clock topic).
    pub broker_stamped: bool,
}

impl Spec {
    /// Loads `path`, or the built-in spec when None.
    pub fn load(path: Option<&Path>) -> Result<Self, TopicsError> {
        let (name, text) = match path {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|error| TopicsError::SpecRead {
                    path: p.display().to_string(),
                    error,
                })?,
            ),
            None => ("(built-in)".to_owned(), DEFAULT_SPEC.to_owned()),
        };
        toml::from_str(&text).map_err(|error| TopicsError::SpecParse { path: name, error })
    }

    /// Every topic the service needs: ingress, dead-letter, cancel, clock,
    /// then the tiers.
    pub fn plan(&self, settings: &Settings) -> Result<Vec<TopicPlan>, TopicsError> {
        let table = settings.tier_table()?;
        let ms = |d: &Serde<Duration>| d.as_millis() as i64;
        let mut plans = vec![
            TopicPlan {
                name: settings.topics.ingress.clone(),
                partitions: self.ingress.partitions,
                retention_ms: ms(&self.ingress.retention),
                min_retention_ms: 0,
                compacted: false,
                broker_stamped: false,
            },
            TopicPlan {
                name: settings.topics.dead_letter.clone(),
                partitions: self.dead_letter.partitions,
                retention_ms: ms(&self.dead_letter.retention),
                min_retention_ms: 0,
                compacted: false,
                broker_stamped: false,
            },
            TopicPlan {
                name: settings.topics.cancel.clone(),
                partitions: self.cancel.as_ref().map_or(3, |c| c.partitions),
                retention_ms: self
                    .cancel
                    .as_ref()
                    .map_or(table.max_delay_ms().saturating_add(86_400_000), |c| {
                        ms(&c.retention)
                    }),
                min_retention_ms: 0,
                compacted: true,
                broker_stamped: false,
            },
            TopicPlan {
                name: settings.topics.clock.clone(),
                partitions: self.clock.as_ref().map_or(1, |c| c.partitions),
                retention_ms: self.clock.as_ref().map_or(3_600_000, |c| ms(&c.retention)),
                min_retention_ms: 0,
                compacted: false,
                broker_stamped: true,
            },
        ];
        let partitions = settings.tier_partitions(&table);
        for ((tier, name), partitions) in table
            .tiers()
            .iter()
            .zip(settings.tier_topics(&table))
            .zip(partitions)
        {
            let horizon = tier.horizon_ms() + tier.lead_ms;
            plans.push(TopicPlan {
                name,
                partitions,
                retention_ms: horizon * i64::from(self.tiers.retention_factor.max(1))
                    + ms(&self.tiers.retention_margin),
                min_retention_ms: horizon,
                compacted: false,
                broker_stamped: true,
            });
        }
        if let Some(bad) = plans.iter().find(|p| p.partitions < 1) {
            return Err(TopicsError::Drift(format!(
                "{}: partitions must be at least 1",
                bad.name
            )));
        }
        Ok(plans)
    }
}

/// What `apply` did or found for one topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// The topic did not exist and was created.
    Created,
    /// The topic exists as planned.
    Ok,
    /// Exists with another partition count: an error.
    WrongPartitions {
        /// The partition count found.
        actual: i32,
    },
    /// Exists with a retention shorter than the tier's horizon: an error.
    RetentionTooShort {
        /// The retention found, ms.
        actual_ms: i64,
    },
}

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The topic as planned.
    pub plan: TopicPlan,
    /// What was done or found.
    pub status: Status,
    /// False when the broker did not describe the topic's configs.
    pub configs_verified: bool,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.plan;
        let what = match &self.status {
            Status::Created => format!("created ({} partitions)", p.partitions),
            Status::Ok => format!("ok ({} partitions)", p.partitions),
            Status::WrongPartitions { actual } => format!(
                "ERROR: has {actual} partitions, the topic spec says {}; partition counts are \
                 never changed in place: set the spec to the topic's count, or move the topic",
                p.partitions
            ),
            Status::RetentionTooShort { actual_ms } => format!(
                "ERROR: retention.ms is {actual_ms}, shorter than the tier horizon {} ms; raise it",
                p.min_retention_ms
            ),
        };
        let configs = if self.configs_verified {
            ""
        } else {
            "; configs not verifiable (the broker describes no topic configs)"
        };
        write!(f, "{:<28} {what}{configs}", p.name)
    }
}

pub(super) fn admin(settings: &Settings) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    kafka::admin_config(settings).create()
}

/// Current partition counts of `names` (None: the topic does not exist).
pub(super) fn partition_counts(
    admin: &AdminClient<DefaultClientContext>,
    names: &[&str],
) -> Result<Vec<Option<i32>>, KafkaError> {
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))?;
    Ok(names
        .iter()
        .map(|name| {
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == *name && t.error().is_none())
                .map(|t| t.partitions().len() as i32)
        })
        .collect())
}

/// Creates missing topics and checks existing ones. Returns one report line
/// per topic; any drift is in the report (see [`has_drift`]).
pub async fn apply(settings: &Settings, spec: &Spec) -> Result<Vec<Report>, TopicsError> {
    let settings = &super::layout::resolve(settings)?;
    let plans = spec.plan(settings)?;
    let admin = admin(settings)?;
    let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    let counts = partition_counts(&admin, &names)?;
    let retentions: Vec<String> = plans.iter().map(|p| p.retention_ms.to_string()).collect();
    let min_isr = settings.wheel.min_insync_replicas.map(|n| n.to_string());
    let mut new_topics = Vec::new();
    for ((plan, count), retention) in plans.iter().zip(&counts).zip(&retentions) {
        if count.is_some() {
            continue;
        }
        let mut topic = NewTopic::new(
            &plan.name,
            plan.partitions,
            TopicReplication::Fixed(settings.wheel.replication_factor),
        )
        .set("retention.ms", retention);
        if let Some(min_isr) = &min_isr {
            topic = topic.set("min.insync.replicas", min_isr);
        }
        if plan.broker_stamped {
            // Tier and clock records are stamped by the broker: retention
            // follows the broker's clock, and the service reads the broker's
            // clock from the stamps (crate::model::clock).
            topic = topic.set("message.timestamp.type", "LogAppendTime");
        }
        for (k, v) in &spec.configs {
            topic = topic.set(k, v);
        }
        if plan.compacted {
            // The latest cancellation per id is what counts.
            topic = topic.set("cleanup.policy", "compact,delete");
        }
        new_topics.push(topic);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut created = Vec::new();
    if !new_topics.is_empty() {
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(name) => created.push(name),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => created.push(name),
                Err((name, code)) => {
                    return Err(TopicsError::Drift(format!("cannot create {name}: {code}")))
                }
            }
        }
    }
    let described = describe_retention(&admin, &names, &options).await;
    let mut reports = Vec::new();
    for ((plan, count), retention) in plans.into_iter().zip(counts).zip(described) {
        let status = match count {
            None => Status::Created,
            Some(actual) if actual != plan.partitions => Status::WrongPartitions { actual },
            Some(_) => match retention {
                Some(actual_ms) if actual_ms >= 0 && actual_ms < plan.min_retention_ms => {
                    Status::RetentionTooShort { actual_ms }
                }
                _ => Status::Ok,
            },
        };
        reports.push(Report {
            plan,
            status,
            configs_verified: retention.is_some(),
        });
    }
    Ok(reports)
}

/// `retention.ms` of each topic, None where the broker described nothing.
async fn describe_retention(
    admin: &AdminClient<DefaultClientContext>,
    names: &[&str],
    options: &AdminOptions,
) -> Vec<Option<i64>> {
    let specifiers: Vec<ResourceSpecifier<'_>> =
        names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    let results = match admin.describe_configs(&specifiers, options).await {
        Ok(results) => results,
        Err(error) => {
            tracing::debug!(%error, "DescribeConfigs failed");
            return vec![None; names.len()];
        }
    };
    results
        .into_iter()
        .map(|r| {
            r.ok()?
                .get("retention.ms")?
                .value
                .as_deref()?
                .parse::<i64>()
                .ok()
        })
        .chain(std::iter::repeat(None))
        .take(names.len())
        .collect()
}

/// True when any report line is an error.
pub fn has_drift(reports: &[Report]) -> bool {
    reports
        .iter()
        .any(|r| !matches!(r.status, Status::Ok | Status::Created))
}

/// The ACLs the service's `principal` needs, as `kafka-acls.sh` commands:
/// read the ingress and the cancel topic; read and write the tier topics (only the service may
/// write them: a forged tier record is dead-lettered, but can still deliver
/// to any allowed target); write the dead-letter topic and the targets;
/// its consumer groups (`<group_id>.*`, prefixed); idempotent writes.
pub fn acl_commands(settings: &Settings, principal: &str) -> Result<Vec<String>, TopicsError> {
    let table = settings.tier_table()?;
    let base = format!(
        "kafka-acls.sh --bootstrap-server {} --add --allow-principal {principal}",
        settings.kafka.bootstrap_servers
    );
    let ops = |list: &[&str]| {
        list.iter()
            .map(|o| format!("--operation {o}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut lines = vec![format!(
        "{base} {} --topic {}",
        ops(&["Read", "Describe"]),
        settings.topics.ingress
    )];
    for tier in settings.tier_topics(&table) {
        lines.push(format!(
            "{base} {} --topic {tier}",
            ops(&["Read", "Write", "Describe"])
        ));
    }
    lines.push(format!(
        "{base} {} --topic {}",
        ops(&["Write", "Describe"]),
        settings.topics.dead_letter
    ));
    lines.push(format!(
        "{base} {} --topic {}",
        ops(&["Read", "Describe"]),
        settings.topics.cancel
    ));
    lines.push(format!(
        "{base} {} --topic {}",
        ops(&["Write", "Describe"]),
        settings.topics.clock
    ));
    lines.push(format!(
        "{base} {} --group {}. --resource-pattern-type prefixed",
        ops(&["Read", "Describe"]),
        settings.kafka.group_id
    ));
    lines.push(format!("{base} {} --cluster", ops(&["IdempotentWrite"])));
    if settings.delivery.exactly_once() {
        // Transactional ids are `<group_id>.<loop>.<instance>`.
        lines.push(format!(
            "{base} {} --transactional-id {}. --resource-pattern-type prefixed",
            ops(&["Write", "Describe"]),
            settings.kafka.group_id
        ));
    }
    let targets = match &settings.topics.allowed_targets {
        Some(pattern) => format!(
            "# targets: Write and Describe on every topic matching topics.allowed_targets ({pattern}), e.g.\n{base} {} --topic <target>",
            ops(&["Write", "Describe"])
        ),
        None => format!(
            "# targets: Write and Describe on the topics records are delivered to, e.g.\n{base} {} --topic <target>",
            ops(&["Write", "Describe"])
        ),
    };
    lines.push(targets);
    let others = format!(
        "kafka-acls.sh --bootstrap-server {} --add",
        settings.kafka.bootstrap_servers
    );
    lines.push(format!(
        "# producers of delayed records: Write on the ingress topic only
{others} --allow-principal User:<producer> {} --topic {}",
        ops(&["Write", "Describe"]),
        settings.topics.ingress
    ));
    lines.push(format!(
        "# cancellers (kafka-delay cancel, reschedule): any writer of {} can cancel any record that has an x-delay-id, for any target; reschedule also reads the tiers
{others} --allow-principal User:<canceller> {} --topic {}",
        settings.topics.cancel,
        ops(&["Write", "Describe"]),
        settings.topics.cancel
    ));
    lines.push(
        "# Grant no other principal Write on the tier topics: they hold the service's own records."
            .to_owned(),
    );
    Ok(lines)
}

/// Start-up check: every topic exists with the planned partition count.
/// The error says which topic and to run `kafka-delay topics apply`.
pub fn verify(settings: &Settings, spec: &Spec) -> Result<(), TopicsError> {
    let plans = spec.plan(settings)?;
    debug_assert!(settings.topics.resolved_tiers.is_some(), "resolve first");
    let admin = admin(settings)?;
    let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    let counts = partition_counts(&admin, &names)?;
    for (plan, count) in plans.iter().zip(counts) {
        match count {
            None => {
                return Err(TopicsError::Drift(format!(
                "topic {} does not exist: run `kafka-delay topics apply` with this configuration",
                plan.name
            )))
            }
            Some(actual)
                if crate::kafka::layout::is_tier(settings, &plan.name)
                    && actual != plan.partitions =>
            {
                return Err(TopicsError::Drift(format!(
                    "tier topic {} has {actual} partitions but the tier table needs {}: \
                     the [wheel] settings changed since the topics were created",
                    plan.name, plan.partitions
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acls_name_least_privilege_for_every_principal() {
        let mut settings = Settings::default();
        let lines = acl_commands(&settings, "User:svc").unwrap().join("\n");
        assert!(lines
            .contains("User:<producer> --operation Write --operation Describe --topic delay.in"));
        assert!(lines.contains(
            "User:<canceller> --operation Write --operation Describe --topic delay.cancel"
        ));
        assert!(
            lines.contains("User:svc --operation Write --operation Describe --topic delay.clock")
        );
        assert!(lines.contains("any writer of delay.cancel can cancel any record"));
        assert!(!lines.contains("--transactional-id"));
        settings.delivery.mode = crate::config::DeliveryMode::ExactlyOnce;
        let lines = acl_commands(&settings, "User:svc").unwrap().join("\n");
        assert!(
            lines.contains("User:svc --operation Write --operation Describe --transactional-id kafka-delay. --resource-pattern-type prefixed"),
            "{lines}"
        );
    }

    #[test]
    fn default_plan_derives_tier_partitions_and_retention() {
        let spec = Spec::load(None).unwrap();
        let plans = spec.plan(&Settings::default()).unwrap();
        let parts: Vec<i32> = plans.iter().map(|p| p.partitions).collect();
        assert_eq!(parts, vec![6, 3, 3, 1, 64, 64, 28, 32]);
        assert!(plans[2].compacted && plans[2].name == "delay.cancel");
        assert!(plans[3].broker_stamped && plans[3].name == "delay.clock");
        assert!(!plans[..3].iter().any(|p| p.broker_stamped));
        for p in &plans[4..] {
            assert!(p.retention_ms > p.min_retention_ms, "{p:?}");
            assert!(p.broker_stamped, "{p:?}");
        }
        assert_eq!(plans[4].name, "delay.1s.s64");
    }

    #[test]
    fn report_lines_say_what_is_wrong() {
        let plan = TopicPlan {
            name: "delay.1s".into(),
            partitions: 64,
            retention_ms: 1,
            min_retention_ms: 0,
            compacted: false,
            broker_stamped: true,
        };
        let line = Report {
            plan,
            status: Status::WrongPartitions { actual: 12 },
            configs_verified: false,
        }
        .to_string();
        assert!(line.contains("has 12 partitions"), "{line}");
        assert!(line.contains("configs not verifiable"), "{line}");
    }
}
