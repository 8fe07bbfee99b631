//! Header bytes through librdkafka's own header objects: what goes in comes
//! out, whatever the bytes, and a copy (as `detach` makes) keeps them.

use super::*;
use proptest::prelude::*;

fn roundtrip(headers: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut out = OutHeaders::with_capacity(headers.len());
    for (k, v) in headers {
        out.add(k, v.as_deref());
    }
    HeaderView::of(&out)
        .iter()
        .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
        .collect()
}

#[test]
fn keys_with_nul_and_invalid_utf8_keep_every_byte() {
    let headers = vec![
        (b"x-delay\0zz".to_vec(), Some(b"5".to_vec())),
        (vec![0xff, 0xfe, b'k'], Some(vec![0, 1, 2])),
        (Vec::new(), None),
        (b"plain".to_vec(), Some(Vec::new())),
        (vec![0; 3], Some(vec![b'v'; 70_000])),
    ];
    assert_eq!(roundtrip(&headers), headers);
}

#[test]
fn a_copied_header_list_keeps_true_key_lengths() {
    let mut out = OutHeaders::with_capacity(1);
    out.add(b"a\0b", Some(b"v"));
    // SAFETY: copies a live headers object, as rd_kafka_message_detach does.
    let copy = OutHeaders {
        native: unsafe { rdsys::rd_kafka_headers_copy(out.native) },
        bytes: 0,
    };
    let view = HeaderView::of(&copy);
    assert_eq!(
        view.get(0),
        Some((b"a\0b".as_slice(), Some(b"v".as_slice())))
    );
    assert_eq!(view.byte_size(), 4);
}

#[test]
fn varint_lengths_match_librdkafka() {
    for (n, len) in [(0, 1), (63, 1), (64, 2), (8191, 2), (8192, 3), (1 << 20, 4)] {
        assert_eq!(varint_len(n), len, "{n}");
    }
}

proptest! {
    #[test]
    fn any_header_bytes_come_back_unchanged(
        headers in proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            ),
            0..12,
        )
    ) {
        prop_assert_eq!(roundtrip(&headers), headers);
    }
}

#[test]
fn the_linked_librdkafka_is_the_release_whose_layout_we_read() {
    assert_eq!(check_librdkafka_version(), Ok(()));
    assert_eq!(check_version(0x020c01ff), Ok(()));
    let other = check_version(0x020b00ff).unwrap_err();
    assert!(
        other.contains("2.11.0") && other.contains("2.12"),
        "{other}"
    );
    assert!(check_version(0x030000ff).is_err());
}
