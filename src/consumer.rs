//! The consumer loop: one consumer group over the ingress and tier topics.
//!
//! Every tier partition is paused until its head record's release time, then
//! resumed and drained: each released record is re-routed by
//! [`TierTable::route`] — to a lower tier, the due-soon timer, or its target —
//! until the head belongs to a later turn. A drained partition stays resumed
//! for `wheel.grace`, then sleeps until its slot's next turn. Ingress
//! partitions are never paused.
//!
//! Everything runs on one thread: `poll` (which also runs the rebalance
//! callbacks), the timer, pause/resume and offset storing. librdkafka's
//! fetcher and the producer's own thread do the I/O, so the per-record work
//! here is header parsing and one produce call — no future, no task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use thiserror::Error;

use crate::config::{ConfigError, Settings};
use crate::envelope::{self, Envelope, EnvelopeError, TargetPolicy};
use crate::forwarder::{DeliveryContext, Forwarder, Inflight, Kind, Shared};
use crate::kafka;
use crate::metrics::{Metrics, Outcome, Source};
use crate::offsets::{Assignment, Ticket};
use crate::partition::{bucket_of, cached_watermarks, Detach, PartitionState};
use crate::timer::Timer;

mod rebalance;
mod upkeep;

use crate::wheel::{key_lane, Route, TierTable};
pub use rebalance::RebalanceContext;
use upkeep::release_free_memory;

/// Why the service could not start or stopped.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Liveness and readiness, for `/healthz` and `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the first assignment (possibly empty) arrived: the group was joined.
    pub joined: AtomicBool,
    /// Partitions currently assigned.
    pub assigned: AtomicUsize,
    /// Epoch ms of the last completed loop iteration.
    pub last_loop_ms: std::sync::atomic::AtomicI64,
}

/// Current wall-clock time, epoch ms.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A record waiting in the due-soon timer.
struct Scheduled {
    ticket: Ticket,
    from: Source,
    target: String,
    original_timestamp_ms: i64,
    record: OwnedMessage,
}

/// How often offsets are stored and idle partitions checked.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// How often gauges are refreshed.
const GAUGES: Duration = Duration::from_secs(1);
/// Longest single poll wait.
const MAX_POLL: Duration = Duration::from_millis(50);
/// Records handled per burst before timers are checked again.
const BURST: usize = 512;

/// The consumer loop: the consumer and the [`Core`] state it drives.
pub struct Engine {
    consumer: BaseConsumer<RebalanceContext>,
    core: Core,
    health: Arc<Health>,
    shutdown_timeout: Duration,
    commit_interval: Duration,
}

type Client = BaseConsumer<RebalanceContext>;

/// Everything the loop mutates while a polled record borrows the consumer.
struct Core {
    forwarder: Forwarder,
    shared: Arc<Shared>,
    table: TierTable,
    policy: TargetPolicy,
    /// Ingress first, then the tier topics.
    topics: Vec<String>,
    lanes: u32,
    grace_ms: i64,
    partitions: HashMap<(usize, i32), PartitionState>,
    timer: Timer<Scheduled>,
}

impl Engine {
    /// Builds the producer and the consumer and subscribes; no record is
    /// read before [`Engine::run`].
    pub fn new(
        settings: &Settings,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, EngineError> {
        let table = settings.tier_table()?;
        let policy = settings.target_policy()?;
        let tier_topics = settings.tier_topics(&table);
        let shared = Shared::new(metrics);
        let forwarder = Forwarder::new(
            &kafka::producer_config(settings),
            shared.clone(),
            settings.topics.dead_letter.clone(),
            tier_topics.clone(),
        )?;
        let context = RebalanceContext {
            shared: shared.clone(),
            producer: forwarder.producer_handle(),
            flush_timeout: Duration::from_secs(5),
            events: Mutex::new(Vec::new()),
            events_pending: AtomicBool::new(false),
            commit_failed: AtomicBool::new(false),
        };
        let consumer: BaseConsumer<RebalanceContext> =
            kafka::consumer_config(settings).create_with_context(context)?;
        let mut topics = vec![settings.topics.ingress.clone()];
        topics.extend(tier_topics);
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        let core = Core {
            forwarder,
            shared,
            table,
            policy,
            topics,
            lanes: settings.wheel.partitions_per_slot,
            grace_ms: settings.wheel.grace.as_millis() as i64,
            partitions: HashMap::new(),
            timer: Timer::default(),
        };
        Ok(Self {
            consumer,
            core,
            health,
            shutdown_timeout: *settings.service.shutdown_timeout,
            commit_interval: *settings.service.commit_interval,
        })
    }

    /// Runs until `stop` is set, then flushes, commits and leaves the group.
    pub fn run(mut self, stop: &AtomicBool) -> Result<(), EngineError> {
        let mut last_housekeeping = Instant::now();
        let mut last_gauges = Instant::now();
        let mut last_commit = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = now_ms();
            let (c, core) = (&self.consumer, &mut self.core);
            core.fire_timers(now);
            core.wake_partitions(c, now);
            core.handle_failures(now);
            if last_housekeeping.elapsed() >= HOUSEKEEPING {
                last_housekeeping = Instant::now();
                core.sleep_idle_partitions(c, now);
            }
            if last_commit.elapsed() >= self.commit_interval {
                last_commit = Instant::now();
                core.commit_offsets(c);
            }
            if last_gauges.elapsed() >= GAUGES {
                last_gauges = Instant::now();
                core.refresh_gauges(c);
                release_free_memory();
            }
            self.poll_burst(now);
            self.core.handle_rebalances(&self.consumer, &self.health);
            self.health.last_loop_ms.store(now_ms(), Ordering::Relaxed);
        }
        self.shutdown();
        Ok(())
    }

