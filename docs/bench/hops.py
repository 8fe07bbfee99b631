"""Shares of the service's CPU by hop, from a perf profile with call graphs.

    perf record -p $(pgrep -f "kafka-delay run") --call-graph dwarf,16384 -F 149 -o svc.perf -- sleep 35
    perf script -i svc.perf -F comm,ip,sym | python3 docs/bench/hops.py

Each sample goes to the first rule (in the order below) that any frame of
its stack matches; BENCHMARKS.md, "Where the time goes", has the result.
"""
import collections
import sys

RULES = [
    ("final write: produce call", ["Forwarder::deliver"]),
    ("tier write: produce call", ["Forwarder::write_tier"]),
    ("dead letter", ["write_dead_letter"]),
    ("ingress: parse + route", ["on_ingress_record", "Ingress>::ingest", "::ingest", "ConsumerLoop>::route"]),
    ("release: timer + cancel check", ["fire_timers"]),
    ("tier read: parse + timer insert", ["on_tier_record", "tier_record"]),
    ("consume: poll queue (librdkafka -> app)", ["poll_queue", "BaseConsumer"]),
    ("delivery reports + ledger", ["handle_delivery_report", "DeliveryContext", "BaseProducer<C,Part>::poll"]),
    ("librdkafka: produce requests", ["rd_kafka_broker_producer_serve", "rd_kafka_ProduceRequest", "rd_kafka_handle_Produce"]),
    ("librdkafka: fetch + parse", ["rd_kafka_broker_consumer_serve", "rd_kafka_fetch", "rd_kafka_msgset_parse", "rd_kafka_msgset_reader"]),
    ("librdkafka: broker thread other", ["rd_kafka_broker_thread_main"]),
    ("loop: commit/housekeeping/pause", ["housekeeping", "commit", "apply_flow", "refresh_gauges", "pause", "resume"]),
    ("consumer loop other", ["ConsumerLoop::run"]),
]
counts = collections.Counter()
total = 0
def classify(frames):
    for name, keys in RULES:  # the first rule that any frame matches
        if any(k in f for f in frames for k in keys):
            return name
    return "other (runtime, HTTP, clock, librdkafka main)"
frames = []
comm = None
for line in sys.stdin:
    if not line.strip():
        if comm is not None:
            counts[classify(frames)] += 1
            total += 1
        frames = []
        comm = None
        continue
    if not line.startswith((" ", "\t")):
        comm = line.split()[0]
        continue
    frames.append(line.strip())
if comm is not None:
    counts[classify(frames)] += 1
    total += 1
for name, n in counts.most_common():
    print(f"{100*n/total:5.1f}%  {name}")
print("samples", total)
