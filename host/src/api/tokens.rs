//! Tokens: `POST /v1/tokens` (the secret is shown once), `GET /v1/tokens`,
//! `DELETE /v1/tokens/{id}`. Tokens are stored only as hashes. A test-mode
//! caller manages only test-mode tokens of its own tenant, so a test token
//! can never become a live one. As a token grants only scopes it holds, it
//! sees and revokes only tokens whose scopes it holds (an admin token: all
//! of its tenant's); any other token is a 404 to it, as if it did not exist.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::views::Tokens;
use super::{parse_object, require, ApiError, AppState};
use crate::auth::{Principal, ADMIN_SCOPE, DEFAULT_TENANT, SCOPES};
use crate::store::{TokenInfo, TokenRecord};

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    /// Default: the caller's tenant. Another (existing) tenant only for the
    /// operator: the default tenant's live admin.
    tenant: Option<String>,
    #[schema(min_items = 1)]
    scopes: Vec<String>,
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    /// `live` or `test`; default: the caller's mode. A test-mode caller may
    /// create only `test` tokens.
    mode: Option<String>,
}

/// A token just issued: the secret is shown this once.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct IssuedToken {
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
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    require(&principal, "tokens:write")?;
    let new: NewToken = parse_object(&body)?;
    let tenant = new.tenant.unwrap_or_else(|| principal.tenant.clone());
    // The operator's test token is no operator: it stays in its own space.
    let operator = principal.tenant == DEFAULT_TENANT && principal.has(ADMIN_SCOPE) && !principal.is_test();
    if tenant != principal.tenant && !operator {
        return Err(ApiError::Forbidden("tokens can only be created for your own tenant".into()));
    }
    let field = |name: &str, msg: String| ApiError::field(vec!["body".into(), name.into()], msg, "value_error");
    // Before issuing: a token of a tenant that does not exist would
    // authenticate as a tenant no one created (and none of its settings).
    if tenant != principal.tenant && !state.store.tenant_exists(tenant.clone()).await? {
        return Err(field("tenant", format!("Tenant {tenant:?} does not exist; create it with POST /v1/tenants")));
    }
    if let Some((message, _)) = super::validate::length_error(new.name.chars().count(), 1, 128) {
        return Err(field("name", message));
    }
    if new.scopes.is_empty() {
        return Err(field("scopes", "At least one scope is required".into()));
    }
    for (i, scope) in new.scopes.iter().enumerate() {
        // Each scope once: a list of 650,000 copies of one scope made
        // 10 MB tokens (RELIABILITY.md, F56).
        if new.scopes[..i].contains(scope) {
            return Err(ApiError::field(
                vec!["body".into(), "scopes".into(), i.into()],
                format!("Scope {scope:?} appears again; name each scope once"),
                "value_error",
            ));
        }
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
    let mode = new.mode.unwrap_or_else(|| principal.mode.clone());
    if mode != "live" && mode != "test" {
        return Err(field("mode", format!("Input should be 'live' or 'test', got {mode:?}")));
    }
    if principal.is_test() && mode != "test" {
        return Err(ApiError::Forbidden("a test-mode token can only create test-mode tokens".into()));
    }
    let record =
        TokenRecord { tenant: tenant.clone(), name: new.name.clone(), scopes: new.scopes.clone(), mode: mode.clone() };
    let secret = state.auth.issue(record).await?;
    let id = crate::auth::hash_token(&secret)[..16].to_string();
    Ok((StatusCode::CREATED, Json(IssuedToken { id, token: secret, tenant, name: new.name, scopes: new.scopes, mode })))
}

/// The tenant's tokens the caller may manage: of its mode when it is a
/// test-mode caller, and holding no scope the caller lacks.
async fn managed(state: &AppState, principal: &Principal) -> Result<Vec<TokenInfo>, ApiError> {
    let mode = principal.managed_mode().map(str::to_string);
    let mut tokens = state.store.list_tokens(principal.tenant.clone(), mode).await?;
    tokens.retain(|t| t.scopes.iter().all(|s| principal.has(s)));
    Ok(tokens)
}

/// The tenant's tokens the caller may manage, without secrets (a test-mode
/// caller sees only test-mode ones; nobody sees a token with a scope it
/// lacks).
#[utoipa::path(get, path = "/v1/tokens", tag = "admin", responses((status = 200, body = Tokens), super::openapi::ApiErrors))]
pub async fn list(State(state): State<AppState>, principal: Principal) -> Result<Json<Tokens>, ApiError> {
    require(&principal, "tokens:write")?;
    let items = managed(&state, &principal).await?.into_iter().map(Into::into).collect();
    Ok(Json(Tokens { items }))
}

/// Revoke a token; effective immediately. A token the caller may not
/// manage (a live one to a test-mode caller, one with a scope the caller
/// lacks) does not exist to it (404), as in its listing: a narrow token
/// cannot revoke its tenant's admin token.
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
    // A token's scopes are fixed when it is issued, so checking first and
    // revoking after is not a race.
    let manageable = managed(&state, &principal).await?.iter().any(|t| t.id == id && t.revoked_at.is_none());
    if manageable && state.auth.revoke(&principal.tenant, &id, principal.managed_mode()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("Token not found".into()))
    }
}
