//! Plugin management for the caller's tenant: upload, settings, versions,
//! logs and dead letters.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::views::{DeadLetters, PluginLogs, Versions};
use super::{disposition_json, parse_object, parse_object_or_default, require, ApiError, AppState};
use crate::auth::Principal;
use crate::pipeline::SettingsPatch;

/// Read and drop a refused request's body, at most `limit` bytes and 5 s,
/// so the answer reaches the client instead of a reset.
async fn discard(body: axum::body::Body, limit: usize) {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut read = 0usize;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, stream.next()).await {
        read += chunk.len();
        if read > limit {
            break;
        }
    }
}

/// A multipart upload.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    /// The component's bytes.
    #[schema(value_type = String, format = Binary)]
    component: Vec<u8>,
    /// JSON settings as for PATCH, applied with the upload.
    manifest: Option<SettingsPatch>,
}

/// `POST /v1/plugins?name=NAME`: install a plugin, or upload a new version
/// of it. The body is the component (`application/wasm`), or
/// `multipart/form-data` with a `component` part and an optional `manifest`
/// part: JSON settings as for PATCH (config, limits, policy, ...), applied
/// together with the upload so a plugin whose `init` needs a config can be
/// installed in one step.
#[utoipa::path(
    post,
    path = "/v1/plugins",
    tag = "plugins",
    params(("name" = String, Query, description = "The plugin's name")),
    request_body(content(
        (Vec<u8> = "application/wasm"),
        (UploadForm = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Installed", body = Object),
        (status = 200, description = "A new version of an installed plugin", body = Object),
        super::openapi::ApiErrors,
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<HashMap<String, String>>,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let admitted = (|| {
        require(&principal, "plugins:write")?;
        let name = params
            .get("name")
            .ok_or_else(|| ApiError::field(vec!["query".into(), "name".into()], "Field required", "missing"))?
            .clone();
        // One upload (so one compile worker) per tenant at a time, refused
        // before the body is parsed: a tenant cannot occupy the machine with
        // compilations.
        let slot = state.pipeline.compile_slot(&principal.tenant).ok_or_else(|| {
            crate::metrics::throttled(&principal.tenant, "compile_slot");
            ApiError::TooManyRequests(
                "another plugin upload of this tenant is in progress, or as many as the server allows; retry when it answers"
                    .into(),
                1,
            )
        })?;
        Ok::<_, ApiError>((name, slot))
    })();
    let (name, slot) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            // Read (and discard) what the client is still sending before
            // answering: closing on unread data resets the connection, and
            // the client would see a broken pipe instead of this answer.
            discard(request.into_body(), state.settings.max_plugin_bytes).await;
            return Err(e);
        }
    };
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    // This route reads its body itself (no DefaultBodyLimit) up to the
    // plugin size limit, draining anything beyond it.
    let limit = state.settings.max_plugin_bytes;
    let too_large =
        |size: usize| ApiError::PayloadTooLarge(format!("plugin is {size} bytes or more; the limit is {limit} bytes"));
    let (component, patch) = if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::field(vec!["body".into()], e.body_text(), "multipart"))?;
        let (mut component, mut patch) = (None, SettingsPatch::default());
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::field(vec!["body".into()], e.body_text(), "multipart"))?
        {
            let part = field.name().unwrap_or("").to_string();
            let bytes = field
                .bytes()
                .await
                .map_err(|e| ApiError::field(vec!["body".into(), part.clone().into()], e.body_text(), "multipart"))?;
            match part.as_str() {
                "component" => component = Some(bytes),
                "manifest" => patch = parse_object(&bytes)?,
                other => {
                    return Err(ApiError::field(
                        vec!["body".into(), other.into()],
                        "Unknown part: send `component` and optionally `manifest`",
                        "extra_forbidden",
                    ))
                }
            }
        }
        let component = component
            .ok_or_else(|| ApiError::field(vec!["body".into(), "component".into()], "Field required", "missing"))?;
        (component, patch)
    } else if matches!(content_type.as_str(), "application/wasm" | "application/octet-stream") {
        let mut body = request.into_body().into_data_stream();
        let (mut bytes, mut total) = (Vec::new(), 0usize);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ApiError::field(vec!["body".into()], e.to_string(), "body"))?;
            total += chunk.len();
            if total <= limit {
                bytes.extend_from_slice(&chunk);
            }
        }
        if total > limit {
            return Err(too_large(total));
        }
        (Bytes::from(bytes), SettingsPatch::default())
    } else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "unsupported content type {content_type:?}: send the component as application/wasm, or multipart/form-data"
        )));
    };
    let worker = state
        .settings
        .worker_program()
        .map_err(|e| ApiError::Internal(format!("cannot locate the compile worker program: {e}")))?;
    let (view, created) = state.pipeline.upload(slot, &name, component.to_vec(), patch, &worker).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(view)))
}

/// `GET /v1/plugins`: the tenant's plugins in chain order, with their state.
#[utoipa::path(get, path = "/v1/plugins", tag = "plugins", responses((status = 200, body = super::openapi::Items), super::openapi::ApiErrors))]
pub async fn list(State(state): State<AppState>, principal: Principal) -> Result<Json<Value>, ApiError> {
    require(&principal, "plugins:read")?;
    Ok(Json(json!({ "items": state.pipeline.list(&principal.tenant) })))
}

