//! Time: the broker's clock, as this instance knows it.
//!
//! Every decision of the service (release, the due-soon timer, routing,
//! late-append detection, cancellation expiry, checks of tier records)
//! reads [`now_ms`]: the broker's time as a *lower bound*, carried forward
//! on this host's monotonic clock. The host's wall clock ([`wall_ms`]) is
//! read only for people (logs, the raw offset metric) and by clients that
//! have no estimate (the command-line tools).
//!
//! How the bound is built ([`BrokerClock`]). Tier topics and the clock
//! topic stamp records with `LogAppendTime`: the broker writes its own
//! time into each record and returns it in the produce acknowledgement.
//! The broker stamped the record after we sent it and before we received
//! the acknowledgement, so, with `S` the stamp, `s` the send and `a` the
//! acknowledgement on the monotonic clock:
//!
//! * broker time at `t ≥ a` is at least `S + (t − a)·(1 − ρ)`;
//! * broker time at `t ≥ s` is at most `S + 1 ms + (t − s)·(1 + ρ)`;
//!
//! where `ρ` ([`DRIFT_PPM`]) bounds how fast the two clocks' rates may
//! differ. All lower lines share the slope `1 − ρ`, so the best of them is
//! the one with the greatest intercept: one atomic maximum, no window, no
//! lock (the same for the upper lines with a minimum). The bound's error
//! is the gap between the two lines: the round trip of the best probe
//! plus `2ρ` per second since. This is NTP's minimum-delay filter and
//! dispersion growth (RFC 5905 §10 and §11) reduced to the one thing
//! delivery needs: never ahead of the broker.
//!
//! The monotonic clock neither steps nor runs backwards, so a host whose
//! wall clock steps (an hour, by hand or by NTP) does not move this clock
//! at all; a host whose clock rate is off by up to `ρ` stays behind the
//! broker. [`now_ms`] never decreases while the broker's clock does not.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The largest rate difference between this host's monotonic clock and the
/// broker's clock that the bound absorbs, parts per million. Linux slews a
/// clock by at most 500 ppm (`MAXFREQ`, kernel/time/ntp.c); two clocks
/// each slewed the other way differ by up to 1,000 ppm. A bound that lags
/// by 1 ms per second since its best sample costs nothing: samples come
/// every second ([`crate::kafka`] clock probe) and with every tier write.
pub const DRIFT_PPM: i64 = 1_000;

/// Microseconds subtracted from every lower line for integer rounding (two
/// floors of at most 1 µs each).
const ROUNDING_US: i64 = 2;

/// The host's wall clock, epoch ms. Not for decisions: see [`now_ms`].
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The monotonic clock, µs since the first call in this process.
pub fn mono_us() -> i64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_micros() as i64
}

static BROKER: BrokerClock = BrokerClock::new();

/// Set by `wheel.clock = "host"`: decisions read the wall clock.
static HOST_CLOCK: AtomicBool = AtomicBool::new(false);

/// From now on [`now_ms`] reads this host's wall clock, whatever was
/// sampled (`wheel.clock = "host"`, for brokers that cannot stamp
/// `LogAppendTime`).
pub fn use_host_clock() {
    HOST_CLOCK.store(true, Ordering::Relaxed);
}

/// This process's estimate of the broker's clock; samples go here.
pub fn broker() -> &'static BrokerClock {
    &BROKER
}

/// The broker's time now, epoch ms: the one clock every decision reads.
/// Never ahead of the broker's clock (see the module documentation).
/// Before the first sample, the host's wall clock: the service takes a
/// sample before any decision (`kafka-delay run` waits for its first clock
/// probe); the command-line tools, which take none, read the wall clock,
/// as does the service with `wheel.clock = "host"` ([`use_host_clock`]).
pub fn now_ms() -> i64 {
    if HOST_CLOCK.load(Ordering::Relaxed) {
        return wall_ms();
    }
    BROKER.now_ms(mono_us()).unwrap_or_else(wall_ms)
}

const NO_LOWER: i64 = i64::MIN;
const NO_UPPER: i64 = i64::MAX;

