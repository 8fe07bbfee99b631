//! The hierarchical timing wheel: tier table, routing and release times.
//!
//! Pure functions of `now`, `due` and the tier table; no I/O. All times are
//! Unix epoch milliseconds (`i64`), all durations milliseconds.
//!
//! The design follows Varghese & Lauck, "Hashed and hierarchical timing
//! wheels" (1987), as used by Kafka's own request purgatory, with Kafka
//! partitions as the wheel's buckets (see docs/architecture.md, "The wheel"):
//!
//! * tier `L` has a tick `tick_L`; bucket `b = floor(due / tick_L)` lives in
//!   slot `b mod slots_L`; a slot is `K` strided partitions, and with the
//!   spread slot order ([`SlotOrder`]) consecutive slots sit on partitions
//!   far apart, so that any assignment of partition ranges shares a short
//!   window of due times between instances;
//! * a bucket is *released* (moved down) at `b·tick_L − lead_L`;
//! * `lead_0` is configured (default 200 ms), `lead_L = 2·tick_(L−1)`;
//! * `slots_L = ceil((tick_(L+1) + lead_(L+1)) / tick_L) + 2 + margin_L`
//!   below the top tier, the top tier's slot count is configured;
//! * records are routed into a tier only `slots_L − margin_L` buckets ahead,
//!   with `margin_L = max(0, ceil((skew + 200 ms − lead_L) / tick_L) − 1)`:
//!   a record that a writer whose clock is up to `skew` behind (plus 200 ms
//!   of produce latency) appends to a bucket already released can never land
//!   behind the head of that slot's next turn, so the owner finds it within
//!   a watch interval. The margin is 0 with the default ticks and a 500 ms
//!   skew: the default table stays 64 / 64 / 28 / 32;
//! * records due within the due-soon window `2·tick_0 + lead_0` stay in memory.
//!
//! With that derivation a routed bucket's release time is always more than one
//! tick of the tier below in the future, so inside a slot partition buckets
//! only grow in append order and a partition can be paused until its head's
//! release time. The invariants are checked by the property tests below.

use thiserror::Error;

/// Ticks, slot counts and lead times of every tier, derived from the
/// configured ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierTable {
    tiers: Vec<Tier>,
    lead0_ms: i64,
    max_delay_ms: i64,
}

/// How a tier's slots map onto its partitions (`wheel.slot_order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotOrder {
    /// Slot `s` on partition `s` (lane 0): consecutive slots — consecutive
    /// buckets of due times — on consecutive partitions. An assignment of
    /// contiguous partition ranges hands a short window of due times mostly
    /// to one instance. The layout of tier topics named `<prefix><tick>`
    /// and `<prefix><tick>.p<N>`.
    Sequential,
    /// Consecutive slots alternate between the lower and the upper half of
    /// the tier's partitions (even slots below, odd above), and within a
    /// half they jump ~0.62 of it ([`spread_step`]): two instances holding
    /// a contiguous half each — what librdkafka's cooperative-sticky
    /// assignor hands them — share every window of due times evenly
    /// (5 of any 10 consecutive slots each, for an even slot count), and
    /// three or four holding ranges, or a round-robin assignment, hold at
    /// most 6 of 10 ([`SlotMap`]). Slot 0 stays on partition 0. The layout of tier
    /// topics named `<prefix><tick>.s<N>`.
    #[default]
    Spread,
}

/// One tier of the wheel: one Kafka topic of `slots × partitions_per_slot`
/// partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Bucket width in ms.
    pub tick_ms: i64,
    /// Number of slots (distinct buckets held at once).
    pub slots: i64,
    /// How long before its start a bucket is released, in ms.
    pub lead_ms: i64,
    /// Slots kept free for clock skew: records are routed at most
    /// `slots − margin` buckets ahead.
    pub margin: i64,
    /// How the slots lie on the partitions ([`SlotOrder`]).
    pub slot_map: SlotMap,
}

/// Where each slot of a tier lies among its first `slots` partitions
/// ([`SlotOrder`]), precomputed: [`TierTable::partition`] and
/// [`TierTable::slot_of_partition`] are two multiplications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotMap {
    /// Slot `s` on partition `s`.
    Sequential,
    /// Even slots in the lower `lower` partitions, odd ones in the rest;
    /// slot `s` is the `s/2`-th of its half, placed at `(s/2)·m mod size`
    /// of that half (`m` and `m⁻¹` per half, [`spread_step`]).
    Spread {
        /// Partitions of the lower half: `ceil(slots / 2)`.
        lower: i64,
        /// (m, m⁻¹) of the lower half.
        lower_step: (i64, i64),
        /// (m, m⁻¹) of the upper half.
        upper_step: (i64, i64),
    },
}

