//! The storage engine: a segmented, append-only log of checksummed records.
//!
//! Owns the on-disk format (see `segment`), durability (fdatasync of data, fsync of the
//! directory whenever a segment file appears or disappears), recovery of a torn tail at open,
//! group commit (`GroupCommit`: many concurrent appenders share one fsync) and the pure
//! retention policy (`retention`). It may import only `fragment`.
//!
//! Durability assumptions: a successful `fdatasync` makes every byte written before it to that
//! file durable; a successful directory `fsync` makes file creations and removals in it durable.
//! A crash may leave any suffix of unsynced bytes torn or garbled, but never damages synced
//! bytes. Therefore only the last segment can have a damaged tail, which `open` truncates;
//! damage anywhere else is reported as corruption, never silently dropped.
//!
//! Records are positioned by `RecordPos { segment, offset }`; positions never move, and a
//! record disappears only when its whole segment is removed (`remove_segments`, sealed ones
//! only).

mod group_commit;
mod log;
pub mod retention;
mod segment;

use std::io;
use std::path::{Path, PathBuf};

pub use group_commit::{GroupCommit, GroupCommitConfig};
pub use log::{LogReader, RecordLog, Recovery, sync_dir};
pub use segment::{FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES, segment_file_name};

/// Size limits of a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment is sealed and a new one started when the next record would pass this size
    /// (a record larger than an empty segment's room still goes alone into its own segment).
    pub segment_bytes_max: u64,
    /// Largest payload accepted by `append`, and largest length believed when reading.
    pub record_bytes_max: u32,
}

/// Where a record lives: segment id and byte offset of its frame in that segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordPos {
    pub segment: u64,
    pub offset: u64,
}

/// One segment as seen by `RecordLog::segments`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: u64,
    pub bytes: u64,
    /// Sealed segments take no more appends; only they can be removed.
    pub sealed: bool,
}

/// Failures of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a segment file of a supported version (bad header)")]
    BadSegmentHeader { path: PathBuf },
    #[error("segment {path} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error("record of {bytes} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge { bytes: usize, limit: u32 },
    #[error("no segment {segment} in the log")]
    SegmentNotFound { segment: u64 },
    #[error("offset {offset} is not a record position in {path}")]
    PositionOutOfRange { path: PathBuf, offset: u64 },
    #[error("segment {segment} is the active segment and cannot be removed")]
    SegmentNotSealed { segment: u64 },
    #[error("invalid log configuration: {0}")]
    BadConfig(&'static str),
    #[error("the log writer has stopped after an earlier failure or shutdown")]
    WriterStopped,
}

impl LogError {
    fn io(path: &Path, source: io::Error) -> Self {
        LogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A copy for a second waiter on the same failure (`io::Error` is not `Clone`).
    fn duplicate(&self) -> LogError {
        match self {
            LogError::Io { path, source } => LogError::Io {
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            LogError::BadSegmentHeader { path } => {
                LogError::BadSegmentHeader { path: path.clone() }
            }
            LogError::Corrupt {
                path,
                offset,
                reason,
            } => LogError::Corrupt {
                path: path.clone(),
                offset: *offset,
                reason,
            },
            LogError::RecordTooLarge { bytes, limit } => LogError::RecordTooLarge {
                bytes: *bytes,
                limit: *limit,
            },
            LogError::SegmentNotFound { segment } => {
                LogError::SegmentNotFound { segment: *segment }
            }
            LogError::PositionOutOfRange { path, offset } => LogError::PositionOutOfRange {
                path: path.clone(),
                offset: *offset,
            },
            LogError::SegmentNotSealed { segment } => {
                LogError::SegmentNotSealed { segment: *segment }
            }
            LogError::BadConfig(reason) => LogError::BadConfig(reason),
            LogError::WriterStopped => LogError::WriterStopped,
        }
    }
}

#[cfg(test)]
mod tests;
