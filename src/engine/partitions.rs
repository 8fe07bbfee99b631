//! The partition table of one consumer loop: what the loop knows and has
//! decided about each assigned partition. It is the only code that pauses
//! or resumes a partition, so librdkafka's pause flags always match it.
//!
//! A partition is in one [`Phase`]: fetching; holding its head record
//! (paused until the head's release time); or sleeping until its slot's
//! next turn. Backpressure (`throttled`) and a refusing dead-letter topic
//! (`blocked`) pause it too, whatever the phase.
//!
//! Pauses and resumes are applied by a thread of their own ([`Pauser`]):
//! librdkafka's pause call waits for each partition's handler thread.
//!
//! librdkafka facts this relies on (2.12, read in its source):
//!
//! * the *application* pause flag survives revoke and re-assignment to the
//!   same client (`rdkafka_assignment.c` resets only the library flag), so
//!   [`PartitionTable::assign`] resumes every assigned partition explicitly
//!   before anything else;
//! * pausing or resuming bumps the partition's op version
//!   (`rd_kafka_toppar_pause_resume`), which resets its end-of-partition
//!   bookkeeping (`rd_kafka_offset_stats_reset` in `rdkafka_fetcher.c`) and
//!   discards older fetched ops on poll: a `PartitionEOF` polled after a
//!   resume comes from a fetch made after it. "Drained" is decided from such
//!   an EOF, or from an end offset the watcher fetched after the resume —
//!   never from the cached high watermark, which is only as fresh as the
//!   last fetch response;
//! * pausing discards prefetched records and fetching restarts after the
//!   last record the application consumed, so records polled before a pause
//!   takes effect are kept in `held`, in offset order.
//!
//! Over 500 lines: one state machine, the only caller of pause and resume;
//! splitting it would spread that ownership (docs/architecture.md, "Files
//! over 500 lines").

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender};

use rdkafka::message::OwnedMessage;

use crate::delivery::ledger::Assignment;

/// What the loop is doing with a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Resumed: records are fetched and handled as they come.
    Fetching,
    /// Paused until the head record's release time (epoch ms).
    Holding { release_ms: i64 },
    /// Paused until the slot's next turn (epoch ms), or until the watcher
    /// sees a record appended.
    Sleeping { until_ms: i64 },
}

/// One assigned partition.
#[derive(Debug)]
pub struct Partition {
    /// Assignment id in the loop's ledger.
    pub id: Assignment,
    pub phase: Phase,
    /// Records read but not yet handled, head first.
    pub held: VecDeque<OwnedMessage>,
    throttled: bool,
    blocked: bool,
    /// Whether librdkafka has it paused (as we last told it).
    paused: bool,
    /// One past the last offset read.
    next_offset: Option<i64>,
    /// The group's committed offset, as the watcher last read it.
    committed: Option<i64>,
    /// The end offset as the watcher last read it, and when that request
    /// was sent (epoch ms).
    end: Option<(i64, i64)>,
    /// Due time of the held head (epoch ms), while holding.
    head_due_ms: Option<i64>,
    /// Local time of the last resume, epoch ms.
    resumed_at_ms: i64,
    /// An end of partition was seen since the last resume.
    drained: bool,
    /// Local time at which the partition was last known to be at its end.
    drained_at_ms: Option<i64>,
    /// Local time of the last record, EOF or resume.
    last_progress_ms: i64,
    /// Behind its end offset and not moving at the last check.
    stalled: bool,
}

impl Partition {
    fn new(id: Assignment, now_ms: i64) -> Self {
        Self {
            id,
            phase: Phase::Fetching,
            held: VecDeque::new(),
            throttled: false,
            blocked: false,
            paused: false,
            next_offset: None,
            committed: None,
            end: None,
            head_due_ms: None,
            resumed_at_ms: now_ms,
            drained: false,
            drained_at_ms: None,
            last_progress_ms: now_ms,
            stalled: false,
        }
    }

    /// True while new records must queue behind a held head.
    pub fn is_holding(&self) -> bool {
        !matches!(self.phase, Phase::Fetching) || !self.held.is_empty()
    }

    /// Whether the partition was seen drained at or after `at_ms`: a record
    /// released by then that is read now was appended after its release.
    pub fn drained_since(&self, at_ms: i64) -> bool {
        self.drained_at_ms.is_some_and(|d| d >= at_ms)
    }

    /// The next offset this partition will read, if known.
    pub fn position(&self) -> Option<i64> {
        self.next_offset.or(self.committed)
    }

    /// Where a drained partition that goes to sleep stands: one past the
    /// last record read, or — when it read none since its assignment (an
    /// empty partition; librdkafka's end-of-partition event carries no
    /// offset here) — the end offset of a watch sent after it drained. The
    /// watcher wakes a sleeping partition whose end moves past it, so a
    /// partition must not sleep without one.
    fn sleep_position(&self) -> Option<i64> {
        self.next_offset.or_else(|| {
            let (end, issued_at) = self.end?;
            (issued_at >= self.drained_at_ms?).then_some(end)
        })
    }

