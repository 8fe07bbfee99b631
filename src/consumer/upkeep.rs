//! Periodic work of the consumer loop: putting drained tier partitions to
//! sleep, retrying failed produces, committing offsets, refreshing gauges and
//! returning freed memory.

use super::*;

impl Core {
    /// Puts drained tier partitions to sleep until their next turn, once
    /// they have been idle for the grace period and are at their end offset.
    pub(super) fn sleep_idle_partitions(&mut self, c: &Client, now: i64) {
        let idle: Vec<((usize, i32), usize)> = self
            .partitions
            .iter()
            .filter(|(_, p)| !p.is_holding() && now - p.last_activity_ms >= self.grace_ms)
            .filter_map(|(k, p)| Some((*k, p.tier?)))
            .collect();
        for (key, tier) in idle {
            let state = &self.partitions[&key];
            let at_end = match (
                state.position(),
                cached_watermarks(c, &self.topics[key.0], key.1),
            ) {
                (Some(position), Some((_, high))) => position >= high,
                (None, Some((low, high))) => low == high,
                _ => false,
            };
            if at_end {
                let slot = self.table.slot_of_partition(tier, key.1);
                let wake = self.table.next_turn_release(tier, slot, now);
                self.pause(c, key, wake);
            }
        }
    }

    /// Retries failed produces; dead-letters records whose target refuses them.
    pub(super) fn handle_failures(&mut self, now: i64) {
        for failure in self.shared.take_failures() {
            if !self
                .shared
                .book()
                .is_live(failure.inflight.ticket.assignment())
            {
                continue;
            }
            if failure.inflight.kind == Kind::Target && failure.is_permanent() {
                let topic = failure.record.topic().to_owned();
                self.forwarder.forget_target(&topic);
                let error = EnvelopeError::DeliveryFailed(format!("{topic}: {}", failure.error));
                tracing::warn!(%error, "dead-lettering undeliverable record");
                self.forwarder.to_dead_letter(
                    &failure.record,
                    error.reason(),
                    &error.to_string(),
                    failure.inflight,
                );
            } else {
                tracing::warn!(error = %failure.error, topic = failure.record.topic(), now, "produce failed; retrying");
                self.forwarder.retry(failure);
            }
        }
    }

    /// Commits the acknowledged prefix of every partition, when any moved
    /// or the last commit failed. Synchronous: one round trip every
    /// `service.commit_interval`, measured as the commit latency. (With
    /// rust-rdkafka's event API the asynchronous commit's result never
    /// reached the commit callback on Tansu, so its latency could not be
    /// observed.)
    pub(super) fn commit_offsets(&mut self, c: &Client) {
        let context = c.context();
        let mut book = self.shared.book();
        let moved = !book.unstored().is_empty();
        if !moved && !context.commit_failed.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in book.positions() {
            let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset));
        }
        drop(book);
        if tpl.count() == 0 {
            return;
        }
        // Stored too, so that librdkafka's own commit on close agrees.
        let _ = c.store_offsets(&tpl);
        let begun = Instant::now();
        match c.commit(&tpl, CommitMode::Sync) {
            Ok(()) => self
                .shared
                .metrics
                .commit_latency(begun.elapsed().as_secs_f64()),
            Err(error) => {
                context.commit_failed.store(true, Ordering::Relaxed);
                self.shared.metrics.commit_error();
                tracing::warn!(%error, "offset commit failed");
            }
        }
    }

    pub(super) fn refresh_gauges(&self, c: &Client) {
        let metrics = &self.shared.metrics;
        metrics.set_timer_records(self.timer.len());
        let positions: HashMap<(String, i32), i64> = self
            .shared
            .book()
            .positions()
            .into_iter()
            .map(|(t, p, o)| ((t, p), o))
            .collect();
        for tier in 0..self.table.tiers().len() {
            let topic = &self.topics[tier + 1];
            let mut paused = 0;
            let mut pending = 0;
            let mut oldest: Option<i64> = None;
            for ((index, partition), state) in &self.partitions {
                if *index != tier + 1 {
                    continue;
                }
                paused += usize::from(state.wake_at.is_some());
                if let Some((low, high)) = cached_watermarks(c, topic, *partition) {
                    let from = positions
                        .get(&(topic.clone(), *partition))
                        .copied()
                        .or(state.start_offset)
                        .unwrap_or(low);
                    pending += (high - from).max(0);
                }
                let head_due = state.held.front().and_then(|h| {
                    let headers = h.headers()?;
                    let env =
                        envelope::parse_tier(headers.iter().map(|x| (x.key, x.value))).ok()?;
                    Some(env.due_ms)
                });
                oldest = oldest.into_iter().chain(head_due).min();
            }
            metrics.set_paused(tier, paused);
            metrics.set_pending(tier, pending);
            metrics.set_oldest_due(tier, oldest);
        }
    }
}

/// Hands freed heap pages back to the kernel. After a burst, glibc keeps the
/// memory librdkafka's queues used; without this the resident set would
/// stay at the burst's peak although nothing is held (pending records live
/// in Kafka). `malloc_trim` returns quickly when there is nothing to give back.
pub(super) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap structures.
    unsafe {
        libc::malloc_trim(0);
    }
}
