//! Unit and property tests of the tier table and routing (docs/architecture.md, "The wheel").

use super::*;
use proptest::prelude::*;

const SEC: i64 = 1_000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

fn default_table() -> TierTable {
    TierTable::derive(&[SEC, MIN, HOUR, DAY], 32, 200, 365 * DAY, 0).unwrap()
}

#[test]
fn default_derivation_matches_the_design() {
    let table = default_table();
    let slots: Vec<i64> = table.tiers().iter().map(|t| t.slots).collect();
    let leads: Vec<i64> = table.tiers().iter().map(|t| t.lead_ms).collect();
    assert_eq!(slots, vec![64, 64, 28, 32]);
    assert_eq!(leads, vec![200, 2 * SEC, 2 * MIN, 2 * HOUR]);
    assert_eq!(table.due_soon_window_ms(), 2_200);
}

#[test]
fn rejects_tables_that_cannot_keep_order() {
    assert_eq!(
        TierTable::derive(&[], 32, 200, DAY, 0),
        Err(WheelError::NoTicks)
    );
    assert!(matches!(
        TierTable::derive(&[SEC, 2 * SEC], 32, 200, DAY, 0),
        Err(WheelError::TicksTooClose { index: 1, .. })
    ));
    assert!(matches!(
        TierTable::derive(&[0], 32, 200, DAY, 0),
        Err(WheelError::TickTooSmall { index: 0, .. })
    ));
    assert_eq!(
        TierTable::derive(&[SEC], 2, 200, DAY, 0),
        Err(WheelError::TooFewTopSlots(2))
    );
    assert!(matches!(
        TierTable::derive(&[1, DAY], 32, 200, DAY, 0),
        Err(WheelError::TooManySlots { index: 0, .. })
    ));
    assert!(matches!(
        TierTable::derive(&[10], 3, 200, DAY, 0),
        Err(WheelError::TopTooShort { .. })
    ));
    assert_eq!(
        TierTable::derive(&[SEC], 32, 200, 0, 0),
        Err(WheelError::BadMaxDelay(0))
    );
}

#[test]
fn routes_by_distance() {
    let table = default_table();
    let now = 1_700_000_000_000;
    assert_eq!(table.route(now, now - 5), Route::Deliver);
    assert_eq!(table.route(now, now), Route::Deliver);
    assert_eq!(table.route(now, now + 2_199), Route::Timer);
    assert!(matches!(
        table.route(now, now + 10 * SEC),
        Route::Tier { tier: 0, .. }
    ));
    assert!(matches!(
        table.route(now, now + 10 * MIN),
        Route::Tier { tier: 1, .. }
    ));
    assert!(matches!(
        table.route(now, now + 10 * HOUR),
        Route::Tier { tier: 2, .. }
    ));
    assert!(matches!(
        table.route(now, now + 10 * DAY),
        Route::Tier {
            tier: 3,
            rollover: false,
            ..
        }
    ));
    assert!(matches!(
        table.route(now, now + 100 * DAY),
        Route::Tier {
            tier: 3,
            rollover: true,
            ..
        }
    ));
}

#[test]
fn key_lane_is_stable_and_in_range() {
    assert_eq!(key_lane(Some(b"order-7"), 1, 3), 0);
    let lane = key_lane(Some(b"order-7"), 8, 3);
    assert!(lane < 8);
    assert_eq!(lane, key_lane(Some(b"order-7"), 8, 99));
    assert_eq!(key_lane(None, 4, 6), 2);
}

/// A random, valid tier table: 1–4 tiers, millisecond to day ticks.
fn table_strategy() -> impl Strategy<Value = TierTable> {
    (
        1_i64..=2_000,
        proptest::collection::vec(21_i64..=600, 0..=3),
        3_i64..=48,
        0_i64..=500,
    )
        .prop_map(|(t0, ratios, top_slots, lead0)| {
            // ratio / 10 > 2: each tick more than twice the one below.
            let mut ticks = vec![t0];
            for r in ratios {
                let below = *ticks.last().unwrap();
                ticks.push(below * r / 10 + 1);
            }
            TierTable::derive(&ticks, top_slots, lead0, i64::MAX / 4, 0)
        })
        .prop_filter_map("top tier shorter than its lead", Result::ok)
}