    fn wants_pause(&self) -> bool {
        !matches!(self.phase, Phase::Fetching) || self.throttled || self.blocked
    }

    /// When the loop must next look at the partition (epoch ms). A fetching
    /// partition with held records is due at once: they were queued while
    /// it slept or held (exactly-once mode hands waiting records back to a
    /// sleeping partition) and nothing else would hand them back.
    fn deadline(&self) -> Option<i64> {
        match self.phase {
            Phase::Fetching if !self.held.is_empty() => Some(0),
            Phase::Fetching => None,
            Phase::Holding { release_ms } => Some(release_ms),
            Phase::Sleeping { until_ms } => Some(until_ms),
        }
    }
}

/// End and committed offsets of some partitions, fetched from the broker
/// by the watcher; `issued_at_ms` is when the request was sent.
#[derive(Debug, Clone, Default)]
pub struct WatchReport {
    pub issued_at_ms: i64,
    /// (partition, end offset)
    pub ends: Vec<(i32, i64)>,
    /// (partition, committed offset)
    pub committed: Vec<(i32, i64)>,
}

/// What a watch report changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WatchOutcome {
    /// Sleeping partitions woken because records were appended.
    pub woken: Vec<i32>,
    /// Fetching partitions behind their end that made no progress: resumed again.
    pub stalled: Vec<i32>,
}

/// A pause or resume for librdkafka, in the order decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseRequest {
    Pause(Vec<i32>),
    Resume(Vec<i32>),
}

/// Hands pause and resume requests to the thread that calls librdkafka:
/// `rd_kafka_pause_partitions` waits for each partition's handler thread
/// to answer, which on a busy client takes milliseconds per partition; the
/// loop must not wait for that. Requests are applied in order.
#[derive(Clone)]
pub struct Pauser {
    requests: Sender<PauseRequest>,
}

impl Pauser {
    /// A pauser and the receiving end for the thread that applies requests.
    pub fn channel() -> (Self, Receiver<PauseRequest>) {
        let (requests, receiver) = mpsc::channel();
        (Self { requests }, receiver)
    }

    fn pause(&self, partitions: Vec<i32>) {
        let _ = self.requests.send(PauseRequest::Pause(partitions));
    }

    fn resume(&self, partitions: Vec<i32>) {
        let _ = self.requests.send(PauseRequest::Resume(partitions));
    }
}

/// Every partition one consumer loop has assigned, by partition number.
pub struct PartitionTable {
    slots: Vec<Option<Partition>>,
    count: usize,
    pauser: Pauser,
}

impl PartitionTable {
    /// An empty table whose pauses go to `pauser`.
    pub fn new(pauser: Pauser) -> Self {
        Self {
            slots: Vec::new(),
            count: 0,
            pauser,
        }
    }

    /// Assigned partitions.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Takes newly assigned partitions: each starts fetching, and all are
    /// resumed explicitly first (a partition that returns to this client
    /// keeps the pause flag it had when it was revoked).
    pub fn assign(&mut self, list: &[(i32, Assignment)], now_ms: i64) {
        for &(p, id) in list {
            let index = p as usize;
            if self.slots.len() <= index {
                self.slots.resize_with(index + 1, || None);
            }
            if self.slots[index].is_none() {
                self.count += 1;
            }
            self.slots[index] = Some(Partition::new(id, now_ms));
        }
        if !list.is_empty() {
            self.pauser.resume(list.iter().map(|(p, _)| *p).collect());
        }
    }

    /// Forgets revoked partitions (their held records were not committed:
    /// the next owner reads them again).
    pub fn revoke(&mut self, partitions: &[i32]) {
        for &p in partitions {
            if let Some(slot) = self.slots.get_mut(p as usize) {
                if slot.take().is_some() {
                    self.count -= 1;
                }
            }
        }
    }

    /// The partition `p`, if assigned.
    pub fn get(&self, p: i32) -> Option<&Partition> {
        self.slots.get(p as usize)?.as_ref()
    }

    /// The partition `p`, if assigned.
    pub fn get_mut(&mut self, p: i32) -> Option<&mut Partition> {
        self.slots.get_mut(p as usize)?.as_mut()
    }

