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
//! * [`envelope`] — the header contract: parse into due time and target,
//!   every error a variant;
//! * [`wheel`] — the pure tier table: routing, release times, roll-over;
//! * [`consumer`] — the consumer loop: one group, per-partition pause until
//!   the head's release time ([`partition`] holds the state); its
//!   `rebalance` and `upkeep` (commits, idle partitions, gauges) submodules;
//! * [`timer`] — the due-soon min-heap, delivery at the exact due time;
//! * [`forwarder`] — produce, acknowledgements, dead letters;
//!   [`offsets`] — the acknowledged prefix that may be committed;
//! * [`topics`] — topic specs and `topics apply`;
//! * [`metrics`], [`http`], [`telemetry`], [`shutdown`] — operations;
//! * [`service`] (`run`), [`produce`], [`bench`], [`broker`] (a local broker
//!   for the demo, benchmark and tests), [`kafka`] (client settings);
//! * `main.rs` — the CLI.

pub mod bench;
pub mod broker;
pub mod config;
pub mod consumer;
pub mod demo;
pub mod envelope;
pub mod forwarder;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod offsets;
pub mod partition;
pub mod produce;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod timer;
pub mod topics;
pub mod wheel;
