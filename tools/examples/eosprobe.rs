use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::time::Duration;

fn main() {
    let bs = std::env::args().nth(1).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .create()
        .unwrap();
    rt.block_on(admin.create_topics(
        &[
            NewTopic::new("src", 1, TopicReplication::Fixed(1)),
            NewTopic::new("dst", 1, TopicReplication::Fixed(1)),
        ],
        &AdminOptions::new(),
    ))
    .unwrap();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .create()
        .unwrap();
    for i in 0..10 {
        p.send(BaseRecord::<str, str>::to("src").payload(&format!("s{i}")))
            .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("group.id", "g")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    c.subscribe(&["src"]).unwrap();
    let mut n = 0;
    while n < 10 {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
            n += 1;
            println!("read {}", m.offset());
        }
    }
    let tp: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("transactional.id", "t1")
        .create()
        .unwrap();
    tp.init_transactions(Duration::from_secs(10)).unwrap();
    tp.begin_transaction().unwrap();
    for i in 0..3 {
        tp.send(BaseRecord::<str, str>::to("dst").payload(&format!("d{i}")))
            .unwrap();
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("src", 0, Offset::Offset(4))
        .unwrap();
    tpl.find_partition("src", 0)
        .unwrap()
        .set_metadata("kd1:b5a");
    let t0 = std::time::Instant::now();
    tp.send_offsets_to_transaction(&tpl, &c.group_metadata().unwrap(), Duration::from_secs(10))
        .unwrap();
    tp.commit_transaction(Duration::from_secs(10)).unwrap();
    println!("commit took {:?}", t0.elapsed());
    let mut q = TopicPartitionList::new();
    q.add_partition("src", 0);
    let got = c.committed_offsets(q, Duration::from_secs(5)).unwrap();
    for e in got.elements() {
        println!("committed {:?} metadata {:?}", e.offset(), e.metadata());
    }
    // zombie: a second producer with the same id while the first has an open txn
    tp.begin_transaction().unwrap();
    tp.send(BaseRecord::<str, str>::to("dst").payload("zombie"))
        .unwrap();
    tp.flush(Duration::from_secs(5)).unwrap();
    let tp2: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("transactional.id", "t1")
        .create()
        .unwrap();
    tp2.init_transactions(Duration::from_secs(10)).unwrap();
    tp2.begin_transaction().unwrap();
    tp2.send(BaseRecord::<str, str>::to("dst").payload("new"))
        .unwrap();
    tp2.commit_transaction(Duration::from_secs(10)).unwrap();
    if std::env::var("COMMIT_ZOMBIE").is_ok() {
        match tp.commit_transaction(Duration::from_secs(5)) {
            Ok(()) => println!("ZOMBIE COMMIT OK"),
            Err(e) => println!("zombie commit refused: {e}"),
        }
    } else {
        std::mem::forget(tp);
    }
    // aborted txn
    tp2.begin_transaction().unwrap();
    tp2.send(BaseRecord::<str, str>::to("dst").payload("aborted"))
        .unwrap();
    tp2.flush(Duration::from_secs(5)).unwrap();
    tp2.abort_transaction(Duration::from_secs(5)).unwrap();
    let r: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("group.id", "r")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut a = TopicPartitionList::new();
    a.add_partition_offset("dst", 0, Offset::Beginning).unwrap();
    r.assign(&a).unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < end {
        if let Some(Ok(m)) = r.poll(Duration::from_millis(200)) {
            println!(
                "dst {} {}",
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap())
            );
        }
    }
}
