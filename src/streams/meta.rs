//! `stream.json`: a stream's durable description, replaced atomically (write a temporary
//! file, fsync it, rename it over the old one, fsync the directory).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::StreamsError;
use crate::record_log::sync_dir;

pub const META_FILE: &str = "stream.json";
const META_TMP_FILE: &str = "stream.json.tmp";

/// One shard as stored; hash bounds as decimal strings because JSON numbers cannot hold u128.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardMeta {
    pub index: u32,
    pub starting_hash_key: String,
    pub ending_hash_key: String,
    pub created_s: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamMeta {
    pub name: String,
    pub created_ms: u64,
    pub retention_hours: u32,
    pub shards: Vec<ShardMeta>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

pub fn write(dir: &Path, meta: &StreamMeta) -> Result<(), StreamsError> {
    let bytes = serde_json::to_vec_pretty(meta)
        .map_err(|e| StreamsError::Corrupt(format!("cannot encode stream metadata: {e}")))?;
    let tmp = dir.join(META_TMP_FILE);
    let io = |source| StreamsError::Io {
        path: tmp.clone(),
        source,
    };
    let mut file = fs::File::create(&tmp).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, dir.join(META_FILE)).map_err(io)?;
    sync_dir(dir)?;
    Ok(())
}

pub fn read(dir: &Path) -> Result<StreamMeta, StreamsError> {
    let path = dir.join(META_FILE);
    let bytes = fs::read(&path).map_err(|source| StreamsError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StreamsError::Corrupt(format!("{}: {e}", path.display())))
}
