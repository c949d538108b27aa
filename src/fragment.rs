//! Shared vocabulary of the video path: stream names, fragment identity, timestamps,
//! [`Fragment`] (an opaque payload plus metadata) and checksums.
//!
//! Everything outside `capture`, `media` and `detect` treats a fragment's payload as opaque
//! bytes: this module knows nothing of codecs. It imports nothing of the crate.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Longest stream name accepted, in bytes (the Kinesis Video limit).
pub const STREAM_NAME_LEN_MAX: usize = 256;

/// A validated video stream name: 1 to 256 characters of `[a-zA-Z0-9_.-]`, and never `.` or
/// `..`, so it is always safe to use as a single path component.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(String);

/// Why a stream name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamNameError {
    #[error("stream name is empty")]
    Empty,
    #[error("stream name is {len} bytes long; the limit is {STREAM_NAME_LEN_MAX}")]
    TooLong { len: usize },
    #[error(
        "stream name {name:?} has the character {bad:?}; only a-z, A-Z, 0-9, '_', '.' and '-' are allowed"
    )]
    BadCharacter { name: String, bad: char },
    #[error("stream name {0:?} is reserved")]
    Reserved(String),
}

impl StreamName {
    /// Validates `name` against the Kinesis Video pattern `[a-zA-Z0-9_.-]+` (1 to 256).
    pub fn new(name: impl Into<String>) -> Result<Self, StreamNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(StreamNameError::Empty);
        }
        if name.len() > STREAM_NAME_LEN_MAX {
            return Err(StreamNameError::TooLong { len: name.len() });
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(StreamNameError::BadCharacter { name, bad });
        }
        // The pattern admits these two, but they would escape the data directory.
        if name == "." || name == ".." {
            return Err(StreamNameError::Reserved(name));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StreamName {
    type Error = StreamNameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamName> for String {
    fn from(value: StreamName) -> Self {
        value.0
    }
}

impl std::str::FromStr for StreamName {
    type Err = StreamNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Milliseconds since the Unix epoch, UTC. Used for producer and server timestamps.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// Reads the wall clock. Only shells call this; cores take time as an argument.
    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// Seconds with a millisecond fraction, as the AWS JSON protocols write timestamps.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// From AWS JSON epoch seconds (a fraction is allowed); negative or non-finite is `None`.
    pub fn from_secs_f64(secs: f64) -> Option<Self> {
        if !secs.is_finite() || secs < 0.0 || secs > (u64::MAX / 1000) as f64 {
            return None;
        }
        Some(Self((secs * 1000.0).round() as u64))
    }

    pub fn saturating_add_ms(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// UTC date and time as RFC 3339 with milliseconds, e.g. `2017-11-28T06:55:09.126Z`.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0 / 1000;
        let (year, month, day) = civil_from_days(secs / 86_400);
        let rem = secs % 86_400;
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            self.0 % 1000
        )
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// Identity of a fragment, assigned at the edge: a resend carries the same identity, so the
/// server recognises it and never stores it twice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragmentId {
    pub stream: StreamName,
    /// Producer session epoch: a new one is chosen when a producer starts a new session.
    pub epoch: u64,
    /// Position within the epoch, starting at 0 and rising by one per fragment.
    pub sequence: u64,
}

impl fmt::Display for FragmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.stream, self.epoch, self.sequence)
    }
}

/// What the transport and the store know about a fragment, besides its opaque payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FragmentMeta {
    pub id: FragmentId,
    /// Producer (capture) time of the fragment's first sample.
    pub producer_timestamp: UnixMillis,
    /// Length of the fragment's media, in milliseconds.
    pub duration_ms: u32,
}

/// A fragment: one group of pictures as an opaque payload (the media payload format owned by
/// `media`), plus metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    pub meta: FragmentMeta,
    pub payload: Bytes,
}

impl Fragment {
    /// CRC-32C of the payload, as carried on the wire and in storage.
    pub fn checksum(&self) -> u32 {
        checksum(&self.payload)
    }
}

/// CRC-32C (Castagnoli), the one checksum used on the wire and on disk.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_follow_the_kvs_pattern() {
        assert!(StreamName::new("front-door_1.cam").is_ok());
        assert_eq!(StreamName::new(""), Err(StreamNameError::Empty));
        assert!(matches!(
            StreamName::new("../etc"),
            Err(StreamNameError::BadCharacter { bad: '/', .. })
        ));
        assert!(matches!(
            StreamName::new(".."),
            Err(StreamNameError::Reserved(_))
        ));
        assert!(matches!(
            StreamName::new("a b"),
            Err(StreamNameError::BadCharacter { bad: ' ', .. })
        ));
        assert!(matches!(
            StreamName::new("x".repeat(257)),
            Err(StreamNameError::TooLong { len: 257 })
        ));
        assert!(StreamName::new("x".repeat(256)).is_ok());
    }

    #[test]
    fn timestamps_round_trip_through_aws_seconds() {
        let t = UnixMillis(1_511_852_109_126);
        assert_eq!(t.to_string(), "1511852109.126");
        assert_eq!(UnixMillis::from_secs_f64(t.as_secs_f64()), Some(t));
        assert_eq!(UnixMillis::from_secs_f64(-1.0), None);
        assert_eq!(UnixMillis::from_secs_f64(f64::NAN), None);
        assert_eq!(t.to_rfc3339(), "2017-11-28T06:55:09.126Z");
        assert_eq!(UnixMillis(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            UnixMillis(951_782_400_000).to_rfc3339(),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
