//! PutMedia: Matroska ingest from the Kinesis Video producers (`kvssink`, the producer SDKs).
//!
//! `POST /putMedia` names its stream with `x-amzn-stream-name` or `x-amzn-stream-arn`, says how
//! cluster timecodes count with `x-amzn-fragment-timecode-type` (ABSOLUTE or RELATIVE) and gives
//! the producer's start with `x-amzn-producer-start-timestamp` (`<secs>.<ms>`, milliseconds not
//! zero-padded). The body is a chunked Matroska stream; each cluster is one fragment.
//!
//! Behaviour:
//! - The reply is HTTP 200 at once, with a body of acknowledgements, one flat JSON object per
//!   line: BUFFERING when a cluster starts, RECEIVED when it is complete, PERSISTED after the
//!   store has made it durable, ERROR with the KVS `ErrorId` otherwise. A cluster-level error
//!   (too large, too long, timecode going back, unknown track) refuses that cluster and the
//!   stream goes on; a stream-level error (invalid Matroska, unknown stream, storage failure)
//!   ends the reply after its ERROR.
//! - Backpressure: the body is read one chunk at a time; acknowledgements go through a bounded
//!   queue ([`ACK_QUEUE_EVENTS_MAX`]), so a client that does not read them stops being read.
//!   The parser holds at most one frame; a fragment at most [`FRAGMENT_BYTES_MAX`].
//! - A body that sends nothing for [`BODY_IDLE_TIMEOUT_MS`] is closed.
//! - Fragment identity: epoch = the producer start timestamp in milliseconds (a random epoch
//!   when the header is absent), sequence = the cluster's index in the request; a resent
//!   request is therefore recognised and not stored twice.
//! - The body is never buffered by authentication when it is signed as `UNSIGNED-PAYLOAD` (or in
//!   open mode); chunk-signed bodies (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`) are not supported.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::fragment::{Fragment, FragmentId, FragmentMeta, StreamName, UnixMillis};
use crate::media::MediaFragment;
use crate::media::matroska_parse::{
    Assembled, AssemblerConfig, ClusterAssembler, MkvError, MkvParser, TimecodeType,
};
use crate::store::{Store, StoreError};

use super::{ApiError, AppState, stream_by_arn};

/// Largest fragment (cluster) accepted, in bytes: the Kinesis Video limit.
pub const FRAGMENT_BYTES_MAX: usize = 50 * 1000 * 1000;
/// Longest fragment accepted, in milliseconds: the Kinesis Video limit.
pub const FRAGMENT_DURATION_MS_MAX: u64 = 10_000;
/// Acknowledgements queued for a slow reader before ingest waits for it.
pub const ACK_QUEUE_EVENTS_MAX: usize = 64;
/// Most bytes read and discarded after a refusal before the connection is dropped.
pub const DRAIN_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long the body may send nothing before the request is closed, in milliseconds.
pub const BODY_IDLE_TIMEOUT_MS: u64 = 30_000;

/// KVS acknowledgement error ids.
const ERROR_FRAGMENT_TOO_LARGE: u32 = 4001;
const ERROR_FRAGMENT_TOO_LONG: u32 = 4002;
const ERROR_TIMECODE_NOT_MONOTONIC: u32 = 4004;
const ERROR_INVALID_MKV: u32 = 4006;
const ERROR_STREAM_NOT_ACTIVE: u32 = 4008;
const ERROR_TRACK_MISMATCH: u32 = 4010;
const ERROR_INTERNAL: u32 = 5000;
const ERROR_PERSIST: u32 = 5001;

/// The PutMedia request headers, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PutMediaHeaders {
    stream: StreamTarget,
    timecode_type: TimecodeType,
    producer_start_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamTarget {
    Name(StreamName),
    Arn(String),
}

/// One acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ack {
    Buffering(u64),
    Received(u64),
    Persisted(u64, String),
    Error { timecode_ms: u64, id: u32 },
}

