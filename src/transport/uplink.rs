//! The agent's QUIC shell around [`Uplink`]: connects, runs the control stream, sends each
//! fragment on its own unidirectional stream, feeds acks and timeouts to the core and
//! forwards its reports. Every decision (what to send, when to reconnect) is the core's.
//!
//! Priorities: each fragment stream gets the QUIC priority of its class (live above
//! backfill), so that when the link is the bottleneck the live stream's bytes go first. A
//! backfill channel, when given, is read only while the core has backfill room. An abandoned
//! fragment's stream is reset. At shutdown the shell keeps sending what it holds for at most
//! `shutdown_flush`, then closes; whatever is left stays in the spool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Connection, RecvStream, SendStream, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::fragment::{Fragment, FragmentId};
use crate::wire::{
    self, ErrorCode, FragmentHeader, FrameDecoder, Priority, StreamOpen, Uplink, UplinkConfig,
    UplinkError, UplinkEvent,
};

use super::metrics::UplinkMetrics;

use super::identity::{read_certs, read_key, root_store};
use super::{TransportError, install_crypto_provider};

/// How the agent decides to trust the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerTrust {
    /// Certificates signed by the CA in this PEM file (the server's `ca.pem`).
    CaFile(PathBuf),
    /// Development mode: trust the first certificate seen, pin its SHA-256 in `pin_file`, and
    /// from then on accept only that certificate.
    TrustFirstSeen { pin_file: PathBuf },
}

/// The agent's device certificate and key (PEM files from `hydrant certs issue`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where and how the agent sends.
#[derive(Clone, Debug)]
pub struct UplinkOptions {
    /// `host:port`; the host is also the TLS server name.
    pub server: String,
    pub trust: ServerTrust,
    /// The device certificate presented to the server; `None` only for an open-mode server.
    pub client: Option<ClientIdentity>,
    pub uplink: UplinkConfig,
    /// Longest wait for one connection attempt.
    pub connect_timeout: Duration,
    /// At shutdown, how long to keep sending what is held before closing.
    pub shutdown_flush: Duration,
    /// Counters for the metrics endpoint, shared by every uplink of the agent.
    pub metrics: Arc<UplinkMetrics>,
}

/// A fragment handed to the uplink with its class.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub fragment: Fragment,
    pub priority: Priority,
    /// A durable copy exists (the spool): a stale live fragment may be abandoned on the wire.
    pub spooled: bool,
}

impl From<Fragment> for Outgoing {
    fn from(fragment: Fragment) -> Self {
        Self {
            fragment,
            priority: Priority::Live,
            spooled: false,
        }
    }
}

impl UplinkOptions {
    pub fn new(server: impl Into<String>, trust: ServerTrust) -> Self {
        Self {
            server: server.into(),
            trust,
            client: None,
            uplink: UplinkConfig::default(),
            connect_timeout: Duration::from_secs(5),
            shutdown_flush: Duration::ZERO,
            metrics: Arc::default(),
        }
    }
}

/// Events from the I/O tasks to the loop; `generation` tells stale connections apart.
#[derive(Debug)]
enum Io {
    Connected {
        generation: u64,
        connection: Connection,
        control: SendStream,
        recv: RecvStream,
    },
    ConnectFailed {
        generation: u64,
        error: String,
    },
    Message {
        generation: u64,
        msg: wire::ServerMessage,
    },
    Lost {
        generation: u64,
        reason: String,
    },
    SendFailed {
        generation: u64,
        id: FragmentId,
    },
    /// The server refused this agent's identity: retrying cannot help.
    Refused {
        reason: String,
    },
}

/// What the agent is told when the server wants a certificate it did not present.
const NO_CERTIFICATE_MESSAGE: &str = "the server requires a client certificate: issue one with `hydrant certs issue --device NAME --streams A,B --out DIR` on the server and pass --cert DIR/NAME.crt --key DIR/NAME.key (or the agent config keys cert and key)";

