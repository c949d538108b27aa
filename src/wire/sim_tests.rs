//! The agent core against a simulated server (built on [`IngestSession`] and a map "store"
//! that dedups by id), with virtual time, a deterministic rng, message loss, reordered acks
//! and dropped connections. No sockets.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::uplink::backoff_ceiling;
use super::*;
use crate::fragment::{Fragment, FragmentMeta};

const STEPS_MAX: usize = 200_000;

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

fn fragment(stream: &str, epoch: u64, sequence: u64, len: usize) -> Fragment {
    Fragment {
        meta: FragmentMeta {
            id: FragmentId {
                stream: name(stream),
                epoch,
                sequence,
            },
            producer_timestamp: UnixMillis(1_000 + sequence * 2_000),
            duration_ms: 2_000,
        },
        payload: Bytes::from(vec![sequence as u8; len]),
    }
}

fn config() -> UplinkConfig {
    UplinkConfig {
        agent: "sim".into(),
        pending_fragments_max: 16,
        pending_bytes_max: 1 << 20,
        in_flight_max: 4,
        ack_timeout: Duration::from_millis(500),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(800),
        ..UplinkConfig::default()
    }
}

fn opens(streams: &[&str]) -> Vec<StreamOpen> {
    streams
        .iter()
        .map(|s| StreamOpen {
            stream: name(s),
            epoch: 1,
        })
        .collect()
}

#[derive(Debug)]
enum ToServer {
    Control(ClientMessage),
    Fragment(Fragment),
}

#[derive(Debug)]
struct Flight<T> {
    at: Instant,
    generation: u64,
    item: T,
}

/// The simulated server: an [`IngestSession`] per connection and one store for all of them.
struct Server {
    session: IngestSession,
    limits: IngestLimits,
    store: HashMap<FragmentId, String>,
    refused_streams: HashSet<StreamName>,
    storage_failures_left: usize,
    received: Vec<FragmentId>,
}

impl Server {
    fn new(limits: IngestLimits) -> Self {
        Self {
            session: IngestSession::new(limits.clone()),
            limits,
            store: HashMap::new(),
            refused_streams: HashSet::new(),
            storage_failures_left: 0,
            received: Vec::new(),
        }
    }

    fn next_sequence(&self, stream: &StreamName, epoch: u64) -> u64 {
        let mut n = 0;
        while self.store.contains_key(&FragmentId {
            stream: stream.clone(),
            epoch,
            sequence: n,
        }) {
            n += 1;
        }
        n
    }

    fn handle(&mut self, item: ToServer) -> Vec<ServerMessage> {
        match item {
            ToServer::Control(hello) => match self.session.handle_hello(&hello) {
                Err(e) => vec![ServerMessage::Error {
                    id: None,
                    code: e.code(),
                    message: e.to_string(),
                }],
                Ok(streams) => self.welcome(streams),
            },
            ToServer::Fragment(f) => self.fragment(f),
        }
    }

    fn welcome(&mut self, streams: Vec<StreamOpen>) -> Vec<ServerMessage> {
        let (refused, ok): (Vec<_>, Vec<_>) = streams
            .into_iter()
            .partition(|s| self.refused_streams.contains(&s.stream));
        let resumes = ok
            .into_iter()
            .map(|s| StreamResume {
                next_sequence: self.next_sequence(&s.stream, s.epoch),
                stream: s.stream,
                epoch: s.epoch,
            })
            .collect();
        let refusals = refused
            .into_iter()
            .map(|s| {
                (
                    s.stream,
                    ErrorCode::UnknownStream,
                    "no such stream".to_owned(),
                )
            })
            .collect();
        self.session.welcome(resumes, refusals)
    }