impl Ack {
    /// The flat JSON object of the acknowledgement, newline-terminated.
    fn to_line(&self) -> Bytes {
        let value = match self {
            Ack::Buffering(t) => json!({"EventType": "BUFFERING", "FragmentTimecode": t}),
            Ack::Received(t) => json!({"EventType": "RECEIVED", "FragmentTimecode": t}),
            Ack::Persisted(t, n) => {
                json!({"EventType": "PERSISTED", "FragmentTimecode": t, "FragmentNumber": n})
            }
            Ack::Error { timecode_ms, id } => json!({
                "EventType": "ERROR", "FragmentTimecode": timecode_ms,
                "ErrorId": id, "ErrorCode": error_code(*id),
            }),
        };
        let mut line = value.to_string().into_bytes();
        line.push(b'\n');
        Bytes::from(line)
    }
}

fn error_code(id: u32) -> &'static str {
    match id {
        ERROR_FRAGMENT_TOO_LARGE => "MAX_FRAGMENT_SIZE_REACHED",
        ERROR_FRAGMENT_TOO_LONG => "MAX_FRAGMENT_DURATION_REACHED",
        ERROR_TIMECODE_NOT_MONOTONIC => "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS",
        ERROR_INVALID_MKV => "INVALID_MKV_DATA",
        ERROR_STREAM_NOT_ACTIVE => "STREAM_NOT_ACTIVE",
        ERROR_TRACK_MISMATCH => "TRACK_NUMBER_MISMATCH",
        ERROR_PERSIST => "ARCHIVAL_ERROR",
        _ => "INTERNAL_ERROR",
    }
}

/// The KVS error id of a refused cluster or a failed stream.
fn mkv_error_id(error: &MkvError) -> u32 {
    match error {
        MkvError::FragmentTooLarge { .. } => ERROR_FRAGMENT_TOO_LARGE,
        MkvError::FragmentTooLong { .. } => ERROR_FRAGMENT_TOO_LONG,
        MkvError::TimecodeNotMonotonic => ERROR_TIMECODE_NOT_MONOTONIC,
        MkvError::TrackMismatch(_) => ERROR_TRACK_MISMATCH,
        _ => ERROR_INVALID_MKV,
    }
}

/// `POST /putMedia`: answers at once and acknowledges clusters as the body arrives.
pub async fn put_media(State(s): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let headers = parse_headers(&parts.headers)?;
    let (tx, rx) = mpsc::channel::<Bytes>(ACK_QUEUE_EVENTS_MAX);
    let store = s.api.store.clone();
    tokio::spawn(async move {
        let acks = AckSender { tx };
        let mut chunks = body.into_data_stream();
        if ingest(store, headers, &mut chunks, &acks).await == BodyState::Unread {
            drain(&mut chunks).await;
        }
    });
    let acks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    let mut response = Response::new(Body::from_stream(acks));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn parse_headers(headers: &HeaderMap) -> Result<PutMediaHeaders, ApiError> {
    let get = |name: &str| -> Result<Option<String>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .map_err(|_| ApiError::invalid(format!("The header {name} is not text.")))
            })
            .transpose()
    };
    let stream = match (get("x-amzn-stream-name")?, get("x-amzn-stream-arn")?) {
        (Some(name), None) => StreamTarget::Name(
            StreamName::new(name)
                .map_err(|e| ApiError::invalid(format!("x-amzn-stream-name: {e}")))?,
        ),
        (None, Some(arn)) => StreamTarget::Arn(arn),
        _ => {
            return Err(ApiError::invalid(
                "Specify exactly one of x-amzn-stream-name and x-amzn-stream-arn.",
            ));
        }
    };
    let timecode_type = match get("x-amzn-fragment-timecode-type")?.as_deref() {
        Some("ABSOLUTE") => TimecodeType::Absolute,
        Some("RELATIVE") => TimecodeType::Relative,
        _ => {
            return Err(ApiError::invalid(
                "x-amzn-fragment-timecode-type must be ABSOLUTE or RELATIVE.",
            ));
        }
    };
    let producer_start_ms = get("x-amzn-producer-start-timestamp")?
        .map(|t| {
            parse_start_timestamp(&t).ok_or_else(|| {
                ApiError::invalid(format!("x-amzn-producer-start-timestamp {t:?} is invalid."))
            })
        })
        .transpose()?;
    if timecode_type == TimecodeType::Relative && producer_start_ms.is_none() {
        return Err(ApiError::invalid(
            "RELATIVE timecodes need x-amzn-producer-start-timestamp.",
        ));
    }
    Ok(PutMediaHeaders {
        stream,
        timecode_type,
        producer_start_ms,
    })
}

