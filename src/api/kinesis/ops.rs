//! One function per operation: validate, call `Streams`, shape the reply.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::KinesisError;
use super::parse::{Body, missing, pattern_error};
use crate::fragment::UnixMillis;
use crate::streams::{
    self, IteratorStart, PutEntry, ShardFilter, StreamDescription, StreamMode, Streams,
    valid_stream_name,
};

/// PutRecords limits (the model's and AWS's).
const PUT_RECORDS_ENTRIES_MAX: usize = 500;
const PUT_RECORDS_BYTES_MAX: usize = 5 * 1024 * 1024;
const PARTITION_KEY_CHARS_MAX: usize = 256;
const LIST_LIMIT_MAX: i64 = 10_000;
const STREAM_NAME_PATTERN: &str = "[a-zA-Z0-9_.-]+";
/// The shard limit reported by DescribeLimits.
const SHARD_LIMIT: usize = 500;

type Reply = Result<Value, KinesisError>;

pub async fn call(streams: &Arc<Streams>, operation: &str, body: Body) -> Reply {
    match operation {
        "PutRecord" => put_record(streams, body).await,
        "PutRecords" => put_records(streams, body).await,
        _ => {
            let streams = Arc::clone(streams);
            let operation = operation.to_owned();
            tokio::task::spawn_blocking(move || call_blocking(&streams, &operation, body))
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "A data streams task failed.");
                    Err(KinesisError::internal())
                })
        }
    }
}

fn call_blocking(streams: &Streams, operation: &str, body: Body) -> Reply {
    match operation {
        "CreateStream" => create_stream(streams, body),
        "DeleteStream" => delete_stream(streams, body),
        "DescribeStream" => describe_stream(streams, body),
        "DescribeStreamSummary" => describe_stream_summary(streams, body),
        "ListStreams" => list_streams(streams, body),
        "ListShards" => list_shards(streams, body),
        "GetShardIterator" => get_shard_iterator(streams, body),
        "GetRecords" => get_records(streams, body),
        "IncreaseStreamRetentionPeriod" => retention(streams, body, true),
        "DecreaseStreamRetentionPeriod" => retention(streams, body, false),
        "AddTagsToStream" => add_tags(streams, body),
        "RemoveTagsFromStream" => remove_tags(streams, body),
        "ListTagsForStream" => list_tags(streams, body),
        "DescribeLimits" => describe_limits(streams),
        "SplitShard" => split_shard(streams, body),
        "MergeShards" => merge_shards(streams, body),
        "UpdateShardCount" => update_shard_count(streams, body),
        "UpdateStreamMode" => update_stream_mode(streams, body),
        _ => Err(KinesisError::new("UnknownOperationException", "")),
    }
}

fn check_name(member: &str, name: &str) -> Result<(), KinesisError> {
    if name.is_empty() || name.len() > 128 {
        return Err(KinesisError::validation(format!(
            "1 validation error detected: Value '{name}' at '{member}' failed to satisfy constraint: Member must have length between 1 and 128"
        )));
    }
    if !valid_stream_name(name) {
        return Err(pattern_error(member, name, STREAM_NAME_PATTERN));
    }
    Ok(())
}

/// The stream named by `StreamName` or `StreamARN` (both allowed when they agree).
fn stream_name(streams: &Streams, body: &Body) -> Result<String, KinesisError> {
    let name = body.string("StreamName", 1, 128)?;
    let arn = body.string("StreamARN", 1, 2048)?;
    if let Some(name) = &name {
        check_name("StreamName", name)?;
    }
    let from_arn = match &arn {
        Some(arn) => Some(streams.name_from_arn(arn).ok_or_else(|| {
            KinesisError::invalid(format!(
                "StreamARN {arn} is not a stream ARN of this account and region."
            ))
        })?),
        None => None,
    };
    match (name, from_arn) {
        (Some(n), Some(a)) if n != a => Err(KinesisError::invalid(
            "StreamName and StreamARN name different streams.",
        )),
        (Some(n), _) => Ok(n),
        (None, Some(a)) => Ok(a.to_owned()),
        (None, None) => Err(KinesisError::invalid(
            "Either StreamName or StreamARN must be provided.",
        )),
    }
}

fn secs(ms: u64) -> Value {
    json!(ms as f64 / 1000.0)
}

