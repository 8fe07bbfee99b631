//! The consumer loop's driver: builds a loop's clients and state, then
//! runs it — fire timers, wake partitions, handle failures and target
//! answers, housekeeping, commit, gauges, poll a burst, apply rebalances —
//! until the stop flag, then shuts down (flush, commit, leave the group).
//!
//! Over 500 lines: one loop: its construction and every step of a turn, read
//! top to bottom (docs/architecture.md, "Files over 500 lines").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use super::flow;
use super::guarantee::Guarantee;
use super::ingress::{Ingress, Stage};
use super::partitions::{PartitionTable, Pauser};
use super::rebalance::GroupContext;
use super::records::Scheduled;
use super::round_trips::RoundTrips;
use super::timer::Timer;
use super::{EngineError, Role, Shared};
use crate::config::Settings;
use crate::delivery::failures::{Failures, RetryPolicy};
use crate::delivery::forwarder::Forwarder;
use crate::delivery::ledger::Ledger;
use crate::kafka;
use crate::kafka::targets::Targets;
use crate::model::clock::now_ms;
use crate::model::envelope::TargetPolicy;
use crate::ops::metrics::SourceGauges;
use crate::wheel::TierTable;

/// How often offsets are checked, partitions put to sleep and caps applied.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// How often gauges are refreshed.
const GAUGES: Duration = Duration::from_secs(1);
/// Longest single poll wait.
const MAX_POLL_MS: i64 = 50;
/// Records handled per burst before timers are checked again.
const BURST: usize = 512;
/// A fetching partition behind its end with no record for this long is
/// stalled, ms (long enough for a fetch after a rebalance on a loaded
/// machine; a real stall lasts until something resumes the partition).
const STALL_MS: i64 = 10_000;

type Client = BaseConsumer<GroupContext>;

/// One consumer loop: its consumer and producer, and the state of the
/// records it has read and not yet finished (held, timed, in flight).
pub(crate) struct ConsumerLoop {
    /// The ingress's target look-ups, or the tier's index. Declared before
    /// `consumer`: the look-up thread (which holds a producer handle) stops
    /// before the consumer closes and leaves the group.
    pub(super) stage: Stage,
    pub(super) index: usize,
    /// The loop's place in `shared.health` (retired tiers' loops have a
    /// health list of their own: they do not decide readiness).
    health_index: usize,
    pub(super) topic: String,
    pub(super) consumer: Arc<Client>,
    pub(super) side: Option<RoundTrips>,
    pub(super) table: TierTable,
    pub(super) policy: Arc<TargetPolicy>,
    pub(super) lanes: u32,
    pub(super) grace_ms: i64,
    pub(super) partitions: PartitionTable,
    pub(super) ledger: Arc<Ledger>,
    pub(super) forwarder: Forwarder,
    pub(super) failures: Failures,
    /// Boxed: a heap operation moves log n entries, and a record's entry
    /// is a few hundred bytes (memcpy was 1/3 of `fire_timers` in a profile).
    pub(super) timer: Timer<Box<Scheduled>>,
    pub(super) timer_bytes: usize,
    /// At-least-once or exactly-once: how offsets are committed.
    pub(super) guarantee: Guarantee,
    pub(super) shared: Shared,
    shutdown_timeout: Duration,
}

