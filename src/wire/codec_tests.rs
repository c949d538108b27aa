//! Round trips, truncated input and garbage for every decoder.

use super::*;
use crate::fragment::UnixMillis;

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

fn id(seq: u64) -> FragmentId {
    FragmentId {
        stream: name("cam-1"),
        epoch: 42,
        sequence: seq,
    }
}

fn client_samples() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Hello {
            version: 1,
            agent: "gate ⚡".into(),
            streams: vec![],
        },
        ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            agent: "pi".into(),
            streams: vec![
                StreamOpen {
                    stream: name("a"),
                    epoch: 1,
                },
                StreamOpen {
                    stream: name("b.c-d_e"),
                    epoch: u64::MAX,
                },
            ],
        },
    ]
}

fn server_samples() -> Vec<ServerMessage> {
    vec![
        ServerMessage::Welcome { resumes: vec![] },
        ServerMessage::Welcome {
            resumes: vec![StreamResume {
                stream: name("a"),
                epoch: 3,
                next_sequence: 99,
            }],
        },
        ServerMessage::StreamRefused {
            stream: name("x"),
            code: ErrorCode::NotAuthorized,
            message: "no".into(),
        },
        ServerMessage::Ack {
            id: id(5),
            kind: AckKind::Received,
            fragment_number: None,
        },
        ServerMessage::Ack {
            id: id(6),
            kind: AckKind::Persisted,
            fragment_number: Some("91343852333181432392682062607743920146264371".into()),
        },
        ServerMessage::Error {
            id: None,
            code: ErrorCode::MalformedFrame,
            message: "bad".into(),
        },
        ServerMessage::Error {
            id: Some(id(7)),
            code: ErrorCode::ShuttingDown,
            message: String::new(),
        },
    ]
}

fn header() -> FragmentHeader {
    FragmentHeader {
        id: id(8),
        producer_timestamp: UnixMillis(1_700_000_000_123),
        duration_ms: 2000,
        payload_len: 123_456,
        checksum: 0xDEAD_BEEF,
    }
}

#[test]
fn every_message_round_trips_through_the_decoder() {
    let mut d = FrameDecoder::new();
    for msg in client_samples() {
        d.push(&encode_client(&msg)).unwrap();
        assert_eq!(d.next_client().unwrap(), Some(msg));
    }
    for msg in server_samples() {
        d.push(&encode_server(&msg)).unwrap();
        assert_eq!(d.next_server().unwrap(), Some(msg));
    }
    assert_eq!(d.next_server().unwrap(), None);
    assert!(d.finish().is_ok());
    let bytes = encode_fragment_header(&header());
    assert_eq!(
        decode_fragment_header(&bytes).unwrap(),
        (header(), bytes.len())
    );
}

#[test]
fn frames_split_at_every_byte_still_decode() {
    let mut all = Vec::new();
    for msg in server_samples() {
        all.extend(encode_server(&msg));
    }
    let mut d = FrameDecoder::new();
    let mut got = Vec::new();
    for b in &all {
        d.push(std::slice::from_ref(b)).unwrap();
        while let Some(m) = d.next_server().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, server_samples());
}

#[test]
fn every_truncation_is_reported_never_a_panic() {
    let frames: Vec<Vec<u8>> = client_samples()
        .iter()
        .map(encode_client)
        .chain(server_samples().iter().map(encode_server))
        .chain([encode_fragment_header(&header())])
        .collect();
    for frame in frames {
        for cut in 0..frame.len() {
            let part = &frame[..cut];
            assert_eq!(
                decode_fragment_header(part).unwrap_err(),
                WireError::Truncated
            );
            let mut d = FrameDecoder::new();
            d.push(part).unwrap();
            assert_eq!(d.next_server(), Ok(None));
            assert_eq!(
                d.finish(),
                if cut == 0 {
                    Ok(())
                } else {
                    Err(WireError::Truncated)
                }
            );
            // A body cut short, with a prefix claiming its shorter length.
            if cut > FRAME_PREFIX_BYTES {
                let body = &frame[FRAME_PREFIX_BYTES..cut];
                assert!(decode_server_body(body).is_err() || decode_client_body(body).is_err());
            }
        }
    }
}

