//! The pure model: what a record says and what time it is. No Kafka client,
//! no configuration, no thread — everything above depends on this layer and
//! it depends on nothing of ours.
//!
//! * [`envelope`] — the header contract: parse an ingress or tier record's
//!   headers into due time, target and id; every error a variant with its
//!   dead-letter reason;
//! * [`cancel`] — the cancellation contract: ids and the value of a record
//!   of the cancel topic;
//! * [`clock`] — wall-clock time in epoch ms, RFC 3339, and the estimate of
//!   this host's offset from the brokers' clock.

pub mod cancel;
pub mod clock;
pub mod envelope;
pub mod series;
