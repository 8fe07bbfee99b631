//! The record contract: routing headers in, typed due time and target out.
//!
//! Ingress records carry `x-delay` (ms after the record timestamp),
//! `x-deliver-at` (epoch ms or RFC 3339) and `x-target-topic`. Tier records
//! carry the service's own headers (`x-delay-due-at`, `x-delay-target`,
//! `x-delay-bucket`, `x-delay-original-timestamp`). Header keys and values
//! are bytes (a Kafka header key need not be UTF-8); every way a header can
//! be wrong is an [`EnvelopeError`] variant whose text goes into the
//! `x-delay-error` header of the dead letter. Error texts quote at most
//! [`QUOTE_BYTES`] bytes of a bad value, so a dead letter never grows by
//! more than a few hundred bytes.
//!
//! Over 500 lines: the whole header contract: constants, the ingress and tier
//! parsers and every error (docs/architecture.md, "Files over 500 lines").

use regex::Regex;
use thiserror::Error;

use crate::model::series::{self, RawSeries, SeriesError};

/// Delay in ms after the record timestamp (RabbitMQ's `x-delay` meaning).
pub const DELAY: &str = "x-delay";
/// Absolute due time: epoch ms or RFC 3339.
pub const DELIVER_AT: &str = "x-deliver-at";
/// Topic to deliver to.
pub const TARGET_TOPIC: &str = "x-target-topic";
/// On dead letters: why the record was rejected, in plain words.
pub const ERROR: &str = "x-delay-error";
/// On dead letters: the reason as a short label (one of
/// [`EnvelopeError::REASONS`]), what `kafka-delay dlq` groups and filters by.
pub const REASON: &str = "x-delay-reason";
/// On truncated dead letters: what was cut to make the copy fit.
pub const TRUNCATED: &str = "x-delay-truncated";
/// On delivered records: the due time, epoch ms.
pub const SCHEDULED_AT: &str = "x-delay-scheduled-at";
/// On delivered and tier records: the ingress record's timestamp, epoch ms.
pub const ORIGINAL_TIMESTAMP: &str = "x-delay-original-timestamp";
/// On tier records: the due time, epoch ms.
pub const DUE_AT: &str = "x-delay-due-at";
/// On tier records: the target topic.
pub const TARGET: &str = "x-delay-target";
/// On tier records: the bucket the record was written to (epoch ms / tick).
pub const BUCKET: &str = "x-delay-bucket";
/// Optional id of a delayed record (UTF-8, at most
/// [`crate::model::cancel::ID_MAX_BYTES`] bytes): what a cancellation names. A
/// user header: carried through the tiers and delivered.
pub const ID: &str = "x-delay-id";

/// Headers whose look-alikes (case, spaces, NUL) are dead-lettered: the
/// routing headers, the id and the schedule.
const CHECKED_HEADERS: [&str; 5] = [DELAY, DELIVER_AT, TARGET_TOPIC, ID, series::SCHEDULE];

/// The routing headers a producer sets.
pub const ROUTING_HEADERS: [&str; 3] = [DELAY, DELIVER_AT, TARGET_TOPIC];

/// Headers the service owns: never copied from an input record to a tier or
/// target record (fresh values are written instead). A producer-set
/// `x-delay-error`, `x-delay-reason` or `x-delay-truncated` is dropped too, so a dead letter
/// carries only the service's own.
pub const OWNED_HEADERS: [&str; 12] = [
    DELAY,
    DELIVER_AT,
    TARGET_TOPIC,
    SCHEDULED_AT,
    ORIGINAL_TIMESTAMP,
    DUE_AT,
    TARGET,
    BUCKET,
    ERROR,
    REASON,
    TRUNCATED,
    series::OCCURRENCE,
];

/// True if `key` is one of [`OWNED_HEADERS`].
pub fn is_owned_header(key: &[u8]) -> bool {
    key.starts_with(b"x-") && OWNED_HEADERS.iter().any(|h| h.as_bytes() == key)
}

