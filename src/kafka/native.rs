//! The service's only direct use of librdkafka's C API, and the only module
//! allowed `unsafe` code (the crate denies it elsewhere): record headers as
//! bytes, produce calls that take such headers and a cached topic handle,
//! and a few reads of librdkafka's local state. Every native pointer has one
//! owner with a `Drop` here: [`OutHeaders`] until produced,
//! [`NativeProducer`] for topic handles (released before their producer).
//!
//! Why: a Kafka header key is a byte string. rdkafka's safe API reads keys
//! as `&str` (`BorrowedHeaders::try_get` panics on a key that is not
//! UTF-8) and librdkafka's `rd_kafka_header_get_all` returns the key as a
//! C string, cut at its first NUL byte. The key's true length is kept in
//! librdkafka's header entry (`rd_kafka_header_t`, `rdkafka_header.h`,
//! librdkafka 2.12): [`HeaderView`] reads it there and checks it against
//! the entry's serialized size, value size and value position before
//! trusting it; if a future librdkafka changed the layout, the check fails
//! and the key is read up to its first NUL, never out of bounds.
//! Writing is exact through `rd_kafka_header_add`, which takes a length.
//!
//! [`NativeProducer::produce`] calls `rd_kafka_producev` as rdkafka's `BaseProducer::send`
//! does, but with our byte headers and a topic handle looked up once per
//! topic (rdkafka builds a `CString` and looks the topic up on every send).
//! The delivery opaque is a `usize`, so the producer's `DeliveryOpaque =
//! usize` context receives it unchanged.
//!
//! Over 500 lines: all `unsafe` code of the crate, on purpose in one module
//! (docs/architecture.md, "Files over 500 lines").

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::mem::offset_of;
use std::ptr;

use rdkafka::bindings as rdsys;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::producer::{Producer, ProducerContext};

/// Layout of librdkafka's `rd_kafka_header_t` (2.12, `rdkafka_header.h`).
#[repr(C)]
struct NativeHeader {
    ser_size: usize,
    value_size: usize,
    name_size: usize,
    value: *const c_char,
    name: [c_char; 1],
}

/// A record's headers, read as (key bytes, value bytes) pairs in record
/// order. Borrowed from the record.
#[derive(Clone, Copy)]
pub struct HeaderView<'a> {
    native: *const rdsys::rd_kafka_headers_t,
    _record: std::marker::PhantomData<&'a ()>,
}

/// One header: its key and value exactly as on the wire (`None`: a null value).
pub type Header<'a> = (&'a [u8], Option<&'a [u8]>);

/// Records whose headers can be read as bytes.
pub trait RecordHeaders {
    /// The record's headers; empty when it has none.
    fn header_view(&self) -> HeaderView<'_>;
}

impl RecordHeaders for BorrowedMessage<'_> {
    fn header_view(&self) -> HeaderView<'_> {
        use rdkafka::Message;
        HeaderView::from_borrowed(self.headers())
    }
}

impl RecordHeaders for OwnedMessage {
    fn header_view(&self) -> HeaderView<'_> {
        use rdkafka::Message;
        HeaderView::from_borrowed(self.headers().map(|h| h.as_borrowed()))
    }
}

impl<'a> HeaderView<'a> {
    fn from_borrowed(headers: Option<&'a rdkafka::message::BorrowedHeaders>) -> Self {
        Self {
            // BorrowedHeaders is a zero-sized view whose address is the
            // native `rd_kafka_headers_t`.
            native: headers.map_or(ptr::null(), |h| {
                (h as *const rdkafka::message::BorrowedHeaders).cast()
            }),
            _record: std::marker::PhantomData,
        }
    }

