//! `kafka-delay dlq list|replay`: the dead-letter topic, counted and
//! published again.
//!
//! Every dead letter carries what is needed to publish it again: the
//! record's key, value and timestamp, its own headers and its routing
//! headers (`x-target-topic` and `x-delay` / `x-deliver-at`; a failed
//! delivery's dead letter carries `x-target-topic` and the due time as
//! `x-deliver-at`), plus `x-delay-error` (why, in words) and
//! `x-delay-reason` (why, as a label). `replay` publishes matching dead
//! letters to the ingress topic with their key, value, timestamp and
//! headers, minus the service's `x-delay-error` / `x-delay-reason`: the due
//! time keeps its meaning (a delay counts from the original timestamp; a
//! due time already past is delivered at once).
//!
//! A replay records its position — the offsets it has passed — as the
//! committed offsets of consumer group `<group_id>.dlq.<position>`, after
//! the records before them are acknowledged by the ingress topic: running
//! the same replay twice publishes nothing the second time, and a replay
//! killed part-way publishes again at most the records of its last
//! unacknowledged batch ([`BATCH`]). Dead letters a filter passes over are
//! passed for that position too: a replay with other filters that must see
//! them takes another `--position`. Truncated dead letters (headers
//! dropped, `x-delay-truncated`) cannot be replayed; they are counted.
//!
//! Like SQS's dead-letter redrive and BullMQ's "retry failed jobs", with
//! Kafka's model: nothing is removed from the dead-letter topic.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use super::exit;
use crate::config::Settings;
use crate::kafka;
use crate::kafka::native::RecordHeaders;
use crate::model::envelope;

/// Timeout of each offset query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Records published between two recorded positions: what a replay killed
/// part-way may publish a second time.
pub const BATCH: u64 = 500;
/// The label of dead letters written before `x-delay-reason` existed.
const UNLABELLED: &str = "unlabelled";

/// Which dead letters a command takes; every given field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `x-delay-reason` (a label of [`envelope::EnvelopeError::REASONS`]).
    pub reason: Option<String>,
    /// `x-target-topic`.
    pub target: Option<String>,
    /// `x-delay-id`.
    pub id: Option<String>,
    /// Record timestamp at or after this, epoch ms.
    pub since_ms: Option<i64>,
    /// Record timestamp before this, epoch ms.
    pub until_ms: Option<i64>,
}

/// What [`Filter`] and [`Summary`] read of a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter<'a> {
    /// `x-delay-reason`, or [`UNLABELLED`].
    pub reason: &'a str,
    /// `x-target-topic`, if any.
    pub target: Option<&'a str>,
    /// `x-delay-id`, if any.
    pub id: Option<&'a str>,
    /// The record timestamp (the original record's), epoch ms.
    pub timestamp_ms: i64,
    /// A cut-down copy (`x-delay-truncated`): not replayable.
    pub truncated: bool,
}

impl<'a> DeadLetter<'a> {
    /// Reads the service's headers of `msg` (a header that is not UTF-8
    /// reads as absent).
    pub fn of(msg: &'a BorrowedMessage<'a>) -> Self {
        let view = msg.header_view();
        let text = |name: &str| {
            view.iter()
                .find(|(k, _)| *k == name.as_bytes())
                .and_then(|(_, v)| std::str::from_utf8(v?).ok())
        };
        Self {
            reason: text(envelope::REASON).unwrap_or(UNLABELLED),
            target: text(envelope::TARGET_TOPIC),
            id: text(envelope::ID),
            timestamp_ms: msg.timestamp().to_millis().unwrap_or_default(),
            truncated: view
                .iter()
                .any(|(k, _)| k == envelope::TRUNCATED.as_bytes()),
        }
    }
}

impl Filter {
    /// True when `letter` passes every given field.
    pub fn matches(&self, letter: &DeadLetter<'_>) -> bool {
        let same = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        same(&self.reason, Some(letter.reason))
            && same(&self.target, letter.target)
            && same(&self.id, letter.id)
            && self.since_ms.is_none_or(|s| letter.timestamp_ms >= s)
            && self.until_ms.is_none_or(|u| letter.timestamp_ms < u)
    }
}

/// Dead letters counted by reason, target and hour (`dlq list`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Dead letters matching the filter.
    pub total: u64,
    /// Per `x-delay-reason`.
    pub by_reason: BTreeMap<String, u64>,
    /// Per `x-target-topic` (`(none)` when absent).
    pub by_target: BTreeMap<String, u64>,
    /// Per hour of the record timestamp, `YYYY-MM-DDTHH:00Z`.
    pub by_hour: BTreeMap<String, u64>,
    /// Truncated copies among them (not replayable).
    pub truncated: u64,
}

