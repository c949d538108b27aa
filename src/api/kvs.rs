//! The Kinesis Video control plane: CreateStream, DescribeStream, ListStreams, DeleteStream,
//! UpdateStream, UpdateDataRetention, GetDataEndpoint and the tag operations (TagStream,
//! UntagStream, ListTagsForStream).
//!
//! Every handler that resolves a stream checks that the request's [`Principal`] may use it
//! (the auth layer already refused requests naming other streams; this keeps the rule true for
//! streams reached another way), and ListStreams shows a restricted key only its streams.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use serde_json::{Value, json};

use crate::fragment::{StreamName, UnixMillis};
use crate::store::{NewStream, RetentionChange, Store, StreamInfo, StreamUpdate};

use super::json::{self, Members, StringRule};
use super::{ApiError, AppState, JsonBody, Principal, blocking, resolve_stream, stream_by_arn};

/// Longest retention AWS accepts, in hours (ten years).
pub const RETENTION_HOURS_MAX: i64 = 87_600;
/// Most streams one ListStreams page returns (also the default page size).
pub const LIST_STREAMS_RESULTS_MAX: i64 = 10_000;
/// Most tags on a stream, and most tags or tag keys in one request.
pub const TAGS_MAX: usize = crate::store::TAGS_MAX;
/// `TagKey`: 1 to 128 characters of the tag pattern.
const TAG_KEY: StringRule = StringRule {
    len_min: 1,
    len_max: json::TAG_KEY_CHARS_MAX,
    allowed: json::is_tag_text,
};

const DEVICE_NAME: StringRule = StringRule {
    len_min: 1,
    len_max: 128,
    allowed: json::is_name,
};
const MEDIA_TYPE: StringRule = StringRule {
    len_min: 1,
    len_max: 128,
    allowed: json::is_media_type,
};
const KMS_KEY_ID: StringRule = StringRule {
    len_min: 1,
    len_max: 2048,
    allowed: json::is_any,
};
const VERSION: StringRule = StringRule {
    len_min: 1,
    len_max: 64,
    allowed: json::is_alphanumeric,
};
const STREAM_ARN: StringRule = StringRule {
    len_min: 1,
    len_max: 1024,
    allowed: json::is_any,
};
const NEXT_TOKEN: StringRule = StringRule {
    len_min: 0,
    len_max: 1024,
    allowed: json::is_token,
};

const API_NAMES: &[&str] = &[
    "PUT_MEDIA",
    "GET_MEDIA",
    "LIST_FRAGMENTS",
    "GET_MEDIA_FOR_FRAGMENT_LIST",
    "GET_HLS_STREAMING_SESSION_URL",
    "GET_DASH_STREAMING_SESSION_URL",
    "GET_CLIP",
    "GET_IMAGES",
];

pub async fn create_stream(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let new = parse_create_stream(&body)?;
    authorize_name(&principal, &new.name)?;
    let store = s.api.store.clone();
    let info = blocking(move || Ok(store.create_stream(new, UnixMillis::now())?)).await?;
    tracing::info!(stream = %info.name, "Created a stream.");
    Ok(Json(json!({ "StreamARN": info.arn })))
}

fn parse_create_stream(body: &Members) -> Result<NewStream, ApiError> {
    let name = body
        .stream_name("StreamName")?
        .ok_or_else(|| ApiError::invalid("The required member StreamName is missing."))?;
    let retention = body.integer("DataRetentionInHours", 0, RETENTION_HOURS_MAX)?;
    Ok(NewStream {
        tags: body.tags("Tags", TAGS_MAX)?.unwrap_or_default(),
        name,
        device_name: body.string("DeviceName", DEVICE_NAME)?,
        media_type: body.string("MediaType", MEDIA_TYPE)?,
        kms_key_id: body.string("KmsKeyId", KMS_KEY_ID)?,
        data_retention_hours: retention.and_then(|h| u32::try_from(h).ok()),
    })
}

pub async fn describe_stream(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let store = s.api.store.clone();
    let info = blocking(move || resolve_authorized(&store, &principal, &body)).await?;
    Ok(Json(json!({ "StreamInfo": json::stream_info(&info) })))
}

