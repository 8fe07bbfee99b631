//! Header contract tests: every accepted form and every dead-letter reason.

use super::*;
use proptest::prelude::*;

const NOW: i64 = 1_700_000_000_000;

fn policy() -> TargetPolicy {
    TargetPolicy {
        default_target: None,
        allowed: Some(Regex::new("^(?:orders|app\\..*)$").unwrap()),
        own_topics: vec!["delay.in".into(), "delay.dlq".into(), "delay.1s".into()],
        max_delay_ms: 86_400_000,
    }
}

fn parse<'a>(
    headers: &'a [(&'a str, &'a str)],
    policy: &'a TargetPolicy,
) -> Result<Envelope<'a>, EnvelopeError> {
    parse_ingress(
        headers.iter().map(|(k, v)| (*k, Some(v.as_bytes()))),
        Some(NOW - 1_000),
        NOW,
        policy,
    )
}

#[test]
fn delay_counts_from_the_record_timestamp() {
    let p = policy();
    let env = parse(&[("x-delay", "5000"), ("x-target-topic", "orders")], &p).unwrap();
    assert_eq!(env.due_ms, NOW + 4_000);
    assert_eq!(env.target, "orders");
    assert_eq!(env.original_timestamp_ms, NOW - 1_000);
}

#[test]
fn deliver_at_accepts_epoch_ms_and_rfc3339() {
    let p = policy();
    let env = parse(
        &[
            ("x-deliver-at", "1700000060000"),
            ("x-target-topic", "orders"),
        ],
        &p,
    );
    assert_eq!(env.unwrap().due_ms, 1_700_000_060_000);
    let env = parse(
        &[
            ("x-deliver-at", "2023-11-14T22:14:20.5+00:00"),
            ("x-target-topic", "app.x"),
        ],
        &p,
    );
    assert_eq!(env.unwrap().due_ms, 1_700_000_060_500);
    let env = parse(
        &[
            ("x-deliver-at", "2023-11-15T00:14:20Z"),
            ("x-target-topic", "app.x"),
        ],
        &p,
    );
    assert_eq!(env.unwrap().due_ms, 1_700_007_260_000);
}

#[test]
fn no_delay_header_means_now_and_past_due_is_kept() {
    let p = policy();
    assert_eq!(
        parse(&[("x-target-topic", "orders")], &p).unwrap().due_ms,
        NOW - 1_000
    );
    let env = parse(&[("x-deliver-at", "5"), ("x-target-topic", "orders")], &p).unwrap();
    assert_eq!(env.due_ms, 5);
}

#[test]
fn default_target_applies_only_without_header() {
    let mut p = policy();
    p.default_target = Some("orders".into());
    assert_eq!(parse(&[("x-delay", "1")], &p).unwrap().target, "orders");
    assert_eq!(
        parse(&[("x-target-topic", "app.y")], &p).unwrap().target,
        "app.y"
    );
}