fn create_stream(streams: &Streams, body: Body) -> Reply {
    let name = body.required_string("StreamName", 1, 128)?;
    check_name("StreamName", &name)?;
    let count = body.integer("ShardCount", 1, 100_000)?;
    // Without a mode, a stream with ShardCount is provisioned and one without is on-demand.
    let mode = stream_mode(&body)?.unwrap_or(if count.is_some() {
        StreamMode::Provisioned
    } else {
        StreamMode::OnDemand
    });
    let shards = match (mode, count) {
        (StreamMode::OnDemand, None) => streams::ON_DEMAND_INITIAL_SHARDS,
        (StreamMode::OnDemand, Some(_)) => {
            return Err(KinesisError::invalid(
                "ShardCount cannot be specified for a stream in ON_DEMAND mode.",
            ));
        }
        (StreamMode::Provisioned, None) => {
            return Err(KinesisError::invalid(
                "ShardCount is required for a stream in PROVISIONED mode.",
            ));
        }
        (StreamMode::Provisioned, Some(n)) => {
            u32::try_from(n).map_err(|_| KinesisError::invalid("ShardCount is too large."))?
        }
    };
    streams.create_stream_in_mode(&name, shards, mode, UnixMillis::now())?;
    if let Some(tags) = body.string_map("Tags")? {
        streams.add_tags(&name, tags.into_iter().collect())?;
    }
    Ok(json!({}))
}

fn delete_stream(streams: &Streams, body: Body) -> Reply {
    let name = stream_name(streams, &body)?;
    streams.delete_stream(&name)?;
    Ok(json!({}))
}

fn shard_json(shard: &streams::ShardDescription) -> Value {
    let mut out = json!({
        "ShardId": shard.shard_id,
        "HashKeyRange": {
            "StartingHashKey": shard.range.start.to_string(),
            "EndingHashKey": shard.range.end.to_string(),
        },
        "SequenceNumberRange": { "StartingSequenceNumber": shard.starting_sequence_number },
    });
    if let Some(end) = &shard.ending_sequence_number {
        out["SequenceNumberRange"]["EndingSequenceNumber"] = json!(end);
    }
    if let Some(parent) = &shard.parent_shard_id {
        out["ParentShardId"] = json!(parent);
    }
    if let Some(adjacent) = &shard.adjacent_parent_shard_id {
        out["AdjacentParentShardId"] = json!(adjacent);
    }
    out
}

/// `StreamModeDetails.StreamMode`, when given.
fn stream_mode(body: &Body) -> Result<Option<StreamMode>, KinesisError> {
    let Some(details) = body.0.get("StreamModeDetails").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let mode = details
        .get("StreamMode")
        .and_then(Value::as_str)
        .ok_or_else(|| missing("StreamModeDetails.StreamMode"))?;
    StreamMode::parse(mode).map(Some).ok_or_else(|| {
        KinesisError::validation(format!(
            "1 validation error detected: Value '{mode}' at 'streamModeDetails.streamMode' failed to satisfy constraint: Member must satisfy enum value set: [PROVISIONED, ON_DEMAND]"
        ))
    })
}

