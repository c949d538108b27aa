//! Ingest benchmark: Hydrant's QUIC ingest against this machine's own limits, in one run.
//!
//! Reports
//! - raw quinn loopback throughput (one connection, 1 MiB unidirectional streams), the ceiling
//!   for anything sent over QUIC here;
//! - raw disk throughput (sequential 1 MiB writes, fdatasync after each), the ceiling for
//!   anything acknowledged only after fsync;
//! - Hydrant ingest with several concurrent agents (real uplinks, real server, real store with
//!   fsync): MB/s and fragments/s, and its ratio to the lower of the two ceilings;
//! - PERSISTED latency p50/p99, with one fragment at a time (unloaded) and under full load.
//!
//! Run with `cargo bench --bench ingest` (or `make bench`). Sizes can be changed with
//! `HYDRANT_BENCH_AGENTS`, `HYDRANT_BENCH_FRAGMENTS` (per agent) and `HYDRANT_BENCH_FRAGMENT_KIB`.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use hydrant::config::ServerConfig;
use hydrant::fragment::{Fragment, FragmentId, FragmentMeta, StreamName, UnixMillis};
use hydrant::server::Server;
use hydrant::transport::{self, ServerTrust, UplinkOptions};
use hydrant::wire::{StreamOpen, UplinkConfig, UplinkEvent};

