//! Broker round trips of one consumer loop, done off its thread so that the
//! loop never waits on the network (docs/architecture.md, "Threads"):
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

mod commit;
mod pause;
mod watch;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, ConsumerContext};

use crate::engine::partitions::{PauseRequest, WatchReport};
use crate::ops::metrics::Metrics;

/// Timeout of one offset query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

pub use commit::Committer;
use commit::{commit_loop, Request};
use pause::{pause_loop, wake_loop};
use watch::watch_loop;

/// State shared between a loop and its round-trip threads.
pub(super) struct Shared {
    /// Partitions assigned to the loop (set by the loop on every rebalance).
    assigned: Mutex<Vec<i32>>,
    report: Mutex<Option<WatchReport>>,
    stop: AtomicBool,
    /// Epoch ms of the last successful broker round trip.
    broker_ok_ms: AtomicI64,
}

/// The broker round trips of one consumer loop, each on a thread of its
/// own: the committer, the pauser, the waker and the watcher.
pub struct RoundTrips {
    requests: Sender<Request>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl RoundTrips {
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
