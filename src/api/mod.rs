//! HTTP surfaces in the AWS wire protocols, starting with Kinesis Video Streams (rest-json):
//! the control plane (`kvs`: streams, retention, data endpoint) and archived media
//! (`archived`: ListFragments, GetClip; `hls`: HLS sessions, playlists and fMP4 segments under
//! `/hls/v1/`, authorised by signed session tokens; `images`: GetImages), exactly as boto3's `kinesisvideo` and
//! `kinesis-video-archived-media` clients call them.
//!
//! Owns request validation, the AWS error vocabulary (`error`: one mapping from [`StoreError`]
//! to AWS codes), and response shapes (`json`). Handlers are thin: they validate, call
//! [`Store`] or `media`, and shape the reply. May import `store`, `media` and `fragment`.
//!
//! Authentication: `auth` runs before every operation and verifies AWS SigV4 (`sigv4`, a pure
//! core) against the configured keys, for every route and for each service the server offers
//! (signing names in [`SIGNING_SERVICES`]); open mode skips it. The verified [`Principal`] is a
//! request extension; a key limited to some streams is refused on any other stream.
//!
//! Behaviour: request bodies are capped at [`REQUEST_BODY_BYTES_MAX`]; every response carries
//! an `x-amzn-RequestId`; storage calls run on the blocking pool because they read files;
//! clips are built at most [`CLIP_REQUESTS_MAX`] at a time (each may hold about 200 MB), and a
//! request beyond that gets `ClientLimitExceededException` rather than waiting.
//!
//! [`StoreError`]: crate::store::StoreError

mod archived;
mod auth;
pub mod error;
mod events;
mod hls;
mod images;
pub mod json;
pub mod kinesis;
mod kvs;
mod media;
mod put_media;
pub mod sigv4;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::config::AccessKey;
use crate::fragment::StreamName;
use crate::store::{Store, StreamInfo};

pub use auth::{Principal, SIGNED_BODY_BYTES_MAX, SIGNING_SERVICES};
pub use error::ApiError;
use json::{Members, StringRule};
use sigv4::Verifier;

/// Largest request body accepted, in bytes; every Kinesis Video control request is far smaller.
pub const REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Clips built at the same time; each holds its fragments and the MP4 in memory.
pub const CLIP_REQUESTS_MAX: usize = 2;

/// Header naming the request, on every response (AWS uses it for support; SDKs log it).
pub const REQUEST_ID_HEADER: &str = "x-amzn-RequestId";

/// What the HTTP API serves from.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    /// The region this server answers for (used by request signing).
    pub region: String,
    /// The URL returned by GetDataEndpoint; when unset, `http://` plus the request's Host.
    pub data_endpoint: Option<String>,
    /// Data streams, served at `POST /` (Kinesis Data Streams); absent when not wired.
    pub streams: Option<Arc<crate::streams::Streams>>,
    /// Access keys requests are signed with (SigV4).
    pub keys: Vec<AccessKey>,
    /// Open mode: requests are not verified at all.
    pub open: bool,
    /// Detection events and arming, served under `/events` and `/detect`; absent when no
    /// camera is configured for detection.
    pub events: Option<Arc<crate::detect::events::EventHub>>,
}

/// The state the handlers share: the configured state plus the server's own bounds.
#[derive(Debug)]
struct Shared {
    api: ApiState,
    verifier: Verifier,
    clip_permits: Semaphore,
    hls: hls::HlsState,
}

type AppState = Arc<Shared>;

