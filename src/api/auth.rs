//! The place where request authentication happens. AWS clients sign every request with SigV4
//! (`Authorization: AWS4-HMAC-SHA256 Credential=...`); verifying the signature against configured
//! keys belongs in [`authenticate`], which already runs before every operation. Until keys are
//! configured, every request is admitted.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// Admits the request. SigV4 verification goes here: on failure it answers with
/// `ApiError::NotAuthorized` instead of calling `next`.
pub async fn authenticate(request: Request, next: Next) -> Response {
    next.run(request).await
}