impl SlotMap {
    /// The map of `order` for a tier of `slots` slots.
    pub fn new(order: SlotOrder, slots: i64) -> Self {
        match order {
            SlotOrder::Sequential => Self::Sequential,
            SlotOrder::Spread => {
                let lower = (slots + 1) / 2;
                Self::Spread {
                    lower,
                    lower_step: spread_step(lower),
                    upper_step: spread_step(slots - lower),
                }
            }
        }
    }

    /// The index among the first `slots` partitions of `slot`.
    fn place(&self, slot: i64, slots: i64) -> i64 {
        match *self {
            Self::Sequential => slot,
            Self::Spread {
                lower,
                lower_step,
                upper_step,
            } => {
                let index = slot / 2;
                if slot % 2 == 0 {
                    (index * lower_step.0).rem_euclid(lower)
                } else {
                    lower + (index * upper_step.0).rem_euclid(slots - lower)
                }
            }
        }
    }

    /// The slot placed at index `place` ([`SlotMap::place`]'s inverse).
    fn slot_at(&self, place: i64, slots: i64) -> i64 {
        match *self {
            Self::Sequential => place,
            Self::Spread {
                lower,
                lower_step,
                upper_step,
            } => {
                if place < lower {
                    2 * (place * lower_step.1).rem_euclid(lower)
                } else {
                    2 * ((place - lower) * upper_step.1).rem_euclid(slots - lower) + 1
                }
            }
        }
    }
}

/// A multiplier `m` for `size` places and its inverse mod `size`: of the
/// numbers coprime with `size` (odd ones when `size` is even, so that
/// consecutive indices alternate between even and odd places), the one
/// nearest `size·(√5 − 1)/2` (golden-ratio hashing, Knuth, TAOCP vol. 3,
/// §6.4): consecutive indices jump ~0.62 of the range.
pub fn spread_step(size: i64) -> (i64, i64) {
    if size <= 2 {
        return (1, 1);
    }
    let target = (size as f64 * (5_f64.sqrt() - 1.0) / 2.0).round() as i64;
    let step = (0..size)
        .flat_map(|d| [target - d, target + d])
        .find(|&m| m > 0 && m < size && gcd(m, size) == 1 && (size % 2 == 1 || m % 2 == 1))
        .unwrap_or(1);
    let inverse = (1..size)
        .find(|&k| (step * k).rem_euclid(size) == 1)
        .unwrap_or(1);
    (step, inverse)
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

impl Tier {
    /// Buckets ahead of now a record may be routed: `slots − margin`.
    pub fn reach(&self) -> i64 {
        self.slots - self.margin
    }
}

impl Tier {
    /// How long this tier can hold a record: `slots × tick`, in ms.
    pub fn horizon_ms(&self) -> i64 {
        self.slots * self.tick_ms
    }
}

/// Where a record goes, decided by [`TierTable::route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Due now (or in the past): forward to the target immediately.
    Deliver,
    /// Due within the due-soon window: hold in the in-memory timer.
    Timer,
    /// Write to tier `tier` in bucket `bucket` (slot `bucket mod slots`).
    /// `rollover` is true when the due time lies beyond the top tier's
    /// horizon and the record is parked in the farthest slot.
    Tier {
        /// Tier index, finest first.
        tier: usize,
        /// Bucket number (due time ÷ tick).
        bucket: i64,
        /// True when parked in the farthest slot beyond the horizon.
        rollover: bool,
    },
}