    fn poll_burst(&mut self, now: i64) {
        let next = [self.core.timer.next_due(), self.core.next_wake()]
            .into_iter()
            .flatten()
            .min()
            .map_or(MAX_POLL, |t| {
                Duration::from_millis((t - now).clamp(0, 50) as u64)
            });
        let mut timeout = next;
        for _ in 0..BURST {
            let Some(result) = self.consumer.poll(timeout) else {
                return;
            };
            timeout = Duration::ZERO;
            match result {
                Ok(msg) => self.core.on_record(&self.consumer, &msg, now_ms()),
                Err(KafkaError::PartitionEOF(_)) => {}
                Err(error) => {
                    tracing::warn!(%error, "consumer error");
                    return;
                }
            }
            if self.events_pending() {
                return;
            }
        }
    }

    fn events_pending(&self) -> bool {
        self.consumer
            .context()
            .events_pending
            .load(Ordering::Relaxed)
    }

    /// Graceful stop: flush produces, store and commit, leave the group.
    fn shutdown(mut self) {
        tracing::info!(timer = self.core.timer.len(), "shutting down");
        if let Err(error) = self.core.forwarder.flush(self.shutdown_timeout) {
            tracing::warn!(%error, "not every record was acknowledged before the deadline");
        }
        self.core.handle_failures(now_ms());
        let _ = self.core.forwarder.flush(Duration::from_secs(1));
        self.consumer
            .context()
            .commit_failed
            .store(true, Ordering::Relaxed);
        self.core.commit_offsets(&self.consumer);
        // Dropping the consumer closes it: the revoke callback runs, the
        // group is left.
    }
}

