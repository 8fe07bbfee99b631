//! Tier topics' names and consumer groups: the plain names (`tier_prefix`
//! and a tick label), the names resolved against the cluster, and the
//! names of tiers of earlier layouts (docs/configuration.md, "Changing the wheel").

use super::{parse_tick_label, tick_label, Settings};
use crate::wheel::TierTable;

impl Settings {
    /// The consumer group of one loop: `<group_id>.ingress` for the ingress,
    /// `<group_id>.<tier topic suffix>` (`kafka-delay.1s`, or
    /// `kafka-delay.1s.p70` for a tier re-partitioned in a new topic) for a
    /// tier, where the suffix is the topic's name after `tier_prefix`. One group per
    /// topic, so that each tier's partitions are shared evenly by the
    /// instances (a group over several topics balances only the total).
    pub fn group_of(&self, label: &str) -> String {
        format!("{}.{label}", self.kafka.group_id)
    }

    /// The suffix of `topic` when it is a tier topic of an earlier wheel
    /// layout: `topics.tier_prefix` followed by a tick label, optionally
    /// `.p<partitions>` (a re-partitioned tier), and none of the `current`
    /// tier topics. Such a topic may still hold records; the service drains
    /// it (docs/architecture.md, "Changing the wheel").
    pub fn retired_tier_label(&self, topic: &str, current: &[String]) -> Option<String> {
        let suffix = topic.strip_prefix(&self.topics.tier_prefix)?;
        (is_tier_suffix(suffix) && !current.iter().any(|c| c == topic)).then(|| suffix.to_owned())
    }

    /// The suffix of `topic` when it is a tier topic under one of
    /// `topics.previous_tier_prefixes` (not a current tier).
    pub fn previous_prefix_tier(&self, topic: &str, current: &[String]) -> Option<String> {
        if current.iter().any(|c| c == topic) {
            return None;
        }
        self.topics
            .previous_tier_prefixes
            .iter()
            .filter_map(|p| topic.strip_prefix(p.as_str()))
            .find(|suffix| is_tier_suffix(suffix))
            .map(str::to_owned)
    }

    /// The consumer-group suffix of each current tier: its topic's name
    /// after `tier_prefix` ([`Self::group_of`]).
    pub fn tier_group_labels(&self, table: &TierTable) -> Vec<String> {
        self.tier_topics(table)
            .iter()
            .map(|t| {
                t.strip_prefix(&self.topics.tier_prefix)
                    .unwrap_or(t)
                    .to_owned()
            })
            .collect()
    }

    /// Each tier's partition count: its slots × `partitions_per_slot`.
    pub fn tier_partitions(&self, table: &TierTable) -> Vec<i32> {
        let k = i64::from(self.wheel.partitions_per_slot);
        table.tiers().iter().map(|t| (t.slots * k) as i32).collect()
    }

    /// Tier topic names, lowest tier first: the names resolved against the
    /// cluster when set ([`super::TopicSettings::resolved_tiers`]), else
    /// [`Self::own_tier_topics`].
    pub fn tier_topics(&self, table: &TierTable) -> Vec<String> {
        match &self.topics.resolved_tiers {
            Some(names) if names.len() == table.tiers().len() => names.clone(),
            _ => self.own_tier_topics(table),
        }
    }

    /// The names the slot order gives the tiers: `<prefix><tick>.s<N>`
    /// (`N` partitions) in the spread order, the plain names in the
    /// sequential order ([`crate::wheel::SlotOrder`]). The name carries the
    /// layout: a topic's records are read with the order its name says.
    pub fn own_tier_topics(&self, table: &TierTable) -> Vec<String> {
        let plain = self.plain_tier_topics(table);
        match self.wheel.slot_order {
            super::SlotOrder::Sequential => plain,
            super::SlotOrder::Spread => plain
                .into_iter()
                .zip(self.tier_partitions(table))
                .map(|(name, n)| format!("{name}.s{n}"))
                .collect(),
        }
    }

    /// `tier_prefix` + tick label for each tier: a tier's name in the
    /// sequential order unless its partition count changed
    /// ([`crate::kafka::layout::resolve`]).
    pub fn plain_tier_topics(&self, table: &TierTable) -> Vec<String> {
        table
            .tiers()
            .iter()
            .map(|t| format!("{}{}", self.topics.tier_prefix, tick_label(t.tick_ms)))
            .collect()
    }
}

/// A tier topic's name after `tier_prefix`: a tick label, optionally
/// followed by `.p<partitions>` (sequential order, re-partitioned) or
/// `.s<partitions>` (spread order).
fn is_tier_suffix(suffix: &str) -> bool {
    let (label, partitions) = match suffix.rsplit_once(".p").or(suffix.rsplit_once(".s")) {
        Some((label, n)) => (label, Some(n)),
        None => (suffix, None),
    };
    parse_tick_label(label).is_some()
        && partitions.is_none_or(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
