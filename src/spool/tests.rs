//! The spool against real files with real fsync: recovery, release, both full policies, age,
//! space reclaimed in segments, write amplification.

use std::fs::OpenOptions;
use std::io::Write;

use bytes::Bytes;

use super::*;
use crate::fragment::{FragmentMeta, StreamName};

const PAYLOAD_BYTES: usize = 100 * 1024;
const T0_MS: u64 = 1_700_000_000_000;

fn config(dir: &Path, bytes_max: u64, policy: FullPolicy) -> SpoolConfig {
    SpoolConfig {
        dir: dir.join(SPOOL_DIR_NAME),
        bytes_max,
        age_max_ms: 3_600_000,
        full_policy: policy,
        fragment_bytes_max: 1024 * 1024,
    }
}

fn fragment(epoch: u64, sequence: u64) -> Fragment {
    let fill = (sequence % 251) as u8;
    Fragment {
        meta: FragmentMeta {
            id: FragmentId {
                stream: StreamName::new("cam").expect("valid"),
                epoch,
                sequence,
            },
            producer_timestamp: UnixMillis(T0_MS + sequence * 1_000),
            duration_ms: 1_000,
        },
        payload: Bytes::from(vec![fill; PAYLOAD_BYTES]),
    }
}

fn sequences(spool: &Spool) -> Vec<u64> {
    spool.unreleased().iter().map(|s| s.id.sequence).collect()
}

fn now_for(sequence: u64) -> UnixMillis {
    UnixMillis(T0_MS + sequence * 1_000)
}

fn fill(spool: &mut Spool, range: std::ops::Range<u64>) -> Vec<Admission> {
    range
        .map(|seq| {
            spool
                .append(&fragment(1, seq), now_for(seq))
                .expect("append")
        })
        .collect()
}

fn last_segment_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(SPOOL_DIR_NAME))
        .expect("spool dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files.pop().expect("a segment")
}

#[test]
fn unreleased_fragments_survive_reopen_and_released_ones_never_come_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), 64 * 1024 * 1024, FullPolicy::DropOldest);
    let mut spool = Spool::open(cfg.clone()).expect("open");
    fill(&mut spool, 0..10);
    for seq in [0, 1, 2, 5, 9] {
        assert!(spool.release(&fragment(1, seq).meta.id).expect("release"));
    }
    assert!(
        !spool.release(&fragment(1, 5).meta.id).expect("twice"),
        "released once only"
    );
    drop(spool);

    let spool = Spool::open(cfg).expect("reopen");
    assert_eq!(
        sequences(&spool),
        vec![3, 4, 6, 7, 8],
        "oldest first, released ones gone"
    );
    assert_eq!(spool.stats().recovered_fragments, 5);
    let first = &spool.unreleased()[0];
    let read = spool.reader().read(first.pos).expect("read");
    assert_eq!(read, fragment(1, 3), "payload and metadata come back whole");
}

#[test]
fn a_torn_tail_and_garbage_are_cut_and_everything_synced_is_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), 64 * 1024 * 1024, FullPolicy::DropOldest);
    let mut spool = Spool::open(cfg.clone()).expect("open");
    fill(&mut spool, 0..4);
    drop(spool);

    // A crash in the middle of the fifth append: half a frame, then garbage.
    let encoded = crate::record_log::FRAME_HEADER_BYTES as usize + PAYLOAD_BYTES / 2;
    let mut file = OpenOptions::new()
        .append(true)
        .open(last_segment_file(dir.path()))
        .expect("segment");
    file.write_all(&vec![0xAB; encoded]).expect("garbage");
    file.sync_all().expect("sync");
    drop(file);

    let mut spool = Spool::open(cfg.clone()).expect("recovers");
    assert_eq!(sequences(&spool), vec![0, 1, 2, 3]);
    assert_eq!(spool.stats().recovered_bytes_truncated, encoded as u64);
    assert_eq!(
        spool.append(&fragment(1, 4), now_for(4)).expect("append"),
        Admission::Spooled(RecordPos {
            segment: spool.unreleased()[3].pos.segment,
            offset: spool.unreleased()[3].pos.offset
                + FRAME_HEADER_BYTES
                + record::fragment_head_bytes(&fragment(1, 3).meta.id.stream) as u64
                + PAYLOAD_BYTES as u64,
        }),
        "appends continue right after the last intact record"
    );
    drop(spool);
    assert_eq!(
        sequences(&Spool::open(cfg).expect("reopen")),
        vec![0, 1, 2, 3, 4]
    );
}

#[test]
fn an_identity_is_spooled_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spool =
        Spool::open(config(dir.path(), 64 << 20, FullPolicy::DropOldest)).expect("open");
    assert!(matches!(fill(&mut spool, 0..1)[0], Admission::Spooled(_)));
    assert_eq!(fill(&mut spool, 0..1)[0], Admission::AlreadySpooled);
    assert_eq!(spool.stats().fragments_spooled, 1);
}