    /// Headers of an [`OutHeaders`] being built.
    pub fn of(out: &'a OutHeaders) -> Self {
        Self {
            native: out.native,
            _record: std::marker::PhantomData,
        }
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        if self.native.is_null() {
            return 0;
        }
        // SAFETY: `native` is a live headers object owned by the record
        // this view borrows.
        unsafe { rdsys::rd_kafka_header_cnt(self.native) }
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The header at `index`, if any.
    pub fn get(&self, index: usize) -> Option<Header<'a>> {
        if self.native.is_null() {
            return None;
        }
        let (mut name, mut value, mut size) = (ptr::null(), ptr::null(), 0_usize);
        // SAFETY: as in `len`; the out-parameters are written on success.
        let err = unsafe {
            rdsys::rd_kafka_header_get_all(self.native, index, &mut name, &mut value, &mut size)
        };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: `name` points into the entry's allocation, which holds
        // the name, a NUL, then the value and a NUL (rd_kafka_header_add).
        let key = unsafe { key_bytes(name, value, size) };
        let value = (!value.is_null())
            // SAFETY: librdkafka reports `size` bytes at `value`.
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
        Some((key, value))
    }

    /// The headers in record order.
    pub fn iter(self) -> impl Iterator<Item = Header<'a>> {
        (0..self.len()).map_while(move |i| self.get(i))
    }

    /// Sum of key and value lengths, bytes.
    pub fn byte_size(self) -> usize {
        self.iter()
            .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len))
            .sum()
    }
}

/// Size in bytes of the zig-zag varint librdkafka writes for `n`.
fn varint_len(n: usize) -> usize {
    let mut z = (n as u64) << 1;
    let mut len = 1;
    while z >= 0x80 {
        z >>= 7;
        len += 1;
    }
    len
}

/// The key of the header entry whose name starts at `name`, with its true
/// length when the entry's fields agree with each other, else up to the
/// first NUL.
///
/// # Safety
/// `name`, `value` and `size` must come from `rd_kafka_header_get_all`.
unsafe fn key_bytes<'a>(name: *const c_char, value: *const c_void, size: usize) -> &'a [u8] {
    let entry = name
        .cast::<u8>()
        .sub(offset_of!(NativeHeader, name))
        .cast::<NativeHeader>();
    let (ser_size, value_size, name_size, value_ptr) = (
        ptr::addr_of!((*entry).ser_size).read_unaligned(),
        ptr::addr_of!((*entry).value_size).read_unaligned(),
        ptr::addr_of!((*entry).name_size).read_unaligned(),
        ptr::addr_of!((*entry).value).read_unaligned(),
    );
    let c_len = CStr::from_ptr(name).to_bytes().len();
    // Cheap field checks first; the name's end is read only once the
    // entry's own sizes vouch for it.
    let consistent = value_size == size
        && value_ptr.cast::<c_void>() == value
        && name_size >= c_len
        && name_size < (1 << 31)
        && ser_size == name_size + size + varint_len(name_size) + varint_len(size)
        && (value.is_null() || value_ptr == name.add(name_size + 1))
        && *name.add(name_size) == 0;
    let len = if consistent { name_size } else { c_len };
    std::slice::from_raw_parts(name.cast::<u8>(), len)
}

/// Headers for a record to be produced, built from byte keys and values.
/// Owned until handed to [`NativeProducer::produce`].
pub struct OutHeaders {
    native: *mut rdsys::rd_kafka_headers_t,
    bytes: usize,
}

// SAFETY: the headers object is exclusively owned and librdkafka objects of
// this kind are not tied to a thread.
unsafe impl Send for OutHeaders {}

impl OutHeaders {
    /// Empty headers with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            // SAFETY: allocates a new, empty headers object.
            native: unsafe { rdsys::rd_kafka_headers_new(capacity.max(1)) },
            bytes: 0,
        }
    }

    /// Appends one header, byte-exact.
    pub fn add(&mut self, key: &[u8], value: Option<&[u8]>) {
        let (value_ptr, value_len) =
            value.map_or((ptr::null(), 0), |v| (v.as_ptr().cast::<c_void>(), v.len()));
        // SAFETY: librdkafka copies `key.len()` and `value_len` bytes.
        unsafe {
            rdsys::rd_kafka_header_add(
                self.native,
                key.as_ptr().cast(),
                key.len() as isize,
                value_ptr,
                value_len as isize,
            );
        }
        self.bytes += key.len() + value_len;
    }

    /// Appends `value` as ASCII decimal.
    pub fn add_number(&mut self, key: &str, value: i64) {
        let mut buf = itoa::Buffer::new();
        self.add(key.as_bytes(), Some(buf.format(value).as_bytes()));
    }

    /// Sum of key and value lengths added so far, bytes.
    pub fn byte_size(&self) -> usize {
        self.bytes
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        HeaderView::of(self).len()
    }

    /// True when no header was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for OutHeaders {
    fn drop(&mut self) {
        if !self.native.is_null() {
            // SAFETY: still owned (not handed to the producer).
            unsafe { rdsys::rd_kafka_headers_destroy(self.native) };
        }
    }
}

