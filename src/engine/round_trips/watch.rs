//! The watcher: end offsets and committed offsets of the loop's partitions,
//! fresh from the broker every `service.watch_interval`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::engine::partitions::WatchReport;
use crate::model::clock::now_ms;

use super::{lock, Shared, QUERY_TIMEOUT};

/// Every `interval`: end offsets (ListOffsets, latest) and committed offsets
/// of the assigned partitions, as a report the loop takes; a metadata
/// request stands for "the broker answers" when nothing is assigned.
pub(super) fn watch_loop<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    shared: &Shared,
    interval: Duration,
) {
    let mut next = Instant::now() + interval;
    while !shared.stop.load(Ordering::Relaxed) {
        let wait = next.saturating_duration_since(Instant::now());
        std::thread::sleep(wait.min(Duration::from_millis(100)));
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + interval;
        let partitions = lock(&shared.assigned).clone();
        if partitions.is_empty() {
            // Nothing to watch: still check that the cluster answers.
            if consumer.fetch_metadata(Some(topic), QUERY_TIMEOUT).is_ok() {
                shared.broker_ok_ms.store(now_ms(), Ordering::Relaxed);
            }
            continue;
        }
        let issued_at_ms = now_ms();
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            let _ = tpl.add_partition_offset(topic, p, Offset::End);
        }
        let ends = match consumer.offsets_for_times(tpl.clone(), QUERY_TIMEOUT) {
            Ok(result) => offsets_of(&result),
            Err(error) => {
                tracing::debug!(%error, topic, "end offsets not available");
                continue;
            }
        };
        let committed = consumer
            .committed_offsets(tpl, QUERY_TIMEOUT)
            .map(|r| offsets_of(&r))
            .unwrap_or_default();
        shared.broker_ok_ms.store(now_ms(), Ordering::Relaxed);
        *lock(&shared.report) = Some(WatchReport {
            issued_at_ms,
            ends,
            committed,
        });
    }
}

/// (partition, offset) of every element with a real offset and no error.
fn offsets_of(tpl: &TopicPartitionList) -> Vec<(i32, i64)> {
    tpl.elements()
        .iter()
        .filter(|e| e.error().is_ok())
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}
