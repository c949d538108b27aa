//! The machine's own QUIC limit, measured in the same run as the ingest benchmarks so they
//! can report a ratio: raw quinn throughput over loopback, both ends in this process.

use std::sync::Arc;
use std::time::Instant;

use quinn::VarInt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{TransportError, install_crypto_provider};

/// Size of each unidirectional stream, in bytes.
const STREAM_BYTES: usize = 1024 * 1024;

/// Sends `total_bytes` (rounded up to whole 1 MiB streams) over one loopback connection, one
/// unidirectional stream per MiB, and returns the bytes per second the receiver saw.
pub async fn raw_loopback_throughput(total_bytes: u64) -> Result<f64, TransportError> {
    install_crypto_provider();
    let (server, cert) = server_endpoint()?;
    let addr = server
        .local_addr()
        .map_err(|e| TransportError::io("reading the bench address", e))?;
    let client = client_endpoint(cert)?;
    let streams = total_bytes.div_ceil(STREAM_BYTES as u64).max(1);
    let receiver = tokio::spawn(receive_all(server, streams));
    let connection = client
        .connect(addr, "localhost")
        .map_err(|e| TransportError::Connect(e.to_string()))?
        .await?;
    let started = Instant::now();
    let chunk = bytes::Bytes::from(vec![0x5a; STREAM_BYTES]);
    for _ in 0..streams {
        let mut stream = connection.open_uni().await?;
        stream.write_chunk(chunk.clone()).await?;
        stream
            .finish()
            .map_err(|e| TransportError::Read(e.to_string()))?;
    }
    let received = receiver
        .await
        .map_err(|e| TransportError::Read(e.to_string()))??;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    connection.close(VarInt::from_u32(0), b"done");
    Ok(received as f64 / seconds)
}

async fn receive_all(server: quinn::Endpoint, streams: u64) -> Result<u64, TransportError> {
    let incoming = server
        .accept()
        .await
        .ok_or_else(|| TransportError::Connect("bench endpoint closed".into()))?;
    let connection = incoming.await?;
    let mut total = 0u64;
    for _ in 0..streams {
        let mut stream = connection.accept_uni().await?;
        let data = stream
            .read_to_end(STREAM_BYTES)
            .await
            .map_err(|e| TransportError::Read(e.to_string()))?;
        total += data.len() as u64;
    }
    Ok(total)
}

fn server_endpoint() -> Result<(quinn::Endpoint, CertificateDer<'static>), TransportError> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TransportError::QuicConfig(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_uni_streams(VarInt::from_u32(64));
    config.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::server(config, ([127, 0, 0, 1], 0).into())
        .map_err(|e| TransportError::io("binding the bench server", e))?;
    Ok((endpoint, cert))
}

fn client_endpoint(cert: CertificateDer<'static>) -> Result<quinn::Endpoint, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::QuicConfig(e.to_string()))?;
    let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into())
        .map_err(|e| TransportError::io("binding the bench client", e))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(endpoint)
}
