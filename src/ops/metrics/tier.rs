//! Tiers: writes into the wheel, held and sleeping partitions, pending records, late appends, stalls.

use super::*;

/// Tiers: writes into the wheel, held and sleeping partitions, pending records, late appends, stalls.
pub struct TierMetrics {
    tier_writes: Vec<IntCounter>,
    late_appends: Vec<IntCounter>,
    later_turns: Vec<IntCounter>,
    stalls: Vec<IntCounter>,
    paused: Vec<IntGauge>,
    stalled: Vec<IntGauge>,
    pending: Vec<IntGauge>,
    oldest_due: Vec<IntGauge>,
    retired_pending: IntGaugeVec,
}

impl TierMetrics {
    /// Registers this domain's metrics in `r`; `tier` are the tier labels.
    pub(super) fn new(r: &Registry, tier: &[&str]) -> Self {
        let per_tier = |name: &str, help: &str| labelled_counters(r, (name, help), "tier", tier);
        let tier_gauge = |name: &str, help: &str| labelled_gauges(r, (name, help), "tier", tier);
        Self {
            retired_pending: gauge_vec(
                r,
                "kafka_delay_retired_tier_records",
                "Records a tier topic of an earlier wheel layout still holds past its committed \
                 offsets, over this instance's partitions of it (drained into the current tiers; \
                 `kafka-delay topics prune` deletes it once empty).",
                "topic",
            ),
            tier_writes: per_tier(
                "kafka_delay_tier_writes_total",
                "Records written into a tier topic.",
            ),
            late_appends: per_tier(
                "kafka_delay_late_appends_total",
                "Tier records read after their partition was drained past their bucket's release \
                 (a writer's clock behind, a slow produce): delivered at once, counted by the owner.",
            ),
            later_turns: per_tier(
                "kafka_delay_later_turn_records_total",
                "Tier records read for a later turn of their slot than the next (forged, or re-sent long after routing): re-routed at once instead of held.",
            ),
            stalls: per_tier(
                "kafka_delay_stalls_total",
                "Times the watchdog resumed a partition that fetched nothing while behind its end offset.",
            ),
            paused: tier_gauge(
                "kafka_delay_partitions_paused",
                "Tier partitions paused by the service: holding a head until its release, or asleep \
                 until their next turn.",
            ),
            stalled: tier_gauge(
                "kafka_delay_partitions_stalled",
                "Tier partitions behind their end offset that made no progress at the last check.",
            ),
            pending: tier_gauge(
                "kafka_delay_records_pending",
                "Records waiting in a tier: end offset minus committed offset (both fresh from the \
                 broker), over this instance's partitions.",
            ),
            oldest_due: tier_gauge(
                "kafka_delay_oldest_pending_due_timestamp_seconds",
                "Earliest due time among held tier heads, Unix seconds (0: none held).",
            ),
        }
    }

    /// A record was written into tier `tier`.
    pub fn write(&self, tier: usize) {
        self.tier_writes[tier].inc();
    }

    /// A tier record arrived after its partition had drained past its release.
    pub fn late_append(&self, tier: usize) {
        self.late_appends[tier].inc();
    }

    /// A tier record of a later turn than its slot's next was re-routed.
    pub fn later_turn(&self, tier: usize) {
        self.later_turns[tier].inc();
    }

    /// The watchdog resumed a stalled partition of tier `tier`.
    pub fn stall(&self, tier: usize) {
        self.stalls[tier].inc();
    }

    /// Per-tier partition gauges, now.
    pub fn set_partitions(&self, tier: usize, paused: usize, stalled: usize) {
        self.paused[tier].set(paused as i64);
        self.stalled[tier].set(stalled as i64);
    }

    /// Records pending in tier `tier` (end offset − committed).
    pub fn set_pending(&self, tier: usize, count: i64) {
        self.pending[tier].set(count);
    }

    /// Records the retired tier `topic` still holds past its committed
    /// offsets, over this instance's partitions of it.
    pub fn set_retired_pending(&self, topic: &str, count: i64) {
        self.retired_pending.with_label_values(&[topic]).set(count);
    }

    /// Earliest due time (epoch ms) of the held heads of tier `tier`.
    pub fn set_oldest_due(&self, tier: usize, due_ms: Option<i64>) {
        self.oldest_due[tier].set(due_ms.map_or(0, |ms| ms / 1000));
    }

    /// Records written into any tier so far (for writes per record).
    pub fn writes_total(&self) -> u64 {
        self.tier_writes.iter().map(IntCounter::get).sum()
    }

    /// Late appends over all tiers so far.
    pub fn late_appends_total(&self) -> u64 {
        self.late_appends.iter().map(IntCounter::get).sum()
    }
}
