//! The Kafka layer: librdkafka client configuration (here: our defaults,
//! then the user's `[kafka.*properties]`, then the few settings correctness
//! depends on), the FFI module ([`native`]), topic specs and `topics apply`
//! ([`topics`]), the clock probe that reads the broker's clock
//! ([`clock_probe`]), offsets across group layouts ([`groups`]), tier topics across wheel layouts — retired tiers, `topics
//! plan` and `topics prune` ([`layout`]) — and target look-ups off the
//! loop's thread ([`targets`]).

pub mod clock_probe;
pub mod groups;
pub mod layout;
#[allow(unsafe_code)]
pub mod native;
pub(crate) mod targets;
pub mod topics;

use rdkafka::ClientConfig;

use crate::config::Settings;

/// Consumer defaults chosen for low lateness on any Kafka-compatible broker:
/// short fetch waits (brokers that do not wake a waiting fetch would
/// otherwise add up to `fetch.wait.max.ms` to every hop), a short
/// fetch-queue back-off, and a prefetch queue of 16 MiB per consumer
/// (librdkafka's 64 MiB default, times one consumer per tier, would
/// dominate the resident memory).
const CONSUMER_DEFAULTS: [(&str, &str); 6] = [
    ("auto.offset.reset", "earliest"),
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("fetch.wait.max.ms", "20"),
    ("fetch.queue.backoff.ms", "10"),
    ("session.timeout.ms", "10000"),
    ("queued.max.messages.kbytes", "16384"),
];

/// Set last: the consumer loop commits, every `service.commit_interval`,
/// only offsets below which the broker acknowledged every record
/// (at-least-once).
const CONSUMER_FORCED: [(&str, &str); 2] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

/// Producer defaults: idempotent, acknowledged by all in-sync replicas, keys
/// partitioned like the Java client (murmur2), a short linger to batch, no
/// topic auto-creation (a missing target is dead-lettered, not created), a
/// local size limit above any broker's (`message.max.bytes`: the broker
/// judges what fits; a record it refuses is dead-lettered), a produce queue
/// bounded at 64 MiB (full: the loop pauses its sources), and a 2-minute
/// delivery timeout before the service's own retries take over.
const PRODUCER_DEFAULTS: [(&str, &str); 8] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "5"),
    ("allow.auto.create.topics", "false"),
    ("partitioner", "murmur2_random"),
    ("message.max.bytes", "16777216"),
    ("queue.buffering.max.kbytes", "65536"),
    ("message.timeout.ms", "120000"),
];

fn base(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.kafka.bootstrap_servers);
    config
}

fn apply<'a>(config: &mut ClientConfig, props: impl IntoIterator<Item = (&'a str, &'a str)>) {
    for (key, value) in props {
        config.set(key, value);
    }
}

fn user<'a>(
    settings: &'a Settings,
    role: &'a std::collections::BTreeMap<String, String>,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    settings
        .kafka
        .properties
        .iter()
        .chain(role)
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

/// A consumer's configuration in consumer group `group`; `eof` turns on
/// end-of-partition events (tier loops decide "drained" from them).
pub fn consumer_config(settings: &Settings, group: &str, eof: bool) -> ClientConfig {
    let mut config = base(settings);
    config.set("group.id", group);
    apply(&mut config, CONSUMER_DEFAULTS);
    apply(
        &mut config,
        user(settings, &settings.kafka.consumer_properties),
    );
    apply(&mut config, CONSUMER_FORCED);
    config.set("enable.partition.eof", if eof { "true" } else { "false" });
    config
}

/// The producer's configuration.
pub fn producer_config(settings: &Settings) -> ClientConfig {
    let mut config = base(settings);
    apply(&mut config, PRODUCER_DEFAULTS);
    apply(
        &mut config,
        user(settings, &settings.kafka.producer_properties),
    );
    config
}

