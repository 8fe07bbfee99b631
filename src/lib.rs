//! kafka-delay: delayed delivery for Apache Kafka.
//!
//! A producer writes a record with an `x-delay` or `x-deliver-at` header to
//! the ingress topic; the service delivers it to its `x-target-topic` when it
//! is due, never early. Pending records live in tier topics arranged as a
//! hierarchical timing wheel; the service itself is stateless.
//!
//! Layout, in data-flow order:
//!
//! * [`config`] — settings, layering (file → environment), validation;
//! * [`native`] — record headers as bytes and produce calls (the only
//!   direct use of librdkafka's C API); [`envelope`] — the header contract:
//!   parse into due time and target, every error a variant;
//! * [`wheel`] — the pure tier table: routing, release times, roll-over;
//! * [`consumer`] — the consumer loop, one per topic and consumer group;
//!   [`partitions`] — its partition table, the only caller of pause/resume;
//!   [`ledger`] — records in flight and the offsets that may be committed;
//!   [`watcher`] — commits and fresh end/committed offsets, off the loop's
//!   thread; [`targets`] — target existence look-ups, off the loop's thread;
//! * [`timer`] — the due-soon min-heap, delivery at the exact due time;
//! * [`forwarder`] — produce, acknowledgements, retries and dead letters;
//!   [`transaction`] — exactly-once mode: writes and offsets in one
//!   Kafka transaction;
//! * [`topics`] — topic specs and `topics apply`;
//! * [`clock`], [`health`], [`metrics`], [`http`], [`telemetry`],
//!   [`shutdown`] — operations;
//! * [`service`] (`run`), [`produce`], [`kafka`] (client settings);
//! * `main.rs` — the CLI.
//!
//! The demo, the benchmark and the local broker launcher live in the
//! `kafka-delay-tools` workspace member (`tools/`), outside this binary.

pub mod cancel;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod envelope;
pub mod forwarder;
pub mod health;
pub mod http;
pub mod kafka;
pub mod ledger;
pub mod metrics;
pub mod native;
pub mod partitions;
pub mod pending;
pub mod produce;
pub mod reschedule;
pub mod service;
pub mod shutdown;
pub mod targets;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod timer;
pub mod topics;
pub mod transaction;
pub mod watcher;
pub mod wheel;
