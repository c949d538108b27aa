//! Real QUIC over loopback with a real temp-dir identity; the sink is a small in-test store
//! (a map that dedups by id).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::uplink::client_config;
use super::*;
use crate::fragment::{Fragment, FragmentId, FragmentMeta, StreamName, UnixMillis};
use crate::wire::{
    self, AckKind, ClientMessage, ErrorCode, FrameDecoder, ServerMessage, StreamOpen, UplinkConfig,
    UplinkEvent,
};

const WAIT: Duration = Duration::from_secs(20);

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

fn fragment(stream: &str, sequence: u64, len: usize) -> Fragment {
    Fragment {
        meta: FragmentMeta {
            id: FragmentId {
                stream: name(stream),
                epoch: 1,
                sequence,
            },
            producer_timestamp: UnixMillis(1_700_000_000_000 + sequence * 2000),
            duration_ms: 2000,
        },
        payload: Bytes::from(
            (0..len)
                .map(|i| (i as u64 * 31 + sequence) as u8)
                .collect::<Vec<u8>>(),
        ),
    }
}

#[derive(Default)]
struct TestSink {
    stored: Mutex<HashMap<FragmentId, (String, Fragment)>>,
    unknown: HashSet<StreamName>,
}

impl FragmentSink for TestSink {
    fn open_stream(
        &self,
        stream: &StreamName,
        epoch: u64,
    ) -> impl Future<Output = Result<u64, SinkError>> + Send {
        let result = if self.unknown.contains(stream) {
            Err(SinkError {
                code: ErrorCode::UnknownStream,
                message: format!("no stream {stream}"),
            })
        } else {
            let stored = self.stored.lock().unwrap();
            let mut next = 0;
            while stored.contains_key(&FragmentId {
                stream: stream.clone(),
                epoch,
                sequence: next,
            }) {
                next += 1;
            }
            Ok(next)
        };
        async move { result }
    }

    fn persist(
        &self,
        fragment: Fragment,
    ) -> impl Future<Output = Result<String, SinkError>> + Send {
        let mut stored = self.stored.lock().unwrap();
        let next = stored.len();
        let entry = stored
            .entry(fragment.meta.id.clone())
            .or_insert_with(|| (format!("{next:020}"), fragment));
        let number = entry.0.clone();
        async move { Ok(number) }
    }
}

struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), TransportError>>,
}

impl Server {
    async fn start(
        addr: SocketAddr,
        identity: &ServerIdentity,
        config: IngestConfig,
        sink: Arc<TestSink>,
    ) -> Self {
        // A just-closed endpoint may hold the port for a moment.
        let mut tries = 0;
        let server = loop {
            match IngestServer::bind(addr, identity, config.clone(), sink.clone()) {
                Ok(s) => break s,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "port busy, retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("bind failed: {e}"),
            }
        };
        let addr = server.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(server.run(rx));
        Self { addr, stop, task }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

struct Agent {
    fragments: mpsc::Sender<Fragment>,
    reports: mpsc::Receiver<UplinkEvent>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), TransportError>>,
}

fn uplink_config() -> UplinkConfig {
    UplinkConfig {
        agent: "test-agent".into(),
        pending_fragments_max: 8,
        pending_bytes_max: 1 << 20,
        in_flight_max: 4,
        ack_timeout: Duration::from_secs(3),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..UplinkConfig::default()
    }
}

fn start_agent(addr: SocketAddr, trust: ServerTrust, streams: &[&str]) -> Agent {
    let mut options = UplinkOptions::new(format!("localhost:{}", addr.port()), trust);
    options.uplink = uplink_config();
    options.connect_timeout = Duration::from_secs(1);
    let streams = streams
        .iter()
        .map(|s| StreamOpen {
            stream: name(s),
            epoch: 1,
        })
        .collect();
    let (fragments, rx) = mpsc::channel(4);
    let (reports_tx, reports) = mpsc::channel(64);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_uplink(options, streams, rx, reports_tx, stop_rx));
    Agent {
        fragments,
        reports,
        stop,
        task,
    }
}

