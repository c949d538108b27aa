//! Resharding, capacity modes and on-demand scaling on the registry: SplitShard, MergeShards,
//! UpdateShardCount, UpdateStreamMode, ListShards' filters, and removal of closed shards once
//! their data has expired.
//!
//! A reshard opens the children, closes the parents (waiting for any put numbering records
//! there), rewrites `stream.json` atomically and then publishes the new shard map, all under
//! the stream's reshard lock and with the map write-locked, so a put sees either the old map
//! (and is routed again when it finds its shard closed) or the new one. The stream then shows
//! UPDATING for `reshard_updating_ms`, in which another reshard is refused.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::hash::HashRange;
use super::layout::{self, ChildPlan};
use super::meta::{self, ClosedMeta, ShardMeta, StreamMeta};
use super::{
    ShardDescription, ShardMap, Stream, StreamMode, Streams, StreamsError, lock, open_shard,
    shard_dir, shard_id,
};
use crate::fragment::UnixMillis;

/// A child of a closed shard, as GetRecords gives it at the shard's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildShard {
    pub shard_id: String,
    pub parent_shards: Vec<String>,
    pub range: HashRange,
}

/// ListShards' `ShardFilter`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardFilter {
    /// No filter: every retained shard.
    All,
    AtLatest,
    AtTrimHorizon,
    FromTrimHorizon,
    AfterShardId(String),
    AtTimestamp(UnixMillis),
    FromTimestamp(UnixMillis),
}

/// What applying a plan needs besides the stream.
#[derive(Clone, Copy, Debug)]
struct Apply {
    segment_bytes_max: u64,
    updating_ms: u64,
}

impl Streams {
    fn apply_settings(&self) -> Apply {
        Apply {
            segment_bytes_max: self.config.segment_bytes_max,
            updating_ms: self.config.reshard_updating_ms,
        }
    }

    fn not_active(&self, name: &str) -> StreamsError {
        StreamsError::InUse(format!(
            "Stream {name} under account {} not ACTIVE, instead in state UPDATING",
            self.config.account_id
        ))
    }

    /// An open shard of the stream by id, with its range.
    fn open_shard_meta(
        &self,
        stream: &Stream,
        name: &str,
        id: &str,
        action: &str,
    ) -> Result<(u32, HashRange), StreamsError> {
        let meta = lock(&stream.meta)?;
        let shard = super::parse_shard_id(id)
            .and_then(|i| meta.shard(i))
            .ok_or_else(|| StreamsError::ShardNotFound {
                shard: id.into(),
                stream: name.into(),
                account: self.config.account_id.clone(),
            })?;
        if shard.closed.is_some() {
            return Err(StreamsError::InUse(format!(
                "Shard {id} in stream {name} under account {} has already been merged or split, and thus is not eligible for {action}.",
                self.config.account_id
            )));
        }
        Ok((shard.index, shard.range()?))
    }

    /// SplitShard: closes the shard and opens two children split at `new_starting_hash_key`.
    pub fn split_shard(
        &self,
        name: &str,
        shard: &str,
        new_starting_hash_key: u128,
        now: UnixMillis,
    ) -> Result<(), StreamsError> {
        let stream = self.stream(name)?;
        if stream.is_updating(now) {
            return Err(self.not_active(name));
        }
        let (index, range) = self.open_shard_meta(&stream, name, shard, "splitting")?;
        let (low, high) = layout::split(range, new_starting_hash_key).ok_or_else(|| {
            StreamsError::InvalidArgument(format!(
                "NewStartingHashKey {new_starting_hash_key} used in SplitShard() on shard {shard} in stream {name} under account {} is not both greater than one plus the shard's StartingHashKey {} and less than the shard's EndingHashKey {}.",
                self.config.account_id, range.start, range.end
            ))
        })?;
        self.check_growth(&stream, 1)?;
        let children = [low, high].map(|range| ChildPlan {
            range,
            parents: vec![index],
        });
        apply_plan(&stream, self.apply_settings(), &[index], &children, now)
            .map_err(|e| self.busy_as_not_active(e, name))
    }