impl Core {
    fn next_wake(&self) -> Option<i64> {
        self.partitions.values().filter_map(|p| p.wake_at).min()
    }

    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }

    /// A record fresh from `poll`.
    fn on_record(&mut self, c: &Client, msg: &rdkafka::message::BorrowedMessage<'_>, now: i64) {
        let Some(topic) = self.topic_index(msg.topic()) else {
            return;
        };
        let key = (topic, msg.partition());
        let Some(state) = self.partitions.get_mut(&key) else {
            tracing::debug!(
                topic = msg.topic(),
                partition = msg.partition(),
                "record from an unassigned partition"
            );
            return;
        };
        state.last_offset = Some(msg.offset());
        state.last_activity_ms = now;
        let id = state.id;
        let Some(tier) = state.tier else {
            return self.process(msg, Source::Ingress, id, now);
        };
        if state.is_holding() {
            state.held.push_back(msg.detach());
            return;
        }
        let release = bucket_of(msg).map(|b| self.table.release_time(tier, b));
        if let (Some(release), Some(appended)) = (release, msg.timestamp().to_millis()) {
            if appended > release {
                self.shared.metrics.late_append(tier);
            }
        }
        match release {
            Some(release) if release > now => {
                let state = self.partitions.get_mut(&key).expect("present");
                state.held.push_back(msg.detach());
                self.pause(c, key, release);
            }
            _ => self.process(msg, Source::Tier(tier), id, now),
        }
    }

    /// Routes one released record: dead letter, target, timer or tier.
    fn process<M: Message + Detach>(&mut self, msg: &M, from: Source, id: Assignment, now: i64) {
        let offset = msg.offset();
        let Some(ticket) = self.shared.book_unacked().take(id, offset) else {
            return;
        };
        let inflight = Inflight {
            ticket,
            kind: Kind::Target,
        };
        let headers = || {
            msg.headers()
                .into_iter()
                .flat_map(|h| h.iter())
                .map(|h| (h.key, h.value))
        };
        let parsed = match from {
            Source::Ingress => {
                let timestamp = msg.timestamp().to_millis();
                let trusted = self.forwarder.last_target();
                envelope::parse_ingress_trusting(headers(), timestamp, now, &self.policy, trusted)
            }
            Source::Tier(_) => envelope::parse_tier(headers()),
        };
        let env = match parsed {
            Ok(env) if from == Source::Ingress && !self.forwarder.target_exists(env.target) => {
                Err(EnvelopeError::UnknownTarget(env.target.to_owned()))
            }
            other => other,
        };
        let env = match env {
            Ok(env) => env,
            Err(error) => {
                if from == Source::Ingress {
                    self.shared.metrics.ingested(Outcome::DeadLettered);
                }
                tracing::debug!(%error, offset, "dead-lettering record");
                let why = error.to_string();
                return self
                    .forwarder
                    .to_dead_letter(msg, error.reason(), &why, inflight);
            }
        };
        let outcome = match self.table.route(now, env.due_ms) {
            Route::Deliver => {
                fire(&mut self.timer, &self.forwarder, now);
                self.forwarder.to_target(msg, &env, from, inflight, now);
                Outcome::Delivered
            }
            Route::Timer => {
                self.timer.schedule(
                    env.due_ms,
                    Scheduled {
                        ticket,
                        from,
                        target: env.target.to_owned(),
                        original_timestamp_ms: env.original_timestamp_ms,
                        record: msg.to_owned_message(),
                    },
                );
                Outcome::Timer
            }
            Route::Tier { tier, bucket, .. } => {
                let slot = self.table.slot(tier, bucket);
                let lane = key_lane(msg.key(), self.lanes, offset as u64);
                let partition = self.table.partition(tier, slot, lane);
                let inflight = Inflight {
                    kind: Kind::Tier,
                    ..inflight
                };
                self.forwarder
                    .to_tier(msg, &env, (tier, bucket, partition), inflight, now);
                Outcome::Tier
            }
        };
        if from == Source::Ingress {
            self.shared.metrics.ingested(outcome);
        }
    }

    /// Delivers every timer record that is due.
    fn fire_timers(&mut self, now: i64) {
        fire(&mut self.timer, &self.forwarder, now);
    }

    fn tpl(&self, (topic, partition): (usize, i32)) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topics[topic], partition);
        tpl
    }

    fn pause(&mut self, c: &Client, key: (usize, i32), until: i64) {
        if let Some(state) = self.partitions.get_mut(&key) {
            state.wake_at = Some(until);
        }
        if let Err(error) = c.pause(&self.tpl(key)) {
            tracing::warn!(%error, "pause failed");
        }
    }

    /// Resumes partitions whose pause ended and drains their held records
    /// up to the first one of a later turn.
    fn wake_partitions(&mut self, c: &Client, now: i64) {
        let due: Vec<(usize, i32)> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.wake_at.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(state) = self.partitions.get_mut(&key) else {
                continue;
            };
            state.wake_at = None;
            state.last_activity_ms = now;
            let (id, tier) = (state.id, state.tier.unwrap_or_default());
            let mut paused_again = false;
            while let Some(head) = self
                .partitions
                .get_mut(&key)
                .and_then(|p| p.held.pop_front())
            {
                let release = bucket_of(&head).map(|b| self.table.release_time(tier, b));
                if let Some(release) = release.filter(|&r| r > now) {
                    self.partitions
                        .get_mut(&key)
                        .expect("present")
                        .held
                        .push_front(head);
                    self.pause(c, key, release);
                    paused_again = true;
                    break;
                }
                self.process(&head, Source::Tier(tier), id, now);
            }
            if !paused_again {
                if let Err(error) = c.resume(&self.tpl(key)) {
                    tracing::warn!(%error, "resume failed");
                }
            }
        }
    }
}

/// Forwards every timer record due at `now`.
fn fire(timer: &mut Timer<Scheduled>, forwarder: &Forwarder, now: i64) {
    while let Some((due_ms, s)) = timer.pop_due(now) {
        let env = Envelope {
            due_ms,
            target: &s.target,
            original_timestamp_ms: s.original_timestamp_ms,
            bucket: None,
        };
        let inflight = Inflight {
            ticket: s.ticket,
            kind: Kind::Target,
        };
        forwarder.to_target(&s.record, &env, s.from, inflight, now_ms());
    }
}