#[test]
fn drop_oldest_deletes_whole_old_segments_and_counts_the_loss() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 2 MiB of spool in 256 KiB segments: two 100 KiB fragments per segment.
    let bytes_max = 2 * 1024 * 1024;
    let mut spool =
        Spool::open(config(dir.path(), bytes_max, FullPolicy::DropOldest)).expect("open");
    let admissions = fill(&mut spool, 0..40);
    assert!(
        admissions
            .iter()
            .all(|a| matches!(a, Admission::Spooled(_))),
        "nothing refused"
    );
    let stats = spool.stats();
    assert!(
        stats.disk_bytes <= bytes_max,
        "bounded: {} bytes",
        stats.disk_bytes
    );
    assert!(stats.fragments_dropped > 0);
    assert_eq!(
        stats.fragments_dropped + stats.unreleased_fragments,
        40,
        "every loss counted"
    );
    let kept = sequences(&spool);
    let first_kept = kept[0];
    assert_eq!(
        kept,
        (first_kept..40).collect::<Vec<_>>(),
        "the newest footage is kept, in order"
    );
}

#[test]
fn refuse_new_keeps_the_old_footage_and_capture_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bytes_max = 2 * 1024 * 1024;
    let mut spool =
        Spool::open(config(dir.path(), bytes_max, FullPolicy::RefuseNew)).expect("open");
    let admissions = fill(&mut spool, 0..40);
    let spooled = admissions
        .iter()
        .filter(|a| matches!(a, Admission::Spooled(_)))
        .count() as u64;
    let stats = spool.stats();
    assert!(
        stats.disk_bytes <= bytes_max,
        "bounded: {} bytes",
        stats.disk_bytes
    );
    assert_eq!(stats.fragments_dropped, 0);
    assert_eq!(stats.fragments_refused, 40 - spooled);
    assert_eq!(
        sequences(&spool),
        (0..spooled).collect::<Vec<_>>(),
        "the oldest are kept"
    );

    // Once the server persists the old footage, its segments go and new fragments fit again.
    for seq in 0..spooled {
        spool.release(&fragment(1, seq).meta.id).expect("release");
    }
    assert!(matches!(
        spool.append(&fragment(1, 40), now_for(40)).expect("append"),
        Admission::Spooled(_)
    ));
}

#[test]
fn old_footage_expires_by_producer_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path(), 64 << 20, FullPolicy::DropOldest);
    cfg.bytes_max = 8 * 1024 * 1024; // 1 MiB segments: nine fragments each
    cfg.age_max_ms = 30_000;
    let mut spool = Spool::open(cfg).expect("open");
    fill(&mut spool, 0..30);
    assert_eq!(
        spool.stats().fragments_expired,
        0,
        "nothing is 30 s old while it is captured"
    );
    // An hour later every sealed segment is too old; the active one stays until it rolls.
    spool.expire(now_for(3_600)).expect("expire");
    let stats = spool.stats();
    assert!(stats.fragments_expired >= 18, "{stats:?}");
    assert_eq!(stats.fragments_expired + stats.unreleased_fragments, 30);
}

#[test]
fn released_segments_are_deleted_and_their_space_comes_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spool =
        Spool::open(config(dir.path(), 8 * 1024 * 1024, FullPolicy::DropOldest)).expect("open");
    fill(&mut spool, 0..50);
    let full = spool.stats().disk_bytes;
    for seq in 0..50 {
        spool.release(&fragment(1, seq).meta.id).expect("release");
    }
    let after = spool.stats();
    assert!(after.segments_removed >= 4, "{after:?}");
    assert!(
        after.disk_bytes < full / 3,
        "{} of {full} bytes left",
        after.disk_bytes
    );
    let files = std::fs::read_dir(dir.path().join(SPOOL_DIR_NAME))
        .expect("dir")
        .count();
    assert_eq!(files, 1, "only the active segment is left on disk");
}

#[test]
fn write_amplification_is_one_plus_framing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spool =
        Spool::open(config(dir.path(), 64 * 1024 * 1024, FullPolicy::DropOldest)).expect("open");
    fill(&mut spool, 0..50);
    for seq in 0..50 {
        spool.release(&fragment(1, seq).meta.id).expect("release");
    }
    let stats = spool.stats();
    // Per fragment: a frame header and the record head, plus one release marker in its frame.
    let per_fragment = FRAME_HEADER_BYTES as f64 * 2.0
        + record::fragment_head_bytes(&fragment(1, 0).meta.id.stream) as f64
        + record::RELEASED_BYTES as f64;
    let expected = 1.0 + per_fragment / PAYLOAD_BYTES as f64;
    let amplification = stats.write_amplification();
    assert!(
        amplification >= expected && amplification < expected + 0.001,
        "{amplification} vs {expected}"
    );
    assert_eq!(stats.fsyncs, 50, "one fsync per fragment, none per release");
}

#[test]
fn a_spool_smaller_than_a_segment_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert!(matches!(
        Spool::open(config(dir.path(), 1024, FullPolicy::DropOldest)),
        Err(SpoolError::BadConfig(_))
    ));
}