impl ConsumerLoop {
    /// Builds the producer, the consumer (group `<group_id>.<role>`), its
    /// watcher threads and subscribes; no record is read before
    /// [`ConsumerLoop::run`]. `index` is the loop's place in `shared`.
    pub fn new(
        settings: &Settings,
        role: Role,
        index: usize,
        shared: Shared,
    ) -> Result<Self, EngineError> {
        let table = settings.tier_table()?;
        let policy = Arc::new(settings.target_policy()?);
        let tier_topics = settings.tier_topics(&table);
        let topic = match role {
            Role::Ingress => settings.topics.ingress.clone(),
            Role::Tier(t) => tier_topics[t].clone(),
            Role::Retired(r) => shared.retired[r].topic.clone(),
        };
        let ledger = Arc::new(Ledger::default());
        let health_index = match role {
            Role::Retired(r) => r,
            _ => index,
        };
        let label = match role {
            Role::Ingress => "ingress".to_owned(),
            Role::Tier(t) => crate::config::tick_label(table.tiers()[t].tick_ms),
            Role::Retired(r) => shared.retired[r].label.clone(),
        };
        let exactly_once = settings.delivery.exactly_once();
        // A retired tier's loop runs beside the loops of its own layout
        // during a rolling change: its transactional id must not fence
        // theirs.
        let transactional_label = match role {
            Role::Retired(_) => format!("retired-{label}"),
            _ => label.clone(),
        };
        let producer_config = kafka::loop_producer_config(
            settings,
            exactly_once.then_some(transactional_label.as_str()),
        );
        let forwarder = Forwarder::new(
            &producer_config,
            ledger.clone(),
            shared.metrics.clone(),
            &settings.topics.dead_letter,
            &tier_topics,
        )?;
        let transaction = if exactly_once {
            let txn = crate::delivery::exactly_once::Transaction::start(
                &forwarder,
                settings,
                shared.metrics.clone(),
            )
            .map_err(|error| EngineError::Transactions {
                topic: topic.clone(),
                error,
            })?;
            Some(txn)
        } else {
            None
        };
        let group = match role {
            Role::Tier(t) => settings.group_of(&settings.tier_group_labels(&table)[t]),
            Role::Retired(r) => shared.retired[r].group.clone(),
            Role::Ingress => settings.group_of(&label),
        };
        let tier_lead_ms = match role {
            Role::Ingress | Role::Retired(_) => None,
            Role::Tier(t) => Some(table.tiers()[t].lead_ms),
        };
        let config = kafka::loop_consumer_config(settings, &group, tier_lead_ms);
        let max_poll_ms = config
            .get("max.poll.interval.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300_000);
        let context = GroupContext {
            revoke_wait: GroupContext::revoke_wait(max_poll_ms),
            topic: topic.clone(),
            ledger: ledger.clone(),
            producer: forwarder.producer_handle(),
            metrics: shared.metrics.clone(),
            health: shared.health.clone(),
            health_index,
            committer: Mutex::new(None),
            assigned: Mutex::new(Default::default()),
            events: Mutex::new(Vec::new()),
            events_pending: AtomicBool::new(false),
            transaction: Mutex::new(transaction),
            rewind: AtomicBool::new(false),
            fatal: Mutex::new(None),
        };
        let consumer: Arc<Client> = Arc::new(config.create_with_context(context)?);
        let (pauser, pauses) = Pauser::channel();
        let side = RoundTrips::start(
            consumer.clone(),
            &topic,
            shared.metrics.clone(),
            *settings.service.watch_interval,
            pauses,
        )?;
        *consumer
            .context()
            .committer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(side.committer());
        consumer.subscribe(&[&topic])?;
        let stage = match role {
            Role::Ingress => Stage::Ingress(Box::new(Ingress::new(Targets::start(
                forwarder.producer_handle(),
            )?))),
            Role::Tier(t) => Stage::Tier(t),
            Role::Retired(r) => Stage::Retired(r, false),
        };
        let policy_ms = |d: &humantime_serde::Serde<Duration>| d.as_millis() as i64;
        // At most one tick of the tier (at least 100 ms): an empty fine-tick
        // partition would otherwise stay awake, fetching, most of its turn.
        let grace_ms = match role {
            Role::Tier(t) => {
                policy_ms(&settings.wheel.grace).min(table.tiers()[t].tick_ms.max(100))
            }
            Role::Ingress | Role::Retired(_) => policy_ms(&settings.wheel.grace),
        } + if exactly_once {
            // A write becomes readable when its transaction commits: stay
            // awake for the writes of transactions still open.
            2 * policy_ms(&settings.delivery.transaction_interval) + 100
        } else {
            0
        };
        Ok(Self {
            stage,
            index,
            health_index,
            partitions: PartitionTable::new(pauser),
            topic,
            consumer,
            side: Some(side),
            table,
            policy,
            lanes: settings.wheel.partitions_per_slot,
            grace_ms,
            ledger,
            forwarder,
            failures: Failures::new(RetryPolicy {
                delivery_timeout_ms: policy_ms(&settings.service.delivery_timeout),
                ..RetryPolicy::default()
            }),
            timer: Timer::default(),
            timer_bytes: 0,
            guarantee: Guarantee::of(settings),
            shared,
            shutdown_timeout: *settings.service.shutdown_timeout,
        })
    }

    /// Runs until `stop` is set, then flushes, commits and leaves the group.
    /// Errors: a fatal producer error (the process should exit non-zero).
    pub fn run(mut self, stop: &AtomicBool) -> Result<(), EngineError> {
        let span = tracing::info_span!("loop", topic = %self.topic);
        let _entered = span.enter();
        let mut last_housekeeping = Instant::now();
        let mut last_gauges = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = now_ms();
            let mut turn = Turn::start();
            self.fire_timers(now);
            self.drain_ready(now);
            turn.step("timers");
            self.wake_partitions(now);
            turn.step("wake");
            self.handle_failures(now);
            self.resolve_parked(now);
            turn.step("failures");
            if last_housekeeping.elapsed() >= HOUSEKEEPING {
                last_housekeeping = Instant::now();
                self.housekeeping(now);
                turn.step("housekeeping");
            }
            self.settle();
            if last_gauges.elapsed() >= GAUGES {
                last_gauges = Instant::now();
                self.refresh_gauges();
                turn.step("gauges");
            }
            if let Some(error) = self
                .failures
                .fatal()
                .map(str::to_owned)
                .or_else(|| self.consumer.context().take_fatal())
            {
                let error = EngineError::FatalProducer {
                    topic: self.topic.clone(),
                    error,
                };
                tracing::error!(%error);
                self.shutdown();
                return Err(error);
            }
            self.poll_burst(now);
            turn.step("poll");
            self.handle_rebalances();
            turn.step("rebalance");
            turn.report(&self.topic);
            self.loop_health()
                .last_turn_ms
                .store(now_ms(), Ordering::Relaxed);
        }
        self.shutdown();
        Ok(())
    }

