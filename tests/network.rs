//! The uplink on a bad network: a loss-injecting UDP relay on loopback sits between a real
//! agent and a real server. It forwards datagrams both ways, drops a configurable percentage,
//! and can cut the link entirely. Checks: a 60 s outage with a live camera (every fragment
//! once; live fragments first after the reconnect while the backlog drains within its cap;
//! metrics move during the outage), SIGKILL during an outage, and 5% packet loss.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{self, AgentProcess, AgentRun, ServerProcess};
use hydrant::fragment::UnixMillis;
use hydrant::spool::{FullPolicy, Spool, SpoolConfig};
use hydrant::store::FragmentSummary;

const STREAM: &str = "gate";
const AGENT_EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const RELAY_POLL_MS: u64 = 50;
const DATAGRAM_BYTES_MAX: usize = 65_536;

/// Link state shared by the relay's two directions.
#[derive(Default)]
struct Controls {
    drop_percent: AtomicU32,
    cut: AtomicBool,
    stop: AtomicBool,
}

/// The UDP relay. Dropped: its threads stop.
struct Relay {
    addr: SocketAddr,
    controls: Arc<Controls>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    fn start(server: SocketAddr) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").expect("relay front");
        let back = UdpSocket::bind("127.0.0.1:0").expect("relay back");
        back.connect(server).expect("relay connects to the server");
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(RELAY_POLL_MS)))
                .expect("timeout");
        }
        let addr = front.local_addr().expect("addr");
        let controls: Arc<Controls> = Arc::default();
        // The agent's address: the latest one heard from (a restarted agent has a new port).
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (front2, back2, client2) = (
            front.try_clone().expect("clone"),
            back.try_clone().expect("clone"),
            client.clone(),
        );
        let up = spawn_direction(controls.clone(), 1, move |buf, forward| {
            if let Ok((n, from)) = front.recv_from(buf) {
                *client.lock().expect("lock") = Some(from);
                if forward() {
                    let _ = back.send(&buf[..n]);
                }
            }
        });
        let down = spawn_direction(controls.clone(), 2, move |buf, forward| {
            if let Ok(n) = back2.recv(buf) {
                let to = *client2.lock().expect("lock");
                if let (Some(to), true) = (to, forward()) {
                    let _ = front2.send_to(&buf[..n], to);
                }
            }
        });
        Relay {
            addr,
            controls,
            threads: vec![up, down],
        }
    }

    fn set_drop_percent(&self, percent: u32) {
        self.controls.drop_percent.store(percent, Ordering::Relaxed);
    }

    fn set_cut(&self, cut: bool) {
        self.controls.cut.store(cut, Ordering::Relaxed);
    }
}

/// Runs one direction: `step` receives one datagram and forwards it if `forward()` says so.
fn spawn_direction<F>(controls: Arc<Controls>, seed: u64, mut step: F) -> JoinHandle<()>
where
    F: FnMut(&mut [u8], &mut dyn FnMut() -> bool) + Send + 'static,
{
    std::thread::spawn(move || {
        let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
        let mut rng = 0x2545_F491_4F6C_DD1Du64.wrapping_mul(seed);
        while !controls.stop.load(Ordering::Relaxed) {
            let mut forward = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                !controls.cut.load(Ordering::Relaxed)
                    && (rng % 100) as u32 >= controls.drop_percent.load(Ordering::Relaxed)
            };
            step(&mut buf, &mut forward);
        }
    })
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.controls.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The agent's Prometheus metrics as name{labels} -> value.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let text = reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"))
        .and_then(|r| r.text())
        .expect("scrape");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

fn metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    *m.get(&format!("hydrant_agent_{name}"))
        .unwrap_or_else(|| panic!("no metric {name} in {m:?}"))
}

/// Every epoch's sequences are 0..n, each once. Returns n per epoch.
fn assert_contiguous_once(stored: &[FragmentSummary]) -> BTreeMap<u64, u64> {
    let mut by_epoch: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for f in stored {
        by_epoch.entry(f.epoch).or_default().push(f.sequence);
    }
    by_epoch
        .into_iter()
        .map(|(epoch, mut seqs)| {
            seqs.sort_unstable();
            let want: Vec<u64> = (0..seqs.len() as u64).collect();
            assert_eq!(
                seqs, want,
                "epoch {epoch}: every sequence once, none missing"
            );
            (epoch, seqs.len() as u64)
        })
        .collect()
}

fn unreleased(state: &Path) -> usize {
    Spool::open(SpoolConfig {
        dir: SpoolConfig::in_state_dir(state),
        bytes_max: 2 * 1024 * 1024 * 1024,
        age_max_ms: 7 * 24 * 3_600_000,
        full_policy: FullPolicy::DropOldest,
        fragment_bytes_max: 16 * 1024 * 1024,
    })
    .expect("spool opens")
    .unreleased()
    .len()
}