fn common(d: &StreamDescription) -> serde_json::Map<String, Value> {
    let value = json!({
        "StreamName": d.name,
        "StreamARN": d.arn,
        "StreamStatus": d.status,
        "StreamModeDetails": { "StreamMode": d.mode.as_str() },
        "RetentionPeriodHours": d.retention_hours,
        "StreamCreationTimestamp": secs(d.created_ms),
        "EnhancedMonitoring": [{ "ShardLevelMetrics": [] }],
        "EncryptionType": "NONE",
    });
    match value {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// Shards after `exclusive_start` (by id), at most `limit`, and whether more remain.
fn page_shards<'a>(
    d: &'a StreamDescription,
    exclusive_start: Option<&str>,
    limit: usize,
) -> (Vec<&'a streams::ShardDescription>, bool) {
    let after: Vec<&streams::ShardDescription> = d
        .shards
        .iter()
        .filter(|s| exclusive_start.is_none_or(|start| s.shard_id.as_str() > start))
        .collect();
    let more = after.len() > limit;
    (after.into_iter().take(limit).collect(), more)
}

fn describe_stream(streams: &Streams, body: Body) -> Reply {
    let name = stream_name(streams, &body)?;
    let limit = body.integer("Limit", 1, LIST_LIMIT_MAX)?.unwrap_or(100) as usize;
    let start = body.string("ExclusiveStartShardId", 1, 128)?;
    let d = streams.describe(&name)?;
    let (shards, more) = page_shards(&d, start.as_deref(), limit);
    let mut out = common(&d);
    out.insert(
        "Shards".into(),
        shards.into_iter().map(shard_json).collect(),
    );
    out.insert("HasMoreShards".into(), json!(more));
    Ok(json!({ "StreamDescription": out }))
}

fn describe_stream_summary(streams: &Streams, body: Body) -> Reply {
    let name = stream_name(streams, &body)?;
    let d = streams.describe(&name)?;
    let mut out = common(&d);
    out.insert("OpenShardCount".into(), json!(d.open_shard_count));
    out.insert("ConsumerCount".into(), json!(0));
    Ok(json!({ "StreamDescriptionSummary": out }))
}

fn list_streams(streams: &Streams, body: Body) -> Reply {
    let limit = body.integer("Limit", 1, LIST_LIMIT_MAX)?.unwrap_or(100) as usize;
    let start = match body.string("NextToken", 1, 1048576)? {
        Some(token) => Some(decode_token(&token)?),
        None => body.string("ExclusiveStartStreamName", 1, 128)?,
    };
    let names: Vec<String> = streams
        .list_streams()?
        .into_iter()
        .filter(|n| start.as_deref().is_none_or(|s| n.as_str() > s))
        .collect();
    let more = names.len() > limit;
    let page: Vec<String> = names.into_iter().take(limit).collect();
    let mut summaries = Vec::with_capacity(page.len());
    for name in &page {
        // A stream deleted since the listing is simply left out.
        if let Ok(d) = streams.describe(name) {
            summaries.push(json!({
                "StreamName": d.name,
                "StreamARN": d.arn,
                "StreamStatus": d.status,
                "StreamModeDetails": { "StreamMode": d.mode.as_str() },
                "StreamCreationTimestamp": secs(d.created_ms),
            }));
        }
    }
    let mut out =
        json!({ "StreamNames": page, "HasMoreStreams": more, "StreamSummaries": summaries });
    if more && let Some(last) = page.last() {
        out["NextToken"] = json!(STANDARD.encode(last));
    }
    Ok(out)
}

fn decode_token(token: &str) -> Result<String, KinesisError> {
    STANDARD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| KinesisError::invalid("NextToken is not valid."))
}

fn list_shards(streams: &Streams, body: Body) -> Reply {
    let limit = body
        .integer("MaxResults", 1, LIST_LIMIT_MAX)?
        .unwrap_or(1000) as usize;
    let (name, start) = match body.string("NextToken", 1, 1048576)? {
        Some(token) => {
            if body.get_present("StreamName") || body.get_present("StreamARN") {
                return Err(KinesisError::invalid(
                    "NextToken and StreamName cannot be provided together.",
                ));
            }
            let decoded = decode_token(&token)?;
            let (name, last) = decoded
                .split_once('|')
                .ok_or_else(|| KinesisError::invalid("NextToken is not valid."))?;
            (name.to_owned(), Some(last.to_owned()))
        }
        None => (
            stream_name(streams, &body)?,
            body.string("ExclusiveStartShardId", 1, 128)?,
        ),
    };
    let filter = shard_filter(&body)?;
    let mut d = streams.describe(&name)?;
    d.shards = streams.list_shards(&name, &filter, UnixMillis::now())?;
    let (shards, more) = page_shards(&d, start.as_deref(), limit);
    let mut out = json!({ "Shards": shards.iter().map(|s| shard_json(s)).collect::<Vec<_>>() });
    if more && let Some(last) = shards.last() {
        out["NextToken"] = json!(STANDARD.encode(format!("{name}|{}", last.shard_id)));
    }
    Ok(out)
}

fn partition_key(body: &Body) -> Result<String, KinesisError> {
    body.required_string("PartitionKey", 1, PARTITION_KEY_CHARS_MAX)
}

fn explicit_hash_key(body: &Body) -> Result<Option<u128>, KinesisError> {
    let Some(key) = body.string("ExplicitHashKey", 1, 39)? else {
        return Ok(None);
    };
    let canonical =
        key == "0" || (!key.starts_with('0') && key.bytes().all(|b| b.is_ascii_digit()));
    match key.parse::<u128>() {
        Ok(v) if canonical => Ok(Some(v)),
        _ => Err(KinesisError::invalid(format!(
            "Invalid ExplicitHashKey. ExplicitHashKey must be in the range: [0, 2^128-1]. Specified value was {key}"
        ))),
    }
}

