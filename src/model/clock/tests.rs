use super::*;
use proptest::prelude::*;

/// 2026-12-03T00:00:00Z, epoch µs.
const EPOCH_2026_US: i64 = 1_796_256_000_000_000;

/// A broker clock `offset_us` from this host's monotonic clock, running
/// `drift_ppm` faster: its time at monotonic `t_us`, µs.
fn truth_us(offset_us: i64, drift_ppm: i64, t_us: i64) -> i64 {
    offset_us + t_us + (t_us * drift_ppm).div_euclid(1_000_000)
}

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
fn no_time_and_no_error_before_the_first_sample() {
    let clock = BrokerClock::new();
    assert_eq!(clock.now_ms(1_000), None);
    assert_eq!(clock.error_ms(1_000), None);
    clock.sample_ack(1_000_000, 5_000);
    assert_eq!(clock.now_ms(1_000_000), Some(4_999));
    assert_eq!(
        clock.error_ms(1_000_000),
        None,
        "an ack gives no upper bound"
    );
}

#[test]
fn a_probe_bounds_the_error_by_its_round_trip() {
    let clock = BrokerClock::new();
    // Sent at 10 s, acknowledged 4 ms later, stamped 7 s later on the broker.
    let outcome = clock.sample_probe(10_000_000, 10_004_000, 17_002);
    assert_eq!(outcome, ProbeOutcome::Agrees);
    assert_eq!(clock.now_ms(10_004_000), Some(17_001));
    let error = clock.error_ms(10_004_000).unwrap();
    assert!(
        (4..=7).contains(&error),
        "round trip 4 ms, stamp 1 ms: {error}"
    );
    // A minute later without samples: 2ρ of growth (120 ms).
    let error = clock.error_ms(70_004_000).unwrap();
    assert!((124..=127).contains(&error), "{error}");
}

#[test]
fn a_tighter_sample_moves_the_clock_forward_and_a_looser_one_does_not() {
    let clock = BrokerClock::new();
    clock.sample_ack(1_000_000, 9_000);
    let before = clock.now_ms(2_000_000).unwrap();
    clock.sample_ack(1_500_000, 9_400);
    assert_eq!(clock.now_ms(2_000_000), Some(before), "looser: 100 ms less");
    clock.sample_ack(1_500_000, 9_600);
    assert!(clock.now_ms(2_000_000).unwrap() > before);
}

#[test]
fn a_broker_clock_that_steps_back_resets_the_bound_and_says_by_how_much() {
    let clock = BrokerClock::new();
    clock.sample_probe(1_000_000, 1_002_000, 100_000);
    // The broker's clock went back 10 s.
    let outcome = clock.sample_probe(2_000_000, 2_002_000, 91_000);
    let ProbeOutcome::Contradicts(gap) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        (9_990..=10_000).contains(&gap),
        "10 s back, less the round trip: {gap}"
    );
    let now = clock.now_ms(2_002_000).unwrap();
    assert!(now <= 91_002, "{now}");
}

#[test]
fn the_wall_clock_is_not_read_once_sampled() {
    // Through the process clock: a sample 1 h away from the wall clock
    // moves `now` 1 h away from it.
    let clock = BrokerClock::new();
    let t = mono_us();
    let hour_ahead = wall_ms() + 3_600_000;
    clock.sample_ack(t, hour_ahead);
    let now = clock.now_ms(mono_us()).unwrap();
    assert!(
        (hour_ahead - 5..=hour_ahead + 1_000).contains(&now),
        "{now}"
    );
}

#[derive(Debug, Clone)]
struct Sample {
    /// Monotonic µs since the previous sample.
    gap_us: i64,
    /// Round trip, µs.
    rtt_us: i64,
    /// Where in the round trip the broker stamped the record, permille.
    stamped_at: i64,
    /// A probe (both bounds) or a tier write's acknowledgement.
    probe: bool,
}

fn samples() -> impl Strategy<Value = Vec<Sample>> {
    prop::collection::vec(
        (
            0_i64..30_000_000,
            0_i64..500_000,
            0_i64..=1_000,
            any::<bool>(),
        )
            .prop_map(|(gap_us, rtt_us, stamped_at, probe)| Sample {
                gap_us,
                rtt_us,
                stamped_at,
                probe,
            }),
        1..60,
    )
}

proptest! {
    /// Never ahead of the broker, never backwards, and the error covers
    /// the true distance — for any offset (±1 day), any rate difference
    /// within ρ, any round trips.
    #[test]
    fn never_ahead_never_backwards_and_the_error_covers_the_truth(
        offset_ms in -86_400_000_i64..86_400_000,
        drift_ppm in -DRIFT_PPM..=DRIFT_PPM,
        start_us in 0_i64..3_600_000_000,
        samples in samples(),
    ) {
        let offset_us = EPOCH_2026_US + offset_ms * 1_000;
        let clock = BrokerClock::new();
        let mut t = start_us;
        let mut last = i64::MIN;
        for s in &samples {
            t += s.gap_us;
            let sent = t;
            let ack = t + s.rtt_us;
            let stamped = sent + s.rtt_us * s.stamped_at / 1_000;
            let stamp_ms = truth_us(offset_us, drift_ppm, stamped).div_euclid(1_000);
            if s.probe {
                let outcome = clock.sample_probe(sent, ack, stamp_ms);
                prop_assert_eq!(outcome, ProbeOutcome::Agrees);
            } else {
                clock.sample_ack(ack, stamp_ms);
            }
            for probe_at in [ack, ack + s.gap_us / 2] {
                t = probe_at;
                let truth_ms = truth_us(offset_us, drift_ppm, probe_at).div_euclid(1_000);
                let now = clock.now_ms(probe_at).unwrap();
                prop_assert!(now <= truth_ms, "ahead: {} > {}", now, truth_ms);
                prop_assert!(now >= last, "backwards: {} < {}", now, last);
                last = now;
                if let Some(error) = clock.error_ms(probe_at) {
                    prop_assert!(truth_ms - now <= error, "behind {} > error {}", truth_ms - now, error);
                }
            }
        }
    }

    /// With a probe every second whose round trip is under 5 ms, the clock
    /// stays within 10 ms of the broker's, whatever the host's offset.
    #[test]
    fn frequent_short_probes_keep_the_clock_within_milliseconds(
        offset_ms in -86_400_000_i64..86_400_000,
        drift_ppm in -DRIFT_PPM..=DRIFT_PPM,
        rtts in prop::collection::vec(0_i64..5_000, 5..40),
    ) {
        let offset_us = EPOCH_2026_US + offset_ms * 1_000;
        let clock = BrokerClock::new();
        let mut t = 0;
        for rtt in rtts {
            t += 1_000_000;
            let stamp_ms = truth_us(offset_us, drift_ppm, t + rtt / 2).div_euclid(1_000);
            clock.sample_probe(t, t + rtt, stamp_ms);
            t += rtt;
            let truth_ms = truth_us(offset_us, drift_ppm, t).div_euclid(1_000);
            let now = clock.now_ms(t).unwrap();
            prop_assert!(truth_ms - now <= 10, "{} ms behind", truth_ms - now);
            prop_assert!(clock.error_ms(t).unwrap() <= 10);
        }
    }
}
