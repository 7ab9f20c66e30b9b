//! `POST /v1beta1/organizations/{org_id}/auditlogs` (document 003): a batch
//! of audit logs, stored whole or not at all. Errors are
//! `{code, message, details[{@type, ...}]}` with gRPC status codes; a bad
//! entry is named by its index (`logs[3].source`) in a
//! `google.rpc.BadRequest` detail.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::Family;
use crate::api::dialect::{In, Rpc, RpcStatus};
use crate::api::{ApiError, AppState, FieldError};
use crate::auth::Principal;
use crate::event::{now_micros, Event};
use crate::ingest::{self, Opened, Policy, Reply};
use crate::pipeline::{Disposition, Input};

/// Batch audit logs (document 003).
pub struct AuditLog;

impl Family for AuditLog {
    const NAME: &'static str = "auditlogs";
    const SCOPES: &'static [&'static str] = &["events:write"];
    const POLICY: Policy = Policy::Whole;
    const BY_EVENT_ID: bool = true;
    type Dialect = Rpc;

    fn renormalize(space: &str, raw: &Value, now: i64) -> Option<Vec<Event>> {
        raw.as_object().map(|o| vec![to_event(space, o, now)])
    }
}

/// Longest value of any string field of an entry.
const MAX_TEXT: usize = 1024;

/// Check one entry; violations are named `logs[i].field`.
fn check_entry(i: usize, entry: &Value, violations: &mut Vec<(String, String)>) {
    let mut bad = |field: &str, what: &str| violations.push((format!("logs[{i}].{field}"), what.to_string()));
    let Some(obj) = entry.as_object() else {
        bad("", "must be an object");
        return;
    };
    let text = |v: Option<&Value>| -> Result<Option<usize>, ()> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.chars().count())),
            Some(_) => Err(()),
        }
    };
    for (field, required) in [("id", false), ("source", true), ("action", true), ("created_at", false)] {
        match text(obj.get(field)) {
            Err(()) => bad(field, "must be a string"),
            Ok(None) if required => bad(field, "is required"),
            Ok(Some(0)) if required || field == "id" => bad(field, "must not be empty"),
            Ok(Some(n)) if n > MAX_TEXT => bad(field, "must be at most 1024 characters"),
            _ => {}
        }
    }
    if let Some(Value::String(t)) = obj.get("created_at") {
        if chrono::DateTime::parse_from_rfc3339(t).is_err() {
            bad("created_at", "must be an RFC 3339 date-time");
        }
    }
    for part in ["actor", "target"] {
        match obj.get(part) {
            None | Some(Value::Null) => {}
            Some(Value::Object(o)) => {
                for (k, v) in o {
                    if !["id", "type", "name"].contains(&k.as_str()) {
                        bad(&format!("{part}.{k}"), "unknown field");
                    } else if !matches!(text(Some(v)), Ok(Some(n)) if n <= MAX_TEXT) && !v.is_null() {
                        bad(&format!("{part}.{k}"), "must be a string of at most 1024 characters");
                    }
                }
            }
            Some(_) => bad(part, "must be an object"),
        }
    }
    match obj.get("context") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (k, v) in o {
                if !v.is_string() {
                    bad(&format!("context.{k}"), "must be a string");
                }
            }
        }
        Some(_) => bad("context", "must be an object of strings"),
    }
    for k in obj.keys() {
        if !["id", "source", "action", "actor", "target", "context", "created_at"].contains(&k.as_str()) {
            bad(k, "unknown field");
        }
    }
}

pub(crate) fn to_event(tenant: &str, entry: &Map<String, Value>, received_at: i64) -> Event {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    let action = text(entry.get("action")).unwrap_or_default();
    let actor = entry.get("actor");
    let target = entry.get("target");
    let occurred_at = text(entry.get("created_at"))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map_or(received_at, |t| t.timestamp_micros());
    let payload = json!({
        "actor": actor.cloned().unwrap_or(Value::Null),
        "target": target.cloned().unwrap_or(Value::Null),
        "context": entry.get("context").cloned().unwrap_or(json!({})),
    });
    Event {
        id: text(entry.get("id")).unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        tenant: tenant.to_string(),
        family: AuditLog::NAME.into(),
        group: action.split_once('.').map_or_else(|| action.clone(), |(g, _)| g.to_string()),
        name: action,
        status: "success".into(),
        source: text(entry.get("source")).unwrap_or_default(),
        occurred_at,
        received_at,
        actor_type: actor.and_then(|a| text(a.get("type"))).unwrap_or_else(|| "unknown".into()),
        actor_id: actor.and_then(|a| text(a.get("id"))),
        user_id: None,
        resource_type: target.and_then(|t| text(t.get("type"))),
        resource_id: target.and_then(|t| text(t.get("id"))),
        session_id: None,
        attributes: Vec::new(),
        payload: payload.to_string(),
    }
}

/// One audit log entry of document 003.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct AuditLogEntry {
    /// Generated when absent.
    #[schema(min_length = 1, max_length = 1024)]
    id: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    source: String,
    #[schema(min_length = 1, max_length = 1024)]
    action: String,
    actor: Option<Party>,
    target: Option<Party>,
    context: Option<std::collections::HashMap<String, String>>,
    #[schema(format = DateTime)]
    created_at: Option<String>,
}

