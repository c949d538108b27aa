//! Router tests: real HTTP requests through axum into a real store in a temporary directory.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::fragment::{Fragment, FragmentId, FragmentMeta, StreamName, UnixMillis};
use crate::media::{Codec, MediaFragment, Sample};
use crate::store::StoreConfig;

/// One 16x16 H.264 baseline IDR picture with its parameter sets, made by x264.
const SPS: &str = "6742c015d91ec05a8303035280000003008000001e478b1724";
const PPS: &str = "68cb8cb2";
const IDR: &str = "65888406bfffff0f450001579f80";

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    router: Router,
}

fn harness(data_endpoint: Option<&str>) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = StoreConfig {
        default_retention_hours: 24,
        create_on_first_use: false,
        segment_bytes_max: 1 << 20,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), config).expect("store opens");
    let state = ApiState {
        store: store.clone(),
        region: "us-east-1".into(),
        data_endpoint: data_endpoint.map(String::from),
        streams: None,
        keys: Vec::new(),
        open: true,
        events: None,
    };
    Harness {
        _dir: dir,
        store,
        router: router(state),
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json reply")
    }

    fn error_code(&self) -> &str {
        self.headers
            .get(error::ERROR_TYPE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn call_raw(h: &Harness, path: &str, body: impl Into<Body>) -> Reply {
    let request = Request::post(path)
        .header("host", "kvs.test:7070")
        .header("content-type", "application/json")
        .body(body.into())
        .expect("request");
    let response = h.router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 512 * 1024 * 1024)
        .await
        .expect("body");
    Reply {
        status,
        headers,
        body,
    }
}

async fn call(h: &Harness, path: &str, body: Value) -> Reply {
    call_raw(h, path, body.to_string()).await
}

async fn create(h: &Harness, name: &str) -> String {
    let reply = call(
        h,
        "/createStream",
        json!({"StreamName": name, "DataRetentionInHours": 2}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.json()["StreamARN"].as_str().expect("arn").to_owned()
}

fn unhex(s: &str) -> Vec<u8> {
    json::hex_decode(s).expect("hex constant")
}

fn media_payload(pts_us: i64) -> Bytes {
    let (sps, pps, idr) = (unhex(SPS), unhex(PPS), unhex(IDR));
    let mut avcc = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
    avcc.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(&sps);
    avcc.push(1);
    avcc.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(&pps);
    let mut data = (idr.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(&idr);
    let sample = Sample {
        pts_us,
        dts_us: pts_us,
        duration_us: 40_000,
        keyframe: true,
        data: data.into(),
    };
    MediaFragment {
        codec: Codec::H264,
        width: 16,
        height: 16,
        codec_config: avcc.into(),
        samples: vec![sample],
    }
    .encode()
}

async fn append(h: &Harness, stream: &str, sequence: u64, producer_ms: u64) {
    let id = FragmentId {
        stream: StreamName::new(stream).expect("name"),
        epoch: 1,
        sequence,
    };
    let meta = FragmentMeta {
        id,
        producer_timestamp: UnixMillis(producer_ms),
        duration_ms: 40,
    };
    let fragment = Fragment {
        meta,
        payload: media_payload(producer_ms as i64 * 1000),
    };
    h.store
        .append(fragment, UnixMillis::now())
        .await
        .expect("append");
}

#[tokio::test]
async fn stream_lifecycle_by_name_and_arn() {
    let h = harness(None);
    let arn = create(&h, "front-door").await;
    assert!(arn.starts_with("arn:aws:kinesisvideo:"), "{arn}");

    let by_name = call(&h, "/describeStream", json!({"StreamName": "front-door"}))
        .await
        .json();
    let by_arn = call(&h, "/describeStream", json!({"StreamARN": arn}))
        .await
        .json();
    assert_eq!(by_name, by_arn);
    let info = &by_name["StreamInfo"];
    assert_eq!(info["Status"], "ACTIVE");
    assert_eq!(info["DataRetentionInHours"], 2);
    assert!(info["CreationTime"].as_f64().is_some_and(|t| t > 1.0e9));
    let version = info["Version"].as_str().expect("version").to_owned();

    let stale = call(
        &h,
        "/updateDataRetention",
        json!({"StreamName": "front-door", "CurrentVersion": "stale0",
        "Operation": "INCREASE_DATA_RETENTION", "DataRetentionChangeInHours": 3}),
    )
    .await;
    assert_eq!(
        (stale.status, stale.error_code()),
        (StatusCode::BAD_REQUEST, "VersionMismatchException")
    );

    let grown = call(
        &h,
        "/updateDataRetention",
        json!({"StreamARN": arn, "CurrentVersion": version,
        "Operation": "INCREASE_DATA_RETENTION", "DataRetentionChangeInHours": 3}),
    )
    .await;
    assert_eq!(grown.status, StatusCode::OK, "{:?}", grown.body);
    let info = call(&h, "/describeStream", json!({"StreamName": "front-door"}))
        .await
        .json();
    assert_eq!(info["StreamInfo"]["DataRetentionInHours"], 5);

    let deleted = call(&h, "/deleteStream", json!({"StreamARN": arn})).await;
    assert_eq!(deleted.status, StatusCode::OK, "{:?}", deleted.body);
    let gone = call(&h, "/describeStream", json!({"StreamName": "front-door"})).await;
    assert_eq!(
        (gone.status, gone.error_code()),
        (StatusCode::NOT_FOUND, "ResourceNotFoundException")
    );
}

#[tokio::test]
async fn errors_carry_code_message_and_request_id() {
    let h = harness(None);
    create(&h, "cam").await;
    let again = call(&h, "/createStream", json!({"StreamName": "cam"})).await;
    assert_eq!(
        (again.status, again.error_code()),
        (StatusCode::BAD_REQUEST, "ResourceInUseException")
    );
    let body = again.json();
    assert_eq!(body["message"], body["Message"]);
    assert!(body["message"].as_str().is_some_and(|m| m.contains("cam")));
    let id = again.headers[REQUEST_ID_HEADER].to_str().expect("ascii");
    assert_eq!(
        uuid::Uuid::parse_str(id).map(|u| u.get_version_num()),
        Ok(4)
    );

    let ok = call(&h, "/listStreams", json!({})).await;
    assert!(ok.headers.contains_key(REQUEST_ID_HEADER));
}

#[tokio::test]
async fn bad_requests_are_invalid_arguments_naming_the_member() {
    let h = harness(None);
    let malformed = call_raw(&h, "/createStream", "{not json").await;
    assert_eq!(
        (malformed.status, malformed.error_code()),
        (StatusCode::BAD_REQUEST, "InvalidArgumentException")
    );
    let bad_name = call(&h, "/createStream", json!({"StreamName": "a/b"})).await;
    assert!(
        bad_name.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("StreamName"))
    );
    let no_arn = call(&h, "/deleteStream", json!({"StreamName": "x"})).await;
    assert!(
        no_arn.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("StreamARN"))
    );
    let both = call(
        &h,
        "/describeStream",
        json!({"StreamName": "x", "StreamARN": "arn:aws:kinesisvideo:us-east-1:1:stream/x/1"}),
    )
    .await;
    assert_eq!(both.error_code(), "InvalidArgumentException");
    let too_large = call_raw(&h, "/listStreams", vec![b' '; REQUEST_BODY_BYTES_MAX + 1]).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    let unknown = call(&h, "/putEverything", json!({})).await;
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (StatusCode::NOT_FOUND, "UnknownOperationException")
    );
}

#[tokio::test]
async fn an_arn_must_match_the_stream_exactly() {
    let h = harness(None);
    let arn = create(&h, "cam").await;
    let (head, _) = arn.rsplit_once('/').expect("arn has a creation time");
    let stale = format!("{head}/1");
    let reply = call(&h, "/describeStream", json!({"StreamARN": stale})).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (StatusCode::NOT_FOUND, "ResourceNotFoundException")
    );
    let garbage = call(
        &h,
        "/describeStream",
        json!({"StreamARN": "arn:aws:s3:::bucket"}),
    )
    .await;
    assert_eq!(garbage.error_code(), "InvalidArgumentException");
}

