//! Plugin management for the caller's tenant: upload, settings, versions,
//! logs and dead letters.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::{parse_json, require, ApiError, AppState};
use crate::auth::Principal;
use crate::pipeline::SettingsPatch;

/// `POST /v1/plugins?name=NAME` with the component as an `application/wasm`
/// body: install a plugin, or upload a new version of it.
pub async fn upload(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require(&principal, "plugins:write")?;
    let name = params
        .get("name")
        .ok_or_else(|| ApiError::field(vec!["query".into(), "name".into()], "Field required", "missing"))?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !matches!(content_type, "application/wasm" | "application/octet-stream") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "unsupported content type {content_type:?}: send the component as application/wasm"
        )));
    }
    if body.len() > state.settings.max_plugin_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "plugin is {} bytes; the limit is {} bytes",
            body.len(),
            state.settings.max_plugin_bytes
        )));
    }
    let (view, created) = state.pipeline.upload(&principal.tenant, name, body.to_vec()).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(view)))
}

/// `GET /v1/plugins`: the tenant's plugins in chain order, with their state.
pub async fn list(State(state): State<AppState>, principal: Principal) -> Result<Json<Value>, ApiError> {
    require(&principal, "plugins:read")?;
    Ok(Json(json!({ "items": state.pipeline.list(&principal.tenant) })))
}

pub async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&principal, "plugins:read")?;
    Ok(Json(state.pipeline.get(&principal.tenant, &name)?))
}

/// `PATCH /v1/plugins/{name}`: change `enabled`, `position`, `config`,
/// `limits`, `failure_policy`, `families`, `max_consecutive_failures`.
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require(&principal, "plugins:write")?;
    let patch: SettingsPatch = parse_json(&body)?;
    Ok(Json(state.pipeline.update(&principal.tenant, &name, patch).await?))
}

pub async fn versions(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(&principal, "plugins:read")?;
    let versions = state.pipeline.versions(&principal.tenant, &name).await?;
    Ok(Json(json!({ "items": versions })))
}

fn limit(params: &HashMap<String, String>) -> Result<usize, ApiError> {
    match params.get("limit").map(|v| v.parse::<usize>()) {
        None => Ok(100),
        Some(Ok(n)) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::field(
            vec!["query".into(), "limit".into()],
            "Input should be an integer between 1 and 1000",
            "value_error",
        )),
    }
}

/// `GET /v1/plugins/{name}/logs`: what the plugin logged, newest first.
pub async fn logs(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    require(&principal, "plugins:read")?;
    let items = state.store.list_plugin_logs(principal.tenant, Some(name), limit(&params)?).await?;
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/dead-letters`: events quarantined by the dead-letter policy.
pub async fn dead_letters(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    require(&principal, "events:read")?;
    let items = state.store.list_dead_letters(principal.tenant, limit(&params)?).await?;
    Ok(Json(json!({ "items": items })))
}
