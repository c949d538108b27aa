//! The stored record of one fragment: a fixed binary header, then the opaque payload.
//!
//! Layout (all little endian): version u8, 3 zero bytes, payload CRC-32C u32, fragment number
//! u64, epoch u64, sequence u64, producer ms u64, server ms u64, duration ms u32, payload
//! length u32, epoch watermark u64. The epoch watermark is the dedup watermark of the
//! fragment's epoch when it was written (every lower sequence was durable by then); it lets
//! recovery restore the watermark even after retention deleted the older fragments.

/// Format version of the record header.
pub const RECORD_VERSION: u8 = 1;
/// Bytes of the record header.
pub const RECORD_HEADER_BYTES: usize = 64;

const NUMBER_AT: usize = 8;
const SERVER_MS_AT: usize = 40;
const WATERMARK_AT: usize = 56;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub number: u64,
    pub epoch: u64,
    pub sequence: u64,
    pub producer_ms: u64,
    pub server_ms: u64,
    pub duration_ms: u32,
    pub payload_len: u32,
    pub payload_crc: u32,
    pub epoch_watermark: u64,
}

impl RecordHeader {
    /// Header followed by the payload, ready for the log.
    pub fn encode_with(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.payload_crc.to_le_bytes());
        for value in [
            self.number,
            self.epoch,
            self.sequence,
            self.producer_ms,
            self.server_ms,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&self.duration_ms.to_le_bytes());
        out.extend_from_slice(&self.payload_len.to_le_bytes());
        out.extend_from_slice(&self.epoch_watermark.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Splits a stored record into header and payload, checking version and length (the log
    /// has already checked the bytes against its own checksum).
    pub fn decode(record: &[u8]) -> Result<(RecordHeader, &[u8]), &'static str> {
        let (head, payload) = record
            .split_at_checked(RECORD_HEADER_BYTES)
            .ok_or("record shorter than a fragment header")?;
        if head[0] != RECORD_VERSION {
            return Err("unknown fragment record version");
        }
        let header = RecordHeader {
            payload_crc: u32_at(head, 4),
            number: u64_at(head, NUMBER_AT),
            epoch: u64_at(head, 16),
            sequence: u64_at(head, 24),
            producer_ms: u64_at(head, 32),
            server_ms: u64_at(head, SERVER_MS_AT),
            duration_ms: u32_at(head, 48),
            payload_len: u32_at(head, 52),
            epoch_watermark: u64_at(head, WATERMARK_AT),
        };
        if header.payload_len as usize != payload.len() {
            return Err("fragment payload length does not match its header");
        }
        Ok((header, payload))
    }
}

/// Fills in the fields only known once the record's turn in the log is decided.
pub fn patch_assigned(record: &mut [u8], number: u64, server_ms: u64, epoch_watermark: u64) {
    record[NUMBER_AT..NUMBER_AT + 8].copy_from_slice(&number.to_le_bytes());
    record[SERVER_MS_AT..SERVER_MS_AT + 8].copy_from_slice(&server_ms.to_le_bytes());
    record[WATERMARK_AT..WATERMARK_AT + 8].copy_from_slice(&epoch_watermark.to_le_bytes());
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buf)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_patches() {
        let header = RecordHeader {
            number: 0,
            epoch: 7,
            sequence: 9,
            producer_ms: 1_700_000_000_000,
            server_ms: 0,
            duration_ms: 2000,
            payload_len: 5,
            payload_crc: crate::fragment::checksum(b"hello"),
            epoch_watermark: 0,
        };
        let mut bytes = header.encode_with(b"hello");
        patch_assigned(&mut bytes, 11, 1_700_000_000_500, 9);
        let (decoded, payload) = RecordHeader::decode(&bytes).unwrap();
        assert_eq!(payload, b"hello");
        let expected = RecordHeader {
            number: 11,
            server_ms: 1_700_000_000_500,
            epoch_watermark: 9,
            ..header
        };
        assert_eq!(decoded, expected);
        assert!(RecordHeader::decode(&bytes[..RECORD_HEADER_BYTES + 4]).is_err());
        assert!(RecordHeader::decode(&bytes[..10]).is_err());
    }
}
