//! Tests of the log against real files, real fsync and real damage.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::*;

const CONFIG: LogConfig = LogConfig {
    segment_bytes_max: 1 << 20,
    record_bytes_max: 1 << 16,
};

fn payload(i: u32) -> Vec<u8> {
    format!("record number {i} ")
        .repeat(1 + (i % 7) as usize)
        .into_bytes()
}

fn write_records(dir: &Path, config: LogConfig, count: u32) -> Vec<RecordPos> {
    let (mut log, _) = RecordLog::open(dir, config).unwrap();
    let positions = (0..count)
        .map(|i| log.append(&payload(i)).unwrap())
        .collect();
    log.sync().unwrap();
    positions
}

fn all_records(log: &RecordLog) -> Vec<(RecordPos, Vec<u8>)> {
    let mut out = Vec::new();
    log.scan(|pos, bytes| {
        out.push((pos, bytes.to_vec()));
        Ok::<(), LogError>(())
    })
    .unwrap();
    out
}

fn last_segment_path(dir: &Path) -> std::path::PathBuf {
    let (log, _) = RecordLog::open(dir, CONFIG).unwrap();
    let last = log.segments().last().unwrap().id;
    dir.join(segment_file_name(last))
}

#[test]
fn round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let positions = write_records(dir.path(), CONFIG, 50);
    let (log, recovery) = RecordLog::open(dir.path(), CONFIG).unwrap();
    assert_eq!(
        recovery,
        Recovery {
            records: 50,
            bytes_truncated: 0,
            damage: None
        }
    );
    for (i, pos) in positions.iter().enumerate() {
        assert_eq!(log.read(*pos).unwrap(), payload(i as u32));
    }
    let scanned = all_records(&log);
    assert_eq!(scanned.len(), 50);
    assert!(
        scanned
            .iter()
            .enumerate()
            .all(|(i, (p, b))| *p == positions[i] && *b == payload(i as u32))
    );
}

#[test]
fn appends_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_records(dir.path(), CONFIG, 3);
    let (mut log, _) = RecordLog::open(dir.path(), CONFIG).unwrap();
    let next = log.append(b"after reopen").unwrap();
    log.sync().unwrap();
    assert!(next > *first.last().unwrap());
    drop(log);
    let (log, recovery) = RecordLog::open(dir.path(), CONFIG).unwrap();
    assert_eq!(recovery.records, 4);
    assert_eq!(log.read(next).unwrap(), b"after reopen");
}

#[test]
fn garbage_after_the_tail_is_truncated_and_synced_records_survive() {
    let dir = tempfile::tempdir().unwrap();
    let positions = write_records(dir.path(), CONFIG, 20);
    let path = last_segment_path(dir.path());
    let garbage: Vec<u8> = (0..997u32).map(|i| (i * 31 % 251) as u8).collect();
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&garbage)
        .unwrap();
    let (mut log, recovery) = RecordLog::open(dir.path(), CONFIG).unwrap();
    assert_eq!(recovery.records, 20);
    assert_eq!(recovery.bytes_truncated, 997);
    assert!(recovery.damage.is_some());
    for (i, pos) in positions.iter().enumerate() {
        assert_eq!(log.read(*pos).unwrap(), payload(i as u32));
    }
    // New appends land right after the last good record and survive another reopen.
    let pos = log.append(b"fresh").unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, recovery) = RecordLog::open(dir.path(), CONFIG).unwrap();
    assert_eq!((recovery.records, recovery.bytes_truncated), (21, 0));
    assert_eq!(log.read(pos).unwrap(), b"fresh");
}

#[test]
fn zeroed_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), CONFIG, 5);
    let path = last_segment_path(dir.path());
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[0u8; 4096])
        .unwrap();
    let (_, recovery) = RecordLog::open(dir.path(), CONFIG).unwrap();
    assert_eq!((recovery.records, recovery.bytes_truncated), (5, 4096));
}

#[test]
fn torn_record_cut_mid_payload_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let positions = write_records(dir.path(), CONFIG, 10);
    let path = last_segment_path(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    let last = positions.last().unwrap();
    let cut = last.offset + FRAME_HEADER_BYTES + 3;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let (log, recovery) = RecordLog::open(dir.path(), CONFIG).unwrap();
    assert_eq!(recovery.records, 9);
    assert_eq!(recovery.bytes_truncated, cut - last.offset);
    assert!(len > cut);
    assert!(log.read(*last).is_err());
    assert_eq!(log.read(positions[8]).unwrap(), payload(8));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), last.offset);
}

#[test]
fn short_record_header_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), CONFIG, 2);
    let path = last_segment_path(dir.path());
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[7, 0, 0])
        .unwrap();
    let (_, recovery) = RecordLog::open(dir.path(), CONFIG).unwrap();
    assert_eq!((recovery.records, recovery.bytes_truncated), (2, 3));
}

#[test]
fn bit_flip_in_the_last_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let positions = write_records(dir.path(), CONFIG, 10);
    let path = last_segment_path(dir.path());
    flip_bit(&path, positions[9].offset + FRAME_HEADER_BYTES + 5);
    let (log, recovery) = RecordLog::open(dir.path(), CONFIG).unwrap();
    assert_eq!(recovery.records, 9);
    assert_eq!(recovery.damage, Some("record checksum mismatch"));
    assert_eq!(all_records(&log).len(), 9);
}