const RAW_QUIC_BYTES: u64 = 512 * 1024 * 1024;
const RAW_DISK_BYTES: usize = 256 * 1024 * 1024;
const LATENCY_SAMPLES: usize = 200;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let agents = env_usize("HYDRANT_BENCH_AGENTS", 4);
    let per_agent = env_usize("HYDRANT_BENCH_FRAGMENTS", 200);
    let fragment_bytes = env_usize("HYDRANT_BENCH_FRAGMENT_KIB", 512) * 1024;
    println!(
        "Hydrant ingest benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let raw_quic = transport::bench::raw_loopback_throughput(RAW_QUIC_BYTES)
        .await
        .expect("raw QUIC throughput");
    println!("raw quinn loopback          {:>9.1} MB/s", raw_quic / 1e6);
    let tmp = tempfile::tempdir().expect("temp dir");
    let raw_disk = raw_disk_throughput(tmp.path());
    println!("raw disk write + fdatasync  {:>9.1} MB/s", raw_disk / 1e6);

    let server = start_server(tmp.path()).await;
    let unloaded = latency_one_at_a_time(&server, fragment_bytes).await;
    println!(
        "PERSISTED latency, 1 in flight ({} KiB): p50 {:.2} ms  p99 {:.2} ms",
        fragment_bytes / 1024,
        percentile(&unloaded, 0.50),
        percentile(&unloaded, 0.99)
    );

    let started = Instant::now();
    let mut runs = tokio::task::JoinSet::new();
    for agent in 0..agents {
        runs.spawn(send_fragments(
            uplink_options(&server),
            format!("bench-{agent}"),
            per_agent,
            fragment_bytes,
        ));
    }
    let mut latencies = Vec::new();
    while let Some(done) = runs.join_next().await {
        latencies.extend(done.expect("agent task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let fragments = (agents * per_agent) as f64;
    let bytes = fragments * fragment_bytes as f64;
    let ceiling = raw_quic.min(raw_disk);
    println!(
        "Hydrant ingest, {agents} agents x {per_agent} fragments of {} KiB: {:>8.1} MB/s  {:>8.1} fragments/s",
        fragment_bytes / 1024,
        bytes / elapsed / 1e6,
        fragments / elapsed
    );
    println!(
        "ratio to raw quinn {:.2}, to raw disk {:.2}, to the lower ceiling {:.2}",
        bytes / elapsed / raw_quic,
        bytes / elapsed / raw_disk,
        bytes / elapsed / ceiling
    );
    println!(
        "PERSISTED latency under full load: p50 {:.2} ms  p99 {:.2} ms",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99)
    );
    server.shutdown().await;
}

async fn start_server(dir: &std::path::Path) -> Server {
    let mut config = ServerConfig {
        data_dir: dir.join("server"),
        ..ServerConfig::default()
    };
    config.http.listen = "127.0.0.1:0".to_owned();
    config.quic.listen = "127.0.0.1:0".to_owned();
    config.storage.create_streams_on_first_use = true;
    Server::start(config.resolve().expect("config"))
        .await
        .expect("server")
}

fn uplink_options(server: &Server) -> UplinkOptions {
    UplinkOptions {
        server: server.quic_addr.to_string(),
        trust: ServerTrust::CaFile(server.ca_pem.clone()),
        client: None,
        uplink: UplinkConfig {
            agent: "bench".to_owned(),
            pending_fragments_max: 64,
            pending_bytes_max: 256 * 1024 * 1024,
            in_flight_max: 16,
            ack_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..UplinkConfig::default()
        },
        connect_timeout: Duration::from_secs(5),
        shutdown_flush: Duration::ZERO,
        metrics: Default::default(),
    }
}

/// Sends `count` fragments on one uplink; returns the PERSISTED latency of each, in ms, measured
/// from the moment the uplink took the fragment.
async fn send_fragments(
    options: UplinkOptions,
    stream: String,
    count: usize,
    size: usize,
) -> Vec<f64> {
    let stream = StreamName::new(stream).expect("valid");
    let epoch = 1;
    let (tx, rx) = mpsc::channel(4);
    let (reports_tx, mut reports) = mpsc::channel(1024);
    let (_stop, stop_rx) = watch::channel(false);
    let streams = vec![StreamOpen {
        stream: stream.clone(),
        epoch,
    }];
    let uplink = tokio::spawn(transport::run_uplink(
        options, streams, rx, reports_tx, stop_rx,
    ));
    let payload = Bytes::from((0..size).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    let sent_at = Arc::new(std::sync::Mutex::new(vec![None::<Instant>; count]));
    let s = sent_at.clone();
    let producer = tokio::spawn(async move {
        for sequence in 0..count as u64 {
            let fragment = Fragment {
                meta: FragmentMeta {
                    id: FragmentId {
                        stream: stream.clone(),
                        epoch,
                        sequence,
                    },
                    producer_timestamp: UnixMillis::now(),
                    duration_ms: 2000,
                },
                payload: payload.clone(),
            };
            if tx.send(fragment).await.is_err() {
                break;
            }
            s.lock().expect("lock")[sequence as usize] = Some(Instant::now());
        }
    });
    let mut latencies = Vec::with_capacity(count);
    while let Some(report) = reports.recv().await {
        if let UplinkEvent::Persisted { id, .. } = report {
            let sent = sent_at.lock().expect("lock")[id.sequence as usize];
            if let Some(sent) = sent {
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    producer.await.expect("producer");
    uplink.await.expect("uplink task").expect("uplink");
    latencies
}

/// Closed loop: each fragment is sent only after the previous one is PERSISTED, so the latency
/// is the round trip itself (transfer, checksum, append, fsync, ack), without queueing.
async fn latency_one_at_a_time(server: &Server, size: usize) -> Vec<f64> {
    let stream = StreamName::new("bench-latency").expect("valid");
    let (tx, rx) = mpsc::channel(1);
    let (reports_tx, mut reports) = mpsc::channel(16);
    let (_stop, stop_rx) = watch::channel(false);
    let streams = vec![StreamOpen {
        stream: stream.clone(),
        epoch: 1,
    }];
    let uplink = tokio::spawn(transport::run_uplink(
        uplink_options(server),
        streams,
        rx,
        reports_tx,
        stop_rx,
    ));
    let payload = Bytes::from(vec![0x42u8; size]);
    let mut latencies = Vec::with_capacity(LATENCY_SAMPLES);
    for sequence in 0..LATENCY_SAMPLES as u64 {
        let fragment = Fragment {
            meta: FragmentMeta {
                id: FragmentId {
                    stream: stream.clone(),
                    epoch: 1,
                    sequence,
                },
                producer_timestamp: UnixMillis::now(),
                duration_ms: 2000,
            },
            payload: payload.clone(),
        };
        let started = Instant::now();
        tx.send(fragment).await.expect("uplink running");
        loop {
            match reports.recv().await.expect("uplink reports") {
                UplinkEvent::Persisted { id, .. } if id.sequence == sequence => break,
                _ => {}
            }
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    drop(tx);
    uplink.await.expect("uplink task").expect("uplink");
    latencies
}

fn raw_disk_throughput(dir: &std::path::Path) -> f64 {
    let path = dir.join("raw-disk-probe");
    let mut file = std::fs::File::create(&path).expect("probe file");
    let block = vec![0x5au8; 1024 * 1024];
    let started = Instant::now();
    for _ in 0..RAW_DISK_BYTES / block.len() {
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let rate = RAW_DISK_BYTES as f64 / started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(path);
    rate
}

fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}