impl Summary {
    /// Counts `letter`.
    pub fn add(&mut self, letter: &DeadLetter<'_>) {
        self.total += 1;
        *self.by_reason.entry(letter.reason.to_owned()).or_default() += 1;
        let target = letter.target.unwrap_or("(none)");
        *self.by_target.entry(target.to_owned()).or_default() += 1;
        *self
            .by_hour
            .entry(hour_of(letter.timestamp_ms))
            .or_default() += 1;
        self.truncated += u64::from(letter.truncated);
    }

    /// The text `dlq list` prints.
    pub fn render(&self) -> String {
        let mut out = format!("{} dead letters", self.total);
        if self.truncated > 0 {
            out += &format!(" ({} truncated, not replayable)", self.truncated);
        }
        out.push('\n');
        for (title, counts) in [
            ("by reason", &self.by_reason),
            ("by target", &self.by_target),
            ("by hour (UTC)", &self.by_hour),
        ] {
            if counts.is_empty() {
                continue;
            }
            out += &format!("{title}:\n");
            for (name, n) in counts {
                out += &format!("  {n:>10}  {name}\n");
            }
        }
        out
    }
}

/// `YYYY-MM-DDTHH:00Z` of epoch ms `ms`.
fn hour_of(ms: i64) -> String {
    let text = crate::model::clock::rfc3339_ms(ms.div_euclid(3_600_000) * 3_600_000);
    match text.get(..13) {
        Some(hour) if text.len() > 13 => format!("{hour}:00Z"),
        _ => text,
    }
}

/// Where a read of the dead-letter topic starts.
enum Start<'a> {
    /// Every record kept.
    Beginning,
    /// The committed offsets of this group (the beginning where none).
    Committed(&'a BaseConsumer),
}

/// Reads the dead-letter topic from `start` to the ends taken when the read
/// starts, calling `each` per record. Returns the next offset per partition
/// read (what a replay records). `progress(read, total)` as it goes.
fn read(
    settings: &Settings,
    start: Start<'_>,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> Result<(), KafkaError>,
    mut progress: impl FnMut(u64, u64),
) -> Result<(), KafkaError> {
    let topic = &settings.topics.dead_letter;
    let group = format!("{}.dlq-read", settings.kafka.group_id);
    let consumer: BaseConsumer = kafka::consumer_config(settings, &group, false).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), QUERY_TIMEOUT)?;
    let mut all = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        if let Some(error) = t.error() {
            return Err(KafkaError::MetadataFetch(error.into()));
        }
        for p in t.partitions() {
            all.add_partition(topic, p.id());
        }
    }
    let committed = match start {
        Start::Beginning => None,
        Start::Committed(group) => Some(group.committed_offsets(all.clone(), QUERY_TIMEOUT)?),
    };
    // partition → (next offset to read, end)
    let mut ranges: HashMap<i32, (i64, i64)> = HashMap::new();
    for e in all.elements() {
        let (low, end) = consumer.fetch_watermarks(topic, e.partition(), QUERY_TIMEOUT)?;
        let from = committed
            .as_ref()
            .and_then(|c| c.find_partition(topic, e.partition()))
            .and_then(|c| match c.offset() {
                Offset::Offset(o) => Some(o.max(low)),
                _ => None,
            })
            .unwrap_or(low);
        if from < end {
            ranges.insert(e.partition(), (from, end));
        }
    }
    let total: u64 = ranges.values().map(|(s, e)| (e - s) as u64).sum();
    progress(0, total);
    if ranges.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (p, (from, _)) in &ranges {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*from))?;
    }
    consumer.assign(&tpl)?;
    let (mut read, mut last_progress, mut idle_since) = (0, Instant::now(), Instant::now());
    while !ranges.is_empty() {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            // Offsets may have gaps (compaction, transaction markers): a
            // position at or past the end finishes its partition.
            let positions = consumer.position()?;
            ranges.retain(|p, (_, end)| {
                !matches!(positions.find_partition(topic, *p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= *end)
            });
            if !ranges.is_empty() && idle_since.elapsed() > QUERY_TIMEOUT {
                return Err(KafkaError::ClientCreation(format!(
                    "no records for 10 s before the end of {topic}"
                )));
            }
            continue;
        };
        idle_since = Instant::now();
        let msg = result?;
        let Some(&(_, end)) = ranges.get(&msg.partition()) else {
            continue;
        };
        if msg.offset() >= end {
            ranges.remove(&msg.partition());
            continue;
        }
        if msg.offset() == end - 1 {
            ranges.remove(&msg.partition());
        }
        each(&msg)?;
        read += 1;
        if last_progress.elapsed() > Duration::from_millis(100) {
            last_progress = Instant::now();
            progress(read, total);
        }
    }
    progress(read, total);
    Ok(())
}

