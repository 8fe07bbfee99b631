use super::*;

#[test]
fn a_target_must_be_a_topic_name() {
    let huge = format!(
        r#"{{"before": 1, "until": 2, "target": "{}"}}"#,
        "t".repeat(1 << 20)
    );
    for value in [
        huge.as_str(),
        r#"{"before": 1, "until": 2, "target": "a b"}"#,
        r#"{"before": 1, "until": 2, "target": ""}"#,
    ] {
        assert!(
            matches!(
                parse_record(Some(b"x"), Some(value.as_bytes())),
                Err(CancelError::BadTarget(ref t)) if t.len() <= 64
            ),
            "{}",
            &value[..value.len().min(80)]
        );
    }
}

#[test]
fn records_of_the_cancel_topic_are_parsed_strictly() {
    let json = br#"{"before": 10, "until": 20, "target": "t"}"#;
    assert_eq!(
        parse_record(Some(b"id-1"), Some(json)),
        Ok(("id-1", Some(Cancel::of(10, 20, Some("t")))))
    );
    assert_eq!(parse_record(Some(b"id-1"), None), Ok(("id-1", None)));
    assert_eq!(parse_record(Some(b"id-1"), Some(b"")), Ok(("id-1", None)));
    assert_eq!(parse_record(None, None), Err(CancelError::BadId));
    assert_eq!(
        parse_record(Some(&[0xff, 0xfe]), None),
        Err(CancelError::BadId)
    );
    assert_eq!(
        parse_record(Some(&[b'a'; 257]), None),
        Err(CancelError::BadId)
    );
    assert!(matches!(
        parse_record(Some(b"x"), Some(br#"{"before": 10}"#)),
        Err(CancelError::BadValue(_))
    ));
    assert!(matches!(
        parse_record(
            Some(b"x"),
            Some(br#"{"before": 10, "until": 20, "extra": 1}"#)
        ),
        Err(CancelError::BadValue(_))
    ));
    assert_eq!(
        parse_record(Some(b"x"), Some(br#"{"before": 30, "until": 20}"#)),
        Err(CancelError::Inverted {
            before: 30,
            until: 20
        })
    );
}
