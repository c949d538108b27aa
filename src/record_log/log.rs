//! `RecordLog`: segment files in one directory, appends to the last one, recovery at open.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::segment::{
    self, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES, check_header, encode_frame, scan_segment,
    segment_path,
};
use super::{LogConfig, LogError, RecordPos, SegmentInfo};

/// What `open` found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Intact records in the log after recovery.
    pub records: u64,
    /// Bytes cut from the tail of the last segment (torn or corrupt records, garbage).
    pub bytes_truncated: u64,
    /// What the first damaged record looked like, when something was cut.
    pub damage: Option<&'static str>,
}

/// The segment that takes appends.
#[derive(Debug)]
struct Active {
    id: u64,
    path: PathBuf,
    file: File,
    bytes: u64,
}

/// A segmented append-only log in one directory. Not shared: wrap it in `GroupCommit` for
/// concurrent appenders, and use `reader()` for concurrent reads.
#[derive(Debug)]
pub struct RecordLog {
    dir: PathBuf,
    config: LogConfig,
    /// Sealed segments: id -> bytes.
    sealed: BTreeMap<u64, u64>,
    active: Active,
    /// Whether the active segment has appends that no sync has covered yet.
    unsynced: bool,
}

/// Reads records by position without borrowing the log; cheap to clone, safe to share.
#[derive(Clone, Debug)]
pub struct LogReader {
    dir: Arc<PathBuf>,
    record_bytes_max: u32,
}

impl LogReader {
    /// Reads the record at `pos` and verifies its checksum.
    pub fn read(&self, pos: RecordPos) -> Result<Vec<u8>, LogError> {
        let path = segment_path(&self.dir, pos.segment);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LogError::SegmentNotFound {
                    segment: pos.segment,
                });
            }
            Err(e) => return Err(LogError::io(&path, e)),
        };
        segment::read_record(&file, &path, pos.offset, self.record_bytes_max)
    }
}