/// An actor or target: `{id, type, name}`.
#[derive(utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct Party {
    #[schema(max_length = 1024)]
    id: Option<String>,
    #[schema(max_length = 1024, rename = "type")]
    kind: Option<String>,
    #[schema(max_length = 1024)]
    name: Option<String>,
}

/// The request body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct AuditLogs {
    logs: Vec<AuditLogEntry>,
}

#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum RpcErrors {
    /// An invalid entry (named by index), or plugins refused entries.
    #[response(status = 400)]
    BadRequest(#[to_schema] RpcStatus),
    #[response(status = 401)]
    Unauthorized(#[to_schema] RpcStatus),
    /// Missing scope, or `org_id` is not the token's tenant.
    #[response(status = 403)]
    Forbidden(#[to_schema] RpcStatus),
    /// The Idempotency-Key is in use or bound to another body.
    #[response(status = 409)]
    Conflict(#[to_schema] RpcStatus),
    #[response(status = 413)]
    PayloadTooLarge(#[to_schema] RpcStatus),
    /// Over one of the tenant's rates or budgets (retry after
    /// `Retry-After` seconds), or a quota used up.
    #[response(status = 429)]
    TooManyRequests(#[to_schema] RpcStatus),
    #[response(status = 502)]
    PluginFailed(#[to_schema] RpcStatus),
    #[response(status = 503)]
    Unavailable(#[to_schema] RpcStatus),
}

/// Store a batch of audit logs, whole or not at all (document 003).
#[utoipa::path(
    post,
    path = "/v1beta1/organizations/{org_id}/auditlogs",
    tag = "auditlogs",
    params(("org_id" = String, Path, description = "The token's tenant"), crate::api::idempotency::IdempotencyKey),
    request_body = AuditLogs,
    responses((status = 200, description = "Stored", body = Object), RpcErrors)
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    Path(org_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, In<Rpc>> {
    let principal = AuditLog::authorize(principal)?;
    if org_id != principal.tenant {
        return Err(ApiError::Forbidden("the token does not belong to this organization".into()).into());
    }
    let request = match crate::api::ingest::open(&state, &principal, &headers, &body).await? {
        Opened::Replay(reply) => return Ok(crate::api::ingest::replayed(reply)),
        Opened::Fresh(request) => request,
    };
    let bad = |message: String, fields: Vec<(String, String)>| -> In<Rpc> {
        let fields = fields.into_iter().map(|(f, d)| FieldError::new(vec![f.into()], d, "value_error")).collect();
        ApiError::BadRequest { message, fields }.into()
    };
    let document: Value = serde_json::from_slice(&body).map_err(|e| bad(format!("malformed JSON: {e}"), vec![]))?;
    let Some(logs) = document.get("logs").and_then(Value::as_array) else {
        return Err(bad("logs is required and must be a list".into(), vec![("logs".into(), "is required".into())]));
    };
    if logs.len() > state.settings.max_batch_events {
        let m = format!("{} logs in one request; the limit is {}", logs.len(), state.settings.max_batch_events);
        return Err(ApiError::PayloadTooLarge(m).into());
    }
    let mut violations = Vec::new();
    for (i, entry) in logs.iter().enumerate() {
        check_entry(i, entry, &mut violations);
    }
    // An id given twice in one request (each entry is stored once by its id).
    let mut seen = HashMap::new();
    for (i, entry) in logs.iter().enumerate() {
        if let Some(Value::String(id)) = entry.get("id") {
            match seen.entry(id.as_str()) {
                Entry::Occupied(first) => {
                    violations
                        .push((format!("logs[{i}].id"), format!("the id of logs[{}] appears again", first.get())));
                }
                Entry::Vacant(slot) => {
                    slot.insert(i);
                }
            }
        }
    }
    if !violations.is_empty() {
        return Err(bad("invalid audit logs: the whole batch was rejected".into(), violations));
    }
    let received_at = now_micros();
    let inputs = logs
        .iter()
        .filter_map(Value::as_object)
        .map(|entry| Input {
            event: to_event(&principal.space(), entry, received_at),
            raw: crate::event::raw_of(entry),
        })
        .collect();
    let reply = request
        .run(AuditLog::RULES, inputs, |run| {
            if let Some(message) = run.fresh().find_map(|d| match d {
                Disposition::Rejected { error } if error.plugin_failed() => Some(error.message.clone()),
                _ => None,
            }) {
                return Err(ApiError::BadGateway(message).into());
            }
            let refused: Vec<(String, String)> = run
                .results
                .iter()
                .enumerate()
                .filter_map(|(i, d)| match d {
                    ingest::Entry::Fresh(Disposition::Rejected { error }) => {
                        let field =
                            error.field.as_deref().map_or_else(|| format!("logs[{i}]"), |f| format!("logs[{i}].{f}"));
                        Some((field, format!("{}: {}", error.code, error.message)))
                    }
                    _ => None,
                })
                .collect();
            if !refused.is_empty() {
                return Err(bad("audit logs refused by the organization's plugins".into(), refused));
            }
            Ok(Reply::json(StatusCode::OK.as_u16(), &json!({})))
        })
        .await?;
    Ok(reply.into_response())
}