/// Follows one record through the wheel, as the service does: route, wait
/// for the bucket's release, route again. Returns (delivered at, writes,
/// rollovers) and checks every hop on the way.
fn simulate(table: &TierTable, start: i64, due: i64) -> (i64, usize, usize) {
    let mut now = start;
    let mut writes = 0;
    let mut rollovers = 0;
    let mut last_tier = usize::MAX;
    loop {
        match table.route(now, due) {
            Route::Deliver => return (now, writes, rollovers),
            Route::Timer => return (due.max(now), writes, rollovers),
            Route::Tier {
                tier,
                bucket,
                rollover,
            } => {
                let release = table.release_time(tier, bucket);
                assert!(release > now, "release {release} not after now {now}");
                if rollover {
                    rollovers += 1;
                } else {
                    let tick = table.tiers()[tier].tick_ms;
                    assert!(bucket * tick <= due && due < (bucket + 1) * tick);
                    assert!(
                        last_tier == usize::MAX
                            || tier < last_tier
                            || tier == table.tiers().len() - 1,
                        "re-routing went from tier {last_tier} to {tier}"
                    );
                }
                last_tier = tier;
                writes += 1;
                now = release;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn routed_bucket_holds_due_and_releases_in_the_future(
        table in table_strategy(),
        now in 0_i64..4_000_000_000_000,
        ahead in 0_i64..1_000_000_000,
    ) {
        let due = now + ahead;
        if let Route::Tier { tier, bucket, rollover } = table.route(now, due) {
            let t = &table.tiers()[tier];
            if !rollover {
                prop_assert!(bucket * t.tick_ms <= due && due < (bucket + 1) * t.tick_ms);
            }
            // Strictly ahead of now by more than one tick of the tier below.
            let margin = match (rollover, tier) {
                (true, _) => 0,
                (false, 0) => t.tick_ms,
                (false, _) => table.tiers()[tier - 1].tick_ms,
            };
            prop_assert!(table.release_time(tier, bucket) > now + margin);
            // Never the bucket draining now, nor a bucket of the slot's previous turn.
            prop_assert!(bucket > now.div_euclid(t.tick_ms));
            prop_assert!(bucket - now.div_euclid(t.tick_ms) < t.slots);
        }
    }

    #[test]
    fn never_early_and_at_most_one_hop_per_tier(
        table in table_strategy(),
        now in 0_i64..4_000_000_000_000,
        ahead in 0_i64..2_000_000_000,
    ) {
        let due = now + ahead;
        let (delivered, writes, rollovers) = simulate(&table, now, due);
        prop_assert!(delivered >= due, "delivered {delivered} before due {due}");
        prop_assert!(delivered == due.max(now), "late in a lossless simulation");
        prop_assert!(writes <= table.tiers().len() + 1 + rollovers);
        let top = table.tiers().last().unwrap();
        if ahead < top.horizon_ms() - top.tick_ms {
            prop_assert_eq!(rollovers, 0);
        }
    }

    #[test]
    fn no_bucket_waits_behind_a_later_turn_of_its_slot(
        table in table_strategy(),
        now1 in 0_i64..4_000_000_000_000,
        ahead1 in 0_i64..2_000_000_000,
        gap in 0_i64..2_000_000_000,
        ahead2 in 0_i64..2_000_000_000,
    ) {
        let now2 = now1 + gap;
        let (r1, r2) = (table.route(now1, now1 + ahead1), table.route(now2, now2 + ahead2));
        if let (
            Route::Tier { tier: t1, bucket: b1, .. },
            Route::Tier { tier: t2, bucket: b2, .. },
        ) = (r1, r2) {
            let same_slot = t1 == t2 && table.slot(t1, b1) == table.slot(t2, b2);
            // Appended before the first record's bucket was released: it must
            // not belong to an earlier bucket of the same slot.
            if same_slot && now2 < table.release_time(t1, b1) {
                prop_assert!(b2 >= b1, "bucket {b2} appended behind {b1}");
            }
        }
    }

    #[test]
    fn next_turn_release_is_the_first_future_turn(
        table in table_strategy(),
        now in 0_i64..4_000_000_000_000,
        tier_pick in 0_usize..4,
        slot_pick in 0_i64..10_000,
    ) {
        let tier = tier_pick % table.tiers().len();
        let t = &table.tiers()[tier];
        let slot = slot_pick % t.slots;
        let next = table.next_turn_release(tier, slot, now);
        prop_assert!(next > now);
        let bucket = (next + t.lead_ms) / t.tick_ms;
        prop_assert_eq!(table.slot(tier, bucket), slot);
        prop_assert!(table.release_time(tier, bucket - t.slots) <= now);
    }

    #[test]
    fn skewed_clocks_within_bound_never_append_late(
        now in 0_i64..4_000_000_000_000,
        ahead in 0_i64..400 * DAY,
        skew in -700_i64..=700,
        latency in 0_i64..=200,
    ) {
        // Default table: a router whose clock differs from the drainer's by
        // up to 700 ms, plus 200 ms produce latency, appends in time.
        let table = default_table();
        if let Route::Tier { tier, bucket, .. } = table.route(now + skew, now + ahead) {
            prop_assert!(now + latency < table.release_time(tier, bucket));
        }
    }

    #[test]
    fn partitions_map_back_to_their_slot(
        table in table_strategy(),
        spread in any::<bool>(),
        bucket in 0_i64..1_000_000_000,
        lane in 0_u32..8,
    ) {
        let order = if spread { SlotOrder::Spread } else { SlotOrder::Sequential };
        let table = table.with_slot_order(order);
        for tier in 0..table.tiers().len() {
            let slot = table.slot(tier, bucket);
            let p = table.partition(tier, slot, lane);
            let slots = table.tiers()[tier].slots;
            prop_assert!(i64::from(p) >= i64::from(lane) * slots);
            prop_assert!(i64::from(p) < i64::from(lane + 1) * slots);
            prop_assert_eq!(table.slot_of_partition(tier, p), slot);
        }
    }
}

/// The spread order is a permutation of each tier's slots that keeps slot
/// 0 on partition 0 (a tier's first partition). For an even slot count,
/// every window of ten consecutive slots has exactly 5 in each half of the
/// tier (the two contiguous ranges librdkafka's assignor gives two
/// instances), 4 to 6 on even partitions (a round-robin assignment), and at
/// most 4 in any quarter; for an odd count, 4 to 6 in each half. The
/// sequential order gives one half all ten.
#[test]
fn the_spread_order_shares_every_window_of_ten_slots() {
    for slots in 3..=600_i64 {
        let table = TierTable::derive(&[SEC], slots, 200, DAY, 0)
            .unwrap()
            .with_slot_order(SlotOrder::Spread);
        let place: Vec<i64> = (0..slots)
            .map(|s| i64::from(table.partition(0, s, 0)))
            .collect();
        assert_eq!(place[0], 0);
        for (s, &p) in place.iter().enumerate() {
            assert_eq!(table.slot_of_partition(0, p as i32), s as i64, "{slots}");
        }
        let mut sorted = place.clone();
        sorted.sort_unstable();
        assert!(
            sorted.iter().copied().eq(0..slots),
            "{slots}: not a permutation"
        );
        if slots < 20 {
            continue;
        }
        let count = |start: i64, inside: &dyn Fn(i64) -> bool| {
            (start..start + 10)
                .filter(|s| inside(place[s.rem_euclid(slots) as usize]))
                .count()
        };
        for start in 0..slots {
            for half in [slots / 2, (slots + 1) / 2] {
                let low = count(start, &|p| p < half);
                let even = slots % 2 == 0;
                let bound = if even { 5..=5 } else { 4..=6 };
                assert!(
                    bound.contains(&low),
                    "{slots} slots from {start}: {low} of 10"
                );
            }
            if slots % 2 == 0 {
                let even = count(start, &|p| p % 2 == 0);
                assert!((4..=6).contains(&even), "{slots} from {start}: {even} even");
                for q in 0..4 {
                    let quarter = count(start, &|p| p * 4 / slots == q);
                    assert!(
                        quarter <= 4,
                        "{slots} from {start}: {quarter} in quarter {q}"
                    );
                }
            }
        }
    }
    let table = default_table().with_slot_order(SlotOrder::Spread);
    assert_eq!(table.partition(0, 1, 0), 32, "slot 1: the upper half");
    assert_eq!(
        table.partition(0, 2, 0),
        19,
        "slot 2: 0.62 into the lower half"
    );
    assert_eq!(table.partition(0, 3, 0), 32 + 19);
    assert_eq!(table.partition(0, 3, 1), 32 + 19 + 64);
    assert_eq!(default_table().partition(0, 5, 0), 5);
}

proptest! {
    /// A writer whose clock is up to `skew` behind may append a record to a
    /// bucket that the owner already released; the slot margin guarantees
    /// that, by then, no writer can have routed a record into that slot's
    /// next turn, so the late record never waits behind a held head.
    #[test]
    fn late_appends_within_the_skew_bound_never_land_behind_a_later_turn(
        t0 in 10_i64..=2_000,
        ratio in 21_i64..=200,
        skew in 0_i64..=5_000,
        lag_permille in 0_i64..=1_000,
        now in 1_600_000_000_000_i64..1_700_000_000_000,
        ahead in 0_i64..=200_000,
    ) {
        let ticks = [t0, t0 * ratio / 10];
        let table = match TierTable::derive(&ticks, 8, 200, i64::MAX / 4, skew) {
            Ok(table) => table,
            // Refused: the top tier cannot hold the margin this skew needs.
            Err(WheelError::SkewTooLarge { .. }) => return Ok(()),
            Err(other) => panic!("{other}"),
        };
        let lag = skew * lag_permille / 1_000;
        let writer = now - lag;
        let due = writer + ahead;
        let Route::Tier { tier, bucket, .. } = table.route(writer, due) else {
            return Ok(());
        };
        let t = &table.tiers()[tier];
        // The record reaches the broker up to PRODUCE_LATENCY_MS later.
        let appended = now + PRODUCE_LATENCY_MS;
        if table.release_time(tier, bucket) > appended {
            return Ok(()); // not a late append
        }
        // The most advanced writer at that moment: the next turn of the slot
        // must be out of its reach.
        let next_turn_due = (bucket + t.slots) * t.tick_ms;
        let route = table.route(appended, next_turn_due);
        prop_assert!(
            route != Route::Tier { tier, bucket: bucket + t.slots, rollover: false },
            "{table:?}: bucket {bucket} appended late at {appended} while its next turn is routable"
        );
    }
}

#[test]
fn a_skew_the_top_tier_cannot_absorb_is_refused_naming_the_fix() {
    // The case proptest found: top tick 193 ms, 8 slots, 1622 ms of skew
    // needs 9 free slots.
    let error = TierTable::derive(&[15, 193], 8, 200, i64::MAX / 4, 1_622).unwrap_err();
    assert!(
        matches!(
            error,
            WheelError::SkewTooLarge {
                margin: 9,
                slots: 8,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("raise wheel.top_slots to at least 12"),
        "{error}"
    );
}

#[test]
fn the_default_table_keeps_its_slots_with_a_500ms_skew_margin() {
    let table = TierTable::derive(&[SEC, MIN, HOUR, DAY], 32, 200, 365 * DAY, 500).unwrap();
    let slots: Vec<i64> = table.tiers().iter().map(|t| t.slots).collect();
    assert_eq!(slots, vec![64, 64, 28, 32]);
    assert!(table.tiers().iter().all(|t| t.margin == 0));
    let wide = TierTable::derive(&[250, 20 * SEC], 3, 200, DAY, 3_500).unwrap();
    assert_eq!(wide.tiers()[0].margin, 13);
    assert_eq!(wide.tiers()[0].reach(), 84);
}