#[test]
fn every_bad_header_has_its_reason() {
    let p = policy();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("x-delay", "abc"), ("x-target-topic", "orders")],
            "invalid_delay",
        ),
        (
            &[("x-delay", " 5"), ("x-target-topic", "orders")],
            "invalid_delay",
        ),
        (
            &[("x-delay", "+5"), ("x-target-topic", "orders")],
            "invalid_delay",
        ),
        (
            &[("x-delay", "1e3"), ("x-target-topic", "orders")],
            "invalid_delay",
        ),
        (
            &[("x-delay", ""), ("x-target-topic", "orders")],
            "invalid_delay",
        ),
        (
            &[("x-delay", "-5"), ("x-target-topic", "orders")],
            "invalid_delay",
        ),
        (
            &[
                ("x-delay", "99999999999999999999"),
                ("x-target-topic", "orders"),
            ],
            "invalid_delay",
        ),
        (
            &[
                ("x-delay", "9223372036854775807"),
                ("x-target-topic", "orders"),
            ],
            "invalid_delay",
        ),
        (
            &[("x-deliver-at", "tomorrow"), ("x-target-topic", "orders")],
            "invalid_deliver_at",
        ),
        (
            &[
                ("x-delay", "1"),
                ("x-deliver-at", "1"),
                ("x-target-topic", "orders"),
            ],
            "conflicting_headers",
        ),
        (
            &[
                ("x-delay", "1"),
                ("x-delay", "2"),
                ("x-target-topic", "orders"),
            ],
            "conflicting_headers",
        ),
        (
            &[("x-target-topic", "orders"), ("x-target-topic", "orders")],
            "conflicting_headers",
        ),
        (&[("x-delay", "1")], "missing_target"),
        (&[("x-target-topic", "bad topic")], "invalid_target"),
        (&[("x-target-topic", "")], "invalid_target"),
        (&[("x-target-topic", "..")], "invalid_target"),
        (
            &[("x-target-topic", "__consumer_offsets")],
            "forbidden_target",
        ),
        (&[("x-target-topic", "delay.dlq")], "forbidden_target"),
        (&[("x-target-topic", "payments")], "forbidden_target"),
        (
            &[("x-delay", "86401001"), ("x-target-topic", "orders")],
            "beyond_max_delay",
        ),
    ];
    for (headers, reason) in cases {
        let err = parse(headers, &p).expect_err(&format!("{headers:?} must be rejected"));
        assert_eq!(err.reason(), *reason, "{headers:?}: {err}");
        assert!(EnvelopeError::REASONS.contains(&err.reason()));
    }
}

#[test]
fn error_text_explains_in_plain_words() {
    let p = policy();
    let err = parse(&[("x-delay", "soon"), ("x-target-topic", "orders")], &p).unwrap_err();
    assert_eq!(
        err.to_string(),
        "x-delay must be ASCII decimal milliseconds, got \"soon\""
    );
}

#[test]
fn tier_headers_round_trip() {
    let headers = [
        (DUE_AT, "1700000000123"),
        (TARGET, "orders"),
        (BUCKET, "1700000000"),
        (ORIGINAL_TIMESTAMP, "1699999999000"),
        ("user", "kept"),
    ];
    let env = parse_tier(headers.iter().map(|(k, v)| (*k, Some(v.as_bytes())))).unwrap();
    assert_eq!(env.due_ms, 1_700_000_000_123);
    assert_eq!(env.target, "orders");
    assert_eq!(env.bucket, Some(1_700_000_000));
    let missing = parse_tier(headers[1..].iter().map(|(k, v)| (*k, Some(v.as_bytes()))));
    assert_eq!(missing, Err(EnvelopeError::CorruptTierRecord(DUE_AT)));
}

proptest! {
    #[test]
    fn any_ascii_decimal_delay_is_accepted_exactly(delay in 0_i64..86_400_000) {
        let p = policy();
        let text = delay.to_string();
        let headers = [("x-delay", text.as_str()), ("x-target-topic", "orders")];
        prop_assert_eq!(parse(&headers, &p).unwrap().due_ms, NOW - 1_000 + delay);
    }

    #[test]
    fn garbage_never_panics_and_never_schedules_early(raw in proptest::collection::vec(any::<u8>(), 0..24)) {
        let p = policy();
        let headers = [("x-delay", Some(raw.as_slice())), ("x-target-topic", Some(b"orders".as_slice()))];
        if let Ok(env) = parse_ingress(headers.into_iter(), Some(NOW), NOW, &p) {
            prop_assert!(raw.iter().all(u8::is_ascii_digit));
            prop_assert!(env.due_ms >= NOW);
        }
    }
}

#[test]
fn trusted_target_skips_only_its_own_checks() {
    let p = policy();
    let headers = [("x-target-topic", "orders")];
    let iter = || headers.iter().map(|(k, v)| (*k, Some(v.as_bytes())));
    let env = parse_ingress_trusting(iter(), Some(NOW), NOW, &p, "orders").unwrap();
    assert_eq!(env.target, "orders");
    let other = [("x-target-topic", "payments")];
    let err = parse_ingress_trusting(
        other.iter().map(|(k, v)| (*k, Some(v.as_bytes()))),
        Some(NOW),
        NOW,
        &p,
        "orders",
    );
    assert_eq!(err.unwrap_err().reason(), "forbidden_target");
}
