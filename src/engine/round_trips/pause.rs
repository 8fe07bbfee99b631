//! The pauser and the waker: pause and resume requests applied in order off
//! the loop's thread, and the broker threads of resumed partitions woken.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::engine::partitions::PauseRequest;

use super::{Shared, QUERY_TIMEOUT};

/// Applies the loop's pause and resume requests in order (librdkafka's
/// pause call waits for every partition's handler thread); resumed
/// partitions go to the waker.
pub(super) fn pause_loop<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    shared: &Shared,
    requests: &Receiver<PauseRequest>,
    resumed: &Sender<Vec<i32>>,
) {
    loop {
        let first = match requests.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) if shared.stop.load(Ordering::Relaxed) => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Consecutive requests of one kind become one call, in order.
        let mut batch = vec![first];
        batch.extend(requests.try_iter());
        let mut runs: Vec<(bool, Vec<i32>)> = Vec::new();
        for request in batch {
            let (pause, partitions) = match request {
                PauseRequest::Pause(p) => (true, p),
                PauseRequest::Resume(p) => (false, p),
            };
            match runs.last_mut() {
                Some((kind, list)) if *kind == pause => list.extend(partitions),
                _ => runs.push((pause, partitions)),
            }
        }
        for (pause, partitions) in runs {
            let mut tpl = TopicPartitionList::new();
            for &p in &partitions {
                tpl.add_partition(topic, p);
            }
            let result = if pause {
                consumer.pause(&tpl)
            } else {
                let result = consumer.resume(&tpl);
                let _ = resumed.send(partitions);
                result
            };
            if let Err(error) = result {
                tracing::warn!(%error, topic, pause, "pause/resume failed");
            }
        }
    }
}

/// Makes the broker threads of just-resumed partitions fetch now, on a
/// thread of its own so that the pauser never waits for the answer
/// (resumes that arrive meanwhile are merged into the next query).
///
/// librdkafka (2.12, read in its source) applies a resume on its main
/// thread (`rd_kafka_toppar_pause_resume`, an op on `rk_ops`) and does not
/// wake the broker thread that fetches the partition; a broker thread with
/// nothing fetchable sleeps up to `rd_kafka_max_block_ms` (1 s) in
/// `rd_kafka_broker_consumer_serve`. A loop whose partitions are all
/// paused — common with several instances, each owning few partitions of a
/// tier — then fetched a released slot up to 1 s late (measured: spread
/// shape, 2 instances, p99 lateness 660 ms; 1 instance 27 ms). An end-offset
/// query (ListOffsets) for the resumed partitions is an op on each leader's
/// broker thread: it wakes it, and its serve loop then sees the partitions
/// fetchable. The answer itself is not needed.
pub(super) fn wake_loop<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    shared: &Shared,
    resumed: &Receiver<Vec<i32>>,
) {
    loop {
        let first = match resumed.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) if shared.stop.load(Ordering::Relaxed) => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut partitions: Vec<i32> = first;
        partitions.extend(resumed.try_iter().flatten());
        partitions.sort_unstable();
        partitions.dedup();
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            let _ = tpl.add_partition_offset(topic, p, Offset::End);
        }
        if let Err(error) = consumer.offsets_for_times(tpl, QUERY_TIMEOUT) {
            tracing::debug!(%error, topic, "end-offset query after a resume failed");
        }
    }
}
