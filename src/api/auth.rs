//! The HTTP shell around [`sigv4`](super::sigv4): every request except the token-carrying
//! playback routes is verified before any handler runs, and the authenticated
//! [`Principal`] travels to handlers as a request extension.
//!
//! Behaviour:
//! - Open mode (`ServerSettings::open`) verifies nothing and admits every request as
//!   [`Principal::anyone`]; the server logs a warning at start.
//! - The body is buffered, up to [`SIGNED_BODY_BYTES_MAX`], because its hash is signed; a request
//!   that signs `UNSIGNED-PAYLOAD` keeps its body streaming (long-lived uploads).
//! - Errors use the style of the surface asked: `POST /` with `X-Amz-Target` (Kinesis Data
//!   Streams, JSON 1.1) gets `{"__type": ..., "message": ...}` with 400; the Kinesis Video paths
//!   get the `x-amzn-ErrorType` header and 403 (400 for an incomplete signature), as AWS does.
//! - A key restricted to some streams is refused on any Kinesis Video request naming another
//!   stream (`StreamName`, `StreamARN` members or the PutMedia headers) with
//!   `NotAuthorizedException`; handlers also see the principal to filter listings.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::json::Members;
use super::sigv4::{CONTENT_SHA256_HEADER, RequestParts, SigV4Error, UNSIGNED_PAYLOAD};
use super::{ApiError, AppState, stream_name_from_arn};
use crate::fragment::StreamName;

pub use super::sigv4::Principal;

/// Largest body read to verify its signature, in bytes: a Kinesis PutRecords of 5 MiB in base64
/// JSON fits with room to spare.
pub const SIGNED_BODY_BYTES_MAX: usize = 10 * 1024 * 1024;

/// Path prefixes whose requests carry their own session token instead of a signature (HLS and
/// DASH players cannot sign).
const TOKEN_ROUTE_PREFIXES: &[&str] = &["/hls/", "/dash/"];

/// Signing names of the services this server offers.
pub const SIGNING_SERVICES: &[&str] = &["kinesisvideo", "kinesis"];

/// Header naming the Kinesis Data Streams operation of a `POST /`.
const TARGET_HEADER: &str = "x-amz-target";

/// How an authentication error is written, following the surface the request addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorStyle {
    /// rest-json (Kinesis Video): `x-amzn-ErrorType` header.
    RestJson,
    /// JSON 1.1 (Kinesis Data Streams): `__type` member.
    AwsJson,
}

impl ErrorStyle {
    fn of(request: &Request) -> Self {
        if request.uri().path() == "/" && request.headers().contains_key(TARGET_HEADER) {
            Self::AwsJson
        } else {
            Self::RestJson
        }
    }
}

/// Verifies the request, or answers with the AWS error.
pub async fn authenticate(State(s): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if TOKEN_ROUTE_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return next.run(request).await;
    }
    let style = ErrorStyle::of(&request);
    match admit(&s, request, style).await {
        Ok(request) => next.run(request).await,
        Err(response) => response,
    }
}

/// The request with its principal attached, or the response refusing it.
async fn admit(s: &AppState, request: Request, style: ErrorStyle) -> Result<Request, Response> {
    if s.api.open {
        let mut request = request;
        request.extensions_mut().insert(Principal::anyone());
        return Ok(request);
    }
    let (mut parts, body) = request.into_parts();
    let unsigned = parts
        .headers
        .get(CONTENT_SHA256_HEADER)
        .is_some_and(|v| v.as_bytes() == UNSIGNED_PAYLOAD.as_bytes());
    let (buffered, body) = if unsigned {
        (None, body)
    } else {
        let bytes = read_body(body, style).await?;
        (Some(bytes.clone()), Body::from(bytes))
    };
    let request_parts = RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        authority: parts.uri.authority().map(|a| a.as_str()),
    };
    let principal = s
        .verifier
        .verify(&request_parts, buffered.as_deref(), unix_now_s())
        .map_err(|e| {
            tracing::info!(code = e.code(), reason = %e, path = %parts.uri.path(), "Refused an unauthenticated request.");
            auth_error_response(&e, style)
        })?;
    if style == ErrorStyle::RestJson {
        check_stream_scope(&principal, &parts.headers, buffered.as_deref())
            .map_err(IntoResponse::into_response)?;
    }
    parts.extensions.insert(principal);
    Ok(Request::from_parts(parts, body))
}

