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
    /// Creation in milliseconds (for ListShards' timestamp filters); 0 when not recorded.
    #[serde(default)]
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjacent_parent: Option<u32>,
    /// Set once the shard is closed by a reshard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<ClosedMeta>,
}

/// A closed shard: its records end below `end_counter`, and it closed at `closed_ms`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClosedMeta {
    pub end_counter: u64,
    pub closed_ms: u64,
}

/// How a stream's capacity is managed.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamMode {
    #[default]
    Provisioned,
    OnDemand,
}

impl StreamMode {
    /// The AWS name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamMode::Provisioned => "PROVISIONED",
            StreamMode::OnDemand => "ON_DEMAND",
        }
    }

    pub fn parse(name: &str) -> Option<StreamMode> {
        match name {
            "PROVISIONED" => Some(StreamMode::Provisioned),
            "ON_DEMAND" => Some(StreamMode::OnDemand),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamMeta {
    pub name: String,
    pub created_ms: u64,
    pub retention_hours: u32,
    pub shards: Vec<ShardMeta>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub mode: StreamMode,
    #[serde(default)]
    pub mode_updated_ms: u64,
    /// The index the next new shard gets (0 means: one past the highest index held).
    #[serde(default)]
    pub next_shard_index: u32,
}

impl StreamMeta {
    pub fn shard(&self, index: u32) -> Option<&ShardMeta> {
        self.shards.iter().find(|s| s.index == index)
    }

    pub fn open_shards(&self) -> impl Iterator<Item = &ShardMeta> {
        self.shards.iter().filter(|s| s.closed.is_none())
    }

    /// The index for a new shard, moving the counter on.
    pub fn take_shard_index(&mut self) -> u32 {
        let highest = self.shards.iter().map(|s| s.index + 1).max().unwrap_or(0);
        let index = self.next_shard_index.max(highest);
        self.next_shard_index = index + 1;
        index
    }
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

impl ShardMeta {
    /// The stored hash range.
    pub fn range(&self) -> Result<super::hash::HashRange, StreamsError> {
        let parse = |v: &str| {
            v.parse::<u128>().map_err(|_| {
                StreamsError::Corrupt(format!("bad hash key {v:?} of shard {}", self.index))
            })
        };
        Ok(super::hash::HashRange {
            start: parse(&self.starting_hash_key)?,
            end: parse(&self.ending_hash_key)?,
        })
    }
}