fn entry(body: &Body) -> Result<PutEntry, KinesisError> {
    Ok(PutEntry {
        data: body.blob("Data", streams::RECORD_DATA_BYTES_MAX)?,
        partition_key: partition_key(body)?,
        explicit_hash_key: explicit_hash_key(body)?,
    })
}

async fn put_record(streams: &Arc<Streams>, body: Body) -> Reply {
    let name = stream_name(streams, &body)?;
    let entry = entry(&body)?;
    let mut outcomes = streams
        .put_records(&name, vec![entry], UnixMillis::now())
        .await?;
    match outcomes.pop() {
        Some(Ok(ok)) => Ok(json!({
            "ShardId": ok.shard_id,
            "SequenceNumber": ok.sequence_number,
            "EncryptionType": "NONE",
        })),
        Some(Err(failure)) if failure.code != "InternalFailure" => {
            Err(KinesisError::new(failure.code, failure.message))
        }
        _ => Err(KinesisError::internal()),
    }
}

async fn put_records(streams: &Arc<Streams>, body: Body) -> Reply {
    let name = stream_name(streams, &body)?;
    let records = body.objects("Records")?.ok_or_else(|| missing("Records"))?;
    if records.is_empty() || records.len() > PUT_RECORDS_ENTRIES_MAX {
        return Err(KinesisError::validation(format!(
            "1 validation error detected: Value '{}' at 'records' failed to satisfy constraint: Member must have length between 1 and {PUT_RECORDS_ENTRIES_MAX}",
            records.len()
        )));
    }
    let entries = records.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
    let bytes: usize = entries
        .iter()
        .map(|e| e.data.len() + e.partition_key.len())
        .sum();
    if bytes > PUT_RECORDS_BYTES_MAX {
        return Err(KinesisError::invalid(format!(
            "Records size exceeds 5 MB limit: {bytes} bytes."
        )));
    }
    let outcomes = streams
        .put_records(&name, entries, UnixMillis::now())
        .await?;
    let failed = outcomes.iter().filter(|o| o.is_err()).count();
    let results: Vec<Value> = outcomes
        .into_iter()
        .map(|o| match o {
            Ok(ok) => json!({ "SequenceNumber": ok.sequence_number, "ShardId": ok.shard_id }),
            Err(e) => json!({ "ErrorCode": e.code, "ErrorMessage": e.message }),
        })
        .collect();
    Ok(json!({ "FailedRecordCount": failed, "Records": results, "EncryptionType": "NONE" }))
}

fn get_shard_iterator(streams: &Streams, body: Body) -> Reply {
    let name = stream_name(streams, &body)?;
    let shard = body.required_string("ShardId", 1, 128)?;
    let kind = body.required_string("ShardIteratorType", 1, 64)?;
    let sequence = || {
        body.string("StartingSequenceNumber", 1, 128)?
            .ok_or_else(|| {
                KinesisError::invalid(format!(
                    "StartingSequenceNumber must be provided for ShardIteratorType {kind}."
                ))
            })
    };
    let start = match kind.as_str() {
        "TRIM_HORIZON" => IteratorStart::TrimHorizon,
        "LATEST" => IteratorStart::Latest,
        "AT_SEQUENCE_NUMBER" => IteratorStart::AtSequenceNumber(sequence()?),
        "AFTER_SEQUENCE_NUMBER" => IteratorStart::AfterSequenceNumber(sequence()?),
        "AT_TIMESTAMP" => {
            IteratorStart::AtTimestamp(body.timestamp("Timestamp")?.ok_or_else(|| {
                KinesisError::invalid(
                    "Timestamp must be provided for ShardIteratorType AT_TIMESTAMP.",
                )
            })?)
        }
        other => {
            return Err(KinesisError::validation(format!(
                "1 validation error detected: Value '{other}' at 'shardIteratorType' failed to satisfy constraint: Member must satisfy enum value set: [AFTER_SEQUENCE_NUMBER, AT_SEQUENCE_NUMBER, AT_TIMESTAMP, TRIM_HORIZON, LATEST]"
            )));
        }
    };
    let iterator = streams.shard_iterator(&name, &shard, &start, UnixMillis::now())?;
    Ok(json!({ "ShardIterator": iterator }))
}

