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
use crate::model::{envelope, series};

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
    #[error("x-delay-id {0}: {1}")]
    Series(String, series::SeriesError),
}

/// A new expression or zone for a series (`reschedule --schedule`,
/// `--zone`): replaces the copy's `x-delay-schedule` or
/// `x-delay-schedule-zone`. The new series starts at the new due time
/// (now when neither `--delay` nor `--deliver-at` is given) and numbers its
/// occurrences from 1 again.
#[derive(Debug, Default, Clone)]
pub struct SeriesEdit {
    /// The new cron expression.
    pub schedule: Option<String>,
    /// The new IANA zone.
    pub zone: Option<String>,
}

/// Finds the record with `id`, cancels it and publishes it again due at `when`.
pub fn reschedule(settings: &Settings, id: &str, when: &When) -> Result<Outcome, RescheduleError> {
    let mut all = reschedule_all(settings, &[id.to_owned()], when)?;
    Ok(all
        .pop()
        .map_or(Outcome::NotPending, |(_, outcome)| outcome))
}

/// [`reschedule`] for every id of `ids` with one scan of the tiers and one
/// producer for the new copies, then one for the cancellations (so moving
/// a thousand records costs about what moving one does). Returns each id
/// with its outcome, in the order given.
pub fn reschedule_all(
    settings: &Settings,
    ids: &[String],
    when: &When,
) -> Result<Vec<(String, Outcome)>, RescheduleError> {
    reschedule_series(settings, ids, when, &SeriesEdit::default())
}

/// [`reschedule_all`] with a series' expression or zone changed by `edit`.
/// A series' due time in the outcome is its first occurrence at or after
/// `when`. Errors also [`RescheduleError::Series`] when the edited series
/// is invalid (nothing is published then).
pub fn reschedule_series(
    settings: &Settings,
    ids: &[String],
    when: &When,
    edit: &SeriesEdit,
) -> Result<Vec<(String, Outcome)>, RescheduleError> {
    let wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut scan = pending::scan_ids(settings, &wanted, |_, _| {})?;
    let now = crate::model::clock::now_ms();
    let timestamp = now + 1;
    let due_ms = match when {
        When::Delay(d) => timestamp + d.as_millis() as i64,
        When::At(raw) => envelope::parse_deliver_at(raw.as_bytes())?,
    };
    let mut found: Vec<(String, Option<Found>, i64)> = Vec::new();
    for id in ids {
        let f = scan.found_by_id.remove(id).map(|mut f| {
            f.headers = edited(&f.headers, edit);
            f
        });
        // A series: reported by its first occurrence; checked before any
        // copy is published.
        let raw = f.as_ref().map(|f| {
            series::RawSeries::of(f.headers.iter().map(|(k, v)| (&k[..], v.as_deref())))
                .and_then(|raw| raw.parse())
        });
        let first = match raw {
            Some(Ok(Some(s))) => s.first_at_or_after(due_ms).ok_or_else(|| {
                let start = crate::model::clock::rfc3339_ms(due_ms);
                series::SeriesError::NoOccurrence(start)
            }),
            Some(Err(e)) => Err(e),
            _ => Ok(due_ms),
        }
        .map_err(|e| RescheduleError::Series(id.clone(), e))?;
        found.push((id.clone(), f, first));
    }
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::producer_config(settings).create()?;
    for f in found.iter().filter_map(|(_, f, _)| f.as_ref()) {
        publish_copy(&producer, settings, f, timestamp, due_ms)?;
    }
    producer.flush(Duration::from_secs(30))?;
    // Only now the cancellations: should they fail, both copies are
    // delivered (and the error says so) rather than none.
    let cancellations: Vec<(&str, Option<&str>, i64)> = found
        .iter()
        .filter_map(|(id, f, _)| {
            let f = f.as_ref()?;
            // A series has later occurrences than the one found: its
            // cancellation covers the whole horizon.
            let until = match f.schedule {
                Some(_) => now.saturating_add(settings.wheel.max_delay.as_millis() as i64),
                None => f.due_ms.max(now),
            };
            Some((id.as_str(), Some(f.target.as_str()), until))
        })
        .collect();
    if !cancellations.is_empty() {
        cancel::publish_all(settings, &cancellations, timestamp)?;
    }
    Ok(found
        .into_iter()
        .map(|(id, f, first)| {
            let outcome = match f {
                Some(found) => Outcome::Moved {
                    found: Box::new(found),
                    due_ms: first,
                },
                None => Outcome::NotPending,
            };
            (id, outcome)
        })
        .collect())
}

