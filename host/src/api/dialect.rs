//! One error type at the edge, [`ApiError`], rendered in each family's
//! dialect, so every handler returns `Result<_, In<Its dialect>>` and uses
//! `?` on store, pipeline and idempotency errors alike:
//!
//! - [`FastApi`]: `{"detail": "message"}`, or `{"detail": [{loc, msg,
//!   type}]}` for invalid input (422): the `/v1/...` endpoints (documents
//!   001, 002) and [`ApiError`]'s own `IntoResponse`.
//! - [`Session`]: `{auth_success, error_code, desc}` (document 000); its
//!   invalid input is FastAPI's 422.
//! - [`Rpc`]: `google.rpc.Status` `{code, message, details}`, invalid input
//!   a 400 with a `BadRequest` detail of field violations (document 003).
//! - [`Logs`]: `{"error": {code, message}}` (document 004), its quota
//!   refusal with `metric` and `quotas`.

use std::marker::PhantomData;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::{retry_after, ApiError, FieldError};

/// How one family answers errors.
pub trait Dialect {
    /// The status and body of an error's answer.
    fn answer(error: &ApiError) -> (StatusCode, Value);

    /// The whole answer, with `WWW-Authenticate` on 401 and `Retry-After`
    /// on what may be retried soon.
    fn render(error: ApiError) -> Response {
        let (status, body) = Self::answer(&error);
        let mut response = (status, Json(body)).into_response();
        match error {
            ApiError::Unauthorized => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable(_) => retry_after(&mut response, 1),
            ApiError::TooManyRequests(_, secs) => retry_after(&mut response, secs),
            _ => {}
        }
        response
    }
}

/// An [`ApiError`] to be answered in dialect `D`.
pub struct In<D>(pub ApiError, PhantomData<D>);

impl<D, E: Into<ApiError>> From<E> for In<D> {
    fn from(e: E) -> Self {
        In(e.into(), PhantomData)
    }
}

impl<D: Dialect> IntoResponse for In<D> {
    fn into_response(self) -> Response {
        D::render(self.0)
    }
}

/// 422: invalid input (FastAPI shape).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct HttpValidationError {
    pub detail: Vec<FieldError>,
}

/// Every other error of the `/v1` endpoints (FastAPI shape).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Message {
    pub detail: String,
}

/// Document 000's error body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SessionError {
    pub auth_success: bool,
    pub error_code: String,
    pub desc: String,
}

/// Document 003's error body (a `google.rpc.Status`).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RpcStatus {
    /// gRPC status code.
    pub code: i32,
    pub message: String,
    /// A `google.rpc.BadRequest` with `field_violations` for invalid entries.
    #[schema(value_type = Vec<Object>)]
    pub details: Vec<BadRequestDetail>,
}

/// `google.rpc.BadRequest`.
#[derive(serde::Serialize)]
pub struct BadRequestDetail {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub field_violations: Vec<FieldViolation>,
}

/// One bad field of a `google.rpc.BadRequest`.
#[derive(serde::Serialize)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Document 004's error body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LogError {
    pub error: LogErrorDetail,
}

/// `{code, message}`, and for `quota_exceeded` the metric and the quotas.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LogErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quotas: Option<Vec<QuotaUse>>,
}

/// One quota and its use.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct QuotaUse {
    pub metric: String,
    pub used: i64,
    pub limit: i64,
    /// Whether it counts all time (`storage_bytes`) rather than today.
    pub cumulative: bool,
}

/// A body as the JSON a dialect answers with.
fn value(body: impl serde::Serialize) -> Value {
    serde_json::to_value(body).unwrap_or(Value::Null)
}

/// The `/v1/...` endpoints' FastAPI shapes.
pub struct FastApi;

impl Dialect for FastApi {
    fn answer(error: &ApiError) -> (StatusCode, Value) {
        let (status, detail) = match error {
            ApiError::Validation(errors) => {
                return (StatusCode::UNPROCESSABLE_ENTITY, value(HttpValidationError { detail: errors.clone() }));
            }
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Not authenticated".to_string()),
            ApiError::Internal(m) => {
                // Logged once here; the client gets no internals.
                tracing::error!(error = %m, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_string())
            }
            e => {
                let (status, _, message) = parts(e);
                (status, message)
            }
        };
        (status, value(Message { detail }))
    }
}

