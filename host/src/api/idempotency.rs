//! Safe retries at the HTTP edge: the `Idempotency-Key` header as the
//! OpenAPI document describes it, and refusals as [`ApiError`]s. The keys
//! themselves live in [`crate::ingest::keys`].

use super::ApiError;
use crate::ingest::Refusal;

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
