//! Kinesis Video media (`kinesis-video-media`): GetMedia, a long-lived Matroska body that starts
//! where the `StartSelector` says and then follows the stream live.
//!
//! Behaviour:
//! - Each fragment becomes one chunk (`media::matroska_write::write_chunk`): header, the
//!   fragment tags, its clusters, then `AWS_KINESISVIDEO_MILLIS_BEHIND_NOW` (now minus the
//!   fragment's server timestamp) and `AWS_KINESISVIDEO_CONTINUATION_TOKEN` (the fragment's
//!   number). Chunks follow fragment-number order, which is also server-timestamp order.
//! - Start selectors: `EARLIEST` (the oldest fragment kept), `NOW` (fragments whose server
//!   timestamp is at or after the request), `SERVER_TIMESTAMP` (server timestamp at or after
//!   `StartTimestamp`), `PRODUCER_TIMESTAMP` (the first fragment, in producer-time order, at or
//!   after `StartTimestamp`, then the fragments stored after it; none yet: as `NOW`),
//!   `FRAGMENT_NUMBER` (the fragments after `AfterFragmentNumber`, as the selector type's
//!   documentation says) and `CONTINUATION_TOKEN` (the fragments after the chunk that carried
//!   the token).
//! - Following live: once the stored fragments are sent, the session polls the store's index
//!   every [`GET_MEDIA_POLL_MS`]; it ends after [`GET_MEDIA_IDLE_MS_MAX`] without a new chunk, or
//!   as soon as the client goes away (the body is dropped).
//! - Backpressure: at most [`CHUNKS_BUFFERED_MAX`] chunks wait for a slow client; the session
//!   reads the next fragment only when there is room, so memory per session is a few fragments.
//! - Limits: [`GET_MEDIA_CONSUMERS_PER_STREAM_MAX`] sessions per stream (AWS's quota) and
//!   [`GET_MEDIA_SESSIONS_MAX`] in all; beyond them the request gets
//!   `ClientLimitExceededException`.
//! - A failure after the body has started cannot change the HTTP status: the session ends with
//!   a chunk of error tags (`AWS_KINESISVIDEO_ERROR_CODE`, `AWS_KINESISVIDEO_ERROR_ID`: 4000 for
//!   a fragment that is gone, 5000 for anything else), as Kinesis Video does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::{MethodRouter, post};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::fragment::{StreamName, UnixMillis};
use crate::media::MediaFragment;
use crate::media::matroska_write::{self as mkv, SimpleTag};
use crate::store::{FragmentNumber, FragmentSummary, Store, StoreError, TimestampKind};

use super::json::{Members, StringRule};
use super::{ApiError, AppState, JsonBody, blocking, resolve_stream};

/// GetMedia sessions on one stream at the same time (AWS's quota is 3 consumers per stream).
pub const GET_MEDIA_CONSUMERS_PER_STREAM_MAX: usize = 3;
/// GetMedia sessions on the whole server at the same time.
pub const GET_MEDIA_SESSIONS_MAX: usize = 256;
/// How often a session that has caught up looks for new fragments, in milliseconds.
pub const GET_MEDIA_POLL_MS: u64 = 200;
/// A session ends after this long without a new chunk, in milliseconds.
pub const GET_MEDIA_IDLE_MS_MAX: u64 = 5_000;
/// Fragments listed per look at the index.
pub const GET_MEDIA_BATCH_FRAGMENTS: usize = 32;
/// Chunks written ahead of a slow client, per response.
pub const CHUNKS_BUFFERED_MAX: usize = 2;
/// The content type of Matroska bodies, as Kinesis Video sends it.
pub const MATROSKA_CONTENT_TYPE: &str = "video/webm";

/// GetMedia error id for a fragment that is gone.
const ERROR_ID_NOT_FOUND: u32 = 4000;
/// GetMedia error id for any other failure.
const ERROR_ID_INTERNAL: u32 = 5000;

const START_SELECTOR_TYPES: &[&str] = &[
    "FRAGMENT_NUMBER",
    "SERVER_TIMESTAMP",
    "PRODUCER_TIMESTAMP",
    "NOW",
    "EARLIEST",
    "CONTINUATION_TOKEN",
];
/// `FragmentNumberString` in the model.
pub(super) const FRAGMENT_NUMBER: StringRule = StringRule {
    len_min: 1,
    len_max: 128,
    allowed: is_digits,
};
/// `ContinuationToken` in the model.
const CONTINUATION_TOKEN: StringRule = StringRule {
    len_min: 1,
    len_max: 128,
    allowed: is_token_text,
};

fn is_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

