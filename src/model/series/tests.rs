use super::*;

fn series(headers: &[(&str, &str)]) -> Series {
    try_series(headers).unwrap()
}

fn try_series(headers: &[(&str, &str)]) -> Result<Series, SeriesError> {
    let raw = RawSeries::of(
        headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))),
    )?;
    Ok(raw.parse()?.expect("a series"))
}

/// Epoch ms of an RFC 3339 instant.
fn at(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

/// The first `n` occurrences at or after `start`, as RFC 3339 UTC.
fn occurrences(s: &Series, start: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut t = s.first_at_or_after(at(start));
    while let Some(ms) = t {
        if out.len() == n {
            break;
        }
        out.push(
            DateTime::from_timestamp_millis(ms)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
        );
        t = s.next_after(ms);
    }
    out
}

#[test]
fn five_six_and_seven_fields_and_shorthands_parse() {
    let every_minute = series(&[(SCHEDULE, "* * * * *")]);
    assert_eq!(
        occurrences(&every_minute, "2026-12-04T10:00:30Z", 2),
        ["2026-12-04T10:01:00Z", "2026-12-04T10:02:00Z"]
    );
    let every_second = series(&[(SCHEDULE, "* * * * * *")]);
    assert_eq!(
        occurrences(&every_second, "2026-12-04T10:00:00.500Z", 2),
        ["2026-12-04T10:00:01Z", "2026-12-04T10:00:02Z"]
    );
    let start_inclusive = series(&[(SCHEDULE, "0 0 12 * * * 2027")]);
    assert_eq!(
        occurrences(&start_inclusive, "2027-01-01T12:00:00Z", 2),
        ["2027-01-01T12:00:00Z", "2027-01-02T12:00:00Z"]
    );
    let daily = series(&[(SCHEDULE, "@daily")]);
    assert_eq!(
        occurrences(&daily, "2026-12-04T10:00:00Z", 1),
        ["2026-12-05T00:00:00Z"]
    );
}

#[test]
fn every_bad_header_has_its_error() {
    let bad = |h: &[(&str, &str)]| try_series(h).unwrap_err();
    assert!(matches!(
        bad(&[(SCHEDULE, "* * *")]),
        SeriesError::BadExpression(..)
    ));
    assert!(matches!(
        bad(&[(SCHEDULE, "61 * * * *")]),
        SeriesError::BadExpression(..)
    ));
    assert!(matches!(
        bad(&[(SCHEDULE, "@often")]),
        SeriesError::BadExpression(..)
    ));
    let zone = bad(&[(SCHEDULE, "* * * * *"), (ZONE, "Mars/Olympus")]);
    assert_eq!(zone.to_string(), "x-delay-schedule-zone must be an IANA time zone name such as Europe/Berlin or UTC, got \"Mars/Olympus\"");
    assert!(matches!(
        bad(&[(SCHEDULE, "* * * * *"), (END, "soon")]),
        SeriesError::BadEnd(_)
    ));
    assert!(matches!(
        bad(&[(SCHEDULE, "* * * * *"), (COUNT, "0")]),
        SeriesError::BadCount(_)
    ));
    assert!(matches!(
        bad(&[(SCHEDULE, "* * * * *"), (COUNT, "-3")]),
        SeriesError::BadCount(_)
    ));
    assert!(matches!(
        bad(&[(SCHEDULE, "* * * * *"), (MISSED, "some")]),
        SeriesError::BadMissed(_)
    ));
    assert_eq!(bad(&[(COUNT, "3")]), SeriesError::Orphan(COUNT));
    assert_eq!(
        bad(&[(SCHEDULE, "* * * * *"), (SCHEDULE, "@daily")]),
        SeriesError::Duplicate(SCHEDULE)
    );
    let long = "1,".repeat(200) + "1 * * * *";
    assert!(matches!(
        bad(&[(SCHEDULE, &long)]),
        SeriesError::BadExpression(..)
    ));
    let none = RawSeries::of(std::iter::empty()).unwrap().parse().unwrap();
    assert!(
        none.is_none(),
        "a record without series headers is not a series"
    );
}

#[test]
fn end_and_count_bound_the_series() {
    let s = series(&[(SCHEDULE, "0 * * * * *"), (END, "2026-12-04T10:03:00Z")]);
    assert_eq!(
        occurrences(&s, "2026-12-04T10:00:30Z", 10),
        [
            "2026-12-04T10:01:00Z",
            "2026-12-04T10:02:00Z",
            "2026-12-04T10:03:00Z"
        ]
    );
    let s = series(&[(SCHEDULE, "* * * * * *"), (COUNT, "2")]);
    let t0 = at("2026-12-04T10:00:00Z");
    let first = s.plan(t0, 1, t0);
    assert_eq!(first.deliver, Some(t0));
    assert_eq!(first.next, Some((t0 + 1000, 2)));
    let second = s.plan(t0 + 1000, 2, t0 + 1000);
    assert_eq!(
        second,
        Plan {
            deliver: Some(t0 + 1000),
            next: None
        },
        "count 2 ends the series"
    );
}

/// Europe/Berlin, 29 March 2026: 02:00 CET becomes 03:00 CEST (01:00Z).
#[test]
fn a_wall_clock_time_skipped_by_spring_forward_fires_at_the_jump() {
    let s = series(&[(SCHEDULE, "0 30 2 * * *"), (ZONE, "Europe/Berlin")]);
    assert_eq!(
        occurrences(&s, "2026-03-27T00:00:00Z", 4),
        [
            "2026-03-27T01:30:00Z", // 02:30 CET
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // 02:30 does not exist: 03:00 CEST, the jump
            "2026-03-30T00:30:00Z", // 02:30 CEST
        ]
    );
}

/// Europe/Berlin, 25 October 2026: 03:00 CEST becomes 02:00 CET (01:00Z).
#[test]
fn a_wall_clock_time_that_occurs_twice_fires_once() {
    let s = series(&[(SCHEDULE, "0 30 2 * * *"), (ZONE, "Europe/Berlin")]);
    assert_eq!(
        occurrences(&s, "2026-10-24T00:00:00Z", 3),
        [
            "2026-10-24T00:30:00Z", // 02:30 CEST
            "2026-10-25T00:30:00Z", // 02:30 CEST, the first of the two
            "2026-10-26T01:30:00Z", // 02:30 CET
        ]
    );
}

#[test]
fn an_interval_stays_evenly_spaced_across_both_changes() {
    let s = series(&[(SCHEDULE, "0 */15 * * * *"), (ZONE, "Europe/Berlin")]);
    assert_eq!(
        occurrences(&s, "2026-03-29T00:30:00Z", 4),
        [
            "2026-03-29T00:30:00Z", // 01:30 CET
            "2026-03-29T00:45:00Z", // 01:45 CET
            "2026-03-29T01:00:00Z", // 03:00 CEST: 02:00-02:45 do not exist
            "2026-03-29T01:15:00Z", // 03:15 CEST
        ]
    );
    assert_eq!(
        occurrences(&s, "2026-10-25T00:30:00Z", 7),
        [
            "2026-10-25T00:30:00Z", // 02:30 CEST
            "2026-10-25T00:45:00Z", // 02:45 CEST
            "2026-10-25T01:00:00Z", // 02:00 CET: the hour again
            "2026-10-25T01:15:00Z", // 02:15 CET
            "2026-10-25T01:30:00Z", // 02:30 CET
            "2026-10-25T01:45:00Z", // 02:45 CET
            "2026-10-25T02:00:00Z", // 03:00 CET
        ]
    );
}

/// America/New_York, 8 March 2026: 02:00 EST becomes 03:00 EDT (07:00Z).
#[test]
fn new_york_spring_forward_and_the_latest_occurrence_across_it() {
    let s = series(&[(SCHEDULE, "30 2 * * *"), (ZONE, "America/New_York")]);
    assert_eq!(
        occurrences(&s, "2026-03-07T00:00:00Z", 3),
        [
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z"
        ]
    );
    assert_eq!(
        s.latest_at_or_before(at("2026-03-08T12:00:00Z")),
        Some(at("2026-03-08T07:00:00Z"))
    );
    assert_eq!(
        s.latest_at_or_before(at("2026-03-08T07:00:00Z")),
        Some(at("2026-03-08T07:00:00Z"))
    );
    assert_eq!(
        s.latest_at_or_before(at("2026-03-08T06:59:59Z")),
        Some(at("2026-03-07T07:30:00Z"))
    );
}

#[test]
fn missed_occurrences_follow_the_policy() {
    let t0 = at("2026-12-04T10:00:00Z");
    // The record of 10:00:00 handled at 10:01:30.500 (an outage): ninety
    // more were due.
    let now = t0 + 90_500;
    let latest = series(&[(SCHEDULE, "* * * * * *")]);
    assert_eq!(
        latest.plan(t0, 4, now),
        Plan {
            deliver: Some(t0 + 90_000),
            next: Some((t0 + 91_000, 5))
        }
    );
    let all = series(&[(SCHEDULE, "* * * * * *"), (MISSED, "all")]);
    assert_eq!(
        all.plan(t0, 4, now),
        Plan {
            deliver: Some(t0),
            next: Some((t0 + 1_000, 5))
        }
    );
    let skip = series(&[(SCHEDULE, "* * * * * *"), (MISSED, "skip")]);
    assert_eq!(
        skip.plan(t0, 4, now),
        Plan {
            deliver: None,
            next: Some((t0 + 91_000, 4))
        }
    );
    // On time, or late by less than MISSED_AFTER_MS (a failover): every
    // policy delivers it and catches up one occurrence at a time.
    for s in [&latest, &all, &skip] {
        assert_eq!(
            s.plan(t0, 1, t0 + 30),
            Plan {
                deliver: Some(t0),
                next: Some((t0 + 1_000, 2))
            }
        );
        let late = t0 + MISSED_AFTER_MS;
        assert_eq!(
            s.plan(t0, 1, late),
            Plan {
                deliver: Some(t0),
                next: Some((t0 + 1_000, 2))
            }
        );
    }
}

#[test]
fn deliver_all_is_bounded() {
    let all = series(&[(SCHEDULE, "* * * * * *"), (MISSED, "all")]);
    let t0 = at("2026-12-04T00:00:00Z");
    let day_later = t0 + 86_400_000;
    let plan = all.plan(t0, 1, day_later);
    let first = day_later - (CATCH_UP_MAX as i64 - 1) * 1000;
    assert_eq!(
        plan.deliver,
        Some(first),
        "the oldest of the last {CATCH_UP_MAX}"
    );
    assert_eq!(plan.next, Some((first + 1000, 2)));
}
