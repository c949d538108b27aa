//! Data streams with Kinesis Data Streams semantics: streams of shards, MD5 hash ranges,
//! AWS-layout sequence numbers, stateless shard iterators, retention and per-shard throughput
//! limits. The HTTP surface (`api::kinesis`) is a thin layer over [`Streams`].
//!
//! Owns `<data-dir>/kinesis/`: `iterator.key` (the server's iterator MAC key) and one folder
//! per stream holding `stream.json` (replaced atomically) and one `record_log` per shard
//! (`shard-<12 digits>/`). May import `record_log` and `fragment`.
//!
//! Durability: a put returns only after its records are fsynced (the shard's group commit
//! shares one sync among concurrent appenders). Reopening rebuilds every shard's counter and
//! index from a scan of its log, so acknowledged records survive and numbers keep rising.
//!
//! Backpressure and bounds: a shard's writer queue is bounded (`GroupCommitConfig`); a put
//! waits for room. With throttling on, each shard admits 1 MiB/s or 1,000 records/s in and
//! 2 MiB/s and 5 reads/s out; what exceeds it is refused per record, never queued. The
//! in-memory index holds one small entry per retained record. Pure parts (`hash`, `seqnum`,
//! `iterator`, `bucket`, `layout`, `scaling`) take time as an argument.
//!
//! Resharding (`reshard`): split, merge and UpdateShardCount close parents (no write lands in
//! a closed shard; a put that raced the close is routed again, at most `ROUTE_ATTEMPTS_MAX`
//! times) and open children with lineage; `stream.json` holds the whole shard map, so a
//! restart keeps it. Closed shards stay listed until their close is older than the retention.
//! On-demand streams meter offered writes per shard and split a shard that stays hot; the
//! put path starts that split on the blocking pool, and `Streams::autoscale` runs the same
//! check for a maintenance loop.

pub mod bucket;
pub mod hash;
pub mod iterator;
pub mod layout;
mod meta;
mod reshard;
pub mod scaling;
pub mod seqnum;
mod shard;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::fragment::UnixMillis;
use crate::record_log::{LogError, sync_dir};
use hash::HashRange;
use iterator::{IteratorKey, KEY_BYTES, Position, TokenError};
use meta::{ShardMeta, StreamMeta};
use scaling::ScalingPolicy;
use seqnum::SeqNum;
use shard::{Shard, Submission};

pub use meta::StreamMode;
pub use reshard::{ChildShard, ShardFilter};
pub use shard::{PARTITION_KEY_BYTES_MAX, RECORD_DATA_BYTES_MAX};

/// Retention bounds in hours (AWS: 24 hours to 365 days).
pub const RETENTION_HOURS_MIN: u32 = 24;
pub const RETENTION_HOURS_MAX: u32 = 8760;
/// GetRecords bounds.
pub const GET_RECORDS_LIMIT_MAX: usize = 10_000;
pub const GET_RECORDS_BYTES_MAX: usize = 10 * 1024 * 1024;
/// Tags on one stream (AWS's limit).
pub const TAGS_PER_STREAM_MAX: usize = 50;
const KEY_FILE: &str = "iterator.key";
const HOUR_MS: u64 = 3_600_000;
/// Times a put routes records again after the shard it chose was closed by a reshard.
const ROUTE_ATTEMPTS_MAX: usize = 4;
/// Shards an on-demand stream starts with.
pub const ON_DEMAND_INITIAL_SHARDS: u32 = 4;

/// Failures of data streams.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    #[error("Stream {name} under account {account} not found.")]
    StreamNotFound { name: String, account: String },
    #[error("Stream {name} under account {account} already exists.")]
    StreamExists { name: String, account: String },
    #[error("Shard {shard} in stream {stream} under account {account} does not exist")]
    ShardNotFound {
        shard: String,
        stream: String,
        account: String,
    },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    LimitExceeded(String),
    /// The stream or shard is busy with (or already changed by) a reshard.
    #[error("{0}")]
    InUse(String),
    #[error(
        "Iterator expired. The iterator was created at time {issued_ms} ms while right now it is {now_ms} ms which is further in the future than the tolerated delay of 300000 milliseconds."
    )]
    ExpiredIterator { issued_ms: u64, now_ms: u64 },
    #[error("Rate exceeded for shard {shard} in stream {stream} under account {account}.")]
    Throttled {
        shard: String,
        stream: String,
        account: String,
    },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt stream data: {0}")]
    Corrupt(String),
    #[error("a lock was poisoned by an earlier panic")]
    Poisoned,
}