/// Counts the dead letters `filter` matches, from the beginning.
pub fn list(
    settings: &Settings,
    filter: &Filter,
    progress: impl FnMut(u64, u64),
) -> Result<Summary, KafkaError> {
    let mut summary = Summary::default();
    read(
        settings,
        Start::Beginning,
        |msg| {
            let letter = DeadLetter::of(msg);
            if filter.matches(&letter) {
                summary.add(&letter);
            }
            Ok(())
        },
        progress,
    )?;
    Ok(summary)
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Replayed {
    /// The position's consumer group.
    pub position_group: String,
    /// Dead letters read past the recorded position.
    pub read: u64,
    /// Of those, published to the ingress topic (with `--dry-run`: would be).
    pub published: u64,
    /// Matching, but truncated copies: skipped.
    pub truncated: u64,
    /// True with `--dry-run`: nothing was published or recorded.
    pub dry_run: bool,
}

/// Publishes the dead letters `filter` matches, past the recorded
/// `position`, to the ingress topic, recording the position every
/// [`BATCH`] records once they are acknowledged. `dry_run`: publishes and
/// records nothing, counts what it would publish.
///
/// Errors: Kafka's (a read, a write or a commit failed); what was
/// acknowledged before is recorded.
pub fn replay(
    settings: &Settings,
    filter: &Filter,
    position: &str,
    dry_run: bool,
    progress: impl FnMut(u64, u64),
) -> Result<Replayed, KafkaError> {
    let topic = settings.topics.dead_letter.clone();
    let position_group = format!("{}.dlq.{position}", settings.kafka.group_id);
    let group: BaseConsumer = kafka::consumer_config(settings, &position_group, false).create()?;
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::producer_config(settings).create()?;
    let mut done = Replayed {
        position_group,
        dry_run,
        ..Default::default()
    };
    // The next offset per partition, read but not yet recorded.
    let mut passed: BTreeMap<i32, i64> = BTreeMap::new();
    let mut unrecorded = 0;
    let record = |passed: &mut BTreeMap<i32, i64>| -> Result<(), KafkaError> {
        if dry_run || passed.is_empty() {
            return Ok(());
        }
        producer.flush(Duration::from_secs(30))?;
        let mut tpl = TopicPartitionList::new();
        for (p, next) in std::mem::take(passed) {
            tpl.add_partition_offset(&topic, p, Offset::Offset(next))?;
        }
        group.commit(&tpl, CommitMode::Sync)
    };
    read(
        settings,
        Start::Committed(&group),
        |msg| {
            done.read += 1;
            passed.insert(msg.partition(), msg.offset() + 1);
            let letter = DeadLetter::of(msg);
            if filter.matches(&letter) {
                if letter.truncated {
                    done.truncated += 1;
                } else {
                    done.published += 1;
                    unrecorded += 1;
                    if !dry_run {
                        publish(&producer, &settings.topics.ingress, msg)?;
                    }
                }
            }
            if unrecorded >= BATCH {
                unrecorded = 0;
                record(&mut passed)?;
            }
            Ok(())
        },
        progress,
    )?;
    record(&mut passed)?;
    Ok(done)
}

/// Publishes dead letter `msg` to `ingress` as it was first published: key,
/// value, timestamp, headers but the service's `x-delay-error`,
/// `x-delay-reason` (and any `x-delay-truncated`).
fn publish(
    producer: &ThreadedProducer<DefaultProducerContext>,
    ingress: &str,
    msg: &BorrowedMessage<'_>,
) -> Result<(), KafkaError> {
    let view = msg.header_view();
    let mut headers = OwnedHeaders::new_with_capacity(view.len());
    for (key, value) in view.iter() {
        if [envelope::ERROR, envelope::REASON, envelope::TRUNCATED]
            .iter()
            .any(|h| h.as_bytes() == key)
        {
            continue;
        }
        // Header keys are bytes; librdkafka takes them as text up to a NUL.
        let key = String::from_utf8_lossy(key);
        headers = headers.insert(Header { key: &key, value });
    }
    let mut record = BaseRecord::<[u8], [u8]>::to(ingress).headers(headers);
    if let Some(ts) = msg.timestamp().to_millis() {
        record = record.timestamp(ts);
    }
    if let Some(key) = msg.key() {
        record = record.key(key);
    }
    if let Some(value) = msg.payload() {
        record = record.payload(value);
    }
    super::produce::send(producer, record)
}

/// A progress bar on standard error while `body` reads.
fn with_bar<T>(what: &str, body: impl FnOnce(&dyn Fn(u64, u64)) -> T) -> T {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {what}"))
            .expect("valid template"),
    );
    let result = body(&|read, total| {
        bar.set_length(total);
        bar.set_position(read);
    });
    bar.finish_and_clear();
    result
}