#[tokio::test]
async fn list_streams_pages_and_filters() {
    let h = harness(None);
    for name in ["cam-a", "cam-b", "cam-c", "door"] {
        create(&h, name).await;
    }
    let condition = json!({"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "cam"});
    let first = call(
        &h,
        "/listStreams",
        json!({"MaxResults": 2, "StreamNameCondition": condition}),
    )
    .await
    .json();
    let names = |v: &Value| -> Vec<String> {
        v["StreamInfoList"]
            .as_array()
            .expect("list")
            .iter()
            .map(|i| i["StreamName"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(names(&first), ["cam-a", "cam-b"]);
    let token = first["NextToken"].clone();
    let second = call(
        &h,
        "/listStreams",
        json!({"MaxResults": 2, "NextToken": token, "StreamNameCondition": condition}),
    )
    .await
    .json();
    assert_eq!(names(&second), ["cam-c"]);
    assert!(second.get("NextToken").is_none());
}

#[tokio::test]
async fn data_endpoint_is_configured_or_the_host() {
    let h = harness(None);
    create(&h, "cam").await;
    let reply = call(
        &h,
        "/getDataEndpoint",
        json!({"StreamName": "cam", "APIName": "GET_CLIP"}),
    )
    .await
    .json();
    assert_eq!(reply["DataEndpoint"], "http://kvs.test:7070");
    let missing = call(
        &h,
        "/getDataEndpoint",
        json!({"StreamName": "nope", "APIName": "GET_CLIP"}),
    )
    .await;
    assert_eq!(missing.error_code(), "ResourceNotFoundException");
    let bad_api = call(
        &h,
        "/getDataEndpoint",
        json!({"StreamName": "cam", "APIName": "PUT_EVERYTHING"}),
    )
    .await;
    assert_eq!(bad_api.error_code(), "InvalidArgumentException");

    let configured = harness(Some("https://video.example"));
    create(&configured, "cam").await;
    let reply = call(
        &configured,
        "/getDataEndpoint",
        json!({"StreamName": "cam", "APIName": "LIST_FRAGMENTS"}),
    )
    .await
    .json();
    assert_eq!(reply["DataEndpoint"], "https://video.example");
}

#[tokio::test]
async fn list_fragments_pages_through_a_range() {
    let h = harness(None);
    create(&h, "cam").await;
    let empty = call(&h, "/listFragments", json!({"StreamName": "cam"}))
        .await
        .json();
    assert_eq!(empty["Fragments"], json!([]));
    for i in 0..5 {
        append(&h, "cam", i, 1_700_000_000_000 + i * 1000).await;
    }
    let selector = json!({"FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": 1_700_000_001.0, "EndTimestamp": 1_700_000_010.0}});
    let mut seen = Vec::new();
    let mut token: Option<Value> = None;
    for _ in 0..5 {
        let mut request =
            json!({"StreamName": "cam", "MaxResults": 2, "FragmentSelector": selector});
        if let Some(t) = token.take() {
            request["NextToken"] = t;
        }
        let page = call(&h, "/listFragments", request).await.json();
        for f in page["Fragments"].as_array().expect("fragments") {
            seen.push(f["ProducerTimestamp"].as_f64().expect("timestamp"));
            assert_eq!(f["FragmentLengthInMilliseconds"], 40);
            assert!(
                f["FragmentNumber"]
                    .as_str()
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
            );
        }
        match page.get("NextToken") {
            Some(t) => token = Some(t.clone()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            1_700_000_001.0,
            1_700_000_002.0,
            1_700_000_003.0,
            1_700_000_004.0
        ]
    );
}

#[tokio::test]
async fn get_clip_returns_mp4_or_not_found() {
    let h = harness(None);
    create(&h, "cam").await;
    let selector = |start: f64, end: f64| {
        json!({"StreamName": "cam", "ClipFragmentSelector": {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end}}})
    };
    let none = call(&h, "/getClip", selector(1_700_000_000.0, 1_700_000_100.0)).await;
    assert_eq!(
        (none.status, none.error_code()),
        (StatusCode::NOT_FOUND, "ResourceNotFoundException")
    );
    for i in 0..3 {
        append(&h, "cam", i, 1_700_000_000_000 + i * 1000).await;
    }
    let clip = call(&h, "/getClip", selector(1_700_000_000.0, 1_700_000_100.0)).await;
    assert_eq!(clip.status, StatusCode::OK, "{:?}", clip.body);
    assert_eq!(clip.headers["content-type"], "video/mp4");
    assert_eq!(clip.body.get(4..8), Some(&b"ftyp"[..]));
    let too_long = call(&h, "/getClip", selector(1_700_000_000.0, 1_700_090_000.0)).await;
    assert_eq!(too_long.error_code(), "InvalidArgumentException");
}

/// Tag values in Matroska bytes: every `TagName` equal to `name`, followed by its `TagString`.
fn matroska_tag_values(body: &[u8], name: &str) -> Vec<String> {
    let mut needle = vec![0x45, 0xA3, 0x80 | name.len() as u8];
    needle.extend_from_slice(name.as_bytes());
    let mut values = Vec::new();
    let mut at = 0;
    while let Some(offset) = body[at..].windows(needle.len()).position(|w| w == needle) {
        let value_at = at + offset + needle.len();
        // TagString id (0x4487), a one-byte size, then the value.
        let len = usize::from(body[value_at + 2] & 0x7F);
        let value = &body[value_at + 3..value_at + 3 + len];
        values.push(String::from_utf8_lossy(value).into_owned());
        at = value_at;
    }
    values
}

#[tokio::test]
async fn get_media_for_fragment_list_streams_the_fragments_in_the_order_asked() {
    let h = harness(None);
    create(&h, "cam").await;
    for i in 0..3 {
        append(&h, "cam", i, 1_700_000_000_000 + i * 1000).await;
    }
    let numbers: Vec<String> = (0..3)
        .map(|i| crate::store::FragmentNumber(i).to_string())
        .collect();
    let asked = json!({"StreamName": "cam", "Fragments": [numbers[2], numbers[0]]});
    let reply = call(&h, "/getMediaForFragmentList", asked).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "video/webm");
    assert_eq!(reply.body.get(..4), Some(&[0x1A, 0x45, 0xDF, 0xA3][..]));
    assert_eq!(
        matroska_tag_values(&reply.body, "AWS_KINESISVIDEO_FRAGMENT_NUMBER"),
        [numbers[2].clone(), numbers[0].clone()]
    );
    assert_eq!(
        matroska_tag_values(&reply.body, "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP"),
        ["1700000002.000", "1700000000.000"]
    );

    let unknown = json!({"StreamName": "cam", "Fragments": [numbers[0], "10000000000000000099"]});
    let reply = call(&h, "/getMediaForFragmentList", unknown).await;
    assert_eq!(reply.error_code(), "ResourceNotFoundException");
    for bad in [
        json!({"StreamName": "cam", "Fragments": []}),
        json!({"StreamName": "cam"}),
    ] {
        let reply = call(&h, "/getMediaForFragmentList", bad).await;
        assert_eq!(reply.error_code(), "InvalidArgumentException");
    }
}

#[tokio::test]
async fn get_media_sends_chunks_after_a_fragment_then_ends_when_idle() {
    let h = harness(None);
    create(&h, "cam").await;
    for i in 0..3 {
        append(&h, "cam", i, 1_700_000_000_000 + i * 1000).await;
    }
    let first = crate::store::FragmentNumber(0).to_string();
    let asked = json!({"StreamName": "cam", "StartSelector": {
        "StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": first}});
    let started = std::time::Instant::now();
    let reply = call(&h, "/getMedia", asked).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "video/webm");
    assert!(started.elapsed().as_millis() >= u128::from(media::GET_MEDIA_IDLE_MS_MAX));
    let later: Vec<String> = (1..3)
        .map(|i| crate::store::FragmentNumber(i).to_string())
        .collect();
    assert_eq!(
        matroska_tag_values(&reply.body, "AWS_KINESISVIDEO_FRAGMENT_NUMBER"),
        later
    );
    assert_eq!(
        matroska_tag_values(&reply.body, "AWS_KINESISVIDEO_CONTINUATION_TOKEN"),
        later
    );
    assert_eq!(
        matroska_tag_values(&reply.body, "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW").len(),
        2
    );
    let missing = json!({"StreamName": "nope", "StartSelector": {"StartSelectorType": "NOW"}});
    let reply = call(&h, "/getMedia", missing).await;
    assert_eq!(reply.error_code(), "ResourceNotFoundException");
}