/// A tier table that cannot keep partitions in due order.
///
/// Each variant's `#[error]` message is its documentation: what happened,
/// with the fix where there is one (docs/architecture.md, "Errors").
#[allow(missing_docs)]
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WheelError {
    #[error("at least one tick is required")]
    NoTicks,
    #[error("tick #{index} is {tick_ms} ms; ticks must be at least 1 ms")]
    TickTooSmall { index: usize, tick_ms: i64 },
    #[error(
        "tick #{index} ({tick_ms} ms) must be more than twice the tick below it ({below_ms} ms), \
         so that a bucket is released before the next one is due"
    )]
    TicksTooClose {
        index: usize,
        tick_ms: i64,
        below_ms: i64,
    },
    #[error("top_slots is {0}; at least 3 slots are needed (one draining, one next, one filling)")]
    TooFewTopSlots(i64),
    #[error(
        "the top tier (tick {tick_ms} ms, {slots} slots) cannot park a record ahead of its \
         {lead_ms} ms lead time: raise top_slots or the top tick"
    )]
    TopTooShort {
        tick_ms: i64,
        slots: i64,
        lead_ms: i64,
    },
    #[error("the lead time is {0} ms; it must be between 0 and 1 hour")]
    BadLead(i64),
    #[error("max_delay is {0} ms; it must be positive")]
    BadMaxDelay(i64),
    #[error(
        "tier #{index} would need {slots} slots; at most {max} are allowed — add a tier between"
    )]
    TooManySlots { index: usize, slots: i64, max: i64 },
    #[error(
        "wheel.max_clock_skew ({skew_ms} ms) needs {margin} free slots in the top tier (tick \
         {tick_ms} ms, {slots} slots), leaving fewer than 3: raise wheel.top_slots to at least \
         {} or lower wheel.max_clock_skew", margin + 3
    )]
    SkewTooLarge {
        skew_ms: i64,
        tick_ms: i64,
        slots: i64,
        margin: i64,
    },
}

/// Produce latency the slot margin allows for, ms (docs/architecture.md, "The wheel").
pub const PRODUCE_LATENCY_MS: i64 = 200;

/// Upper bound on the slots of one tier (a tier topic has `slots × K`
/// partitions; Kafka clusters handle a few thousand per topic comfortably).
pub const MAX_SLOTS: i64 = 4096;

impl TierTable {
    /// Derives the table from the configured ticks (ms, ascending), the top
    /// tier's slot count, the lead time of tier 0 (ms), the maximum delay
    /// (ms) and the clock skew between instances to absorb (ms). Errors name
    /// the invariant that would break.
    pub fn derive(
        ticks_ms: &[i64],
        top_slots: i64,
        lead0_ms: i64,
        max_delay_ms: i64,
        skew_ms: i64,
    ) -> Result<Self, WheelError> {
        if ticks_ms.is_empty() {
            return Err(WheelError::NoTicks);
        }
        for (index, &tick_ms) in ticks_ms.iter().enumerate() {
            if tick_ms < 1 {
                return Err(WheelError::TickTooSmall { index, tick_ms });
            }
            if index > 0 && tick_ms <= 2 * ticks_ms[index - 1] {
                return Err(WheelError::TicksTooClose {
                    index,
                    tick_ms,
                    below_ms: ticks_ms[index - 1],
                });
            }
        }
        if top_slots < 3 {
            return Err(WheelError::TooFewTopSlots(top_slots));
        }
        if !(0..=3_600_000).contains(&lead0_ms) {
            return Err(WheelError::BadLead(lead0_ms));
        }
        if max_delay_ms <= 0 {
            return Err(WheelError::BadMaxDelay(max_delay_ms));
        }
        let lead = |level: usize| {
            if level == 0 {
                lead0_ms
            } else {
                2 * ticks_ms[level - 1]
            }
        };
        let top = ticks_ms.len() - 1;
        let mut tiers = Vec::with_capacity(ticks_ms.len());
        for (index, &tick_ms) in ticks_ms.iter().enumerate() {
            let late_by = skew_ms.max(0) + PRODUCE_LATENCY_MS - lead(index);
            let margin = (div_ceil(late_by.max(0), tick_ms) - 1).max(0);
            let slots = if index == top {
                top_slots
            } else {
                div_ceil(ticks_ms[index + 1] + lead(index + 1), tick_ms) + 2 + margin
            };
            if slots > MAX_SLOTS {
                return Err(WheelError::TooManySlots {
                    index,
                    slots,
                    max: MAX_SLOTS,
                });
            }
            if index == top && margin > slots - 3 {
                // The top tier's slot count is configured, not derived: a
                // margin it cannot hold would break the late-append bound.
                return Err(WheelError::SkewTooLarge {
                    skew_ms,
                    tick_ms,
                    slots,
                    margin,
                });
            }
            tiers.push(Tier {
                tick_ms,
                slots,
                lead_ms: lead(index),
                margin,
                slot_map: SlotMap::Sequential,
            });
        }
        let top = &tiers[top];
        // A roll-over parks a record in bucket `floor(now/tick) + reach − 1`,
        // released at the earliest `now + (reach − 2)·tick − lead`.
        if (top.reach() - 2) * top.tick_ms <= top.lead_ms {
            return Err(WheelError::TopTooShort {
                tick_ms: top.tick_ms,
                slots: top.slots,
                lead_ms: top.lead_ms,
            });
        }
        Ok(Self {
            tiers,
            lead0_ms,
            max_delay_ms,
        })
    }