    /// MergeShards: closes two adjacent shards and opens one child covering both.
    pub fn merge_shards(
        &self,
        name: &str,
        shard: &str,
        adjacent: &str,
        now: UnixMillis,
    ) -> Result<(), StreamsError> {
        let stream = self.stream(name)?;
        if stream.is_updating(now) {
            return Err(self.not_active(name));
        }
        let (a, range_a) = self.open_shard_meta(&stream, name, shard, "merging")?;
        let (b, range_b) = self.open_shard_meta(&stream, name, adjacent, "merging")?;
        let range = layout::merge(range_a, range_b).ok_or_else(|| {
            StreamsError::InvalidArgument(format!(
                "Shards {shard} and {adjacent} in stream {name} under account {} are not an adjacent pair of shards eligible for merging",
                self.config.account_id
            ))
        })?;
        let child = ChildPlan {
            range,
            parents: vec![a, b],
        };
        apply_plan(&stream, self.apply_settings(), &[a, b], &[child], now)
            .map_err(|e| self.busy_as_not_active(e, name))
    }

    /// UpdateShardCount with UNIFORM_SCALING: every open shard closes and `target` children
    /// with a uniform layout open. Returns the open shard count before.
    pub fn update_shard_count(
        &self,
        name: &str,
        target: u32,
        now: UnixMillis,
    ) -> Result<u32, StreamsError> {
        let stream = self.stream(name)?;
        if stream.is_updating(now) {
            return Err(self.not_active(name));
        }
        let open: Vec<(u32, HashRange)> = {
            let meta = lock(&stream.meta)?;
            meta.open_shards()
                .map(|s| Ok((s.index, s.range()?)))
                .collect::<Result<_, StreamsError>>()?
        };
        let current = u32::try_from(open.len()).unwrap_or(u32::MAX);
        layout::check_target(current, target, self.config.shards_per_stream_max)?;
        if target == current && is_uniform(&open, target) {
            return Ok(current);
        }
        let children = layout::uniform_children(&open, target);
        let closing: Vec<u32> = open.iter().map(|(i, _)| *i).collect();
        apply_plan(&stream, self.apply_settings(), &closing, &children, now)
            .map_err(|e| self.busy_as_not_active(e, name))?;
        Ok(current)
    }

    /// UpdateStreamMode: switches between provisioned and on-demand capacity.
    pub fn update_stream_mode(
        &self,
        name: &str,
        mode: StreamMode,
        now: UnixMillis,
    ) -> Result<(), StreamsError> {
        let stream = self.stream(name)?;
        let _one = lock(&stream.reshard)?;
        if stream.is_updating(now) {
            return Err(self.not_active(name));
        }
        let mut meta = lock(&stream.meta)?;
        let mut updated = meta.clone();
        updated.mode = mode;
        updated.mode_updated_ms = now.0;
        meta::write(&stream.dir, &updated)?;
        *meta = updated;
        stream
            .updating_until_ms
            .store(now.0 + self.config.reshard_updating_ms, Ordering::Release);
        Ok(())
    }

    fn check_growth(&self, stream: &Stream, added: u32) -> Result<(), StreamsError> {
        let open = lock(&stream.meta)?.open_shards().count();
        let max = self.config.shards_per_stream_max as usize;
        if open + added as usize > max {
            return Err(StreamsError::LimitExceeded(format!(
                "This stream may hold at most {max} open shards."
            )));
        }
        Ok(())
    }

    fn busy_as_not_active(&self, error: StreamsError, name: &str) -> StreamsError {
        match error {
            StreamsError::InUse(_) => self.not_active(name),
            other => other,
        }
    }

    /// ListShards: the retained shards that pass `filter`, in shard id order.
    pub fn list_shards(
        &self,
        name: &str,
        filter: &ShardFilter,
        now: UnixMillis,
    ) -> Result<Vec<ShardDescription>, StreamsError> {
        let d = self.describe_at(name, now)?;
        let retained: Vec<String> = d.shards.iter().map(|s| s.shard_id.clone()).collect();
        let is_retained = |id: &Option<String>| id.as_ref().is_some_and(|p| retained.contains(p));
        Ok(d.shards
            .iter()
            .filter(|s| match filter {
                ShardFilter::All | ShardFilter::FromTrimHorizon => true,
                ShardFilter::AtLatest => s.closed_ms.is_none(),
                ShardFilter::AtTrimHorizon => {
                    !is_retained(&s.parent_shard_id) && !is_retained(&s.adjacent_parent_shard_id)
                }
                ShardFilter::AfterShardId(id) => s.shard_id.as_str() > id.as_str(),
                ShardFilter::AtTimestamp(at) => {
                    s.created_ms <= at.0 && s.closed_ms.is_none_or(|c| c >= at.0)
                }
                ShardFilter::FromTimestamp(at) => s.closed_ms.is_none_or(|c| c >= at.0),
            })
            .cloned()
            .collect())
    }

