//! `POST /v1/tenants` (admin of the default tenant): create a tenant and its
//! first admin token.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{parse_object, require, ApiError, AppState};
use crate::auth::{Principal, ADMIN_SCOPE, DEFAULT_TENANT};

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9_-]+$")]
    id: String,
}

/// A new tenant and its first admin token (shown once).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedTenant {
    id: String,
    admin_token: String,
}

/// Create a tenant (the default tenant's admin only).
#[utoipa::path(
    post,
    path = "/v1/tenants",
    tag = "admin",
    request_body = NewTenant,
    responses((status = 201, body = CreatedTenant), super::openapi::ApiErrors)
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedTenant>), ApiError> {
    require(&principal, ADMIN_SCOPE)?;
    if principal.tenant != DEFAULT_TENANT {
        return Err(ApiError::Forbidden("only the default tenant's admin may create tenants".into()));
    }
    // A new tenant comes with a live admin token: a test token must not
    // be a way to mint one.
    if principal.is_test() {
        return Err(ApiError::Forbidden("a test-mode token cannot create tenants".into()));
    }
    let new: NewTenant = parse_object(&body)?;
    let valid = (1..=64).contains(&new.id.len())
        && new.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(ApiError::field(
            vec!["body".into(), "id".into()],
            "Tenant ids are 1..64 characters of a-z, 0-9, '-' and '_'",
            "string_pattern_mismatch",
        ));
    }
    match state.auth.create_tenant(&new.id).await? {
        Some(token) => {
            state.pipeline.install_defaults(&new.id).await?;
            Ok((StatusCode::CREATED, Json(CreatedTenant { id: new.id, admin_token: token })))
        }
        None => Err(ApiError::Conflict(format!("tenant {} already exists", new.id))),
    }
}
