//! Kinesis Video archived media: ListFragments, GetClip and GetMediaForFragmentList.
//!
//! GetMediaForFragmentList checks that every named fragment exists before it answers (an unknown
//! one is `ResourceNotFoundException`), then streams them in the order given as one Matroska
//! stream (`media::matroska_write::FragmentListWriter`), reading one fragment at a time with at
//! most `media::CHUNKS_BUFFERED_MAX` chunks ahead of the client; [`MEDIA_LISTS_MAX`] responses
//! stream at once. A fragment that cannot be read once the body has started ends the stream with
//! the exception tags the model documents.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::fragment::{StreamName, UnixMillis};
use crate::media::matroska_write::{self as mkv, FragmentListWriter};
use crate::media::{MediaFragment, mp4};
use crate::store::{FragmentNumber, FragmentSummary, Store, TimestampKind};

use super::json::{self, Members, StringRule};
use super::media::{CHUNKS_BUFFERED_MAX, FRAGMENT_NUMBER, matroska_response, read_media};
use super::{ApiError, AppState, JsonBody, blocking, resolve_stream};

/// ListFragments page size when the request gives none.
pub const LIST_FRAGMENTS_RESULTS_DEFAULT: i64 = 100;
/// Largest ListFragments page.
pub const LIST_FRAGMENTS_RESULTS_MAX: i64 = 1000;
/// Most fragments in one clip (AWS: "the first 200 fragments").
pub const CLIP_FRAGMENTS_MAX: usize = 200;
/// Most media bytes in one clip (AWS: "the first 100 MB").
pub const CLIP_BYTES_MAX: u64 = 100 * 1000 * 1000;
/// Longest clip time range, in milliseconds (24 hours).
pub const CLIP_RANGE_MS_MAX: u64 = 24 * 3600 * 1000;

/// Most fragments one GetMediaForFragmentList names (the model's list limit).
pub const MEDIA_LIST_FRAGMENTS_MAX: usize = 1000;
/// GetMediaForFragmentList responses streaming at the same time.
pub const MEDIA_LISTS_MAX: usize = 16;

const NEXT_TOKEN: StringRule = StringRule {
    len_min: 1,
    len_max: 4096,
    allowed: json::is_token,
};
const SELECTOR_TYPES: &[&str] = &["PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"];
const TOKEN_VERSION: &str = "f1";

/// Which fragments to list, and where the previous page stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FragmentQuery {
    kind_producer: bool,
    start: UnixMillis,
    end: UnixMillis,
    after: Option<u64>,
}

impl FragmentQuery {
    fn kind(&self) -> TimestampKind {
        if self.kind_producer {
            TimestampKind::Producer
        } else {
            TimestampKind::Server
        }
    }

    /// The opaque NextToken: the query and the stream, so a page resumes exactly.
    fn token(&self, stream: &StreamName) -> String {
        let kind = if self.kind_producer { "P" } else { "S" };
        let after = self.after.map(|a| a.to_string()).unwrap_or_default();
        let text = format!(
            "{TOKEN_VERSION}|{stream}|{kind}|{}|{}|{after}",
            self.start.0, self.end.0
        );
        json::hex_encode(text.as_bytes())
    }

    fn from_token(token: &str, stream: &StreamName) -> Result<Self, ApiError> {
        let bad =
            || ApiError::invalid("NextToken is not a token this server issued for this stream.");
        let text = json::hex_decode(token)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?;
        let parts: Vec<&str> = text.split('|').collect();
        let [version, name, kind, start, end, after] = parts.as_slice() else {
            return Err(bad());
        };
        if *version != TOKEN_VERSION || *name != stream.as_str() || !matches!(*kind, "P" | "S") {
            return Err(bad());
        }
        let number = |s: &str| s.parse::<u64>().map_err(|_| bad());
        Ok(Self {
            kind_producer: *kind == "P",
            start: UnixMillis(number(start)?),
            end: UnixMillis(number(end)?),
            after: if after.is_empty() {
                None
            } else {
                Some(number(after)?)
            },
        })
    }
}

