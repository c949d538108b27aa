//! Time-index benchmark: ten years of 2-second fragments is about 157 million; this builds at
//! least 10 million synthetic ones through the segment index writer (no network, no payloads),
//! opens them the way a restarted server does (index files only), and reports
//! - ListFragments latency for a one-hour window (1,800 fragments: two pages of at most 1,000),
//!   p50/p99 over many random hours, by producer and by server timestamp;
//! - index bytes per fragment on disk and in memory, and entries read per hour listed.
//!
//! Run with `cargo bench --bench index`. `HYDRANT_BENCH_INDEX_FRAGMENTS` changes the count,
//! `HYDRANT_BENCH_INDEX_PER_SEGMENT` the fragments per sealed segment (default 2,000: a
//! 256 MiB segment of 128 KiB fragments).

use std::time::Instant;

use hydrant::fragment::UnixMillis;
use hydrant::record_log::RecordPos;
use hydrant::store::index::{Entry, FragmentIndex, ListQuery};
use hydrant::store::segment_index::{load_summary, write_index};
use hydrant::store::{FragmentNumber, LIST_FRAGMENTS_MAX, TimestampKind};
use rand::Rng;

const FRAGMENTS_MIN: u64 = 10_000_000;
const FRAGMENT_MS: u64 = 2_000;
const HOUR_MS: u64 = 3_600_000;
const T0: u64 = 1_500_000_000_000;
const SAMPLES: usize = 2_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn entry(segment: u64, i: u64, number: u64) -> (u64, Entry) {
    let e = Entry {
        pos: RecordPos {
            segment,
            offset: 8 + i * 131_144,
        },
        producer_ms: T0 + number * FRAGMENT_MS,
        server_ms: T0 + number * FRAGMENT_MS + 150,
        duration_ms: 2_000,
        size_bytes: 131_072,
        epoch: 1 + number / 1_000_000,
        sequence: number % 1_000_000,
        epoch_watermark: number % 1_000_000,
    };
    (number, e)
}

fn main() -> anyhow::Result<()> {
    let fragments = env_u64("HYDRANT_BENCH_INDEX_FRAGMENTS", FRAGMENTS_MIN);
    let per_segment = env_u64("HYDRANT_BENCH_INDEX_PER_SEGMENT", 2_000).max(1);
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let segments = fragments.div_ceil(per_segment);
    for segment in 0..segments {
        let first = segment * per_segment;
        let last = (first + per_segment).min(fragments);
        let entries: Vec<(u64, Entry)> = (first..last)
            .map(|n| entry(segment, n - first, n))
            .collect();
        write_index(dir.path(), segment, &entries)?;
    }
    println!(
        "built {fragments} fragments in {segments} segment index files in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let disk_bytes: u64 = std::fs::read_dir(dir.path())?
        .map(|e| e.and_then(|e| e.metadata()).map(|m| m.len()))
        .sum::<Result<u64, _>>()?;

    let started = Instant::now();
    let mut index = FragmentIndex::new(dir.path());
    let summaries = (0..segments)
        .map(|s| load_summary(dir.path(), s))
        .collect::<Result<Vec<_>, _>>()?;
    index.attach_sealed(summaries);
    println!(
        "opened (read and checked every index file) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let memory_bytes = index.sealed_memory_bytes();
    println!(
        "index on disk: {disk_bytes} bytes = {:.2} bytes/fragment",
        disk_bytes as f64 / fragments as f64
    );
    println!(
        "index in memory (sealed summaries): {memory_bytes} bytes = {:.4} bytes/fragment",
        memory_bytes as f64 / fragments as f64
    );

    for kind in [TimestampKind::Producer, TimestampKind::Server] {
        report(&index, kind, fragments)?;
    }
    Ok(())
}

fn report(index: &FragmentIndex, kind: TimestampKind, fragments: u64) -> anyhow::Result<()> {
    let span_ms = fragments * FRAGMENT_MS;
    let mut rng = rand::rng();
    let mut latencies = Vec::with_capacity(SAMPLES);
    let read_before = index.counter().total();
    let mut listed = 0u64;
    for _ in 0..SAMPLES {
        let start = T0 + rng.random_range(0..span_ms - HOUR_MS);
        let began = Instant::now();
        listed += list_hour(index, kind, start)? as u64;
        latencies.push(began.elapsed());
    }
    latencies.sort_unstable();
    let read = index.counter().total() - read_before;
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{kind:?} timestamps, one-hour ListFragments (all pages), {SAMPLES} random hours: \
         p50 {:?}, p99 {:?}; {:.0} fragments listed and {:.0} index entries read per hour",
        at(0.50),
        at(0.99),
        listed as f64 / SAMPLES as f64,
        read as f64 / SAMPLES as f64,
    );
    Ok(())
}

/// Lists one hour page by page, as a ListFragments client does; returns fragments listed.
fn list_hour(index: &FragmentIndex, kind: TimestampKind, start: u64) -> anyhow::Result<usize> {
    let mut after: Option<FragmentNumber> = None;
    let mut listed = 0;
    loop {
        let page = index.list(&ListQuery {
            kind,
            start: UnixMillis(start),
            end: UnixMillis(start + HOUR_MS),
            after,
            limit: LIST_FRAGMENTS_MAX,
        })?;
        listed += page.len();
        match page.last() {
            Some(last) if page.len() == LIST_FRAGMENTS_MAX => after = Some(last.number),
            _ => return Ok(listed),
        }
    }
}