/// The producer of one consumer loop: [`producer_config`], and in
/// exactly-once mode (`transactional_label`: the loop's label) a
/// transactional id, the transaction timeout, and `message.timeout.ms` no
/// longer than it (librdkafka requires it).
pub fn loop_producer_config(
    settings: &Settings,
    transactional_label: Option<&str>,
) -> ClientConfig {
    let mut config = producer_config(settings);
    if let Some(label) = transactional_label {
        config.set("transactional.id", settings.transactional_id(label));
        let txn_ms = settings.delivery.transaction_timeout.as_millis() as u64;
        config.set("transaction.timeout.ms", txn_ms.to_string());
        let message_ms = config
            .get("message.timeout.ms")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(txn_ms, |ms| ms.min(txn_ms));
        config.set("message.timeout.ms", message_ms.to_string());
    }
    config
}

/// The consumer of one consumer loop, in group `group`: [`consumer_config`]
/// with static membership when `delivery.instance_id` is set (KIP-345: a
/// restart under the same name takes its partitions back without a
/// rebalance). A tier loop (`tier_lead_ms`: its tier's lead time) gets
/// end-of-partition events and, unless the user set `fetch.wait.max.ms`, a
/// fetch wait of half its lead time (10 to 100 ms): brokers that do not wake
/// a waiting fetch (Tansu) answer an empty partition after that wait, so a
/// tier loop fetches its drained partitions far less often than the
/// ingress.
pub fn loop_consumer_config(
    settings: &Settings,
    group: &str,
    tier_lead_ms: Option<i64>,
) -> ClientConfig {
    let mut config = consumer_config(settings, group, tier_lead_ms.is_some());
    if let Some(id) = &settings.delivery.instance_id {
        config.set("group.instance.id", id);
    }
    if let Some(lead_ms) = tier_lead_ms {
        let user_set = settings.kafka.properties.contains_key("fetch.wait.max.ms")
            || settings
                .kafka
                .consumer_properties
                .contains_key("fetch.wait.max.ms");
        if !user_set {
            let wait = (lead_ms / 2).clamp(10, 100);
            config.set("fetch.wait.max.ms", wait.to_string());
        }
    }
    config
}

/// The admin client's configuration (shared properties only).
pub fn admin_config(settings: &Settings) -> ClientConfig {
    let mut config = base(settings);
    apply(&mut config, user(settings, &Default::default()));
    config
}

/// Describes a client error without ever echoing a property's value:
/// rdkafka's own text for a bad property ends with the value, and
/// librdkafka's quotes it for an invalid one. Values are shown only for an
/// invalid value of a property that is not secret-looking.
pub fn describe(error: &rdkafka::error::KafkaError) -> String {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaConfRes;
    match error {
        KafkaError::ClientConfig(res, desc, key, value) => {
            let shown =
                *res == RDKafkaConfRes::RD_KAFKA_CONF_INVALID && !crate::config::is_secret_key(key);
            let desc = if value.is_empty() {
                desc.clone()
            } else {
                desc.replace(value.as_str(), "<redacted>")
            };
            match res {
                RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN => {
                    format!("unknown librdkafka property {key:?}: {desc}")
                }
                _ if shown => {
                    format!("invalid value {value:?} of librdkafka property {key:?}: {desc}")
                }
                _ => format!("invalid value of librdkafka property {key:?}: {desc}"),
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(config: &ClientConfig) -> String {
        match config.create::<rdkafka::producer::BaseProducer>() {
            Ok(_) => panic!("the configuration must be refused"),
            Err(e) => describe(&e),
        }
    }

    #[test]
    fn property_errors_never_show_secret_values() {
        let mut config = ClientConfig::new();
        config.set("sasl.passwrod", "hunter2-secret");
        let text = error_of(&config);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("sasl.passwrod"), "{text}");
        let mut config = ClientConfig::new();
        config.set("acks", "sometimes");
        let text = error_of(&config);
        assert!(
            text.contains("acks") && text.contains("sometimes"),
            "{text}"
        );
        let mut config = ClientConfig::new();
        config.set("ssl.key.password", "hunter4");
        config.set("socket.timeout.ms", "soon");
        let text = error_of(&config);
        assert!(!text.contains("hunter4"), "{text}");
    }
}
