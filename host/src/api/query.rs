//! `POST /v1/query`: one read-only SELECT over the caller's views, answered
//! as JSON, CSV or Parquet according to `Accept`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{parse_json, require, ApiError, AppState};
use crate::auth::Principal;
use crate::store::{QueryError, QueryLimits};

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
    #[serde(default)]
    params: Vec<Value>,
}

/// Longest SQL text accepted.
const MAX_SQL: usize = 64 << 10;

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let loc = vec![Value::from("body"), Value::from("sql")];
        match e {
            QueryError::Refused(msg) => ApiError::field(loc, msg, "query_refused"),
            QueryError::Invalid(msg) => ApiError::field(loc, msg, "query_invalid"),
            QueryError::Timeout(_) => ApiError::field(loc, e.to_string(), "query_timeout"),
            QueryError::Failed(msg) => ApiError::field(loc, msg, "query_failed"),
            QueryError::Store(s) => s.into(),
        }
    }
}

fn csv_field(v: &Value) -> String {
    let text = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
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
    /// Whether the row cap cut the result.
    row_count: u64,
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
    let request: QueryRequest = parse_json(&body)?;
    if request.sql.len() > MAX_SQL {
        return Err(ApiError::field(
            vec!["body".into(), "sql".into()],
            format!("SQL text should be at most {MAX_SQL} bytes"),
            "string_too_long",
        ));
    }
    let limits = QueryLimits {
        timeout: Duration::from_secs(state.settings.query_timeout_secs),
        max_rows: state.settings.query_max_rows,
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    if accept.contains("parquet") {
        let path = state.store.query_to_parquet(principal.space(), request.sql, request.params, limits).await?;
        return super::export::stream_file(path, "application/vnd.apache.parquet", "query.parquet").await;
    }
    let result = state.store.query(principal.space(), request.sql, request.params, limits).await?;
    if accept.contains("text/csv") {
        let mut out =
            result.columns.iter().map(|(n, _)| csv_field(&Value::String(n.clone()))).collect::<Vec<_>>().join(",");
        out.push('\n');
        for row in &result.rows {
            out.push_str(&row.iter().map(csv_field).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        return Ok(
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/csv; charset=utf-8")], Body::from(out)).into_response()
        );
    }
    let columns: Vec<Value> = result.columns.iter().map(|(name, ty)| json!({"name": name, "type": ty})).collect();
    Ok(Json(json!({
        "columns": columns,
        "rows": result.rows,
        "row_count": result.rows.len(),
        "truncated": result.truncated,
    }))
    .into_response())
}