    fn fragment(&mut self, f: Fragment) -> Vec<ServerMessage> {
        let id = f.meta.id.clone();
        let header = FragmentHeader::for_fragment(&f).unwrap();
        if let Err(e) = self.session.handle_fragment_header(&header) {
            return vec![ServerMessage::Error {
                id: Some(id),
                code: e.code(),
                message: e.to_string(),
            }];
        }
        self.received.push(id.clone());
        let received = ServerMessage::Ack {
            id: id.clone(),
            kind: AckKind::Received,
            fragment_number: None,
        };
        if self.storage_failures_left > 0 {
            self.storage_failures_left -= 1;
            let error = ServerMessage::Error {
                id: Some(id),
                code: ErrorCode::StorageFailure,
                message: "disk".into(),
            };
            return vec![received, error];
        }
        let next = self.store.len();
        let number = self
            .store
            .entry(id.clone())
            .or_insert_with(|| format!("{next:020}"))
            .clone();
        vec![
            received,
            ServerMessage::Ack {
                id,
                kind: AckKind::Persisted,
                fragment_number: Some(number),
            },
        ]
    }
}

/// Loss and disorder of the simulated network.
#[derive(Clone, Copy)]
struct Faults {
    loss_percent: u64,
    delay_ms_max: u64,
    drop_per_mille: u64,
}

const CLEAN: Faults = Faults {
    loss_percent: 0,
    delay_ms_max: 5,
    drop_per_mille: 0,
};

struct Sim {
    now: Instant,
    rng: SplitMix64,
    faults: Faults,
    uplink: Uplink,
    server: Server,
    /// The generation of the live connection; flights of older ones are discarded.
    generation: u64,
    connected: bool,
    connect_at: Option<Instant>,
    to_server: Vec<Flight<ToServer>>,
    to_client: Vec<Flight<ServerMessage>>,
    persisted: HashMap<FragmentId, Vec<Option<String>>>,
    refused: Vec<(FragmentId, ErrorCode)>,
    stream_refusals: Vec<StreamName>,
    full_count: usize,
}