/// Most topic handles a [`NativeProducer`] keeps at once; beyond this the
/// cache is emptied (records in flight keep their own reference).
const MAX_TOPIC_HANDLES: usize = 10_000;

/// A producer and the topic handles made for it: the only owner of native
/// topic pointers. librdkafka requires every topic handle to be destroyed
/// before its client (`rd_kafka_topic_destroy` on a destroyed `rd_kafka_t`
/// writes freed memory), so `Drop` releases the handles first, and the
/// `handles` field is declared before `producer` so that the field order
/// agrees. The producer's context must take a plain delivery opaque
/// ([`PlainOpaque`]): [`NativeProducer::produce`] hands librdkafka a `usize`.
pub struct NativeProducer<C: ProducerContext + 'static>
where
    C::DeliveryOpaque: PlainOpaque,
{
    handles: TopicHandles,
    producer: PolledProducer<C>,
}

/// Delivery opaques that a `usize` may stand for: the delivery callback reads
/// them back without dereferencing a pointer (`usize` itself, and `()`,
/// which ignores it).
///
/// # Safety
/// `IntoOpaque::from_ptr` of the type must accept any pointer-sized value.
pub unsafe trait PlainOpaque: rdkafka::util::IntoOpaque {}

// SAFETY: `usize::from_ptr` casts the pointer back to an integer.
unsafe impl PlainOpaque for usize {}
// SAFETY: `<()>::from_ptr` ignores the pointer.
unsafe impl PlainOpaque for () {}

impl<C: ProducerContext + 'static> NativeProducer<C>
where
    C::DeliveryOpaque: PlainOpaque,
{
    /// Takes ownership of `producer`; no topic handle is made yet.
    pub fn new(producer: PolledProducer<C>) -> Self {
        Self {
            handles: TopicHandles::default(),
            producer,
        }
    }

    /// The producer, for flushes, counts and clones of its handle.
    pub fn producer(&self) -> &PolledProducer<C> {
        &self.producer
    }

    /// Enqueues `record` on `topic` (key and value are copied; the topic
    /// handle is looked up once per topic). On failure the headers are
    /// handed back with librdkafka's error code (`QueueFull`,
    /// `MessageSizeTooLarge`, `UnknownPartition`, …; `InvalidTopic` when
    /// librdkafka refuses the name).
    pub fn produce(
        &mut self,
        topic: &str,
        record: Outgoing<'_>,
    ) -> Result<(), (RDKafkaErrorCode, OutHeaders)> {
        let rk = self.producer.client().native_ptr();
        let Some(handle) = self.handles.get(rk, topic) else {
            return Err((RDKafkaErrorCode::InvalidTopic, record.headers));
        };
        // SAFETY: `handle` was made for this producer (the cache belongs to
        // it and is emptied before it is dropped), and the producer's
        // context reads a usize opaque back without dereferencing it (the
        // type bound).
        unsafe { produce(rk, handle.native, record) }
    }
}

impl<C: ProducerContext + 'static> Drop for NativeProducer<C>
where
    C::DeliveryOpaque: PlainOpaque,
{
    /// Topic handles before the producer (see [`NativeProducer`]).
    fn drop(&mut self) {
        self.handles = TopicHandles::default();
    }
}

/// Topic handles of one producer, opened on first use (a producer that never
/// writes a topic keeps no partitions of it), the last one used first: most
/// records go to the topic the previous one went to.
#[derive(Default)]
struct TopicHandles {
    list: Vec<TopicHandle>,
    index: HashMap<String, usize>,
    last: usize,
}

