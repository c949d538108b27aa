//! The spool's record format, inside `record_log` frames (which carry length and CRC-32C).
//!
//! Two kinds of record, told apart by their first byte:
//! - fragment: `1`, epoch u64, sequence u64, producer ms u64, duration ms u32, stream name
//!   length u16, stream name, payload (all integers little-endian);
//! - released: `2`, segment u64, offset u64: the fragment at that position is persisted by
//!   the server and never needs sending again.

use bytes::Bytes;

use crate::fragment::{Fragment, FragmentId, FragmentMeta, StreamName, UnixMillis};
use crate::record_log::RecordPos;

const KIND_FRAGMENT: u8 = 1;
const KIND_RELEASED: u8 = 2;
/// Kind, epoch, sequence, producer ms, duration, stream name length.
const FRAGMENT_HEAD_BYTES: usize = 1 + 8 + 8 + 8 + 4 + 2;
/// Kind, segment, offset.
pub const RELEASED_BYTES: usize = 1 + 8 + 8;

/// One decoded spool record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolRecord {
    Fragment(Fragment),
    Released(RecordPos),
}

/// Bytes of the fragment record's header before the payload.
pub fn fragment_head_bytes(stream: &StreamName) -> usize {
    FRAGMENT_HEAD_BYTES + stream.as_str().len()
}

pub fn encode_fragment(fragment: &Fragment) -> Vec<u8> {
    let meta = &fragment.meta;
    let name = meta.id.stream.as_str().as_bytes();
    let mut out = Vec::with_capacity(fragment_head_bytes(&meta.id.stream) + fragment.payload.len());
    out.push(KIND_FRAGMENT);
    out.extend_from_slice(&meta.id.epoch.to_le_bytes());
    out.extend_from_slice(&meta.id.sequence.to_le_bytes());
    out.extend_from_slice(&meta.producer_timestamp.0.to_le_bytes());
    out.extend_from_slice(&meta.duration_ms.to_le_bytes());
    // A valid stream name is at most 256 bytes, so it always fits a u16.
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&fragment.payload);
    out
}

pub fn encode_released(pos: RecordPos) -> [u8; RELEASED_BYTES] {
    let mut out = [0u8; RELEASED_BYTES];
    out[0] = KIND_RELEASED;
    out[1..9].copy_from_slice(&pos.segment.to_le_bytes());
    out[9..17].copy_from_slice(&pos.offset.to_le_bytes());
    out
}

/// Decodes a record; `None` for anything that is not a well-formed spool record.
pub fn decode(bytes: &[u8]) -> Option<SpoolRecord> {
    match *bytes.first()? {
        KIND_FRAGMENT => decode_fragment(bytes).map(SpoolRecord::Fragment),
        KIND_RELEASED if bytes.len() == RELEASED_BYTES => Some(SpoolRecord::Released(RecordPos {
            segment: u64_at(bytes, 1)?,
            offset: u64_at(bytes, 9)?,
        })),
        _ => None,
    }
}

fn decode_fragment(bytes: &[u8]) -> Option<Fragment> {
    let name_len = usize::from(u16::from_le_bytes(bytes.get(29..31)?.try_into().ok()?));
    let name_end = FRAGMENT_HEAD_BYTES.checked_add(name_len)?;
    let name = std::str::from_utf8(bytes.get(FRAGMENT_HEAD_BYTES..name_end)?).ok()?;
    let stream = StreamName::new(name).ok()?;
    Some(Fragment {
        meta: FragmentMeta {
            id: FragmentId {
                stream,
                epoch: u64_at(bytes, 1)?,
                sequence: u64_at(bytes, 9)?,
            },
            producer_timestamp: UnixMillis(u64_at(bytes, 17)?),
            duration_ms: u32::from_le_bytes(bytes.get(25..29)?.try_into().ok()?),
        },
        payload: Bytes::copy_from_slice(bytes.get(name_end..)?),
    })
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_strangers_are_refused() {
        let fragment = Fragment {
            meta: FragmentMeta {
                id: FragmentId {
                    stream: StreamName::new("cam-1").expect("valid"),
                    epoch: 7,
                    sequence: 42,
                },
                producer_timestamp: UnixMillis(1_700_000_000_123),
                duration_ms: 2_000,
            },
            payload: Bytes::from_static(b"gop bytes"),
        };
        let encoded = encode_fragment(&fragment);
        assert_eq!(
            encoded.len(),
            fragment_head_bytes(&fragment.meta.id.stream) + 9
        );
        assert_eq!(decode(&encoded), Some(SpoolRecord::Fragment(fragment)));

        let pos = RecordPos {
            segment: 3,
            offset: 99,
        };
        assert_eq!(
            decode(&encode_released(pos)),
            Some(SpoolRecord::Released(pos))
        );

        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[9, 1, 2]), None);
        assert_eq!(decode(&encoded[..20]), None, "cut short");
        let mut bad_name = encoded.clone();
        bad_name[FRAGMENT_HEAD_BYTES] = b'/';
        assert_eq!(decode(&bad_name), None, "an unsafe stream name");
    }
}
