//! The server's QUIC ingest endpoint: one task per connection runs the control stream and
//! accepts fragment streams; each fragment stream is read (bounded), checked, persisted
//! through the [`FragmentSink`] and acknowledged on the control stream.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::fragment::{Fragment, FragmentMeta, StreamName};
use crate::wire::{
    self, AckKind, ClientMessage, ErrorCode, FRAGMENT_HEADER_BYTES_MAX, FRAME_PREFIX_BYTES,
    FragmentHeader, FrameDecoder, IngestLimits, IngestSession, ServerMessage, StreamResume,
    WireError,
};

use super::devices::{DeviceDirectory, DeviceGrant};
use super::{ServerIdentity, TransportError, identity, install_crypto_provider};

/// Which agents may connect.
#[derive(Clone, Debug, Default)]
pub enum ClientAuth {
    /// Development mode: no client certificate; every agent may write every stream.
    #[default]
    Open,
    /// A client certificate signed by the server's CA and registered as a device that is not
    /// revoked; each device writes only its streams.
    Devices(Arc<DeviceDirectory>),
}

/// Where fragments go: implemented by the server over its store.
pub trait FragmentSink: Send + Sync + 'static {
    /// Opens (or creates) a stream for a producer epoch; returns the next sequence to send:
    /// every sequence below it is persisted.
    fn open_stream(
        &self,
        stream: &StreamName,
        epoch: u64,
    ) -> impl Future<Output = Result<u64, SinkError>> + Send;
    /// Stores a fragment durably; returns its fragment number. A duplicate returns the
    /// number stored before.
    fn persist(&self, fragment: Fragment)
    -> impl Future<Output = Result<String, SinkError>> + Send;
}

/// Why the sink refused; the code goes back to the agent as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SinkError {
    pub code: ErrorCode,
    pub message: String,
}

/// Limits of the ingest endpoint.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    pub fragment_bytes_max: u32,
    pub fragment_duration_ms_max: u32,
    pub connections_max: usize,
    pub streams_per_connection_max: usize,
    /// Concurrent fragment streams per connection (QUIC stream credit).
    pub fragment_streams_per_connection_max: u32,
    /// Control messages queued for one connection before fragment tasks wait.
    pub control_queue_max: usize,
    /// Time an agent has to open the control stream and send `Hello`.
    pub hello_timeout_ms: u64,
    /// Time one fragment stream may take to arrive completely.
    pub fragment_read_timeout_ms: u64,
    /// A connection without traffic for this long is closed.
    pub idle_timeout_ms: u64,
    /// On shutdown, how long persists in flight may take to finish.
    pub shutdown_grace_ms: u64,
    /// Which agents may connect and what they may write.
    pub clients: ClientAuth,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            fragment_bytes_max: 64 * 1024 * 1024,
            fragment_duration_ms_max: 20_000,
            connections_max: 256,
            streams_per_connection_max: 64,
            fragment_streams_per_connection_max: 32,
            control_queue_max: 256,
            hello_timeout_ms: 10_000,
            fragment_read_timeout_ms: 60_000,
            idle_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            clients: ClientAuth::Open,
        }
    }
}

impl IngestConfig {
    fn limits(&self) -> IngestLimits {
        IngestLimits {
            fragment_bytes_max: self.fragment_bytes_max,
            fragment_duration_ms_max: self.fragment_duration_ms_max,
            streams_per_connection_max: self.streams_per_connection_max,
        }
    }
}

/// Application close codes: the `ErrorCode` of the reason, or this one for a clean shutdown.
const CLOSE_SHUTDOWN: u32 = 0;

/// The QUIC ingest endpoint.
#[derive(Debug)]
pub struct IngestServer<S> {
    endpoint: quinn::Endpoint,
    config: Arc<IngestConfig>,
    sink: Arc<S>,
}