/// Bytes of a bad value quoted in an error text.
pub const QUOTE_BYTES: usize = 64;
/// Characters of the escaped quote (control bytes escape to several).
const QUOTE_CHARS: usize = 80;

/// `raw` for an error text: at most [`QUOTE_BYTES`] bytes, escaped, at most
/// [`QUOTE_CHARS`] characters, with the full length when cut.
pub fn quote(raw: &[u8]) -> String {
    let shown = &raw[..raw.len().min(QUOTE_BYTES)];
    let lossy = String::from_utf8_lossy(shown);
    let mut escaped = lossy.escape_debug();
    let text: String = escaped.by_ref().take(QUOTE_CHARS).collect();
    let cut = raw.len() > QUOTE_BYTES || escaped.next().is_some();
    if cut {
        format!("\"{text}\"… ({} bytes)", raw.len())
    } else {
        format!("\"{text}\"")
    }
}

/// Epoch-millisecond values below this (1973-03-03) that are at least
/// [`SECONDS_FLOOR`] look like epoch *seconds* of 2001–5138.
const SECONDS_CEILING: i64 = 100_000_000_000;
/// 1e9: epoch seconds of September 2001; as milliseconds, January 1970.
const SECONDS_FLOOR: i64 = 1_000_000_000;

/// A parsed ingress or tier record: when and where to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Due time, epoch ms.
    pub due_ms: i64,
    /// Target topic (validated name).
    pub target: &'a str,
    /// Timestamp of the ingress record, epoch ms.
    pub original_timestamp_ms: i64,
    /// For tier records: the bucket they were written to.
    pub bucket: Option<i64>,
    /// `x-delay-id`, if the record has one.
    pub id: Option<&'a str>,
    /// For a series' record ([`crate::model::series`]): the number of the
    /// occurrence it delivers when due (from 1).
    pub occurrence: Option<u64>,
}

