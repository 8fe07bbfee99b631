//! `kafka-delay produce`: publish delayed records from the shell.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::config::Settings;
use crate::kafka;
use crate::model::envelope;

use super::exit;

/// When the records are due.
#[derive(Debug, Clone)]
pub enum When {
    /// `x-delay`: this long after the record timestamp.
    Delay(Duration),
    /// `x-deliver-at`: epoch ms or RFC 3339, passed through verbatim.
    At(String),
}

/// Publishes one record per value to the ingress topic with routing headers
/// for `target` and `when`, and `x-delay-id` when `id` is set. Returns the
/// number of records acknowledged.
pub fn produce(
    settings: &Settings,
    target: &str,
    when: &When,
    key: Option<&str>,
    id: Option<&str>,
    values: impl Iterator<Item = String>,
) -> Result<usize, KafkaError> {
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::producer_config(settings).create()?;
    let (name, value) = match when {
        When::Delay(d) => (envelope::DELAY, d.as_millis().to_string()),
        When::At(at) => (envelope::DELIVER_AT, at.clone()),
    };
    let mut count = 0;
    for payload in values {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: name,
                value: Some(&value),
            })
            .insert(Header {
                key: envelope::TARGET_TOPIC,
                value: Some(target),
            });
        let headers = match id {
            Some(id) => headers.insert(Header {
                key: envelope::ID,
                value: Some(id),
            }),
            None => headers,
        };
        let mut record = BaseRecord::<str, str>::to(&settings.topics.ingress)
            .payload(&payload)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        while let Err((error, back)) = producer.send(record) {
            if !matches!(
                error,
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
            ) {
                return Err(error);
            }
            record = back;
            std::thread::sleep(Duration::from_millis(5));
        }
        count += 1;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(count)
}

/// Values from standard input, one per line.
pub fn stdin_lines() -> impl Iterator<Item = String> {
    std::io::stdin().lock().lines().map_while(Result::ok)
}

/// `kafka-delay produce`: publishes `value`, or one record per line of
/// standard input. A bad `--deliver-at` publishes nothing (exit 64): the
/// service would dead-letter every record of it.
pub(crate) fn command(
    settings: &Settings,
    target: &str,
    when: &When,
    key: Option<&str>,
    id: Option<&str>,
    value: Option<String>,
) -> ExitCode {
    if let When::At(at) = when {
        if let Err(error) = envelope::parse_deliver_at(at.as_bytes()) {
            return exit::usage(format!("--deliver-at: {error}; nothing was published"));
        }
    }
    let values: Box<dyn Iterator<Item = String>> = match value {
        Some(v) => Box::new(std::iter::once(v)),
        None => Box::new(stdin_lines()),
    };
    match produce(settings, target, when, key, id, values) {
        Ok(n) => {
            println!("{n} records published to {}", settings.topics.ingress);
            ExitCode::SUCCESS
        }
        Err(error) => exit::fail(kafka::describe(&error)),
    }
}
