//! The device registry (`<data-dir>/tls/devices.json`): which client certificates the server
//! accepts, as which device, for which streams, and which devices are revoked.
//!
//! A device is recognised by the SHA-256 of its certificate (DER), not by the names inside it:
//! re-issuing a device replaces its fingerprint, so its earlier certificate stops working, and
//! its streams live here, not in the certificate, so they can change without a new one. The
//! file is replaced atomically (temporary file, fsync, rename, directory fsync); the server
//! reads it again whenever its identity on disk (inode, length, modification time) changes, so
//! `hydrant certs revoke` takes effect on the next connection without a restart.
//!
//! [`DeviceRegistry`] is pure (parse, look up, authorise); [`DeviceDirectory`] is the server's
//! cached view of the file. A registry that cannot be read refuses every device (fail closed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::TransportError;
use crate::fragment::StreamName;

/// File name of the registry inside the TLS directory.
pub const DEVICES_FILE: &str = "devices.json";
/// A registry file larger than this is refused unread.
pub const REGISTRY_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Most devices one registry may hold.
pub const DEVICES_MAX: usize = 100_000;
/// Most streams one device may be allowed.
pub const DEVICE_STREAMS_MAX: usize = 1024;
/// Longest device name, in bytes.
pub const DEVICE_NAME_BYTES_MAX: usize = 64;

/// A validated device name: 1 to 64 characters of `[a-zA-Z0-9_.-]`, starting with a letter or
/// a digit, so that it is a safe file name (`NAME.crt`) and certificate name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceName(String);

impl DeviceName {
    pub fn new(name: &str) -> Result<Self, TransportError> {
        let bad = |why: &str| TransportError::BadDeviceName(format!("{name:?}: {why}"));
        if name.is_empty() || name.len() > DEVICE_NAME_BYTES_MAX {
            return Err(bad("must be 1 to 64 characters"));
        }
        if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(bad("must start with a letter or a digit"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(bad(&format!(
                "has the character {c:?}; only a-z, A-Z, 0-9, '_', '.' and '-' are allowed"
            )));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DeviceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One device as recorded in the registry file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRecord {
    /// Streams the device may write.
    pub streams: Vec<StreamName>,
    /// Lower-case hex SHA-256 of the device's current certificate (DER).
    pub certificate_sha256: String,
    pub revoked: bool,
    pub issued_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    devices: BTreeMap<String, DeviceRecord>,
}

/// What a connection may do: the device it proved to be and the streams it may write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceGrant {
    pub device: DeviceName,
    pub streams: BTreeSet<StreamName>,
}

impl DeviceGrant {
    pub fn permits(&self, stream: &StreamName) -> bool {
        self.streams.contains(stream)
    }
}

/// Why a certificate is not let in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "this device certificate is not registered on the server (unknown device, or re-issued since): issue one with `hydrant certs issue`"
    )]
    UnknownDevice,
    #[error("device {0} is revoked")]
    Revoked(DeviceName),
    #[error("the server's device registry cannot be read: {0}")]
    RegistryUnreadable(String),
}

/// The parsed registry, with a fingerprint index.
#[derive(Debug, Default)]
pub struct DeviceRegistry {
    devices: BTreeMap<DeviceName, DeviceRecord>,
    by_fingerprint: HashMap<String, DeviceName>,
}

