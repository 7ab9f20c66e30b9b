//! `GET /v1/retention` and `PUT /v1/retention` (`{"days": N}` or
//! `{"days": null}`): how long the caller's tenant keeps its events.

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{parse_object, require, ApiError, AppState};
use crate::auth::{Principal, ADMIN_SCOPE};

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Retention {
    /// Keep events this many days; `null`: forever.
    #[schema(minimum = 1, maximum = 36500)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    days: Option<u32>,
}

/// How long the tenant keeps its events (`days: null`: forever).
#[utoipa::path(get, path = "/v1/retention", tag = "admin", responses((status = 200, body = Retention), super::openapi::ApiErrors))]
pub async fn get(State(state): State<AppState>, principal: Principal) -> Result<Json<Value>, ApiError> {
    require(&principal, "events:read")?;
    let days = state.store.retention(principal.tenant).await?;
    Ok(Json(json!({ "days": days })))
}

/// Set how long the tenant keeps its events (admin).
#[utoipa::path(
    put,
    path = "/v1/retention",
    tag = "admin",
    request_body = Retention,
    responses((status = 200, body = Retention), super::openapi::ApiErrors)
)]
pub async fn put(State(state): State<AppState>, principal: Principal, body: Bytes) -> Result<Json<Value>, ApiError> {
    require(&principal, ADMIN_SCOPE)?;
    let retention: Retention = parse_object(&body)?;
    if retention.days == Some(0) || retention.days.is_some_and(|d| d > 36_500) {
        return Err(ApiError::field(
            vec!["body".into(), "days".into()],
            "Input should be between 1 and 36500, or null to keep events forever",
            "value_error",
        ));
    }
    state.store.set_retention(principal.tenant, retention.days).await?;
    Ok(Json(json!({ "days": retention.days })))
}
