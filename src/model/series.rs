//! Recurring schedules: the series contract and its occurrences.
//!
//! A series is one ingress record with an `x-delay-schedule` header (a cron
//! expression) and an `x-delay-id`. The service keeps exactly one record of
//! it in the wheel, due at its next occurrence; when that record comes due
//! the service writes the occurrence to the target and the record of the
//! occurrence after it back into the wheel, and commits the source offset
//! only when both writes are acknowledged (`engine::series`). A million
//! series cost a million records in Kafka, not service memory.
//!
//! Headers (user headers: carried through the wheel and delivered with every
//! occurrence):
//!
//! | header | value | default |
//! |---|---|---|
//! | [`SCHEDULE`] | cron: 5 fields (minute hour day month weekday), 6 (seconds first) or 7 (a year last), or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly` | required |
//! | [`ZONE`] | IANA zone name (`Europe/Berlin`) | `UTC` |
//! | [`END`] | epoch ms or RFC 3339: no occurrence after it | none |
//! | [`COUNT`] | most occurrences delivered, from 1 | none |
//! | [`MISSED`] | `latest`, `all` or `skip` (see [`Missed`]) | `latest` |
//!
//! The series starts at the due time the record's `x-delay` or
//! `x-deliver-at` gives (default: its timestamp): its first occurrence is the
//! first instant of the expression at or after it. Each delivered occurrence
//! carries `x-delay-scheduled-at` (the occurrence, epoch ms) and
//! [`OCCURRENCE`] (its number, from 1, counting delivered occurrences).
//!
//! Time zones and daylight saving time: the expression is matched against
//! the wall clock of the zone, using the IANA database of `chrono-tz` and
//! the matcher of the `cron` crate. Where the wall clock jumps, the rule of
//! Vixie cron (the cron of most Linux systems) applies:
//!
//! * an expression that names its hours (`0 30 2 * * *`) fires once per
//!   matching wall-clock time: a time skipped by a jump forward fires at the
//!   jump (02:30 on the spring-forward night fires at 03:00), a time that
//!   occurs twice fires at its first occurrence;
//! * an expression that matches every hour (`0 */15 * * * *`) is an
//!   interval: it fires at every real instant whose wall-clock time matches,
//!   so a jump forward skips the times that do not exist and the repeated
//!   hour fires twice — the occurrences stay evenly spaced in real time.

use std::str::FromStr;

use chrono::{DateTime, FixedOffset, LocalResult, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use cron::TimeUnitSpec;
use thiserror::Error;

/// The cron expression of a series (see the module table).
pub const SCHEDULE: &str = "x-delay-schedule";
/// The IANA time zone the expression is read in (default `UTC`).
pub const ZONE: &str = "x-delay-schedule-zone";
/// No occurrence after this instant (epoch ms or RFC 3339).
pub const END: &str = "x-delay-schedule-end";
/// At most this many occurrences are delivered.
pub const COUNT: &str = "x-delay-schedule-count";
/// What to deliver for occurrences missed while no instance ran: `latest`,
/// `all` or `skip`.
pub const MISSED: &str = "x-delay-schedule-missed";
/// On delivered occurrences and the series' record in the wheel: the
/// occurrence's number (from 1). A header the service owns.
pub const OCCURRENCE: &str = "x-delay-occurrence";
/// The series headers a producer sets.
pub const HEADERS: [&str; 5] = [SCHEDULE, ZONE, END, COUNT, MISSED];

/// With [`Missed::All`], at most this many missed occurrences are delivered
/// after an outage; older ones are skipped (the bound of the issue's "deliver
/// all", so that a 1 s series after a day's outage sends 1,000, not 86,400).
pub const CATCH_UP_MAX: u64 = 1_000;

/// An occurrence handled more than this long after its time (ms) counts as
/// missed: no instance was running (Kubernetes CronJob's
/// `startingDeadlineSeconds`, fixed). A shorter delay — a failover, a
/// rebalance, a slow broker — delivers every occurrence, late, and the
/// series catches up.
pub const MISSED_AFTER_MS: i64 = 60_000;

/// Longest accepted `x-delay-schedule` value, bytes.
pub const EXPRESSION_MAX_BYTES: usize = 256;

/// Candidate wall-clock times examined per step near a clock change (a
/// 1 s expression examines ~21,600 in its 6 h window).
const SEARCH_MAX: usize = 100_000;
/// Within this span without an offset change, a fixed offset gives the
/// next occurrence directly.
const FAST_SPAN_S: i64 = 7 * 86_400;
/// Larger than any clock change of the IANA database (2 h, Antarctica/Troll).
const MARGIN_S: i64 = 3 * 3_600;

/// The policy for occurrences missed while no instance was running (as
/// Kubernetes CronJob's, with a bound): when the series' record is handled
/// more than [`MISSED_AFTER_MS`] after its time and later occurrences are
/// due too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missed {
    /// Deliver the latest missed occurrence once (default).
    #[default]
    Latest,
    /// Deliver every missed occurrence, at most [`CATCH_UP_MAX`].
    All,
    /// Deliver none of them; go on with the first occurrence after now.
    Skip,
}

