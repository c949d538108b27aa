//! Data streams durability: clients put records concurrently while the server is SIGKILLed;
//! after a restart every acknowledged record reads back with its sequence number and data, and
//! no record appears twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::harness::ServerProcess;

const WRITERS: usize = 4;
const ENTRIES_PER_REQUEST: usize = 20;
const SHARDS: u64 = 3;
const LOAD_BEFORE_KILL: Duration = Duration::from_millis(1500);
const KILL_ROUNDS: usize = 2;

fn call(
    client: &reqwest::blocking::Client,
    server: &ServerProcess,
    op: &str,
    body: &Value,
) -> Option<Value> {
    let response = client
        .post(format!("http://{}/", server.http))
        .header("x-amz-target", format!("Kinesis_20131202.{op}"))
        .header("content-type", "application/x-amz-json-1.1")
        .body(body.to_string())
        .timeout(Duration::from_secs(20))
        .send()
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().ok()
}

/// (shard id, sequence number) per data payload.
type Acked = Arc<Mutex<HashMap<String, (String, String)>>>;

fn writer(http: String, id: String, stop: Arc<AtomicBool>, acked: Acked) {
    let client = reqwest::blocking::Client::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let payloads: Vec<String> = (0..ENTRIES_PER_REQUEST)
            .map(|i| format!("w{id}-r{n}-e{i}"))
            .collect();
        n += 1;
        let entries: Vec<Value> = payloads
            .iter()
            .map(|p| json!({"PartitionKey": p, "Data": STANDARD.encode(p)}))
            .collect();
        let sent = client
            .post(&http)
            .header("x-amz-target", "Kinesis_20131202.PutRecords")
            .header("content-type", "application/x-amz-json-1.1")
            .body(json!({"StreamName": "crash", "Records": entries}).to_string())
            .timeout(Duration::from_secs(20))
            .send();
        let Ok(response) = sent else { continue };
        let Ok(reply) = response.json::<Value>() else {
            continue;
        };
        let Some(results) = reply["Records"].as_array() else {
            continue;
        };
        let mut acked = acked.lock().expect("acked lock");
        for (payload, result) in payloads.iter().zip(results) {
            if let (Some(shard), Some(seq)) = (
                result["ShardId"].as_str(),
                result["SequenceNumber"].as_str(),
            ) {
                acked.insert(payload.clone(), (shard.to_owned(), seq.to_owned()));
            }
        }
    }
}

fn read_all(server: &ServerProcess) -> Vec<(String, String, String)> {
    let client = reqwest::blocking::Client::new();
    let mut all = Vec::new();
    for shard in 0..SHARDS {
        let shard_id = format!("shardId-{shard:012}");
        let body = json!({"StreamName": "crash", "ShardId": shard_id, "ShardIteratorType": "TRIM_HORIZON"});
        let reply = call(&client, server, "GetShardIterator", &body).expect("iterator");
        let mut iterator = reply["ShardIterator"].as_str().map(str::to_owned);
        while let Some(it) = iterator.take() {
            let page = call(&client, server, "GetRecords", &json!({"ShardIterator": it}))
                .expect("GetRecords");
            let records = page["Records"].as_array().cloned().unwrap_or_default();
            for r in &records {
                let data = STANDARD
                    .decode(r["Data"].as_str().expect("data"))
                    .expect("base64");
                let data = String::from_utf8(data).expect("utf8");
                let seq = r["SequenceNumber"].as_str().expect("seq").to_owned();
                all.push((data, shard_id.clone(), seq));
            }
            if records.is_empty() && page["MillisBehindLatest"].as_u64() == Some(0) {
                break;
            }
            iterator = page["NextShardIterator"].as_str().map(str::to_owned);
        }
    }
    all
}

fn wait_active(server: &ServerProcess) {
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let summary = call(
            &client,
            server,
            "DescribeStreamSummary",
            &json!({"StreamName": "crash"}),
        );
        if summary.is_some_and(|s| s["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("stream did not become ACTIVE");
}

#[test]
fn acknowledged_records_survive_sigkill_without_duplicates() {
    let mut server = ServerProcess::start("");
    let client = reqwest::blocking::Client::new();
    call(
        &client,
        &server,
        "CreateStream",
        &json!({"StreamName": "crash", "ShardCount": SHARDS}),
    )
    .expect("CreateStream");
    wait_active(&server);
    let acked: Acked = Arc::default();
    for round in 0..KILL_ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let http = format!("http://{}/", server.http);
        let writers: Vec<_> = (0..WRITERS)
            .map(|id| {
                let (http, stop, acked) = (http.clone(), stop.clone(), acked.clone());
                let id = format!("{round}.{id}");
                std::thread::spawn(move || writer(http, id, stop, acked))
            })
            .collect();
        std::thread::sleep(LOAD_BEFORE_KILL);
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().expect("writer thread");
        }
        server.restart();
        wait_active(&server);
    }
    let acked = acked.lock().expect("acked lock").clone();
    assert!(
        acked.len() >= WRITERS,
        "the load acknowledged too little: {}",
        acked.len()
    );
    let stored = read_all(&server);
    let mut seen: HashMap<String, (String, String)> = HashMap::new();
    for (data, shard, seq) in stored {
        let earlier = seen.insert(data.clone(), (shard, seq));
        assert!(earlier.is_none(), "record {data} is stored twice");
    }
    for (data, place) in &acked {
        assert_eq!(
            seen.get(data),
            Some(place),
            "acknowledged record {data} lost or moved"
        );
    }
}
