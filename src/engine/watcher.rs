//! Broker round trips of one consumer loop, done off its thread so that the
//! loop never waits on the network (DESIGN §3):
//!
//! * the **committer** commits offsets (merging queued requests, later
//!   offsets win) and measures each commit; a failed commit is retried with
//!   the next one, for partitions still assigned;
//! * the **watcher** fetches, every `service.watch_interval`, the end
//!   offsets (ListOffsets, latest) and committed offsets of the loop's
//!   partitions: fresh evidence for "drained", for waking a sleeping
//!   partition that received a record, for the stall watchdog and for the
//!   pending gauges — never librdkafka's cached high watermark.
//!
//! * the **pauser** applies the loop's pause and resume requests, in order
//!   (librdkafka's pause call waits for every partition's handler thread),
//!   and the **waker** then wakes the resumed partitions' broker threads
//!   (see `wake_loop`).
//!
//! All use the loop's consumer (librdkafka's commit, offset queries and
//! pause calls are thread-safe and wait on their own reply queues).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::engine::partitions::{PauseRequest, WatchReport};
use crate::model::clock::now_ms;
use crate::ops::metrics::Metrics;

/// Timeout of one offset query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

enum Request {
    Commit {
        offsets: Vec<(i32, i64)>,
        done: Option<mpsc::SyncSender<bool>>,
    },
}

/// State shared between a loop and its two threads.
struct Shared {
    /// Partitions assigned to the loop (set by the loop on every rebalance).
    assigned: Mutex<Vec<i32>>,
    report: Mutex<Option<WatchReport>>,
    stop: AtomicBool,
    /// Epoch ms of the last successful broker round trip.
    broker_ok_ms: AtomicI64,
}

/// The committer and watcher threads of one consumer loop.
pub struct Side {
    requests: Sender<Request>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Side {
    /// Starts the threads for `consumer`'s `topic`, querying every
    /// `interval` and applying `pauses`.
    pub fn start<C: ConsumerContext + 'static>(
        consumer: Arc<BaseConsumer<C>>,
        topic: &str,
        metrics: Arc<Metrics>,
        interval: Duration,
        pauses: Receiver<PauseRequest>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            assigned: Mutex::new(Vec::new()),
            report: Mutex::new(None),
            stop: AtomicBool::new(false),
            broker_ok_ms: AtomicI64::new(0),
        });
        let (requests, receiver) = mpsc::channel();
        let committer = {
            let (c, t, s, m) = (consumer.clone(), topic.to_owned(), shared.clone(), metrics);
            std::thread::Builder::new()
                .name(format!("kd-commit-{topic}"))
                .spawn(move || commit_loop(&c, &t, &s, &m, &receiver))?
        };
        let (resumed, resumed_receiver) = mpsc::channel();
        let pauser = {
            let (c, t, s) = (consumer.clone(), topic.to_owned(), shared.clone());
            std::thread::Builder::new()
                .name(format!("kd-pause-{topic}"))
                .spawn(move || pause_loop(&c, &t, &s, &pauses, &resumed))?
        };
        let waker = {
            let (c, t, s) = (consumer.clone(), topic.to_owned(), shared.clone());
            std::thread::Builder::new()
                .name(format!("kd-wake-{topic}"))
                .spawn(move || wake_loop(&c, &t, &s, &resumed_receiver))?
        };
        let watcher = {
            let (t, s) = (topic.to_owned(), shared.clone());
            std::thread::Builder::new()
                .name(format!("kd-watch-{topic}"))
                .spawn(move || watch_loop(&consumer, &t, &s, interval))?
        };
        Ok(Self {
            requests,
            shared,
            threads: vec![committer, pauser, waker, watcher],
        })
    }

    /// A handle for commits (the rebalance callback holds one).
    pub fn committer(&self) -> Committer {
        Committer {
            requests: self.requests.clone(),
            shared: self.shared.clone(),
        }
    }

    /// The newest report, if one arrived since the last call.
    pub fn take_report(&self) -> Option<WatchReport> {
        lock(&self.shared.report).take()
    }

    /// Epoch ms of the last successful broker round trip (0: none yet).
    pub fn broker_ok_ms(&self) -> i64 {
        self.shared.broker_ok_ms.load(Ordering::Relaxed)
    }

    /// Stops both threads (after pending commits) and waits for them, so
    /// that they release the consumer.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        drop(self.requests);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Sends commits to a loop's committer thread.
#[derive(Clone)]
pub struct Committer {
    requests: Sender<Request>,
    shared: Arc<Shared>,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn commit_loop<C: ConsumerContext>(
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
                metrics.commit_latency(begun.elapsed().as_secs_f64());
                shared.broker_ok_ms.store(now_ms(), Ordering::Relaxed);
                true
            }
            Err(error) => {
                metrics.commit_error();
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

fn watch_loop<C: ConsumerContext>(
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

fn pause_loop<C: ConsumerContext>(
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
fn wake_loop<C: ConsumerContext>(
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