/// `<secs>` or `<secs>.<fraction>`: the producer SDKs write the milliseconds without zero
/// padding (`1700000000.5` means 5 ms), so up to three fraction digits count as milliseconds.
fn parse_start_timestamp(text: &str) -> Option<u64> {
    let (secs, fraction) = text.split_once('.').unwrap_or((text, ""));
    let secs: u64 = secs.parse().ok()?;
    let ms: u64 = match fraction.len() {
        0 => 0,
        1..=3 => fraction.parse().ok()?,
        _ => fraction.get(..3)?.parse().ok()?,
    };
    if !fraction.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    secs.checked_mul(1000)?.checked_add(ms)
}

/// The acknowledgement queue; a failed send means the client has gone.
#[derive(Debug)]
struct AckSender {
    tx: mpsc::Sender<Bytes>,
}

impl AckSender {
    async fn send(&self, ack: Ack) -> Result<(), ()> {
        self.tx.send(ack.to_line()).await.map_err(|_| ())
    }
}

/// Why ingest stopped early (already acknowledged as an ERROR, or the client left).
#[derive(Debug)]
struct Stop;

/// Whether the request body still has bytes the server did not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Done,
    Unread,
}

/// Reads the body, assembles clusters, persists fragments and acknowledges them.
async fn ingest(
    store: Arc<Store>,
    headers: PutMediaHeaders,
    chunks: &mut BodyDataStream,
    acks: &AckSender,
) -> BodyState {
    let Ok(name) = resolve(&store, &headers.stream) else {
        let error = Ack::Error {
            timecode_ms: 0,
            id: ERROR_STREAM_NOT_ACTIVE,
        };
        let _ = acks.send(error).await;
        return BodyState::Unread;
    };
    let mut session = Session::new(store, name, &headers);
    let idle = Duration::from_millis(BODY_IDLE_TIMEOUT_MS);
    loop {
        let chunk = match tokio::time::timeout(idle, chunks.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => {
                let _ = session.finish(acks).await;
                return BodyState::Done;
            }
            Ok(Some(Err(e))) => {
                tracing::info!(error = %e, stream = %session.name, "A PutMedia body failed.");
                return BodyState::Done;
            }
            Err(_) => {
                tracing::info!(stream = %session.name, "A PutMedia body went idle; closing it.");
                return BodyState::Done;
            }
        };
        if session.feed(&chunk, acks).await.is_err() {
            return BodyState::Unread;
        }
    }
}

/// Reads and discards what the producer still sends after a refusal (up to
/// [`DRAIN_BYTES_MAX`]), so that it can read the ERROR instead of failing on a reset
/// connection.
async fn drain(chunks: &mut BodyDataStream) {
    let idle = Duration::from_millis(BODY_IDLE_TIMEOUT_MS);
    let mut drained = 0usize;
    while drained < DRAIN_BYTES_MAX {
        match tokio::time::timeout(idle, chunks.next()).await {
            Ok(Some(Ok(chunk))) => drained += chunk.len(),
            _ => return,
        }
    }
}

