//! The server's TLS identity: a private CA and a server certificate signed by it, created on
//! first start and reused afterwards. Agents trust the CA file (`ca.pem`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TransportError;

/// The server's certificate chain and key, plus where the CA certificate lies.
pub struct ServerIdentity {
    pub ca_pem_path: PathBuf,
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("ca_pem_path", &self.ca_pem_path)
            .field("cert_chain_len", &self.cert_chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for ServerIdentity {
    fn clone(&self) -> Self {
        Self {
            ca_pem_path: self.ca_pem_path.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

const CA_PEM: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const SERVER_PEM: &str = "server.pem";
const SERVER_KEY: &str = "server.key";

/// Loads the identity from `tls_dir`, creating the CA and the server certificate on first
/// start. The server certificate names localhost, 127.0.0.1, ::1 and `extra_names`.
pub fn load_or_create_server_identity(
    tls_dir: &Path,
    extra_names: &[String],
) -> Result<ServerIdentity, TransportError> {
    let server_pem = tls_dir.join(SERVER_PEM);
    if !server_pem.exists() {
        create(tls_dir, extra_names)?;
    }
    Ok(ServerIdentity {
        ca_pem_path: tls_dir.join(CA_PEM),
        cert_chain: read_certs(&server_pem)?,
        key: read_key(&tls_dir.join(SERVER_KEY))?,
    })
}

fn create(tls_dir: &Path, extra_names: &[String]) -> Result<(), TransportError> {
    fs::create_dir_all(tls_dir)
        .map_err(|e| TransportError::io(format!("creating {}", tls_dir.display()), e))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name = name("Hydrant CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra_names.iter().cloned());
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = name("Hydrant server");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &*ca)?;

    // Keys first and the server certificate last: its presence marks a complete identity.
    write_file(
        &tls_dir.join(CA_KEY),
        ca.key().serialize_pem().as_bytes(),
        true,
    )?;
    write_file(&tls_dir.join(CA_PEM), ca.pem().as_bytes(), false)?;
    write_file(
        &tls_dir.join(SERVER_KEY),
        key.serialize_pem().as_bytes(),
        true,
    )?;
    write_file(&tls_dir.join(SERVER_PEM), cert.pem().as_bytes(), false)?;
    Ok(())
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TransportError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let context = || format!("writing {}", path.display());
    let mut file = options
        .open(path)
        .map_err(|e| TransportError::io(context(), e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| TransportError::io(context(), e))
}

/// Reads every certificate of a PEM file.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bytes =
        fs::read(path).map_err(|e| TransportError::io(format!("reading {}", path.display()), e))?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad_pem(path, "no certificate found".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let bytes =
        fs::read(path).map_err(|e| TransportError::io(format!("reading {}", path.display()), e))?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| bad_pem(path, e.to_string()))?
        .ok_or_else(|| bad_pem(path, "no private key found".into()))
}

fn bad_pem(path: &Path, message: String) -> TransportError {
    TransportError::BadPem {
        path: path.display().to_string(),
        message,
    }
}
