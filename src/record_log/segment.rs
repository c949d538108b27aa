//! On-disk format of one segment file, and the reads that check it.
//!
//! A segment is `SEGMENT_HEADER_BYTES` of header (magic + format version) followed by records,
//! each framed as `len: u32 LE`, `crc: u32 LE`, `payload`. The CRC-32C covers the length bytes
//! and the payload, so a run of zero bytes (what a file system may leave after a crash) never
//! reads as a valid empty record.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{LogError, RecordPos};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"HYRL";
/// Version of the segment format written by this code.
pub const SEGMENT_VERSION: u32 = 1;
/// Segment header: magic then version.
pub const SEGMENT_HEADER_BYTES: u64 = 8;
/// Record frame header: length then checksum.
pub const FRAME_HEADER_BYTES: u64 = 8;

/// `{id:020}.log`.
pub fn segment_file_name(id: u64) -> String {
    format!("{id:020}.log")
}

/// The segment id of a file name, if it is one of ours.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(segment_file_name(id))
}

pub fn header_bytes() -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[..4].copy_from_slice(&SEGMENT_MAGIC);
    header[4..].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header
}

/// CRC-32C over the length bytes and the payload.
pub fn frame_checksum(len: u32, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&len.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// The full frame (header + payload) for one record.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    // Callers have checked the payload against `record_bytes_max` (a u32).
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES as usize + payload.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&frame_checksum(len, payload).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Why a segment stops being readable at some offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    ShortHeader,
    ShortPayload,
    TooLarge,
    ChecksumMismatch,
}

impl Damage {
    pub fn describe(self) -> &'static str {
        match self {
            Damage::ShortHeader => "record header cut short",
            Damage::ShortPayload => "record payload cut short",
            Damage::TooLarge => "record length above the limit",
            Damage::ChecksumMismatch => "record checksum mismatch",
        }
    }
}

/// Result of walking a segment from its header to the first damage or the end.
#[derive(Debug)]
pub struct SegmentScan {
    /// End of the last intact record.
    pub valid_bytes: u64,
    pub records: u64,
    pub damage: Option<Damage>,
}

/// Checks the segment header; `Ok(false)` when the file is shorter than a header.
pub fn check_header(file: &File, path: &Path) -> Result<bool, LogError> {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    match file.read_exact_at(&mut header, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(LogError::io(path, e)),
    }
    if header != header_bytes() {
        return Err(LogError::BadSegmentHeader {
            path: path.to_path_buf(),
        });
    }
    Ok(true)
}

/// Walks every record of a segment in order, calling `f` for each intact one, and stops at
/// the first damage (reported, not an error: the caller decides what damage means).
pub fn scan_segment<E: From<LogError>>(
    path: &Path,
    segment: u64,
    record_bytes_max: u32,
    mut f: impl FnMut(RecordPos, &[u8]) -> Result<(), E>,
) -> Result<SegmentScan, E> {
    let file = File::open(path).map_err(|e| LogError::io(path, e))?;
    let file_bytes = file.metadata().map_err(|e| LogError::io(path, e))?.len();
    let mut reader = io::BufReader::with_capacity(1 << 16, file);
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    reader
        .read_exact(&mut header)
        .map_err(|e| LogError::io(path, e))?;
    let mut scan = SegmentScan {
        valid_bytes: SEGMENT_HEADER_BYTES,
        records: 0,
        damage: None,
    };
    let mut payload = Vec::new();
    while scan.valid_bytes < file_bytes {
        match next_frame(
            &mut reader,
            file_bytes - scan.valid_bytes,
            record_bytes_max,
            &mut payload,
        ) {
            Ok(()) => {}
            Err(FrameError::Damage(damage)) => {
                scan.damage = Some(damage);
                break;
            }
            Err(FrameError::Io(e)) => return Err(LogError::io(path, e).into()),
        }
        f(
            RecordPos {
                segment,
                offset: scan.valid_bytes,
            },
            &payload,
        )?;
        scan.valid_bytes += FRAME_HEADER_BYTES + payload.len() as u64;
        scan.records += 1;
    }
    Ok(scan)
}

enum FrameError {
    Damage(Damage),
    Io(io::Error),
}

/// Reads one frame into `payload`; `remaining_bytes` is what the file still holds.
fn next_frame(
    reader: &mut impl Read,
    remaining_bytes: u64,
    record_bytes_max: u32,
    payload: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if remaining_bytes < FRAME_HEADER_BYTES {
        return Err(FrameError::Damage(Damage::ShortHeader));
    }
    let mut header = [0u8; FRAME_HEADER_BYTES as usize];
    reader.read_exact(&mut header).map_err(FrameError::Io)?;
    let (len, crc) = split_frame_header(&header);
    if len > record_bytes_max {
        return Err(FrameError::Damage(Damage::TooLarge));
    }
    if remaining_bytes - FRAME_HEADER_BYTES < u64::from(len) {
        return Err(FrameError::Damage(Damage::ShortPayload));
    }
    payload.resize(len as usize, 0);
    reader.read_exact(payload).map_err(FrameError::Io)?;
    if frame_checksum(len, payload) != crc {
        return Err(FrameError::Damage(Damage::ChecksumMismatch));
    }
    Ok(())
}

fn split_frame_header(header: &[u8; FRAME_HEADER_BYTES as usize]) -> (u32, u32) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len, crc)
}

/// Reads and checks the record at `offset` of an open segment file.
pub fn read_record(
    file: &File,
    path: &Path,
    offset: u64,
    record_bytes_max: u32,
) -> Result<Vec<u8>, LogError> {
    let corrupt = |damage: Damage| LogError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: damage.describe(),
    };
    let file_bytes = file.metadata().map_err(|e| LogError::io(path, e))?.len();
    if offset < SEGMENT_HEADER_BYTES || offset.saturating_add(FRAME_HEADER_BYTES) > file_bytes {
        return Err(LogError::PositionOutOfRange {
            path: path.to_path_buf(),
            offset,
        });
    }
    let mut header = [0u8; FRAME_HEADER_BYTES as usize];
    file.read_exact_at(&mut header, offset)
        .map_err(|e| LogError::io(path, e))?;
    let (len, crc) = split_frame_header(&header);
    if len > record_bytes_max {
        return Err(corrupt(Damage::TooLarge));
    }
    if offset + FRAME_HEADER_BYTES + u64::from(len) > file_bytes {
        return Err(corrupt(Damage::ShortPayload));
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact_at(&mut payload, offset + FRAME_HEADER_BYTES)
        .map_err(|e| LogError::io(path, e))?;
    if frame_checksum(len, &payload) != crc {
        return Err(corrupt(Damage::ChecksumMismatch));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_reject_strangers() {
        assert_eq!(segment_file_name(42), "00000000000000000042.log");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.log"),
            Some(42)
        );
        assert_eq!(parse_segment_file_name("42.log"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.log"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.tmp"), None);
    }

    #[test]
    fn zero_bytes_never_checksum_as_an_empty_record() {
        assert_ne!(frame_checksum(0, &[]), 0);
    }
}
