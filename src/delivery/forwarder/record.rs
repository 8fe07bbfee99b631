//! Records as the forwarder reads them (borrowed from a poll, owned in the
//! timer, or owned outright after a failed produce).

use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::Message;

use super::copy_headers;
use crate::kafka::native::{HeaderView, OutHeaders, RecordHeaders};

/// A record as the forwarder reads it: key, value, timestamp and byte headers.
pub trait Record: RecordHeaders {
    fn key_bytes(&self) -> Option<&[u8]>;
    fn value_bytes(&self) -> Option<&[u8]>;
    /// Record timestamp, epoch ms, when it has one.
    fn timestamp_ms(&self) -> Option<i64>;
}

impl Record for BorrowedMessage<'_> {
    fn key_bytes(&self) -> Option<&[u8]> {
        self.key()
    }
    fn value_bytes(&self) -> Option<&[u8]> {
        self.payload()
    }
    fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp().to_millis()
    }
}

impl Record for OwnedMessage {
    fn key_bytes(&self) -> Option<&[u8]> {
        self.key()
    }
    fn value_bytes(&self) -> Option<&[u8]> {
        self.payload()
    }
    fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp().to_millis()
    }
}

/// A record the forwarder owns outright: a produce that failed or waits for
/// room in librdkafka's queue.
pub struct OwnedRecord {
    pub topic: String,
    /// Partition, or None for the partitioner.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: i64,
    pub headers: OutHeaders,
}

impl RecordHeaders for OwnedRecord {
    fn header_view(&self) -> HeaderView<'_> {
        HeaderView::of(&self.headers)
    }
}

impl Record for OwnedRecord {
    fn key_bytes(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn value_bytes(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
    fn timestamp_ms(&self) -> Option<i64> {
        Some(self.timestamp_ms)
    }
}

impl OwnedRecord {
    /// Copies a produced record (from a delivery report).
    pub(super) fn of(msg: &BorrowedMessage<'_>, partition: Option<i32>) -> Self {
        Self {
            topic: msg.topic().to_owned(),
            partition,
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            timestamp_ms: msg.timestamp().to_millis().unwrap_or(0),
            headers: copy_headers(msg, 0, |_| true),
        }
    }

    /// Key, value and header bytes.
    pub fn byte_size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self.headers.byte_size()
    }
}