/// TLS alerts (RFC 8446) by which a server refuses a client certificate. A certificate from
/// another Hydrant CA (same issuer name, other key) fails its signature check: decrypt_error.
const ALERT_BAD_CERTIFICATE: u8 = 42;
const ALERT_UNSUPPORTED_CERTIFICATE: u8 = 43;
const ALERT_CERTIFICATE_REVOKED: u8 = 44;
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const ALERT_CERTIFICATE_UNKNOWN: u8 = 46;
const ALERT_UNKNOWN_CA: u8 = 48;
const ALERT_DECRYPT_ERROR: u8 = 51;
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;

/// Whether the server closed the connection because of who this agent is, and in what words.
fn identity_refusal(error: &quinn::ConnectionError, has_certificate: bool) -> Option<String> {
    match error {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(ErrorCode::NotAuthorized.as_u16().into()) =>
        {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            Some(if has_certificate {
                format!("the server refused this device: {reason}")
            } else {
                NO_CERTIFICATE_MESSAGE.to_owned()
            })
        }
        quinn::ConnectionError::ConnectionClosed(close) => {
            let alert = |a: u8| close.error_code == quinn::TransportErrorCode::crypto(a);
            if alert(ALERT_CERTIFICATE_REQUIRED)
                || (!has_certificate && alert(ALERT_BAD_CERTIFICATE))
            {
                Some(NO_CERTIFICATE_MESSAGE.to_owned())
            } else if has_certificate
                && [
                    ALERT_BAD_CERTIFICATE,
                    ALERT_UNSUPPORTED_CERTIFICATE,
                    ALERT_CERTIFICATE_REVOKED,
                    ALERT_CERTIFICATE_EXPIRED,
                    ALERT_CERTIFICATE_UNKNOWN,
                    ALERT_UNKNOWN_CA,
                    ALERT_DECRYPT_ERROR,
                ]
                .into_iter()
                .any(alert)
            {
                Some(format!(
                    "the server refused this device's certificate ({close}): was it issued by `hydrant certs issue` with this server's data directory?"
                ))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Queue of I/O events; each connection has at most `in_flight_max` fragment tasks and one
/// reader, so this bound only paces them.
const IO_QUEUE_MAX: usize = 1024;

struct Live {
    connection: Connection,
    control: SendStream,
}

struct Shell {
    core: Uplink,
    endpoint: quinn::Endpoint,
    server_addr: SocketAddr,
    server_name: String,
    connect_timeout: Duration,
    generation: u64,
    live: Option<Live>,
    io_tx: mpsc::Sender<Io>,
    reports: mpsc::Sender<UplinkEvent>,
    has_certificate: bool,
    /// Set when the server refused this agent's identity: the uplink stops with it.
    refused: Option<String>,
    metrics: Arc<UplinkMetrics>,
    /// Cancels the send task of a fragment on the wire (to reset an abandoned one's stream).
    sending: HashMap<FragmentId, oneshot::Sender<()>>,
    /// Pending counts last added to the shared gauges.
    reported_pending: (i64, i64),
}

/// Sends every fragment from `fragments` until the server persisted (or refused) it. Returns
/// when `fragments` is closed and everything is drained, or when `shutdown` turns true. A
/// server that refuses this agent's identity ends it with [`TransportError::NotAuthorized`].
pub async fn run_uplink<T: Into<Outgoing>>(
    options: UplinkOptions,
    streams: Vec<StreamOpen>,
    fragments: mpsc::Receiver<T>,
    reports: mpsc::Sender<UplinkEvent>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), TransportError> {
    run_uplink_with_backfill(options, streams, fragments, None, reports, shutdown).await
}

/// [`run_uplink`] with a second input of backfill fragments (spooled, sent at low priority
/// within the bandwidth cap), read only while the core has backfill room. Returns when both
/// inputs are closed and everything is drained, or at shutdown once what is held has been
/// persisted or `shutdown_flush` has passed.
pub async fn run_uplink_with_backfill<T: Into<Outgoing>>(
    options: UplinkOptions,
    streams: Vec<StreamOpen>,
    mut fragments: mpsc::Receiver<T>,
    mut backfill: Option<mpsc::Receiver<Fragment>>,
    reports: mpsc::Sender<UplinkEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), TransportError> {
    let (io_tx, mut io_rx) = mpsc::channel(IO_QUEUE_MAX);
    let mut shell = Shell::new(&options, streams, io_tx, reports).await?;
    let mut waiting: Option<Outgoing> = None;
    let mut input_open = true;
    let mut flush_until: Option<tokio::time::Instant> = None;
    let result = loop {
        shell.take_waiting(&mut waiting).await;
        shell.run_events().await;
        shell.update_gauges();
        if let Some(reason) = shell.refused.take() {
            shell.close("not authorised");
            break Err(TransportError::NotAuthorized(reason));
        }
        let inputs_done =
            (!input_open || flush_until.is_some()) && backfill.is_none() && waiting.is_none();
        if inputs_done && shell.core.is_drained() {
            shell.close("drained");
            break Ok(());
        }
        let backfill_room = waiting.is_none() && shell.core.has_backfill_room(0);
        let wake = shell
            .core
            .poll_timeout()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = super::stopped(&mut shutdown), if flush_until.is_none() => {
                // Stop taking backfill (it stays in the spool) and flush what is held.
                backfill = None;
                flush_until = Some(tokio::time::Instant::now() + options.shutdown_flush);
            }
            _ = sleep_until(flush_until) => {
                tracing::info!(held = shell.core.pending_fragments(), "shutdown flush deadline reached; the rest stays in the spool");
                shell.close("shutting down");
                break Ok(());
            }
            io = io_rx.recv() => if let Some(io) = io { shell.handle_io(io) },
            fragment = fragments.recv(), if input_open && waiting.is_none() => match fragment {
                Some(f) => waiting = Some(f.into()),
                None => input_open = false,
            },
            fragment = recv_backfill(&mut backfill), if backfill_room => match fragment {
                Some(fragment) => waiting = Some(Outgoing { fragment, priority: Priority::Backfill, spooled: true }),
                None => backfill = None,
            },
            _ = sleep_until(wake) => shell.core.handle_timeout(Instant::now()),
        }
    };
    shell.clear_gauges();
    result
}

async fn recv_backfill(backfill: &mut Option<mpsc::Receiver<Fragment>>) -> Option<Fragment> {
    match backfill {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Shell {
    async fn new(
        options: &UplinkOptions,
        streams: Vec<StreamOpen>,
        io_tx: mpsc::Sender<Io>,
        reports: mpsc::Sender<UplinkEvent>,
    ) -> Result<Self, TransportError> {
        let (server_addr, server_name) = resolve(&options.server).await?;
        let bind: SocketAddr = if server_addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .map_err(|_| TransportError::BadServerAddress(options.server.clone()))?;
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| TransportError::io("binding the agent's UDP socket", e))?;
        endpoint.set_default_client_config(client_config(&options.trust, options.client.as_ref())?);
        let seed = rand::random::<u64>();
        Ok(Self {
            core: Uplink::new(options.uplink.clone(), streams, seed, Instant::now()),
            endpoint,
            server_addr,
            server_name,
            connect_timeout: options.connect_timeout,
            generation: 0,
            live: None,
            io_tx,
            reports,
            has_certificate: options.client.is_some(),
            refused: None,
            metrics: options.metrics.clone(),
            sending: HashMap::new(),
            reported_pending: (0, 0),
        })
    }

    /// Brings the shared pending gauges in line with this core.
    fn update_gauges(&mut self) {
        let now = (
            i64::try_from(self.core.pending_fragments()).unwrap_or(i64::MAX),
            i64::try_from(self.core.pending_bytes()).unwrap_or(i64::MAX),
        );
        let (f, b) = self.reported_pending;
        if now != (f, b) {
            self.metrics.pending_delta(now.0 - f, now.1 - b);
            self.reported_pending = now;
        }
        if let Some(live) = &self.live {
            self.metrics.set_rtt(live.connection.rtt());
        }
    }

    /// Takes this uplink's share out of the shared gauges when it stops.
    fn clear_gauges(&mut self) {
        let (f, b) = self.reported_pending;
        self.metrics.pending_delta(-f, -b);
        self.reported_pending = (0, 0);
    }

    /// Pushes the held fragment once the core has room; anything the core can never take is
    /// reported refused.
    async fn take_waiting(&mut self, waiting: &mut Option<Outgoing>) {
        let Some(outgoing) = waiting.take() else {
            return;
        };
        let id = outgoing.fragment.meta.id.clone();
        let pushed = self.core.push_with(
            outgoing.fragment.clone(),
            outgoing.priority,
            outgoing.spooled,
        );
        let code = match pushed {
            Ok(()) => return,
            Err(UplinkError::Full { .. } | UplinkError::BackfillFull(_)) => {
                *waiting = Some(outgoing);
                return;
            }
            Err(UplinkError::FragmentTooLarge { .. }) => ErrorCode::FragmentTooLarge,
            Err(UplinkError::UnknownStream(_)) => ErrorCode::UnknownStream,
            Err(UplinkError::StreamRefused { code, .. }) => code,
            Err(UplinkError::Duplicate(_)) => {
                tracing::warn!(%id, "dropped a fragment pushed twice");
                return;
            }
        };
        let message = "the uplink cannot take this fragment".to_owned();
        let _ = self
            .reports
            .send(UplinkEvent::Refused { id, code, message })
            .await;
    }

    /// Carries out everything the core asked for.
    async fn run_events(&mut self) {
        while let Some(event) = self.core.poll_event() {
            match event {
                UplinkEvent::Connect => self.connect(),
                UplinkEvent::SendControl(msg) => self.send_control(&msg).await,
                UplinkEvent::SendFragment(id) => self.send_fragment(id),
                report => {
                    self.on_report(&report);
                    // A closed report channel means nobody listens; sending goes on.
                    let _ = self.reports.send(report).await;
                }
            }
        }
    }

    /// Bookkeeping for a report before it goes to the owner.
    fn on_report(&mut self, report: &UplinkEvent) {
        match report {
            UplinkEvent::Abandoned(id) => {
                self.metrics.abandoned();
                tracing::debug!(%id, "abandoned a stale live fragment on the wire; its spooled copy stays");
                if let Some(cancel) = self.sending.remove(id) {
                    let _ = cancel.send(());
                }
            }
            UplinkEvent::Persisted { id, .. } | UplinkEvent::Refused { id, .. } => {
                self.sending.remove(id);
            }
            _ => {}
        }
    }

    fn connect(&mut self) {
        self.close("reconnecting");
        self.generation += 1;
        let generation = self.generation;
        let connecting = self.endpoint.connect(self.server_addr, &self.server_name);
        let (io, timeout) = (self.io_tx.clone(), self.connect_timeout);
        let has_certificate = self.has_certificate;
        tokio::spawn(async move {
            let attempt = async {
                let refused =
                    |e: quinn::ConnectionError| match identity_refusal(&e, has_certificate) {
                        Some(reason) => Io::Refused { reason },
                        None => Io::ConnectFailed {
                            generation,
                            error: e.to_string(),
                        },
                    };
                let connecting = connecting.map_err(|e| Io::ConnectFailed {
                    generation,
                    error: e.to_string(),
                })?;
                let connection = connecting.await.map_err(refused)?;
                let (control, recv) = connection.open_bi().await.map_err(refused)?;
                Ok::<_, Io>((connection, control, recv))
            };
            let event = match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok((connection, control, recv))) => Io::Connected {
                    generation,
                    connection,
                    control,
                    recv,
                },
                Ok(Err(event)) => event,
                Err(_) => Io::ConnectFailed {
                    generation,
                    error: "timed out".into(),
                },
            };
            let _ = io.send(event).await;
        });
    }

    fn close(&mut self, reason: &str) {
        self.sending.clear();
        if let Some(live) = self.live.take() {
            live.connection
                .close(VarInt::from_u32(0), reason.as_bytes());
        }
    }

    async fn send_control(&mut self, msg: &wire::ClientMessage) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if let Err(e) = live.control.write_all(&wire::encode_client(msg)).await {
            if let quinn::WriteError::ConnectionLost(lost) = &e {
                if let Some(reason) = identity_refusal(lost, self.has_certificate) {
                    self.refused = Some(reason);
                    return;
                }
            }
            tracing::warn!(error = %e, "writing the control stream failed");
            self.lost(self.generation, e.to_string());
        }
    }

    fn send_fragment(&mut self, id: FragmentId) {
        let (Some(live), Some(fragment)) = (self.live.as_ref(), self.core.fragment(&id)) else {
            self.core.handle_send_failed(&id, Instant::now());
            return;
        };
        let (connection, fragment) = (live.connection.clone(), fragment.clone());
        let (io, generation) = (self.io_tx.clone(), self.generation);
        let priority = self.core.priority(&id).unwrap_or(Priority::Live);
        self.metrics.sent(
            priority == Priority::Backfill,
            fragment.payload.len() as u64,
        );
        let (cancel_tx, cancel_rx) = oneshot::channel();
        self.sending.insert(id.clone(), cancel_tx);
        tokio::spawn(async move {
            if let Err(e) = send_fragment(&connection, &fragment, priority, cancel_rx).await {
                tracing::debug!(%id, error = %e, "sending a fragment failed");
                let _ = io.send(Io::SendFailed { generation, id }).await;
            }
        });
    }

    fn handle_io(&mut self, io: Io) {
        let now = Instant::now();
        match io {
            Io::Connected {
                generation,
                connection,
                control,
                recv,
            } if generation == self.generation => {
                tracing::info!(server = %self.server_addr, "connected to the server");
                self.metrics.connected();
                let reader = ControlReader {
                    io: self.io_tx.clone(),
                    generation,
                    has_certificate: self.has_certificate,
                };
                tokio::spawn(reader.run(recv));
                self.live = Some(Live {
                    connection,
                    control,
                });
                self.core.handle_connected(now);
            }
            Io::Connected { connection, .. } => connection.close(VarInt::from_u32(0), b"stale"),
            Io::ConnectFailed { generation, error } => {
                tracing::warn!(server = %self.server_addr, %error, "connecting to the server failed");
                self.lost(generation, error);
            }
            Io::Message {
                msg:
                    wire::ServerMessage::Error {
                        id: None,
                        code: ErrorCode::NotAuthorized,
                        message,
                    },
                ..
            } => self.refused = Some(self.refusal_text(message)),
            Io::Refused { reason } => self.refused = Some(reason),
            Io::Message { generation, msg } if generation == self.generation => {
                self.core.handle_message(msg, now)
            }
            Io::Lost { generation, reason } => self.lost(generation, reason),
            Io::SendFailed { generation, id } if generation == self.generation => {
                self.core.handle_send_failed(&id, now)
            }
            Io::Message { .. } | Io::SendFailed { .. } => {}
        }
    }

    fn refusal_text(&self, message: String) -> String {
        if self.has_certificate {
            format!("the server refused this device: {message}")
        } else {
            NO_CERTIFICATE_MESSAGE.to_owned()
        }
    }

    fn lost(&mut self, generation: u64, reason: String) {
        if generation != self.generation {
            return;
        }
        tracing::info!(%reason, "connection to the server lost");
        self.metrics.reconnected();
        self.close("lost");
        self.core.handle_connection_lost(Instant::now());
    }
}

/// QUIC application code of a fragment stream reset because the fragment was abandoned.
const STREAM_RESET_ABANDONED: u32 = 1;

/// Opens a unidirectional stream at the class's priority: header frame, payload, finish. A
/// cancel (the fragment was abandoned) resets the stream instead.
async fn send_fragment(
    connection: &Connection,
    fragment: &Fragment,
    priority: Priority,
    cancel: oneshot::Receiver<()>,
) -> Result<(), TransportError> {
    let header = FragmentHeader::for_fragment(fragment)
        .ok_or_else(|| TransportError::QuicConfig("fragment payload exceeds 4 GiB".into()))?;
    let mut stream = connection.open_uni().await?;
    // Only fails on a stream already closed, which the writes below report.
    let _ = stream.set_priority(priority.stream_priority());
    let write = async {
        stream
            .write_all(&wire::encode_fragment_header(&header))
            .await?;
        stream.write_all(&fragment.payload).await?;
        Ok::<_, TransportError>(())
    };
    tokio::select! {
        written = write => written?,
        Ok(()) = cancel => {
            let _ = stream.reset(VarInt::from_u32(STREAM_RESET_ABANDONED));
            return Ok(());
        }
    }
    stream
        .finish()
        .map_err(|e| TransportError::Read(e.to_string()))?;
    Ok(())
}

/// Reads one connection's control stream.
struct ControlReader {
    io: mpsc::Sender<Io>,
    generation: u64,
    has_certificate: bool,
}

impl ControlReader {
    /// Decodes server messages from the control stream until it ends or breaks.
    async fn run(self, mut recv: RecvStream) {
        let generation = self.generation;
        let mut decoder = FrameDecoder::new();
        let mut buf = [0u8; 4096];
        let event = loop {
            match decoder.next_server() {
                Ok(Some(msg)) => {
                    if self.io.send(Io::Message { generation, msg }).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => break self.lost(format!("bad frame from the server: {e}")),
            }
            let room = decoder.space().min(buf.len());
            match recv.read(&mut buf[..room]).await {
                Ok(Some(n)) => {
                    if let Err(e) = decoder.push(&buf[..n]) {
                        break self.lost(e.to_string());
                    }
                }
                Ok(None) => break self.lost("control stream finished".to_owned()),
                Err(quinn::ReadError::ConnectionLost(e)) => {
                    break match identity_refusal(&e, self.has_certificate) {
                        Some(reason) => Io::Refused { reason },
                        None => self.lost(e.to_string()),
                    };
                }
                Err(e) => break self.lost(e.to_string()),
            }
        };
        let _ = self.io.send(event).await;
    }

    fn lost(&self, reason: String) -> Io {
        Io::Lost {
            generation: self.generation,
            reason,
        }
    }
}

async fn resolve(server: &str) -> Result<(SocketAddr, String), TransportError> {
    let bad = || TransportError::BadServerAddress(server.to_owned());
    let (host, _port) = server.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addr = tokio::net::lookup_host(server)
        .await
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)?;
    Ok((addr, host))
}

pub(super) fn client_config(
    trust: &ServerTrust,
    client: Option<&ClientIdentity>,
) -> Result<quinn::ClientConfig, TransportError> {
    install_crypto_provider();
    let builder = rustls::ClientConfig::builder();
    let builder = match trust {
        ServerTrust::CaFile(path) => builder.with_root_certificates(root_store(path)?),
        ServerTrust::TrustFirstSeen { pin_file } => {
            tracing::warn!(pin_file = %pin_file.display(), "development mode: trusting the first server certificate seen and pinning it");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier::new(pin_file.clone())))
        }
    };
    let mut tls = match client {
        Some(id) => builder.with_client_auth_cert(read_certs(&id.cert)?, read_key(&id.key)?)?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::QuicConfig(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Trust on first use: pins the SHA-256 of the first server certificate seen.
#[derive(Debug)]
struct PinVerifier {
    pin_file: PathBuf,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    fn new(pin_file: PathBuf) -> Self {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        Self {
            pin_file,
            algorithms,
        }
    }

    fn check_or_pin(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let seen = hex(&Sha256::digest(cert.as_ref()));
        match std::fs::read_to_string(&self.pin_file) {
            Ok(pinned) if pinned.trim() == seen => Ok(()),
            Ok(_) => Err(rustls::Error::General(format!(
                "server certificate {seen} does not match the pin in {}",
                self.pin_file.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(sha256 = %seen, pin_file = %self.pin_file.display(), "development mode: pinned the server certificate seen first");
                std::fs::write(&self.pin_file, format!("{seen}\n")).map_err(|e| {
                    rustls::Error::General(format!("writing the pin file failed: {e}"))
                })
            }
            Err(e) => Err(rustls::Error::General(format!(
                "reading the pin file failed: {e}"
            ))),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check_or_pin(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