/// Settings of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamsConfig {
    /// Enforce the per-shard throughput limits.
    pub throttle: bool,
    pub region: String,
    /// The account written into ARNs and messages.
    pub account_id: String,
    pub segment_bytes_max: u64,
    pub streams_max: usize,
    pub shards_per_stream_max: u32,
    /// How long a stream shows UPDATING after a reshard or a mode change; another reshard
    /// in that time is refused.
    pub reshard_updating_ms: u64,
    /// When on-demand streams split a hot shard.
    pub scaling: ScalingPolicy,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            throttle: true,
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            segment_bytes_max: 64 * 1024 * 1024,
            streams_max: 1000,
            shards_per_stream_max: 500,
            reshard_updating_ms: 500,
            scaling: ScalingPolicy::default(),
        }
    }
}

/// One shard as described to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardDescription {
    pub shard_id: String,
    pub range: HashRange,
    pub starting_sequence_number: String,
    /// Set on a closed shard.
    pub ending_sequence_number: Option<String>,
    pub parent_shard_id: Option<String>,
    pub adjacent_parent_shard_id: Option<String>,
    pub created_ms: u64,
    pub closed_ms: Option<u64>,
}

/// A stream as described to clients: `shards` holds every retained shard, open and closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamDescription {
    pub name: String,
    pub arn: String,
    pub created_ms: u64,
    pub retention_hours: u32,
    /// `ACTIVE` or `UPDATING`.
    pub status: &'static str,
    pub mode: StreamMode,
    pub mode_updated_ms: u64,
    pub open_shard_count: usize,
    pub shards: Vec<ShardDescription>,
}

/// One record to put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutEntry {
    pub partition_key: String,
    pub explicit_hash_key: Option<u128>,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutOk {
    pub shard_id: String,
    pub sequence_number: String,
}

/// Why one entry of a put failed (`code` is the AWS error code).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutFailure {
    pub code: &'static str,
    pub message: String,
}

pub type PutOutcome = Result<PutOk, PutFailure>;

/// Where a new iterator starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IteratorStart {
    TrimHorizon,
    Latest,
    AtSequenceNumber(String),
    AfterSequenceNumber(String),
    AtTimestamp(UnixMillis),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutRecord {
    pub sequence_number: String,
    pub arrival_ms: u64,
    pub partition_key: String,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetRecordsOutput {
    pub records: Vec<OutRecord>,
    /// `None` at the end of a closed shard: read its children next.
    pub next_shard_iterator: Option<String>,
    pub millis_behind_latest: u64,
    /// The children of a closed shard, given once its end is reached.
    pub child_shards: Vec<ChildShard>,
}

/// The shards of a stream as puts and reads see them; replaced whole by a reshard.
#[derive(Debug, Default)]
struct ShardMap {
    /// Every retained shard, open and closed, in index order.
    all: Vec<Arc<Shard>>,
    /// Open shards by hash range, and their ranges, for routing.
    open: Vec<Arc<Shard>>,
    open_ranges: Vec<HashRange>,
}

impl ShardMap {
    fn new(mut all: Vec<Arc<Shard>>, meta: &StreamMeta) -> ShardMap {
        all.sort_by_key(|s| s.index);
        let mut open: Vec<Arc<Shard>> = all
            .iter()
            .filter(|s| meta.shard(s.index).is_some_and(|m| m.closed.is_none()))
            .cloned()
            .collect();
        open.sort_by_key(|s| s.range.start);
        let open_ranges = open.iter().map(|s| s.range).collect();
        ShardMap {
            all,
            open,
            open_ranges,
        }
    }

    fn get(&self, index: u32) -> Option<&Arc<Shard>> {
        self.all.iter().find(|s| s.index == index)
    }
}

#[derive(Debug)]
struct Stream {
    dir: PathBuf,
    meta: Mutex<StreamMeta>,
    shards: RwLock<Arc<ShardMap>>,
    /// Until when the stream shows UPDATING after a reshard or a mode change.
    updating_until_ms: AtomicU64,
    /// Serialises reshards of this stream.
    reshard: Mutex<()>,
    /// Set while an on-demand split started by a put is running.
    scaling: AtomicBool,
}

impl Stream {
    fn map(&self) -> Result<Arc<ShardMap>, StreamsError> {
        Ok(Arc::clone(
            &*self.shards.read().map_err(|_| StreamsError::Poisoned)?,
        ))
    }

    fn is_updating(&self, now: UnixMillis) -> bool {
        now.0 < self.updating_until_ms.load(Ordering::Acquire)
    }

    fn status(&self, now: UnixMillis) -> &'static str {
        if self.is_updating(now) {
            "UPDATING"
        } else {
            "ACTIVE"
        }
    }
}