impl Agent {
    async fn next_report(&mut self) -> UplinkEvent {
        tokio::time::timeout(WAIT, self.reports.recv())
            .await
            .expect("report in time")
            .expect("report")
    }

    /// Closes the input and waits for `run_uplink` to drain and return.
    async fn finish(self) -> mpsc::Receiver<UplinkEvent> {
        drop(self.fragments);
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        drop(self.stop);
        self.reports
    }
}

fn ca_trust(identity: &ServerIdentity) -> ServerTrust {
    ServerTrust::CaFile(identity.ca_pem_path.clone())
}

fn new_identity(dir: &tempfile::TempDir) -> ServerIdentity {
    load_or_create_server_identity(&dir.path().join("tls"), &["cam.example".into()]).unwrap()
}

/// Sends `fragments` from a task and collects one report per fragment.
async fn send_all(agent: &mut Agent, fragments: Vec<Fragment>) -> Vec<UplinkEvent> {
    let count = fragments.len();
    let tx = agent.fragments.clone();
    let feeder = tokio::spawn(async move {
        for f in fragments {
            tx.send(f).await.unwrap();
        }
    });
    let mut reports = Vec::new();
    while reports.len() < count {
        match agent.next_report().await {
            UplinkEvent::StreamRefused { .. } => {}
            report => reports.push(report),
        }
    }
    feeder.await.unwrap();
    reports
}