#[test]
fn body_errors_are_typed() {
    assert_eq!(
        decode_client_body(&[0x7f]),
        Err(WireError::UnknownMessageType(0x7f))
    );
    assert_eq!(
        decode_server_body(&[0x01]),
        Err(WireError::UnknownMessageType(0x01))
    );
    assert_eq!(
        decode_fragment_header_body(&[0x10]),
        Err(WireError::UnknownMessageType(0x10))
    );
    assert_eq!(decode_server_body(&[]), Err(WireError::Truncated));
    // Welcome with no resumes plus a stray byte.
    assert_eq!(
        decode_server_body(&[0x10, 0, 0, 9]),
        Err(WireError::TrailingBytes(1))
    );
    // StreamRefused with invalid UTF-8 in the name.
    assert_eq!(
        decode_server_body(&[0x11, 0, 1, 0xff, 0, 1, 0, 0]),
        Err(WireError::BadUtf8)
    );
    // StreamRefused naming "a/b".
    let bad = decode_server_body(&[0x11, 0, 3, b'a', b'/', b'b', 0, 1, 0, 0]).unwrap_err();
    assert!(matches!(bad, WireError::BadStreamName(_)));
    assert_eq!(bad.code(), ErrorCode::BadStreamName);
    // StreamRefused with error code 999.
    assert_eq!(
        decode_server_body(&[0x11, 0, 1, b'a', 0x03, 0xe7, 0, 0]),
        Err(WireError::UnknownErrorCode(999))
    );
    let mut ack = encode_server(&ServerMessage::Ack {
        id: id(1),
        kind: AckKind::Received,
        fragment_number: None,
    });
    let kind_at = ack.len() - 2;
    ack[kind_at] = 7;
    assert_eq!(decode_server_body(&ack[4..]), Err(WireError::BadAckKind(7)));
}

#[test]
fn oversized_frames_are_refused_before_buffering() {
    let mut d = FrameDecoder::new();
    d.push(&(CONTROL_FRAME_BYTES_MAX as u32).to_be_bytes())
        .unwrap();
    assert!(matches!(
        d.next_client(),
        Err(WireError::FrameTooLarge { .. })
    ));
    let mut d = FrameDecoder::new();
    assert!(matches!(
        d.push(&vec![0; CONTROL_FRAME_BYTES_MAX + 1]),
        Err(WireError::BufferFull { .. })
    ));
    let mut big = vec![0, 0, 2, 0];
    big.resize(600, 0);
    assert!(matches!(
        decode_fragment_header(&big),
        Err(WireError::FrameTooLarge { .. })
    ));
    assert_eq!(
        decode_fragment_header(&[0, 0, 0, 0]),
        Err(WireError::Truncated)
    );
}

#[test]
fn error_codes_round_trip_and_unknown_codes_are_typed() {
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_u16(code.as_u16()), Ok(code));
    }
    assert_eq!(ErrorCode::from_u16(0), Err(WireError::UnknownErrorCode(0)));
    assert_eq!(
        ErrorCode::from_u16(u16::MAX),
        Err(WireError::UnknownErrorCode(u16::MAX))
    );
    for permanent in [
        ErrorCode::UnknownStream,
        ErrorCode::NotAuthorized,
        ErrorCode::FragmentTooLarge,
        ErrorCode::BadStreamName,
    ] {
        assert!(permanent.is_permanent());
    }
    for transient in [
        ErrorCode::StorageFailure,
        ErrorCode::ShuttingDown,
        ErrorCode::LimitExceeded,
    ] {
        assert!(!transient.is_permanent());
    }
}

#[test]
fn random_bytes_never_panic_any_decoder() {
    let mut rng = SplitMix64::new(0x5eed);
    let valid: Vec<Vec<u8>> = server_samples().iter().map(encode_server).collect();
    for round in 0..4000 {
        let len = rng.below_or_eq(300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if round % 2 == 0 {
            // Mutate a valid frame so the fuzzing reaches past the type byte.
            let mut frame = valid[round % valid.len()].clone();
            for b in bytes.iter().take(3) {
                let at = usize::from(*b) % frame.len();
                frame[at] ^= b.wrapping_add(1);
            }
            bytes = frame;
        }
        fuzz_decode(&bytes);
    }
}