/// What every dialect says alike: the status of an error, its code word
/// (for the dialects that have one) and its message. Logs the internal
/// errors, whose message the client does not get.
fn parts(error: &ApiError) -> (StatusCode, &str, String) {
    match error {
        ApiError::Validation(fields) | ApiError::BadRequest { fields, .. } if fields.is_empty() => {
            (StatusCode::BAD_REQUEST, "bad_request", error.to_string())
        }
        ApiError::Validation(fields) => (StatusCode::BAD_REQUEST, "bad_request", fields[0].msg.clone()),
        ApiError::BadRequest { message, .. } => (StatusCode::BAD_REQUEST, "bad_request", message.clone()),
        ApiError::Unauthorized => {
            (StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid authorization token".into())
        }
        ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone()),
        ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone()),
        ApiError::Conflict(m) => (StatusCode::CONFLICT, "idempotency_conflict", m.clone()),
        ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m.clone()),
        ApiError::UnsupportedMediaType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", m.clone()),
        ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m.clone()),
        ApiError::TooManyRequests(m, _) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", m.clone()),
        e @ ApiError::QuotaExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", e.to_string()),
        ApiError::BadGateway(m) => (StatusCode::BAD_GATEWAY, "plugin_failed", m.clone()),
        ApiError::Coded { status, code, message } => (*status, code.as_str(), message.clone()),
        ApiError::Internal(m) => {
            tracing::error!(error = %m, "internal error");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal", "an unexpected error occurred".into())
        }
    }
}

/// Session audit (document 000).
pub struct Session;

impl Dialect for Session {
    fn answer(error: &ApiError) -> (StatusCode, Value) {
        let (status, code, desc) = match error {
            // Its invalid input is FastAPI's.
            ApiError::Validation(_) => return FastApi::answer(error),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "auth_token_invalid", "Not authenticated".into()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "insufficient_permissions", m.clone()),
            e => parts(e),
        };
        let auth_success = !matches!(error, ApiError::Unauthorized);
        (status, value(SessionError { auth_success, error_code: code.to_string(), desc }))
    }
}

/// The `google.rpc.Code` of an HTTP status.
pub fn rpc_code(status: StatusCode) -> u8 {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => 3,
        StatusCode::UNAUTHORIZED => 16,
        StatusCode::FORBIDDEN => 7,
        StatusCode::NOT_FOUND => 5,
        StatusCode::CONFLICT => 10,
        StatusCode::TOO_MANY_REQUESTS => 8,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => 14,
        _ => 13,
    }
}

/// A field's name in a violation: its location without the part of the
/// request it is in, indexes in brackets (`logs[0].id`).
fn field_name(loc: &[Value]) -> String {
    let mut name = String::new();
    let skip = usize::from(
        loc.first().and_then(Value::as_str).is_some_and(|p| ["body", "header", "query", "path"].contains(&p)),
    );
    for part in &loc[skip.min(loc.len())..] {
        match part {
            Value::Number(i) => name.push_str(&format!("[{i}]")),
            Value::String(s) if s.contains('[') || name.is_empty() => name.push_str(s),
            other => {
                name.push('.');
                name.push_str(other.as_str().unwrap_or_default());
            }
        }
    }
    name
}

/// Audit logs (document 003).
pub struct Rpc;

impl Dialect for Rpc {
    fn answer(error: &ApiError) -> (StatusCode, Value) {
        let (status, _, message) = parts(error);
        let fields: &[FieldError] = match error {
            ApiError::Validation(fields) | ApiError::BadRequest { fields, .. } => fields,
            _ => &[],
        };
        let details = if fields.is_empty() {
            Vec::new()
        } else {
            let field_violations = fields
                .iter()
                .map(|f| FieldViolation { field: field_name(&f.loc), description: f.msg.clone() })
                .collect();
            vec![BadRequestDetail { kind: "type.googleapis.com/google.rpc.BadRequest", field_violations }]
        };
        (status, value(RpcStatus { code: rpc_code(status).into(), message, details }))
    }
}

/// Logs (document 004).
pub struct Logs;

impl Dialect for Logs {
    fn answer(error: &ApiError) -> (StatusCode, Value) {
        if let ApiError::QuotaExceeded { metric, quotas } = error {
            // The metric used up, and every quota set.
            let all = quotas
                .iter()
                .map(|q| QuotaUse {
                    metric: q.metric.into(),
                    used: q.used,
                    limit: q.limit,
                    cumulative: q.metric == "storage_bytes",
                })
                .collect();
            let error = LogErrorDetail {
                code: "quota_exceeded".into(),
                message: format!("tier quota exceeded for {metric}"),
                metric: Some(metric.to_string()),
                quotas: Some(all),
            };
            return (StatusCode::TOO_MANY_REQUESTS, value(LogError { error }));
        }
        let (status, code, message) = parts(error);
        let error = LogErrorDetail { code: code.into(), message, metric: None, quotas: None };
        (status, value(LogError { error }))
    }
}