/// Why a record cannot be scheduled or delivered. The `Display` text is the
/// dead letter's `x-delay-error` header; [`EnvelopeError::reason`] is the
/// metric label.
///
/// Each variant's `#[error]` message is its documentation: what happened,
/// with the fix where there is one (docs/architecture.md, "Errors").
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    #[error("x-delay must be ASCII decimal milliseconds, got {0}")]
    DelayNotNumber(String),
    #[error("x-delay is negative: {0}")]
    DelayNegative(String),
    #[error("x-delay or x-deliver-at is too large to represent: {0}")]
    DelayOverflow(String),
    #[error("x-deliver-at must be epoch milliseconds or RFC 3339, got {0}")]
    DeliverAtInvalid(String),
    #[error(
        "x-deliver-at {0} looks like epoch seconds; it must be epoch milliseconds \
         (multiply by 1000) or RFC 3339"
    )]
    DeliverAtInSeconds(String),
    #[error("both x-delay and x-deliver-at are set; give one")]
    BothDelayHeaders,
    #[error("header {0} is given more than once")]
    DuplicateHeader(&'static str),
    #[error(
        "header key {key} is not exactly {routing}: routing header keys are lower-case ASCII \
         without spaces or other bytes"
    )]
    LookalikeHeader { key: String, routing: &'static str },
    #[error("no x-target-topic header and no default target is configured")]
    MissingTarget,
    #[error("target topic {0} is not a valid Kafka topic name")]
    InvalidTarget(String),
    #[error("target topic {0:?} is forbidden: {1}")]
    ForbiddenTarget(String, &'static str),
    #[error("due in {delay_ms} ms, beyond the maximum delay of {max_ms} ms")]
    BeyondMaxDelay { delay_ms: i64, max_ms: i64 },
    #[error("target topic {0:?} does not exist")]
    UnknownTarget(String),
    #[error("delivery to target topic failed permanently: {0}")]
    DeliveryFailed(String),
    #[error("the record is too large to deliver once the service's headers are added: {0}")]
    TooLarge(String),
    #[error("tier record is missing or has a corrupt {0} header")]
    CorruptTierRecord(&'static str),
    #[error("tier record does not belong in this partition: {0}")]
    MisplacedTierRecord(String),
    #[error("x-delay-id must be UTF-8, 1 to 256 bytes, got {0}")]
    InvalidId(String),
    #[error("the record's headers cannot be parsed ({0}); they could not be copied into this dead letter")]
    UnreadableHeaders(String),
    #[error("the record timestamp is negative ({0}); a delayed record needs a timestamp at or after 1970")]
    NegativeTimestamp(i64),
    #[error("{0}")]
    InvalidSchedule(#[from] SeriesError),
}

impl EnvelopeError {
    /// A short, fixed label for metrics (`reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::DelayNotNumber(_) | Self::DelayNegative(_) | Self::DelayOverflow(_) => {
                "invalid_delay"
            }
            Self::DeliverAtInvalid(_) | Self::DeliverAtInSeconds(_) => "invalid_deliver_at",
            Self::BothDelayHeaders | Self::DuplicateHeader(_) => "conflicting_headers",
            Self::LookalikeHeader { .. } => "lookalike_header",
            Self::MissingTarget => "missing_target",
            Self::InvalidTarget(_) => "invalid_target",
            Self::ForbiddenTarget(..) => "forbidden_target",
            Self::BeyondMaxDelay { .. } => "beyond_max_delay",
            Self::UnknownTarget(_) => "unknown_target",
            Self::DeliveryFailed(_) => "delivery_failed",
            Self::TooLarge(_) => "too_large",
            Self::CorruptTierRecord(_) | Self::MisplacedTierRecord(_) => "corrupt_tier_record",
            Self::InvalidId(_) => "invalid_id",
            Self::UnreadableHeaders(_) => "unreadable_headers",
            Self::NegativeTimestamp(_) => "invalid_timestamp",
            Self::InvalidSchedule(_) => "invalid_schedule",
        }
    }

    /// Every metric label [`EnvelopeError::reason`] can return.
    /// At most 32: the delivery opaque carries the index in 5 bits.
    pub const REASONS: [&'static str; 17] = [
        "invalid_delay",
        "invalid_deliver_at",
        "conflicting_headers",
        "lookalike_header",
        "missing_target",
        "invalid_target",
        "forbidden_target",
        "beyond_max_delay",
        "unknown_target",
        "delivery_failed",
        "too_large",
        "corrupt_tier_record",
        "invalid_id",
        "unreadable_headers",
        "invalid_timestamp",
        "invalid_schedule",
        "other",
    ];
}

/// Which targets are acceptable: topic-name rules, the service's own topics,
/// internal topics and the optional allow-list.
#[derive(Debug, Clone)]
pub struct TargetPolicy {
    /// Used when a record has no `x-target-topic`.
    pub default_target: Option<String>,
    /// Full-match pattern a target must satisfy, if set.
    pub allowed: Option<Regex>,
    /// The service's own topics (ingress, dead-letter, tiers).
    pub own_topics: Vec<String>,
    /// Largest accepted delay, ms.
    pub max_delay_ms: i64,
}

impl TargetPolicy {
    /// Checks `target` against every rule. Errors: `InvalidTarget`,
    /// `ForbiddenTarget`.
    pub fn check<'a>(&self, target: &'a str) -> Result<&'a str, EnvelopeError> {
        if !is_valid_topic_name(target) {
            return Err(EnvelopeError::InvalidTarget(quote(target.as_bytes())));
        }
        if target.starts_with("__") {
            return Err(EnvelopeError::ForbiddenTarget(
                target.to_owned(),
                "internal topics (__*) are never targets",
            ));
        }
        if self.own_topics.iter().any(|own| own == target) {
            return Err(EnvelopeError::ForbiddenTarget(
                target.to_owned(),
                "it is one of kafka-delay's own topics",
            ));
        }
        if let Some(allowed) = &self.allowed {
            if !allowed.is_match(target) {
                return Err(EnvelopeError::ForbiddenTarget(
                    target.to_owned(),
                    "it does not match topics.allowed_targets",
                ));
            }
        }
        Ok(target)
    }

    fn check_delay(&self, due_ms: i64, now_ms: i64) -> Result<(), EnvelopeError> {
        let delay_ms = due_ms.saturating_sub(now_ms);
        if delay_ms > self.max_delay_ms {
            return Err(EnvelopeError::BeyondMaxDelay {
                delay_ms,
                max_ms: self.max_delay_ms,
            });
        }
        Ok(())
    }
}