    /// Every assigned partition with its number.
    pub fn iter(&self) -> impl Iterator<Item = (i32, &Partition)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as i32, s.as_ref()?)))
    }

    /// A record at `offset` was read from `p` at `now_ms`.
    pub fn note_record(&mut self, p: i32, offset: i64, now_ms: i64) -> Option<&mut Partition> {
        let part = self.get_mut(p)?;
        part.next_offset = Some(offset + 1);
        part.last_progress_ms = now_ms;
        part.stalled = false;
        Some(part)
    }

    /// librdkafka reported the end of `p` (polled after our last resume of
    /// it, so fresh); `end` is the end offset that fetch response carried,
    /// when known — the position of a partition that read nothing yet.
    pub fn note_eof(&mut self, p: i32, end: Option<i64>, now_ms: i64) {
        if let Some(part) = self.get_mut(p) {
            if part.phase == Phase::Fetching && !part.paused {
                if part.next_offset.is_none() {
                    part.next_offset = end;
                }
                part.drained = true;
                part.drained_at_ms = Some(now_ms);
                part.last_progress_ms = now_ms;
                part.stalled = false;
            }
        }
    }

    /// Holds `msg` (due at `due_ms`) as the head of `p` until `release_ms`:
    /// pauses it.
    pub fn hold(&mut self, p: i32, msg: OwnedMessage, release_ms: i64, due_ms: i64, now_ms: i64) {
        if let Some(part) = self.get_mut(p) {
            tracing::trace!(
                partition = p,
                offset = rdkafka::Message::offset(&msg),
                release_ms,
                "holding"
            );
            part.held.push_front(msg);
            part.phase = Phase::Holding { release_ms };
            part.head_due_ms = Some(due_ms);
        }
        self.sync(p, now_ms);
    }

    /// Queues `msg` behind the held head of `p`.
    pub fn defer(&mut self, p: i32, msg: OwnedMessage) {
        if let Some(part) = self.get_mut(p) {
            part.held.push_back(msg);
        }
    }

    /// A record of `p` was read, or handed back, while it slept: it is not
    /// empty after all (read between the decision to sleep and the pause
    /// taking effect, or queued in exactly-once mode's write order before
    /// it slept). Wakes it and resumes fetching.
    pub fn wake_sleeper(&mut self, p: i32, now_ms: i64) {
        if self
            .get(p)
            .is_some_and(|part| matches!(part.phase, Phase::Sleeping { .. }))
        {
            self.wake(p);
            self.sync(p, now_ms);
        }
    }

    /// Partitions whose hold or sleep ended by `now_ms`, and fetching
    /// partitions with held records.
    pub fn due(&self, now_ms: i64) -> Vec<i32> {
        self.iter()
            .filter(|(_, part)| part.deadline().is_some_and(|d| d <= now_ms))
            .map(|(p, _)| p)
            .collect()
    }

    /// The earliest hold or sleep deadline (epoch ms).
    pub fn next_deadline(&self) -> Option<i64> {
        self.iter().filter_map(|(_, part)| part.deadline()).min()
    }

    /// Ends the hold or sleep of `p` (its held records are the caller's to
    /// handle next, with [`PartitionTable::pop_held`]); resumed by
    /// [`PartitionTable::settle`].
    pub fn wake(&mut self, p: i32) {
        if let Some(part) = self.get_mut(p) {
            tracing::trace!(partition = p, phase = ?part.phase, "wake");
            part.phase = Phase::Fetching;
            part.head_due_ms = None;
        }
    }

    /// The next held record of `p`.
    pub fn pop_held(&mut self, p: i32) -> Option<OwnedMessage> {
        self.get_mut(p)?.held.pop_front()
    }

    /// Brings librdkafka's pause flag of `p` in line with the table.
    pub fn settle(&mut self, p: i32, now_ms: i64) {
        self.sync(p, now_ms);
    }

    fn sync(&mut self, p: i32, now_ms: i64) {
        let Some(part) = self.get_mut(p) else {
            return;
        };
        let pause = part.wants_pause();
        if pause == part.paused {
            return;
        }
        part.paused = pause;
        if !pause {
            part.resumed_at_ms = now_ms;
            part.last_progress_ms = now_ms;
            part.drained = false;
        }
        tracing::trace!(partition = p, pause, "pause flag");
        if pause {
            self.pauser.pause(vec![p]);
        } else {
            self.pauser.resume(vec![p]);
        }
    }

    /// Puts drained partitions to sleep: fetching, nothing held, an end of
    /// partition seen since the last resume, quiet for `grace_ms`, and past
    /// the end of the bucket it released last (a record of that bucket
    /// appended late is then still fetched at once, not found by the watcher
    /// a watch interval later). `turns(p)` is (when `p`'s slot is released
    /// next, when the bucket it released last ends), epoch ms.
    pub fn sleep_drained(&mut self, now_ms: i64, grace_ms: i64, turns: impl Fn(i32) -> (i64, i64)) {
        let sleepy: Vec<(i32, i64)> = self
            .iter()
            .filter(|(_, part)| {
                part.phase == Phase::Fetching
                    && part.held.is_empty()
                    && part.drained
                    && !part.paused
                    && now_ms - part.last_progress_ms >= grace_ms
                    && part.sleep_position().is_some()
            })
            .filter_map(|(p, _)| {
                let (next, awake_until) = turns(p);
                (now_ms >= awake_until).then_some((p, next))
            })
            .collect();
        for (p, next) in sleepy {
            if let Some(part) = self.get_mut(p) {
                part.next_offset = part.sleep_position();
                part.phase = Phase::Sleeping { until_ms: next };
                tracing::debug!(partition = p, position = ?part.next_offset, until = next, "sleeping");
            }
            self.sync(p, now_ms);
        }
    }

    /// Sets the backpressure pause of `p`.
    pub fn set_throttled(&mut self, p: i32, on: bool, now_ms: i64) {
        if let Some(part) = self.get_mut(p) {
            if part.throttled == on {
                return;
            }
            part.throttled = on;
        }
        self.sync(p, now_ms);
    }

    /// Sets the dead-letter pause of `p`.
    pub fn set_blocked(&mut self, p: i32, on: bool, now_ms: i64) {
        if let Some(part) = self.get_mut(p) {
            if part.blocked == on {
                return;
            }
            part.blocked = on;
        }
        self.sync(p, now_ms);
    }

    /// Applies the watcher's fresh end and committed offsets:
    ///
    /// * a sleeping partition whose end moved past its position wakes (a
    ///   record was appended, maybe after its bucket's release);
    /// * a fetching partition at its end since before the request was sent
    ///   counts as drained;
    /// * a fetching partition behind its end that has made no progress for
    ///   `stall_ms` before the request is resumed again and reported.
    pub fn apply_watch(
        &mut self,
        report: &WatchReport,
        now_ms: i64,
        stall_ms: i64,
    ) -> WatchOutcome {
        for &(p, committed) in &report.committed {
            if let Some(part) = self.get_mut(p) {
                part.committed = Some(committed);
            }
        }
        let mut outcome = WatchOutcome::default();
        for &(p, end) in &report.ends {
            let Some(part) = self.get_mut(p) else {
                continue;
            };
            part.end = Some((end, report.issued_at_ms));
            let Some(position) = part.position() else {
                continue;
            };
            match part.phase {
                Phase::Sleeping { .. } if end > position => {
                    tracing::debug!(partition = p, position, end, "woken: records appended");
                    part.phase = Phase::Fetching;
                    outcome.woken.push(p);
                }
                Phase::Fetching if part.paused => {}
                Phase::Fetching if end <= position => {
                    if report.issued_at_ms >= part.resumed_at_ms {
                        part.drained = true;
                        part.drained_at_ms = part.drained_at_ms.max(Some(report.issued_at_ms));
                    }
                    part.stalled = false;
                }
                Phase::Fetching if report.issued_at_ms - part.last_progress_ms >= stall_ms => {
                    part.stalled = true;
                    part.last_progress_ms = now_ms;
                    part.resumed_at_ms = now_ms;
                    part.drained = false;
                    outcome.stalled.push(p);
                }
                _ => {}
            }
        }
        for &p in &outcome.woken {
            self.sync(p, now_ms);
        }
        if !outcome.stalled.is_empty() {
            self.pauser.resume(outcome.stalled.clone());
        }
        outcome
    }

    /// (paused by our decision, stalled) partition counts.
    pub fn counts(&self) -> (usize, usize) {
        self.iter().fold((0, 0), |(paused, stalled), (_, part)| {
            (
                paused + usize::from(!matches!(part.phase, Phase::Fetching)),
                stalled + usize::from(part.stalled),
            )
        })
    }

    /// (throttled, blocked) partition counts.
    pub fn pauses(&self) -> (usize, usize) {
        self.iter().fold((0, 0), |(t, b), (_, part)| {
            (
                t + usize::from(part.throttled),
                b + usize::from(part.blocked),
            )
        })
    }

    /// Whether `p` is paused for backpressure.
    pub fn is_throttled(&self, p: i32) -> bool {
        self.get(p).is_some_and(|part| part.throttled)
    }

    /// True when partitions are assigned and the watcher has read the end
    /// offset of every one (so [`PartitionTable::pending`] counts them all).
    pub fn all_watched(&self) -> bool {
        self.len() > 0 && self.iter().all(|(_, part)| part.end.is_some())
    }

    /// Records not yet committed: end offset minus committed offset, both
    /// as the watcher last read them, over assigned partitions.
    pub fn pending(&self) -> i64 {
        self.iter()
            .filter_map(|(_, part)| {
                Some((part.end?.0 - part.committed.or(part.position())?).max(0))
            })
            .sum()
    }

    /// The earliest due time among held heads (epoch ms).
    pub fn oldest_held_due(&self) -> Option<i64> {
        self.iter().filter_map(|(_, part)| part.head_due_ms).min()
    }
}

#[cfg(test)]
mod tests;
