//! The tier topics across wheel layouts: the tier topics of earlier layouts
//! still in the cluster (which the service drains, `engine/retired.rs`),
//! `topics plan` (what `topics apply` would do, changing nothing) and
//! `topics prune` (deleting drained tier topics of earlier layouts). The
//! docs/configuration.md's "Changing the wheel" says what an operator may change.

use std::time::Duration;

use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::topics::{admin, partition_counts, Spec, TopicsError};
use crate::config::Settings;
use crate::kafka;

/// Where a tier lives, given the topics in the cluster (name → partition
/// count): `tier_prefix` + tick label (`delay.1s`) unless that topic exists
/// with another partition count than the tier needs — then
/// `delay.1s.p<partitions>`, a topic of its own, and the old one is a
/// retired tier, drained into the new. Partition counts are never changed
/// in place (Kafka cannot shrink a topic, and growing one would re-slot the
/// records it holds); a new topic per count keeps instances of the old and
/// the new count apart during a rolling change.
///
/// In the spread slot order (the default) a tier's name always carries its
/// partition count, `delay.1s.s64` ([`Settings::own_tier_topics`]): the
/// rules above are for the sequential order's plain names.
pub fn resolve_names(
    settings: &Settings,
    existing: &std::collections::HashMap<String, i32>,
) -> Result<Vec<String>, TopicsError> {
    let table = settings.tier_table()?;
    if settings.wheel.slot_order == crate::config::SlotOrder::Spread {
        return Ok(settings.own_tier_topics(&table));
    }
    let plain = settings.plain_tier_topics(&table);
    Ok(plain
        .into_iter()
        .zip(settings.tier_partitions(&table))
        .map(|(base, partitions)| {
            let own = format!("{base}.p{partitions}");
            if existing.contains_key(&own) {
                own
            } else if existing.get(&base).is_none_or(|&n| n == partitions) {
                base
            } else {
                own
            }
        })
        .collect())
}

/// `settings` with the tier topics' names resolved against the cluster
/// ([`resolve_names`]). Errors: the cluster's metadata cannot be read.
pub fn resolve(settings: &Settings) -> Result<Settings, TopicsError> {
    let metadata = admin(settings)?
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))?;
    let existing = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect();
    let mut resolved = settings.clone();
    resolved.topics.resolved_tiers = Some(resolve_names(settings, &existing)?);
    Ok(resolved)
}

/// A tier topic of an earlier wheel layout found in the cluster
/// ([`Settings::retired_tier_label`]: the service's tier prefix and a tick
/// label, so the name family is the service's). The service reads it in
/// the consumer group its tier had (`<group_id>.<label>`), so that it goes
/// on from the offsets committed then — also while instances of the old
/// layout still write to it during a rolling change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RetiredTier {
    /// The topic.
    pub topic: String,
    /// Its name after its tier prefix (`50ms`, `1s.p70`, …) under the
    /// current `tier_prefix`; its whole name under a previous one. Names
    /// its loop and metrics.
    pub label: String,
    /// The consumer group it is drained in: its tier's own group
    /// (`<group_id>.<suffix>`) under the current prefix; under a previous
    /// prefix `<group_id>.retired.<topic>`, seeded from its tier's group
    /// (which a current tier of the same tick now uses).
    pub group: String,
    /// The group whose committed offsets [`Self::group`] starts from
    /// (previous prefixes only).
    pub seed_from: Option<String>,
    /// Records past the committed offsets when it was found.
    pub records: i64,
}