/// A selector's type and time range, validated; `end` before `start` is refused.
fn parse_selector(selector: &Members) -> Result<(bool, UnixMillis, UnixMillis), ApiError> {
    let kind = selector.required_enumeration("FragmentSelectorType", SELECTOR_TYPES)?;
    let range = selector.required_object("TimestampRange")?;
    let start = range.required_timestamp("StartTimestamp")?;
    let end = range.required_timestamp("EndTimestamp")?;
    if end < start {
        return Err(ApiError::invalid(
            "EndTimestamp must not be earlier than StartTimestamp.",
        ));
    }
    Ok((kind == "PRODUCER_TIMESTAMP", start, end))
}

/// The ListFragments query: from NextToken when given, else from the selector, else everything.
fn parse_list_fragments(
    body: &Members,
    stream: &StreamName,
) -> Result<(FragmentQuery, usize), ApiError> {
    let page = body
        .integer("MaxResults", 1, LIST_FRAGMENTS_RESULTS_MAX)?
        .unwrap_or(LIST_FRAGMENTS_RESULTS_DEFAULT);
    let page = usize::try_from(page).unwrap_or(1);
    if let Some(token) = body.string("NextToken", NEXT_TOKEN)? {
        return Ok((FragmentQuery::from_token(&token, stream)?, page));
    }
    let query = match body.object("FragmentSelector")? {
        Some(selector) => {
            let (kind_producer, start, end) = parse_selector(&selector)?;
            FragmentQuery {
                kind_producer,
                start,
                end,
                after: None,
            }
        }
        None => FragmentQuery {
            kind_producer: false,
            start: UnixMillis(0),
            end: UnixMillis(u64::MAX),
            after: None,
        },
    };
    Ok((query, page))
}

pub async fn list_fragments(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let store = s.api.store.clone();
    blocking(move || {
        let info = resolve_stream(&store, &body)?;
        let (query, page) = parse_list_fragments(&body, &info.name)?;
        list_page(&store, &info.name, query, page)
    })
    .await
    .map(Json)
}

fn list_page(
    store: &Store,
    stream: &StreamName,
    query: FragmentQuery,
    page: usize,
) -> Result<Value, ApiError> {
    let after = query.after.map(FragmentNumber);
    // One more than the page tells whether another page follows.
    let mut fragments = store.list_fragments(
        stream,
        query.kind(),
        query.start,
        query.end,
        after,
        page + 1,
    )?;
    let more = fragments.len() > page;
    fragments.truncate(page);
    let mut out = json!({ "Fragments": fragments.iter().map(json::fragment).collect::<Vec<_>>() });
    if let (true, Some(last)) = (more, fragments.last()) {
        let next = FragmentQuery {
            after: Some(last.number.0),
            ..query
        };
        out["NextToken"] = Value::String(next.token(stream));
    }
    Ok(out)
}

pub async fn get_clip(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let selector = body.required_object("ClipFragmentSelector")?;
    let (kind_producer, start, end) = parse_selector(&selector)?;
    if end == start || end.0 - start.0 > CLIP_RANGE_MS_MAX {
        return Err(ApiError::invalid(
            "EndTimestamp must be later than StartTimestamp and within 24 hours of it.",
        ));
    }
    let _permit = s.clip_permits.try_acquire().map_err(|_| {
        ApiError::ClientLimitExceeded("Too many clips are being built; retry later.".into())
    })?;
    let query = FragmentQuery {
        kind_producer,
        start,
        end,
        after: None,
    };
    let store = s.api.store.clone();
    let mp4 = blocking(move || {
        let info = resolve_stream(&store, &body)?;
        let fragments = read_clip_fragments(&store, &info.name, &query)?;
        Ok(mp4::write_mp4(&fragments)?)
    })
    .await?;
    let mut response = mp4.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    Ok(response)
}