/// Why a series record is dead-lettered (reason `invalid_schedule`).
///
/// Each variant's `#[error]` message is its documentation: what happened,
/// with the fix where there is one (docs/architecture.md, "Errors").
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SeriesError {
    #[error(
        "x-delay-schedule must be a cron expression of 5 fields (minute hour day month weekday), \
         6 (seconds first) or 7 (a year last), or @hourly/@daily/@weekly/@monthly/@yearly; \
         got {0}: {1}"
    )]
    BadExpression(String, String),
    #[error("x-delay-schedule-zone must be an IANA time zone name such as Europe/Berlin or UTC, got {0}")]
    UnknownZone(String),
    #[error("x-delay-schedule-end must be epoch milliseconds or RFC 3339, got {0}")]
    BadEnd(String),
    #[error("x-delay-schedule-count must be a whole number from 1, got {0}")]
    BadCount(String),
    #[error("x-delay-schedule-missed must be latest, all or skip, got {0}")]
    BadMissed(String),
    #[error("header {0} is given more than once")]
    Duplicate(&'static str),
    #[error("header {0} is set without x-delay-schedule")]
    Orphan(&'static str),
    #[error("a series needs an x-delay-id: it is what cancel, pending and reschedule name")]
    NoId,
    #[error("the schedule has no occurrence from its start {0} to its end")]
    NoOccurrence(String),
    #[error("the next occurrence ({0}) is beyond the maximum delay; the series ends here")]
    NextBeyondMaxDelay(String),
}

/// The raw series headers of a record, as the header loop finds them.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawSeries<'a> {
    schedule: Option<&'a [u8]>,
    zone: Option<&'a [u8]>,
    end: Option<&'a [u8]>,
    count: Option<&'a [u8]>,
    missed: Option<&'a [u8]>,
}

impl<'a> RawSeries<'a> {
    /// Keeps `value` if `key` is a series header: Ok(true); Ok(false) for any
    /// other key. Errors: [`SeriesError::Duplicate`].
    pub fn note(&mut self, key: &[u8], value: Option<&'a [u8]>) -> Result<bool, SeriesError> {
        let (slot, name) = match key {
            b"x-delay-schedule" => (&mut self.schedule, SCHEDULE),
            b"x-delay-schedule-zone" => (&mut self.zone, ZONE),
            b"x-delay-schedule-end" => (&mut self.end, END),
            b"x-delay-schedule-count" => (&mut self.count, COUNT),
            b"x-delay-schedule-missed" => (&mut self.missed, MISSED),
            _ => return Ok(false),
        };
        if slot.is_some() {
            return Err(SeriesError::Duplicate(name));
        }
        *slot = Some(value.unwrap_or_default());
        Ok(true)
    }

    /// Reads every series header of `headers` (key, value pairs).
    pub fn of(
        headers: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<Self, SeriesError> {
        let mut raw = Self::default();
        for (key, value) in headers {
            raw.note(key, value)?;
        }
        Ok(raw)
    }

    /// True when the record has an `x-delay-schedule` header.
    pub fn is_series(&self) -> bool {
        self.schedule.is_some()
    }

    /// The series these headers describe: None without `x-delay-schedule`.
    /// Errors: every [`SeriesError`] but `NoId`, `NoOccurrence` and
    /// `NextBeyondMaxDelay`.
    pub fn parse(&self) -> Result<Option<Series>, SeriesError> {
        let quote = |raw: &[u8]| crate::model::envelope::quote(raw);
        let Some(expression) = self.schedule else {
            let orphan = [(self.zone, ZONE), (self.end, END), (self.count, COUNT)]
                .into_iter()
                .chain([(self.missed, MISSED)])
                .find(|(v, _)| v.is_some());
            return match orphan {
                Some((_, name)) => Err(SeriesError::Orphan(name)),
                None => Ok(None),
            };
        };
        let schedule = parse_expression(expression)?;
        let zone = match self.zone {
            None => Tz::UTC,
            Some(raw) => std::str::from_utf8(raw)
                .ok()
                .and_then(|name| Tz::from_str(name.trim()).ok())
                .ok_or_else(|| SeriesError::UnknownZone(quote(raw)))?,
        };
        let end_ms = match self.end {
            None => None,
            Some(raw) => Some(
                crate::model::envelope::parse_deliver_at(raw)
                    .map_err(|_| SeriesError::BadEnd(quote(raw)))?,
            ),
        };
        let count = match self.count {
            None => None,
            Some(raw) => Some(
                std::str::from_utf8(raw)
                    .ok()
                    .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|t| t.parse::<u64>().ok())
                    .filter(|&c| c >= 1)
                    .ok_or_else(|| SeriesError::BadCount(quote(raw)))?,
            ),
        };
        let missed = match self.missed {
            None => Missed::Latest,
            Some(b"latest") => Missed::Latest,
            Some(b"all") => Missed::All,
            Some(b"skip") => Missed::Skip,
            Some(raw) => return Err(SeriesError::BadMissed(quote(raw))),
        };
        let wall = !schedule.hours().is_all();
        Ok(Some(Series {
            schedule,
            zone,
            wall,
            end_ms,
            count,
            missed,
        }))
    }
}