/// The tier topics of earlier layouts, by name, with the records each holds
/// past the committed offset of each partition, or past its start where
/// the group committed none (a partition whose head was held until its
/// release never committed anything).
pub fn retired_tiers(settings: &Settings) -> Result<Vec<RetiredTier>, TopicsError> {
    let resolved;
    let settings = match settings.topics.resolved_tiers {
        Some(_) => settings,
        None => {
            resolved = resolve(settings)?;
            &resolved
        }
    };
    let table = settings.tier_table()?;
    let current = settings.tier_topics(&table);
    let metadata = admin(settings)?
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))?;
    let mut retired = Vec::new();
    for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
        let (label, group, seed_from) =
            if let Some(suffix) = settings.retired_tier_label(t.name(), &current) {
                (suffix.clone(), settings.group_of(&suffix), None)
            } else if let Some(suffix) = settings.previous_prefix_tier(t.name(), &current) {
                let own = settings.group_of(&format!("retired.{}", t.name()));
                (t.name().to_owned(), own, Some(settings.group_of(&suffix)))
            } else {
                continue;
            };
        let mut tpl = TopicPartitionList::new();
        for p in t.partitions() {
            tpl.add_partition(t.name(), p.id());
        }
        let committed = |group: &str| -> Result<(BaseConsumer, TopicPartitionList), TopicsError> {
            let consumer: BaseConsumer = kafka::consumer_config(settings, group, false).create()?;
            let offsets = consumer.committed_offsets(tpl.clone(), Duration::from_secs(10))?;
            Ok((consumer, offsets))
        };
        let (consumer, own) = committed(&group)?;
        let seed = match &seed_from {
            Some(from) => Some(committed(from)?.1),
            None => None,
        };
        let mut records = 0;
        for e in own.elements() {
            let (low, high) =
                consumer.fetch_watermarks(t.name(), e.partition(), Duration::from_secs(10))?;
            // Its own offset, else (not drained yet) the one it will be
            // seeded from, else the start.
            let seeded = seed
                .as_ref()
                .and_then(|s| s.find_partition(t.name(), e.partition()))
                .map(|s| s.offset());
            let from = match (e.offset(), seeded) {
                (Offset::Offset(o), _) | (_, Some(Offset::Offset(o))) => o.max(low),
                _ => low,
            };
            records += (high - from).max(0);
        }
        retired.push(RetiredTier {
            topic: t.name().to_owned(),
            label,
            group,
            seed_from,
            records,
        });
    }
    retired.sort_by(|a, b| a.topic.cmp(&b.topic));
    Ok(retired)
}

/// One line of `topics plan`: what `topics apply` would do with a topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum PlanLine {
    /// Missing: `apply` creates it with `partitions`.
    Create {
        /// Topic name.
        topic: String,
        /// Partitions it would get.
        partitions: i32,
    },
    /// Exists with the planned partition count.
    Keep {
        /// Topic name.
        topic: String,
        /// Its partition count.
        partitions: i32,
    },
    /// Exists with another partition count: `apply` reports the drift and
    /// changes nothing.
    Drift {
        /// Topic name.
        topic: String,
        /// Partitions found.
        actual: i32,
        /// Partitions the configuration needs.
        planned: i32,
    },
    /// A tier topic of an earlier layout: drained by the service; `topics
    /// prune` deletes it once it holds no record.
    Retire(RetiredTier),
}

impl std::fmt::Display for PlanLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanLine::Create { topic, partitions } => {
                write!(f, "{topic:<28} create ({partitions} partitions)")
            }
            PlanLine::Keep { topic, partitions } => {
                write!(f, "{topic:<28} keep ({partitions} partitions)")
            }
            PlanLine::Drift {
                topic,
                actual,
                planned,
            } => write!(
                f,
                "{topic:<28} DRIFT: {actual} partitions, the configuration needs {planned}"
            ),
            PlanLine::Retire(r) => write!(
                f,
                "{:<28} retire: a tier of an earlier layout holding {} records past its committed offsets (group {})",
                r.topic, r.records, r.group
            ),
        }
    }
}

/// What `topics apply` would do, without doing it: every planned topic
/// (create, keep, or drift) and every tier topic of an earlier layout
/// (retire, with the records it still holds). Nothing is changed.
pub fn plan(settings: &Settings, spec: &Spec) -> Result<Vec<PlanLine>, TopicsError> {
    let settings = &resolve(settings)?;
    let plans = spec.plan(settings)?;
    let admin = admin(settings)?;
    let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    let counts = partition_counts(&admin, &names)?;
    let mut lines: Vec<PlanLine> = plans
        .iter()
        .zip(counts)
        .map(|(plan, count)| match count {
            None => PlanLine::Create {
                topic: plan.name.clone(),
                partitions: plan.partitions,
            },
            Some(actual) if actual == plan.partitions || !is_tier(settings, &plan.name) => {
                PlanLine::Keep {
                    topic: plan.name.clone(),
                    partitions: actual,
                }
            }
            Some(actual) => PlanLine::Drift {
                topic: plan.name.clone(),
                actual,
                planned: plan.partitions,
            },
        })
        .collect();
    lines.extend(retired_tiers(settings)?.into_iter().map(PlanLine::Retire));
    Ok(lines)
}

/// True for a current tier topic (whose partition count is derived, so a
/// different count is drift).
pub(crate) fn is_tier(settings: &Settings, name: &str) -> bool {
    !settings
        .fixed_topics()
        .iter()
        .any(|(_, fixed)| fixed.as_str() == name)
}