impl TopicHandles {
    /// The handle of `name` on producer `rk`; None if librdkafka refuses
    /// the name (never for the validated names the service produces to).
    fn get(&mut self, rk: *mut rdsys::rd_kafka_t, name: &str) -> Option<&TopicHandle> {
        if self.list.get(self.last).is_some_and(|h| h.name == name) {
            return self.list.get(self.last);
        }
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                if self.list.len() >= MAX_TOPIC_HANDLES {
                    self.list.clear();
                    self.index.clear();
                }
                let handle = TopicHandle::new(rk, name)?;
                self.list.push(handle);
                self.index.insert(name.to_owned(), self.list.len() - 1);
                self.list.len() - 1
            }
        };
        self.last = i;
        self.list.get(i)
    }
}

/// A producer-side handle on one topic, looked up once; owned by the
/// [`TopicHandles`] of the producer it was made for.
struct TopicHandle {
    native: *mut rdsys::rd_kafka_topic_t,
    name: String,
}

// SAFETY: librdkafka topic handles are reference counted and thread-safe.
unsafe impl Send for TopicHandle {}

impl TopicHandle {
    /// A handle on `name` for the client `rk` (a live producer, which owns
    /// the cache the handle goes into). None if the name cannot be a C
    /// string or librdkafka refuses it.
    fn new(rk: *mut rdsys::rd_kafka_t, name: &str) -> Option<Self> {
        let c_name = CString::new(name).ok()?;
        // SAFETY: `rk` is a live client; the name is a C string.
        let native = unsafe { rdsys::rd_kafka_topic_new(rk, c_name.as_ptr(), ptr::null_mut()) };
        (!native.is_null()).then(|| Self {
            native,
            name: name.to_owned(),
        })
    }
}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: releases the reference taken by rd_kafka_topic_new.
        unsafe { rdsys::rd_kafka_topic_destroy(self.native) };
    }
}

/// One record to produce.
pub struct Outgoing<'a> {
    /// Partition, or None for the configured partitioner (by key).
    pub partition: Option<i32>,
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value.
    pub value: Option<&'a [u8]>,
    /// Record timestamp, epoch ms.
    pub timestamp_ms: i64,
    /// Record headers, handed to librdkafka on success.
    pub headers: OutHeaders,
    /// The delivery opaque handed back to the delivery callback.
    pub opaque: usize,
}

/// Enqueues `record` on the producer `rk` and topic handle `rkt`.
///
/// # Safety
/// `rk` must be the producer `rkt` was made for, and its delivery callback
/// must expect a `usize` opaque.
unsafe fn produce(
    rk: *mut rdsys::rd_kafka_t,
    rkt: *mut rdsys::rd_kafka_topic_t,
    record: Outgoing<'_>,
) -> Result<(), (RDKafkaErrorCode, OutHeaders)> {
    use rdsys::rd_kafka_vtype_t::*;
    let bytes = |b: Option<&[u8]>| {
        b.map_or((ptr::null_mut(), 0), |b| {
            (b.as_ptr() as *mut c_void, b.len())
        })
    };
    let (value_ptr, value_len) = bytes(record.value);
    let (key_ptr, key_len) = bytes(record.key);
    let headers = record.headers;
    let err = rdsys::rd_kafka_producev(
        rk,
        RD_KAFKA_VTYPE_RKT,
        rkt,
        RD_KAFKA_VTYPE_PARTITION,
        record.partition.unwrap_or(-1),
        RD_KAFKA_VTYPE_MSGFLAGS,
        rdsys::RD_KAFKA_MSG_F_COPY,
        RD_KAFKA_VTYPE_VALUE,
        value_ptr,
        value_len,
        RD_KAFKA_VTYPE_KEY,
        key_ptr,
        key_len,
        RD_KAFKA_VTYPE_OPAQUE,
        record.opaque as *mut c_void,
        RD_KAFKA_VTYPE_TIMESTAMP,
        record.timestamp_ms,
        RD_KAFKA_VTYPE_HEADERS,
        headers.native,
        RD_KAFKA_VTYPE_END,
    );
    if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        // librdkafka owns the headers now.
        std::mem::forget(headers);
        Ok(())
    } else {
        Err((err.into(), headers))
    }
}

