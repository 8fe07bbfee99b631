//! Wall-clock time, and an estimate of how far this instance's clock is
//! from the broker's.
//!
//! Releases and due times use the local clock (docs/architecture.md, "Invariants"). The offset is
//! estimated from tier writes: tier topics are created with
//! `message.timestamp.type=LogAppendTime`, so the broker stamps each tier
//! record with its own clock and returns the stamp in the produce
//! acknowledgement. The broker stamped the record before we received the
//! acknowledgement, so `ack time (local) − stamp (broker)` is the clock
//! offset plus the acknowledgement's return trip: an upper bound that is
//! tight when the trip is short. The smallest such value over a window
//! (NTP's minimum-delay filter, RFC 5905 §10) is the estimate.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Current wall-clock time, epoch ms.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// 9999-12-31T23:59:59.999Z, epoch ms: the last instant RFC 3339 (and
/// humantime, which panics beyond it) can write.
const LAST_RFC3339_MS: i64 = 253_402_300_799_999;

/// An epoch-ms instant as RFC 3339 in UTC with milliseconds (before 1970:
/// the epoch; after year 9999, which RFC 3339 cannot write: the epoch
/// milliseconds), for messages to people. Never panics: the instant may
/// come from a forged record.
pub fn rfc3339_ms(ms: i64) -> String {
    if ms > LAST_RFC3339_MS {
        return format!("{ms} ms after the epoch (after year 9999)");
    }
    let at = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

const NONE: i64 = i64::MAX;

/// Minimum of `local − broker` over the current and the previous window.
/// Samples come from producer threads; [`OffsetEstimator::rotate`] starts a
/// new window.
#[derive(Debug)]
pub struct OffsetEstimator {
    current: AtomicI64,
    previous: AtomicI64,
}

impl Default for OffsetEstimator {
    fn default() -> Self {
        Self {
            current: AtomicI64::new(NONE),
            previous: AtomicI64::new(NONE),
        }
    }
}

impl OffsetEstimator {
    /// One acknowledgement received at `local_ms` for a record the broker
    /// stamped at `broker_ms` (both epoch ms).
    pub fn sample(&self, local_ms: i64, broker_ms: i64) {
        self.current
            .fetch_min(local_ms.saturating_sub(broker_ms), Ordering::Relaxed);
    }

    /// The estimated offset of the local clock from the broker's, ms
    /// (positive: local clock ahead). None without samples in the last two
    /// windows (no tier writes, or tier topics with `CreateTime` stamps).
    pub fn estimate(&self) -> Option<i64> {
        let best = self
            .current
            .load(Ordering::Relaxed)
            .min(self.previous.load(Ordering::Relaxed));
        (best != NONE).then_some(best)
    }

    /// Ends the current window.
    pub fn rotate(&self) {
        let current = self.current.swap(NONE, Ordering::Relaxed);
        self.previous.store(current, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_instant_formats_without_panicking() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(LAST_RFC3339_MS), "9999-12-31T23:59:59.999Z");
        for ms in [LAST_RFC3339_MS + 1, 300_000_000_000_000, i64::MAX] {
            assert!(rfc3339_ms(ms).contains("after year 9999"), "{ms}");
        }
    }

    #[test]
    fn the_smallest_recent_difference_wins_and_old_windows_expire() {
        let e = OffsetEstimator::default();
        assert_eq!(e.estimate(), None);
        e.sample(1_000, 1_000 - 3_005);
        e.sample(2_000, 2_000 - 3_001);
        e.sample(3_000, 3_000 - 3_020);
        assert_eq!(e.estimate(), Some(3_001));
        e.rotate();
        assert_eq!(e.estimate(), Some(3_001), "previous window still counts");
        e.sample(4_000, 4_000 + 250);
        assert_eq!(e.estimate(), Some(-250));
        e.rotate();
        e.rotate();
        assert_eq!(e.estimate(), None);
    }
}