/// Lower and upper bounds on the broker's clock as lines over this host's
/// monotonic clock (µs, [`mono_us`]). Written from any thread.
#[derive(Debug)]
pub struct BrokerClock {
    /// Greatest intercept of the lower lines, µs: broker time ≥
    /// `slow(t) + lower`.
    lower: AtomicI64,
    /// Least intercept of the upper lines, µs: broker time ≤
    /// `fast(t) + upper`.
    upper: AtomicI64,
}

impl Default for BrokerClock {
    fn default() -> Self {
        Self::new()
    }
}

/// `t·(1 − ρ)`, within 1 µs; never decreasing.
fn slow(t_us: i64) -> i64 {
    t_us - (t_us * DRIFT_PPM).div_euclid(1_000_000)
}

/// `t·(1 + ρ)`, within 1 µs.
fn fast(t_us: i64) -> i64 {
    t_us + (t_us * DRIFT_PPM).div_euclid(1_000_000)
}

/// What a clock probe's acknowledgement did to the estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Consistent with every sample so far.
    Agrees,
    /// The probe's upper bound is below the current lower bound by this
    /// many ms: the broker's clock stepped back, or the rates differed by
    /// more than [`DRIFT_PPM`]. The lower bound was reset to the probe's:
    /// the clock moved back (records wait longer, none is early).
    Contradicts(i64),
}

impl BrokerClock {
    /// No sample yet.
    pub const fn new() -> Self {
        Self {
            lower: AtomicI64::new(NO_LOWER),
            upper: AtomicI64::new(NO_UPPER),
        }
    }

    /// An acknowledgement received at `ack_us` (monotonic) for a record the
    /// broker stamped `broker_ms` (epoch ms, `LogAppendTime`).
    pub fn sample_ack(&self, ack_us: i64, broker_ms: i64) {
        let line = broker_ms.saturating_mul(1_000) - slow(ack_us) - ROUNDING_US;
        self.lower.fetch_max(line, Ordering::Relaxed);
    }

    /// A clock probe sent at `sent_us` and acknowledged at `ack_us`
    /// (monotonic), stamped `broker_ms` by the broker: both bounds.
    pub fn sample_probe(&self, sent_us: i64, ack_us: i64, broker_ms: i64) -> ProbeOutcome {
        let stamp_us = broker_ms.saturating_mul(1_000);
        let up = stamp_us + 1_000 - fast(sent_us) + ROUNDING_US;
        let low = stamp_us - slow(ack_us) - ROUNDING_US;
        let current = self.lower.load(Ordering::Relaxed);
        let gap_us = match current {
            NO_LOWER => 0,
            _ => (slow(ack_us) + current) - (fast(ack_us) + up),
        };
        if gap_us > 0 {
            // Every earlier line is suspect: start again from this probe.
            self.lower.store(low, Ordering::Relaxed);
            self.upper.store(up, Ordering::Relaxed);
            return ProbeOutcome::Contradicts(gap_us.div_euclid(1_000) + 1);
        }
        self.lower.fetch_max(low, Ordering::Relaxed);
        self.upper.fetch_min(up, Ordering::Relaxed);
        ProbeOutcome::Agrees
    }

    /// The broker's time at `t_us` (monotonic), epoch ms, at most the true
    /// time. None before the first sample.
    pub fn now_ms(&self, t_us: i64) -> Option<i64> {
        let lower = self.lower.load(Ordering::Relaxed);
        (lower != NO_LOWER).then(|| (slow(t_us) + lower).div_euclid(1_000))
    }

    /// How far the broker's time may be ahead of [`Self::now_ms`] at `t_us`,
    /// ms: the estimate's error. None before the first probe.
    pub fn error_ms(&self, t_us: i64) -> Option<i64> {
        let lower = self.lower.load(Ordering::Relaxed);
        let upper = self.upper.load(Ordering::Relaxed);
        (lower != NO_LOWER && upper != NO_UPPER)
            .then(|| (fast(t_us) + upper - (slow(t_us) + lower)).div_euclid(1_000) + 1)
    }
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

#[cfg(test)]
mod tests;
