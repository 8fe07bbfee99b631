//! librdkafka client configuration: our defaults, then the user's
//! `[kafka.*properties]`, then the few settings correctness depends on.

use rdkafka::ClientConfig;

use crate::config::Settings;

/// Consumer defaults chosen for low lateness on any Kafka-compatible broker:
/// short fetch waits (brokers that do not wake a waiting fetch would
/// otherwise add up to `fetch.wait.max.ms` to every hop) and a short
/// fetch-queue back-off.
const CONSUMER_DEFAULTS: [(&str, &str); 5] = [
    ("auto.offset.reset", "earliest"),
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("fetch.wait.max.ms", "20"),
    ("fetch.queue.backoff.ms", "10"),
    ("session.timeout.ms", "10000"),
];

/// Set last: the consumer loop commits, every `service.commit_interval`,
/// only offsets below which the broker acknowledged every record
/// (at-least-once).
const CONSUMER_FORCED: [(&str, &str); 2] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

/// Producer defaults: idempotent, acknowledged by all in-sync replicas, keys
/// partitioned like the Java client (murmur2), a
/// short linger to batch, and no topic auto-creation (a missing target is
/// dead-lettered, not created).
const PRODUCER_DEFAULTS: [(&str, &str); 5] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "5"),
    ("allow.auto.create.topics", "false"),
    ("partitioner", "murmur2_random"),
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

/// The consumer's configuration (group `kafka.group_id`).
pub fn consumer_config(settings: &Settings) -> ClientConfig {
    let mut config = base(settings);
    config.set("group.id", &settings.kafka.group_id);
    apply(&mut config, CONSUMER_DEFAULTS);
    apply(
        &mut config,
        user(settings, &settings.kafka.consumer_properties),
    );
    apply(&mut config, CONSUMER_FORCED);
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

/// The admin client's configuration (shared properties only).
pub fn admin_config(settings: &Settings) -> ClientConfig {
    let mut config = base(settings);
    apply(&mut config, user(settings, &Default::default()));
    config
}