impl DeviceRegistry {
    /// Parses and checks the registry file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: RegistryFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if file.devices.len() > DEVICES_MAX {
            return Err(format!(
                "{} devices; the limit is {DEVICES_MAX}",
                file.devices.len()
            ));
        }
        let mut registry = Self::default();
        for (name, record) in file.devices {
            let name = DeviceName::new(&name).map_err(|e| e.to_string())?;
            registry.insert(name, record)?;
        }
        Ok(registry)
    }

    fn insert(&mut self, name: DeviceName, record: DeviceRecord) -> Result<(), String> {
        if record.streams.len() > DEVICE_STREAMS_MAX {
            return Err(format!(
                "device {name} has {} streams; the limit is {DEVICE_STREAMS_MAX}",
                record.streams.len()
            ));
        }
        let fingerprint = record.certificate_sha256.to_ascii_lowercase();
        if let Some(other) = self.by_fingerprint.insert(fingerprint, name.clone()) {
            if other != name {
                return Err(format!("devices {other} and {name} share one certificate"));
            }
        }
        self.devices.insert(name, record);
        Ok(())
    }

    pub fn to_json(&self) -> String {
        let file = RegistryFile {
            devices: self
                .devices
                .iter()
                .map(|(n, r)| (n.to_string(), r.clone()))
                .collect(),
        };
        // Serialising plain strings, numbers and lists cannot fail.
        serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
    }

    pub fn device(&self, name: &DeviceName) -> Option<&DeviceRecord> {
        self.devices.get(name)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Records a newly issued certificate for `name`, replacing an earlier one (which then stops
    /// working) and lifting a revocation.
    pub fn issue(
        &mut self,
        name: DeviceName,
        streams: Vec<StreamName>,
        certificate_sha256: String,
        now_ms: u64,
    ) -> Result<(), String> {
        if !self.devices.contains_key(&name) && self.devices.len() >= DEVICES_MAX {
            return Err(format!("the registry holds {DEVICES_MAX} devices already"));
        }
        if let Some(old) = self.devices.remove(&name) {
            self.by_fingerprint.remove(&old.certificate_sha256);
        }
        let record = DeviceRecord {
            streams,
            certificate_sha256,
            revoked: false,
            issued_at_ms: now_ms,
            revoked_at_ms: None,
        };
        self.insert(name, record)
    }

    /// Marks `name` revoked; returns false when it already was.
    pub fn revoke(&mut self, name: &DeviceName, now_ms: u64) -> Option<bool> {
        let record = self.devices.get_mut(name)?;
        if record.revoked {
            return Some(false);
        }
        record.revoked = true;
        record.revoked_at_ms = Some(now_ms);
        Some(true)
    }

    /// Who the certificate with this fingerprint is, and what it may write.
    pub fn authorise(&self, certificate_sha256: &str) -> Result<DeviceGrant, Refusal> {
        let name = self
            .by_fingerprint
            .get(certificate_sha256)
            .ok_or(Refusal::UnknownDevice)?;
        let record = self.devices.get(name).ok_or(Refusal::UnknownDevice)?;
        if record.revoked {
            return Err(Refusal::Revoked(name.clone()));
        }
        Ok(DeviceGrant {
            device: name.clone(),
            streams: record.streams.iter().cloned().collect(),
        })
    }
}

/// Lower-case hex SHA-256 of a certificate's DER bytes.
pub fn certificate_fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads the registry at `path`; a missing file is an empty registry.
pub fn read_registry(path: &Path) -> Result<DeviceRegistry, TransportError> {
    let bad = |message: String| TransportError::Registry {
        path: path.display().to_string(),
        message,
    };
    let bytes = match fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DeviceRegistry::default()),
        Err(e) => return Err(TransportError::io(format!("reading {}", path.display()), e)),
    };
    if bytes > REGISTRY_BYTES_MAX {
        return Err(bad(format!(
            "{bytes} bytes; the limit is {REGISTRY_BYTES_MAX}"
        )));
    }
    let text = fs::read_to_string(path)
        .map_err(|e| TransportError::io(format!("reading {}", path.display()), e))?;
    DeviceRegistry::parse(&text).map_err(bad)
}

/// Replaces the registry file atomically: a reader sees the old file or the new one, never a
/// mix, and after a crash one of the two is on disk.
pub fn write_registry(path: &Path, registry: &DeviceRegistry) -> Result<(), TransportError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |what: &str, e| TransportError::io(format!("{what} {}", path.display()), e);
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io("writing", e))?;
    tmp.write_all(registry.to_json().as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| io("writing", e))?;
    tmp.persist(path).map_err(|e| io("replacing", e.error))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing the directory of", e))
}

/// What identifies one version of the file on disk; an atomic replace changes the inode.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    bytes: u64,
    modified: Option<std::time::SystemTime>,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp {
        inode,
        bytes: meta.len(),
        modified: meta.modified().ok(),
    })
}

#[derive(Debug)]
struct Cached {
    stamp: Option<FileStamp>,
    registry: Result<Arc<DeviceRegistry>, String>,
}

/// The server's view of the registry file: re-read when the file changed (one `stat` per
/// look-up, a read only after a change).
#[derive(Debug)]
pub struct DeviceDirectory {
    path: PathBuf,
    cached: Mutex<Cached>,
}

