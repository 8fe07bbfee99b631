//! The committer: commits offsets off the loop's thread, merging queued
//! requests (later offsets win), and measures each commit.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::model::clock::now_ms;
use crate::ops::metrics::Metrics;

use super::{lock, Shared};

/// What the loop asks of the committer.
pub(super) enum Request {
    Commit {
        offsets: Vec<(i32, i64)>,
        done: Option<mpsc::SyncSender<bool>>,
    },
}

/// Sends commits to a loop's committer thread.
#[derive(Clone)]
pub struct Committer {
    pub(super) requests: Sender<Request>,
    pub(super) shared: Arc<Shared>,
}

impl Committer {
    /// Commits `offsets` (partition, next offset to read) without waiting.
    pub fn commit(&self, offsets: Vec<(i32, i64)>) {
        let _ = self.requests.send(Request::Commit {
            offsets,
            done: None,
        });
    }

    /// Commits `offsets` and waits up to `timeout` for the answer; true
    /// when committed.
    pub fn commit_and_wait(&self, offsets: Vec<(i32, i64)>, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::sync_channel(1);
        let request = Request::Commit {
            offsets,
            done: Some(tx),
        };
        if self.requests.send(request).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).unwrap_or(false)
    }

    /// The loop's assigned partitions changed: commits and watches cover
    /// these only.
    pub fn set_assigned(&self, partitions: Vec<i32>) {
        *lock(&self.shared.assigned) = partitions;
    }
}

/// Serves commit requests until the loop stops: queued requests are merged
/// (later offsets win), partitions no longer assigned are left out, each
/// commit is timed, a failed one is retried with the next.
pub(super) fn commit_loop<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    shared: &Shared,
    metrics: &Metrics,
    requests: &Receiver<Request>,
) {
    // Offsets whose last commit failed, retried with the next request.
    let mut retry: BTreeMap<i32, i64> = BTreeMap::new();
    loop {
        let first = match requests.recv_timeout(Duration::from_secs(1)) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) if shared.stop.load(Ordering::Relaxed) => return,
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut merged = std::mem::take(&mut retry);
        let mut waiters = Vec::new();
        for Request::Commit { offsets, done } in first.into_iter().chain(requests.try_iter()) {
            merged.extend(offsets);
            waiters.extend(done);
        }
        {
            let assigned = lock(&shared.assigned);
            merged.retain(|p, _| assigned.contains(p));
        }
        if merged.is_empty() {
            for w in waiters {
                let _ = w.send(true);
            }
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        for (&p, &offset) in &merged {
            let _ = tpl.add_partition_offset(topic, p, Offset::Offset(offset));
        }
        let begun = Instant::now();
        let ok = match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                metrics.loops.commit_latency(begun.elapsed().as_secs_f64());
                shared.broker_ok_ms.store(now_ms(), Ordering::Relaxed);
                true
            }
            Err(error) => {
                metrics.loops.commit_error();
                tracing::warn!(%error, topic, "offset commit failed; retrying with the next one");
                retry = merged;
                false
            }
        };
        for w in waiters {
            let _ = w.send(ok);
        }
    }
}
