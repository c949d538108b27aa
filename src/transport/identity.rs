//! The server's TLS identity: a private CA and a server certificate signed by it, created on
//! first start (or the CA by `hydrant certs init`) and reused afterwards. Agents trust the CA
//! file (`ca.pem`); device certificates (`certs`) are signed by the same CA.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
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

pub(crate) const CA_PEM: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const SERVER_PEM: &str = "server.pem";
const SERVER_KEY: &str = "server.key";
/// Common name of the CA. The issuer of every certificate it signs is rebuilt from this name
/// and the CA key, so it must never change.
const CA_COMMON_NAME: &str = "Hydrant CA";

/// Loads the identity from `tls_dir`, creating the CA (unless `hydrant certs init` already
/// did) and the server certificate on first start. The server certificate names localhost,
/// 127.0.0.1, ::1 and `extra_names`.
pub fn load_or_create_server_identity(
    tls_dir: &Path,
    extra_names: &[String],
) -> Result<ServerIdentity, TransportError> {
    let server_pem = tls_dir.join(SERVER_PEM);
    if !server_pem.exists() {
        ensure_ca(tls_dir)?;
        create_server_certificate(tls_dir, extra_names)?;
    }
    Ok(ServerIdentity {
        ca_pem_path: tls_dir.join(CA_PEM),
        cert_chain: read_certs(&server_pem)?,
        key: read_key(&tls_dir.join(SERVER_KEY))?,
    })
}

/// Creates the CA in `tls_dir` unless one is there; returns whether it created one.
pub fn ensure_ca(tls_dir: &Path) -> Result<bool, TransportError> {
    let (pem, key) = (tls_dir.join(CA_PEM), tls_dir.join(CA_KEY));
    match (pem.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        // Half a CA cannot sign, and replacing it would orphan every certificate it issued.
        _ => {
            return Err(TransportError::IncompleteCa {
                dir: tls_dir.display().to_string(),
            });
        }
    }
    fs::create_dir_all(tls_dir)
        .map_err(|e| TransportError::io(format!("creating {}", tls_dir.display()), e))?;
    let ca = CertifiedIssuer::self_signed(ca_params()?, KeyPair::generate()?)?;
    // The key first and the certificate last: its presence marks a complete CA.
    write_file(&key, ca.key().serialize_pem().as_bytes(), true)?;
    write_file(&pem, ca.pem().as_bytes(), false)?;
    Ok(true)
}

fn ca_params() -> Result<CertificateParams, TransportError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name = name(CA_COMMON_NAME);
    Ok(params)
}

/// The CA of `tls_dir` as an issuer: its key and the parameters it was created with.
pub(crate) fn load_ca(tls_dir: &Path) -> Result<Issuer<'static, KeyPair>, TransportError> {
    let (pem, key_path) = (tls_dir.join(CA_PEM), tls_dir.join(CA_KEY));
    if !pem.exists() || !key_path.exists() {
        return Err(TransportError::NoCa {
            dir: tls_dir.display().to_string(),
        });
    }
    let text = fs::read_to_string(&key_path)
        .map_err(|e| TransportError::io(format!("reading {}", key_path.display()), e))?;
    let key = KeyPair::from_pem(&text).map_err(|e| bad_pem(&key_path, e.to_string()))?;
    Ok(Issuer::new(ca_params()?, key))
}

fn create_server_certificate(tls_dir: &Path, extra_names: &[String]) -> Result<(), TransportError> {
    let ca = load_ca(tls_dir)?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra_names.iter().cloned());
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = name("Hydrant server");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    // The key first and the certificate last: its presence marks a complete identity.
    write_file(
        &tls_dir.join(SERVER_KEY),
        key.serialize_pem().as_bytes(),
        true,
    )?;
    write_file(&tls_dir.join(SERVER_PEM), cert.pem().as_bytes(), false)?;
    Ok(())
}

pub(crate) fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn
}

pub(crate) fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TransportError> {
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

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
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

/// Every certificate of a PEM file as a root store (a CA file).
pub(crate) fn root_store(path: &Path) -> Result<rustls::RootCertStore, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}