fn is_token_text(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The GetMedia route, with its own session limits.
pub fn route() -> MethodRouter<AppState> {
    post(get_media).layer(Extension(Arc::new(Consumers::default())))
}

async fn get_media(
    State(s): State<AppState>,
    Extension(consumers): Extension<Arc<Consumers>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let selector = body.required_object("StartSelector")?;
    let start = parse_start(&selector)?;
    let store = s.api.store.clone();
    let (name, position, first) = {
        let store = store.clone();
        blocking(move || {
            let info = resolve_stream(&store, &body)?;
            let (position, first) = resolve_start(&store, &info.name, start, UnixMillis::now())?;
            Ok((info.name, position, first))
        })
        .await?
    };
    let slot = consumers.admit(&name)?;
    let (tx, rx) = mpsc::channel(CHUNKS_BUFFERED_MAX);
    let session = Session {
        store,
        name,
        position,
        tx,
    };
    tokio::spawn(async move {
        let _slot = slot;
        session.run(first).await;
    });
    Ok(matroska_response(rx))
}

/// A 200 response whose body is the chunks sent on `rx`, ending when the sender is dropped.
pub(super) fn matroska_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let mut response = Response::new(Body::from_stream(ChunkStream(rx)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(MATROSKA_CONTENT_TYPE),
    );
    response
}

/// The receiving end of a response's chunk channel as a body stream.
struct ChunkStream(mpsc::Receiver<Bytes>);

impl futures_core::Stream for ChunkStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}

/// Where a GetMedia request asks to start.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    Now,
    Earliest,
    After(FragmentNumber),
    ServerTime(UnixMillis),
    ProducerTime(UnixMillis),
}

fn parse_start(selector: &Members) -> Result<Start, ApiError> {
    let kind = selector.required_enumeration("StartSelectorType", START_SELECTOR_TYPES)?;
    let number = |text: String| {
        text.parse::<FragmentNumber>().map_err(|_| {
            ApiError::ResourceNotFound(format!("Fragment {text} was not found in the stream."))
        })
    };
    Ok(match kind {
        "NOW" => Start::Now,
        "EARLIEST" => Start::Earliest,
        "FRAGMENT_NUMBER" => {
            let text = selector
                .string("AfterFragmentNumber", FRAGMENT_NUMBER)?
                .ok_or_else(|| {
                    ApiError::invalid("FRAGMENT_NUMBER needs StartSelector.AfterFragmentNumber.")
                })?;
            Start::After(number(text)?)
        }
        "CONTINUATION_TOKEN" => {
            let text = selector
                .string("ContinuationToken", CONTINUATION_TOKEN)?
                .ok_or_else(|| {
                    ApiError::invalid("CONTINUATION_TOKEN needs StartSelector.ContinuationToken.")
                })?;
            Start::After(number(text)?)
        }
        timestamp_kind => {
            let at = selector.timestamp("StartTimestamp")?.ok_or_else(|| {
                ApiError::invalid(format!(
                    "{timestamp_kind} needs StartSelector.StartTimestamp."
                ))
            })?;
            if timestamp_kind == "SERVER_TIMESTAMP" {
                Start::ServerTime(at)
            } else {
                Start::ProducerTime(at)
            }
        }
    })
}

/// Where a session reads next, in fragment-number (and server-timestamp) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Fragments whose server timestamp is at or after this.
    Since(UnixMillis),
    /// Fragments stored after this one.
    After(FragmentSummary),
}

/// The session's position and, for a producer-time start, the fragment to send first.
fn resolve_start(
    store: &Store,
    name: &StreamName,
    start: Start,
    now: UnixMillis,
) -> Result<(Position, Option<FragmentSummary>), ApiError> {
    Ok(match start {
        Start::Now => (Position::Since(now), None),
        Start::Earliest => (Position::Since(UnixMillis(0)), None),
        Start::ServerTime(at) => (Position::Since(at), None),
        Start::After(number) => (Position::After(store.fragment_summary(name, number)?), None),
        Start::ProducerTime(at) => {
            let first = store.list_fragments(
                name,
                TimestampKind::Producer,
                at,
                UnixMillis(u64::MAX),
                None,
                1,
            )?;
            match first.first() {
                Some(first) => (Position::After(*first), Some(*first)),
                None => (Position::Since(now), None),
            }
        }
    })
}

