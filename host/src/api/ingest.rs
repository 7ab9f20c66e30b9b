//! The edge's side of [`crate::ingest`]: a request opened from its headers
//! for the caller's space, answers as responses, and ingest errors as
//! [`ApiError`]s.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{run_mode, ApiError, AppState};
use crate::auth::Principal;
use crate::ingest::{Error, Opened, Reply};

/// Open the caller's request (see [`crate::ingest::Ingest::open`]): events
/// are written to the caller's space; the chain is its tenant's.
///
/// # Errors
///
/// An invalid `Idempotency-Key` (a field error: 422, or 400 in the
/// google.rpc and logs dialects), 409 for one in use or bound to another
/// body, the tenant's rate refusals (429).
pub(crate) async fn open<'a>(
    state: &'a AppState,
    principal: &Principal,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Opened<'a>, ApiError> {
    let key = headers.get("idempotency-key").map(HeaderValue::as_bytes);
    let content_type = headers.get(header::CONTENT_TYPE).map_or(&b""[..], HeaderValue::as_bytes);
    let mode = run_mode(principal);
    Ok(state.ingest.open(&principal.tenant, principal.space(), mode, key, content_type, body).await?)
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Key(refusal) => refusal.into(),
            Error::Run(e) => e.into(),
            Error::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], self.body).into_response()
    }
}

/// A remembered answer, marked as replayed.
pub(crate) fn replayed(reply: Reply) -> Response {
    let mut response = reply.into_response();
    response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