/// The registry of data streams.
#[derive(Debug)]
pub struct Streams {
    root: PathBuf,
    key: IteratorKey,
    config: StreamsConfig,
    streams: RwLock<BTreeMap<String, Arc<Stream>>>,
    /// Serialises creation and deletion so two of them never race on one folder.
    lifecycle: Mutex<()>,
}

/// `shardId-` and 12 digits.
pub fn shard_id(index: u32) -> String {
    format!("shardId-{index:012}")
}

fn parse_shard_id(id: &str) -> Option<u32> {
    let digits = id.strip_prefix("shardId-").unwrap_or(id);
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Stream names: `[a-zA-Z0-9_.-]+`, 1-128 characters; `.` and `..` are refused because a
/// name is also a folder.
pub fn valid_stream_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && name != "."
        && name != ".."
}

impl Streams {
    /// Opens (or creates) the registry under `<data_dir>/kinesis`, recovering every stream.
    pub fn open(data_dir: &Path, config: StreamsConfig) -> Result<Streams, StreamsError> {
        let root = data_dir.join("kinesis");
        fs::create_dir_all(&root).map_err(|source| StreamsError::Io {
            path: root.clone(),
            source,
        })?;
        let key = load_or_create_key(&root)?;
        let now = UnixMillis::now();
        let mut streams = BTreeMap::new();
        for dir in list_stream_dirs(&root)? {
            let stream = open_stream(&dir, config.segment_bytes_max, now)?;
            let name = lock(&stream.meta)?.name.clone();
            streams.insert(name, Arc::new(stream));
        }
        Ok(Streams {
            root,
            key,
            config,
            streams: RwLock::new(streams),
            lifecycle: Mutex::new(()),
        })
    }

    pub fn config(&self) -> &StreamsConfig {
        &self.config
    }