fn get_records(streams: &Streams, body: Body) -> Reply {
    let iterator = body.required_string("ShardIterator", 1, 512)?;
    let limit = body
        .integer("Limit", 1, streams::GET_RECORDS_LIMIT_MAX as i64)?
        .unwrap_or(10_000);
    let out = streams.get_records(&iterator, limit as usize, UnixMillis::now())?;
    let records: Vec<Value> = out
        .records
        .into_iter()
        .map(|r| {
            json!({
                "SequenceNumber": r.sequence_number,
                "ApproximateArrivalTimestamp": secs(r.arrival_ms),
                "Data": STANDARD.encode(&r.data),
                "PartitionKey": r.partition_key,
            })
        })
        .collect();
    let mut reply = json!({
        "Records": records,
        "MillisBehindLatest": out.millis_behind_latest,
    });
    match out.next_shard_iterator {
        Some(next) => reply["NextShardIterator"] = json!(next),
        None => {
            let children: Vec<Value> = out
                .child_shards
                .iter()
                .map(|c| {
                    json!({
                        "ShardId": c.shard_id,
                        "ParentShards": c.parent_shards,
                        "HashKeyRange": {
                            "StartingHashKey": c.range.start.to_string(),
                            "EndingHashKey": c.range.end.to_string(),
                        },
                    })
                })
                .collect();
            reply["ChildShards"] = json!(children);
        }
    }
    Ok(reply)
}

fn retention(streams: &Streams, body: Body, increase: bool) -> Reply {
    let name = stream_name(streams, &body)?;
    let hours = body
        .integer("RetentionPeriodHours", 0, i64::from(u32::MAX))?
        .ok_or_else(|| missing("RetentionPeriodHours"))?;
    streams.set_retention(&name, u32::try_from(hours).unwrap_or(u32::MAX), increase)?;
    Ok(json!({}))
}

fn add_tags(streams: &Streams, body: Body) -> Reply {
    let name = stream_name(streams, &body)?;
    let tags = body.string_map("Tags")?.ok_or_else(|| missing("Tags"))?;
    if tags.is_empty() || tags.len() > 10 {
        return Err(KinesisError::invalid("Tags must hold 1 to 10 entries."));
    }
    for (k, v) in &tags {
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(KinesisError::invalid(format!(
                "Tag {k:?} has a key or value of bad length."
            )));
        }
    }
    streams.add_tags(&name, tags.into_iter().collect::<BTreeMap<_, _>>())?;
    Ok(json!({}))
}

fn remove_tags(streams: &Streams, body: Body) -> Reply {
    let name = stream_name(streams, &body)?;
    let keys = body
        .string_list("TagKeys")?
        .ok_or_else(|| missing("TagKeys"))?;
    if keys.is_empty() || keys.len() > 50 {
        return Err(KinesisError::invalid("TagKeys must hold 1 to 50 keys."));
    }
    streams.remove_tags(&name, &keys)?;
    Ok(json!({}))
}

fn list_tags(streams: &Streams, body: Body) -> Reply {
    let name = stream_name(streams, &body)?;
    let start = body.string("ExclusiveStartTagKey", 1, 128)?;
    let limit = body.integer("Limit", 1, 50)?.unwrap_or(50) as usize;
    let tags: Vec<(String, String)> = streams
        .tags(&name)?
        .into_iter()
        .filter(|(k, _)| start.as_deref().is_none_or(|s| k.as_str() > s))
        .collect();
    let more = tags.len() > limit;
    let page: Vec<Value> = tags
        .into_iter()
        .take(limit)
        .map(|(k, v)| json!({ "Key": k, "Value": v }))
        .collect();
    Ok(json!({ "Tags": page, "HasMoreTags": more }))
}

fn describe_limits(streams: &Streams) -> Reply {
    let (mut open, mut on_demand) = (0, 0);
    for name in streams.list_streams()? {
        if let Ok(d) = streams.describe(&name) {
            open += d.open_shard_count;
            on_demand += usize::from(d.mode == StreamMode::OnDemand);
        }
    }
    Ok(json!({
        "ShardLimit": SHARD_LIMIT,
        "OpenShardCount": open,
        "OnDemandStreamCount": on_demand,
        "OnDemandStreamCountLimit": 50,
    }))
}

