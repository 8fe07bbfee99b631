//! What a broker's transactions do, measured: how long a transactional
//! write takes to be acknowledged, how soon a `read_committed` reader sees
//! a commit, whether aborted or fenced writes stay hidden, and whether
//! consumer offsets sent in an aborted transaction stay uncommitted.
//!
//! ```sh
//! cargo run -p kafka-delay-tools --example broker_transactions -- host:port
//! ```
//!
//! It creates the topic `broker-transactions-probe` (1 partition) and uses
//! the transactional ids `probe-a` and `probe-c` and the consumer group
//! `broker-transactions-probe-offsets`: run it on a fresh broker.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const TOPIC: &str = "broker-transactions-probe";
const WAIT: Duration = Duration::from_secs(10);

fn producer(bootstrap: &str, id: &str) -> BaseProducer {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .create()
        .expect("producer");
    p.init_transactions(WAIT).expect("init_transactions");
    p
}

fn write(p: &BaseProducer, value: &str) -> Duration {
    let start = Instant::now();
    p.send(
        BaseRecord::<str, str>::to(TOPIC)
            .partition(0)
            .payload(value),
    )
    .map_err(|(e, _)| e)
    .expect("send");
    p.flush(WAIT).expect("flush");
    start.elapsed()
}

fn main() {
    let bootstrap = std::env::args()
        .nth(1)
        .expect("usage: broker_transactions host:port");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let topic = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(1));
    runtime
        .block_on(admin.create_topics(&[topic], &AdminOptions::new()))
        .expect("create topic");
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "broker-transactions-probe")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
        .expect("partition");
    reader.assign(&tpl).expect("assign");
    let read_until = |want: &str| -> (Vec<String>, Option<Duration>) {
        let start = Instant::now();
        let mut seen = Vec::new();
        while start.elapsed() < WAIT {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(5)) {
                let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                let done = v == want;
                seen.push(v);
                if done {
                    return (seen, Some(start.elapsed()));
                }
            }
        }
        (seen, None)
    };

    let a = producer(&bootstrap, "probe-a");
    let mut acks = Vec::new();
    let mut visible = Vec::new();
    for i in 0..10 {
        a.begin_transaction().expect("begin");
        acks.push(write(&a, &format!("committed-{i}")).as_secs_f64() * 1e3);
        a.commit_transaction(WAIT).expect("commit");
        let (_, after) = read_until(&format!("committed-{i}"));
        visible.push(after.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3));
    }
    acks.sort_by(f64::total_cmp);
    visible.sort_by(f64::total_cmp);
    println!(
        "first write of a transaction acknowledged after: median {:.1} ms (min {:.1}, max {:.1})",
        acks[5], acks[0], acks[9]
    );
    println!(
        "read_committed reader sees a commit after: median {:.1} ms (max {:.1})",
        visible[5], visible[9]
    );

    a.begin_transaction().expect("begin");
    write(&a, "aborted");
    a.abort_transaction(WAIT).expect("abort");
    // A fenced producer: `b` takes the id of `a` while `a` has an open
    // transaction; `a` is never heard of again (as after a SIGKILL).
    a.begin_transaction().expect("begin");
    write(&a, "fenced");
    let b = producer(&bootstrap, "probe-a");
    b.begin_transaction().expect("begin");
    write(&b, "last");
    b.commit_transaction(WAIT).expect("commit");
    let (seen, _) = read_until("last");
    println!(
        "aborted record hidden: {}; fenced producer's open transaction hidden: {}",
        !seen.iter().any(|v| v == "aborted"),
        !seen.iter().any(|v| v == "fenced")
    );

    // Offsets in a transaction: committed with it, dropped with an abort.
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "broker-transactions-probe-offsets")
        .create()
        .expect("group consumer");
    let c = producer(&bootstrap, "probe-c");
    let offsets_in_transaction = |offset: i64, commit: bool| {
        c.begin_transaction().expect("begin");
        write(&c, "with-offsets");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, Offset::Offset(offset))
            .expect("partition");
        let metadata = group.group_metadata().expect("group metadata");
        c.send_offsets_to_transaction(&tpl, &metadata, WAIT)
            .expect("send offsets");
        if commit {
            c.commit_transaction(WAIT).expect("commit");
        } else {
            c.abort_transaction(WAIT).expect("abort");
        }
        let mut query = TopicPartitionList::new();
        query.add_partition(TOPIC, 0);
        let committed = group.committed_offsets(query, WAIT).expect("committed");
        committed
            .find_partition(TOPIC, 0)
            .map(|e| e.offset())
            .unwrap_or(Offset::Invalid)
    };
    let after_commit = offsets_in_transaction(5, true);
    let after_abort = offsets_in_transaction(9, false);
    println!(
        "offsets sent in a transaction: committed with it: {} ({after_commit:?}); \
         left out by its abort: {} ({after_abort:?})",
        after_commit == Offset::Offset(5),
        after_abort == Offset::Offset(5)
    );
    std::mem::forget(a);
}