/// One validated ListStreams request.
#[derive(Debug, PartialEq, Eq)]
struct ListStreams {
    page_size: usize,
    /// Streams whose names are at most this were on earlier pages.
    after: Option<String>,
    prefix: Option<String>,
}

pub async fn list_streams(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let request = parse_list_streams(&body)?;
    let store = s.api.store.clone();
    let mut streams = blocking(move || Ok(store.list_streams())).await?;
    streams.retain(|info| principal.may_use(&info.name));
    let (page, next) = page_streams(&streams, &request);
    let mut out =
        json!({ "StreamInfoList": page.iter().map(|i| json::stream_info(i)).collect::<Vec<_>>() });
    if let Some(next) = next {
        out["NextToken"] = Value::String(json::hex_encode(next.as_bytes()));
    }
    Ok(Json(out))
}

fn parse_list_streams(body: &Members) -> Result<ListStreams, ApiError> {
    let page_size = body
        .integer("MaxResults", 1, LIST_STREAMS_RESULTS_MAX)?
        .unwrap_or(LIST_STREAMS_RESULTS_MAX);
    let after = match body
        .string("NextToken", NEXT_TOKEN)?
        .filter(|t| !t.is_empty())
    {
        None => None,
        Some(token) => Some(decode_stream_token(&token)?),
    };
    let prefix = match body.object("StreamNameCondition")? {
        None => None,
        Some(condition) => {
            condition.enumeration("ComparisonOperator", &["BEGINS_WITH"])?;
            condition.stream_name("ComparisonValue")?.map(String::from)
        }
    };
    Ok(ListStreams {
        page_size: usize::try_from(page_size).unwrap_or(1),
        after,
        prefix,
    })
}

fn decode_stream_token(token: &str) -> Result<String, ApiError> {
    let bad = || ApiError::invalid("NextToken is not a token this server issued.");
    let bytes = json::hex_decode(token).ok_or_else(bad)?;
    let name = String::from_utf8(bytes).map_err(|_| bad())?;
    StreamName::new(name.clone()).map_err(|_| bad())?;
    Ok(name)
}

/// The page of `streams` (sorted by name) the request asks for, and the name to resume after.
fn page_streams<'a>(
    streams: &'a [StreamInfo],
    request: &ListStreams,
) -> (Vec<&'a StreamInfo>, Option<String>) {
    let mut matching = streams
        .iter()
        .filter(|i| {
            request
                .prefix
                .as_deref()
                .is_none_or(|p| i.name.as_str().starts_with(p))
        })
        .filter(|i| request.after.as_deref().is_none_or(|a| i.name.as_str() > a));
    let page: Vec<&StreamInfo> = matching.by_ref().take(request.page_size).collect();
    let more = matching.next().is_some();
    let next = more
        .then(|| page.last().map(|i| i.name.to_string()))
        .flatten();
    (page, next)
}

pub async fn delete_stream(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let arn = body.required_string("StreamARN", STREAM_ARN)?;
    let version = body.string("CurrentVersion", VERSION)?;
    let store = s.api.store.clone();
    let name = blocking(move || {
        let info = stream_by_arn(&store, &arn)?;
        authorize_name(&principal, &info.name)?;
        store.delete_stream(&info.name, version.as_deref())?;
        Ok(info.name)
    })
    .await?;
    tracing::info!(stream = %name, "Deleted a stream.");
    Ok(Json(json!({})))
}

pub async fn update_data_retention(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let version = body.required_string("CurrentVersion", VERSION)?;
    let change = parse_retention_change(&body)?;
    let store = s.api.store.clone();
    let info = blocking(move || {
        let info = resolve_authorized(&store, &principal, &body)?;
        Ok(store.update_retention(&info.name, &version, change, UnixMillis::now())?)
    })
    .await?;
    tracing::info!(stream = %info.name, hours = info.data_retention_hours, "Changed a stream's retention.");
    Ok(Json(json!({})))
}

