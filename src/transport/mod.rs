//! QUIC shells around the sans-IO [`crate::wire`] cores: the agent's uplink
//! ([`run_uplink`]), the server's ingest endpoint ([`IngestServer`]) and TLS identities
//! ([`load_or_create_server_identity`]). quinn 0.11 with rustls 0.23 and the ring provider;
//! ALPN [`crate::wire::ALPN`] on both sides.
//!
//! Device identity (mutual TLS): the server's CA also signs device certificates (`certs`,
//! behind `hydrant certs`), and the registry `<data-dir>/tls/devices.json` (`devices`) says
//! which certificate is which device, which streams it may write and whether it is revoked.
//! Unless the ingest runs [`ClientAuth::Open`] (the labelled development mode), TLS requires a
//! client certificate signed by the CA, and the ingest shell looks the certificate up in the
//! registry right after the handshake and again at `Hello` (the registry is re-read when the
//! file changes, so a revocation needs no restart): an unknown or revoked device is refused
//! with `NotAuthorized` and the connection closed; a stream the device may not write gets
//! `StreamRefused` with `NotAuthorized` while its other streams open. The `wire` core stays
//! unaware of devices: the shell filters the `Hello`'s streams before resolving them. An
//! agent refused for its identity stops with [`TransportError::NotAuthorized`] instead of
//! reconnecting forever.
//!
//! May import: `crate::wire` and `crate::fragment`.
//!
//! Bounds: connections per server (`connections_max`), fragment streams per connection
//! (`fragment_streams_per_connection_max`, also QUIC's stream credit), header and payload
//! reads (`FRAGMENT_HEADER_BYTES_MAX`, `fragment_bytes_max`: a payload buffer never grows past
//! the limit), control messages queued per connection (`control_queue_max`). The uplink reads
//! its fragment channel only while the [`crate::wire::Uplink`] has room (backpressure).
//! Nothing is acknowledged Persisted before [`FragmentSink::persist`] returned.

pub mod bench;
pub mod certs;
pub mod devices;
mod identity;
mod ingest;
mod metrics;
mod uplink;

#[cfg(test)]
mod tests;

pub use devices::{DeviceDirectory, DeviceGrant, DeviceName, Refusal};
pub(crate) use identity::read_certs;
pub use identity::{ServerIdentity, load_or_create_server_identity};
pub use ingest::{ClientAuth, FragmentSink, IngestConfig, IngestServer, SinkError};
pub use metrics::{UplinkMetrics, UplinkMetricsSnapshot};
pub use uplink::{
    ClientIdentity, Outgoing, ServerTrust, UplinkOptions, run_uplink, run_uplink_with_backfill,
};

/// Everything that goes wrong in the QUIC shells.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    CertificateGeneration(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("bad PEM file {path}: {message}")]
    BadPem { path: String, message: String },
    #[error("QUIC configuration failed: {0}")]
    QuicConfig(String),
    #[error("cannot resolve server address {0:?}")]
    BadServerAddress(String),
    #[error("connecting failed: {0}")]
    Connect(String),
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read failed: {0}")]
    Read(String),
    #[error(
        "no CA in {dir}: run `hydrant certs init` (or start the server once) with this data directory"
    )]
    NoCa { dir: String },
    #[error("the CA in {dir} is incomplete (ca.pem and ca.key must both be there)")]
    IncompleteCa { dir: String },
    #[error("bad device registry {path}: {message}")]
    Registry { path: String, message: String },
    #[error("bad device name {0}")]
    BadDeviceName(String),
    #[error("no device {0} in the registry")]
    UnknownDevice(String),
    #[error("{0}")]
    Certs(String),
    /// The server refused this agent's identity; retrying cannot help.
    #[error("{0}")]
    NotAuthorized(String),
}

impl TransportError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Installs ring as the process-wide rustls provider. Another provider already installed
/// (by an earlier call or another library) is fine: all of them work for us.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Resolves once `shutdown` is true (or its sender is gone), holding no borrow of it.
pub(crate) async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