/// Kafka's topic-name rule: 1–249 characters of `[a-zA-Z0-9._-]`, not `.`
/// or `..`.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses ASCII decimal digits only (no sign, spaces or exponent).
fn parse_digits(raw: &[u8]) -> Option<Result<i64, ()>> {
    if raw.is_empty() || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        raw.iter()
            .try_fold(0_i64, |acc, &d| {
                acc.checked_mul(10)?.checked_add(i64::from(d - b'0'))
            })
            .ok_or(()),
    )
}

fn parse_delay(raw: &[u8]) -> Result<i64, EnvelopeError> {
    match parse_digits(raw) {
        Some(Ok(ms)) => Ok(ms),
        Some(Err(())) => Err(EnvelopeError::DelayOverflow(quote(raw))),
        None if raw.first() == Some(&b'-') && parse_digits(&raw[1..]).is_some() => {
            Err(EnvelopeError::DelayNegative(quote(raw)))
        }
        None => Err(EnvelopeError::DelayNotNumber(quote(raw))),
    }
}

/// Parses an `x-deliver-at` value: epoch ms (digits) or RFC 3339 with a
/// time zone. Errors: [`EnvelopeError::DeliverAtInSeconds`] for a 10-digit
/// number (epoch seconds, a common mistake), [`EnvelopeError::DeliverAtInvalid`]
/// otherwise.
pub fn parse_deliver_at(raw: &[u8]) -> Result<i64, EnvelopeError> {
    match parse_digits(raw) {
        Some(Ok(ms)) if (SECONDS_FLOOR..SECONDS_CEILING).contains(&ms) => {
            return Err(EnvelopeError::DeliverAtInSeconds(quote(raw)))
        }
        Some(Ok(ms)) => return Ok(ms),
        Some(Err(())) => return Err(EnvelopeError::DelayOverflow(quote(raw))),
        None => {}
    }
    let invalid = || EnvelopeError::DeliverAtInvalid(quote(raw));
    let text = std::str::from_utf8(raw).map_err(|_| invalid())?;
    let instant = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| invalid())?;
    i64::try_from(instant.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| EnvelopeError::DelayOverflow(quote(raw)))
}

/// The routing header `key` resembles without being it: equal after ASCII
/// lower-casing, trimming spaces and control bytes (NUL included) from both
/// ends, and cutting at the first NUL.
fn lookalike(key: &[u8], names: &[&'static str]) -> Option<&'static str> {
    if key.len() > 64 || !key.iter().any(|b| matches!(b, b'x' | b'X')) {
        return None;
    }
    let cut = key.split(|&b| b == 0).next().unwrap_or_default();
    let start = cut.iter().position(|b| !is_blank(*b))?;
    let end = cut.iter().rposition(|b| !is_blank(*b))? + 1;
    let core = &cut[start..end];
    names
        .iter()
        .copied()
        .find(|name| core.eq_ignore_ascii_case(name.as_bytes()) && key != name.as_bytes())
}

fn is_blank(b: u8) -> bool {
    b.is_ascii_whitespace() || b.is_ascii_control()
}

/// Stores `value` in `slot`, rejecting a second occurrence of header `name`.
fn once<'a>(
    slot: &mut Option<&'a [u8]>,
    name: &'static str,
    value: Option<&'a [u8]>,
) -> Result<(), EnvelopeError> {
    if slot.is_some() {
        return Err(EnvelopeError::DuplicateHeader(name));
    }
    *slot = Some(value.unwrap_or_default());
    Ok(())
}

/// Parses an ingress record's routing headers.
///
/// `headers` yields (key, value) byte pairs in record order; `timestamp_ms`
/// is the record timestamp (None: use `now_ms`). A due time in the past
/// means "deliver now". Errors: every [`EnvelopeError`] variant except
/// `UnknownTarget`, `DeliveryFailed`, `TooLarge` and the tier-record ones.
pub fn parse_ingress<'a>(
    headers: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    timestamp_ms: Option<i64>,
    now_ms: i64,
    policy: &'a TargetPolicy,
) -> Result<Envelope<'a>, EnvelopeError> {
    parse_ingress_trusting(headers, timestamp_ms, now_ms, policy, "")
}

