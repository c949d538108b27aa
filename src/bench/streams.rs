//! `hydrant bench streams`: creates a stream, then drives PutRecord, PutRecords and GetRecords
//! (one phase each, a third of the duration apiece) with many concurrent HTTP connections, and
//! reports records/s, MiB/s and latency p50/p99 per operation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// Most latency samples one worker keeps in a phase (4 bytes each).
pub const LATENCY_SAMPLES_PER_WORKER_MAX: usize = 1_000_000;
/// Largest connection count accepted.
pub const CONNECTIONS_MAX: usize = 4096;
/// PutRecords takes at most this many entries.
pub const RECORDS_PER_REQUEST_MAX: usize = 500;
/// Largest record a load run sends (the Kinesis limit).
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;
/// How long the stream may take to become ACTIVE.
const ACTIVE_TIMEOUT_MS: u64 = 30_000;
/// Records asked for per GetRecords call.
const GET_LIMIT_RECORDS: u64 = 10_000;
const TARGET_PREFIX: &str = "Kinesis_20131202.";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{operation} answered HTTP {status}: {body}")]
    Status {
        operation: &'static str,
        status: u16,
        body: String,
    },
    #[error("stream {0} did not become ACTIVE in time")]
    NotActive(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// Base URL of the server's HTTP port, e.g. `http://127.0.0.1:7070`.
    pub endpoint: String,
    pub connections: usize,
    pub duration: Duration,
    pub records_per_request: usize,
    pub record_bytes: usize,
    pub shards: u32,
}

impl LoadSettings {
    fn check(&self) -> Result<(), LoadError> {
        let bad = |why: &str| Err(LoadError::Settings(why.to_owned()));
        if self.connections == 0 || self.connections > CONNECTIONS_MAX {
            return bad("connections must be 1..=4096");
        }
        if self.records_per_request == 0 || self.records_per_request > RECORDS_PER_REQUEST_MAX {
            return bad("records per request must be 1..=500");
        }
        if self.record_bytes == 0 || self.record_bytes > RECORD_BYTES_MAX {
            return bad("record bytes must be 1..=1048576");
        }
        if self.shards == 0 {
            return bad("shards must be at least 1");
        }
        Ok(())
    }
}

/// Figures of one operation's phase.
#[derive(Debug, Clone)]
pub struct OpFigures {
    pub operation: &'static str,
    pub seconds: f64,
    pub requests: u64,
    pub records: u64,
    pub bytes: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl OpFigures {
    pub fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds
    }
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / (1024.0 * 1024.0)
    }
}

impl std::fmt::Display for OpFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<11} {:>10.0} req/s {:>11.0} records/s {:>8.1} MiB/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
            self.operation,
            self.requests_per_s(),
            self.records_per_s(),
            self.mib_per_s(),
            self.p50_ms,
            self.p99_ms,
            self.errors
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    PutRecord,
    PutRecords,
    GetRecords,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::PutRecord => "PutRecord",
            Op::PutRecords => "PutRecords",
            Op::GetRecords => "GetRecords",
        }
    }
}

/// Shared counters of a phase, read by the progress printer.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    endpoint: String,
}

