//! The AWS error vocabulary of the HTTP surface, and the one mapping from domain errors to it.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::media::MediaError;
use crate::store::StoreError;

/// Header that carries the AWS error code; botocore reads the code from it.
pub const ERROR_TYPE_HEADER: &str = "x-amzn-ErrorType";

/// An error as the client sees it: an AWS error code with its HTTP status, and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ResourceInUse(String),
    #[error("{0}")]
    VersionMismatch(String),
    #[error("{0}")]
    ClientLimitExceeded(String),
    #[error("{0}")]
    NotAuthorized(String),
    #[error("{0}")]
    InvalidMediaFrame(String),
    #[error("{0}")]
    TagsPerResourceExceededLimit(String),
    #[error("{0}")]
    RequestTooLarge(String),
    #[error("{0}")]
    UnknownOperation(String),
    /// A server-side failure: the detail is logged, never sent.
    #[error("internal failure")]
    Internal,
}

impl ApiError {
    /// The AWS error code, as named by the botocore models.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ResourceNotFound(_) => "ResourceNotFoundException",
            Self::InvalidArgument(_) => "InvalidArgumentException",
            Self::ResourceInUse(_) => "ResourceInUseException",
            Self::VersionMismatch(_) => "VersionMismatchException",
            Self::ClientLimitExceeded(_) => "ClientLimitExceededException",
            Self::NotAuthorized(_) => "NotAuthorizedException",
            Self::InvalidMediaFrame(_) => "InvalidMediaFrameException",
            Self::TagsPerResourceExceededLimit(_) => "TagsPerResourceExceededLimitException",
            Self::RequestTooLarge(_) => "RequestEntityTooLargeException",
            Self::UnknownOperation(_) => "UnknownOperationException",
            Self::Internal => "InternalFailure",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::ResourceNotFound(_) | Self::UnknownOperation(_) => StatusCode::NOT_FOUND,
            Self::NotAuthorized(_) => StatusCode::UNAUTHORIZED,
            Self::RequestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::InvalidArgument(_)
            | Self::ResourceInUse(_)
            | Self::VersionMismatch(_)
            | Self::ClientLimitExceeded(_)
            | Self::InvalidMediaFrame(_)
            | Self::TagsPerResourceExceededLimit(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Shorthand for the most common client error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }
}

impl From<StoreError> for ApiError {
    /// The single place where storage failures become AWS error codes.
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::StreamNotFound(name) => {
                Self::ResourceNotFound(format!("The requested stream {name} was not found."))
            }
            StoreError::StreamExists(name) => {
                Self::ResourceInUse(format!("The stream {name} already exists."))
            }
            e @ StoreError::VersionMismatch { .. } => Self::VersionMismatch(e.to_string()),
            e @ StoreError::InvalidRetention { .. } => Self::InvalidArgument(e.to_string()),
            e @ StoreError::FragmentNotFound { .. } => Self::ResourceNotFound(e.to_string()),
            e @ StoreError::TagLimitExceeded { .. } => {
                Self::TagsPerResourceExceededLimit(e.to_string())
            }
            // I/O, corruption and anything added later are server faults: log, do not leak.
            #[allow(unreachable_patterns)]
            other => {
                tracing::error!(error = %other, "Storage failed while serving a request.");
                Self::Internal
            }
        }
    }
}

impl From<MediaError> for ApiError {
    /// A stored payload that the media layer cannot read is what AWS reports as an invalid
    /// media frame: the producer sent it, the server cannot mux it.
    fn from(error: MediaError) -> Self {
        Self::InvalidMediaFrame(format!(
            "A fragment in the range could not be read as media: {error}"
        ))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Internal) {
            tracing::warn!("Request failed with an internal failure.");
        }
        let message = self.to_string();
        // botocore reads `message`; some SDKs read `Message`: send both.
        let body = serde_json::json!({ "message": message, "Message": message });
        let mut response = (self.status(), axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(ERROR_TYPE_HEADER, HeaderValue::from_static(self.code()));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragment::StreamName;

    fn name() -> StreamName {
        StreamName::new("cam").expect("valid name")
    }

    #[test]
    fn store_errors_map_to_aws_codes_and_statuses() {
        let cases: Vec<(StoreError, &str, u16)> = vec![
            (
                StoreError::StreamNotFound(name()),
                "ResourceNotFoundException",
                404,
            ),
            (
                StoreError::StreamExists(name()),
                "ResourceInUseException",
                400,
            ),
        ];
        for (error, code, status) in cases {
            let api = ApiError::from(error);
            assert_eq!(api.code(), code);
            assert_eq!(api.status().as_u16(), status);
        }
    }

    #[test]
    fn error_responses_carry_the_code_header_and_both_message_spellings() {
        let response = ApiError::invalid("bad StreamName").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()[ERROR_TYPE_HEADER],
            "InvalidArgumentException"
        );
    }

    #[test]
    fn internal_failures_do_not_leak_detail() {
        let api = ApiError::Internal;
        assert_eq!(api.to_string(), "internal failure");
        assert_eq!(api.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