/// The next fragments after `position`, at most [`GET_MEDIA_BATCH_FRAGMENTS`].
fn next_batch(
    store: &Store,
    name: &StreamName,
    position: Position,
) -> Result<Vec<FragmentSummary>, StoreError> {
    let list = |start: UnixMillis, after: Option<FragmentNumber>| {
        store.list_fragments(
            name,
            TimestampKind::Server,
            start,
            UnixMillis(u64::MAX),
            after,
            GET_MEDIA_BATCH_FRAGMENTS,
        )
    };
    match position {
        Position::Since(start) => list(start, None),
        Position::After(last) => match list(UnixMillis(0), Some(last.number)) {
            // Retention removed the last fragment sent: resume by its timestamp instead.
            Err(StoreError::FragmentNotFound { .. }) => Ok(list(last.server_timestamp, None)?
                .into_iter()
                .filter(|s| s.number > last.number)
                .collect()),
            other => other,
        },
    }
}

/// One GetMedia response being written.
struct Session {
    store: Arc<Store>,
    name: StreamName,
    position: Position,
    tx: mpsc::Sender<Bytes>,
}

impl Session {
    async fn run(mut self, first: Option<FragmentSummary>) {
        let mut last_chunk = Instant::now();
        if let Some(first) = first {
            if !self.send_fragment(first).await {
                return;
            }
            last_chunk = Instant::now();
        }
        let idle_max = Duration::from_millis(GET_MEDIA_IDLE_MS_MAX);
        loop {
            let (store, name, position) = (self.store.clone(), self.name.clone(), self.position);
            let batch = blocking(move || Ok(next_batch(&store, &name, position)?)).await;
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => return self.send_error(ERROR_ID_INTERNAL, &e.to_string()).await,
            };
            if batch.is_empty() {
                if last_chunk.elapsed() >= idle_max {
                    tracing::debug!(stream = %self.name, "GetMedia ended after an idle period.");
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(GET_MEDIA_POLL_MS)) => {}
                    _ = self.tx.closed() => return,
                }
                continue;
            }
            for summary in batch {
                if !self.send_fragment(summary).await {
                    return;
                }
                last_chunk = Instant::now();
            }
        }
    }

    /// Sends the fragment's chunk; false when the session is over (client gone or an error).
    async fn send_fragment(&mut self, summary: FragmentSummary) -> bool {
        let (store, name) = (self.store.clone(), self.name.clone());
        let chunk = blocking(move || get_media_chunk(&store, &name, summary)).await;
        match chunk {
            Ok(chunk) => {
                self.position = Position::After(summary);
                self.tx.send(Bytes::from(chunk)).await.is_ok()
            }
            Err(error) => {
                let id = match error {
                    ApiError::ResourceNotFound(_) => ERROR_ID_NOT_FOUND,
                    _ => ERROR_ID_INTERNAL,
                };
                self.send_error(id, &error.to_string()).await;
                false
            }
        }
    }

    async fn send_error(&self, id: u32, message: &str) {
        tracing::warn!(stream = %self.name, error_id = id, error = message, "GetMedia stopped on an error.");
        let tags = [
            (mkv::TAG_ERROR_CODE, message.to_owned()),
            (mkv::TAG_ERROR_ID, id.to_string()),
        ];
        let _ = self
            .tx
            .send(Bytes::from(mkv::write_tags_chunk(&tags)))
            .await;
    }
}

/// The stored fragment as a GetMedia chunk.
fn get_media_chunk(
    store: &Store,
    name: &StreamName,
    summary: FragmentSummary,
) -> Result<Vec<u8>, ApiError> {
    let fragment = read_media(store, name, summary.number)?;
    let number = summary.number.to_string();
    let tags = [
        (mkv::TAG_FRAGMENT_NUMBER, number.clone()),
        (
            mkv::TAG_SERVER_TIMESTAMP,
            mkv::tag_timestamp(summary.server_timestamp.0),
        ),
        (
            mkv::TAG_PRODUCER_TIMESTAMP,
            mkv::tag_timestamp(summary.producer_timestamp.0),
        ),
    ];
    let behind_ms = UnixMillis::now()
        .0
        .saturating_sub(summary.server_timestamp.0);
    let trailing: [SimpleTag<'_>; 2] = [
        (mkv::TAG_MILLIS_BEHIND_NOW, behind_ms.to_string()),
        (mkv::TAG_CONTINUATION_TOKEN, number),
    ];
    mkv::write_chunk(&fragment, &tags, &trailing)
        .map_err(|e| ApiError::InvalidMediaFrame(format!("Fragment {}: {e}", summary.number)))
}

/// A stored fragment, read and decoded.
pub(super) fn read_media(
    store: &Store,
    name: &StreamName,
    number: FragmentNumber,
) -> Result<MediaFragment, ApiError> {
    let (_, payload) = store.read_fragment(name, number)?;
    Ok(MediaFragment::decode(&payload)?)
}