/// What `topics prune` did with one tier topic of an earlier layout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", content = "topic", rename_all = "snake_case")]
pub enum Pruned {
    /// Held no record past its committed offsets: deleted.
    Deleted(String),
    /// Still holds records: kept (the service drains it).
    Kept(RetiredTier),
}

/// Deletes the tier topics of earlier layouts that hold no record past
/// their committed offsets; keeps, and names, those that still do. Run it
/// once no instance of the old layout runs (one could still write them).
pub async fn prune(settings: &Settings) -> Result<Vec<Pruned>, TopicsError> {
    let mut outcome = Vec::new();
    let admin = admin(settings)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for retired in retired_tiers(settings)? {
        if retired.records > 0 {
            outcome.push(Pruned::Kept(retired));
            continue;
        }
        for result in admin.delete_topics(&[&retired.topic], &options).await? {
            if let Err((name, code)) = result {
                return Err(TopicsError::Drift(format!("cannot delete {name}: {code}")));
            }
        }
        outcome.push(Pruned::Deleted(retired.topic));
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_tier_keeps_its_name_until_its_partition_count_changes() {
        let mut settings = Settings::default();
        settings.wheel.slot_order = crate::config::SlotOrder::Sequential;
        // Default wheel: 1s/1m/1h/1d with 64/64/28/32 partitions.
        let existing = |pairs: &[(&str, i32)]| -> HashMap<String, i32> {
            pairs.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
        };
        let names = resolve_names(&settings, &existing(&[])).unwrap();
        assert_eq!(names, ["delay.1s", "delay.1m", "delay.1h", "delay.1d"]);
        let same = existing(&[("delay.1s", 64), ("delay.1d", 32)]);
        assert_eq!(resolve_names(&settings, &same).unwrap(), names);
        // top_slots 32 -> 40: the top tier moves to a topic of its own.
        let mut wider = settings.clone();
        wider.wheel.top_slots = 40;
        let names = resolve_names(&wider, &same).unwrap();
        assert_eq!(names[3], "delay.1d.p40");
        assert_eq!(names[..3], ["delay.1s", "delay.1m", "delay.1h"]);
        // Once created it stays, also after the old one is pruned; and a
        // change back finds the plain name free again.
        let moved = existing(&[("delay.1d.p40", 40)]);
        assert_eq!(resolve_names(&wider, &moved).unwrap()[3], "delay.1d.p40");
        assert_eq!(resolve_names(&settings, &moved).unwrap()[3], "delay.1d");
    }

    #[test]
    fn spread_tiers_are_named_with_their_partition_count() {
        let settings = Settings::default();
        let old = [("delay.1s", 64), ("delay.1d", 32)]
            .iter()
            .map(|(n, c)| ((*n).to_owned(), *c))
            .collect();
        let names = resolve_names(&settings, &old).unwrap();
        assert_eq!(
            names,
            [
                "delay.1s.s64",
                "delay.1m.s64",
                "delay.1h.s28",
                "delay.1d.s32"
            ]
        );
        // The sequential order's topics are tiers of an earlier layout.
        let label = |t: &str| settings.retired_tier_label(t, &names);
        assert_eq!(label("delay.1s").as_deref(), Some("1s"));
        assert_eq!(label("delay.1d.p40").as_deref(), Some("1d.p40"));
        assert_eq!(label("delay.1d.s40").as_deref(), Some("1d.s40"));
        assert_eq!(label("delay.1s.s64"), None);
        assert_eq!(label("delay.1s.x64"), None);
    }

    #[test]
    fn plan_and_prune_lines_serialize_for_scripts() {
        let tier = RetiredTier {
            topic: "delay.1s".into(),
            label: "1s".into(),
            group: "kafka-delay.1s".into(),
            seed_from: None,
            records: 7,
        };
        fn json(value: &impl serde::Serialize) -> String {
            serde_json::to_string(value).expect("serializable")
        }
        assert_eq!(
            json(&PlanLine::Create {
                topic: "delay.1s.s64".into(),
                partitions: 64
            }),
            r#"{"action":"create","topic":"delay.1s.s64","partitions":64}"#
        );
        assert!(json(&PlanLine::Retire(tier.clone()))
            .starts_with(r#"{"action":"retire","topic":"delay.1s","label":"1s""#));
        assert_eq!(
            json(&Pruned::Deleted("delay.1m".into())),
            r#"{"outcome":"deleted","topic":"delay.1m"}"#
        );
        assert!(json(&Pruned::Kept(tier)).contains(r#""records":7"#));
    }
}