/// The stream the request names, when it exists.
fn resolve(store: &Store, target: &StreamTarget) -> Result<StreamName, ()> {
    match target {
        StreamTarget::Name(name) => store.describe_stream(name).map(|i| i.name).map_err(|_| ()),
        StreamTarget::Arn(arn) => stream_by_arn(store, arn).map(|i| i.name).map_err(|_| ()),
    }
}

/// One PutMedia request's state.
#[derive(Debug)]
struct Session {
    store: Arc<Store>,
    name: StreamName,
    parser: MkvParser,
    assembler: ClusterAssembler,
    epoch: u64,
    /// Clusters started so far: the sequence of the next fragment.
    clusters: u64,
    /// Timecode of the cluster being read, for errors that arise inside it.
    timecode_ms: u64,
}

impl Session {
    fn new(store: Arc<Store>, name: StreamName, headers: &PutMediaHeaders) -> Self {
        let config = AssemblerConfig {
            timecode_type: headers.timecode_type,
            producer_start_ms: headers.producer_start_ms.unwrap_or(0),
            fragment_bytes_max: FRAGMENT_BYTES_MAX,
            fragment_duration_ms_max: FRAGMENT_DURATION_MS_MAX,
        };
        // Without a start timestamp a resend cannot be recognised; a random epoch keeps the
        // request's fragments apart from every other producer's.
        let epoch = headers
            .producer_start_ms
            .unwrap_or_else(|| rand::random::<u64>() >> 1);
        Self {
            store,
            name,
            parser: MkvParser::new(),
            assembler: ClusterAssembler::new(config),
            epoch,
            clusters: 0,
            timecode_ms: 0,
        }
    }

    async fn feed(&mut self, chunk: &[u8], acks: &AckSender) -> Result<(), Stop> {
        let events = self.parser.feed(chunk);
        self.handle(events, acks).await
    }

    async fn finish(&mut self, acks: &AckSender) -> Result<(), Stop> {
        let events = self.parser.finish();
        self.handle(events, acks).await
    }

    async fn handle(
        &mut self,
        events: Result<Vec<crate::media::matroska_parse::MkvEvent>, MkvError>,
        acks: &AckSender,
    ) -> Result<(), Stop> {
        let events = match events {
            Ok(events) => events,
            Err(error) => return self.fail(&error, acks).await,
        };
        for event in events {
            match self.assembler.on_event(event) {
                Ok(Some(assembled)) => self.on_assembled(assembled, acks).await?,
                Ok(None) => {}
                Err(error) => return self.fail(&error, acks).await,
            }
        }
        Ok(())
    }

    async fn fail(&self, error: &MkvError, acks: &AckSender) -> Result<(), Stop> {
        tracing::info!(stream = %self.name, %error, "Refused a PutMedia stream.");
        let id = mkv_error_id(error);
        let _ = acks
            .send(Ack::Error {
                timecode_ms: self.timecode_ms,
                id,
            })
            .await;
        Err(Stop)
    }

    async fn on_assembled(&mut self, assembled: Assembled, acks: &AckSender) -> Result<(), Stop> {
        let sent = match assembled {
            Assembled::Started { timecode_ms } => {
                self.timecode_ms = timecode_ms;
                acks.send(Ack::Buffering(timecode_ms)).await
            }
            Assembled::Refused { timecode_ms, error } => {
                self.clusters += 1;
                tracing::info!(stream = %self.name, %error, "Refused a PutMedia cluster.");
                let id = mkv_error_id(&error);
                acks.send(Ack::Error { timecode_ms, id }).await
            }
            Assembled::Fragment {
                timecode_ms,
                fragment,
            } => {
                let sequence = self.clusters;
                self.clusters += 1;
                acks.send(Ack::Received(timecode_ms))
                    .await
                    .map_err(|()| Stop)?;
                let ack = self.persist(sequence, timecode_ms, &fragment).await;
                let fatal = matches!(ack, Ack::Error { .. });
                acks.send(ack).await.map_err(|()| Stop)?;
                if fatal {
                    return Err(Stop);
                }
                Ok(())
            }
        };
        sent.map_err(|()| Stop)
    }

