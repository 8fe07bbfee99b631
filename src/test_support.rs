//! Helpers shared by unit tests.

use rdkafka::message::OwnedMessage;

/// A record of topic `t` at (`partition`, `offset`) with no key, value,
/// timestamp or headers: enough for code that only tracks positions.
pub fn bare_record(partition: i32, offset: i64) -> OwnedMessage {
    OwnedMessage::new(
        None,
        None,
        "t".into(),
        rdkafka::Timestamp::NotAvailable,
        partition,
        offset,
        None,
    )
}