impl Sim {
    fn new(
        config: UplinkConfig,
        streams: Vec<StreamOpen>,
        server: Server,
        faults: Faults,
        seed: u64,
    ) -> Self {
        let now = Instant::now();
        Self {
            now,
            rng: SplitMix64::new(seed ^ 0xA5A5),
            faults,
            uplink: Uplink::new(config, streams, seed, now),
            server,
            generation: 0,
            connected: false,
            connect_at: None,
            to_server: Vec::new(),
            to_client: Vec::new(),
            persisted: HashMap::new(),
            refused: Vec::new(),
            stream_refusals: Vec::new(),
            full_count: 0,
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.rng.below_or_eq(99) < percent
    }

    fn delay(&mut self) -> Instant {
        self.now + Duration::from_millis(1 + self.rng.below_or_eq(self.faults.delay_ms_max))
    }

    /// Runs until every fragment is pushed and the uplink is drained; returns steps used.
    fn run(&mut self, mut feed: Vec<Fragment>) -> usize {
        feed.reverse();
        for step in 0..STEPS_MAX {
            self.feed(&mut feed);
            self.drain_events();
            if feed.is_empty() && self.uplink.is_drained() {
                return step;
            }
            self.maybe_drop_connection();
            if !self.advance() {
                break;
            }
            self.deliver();
            self.uplink.handle_timeout(self.now);
        }
        panic!(
            "simulation did not finish: {} fragments held",
            self.uplink.pending_fragments()
        );
    }

    fn feed(&mut self, feed: &mut Vec<Fragment>) {
        while let Some(f) = feed.pop() {
            match self.uplink.push(f.clone()) {
                Ok(()) => {}
                Err(UplinkError::Full { .. }) => {
                    self.full_count += 1;
                    feed.push(f);
                    return;
                }
                Err(e) => panic!("push failed: {e}"),
            }
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.uplink.poll_event() {
            match event {
                UplinkEvent::Connect => {
                    self.generation += 1;
                    self.connected = false;
                    self.connect_at = Some(self.now + Duration::from_millis(3));
                }
                UplinkEvent::SendControl(msg) => self.send(ToServer::Control(msg)),
                UplinkEvent::SendFragment(id) => {
                    let f = self
                        .uplink
                        .fragment(&id)
                        .expect("fragment held while sending")
                        .clone();
                    self.send(ToServer::Fragment(f));
                }
                UplinkEvent::Persisted {
                    id,
                    fragment_number,
                } => self.persisted.entry(id).or_default().push(fragment_number),
                UplinkEvent::Refused { id, code, .. } => self.refused.push((id, code)),
                UplinkEvent::StreamRefused { stream, .. } => self.stream_refusals.push(stream),
                // The simulation pushes nothing spooled, so nothing is ever abandoned.
                UplinkEvent::Abandoned(id) => panic!("abandoned {id} without a spooled copy"),
            }
        }
    }

    fn send(&mut self, item: ToServer) {
        if !self.connected || self.chance(self.faults.loss_percent) {
            return;
        }
        let at = self.delay();
        self.to_server.push(Flight {
            at,
            generation: self.generation,
            item,
        });
    }

    fn maybe_drop_connection(&mut self) {
        if self.connected && self.rng.below_or_eq(999) < self.faults.drop_per_mille {
            self.connected = false;
            self.generation += 1;
            self.uplink.handle_connection_lost(self.now);
        }
    }

    /// Moves virtual time to the next thing that happens; false when nothing will.
    fn advance(&mut self) -> bool {
        let next = self
            .to_server
            .iter()
            .map(|f| f.at)
            .chain(self.to_client.iter().map(|f| f.at))
            .chain(self.connect_at)
            .chain(self.uplink.poll_timeout())
            .min();
        match next {
            Some(t) => {
                self.now = self.now.max(t);
                true
            }
            None => false,
        }
    }

    fn deliver(&mut self) {
        if self.connect_at.is_some_and(|t| t <= self.now) {
            self.connect_at = None;
            self.connected = true;
            self.server.session = IngestSession::new(self.server.limits.clone());
            self.uplink.handle_connected(self.now);
        }
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) = self.to_server.drain(..).partition(|f| f.at <= now);
        self.to_server = rest;
        let live = self.generation;
        for flight in due.into_iter().filter(|f| f.generation == live) {
            for reply in self.server.handle(flight.item) {
                self.reply(reply);
            }
        }
        let (mut due, rest): (Vec<_>, Vec<_>) = self.to_client.drain(..).partition(|f| f.at <= now);
        self.to_client = rest;
        due.sort_by_key(|f| f.at);
        for flight in due.into_iter().filter(|f| f.generation == live) {
            self.uplink.handle_message(flight.item, now);
        }
    }

    /// Control replies keep their order; acks may be lost and overtake each other.
    fn reply(&mut self, msg: ServerMessage) {
        let is_ack = matches!(msg, ServerMessage::Ack { .. });
        if is_ack && self.chance(self.faults.loss_percent) {
            return;
        }
        let at = if is_ack {
            self.delay()
        } else {
            self.now + Duration::from_millis(1)
        };
        self.to_client.push(Flight {
            at,
            generation: self.generation,
            item: msg,
        });
    }
}

fn feed(stream: &str, range: std::ops::Range<u64>) -> Vec<Fragment> {
    range
        .map(|s| fragment(stream, 1, s, 100 + s as usize))
        .collect()
}

fn interleaved(count: u64) -> Vec<Fragment> {
    (0..count)
        .flat_map(|s| [fragment("a", 1, s, 300), fragment("b", 1, s, 200)])
        .collect()
}

#[test]
fn every_fragment_is_persisted_exactly_once_under_loss_reordering_and_disconnects() {
    for seed in 1..=6 {
        let faults = Faults {
            loss_percent: 20,
            delay_ms_max: 40,
            drop_per_mille: 15,
        };
        let mut server = Server::new(IngestLimits::default());
        server.storage_failures_left = 5;
        let mut sim = Sim::new(config(), opens(&["a", "b"]), server, faults, seed);
        let fragments = interleaved(100);
        sim.run(fragments.clone());
        assert!(sim.refused.is_empty(), "seed {seed}: {:?}", sim.refused);
        assert_eq!(sim.server.store.len(), fragments.len(), "seed {seed}");
        for f in &fragments {
            let reports = &sim.persisted[&f.meta.id];
            assert_eq!(
                reports.len(),
                1,
                "seed {seed}: {} reported {reports:?}",
                f.meta.id
            );
            assert!(sim.server.store.contains_key(&f.meta.id));
        }
        // The faults really happened: resends reached the server more than once.
        assert!(sim.server.received.len() > fragments.len(), "seed {seed}");
        assert!(
            sim.generation > 2,
            "seed {seed}: only {} connections",
            sim.generation
        );
    }
}

#[test]
fn resume_skips_sequences_the_server_already_has() {
    let mut server = Server::new(IngestLimits::default());
    for f in feed("a", 0..10) {
        server.store.insert(f.meta.id, "old".into());
    }
    let mut cfg = config();
    cfg.pending_fragments_max = 64;
    let mut sim = Sim::new(cfg, opens(&["a"]), server, CLEAN, 3);
    sim.run(feed("a", 0..20));
    assert!(
        sim.server.received.iter().all(|id| id.sequence >= 10),
        "{:?}",
        sim.server.received
    );
    for s in 0..20 {
        let id = FragmentId {
            stream: name("a"),
            epoch: 1,
            sequence: s,
        };
        let number = &sim.persisted[&id];
        assert_eq!(number.len(), 1);
        assert_eq!(number[0].is_none(), s < 10, "sequence {s}");
    }
}

#[test]
fn resume_after_reconnect_does_not_resend_what_was_persisted() {
    let faults = Faults {
        loss_percent: 50,
        delay_ms_max: 20,
        drop_per_mille: 30,
    };
    let mut sim = Sim::new(
        config(),
        opens(&["a"]),
        Server::new(IngestLimits::default()),
        faults,
        11,
    );
    sim.run(feed("a", 0..60));
    // Some fragments were learned persisted from a Welcome, since their acks were lost.
    let from_resume = sim.persisted.values().filter(|n| n[0].is_none()).count();
    assert!(from_resume > 0);
    assert_eq!(sim.server.store.len(), 60);
}

#[test]
fn a_permanent_error_refuses_only_that_fragment() {
    let limits = IngestLimits {
        fragment_bytes_max: 1000,
        ..Default::default()
    };
    let mut sim = Sim::new(config(), opens(&["a"]), Server::new(limits), CLEAN, 5);
    let mut fragments = feed("a", 0..10);
    fragments[4] = fragment("a", 1, 4, 5000);
    sim.run(fragments);
    let big = FragmentId {
        stream: name("a"),
        epoch: 1,
        sequence: 4,
    };
    assert_eq!(
        sim.refused,
        vec![(big.clone(), ErrorCode::FragmentTooLarge)]
    );
    assert_eq!(sim.persisted.len(), 9);
    assert!(!sim.persisted.contains_key(&big));
}

#[test]
fn a_refused_stream_refuses_its_fragments_and_later_pushes() {
    let mut server = Server::new(IngestLimits::default());
    server.refused_streams.insert(name("b"));
    let mut sim = Sim::new(config(), opens(&["a", "b"]), server, CLEAN, 6);
    sim.run(interleaved(4));
    assert_eq!(sim.stream_refusals, vec![name("b")]);
    assert_eq!(sim.persisted.len(), 4);
    assert!(
        sim.refused
            .iter()
            .all(|(id, code)| id.stream == name("b") && *code == ErrorCode::UnknownStream)
    );
    assert!(matches!(
        sim.uplink.push(fragment("b", 1, 9, 10)),
        Err(UplinkError::StreamRefused {
            code: ErrorCode::UnknownStream,
            ..
        })
    ));
}

/// A core connected to nothing: the test plays the server by hand.
fn connected(cfg: UplinkConfig) -> (Uplink, Instant) {
    let now = Instant::now();
    let mut up = Uplink::new(cfg, opens(&["a"]), 9, now);
    assert_eq!(up.poll_event(), Some(UplinkEvent::Connect));
    up.handle_connected(now);
    assert!(matches!(
        up.poll_event(),
        Some(UplinkEvent::SendControl(ClientMessage::Hello { .. }))
    ));
    up.handle_message(ServerMessage::Welcome { resumes: vec![] }, now);
    (up, now)
}

fn persisted(id: &FragmentId) -> ServerMessage {
    ServerMessage::Ack {
        id: id.clone(),
        kind: AckKind::Persisted,
        fragment_number: Some("7".into()),
    }
}

#[test]
fn duplicate_and_unknown_acks_are_ignored() {
    let (mut up, now) = connected(config());
    let f = fragment("a", 1, 0, 10);
    let id = f.meta.id.clone();
    up.push(f).unwrap();
    assert_eq!(up.poll_event(), Some(UplinkEvent::SendFragment(id.clone())));
    up.handle_message(persisted(&id), now);
    up.handle_message(persisted(&id), now);
    up.handle_message(
        persisted(&FragmentId {
            sequence: 99,
            ..id.clone()
        }),
        now,
    );
    assert_eq!(
        up.poll_event(),
        Some(UplinkEvent::Persisted {
            id,
            fragment_number: Some("7".into())
        })
    );
    assert_eq!(up.poll_event(), None);
    assert!(up.is_drained());
}

#[test]
fn push_reports_full_at_the_fragment_and_byte_limits() {
    let cfg = UplinkConfig {
        pending_fragments_max: 3,
        pending_bytes_max: 1000,
        ..config()
    };
    let (mut up, now) = connected(cfg);
    for s in 0..3 {
        up.push(fragment("a", 1, s, 10)).unwrap();
    }
    assert!(matches!(
        up.push(fragment("a", 1, 3, 10)),
        Err(UplinkError::Full { fragments: 3, .. })
    ));
    up.handle_message(persisted(&fragment("a", 1, 0, 0).meta.id), now);
    assert!(matches!(
        up.push(fragment("a", 1, 3, 990)),
        Err(UplinkError::Full { bytes: 20, .. })
    ));
    up.push(fragment("a", 1, 3, 980)).unwrap();
    assert!(matches!(
        up.push(fragment("a", 1, 4, 2000)),
        Err(UplinkError::FragmentTooLarge { .. })
    ));
    assert!(matches!(
        up.push(fragment("zz", 1, 0, 1)),
        Err(UplinkError::UnknownStream(_))
    ));
}

#[test]
fn fragments_pushed_before_connecting_wait_for_the_welcome() {
    let now = Instant::now();
    let mut up = Uplink::new(config(), opens(&["a"]), 1, now);
    up.push(fragment("a", 1, 0, 10)).unwrap();
    assert_eq!(up.poll_event(), Some(UplinkEvent::Connect));
    up.handle_connected(now);
    assert!(matches!(up.poll_event(), Some(UplinkEvent::SendControl(_))));
    assert_eq!(up.poll_event(), None);
    up.handle_message(ServerMessage::Welcome { resumes: vec![] }, now);
    assert!(matches!(
        up.poll_event(),
        Some(UplinkEvent::SendFragment(_))
    ));
}

#[test]
fn no_persisted_within_the_ack_timeout_resends() {
    let (mut up, now) = connected(config());
    let f = fragment("a", 1, 0, 10);
    up.push(f.clone()).unwrap();
    assert!(matches!(
        up.poll_event(),
        Some(UplinkEvent::SendFragment(_))
    ));
    let received = ServerMessage::Ack {
        id: f.meta.id.clone(),
        kind: AckKind::Received,
        fragment_number: None,
    };
    up.handle_message(received, now + Duration::from_millis(100));
    let deadline = up.poll_timeout().unwrap();
    assert_eq!(deadline, now + Duration::from_millis(600));
    up.handle_timeout(deadline - Duration::from_millis(1));
    assert_eq!(up.poll_event(), None);
    up.handle_timeout(deadline);
    assert_eq!(up.poll_event(), Some(UplinkEvent::SendFragment(f.meta.id)));
}

#[test]
fn in_flight_window_is_respected() {
    let (mut up, now) = connected(config());
    for s in 0..10 {
        up.push(fragment("a", 1, s, 10)).unwrap();
    }
    let sent: Vec<_> = std::iter::from_fn(|| up.poll_event()).collect();
    assert_eq!(sent.len(), 4);
    up.handle_message(persisted(&fragment("a", 1, 2, 0).meta.id), now);
    let next: Vec<_> = std::iter::from_fn(|| up.poll_event()).collect();
    assert_eq!(
        next[1],
        UplinkEvent::SendFragment(fragment("a", 1, 4, 0).meta.id)
    );
}

#[test]
fn reconnect_backoff_grows_is_capped_jittered_and_resets_after_welcome() {
    let cfg = config();
    let ceilings: Vec<u64> = (0..8)
        .map(|a| backoff_ceiling(&cfg, a).as_millis() as u64)
        .collect();
    assert_eq!(ceilings, [50, 100, 200, 400, 800, 800, 800, 800]);
    let mut sums = [0u64; 8];
    let mut distinct = HashSet::new();
    for seed in 0..50 {
        let mut now = Instant::now();
        let mut up = Uplink::new(cfg.clone(), opens(&["a"]), seed, now);
        for (attempt, sum) in sums.iter_mut().enumerate() {
            assert_eq!(up.poll_event(), Some(UplinkEvent::Connect));
            up.handle_connection_lost(now);
            let delay = (up.poll_timeout().unwrap() - now).as_millis() as u64;
            assert!(delay <= ceilings[attempt], "attempt {attempt}: {delay} ms");
            *sum += delay;
            distinct.insert(delay);
            now += Duration::from_millis(delay);
            up.handle_timeout(now);
        }
        // A successful Welcome resets the backoff.
        assert_eq!(up.poll_event(), Some(UplinkEvent::Connect));
        up.handle_connected(now);
        up.handle_message(ServerMessage::Welcome { resumes: vec![] }, now);
        up.handle_connection_lost(now);
        assert!(up.poll_timeout().unwrap() - now <= Duration::from_millis(50));
    }
    assert!(sums[0] < sums[2] && sums[2] < sums[4], "{sums:?}");
    assert!(
        distinct.len() > 20,
        "jitter gave only {} distinct delays",
        distinct.len()
    );
}

#[test]
fn no_welcome_within_the_ack_timeout_reconnects() {
    let now = Instant::now();
    let mut up = Uplink::new(config(), opens(&["a"]), 1, now);
    assert_eq!(up.poll_event(), Some(UplinkEvent::Connect));
    up.handle_connected(now);
    let _hello = up.poll_event();
    let deadline = up.poll_timeout().unwrap();
    up.handle_timeout(deadline);
    let reconnect = up.poll_timeout().unwrap();
    up.handle_timeout(reconnect);
    assert_eq!(up.poll_event(), Some(UplinkEvent::Connect));
}

#[test]
fn fragments_pushed_after_the_welcome_below_the_resume_point_are_never_sent() {
    // A restarted replay captures again from the start; the server already has 0..5.
    let now = Instant::now();
    let mut up = Uplink::new(config(), opens(&["a"]), 4, now);
    assert_eq!(up.poll_event(), Some(UplinkEvent::Connect));
    up.handle_connected(now);
    assert!(matches!(up.poll_event(), Some(UplinkEvent::SendControl(_))));
    let resume = StreamResume {
        stream: name("a"),
        epoch: 1,
        next_sequence: 5,
    };
    up.handle_message(
        ServerMessage::Welcome {
            resumes: vec![resume],
        },
        now,
    );
    let mut sent = Vec::new();
    let mut known = Vec::new();
    for sequence in 0..8 {
        up.push(fragment("a", 1, sequence, 10)).unwrap();
        while let Some(event) = up.poll_event() {
            match event {
                UplinkEvent::SendFragment(id) => sent.push(id.sequence),
                UplinkEvent::Persisted {
                    id,
                    fragment_number: None,
                } => known.push(id.sequence),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(known, vec![0, 1, 2, 3, 4]);
    assert_eq!(sent, vec![5, 6, 7]);
    assert_eq!(up.pending_fragments(), 3);
}

fn sent_ids(up: &mut Uplink) -> Vec<u64> {
    std::iter::from_fn(|| up.poll_event())
        .filter_map(|e| match e {
            UplinkEvent::SendFragment(id) => Some(id.sequence),
            _ => None,
        })
        .collect()
}

#[test]
fn live_fragments_go_before_older_backfill_within_the_window() {
    let now = Instant::now();
    let cfg = UplinkConfig {
        in_flight_max: 2,
        backfill_in_flight_max: 2,
        ..config()
    };
    let mut up = Uplink::new(cfg, opens(&["a"]), 3, now);
    for s in 0..3 {
        up.push_with(fragment("a", 1, s, 10), Priority::Backfill, true)
            .unwrap();
    }
    up.push_with(fragment("a", 1, 10, 10), Priority::Live, true)
        .unwrap();
    up.push_with(fragment("a", 1, 11, 10), Priority::Live, true)
        .unwrap();
    assert_eq!(up.poll_event(), Some(UplinkEvent::Connect));
    up.handle_connected(now);
    up.handle_message(ServerMessage::Welcome { resumes: vec![] }, now);
    assert_eq!(sent_ids(&mut up), vec![10, 11], "live first");
    up.handle_message(persisted(&fragment("a", 1, 10, 10).meta.id), now);
    assert_eq!(sent_ids(&mut up), vec![0], "then backfill, oldest first");
}

#[test]
fn backfill_is_paced_by_the_cap_and_keeps_room_for_live() {
    let now = Instant::now();
    let cfg = UplinkConfig {
        backfill_bytes_per_s: 1_000,
        backfill_burst_bytes: 1_000,
        backfill_pending_max: 3,
        ack_timeout: Duration::from_secs(60),
        ..config()
    };
    let (mut up, _) = (Uplink::new(cfg, opens(&["a"]), 3, now), ());
    assert_eq!(up.poll_event(), Some(UplinkEvent::Connect));
    up.handle_connected(now);
    up.handle_message(ServerMessage::Welcome { resumes: vec![] }, now);
    let _ = sent_ids(&mut up);
    for s in 0..3 {
        up.push_with(fragment("a", 1, s, 1_000), Priority::Backfill, true)
            .unwrap();
    }
    assert!(matches!(
        up.push_with(fragment("a", 1, 3, 10), Priority::Backfill, true),
        Err(UplinkError::BackfillFull(3))
    ));
    up.push_with(fragment("a", 1, 9, 10), Priority::Live, true)
        .unwrap();
    // The burst pays for the first, the second goes on credit (the bucket is not in debt
    // yet), the third waits a second until that debt is paid.
    assert_eq!(sent_ids(&mut up), vec![0, 1, 9]);
    let next = up.poll_timeout().expect("a wake-up for the bucket");
    assert!(next <= now + Duration::from_millis(1_000));
    up.handle_timeout(now + Duration::from_millis(999));
    assert_eq!(sent_ids(&mut up), Vec::<u64>::new());
    up.handle_timeout(now + Duration::from_millis(1_000));
    assert_eq!(sent_ids(&mut up), vec![2]);
}

#[test]
fn a_stale_spooled_live_fragment_is_abandoned_and_a_late_persisted_still_reported() {
    let now = Instant::now();
    let cfg = UplinkConfig {
        live_stale_after: Duration::from_secs(3),
        ack_timeout: Duration::from_secs(60),
        ..config()
    };
    let (mut up, _) = (Uplink::new(cfg, opens(&["a"]), 3, now), ());
    assert_eq!(up.poll_event(), Some(UplinkEvent::Connect));
    up.handle_connected(now);
    up.handle_message(ServerMessage::Welcome { resumes: vec![] }, now);
    let _ = sent_ids(&mut up);
    let spooled = fragment("a", 1, 0, 10);
    let unspooled = fragment("a", 1, 1, 10);
    up.push_with(spooled.clone(), Priority::Live, true).unwrap();
    up.push_with(unspooled, Priority::Live, false).unwrap();
    let _ = sent_ids(&mut up);
    assert_eq!(up.poll_timeout(), Some(now + Duration::from_secs(3)));
    up.handle_timeout(now + Duration::from_secs(3));
    assert_eq!(
        up.poll_event(),
        Some(UplinkEvent::Abandoned(spooled.meta.id.clone()))
    );
    assert_eq!(up.pending_fragments(), 1, "the unspooled one is kept");
    up.handle_message(persisted(&spooled.meta.id), now + Duration::from_secs(4));
    assert!(matches!(
        up.poll_event(),
        Some(UplinkEvent::Persisted { id, .. }) if id == spooled.meta.id
    ));
    up.handle_message(persisted(&spooled.meta.id), now + Duration::from_secs(4));
    assert_eq!(up.poll_event(), None, "reported once");
}
