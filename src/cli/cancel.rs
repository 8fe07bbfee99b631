//! `kafka-delay cancel`: publishes a cancellation to the cancel topic
//! (the contract: [`crate::model::cancel`]).

use std::process::ExitCode;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde::Serialize;

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
    publish_all(settings, &[(id, target, until_ms)], before_ms)
}

/// [`publish`] for many `(id, target, until_ms)` with one producer, all
/// covering records published before `before_ms`; returns once every one
/// is acknowledged.
pub fn publish_all(
    settings: &Settings,
    cancellations: &[(&str, Option<&str>, i64)],
    before_ms: i64,
) -> Result<(), KafkaError> {
    let producer: ThreadedProducer<DefaultProducerContext> =
        crate::kafka::producer_config(settings).create()?;
    for (id, target, until_ms) in cancellations {
        let value = serde_json::to_string(&Cancel {
            before: before_ms,
            until: *until_ms,
            target: target.map(str::to_owned),
        })
        .expect("serializable");
        let record = BaseRecord::to(&settings.topics.cancel)
            .key(*id)
            .payload(&value)
            .timestamp(before_ms);
        super::produce::send(&producer, record)?;
    }
    producer.flush(Duration::from_secs(30))
}

/// What `cancel` did for one id (`--json`).
#[derive(Debug, Serialize)]
struct Outcome<'a> {
    id: &'a str,
    /// `cancelled`, or `too_late` (its due time has passed).
    outcome: &'static str,
    target: Option<&'a str>,
    /// Records published before this are cancelled, epoch ms.
    before_ms: i64,
    /// The cancellation is kept until this due time, epoch ms.
    until_ms: i64,
}

/// `kafka-delay cancel`: every id in one producer; exits 3 when `--due`
/// has passed (nothing is published), 64 on an invalid id.
pub(crate) fn command<'a>(
    settings: &Settings,
    ids: &'a [String],
    target: Option<&'a str>,
    due: Option<&str>,
    json: bool,
) -> ExitCode {
    let max = crate::model::cancel::ID_MAX_BYTES;
    if let Some(bad) = ids
        .iter()
        .find(|id| crate::model::cancel::parse_id(id.as_bytes()).is_none())
    {
        return exit::usage(format!("--id {bad:?}: an id is 1 to {max} bytes"));
    }
    if ids.is_empty() {
        return exit::usage("no id: give --id, or ids one per line on standard input");
    }
    let now = crate::model::clock::now_ms();
    let until = match due {
        Some(raw) => match envelope::parse_deliver_at(raw.as_bytes()) {
            Ok(due_ms) => due_ms,
            Err(error) => return exit::usage(format!("--due: {error}")),
        },
        None => now.saturating_add(settings.wheel.max_delay.as_millis() as i64),
    };
    let at = crate::model::clock::rfc3339_ms;
    let outcome = |id: &'a str, outcome| Outcome {
        id,
        outcome,
        target,
        before_ms: now,
        until_ms: until,
    };
    if until <= now {
        let outcomes: Vec<_> = ids.iter().map(|id| outcome(id, "too_late")).collect();
        if json {
            super::print_json(&outcomes);
        } else {
            for id in ids {
                println!(
                    "too late: records with x-delay-id {id} due at {} were due {} ms ago and have been delivered; nothing was cancelled",
                    at(until),
                    now - until
                );
            }
        }
        return ExitCode::from(exit::NOT_FOUND);
    }
    let all: Vec<_> = ids.iter().map(|id| (id.as_str(), target, until)).collect();
    match publish_all(settings, &all, now) {
        Ok(()) if json => {
            let outcomes: Vec<_> = ids.iter().map(|id| outcome(id, "cancelled")).collect();
            super::print_json(&outcomes);
            ExitCode::SUCCESS
        }
        Ok(()) => {
            for id in ids {
                println!(
                    "cancelled: records with x-delay-id {id}{} published before {} and due by {} will not be delivered",
                    target.map(|t| format!(" for {t}")).unwrap_or_default(),
                    at(now),
                    at(until)
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => exit::fail(kafka::describe(&error)),
    }
}