/// One plugin with its settings, state and counters.
#[utoipa::path(get, path = "/v1/plugins/{name}", tag = "plugins", params(("name" = String, Path, description = "The plugin's name")), responses((status = 200, body = Object), super::openapi::ApiErrors))]
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
#[utoipa::path(
    patch,
    path = "/v1/plugins/{name}",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    request_body = SettingsPatch,
    responses((status = 200, body = Object), super::openapi::ApiErrors)
)]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require(&principal, "plugins:write")?;
    let patch: SettingsPatch = parse_object(&body)?;
    Ok(Json(state.pipeline.update(&principal.tenant, &name, patch).await?))
}

#[derive(serde::Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Rollback {
    #[serde(default, deserialize_with = "crate::whole::option")]
    version: Option<u32>,
}

/// `POST /v1/plugins/{name}/rollback` with `{"version": N}` (default: the
/// version before the current one).
#[utoipa::path(
    post,
    path = "/v1/plugins/{name}/rollback",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    request_body(content = Rollback, description = "Optional; default: the previous version"),
    responses((status = 200, body = Object), super::openapi::ApiErrors)
)]
pub async fn rollback(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require(&principal, "plugins:write")?;
    let request: Rollback = parse_object_or_default(&body)?;
    Ok(Json(state.pipeline.rollback(&principal.tenant, &name, request.version).await?))
}

/// `DELETE /v1/plugins/{name}`: uninstall; versions and lineage stay.
#[utoipa::path(
    delete,
    path = "/v1/plugins/{name}",
    tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses((status = 204, description = "Uninstalled"), super::openapi::ApiErrors)
)]
pub async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&principal, "plugins:write")?;
    state.pipeline.remove(&principal.tenant, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every uploaded version (content-addressed by sha256).
#[utoipa::path(get, path = "/v1/plugins/{name}/versions", tag = "plugins", params(("name" = String, Path, description = "The plugin's name")), responses((status = 200, body = Versions), super::openapi::ApiErrors))]
pub async fn versions(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<Versions>, ApiError> {
    require(&principal, "plugins:read")?;
    let versions = state.pipeline.versions(&principal.tenant, &name).await?;
    Ok(Json(Versions { items: versions.into_iter().map(Into::into).collect() }))
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
#[utoipa::path(
    get,
    path = "/v1/plugins/{name}/logs",
    tag = "plugins",
    params(
        ("name" = String, Path, description = "The plugin's name"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Default 100"),
    ),
    responses((status = 200, body = PluginLogs), super::openapi::ApiErrors)
)]
pub async fn logs(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<PluginLogs>, ApiError> {
    require(&principal, "plugins:read")?;
    let rows = state.store.list_plugin_logs(principal.space(), Some(name), limit(&params)?).await?;
    Ok(Json(PluginLogs { items: rows.into_iter().map(Into::into).collect() }))
}

/// `GET /v1/dead-letters`: events quarantined by the dead-letter policy.
#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    tag = "plugins",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Default 100")),
    responses((status = 200, body = DeadLetters), super::openapi::ApiErrors)
)]
pub async fn dead_letters(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<DeadLetters>, ApiError> {
    require(&principal, "events:read")?;
    let rows = state.store.list_dead_letters(principal.space(), limit(&params)?).await?;
    Ok(Json(DeadLetters { items: rows.into_iter().map(Into::into).collect() }))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Replay {
    /// Dead-letter ids (`dead_letter_id` in the listing) to replay.
    #[serde(default, deserialize_with = "crate::whole::option_list")]
    ids: Option<Vec<i64>>,
    /// Replay the tenant's oldest dead letters, up to 1,000.
    #[serde(default)]
    all: bool,
}

/// `POST /v1/dead-letters/replay` with `{"ids": [...]}` or `{"all": true}`:
/// run dead letters through the current chain. What comes out is stored and
/// the dead letters are removed in the same transaction; a letter that fails
/// again becomes a new dead letter.
#[utoipa::path(
    post,
    path = "/v1/dead-letters/replay",
    tag = "plugins",
    request_body = Replay,
    responses((status = 200, body = Object), super::openapi::ApiErrors)
)]
pub async fn replay(State(state): State<AppState>, principal: Principal, body: Bytes) -> Result<Json<Value>, ApiError> {
    require(&principal, "events:write")?;
    let request: Replay = parse_object(&body)?;
    if request.all == request.ids.is_some() {
        return Err(ApiError::field(vec!["body".into()], "Give either `ids` or `all: true`", "value_error"));
    }
    let mode = super::run_mode(&principal);
    let replayed =
        state.ingest.replay_dead_letters(&principal.tenant, &principal.space(), mode, request.ids, 1_000).await?;
    let results: Vec<Value> =
        replayed.iter().map(|(id, d)| disposition_json(d, "dead_letter_id", (*id).into())).collect();
    Ok(Json(json!({ "replayed": replayed.len(), "results": results })))
}
