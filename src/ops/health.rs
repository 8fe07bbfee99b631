//! Liveness and readiness, for `/healthz` and `/readyz` (Kubernetes probes).
//!
//! * **Live** while every consumer loop turned within [`LOOP_STALL_MS`].
//! * **Ready** once every loop reconciled its first assignment (possibly
//!   empty), while the broker answered within [`BROKER_SILENCE_MS`], no
//!   loop has been out of its consumer group for longer than
//!   [`MEMBERSHIP_LOSS_MS`], and no partition is blocked by a refusing
//!   dead-letter topic.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

/// A loop iteration older than this fails liveness, ms.
pub const LOOP_STALL_MS: i64 = 30_000;
/// No successful broker round trip for this long fails readiness, ms.
pub const BROKER_SILENCE_MS: i64 = 15_000;
/// Out of the consumer group this long fails readiness, ms.
pub const MEMBERSHIP_LOSS_MS: i64 = 15_000;

/// One consumer loop's health.
#[derive(Debug, Default)]
pub struct LoopHealth {
    /// Epoch ms of the last completed loop iteration (0: not started).
    pub last_turn_ms: AtomicI64,
    /// The first assignment was reconciled (partitions resumed, state derived).
    pub reconciled: AtomicBool,
    /// Epoch ms since which the loop is out of its group (0: a member).
    pub lost_since_ms: AtomicI64,
    /// Epoch ms of the last successful broker round trip.
    pub broker_ok_ms: AtomicI64,
    /// Partitions stopped because the dead-letter topic refuses their records.
    pub blocked: AtomicUsize,
    /// Partitions assigned.
    pub assigned: AtomicUsize,
}

/// Health of the whole instance: one [`LoopHealth`] per consumer loop.
#[derive(Debug, Default)]
pub struct Health {
    /// (loop name, its health), one per consumer loop, in service order.
    pub loops: Vec<(String, LoopHealth)>,
    /// The cancel topic's reader ([`crate::engine::cancellations::CancelReader`]).
    pub cancel_reader: CancelReaderHealth,
}

/// What the cancel topic's reader reports: the instance is not ready
/// before every cancellation on record is loaded, nor while the topic is
/// missing or unreadable (a cancellation written then would be missed).
#[derive(Debug, Default)]
pub struct CancelReaderHealth {
    /// Every partition was read to the end it had at start.
    pub loaded: AtomicBool,
    /// Why the topic cannot be read now (empty: it can).
    pub problem: std::sync::Mutex<String>,
}

impl CancelReaderHealth {
    /// Records a problem reading the cancel topic (`None`: it reads again).
    pub fn set_problem(&self, problem: Option<String>) {
        *self
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = problem.unwrap_or_default();
    }

    /// Ok when loaded and readable; otherwise why not.
    pub fn check(&self) -> Result<(), String> {
        if !self.loaded.load(Ordering::Relaxed) {
            return Err("cancel topic: still loading the cancellations on record".into());
        }
        let problem = self
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if problem.is_empty() {
            Ok(())
        } else {
            Err(format!("cancel topic: {problem}"))
        }
    }
}

impl Health {
    /// Health for loops named `names` (ingress, then tiers).
    pub fn new(names: &[String]) -> Self {
        Self {
            loops: names
                .iter()
                .map(|n| (n.clone(), LoopHealth::default()))
                .collect(),
            cancel_reader: CancelReaderHealth::default(),
        }
    }

    /// Ok, or why the instance is not alive.
    pub fn live(&self, now_ms: i64) -> Result<(), String> {
        for (name, h) in &self.loops {
            let last = h.last_turn_ms.load(Ordering::Relaxed);
            if last != 0 && now_ms - last > LOOP_STALL_MS {
                return Err(format!(
                    "{name} loop has not turned for {} ms",
                    now_ms - last
                ));
            }
        }
        Ok(())
    }

    /// Ok with a summary, or why the instance is not ready.
    pub fn ready(&self, now_ms: i64) -> Result<String, String> {
        let mut assigned = 0;
        for (name, h) in &self.loops {
            if !h.reconciled.load(Ordering::Relaxed) {
                return Err(format!("{name}: not yet in its consumer group"));
            }
            let lost = h.lost_since_ms.load(Ordering::Relaxed);
            if lost != 0 && now_ms - lost > MEMBERSHIP_LOSS_MS {
                return Err(format!(
                    "{name}: out of its consumer group for {} ms",
                    now_ms - lost
                ));
            }
            let ok = h.broker_ok_ms.load(Ordering::Relaxed);
            if now_ms - ok > BROKER_SILENCE_MS {
                return Err(format!(
                    "{name}: no answer from the brokers for {} ms",
                    now_ms - ok
                ));
            }
            let blocked = h.blocked.load(Ordering::Relaxed);
            if blocked > 0 {
                return Err(format!(
                    "{name}: {blocked} partitions stopped: the dead-letter topic refuses records"
                ));
            }
            assigned += h.assigned.load(Ordering::Relaxed);
        }
        self.cancel_reader.check()?;
        Ok(format!("ready: {assigned} partitions assigned"))
    }

    /// True once every loop reconciled its first assignment.
    pub fn joined(&self) -> bool {
        self.loops
            .iter()
            .all(|(_, h)| h.reconciled.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_loop_joined_a_broker_and_no_blocked_partition() {
        let h = Health::new(&["ingress".into(), "1s".into()]);
        let now = 1_000_000;
        assert!(h.ready(now).unwrap_err().contains("not yet"));
        h.cancel_reader.loaded.store(true, Ordering::Relaxed);
        for (_, l) in &h.loops {
            l.reconciled.store(true, Ordering::Relaxed);
            l.broker_ok_ms.store(now - 1_000, Ordering::Relaxed);
        }
        assert!(h.ready(now).is_ok());
        h.loops[1]
            .1
            .broker_ok_ms
            .store(now - 20_000, Ordering::Relaxed);
        assert!(h.ready(now).unwrap_err().contains("no answer"));
        h.loops[1].1.broker_ok_ms.store(now, Ordering::Relaxed);
        h.loops[0]
            .1
            .lost_since_ms
            .store(now - 16_000, Ordering::Relaxed);
        assert!(h
            .ready(now)
            .unwrap_err()
            .contains("out of its consumer group"));
        h.loops[0].1.lost_since_ms.store(0, Ordering::Relaxed);
        h.loops[0].1.blocked.store(2, Ordering::Relaxed);
        assert!(h.ready(now).unwrap_err().contains("dead-letter"));
        h.loops[0].1.blocked.store(0, Ordering::Relaxed);
        h.cancel_reader
            .set_problem(Some("Broker: Unknown topic or partition".into()));
        assert!(h.ready(now).unwrap_err().contains("cancel topic"));
        h.cancel_reader.set_problem(None);
        assert!(h.ready(now).is_ok());
        h.cancel_reader.loaded.store(false, Ordering::Relaxed);
        assert!(h.ready(now).unwrap_err().contains("loading"));
    }

    #[test]
    fn liveness_fails_when_a_loop_stops_turning() {
        let h = Health::new(&["ingress".into()]);
        assert!(h.live(50_000).is_ok(), "not started yet");
        h.loops[0].1.last_turn_ms.store(10_000, Ordering::Relaxed);
        assert!(h.live(30_000).is_ok());
        assert!(h.live(50_000).is_err());
    }
}