    /// Stores the fragment durably; the acknowledgement to send.
    async fn persist(&self, sequence: u64, timecode_ms: u64, media: &MediaFragment) -> Ack {
        let start_ms = u64::try_from(media.start_us() / 1000).unwrap_or(0);
        let fragment = Fragment {
            meta: FragmentMeta {
                id: FragmentId {
                    stream: self.name.clone(),
                    epoch: self.epoch,
                    sequence,
                },
                producer_timestamp: UnixMillis(start_ms),
                duration_ms: u32::try_from(media.duration_us() / 1000).unwrap_or(u32::MAX),
            },
            payload: media.encode(),
        };
        let error = |id| Ack::Error { timecode_ms, id };
        match self.store.append(fragment, UnixMillis::now()).await {
            Ok(appended) => Ack::Persisted(timecode_ms, appended.number().to_string()),
            Err(StoreError::FragmentTooLarge { .. }) => error(ERROR_FRAGMENT_TOO_LARGE),
            Err(StoreError::StreamNotFound(_)) => error(ERROR_STREAM_NOT_ACTIVE),
            Err(e) => {
                tracing::error!(stream = %self.name, error = %e, "Could not persist a PutMedia fragment.");
                let durable_write_failed = matches!(
                    e,
                    StoreError::Io { .. } | StoreError::Log(_) | StoreError::Corrupt { .. }
                );
                error(if durable_write_failed {
                    ERROR_PERSIST
                } else {
                    ERROR_INTERNAL
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_timestamps_read_unpadded_milliseconds() {
        assert_eq!(parse_start_timestamp("1700000000"), Some(1_700_000_000_000));
        assert_eq!(
            parse_start_timestamp("1700000000.5"),
            Some(1_700_000_000_005)
        );
        assert_eq!(
            parse_start_timestamp("1700000000.123"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse_start_timestamp("1700000000.1234"),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_start_timestamp("17x"), None);
        assert_eq!(parse_start_timestamp("1.-5"), None);
        assert_eq!(parse_start_timestamp(""), None);
    }

    #[test]
    fn headers_are_validated() {
        let mut h = HeaderMap::new();
        assert!(parse_headers(&h).is_err());
        h.insert("x-amzn-stream-name", HeaderValue::from_static("cam"));
        h.insert(
            "x-amzn-fragment-timecode-type",
            HeaderValue::from_static("RELATIVE"),
        );
        assert!(parse_headers(&h).is_err(), "RELATIVE needs a start");
        h.insert(
            "x-amzn-producer-start-timestamp",
            HeaderValue::from_static("1700000000.25"),
        );
        let parsed = parse_headers(&h).expect("valid");
        assert_eq!(parsed.producer_start_ms, Some(1_700_000_000_025));
        assert_eq!(parsed.timecode_type, TimecodeType::Relative);
        h.insert(
            "x-amzn-stream-arn",
            HeaderValue::from_static("arn:aws:kinesisvideo:r:1:stream/cam/1"),
        );
        assert!(parse_headers(&h).is_err(), "name and ARN together");
    }

    #[test]
    fn acks_are_flat_json_lines() {
        let line = Ack::Error {
            timecode_ms: 42,
            id: ERROR_INVALID_MKV,
        }
        .to_line();
        assert!(line.ends_with(b"\n"));
        let value: serde_json::Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(value["EventType"], "ERROR");
        assert_eq!(value["ErrorId"], 4006);
        assert_eq!(value["FragmentTimecode"], 42);
        let persisted: serde_json::Value =
            serde_json::from_slice(&Ack::Persisted(1, "9".into()).to_line()).expect("json");
        assert_eq!(persisted["FragmentNumber"], "9");
    }
}