fn persisted_ids(reports: &[UplinkEvent]) -> Vec<FragmentId> {
    reports
        .iter()
        .filter_map(|r| match r {
            UplinkEvent::Persisted { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

fn assert_exactly_once(sink: &TestSink, reports: &[UplinkEvent], expected: &[Fragment]) {
    let ids = persisted_ids(reports);
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a fragment was reported twice");
    let stored = sink.stored.lock().unwrap();
    assert_eq!(stored.len(), expected.len());
    for f in expected {
        assert!(unique.contains(&f.meta.id), "{} not reported", f.meta.id);
        assert_eq!(
            stored[&f.meta.id].1, *f,
            "{} stored with other content",
            f.meta.id
        );
    }
}

#[tokio::test]
async fn fifty_fragments_are_persisted_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let identity = new_identity(&dir);
    let sink = Arc::new(TestSink::default());
    let server = Server::start(any_port(), &identity, IngestConfig::default(), sink.clone()).await;
    let mut agent = start_agent(server.addr, ca_trust(&identity), &["cam"]);
    let fragments: Vec<_> = (0..50)
        .map(|s| fragment("cam", s, 20_000 + s as usize))
        .collect();
    let reports = send_all(&mut agent, fragments.clone()).await;
    assert!(reports.iter().all(|r| matches!(
        r,
        UplinkEvent::Persisted {
            fragment_number: Some(_),
            ..
        }
    )));
    assert_exactly_once(&sink, &reports, &fragments);
    agent.finish().await;
    server.stop().await;
}

#[tokio::test]
async fn uplink_survives_a_server_restart_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let identity = new_identity(&dir);
    let sink = Arc::new(TestSink::default());
    let server = Server::start(any_port(), &identity, IngestConfig::default(), sink.clone()).await;
    let addr = server.addr;
    let mut agent = start_agent(addr, ca_trust(&identity), &["cam"]);
    let fragments: Vec<_> = (0..60).map(|s| fragment("cam", s, 5_000)).collect();
    let tx = agent.fragments.clone();
    let feed = fragments.clone();
    let feeder = tokio::spawn(async move {
        for f in feed {
            tx.send(f).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut reports = Vec::new();
    while reports.len() < 20 {
        reports.push(agent.next_report().await);
    }
    server.stop().await;
    let server = Server::start(addr, &identity, IngestConfig::default(), sink.clone()).await;
    while reports.len() < fragments.len() {
        reports.push(agent.next_report().await);
    }
    feeder.await.unwrap();
    assert_exactly_once(&sink, &reports, &fragments);
    agent.finish().await;
    server.stop().await;
}

/// A raw client that speaks the protocol by hand.
async fn raw_connect(addr: SocketAddr, identity: &ServerIdentity) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client(any_port()).unwrap();
    endpoint.set_default_client_config(client_config(&ca_trust(identity), None).unwrap());
    endpoint.connect(addr, "localhost").unwrap().await.unwrap()
}

async fn read_server_messages(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
    count: usize,
) -> Vec<ServerMessage> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while out.len() < count {
        while let Some(msg) = decoder.next_server().unwrap() {
            out.push(msg);
        }
        if out.len() >= count {
            break;
        }
        let n = tokio::time::timeout(WAIT, recv.read(&mut buf))
            .await
            .unwrap()
            .unwrap()
            .expect("more control bytes");
        decoder.push(&buf[..n]).unwrap();
    }
    out
}

#[tokio::test]
async fn garbage_on_the_control_stream_gets_malformed_frame_and_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let identity = new_identity(&dir);
    let sink = Arc::new(TestSink::default());
    let server = Server::start(any_port(), &identity, IngestConfig::default(), sink.clone()).await;

    let bad = raw_connect(server.addr, &identity).await;
    let (mut send, mut recv) = bad.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 5, 0xEE, 1, 2, 3, 4])
        .await
        .unwrap();
    let reply = read_server_messages(&mut recv, &mut FrameDecoder::new(), 1).await;
    assert!(
        matches!(
            reply[0],
            ServerMessage::Error {
                id: None,
                code: ErrorCode::MalformedFrame,
                ..
            }
        ),
        "{reply:?}"
    );
    let closed = tokio::time::timeout(WAIT, bad.closed()).await.unwrap();
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(ErrorCode::MalformedFrame.as_u16().into())),
        "{closed:?}"
    );

    let mut agent = start_agent(server.addr, ca_trust(&identity), &["cam"]);
    let fragments: Vec<_> = (0..5).map(|s| fragment("cam", s, 1000)).collect();
    let reports = send_all(&mut agent, fragments.clone()).await;
    assert_exactly_once(&sink, &reports, &fragments);
    agent.finish().await;
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_fragment_stream_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let identity = new_identity(&dir);
    let sink = Arc::new(TestSink::default());
    let server = Server::start(any_port(), &identity, IngestConfig::default(), sink.clone()).await;
    let connection = raw_connect(server.addr, &identity).await;
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let hello = ClientMessage::Hello {
        version: wire::PROTOCOL_VERSION,
        agent: "raw".into(),
        streams: vec![StreamOpen {
            stream: name("cam"),
            epoch: 1,
        }],
    };
    send.write_all(&wire::encode_client(&hello)).await.unwrap();
    let mut decoder = FrameDecoder::new();
    let welcome = read_server_messages(&mut recv, &mut decoder, 1).await;
    assert!(
        matches!(&welcome[0], ServerMessage::Welcome { resumes } if resumes[0].next_sequence == 0)
    );

    let mut garbage = connection.open_uni().await.unwrap();
    garbage.write_all(&[0, 0, 0, 3, 0x20, 9, 9]).await.unwrap();
    garbage.finish().unwrap();
    let error = read_server_messages(&mut recv, &mut decoder, 1).await;
    assert!(
        matches!(
            error[0],
            ServerMessage::Error {
                id: None,
                code: ErrorCode::MalformedFrame,
                ..
            }
        ),
        "{error:?}"
    );

    // The same connection still takes a good fragment, and a bad checksum is named.
    let good = fragment("cam", 0, 100);
    let mut header = wire::FragmentHeader::for_fragment(&good).unwrap();
    let mut stream = connection.open_uni().await.unwrap();
    stream
        .write_all(&wire::encode_fragment_header(&header))
        .await
        .unwrap();
    stream.write_all(&good.payload).await.unwrap();
    stream.finish().unwrap();
    let acks = read_server_messages(&mut recv, &mut decoder, 2).await;
    assert!(matches!(
        &acks[0],
        ServerMessage::Ack {
            kind: AckKind::Received,
            ..
        }
    ));
    assert!(matches!(
        &acks[1],
        ServerMessage::Ack {
            kind: AckKind::Persisted,
            fragment_number: Some(_),
            ..
        }
    ));

    header.id.sequence = 1;
    header.checksum ^= 1;
    let mut stream = connection.open_uni().await.unwrap();
    stream
        .write_all(&wire::encode_fragment_header(&header))
        .await
        .unwrap();
    stream.write_all(&good.payload).await.unwrap();
    stream.finish().unwrap();
    let error = read_server_messages(&mut recv, &mut decoder, 1).await;
    assert!(
        matches!(&error[0], ServerMessage::Error { id: Some(id), code: ErrorCode::ChecksumMismatch, .. } if id.sequence == 1),
        "{error:?}"
    );
    assert_eq!(sink.stored.lock().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_fragment_is_refused_with_fragment_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let identity = new_identity(&dir);
    let sink = Arc::new(TestSink::default());
    let config = IngestConfig {
        fragment_bytes_max: 1000,
        ..Default::default()
    };
    let server = Server::start(any_port(), &identity, config, sink.clone()).await;
    let mut agent = start_agent(server.addr, ca_trust(&identity), &["cam"]);
    let reports = send_all(
        &mut agent,
        vec![fragment("cam", 0, 5000), fragment("cam", 1, 10)],
    )
    .await;
    assert!(reports.iter().any(|r| matches!(r, UplinkEvent::Refused { id, code: ErrorCode::FragmentTooLarge, .. } if id.sequence == 0)), "{reports:?}");
    assert_eq!(persisted_ids(&reports).len(), 1);
    agent.finish().await;
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_stream_is_refused_and_the_other_stream_flows() {
    let dir = tempfile::tempdir().unwrap();
    let identity = new_identity(&dir);
    let sink = Arc::new(TestSink {
        unknown: HashSet::from([name("nope")]),
        ..Default::default()
    });
    let server = Server::start(any_port(), &identity, IngestConfig::default(), sink.clone()).await;
    let mut agent = start_agent(server.addr, ca_trust(&identity), &["cam", "nope"]);
    let tx = agent.fragments.clone();
    tx.send(fragment("nope", 0, 10)).await.unwrap();
    tx.send(fragment("cam", 0, 10)).await.unwrap();
    let mut reports = Vec::new();
    drop(tx);
    while reports.len() < 3 {
        reports.push(agent.next_report().await);
    }
    assert!(reports.iter().any(|r| matches!(r, UplinkEvent::StreamRefused { stream, code: ErrorCode::UnknownStream, .. } if stream.as_str() == "nope")), "{reports:?}");
    assert!(reports.iter().any(|r| matches!(r, UplinkEvent::Refused { id, code: ErrorCode::UnknownStream, .. } if id.stream.as_str() == "nope")), "{reports:?}");
    assert_eq!(persisted_ids(&reports), vec![fragment("cam", 0, 0).meta.id]);
    agent.finish().await;
    server.stop().await;
}

#[tokio::test]
async fn trust_first_seen_pins_and_then_refuses_another_identity() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (identity_a, identity_b) = (new_identity(&dir_a), new_identity(&dir_b));
    let pin_file = dir_a.path().join("server.pin");
    let trust = ServerTrust::TrustFirstSeen {
        pin_file: pin_file.clone(),
    };
    let sink = Arc::new(TestSink::default());
    let server_a = Server::start(
        any_port(),
        &identity_a,
        IngestConfig::default(),
        sink.clone(),
    )
    .await;
    let server_b = Server::start(
        any_port(),
        &identity_b,
        IngestConfig::default(),
        sink.clone(),
    )
    .await;

    let mut agent = start_agent(server_a.addr, trust.clone(), &["cam"]);
    let reports = send_all(&mut agent, vec![fragment("cam", 0, 10)]).await;
    assert_eq!(persisted_ids(&reports).len(), 1);
    agent.finish().await;
    let pin = std::fs::read_to_string(&pin_file).unwrap();
    assert_eq!(pin.trim().len(), 64);

    let mut endpoint = quinn::Endpoint::client(any_port()).unwrap();
    endpoint.set_default_client_config(client_config(&trust, None).unwrap());
    let refused = endpoint.connect(server_b.addr, "localhost").unwrap().await;
    assert!(refused.is_err(), "a different server identity was accepted");
    let accepted = endpoint.connect(server_a.addr, "localhost").unwrap().await;
    assert!(accepted.is_ok(), "{accepted:?}");
    assert_eq!(std::fs::read_to_string(&pin_file).unwrap(), pin);
    server_a.stop().await;
    server_b.stop().await;
}