fn parse_retention_change(body: &Members) -> Result<RetentionChange, ApiError> {
    let operation = body.required_enumeration(
        "Operation",
        &["INCREASE_DATA_RETENTION", "DECREASE_DATA_RETENTION"],
    )?;
    let hours = body
        .integer("DataRetentionChangeInHours", 1, RETENTION_HOURS_MAX)?
        .ok_or_else(|| {
            ApiError::invalid("The required member DataRetentionChangeInHours is missing.")
        })?;
    let hours = u32::try_from(hours)
        .map_err(|_| ApiError::invalid("DataRetentionChangeInHours is out of range."))?;
    Ok(match operation {
        "INCREASE_DATA_RETENTION" => RetentionChange::Increase(hours),
        _ => RetentionChange::Decrease(hours),
    })
}

pub async fn get_data_endpoint(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    body.required_enumeration("APIName", API_NAMES)?;
    let store = s.api.store.clone();
    blocking(move || resolve_authorized(&store, &principal, &body)).await?;
    let endpoint = match &s.api.data_endpoint {
        Some(endpoint) => endpoint.clone(),
        None => format!("http://{}", request_host(&headers)?),
    };
    Ok(Json(json!({ "DataEndpoint": endpoint })))
}

pub async fn update_stream(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let version = body.required_string("CurrentVersion", VERSION)?;
    let update = StreamUpdate {
        device_name: body.string("DeviceName", DEVICE_NAME)?,
        media_type: body.string("MediaType", MEDIA_TYPE)?,
    };
    let store = s.api.store.clone();
    let info = blocking(move || {
        let info = resolve_authorized(&store, &principal, &body)?;
        Ok(store.update_stream(&info.name, &version, update)?)
    })
    .await?;
    tracing::info!(stream = %info.name, version = %info.version, "Updated a stream.");
    Ok(Json(json!({})))
}

pub async fn tag_stream(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let tags = body
        .tags("Tags", TAGS_MAX)?
        .ok_or_else(|| ApiError::invalid("The required member Tags is missing."))?;
    let store = s.api.store.clone();
    blocking(move || {
        let info = resolve_authorized(&store, &principal, &body)?;
        Ok(store.tag_stream(&info.name, tags)?)
    })
    .await?;
    Ok(Json(json!({})))
}

pub async fn untag_stream(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let keys = body
        .string_list("TagKeyList", TAG_KEY, TAGS_MAX)?
        .ok_or_else(|| ApiError::invalid("The required member TagKeyList is missing."))?;
    let store = s.api.store.clone();
    blocking(move || {
        let info = resolve_authorized(&store, &principal, &body)?;
        Ok(store.untag_stream(&info.name, &keys)?)
    })
    .await?;
    Ok(Json(json!({})))
}

/// All tags fit in one page (at most [`TAGS_MAX`]), so no NextToken is ever returned; a token
/// sent back is checked for shape only.
pub async fn list_tags_for_stream(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    body.string("NextToken", NEXT_TOKEN)?;
    let store = s.api.store.clone();
    let info = blocking(move || resolve_authorized(&store, &principal, &body)).await?;
    Ok(Json(json!({ "Tags": info.tags })))
}

/// The stream the request names, if the principal may use it.
pub(super) fn resolve_authorized(
    store: &Store,
    principal: &Principal,
    body: &Members,
) -> Result<StreamInfo, ApiError> {
    let info = resolve_stream(store, body)?;
    authorize_name(principal, &info.name)?;
    Ok(info)
}

fn authorize_name(principal: &Principal, name: &StreamName) -> Result<(), ApiError> {
    if principal.may_use(name) {
        return Ok(());
    }
    Err(ApiError::NotAuthorized(format!(
        "The access key {} is not authorized to use the stream {name}.",
        principal.access_key_id
    )))
}