/// The clip's fragments in the selector's timestamp order, decoded, within the clip limits.
fn read_clip_fragments(
    store: &Store,
    stream: &StreamName,
    query: &FragmentQuery,
) -> Result<Vec<MediaFragment>, ApiError> {
    let summaries = store.list_fragments(
        stream,
        query.kind(),
        query.start,
        query.end,
        None,
        CLIP_FRAGMENTS_MAX,
    )?;
    let mut fragments = Vec::with_capacity(summaries.len());
    let mut bytes_total = 0u64;
    for summary in within_clip_bytes(&summaries) {
        let (_, payload) = store.read_fragment(stream, summary.number)?;
        bytes_total += payload.len() as u64;
        fragments.push(MediaFragment::decode(&payload)?);
    }
    if fragments.is_empty() {
        return Err(ApiError::ResourceNotFound(
            "No fragments found in the stream for the clip time range.".into(),
        ));
    }
    tracing::debug!(stream = %stream, fragments = fragments.len(), bytes_total, "Read fragments for a clip.");
    Ok(fragments)
}

/// The leading fragments whose sizes add up to at most [`CLIP_BYTES_MAX`].
fn within_clip_bytes(summaries: &[FragmentSummary]) -> &[FragmentSummary] {
    let mut total = 0u64;
    let count = summaries
        .iter()
        .take_while(|s| {
            total = total.saturating_add(s.size_bytes);
            total <= CLIP_BYTES_MAX
        })
        .count();
    &summaries[..count]
}

/// The GetMediaForFragmentList route, with its own bound on responses streaming at once.
pub fn media_for_fragment_list_route() -> MethodRouter<AppState> {
    let permits = Arc::new(Semaphore::new(MEDIA_LISTS_MAX));
    post(get_media_for_fragment_list).layer(Extension(permits))
}

async fn get_media_for_fragment_list(
    State(s): State<AppState>,
    Extension(permits): Extension<Arc<Semaphore>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let numbers = parse_fragment_list(&body)?;
    let permit = permits.try_acquire_owned().map_err(|_| {
        ApiError::ClientLimitExceeded("Too many fragment lists are streaming; retry later.".into())
    })?;
    let store = s.api.store.clone();
    let (name, summaries) = {
        let store = store.clone();
        blocking(move || {
            let info = resolve_stream(&store, &body)?;
            let summaries = numbers
                .iter()
                .map(|n| store.fragment_summary(&info.name, *n))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((info.name, summaries))
        })
        .await?
    };
    let (tx, rx) = mpsc::channel(CHUNKS_BUFFERED_MAX);
    tokio::spawn(stream_fragment_list(store, name, summaries, tx, permit));
    Ok(matroska_response(rx))
}

/// The `Fragments` member: 1 to 1000 numbers; a well-formed number this server never issued is
/// an unknown fragment.
fn parse_fragment_list(body: &Members) -> Result<Vec<FragmentNumber>, ApiError> {
    let texts = body
        .string_list("Fragments", FRAGMENT_NUMBER, MEDIA_LIST_FRAGMENTS_MAX)?
        .ok_or_else(|| ApiError::invalid("The required member Fragments is missing."))?;
    texts
        .iter()
        .map(|text| {
            text.parse::<FragmentNumber>().map_err(|_| {
                ApiError::ResourceNotFound(format!("Fragment {text} was not found in the stream."))
            })
        })
        .collect()
}

/// Writes the fragments one at a time while the client reads; ends early if it goes away.
async fn stream_fragment_list(
    store: Arc<Store>,
    name: StreamName,
    summaries: Vec<FragmentSummary>,
    tx: mpsc::Sender<Bytes>,
    _permit: OwnedSemaphorePermit,
) {
    let mut writer = FragmentListWriter::default();
    for summary in summaries {
        let (store, name_for_read) = (store.clone(), name.clone());
        let fragment = blocking(move || read_media(&store, &name_for_read, summary.number)).await;
        let bytes = fragment.and_then(|fragment| {
            writer
                .write_fragment(&fragment, &fragment_list_tags(&summary))
                .map_err(|e| {
                    ApiError::InvalidMediaFrame(format!("Fragment {}: {e}", summary.number))
                })
        });
        let chunk = match bytes {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(stream = %name, fragment = %summary.number, error = %error, "GetMediaForFragmentList stopped on an error.");
                let tags = [
                    (mkv::TAG_FRAGMENT_NUMBER, summary.number.to_string()),
                    (
                        mkv::TAG_EXCEPTION_ERROR_CODE,
                        error.status().as_u16().to_string(),
                    ),
                    (mkv::TAG_EXCEPTION_MESSAGE, error.to_string()),
                ];
                let _ = tx.send(Bytes::from(mkv::write_tags_chunk(&tags))).await;
                return;
            }
        };
        if tx.send(Bytes::from(chunk)).await.is_err() {
            return;
        }
    }
}