#[test]
fn the_identity_is_created_once_with_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let first = new_identity(&dir);
    let second = new_identity(&dir);
    assert_eq!(first.cert_chain, second.cert_chain);
    assert!(first.ca_pem_path.exists());
    #[cfg(unix)]
    for key in ["ca.key", "server.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls").join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
}

#[tokio::test]
async fn raw_loopback_throughput_is_measured() {
    let rate = bench::raw_loopback_throughput(8 * 1024 * 1024)
        .await
        .unwrap();
    assert!(rate > 1_000_000.0, "{rate} bytes/s");
}

// ---------------------------------------------------------------------------------------------
// Device identity (mutual TLS) against a real registry file.

struct Devices {
    _dir: tempfile::TempDir,
    tls: std::path::PathBuf,
    identity: ServerIdentity,
}

impl Devices {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let identity = load_or_create_server_identity(&tls, &[]).unwrap();
        Self {
            _dir: dir,
            tls,
            identity,
        }
    }

    fn config(&self) -> IngestConfig {
        IngestConfig {
            clients: ClientAuth::Devices(Arc::new(DeviceDirectory::new(&self.tls))),
            ..Default::default()
        }
    }

    fn issue(&self, device: &str, streams: &[&str], out: &str) -> ClientIdentity {
        let issued = certs::issue_device(
            &self.tls,
            &DeviceName::new(device).unwrap(),
            streams.iter().map(|s| name(s)).collect(),
            &self.tls.join(out),
            1,
        )
        .unwrap();
        ClientIdentity {
            cert: issued.cert,
            key: issued.key,
        }
    }
}

