//! The ingress stage: records published by users. Each is parsed against
//! the header contract, its target checked (policy, then existence — a look-up
//! runs on the [`Targets`] thread while the record is parked), and routed:
//! delivered now, into the due-soon timer, or written to a tier.

use std::collections::VecDeque;

use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::Message;

use super::records::{kv_bytes, ToOwnedMessage};
use super::ConsumerLoop;
use crate::delivery::exactly_once::order::Poison;
use crate::delivery::forwarder::Record;
use crate::delivery::ledger::{Assignment, Ticket};
use crate::kafka::native::RecordHeaders;
use crate::kafka::targets::{Known, Targets};
use crate::model::envelope::{self, EnvelopeError};
use crate::ops::metrics::Source;

/// How long the last accepted target skips the target checks, ms.
const TRUSTED_TARGET_MS: i64 = 10_000;

/// What is particular to the topic a loop consumes.
pub(super) enum Stage {
    /// The ingress topic, with its target look-ups.
    Ingress(Box<Ingress>),
    /// A tier topic, by index (finest first).
    Tier(usize),
    /// A tier topic of an earlier layout, by index into `Shared::retired`,
    /// and whether its drain was reported.
    Retired(usize, bool),
}

/// The ingress loop's own state: target look-ups and the records waiting
/// on them.
pub(super) struct Ingress {
    /// Target existence look-ups, answered on their own thread.
    pub(super) targets: Targets,
    /// Records waiting for the answer to "does its target exist?".
    pub(super) parked: VecDeque<Parked>,
    /// The last target accepted (policy and existence), and when (epoch ms).
    pub(super) trusted: (String, i64),
}

impl Ingress {
    /// Target look-ups on `targets`; nothing parked or trusted yet.
    pub(super) fn new(targets: Targets) -> Self {
        Self {
            targets,
            parked: VecDeque::new(),
            trusted: (String::new(), 0),
        }
    }

    /// Forgets the trusted target [`TRUSTED_TARGET_MS`] after it was
    /// accepted, so that a deleted topic is noticed.
    pub(super) fn expire_trust(&mut self, now: i64) {
        if now - self.trusted.1 > TRUSTED_TARGET_MS {
            self.trusted.0.clear();
        }
    }

    /// After failed writes: their targets are looked up again, and no
    /// target is trusted.
    pub(super) fn forget_targets<'a>(&mut self, topics: impl Iterator<Item = &'a str>) {
        for topic in topics {
            self.targets.forget(topic);
        }
        self.trusted.0.clear();
    }
}

/// An ingress record waiting for the answer to "does its target exist?".
pub(super) struct Parked {
    pub(super) ticket: Ticket,
    target: String,
    record: OwnedMessage,
}

impl ConsumerLoop {
    /// An ingress record fresh from `poll`, of the partition with
    /// assignment `id`: dead-lettered when librdkafka cannot read its
    /// headers, else taken into the ledger and ingested (exactly-once: when
    /// its partition's turn comes).
    pub(super) fn on_ingress_record(
        &mut self,
        msg: &BorrowedMessage<'_>,
        id: Assignment,
        now: i64,
    ) {
        let p = msg.partition();
        if let Some(why) = crate::kafka::native::unreadable_headers(msg) {
            // Read as "no headers" it would be delivered at once:
            // dead-letter it (exactly-once: when its turn comes).
            let error = EnvelopeError::UnreadableHeaders(why);
            if let Some(order) = self.guarantee.order_mut() {
                if order.blocks(p) {
                    order.poison_with(p, msg.offset(), Poison::DeadLetter(error));
                    order.wait(p, msg.detach());
                    return;
                }
            }
            let ticket = self
                .ledger
                .book_unacked()
                .take_sized(id, msg.offset(), kv_bytes(msg));
            if let Some(ticket) = ticket {
                self.reject(msg, &error, ticket, Source::Ingress);
            }
            return;
        }
        if self.must_wait(p, || msg.detach()) {
            return;
        }
        let taken = self
            .ledger
            .book_unacked()
            .take_sized(id, msg.offset(), kv_bytes(msg));
        let Some(ticket) = taken else {
            return;
        };
        self.ingest(msg, ticket, now);
    }

    /// An ingress record: dead letter, target, timer or tier; parked while
    /// its target's existence is being looked up.
    pub(super) fn ingest<M: Record + Message + ToOwnedMessage>(
        &mut self,
        msg: &M,
        ticket: Ticket,
        now: i64,
    ) {
        if self.write_poisoned(msg, ticket, Source::Ingress, now) {
            return;
        }
        let Stage::Ingress(ingress) = &mut self.stage else {
            return;
        };
        let view = msg.header_view();
        let policy = self.policy.clone();
        let parsed = envelope::parse_ingress_trusting(
            view.iter(),
            msg.timestamp_ms(),
            now,
            &policy,
            &ingress.trusted.0,
        );
        let env = match parsed {
            Ok(env) => env,
            Err(error) => return self.reject(msg, &error, ticket, Source::Ingress),
        };
        if env.target != ingress.trusted.0 {
            match ingress.targets.check(env.target, now) {
                Known::Exists => ingress.trusted = (env.target.to_owned(), now),
                Known::Missing => {
                    let error = EnvelopeError::UnknownTarget(env.target.to_owned());
                    return self.reject(msg, &error, ticket, Source::Ingress);
                }
                Known::Pending => {
                    ingress.parked.push_back(Parked {
                        ticket,
                        target: env.target.to_owned(),
                        record: msg.to_owned_message(),
                    });
                    self.opened(msg.partition());
                    return;
                }
            }
        }
        let outcome = self.route(msg, &env, ticket, Source::Ingress, now);
        self.shared.metrics.ingress.ingested(outcome);
    }

    /// Parked ingress records whose target is now known.
    pub(super) fn resolve_parked(&mut self, now: i64) {
        let Stage::Ingress(ingress) = &mut self.stage else {
            return;
        };
        if !ingress.targets.receive(now) || ingress.parked.is_empty() {
            return;
        }
        let parked = std::mem::take(&mut ingress.parked);
        for item in parked {
            let Stage::Ingress(ingress) = &mut self.stage else {
                return;
            };
            let known = ingress.targets.check(&item.target, now);
            if known == Known::Pending {
                ingress.parked.push_back(item);
                continue;
            }
            // Parsed again (it parsed before): routing depends on `now`.
            ingress.trusted.0.clear();
            self.ingest_known(&item.record, item.ticket, known, now);
            self.closed(item.record.partition());
        }
    }

    fn ingest_known(&mut self, msg: &OwnedMessage, ticket: Ticket, known: Known, now: i64) {
        let view = msg.header_view();
        let policy = self.policy.clone();
        match envelope::parse_ingress(view.iter(), msg.timestamp_ms(), now, &policy) {
            Err(error) => self.reject(msg, &error, ticket, Source::Ingress),
            Ok(env) if known == Known::Missing => {
                let error = EnvelopeError::UnknownTarget(env.target.to_owned());
                self.reject(msg, &error, ticket, Source::Ingress);
            }
            Ok(env) => {
                let outcome = self.route(msg, &env, ticket, Source::Ingress, now);
                self.shared.metrics.ingress.ingested(outcome);
            }
        }
    }
}