/// An error answered before any handler ran (by a middleware), in the
/// dialect of the family `path` belongs to.
pub fn by_path(path: &str, error: ApiError) -> Response {
    if path.starts_with("/session/") {
        Session::render(error)
    } else if path.starts_with("/v1beta1/") {
        Rpc::render(error)
    } else if path.starts_with("/logs") {
        Logs::render(error)
    } else {
        FastApi::render(error)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_field_is_named_as_the_rpc_dialect_names_it() {
        let name = |loc: Value| field_name(loc.as_array().unwrap());
        assert_eq!(name(json!(["body", "logs", 0, "id"])), "logs[0].id");
        assert_eq!(name(json!(["header", "Idempotency-Key"])), "Idempotency-Key");
        assert_eq!(name(json!(["logs[2].actor.name"])), "logs[2].actor.name");
        assert_eq!(name(json!(["logs"])), "logs");
    }

    fn answered<D: Dialect>(error: ApiError) -> (u16, Value, Option<String>) {
        let response = D::render(error);
        let retry = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_string());
        let (status, body) = D::answer(&ApiError::Internal("not shown".into()));
        assert_eq!(status, 500);
        assert!(!body.to_string().contains("not shown"), "{body}");
        (response.status().as_u16(), response_body(response), retry)
    }

    fn response_body(response: Response) -> Value {
        let bytes = futures_util::FutureExt::now_or_never(axum::body::to_bytes(response.into_body(), usize::MAX));
        serde_json::from_slice(&bytes.unwrap().unwrap()).unwrap()
    }

    #[test]
    fn every_dialect_answers_every_error_in_its_own_shape() {
        let invalid = || ApiError::field(vec!["header".into(), "Idempotency-Key".into()], "too long", "value_error");
        let busy = || ApiError::TooManyRequests("busy".into(), 7);
        // FastAPI.
        assert_eq!(answered::<FastApi>(busy()), (429, json!({"detail": "busy"}), Some("7".into())));
        let (status, body, _) = answered::<FastApi>(invalid());
        assert_eq!((status, body["detail"][0]["loc"][1].clone()), (422, json!("Idempotency-Key")));
        // Session audit: its own codes; FastAPI's 422.
        let (status, body, _) = answered::<Session>(ApiError::Unauthorized);
        assert_eq!(
            (status, body["auth_success"].clone(), body["error_code"].clone()),
            (401, json!(false), json!("auth_token_invalid"))
        );
        assert_eq!(
            answered::<Session>(busy()),
            (429, json!({"auth_success": true, "error_code": "rate_limited", "desc": "busy"}), Some("7".into()))
        );
        let coded =
            ApiError::Coded { status: StatusCode::NOT_FOUND, code: "session_not_found".into(), message: "no".into() };
        assert_eq!(answered::<Session>(coded).1["error_code"], "session_not_found");
        assert_eq!(answered::<Session>(invalid()).0, 422);
        let quota = || ApiError::QuotaExceeded { metric: "events_per_day", quotas: Vec::new() };
        assert_eq!(answered::<Session>(quota()).2, None, "a quota lasts: no Retry-After");
        // google.rpc: invalid input is a 400 with field violations; a
        // conflict is ABORTED (10), not an internal error.
        let (status, body, _) = answered::<Rpc>(invalid());
        assert_eq!((status, body["code"].clone(), body["message"].clone()), (400, json!(3), json!("too long")));
        assert_eq!(body["details"][0]["field_violations"][0]["field"], "Idempotency-Key");
        assert_eq!(answered::<Rpc>(ApiError::Conflict("in use".into())).1["code"], 10);
        assert_eq!(answered::<Rpc>(busy()).1["code"], 8);
        // Logs: a busy store is a 429, not an internal error; quotas in
        // document 004's shape.
        assert_eq!(
            answered::<Logs>(busy()),
            (429, json!({"error": {"code": "rate_limited", "message": "busy"}}), Some("7".into()))
        );
        assert_eq!(answered::<Logs>(invalid()).1["error"]["code"], "bad_request");
        assert_eq!(answered::<Logs>(quota()).1["error"]["metric"], "events_per_day");
    }
}