impl RecordLog {
    /// Opens (or creates) the log in `dir`, checking every segment and truncating a damaged
    /// tail of the last one.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(RecordLog, Recovery), LogError> {
        Self::open_scanning(dir, config, |_, _| Ok::<(), LogError>(()))
    }

    /// Like `open`, and calls `f` for every intact record in order while checking them, so a
    /// caller can rebuild its indexes in the same pass.
    pub fn open_scanning<E: From<LogError>>(
        dir: &Path,
        config: LogConfig,
        f: impl FnMut(RecordPos, &[u8]) -> Result<(), E>,
    ) -> Result<(RecordLog, Recovery), E> {
        Self::open_selective(dir, config, |_| false, f)
    }

    /// Like `open_scanning`, but sealed segments for which `indexed` answers true are neither
    /// read nor checked (their owner holds a checked index of them; each record still carries
    /// its own checksum, verified on every read). The last segment is always scanned.
    pub fn open_selective<E: From<LogError>>(
        dir: &Path,
        config: LogConfig,
        indexed: impl Fn(u64) -> bool,
        mut f: impl FnMut(RecordPos, &[u8]) -> Result<(), E>,
    ) -> Result<(RecordLog, Recovery), E> {
        validate_config(&config)?;
        create_dir_durably(dir)?;
        let ids = list_segment_ids(dir)?;
        let mut recovery = Recovery::default();
        let Some((&last, earlier)) = ids.split_last() else {
            let active = create_segment(dir, 0)?;
            let log = Self::assemble(dir, config, BTreeMap::new(), active);
            return Ok((log, recovery));
        };
        let mut sealed = BTreeMap::new();
        for &id in earlier {
            if indexed(id) {
                sealed.insert(id, indexed_segment_bytes(dir, id)?);
                continue;
            }
            let (bytes, records) = check_sealed(dir, id, config.record_bytes_max, &mut f)?;
            sealed.insert(id, bytes);
            recovery.records += records;
        }
        let active = recover_last(dir, last, config.record_bytes_max, &mut recovery, &mut f)?;
        Ok((Self::assemble(dir, config, sealed, active), recovery))
    }

    fn assemble(
        dir: &Path,
        config: LogConfig,
        sealed: BTreeMap<u64, u64>,
        active: Active,
    ) -> RecordLog {
        RecordLog {
            dir: dir.to_path_buf(),
            config,
            sealed,
            active,
            unsynced: false,
        }
    }

    pub fn config(&self) -> LogConfig {
        self.config
    }

    /// Appends one record to the page cache; durable only after the next `sync`.
    pub fn append(&mut self, payload: &[u8]) -> Result<RecordPos, LogError> {
        if payload.len() > self.config.record_bytes_max as usize {
            return Err(LogError::RecordTooLarge {
                bytes: payload.len(),
                limit: self.config.record_bytes_max,
            });
        }
        let frame_bytes = FRAME_HEADER_BYTES + payload.len() as u64;
        let has_records = self.active.bytes > SEGMENT_HEADER_BYTES;
        if has_records && self.active.bytes + frame_bytes > self.config.segment_bytes_max {
            self.roll()?;
        }
        let pos = RecordPos {
            segment: self.active.id,
            offset: self.active.bytes,
        };
        // Positional write: after a failed partial write the next append overwrites the same
        // bytes, so a half-written frame never sits between two good ones.
        self.active
            .file
            .write_all_at(&encode_frame(payload), pos.offset)
            .map_err(|e| LogError::io(&self.active.path, e))?;
        self.active.bytes += frame_bytes;
        self.unsynced = true;
        Ok(pos)
    }

    /// fdatasync: every record appended before this call is durable when it returns.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.unsynced {
            self.active
                .file
                .sync_data()
                .map_err(|e| LogError::io(&self.active.path, e))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Seals the active segment (after making it durable) and starts the next one.
    fn roll(&mut self) -> Result<(), LogError> {
        self.sync()?;
        let next = create_segment(&self.dir, self.active.id + 1)?;
        let old = std::mem::replace(&mut self.active, next);
        self.sealed.insert(old.id, old.bytes);
        tracing::debug!(dir = %self.dir.display(), sealed = old.id, "Sealed a log segment.");
        Ok(())
    }

    /// Reads the record at `pos` and verifies its checksum.
    pub fn read(&self, pos: RecordPos) -> Result<Vec<u8>, LogError> {
        self.reader().read(pos)
    }

    /// A reader that can be used from other threads while this log keeps appending.
    pub fn reader(&self) -> LogReader {
        LogReader {
            dir: Arc::new(self.dir.clone()),
            record_bytes_max: self.config.record_bytes_max,
        }
    }

    /// Calls `f` for every record in log order; stops at the first error `f` returns.
    pub fn scan<E: From<LogError>>(
        &self,
        mut f: impl FnMut(RecordPos, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for &id in self.sealed.keys() {
            check_sealed(&self.dir, id, self.config.record_bytes_max, &mut f)?;
        }
        check_sealed(
            &self.dir,
            self.active.id,
            self.config.record_bytes_max,
            &mut f,
        )?;
        Ok(())
    }

    /// All segments, oldest first; the last one is the active (unsealed) one.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let sealed = self.sealed.iter().map(|(&id, &bytes)| SegmentInfo {
            id,
            bytes,
            sealed: true,
        });
        let active = SegmentInfo {
            id: self.active.id,
            bytes: self.active.bytes,
            sealed: false,
        };
        sealed.chain(std::iter::once(active)).collect()
    }

    /// Deletes whole sealed segments (and makes the deletion durable). Checks every id first,
    /// so an invalid request removes nothing.
    pub fn remove_segments(&mut self, ids: &[u64]) -> Result<(), LogError> {
        for &id in ids {
            if id == self.active.id {
                return Err(LogError::SegmentNotSealed { segment: id });
            }
            if !self.sealed.contains_key(&id) {
                return Err(LogError::SegmentNotFound { segment: id });
            }
        }
        for &id in ids {
            let path = segment_path(&self.dir, id);
            fs::remove_file(&path).map_err(|e| LogError::io(&path, e))?;
            self.sealed.remove(&id);
        }
        sync_dir(&self.dir)
    }
}

fn validate_config(config: &LogConfig) -> Result<(), LogError> {
    if config.record_bytes_max == 0 {
        return Err(LogError::BadConfig("record_bytes_max must be above 0"));
    }
    if config.segment_bytes_max <= SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES {
        return Err(LogError::BadConfig(
            "segment_bytes_max must leave room for a record",
        ));
    }
    Ok(())
}