/// `kafka-delay dlq list`.
pub(crate) fn list_command(settings: &Settings, filter: &Filter, json: bool) -> ExitCode {
    match with_bar("dead letters read", |bar| list(settings, filter, bar)) {
        Ok(summary) if json => {
            super::print_json(&summary);
            ExitCode::SUCCESS
        }
        Ok(summary) => {
            print!("{}", summary.render());
            ExitCode::SUCCESS
        }
        Err(error) => exit::fail(kafka::describe(&error)),
    }
}

/// `kafka-delay dlq replay`.
pub(crate) fn replay_command(
    settings: &Settings,
    filter: &Filter,
    position: &str,
    dry_run: bool,
    json: bool,
) -> ExitCode {
    let result = with_bar("dead letters read", |bar| {
        replay(settings, filter, position, dry_run, bar)
    });
    match result {
        Ok(done) if json => {
            super::print_json(&done);
            ExitCode::SUCCESS
        }
        Ok(done) => {
            let verb = if dry_run {
                "would publish"
            } else {
                "published"
            };
            println!(
                "{} dead letters read past position {:?}; {verb} {} to {}{}",
                done.read,
                done.position_group,
                done.published,
                settings.topics.ingress,
                if done.truncated > 0 {
                    format!("; {} truncated copies skipped", done.truncated)
                } else {
                    String::new()
                }
            );
            ExitCode::SUCCESS
        }
        Err(error) => exit::fail(kafka::describe(&error)),
    }
}

/// A time bound of `--since` / `--until`: a duration back from now
/// ("2h"), epoch ms or RFC 3339. Errors: none of those.
pub fn parse_time(raw: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(ago) = humantime::parse_duration(raw) {
        return Ok(now_ms - ago.as_millis() as i64);
    }
    envelope::parse_deliver_at(raw.as_bytes())
        .map_err(|_| format!("{raw:?} is not a duration ago (\"2h\"), epoch ms or RFC 3339"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(reason: &str, target: Option<&'static str>, ts: i64) -> DeadLetter<'static> {
        DeadLetter {
            reason: Box::leak(reason.to_owned().into_boxed_str()),
            target,
            id: Some("order-7"),
            timestamp_ms: ts,
            truncated: false,
        }
    }

    #[test]
    fn a_filter_takes_what_matches_every_given_field() {
        let l = letter("unknown_target", Some("orders"), 1_000);
        assert!(Filter::default().matches(&l));
        let f = |reason: Option<&str>, target: Option<&str>, since, until| Filter {
            reason: reason.map(Into::into),
            target: target.map(Into::into),
            id: None,
            since_ms: since,
            until_ms: until,
        };
        assert!(f(
            Some("unknown_target"),
            Some("orders"),
            Some(1_000),
            Some(1_001)
        )
        .matches(&l));
        assert!(!f(Some("too_large"), None, None, None).matches(&l));
        assert!(!f(None, Some("payments"), None, None).matches(&l));
        assert!(!f(None, None, Some(1_001), None).matches(&l));
        assert!(!f(None, None, None, Some(1_000)).matches(&l));
        let no_target = letter("missing_target", None, 1_000);
        assert!(!f(None, Some("orders"), None, None).matches(&no_target));
        let by_id = Filter {
            id: Some("order-8".into()),
            ..Filter::default()
        };
        assert!(!by_id.matches(&l));
    }

    #[test]
    fn a_summary_counts_by_reason_target_and_hour() {
        let mut s = Summary::default();
        let hour = 1_700_000_000_000 / 3_600_000 * 3_600_000;
        s.add(&letter("unknown_target", Some("orders"), hour));
        s.add(&letter("unknown_target", Some("orders"), hour + 3_599_999));
        s.add(&letter("too_large", None, hour + 3_600_000));
        assert_eq!(s.total, 3);
        assert_eq!(s.by_reason["unknown_target"], 2);
        assert_eq!(s.by_target["(none)"], 1);
        assert_eq!(
            s.by_hour.keys().collect::<Vec<_>>(),
            ["2023-11-14T22:00Z", "2023-11-14T23:00Z"]
        );
        assert!(s.render().starts_with("3 dead letters\n"), "{}", s.render());
    }

    #[test]
    fn time_bounds_are_durations_ago_epoch_ms_or_rfc3339() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_time("1700000000123", now), Ok(1_700_000_000_123));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", now),
            Ok(1_700_000_000_000)
        );
        assert!(parse_time("yesterday", now).is_err());
    }
}
