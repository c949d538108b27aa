//! Clip holds: fragment-number ranges of a stream that retention must keep (an event's clip).
//!
//! Holds live in `<stream dir>/holds.json`, replaced atomically (write, fsync, rename); at most
//! [`HOLDS_MAX`] per stream, the oldest dropped first. A sealed segment whose numbers overlap a
//! hold is kept past its retention; it goes once the hold is released.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, meta};
use crate::fragment::StreamName;

/// Holds one stream keeps; placing one more drops the oldest.
pub const HOLDS_MAX: usize = 10_000;
const HOLDS_FILE: &str = "holds.json";
/// Largest holds file read (far above `HOLDS_MAX` entries).
const HOLDS_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// One held range of fragment numbers, inclusive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: String,
    pub first_number: u64,
    pub last_number: u64,
}

/// The holds of a stream directory (none when the file is missing or unreadable: a damaged file
/// must not stop retention, it is logged).
pub fn read_holds(dir: &Path) -> Vec<Hold> {
    let path = dir.join(HOLDS_FILE);
    match std::fs::metadata(&path) {
        Ok(m) if m.len() <= HOLDS_BYTES_MAX => {}
        Ok(_) => {
            tracing::warn!(path = %path.display(), "holds file too large; ignored");
            return Vec::new();
        }
        Err(_) => return Vec::new(),
    }
    let parsed = std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
    parsed.unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "holds file unreadable; ignored");
        Vec::new()
    })
}

fn write_holds(dir: &Path, holds: &[Hold]) -> Result<(), StoreError> {
    let path = dir.join(HOLDS_FILE);
    let tmp = dir.join("holds.json.tmp");
    let bytes = serde_json::to_vec(holds).map_err(|e| StoreError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| StoreError::io(&path, e))?;
    meta::sync_dir(dir)
}

/// Whether a segment holding numbers `first..=last` overlaps a hold.
pub fn is_held(holds: &[Hold], first: u64, last: u64) -> bool {
    holds
        .iter()
        .any(|h| h.first_number <= last && first <= h.last_number)
}

impl Store {
    /// Places (or replaces, by id) a hold on fragments `first..=last` of a stream.
    pub fn place_hold(&self, name: &StreamName, hold: Hold) -> Result<(), StoreError> {
        let stream = self.stream(name)?;
        let _guard = stream.lock_info();
        let mut holds = read_holds(stream.dir());
        holds.retain(|h| h.id != hold.id);
        holds.push(hold);
        if holds.len() > HOLDS_MAX {
            let extra = holds.len() - HOLDS_MAX;
            holds.drain(..extra);
        }
        write_holds(stream.dir(), &holds)
    }

    /// Releases a hold; unknown ids are ignored.
    pub fn release_hold(&self, name: &StreamName, id: &str) -> Result<(), StoreError> {
        let stream = self.stream(name)?;
        let _guard = stream.lock_info();
        let mut holds = read_holds(stream.dir());
        holds.retain(|h| h.id != id);
        write_holds(stream.dir(), &holds)
    }

    /// The holds of a stream.
    pub fn holds(&self, name: &StreamName) -> Result<Vec<Hold>, StoreError> {
        Ok(read_holds(self.stream(name)?.dir()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap() {
        let h = vec![Hold {
            id: "a".into(),
            first_number: 10,
            last_number: 20,
        }];
        assert!(is_held(&h, 5, 10));
        assert!(is_held(&h, 20, 30));
        assert!(is_held(&h, 12, 13));
        assert!(!is_held(&h, 0, 9));
        assert!(!is_held(&h, 21, 30));
    }

    #[test]
    fn holds_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let h = vec![Hold {
            id: "a".into(),
            first_number: 1,
            last_number: 2,
        }];
        write_holds(dir.path(), &h).unwrap();
        assert_eq!(read_holds(dir.path()), h);
        std::fs::write(dir.path().join(HOLDS_FILE), b"garbage").unwrap();
        assert!(read_holds(dir.path()).is_empty());
    }
}