/// GetMedia sessions open per stream, and in all.
#[derive(Debug, Default)]
struct Consumers {
    open: Mutex<OpenSessions>,
}

#[derive(Debug, Default)]
struct OpenSessions {
    per_stream: HashMap<StreamName, usize>,
    total: usize,
}

impl Consumers {
    fn lock(&self) -> std::sync::MutexGuard<'_, OpenSessions> {
        // Counts are updated in single steps: a poisoned lock still holds consistent counts.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one more session on `stream`, or the limit that refuses it.
    fn admit(self: &Arc<Self>, stream: &StreamName) -> Result<ConsumerSlot, ApiError> {
        let mut open = self.lock();
        let on_stream = open.per_stream.get(stream).copied().unwrap_or(0);
        if on_stream >= GET_MEDIA_CONSUMERS_PER_STREAM_MAX {
            return Err(ApiError::ClientLimitExceeded(format!(
                "Stream {stream} already has {GET_MEDIA_CONSUMERS_PER_STREAM_MAX} GetMedia consumers."
            )));
        }
        if open.total >= GET_MEDIA_SESSIONS_MAX {
            return Err(ApiError::ClientLimitExceeded(format!(
                "The server already serves {GET_MEDIA_SESSIONS_MAX} GetMedia sessions."
            )));
        }
        open.per_stream.insert(stream.clone(), on_stream + 1);
        open.total += 1;
        Ok(ConsumerSlot {
            consumers: self.clone(),
            stream: stream.clone(),
        })
    }
}

/// One admitted session; dropping it frees the slot.
#[derive(Debug)]
struct ConsumerSlot {
    consumers: Arc<Consumers>,
    stream: StreamName,
}

impl Drop for ConsumerSlot {
    fn drop(&mut self) {
        let mut open = self.consumers.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_stream.get_mut(&self.stream) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.per_stream.remove(&self.stream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(s: &str) -> Members {
        Members::parse(s.as_bytes()).expect("valid json")
    }

    fn stream() -> StreamName {
        StreamName::new("cam").expect("valid")
    }

    #[test]
    fn start_selectors_follow_the_model() {
        let parse = |s: &str| parse_start(&members(s));
        assert_eq!(parse(r#"{"StartSelectorType": "NOW"}"#), Ok(Start::Now));
        assert_eq!(
            parse(r#"{"StartSelectorType": "EARLIEST"}"#),
            Ok(Start::Earliest)
        );
        assert_eq!(
            parse(
                r#"{"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "10000000000000000007"}"#
            ),
            Ok(Start::After(FragmentNumber(7)))
        );
        assert_eq!(
            parse(
                r#"{"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": "10000000000000000009"}"#
            ),
            Ok(Start::After(FragmentNumber(9)))
        );
        assert_eq!(
            parse(r#"{"StartSelectorType": "SERVER_TIMESTAMP", "StartTimestamp": 1.5}"#),
            Ok(Start::ServerTime(UnixMillis(1500)))
        );
        assert_eq!(
            parse(r#"{"StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": 2}"#),
            Ok(Start::ProducerTime(UnixMillis(2000)))
        );
        for bad in [
            r#"{"StartSelectorType": "LATEST"}"#,
            r#"{"StartSelectorType": "FRAGMENT_NUMBER"}"#,
            r#"{"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "12a"}"#,
            r#"{"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": "a/b"}"#,
            r#"{"StartSelectorType": "SERVER_TIMESTAMP"}"#,
            r#"{}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(ApiError::InvalidArgument(_))),
                "{bad}"
            );
        }
        // Well formed, but not a number this server issues.
        assert!(matches!(
            parse(r#"{"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "12"}"#),
            Err(ApiError::ResourceNotFound(_))
        ));
    }

    #[test]
    fn consumers_are_bounded_per_stream_and_freed_on_drop() {
        let consumers = Arc::new(Consumers::default());
        let slots: Vec<_> = (0..GET_MEDIA_CONSUMERS_PER_STREAM_MAX)
            .map(|_| consumers.admit(&stream()).expect("within the limit"))
            .collect();
        let refused = consumers.admit(&stream()).expect_err("over the limit");
        assert_eq!(refused.code(), "ClientLimitExceededException");
        let other = StreamName::new("other").expect("valid");
        let _other = consumers
            .admit(&other)
            .expect("another stream has its own limit");
        drop(slots);
        let _again = consumers.admit(&stream()).expect("slots were freed");
        assert_eq!(consumers.lock().total, 2);
    }
}