fn start_device_agent(
    addr: SocketAddr,
    devices: &Devices,
    client: Option<ClientIdentity>,
    streams: &[&str],
) -> Agent {
    let mut options = UplinkOptions::new(
        format!("localhost:{}", addr.port()),
        ca_trust(&devices.identity),
    );
    options.client = client;
    options.uplink = uplink_config();
    options.connect_timeout = Duration::from_secs(1);
    let streams = streams
        .iter()
        .map(|s| StreamOpen {
            stream: name(s),
            epoch: 1,
        })
        .collect();
    let (fragments, rx) = mpsc::channel(4);
    let (reports_tx, reports) = mpsc::channel(64);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_uplink(options, streams, rx, reports_tx, stop_rx));
    Agent {
        fragments,
        reports,
        stop,
        task,
    }
}

/// The uplink's own end: it must stop by itself with NotAuthorized, not retry forever.
async fn refusal_of(agent: Agent) -> String {
    let result = tokio::time::timeout(WAIT, agent.task)
        .await
        .expect("a refused uplink stops by itself")
        .unwrap();
    match result {
        Err(TransportError::NotAuthorized(reason)) => reason,
        other => panic!("expected NotAuthorized, got {other:?}"),
    }
}

#[tokio::test]
async fn a_device_writes_its_streams_and_is_refused_the_others() {
    let devices = Devices::new();
    let client = devices.issue("cam1", &["cam"], "out");
    let sink = Arc::new(TestSink::default());
    let server = Server::start(
        any_port(),
        &devices.identity,
        devices.config(),
        sink.clone(),
    )
    .await;
    let mut agent = start_device_agent(server.addr, &devices, Some(client), &["cam", "other"]);
    let tx = agent.fragments.clone();
    tx.send(fragment("other", 0, 10)).await.unwrap();
    tx.send(fragment("cam", 0, 10)).await.unwrap();
    drop(tx);
    let mut reports = Vec::new();
    while reports.len() < 3 {
        reports.push(agent.next_report().await);
    }
    assert!(reports.iter().any(|r| matches!(r, UplinkEvent::StreamRefused { stream, code: ErrorCode::NotAuthorized, message } if stream.as_str() == "other" && message.contains("cam1"))), "{reports:?}");
    assert_eq!(persisted_ids(&reports), vec![fragment("cam", 0, 0).meta.id]);
    assert_eq!(sink.stored.lock().unwrap().len(), 1);
    agent.finish().await;
    server.stop().await;
}

