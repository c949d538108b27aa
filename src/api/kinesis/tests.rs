//! The Kinesis route driven through the router: dispatch, error shapes, a put/get round trip.

use axum::body::{Body, to_bytes};
use axum::http::Request;
use tower::ServiceExt;

use super::*;
use crate::streams::StreamsConfig;

fn app(dir: &std::path::Path) -> Router {
    let streams = Arc::new(Streams::open(dir, StreamsConfig::default()).expect("open"));
    router(streams)
}

async fn call(app: &Router, target: &str, body: Value) -> (u16, Value) {
    let request = Request::post("/")
        .header(TARGET_HEADER, target)
        .header(header::CONTENT_TYPE, CONTENT_TYPE)
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status().as_u16();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn unknown_targets_and_missing_streams_answer_in_the_aws_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path());
    let (status, body) = call(&app, "Kinesis_20131202.Frobnicate", serde_json::json!({})).await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("UnknownOperationException"))
    );
    let (status, body) = call(&app, "Other.DescribeStream", serde_json::json!({})).await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("UnknownOperationException"))
    );
    let (status, body) = call(
        &app,
        "Kinesis_20131202.DescribeStream",
        serde_json::json!({ "StreamName": "nope" }),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["__type"], "ResourceNotFoundException");
    assert_eq!(
        body["message"],
        "Stream nope under account 000000000000 not found."
    );
    let (status, body) = call(
        &app,
        "Kinesis_20131202.CreateStream",
        serde_json::json!({ "StreamName": "bad/name", "ShardCount": 1 }),
    )
    .await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("ValidationException"))
    );
}

#[tokio::test]
async fn put_and_get_round_trip_by_arn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path());
    let (status, _) = call(
        &app,
        "Kinesis_20131202.CreateStream",
        serde_json::json!({ "StreamName": "s", "ShardCount": 1 }),
    )
    .await;
    assert_eq!(status, 200);
    let arn = "arn:aws:kinesis:us-east-1:000000000000:stream/s";
    let (status, put) = call(
        &app,
        "Kinesis_20131202.PutRecords",
        serde_json::json!({ "StreamARN": arn, "Records": [
            { "Data": "aGVsbG8=", "PartitionKey": "a" },
            { "Data": "d29ybGQ=", "PartitionKey": "b" },
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["FailedRecordCount"], 0);
    let (_, it) = call(
        &app,
        "Kinesis_20131202.GetShardIterator",
        serde_json::json!({ "StreamARN": arn, "ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON" }),
    )
    .await;
    let (status, got) = call(
        &app,
        "Kinesis_20131202.GetRecords",
        serde_json::json!({ "ShardIterator": it["ShardIterator"] }),
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["Records"][0]["Data"], "aGVsbG8=");
    assert_eq!(got["Records"][1]["PartitionKey"], "b");
    assert_eq!(
        got["Records"][1]["SequenceNumber"],
        put["Records"][1]["SequenceNumber"]
    );
}