/// `headers` with the series headers `edit` replaces taken out and its
/// values added.
fn edited(
    headers: &[(Vec<u8>, Option<Vec<u8>>)],
    edit: &SeriesEdit,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let replaced = [
        (series::SCHEDULE, edit.schedule.as_deref()),
        (series::ZONE, edit.zone.as_deref()),
    ];
    let mut out: Vec<(Vec<u8>, Option<Vec<u8>>)> = headers
        .iter()
        .filter(|(k, _)| {
            !replaced
                .iter()
                .any(|(name, new)| new.is_some() && k == name.as_bytes())
        })
        .cloned()
        .collect();
    for (name, new) in replaced {
        if let Some(value) = new {
            out.push((name.as_bytes().to_vec(), Some(value.as_bytes().to_vec())));
        }
    }
    out
}

/// Publishes `found`'s key, value and own headers to the ingress, due at
/// `due_ms`, timestamped `timestamp`.
fn publish_copy(
    producer: &ThreadedProducer<DefaultProducerContext>,
    settings: &Settings,
    found: &Found,
    timestamp: i64,
    due_ms: i64,
) -> Result<(), KafkaError> {
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
    super::produce::send(producer, record)
}

/// One id's outcome, as `--json` prints it.
#[derive(Debug, serde::Serialize)]
struct Reported<'a> {
    id: &'a str,
    /// `moved` or `not_pending`.
    outcome: &'static str,
    target: Option<&'a str>,
    /// The due time before, epoch ms.
    old_due_ms: Option<i64>,
    /// The new due time, epoch ms.
    due_ms: Option<i64>,
}

/// `kafka-delay reschedule`: every id in one call; exits 3 when any id is
/// not pending (the others are moved).
pub(crate) fn command(
    settings: &Settings,
    ids: &[String],
    (when, edit): (&When, &SeriesEdit),
    json: bool,
) -> ExitCode {
    if ids.is_empty() {
        return exit::usage("no id: give --id, or ids one per line on standard input");
    }
    let at = crate::model::clock::rfc3339_ms;
    let outcomes = match reschedule_series(settings, ids, when, edit) {
        Ok(outcomes) => outcomes,
        Err(error @ RescheduleError::Series(..)) => return exit::usage(error.to_string()),
        Err(error) => return exit::fail(error),
    };
    let mut reported = Vec::new();
    for (id, outcome) in &outcomes {
        match outcome {
            Outcome::Moved { found, due_ms } => {
                reported.push(Reported {
                    id,
                    outcome: "moved",
                    target: Some(&found.target),
                    old_due_ms: Some(found.due_ms),
                    due_ms: Some(*due_ms),
                });
                if !json {
                    println!(
                        "rescheduled: x-delay-id {id} for {} moved from {} to {}",
                        found.target,
                        at(found.due_ms),
                        at(*due_ms)
                    );
                }
            }
            Outcome::NotPending => {
                reported.push(Reported {
                    id,
                    outcome: "not_pending",
                    target: None,
                    old_due_ms: None,
                    due_ms: None,
                });
                if !json {
                    println!(
                        "not pending: no tier holds a record with x-delay-id {id} (delivered already, or still in the ingress topic or an instance's due-soon timer); nothing changed"
                    );
                }
            }
        }
    }
    if json {
        super::print_json(&reported);
    }
    if outcomes
        .iter()
        .any(|(_, o)| matches!(o, Outcome::NotPending))
    {
        ExitCode::from(exit::NOT_FOUND)
    } else {
        ExitCode::SUCCESS
    }
}