impl Client {
    async fn call(&self, operation: &'static str, body: &Value) -> Result<Value, LoadError> {
        let response = self
            .http
            .post(&self.endpoint)
            .header("x-amz-target", format!("{TARGET_PREFIX}{operation}"))
            .header("content-type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        if status != 200 {
            let body = String::from_utf8_lossy(&bytes).into_owned();
            return Err(LoadError::Status {
                operation,
                status,
                body,
            });
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// Runs the three phases against a fresh stream and returns their figures. `progress` gets a
/// line about once a second.
pub async fn run(
    settings: &LoadSettings,
    progress: impl Fn(&str) + Send + Sync + 'static,
) -> Result<Vec<OpFigures>, LoadError> {
    settings.check()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(settings.connections)
        .build()?;
    let client = Arc::new(Client {
        http,
        endpoint: settings.endpoint.trim_end_matches('/').to_owned() + "/",
    });
    let stream = format!("bench-{}", uuid::Uuid::new_v4().simple());
    create_stream(&client, &stream, settings.shards).await?;
    let progress = Arc::new(progress);
    let phase = settings.duration / 3;
    let mut figures = Vec::new();
    for op in [Op::PutRecord, Op::PutRecords, Op::GetRecords] {
        progress(&format!(
            "{}: {} connections for {:?}",
            op.name(),
            settings.connections,
            phase
        ));
        figures.push(run_phase(&client, settings, &stream, op, phase, progress.clone()).await?);
    }
    let _ = client
        .call("DeleteStream", &json!({"StreamName": stream}))
        .await;
    Ok(figures)
}

async fn create_stream(client: &Client, stream: &str, shards: u32) -> Result<(), LoadError> {
    client
        .call(
            "CreateStream",
            &json!({"StreamName": stream, "ShardCount": shards}),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_millis(ACTIVE_TIMEOUT_MS);
    while Instant::now() < deadline {
        let summary = client
            .call("DescribeStreamSummary", &json!({"StreamName": stream}))
            .await?;
        if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(LoadError::NotActive(stream.to_owned()))
}

async fn run_phase(
    client: &Arc<Client>,
    settings: &LoadSettings,
    stream: &str,
    op: Op,
    phase: Duration,
    progress: Arc<impl Fn(&str) + Send + Sync + 'static>,
) -> Result<OpFigures, LoadError> {
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + phase;
    let printer = tokio::spawn(print_progress(op, counters.clone(), started, progress));
    let mut workers = tokio::task::JoinSet::new();
    let data = STANDARD.encode(random_bytes(settings.record_bytes));
    for worker in 0..settings.connections {
        let job = Worker {
            client: client.clone(),
            counters: counters.clone(),
            stream: stream.to_owned(),
            data: data.clone(),
            settings: settings.clone(),
            worker,
            deadline,
        };
        workers.spawn(job.run(op));
    }
    let mut latencies_us: Vec<u32> = Vec::new();
    while let Some(done) = workers.join_next().await {
        if let Ok(samples) = done {
            latencies_us.extend(samples);
        }
    }
    printer.abort();
    let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
    latencies_us.sort_unstable();
    Ok(OpFigures {
        operation: op.name(),
        seconds,
        requests: counters.requests.load(Ordering::Relaxed),
        records: counters.records.load(Ordering::Relaxed),
        bytes: counters.bytes.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        p50_ms: percentile_ms(&latencies_us, 0.50),
        p99_ms: percentile_ms(&latencies_us, 0.99),
    })
}

async fn print_progress(
    op: Op,
    counters: Arc<Counters>,
    started: Instant,
    progress: Arc<impl Fn(&str) + Send + Sync + 'static>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let seconds = started.elapsed().as_secs_f64();
        let records = counters.records.load(Ordering::Relaxed) as f64;
        progress(&format!(
            "  {:>5.1} s {}: {} requests, {:.0} records/s, {} errors",
            seconds,
            op.name(),
            counters.requests.load(Ordering::Relaxed),
            records / seconds,
            counters.errors.load(Ordering::Relaxed)
        ));
    }
}

/// Latency at quantile `q` (0..=1) of sorted microsecond samples, in milliseconds.
pub fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

fn random_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

#[derive(Debug)]
struct Worker {
    client: Arc<Client>,
    counters: Arc<Counters>,
    stream: String,
    data: String,
    settings: LoadSettings,
    worker: usize,
    deadline: Instant,
}

impl Worker {
    async fn run(self, op: Op) -> Vec<u32> {
        let mut samples = Vec::new();
        let mut iterator: Option<String> = None;
        let mut sent = 0u64;
        while Instant::now() < self.deadline {
            let started = Instant::now();
            let outcome = match op {
                Op::PutRecord => self.put_record(sent).await,
                Op::PutRecords => self.put_records(sent).await,
                Op::GetRecords => self.get_records(&mut iterator).await,
            };
            sent += 1;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            match outcome {
                Ok((records, bytes)) => {
                    self.counters.records.fetch_add(records, Ordering::Relaxed);
                    self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                Err(_) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if samples.len() < LATENCY_SAMPLES_PER_WORKER_MAX {
                let us = started.elapsed().as_micros();
                samples.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
        }
        samples
    }

    fn key(&self, n: u64, i: usize) -> String {
        format!("w{}-{n}-{i}", self.worker)
    }

    async fn put_record(&self, n: u64) -> Result<(u64, u64), LoadError> {
        let body =
            json!({"StreamName": self.stream, "PartitionKey": self.key(n, 0), "Data": self.data});
        self.client.call("PutRecord", &body).await?;
        Ok((1, self.settings.record_bytes as u64))
    }

    async fn put_records(&self, n: u64) -> Result<(u64, u64), LoadError> {
        let entries: Vec<Value> = (0..self.settings.records_per_request)
            .map(|i| json!({"PartitionKey": self.key(n, i), "Data": self.data}))
            .collect();
        let body = json!({"StreamName": self.stream, "Records": entries});
        let reply = self.client.call("PutRecords", &body).await?;
        let failed = reply["FailedRecordCount"].as_u64().unwrap_or(0);
        let ok = (self.settings.records_per_request as u64).saturating_sub(failed);
        self.counters.errors.fetch_add(failed, Ordering::Relaxed);
        Ok((ok, ok * self.settings.record_bytes as u64))
    }

    async fn get_records(&self, iterator: &mut Option<String>) -> Result<(u64, u64), LoadError> {
        let current = match iterator.take() {
            Some(it) => it,
            None => self.trim_horizon_iterator().await?,
        };
        let reply = self
            .client
            .call(
                "GetRecords",
                &json!({"ShardIterator": current, "Limit": GET_LIMIT_RECORDS}),
            )
            .await?;
        let records = reply["Records"].as_array().map_or(&[][..], Vec::as_slice);
        let bytes: u64 = records
            .iter()
            .filter_map(|r| r["Data"].as_str())
            .map(|d| (d.len() / 4 * 3) as u64)
            .sum();
        // At the tip of the shard, start over from the oldest record to keep reading.
        let at_tip = records.is_empty() && reply["MillisBehindLatest"].as_u64() == Some(0);
        if !at_tip {
            *iterator = reply["NextShardIterator"].as_str().map(str::to_owned);
        }
        Ok((records.len() as u64, bytes))
    }

    async fn trim_horizon_iterator(&self) -> Result<String, LoadError> {
        let shard = format!(
            "shardId-{:012}",
            self.worker % self.settings.shards as usize
        );
        let body = json!({"StreamName": self.stream, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"});
        let reply = self.client.call("GetShardIterator", &body).await?;
        Ok(reply["ShardIterator"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let samples: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile_ms(&samples, 0.50), 50.0);
        assert_eq!(percentile_ms(&samples, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.99), 0.0);
    }

    #[test]
    fn settings_out_of_bounds_are_refused() {
        let mut settings = LoadSettings {
            endpoint: "http://127.0.0.1:1".into(),
            connections: 8,
            duration: Duration::from_secs(1),
            records_per_request: 501,
            record_bytes: 1024,
            shards: 4,
        };
        assert!(matches!(settings.check(), Err(LoadError::Settings(_))));
        settings.records_per_request = 500;
        assert!(settings.check().is_ok());
    }
}
