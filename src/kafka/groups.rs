//! Consumer-group offsets across group layouts. 0.1 read every topic in
//! one consumer group, `kafka.group_id`; since then each topic has its own,
//! `<group_id>.<label>` ([`crate::config::Settings::group_of`]). A new
//! group starts where the old one committed, not from the earliest offset:
//! an upgrade redelivers nothing.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;

/// How long each offset look-up may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Commits, in group `to`, the offsets group `from` committed on `topic`,
/// for the partitions where `to` has committed none. Returns how many
/// partitions were seeded. Run before `to` has members: a broker takes
/// commits from outside an empty group only.
///
/// Errors: the look-ups or the commit failed.
pub fn seed_offsets(
    settings: &Settings,
    topic: &str,
    from: &str,
    to: &str,
) -> Result<usize, KafkaError> {
    let consumer = |group: &str| -> Result<BaseConsumer, KafkaError> {
        super::consumer_config(settings, group, false).create()
    };
    let (old, new) = (consumer(from)?, consumer(to)?);
    let metadata = new.fetch_metadata(Some(topic), TIMEOUT)?;
    let mut all = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            all.add_partition(topic, p.id());
        }
    }
    let committed_new = new.committed_offsets(all.clone(), TIMEOUT)?;
    let committed_old = old.committed_offsets(all, TIMEOUT)?;
    let mut seed = TopicPartitionList::new();
    for e in committed_old.elements() {
        let Offset::Offset(offset) = e.offset() else {
            continue;
        };
        let has_own = committed_new
            .find_partition(topic, e.partition())
            .is_some_and(|n| matches!(n.offset(), Offset::Offset(_)));
        if !has_own {
            seed.add_partition_offset(topic, e.partition(), Offset::Offset(offset))?;
        }
    }
    if seed.count() > 0 {
        new.commit(&seed, CommitMode::Sync)?;
    }
    Ok(seed.count())
}