/// The Host header, checked to be a plain `host[:port]` so it is safe to hand back as a URL.
pub(super) fn request_host(headers: &HeaderMap) -> Result<String, ApiError> {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.len() <= 255)
        .ok_or_else(|| ApiError::invalid("The request has no usable Host header."))?;
    let plain = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !plain {
        return Err(ApiError::invalid(
            "The request's Host header is not a host name.",
        ));
    }
    Ok(host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StreamStatus;

    fn members(s: &str) -> Members {
        Members::parse(s.as_bytes()).expect("valid json")
    }

    fn info(name: &str) -> StreamInfo {
        StreamInfo {
            name: StreamName::new(name).expect("valid"),
            arn: format!("arn:aws:kinesisvideo:us-east-1:1:stream/{name}/1"),
            device_name: None,
            media_type: None,
            kms_key_id: None,
            version: "1".into(),
            status: StreamStatus::Active,
            creation_time: UnixMillis(1),
            data_retention_hours: 0,
            tags: Default::default(),
        }
    }

    #[test]
    fn create_stream_validates_members() {
        assert!(parse_create_stream(&members(r#"{}"#)).is_err());
        assert!(parse_create_stream(&members(r#"{"StreamName": "a b"}"#)).is_err());
        assert!(
            parse_create_stream(&members(
                r#"{"StreamName": "a", "DataRetentionInHours": 87601}"#
            ))
            .is_err()
        );
        assert!(
            parse_create_stream(&members(r#"{"StreamName": "a", "MediaType": "h264"}"#)).is_err()
        );
        let new = parse_create_stream(&members(
            r#"{"StreamName": "a", "DataRetentionInHours": 0, "MediaType": "video/h264", "DeviceName": "cam-1"}"#,
        ))
        .expect("valid");
        assert_eq!(new.data_retention_hours, Some(0));
        assert_eq!(new.media_type.as_deref(), Some("video/h264"));
    }

    #[test]
    fn list_streams_pages_by_name_with_a_prefix() {
        let streams: Vec<StreamInfo> = ["a1", "a2", "a3", "b1"].into_iter().map(info).collect();
        let first = parse_list_streams(&members(r#"{"MaxResults": 2, "StreamNameCondition": {"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "a"}}"#)).expect("valid");
        let (page, next) = page_streams(&streams, &first);
        assert_eq!(
            page.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["a1", "a2"]
        );
        let token = json::hex_encode(next.expect("more").as_bytes());
        let second = parse_list_streams(&members(&format!(
            r#"{{"MaxResults": 2, "NextToken": "{token}", "StreamNameCondition": {{"ComparisonValue": "a"}}}}"#
        )))
        .expect("valid");
        let (page, next) = page_streams(&streams, &second);
        assert_eq!(
            page.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["a3"]
        );
        assert_eq!(next, None);
    }

    #[test]
    fn list_streams_rejects_bad_bounds_and_tokens() {
        assert!(parse_list_streams(&members(r#"{"MaxResults": 0}"#)).is_err());
        assert!(parse_list_streams(&members(r#"{"MaxResults": 10001}"#)).is_err());
        assert!(parse_list_streams(&members(r#"{"NextToken": "zz"}"#)).is_err());
        assert!(
            parse_list_streams(&members(
                r#"{"StreamNameCondition": {"ComparisonOperator": "ENDS_WITH"}}"#
            ))
            .is_err()
        );
    }

    #[test]
    fn retention_changes_are_deltas_of_at_least_one_hour() {
        let up =
            members(r#"{"Operation": "INCREASE_DATA_RETENTION", "DataRetentionChangeInHours": 5}"#);
        assert!(matches!(
            parse_retention_change(&up),
            Ok(RetentionChange::Increase(5))
        ));
        let zero =
            members(r#"{"Operation": "DECREASE_DATA_RETENTION", "DataRetentionChangeInHours": 0}"#);
        assert!(parse_retention_change(&zero).is_err());
        assert!(
            parse_retention_change(&members(
                r#"{"Operation": "GROW", "DataRetentionChangeInHours": 1}"#
            ))
            .is_err()
        );
    }

    #[test]
    fn host_header_must_be_a_plain_host() {
        let mut headers = HeaderMap::new();
        assert!(request_host(&headers).is_err());
        headers.insert("host", "localhost:7070".parse().expect("header"));
        assert_eq!(request_host(&headers), Ok("localhost:7070".to_owned()));
        headers.insert("host", "evil/path".parse().expect("header"));
        assert!(request_host(&headers).is_err());
    }
}