async fn read_body(body: Body, style: ErrorStyle) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, SIGNED_BODY_BYTES_MAX)
        .await
        .map_err(|_| {
            let message = format!(
                "The request body exceeds {SIGNED_BODY_BYTES_MAX} bytes or could not be read."
            );
            match style {
                ErrorStyle::RestJson => ApiError::RequestTooLarge(message).into_response(),
                ErrorStyle::AwsJson => aws_json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "SerializationException",
                    &message,
                ),
            }
        })
}

fn unix_now_s() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
}

/// Refuses a restricted key on a request naming a stream it may not use. Members that do not
/// parse are left for the handler to reject with its own, more precise error.
fn check_stream_scope(
    principal: &Principal,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Result<(), ApiError> {
    if !principal.is_restricted() {
        return Ok(());
    }
    for name in named_streams(headers, body) {
        if !principal.may_use(&name) {
            return Err(ApiError::NotAuthorized(format!(
                "The access key {} is not authorized to use the stream {name}.",
                principal.access_key_id
            )));
        }
    }
    Ok(())
}

/// Streams a Kinesis Video request names, in its JSON body or the PutMedia headers.
fn named_streams(headers: &HeaderMap, body: Option<&[u8]>) -> Vec<StreamName> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let members = body
        .and_then(|b| Members::parse(b).ok())
        .unwrap_or_default();
    let mut names = Vec::new();
    let plain = [
        header("x-amzn-stream-name"),
        members.raw_string("StreamName"),
    ];
    names.extend(
        plain
            .into_iter()
            .flatten()
            .filter_map(|n| StreamName::new(n).ok()),
    );
    let arns = [header("x-amzn-stream-arn"), members.raw_string("StreamARN")];
    names.extend(
        arns.into_iter()
            .flatten()
            .filter_map(|a| stream_name_from_arn(&a).ok()),
    );
    names
}

/// The refusal in the style of the addressed surface.
fn auth_error_response(error: &SigV4Error, style: ErrorStyle) -> Response {
    match style {
        ErrorStyle::AwsJson => {
            aws_json_error(StatusCode::BAD_REQUEST, error.code(), &error.to_string())
        }
        ErrorStyle::RestJson => {
            let status = match error {
                SigV4Error::IncompleteSignature(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::FORBIDDEN,
            };
            let message = error.to_string();
            let body = serde_json::json!({ "message": message, "Message": message });
            let mut response = (status, axum::Json(body)).into_response();
            response.headers_mut().insert(
                super::error::ERROR_TYPE_HEADER,
                HeaderValue::from_static(error.code()),
            );
            response
        }
    }
}

/// An error in the JSON 1.1 protocol's shape.
fn aws_json_error(status: StatusCode, code: &'static str, message: &str) -> Response {
    let body = serde_json::json!({ "__type": code, "message": message });
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restricted() -> Principal {
        let key = crate::config::AccessKey {
            access_key_id: "AK".into(),
            secret_access_key: "s".into(),
            streams: vec!["a".into()],
        };
        super::super::sigv4::Verifier::new(&[key], "r", SIGNING_SERVICES)
            .principal("AK")
            .expect("configured")
    }

    #[test]
    fn restricted_keys_only_reach_their_streams() {
        let p = restricted();
        let none = HeaderMap::new();
        assert!(check_stream_scope(&p, &none, Some(br#"{"StreamName": "a"}"#)).is_ok());
        assert!(check_stream_scope(&p, &none, Some(br#"{"StreamName": "b"}"#)).is_err());
        let arn = br#"{"StreamARN": "arn:aws:kinesisvideo:r:1:stream/b/1"}"#;
        assert!(check_stream_scope(&p, &none, Some(arn)).is_err());
        let mut put = HeaderMap::new();
        put.insert("x-amzn-stream-name", "b".parse().expect("value"));
        assert!(check_stream_scope(&p, &put, None).is_err());
        assert!(check_stream_scope(&p, &none, Some(b"{}")).is_ok());
        assert!(check_stream_scope(&Principal::anyone(), &put, None).is_ok());
    }

    #[test]
    fn errors_follow_the_addressed_surface() {
        let e = SigV4Error::InvalidSignature("bad".into());
        let kvs = auth_error_response(&e, ErrorStyle::RestJson);
        assert_eq!(kvs.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            kvs.headers()[super::super::error::ERROR_TYPE_HEADER],
            "InvalidSignatureException"
        );
        let kinesis = auth_error_response(&e, ErrorStyle::AwsJson);
        assert_eq!(kinesis.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            kinesis.headers()[header::CONTENT_TYPE],
            "application/x-amz-json-1.1"
        );
    }
}