    /// The table with slots laid onto partitions in `order` (derived
    /// tables are [`SlotOrder::Sequential`]).
    pub fn with_slot_order(mut self, order: SlotOrder) -> Self {
        for t in &mut self.tiers {
            t.slot_map = SlotMap::new(order, t.slots);
        }
        self
    }

    /// The tiers, lowest (finest tick) first.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The largest accepted delay, in ms.
    pub fn max_delay_ms(&self) -> i64 {
        self.max_delay_ms
    }

    /// Records due sooner than this (ms from now) are held in memory:
    /// `2·tick_0 + lead_0`.
    pub fn due_soon_window_ms(&self) -> i64 {
        2 * self.tiers[0].tick_ms + self.lead0_ms
    }

    /// Decides where a record due at `due` (epoch ms) goes at time `now`:
    /// the lowest tier whose reach (`bucket − floor(now/tick) < slots −
    /// margin`) covers it, or the top tier's farthest reachable slot
    /// (roll-over).
    pub fn route(&self, now: i64, due: i64) -> Route {
        let ahead = due.saturating_sub(now);
        if ahead <= 0 {
            return Route::Deliver;
        }
        if ahead < self.due_soon_window_ms() {
            return Route::Timer;
        }
        for (tier, t) in self.tiers.iter().enumerate() {
            let bucket = due.div_euclid(t.tick_ms);
            if bucket - now.div_euclid(t.tick_ms) < t.reach() {
                return Route::Tier {
                    tier,
                    bucket,
                    rollover: false,
                };
            }
        }
        let tier = self.tiers.len() - 1;
        let t = &self.tiers[tier];
        Route::Tier {
            tier,
            bucket: now.div_euclid(t.tick_ms) + t.reach() - 1,
            rollover: true,
        }
    }

    /// The instant (epoch ms) at which `bucket` of `tier` is released:
    /// `bucket·tick − lead`.
    pub fn release_time(&self, tier: usize, bucket: i64) -> i64 {
        let t = &self.tiers[tier];
        bucket.saturating_mul(t.tick_ms).saturating_sub(t.lead_ms)
    }

    /// The slot of `bucket` in `tier`: `bucket mod slots`.
    pub fn slot(&self, tier: usize, bucket: i64) -> i64 {
        bucket.rem_euclid(self.tiers[tier].slots)
    }

    /// The release time (epoch ms) of the first turn of `slot` in `tier` that
    /// is released strictly after `now`: when an empty slot partition must
    /// wake up next.
    pub fn next_turn_release(&self, tier: usize, slot: i64, now: i64) -> i64 {
        let t = &self.tiers[tier];
        // Latest bucket already released at `now`.
        let released = (now + t.lead_ms).div_euclid(t.tick_ms);
        let current = released - (released - slot).rem_euclid(t.slots);
        self.release_time(tier, current + t.slots)
    }

    /// Partition of tier `tier` for `slot` and the record's key lane
    /// `lane ∈ [0, K)`: slot `s` owns partitions `π(s), π(s) + slots,
    /// π(s) + 2·slots…`, with `π` the tier's [`SlotMap`].
    pub fn partition(&self, tier: usize, slot: i64, lane: u32) -> i32 {
        let t = &self.tiers[tier];
        (t.slot_map.place(slot, t.slots) + i64::from(lane) * t.slots) as i32
    }

    /// The slot a tier partition belongs to (the inverse of
    /// [`TierTable::partition`]).
    pub fn slot_of_partition(&self, tier: usize, partition: i32) -> i64 {
        let t = &self.tiers[tier];
        t.slot_map
            .slot_at(i64::from(partition).rem_euclid(t.slots), t.slots)
    }
}

fn div_ceil(a: i64, b: i64) -> i64 {
    (a + b - 1).div_euclid(b)
}

/// Picks the key lane (`0..k`) of a record: FNV-1a over the key, so that one
/// key always lands in the same partition of a slot and keeps its order.
/// Records without a key use `fallback` (e.g. the source offset).
pub fn key_lane(key: Option<&[u8]>, k: u32, fallback: u64) -> u32 {
    if k <= 1 {
        return 0;
    }
    let hash = match key {
        Some(key) => key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        }),
        None => fallback,
    };
    (hash % u64::from(k)) as u32
}

#[cfg(test)]
mod tests;