    pub fn arn(&self, name: &str) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:stream/{name}",
            self.config.region, self.config.account_id
        )
    }

    /// The stream name in an ARN of this server's region and account.
    pub fn name_from_arn<'a>(&self, arn: &'a str) -> Option<&'a str> {
        let prefix = format!(
            "arn:aws:kinesis:{}:{}:stream/",
            self.config.region, self.config.account_id
        );
        arn.strip_prefix(&prefix).filter(|n| valid_stream_name(n))
    }

    fn not_found(&self, name: &str) -> StreamsError {
        StreamsError::StreamNotFound {
            name: name.into(),
            account: self.config.account_id.clone(),
        }
    }

    fn stream(&self, name: &str) -> Result<Arc<Stream>, StreamsError> {
        let streams = self.streams.read().map_err(|_| StreamsError::Poisoned)?;
        streams
            .get(name)
            .cloned()
            .ok_or_else(|| self.not_found(name))
    }

    /// Creates a provisioned stream.
    pub fn create_stream(
        &self,
        name: &str,
        shard_count: u32,
        now: UnixMillis,
    ) -> Result<(), StreamsError> {
        self.create_stream_in_mode(name, shard_count, StreamMode::Provisioned, now)
    }

    /// Creates a stream in a capacity mode (an on-demand stream's caller passes
    /// [`ON_DEMAND_INITIAL_SHARDS`]).
    pub fn create_stream_in_mode(
        &self,
        name: &str,
        shard_count: u32,
        mode: StreamMode,
        now: UnixMillis,
    ) -> Result<(), StreamsError> {
        if !valid_stream_name(name) {
            return Err(StreamsError::InvalidArgument(format!(
                "Stream name {name:?} must match [a-zA-Z0-9_.-]+ and be 1 to 128 characters."
            )));
        }
        if shard_count == 0 || shard_count > self.config.shards_per_stream_max {
            return Err(StreamsError::LimitExceeded(format!(
                "ShardCount {shard_count} must be between 1 and {}.",
                self.config.shards_per_stream_max
            )));
        }
        let _guard = lock(&self.lifecycle)?;
        let count = {
            let streams = self.streams.read().map_err(|_| StreamsError::Poisoned)?;
            if streams.contains_key(name) {
                return Err(StreamsError::StreamExists {
                    name: name.into(),
                    account: self.config.account_id.clone(),
                });
            }
            streams.len()
        };
        if count >= self.config.streams_max {
            return Err(StreamsError::LimitExceeded(format!(
                "This server holds at most {} streams.",
                self.config.streams_max
            )));
        }
        let stream = self.build_stream(name, shard_count, mode, now)?;
        let mut streams = self.streams.write().map_err(|_| StreamsError::Poisoned)?;
        streams.insert(name.into(), Arc::new(stream));
        Ok(())
    }

    fn build_stream(
        &self,
        name: &str,
        shard_count: u32,
        mode: StreamMode,
        now: UnixMillis,
    ) -> Result<Stream, StreamsError> {
        let dir = self.root.join(name);
        // A folder left by an interrupted delete or create holds nothing acknowledged.
        if dir.exists() {
            remove_dir(&dir)?;
        }
        fs::create_dir(&dir).map_err(|source| StreamsError::Io {
            path: dir.clone(),
            source,
        })?;
        let created_s = now.0 / 1000;
        let shards = hash::initial_ranges(shard_count)
            .into_iter()
            .zip(0u32..)
            .map(|(range, index)| ShardMeta {
                index,
                starting_hash_key: range.start.to_string(),
                ending_hash_key: range.end.to_string(),
                created_s,
                created_ms: now.0,
                parent: None,
                adjacent_parent: None,
                closed: None,
            })
            .collect();
        let meta = StreamMeta {
            name: name.into(),
            created_ms: now.0,
            retention_hours: RETENTION_HOURS_MIN,
            shards,
            tags: BTreeMap::new(),
            mode,
            mode_updated_ms: now.0,
            next_shard_index: shard_count,
        };
        meta::write(&dir, &meta)?;
        sync_dir(&self.root)?;
        open_stream(&dir, self.config.segment_bytes_max, now)
    }

    pub fn delete_stream(&self, name: &str) -> Result<(), StreamsError> {
        let _guard = lock(&self.lifecycle)?;
        let stream = {
            let mut streams = self.streams.write().map_err(|_| StreamsError::Poisoned)?;
            streams.remove(name).ok_or_else(|| self.not_found(name))?
        };
        // In-flight requests may still hold the stream; its writers stop when they let go.
        remove_dir(&stream.dir)?;
        sync_dir(&self.root)?;
        Ok(())
    }

    /// Names of all streams, sorted.
    pub fn list_streams(&self) -> Result<Vec<String>, StreamsError> {
        let streams = self.streams.read().map_err(|_| StreamsError::Poisoned)?;
        Ok(streams.keys().cloned().collect())
    }

    pub fn describe(&self, name: &str) -> Result<StreamDescription, StreamsError> {
        self.describe_at(name, UnixMillis::now())
    }

    /// Describes a stream as of `now` (which decides ACTIVE or UPDATING).
    pub fn describe_at(
        &self,
        name: &str,
        now: UnixMillis,
    ) -> Result<StreamDescription, StreamsError> {
        let stream = self.stream(name)?;
        let meta = lock(&stream.meta)?;
        let shards = meta
            .shards
            .iter()
            .map(describe_shard)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StreamDescription {
            name: meta.name.clone(),
            arn: self.arn(&meta.name),
            created_ms: meta.created_ms,
            retention_hours: meta.retention_hours,
            status: stream.status(now),
            mode: meta.mode,
            mode_updated_ms: meta.mode_updated_ms,
            open_shard_count: meta.open_shards().count(),
            shards,
        })
    }

    /// Changes the retention; `increase` says which operation asked, as AWS checks the
    /// direction.
    pub fn set_retention(
        &self,
        name: &str,
        hours: u32,
        increase: bool,
    ) -> Result<(), StreamsError> {
        let stream = self.stream(name)?;
        let mut meta = lock(&stream.meta)?;
        if hours < RETENTION_HOURS_MIN {
            return Err(StreamsError::InvalidArgument(format!(
                "Minimum allowed retention period is {RETENTION_HOURS_MIN} hours. Requested retention period ({hours} hours) is too short."
            )));
        }
        if hours > RETENTION_HOURS_MAX {
            return Err(StreamsError::InvalidArgument(format!(
                "Maximum allowed retention period is {RETENTION_HOURS_MAX} hours. Requested retention period ({hours} hours) is too long."
            )));
        }
        let current = meta.retention_hours;
        if increase && hours < current {
            return Err(StreamsError::InvalidArgument(format!(
                "Requested retention period ({hours} hours) for stream {name} can not be shorter than existing retention period ({current} hours). Use DecreaseRetentionPeriod API."
            )));
        }
        if !increase && hours > current {
            return Err(StreamsError::InvalidArgument(format!(
                "Requested retention period ({hours} hours) for stream {name} can not be longer than existing retention period ({current} hours). Use IncreaseRetentionPeriod API."
            )));
        }
        let mut updated = meta.clone();
        updated.retention_hours = hours;
        meta::write(&stream.dir, &updated)?;
        *meta = updated;
        Ok(())
    }

    pub fn add_tags(&self, name: &str, tags: BTreeMap<String, String>) -> Result<(), StreamsError> {
        self.update_tags(name, |current| {
            current.extend(tags);
            Ok(())
        })
    }

    pub fn remove_tags(&self, name: &str, keys: &[String]) -> Result<(), StreamsError> {
        self.update_tags(name, |current| {
            keys.iter().for_each(|k| drop(current.remove(k)));
            Ok(())
        })
    }

    fn update_tags(
        &self,
        name: &str,
        change: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), StreamsError>,
    ) -> Result<(), StreamsError> {
        let stream = self.stream(name)?;
        let mut meta = lock(&stream.meta)?;
        let mut updated = meta.clone();
        change(&mut updated.tags)?;
        if updated.tags.len() > TAGS_PER_STREAM_MAX {
            return Err(StreamsError::LimitExceeded(format!(
                "A stream holds at most {TAGS_PER_STREAM_MAX} tags."
            )));
        }
        meta::write(&stream.dir, &updated)?;
        *meta = updated;
        Ok(())
    }

    pub fn tags(&self, name: &str) -> Result<BTreeMap<String, String>, StreamsError> {
        let stream = self.stream(name)?;
        let meta = lock(&stream.meta)?;
        Ok(meta.tags.clone())
    }

    /// Puts records and returns one outcome per entry, in order, once every accepted record
    /// is durable. Entries over a shard's throughput get a per-entry failure. Records routed to
    /// a shard that a reshard closed meanwhile are routed again to its children.
    pub async fn put_records(
        &self,
        name: &str,
        entries: Vec<PutEntry>,
        now: UnixMillis,
    ) -> Result<Vec<PutOutcome>, StreamsError> {
        let stream = self.stream(name)?;
        let on_demand = lock(&stream.meta)?.mode == StreamMode::OnDemand;
        let mut outcomes: Vec<Option<PutOutcome>> = vec![None; entries.len()];
        let mut waiting: Vec<(usize, PutEntry)> = entries.into_iter().enumerate().collect();
        for _ in 0..ROUTE_ATTEMPTS_MAX {
            if waiting.is_empty() {
                break;
            }
            let map = stream.map()?;
            let by_shard = self.route(name, &map, waiting, &mut outcomes, on_demand, now)?;
            waiting = Vec::new();
            for (s, batch) in by_shard {
                let shard = &map.open[s];
                let closed = self
                    .store_batch(name, shard, batch, &mut outcomes, now)
                    .await?;
                waiting.extend(closed);
            }
        }
        if on_demand {
            self.scale_hot_shard(&stream, now);
        }
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(PutFailure {
                        code: "InternalFailure",
                        message: "Internal service failure.".into(),
                    })
                })
            })
            .collect())
    }

    /// Groups entries by the open shard owning their hash; throttled ones get their outcome.
    fn route(
        &self,
        name: &str,
        map: &ShardMap,
        entries: Vec<(usize, PutEntry)>,
        outcomes: &mut [Option<PutOutcome>],
        on_demand: bool,
        now: UnixMillis,
    ) -> Result<BTreeMap<usize, Vec<(usize, PutEntry)>>, StreamsError> {
        let mut by_shard: BTreeMap<usize, Vec<(usize, PutEntry)>> = BTreeMap::new();
        for (i, entry) in entries {
            let hash = entry
                .explicit_hash_key
                .unwrap_or_else(|| hash::partition_hash(&entry.partition_key));
            let Some(s) = hash::shard_for(&map.open_ranges, hash) else {
                return Err(StreamsError::Corrupt(format!("no shard owns hash {hash}")));
            };
            let shard = &map.open[s];
            let bytes = (entry.data.len() + entry.partition_key.len()) as u64;
            if on_demand {
                shard.record_heat(&self.config.scaling, bytes, 1, now)?;
            }
            if self.config.throttle && !shard.admit_write(bytes, now)? {
                outcomes[i] = Some(Err(PutFailure {
                    code: "ProvisionedThroughputExceededException",
                    message: self.throttled(name, shard.index).to_string(),
                }));
                continue;
            }
            by_shard.entry(s).or_default().push((i, entry));
        }
        Ok(by_shard)
    }

    /// Appends one shard's batch and fills in its outcomes; returns the entries to route
    /// again when the shard turned out to be closed.
    async fn store_batch(
        &self,
        name: &str,
        shard: &Shard,
        batch: Vec<(usize, PutEntry)>,
        outcomes: &mut [Option<PutOutcome>],
        now: UnixMillis,
    ) -> Result<Vec<(usize, PutEntry)>, StreamsError> {
        let positions: Vec<usize> = batch.iter().map(|(i, _)| *i).collect();
        let hash_keys: Vec<Option<u128>> = batch.iter().map(|(_, e)| e.explicit_hash_key).collect();
        let records = batch
            .into_iter()
            .map(|(_, e)| (e.partition_key, e.data))
            .collect();
        let pending = match shard.submit(records, now).await? {
            Submission::Queued(pending) => pending,
            Submission::Closed(records) => {
                let back = positions
                    .into_iter()
                    .zip(hash_keys)
                    .zip(records)
                    .map(|((i, explicit_hash_key), (partition_key, data))| {
                        (
                            i,
                            PutEntry {
                                partition_key,
                                explicit_hash_key,
                                data,
                            },
                        )
                    })
                    .collect();
                return Ok(back);
            }
        };
        for (i, p) in positions.into_iter().zip(pending) {
            let sequence_number = SeqNum {
                shard_created_s: shard.created_s,
                shard_index: shard.index,
                counter: p.counter,
                arrival_s: p.arrival_ms / 1000,
            }
            .encode();
            outcomes[i] = Some(match shard.finish(p).await {
                Ok(()) => Ok(PutOk {
                    shard_id: shard_id(shard.index),
                    sequence_number,
                }),
                Err(e) => {
                    tracing::error!(error = %e, stream = name, "A record could not be stored.");
                    Err(PutFailure {
                        code: "InternalFailure",
                        message: "Internal service failure.".into(),
                    })
                }
            });
        }
        Ok(Vec::new())
    }

    fn throttled(&self, stream: &str, index: u32) -> StreamsError {
        StreamsError::Throttled {
            shard: shard_id(index),
            stream: stream.into(),
            account: self.config.account_id.clone(),
        }
    }

    fn shard(&self, stream: &Stream, name: &str, id: &str) -> Result<Arc<Shard>, StreamsError> {
        let map = stream.map()?;
        parse_shard_id(id)
            .and_then(|i| map.get(i).cloned())
            .ok_or_else(|| StreamsError::ShardNotFound {
                shard: id.into(),
                stream: name.into(),
                account: self.config.account_id.clone(),
            })
    }

    /// Issues an iterator for a shard.
    pub fn shard_iterator(
        &self,
        name: &str,
        shard: &str,
        start: &IteratorStart,
        now: UnixMillis,
    ) -> Result<String, StreamsError> {
        let stream = self.stream(name)?;
        let shard = self.shard(&stream, name, shard)?;
        let next_counter = match start {
            IteratorStart::TrimHorizon => 0,
            IteratorStart::Latest => shard.next_counter()?,
            IteratorStart::AtTimestamp(at) => shard.counter_at_time(at.0)?,
            IteratorStart::AtSequenceNumber(s) => self.counter_of(&shard, s)?,
            IteratorStart::AfterSequenceNumber(s) => self.counter_of(&shard, s)?.saturating_add(1),
        };
        let created_ms = lock(&stream.meta)?.created_ms;
        Ok(self.key.issue(&Position {
            stream: name.into(),
            stream_created_ms: created_ms,
            shard_index: shard.index,
            next_counter,
            issued_ms: now.0,
        }))
    }

    fn counter_of(&self, shard: &Shard, sequence_number: &str) -> Result<u64, StreamsError> {
        let seq = SeqNum::decode(sequence_number).ok_or_else(|| {
            StreamsError::InvalidArgument(format!(
                "StartingSequenceNumber {sequence_number} used in GetShardIterator on shard {} is not a valid sequence number.",
                shard_id(shard.index)
            ))
        })?;
        if seq.shard_index != shard.index || seq.shard_created_s != shard.created_s {
            return Err(StreamsError::InvalidArgument(format!(
                "Invalid StartingSequenceNumber. It encodes {}, while it was used in a call to a shard with {}",
                shard_id(seq.shard_index),
                shard_id(shard.index)
            )));
        }
        Ok(seq.counter)
    }

    /// Reads records at an iterator.
    pub fn get_records(
        &self,
        token: &str,
        limit: usize,
        now: UnixMillis,
    ) -> Result<GetRecordsOutput, StreamsError> {
        let position = self.key.check(token, now).map_err(|e| match e {
            TokenError::Malformed => StreamsError::InvalidArgument("Invalid ShardIterator.".into()),
            TokenError::Expired { issued_ms } => StreamsError::ExpiredIterator {
                issued_ms,
                now_ms: now.0,
            },
        })?;
        let stream = self.stream(&position.stream)?;
        if lock(&stream.meta)?.created_ms != position.stream_created_ms {
            return Err(self.not_found(&position.stream));
        }
        let shard = self.shard(&stream, &position.stream, &shard_id(position.shard_index))?;
        if self.config.throttle && !shard.admit_read(now)? {
            return Err(self.throttled(&position.stream, shard.index));
        }
        let limit = limit.clamp(1, GET_RECORDS_LIMIT_MAX);
        let batch = shard.read(position.next_counter, limit, GET_RECORDS_BYTES_MAX)?;
        let bytes: usize = batch.records.iter().map(|r| r.data.len()).sum();
        if self.config.throttle {
            shard.charge_read(bytes as u64, now)?;
        }
        let records = batch
            .records
            .into_iter()
            .map(|r| OutRecord {
                sequence_number: SeqNum {
                    shard_created_s: shard.created_s,
                    shard_index: shard.index,
                    counter: r.counter,
                    arrival_s: r.arrival_ms / 1000,
                }
                .encode(),
                arrival_ms: r.arrival_ms,
                partition_key: r.partition_key,
                data: r.data,
            })
            .collect();
        let ended = shard
            .end_counter()?
            .is_some_and(|end| batch.next_counter >= end);
        if ended {
            // The end of a closed shard: no further iterator, the children instead.
            let meta = lock(&stream.meta)?;
            return Ok(GetRecordsOutput {
                records,
                next_shard_iterator: None,
                millis_behind_latest: 0,
                child_shards: reshard::children_of(&meta, shard.index)?,
            });
        }
        let next_shard_iterator = self.key.issue(&Position {
            next_counter: batch.next_counter,
            issued_ms: now.0,
            ..position
        });
        Ok(GetRecordsOutput {
            records,
            next_shard_iterator: Some(next_shard_iterator),
            millis_behind_latest: batch
                .behind_arrival_ms
                .map_or(0, |at| now.0.saturating_sub(at)),
            child_shards: Vec::new(),
        })
    }

    /// Deletes expired segments of every shard; returns how many went.
    pub fn enforce_retention(&self, now: UnixMillis) -> Result<usize, StreamsError> {
        let streams: Vec<Arc<Stream>> = {
            let map = self.streams.read().map_err(|_| StreamsError::Poisoned)?;
            map.values().cloned().collect()
        };
        let mut deleted = 0;
        for stream in streams {
            let retention_ms = u64::from(lock(&stream.meta)?.retention_hours) * HOUR_MS;
            for shard in &stream.map()?.all {
                deleted += shard.enforce_retention(retention_ms, now)?;
            }
            deleted += reshard::drop_expired_shards(&stream, retention_ms, now)?;
        }
        Ok(deleted)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, StreamsError> {
    mutex.lock().map_err(|_| StreamsError::Poisoned)
}

fn open_stream(
    dir: &Path,
    segment_bytes_max: u64,
    now: UnixMillis,
) -> Result<Stream, StreamsError> {
    let meta = meta::read(dir)?;
    let mut shards = Vec::with_capacity(meta.shards.len());
    for s in &meta.shards {
        let shard = open_shard(dir, s, segment_bytes_max, now)?;
        if let Some(closed) = s.closed {
            shard.set_closed(closed.end_counter)?;
        }
        shards.push(Arc::new(shard));
    }
    Ok(Stream {
        dir: dir.to_path_buf(),
        shards: RwLock::new(Arc::new(ShardMap::new(shards, &meta))),
        meta: Mutex::new(meta),
        updating_until_ms: AtomicU64::new(0),
        reshard: Mutex::new(()),
        scaling: AtomicBool::new(false),
    })
}

fn shard_dir(stream_dir: &Path, index: u32) -> PathBuf {
    stream_dir.join(format!("shard-{index:012}"))
}

fn open_shard(
    stream_dir: &Path,
    meta: &ShardMeta,
    segment_bytes_max: u64,
    now: UnixMillis,
) -> Result<Shard, StreamsError> {
    Shard::open(
        &shard_dir(stream_dir, meta.index),
        meta.index,
        meta.range()?,
        meta.created_s,
        segment_bytes_max,
        now,
    )
}

/// A stored shard as clients see it.
fn describe_shard(s: &ShardMeta) -> Result<ShardDescription, StreamsError> {
    let number = |counter: u64, at_s: u64| {
        SeqNum {
            shard_created_s: s.created_s,
            shard_index: s.index,
            counter,
            arrival_s: at_s,
        }
        .encode()
    };
    Ok(ShardDescription {
        shard_id: shard_id(s.index),
        range: s.range()?,
        starting_sequence_number: number(0, s.created_s),
        ending_sequence_number: s
            .closed
            .map(|c| number(c.end_counter.saturating_sub(1), c.closed_ms / 1000)),
        parent_shard_id: s.parent.map(shard_id),
        adjacent_parent_shard_id: s.adjacent_parent.map(shard_id),
        created_ms: s.created_ms.max(s.created_s * 1000),
        closed_ms: s.closed.map(|c| c.closed_ms),
    })
}

/// Stream folders: every folder under the root with a `stream.json`. A folder without one
/// is a create that never finished: it held nothing acknowledged, so it is removed.
fn list_stream_dirs(root: &Path) -> Result<Vec<PathBuf>, StreamsError> {
    let io = |source| StreamsError::Io {
        path: root.to_path_buf(),
        source,
    };
    let mut dirs = Vec::new();
    for entry in fs::read_dir(root).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if !path.is_dir() {
            continue;
        }
        if path.join(meta::META_FILE).exists() {
            dirs.push(path);
        } else {
            remove_dir(&path)?;
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn remove_dir(dir: &Path) -> Result<(), StreamsError> {
    // Remove the metadata first: a crash halfway leaves a folder that open discards.
    let meta_path = dir.join(meta::META_FILE);
    if meta_path.exists() {
        fs::remove_file(&meta_path).map_err(|source| StreamsError::Io {
            path: meta_path.clone(),
            source,
        })?;
        sync_dir(dir)?;
    }
    fs::remove_dir_all(dir).map_err(|source| StreamsError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn load_or_create_key(root: &Path) -> Result<IteratorKey, StreamsError> {
    let path = root.join(KEY_FILE);
    let io = |source| StreamsError::Io {
        path: path.clone(),
        source,
    };
    match fs::read(&path) {
        Ok(bytes) => {
            let key: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| {
                StreamsError::Corrupt(format!("{} is not a {KEY_BYTES}-byte key", path.display()))
            })?;
            Ok(IteratorKey::new(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; KEY_BYTES] = rand::random();
            let tmp = root.join("iterator.key.tmp");
            fs::write(&tmp, key).map_err(io)?;
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            fs::rename(&tmp, &path).map_err(io)?;
            sync_dir(root)?;
            Ok(IteratorKey::new(key))
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests;
