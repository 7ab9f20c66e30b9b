//! `GET /v1/audit/events` and `GET /v1/audit/events/{id}`, in the shapes of
//! the listing document (002).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::Json;

use super::views::{AuditEvent, AuditEventPage};
use super::{require, ApiError, AppState, FieldError};
use crate::auth::Principal;
use crate::store::EventFilter;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;

fn query_error(errors: &mut Vec<FieldError>, name: &str, msg: String, kind: &str) {
    errors.push(FieldError::new(vec!["query".into(), name.into()], msg, kind));
}

fn parse_time(errors: &mut Vec<FieldError>, name: &str, value: Option<&String>) -> Option<i64> {
    let text = value?;
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => Some(t.timestamp_micros()),
        Err(e) => {
            query_error(errors, name, format!("Input should be a valid datetime, {e}"), "datetime_parsing");
            None
        }
    }
}

/// Parse the query string with FastAPI's error shapes.
fn parse_query(params: &HashMap<String, String>) -> Result<(EventFilter, Option<String>, usize), ApiError> {
    let mut errors = Vec::new();
    let text = |name: &str| params.get(name).cloned();
    let user_id = params.get("user_id").and_then(|v| match v.parse::<i64>() {
        Ok(n) => Some(n),
        Err(_) => {
            query_error(
                &mut errors,
                "user_id",
                "Input should be a valid integer, unable to parse string as an integer".into(),
                "int_parsing",
            );
            None
        }
    });
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n < 1 => {
                query_error(
                    &mut errors,
                    "limit",
                    "Input should be greater than or equal to 1".into(),
                    "greater_than_equal",
                );
                DEFAULT_LIMIT
            }
            Ok(n) if n > MAX_LIMIT as i64 => {
                query_error(
                    &mut errors,
                    "limit",
                    format!("Input should be less than or equal to {MAX_LIMIT}"),
                    "less_than_equal",
                );
                DEFAULT_LIMIT
            }
            Ok(n) => n as usize,
            Err(_) => {
                query_error(
                    &mut errors,
                    "limit",
                    "Input should be a valid integer, unable to parse string as an integer".into(),
                    "int_parsing",
                );
                DEFAULT_LIMIT
            }
        },
    };
    let from = parse_time(&mut errors, "from", params.get("from"));
    let to = parse_time(&mut errors, "to", params.get("to"));
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = EventFilter {
        event_group: text("event_group"),
        event_type: text("event_type"),
        status: text("status"),
        user_id,
        vm_id: text("vm_id"),
        session_id: text("session_id"),
        family: text("family"),
        from,
        to,
    };
    Ok((filter, text("cursor").filter(|c| !c.is_empty()), limit))
}

/// List the tenant's events, newest first (document 002).
#[utoipa::path(
    get,
    path = "/v1/audit/events",
    tag = "events",
    params(
        ("event_group" = Option<String>, Query), ("event_type" = Option<String>, Query),
        ("status" = Option<String>, Query), ("user_id" = Option<i64>, Query),
        ("vm_id" = Option<String>, Query), ("session_id" = Option<String>, Query),
        ("family" = Option<String>, Query, description = "generic, session-audit, iam, auditlogs or logs"),
        ("from" = Option<String>, Query, format = DateTime, description = "created_at >= from"),
        ("to" = Option<String>, Query, format = DateTime, description = "created_at < to"),
        ("cursor" = Option<String>, Query, description = "From a previous page's next_cursor"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "Default 50"),
    ),
    responses((status = 200, body = super::views::AuditEventPage), super::openapi::ApiErrors)
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<AuditEventPage>, ApiError> {
    require(&principal, "events:read")?;
    let (filter, cursor, limit) = parse_query(&params)?;
    let page = state.store.list_events(principal.space(), filter, cursor, limit).await?;
    let items = page.items.into_iter().map(AuditEvent::from).collect();
    Ok(Json(AuditEventPage { items, next_cursor: page.next_cursor }))
}

/// One event by id.
#[utoipa::path(
    get,
    path = "/v1/audit/events/{id}",
    tag = "events",
    params(("id" = String, Path)),
    responses((status = 200, body = super::views::AuditEvent), super::openapi::ApiErrors)
)]
pub async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<AuditEvent>, ApiError> {
    require(&principal, "events:read")?;
    match state.store.get_event(principal.space(), id).await? {
        Some(event) => Ok(Json(event.into())),
        None => Err(ApiError::NotFound("Event not found".into())),
    }
}
