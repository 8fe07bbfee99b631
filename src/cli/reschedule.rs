//! `kafka-delay reschedule`: move a pending record to a new due time.
//!
//! The record is found in the tiers by its `x-delay-id`
//! ([`crate::cli::pending::scan`]); its key, value and own headers are
//! published to the ingress again with the new due time, timestamped
//! `now + 1` ms; then a cancellation of that id for its target covering
//! records published before `now + 1` is written, so that the new copy is
//! not cancelled. The old copy is never delivered, the new one at its new
//! time. In that order a failure between the two steps delivers both copies
//! (at-least-once) rather than none.

use std::process::ExitCode;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::exit;
use crate::cli::cancel;
use crate::cli::pending::{self, Found};
use crate::cli::produce::When;
use crate::config::Settings;
use crate::kafka;
use crate::model::envelope;

/// What `reschedule` did.
#[derive(Debug)]
pub enum Outcome {
    /// Moved from the old due time to the new one.
    Moved {
        /// The record as it was found (old due time, place, contents).
        found: Box<Found>,
        /// The new due time, epoch ms.
        due_ms: i64,
    },
    /// No tier holds a record with that id.
    NotPending,
}

/// Errors: the scan's or the producer's, or an unparsable `--deliver-at`.
///
/// Each variant's `#[error]` message is its documentation: what happened,
/// with the fix where there is one (docs/architecture.md, "Errors").
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum RescheduleError {
    #[error("kafka: {}", kafka::describe(.0))]
    Kafka(#[from] KafkaError),
    #[error("--deliver-at: {0}")]
    When(#[from] envelope::EnvelopeError),
}

/// Finds the record with `id`, cancels it and publishes it again due at `when`.
pub fn reschedule(settings: &Settings, id: &str, when: &When) -> Result<Outcome, RescheduleError> {
    let scan = pending::scan(settings, Some(id), |_, _| {})?;
    let Some(found) = scan.found else {
        return Ok(Outcome::NotPending);
    };
    let now = crate::model::clock::now_ms();
    let timestamp = now + 1;
    let due_ms = match when {
        When::Delay(d) => timestamp + d.as_millis() as i64,
        When::At(raw) => envelope::parse_deliver_at(raw.as_bytes())?,
    };
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::producer_config(settings).create()?;
    let mut headers = OwnedHeaders::new_with_capacity(found.headers.len() + 2);
    for (key, value) in &found.headers {
        // Header keys are bytes; librdkafka takes them as text up to a NUL.
        let key = String::from_utf8_lossy(key);
        headers = headers.insert(Header {
            key: &key,
            value: value.as_deref(),
        });
    }
    let due = due_ms.to_string();
    headers = headers
        .insert(Header {
            key: envelope::DELIVER_AT,
            value: Some(&due),
        })
        .insert(Header {
            key: envelope::TARGET_TOPIC,
            value: Some(&found.target),
        });
    let mut record = BaseRecord::<[u8], [u8]>::to(&settings.topics.ingress)
        .headers(headers)
        .timestamp(timestamp);
    if let Some(key) = &found.key {
        record = record.key(key);
    }
    if let Some(value) = &found.value {
        record = record.payload(value);
    }
    producer.send(record).map_err(|(error, _)| error)?;
    producer.flush(Duration::from_secs(30))?;
    // Only now the cancellation: should it fail, both copies are delivered
    // (and the error says so) rather than none.
    cancel::publish(
        settings,
        id,
        Some(&found.target),
        timestamp,
        found.due_ms.max(now),
    )?;
    Ok(Outcome::Moved {
        found: Box::new(found),
        due_ms,
    })
}

/// `kafka-delay reschedule`.
pub(crate) fn command(settings: &Settings, id: &str, when: &When) -> ExitCode {
    let at = crate::model::clock::rfc3339_ms;
    match reschedule(settings, id, when) {
        Ok(Outcome::Moved { found, due_ms }) => {
            println!(
                "rescheduled: x-delay-id {id} for {} moved from {} to {}",
                found.target,
                at(found.due_ms),
                at(due_ms)
            );
            ExitCode::SUCCESS
        }
        Ok(Outcome::NotPending) => {
            println!(
                "not pending: no tier holds a record with x-delay-id {id} (delivered already, or still in the ingress topic or an instance's due-soon timer); nothing changed"
            );
            ExitCode::from(exit::NOT_FOUND)
        }
        Err(error) => exit::fail(error),
    }
}
