//! `kafka-delay cancel`: publishes a cancellation to the cancel topic
//! (the contract: [`crate::model::cancel`]).

use std::process::ExitCode;
use std::time::Duration;

use rdkafka::error::KafkaError;

use super::exit;
use crate::config::Settings;
use crate::kafka;
use crate::model::cancel::Cancel;
use crate::model::envelope;

/// Publishes a cancellation of `id` (only for `target`, when given) to the
/// cancel topic: it covers records published before `before_ms` and due
/// up to `until_ms` (epoch ms). The record is timestamped `before_ms`.
pub fn publish(
    settings: &Settings,
    id: &str,
    target: Option<&str>,
    before_ms: i64,
    until_ms: i64,
) -> Result<(), KafkaError> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> =
        crate::kafka::producer_config(settings).create()?;
    let value = serde_json::to_string(&Cancel {
        before: before_ms,
        until: until_ms,
        target: target.map(str::to_owned),
    })
    .expect("serializable");
    producer
        .send(
            BaseRecord::to(&settings.topics.cancel)
                .key(id)
                .payload(&value)
                .timestamp(before_ms),
        )
        .map_err(|(error, _)| error)?;
    producer.flush(Duration::from_secs(30))
}

/// `kafka-delay cancel`.
pub(crate) fn command(
    settings: &Settings,
    id: &str,
    target: Option<&str>,
    due: Option<&str>,
) -> ExitCode {
    if crate::model::cancel::parse_id(id.as_bytes()).is_none() {
        return exit::usage(format!(
            "--id must be 1 to {} bytes",
            crate::model::cancel::ID_MAX_BYTES
        ));
    }
    let now = crate::model::clock::now_ms();
    let until = match due {
        Some(raw) => match envelope::parse_deliver_at(raw.as_bytes()) {
            Ok(due_ms) => due_ms,
            Err(error) => return exit::usage(format!("--due: {error}")),
        },
        None => now.saturating_add(settings.wheel.max_delay.as_millis() as i64),
    };
    if until <= now {
        println!(
            "too late: records with x-delay-id {id} due at {} were due {} ms ago and have been delivered; nothing was cancelled",
            crate::model::clock::rfc3339_ms(until),
            now - until
        );
        return ExitCode::from(exit::NOT_FOUND);
    }
    match publish(settings, id, target, now, until) {
        Ok(()) => {
            let at = crate::model::clock::rfc3339_ms;
            println!(
                "cancelled: records with x-delay-id {id}{} published before {} and due by {} will not be delivered",
                target.map(|t| format!(" for {t}")).unwrap_or_default(),
                at(now),
                at(until)
            );
            ExitCode::SUCCESS
        }
        Err(error) => exit::fail(kafka::describe(&error)),
    }
}
