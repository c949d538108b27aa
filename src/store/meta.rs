//! `stream.json`: written atomically (temp file, fsync, rename, directory fsync), so a crash
//! leaves either the old or the new description, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::{StoreError, StreamInfo};
use crate::record_log::LogError;

pub const STREAM_FILE: &str = "stream.json";
const STREAM_FILE_TMP: &str = "stream.json.tmp";
/// Largest `stream.json` read back; a bigger one is not ours.
const STREAM_FILE_BYTES_MAX: u64 = 64 * 1024;

pub fn write_stream_info(dir: &Path, info: &StreamInfo) -> Result<(), StoreError> {
    let tmp = dir.join(STREAM_FILE_TMP);
    let json = serde_json::to_vec_pretty(info).map_err(|e| StoreError::Corrupt {
        path: tmp.clone(),
        reason: e.to_string(),
    })?;
    let mut file = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    file.write_all(&json).map_err(|e| StoreError::io(&tmp, e))?;
    file.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
    let path = dir.join(STREAM_FILE);
    fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
    sync_dir(dir)
}

pub fn read_stream_info(dir: &Path) -> Result<StreamInfo, StoreError> {
    let path = dir.join(STREAM_FILE);
    let bytes = fs::metadata(&path)
        .map_err(|e| StoreError::io(&path, e))?
        .len();
    if bytes > STREAM_FILE_BYTES_MAX {
        return Err(StoreError::Corrupt {
            path,
            reason: format!("{bytes} bytes is too large"),
        });
    }
    let text = fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
    serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
        path,
        reason: e.to_string(),
    })
}

pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::record_log::sync_dir(dir).map_err(|e: LogError| match e {
        LogError::Io { path, source } => StoreError::Io { path, source },
        other => StoreError::Log(other),
    })
}
