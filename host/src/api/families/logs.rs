//! `POST /logs` and `GET /logs` (document 004): structured log entries,
//! with scopes `logs:write` / `logs:read`, errors `{error: {code, message}}`,
//! and `quota_exceeded` (429) with the tenant's quotas when one is used up.
//! `PUT /v1/quotas` (admin) sets a tenant's quotas.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::Family;
use crate::api::dialect::LogError;
use crate::api::dialect::{self, Dialect, In};
use crate::api::{parse_object, require, ApiError, AppState};
use crate::auth::{Principal, ADMIN_SCOPE, DEFAULT_TENANT};
use crate::event::{now_micros, Event};
use crate::ingest::{Opened, Policy, Reply};
use crate::pipeline::Disposition;
use crate::store::{EventFilter, Quotas};

/// The family name of these events.
/// Structured logs (document 004).
pub struct Logs;

impl Family for Logs {
    const NAME: &'static str = "logs";
    const SCOPES: &'static [&'static str] = &["logs:write"];
    const POLICY: Policy = Policy::Whole;
    const BY_EVENT_ID: bool = false;
    type Dialect = dialect::Logs;

    fn renormalize(space: &str, raw: &Value, now: i64) -> Option<Vec<Event>> {
        renormalize(space, raw, now).map(|e| vec![e])
    }
}

const LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];
const MAX_MESSAGE: usize = 10_000;
const MAX_META_BYTES: usize = 64 << 10;

/// The caller, if its token holds `scope`.
fn authorize(principal: Result<Principal, ApiError>, scope: &str) -> Result<Principal, In<dialect::Logs>> {
    let principal = principal?;
    if !principal.has(scope) {
        return Err(ApiError::Forbidden("token does not have the required scope".into()).into());
    }
    Ok(principal)
}

/// The canonical event of a valid log entry.
fn to_event(tenant: &str, level: &str, message: &str, meta: &Value, now: i64) -> Event {
    let text = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_string);
    Event {
        id: uuid::Uuid::now_v7().to_string(),
        tenant: tenant.to_string(),
        family: Logs::NAME.into(),
        name: format!("log.{level}"),
        group: "log".into(),
        status: level.to_string(),
        source: text("server_id").unwrap_or_else(|| "logs".into()),
        occurred_at: now,
        received_at: now,
        actor_type: "service".into(),
        actor_id: text("player_id"),
        user_id: None,
        resource_type: None,
        resource_id: None,
        session_id: text("session_id"),
        attributes: if level == "error" { vec![("error_message".into(), message.to_string())] } else { Vec::new() },
        payload: json!({"level": level, "message": message, "meta": meta}).to_string(),
    }
}

/// Rebuild the canonical event of a stored log entry's raw input (shadow
/// runs).
pub(crate) fn renormalize(tenant: &str, raw: &Value, now: i64) -> Option<Event> {
    let level = raw.get("level")?.as_str()?;
    let message = raw.get("message")?.as_str()?;
    let meta = raw.get("meta").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    Some(to_event(tenant, level, message, &meta, now))
}

/// The body of `POST /logs`.
#[derive(utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct NewLog {
    #[schema(pattern = "^(debug|info|warn|error)$")]
    level: String,
    #[schema(min_length = 1, max_length = 10000)]
    message: String,
    /// Any object, at most 64 KiB serialized.
    #[schema(value_type = Option<Object>)]
    meta: Option<Value>,
}

/// A stored log entry.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct LogEntry {
    id: String,
    level: String,
    message: String,
    #[schema(value_type = Object)]
    meta: Value,
    #[schema(format = DateTime)]
    created_at: String,
}