/// Parses a cron expression with the `cron` crate, which wants a seconds
/// field: a 5-field expression gets `0` seconds.
fn parse_expression(raw: &[u8]) -> Result<cron::Schedule, SeriesError> {
    let quote = crate::model::envelope::quote;
    if raw.len() > EXPRESSION_MAX_BYTES {
        let why = format!("longer than {EXPRESSION_MAX_BYTES} bytes");
        return Err(SeriesError::BadExpression(quote(raw), why));
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| SeriesError::BadExpression(quote(raw), "not UTF-8".into()))?
        .trim();
    let fields = text.split_whitespace().count();
    let full = match fields {
        _ if text.starts_with('@') => text.to_owned(),
        5 => format!("0 {text}"),
        6 | 7 => text.to_owned(),
        n => {
            let why = format!("{n} fields");
            return Err(SeriesError::BadExpression(quote(raw), why));
        }
    };
    cron::Schedule::from_str(&full)
        .map_err(|e| SeriesError::BadExpression(quote(raw), e.to_string()))
}

/// A parsed series: its expression in its zone, its bounds and its policy.
#[derive(Debug, Clone)]
pub struct Series {
    schedule: cron::Schedule,
    zone: Tz,
    /// The expression names its hours: wall-clock rule at clock changes
    /// (see the module doc); otherwise the interval rule.
    wall: bool,
    end_ms: Option<i64>,
    count: Option<u64>,
    missed: Missed,
}

/// What to do with a series' record that came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The occurrence to deliver now (epoch ms), None when it is skipped.
    pub deliver: Option<i64>,
    /// The next occurrence to write into the wheel (epoch ms) and its
    /// number; None when the series ends.
    pub next: Option<(i64, u64)>,
}

impl Series {
    /// The missed-occurrence policy.
    pub fn missed(&self) -> Missed {
        self.missed
    }

    /// The first occurrence at or after `start_ms` (epoch ms), within the
    /// end. Occurrences are whole seconds.
    pub fn first_at_or_after(&self, start_ms: i64) -> Option<i64> {
        self.next_after(start_ms.checked_sub(1)?)
    }

