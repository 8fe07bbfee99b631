//! Backpressure: memory stays bounded whatever the backlog.
//!
//! Each loop reports what it holds (records read and not yet acknowledged;
//! records and bytes in its due-soon timer) into [`Limits`], shared by all
//! loops of the instance. When the instance is over a cap, or librdkafka's
//! produce queue is full, a loop pauses its source partitions
//! (`throttled`) while it keeps polling, firing timers and handling
//! acknowledgements; it resumes them below [`RESUME_FRACTION`] of every cap
//! (hysteresis, so partitions do not flap). A partition holding more than
//! its own cap of unacknowledged records is paused alone.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Resume once usage is below this fraction of every cap.
pub const RESUME_FRACTION: f64 = 0.8;

/// What one loop holds now.
#[derive(Debug, Default)]
pub struct Usage {
    pub in_flight: AtomicUsize,
    pub in_flight_bytes: AtomicUsize,
    pub timer_records: AtomicUsize,
    pub timer_bytes: AtomicUsize,
}

/// Caps of the instance and the usage of each loop.
#[derive(Debug)]
pub struct Limits {
    /// Records read and not yet acknowledged, all loops.
    pub max_in_flight: usize,
    /// Key and value bytes of the records read and not yet acknowledged,
    /// all loops: bounds what retries, parked, overflow and waiting records
    /// and librdkafka's produce queue hold, whatever the record size.
    pub max_in_flight_bytes: usize,
    /// Records read and not yet acknowledged, one partition.
    pub max_in_flight_per_partition: usize,
    /// Records in the due-soon timers, all loops.
    pub max_timer_records: usize,
    /// Key, value and header bytes in the due-soon timers, all loops.
    pub max_timer_bytes: usize,
    /// What each loop holds now, by loop index.
    pub usage: Vec<Usage>,
}

/// Whether usage is over a cap (pause) or under the resume fraction of
/// every cap (resume); in between, keep what was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    Over,
    Between,
    Under,
}

impl Limits {
    /// Caps as configured, with `loops` usage slots.
    pub fn new(
        (max_in_flight, max_in_flight_bytes): (usize, usize),
        max_in_flight_per_partition: usize,
        max_timer_records: usize,
        max_timer_bytes: usize,
        loops: usize,
    ) -> Self {
        Self {
            max_in_flight,
            max_in_flight_bytes,
            max_in_flight_per_partition,
            max_timer_records,
            max_timer_bytes,
            usage: (0..loops).map(|_| Usage::default()).collect(),
        }
    }

    /// Records loop `index`'s usage: in-flight records and bytes, timer
    /// records and bytes.
    pub fn report(
        &self,
        index: usize,
        (in_flight, in_flight_bytes): (usize, usize),
        timer_records: usize,
        timer_bytes: usize,
    ) {
        let u = &self.usage[index];
        u.in_flight.store(in_flight, Ordering::Relaxed);
        u.in_flight_bytes.store(in_flight_bytes, Ordering::Relaxed);
        u.timer_records.store(timer_records, Ordering::Relaxed);
        u.timer_bytes.store(timer_bytes, Ordering::Relaxed);
    }

    /// The instance's pressure against its caps.
    pub fn pressure(&self) -> Pressure {
        let sum = |f: fn(&Usage) -> &AtomicUsize| {
            self.usage
                .iter()
                .map(|u| f(u).load(Ordering::Relaxed))
                .sum::<usize>()
        };
        let pairs = [
            (sum(|u| &u.in_flight), self.max_in_flight),
            (sum(|u| &u.in_flight_bytes), self.max_in_flight_bytes),
            (sum(|u| &u.timer_records), self.max_timer_records),
            (sum(|u| &u.timer_bytes), self.max_timer_bytes),
        ];
        level(&pairs)
    }

    /// Pressure of one partition holding `in_flight` unacknowledged records.
    pub fn partition_pressure(&self, in_flight: usize) -> Pressure {
        level(&[(in_flight, self.max_in_flight_per_partition)])
    }
}

fn level(pairs: &[(usize, usize)]) -> Pressure {
    if pairs.iter().any(|&(used, cap)| used >= cap) {
        Pressure::Over
    } else if pairs
        .iter()
        .all(|&(used, cap)| (used as f64) < cap as f64 * RESUME_FRACTION)
    {
        Pressure::Under
    } else {
        Pressure::Between
    }
}

/// The throttle decision for a partition that is `throttled` now.
pub fn throttle(throttled: bool, instance: Pressure, partition: Pressure) -> bool {
    match (instance, partition) {
        (Pressure::Over, _) | (_, Pressure::Over) => true,
        (Pressure::Under, Pressure::Under) => false,
        _ => throttled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_pause_and_the_resume_fraction_resumes() {
        let limits = Limits::new((100, 1 << 20), 10, 50, 1_000, 2);
        assert_eq!(limits.pressure(), Pressure::Under);
        limits.report(0, (60, 0), 0, 0);
        limits.report(1, (40, 0), 0, 0);
        assert_eq!(limits.pressure(), Pressure::Over);
        limits.report(1, (25, 0), 0, 0);
        assert_eq!(limits.pressure(), Pressure::Between);
        limits.report(0, (10, 0), 49, 0);
        assert_eq!(limits.pressure(), Pressure::Between, "timer at 98 %");
        limits.report(0, (10, 0), 10, 999);
        assert_eq!(limits.pressure(), Pressure::Between);
        limits.report(0, (10, 0), 10, 1_000);
        assert_eq!(limits.pressure(), Pressure::Over);
        limits.report(0, (10, 0), 10, 10);
        assert_eq!(limits.pressure(), Pressure::Under);
        // Two 900 KB records in flight reach a 1 MiB byte cap.
        limits.report(0, (1, 900_000), 0, 0);
        limits.report(1, (1, 900_000), 0, 0);
        assert_eq!(limits.pressure(), Pressure::Over, "few records, many bytes");
        limits.report(1, (0, 0), 0, 0);
        assert_eq!(limits.pressure(), Pressure::Between);
        limits.report(0, (0, 0), 0, 0);
        assert_eq!(limits.pressure(), Pressure::Under);

        assert!(throttle(false, Pressure::Over, Pressure::Under));
        assert!(throttle(
            false,
            Pressure::Under,
            limits.partition_pressure(10)
        ));
        assert!(
            throttle(true, Pressure::Between, Pressure::Under),
            "hysteresis"
        );
        assert!(!throttle(false, Pressure::Between, Pressure::Under));
        assert!(!throttle(
            true,
            Pressure::Under,
            limits.partition_pressure(7)
        ));
    }
}
