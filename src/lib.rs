//! kafka-delay: delayed delivery for Apache Kafka.
//!
//! A producer writes a record with an `x-delay` or `x-deliver-at` header to
//! the ingress topic; the service delivers it to its `x-target-topic` when it
//! is due, never early. Pending records live in tier topics arranged as a
//! hierarchical timing wheel; the service itself is stateless.
//!
//! The modules are layers; each depends only on the ones above it in this
//! list (docs/architecture.md draws the data path through them):
//!
//! 1. [`model`] — the header contract, cancellations, time; and [`wheel`] —
//!    the pure tier table: routing, release times, roll-over;
//! 2. [`config`] — settings, layering (file → environment), validation;
//! 3. [`kafka`] — client settings, the FFI module ([`kafka::native`], the
//!    only `unsafe` code), topic specs, target look-ups; [`ops`] — metrics,
//!    health, HTTP, logs, signals;
//! 4. [`delivery`] — produce, acknowledgements, retries, dead letters, the
//!    ledger of what may be committed, the exactly-once mode;
//! 5. [`engine`] — the consumer loop of one topic: ingress and tier
//!    records, partitions paused until due, the due-soon timer, backpressure,
//!    rebalances, cancellations;
//! 6. [`service`] — one loop per topic, the cancel reader, the HTTP server;
//! 7. [`cli`] — the client commands (`produce`, `cancel`, `pending`,
//!    `reschedule`); the binary's `main.rs` parses arguments.
//!
//! The demo, the benchmark and the local broker launcher live in the
//! `kafka-delay-tools` workspace member (`tools/`), outside this binary.

#![deny(missing_docs, unsafe_code, rustdoc::broken_intra_doc_links)]
// The documentation is built with private items (`make lint`): a newcomer
// reads the engine, which is crate-private.
#![allow(rustdoc::private_intra_doc_links)]

pub mod cli;
pub mod config;
pub(crate) mod delivery;
pub mod engine;
pub mod kafka;
pub mod model;
pub mod ops;
pub mod service;
#[cfg(test)]
mod test_support;
pub mod wheel;