/// Size of a sealed segment that is not scanned, after checking its header.
fn indexed_segment_bytes(dir: &Path, id: u64) -> Result<u64, LogError> {
    let path = segment_path(dir, id);
    let file = File::open(&path).map_err(|e| LogError::io(&path, e))?;
    if !check_header(&file, &path)? {
        return Err(LogError::BadSegmentHeader { path });
    }
    Ok(file.metadata().map_err(|e| LogError::io(&path, e))?.len())
}

/// Checks a segment that must be intact end to end; returns (bytes, records).
fn check_sealed<E: From<LogError>>(
    dir: &Path,
    id: u64,
    record_bytes_max: u32,
    f: &mut impl FnMut(RecordPos, &[u8]) -> Result<(), E>,
) -> Result<(u64, u64), E> {
    let path = segment_path(dir, id);
    let file = File::open(&path).map_err(|e| LogError::io(&path, e))?;
    if !check_header(&file, &path)? {
        return Err(LogError::BadSegmentHeader { path }.into());
    }
    let scan = scan_segment(&path, id, record_bytes_max, &mut *f)?;
    if let Some(damage) = scan.damage {
        let reason = damage.describe();
        return Err(LogError::Corrupt {
            path,
            offset: scan.valid_bytes,
            reason,
        }
        .into());
    }
    Ok((scan.valid_bytes, scan.records))
}

/// Opens the last segment for appends, cutting any damaged tail (or rewriting a header that
/// a crash during creation left short).
fn recover_last<E: From<LogError>>(
    dir: &Path,
    id: u64,
    record_bytes_max: u32,
    recovery: &mut Recovery,
    f: &mut impl FnMut(RecordPos, &[u8]) -> Result<(), E>,
) -> Result<Active, E> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new().read(true).write(true).open(&path);
    let file = file.map_err(|e| LogError::io(&path, e))?;
    let file_bytes = file.metadata().map_err(|e| LogError::io(&path, e))?.len();
    if !check_header(&file, &path)? {
        write_header(&file, &path)?;
        recovery.bytes_truncated = file_bytes;
        recovery.damage = Some("segment header cut short");
        return Ok(Active {
            id,
            path,
            file,
            bytes: SEGMENT_HEADER_BYTES,
        });
    }
    let scan = scan_segment(&path, id, record_bytes_max, &mut *f)?;
    recovery.records += scan.records;
    if scan.valid_bytes < file_bytes {
        file.set_len(scan.valid_bytes)
            .map_err(|e| LogError::io(&path, e))?;
        file.sync_data().map_err(|e| LogError::io(&path, e))?;
        recovery.bytes_truncated = file_bytes - scan.valid_bytes;
        recovery.damage = scan.damage.map(|d| d.describe());
        tracing::warn!(
            path = %path.display(),
            bytes_truncated = recovery.bytes_truncated,
            damage = recovery.damage.unwrap_or("unknown"),
            "Truncated a damaged tail of the last log segment."
        );
    }
    Ok(Active {
        id,
        path,
        file,
        bytes: scan.valid_bytes,
    })
}

fn write_header(file: &File, path: &Path) -> Result<(), LogError> {
    file.set_len(0).map_err(|e| LogError::io(path, e))?;
    file.write_all_at(&segment::header_bytes(), 0)
        .map_err(|e| LogError::io(path, e))?;
    file.sync_data().map_err(|e| LogError::io(path, e))
}

/// Creates a segment with its header, durable (file data and directory entry) on return.
fn create_segment(dir: &Path, id: u64) -> Result<Active, LogError> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path);
    let file = file.map_err(|e| LogError::io(&path, e))?;
    write_header(&file, &path)?;
    sync_dir(dir)?;
    Ok(Active {
        id,
        path,
        file,
        bytes: SEGMENT_HEADER_BYTES,
    })
}

/// Segment ids present in `dir`, ascending; other files are left alone.
fn list_segment_ids(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(segment::parse_segment_file_name)
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn create_dir_durably(dir: &Path) -> Result<(), LogError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// fsync of a directory, so that creations and removals of its entries are durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}