    /// The first occurrence strictly after `after_ms`, within the end.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let t = self
            .next_after_s(after_ms.div_euclid(1000))?
            .checked_mul(1000)?;
        self.end_ms.is_none_or(|end| t <= end).then_some(t)
    }

    /// The latest occurrence at or before `at_ms` (not bounded by the end).
    pub fn latest_at_or_before(&self, at_ms: i64) -> Option<i64> {
        self.latest_at_or_before_s(at_ms.div_euclid(1000))?
            .checked_mul(1000)
    }

    /// The plan for the series' record due at `due_ms` (an occurrence) with
    /// number `number`, handled at `now_ms`: which occurrence to deliver
    /// under the [`Missed`] policy, and the record to write for the next.
    pub fn plan(&self, due_ms: i64, number: u64, now_ms: i64) -> Plan {
        let horizon = self.end_ms.map_or(now_ms, |end| end.min(now_ms));
        let later = (now_ms - due_ms > MISSED_AFTER_MS && horizon > due_ms)
            .then(|| self.latest_at_or_before(horizon))
            .flatten()
            .filter(|&t| t > due_ms);
        let deliver = match (self.missed, later) {
            (_, None) => Some(due_ms),
            (Missed::Latest, Some(t)) => Some(t),
            (Missed::Skip, Some(_)) => None,
            (Missed::All, Some(t)) => Some(self.catch_up(due_ms, t)),
        };
        let delivered = if deliver.is_some() {
            number
        } else {
            number - 1
        };
        let next = if self.count.is_some_and(|c| delivered >= c) {
            None
        } else {
            let from = deliver.unwrap_or(now_ms.max(due_ms));
            self.next_after(from).map(|t| (t, delivered + 1))
        };
        Plan { deliver, next }
    }

    /// With [`Missed::All`]: `due_ms`, unless more than [`CATCH_UP_MAX`]
    /// occurrences lie in `(due_ms, latest_ms]`; then the oldest of the
    /// last [`CATCH_UP_MAX`].
    fn catch_up(&self, due_ms: i64, latest_ms: i64) -> i64 {
        let mut t = latest_ms;
        for _ in 1..CATCH_UP_MAX {
            match self.latest_at_or_before(t - 1) {
                Some(p) if p > due_ms => t = p,
                _ => return due_ms,
            }
        }
        t
    }

    fn offset_at(&self, s: i64) -> Option<FixedOffset> {
        let utc = DateTime::from_timestamp(s, 0)?;
        Some(self.zone.offset_from_utc_datetime(&utc.naive_utc()).fix())
    }

    fn local(&self, s: i64) -> Option<NaiveDateTime> {
        Some(
            DateTime::from_timestamp(s, 0)?
                .with_timezone(&self.zone)
                .naive_local(),
        )
    }

    fn next_after_s(&self, after: i64) -> Option<i64> {
        // Fast path: no clock change between `after` and the candidate.
        let offset = self.offset_at(after)?;
        let start = DateTime::from_timestamp(after, 0)?.with_timezone(&offset);
        let c = self.schedule.after(&start).next()?.timestamp();
        if c - after <= FAST_SPAN_S && self.offset_at(c)? == offset {
            return Some(c);
        }
        // Near a clock change: every wall-clock candidate from 3 h before,
        // mapped to instants by the rules; the smallest after `after`.
        let from =
            Utc.from_utc_datetime(&(self.local(after)? - chrono::Duration::seconds(MARGIN_S)));
        let mut best: Option<(i64, NaiveDateTime)> = None;
        for candidate in self.schedule.after(&from).take(SEARCH_MAX) {
            let n = candidate.naive_utc();
            if best.is_some_and(|(_, b)| n > b + chrono::Duration::seconds(MARGIN_S)) {
                break;
            }
            for t in self.instants(n).into_iter().flatten() {
                if t > after && best.is_none_or(|(b, _)| t < b) {
                    best = Some((t, n));
                }
            }
        }
        best.map(|(t, _)| t)
    }

    fn latest_at_or_before_s(&self, at: i64) -> Option<i64> {
        let offset = self.offset_at(at)?;
        let start = DateTime::from_timestamp(at + 1, 0)?.with_timezone(&offset);
        let p = self.schedule.after(&start).next_back()?.timestamp();
        if at - p <= FAST_SPAN_S && self.offset_at(p)? == offset {
            return Some(p);
        }
        let from = Utc.from_utc_datetime(&(self.local(at)? + chrono::Duration::seconds(MARGIN_S)));
        let mut best: Option<(i64, NaiveDateTime)> = None;
        for candidate in self.schedule.after(&from).rev().take(SEARCH_MAX) {
            let n = candidate.naive_utc();
            if best.is_some_and(|(_, b)| n < b - chrono::Duration::seconds(MARGIN_S)) {
                break;
            }
            for t in self.instants(n).into_iter().flatten() {
                if t <= at && best.is_none_or(|(b, _)| t > b) {
                    best = Some((t, n));
                }
            }
        }
        best.map(|(t, _)| t)
    }

    /// The instants (epoch s) at which wall-clock time `n` fires.
    fn instants(&self, n: NaiveDateTime) -> [Option<i64>; 2] {
        match self.zone.from_local_datetime(&n) {
            LocalResult::Single(d) => [Some(d.timestamp()), None],
            LocalResult::Ambiguous(first, second) => [
                Some(first.timestamp()),
                (!self.wall).then(|| second.timestamp()),
            ],
            LocalResult::None if self.wall => [self.jump_end(n), None],
            LocalResult::None => [None, None],
        }
    }

    /// The instant the clock jumped forward over wall-clock time `n`: the
    /// first whole minute after it that exists.
    fn jump_end(&self, n: NaiveDateTime) -> Option<i64> {
        let mut m = n.with_second(0)?.with_nanosecond(0)?;
        for _ in 0..(26 * 60) {
            m += chrono::Duration::minutes(1);
            match self.zone.from_local_datetime(&m) {
                LocalResult::Single(d) | LocalResult::Ambiguous(d, _) => {
                    return Some(d.timestamp())
                }
                LocalResult::None => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