/// [`parse_ingress`], skipping the target checks when the target equals
/// `trusted` (a target the caller already accepted): most records go to a
/// few topics, and the checks cost a few percent of the consumer loop.
pub fn parse_ingress_trusting<'a>(
    headers: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    timestamp_ms: Option<i64>,
    now_ms: i64,
    policy: &'a TargetPolicy,
    trusted: &str,
) -> Result<Envelope<'a>, EnvelopeError> {
    let (mut delay, mut deliver_at, mut target, mut id) = (None, None, None, None);
    let mut raw_series = RawSeries::default();
    for (key, value) in headers {
        match key {
            b"x-delay" => once(&mut delay, DELAY, value)?,
            b"x-deliver-at" => once(&mut deliver_at, DELIVER_AT, value)?,
            b"x-target-topic" => once(&mut target, TARGET_TOPIC, value)?,
            b"x-delay-id" => once(&mut id, ID, value)?,
            _ if raw_series.note(key, value)? => {}
            _ => {
                if let Some(routing) = lookalike(key, &CHECKED_HEADERS) {
                    return Err(EnvelopeError::LookalikeHeader {
                        key: quote(key),
                        routing,
                    });
                }
            }
        }
    }
    let timestamp = timestamp_ms.unwrap_or(now_ms);
    if timestamp < 0 {
        return Err(EnvelopeError::NegativeTimestamp(timestamp));
    }
    let due_ms = match (delay, deliver_at) {
        (Some(_), Some(_)) => return Err(EnvelopeError::BothDelayHeaders),
        (Some(raw), None) => timestamp
            .checked_add(parse_delay(raw)?)
            .ok_or_else(|| EnvelopeError::DelayOverflow(quote(raw)))?,
        (None, Some(raw)) => parse_deliver_at(raw)?,
        (None, None) => timestamp,
    };
    let target = match target {
        Some(raw) => {
            std::str::from_utf8(raw).map_err(|_| EnvelopeError::InvalidTarget(quote(raw)))?
        }
        None => policy
            .default_target
            .as_deref()
            .ok_or(EnvelopeError::MissingTarget)?,
    };
    let target = if !trusted.is_empty() && target == trusted {
        target
    } else {
        policy.check(target)?
    };
    let id = match id {
        Some(raw) => Some(
            crate::model::cancel::parse_id(raw)
                .ok_or_else(|| EnvelopeError::InvalidId(quote(raw)))?,
        ),
        None => None,
    };
    // A series: its first occurrence at or after that due time.
    let (due_ms, occurrence) = match raw_series.parse()? {
        None => (due_ms, None),
        Some(_) if id.is_none() => return Err(SeriesError::NoId.into()),
        Some(s) => {
            let first = s.first_at_or_after(due_ms).ok_or_else(|| {
                SeriesError::NoOccurrence(crate::model::clock::rfc3339_ms(due_ms))
            })?;
            (first, Some(1))
        }
    };
    policy.check_delay(due_ms, now_ms)?;
    Ok(Envelope {
        due_ms,
        target,
        original_timestamp_ms: timestamp,
        bucket: None,
        id,
        occurrence,
    })
}

/// Where a tier record was read: its tier's tick and slot count, and the
/// slot of its partition.
#[derive(Debug, Clone, Copy)]
pub struct TierSlot {
    /// The tier's tick, ms.
    pub tick_ms: i64,
    /// The tier's slot count.
    pub slots: i64,
    /// The slot of the partition the record was read from.
    pub slot: i64,
}