#[test]
fn read_detects_a_bit_flip() {
    let dir = tempfile::tempdir().unwrap();
    let positions = write_records(dir.path(), CONFIG, 3);
    let (log, _) = RecordLog::open(dir.path(), CONFIG).unwrap();
    flip_bit(
        &last_segment_path(dir.path()),
        positions[1].offset + FRAME_HEADER_BYTES,
    );
    assert!(matches!(
        log.read(positions[1]),
        Err(LogError::Corrupt { .. })
    ));
    assert!(matches!(
        log.read(RecordPos {
            segment: 0,
            offset: 1
        }),
        Err(LogError::PositionOutOfRange { .. })
    ));
    assert!(matches!(
        log.read(RecordPos {
            segment: 99,
            offset: 8
        }),
        Err(LogError::SegmentNotFound { .. })
    ));
}

#[test]
fn bit_flip_in_a_sealed_segment_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes_max: 256,
        record_bytes_max: 1024,
    };
    let positions = write_records(dir.path(), config, 30);
    assert!(positions.last().unwrap().segment >= 2);
    let first_path = dir.path().join(segment_file_name(0));
    flip_bit(&first_path, positions[0].offset + FRAME_HEADER_BYTES + 1);
    match RecordLog::open(dir.path(), config) {
        Err(LogError::Corrupt { path, .. }) => assert_eq!(path, first_path),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn segments_roll_at_the_size_limit_and_oversized_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes_max: 256,
        record_bytes_max: 1024,
    };
    let (mut log, _) = RecordLog::open(dir.path(), config).unwrap();
    let positions: Vec<_> = (0..40).map(|i| log.append(&payload(i)).unwrap()).collect();
    let big = log.append(&[9u8; 600]).unwrap();
    log.sync().unwrap();
    assert!(matches!(
        log.append(&[0u8; 1025]),
        Err(LogError::RecordTooLarge {
            bytes: 1025,
            limit: 1024
        })
    ));
    let segments = log.segments();
    assert!(segments.len() > 5);
    assert!(segments.iter().rev().skip(1).all(|s| s.sealed));
    assert!(!segments.last().unwrap().sealed);
    // Only the record that is alone in its segment may pass the segment size.
    assert!(segments.iter().filter(|s| s.bytes > 256).count() <= 1);
    assert_eq!(big.offset, SEGMENT_HEADER_BYTES);
    drop(log);
    let (log, recovery) = RecordLog::open(dir.path(), config).unwrap();
    assert_eq!(recovery.records, 41);
    for (i, pos) in positions.iter().enumerate() {
        assert_eq!(log.read(*pos).unwrap(), payload(i as u32));
    }
}

#[test]
fn only_sealed_segments_can_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes_max: 256,
        record_bytes_max: 1024,
    };
    let positions = write_records(dir.path(), config, 30);
    let (mut log, _) = RecordLog::open(dir.path(), config).unwrap();
    let active = log.segments().last().unwrap().id;
    assert!(matches!(
        log.remove_segments(&[0, active]),
        Err(LogError::SegmentNotSealed { .. })
    ));
    assert!(
        dir.path().join(segment_file_name(0)).exists(),
        "a refused request removes nothing"
    );
    log.remove_segments(&[0, 1]).unwrap();
    assert!(matches!(
        log.remove_segments(&[0]),
        Err(LogError::SegmentNotFound { segment: 0 })
    ));
    assert!(log.read(positions[0]).is_err());
    drop(log);
    let (log, _) = RecordLog::open(dir.path(), config).unwrap();
    assert_eq!(log.segments().first().unwrap().id, 2);
    let last = positions.last().unwrap();
    assert_eq!(log.read(*last).unwrap(), payload(29));
}

#[test]
fn a_torn_segment_header_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), CONFIG, 2);
    std::fs::write(dir.path().join(segment_file_name(1)), b"HY").unwrap();
    let (mut log, recovery) = RecordLog::open(dir.path(), CONFIG).unwrap();
    assert_eq!((recovery.records, recovery.bytes_truncated), (2, 2));
    let pos = log.append(b"x").unwrap();
    assert_eq!(
        pos,
        RecordPos {
            segment: 1,
            offset: SEGMENT_HEADER_BYTES
        }
    );
}

#[test]
fn a_foreign_file_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(segment_file_name(0)), b"NOTALOGFILE!").unwrap();
    assert!(matches!(
        RecordLog::open(dir.path(), CONFIG),
        Err(LogError::BadSegmentHeader { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_gives_every_concurrent_appender_a_distinct_durable_position() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes_max: 4096,
        record_bytes_max: 1024,
    };
    let (log, _) = RecordLog::open(dir.path(), config).unwrap();
    let writer =
        std::sync::Arc::new(GroupCommit::start(log, GroupCommitConfig::default()).unwrap());
    let mut tasks = Vec::new();
    for task in 0..16u32 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..25u32 {
                let body = payload(task * 1000 + i);
                got.push((writer.append(body.clone()).await.unwrap(), body));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let writer = std::sync::Arc::into_inner(writer).unwrap();
    writer.close();
    let mut positions: Vec<_> = all.iter().map(|(p, _)| *p).collect();
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), 400);
    let (log, recovery) = RecordLog::open(dir.path(), config).unwrap();
    assert_eq!(recovery.records, 400);
    assert!(log.segments().len() > 1);
    for (pos, body) in &all {
        assert_eq!(&log.read(*pos).unwrap(), body);
    }
}

#[tokio::test]
async fn group_commit_reports_an_oversized_record_to_its_appender_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes_max: 4096,
        record_bytes_max: 16,
    };
    let (log, _) = RecordLog::open(dir.path(), config).unwrap();
    let writer = GroupCommit::start(log, GroupCommitConfig::default()).unwrap();
    assert!(matches!(
        writer.append(vec![0; 17]).await,
        Err(LogError::RecordTooLarge { .. })
    ));
    let pos = writer.append(b"fits".to_vec()).await.unwrap();
    assert_eq!(writer.lock_log().unwrap().read(pos).unwrap(), b"fits");
}

fn flip_bit(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x10;
    file.write_all_at(&byte, offset).unwrap();
}