impl<S: FragmentSink> IngestServer<S> {
    /// Binds the UDP socket and prepares TLS.
    pub fn bind(
        addr: SocketAddr,
        identity: &ServerIdentity,
        config: IngestConfig,
        sink: Arc<S>,
    ) -> Result<Self, TransportError> {
        let server_config = server_config(identity, &config)?;
        let endpoint = quinn::Endpoint::server(server_config, addr)
            .map_err(|e| TransportError::io(format!("binding QUIC on {addr}"), e))?;
        Ok(Self {
            endpoint,
            config: Arc::new(config),
            sink,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.endpoint
            .local_addr()
            .map_err(|e| TransportError::io("reading the QUIC address", e))
    }

    /// Serves until `shutdown` turns true: then stops accepting, lets persists in flight
    /// finish (within `shutdown_grace_ms`) and closes every connection.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), TransportError> {
        let slots = Arc::new(Semaphore::new(self.config.connections_max));
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = super::stopped(&mut shutdown) => break,
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(remote = %incoming.remote_address(), "refused a connection: connections_max reached");
                        incoming.refuse();
                        continue;
                    };
                    let (config, sink, stop) = (self.config.clone(), self.sink.clone(), shutdown.clone());
                    connections.spawn(async move {
                        serve_incoming(incoming, config, sink, stop).await;
                        drop(slot);
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        self.endpoint.set_server_config(None);
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        if tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                grace_ms = self.config.shutdown_grace_ms,
                "ingest shutdown deadline passed with persists in flight"
            );
        }
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        Ok(())
    }
}

