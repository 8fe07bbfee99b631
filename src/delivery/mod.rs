//! Delivery: every write the service makes — to a tier, a target or the
//! dead-letter topic — and what it may commit once they are acknowledged.
//!
//! * [`forwarder`] — produce calls, acknowledgements, dead letters;
//! * [`failures`] — writes that failed: retries with back-off, dead letters,
//!   the partitions they block;
//! * [`ledger`] — records in flight per partition and the offsets that may
//!   be committed (commit after acknowledgement);
//! * [`exactly_once`] — the transactional mode: writes and source offsets in
//!   one Kafka transaction, each partition's records in offset order.
//!
//! This layer knows records and topics, never consumer groups: the engine
//! decides what to write and when, delivery writes it and reports back.

pub mod exactly_once;
pub mod failures;
pub mod forwarder;
pub mod ledger;
