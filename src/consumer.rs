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
use crate::partition::{bucket_of, cached_watermarks, Detach, PartitionState};
use crate::timer::Timer;
use crate::wheel::{key_lane, Route, TierTable};

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

enum RebalanceEvent {
    Assigned(Vec<(String, i32, u32)>),
    Revoked(Vec<(String, i32)>),
}

/// Consumer context: on revoke, waits (bounded) for in-flight produces,
/// then stores and commits the acknowledged prefix of each revoked
/// partition before librdkafka gives it up.
pub struct RebalanceContext {
    shared: Arc<Shared>,
    producer: ThreadedProducer<DeliveryContext>,
    flush_timeout: Duration,
    events: Mutex<Vec<RebalanceEvent>>,
    /// Set when `events` is non-empty: checked after every polled record.
    events_pending: AtomicBool,
    /// The last commit failed: commit again even if nothing moved.
    commit_failed: AtomicBool,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut book = self.shared.book();
                let list = tpl
                    .elements()
                    .iter()
                    .map(|e| {
                        (
                            e.topic().to_owned(),
                            e.partition(),
                            book.register(e.topic(), e.partition()),
                        )
                    })
                    .collect();
                events.push(RebalanceEvent::Assigned(list));
            }
            Rebalance::Revoke(tpl) => {
                if let Err(error) = self.producer.flush(self.flush_timeout) {
                    tracing::warn!(%error, "in-flight records not acknowledged before revoke; they will be redelivered");
                }
                let mut commit = TopicPartitionList::new();
                let mut list = Vec::new();
                let mut book = self.shared.book();
                for e in tpl.elements() {
                    if let Some(position) = book.remove(e.topic(), e.partition()) {
                        let _ = commit.add_partition_offset(
                            e.topic(),
                            e.partition(),
                            Offset::Offset(position),
                        );
                    }
                    list.push((e.topic().to_owned(), e.partition()));
                }
                drop(book);
                if commit.count() > 0 && !consumer.assignment_lost() {
                    let _ = consumer.store_offsets(&commit);
                    if let Err(error) = consumer.commit(&commit, CommitMode::Sync) {
                        self.shared.metrics.commit_error();
                        tracing::warn!(%error, "commit on revoke failed");
                    }
                }
                events.push(RebalanceEvent::Revoked(list));
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance error"),
        }
        self.events_pending.store(true, Ordering::Relaxed);
        self.shared.metrics.rebalance();
    }
}

/// A record waiting in the due-soon timer.
struct Scheduled {
    id: u32,
    offset: i64,
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
    fn process<M: Message + Detach>(&mut self, msg: &M, from: Source, id: u32, now: i64) {
        let offset = msg.offset();
        if !self.shared.book_unacked().take(id, offset) {
            return;
        }
        let inflight = Inflight {
            source: id,
            offset,
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
                envelope::parse_ingress(headers(), timestamp, now, &self.policy)
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
                        id,
                        offset,
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
                    kind: Kind::Tier(tier),
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

    /// Puts drained tier partitions to sleep until their next turn, once
    /// they have been idle for the grace period and are at their end offset.
    fn sleep_idle_partitions(&mut self, c: &Client, now: i64) {
        let idle: Vec<((usize, i32), usize)> = self
            .partitions
            .iter()
            .filter(|(_, p)| !p.is_holding() && now - p.last_activity_ms >= self.grace_ms)
            .filter_map(|(k, p)| Some((*k, p.tier?)))
            .collect();
        for (key, tier) in idle {
            let state = &self.partitions[&key];
            let at_end = match (
                state.position(),
                cached_watermarks(c, &self.topics[key.0], key.1),
            ) {
                (Some(position), Some((_, high))) => position >= high,
                (None, Some((low, high))) => low == high,
                _ => false,
            };
            if at_end {
                let slot = self.table.slot_of_partition(tier, key.1);
                let wake = self.table.next_turn_release(tier, slot, now);
                self.pause(c, key, wake);
            }
        }
    }

    /// Retries failed produces; dead-letters records whose target refuses them.
    fn handle_failures(&mut self, now: i64) {
        for failure in self.shared.take_failures() {
            if !self.shared.book().is_live(failure.inflight.source) {
                continue;
            }
            if failure.inflight.kind == Kind::Target && failure.is_permanent() {
                let topic = failure.record.topic().to_owned();
                self.forwarder.forget_target(&topic);
                let error = EnvelopeError::DeliveryFailed(format!("{topic}: {}", failure.error));
                tracing::warn!(%error, "dead-lettering undeliverable record");
                self.forwarder.to_dead_letter(
                    &failure.record,
                    error.reason(),
                    &error.to_string(),
                    failure.inflight,
                );
            } else {
                tracing::warn!(error = %failure.error, topic = failure.record.topic(), now, "produce failed; retrying");
                self.forwarder.retry(failure);
            }
        }
    }

    /// Commits the acknowledged prefix of every partition, when any moved
    /// or the last commit failed. Synchronous: one round trip every
    /// `service.commit_interval`, measured as the commit latency. (With
    /// rust-rdkafka's event API the asynchronous commit's result never
    /// reached the commit callback on Tansu, so its latency could not be
    /// observed.)
    fn commit_offsets(&mut self, c: &Client) {
        let context = c.context();
        let mut book = self.shared.book();
        let moved = !book.unstored().is_empty();
        if !moved && !context.commit_failed.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in book.positions() {
            let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset));
        }
        drop(book);
        if tpl.count() == 0 {
            return;
        }
        // Stored too, so that librdkafka's own commit on close agrees.
        let _ = c.store_offsets(&tpl);
        let begun = Instant::now();
        match c.commit(&tpl, CommitMode::Sync) {
            Ok(()) => self
                .shared
                .metrics
                .commit_latency(begun.elapsed().as_secs_f64()),
            Err(error) => {
                context.commit_failed.store(true, Ordering::Relaxed);
                self.shared.metrics.commit_error();
                tracing::warn!(%error, "offset commit failed");
            }
        }
    }