/// ListShards' `ShardFilter`, when given.
fn shard_filter(body: &Body) -> Result<ShardFilter, KinesisError> {
    let Some(value) = body.0.get("ShardFilter").filter(|v| !v.is_null()) else {
        return Ok(ShardFilter::All);
    };
    let Value::Object(map) = value else {
        return Err(KinesisError::new(
            "SerializationException",
            "Member ShardFilter has the wrong type.",
        ));
    };
    let filter = Body(map.clone());
    let kind = filter.required_string("Type", 1, 64)?;
    let timestamp = || {
        filter.timestamp("Timestamp")?.ok_or_else(|| {
            KinesisError::invalid(format!(
                "Timestamp must be provided for ShardFilter type {kind}."
            ))
        })
    };
    Ok(match kind.as_str() {
        "AT_LATEST" => ShardFilter::AtLatest,
        "AT_TRIM_HORIZON" => ShardFilter::AtTrimHorizon,
        "FROM_TRIM_HORIZON" => ShardFilter::FromTrimHorizon,
        "AFTER_SHARD_ID" => {
            ShardFilter::AfterShardId(filter.string("ShardId", 1, 128)?.ok_or_else(|| {
                KinesisError::invalid(
                    "ShardId must be provided for ShardFilter type AFTER_SHARD_ID.",
                )
            })?)
        }
        "AT_TIMESTAMP" => ShardFilter::AtTimestamp(timestamp()?),
        "FROM_TIMESTAMP" => ShardFilter::FromTimestamp(timestamp()?),
        other => {
            return Err(KinesisError::validation(format!(
                "1 validation error detected: Value '{other}' at 'shardFilter.type' failed to satisfy constraint: Member must satisfy enum value set: [AFTER_SHARD_ID, AT_TRIM_HORIZON, FROM_TRIM_HORIZON, AT_LATEST, AT_TIMESTAMP, FROM_TIMESTAMP]"
            )));
        }
    })
}

/// A hash key in decimal, as the model gives it (`0|([1-9]\d{0,38})`).
fn hash_key(body: &Body, member: &str) -> Result<u128, KinesisError> {
    let key = body.required_string(member, 1, 39)?;
    let canonical =
        key == "0" || (!key.starts_with('0') && key.bytes().all(|b| b.is_ascii_digit()));
    match key.parse::<u128>() {
        Ok(v) if canonical => Ok(v),
        _ => Err(pattern_error(member, &key, "0|([1-9]\\d{0,38})")),
    }
}

fn split_shard(streams: &Streams, body: Body) -> Reply {
    let name = stream_name(streams, &body)?;
    let shard = body.required_string("ShardToSplit", 1, 128)?;
    let key = hash_key(&body, "NewStartingHashKey")?;
    streams.split_shard(&name, &shard, key, UnixMillis::now())?;
    Ok(json!({}))
}

fn merge_shards(streams: &Streams, body: Body) -> Reply {
    let name = stream_name(streams, &body)?;
    let shard = body.required_string("ShardToMerge", 1, 128)?;
    let adjacent = body.required_string("AdjacentShardToMerge", 1, 128)?;
    streams.merge_shards(&name, &shard, &adjacent, UnixMillis::now())?;
    Ok(json!({}))
}

fn update_shard_count(streams: &Streams, body: Body) -> Reply {
    let name = stream_name(streams, &body)?;
    let target = body
        .integer("TargetShardCount", 1, i64::from(u32::MAX))?
        .ok_or_else(|| missing("TargetShardCount"))?;
    let scaling = body
        .string("ScalingType", 1, 64)?
        .ok_or_else(|| missing("ScalingType"))?;
    if scaling != "UNIFORM_SCALING" {
        return Err(KinesisError::validation(format!(
            "1 validation error detected: Value '{scaling}' at 'scalingType' failed to satisfy constraint: Member must satisfy enum value set: [UNIFORM_SCALING]"
        )));
    }
    let target = u32::try_from(target).unwrap_or(u32::MAX);
    let current = streams.update_shard_count(&name, target, UnixMillis::now())?;
    Ok(json!({
        "StreamName": name,
        "StreamARN": streams.arn(&name),
        "CurrentShardCount": current,
        "TargetShardCount": target,
    }))
}

fn update_stream_mode(streams: &Streams, body: Body) -> Reply {
    let name = stream_name(streams, &body)?;
    let mode = stream_mode(&body)?.ok_or_else(|| missing("StreamModeDetails"))?;
    streams.update_stream_mode(&name, mode, UnixMillis::now())?;
    Ok(json!({}))
}
