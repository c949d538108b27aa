//! Public vocabulary of the store: configuration, stream descriptions, results and errors.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FragmentNumber;
use crate::fragment::{FragmentId, StreamName, UnixMillis};
use crate::record_log::LogError;

/// Longest retention a stream may have, in hours (ten years, the Kinesis Video limit).
pub const RETENTION_HOURS_MAX: u32 = 87_600;

/// Store settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Retention of a stream created without one (and of streams created on first use).
    pub default_retention_hours: u32,
    /// Whether `open_producer`/`append` on an unknown stream creates it.
    pub create_on_first_use: bool,
    /// Size at which a stream's log segment is sealed; retention deletes whole segments.
    pub segment_bytes_max: u64,
    /// Largest fragment payload accepted.
    pub fragment_bytes_max: u32,
    /// Region written into stream ARNs.
    pub region: String,
    /// Account id written into stream ARNs.
    pub account_id: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            default_retention_hours: 24,
            create_on_first_use: false,
            segment_bytes_max: 256 * 1024 * 1024,
            fragment_bytes_max: 64 * 1024 * 1024,
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum StreamStatus {
    Creating,
    Active,
    Updating,
    Deleting,
}

/// A stream's description, kept in `stream.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamInfo {
    pub name: StreamName,
    pub arn: String,
    pub device_name: Option<String>,
    pub media_type: Option<String>,
    pub kms_key_id: Option<String>,
    /// Changes on every update; callers pass it back to update safely.
    pub version: String,
    pub status: StreamStatus,
    pub creation_time: UnixMillis,
    /// 0 keeps no data beyond the active segment (as Kinesis Video's 0), else 1..=87,600.
    pub data_retention_hours: u32,
    /// At most [`TAGS_MAX`] user tags; absent from files written before tags existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Most tags on one stream (the Kinesis Video limit).
pub const TAGS_MAX: usize = 50;

/// Metadata an UpdateStream changes; `None` leaves a member as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamUpdate {
    pub device_name: Option<String>,
    pub media_type: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewStream {
    pub name: StreamName,
    pub device_name: Option<String>,
    pub media_type: Option<String>,
    pub kms_key_id: Option<String>,
    pub data_retention_hours: Option<u32>,
    pub tags: BTreeMap<String, String>,
}

impl NewStream {
    /// A stream with only a name; everything else defaulted.
    pub fn named(name: StreamName) -> Self {
        Self {
            name,
            device_name: None,
            media_type: None,
            kms_key_id: None,
            data_retention_hours: None,
            tags: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetentionChange {
    Increase(u32),
    Decrease(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampKind {
    Producer,
    Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentSummary {
    pub number: FragmentNumber,
    /// Payload bytes.
    pub size_bytes: u64,
    pub producer_timestamp: UnixMillis,
    pub server_timestamp: UnixMillis,
    pub duration_ms: u32,
    pub epoch: u64,
    pub sequence: u64,
}

/// Outcome of a durable append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    Stored(FragmentNumber),
    /// The fragment id was already stored under this number; nothing was written.
    Duplicate(FragmentNumber),
}

impl Appended {
    pub fn number(self) -> FragmentNumber {
        match self {
            Appended::Stored(n) | Appended::Duplicate(n) => n,
        }
    }
}

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream {0} not found")]
    StreamNotFound(StreamName),
    #[error("stream {0} already exists")]
    StreamExists(StreamName),
    #[error("stream {name} is at version {actual}, not {given}")]
    VersionMismatch {
        name: StreamName,
        given: String,
        actual: String,
    },
    #[error("invalid data retention: {reason}")]
    InvalidRetention { reason: String },
    #[error("fragment {number} not found in stream {stream}")]
    FragmentNotFound {
        stream: StreamName,
        number: FragmentNumber,
    },
    #[error("fragment {id} was stored before but has expired")]
    FragmentExpired { id: FragmentId },
    #[error("fragment of {bytes} bytes exceeds the limit of {limit} bytes")]
    FragmentTooLarge { bytes: usize, limit: u32 },
    #[error("stream {stream} would have {tags} tags; the limit is {limit}")]
    TagLimitExceeded {
        stream: StreamName,
        tags: usize,
        limit: usize,
    },
    #[error("the store holds {limit} streams, its limit")]
    StreamLimitExceeded { limit: usize },
    #[error("epoch {epoch} of stream {stream} has too many gaps in its sequences")]
    SequenceGapsExceeded { stream: StreamName, epoch: u64 },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt data in {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Log(#[from] LogError),
}

impl From<super::segment_index::IndexFileError> for StoreError {
    fn from(e: super::segment_index::IndexFileError) -> Self {
        use super::segment_index::IndexFileError as E;
        match e {
            E::Io { path, source } => StoreError::Io { path, source },
            E::Damaged { path, reason } => StoreError::Corrupt {
                path,
                reason: reason.to_string(),
            },
            other => StoreError::Corrupt {
                path: PathBuf::new(),
                reason: other.to_string(),
            },
        }
    }
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