/// The tags GetMediaForFragmentList puts before each fragment (its `_SIDE_` spellings).
fn fragment_list_tags(summary: &FragmentSummary) -> [mkv::SimpleTag<'static>; 3] {
    [
        (mkv::TAG_FRAGMENT_NUMBER, summary.number.to_string()),
        (
            mkv::TAG_SERVER_SIDE_TIMESTAMP,
            mkv::tag_timestamp(summary.server_timestamp.0),
        ),
        (
            mkv::TAG_PRODUCER_SIDE_TIMESTAMP,
            mkv::tag_timestamp(summary.producer_timestamp.0),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> StreamName {
        StreamName::new("cam").expect("valid")
    }

    fn members(s: &str) -> Members {
        Members::parse(s.as_bytes()).expect("valid json")
    }

    fn summary(number: u64, size_bytes: u64) -> FragmentSummary {
        FragmentSummary {
            number: FragmentNumber(number),
            size_bytes,
            producer_timestamp: UnixMillis(number),
            server_timestamp: UnixMillis(number),
            duration_ms: 1,
            epoch: 0,
            sequence: number,
        }
    }

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_stream() {
        let query = FragmentQuery {
            kind_producer: true,
            start: UnixMillis(5),
            end: UnixMillis(9),
            after: Some(42),
        };
        let token = query.token(&stream());
        assert!(json::is_token(&token));
        assert_eq!(FragmentQuery::from_token(&token, &stream()), Ok(query));
        let other = StreamName::new("other").expect("valid");
        assert!(FragmentQuery::from_token(&token, &other).is_err());
        assert!(FragmentQuery::from_token("00", &stream()).is_err());
    }

    #[test]
    fn list_fragments_defaults_to_everything_and_100() {
        let (query, page) = parse_list_fragments(&members("{}"), &stream()).expect("valid");
        assert_eq!(page, 100);
        assert_eq!(
            (query.start, query.end),
            (UnixMillis(0), UnixMillis(u64::MAX))
        );
        assert!(parse_list_fragments(&members(r#"{"MaxResults": 1001}"#), &stream()).is_err());
    }

    #[test]
    fn selectors_need_a_type_and_an_ordered_range() {
        let ok = members(
            r#"{"FragmentSelectorType": "SERVER_TIMESTAMP", "TimestampRange": {"StartTimestamp": 1, "EndTimestamp": 2.5}}"#,
        );
        assert_eq!(
            parse_selector(&ok),
            Ok((false, UnixMillis(1000), UnixMillis(2500)))
        );
        let reversed = members(
            r#"{"FragmentSelectorType": "SERVER_TIMESTAMP", "TimestampRange": {"StartTimestamp": 3, "EndTimestamp": 2}}"#,
        );
        assert!(parse_selector(&reversed).is_err());
        let no_range = members(r#"{"FragmentSelectorType": "PRODUCER_TIMESTAMP"}"#);
        let err = parse_selector(&no_range).expect_err("missing");
        assert!(err.to_string().contains("TimestampRange"));
    }

    #[test]
    fn clips_stop_before_the_byte_limit() {
        let summaries = [
            summary(1, CLIP_BYTES_MAX / 2),
            summary(2, CLIP_BYTES_MAX / 2),
            summary(3, 1),
        ];
        assert_eq!(within_clip_bytes(&summaries).len(), 2);
    }
}