    /// Which topic the loop consumes.
    pub(super) fn role(&self) -> Role {
        match self.stage {
            Stage::Ingress(_) => Role::Ingress,
            Stage::Tier(tier) => Role::Tier(tier),
            Stage::Retired(r, _) => Role::Retired(r),
        }
    }

    pub(super) fn loop_health(&self) -> &crate::ops::health::LoopHealth {
        &self.shared.health.loops[self.health_index].1
    }

    fn poll_burst(&mut self, now: i64) {
        let next = [
            self.timer.next_due(),
            self.partitions.next_deadline(),
            self.failures.next_due(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map_or(MAX_POLL_MS, |t| (t - now).clamp(0, MAX_POLL_MS));
        let mut timeout = Duration::from_millis(next as u64);
        // A handle of our own: a polled record borrows the consumer while
        // the loop's state is changed.
        let consumer = self.consumer.clone();
        let mut clock = now;
        for i in 0..BURST {
            let Some(result) = consumer.poll(timeout) else {
                return;
            };
            timeout = Duration::ZERO;
            // The clock is read every 32 records: a slightly old `now` only
            // makes a record look less due (never early).
            if i % 32 == 0 {
                clock = now_ms();
            }
            match result {
                Ok(msg) => self.on_record(&msg, clock),
                Err(KafkaError::PartitionEOF(p)) => {
                    // The fetch response that ended the partition just
                    // refreshed librdkafka's cached high watermark.
                    let end =
                        crate::kafka::native::cached_high_watermark(&consumer, &self.topic, p);
                    self.partitions.note_eof(p, end, now_ms());
                }
                Err(error) => {
                    tracing::warn!(%error, topic = self.topic, "consumer error");
                    return;
                }
            }
            if consumer.context().events_pending.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    /// Periodic work: sleeping drained partitions, the watcher's report
    /// (wake-ups, stalls), backpressure and dead-letter blocks, retries.
    fn housekeeping(&mut self, now: i64) {
        if let Stage::Tier(tier) = self.stage {
            self.sleep_drained(tier, now);
        }
        if let Some(side) = &self.side {
            self.loop_health()
                .broker_ok_ms
                .store(side.broker_ok_ms(), Ordering::Relaxed);
            if let Some(report) = side.take_report() {
                let outcome = self.partitions.apply_watch(&report, now, STALL_MS);
                for p in &outcome.stalled {
                    tracing::warn!(
                        topic = self.topic,
                        partition = p,
                        "partition made no progress behind its end offset; resumed"
                    );
                    if let Stage::Tier(tier) = self.stage {
                        self.shared.metrics.tier.stall(tier);
                    }
                }
            }
        }
        self.apply_flow(now);
        if let Stage::Ingress(ingress) = &mut self.stage {
            ingress.expire_trust(now);
        }
    }

    /// Throttles or resumes partitions by the caps, and blocks partitions
    /// whose dead letters are refused.
    fn apply_flow(&mut self, now: i64) {
        let book = self.ledger.book();
        self.failures.forget_done(|word| book.is_done(word));
        let in_flight = (book.in_flight(), book.in_flight_bytes());
        let per_partition: Vec<(i32, usize, bool)> = self
            .partitions
            .iter()
            .map(|(p, part)| {
                let order = self.guarantee.order();
                let blocked = self.failures.blocked().any(|a| a == part.id)
                    || order.is_some_and(|o| o.retrying(p));
                let waiting = order.map_or(0, |o| o.waiting_len(p));
                (p, book.in_flight_of(part.id) + waiting, blocked)
            })
            .collect();
        drop(book);
        let limits = &self.shared.limits;
        limits.report(self.index, in_flight, self.timer.len(), self.timer_bytes);
        let mut instance = limits.pressure();
        if self.forwarder.queue_full() {
            instance = flow::Pressure::Over;
        }
        let mut blocked_count = 0;
        for (p, count, blocked) in per_partition {
            let throttled = self.partitions.is_throttled(p);
            let on = flow::throttle(throttled, instance, limits.partition_pressure(count));
            self.partitions.set_throttled(p, on, now);
            self.partitions.set_blocked(p, blocked, now);
            blocked_count += usize::from(blocked);
        }
        self.loop_health()
            .blocked
            .store(blocked_count, Ordering::Relaxed);
    }

    /// Hands the acknowledged prefix of every moved partition to the committer.
    pub(super) fn commit(&mut self) {
        let moved: Vec<(i32, i64)> = self
            .ledger
            .book()
            .unstored()
            .into_iter()
            .map(|(_, p, o)| (p, o))
            .collect();
        if let (false, Some(side)) = (moved.is_empty(), &self.side) {
            side.committer().commit(moved);
        }
    }

    fn refresh_gauges(&mut self) {
        let metrics = &self.shared.metrics;
        let (throttled, blocked) = self.partitions.pauses();
        metrics.loops.set_source(
            self.role().source(),
            SourceGauges {
                assigned: self.partitions.len(),
                throttled,
                blocked,
                in_flight: self.ledger.book().in_flight(),
                timer_records: self.timer.len(),
                timer_bytes: self.timer_bytes,
            },
        );
        match self.stage {
            Stage::Tier(tier) => self.refresh_tier_gauges(tier),
            Stage::Retired(r, reported) => {
                let topic = &self.shared.retired[r].topic;
                let pending = self.partitions.pending();
                metrics.tier.set_retired_pending(topic, pending);
                let drained = pending == 0 && self.partitions.all_watched();
                if drained && !reported {
                    tracing::info!(
                        topic,
                        "tier topic of an earlier layout: this instance's partitions of it are drained; `kafka-delay topics prune` deletes it once no instance of that layout runs"
                    );
                }
                self.stage = Stage::Retired(r, drained || reported);
            }
            Stage::Ingress(_) => {
                metrics.ingress.set_backlog(self.partitions.pending());
                crate::kafka::native::release_free_memory(now_ms());
            }
        }
    }

    /// Graceful stop: flush produces, commit, stop the watcher threads,
    /// leave the group.
    fn shutdown(mut self) {
        tracing::info!(
            topic = self.topic,
            timer = self.timer.len(),
            "shutting down"
        );
        if let Err(error) = self.forwarder.flush(self.shutdown_timeout) {
            tracing::warn!(%error, "not every record was acknowledged before the deadline");
        }
        if self.guarantee.is_exactly_once() {
            self.finish_transaction();
            if let Some(side) = self.side.take() {
                side.stop();
            }
            return;
        }
        let positions: Vec<(i32, i64)> = self
            .ledger
            .book()
            .positions()
            .into_iter()
            .map(|(_, p, o)| (p, o))
            .collect();
        let context = self.consumer.context();
        let committer = context
            .committer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(c) = committer {
            if !positions.is_empty() && !c.commit_and_wait(positions, Duration::from_secs(5)) {
                tracing::warn!(topic = self.topic, "final commit not confirmed");
            }
        }
        if let Some(side) = self.side.take() {
            side.stop();
        }
        // Dropping `self` stops the target look-ups (`stage`), then drops
        // the last handle on the consumer, which closes it: the revoke
        // callback runs and the group is left.
    }
}

/// Times the steps of one loop turn; a turn far longer than a poll wait is
/// logged with its slowest step (the loop must never wait on the network).
struct Turn {
    start: Instant,
    last: Instant,
    slowest: (&'static str, Duration),
}

/// A turn longer than this is logged.
const SLOW_TURN: Duration = Duration::from_millis(1_000);

impl Turn {
    fn start() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
            slowest: ("", Duration::ZERO),
        }
    }

    fn step(&mut self, name: &'static str) {
        let now = Instant::now();
        let took = now - self.last;
        if took > self.slowest.1 {
            self.slowest = (name, took);
        }
        self.last = now;
    }

    fn report(&self, topic: &str) {
        let total = self.start.elapsed();
        if total > SLOW_TURN {
            tracing::warn!(
                topic,
                total_ms = total.as_millis() as u64,
                slowest = self.slowest.0,
                slowest_ms = self.slowest.1.as_millis() as u64,
                "slow consumer loop turn"
            );
        }
    }
}
