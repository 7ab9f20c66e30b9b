//! Safe retries at the HTTP edge: the `Idempotency-Key` header as the
//! OpenAPI document describes it, the answer of a retry, and refusals as
//! [`ApiError`]s. The keys themselves live in [`crate::ingest::keys`].

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::{ApiError, AppState};
pub use crate::ingest::{Begin, EventIds, Refusal, Ticket};

/// The `Idempotency-Key` request header, as the OpenAPI document describes
/// it: 1..255 visible ASCII characters, not starting with `event-id:` (the
/// prefix of the claims an event's own id makes).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct IdempotencyKey {
    /// Makes retries safe: a retry with the same key and body gets the
    /// first answer.
    #[param(
        rename = "Idempotency-Key",
        required = false,
        min_length = 1,
        max_length = 255,
        pattern = r"^(?!event-id:)[!-~]+$"
    )]
    key: String,
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::InvalidKey => {
                ApiError::field(vec!["header".into(), "Idempotency-Key".into()], r.message(), "value_error")
            }
            Refusal::DuplicateId { index, .. } => {
                ApiError::field(vec!["body".into(), index.into(), "id".into()], r.message(), "value_error")
            }
            Refusal::Store(e) => e.into(),
            other => ApiError::Conflict(other.message()),
        }
    }
}

/// Look at the request's `Idempotency-Key` header (the content type and
/// body are the content it is bound to).
///
/// # Errors
///
/// [`Refusal`] when the key is invalid, in use, or bound to other content.
pub async fn begin(state: &AppState, space: &str, headers: &HeaderMap, body: &[u8]) -> Result<Begin, Refusal> {
    let key = headers.get("idempotency-key").map(HeaderValue::as_bytes);
    let content_type = headers.get(header::CONTENT_TYPE).map_or(&b""[..], HeaderValue::as_bytes);
    state.ingest.keys.begin(space, key, content_type, body).await
}

/// Claim the ids that a request's items carry (see
/// [`crate::ingest::Keys::event_ids`]).
///
/// # Errors
///
/// [`Refusal`] when an id repeats, is in use, or was stored with other
/// content.
pub async fn event_ids<'a>(
    state: &AppState,
    space: &str,
    items: impl IntoIterator<Item = &'a str>,
) -> Result<EventIds, Refusal> {
    state.ingest.keys.event_ids(space, items).await
}

/// A remembered response, marked as replayed.
pub fn replay(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
