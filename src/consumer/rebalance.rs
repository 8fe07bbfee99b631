//! Rebalances: the consumer context that commits on revoke, and the loop's
//! side of assign and revoke (partition state, timer entries, pause state).

use super::*;

pub(super) enum RebalanceEvent {
    Assigned(Vec<(String, i32, Assignment)>),
    Revoked(Vec<(String, i32)>),
}

/// Consumer context: on revoke, waits (bounded) for in-flight produces,
/// then stores and commits the acknowledged prefix of each revoked
/// partition before librdkafka gives it up.
pub struct RebalanceContext {
    pub(super) shared: Arc<Shared>,
    pub(super) producer: ThreadedProducer<DeliveryContext>,
    pub(super) flush_timeout: Duration,
    pub(super) events: Mutex<Vec<RebalanceEvent>>,
    /// Set when `events` is non-empty: checked after every polled record.
    pub(super) events_pending: AtomicBool,
    /// The last commit failed: commit again even if nothing moved.
    pub(super) commit_failed: AtomicBool,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut book = self.shared.book();
                let list = tpl
                    .elements()
                    .iter()
                    .map(|e| {
                        (
                            e.topic().to_owned(),
                            e.partition(),
                            book.register(e.topic(), e.partition()),
                        )
                    })
                    .collect();
                events.push(RebalanceEvent::Assigned(list));
            }
            Rebalance::Revoke(tpl) => {
                if let Err(error) = self.producer.flush(self.flush_timeout) {
                    tracing::warn!(%error, "in-flight records not acknowledged before revoke; they will be redelivered");
                }
                let mut commit = TopicPartitionList::new();
                let mut list = Vec::new();
                let mut book = self.shared.book();
                for e in tpl.elements() {
                    if let Some(position) = book.remove(e.topic(), e.partition()) {
                        let _ = commit.add_partition_offset(
                            e.topic(),
                            e.partition(),
                            Offset::Offset(position),
                        );
                    }
                    list.push((e.topic().to_owned(), e.partition()));
                }
                drop(book);
                if commit.count() > 0 && !consumer.assignment_lost() {
                    let _ = consumer.store_offsets(&commit);
                    if let Err(error) = consumer.commit(&commit, CommitMode::Sync) {
                        self.shared.metrics.commit_error();
                        tracing::warn!(%error, "commit on revoke failed");
                    }
                }
                events.push(RebalanceEvent::Revoked(list));
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance error"),
        }
        self.events_pending.store(true, Ordering::Relaxed);
        self.shared.metrics.rebalance();
    }
}

impl Core {
    pub(super) fn handle_rebalances(&mut self, c: &Client, health: &Health) {
        if !c.context().events_pending.swap(false, Ordering::Relaxed) {
            return;
        }
        let events = std::mem::take(
            &mut *c
                .context()
                .events
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if events.is_empty() {
            return;
        }
        let now = now_ms();
        for event in events {
            match event {
                RebalanceEvent::Assigned(list) => {
                    let mut committed = TopicPartitionList::new();
                    for (topic, partition, id) in list {
                        let Some(index) = self.topic_index(&topic) else {
                            continue;
                        };
                        let tier = index.checked_sub(1);
                        self.partitions
                            .insert((index, partition), PartitionState::new(id, tier, now));
                        committed.add_partition(&topic, partition);
                    }
                    self.load_start_offsets(c, committed);
                    tracing::info!(assigned = self.partitions.len(), "partitions assigned");
                }
                RebalanceEvent::Revoked(list) => {
                    for (topic, partition) in list {
                        if let Some(index) = self.topic_index(&topic) {
                            self.partitions.remove(&(index, partition));
                        }
                    }
                    let book = self.shared.book();
                    self.timer.retain(|s| book.is_live(s.ticket.assignment()));
                    drop(book);
                    tracing::info!(assigned = self.partitions.len(), "partitions revoked");
                }
            }
        }
        // Pause state does not survive a rebalance in librdkafka: re-apply.
        let paused: Vec<((usize, i32), i64)> = self
            .partitions
            .iter()
            .filter_map(|(k, p)| Some((*k, p.wake_at?)))
            .collect();
        for (key, until) in paused {
            self.pause(c, key, until);
        }
        health
            .assigned
            .store(self.partitions.len(), Ordering::Relaxed);
        health.joined.store(true, Ordering::Relaxed);
    }

    pub(super) fn load_start_offsets(&mut self, c: &Client, tpl: TopicPartitionList) {
        if tpl.count() == 0 {
            return;
        }
        match c.committed_offsets(tpl, Duration::from_secs(10)) {
            Ok(committed) => {
                for e in committed.elements() {
                    let (Some(index), Offset::Offset(offset)) =
                        (self.topic_index(e.topic()), e.offset())
                    else {
                        continue;
                    };
                    if let Some(state) = self.partitions.get_mut(&(index, e.partition())) {
                        state.start_offset = Some(offset);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read committed offsets"),
        }
    }
}
