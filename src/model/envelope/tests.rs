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
        headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))),
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
    let long = "9".repeat(10_000) + "x";
    let err = parse(&[("x-delay", &long), ("x-target-topic", "orders")], &p).unwrap_err();
    assert!(
        err.to_string().len() < 200,
        "the error repeats the value: {err}"
    );
    assert!(err.to_string().contains("(10001 bytes)"), "{err}");
}

const PLACE: TierSlot = TierSlot {
    tick_ms: 1_000,
    slots: 64,
    slot: 1_700_000_000 % 64,
};

fn tier<'a>(headers: &'a [(&'a str, &'a str)]) -> Result<Envelope<'a>, EnvelopeError> {
    let p = policy();
    parse_tier(
        headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))),
        PLACE,
        1_699_999_990_000,
        &p,
    )
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
    let env = tier(&headers).unwrap();
    assert_eq!(env.due_ms, 1_700_000_000_123);
    assert_eq!(env.target, "orders");
    assert_eq!(env.bucket, Some(1_700_000_000));
    let missing = tier(&headers[1..]);
    assert_eq!(missing, Err(EnvelopeError::CorruptTierRecord(DUE_AT)));
}

#[test]
fn forged_tier_records_are_refused() {
    let ok = [
        (DUE_AT, "1700000000123"),
        (TARGET, "orders"),
        (BUCKET, "1700000000"),
        (ORIGINAL_TIMESTAMP, "1699999999000"),
    ];
    let with = |key: &'static str, value: &'static str| {
        let mut h: Vec<(&str, &str)> = ok.iter().copied().filter(|(k, _)| *k != key).collect();
        h.push((key, value));
        h
    };
    let cases = [
        // Another slot's bucket.
        (with(BUCKET, "1700000001"), "slot"),
        // A bucket far in the future would hold the partition for hours.
        (
            vec![
                (DUE_AT, "1700006400500"),
                (TARGET, "orders"),
                (BUCKET, "1700006400"),
                (ORIGINAL_TIMESTAMP, "1699999999000"),
            ],
            "horizon",
        ),
        (with(BUCKET, "1700000064"), "after the due time"),
        // Due five years ahead: beyond max_delay instead of rolling over forever.
        (with(DUE_AT, "1857680000000"), "maximum delay"),
        // The target policy applies to tier records too.
        (with(TARGET, "__consumer_offsets"), "internal"),
        (with(TARGET, "delay.dlq"), "own topics"),
    ];
    for (headers, words) in cases {
        let err = tier(&headers).unwrap_err();
        assert!(err.to_string().contains(words), "{headers:?}: {err}");
    }
    let mut doubled = ok.to_vec();
    doubled.push((TARGET, "orders"));
    assert_eq!(
        tier(&doubled),
        Err(EnvelopeError::CorruptTierRecord(TARGET))
    );
}

#[test]
fn lookalike_routing_headers_are_refused() {
    let p = policy();
    for key in [
        "X-Delay",
        "x-delay ",
        " x-delay",
        "x-delay\0zz",
        "X-TARGET-TOPIC",
        "x-deliver-at\t",
    ] {
        let headers = [(key, "5"), ("x-target-topic", "orders")];
        let err = parse_ingress(
            headers
                .iter()
                .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))),
            Some(NOW),
            NOW,
            &p,
        );
        assert_eq!(
            err.map_err(|e| e.reason()),
            Err("lookalike_header"),
            "{key:?}"
        );
    }
    // Other headers, even close ones, pass through untouched.
    let headers = [("x-delay-foo", "1"), ("x-target-topic", "orders")];
    assert!(parse(&headers, &p).is_ok());
}

#[test]
fn epoch_seconds_in_deliver_at_are_refused() {
    let p = policy();
    let err = parse(
        &[("x-deliver-at", "1700000060"), ("x-target-topic", "orders")],
        &p,
    )
    .unwrap_err();
    assert_eq!(err.reason(), "invalid_deliver_at");
    assert!(err.to_string().contains("epoch seconds"), "{err}");
    // Small values are a past instant: deliver now.
    assert!(parse(&[("x-deliver-at", "0"), ("x-target-topic", "orders")], &p).is_ok());
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
        let headers = [(b"x-delay".as_slice(), Some(raw.as_slice())), (b"x-target-topic".as_slice(), Some(b"orders".as_slice()))];
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
    let iter = || {
        headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes())))
    };
    let env = parse_ingress_trusting(iter(), Some(NOW), NOW, &p, "orders").unwrap();
    assert_eq!(env.target, "orders");
    let other = [("x-target-topic", "payments")];
    let err = parse_ingress_trusting(
        other
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))),
        Some(NOW),
        NOW,
        &p,
        "orders",
    );
    assert_eq!(err.unwrap_err().reason(), "forbidden_target");
}

/// Keys a producer might send: the routing headers, the service's own, look-alikes.
const KEY_SEEDS: [&[u8]; 10] = [
    b"x-delay",
    b"x-deliver-at",
    b"x-target-topic",
    b"X-Delay",
    b"x-delay\0",
    b" x-target-topic",
    b"x-delay-error",
    b"x-delay-bucket",
    b"x-delay-due-at",
    b"x-delay-target",
];

fn header_strategy() -> impl Strategy<Value = (Vec<u8>, Option<Vec<u8>>)> {
    let key = prop_oneof![
        proptest::sample::select(KEY_SEEDS.to_vec()).prop_map(<[u8]>::to_vec),
        proptest::collection::vec(any::<u8>(), 0..24),
    ];
    let value = proptest::option::of(prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        "[0-9]{0,20}".prop_map(String::into_bytes),
        "-?[0-9]{1,13}".prop_map(String::into_bytes),
        proptest::sample::select(vec![b"orders".to_vec(), b"__consumer_offsets".to_vec()]),
    ]);
    (key, value)
}

fn fuzz_cases() -> u32 {
    std::env::var("KAFKA_DELAY_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2_000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    /// Arbitrary header bytes through the consumer's own path: librdkafka's
    /// header objects, the byte-exact key reader, then the ingress and tier
    /// parsers. Never a panic; every record either parses (never early) or
    /// gets a reason from the fixed set.
    #[test]
    fn fuzz_header_bytes_are_routed_or_dead_lettered(
        headers in proptest::collection::vec(header_strategy(), 0..8),
        timestamp in proptest::option::of(0_i64..2_000_000_000_000),
    ) {
        let mut out = crate::kafka::native::OutHeaders::with_capacity(headers.len());
        for (k, v) in &headers {
            out.add(k, v.as_deref());
        }
        let view = crate::kafka::native::HeaderView::of(&out);
        let read: Vec<_> = view.iter().collect();
        prop_assert_eq!(read.len(), headers.len());
        static POLICY: std::sync::OnceLock<TargetPolicy> = std::sync::OnceLock::new();
        let p = POLICY.get_or_init(policy);
        match parse_ingress(view.iter(), timestamp, NOW, p) {
            Ok(env) => {
                prop_assert!(env.due_ms >= 0 || timestamp.is_some_and(|t| t < 0));
                prop_assert!(is_valid_topic_name(env.target));
            }
            Err(e) => {
                prop_assert!(EnvelopeError::REASONS.contains(&e.reason()));
                prop_assert!(e.to_string().len() < 400, "error text grows with the input: {e}");
            }
        }
        match parse_tier(view.iter(), PLACE, NOW, p) {
            Ok(env) => prop_assert!(env.bucket.is_some()),
            Err(e) => prop_assert!(EnvelopeError::REASONS.contains(&e.reason())),
        }
    }
}
