//! `hydrant certs`: the server CA (`init`), device certificates signed by it (`issue`) and
//! revocation (`revoke`), all in `<data-dir>/tls/`. The registry of devices is `devices`.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};

use super::devices::{self, DEVICES_FILE, DeviceName, DeviceRegistry, certificate_fingerprint};
use super::identity::{self, CA_PEM};
use super::{TransportError, read_certs};
use crate::fragment::StreamName;

/// The TLS directory of a server data directory.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// What `certs init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaStatus {
    pub ca_pem: PathBuf,
    /// False when a CA was there already (it is kept: replacing it would orphan every
    /// certificate it issued).
    pub created: bool,
}

/// Creates the server CA in `tls_dir` unless one is there. The server uses the same files.
pub fn init_ca(tls_dir: &Path) -> Result<CaStatus, TransportError> {
    let created = identity::ensure_ca(tls_dir)?;
    Ok(CaStatus {
        ca_pem: tls_dir.join(CA_PEM),
        created,
    })
}

/// Files written by [`issue_device`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedDevice {
    pub device: DeviceName,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub certificate_sha256: String,
    /// True when the device had a certificate before (which no longer works).
    pub replaced: bool,
}

/// Issues a client certificate for `device`, signed by the CA in `tls_dir`, writes
/// `NAME.crt`, `NAME.key` and `ca.pem` into `out_dir`, and records the device with its
/// streams in the registry.
pub fn issue_device(
    tls_dir: &Path,
    device: &DeviceName,
    streams: Vec<StreamName>,
    out_dir: &Path,
    now_ms: u64,
) -> Result<IssuedDevice, TransportError> {
    if streams.len() > devices::DEVICE_STREAMS_MAX {
        return Err(TransportError::Certs(format!(
            "{} streams; a device may have at most {}",
            streams.len(),
            devices::DEVICE_STREAMS_MAX
        )));
    }
    let ca = identity::load_ca(tls_dir)?;
    let registry_path = tls_dir.join(DEVICES_FILE);
    let mut registry = devices::read_registry(&registry_path)?;
    let replaced = registry.device(device).is_some();

    let mut params = CertificateParams::new(vec![device.to_string()])?;
    params.distinguished_name = identity::name(device.as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    let fingerprint = certificate_fingerprint(cert.der());

    fs::create_dir_all(out_dir)
        .map_err(|e| TransportError::io(format!("creating {}", out_dir.display()), e))?;
    let issued = IssuedDevice {
        device: device.clone(),
        cert: out_dir.join(format!("{device}.crt")),
        key: out_dir.join(format!("{device}.key")),
        ca: out_dir.join(CA_PEM),
        certificate_sha256: fingerprint.clone(),
        replaced,
    };
    identity::write_file(&issued.key, key.serialize_pem().as_bytes(), true)?;
    identity::write_file(&issued.cert, cert.pem().as_bytes(), false)?;
    let ca_pem = tls_dir.join(CA_PEM);
    if ca_pem != issued.ca {
        let bytes = fs::read(&ca_pem)
            .map_err(|e| TransportError::io(format!("reading {}", ca_pem.display()), e))?;
        identity::write_file(&issued.ca, &bytes, false)?;
    }
    // Registered last: a certificate whose files could not be written is never let in.
    registry
        .issue(device.clone(), streams, fingerprint, now_ms)
        .map_err(TransportError::Certs)?;
    devices::write_registry(&registry_path, &registry)?;
    Ok(issued)
}

/// Marks `device` revoked in the registry; returns false when it already was. A running
/// server refuses it from its next connection on.
pub fn revoke_device(
    tls_dir: &Path,
    device: &DeviceName,
    now_ms: u64,
) -> Result<bool, TransportError> {
    let registry_path = tls_dir.join(DEVICES_FILE);
    let mut registry = devices::read_registry(&registry_path)?;
    let changed = registry
        .revoke(device, now_ms)
        .ok_or_else(|| TransportError::UnknownDevice(device.to_string()))?;
    if changed {
        devices::write_registry(&registry_path, &registry)?;
    }
    Ok(changed)
}

/// The registry of `tls_dir` (missing file: empty), for listings and checks.
pub fn registry(tls_dir: &Path) -> Result<DeviceRegistry, TransportError> {
    devices::read_registry(&tls_dir.join(DEVICES_FILE))
}

/// Checks that a certificate and a key file parse (for `hydrant agent --check`).
pub fn check_client_identity(cert: &Path, key: &Path) -> Result<(), TransportError> {
    read_certs(cert)?;
    identity::read_key(key)?;
    Ok(())
}

/// Checks that a CA file parses into a root store.
pub fn check_ca(ca: &Path) -> Result<(), TransportError> {
    identity::root_store(ca).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::server::danger::ClientCertVerifier;

    fn verifier(tls_dir: &Path) -> std::sync::Arc<dyn ClientCertVerifier> {
        super::super::install_crypto_provider();
        let roots = identity::root_store(&tls_dir.join(CA_PEM)).unwrap();
        rustls::server::WebPkiClientVerifier::builder(roots.into())
            .build()
            .unwrap()
    }

    fn der(path: &Path) -> CertificateDer<'static> {
        read_certs(path).unwrap().remove(0)
    }

    #[test]
    fn an_issued_certificate_chains_to_the_server_ca_and_is_registered() {
        let data = tempfile::tempdir().unwrap();
        let tls = tls_dir(data.path());
        let device = DeviceName::new("cam1").unwrap();
        let out = data.path().join("out");
        let streams = vec![StreamName::new("a").unwrap()];
        let missing = issue_device(&tls, &device, streams.clone(), &out, 1);
        assert!(
            matches!(missing, Err(TransportError::NoCa { .. })),
            "{missing:?}"
        );

        assert!(init_ca(&tls).unwrap().created);
        assert!(!init_ca(&tls).unwrap().created, "init keeps an existing CA");
        // The server started afterwards reuses the same CA.
        let server = identity::load_or_create_server_identity(&tls, &[]).unwrap();
        assert_eq!(server.ca_pem_path, tls.join(CA_PEM));

        let issued = issue_device(&tls, &device, streams, &out, 1).unwrap();
        assert!(!issued.replaced);
        check_client_identity(&issued.cert, &issued.key).unwrap();
        check_ca(&issued.ca).unwrap();
        let cert = der(&issued.cert);
        verifier(&tls)
            .verify_client_cert(&cert, &[], UnixTime::now())
            .expect("the CA's verifier accepts the device certificate");
        let grant = registry(&tls)
            .unwrap()
            .authorise(&certificate_fingerprint(&cert))
            .unwrap();
        assert_eq!(grant.device, device);

        // A certificate from another CA is refused by the verifier.
        let other = tempfile::tempdir().unwrap();
        let other_tls = tls_dir(other.path());
        init_ca(&other_tls).unwrap();
        let foreign =
            issue_device(&other_tls, &device, vec![], &other.path().join("o"), 1).unwrap();
        assert!(
            verifier(&tls)
                .verify_client_cert(&der(&foreign.cert), &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn revoke_marks_the_device_and_refuses_unknown_names() {
        let data = tempfile::tempdir().unwrap();
        let tls = tls_dir(data.path());
        init_ca(&tls).unwrap();
        let device = DeviceName::new("cam1").unwrap();
        let issued = issue_device(&tls, &device, vec![], &data.path().join("o"), 1).unwrap();
        assert!(revoke_device(&tls, &device, 2).unwrap());
        assert!(!revoke_device(&tls, &device, 3).unwrap());
        let ghost = DeviceName::new("ghost").unwrap();
        assert!(matches!(
            revoke_device(&tls, &ghost, 3),
            Err(TransportError::UnknownDevice(_))
        ));
        let refusal = registry(&tls)
            .unwrap()
            .authorise(&issued.certificate_sha256)
            .unwrap_err();
        assert_eq!(refusal, devices::Refusal::Revoked(device));
    }
}