/// The Kinesis Video router: `POST /<operation>` per operation, JSON in and out. Every route
/// (and every route merged in before the auth layer) is verified by [`auth::authenticate`].
pub fn router(state: ApiState) -> Router {
    let kinesis = state.streams.clone().map(kinesis::router);
    let verifier = Verifier::new(&state.keys, &state.region, auth::SIGNING_SERVICES);
    let hls = hls::HlsState::new(state.store.root());
    let shared = Arc::new(Shared {
        api: state,
        verifier,
        clip_permits: Semaphore::new(CLIP_REQUESTS_MAX),
        hls,
    });
    Router::new()
        .route("/createStream", post(kvs::create_stream))
        .route("/describeStream", post(kvs::describe_stream))
        .route("/listStreams", post(kvs::list_streams))
        .route("/deleteStream", post(kvs::delete_stream))
        .route("/updateDataRetention", post(kvs::update_data_retention))
        .route("/getDataEndpoint", post(kvs::get_data_endpoint))
        .route("/updateStream", post(kvs::update_stream))
        .route("/tagStream", post(kvs::tag_stream))
        .route("/untagStream", post(kvs::untag_stream))
        .route("/listTagsForStream", post(kvs::list_tags_for_stream))
        .route("/listFragments", post(archived::list_fragments))
        .route("/getClip", post(archived::get_clip))
        .route("/putMedia", post(put_media::put_media))
        .route(
            "/getMediaForFragmentList",
            archived::media_for_fragment_list_route(),
        )
        .route("/getMedia", media::route())
        .route("/getHLSStreamingSessionURL", post(hls::get_session_url))
        .route("/getImages", post(images::get_images))
        .route(
            "/hls/v1/getHLSMasterPlaylist.m3u8",
            get(hls::master_playlist),
        )
        .route("/hls/v1/getHLSMediaPlaylist.m3u8", get(hls::media_playlist))
        .route("/hls/v1/getMP4InitFragment.mp4", get(hls::init_fragment))
        .route("/hls/v1/getMP4MediaFragment.mp4", get(hls::media_fragment))
        .route("/events", get(events::list))
        .route("/events/{id}", get(events::get))
        .route("/events/{id}/{file}", get(events::media))
        .route("/detect/arm", post(events::arm))
        .route("/detect/disarm", post(events::disarm))
        .merge(kinesis.unwrap_or_default())
        .fallback(unknown_operation)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            auth::authenticate,
        ))
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .layer(middleware::from_fn(request_id))
        .with_state(shared)
}

async fn unknown_operation() -> ApiError {
    ApiError::UnknownOperation("The requested operation is not supported.".into())
}

/// Gives every response, errors included, a fresh request id.
async fn request_id(request: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    let status = response.status();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    tracing::debug!(request_id = %id, %method, %path, status = status.as_u16(), "Answered a request.");
    response
}

/// A request body read as JSON members, with AWS errors for every failure.
#[derive(Debug)]
struct JsonBody(Members);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::RequestTooLarge(format!(
                        "The request body exceeds {REQUEST_BODY_BYTES_MAX} bytes."
                    ))
                } else {
                    ApiError::invalid(format!("The request body could not be read: {rejection}"))
                }
            })?;
        Members::parse(&bytes).map(JsonBody)
    }
}

const STREAM_ARN: StringRule = StringRule {
    len_min: 1,
    len_max: 1024,
    allowed: json::is_any,
};

/// Reads the stream name out of `arn:aws:kinesisvideo:<region>:<account>:stream/<name>/<ms>`.
fn stream_name_from_arn(arn: &str) -> Result<StreamName, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "StreamARN {arn:?} is not a Kinesis Video stream ARN."
        ))
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts.as_slice() else {
        return Err(bad());
    };
    let partition_ok = !partition.is_empty()
        && partition
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let region_ok = !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let account_ok = !account.is_empty() && account.chars().all(|c| c.is_ascii_digit());
    if *prefix != "arn" || *service != "kinesisvideo" || !partition_ok || !region_ok || !account_ok
    {
        return Err(bad());
    }
    let mut pieces = resource.split('/');
    let (Some("stream"), Some(name), Some(ms), None) =
        (pieces.next(), pieces.next(), pieces.next(), pieces.next())
    else {
        return Err(bad());
    };
    if ms.is_empty() || !ms.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    StreamName::new(name).map_err(|_| bad())
}

/// The stream a request names by exactly one of `StreamName` or `StreamARN`.
fn resolve_stream(store: &Store, body: &Members) -> Result<StreamInfo, ApiError> {
    let name = body.stream_name("StreamName")?;
    let arn = body.string("StreamARN", STREAM_ARN)?;
    match (name, arn) {
        (Some(name), None) => Ok(store.describe_stream(&name)?),
        (None, Some(arn)) => stream_by_arn(store, &arn),
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "Specify either StreamName or StreamARN, not both.",
        )),
        (None, None) => Err(ApiError::invalid("Specify either StreamName or StreamARN.")),
    }
}

/// The stream with this ARN: its name must exist and its full ARN (creation time included) match,
/// so a deleted and recreated stream is not mistaken for the old one.
fn stream_by_arn(store: &Store, arn: &str) -> Result<StreamInfo, ApiError> {
    let name = stream_name_from_arn(arn)?;
    let info = store.describe_stream(&name)?;
    if info.arn != arn {
        return Err(ApiError::ResourceNotFound(format!(
            "The requested stream {arn} was not found."
        )));
    }
    Ok(info)
}

/// Runs storage work on the blocking pool: the store reads and writes files synchronously.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "A storage task failed.");
        Err(ApiError::Internal)
    })
}

#[cfg(test)]
mod tests;