#[tokio::test]
async fn an_agent_without_a_certificate_is_told_to_get_one() {
    let devices = Devices::new();
    let sink = Arc::new(TestSink::default());
    let server = Server::start(
        any_port(),
        &devices.identity,
        devices.config(),
        sink.clone(),
    )
    .await;
    let agent = start_device_agent(server.addr, &devices, None, &["cam"]);
    let reason = refusal_of(agent).await;
    assert!(
        reason.contains("requires a client certificate") && reason.contains("hydrant certs issue"),
        "{reason}"
    );
    server.stop().await;
}

#[tokio::test]
async fn revoked_and_superseded_certificates_are_refused_without_a_restart() {
    let devices = Devices::new();
    let old = devices.issue("cam1", &["cam"], "old");
    let current = devices.issue("cam1", &["cam"], "new");
    let sink = Arc::new(TestSink::default());
    let server = Server::start(
        any_port(),
        &devices.identity,
        devices.config(),
        sink.clone(),
    )
    .await;

    let reason = refusal_of(start_device_agent(
        server.addr,
        &devices,
        Some(old),
        &["cam"],
    ))
    .await;
    assert!(reason.contains("not registered"), "{reason}");

    let mut agent = start_device_agent(server.addr, &devices, Some(current.clone()), &["cam"]);
    agent.fragments.send(fragment("cam", 0, 10)).await.unwrap();
    assert!(matches!(
        agent.next_report().await,
        UplinkEvent::Persisted { .. }
    ));
    agent.finish().await;

    certs::revoke_device(&devices.tls, &DeviceName::new("cam1").unwrap(), 2).unwrap();
    let reason = refusal_of(start_device_agent(
        server.addr,
        &devices,
        Some(current),
        &["cam"],
    ))
    .await;
    assert!(reason.contains("cam1 is revoked"), "{reason}");
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_in_the_handshake() {
    let devices = Devices::new();
    let foreign = Devices::new();
    let client = foreign.issue("cam1", &["cam"], "out");
    let sink = Arc::new(TestSink::default());
    let server = Server::start(
        any_port(),
        &devices.identity,
        devices.config(),
        sink.clone(),
    )
    .await;
    let reason = refusal_of(start_device_agent(
        server.addr,
        &devices,
        Some(client),
        &["cam"],
    ))
    .await;
    assert!(
        reason.contains("refused this device's certificate"),
        "{reason}"
    );
    assert!(sink.stored.lock().unwrap().is_empty());
    server.stop().await;
}
