//! The Kinesis Data Streams API: `POST /` with `X-Amz-Target: Kinesis_20131202.<Operation>`,
//! in JSON 1.1 (boto3, the CLI, aws-sdk-rust) or CBOR 1.1 (the Java SDKs and the KCL), chosen by
//! the request's `Content-Type` and answered in the same format, errors included.
//!
//! Owns the wire shapes, validation per the botocore model and the mapping from
//! [`StreamsError`] to AWS error types; the semantics live in [`crate::streams`]. May import
//! `streams` and `fragment`.
//!
//! Behaviour: bodies are capped at [`REQUEST_BODY_BYTES_MAX`] (a 5 MiB PutRecords in base64
//! with its keys fits); errors are HTTP 400 `{"__type", "message"}` and server faults HTTP 500
//! `{"__type": "InternalFailure"}`; file work runs on the blocking pool, and a put answers only
//! after its records are fsynced.

mod cbor;
mod ops;
mod parse;

pub use cbor::CONTENT_TYPE_CBOR;

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;

use crate::api::sigv4::Principal;
use crate::fragment::StreamName;
use crate::streams::{Streams, StreamsError};

/// Largest request body in bytes: 5 MiB of data grows by a third in base64, plus keys.
pub const REQUEST_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
const TARGET_HEADER: &str = "x-amz-target";
const TARGET_PREFIX: &str = "Kinesis_20131202.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// An error as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisError {
    pub code: &'static str,
    pub message: String,
}

impl KinesisError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("InvalidArgumentException", message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationException", message)
    }

    pub fn internal() -> Self {
        Self::new("InternalFailure", "")
    }
}

impl From<StreamsError> for KinesisError {
    /// The one mapping from domain failures to AWS error types.
    fn from(error: StreamsError) -> Self {
        let code = match &error {
            StreamsError::StreamNotFound { .. } | StreamsError::ShardNotFound { .. } => {
                "ResourceNotFoundException"
            }
            StreamsError::StreamExists { .. } | StreamsError::InUse(_) => "ResourceInUseException",
            StreamsError::InvalidArgument(_) => "InvalidArgumentException",
            StreamsError::LimitExceeded(_) => "LimitExceededException",
            StreamsError::ExpiredIterator { .. } => "ExpiredIteratorException",
            StreamsError::Throttled { .. } => "ProvisionedThroughputExceededException",
            StreamsError::Log(_)
            | StreamsError::Io { .. }
            | StreamsError::Corrupt(_)
            | StreamsError::Poisoned => {
                tracing::error!(error = %error, "Data streams failed while serving a request.");
                return Self::internal();
            }
        };
        Self::new(code, error.to_string())
    }
}

impl IntoResponse for KinesisError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        json_response(status, &body)
    }
}

impl KinesisError {
    /// The HTTP status and the body members of this error, in either format.
    fn status_and_body(&self) -> (StatusCode, Value) {
        match self.code {
            "InternalFailure" => (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "__type": "InternalFailure" }),
            ),
            "SerializationException" => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "__type": self.code, "Message": self.message }),
            ),
            code => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "__type": code, "message": self.message }),
            ),
        }
    }
}

/// The wire format of a request, which its reply uses too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Cbor,
}

impl Format {
    fn of(headers: &HeaderMap) -> Format {
        let cbor = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().starts_with("application/x-amz-cbor"));
        if cbor { Format::Cbor } else { Format::Json }
    }

    fn parse(self, body: &[u8]) -> Result<parse::Body, KinesisError> {
        match self {
            Format::Json => parse::Body::parse(body),
            Format::Cbor => cbor::decode(body),
        }
    }

    fn respond(self, status: StatusCode, body: &Value) -> Response {
        match self {
            Format::Json => json_response(status, body),
            Format::Cbor => {
                let mut response = (status, cbor::encode(body)).into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(CONTENT_TYPE_CBOR),
                );
                response
            }
        }
    }

    fn error(self, error: &KinesisError) -> Response {
        let (status, body) = error.status_and_body();
        self.respond(status, &body)
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// The Kinesis route, for merging into the server's router (any outer state).
pub fn router<S: Clone + Send + Sync + 'static>(streams: Arc<Streams>) -> Router<S> {
    Router::new()
        .route("/", post(dispatch))
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(streams)
}

async fn dispatch(
    State(streams): State<Arc<Streams>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let format = Format::of(&headers);
    let target = headers
        .get(TARGET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(operation) = target.strip_prefix(TARGET_PREFIX) else {
        return format.error(&KinesisError::new("UnknownOperationException", ""));
    };
    let principal = principal.map(|Extension(p)| p);
    let result = match format.parse(&body) {
        Ok(input) => match authorize(&streams, principal.as_ref(), operation, &input) {
            Ok(()) => ops::call(&streams, operation, input).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(mut value) => {
            if let Some(p) = principal.as_ref().filter(|p| p.is_restricted()) {
                hide_other_streams(p, &mut value);
            }
            format.respond(StatusCode::OK, &value)
        }
        Err(e) => format.error(&e),
    }
}

/// A key limited to named streams may act only on those (AccessDeniedException otherwise).
/// Requests naming no stream (ListStreams, DescribeLimits, GetRecords by an iterator that was
/// issued for an allowed stream) pass; listings are filtered afterwards.
fn authorize(
    streams: &Streams,
    principal: Option<&Principal>,
    operation: &str,
    input: &parse::Body,
) -> Result<(), KinesisError> {
    let Some(principal) = principal.filter(|p| p.is_restricted()) else {
        return Ok(());
    };
    let named = input
        .0
        .get("StreamName")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            let arn = input.0.get("StreamARN").and_then(Value::as_str)?;
            streams.name_from_arn(arn).map(str::to_owned)
        });
    let Some(name) = named else { return Ok(()) };
    let allowed = StreamName::new(name.as_str()).is_ok_and(|n| principal.may_use(&n));
    if allowed {
        return Ok(());
    }
    Err(KinesisError::new(
        "AccessDeniedException",
        format!(
            "User: {} is not authorized to perform: kinesis:{operation} on resource: {}",
            principal.access_key_id,
            streams.arn(&name)
        ),
    ))
}

/// Removes the streams a restricted key may not see from ListStreams replies.
fn hide_other_streams(principal: &Principal, reply: &mut Value) {
    let visible = |name: &str| StreamName::new(name).is_ok_and(|n| principal.may_use(&n));
    if let Some(Value::Array(names)) = reply.get_mut("StreamNames") {
        names.retain(|n| n.as_str().is_some_and(visible));
    }
    if let Some(Value::Array(summaries)) = reply.get_mut("StreamSummaries") {
        summaries.retain(|s| {
            s.get("StreamName")
                .and_then(Value::as_str)
                .is_some_and(visible)
        });
    }
}

#[cfg(test)]
mod tests;
