//! Tokens: `POST /v1/tokens` (the secret is shown once), `GET /v1/tokens`,
//! `DELETE /v1/tokens/{id}`. Tokens are stored only as hashes.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{parse_json, require, ApiError, AppState};
use crate::auth::{Principal, ADMIN_SCOPE, DEFAULT_TENANT, SCOPES};
use crate::store::TokenRecord;

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    /// Default: the caller's tenant. Another tenant only for the operator.
    tenant: Option<String>,
    scopes: Vec<String>,
    name: String,
    /// `live` (default) or `test`.
    mode: Option<String>,
}

/// A token just issued: the secret is shown this once.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct IssuedToken {
    id: String,
    token: String,
    tenant: String,
    name: String,
    scopes: Vec<String>,
    mode: String,
}

/// Issue a token with some of the caller's scopes.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "admin",
    request_body = NewToken,
    responses((status = 201, body = IssuedToken), super::openapi::ApiErrors)
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require(&principal, "tokens:write")?;
    let new: NewToken = parse_json(&body)?;
    let tenant = new.tenant.unwrap_or_else(|| principal.tenant.clone());
    if tenant != principal.tenant && !(principal.tenant == DEFAULT_TENANT && principal.has(ADMIN_SCOPE)) {
        return Err(ApiError::Forbidden("tokens can only be created for your own tenant".into()));
    }
    let field = |name: &str, msg: String| ApiError::field(vec!["body".into(), name.into()], msg, "value_error");
    if new.name.is_empty() || new.name.len() > 128 {
        return Err(field("name", "Name should have 1..128 characters".into()));
    }
    if new.scopes.is_empty() {
        return Err(field("scopes", "At least one scope is required".into()));
    }
    for (i, scope) in new.scopes.iter().enumerate() {
        if !SCOPES.contains(&scope.as_str()) {
            return Err(ApiError::field(
                vec!["body".into(), "scopes".into(), i.into()],
                format!("Unknown scope {scope:?}; known scopes: {}", SCOPES.join(", ")),
                "enum",
            ));
        }
        if !principal.has(scope) {
            return Err(ApiError::Forbidden(format!("you cannot grant a scope you do not hold: {scope}")));
        }
    }
    let mode = new.mode.unwrap_or_else(|| "live".into());
    if mode != "live" && mode != "test" {
        return Err(field("mode", format!("Input should be 'live' or 'test', got {mode:?}")));
    }
    let record =
        TokenRecord { tenant: tenant.clone(), name: new.name.clone(), scopes: new.scopes.clone(), mode: mode.clone() };
    let secret = state.auth.issue(record).await?;
    let id = crate::auth::hash_token(&secret)[..16].to_string();
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": id, "token": secret, "tenant": tenant, "name": new.name, "scopes": new.scopes, "mode": mode}),
        ),
    ))
}

/// The tenant's tokens, without secrets.
#[utoipa::path(get, path = "/v1/tokens", tag = "admin", responses((status = 200, body = super::openapi::Items), super::openapi::ApiErrors))]
pub async fn list(State(state): State<AppState>, principal: Principal) -> Result<Json<Value>, ApiError> {
    require(&principal, "tokens:write")?;
    Ok(Json(json!({ "items": state.store.list_tokens(principal.tenant).await? })))
}

/// Revoke a token; effective immediately.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    tag = "admin",
    params(("id" = String, Path)),
    responses((status = 204, description = "Revoked"), super::openapi::ApiErrors)
)]
pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&principal, "tokens:write")?;
    if state.auth.revoke(&principal.tenant, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("Token not found".into()))
    }
}
