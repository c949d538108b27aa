//! Producer sessions: the epoch (and, for files, the timestamp origin) of each camera, kept in
//! the agent's state directory so that a restarted replay of the same file resumes instead of
//! starting over.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::capture::SourceSpec;
use crate::fragment::{StreamName, UnixMillis};

/// Session files larger than this are treated as corrupt.
const SESSION_FILE_BYTES_MAX: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("agent state in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One camera's producer session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerSession {
    pub epoch: u64,
    /// Identifies the source: a file's path, size and modification time; empty for live ones.
    pub source_fingerprint: String,
    /// Producer time of the source's zero (files only; live sources use the clock at start).
    pub origin: UnixMillis,
}

pub(super) fn path(dir: &Path, stream: &StreamName) -> PathBuf {
    dir.join(format!("{stream}.session.json"))
}

impl ProducerSession {
    /// Reuses the stored session when the source is the same file; otherwise starts a new epoch
    /// (always greater than the previous one) and stores it durably.
    pub fn load_or_create(
        dir: &Path,
        stream: &StreamName,
        source: &SourceSpec,
        now: UnixMillis,
    ) -> Result<Self, SessionError> {
        let file = path(dir, stream);
        let previous = read(&file);
        let fingerprint = fingerprint(source);
        if let (Some(prev), Some(fp)) = (&previous, &fingerprint) {
            if &prev.source_fingerprint == fp {
                return Ok(prev.clone());
            }
        }
        let epoch = previous.map_or(now.0, |p| now.0.max(p.epoch + 1));
        let session = ProducerSession {
            epoch,
            source_fingerprint: fingerprint.unwrap_or_default(),
            origin: now,
        };
        write_durably(&file, &session).map_err(|source| SessionError::Io {
            path: file.clone(),
            source,
        })?;
        Ok(session)
    }
}

fn read(file: &Path) -> Option<ProducerSession> {
    let meta = std::fs::metadata(file).ok()?;
    if meta.len() > SESSION_FILE_BYTES_MAX {
        tracing::warn!(path = %file.display(), "session file too large; starting a new session");
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    match serde_json::from_str(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(path = %file.display(), error = %e, "session file unreadable; starting a new session");
            None
        }
    }
}

/// Only file sources resume; a live source always starts a new session.
fn fingerprint(source: &SourceSpec) -> Option<String> {
    let SourceSpec::File(path) = source else {
        return None;
    };
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
    Some(format!(
        "{}|{}|{}",
        canonical.display(),
        meta.len(),
        modified
    ))
}

/// Temp file, fsync, rename, directory fsync: the session survives a power cut whole or not at all.
fn write_durably(file: &Path, session: &ProducerSession) -> std::io::Result<()> {
    use std::io::Write;
    let dir = file.parent().unwrap_or(Path::new("."));
    let tmp = file.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(session).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_source_keeps_its_session_and_a_live_one_does_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let clip = dir.path().join("clip.mp4");
        std::fs::write(&clip, b"not really a video").expect("write");
        let stream = StreamName::new("cam").expect("valid");
        let file = SourceSpec::File(clip.clone());

        let first = ProducerSession::load_or_create(dir.path(), &stream, &file, UnixMillis(1_000))
            .expect("created");
        let again = ProducerSession::load_or_create(dir.path(), &stream, &file, UnixMillis(9_000))
            .expect("loaded");
        assert_eq!(first, again, "same file, same session");

        let live = ProducerSession::load_or_create(
            dir.path(),
            &stream,
            &SourceSpec::Test,
            UnixMillis(500),
        )
        .expect("new");
        assert!(live.epoch > first.epoch, "a new epoch is always greater");

        std::fs::write(&clip, b"another video, another size").expect("write");
        let changed = ProducerSession::load_or_create(dir.path(), &stream, &file, UnixMillis(600))
            .expect("new");
        assert!(changed.epoch > live.epoch);
    }
}