fn server_config(
    identity: &ServerIdentity,
    config: &IngestConfig,
) -> Result<quinn::ServerConfig, TransportError> {
    install_crypto_provider();
    let builder = rustls::ServerConfig::builder();
    let builder = match &config.clients {
        ClientAuth::Open => builder.with_no_client_auth(),
        ClientAuth::Devices(_) => {
            let roots = identity::root_store(&identity.ca_pem_path)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| TransportError::QuicConfig(format!("client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut tls =
        builder.with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TransportError::QuicConfig(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(1));
    transport
        .max_concurrent_uni_streams(VarInt::from_u32(config.fragment_streams_per_connection_max));
    let idle = Duration::from_millis(config.idle_timeout_ms);
    transport
        .max_idle_timeout(Some(idle.try_into().map_err(|_| {
            TransportError::QuicConfig("idle_timeout_ms is too large".into())
        })?));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

async fn serve_incoming<S: FragmentSink>(
    incoming: quinn::Incoming,
    config: Arc<IngestConfig>,
    sink: Arc<S>,
    shutdown: watch::Receiver<bool>,
) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            // A refused client certificate ends here, as a TLS alert the agent reads.
            tracing::info!(%remote, error = %e, "agent handshake failed");
            return;
        }
    };
    let peer = Peer::of(&connection, &config.clients);
    if let Err(refusal) = peer.authorise() {
        tracing::warn!(%remote, reason = %refusal, "refused an agent");
        connection.close(
            VarInt::from_u32(ErrorCode::NotAuthorized.as_u16().into()),
            refusal.as_bytes(),
        );
        return;
    }
    tracing::info!(%remote, device = %peer.describe(), "agent connected");
    let reason = serve_connection(&connection, config, sink, peer, shutdown).await;
    tracing::info!(%remote, reason = %reason.1, "agent connection ended");
    connection.close(VarInt::from_u32(reason.0), reason.1.as_bytes());
}

/// Runs one connection to its end; returns the close code and reason.
async fn serve_connection<S: FragmentSink>(
    connection: &Connection,
    config: Arc<IngestConfig>,
    sink: Arc<S>,
    peer: Peer,
    mut shutdown: watch::Receiver<bool>,
) -> (u32, String) {
    let hello_timeout = Duration::from_millis(config.hello_timeout_ms);
    let opened = tokio::select! {
        // An agent that never says hello must not hold up a shutdown.
        _ = super::stopped(&mut shutdown) => {
            return (CLOSE_SHUTDOWN, "server shutting down".to_owned());
        }
        opened = tokio::time::timeout(hello_timeout, open_control(connection, &config, sink.as_ref(), &peer)) => opened,
    };
    let (session, send, mut recv, mut decoder) = match opened {
        Ok(Ok(parts)) => parts,
        Ok(Err(close)) => return close,
        Err(_) => {
            return (
                ErrorCode::ProtocolViolation.as_u16().into(),
                "no hello in time".into(),
            );
        }
    };
    let (control_tx, control_rx) = mpsc::channel(config.control_queue_max);
    let writer = tokio::spawn(write_control(send, control_rx));
    let session = Arc::new(session);
    let mut fragments = JoinSet::new();
    let close = loop {
        tokio::select! {
            _ = super::stopped(&mut shutdown) => break (CLOSE_SHUTDOWN, "server shutting down".to_owned()),
            stream = connection.accept_uni() => match stream {
                Ok(stream) => {
                    let task = FragmentTask { session: session.clone(), sink: sink.clone(), control: control_tx.clone(), config: config.clone() };
                    fragments.spawn(task.run(stream));
                }
                Err(e) => break (CLOSE_SHUTDOWN, format!("connection ended: {e}")),
            },
            more = read_control(&mut recv, &mut decoder) => {
                let error = match more {
                    Ok(Some(_)) => WireError::rejected(ErrorCode::ProtocolViolation, "hello sent twice"),
                    Ok(None) => break (CLOSE_SHUTDOWN, "control stream finished".to_owned()),
                    Err(e) => e,
                };
                break fail_connection(&control_tx, error).await;
            }
            Some(_) = fragments.join_next(), if !fragments.is_empty() => {}
        }
    };
    // Persists in flight finish (the run loop bounds this with its grace deadline).
    while fragments.join_next().await.is_some() {}
    drop(control_tx);
    let _ = writer.await;
    close
}

/// Sends an Error for the whole connection; returns the close code and reason.
async fn fail_connection(control: &mpsc::Sender<ServerMessage>, error: WireError) -> (u32, String) {
    let code = error.code();
    let message = error.to_string();
    let _ = control
        .send(ServerMessage::Error {
            id: None,
            code,
            message: message.clone(),
        })
        .await;
    (code.as_u16().into(), message)
}

type ControlParts = (IngestSession, SendStream, RecvStream, FrameDecoder);

/// Accepts the control stream, reads `Hello`, resolves its streams and sends the reply.
async fn open_control<S: FragmentSink>(
    connection: &Connection,
    config: &IngestConfig,
    sink: &S,
    peer: &Peer,
) -> Result<ControlParts, (u32, String)> {
    let (mut send, mut recv) = connection
        .accept_bi()
        .await
        .map_err(|e| (CLOSE_SHUTDOWN, format!("no control stream: {e}")))?;
    let mut decoder = FrameDecoder::new();
    let mut session = IngestSession::new(config.limits());
    let hello = read_control(&mut recv, &mut decoder)
        .await
        .and_then(|hello| hello.ok_or(WireError::Truncated));
    // The registry is consulted again here: a device revoked since the handshake is refused.
    let grant = hello.and_then(|hello| {
        let streams = session.handle_hello(&hello)?;
        let grant = peer.authorise().map_err(|refusal| {
            tracing::warn!(device = %peer.describe(), reason = %refusal, "refused an agent at hello");
            WireError::rejected(ErrorCode::NotAuthorized, refusal)
        })?;
        Ok((streams, grant))
    });
    let (streams, grant) = match grant {
        Ok(parts) => parts,
        Err(error) => return Err(reply_error_and_close(&mut send, error).await),
    };
    let (streams, forbidden) = split_by_grant(streams, grant.as_ref());
    let (resumes, mut refusals) = resolve(sink, streams).await;
    refusals.extend(forbidden);
    for msg in session.welcome(resumes, refusals) {
        write_message(&mut send, &msg)
            .await
            .map_err(|e| (CLOSE_SHUTDOWN, format!("writing welcome failed: {e}")))?;
    }
    Ok((session, send, recv, decoder))
}

/// Writes a connection-level Error and waits briefly for the agent to read it before the
/// connection closes (closing at once would discard it).
async fn reply_error_and_close(send: &mut SendStream, error: WireError) -> (u32, String) {
    let code = error.code();
    let message = error.to_string();
    let msg = ServerMessage::Error {
        id: None,
        code,
        message: message.clone(),
    };
    if write_message(send, &msg).await.is_ok() && send.finish().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    }
    (code.as_u16().into(), message)
}

/// Splits the `Hello`'s streams into those the device may write and refusals for the others
/// (`None`: open mode, every stream).
fn split_by_grant(
    streams: Vec<wire::StreamOpen>,
    grant: Option<&DeviceGrant>,
) -> (Vec<wire::StreamOpen>, Vec<(StreamName, ErrorCode, String)>) {
    let Some(grant) = grant else {
        return (streams, Vec::new());
    };
    let (allowed, forbidden): (Vec<_>, Vec<_>) =
        streams.into_iter().partition(|s| grant.permits(&s.stream));
    let refusals = forbidden
        .into_iter()
        .map(|s| {
            let message = format!(
                "device {} may not write stream {}: issue its certificate again with this stream in --streams",
                grant.device, s.stream
            );
            tracing::warn!(device = %grant.device, stream = %s.stream, "refused a stream the device may not write");
            (s.stream, ErrorCode::NotAuthorized, message)
        })
        .collect();
    (allowed, refusals)
}

/// Who is on the other end of a connection, as far as authorisation goes.
enum Peer {
    Open,
    /// The client certificate (DER), looked up in the registry at each check.
    Device {
        directory: Arc<DeviceDirectory>,
        certificate: Option<Vec<u8>>,
    },
}

impl Peer {
    fn of(connection: &Connection, clients: &ClientAuth) -> Self {
        match clients {
            ClientAuth::Open => Peer::Open,
            ClientAuth::Devices(directory) => Peer::Device {
                directory: directory.clone(),
                certificate: peer_certificate(connection),
            },
        }
    }

    /// The device's grant (`None` in open mode), or why it is refused.
    fn authorise(&self) -> Result<Option<DeviceGrant>, String> {
        match self {
            Peer::Open => Ok(None),
            Peer::Device {
                certificate: None, ..
            } => Err("the server requires a client certificate".into()),
            Peer::Device {
                directory,
                certificate: Some(der),
            } => directory
                .authorise(der)
                .map(Some)
                .map_err(|refusal| refusal.to_string()),
        }
    }

    fn describe(&self) -> String {
        match self.authorise() {
            Ok(Some(grant)) => grant.device.to_string(),
            Ok(None) => "(open mode)".into(),
            Err(_) => "(refused)".into(),
        }
    }
}

/// The end-entity certificate the client presented, if any.
fn peer_certificate(connection: &Connection) -> Option<Vec<u8>> {
    let identity = connection.peer_identity()?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    chain.first().map(|cert| cert.as_ref().to_vec())
}

async fn resolve<S: FragmentSink>(
    sink: &S,
    streams: Vec<wire::StreamOpen>,
) -> (Vec<StreamResume>, Vec<(StreamName, ErrorCode, String)>) {
    let mut resumes = Vec::new();
    let mut refusals = Vec::new();
    for open in streams {
        match sink.open_stream(&open.stream, open.epoch).await {
            Ok(next_sequence) => resumes.push(StreamResume {
                stream: open.stream,
                epoch: open.epoch,
                next_sequence,
            }),
            Err(e) => refusals.push((open.stream, e.code, e.message)),
        }
    }
    (resumes, refusals)
}

/// Reads the next client message from the control stream; `Ok(None)` at its clean end.
async fn read_control(
    recv: &mut RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<ClientMessage>, WireError> {
    let mut buf = [0u8; 4096];
    // Each turn reads at least one byte into a buffer bounded by CONTROL_FRAME_BYTES_MAX, so
    // the decoder either yields or errors within that many turns.
    loop {
        if let Some(msg) = decoder.next_client()? {
            return Ok(Some(msg));
        }
        let room = decoder.space().min(buf.len());
        match recv.read(&mut buf[..room]).await {
            Ok(Some(n)) => decoder.push(&buf[..n])?,
            Ok(None) => return decoder.finish().map(|()| None),
            Err(_) => return Ok(None),
        }
    }
}

async fn write_message(
    send: &mut SendStream,
    msg: &ServerMessage,
) -> Result<(), quinn::WriteError> {
    send.write_all(&wire::encode_server(msg)).await
}

/// Writes queued control messages in order until every sender is gone.
async fn write_control(mut send: SendStream, mut queue: mpsc::Receiver<ServerMessage>) {
    while let Some(msg) = queue.recv().await {
        if write_message(&mut send, &msg).await.is_err() {
            return;
        }
    }
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    }
}

/// One fragment stream: read, check, persist, acknowledge.
struct FragmentTask<S> {
    session: Arc<IngestSession>,
    sink: Arc<S>,
    control: mpsc::Sender<ServerMessage>,
    config: Arc<IngestConfig>,
}

impl<S: FragmentSink> FragmentTask<S> {
    async fn run(self, mut stream: RecvStream) {
        let timeout = Duration::from_millis(self.config.fragment_read_timeout_ms);
        let read = tokio::time::timeout(timeout, read_fragment(&mut stream, &self.session)).await;
        let fragment = match read {
            Ok(Ok(fragment)) => fragment,
            Ok(Err((id, error))) => return self.refuse(&mut stream, id, error).await,
            Err(_) => {
                let error =
                    WireError::rejected(ErrorCode::ProtocolViolation, "fragment stream too slow");
                return self.refuse(&mut stream, None, error).await;
            }
        };
        let id = fragment.meta.id.clone();
        self.send(ServerMessage::Ack {
            id: id.clone(),
            kind: AckKind::Received,
            fragment_number: None,
        })
        .await;
        let reply = match self.sink.persist(fragment).await {
            Ok(number) => ServerMessage::Ack {
                id,
                kind: AckKind::Persisted,
                fragment_number: Some(number),
            },
            Err(e) => ServerMessage::Error {
                id: Some(id),
                code: e.code,
                message: e.message,
            },
        };
        self.send(reply).await;
    }

    async fn refuse(
        &self,
        stream: &mut RecvStream,
        id: Option<crate::fragment::FragmentId>,
        error: WireError,
    ) {
        let code = error.code();
        tracing::debug!(?id, %code, error = %error, "refused a fragment stream");
        let _ = stream.stop(VarInt::from_u32(code.as_u16().into()));
        self.send(ServerMessage::Error {
            id,
            code,
            message: error.to_string(),
        })
        .await;
    }

    async fn send(&self, msg: ServerMessage) {
        // The writer is gone only when the connection is: nothing left to tell.
        let _ = self.control.send(msg).await;
    }
}

type FragmentReadError = (Option<crate::fragment::FragmentId>, WireError);

/// Reads the header (bounded), admits it, then exactly `payload_len` bytes and the end.
async fn read_fragment(
    stream: &mut RecvStream,
    session: &IngestSession,
) -> Result<Fragment, FragmentReadError> {
    let header = read_header(stream).await.map_err(|e| (None, e))?;
    let id = Some(header.id.clone());
    session
        .handle_fragment_header(&header)
        .map_err(|e| (id.clone(), e))?;
    let payload = read_payload(stream, header.payload_len)
        .await
        .map_err(|e| (id.clone(), e))?;
    if crate::fragment::checksum(&payload) != header.checksum {
        let error = WireError::rejected(
            ErrorCode::ChecksumMismatch,
            "payload checksum does not match the header",
        );
        return Err((id, error));
    }
    Ok(Fragment {
        meta: FragmentMeta {
            id: header.id,
            producer_timestamp: header.producer_timestamp,
            duration_ms: header.duration_ms,
        },
        payload: payload.into(),
    })
}

async fn read_header(stream: &mut RecvStream) -> Result<FragmentHeader, WireError> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|_| WireError::Truncated)?;
    let len = wire::frame_body_len(prefix, FRAGMENT_HEADER_BYTES_MAX)?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|_| WireError::Truncated)?;
    wire::decode_fragment_header_body(&body)
}

/// Reads exactly `len` bytes (already checked against `fragment_bytes_max`) and then
/// requires the end of the stream.
async fn read_payload(stream: &mut RecvStream, len: u32) -> Result<Vec<u8>, WireError> {
    let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|_| WireError::Truncated)?;
    let mut extra = [0u8; 1];
    match stream.read(&mut extra).await {
        Ok(None) => Ok(payload),
        Ok(Some(_)) => Err(WireError::TrailingBytes(1)),
        Err(_) => Err(WireError::Truncated),
    }
}
