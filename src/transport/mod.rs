//! QUIC shells around the sans-IO [`crate::wire`] cores: the agent's uplink
//! ([`run_uplink`]), the server's ingest endpoint ([`IngestServer`]) and TLS identities
//! ([`load_or_create_server_identity`]). quinn 0.11 with rustls 0.23 and the ring provider;
//! ALPN [`crate::wire::ALPN`] on both sides.
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
mod identity;
mod ingest;
mod uplink;

#[cfg(test)]
mod tests;

pub use identity::{ServerIdentity, load_or_create_server_identity};
pub use ingest::{FragmentSink, IngestConfig, IngestServer, SinkError};
pub use uplink::{ServerTrust, UplinkOptions, run_uplink};

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
