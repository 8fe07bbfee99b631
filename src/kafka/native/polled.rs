//! A producer whose delivery reports are served by a thread that sleeps
//! until librdkafka has something for it.
//!
//! rdkafka's `ThreadedProducer` serves them with `poll(100 ms)` in a loop.
//! That poll waits on the queue for the time left rounded down to whole
//! milliseconds, so the last fraction of every 100 ms is spent polling
//! with a zero wait: about 1 % of a core per idle producer, and an
//! instance has one producer per consumer loop (six or more). A profile of
//! an idle instance (perf, default wheel, BENCHMARKS.md "Idle cost") put
//! 61 % of its CPU in those loops.
//!
//! Here the thread blocks in `poll(2)` on an eventfd that librdkafka writes
//! when an event is enqueued (`rd_kafka_queue_io_event_enable`, which
//! writes once until the queue is served again), then serves events while
//! the queue holds any. It also wakes every [`IDLE_WAKE_MS`] to see the
//! stop flag; dropping the last handle writes the eventfd, so shutdown does
//! not wait for that.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::KafkaResult;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::ClientConfig;

/// Longest sleep of the delivery thread without an event, ms: bounds how
/// long it can miss a wake-up (none is expected) and keeps idle wake-ups
/// at 10 per second.
const IDLE_WAKE_MS: i32 = 100;

/// Events served per wake-up before the thread sleeps again (a queue that
/// never empties cannot hold the thread forever).
const MAX_EVENTS_PER_WAKE: usize = 100_000;

/// A [`BaseProducer`] with its delivery thread; clones share both. Derefs
/// to the producer (`flush`, transactions, `client()`).
///
/// Drop order: the last handle stops and joins the thread, unregisters the
/// eventfd from the queue and destroys its queue handle (all in
/// [`Poller`]'s `Drop`) before the producer — whose client a queue handle
/// must not outlive — is released; `poller` is declared first for that.
pub struct PolledProducer<C: ProducerContext + 'static> {
    poller: Arc<Poller>,
    producer: Arc<BaseProducer<C>>,
}

impl<C: ProducerContext + 'static> Clone for PolledProducer<C> {
    fn clone(&self) -> Self {
        Self {
            poller: self.poller.clone(),
            producer: self.producer.clone(),
        }
    }
}

impl<C: ProducerContext + 'static> std::ops::Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    /// Creates the producer from `config` and starts its delivery thread,
    /// named by [`PolledProducer::thread_name`].
    ///
    /// # Errors
    /// librdkafka refusing the configuration, or the eventfd or thread not
    /// being created (reported as `KafkaError::ClientCreation`).
    pub fn create(config: &ClientConfig, context: C) -> KafkaResult<Self> {
        let creation = |what: &str| {
            rdkafka::error::KafkaError::ClientCreation(format!(
                "delivery thread: {what}: {}",
                std::io::Error::last_os_error()
            ))
        };
        let producer = Arc::new(BaseProducer::from_config_and_context(config, context)?);
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(creation("eventfd"));
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(raw) };
        let rk = producer.client().native_ptr();
        // SAFETY: `rk` is a live client; the handle is destroyed in
        // `Poller::drop`, before the last reference to the client goes.
        let queue = unsafe { rdsys::rd_kafka_queue_get_main(rk) };
        let one: u64 = 1;
        // SAFETY: librdkafka copies the 8-byte payload (rd_kafka_q_io_event_enable).
        unsafe {
            rdsys::rd_kafka_queue_io_event_enable(
                queue,
                wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (producer, stop) = (producer.clone(), stop.clone());
            let (fd, queue) = (wake.as_raw_fd(), QueuePtr(queue));
            std::thread::Builder::new()
                .name(Self::thread_name(&producer))
                .spawn(move || serve(&producer, fd, &queue, &stop))
        };
        // On a failed spawn `poller` still unregisters and destroys the queue.
        let mut poller = Poller {
            queue: QueuePtr(queue),
            wake,
            stop,
            thread: None,
        };
        poller.thread = Some(thread.map_err(|_| creation("thread"))?);
        Ok(Self {
            poller: Arc::new(poller),
            producer,
        })
    }
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    /// The delivery thread's name: `kd-dr-<n>` for librdkafka's client
    /// `rdkafka#producer-<n>` (unique in the process; 15 bytes at most, the
    /// Linux limit).
    pub fn thread_name(producer: &BaseProducer<C>) -> String {
        let rk = producer.client().native_ptr();
        // SAFETY: rd_kafka_name returns the live client's own C string.
        let client = unsafe { std::ffi::CStr::from_ptr(rdsys::rd_kafka_name(rk)) };
        let client = client.to_string_lossy();
        let n = client.rsplit('-').next().unwrap_or(&client);
        let mut name = format!("kd-dr-{n}");
        name.truncate(15);
        name
    }
}

/// The delivery thread: sleep on `fd`, then serve `queue` until it is empty.
fn serve<C: ProducerContext>(
    producer: &BaseProducer<C>,
    fd: i32,
    queue: &QueuePtr,
    stop: &AtomicBool,
) {
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; `fd` lives until this thread is joined.
        unsafe { libc::poll(&mut pfd, 1, IDLE_WAKE_MS) };
        if pfd.revents & libc::POLLIN != 0 {
            let mut counter = 0u64;
            // SAFETY: reads 8 bytes into a u64 (resets the eventfd).
            unsafe { libc::read(fd, (&mut counter as *mut u64).cast(), 8) };
        }
        for _ in 0..MAX_EVENTS_PER_WAKE {
            // SAFETY: the queue handle lives until this thread is joined.
            if unsafe { rdsys::rd_kafka_queue_length(queue.0) } == 0 {
                break;
            }
            // Serves at most one event (a delivery report covers a batch).
            producer.poll(Duration::ZERO);
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
    }
}

/// A queue handle the delivery thread may use.
struct QueuePtr(*mut rdsys::rd_kafka_queue_t);

// SAFETY: librdkafka queues are thread-safe; the handle is destroyed only
// after the thread that uses it is joined.
unsafe impl Send for QueuePtr {}
// SAFETY: as above.
unsafe impl Sync for QueuePtr {}

/// The delivery thread and what it sleeps on.
struct Poller {
    queue: QueuePtr,
    wake: OwnedFd,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Poller {
    /// Stops and joins the thread, then unregisters the eventfd and
    /// destroys the queue handle (the eventfd closes after, with `wake`).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes to our own eventfd to wake the thread.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // SAFETY: the handle came from rd_kafka_queue_get_main and nothing
        // uses it any more; fd -1 unregisters the eventfd before it closes.
        unsafe {
            rdsys::rd_kafka_queue_io_event_enable(self.queue.0, -1, std::ptr::null(), 0);
            rdsys::rd_kafka_queue_destroy(self.queue.0);
        }
    }
}
