//! Per-partition state of the consumer loop: the held head record (and any
//! records fetched behind it), the pause deadline, and the position used to
//! decide that a tier partition is drained.
//!
//! librdkafka pitfalls handled here (see STYLE.md): pausing discards
//! prefetched records, so every record `poll` returned for a paused partition
//! is kept in `held`, in offset order; pause state is tracked by us and
//! re-applied after a rebalance.

use std::collections::VecDeque;
use std::ffi::CString;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;

use crate::envelope;
use crate::offsets::Assignment;

/// What the consumer loop knows of one assigned partition.
#[derive(Debug)]
pub struct PartitionState {
    /// Assignment id in the offset [`Book`](crate::offsets::Book).
    pub id: Assignment,
    /// Tier index, or None for the ingress topic.
    pub tier: Option<usize>,
    /// Records read but not yet processed, head first.
    pub held: VecDeque<OwnedMessage>,
    /// Paused until this instant (epoch ms); None while fetching.
    pub wake_at: Option<i64>,
    /// Offset of the last record read from this partition.
    pub last_offset: Option<i64>,
    /// Where reading started (committed offset), if known.
    pub start_offset: Option<i64>,
    /// When a record last arrived or the partition was last resumed (epoch ms).
    pub last_activity_ms: i64,
}

impl PartitionState {
    /// A freshly assigned partition, fetching.
    pub fn new(id: Assignment, tier: Option<usize>, now_ms: i64) -> Self {
        Self {
            id,
            tier,
            held: VecDeque::new(),
            wake_at: None,
            last_offset: None,
            start_offset: None,
            last_activity_ms: now_ms,
        }
    }

    /// True while records must queue behind a held head.
    pub fn is_holding(&self) -> bool {
        self.wake_at.is_some() || !self.held.is_empty()
    }

    /// The next offset this partition will read.
    pub fn position(&self) -> Option<i64> {
        self.last_offset.map(|o| o + 1).or(self.start_offset)
    }
}

/// The bucket header of a tier record, if present and well-formed.
pub fn bucket_of<M: Message>(msg: &M) -> Option<i64> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == envelope::BUCKET)
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

/// librdkafka's locally cached (low, high) watermarks of a partition, as
/// last seen in a fetch response; no broker round trip. None when unknown.
pub fn cached_watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime and
    // rd_kafka_get_watermark_offsets only reads local state into the two
    // out-parameters.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    let ok = err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
    (ok && low >= 0 && high >= 0).then_some((low, high))
}

/// Turns a borrowed or owned record into an owned one.
pub trait Detach {
    /// An owned copy of the record.
    fn to_owned_message(&self) -> OwnedMessage;
}

impl Detach for rdkafka::message::BorrowedMessage<'_> {
    fn to_owned_message(&self) -> OwnedMessage {
        self.detach()
    }
}

impl Detach for OwnedMessage {
    fn to_owned_message(&self) -> OwnedMessage {
        self.clone()
    }
}
