//! `POST /v1/query`: one read-only SELECT over the caller's views, answered
//! as JSON, CSV or Parquet according to `Accept`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{parse_object, require, ApiError, AppState};
use crate::auth::Principal;
use crate::store::{QueryError, QueryFormat, QueryLimits};

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    /// At most 64 KiB.
    #[schema(min_length = 1, max_length = 65536)]
    sql: String,
    #[serde(default)]
    params: Vec<Value>,
}

/// Longest SQL text accepted, in characters.
const MAX_SQL: usize = 64 << 10;

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let loc = vec![Value::from("body"), Value::from("sql")];
        match e {
            QueryError::Refused(msg) => ApiError::field(loc, msg, "query_refused"),
            QueryError::Invalid(msg) => ApiError::field(loc, msg, "query_invalid"),
            QueryError::Timeout(_) => ApiError::field(loc, e.to_string(), "query_timeout"),
            QueryError::Failed(msg) => ApiError::field(loc, msg, "query_failed"),
            QueryError::TooLarge(msg) => ApiError::field(loc, msg, "query_result_too_large"),
            QueryError::Busy(msg) => ApiError::TooManyRequests(msg, 1),
            QueryError::Store(s) => s.into(),
        }
    }
}

/// The result of a query as JSON.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct QueryResponse {
    /// `{name, type}` of each column.
    #[schema(value_type = Vec<Object>)]
    columns: Vec<Value>,
    #[schema(value_type = Vec<Vec<Object>>)]
    rows: Vec<Vec<Value>>,
    row_count: u64,
    /// Whether the row cap or the byte cap (`SLUICE_QUERY_MAX_BYTES`) cut
    /// the result (also the `Sluice-Truncated` header, for CSV).
    truncated: bool,
}

/// One read-only SELECT over the tenant's views.
#[utoipa::path(
    post,
    path = "/v1/query",
    tag = "events",
    params(("Accept" = Option<String>, Header, description = "application/json (default), text/csv or application/vnd.apache.parquet")),
    request_body = QueryRequest,
    responses(
        (status = 200, content(
            (QueryResponse = "application/json"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.parquet"),
        )),
        super::openapi::ApiErrors,
    )
)]
pub async fn run(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require(&principal, "query:run")?;
    let request: QueryRequest = parse_object(&body)?;
    if request.sql.chars().count() > MAX_SQL {
        return Err(ApiError::field(
            vec!["body".into(), "sql".into()],
            format!("SQL text should be at most {MAX_SQL} characters"),
            "string_too_long",
        ));
    }
    let limits = QueryLimits {
        timeout: Duration::from_secs(state.settings.query_timeout_secs),
        max_rows: state.settings.query_max_rows,
        max_bytes: state.settings.query_max_bytes,
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let format = if accept.contains("parquet") {
        QueryFormat::Parquet
    } else if accept.contains("text/csv") {
        QueryFormat::Csv
    } else {
        QueryFormat::Json
    };
    let answer = state.store.query(principal.space(), request.sql, request.params, format, limits).await?;
    let mut response =
        (StatusCode::OK, [(header::CONTENT_TYPE, format.content_type())], Body::from(answer.body)).into_response();
    if format == QueryFormat::Parquet {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"query.parquet\""));
    }
    // JSON says so in its body too; CSV has no place for it but a header.
    let truncated = if answer.truncated { "true" } else { "false" };
    response.headers_mut().insert("sluice-truncated", HeaderValue::from_static(truncated));
    Ok(response)
}