    fn handle_rebalances(&mut self, c: &Client, health: &Health) {
        if !c.context().events_pending.swap(false, Ordering::Relaxed) {
            return;
        }
        let events = std::mem::take(
            &mut *c
                .context()
                .events
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if events.is_empty() {
            return;
        }
        let now = now_ms();
        for event in events {
            match event {
                RebalanceEvent::Assigned(list) => {
                    let mut committed = TopicPartitionList::new();
                    for (topic, partition, id) in list {
                        let Some(index) = self.topic_index(&topic) else {
                            continue;
                        };
                        let tier = index.checked_sub(1);
                        self.partitions
                            .insert((index, partition), PartitionState::new(id, tier, now));
                        committed.add_partition(&topic, partition);
                    }
                    self.load_start_offsets(c, committed);
                    tracing::info!(assigned = self.partitions.len(), "partitions assigned");
                }
                RebalanceEvent::Revoked(list) => {
                    for (topic, partition) in list {
                        if let Some(index) = self.topic_index(&topic) {
                            self.partitions.remove(&(index, partition));
                        }
                    }
                    let book = self.shared.book();
                    self.timer.retain(|s| book.is_live(s.id));
                    drop(book);
                    tracing::info!(assigned = self.partitions.len(), "partitions revoked");
                }
            }
        }
        // Pause state does not survive a rebalance in librdkafka: re-apply.
        let paused: Vec<((usize, i32), i64)> = self
            .partitions
            .iter()
            .filter_map(|(k, p)| Some((*k, p.wake_at?)))
            .collect();
        for (key, until) in paused {
            self.pause(c, key, until);
        }
        health
            .assigned
            .store(self.partitions.len(), Ordering::Relaxed);
        health.joined.store(true, Ordering::Relaxed);
    }

    fn load_start_offsets(&mut self, c: &Client, tpl: TopicPartitionList) {
        if tpl.count() == 0 {
            return;
        }
        match c.committed_offsets(tpl, Duration::from_secs(10)) {
            Ok(committed) => {
                for e in committed.elements() {
                    let (Some(index), Offset::Offset(offset)) =
                        (self.topic_index(e.topic()), e.offset())
                    else {
                        continue;
                    };
                    if let Some(state) = self.partitions.get_mut(&(index, e.partition())) {
                        state.start_offset = Some(offset);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read committed offsets"),
        }
    }

    fn refresh_gauges(&self, c: &Client) {
        let metrics = &self.shared.metrics;
        metrics.set_timer_records(self.timer.len());
        let positions: HashMap<(String, i32), i64> = self
            .shared
            .book()
            .positions()
            .into_iter()
            .map(|(t, p, o)| ((t, p), o))
            .collect();
        for tier in 0..self.table.tiers().len() {
            let topic = &self.topics[tier + 1];
            let mut paused = 0;
            let mut pending = 0;
            let mut oldest: Option<i64> = None;
            for ((index, partition), state) in &self.partitions {
                if *index != tier + 1 {
                    continue;
                }
                paused += usize::from(state.wake_at.is_some());
                if let Some((low, high)) = cached_watermarks(c, topic, *partition) {
                    let from = positions
                        .get(&(topic.clone(), *partition))
                        .copied()
                        .or(state.start_offset)
                        .unwrap_or(low);
                    pending += (high - from).max(0);
                }
                let head_due = state.held.front().and_then(|h| {
                    let headers = h.headers()?;
                    let env =
                        envelope::parse_tier(headers.iter().map(|x| (x.key, x.value))).ok()?;
                    Some(env.due_ms)
                });
                oldest = oldest.into_iter().chain(head_due).min();
            }
            metrics.set_paused(tier, paused);
            metrics.set_pending(tier, pending);
            metrics.set_oldest_due(tier, oldest);
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
            source: s.id,
            offset: s.offset,
            kind: Kind::Target,
        };
        forwarder.to_target(&s.record, &env, s.from, inflight, now_ms());
    }
}

/// Hands freed heap pages back to the kernel. After a burst, glibc keeps the
/// memory librdkafka's queues used; without this the resident set would
/// stay at the burst's peak although nothing is held (pending records live
/// in Kafka). `malloc_trim` returns quickly when there is nothing to give back.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap structures.
    unsafe {
        libc::malloc_trim(0);
    }
}