/// Buckets a tier record may lie beyond the tier's horizon: writers' clocks
/// ahead of ours.
const HORIZON_SLACK_BUCKETS: i64 = 2;

/// Parses and checks the service's own headers on a tier record read from
/// `place` at `now_ms`: each header exactly once; the bucket in the
/// partition's slot, not after the due time and within the tier's horizon;
/// the due time within the maximum delay; the target allowed by `policy`.
/// A record written straight into a tier topic by someone else is caught
/// here and dead-lettered instead of blocking its partition.
///
/// Errors: `CorruptTierRecord`, `MisplacedTierRecord`, `BeyondMaxDelay`,
/// `InvalidTarget`, `ForbiddenTarget`.
pub fn parse_tier<'a>(
    headers: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    place: TierSlot,
    now_ms: i64,
    policy: &TargetPolicy,
) -> Result<Envelope<'a>, EnvelopeError> {
    let env = parse_tier_headers(headers, policy)?;
    let bucket = env.bucket.unwrap_or_default();
    let misplaced = |why: String| Err(EnvelopeError::MisplacedTierRecord(why));
    if bucket.rem_euclid(place.slots) != place.slot {
        return misplaced(format!(
            "bucket {bucket} is in slot {}, the partition serves slot {}",
            bucket.rem_euclid(place.slots),
            place.slot
        ));
    }
    if bucket > env.due_ms.div_euclid(place.tick_ms) {
        return misplaced(format!("bucket {bucket} starts after the due time"));
    }
    if bucket - now_ms.div_euclid(place.tick_ms) >= place.slots + HORIZON_SLACK_BUCKETS {
        return misplaced(format!("bucket {bucket} lies beyond the tier's horizon"));
    }
    policy.check_delay(env.due_ms, now_ms)?;
    Ok(env)
}

/// The service's own headers of a tier record, each exactly once, without
/// the checks of where it was read ([`parse_tier`] adds those): for a tier
/// write the service itself made and must re-route (a failed produce).
///
/// Errors: `CorruptTierRecord`, `InvalidTarget`, `ForbiddenTarget`.
pub fn parse_tier_headers<'a>(
    headers: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    policy: &TargetPolicy,
) -> Result<Envelope<'a>, EnvelopeError> {
    let (mut due, mut target, mut bucket, mut original) = (None, None, None, None);
    let (mut id, mut occurrence) = (None, None);
    for (key, value) in headers {
        let (slot, name) = match key {
            b"x-delay-due-at" => (&mut due, DUE_AT),
            b"x-delay-target" => (&mut target, TARGET),
            b"x-delay-bucket" => (&mut bucket, BUCKET),
            b"x-delay-original-timestamp" => (&mut original, ORIGINAL_TIMESTAMP),
            b"x-delay-id" => (&mut id, ID),
            b"x-delay-occurrence" => (&mut occurrence, series::OCCURRENCE),
            _ => continue,
        };
        if slot.is_some() {
            return Err(EnvelopeError::CorruptTierRecord(name));
        }
        *slot = Some(value.unwrap_or_default());
    }
    let number = |raw: Option<&[u8]>, name| match raw.and_then(parse_digits) {
        Some(Ok(n)) => Ok(n),
        _ => Err(EnvelopeError::CorruptTierRecord(name)),
    };
    let target = target
        .and_then(|raw| std::str::from_utf8(raw).ok())
        .ok_or(EnvelopeError::CorruptTierRecord(TARGET))?;
    let env = Envelope {
        due_ms: number(due, DUE_AT)?,
        target: policy.check(target)?,
        original_timestamp_ms: number(original, ORIGINAL_TIMESTAMP)?,
        bucket: Some(number(bucket, BUCKET)?),
        id: match id {
            Some(raw) => Some(
                crate::model::cancel::parse_id(raw).ok_or(EnvelopeError::CorruptTierRecord(ID))?,
            ),
            None => None,
        },
        occurrence: match occurrence {
            Some(raw) => Some(number(Some(raw), series::OCCURRENCE)? as u64),
            None => None,
        },
    };
    Ok(env)
}

#[cfg(test)]
mod tests;