impl DeviceDirectory {
    /// Watches `<tls_dir>/devices.json`.
    pub fn new(tls_dir: &Path) -> Self {
        let path = tls_dir.join(DEVICES_FILE);
        let cached = Cached {
            stamp: stamp(&path),
            registry: load(&path),
        };
        Self {
            path,
            cached: Mutex::new(cached),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Authorises a certificate against the registry as it is on disk now.
    pub fn authorise(&self, certificate_der: &[u8]) -> Result<DeviceGrant, Refusal> {
        let registry = self.current().map_err(Refusal::RegistryUnreadable)?;
        registry.authorise(&certificate_fingerprint(certificate_der))
    }

    fn current(&self) -> Result<Arc<DeviceRegistry>, String> {
        let now = stamp(&self.path);
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.stamp != now {
            cached.registry = load(&self.path);
            cached.stamp = now;
            match &cached.registry {
                Ok(r) => {
                    tracing::info!(path = %self.path.display(), devices = r.len(), "device registry reloaded")
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "device registry unreadable: refusing every device")
                }
            }
        }
        cached.registry.clone()
    }
}

fn load(path: &Path) -> Result<Arc<DeviceRegistry>, String> {
    read_registry(path).map(Arc::new).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(names: &[&str]) -> Vec<StreamName> {
        names.iter().map(|n| StreamName::new(*n).unwrap()).collect()
    }

    fn device(name: &str) -> DeviceName {
        DeviceName::new(name).unwrap()
    }

    #[test]
    fn device_names_are_safe_file_names() {
        for good in ["cam1", "Front-Door_2.local", "0"] {
            assert!(DeviceName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            ".hidden",
            "a/b",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(DeviceName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn authorise_knows_devices_by_fingerprint_and_refuses_revoked_ones() {
        let mut r = DeviceRegistry::default();
        r.issue(device("cam1"), streams(&["a", "b"]), "f1".into(), 10)
            .unwrap();
        r.issue(device("cam2"), streams(&["c"]), "f2".into(), 11)
            .unwrap();
        let grant = r.authorise("f1").unwrap();
        assert_eq!(grant.device, device("cam1"));
        assert!(grant.permits(&StreamName::new("a").unwrap()));
        assert!(!grant.permits(&StreamName::new("c").unwrap()));
        assert_eq!(r.authorise("nope"), Err(Refusal::UnknownDevice));

        assert_eq!(r.revoke(&device("cam1"), 20), Some(true));
        assert_eq!(r.revoke(&device("cam1"), 21), Some(false));
        assert_eq!(r.revoke(&device("ghost"), 21), None);
        assert_eq!(r.authorise("f1"), Err(Refusal::Revoked(device("cam1"))));
        assert!(r.authorise("f2").is_ok());
    }

    #[test]
    fn reissuing_replaces_the_certificate_and_lifts_the_revocation() {
        let mut r = DeviceRegistry::default();
        r.issue(device("cam1"), streams(&["a"]), "old".into(), 1)
            .unwrap();
        r.revoke(&device("cam1"), 2);
        r.issue(device("cam1"), streams(&["b"]), "new".into(), 3)
            .unwrap();
        assert_eq!(r.authorise("old"), Err(Refusal::UnknownDevice));
        let grant = r.authorise("new").unwrap();
        assert_eq!(grant.streams, streams(&["b"]).into_iter().collect());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn the_file_round_trips_and_bad_files_are_refused() {
        let mut r = DeviceRegistry::default();
        r.issue(device("cam1"), streams(&["a"]), "f1".into(), 1)
            .unwrap();
        let parsed = DeviceRegistry::parse(&r.to_json()).unwrap();
        assert_eq!(parsed.authorise("f1").unwrap().device, device("cam1"));

        let shared = r#"{"devices":{
            "a":{"streams":[],"certificate_sha256":"x","revoked":false,"issued_at_ms":0},
            "b":{"streams":[],"certificate_sha256":"x","revoked":false,"issued_at_ms":0}}}"#;
        assert!(DeviceRegistry::parse(shared).unwrap_err().contains("share"));
        let bad_stream = r#"{"devices":{"a":{"streams":["../x"],"certificate_sha256":"x","revoked":false,"issued_at_ms":0}}}"#;
        assert!(DeviceRegistry::parse(bad_stream).is_err());
        let bad_name = r#"{"devices":{"../a":{"streams":[],"certificate_sha256":"x","revoked":false,"issued_at_ms":0}}}"#;
        assert!(DeviceRegistry::parse(bad_name).is_err());
        assert!(DeviceRegistry::parse("{").is_err());
    }

    #[test]
    fn the_directory_sees_a_replaced_file_and_fails_closed_on_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEVICES_FILE);
        let directory = DeviceDirectory::new(dir.path());
        let cert = b"certificate bytes";
        let fingerprint = certificate_fingerprint(cert);
        assert_eq!(directory.authorise(cert), Err(Refusal::UnknownDevice));

        let mut r = DeviceRegistry::default();
        r.issue(device("cam1"), streams(&["a"]), fingerprint, 1)
            .unwrap();
        write_registry(&path, &r).unwrap();
        assert_eq!(directory.authorise(cert).unwrap().device, device("cam1"));

        r.revoke(&device("cam1"), 2);
        write_registry(&path, &r).unwrap();
        assert_eq!(
            directory.authorise(cert),
            Err(Refusal::Revoked(device("cam1")))
        );

        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(
            directory.authorise(cert),
            Err(Refusal::RegistryUnreadable(_))
        ));
        assert_eq!(
            read_registry(&dir.path().join("none.json")).unwrap().len(),
            0
        );
    }
}
