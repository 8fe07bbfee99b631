//! Does a target topic exist? Answered from a bounded cache; misses are
//! looked up by a resolver thread, never on the consumer loop's thread.
//!
//! The ingress loop parks a record whose target is not known yet and goes on
//! with the next; when the answer arrives the parked records are handled in
//! the order they were read. The resolver batches: one metadata request for
//! every name asked since its last round (all topics when several are
//! asked), so thousands of distinct missing targets cost a few requests, not
//! one blocking round trip each.
//!
//! Cache: at most [`MAX_ENTRIES`] names; "exists" is trusted for
//! [`EXISTS_TTL_MS`] (and dropped at once when a delivery to the topic
//! fails), "missing" for [`MISSING_TTL_MS`]. A name whose look-up keeps
//! failing (no metadata from the cluster) is assumed to exist after
//! [`MAX_LOOKUP_FAILURES`] tries: the produce then decides, and a missing
//! topic ends in the dead-letter topic either way.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka::producer::{Producer, ProducerContext};

use crate::kafka::native::PolledProducer;

/// Most names cached.
pub const MAX_ENTRIES: usize = 10_000;
/// How long "the topic exists" is trusted, ms.
pub const EXISTS_TTL_MS: i64 = 300_000;
/// How long "the topic does not exist" is trusted, ms.
pub const MISSING_TTL_MS: i64 = 10_000;
/// Failed look-ups of one name before it is assumed to exist.
pub const MAX_LOOKUP_FAILURES: u32 = 3;
/// Timeout of one metadata request.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// What is known of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Exists,
    Missing,
    /// Asked; the answer has not arrived.
    Pending,
}

/// The resolver's answer for one name: Some(exists), or None when the
/// cluster gave no metadata.
type Answer = (String, Option<bool>);

/// The ingress loop's view of target existence.
pub struct Targets {
    cache: HashMap<String, (bool, i64)>,
    order: VecDeque<String>,
    pending: HashSet<String>,
    failures: HashMap<String, u32>,
    asks: Option<Sender<String>>,
    answers: Receiver<Answer>,
    thread: Option<JoinHandle<()>>,
}

impl Targets {
    /// Starts the resolver thread on (a handle of) the loop's producer.
    pub fn start<C: ProducerContext + 'static>(
        producer: PolledProducer<C>,
    ) -> std::io::Result<Self> {
        let (asks, asked) = mpsc::channel::<String>();
        let (answer, answers) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kd-targets".into())
            .spawn(move || resolve_loop(producer.client(), &asked, &answer))?;
        Ok(Self {
            cache: HashMap::new(),
            order: VecDeque::new(),
            pending: HashSet::new(),
            failures: HashMap::new(),
            asks: Some(asks),
            answers,
            thread: Some(thread),
        })
    }

    /// What is known of `topic` at `now_ms`; asks the resolver on a miss.
    pub fn check(&mut self, topic: &str, now_ms: i64) -> Known {
        if let Some(&(exists, checked)) = self.cache.get(topic) {
            let ttl = if exists {
                EXISTS_TTL_MS
            } else {
                MISSING_TTL_MS
            };
            if now_ms - checked < ttl {
                return if exists {
                    Known::Exists
                } else {
                    Known::Missing
                };
            }
        }
        if self.pending.insert(topic.to_owned()) {
            if let Some(asks) = &self.asks {
                let _ = asks.send(topic.to_owned());
            }
        }
        Known::Pending
    }

    /// Takes the answers that arrived; true if any did.
    pub fn receive(&mut self, now_ms: i64) -> bool {
        let mut any = false;
        while let Ok((topic, answer)) = self.answers.try_recv() {
            any = true;
            self.pending.remove(&topic);
            let exists = match answer {
                Some(exists) => {
                    self.failures.remove(&topic);
                    exists
                }
                None => {
                    let tries = self.failures.entry(topic.clone()).or_insert(0);
                    *tries += 1;
                    if *tries < MAX_LOOKUP_FAILURES {
                        continue;
                    }
                    tracing::warn!(%topic, "no metadata for the target after {tries} tries; assuming it exists");
                    self.failures.remove(&topic);
                    true
                }
            };
            self.insert(topic, exists, now_ms);
        }
        any
    }

    fn insert(&mut self, topic: String, exists: bool, now_ms: i64) {
        if !self.cache.contains_key(&topic) {
            while self.order.len() >= MAX_ENTRIES {
                if let Some(old) = self.order.pop_front() {
                    self.cache.remove(&old);
                }
            }
            self.order.push_back(topic.clone());
        }
        self.cache.insert(topic, (exists, now_ms));
    }

    /// Forgets what is known of `topic` (a delivery to it failed).
    pub fn forget(&mut self, topic: &str) {
        if let Some(entry) = self.cache.get_mut(topic) {
            entry.1 = i64::MIN / 2;
        }
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        self.asks.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn resolve_loop<C: ClientContext>(
    client: &Client<C>,
    asked: &Receiver<String>,
    answer: &Sender<Answer>,
) {
    while let Ok(first) = asked.recv() {
        let mut names: Vec<String> = vec![first];
        names.extend(asked.try_iter());
        names.sort();
        names.dedup();
        // One name: ask for it alone; several: one request for all topics.
        let single = (names.len() == 1).then(|| names[0].as_str());
        let answers: Vec<Answer> = match client.fetch_metadata(single, METADATA_TIMEOUT) {
            Ok(metadata) => {
                let existing: HashSet<&str> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| t.name())
                    .collect();
                names
                    .iter()
                    .map(|n| (n.clone(), Some(existing.contains(n.as_str()))))
                    .collect()
            }
            Err(error) => {
                tracing::warn!(%error, "target metadata look-up failed");
                std::thread::sleep(Duration::from_millis(500));
                names.iter().map(|n| (n.clone(), None)).collect()
            }
        };
        for a in answers {
            if answer.send(a).is_err() {
                return;
            }
        }
    }
}