fn run_for(server: &ServerProcess, relay: &Relay, state: &Path) -> AgentRun {
    AgentRun {
        server_quic: relay.addr,
        ca: server.ca(),
        stream: STREAM.to_owned(),
        source: "test".to_owned(),
        fast: false,
        spool_dir: state.to_path_buf(),
    }
}

fn now_ms() -> u64 {
    UnixMillis::now().0
}

/// Polls until `done` or `timeout`.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

const OUTAGE_S: u64 = 60;
const BACKFILL_CAP_BYTES_PER_S: u64 = 60_000;

#[test]
fn a_60_s_outage_loses_nothing_live_goes_first_and_backfill_keeps_its_cap() {
    let server = ServerProcess::start("[storage]\ncreate_streams_on_first_use = true\n");
    let relay = Relay::start(server.quic);
    let state = server.dir.path().join("agent");
    let port = free_port();
    let agent = AgentProcess::start_configured(
        &run_for(&server, &relay, &state),
        &format!("status_listen = \"127.0.0.1:{port}\"\nshutdown_flush_ms = 5000\n"),
        &format!("backfill_bytes_per_s = {BACKFILL_CAP_BYTES_PER_S}\nlive_stale_after_ms = 3000\n"),
        &[],
    );
    std::thread::sleep(Duration::from_secs(8));
    let before = scrape(port);
    assert!(
        metric(&before, "fragments_persisted_total") >= 1.0,
        "{}",
        agent.log()
    );

    relay.set_cut(true);
    let cut_at = now_ms();
    std::thread::sleep(Duration::from_secs(20));
    let mid = scrape(port);
    std::thread::sleep(Duration::from_secs(OUTAGE_S - 25));
    let late = scrape(port);
    std::thread::sleep(Duration::from_secs(5));
    relay.set_cut(false);
    let restored_at = now_ms();
    let spool_mid = metric(&mid, "spool_unreleased_bytes");
    let spool_late = metric(&late, "spool_unreleased_bytes");
    println!(
        "metrics during the outage: spool bytes {spool_mid} -> {spool_late}, reconnects {} -> {}, abandoned {}",
        metric(&mid, "reconnects_total"),
        metric(&late, "reconnects_total"),
        metric(&late, "drops_total{reason=\"abandoned_stale\"}")
    );
    assert!(
        spool_late > spool_mid && spool_mid > 0.0,
        "the spool grows during the outage"
    );
    assert!(
        metric(&late, "spool_unreleased_fragments") > metric(&mid, "spool_unreleased_fragments")
    );
    assert!(
        metric(&late, "reconnects_total") >= 1.0,
        "reconnects counted"
    );
    assert!(metric(&late, "spool_oldest_age_seconds") >= 20.0);

    // Drain: wait until the spool is empty (bounded).
    let drained = wait_until(Duration::from_secs(120), || {
        metric(&scrape(port), "spool_unreleased_fragments") <= 1.0
    });
    let after = scrape(port);
    agent.terminate();
    let (status, out, log) = agent.wait_with_log(AGENT_EXIT_TIMEOUT);
    assert!(drained, "the backlog drained: {log}");
    assert!(status.success(), "{out}\n{log}");
    drop(relay);
    let mut server = server;
    server.kill();
    let stored = harness::stored_fragments(&server.data_dir(), STREAM).expect("stream stored");
    let counts = assert_contiguous_once(&stored);
    assert_eq!(counts.len(), 1, "one live session: {counts:?}");
    assert_eq!(unreleased(&state), 0, "nothing left in the spool: {out}");

    // Live first: fragments captured after the link came back arrive within a few seconds,
    // while fragments from the outage are still being backfilled.
    let outage: Vec<&FragmentSummary> = stored
        .iter()
        .filter(|f| {
            f.producer_timestamp.0 > cut_at
                && f.producer_timestamp.0 + u64::from(f.duration_ms) < restored_at
        })
        .collect();
    let live_after: Vec<&FragmentSummary> = stored
        .iter()
        .filter(|f| f.producer_timestamp.0 >= restored_at)
        .collect();
    assert!(
        outage.len() >= 20,
        "the outage produced fragments: {}",
        outage.len()
    );
    let first_arrival = stored
        .iter()
        .map(|f| f.server_timestamp.0)
        .filter(|&t| t >= restored_at)
        .min()
        .expect("something arrived after the restore");
    let last_backfill = outage
        .iter()
        .map(|f| f.server_timestamp.0)
        .max()
        .unwrap_or(0);
    let during_drain: Vec<u64> = live_after
        .iter()
        .filter(|f| f.server_timestamp.0 <= last_backfill)
        .map(|f| f.server_timestamp.0 - (f.producer_timestamp.0 + u64::from(f.duration_ms)))
        .collect();
    println!(
        "reconnected {} ms after the restore; live delays while the backlog drained (ms): {during_drain:?}; backlog drained {} ms after the restore",
        first_arrival - restored_at,
        last_backfill.saturating_sub(restored_at)
    );
    assert!(
        !during_drain.is_empty(),
        "live fragments arrived while the backlog drained"
    );
    assert!(
        during_drain.iter().all(|&d| d < 5_000),
        "live fragments within a few seconds: {during_drain:?}"
    );

    // The cap: backfill bytes over the drain time, less the allowed burst.
    let backfill_bytes: u64 = outage.iter().map(|f| f.size_bytes).sum();
    let first_backfill = outage
        .iter()
        .map(|f| f.server_timestamp.0)
        .min()
        .unwrap_or(0);
    let span_s = (last_backfill - first_backfill).max(1) as f64 / 1000.0;
    let burst = 1024.0 * 1024.0;
    let rate = (backfill_bytes as f64 - burst).max(0.0) / span_s;
    let sent = metric(&after, "sent_bytes_total{class=\"backfill\"}");
    println!(
        "backfill: {backfill_bytes} bytes of {} fragments in {span_s:.1} s: {rate:.0} B/s beyond the burst (cap {BACKFILL_CAP_BYTES_PER_S}); {sent} backfill bytes sent",
        outage.len()
    );
    assert!(
        rate <= BACKFILL_CAP_BYTES_PER_S as f64 * 1.15,
        "cap honoured: {rate}"
    );
}