    /// Splits one hot shard of every on-demand stream that has one; returns the split shards
    /// as (stream, shard id). The put path starts the same check on its own.
    pub fn autoscale(&self, now: UnixMillis) -> Result<Vec<(String, String)>, StreamsError> {
        let streams: Vec<(String, Arc<Stream>)> = {
            let map = self.streams.read().map_err(|_| StreamsError::Poisoned)?;
            map.iter()
                .map(|(n, s)| (n.clone(), Arc::clone(s)))
                .collect()
        };
        let mut split = Vec::new();
        for (name, stream) in streams {
            if let Some(index) = self.split_if_hot(&stream, now)? {
                split.push((name, shard_id(index)));
            }
        }
        Ok(split)
    }

    fn split_if_hot(&self, stream: &Stream, now: UnixMillis) -> Result<Option<u32>, StreamsError> {
        if lock(&stream.meta)?.mode != StreamMode::OnDemand || stream.is_updating(now) {
            return Ok(None);
        }
        let Some((index, plan)) = hot_split(stream, self.config.scaling, now)? else {
            return Ok(None);
        };
        match apply_plan(stream, self.apply_settings(), &[index], &plan, now) {
            Ok(()) => Ok(Some(index)),
            // Another reshard got there first: try again on a later check.
            Err(StreamsError::InUse(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// After a put on an on-demand stream: split a hot shard off the async workers.
    pub(super) fn scale_hot_shard(&self, stream: &Arc<Stream>, now: UnixMillis) {
        if stream.is_updating(now) {
            return;
        }
        let plan = match hot_split(stream, self.config.scaling, now) {
            Ok(Some(plan)) => plan,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "On-demand scaling could not inspect a stream.");
                return;
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if stream.scaling.swap(true, Ordering::AcqRel) {
            return;
        }
        let stream = Arc::clone(stream);
        let settings = self.apply_settings();
        runtime.spawn_blocking(move || {
            let (index, children) = plan;
            match apply_plan(&stream, settings, &[index], &children, now) {
                Ok(()) => {
                    tracing::info!(shard = %shard_id(index), "On-demand scaling split a hot shard.")
                }
                Err(StreamsError::InUse(_)) => {}
                Err(e) => tracing::warn!(error = %e, "On-demand scaling could not split a shard."),
            }
            stream.scaling.store(false, Ordering::Release);
        });
    }
}

/// The hottest-first open shard the policy says to split, and its two children.
fn hot_split(
    stream: &Stream,
    policy: super::scaling::ScalingPolicy,
    now: UnixMillis,
) -> Result<Option<(u32, Vec<ChildPlan>)>, StreamsError> {
    let map = stream.map()?;
    let open = u32::try_from(map.open.len()).unwrap_or(u32::MAX);
    for shard in &map.open {
        if !shard.should_split(&policy, open, now)? {
            continue;
        }
        let Some(middle) = layout::midpoint(shard.range) else {
            continue;
        };
        if let Some((low, high)) = layout::split(shard.range, middle) {
            let children = [low, high]
                .into_iter()
                .map(|range| ChildPlan {
                    range,
                    parents: vec![shard.index],
                })
                .collect();
            return Ok(Some((shard.index, children)));
        }
    }
    Ok(None)
}

fn is_uniform(open: &[(u32, HashRange)], target: u32) -> bool {
    let mut ranges: Vec<HashRange> = open.iter().map(|(_, r)| *r).collect();
    ranges.sort_by_key(|r| r.start);
    ranges == super::hash::initial_ranges(target)
}

/// Applies a reshard: opens `children`, closes `closing`, records both durably, publishes.
fn apply_plan(
    stream: &Stream,
    settings: Apply,
    closing: &[u32],
    children: &[ChildPlan],
    now: UnixMillis,
) -> Result<(), StreamsError> {
    let _one = lock(&stream.reshard)?;
    if stream.is_updating(now) {
        return Err(StreamsError::InUse("the stream is updating".into()));
    }
    let mut meta = lock(&stream.meta)?;
    if closing
        .iter()
        .any(|i| meta.shard(*i).is_none_or(|s| s.closed.is_some()))
    {
        return Err(StreamsError::InUse(
            "a parent shard is already closed".into(),
        ));
    }
    let mut updated = meta.clone();
    let mut opened = Vec::with_capacity(children.len());
    for child in children {
        let index = updated.take_shard_index();
        let shard_meta = ShardMeta {
            index,
            starting_hash_key: child.range.start.to_string(),
            ending_hash_key: child.range.end.to_string(),
            created_s: now.0 / 1000,
            created_ms: now.0,
            parent: child.parents.first().copied(),
            adjacent_parent: child.parents.get(1).copied(),
            closed: None,
        };
        opened.push(Arc::new(open_shard(
            &stream.dir,
            &shard_meta,
            settings.segment_bytes_max,
            now,
        )?));
        updated.shards.push(shard_meta);
    }
    let mut map = stream.shards.write().map_err(|_| StreamsError::Poisoned)?;
    let result = close_and_record(stream, &map, &mut updated, closing, now);
    if let Err(e) = result {
        // Nothing was recorded: the parents take writes again and the children are dropped.
        for index in closing {
            if let Some(shard) = map.get(*index) {
                shard.reopen()?;
            }
        }
        return Err(e);
    }
    let all = map.all.iter().cloned().chain(opened).collect();
    *map = Arc::new(ShardMap::new(all, &updated));
    *meta = updated;
    stream
        .updating_until_ms
        .store(now.0 + settings.updating_ms, Ordering::Release);
    Ok(())
}

fn close_and_record(
    stream: &Stream,
    map: &ShardMap,
    updated: &mut StreamMeta,
    closing: &[u32],
    now: UnixMillis,
) -> Result<(), StreamsError> {
    for index in closing {
        let shard = map
            .get(*index)
            .ok_or_else(|| StreamsError::Corrupt(format!("shard {index} has no log open")))?;
        let end_counter = shard.close()?;
        if let Some(s) = updated.shards.iter_mut().find(|s| s.index == *index) {
            s.closed = Some(ClosedMeta {
                end_counter,
                closed_ms: now.0,
            });
        }
    }
    meta::write(&stream.dir, updated)
}

/// The children of shard `index`, for GetRecords at its end.
pub(super) fn children_of(meta: &StreamMeta, index: u32) -> Result<Vec<ChildShard>, StreamsError> {
    meta.shards
        .iter()
        .filter(|s| s.parent == Some(index) || s.adjacent_parent == Some(index))
        .map(|s| {
            Ok(ChildShard {
                shard_id: shard_id(s.index),
                parent_shards: s
                    .parent
                    .iter()
                    .chain(&s.adjacent_parent)
                    .map(|p| shard_id(*p))
                    .collect(),
                range: s.range()?,
            })
        })
        .collect()
}

/// Removes closed shards whose close lies further back than the retention; returns how many.
pub(super) fn drop_expired_shards(
    stream: &Stream,
    retention_ms: u64,
    now: UnixMillis,
) -> Result<usize, StreamsError> {
    let _one = lock(&stream.reshard)?;
    let mut meta = lock(&stream.meta)?;
    let expired: Vec<u32> = meta
        .shards
        .iter()
        .filter(|s| {
            s.closed
                .is_some_and(|c| c.closed_ms.saturating_add(retention_ms) <= now.0)
        })
        .map(|s| s.index)
        .collect();
    if expired.is_empty() {
        return Ok(0);
    }
    let mut updated = meta.clone();
    updated.next_shard_index = updated.take_shard_index();
    updated.shards.retain(|s| !expired.contains(&s.index));
    // Record first: a crash before the folders go leaves only unreferenced folders.
    meta::write(&stream.dir, &updated)?;
    {
        let mut map = stream.shards.write().map_err(|_| StreamsError::Poisoned)?;
        let all = map
            .all
            .iter()
            .filter(|s| !expired.contains(&s.index))
            .cloned()
            .collect();
        *map = Arc::new(ShardMap::new(all, &updated));
    }
    *meta = updated;
    for index in &expired {
        let dir = shard_dir(&stream.dir, *index);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(error = %e, dir = %dir.display(), "A closed shard's folder could not be removed.");
        }
    }
    Ok(expired.len())
}
