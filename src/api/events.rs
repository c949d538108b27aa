//! Detection events over HTTP (not an AWS API, behind the same SigV4 / open-mode layer):
//! `GET /events?stream=&limit=`, `GET /events/<id>`, `GET /events/<id>/snapshot.jpg`,
//! `GET /events/<id>/clip.mp4` (muxed on read like GetClip), `POST /detect/arm` and
//! `POST /detect/disarm` with `{"stream": ...}`. A key limited to some streams sees and arms only
//! those.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, JsonBody, Principal, blocking};
use crate::detect::events::{Event, EventHub};
use crate::fragment::{StreamName, UnixMillis};
use crate::media::{MediaFragment, mp4};
use crate::store::TimestampKind;

/// Events listed when no limit is given.
const LIST_LIMIT_DEFAULT: usize = 100;
/// Fragments one event clip reads at most.
const EVENT_CLIP_FRAGMENTS_MAX: usize = 200;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    stream: Option<String>,
    limit: Option<usize>,
}

fn hub(s: &AppState) -> Result<Arc<EventHub>, ApiError> {
    s.api
        .events
        .clone()
        .ok_or_else(|| ApiError::ResourceNotFound("Detection is not configured.".into()))
}

fn visible(principal: &Principal, event: &Event) -> bool {
    StreamName::new(event.stream.as_str()).is_ok_and(|n| principal.may_use(&n))
}

fn event_for(s: &AppState, principal: &Principal, id: &str) -> Result<Event, ApiError> {
    hub(s)?
        .get(id)
        .filter(|e| visible(principal, e))
        .ok_or_else(|| ApiError::ResourceNotFound(format!("Event {id} not found.")))
}

pub async fn list(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let hub = hub(&s)?;
    let limit = q.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    let events: Vec<Event> = hub
        .list(q.stream.as_deref(), limit)
        .into_iter()
        .filter(|e| visible(&principal, e))
        .collect();
    Ok(axum::Json(serde_json::json!({ "events": events })).into_response())
}

pub async fn get(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(event_for(&s, &principal, &id)?).into_response())
}

/// `<id>/snapshot.jpg` and `<id>/clip.mp4`.
pub async fn media(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, what)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let event = event_for(&s, &principal, &id)?;
    match what.as_str() {
        "snapshot.jpg" => snapshot(&s, event).await,
        "clip.mp4" => clip(&s, event).await,
        _ => Err(ApiError::ResourceNotFound(format!("{what} not found."))),
    }
}

async fn snapshot(s: &AppState, event: Event) -> Result<Response, ApiError> {
    let name = event
        .snapshot
        .ok_or_else(|| ApiError::ResourceNotFound("The event has no snapshot.".into()))?;
    let path = hub(s)?.dir().join(name);
    let bytes = blocking(move || {
        std::fs::read(&path)
            .map_err(|_| ApiError::ResourceNotFound("The snapshot file is gone.".into()))
    })
    .await?;
    Ok(typed(bytes, "image/jpeg"))
}

async fn clip(s: &AppState, event: Event) -> Result<Response, ApiError> {
    let store = s.api.store.clone();
    let _permit = s.clip_permits.try_acquire().map_err(|_| {
        ApiError::ClientLimitExceeded("Too many clips are being built; retry later.".into())
    })?;
    let bytes = blocking(move || {
        let stream = StreamName::new(event.stream.as_str())
            .map_err(|_| ApiError::ResourceNotFound("The event's stream is invalid.".into()))?;
        let summaries = store.list_fragments(
            &stream,
            TimestampKind::Producer,
            UnixMillis(event.clip.start),
            UnixMillis(event.clip.end),
            None,
            EVENT_CLIP_FRAGMENTS_MAX,
        )?;
        let mut fragments = Vec::with_capacity(summaries.len());
        for summary in &summaries {
            let (_, payload) = store.read_fragment(&stream, summary.number)?;
            fragments.push(MediaFragment::decode(&payload)?);
        }
        if fragments.is_empty() {
            return Err(ApiError::ResourceNotFound(
                "No fragments are stored for the event's clip.".into(),
            ));
        }
        Ok(mp4::write_mp4(&fragments)?)
    })
    .await?;
    Ok(typed(bytes, "video/mp4"))
}

fn typed(bytes: Vec<u8>, content_type: &'static str) -> Response {
    let mut response = bytes.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `POST /detect/arm` and `/detect/disarm`.
pub async fn arm(
    s: State<AppState>,
    principal: Extension<Principal>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    set_armed(s, principal, body, true)
}

pub async fn disarm(
    s: State<AppState>,
    principal: Extension<Principal>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    set_armed(s, principal, body, false)
}

fn set_armed(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
    armed: bool,
) -> Result<Response, ApiError> {
    let stream = body
        .stream_name("stream")?
        .ok_or_else(|| ApiError::invalid("Specify stream."))?;
    if !principal.may_use(&stream) {
        return Err(ApiError::NotAuthorized(format!(
            "This key may not use stream {stream}."
        )));
    }
    hub(&s)?.arm.set(stream.as_str(), Some(armed));
    tracing::info!(%stream, armed, "detection arming changed through the API");
    Ok(
        axum::Json(serde_json::json!({ "stream": stream.as_str(), "armed": armed }))
            .into_response(),
    )
}