/// The librdkafka release whose private header layout [`HeaderView`]
/// reads: (major, minor) of 2.12, as bundled by rdkafka-sys 4.10.
pub const LAYOUT_VERSION: (i32, i32) = (2, 12);

/// Checks that the linked librdkafka is the release [`LAYOUT_VERSION`]
/// names (a build against a system librdkafka could link another one);
/// the error says which was found.
pub fn check_librdkafka_version() -> Result<(), String> {
    // SAFETY: rd_kafka_version reads a constant.
    check_version(unsafe { rdsys::rd_kafka_version() })
}

/// [`check_librdkafka_version`] for a version number as librdkafka encodes
/// it (`0xMMmmrrxx`).
fn check_version(version: i32) -> Result<(), String> {
    let (major, minor, revision) = (
        version >> 24 & 0xff,
        version >> 16 & 0xff,
        version >> 8 & 0xff,
    );
    if (major, minor) == LAYOUT_VERSION {
        Ok(())
    } else {
        Err(format!(
            "linked librdkafka is {major}.{minor}.{revision}; this build reads record headers in the layout of {}.{} and must be built with it. Fix: build with the bundled librdkafka (the rdkafka crate's default)",
            LAYOUT_VERSION.0, LAYOUT_VERSION.1
        ))
    }
}

/// Why librdkafka cannot parse the headers of `msg`, if it cannot: more
/// than 100,000 headers, or a malformed header block
/// (`rd_kafka_msg_headers_parse`, `rdkafka_msg.c`). rdkafka's safe API
/// reads such a record as one without headers, which would route it as if
/// it had no delay header at all.
pub fn unreadable_headers(msg: &BorrowedMessage<'_>) -> Option<String> {
    let mut headers: *mut rdsys::rd_kafka_headers_t = ptr::null_mut();
    // SAFETY: `msg` borrows a live message; the call parses (or returns the
    // already parsed) headers, which stay owned by the message.
    let err = unsafe { rdsys::rd_kafka_message_headers(msg.ptr(), &mut headers) };
    match err {
        rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        | rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__NOENT => None,
        other => Some(format!("librdkafka: {:?}", RDKafkaErrorCode::from(other))),
    }
}

/// librdkafka's locally cached high watermark of a partition, as last seen
/// in a fetch response (no broker round trip); None when unknown. Fresh
/// only right after a fetch response — e.g. when its end-of-partition event
/// is polled.
pub fn cached_high_watermark<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    use rdkafka::consumer::Consumer;
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client is live for the consumer's lifetime; the call only
    // reads local state into the two out-parameters.
    let err = unsafe {
        rdsys::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// Least time between two [`release_free_memory`] trims, ms. A trim
/// consolidates every arena under its lock; once a second it cost 1.3 % of
/// the service's CPU under load (perf, sustained 20,000/s, BENCHMARKS.md),
/// once in ten seconds a tenth of that, and the resident set still returns
/// within seconds of a burst's end.
const TRIM_EVERY_MS: i64 = 10_000;

/// Hands freed heap pages back to the kernel, at most once in
/// [`TRIM_EVERY_MS`] per process (`now_ms`: the caller's clock). After a
/// burst, glibc keeps the memory librdkafka's queues used; without this the
/// resident set would stay at the burst's peak although nothing is held
/// (pending records live in Kafka). Elsewhere than glibc this does nothing.
pub fn release_free_memory(now_ms: i64) {
    static LAST_TRIM_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let last = LAST_TRIM_MS.load(std::sync::atomic::Ordering::Relaxed);
    if now_ms - last < TRIM_EVERY_MS {
        return;
    }
    LAST_TRIM_MS.store(now_ms, std::sync::atomic::Ordering::Relaxed);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap structures.
    unsafe {
        libc::malloc_trim(0);
    }
}

mod polled;
pub use polled::PolledProducer;

#[cfg(test)]
mod tests;