impl LogEntry {
    /// The entry of a stored event (`payload`: its JSON text; a plugin may
    /// have rewritten it, so what is missing shows empty).
    fn of(id: String, payload: &str, created_at: i64) -> LogEntry {
        let mut payload: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        LogEntry {
            id,
            level: text(&payload["level"]),
            message: text(&payload["message"]),
            meta: payload.get_mut("meta").map(Value::take).unwrap_or(Value::Null),
            created_at: crate::event::rfc3339(created_at),
        }
    }
}

/// A page of log entries.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct LogPage {
    data: Vec<LogEntry>,
    next_cursor: Option<String>,
}

/// The entry was dropped or dead-lettered by a plugin.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct LogNotStored {
    /// Always null: nothing was stored.
    id: Option<String>,
    dropped: String,
}

#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum LogErrors {
    #[response(status = 400)]
    BadRequest(#[to_schema] LogError),
    #[response(status = 401)]
    Unauthorized(#[to_schema] LogError),
    #[response(status = 403)]
    Forbidden(#[to_schema] LogError),
    /// The Idempotency-Key is in use or bound to another body.
    #[response(status = 409)]
    Conflict(#[to_schema] LogError),
    #[response(status = 413)]
    PayloadTooLarge(#[to_schema] LogError),
    /// `quota_exceeded`, with the metric and every quota.
    #[response(status = 429)]
    QuotaExceeded(#[to_schema] LogError),
    #[response(status = 502)]
    PluginFailed(#[to_schema] LogError),
    #[response(status = 503)]
    Unavailable(#[to_schema] LogError),
}

/// Write a log entry (document 004).
#[utoipa::path(
    post,
    path = "/logs",
    tag = "logs",
    params(crate::api::idempotency::IdempotencyKey),
    request_body = NewLog,
    responses(
        (status = 201, description = "Stored", body = LogEntry),
        (status = 202, description = "Accepted, but a plugin dropped it", body = LogNotStored),
        LogErrors,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, In<dialect::Logs>> {
    let principal = Logs::authorize(principal)?;
    let request = match crate::api::ingest::open(&state, &principal, &headers, &body).await? {
        Opened::Replay(reply) => return Ok(crate::api::ingest::replayed(reply)),
        Opened::Fresh(request) => request,
    };
    let bad = |m: &str| -> In<dialect::Logs> { ApiError::BadRequest { message: m.into(), fields: Vec::new() }.into() };
    let Ok(Value::Object(entry)) = serde_json::from_slice::<Value>(&body) else {
        return Err(bad("the body must be a JSON object"));
    };
    let level = match entry.get("level").and_then(Value::as_str) {
        Some(l) if LEVELS.contains(&l) => l.to_string(),
        Some(_) => return Err(bad("level must be one of debug, info, warn, error")),
        None => return Err(bad("missing required field: level")),
    };
    let message = match entry.get("message").and_then(Value::as_str) {
        Some(m) if !m.is_empty() && m.chars().count() <= MAX_MESSAGE => m.to_string(),
        Some(_) => return Err(bad("message must have 1..10000 characters")),
        None => return Err(bad("missing required field: message")),
    };
    let meta = match entry.get("meta") {
        None | Some(Value::Null) => json!({}),
        Some(m @ Value::Object(_)) if m.to_string().len() <= MAX_META_BYTES => m.clone(),
        Some(Value::Object(_)) => return Err(bad("meta must be at most 65536 bytes")),
        Some(_) => return Err(bad("meta must be an object")),
    };
    if let Some(unknown) = entry.keys().find(|k| !["level", "message", "meta"].contains(&k.as_str())) {
        return Err(bad(&format!("unknown field: {unknown}")));
    }
    let event = to_event(&principal.space(), &level, &message, &meta, now_micros());
    let input = crate::pipeline::Input { event, raw: crate::event::raw_of(&entry) };
    let reply = request
        .run(Logs::RULES, vec![input], |run| {
            // A plugin's rejection or failure is answered here in the logs
            // dialect (a whole request's policy does not remember it).
            let refused = |error: ApiError| {
                let (status, body) = dialect::Logs::answer(&error);
                Reply::json(status.as_u16(), &body)
            };
            let reply = match (run.fresh().next(), run.stored.first()) {
                (Some(Disposition::Stored { .. }), Some(stored)) => {
                    let e = &stored.event;
                    Reply::json(StatusCode::CREATED.as_u16(), &LogEntry::of(e.id.clone(), &e.payload, e.occurred_at))
                }
                (Some(Disposition::Rejected { error: e }), _) if e.plugin_failed() => {
                    refused(ApiError::BadGateway(e.message.clone()))
                }
                (Some(Disposition::Rejected { error: e }), _) => {
                    refused(ApiError::BadRequest { message: e.message.clone(), fields: Vec::new() })
                }
                (Some(Disposition::Dropped { reason, .. } | Disposition::DeadLettered { reason, .. }), _) => {
                    Reply::json(StatusCode::ACCEPTED.as_u16(), &LogNotStored { id: None, dropped: reason.clone() })
                }
                _ => return Err(ApiError::Internal("the log entry was not run".into()).into()),
            };
            Ok::<_, In<dialect::Logs>>(reply)
        })
        .await?;
    Ok(reply.into_response())
}

/// List log entries, newest first (document 004).
#[utoipa::path(
    get,
    path = "/logs",
    tag = "logs",
    params(
        ("level" = Option<String>, Query, description = "Only this level"),
        ("cursor" = Option<String>, Query, description = "From a previous page's next_cursor"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "Default 50"),
    ),
    responses((status = 200, body = LogPage), LogErrors)
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, In<dialect::Logs>> {
    let principal = authorize(principal, "logs:read")?;
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => 50,
        Some(Ok(n)) if (1..=200).contains(&n) => n,
        Some(_) => {
            let message = "limit must be an integer between 1 and 200".into();
            return Err(ApiError::BadRequest { message, fields: Vec::new() }.into());
        }
    };
    let filter =
        EventFilter { family: Some(Logs::NAME.into()), status: params.get("level").cloned(), ..EventFilter::default() };
    let cursor = params.get("cursor").cloned().filter(|c| !c.is_empty());
    let page = state.store.list_events(principal.space(), filter, cursor, limit).await?;
    let data = page
        .items
        .into_iter()
        .map(|row| LogEntry::of(row.id, row.event_payload.as_deref().unwrap_or("null"), row.created_at))
        .collect();
    Ok(Json(LogPage { data, next_cursor: page.next_cursor }).into_response())
}

/// `PUT /v1/quotas` with `{"events_per_day": N, "storage_bytes": N,
/// "events_per_second": N, "events_burst": N, "plugin_ms_per_second": N}`
/// (null: unlimited, for the rate and the plugin budget: the server's
/// default), for the caller's tenant; `GET /v1/quotas` shows them with their
/// use and the rate and budget in force.
/// Set the tenant's quotas (admin); `null` means unlimited.
#[utoipa::path(
    put,
    path = "/v1/quotas",
    tag = "logs",
    params(("tenant" = Option<String>, Query, description = "Another tenant's quotas (the operator only)")),
    request_body = Quotas,
    responses((status = 200, body = Quotas), crate::api::openapi::ApiErrors)
)]
pub async fn put_quotas(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require(&principal, ADMIN_SCOPE)?;
    // The operator (the default tenant's live admin) sets any tenant's
    // limits with `?tenant=`; a tenant sets only its own, and may not raise
    // its ingest rate above the server's default: that rate is what keeps
    // it from taking the server from everyone else.
    let operator = principal.tenant == DEFAULT_TENANT && !principal.is_test();
    let tenant = match params.get("tenant") {
        Some(other) if other != &principal.tenant => {
            if !operator {
                return Err(ApiError::Forbidden("only the operator sets another tenant's quotas".into()));
            }
            if !state.store.tenant_exists(other.clone()).await? {
                return Err(ApiError::NotFound(format!("tenant {other:?} does not exist")));
            }
            other.clone()
        }
        _ => principal.tenant.clone(),
    };
    let quotas: Quotas = parse_object(&body)?;
    for (name, value) in [("events_per_day", quotas.events_per_day), ("storage_bytes", quotas.storage_bytes)] {
        if value.is_some_and(|v| v < 0) {
            return Err(ApiError::field(vec!["body".into(), name.into()], "Input should be at least 0", "value_error"));
        }
    }
    for (name, value) in [
        ("events_per_second", quotas.events_per_second),
        ("events_burst", quotas.events_burst),
        ("plugin_ms_per_second", quotas.plugin_ms_per_second),
        ("bytes_per_second", quotas.bytes_per_second),
    ] {
        if value.is_some_and(|v| v < 1) {
            return Err(ApiError::field(vec!["body".into(), name.into()], "Input should be at least 1", "value_error"));
        }
    }
    if !operator {
        // A tenant may only tighten what holds it now (whoever set it):
        // loosening, or lifting a limit, is the operator's.
        let current = state.pipeline.quotas(&tenant);
        for (name, value, now) in [
            ("events_per_day", quotas.events_per_day, current.events_per_day),
            ("storage_bytes", quotas.storage_bytes, current.storage_bytes),
        ] {
            if let Some(now) = now.filter(|now| value.is_none_or(|v| v > *now)) {
                return Err(ApiError::Forbidden(format!(
                    "{name} above its current limit ({now}) is the operator's to set"
                )));
            }
        }
        let (default, rate) = (state.pipeline.default_rate(), state.pipeline.rate(&tenant));
        let default_budget = state.pipeline.default_plugin_budget_ms();
        for (name, value, default, now) in [
            ("events_per_second", quotas.events_per_second, default.per_second, rate.per_second),
            ("events_burst", quotas.events_burst, default.burst, rate.burst),
            (
                "plugin_ms_per_second",
                quotas.plugin_ms_per_second,
                default_budget,
                state.pipeline.plugin_budget_ms(&tenant),
            ),
            (
                "bytes_per_second",
                quotas.bytes_per_second,
                state.pipeline.default_byte_rate().per_second,
                state.pipeline.byte_rate(&tenant).per_second,
            ),
        ] {
            if value.map_or(default, |v| v as f64) > now {
                return Err(ApiError::Forbidden(format!(
                    "{name} above its current limit ({now}) is the operator's to set"
                )));
            }
        }
    }
    state.store.set_quotas(tenant.clone(), quotas).await?;
    state.pipeline.set_quotas(&tenant, quotas);
    Ok(Json(serde_json::to_value(quotas).unwrap_or(Value::Null)))
}

/// The tenant's quotas and what it uses of them.
#[utoipa::path(
    get,
    path = "/v1/quotas",
    tag = "logs",
    responses((status = 200, body = Object), crate::api::openapi::ApiErrors)
)]
pub async fn get_quotas(State(state): State<AppState>, principal: Principal) -> Result<Json<Value>, ApiError> {
    require(&principal, "events:read")?;
    let (quotas, today, bytes) = state.store.quota_usage(principal.tenant.clone(), principal.space()).await?;
    let (rate, byte_rate) = (state.pipeline.rate(&principal.tenant), state.pipeline.byte_rate(&principal.tenant));
    Ok(Json(json!({
        "events_per_day": {"limit": quotas.events_per_day, "used": today},
        "storage_bytes": {"limit": quotas.storage_bytes, "used": bytes},
        // The rate and plugin budget in force: the tenant's own, or the
        // server's default.
        "events_per_second": {"limit": rate.per_second, "burst": rate.burst},
        "plugin_ms_per_second": {"limit": state.pipeline.plugin_budget_ms(&principal.tenant)},
        "bytes_per_second": {"limit": byte_rate.per_second, "burst": byte_rate.burst},
    })))
}