#[test]
fn sigkill_during_an_outage_loses_nothing_and_duplicates_nothing() {
    let mut server = ServerProcess::start("[storage]\ncreate_streams_on_first_use = true\n");
    let relay = Relay::start(server.quic);
    let state = server.dir.path().join("agent");
    let run = run_for(&server, &relay, &state);
    let uplink = "live_stale_after_ms = 3000\n";
    let first = AgentProcess::start_configured(&run, "", uplink, &[]);
    std::thread::sleep(Duration::from_secs(6));
    relay.set_cut(true);
    std::thread::sleep(Duration::from_secs(12));
    first.kill();
    let spooled = unreleased(&state);
    assert!(
        spooled >= 4,
        "fragments spooled during the outage: {spooled}"
    );
    let port = free_port();
    let second = AgentProcess::start_configured(
        &run,
        &format!("status_listen = \"127.0.0.1:{port}\"\n"),
        uplink,
        &[],
    );
    std::thread::sleep(Duration::from_secs(8));
    relay.set_cut(false);
    let drained = wait_until(Duration::from_secs(90), || {
        reqwest::blocking::get(format!("http://127.0.0.1:{port}/status"))
            .and_then(|r| r.json::<serde_json::Value>())
            .is_ok_and(|v| {
                v["spool_unreleased_fragments"]
                    .as_u64()
                    .is_some_and(|n| n <= 1)
            })
    });
    second.terminate();
    let (status, out, log) = second.wait_with_log(AGENT_EXIT_TIMEOUT);
    assert!(drained, "{log}");
    assert!(status.success(), "{out}\n{log}");
    assert!(out.contains("recovered"), "{out}");
    drop(relay);
    server.kill();
    let counts = assert_contiguous_once(
        &harness::stored_fragments(&server.data_dir(), STREAM).expect("stream stored"),
    );
    println!("stored per epoch after SIGKILL and restart: {counts:?}");
    assert_eq!(counts.len(), 2, "both runs' sessions stored: {counts:?}");
    assert_eq!(unreleased(&state), 0, "{out}");
}

#[test]
fn five_percent_packet_loss_loses_nothing() {
    let mut server = ServerProcess::start("[storage]\ncreate_streams_on_first_use = true\n");
    let relay = Relay::start(server.quic);
    relay.set_drop_percent(5);
    let state = server.dir.path().join("agent");
    let agent = AgentProcess::start_configured(&run_for(&server, &relay, &state), "", "", &[]);
    std::thread::sleep(Duration::from_secs(20));
    agent.terminate();
    let (status, out, log) = agent.wait_with_log(AGENT_EXIT_TIMEOUT);
    assert!(status.success(), "{out}\n{log}");
    drop(relay);
    server.kill();
    let counts = assert_contiguous_once(
        &harness::stored_fragments(&server.data_dir(), STREAM).expect("stream stored"),
    );
    let stored: u64 = counts.values().sum();
    println!("5% loss: stored {counts:?}; agent: {out}");
    assert!(stored >= 8, "about 20 s of 2 s fragments: {stored}");
    assert_eq!(unreleased(&state), 0, "everything persisted: {out}");
}
