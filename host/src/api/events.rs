//! `POST /v1/events`: generic ingest of events in the listing document's
//! field names, as one JSON object, a JSON array, or NDJSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{disposition_json, parse_json, require, ApiError, AppState, FieldError};
use crate::auth::Principal;
use crate::event::{now_micros, Event, COLUMN_ATTRIBUTES};
use crate::pipeline::{Disposition, Input, RunOutput};
use crate::store::IdempotencyRecord;

/// Longest id accepted.
const MAX_ID: usize = 128;
/// Longest value of any other string field.
const MAX_TEXT: usize = 1024;
/// Longest `error_message`.
const MAX_ERROR_MESSAGE: usize = 8192;
/// Largest `event_payload`, serialized.
const MAX_PAYLOAD: usize = 256 << 10;
/// Most custom attributes per event.
const MAX_ATTRIBUTES: usize = 32;

/// One generic event. Only `event_type` is required; see the README for the
/// defaults of the others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenericEvent {
    id: Option<String>,
    created_at: Option<String>,
    user_id: Option<i64>,
    actor_type: Option<String>,
    actor_id: Option<String>,
    source: Option<String>,
    event_group: Option<String>,
    event_type: String,
    status: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    session_id: Option<String>,
    vm_id: Option<String>,
    task_id: Option<i64>,
    request_id: Option<String>,
    correlation_id: Option<String>,
    http_method: Option<String>,
    path: Option<String>,
    http_status: Option<i64>,
    latency_ms: Option<f64>,
    ip_address: Option<String>,
    user_agent: Option<String>,
    node_ip: Option<String>,
    worker_id: Option<String>,
    event_payload: Option<Value>,
    error_message: Option<String>,
    /// Custom indexed attributes (string values), kept beside the columns.
    attributes: Option<BTreeMap<String, String>>,
}

/// Split the body into its events (raw JSON values), by content type.
fn split_body(headers: &HeaderMap, body: &[u8], max_events: usize) -> Result<Vec<Value>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let values = match mime.as_str() {
        "application/x-ndjson" | "application/jsonl" | "application/ndjson" => {
            let mut values = Vec::new();
            for (line_no, line) in body.split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let value: Value = parse_json(line).map_err(|e| match e {
                    ApiError::Validation(mut errors) => {
                        for err in &mut errors {
                            err.loc.insert(1, line_no.into());
                        }
                        ApiError::Validation(errors)
                    }
                    other => other,
                })?;
                values.push(value);
            }
            values
        }
        m if m == "application/json" || m.ends_with("+json") => match parse_json::<Value>(body)? {
            Value::Array(items) => items,
            object @ Value::Object(_) => vec![object],
            _ => {
                return Err(ApiError::field(
                    vec!["body".into()],
                    "Input should be an event object or a list of event objects",
                    "model_type",
                ))
            }
        },
        _ => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "unsupported content type {content_type:?}: send application/json or application/x-ndjson"
            )))
        }
    };
    if values.is_empty() {
        return Err(ApiError::field(vec!["body".into()], "At least one event is required", "too_short"));
    }
    if values.len() > max_events {
        return Err(ApiError::PayloadTooLarge(format!(
            "{} events in one request; the limit is {max_events}",
            values.len()
        )));
    }
    Ok(values)
}

fn check_len(errors: &mut Vec<FieldError>, loc: &[Value], field: &str, value: Option<&str>, min: usize, max: usize) {
    if let Some(v) = value {
        let n = v.chars().count();
        if n < min || n > max {
            let mut loc = loc.to_vec();
            loc.push(field.into());
            let (msg, kind) = if n < min {
                (format!("String should have at least {min} characters"), "string_too_short")
            } else {
                (format!("String should have at most {max} characters"), "string_too_long")
            };
            errors.push(FieldError::new(loc, msg, kind));
        }
    }
}

/// Validate one generic event and turn it into the canonical record.
pub(crate) fn to_event(tenant: &str, index: usize, raw: &Value, received_at: i64) -> Result<Event, Vec<FieldError>> {
    let loc: Vec<Value> = vec!["body".into(), index.into()];
    let g: GenericEvent = serde_path_to_error::deserialize(raw).map_err(|e| {
        let mut loc = loc.clone();
        loc.extend(e.path().iter().filter_map(|s| match s {
            serde_path_to_error::Segment::Map { key } => Some(Value::from(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Value::from(*index)),
            _ => None,
        }));
        let msg = e.into_inner().to_string();
        let kind = if msg.starts_with("missing field") { "missing" } else { "value_error" };
        vec![FieldError::new(loc, msg, kind)]
    })?;
    let mut errors = Vec::new();
    check_len(&mut errors, &loc, "id", g.id.as_deref(), 1, MAX_ID);
    check_len(&mut errors, &loc, "event_type", Some(&g.event_type), 1, 256);
    for (field, value) in [
        ("actor_type", &g.actor_type),
        ("actor_id", &g.actor_id),
        ("source", &g.source),
        ("event_group", &g.event_group),
        ("status", &g.status),
        ("resource_type", &g.resource_type),
        ("resource_id", &g.resource_id),
        ("session_id", &g.session_id),
        ("vm_id", &g.vm_id),
        ("request_id", &g.request_id),
        ("correlation_id", &g.correlation_id),
        ("http_method", &g.http_method),
        ("path", &g.path),
        ("ip_address", &g.ip_address),
        ("user_agent", &g.user_agent),
        ("node_ip", &g.node_ip),
        ("worker_id", &g.worker_id),
    ] {
        check_len(&mut errors, &loc, field, value.as_deref(), 1, MAX_TEXT);
    }
    check_len(&mut errors, &loc, "error_message", g.error_message.as_deref(), 0, MAX_ERROR_MESSAGE);
    let at = |field: &str| {
        let mut l = loc.clone();
        l.push(field.into());
        l
    };
    if let Some(status) = g.http_status {
        if !(100..=599).contains(&status) {
            errors.push(FieldError::new(at("http_status"), "Input should be between 100 and 599", "value_error"));
        }
    }
    if let Some(latency) = g.latency_ms {
        if !(latency.is_finite() && latency >= 0.0) {
            errors.push(FieldError::new(at("latency_ms"), "Input should be a non-negative number", "value_error"));
        }
    }
    let occurred_at = match &g.created_at {
        None => received_at,
        Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(t) => t.timestamp_micros(),
            Err(e) => {
                errors.push(FieldError::new(
                    at("created_at"),
                    format!("Input should be a valid RFC 3339 datetime: {e}"),
                    "datetime_parsing",
                ));
                0
            }
        },
    };
    let payload = match &g.event_payload {
        None | Some(Value::Null) => "{}".to_string(),
        Some(v @ Value::Object(_)) => v.to_string(),
        Some(_) => {
            errors.push(FieldError::new(at("event_payload"), "Input should be an object", "dict_type"));
            String::new()
        }
    };
    if payload.len() > MAX_PAYLOAD {
        errors.push(FieldError::new(
            at("event_payload"),
            format!("Payload should be at most {MAX_PAYLOAD} bytes serialized"),
            "too_long",
        ));
    }
    let custom = g.attributes.unwrap_or_default();
    if custom.len() > MAX_ATTRIBUTES {
        errors.push(FieldError::new(at("attributes"), format!("At most {MAX_ATTRIBUTES} attributes"), "too_long"));
    }
    for (key, value) in &custom {
        let mut l = at("attributes");
        l.push(key.clone().into());
        if COLUMN_ATTRIBUTES.contains(&key.as_str()) {
            errors.push(FieldError::new(
                l,
                format!("{key} is a field of its own; set it at the top level"),
                "value_error",
            ));
        } else if key.is_empty() || key.len() > 64 || value.len() > MAX_TEXT {
            errors.push(FieldError::new(l, "Attribute keys are 1..64 bytes, values at most 1024", "value_error"));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut attributes: Vec<(String, String)> = Vec::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            attributes.push((key.to_string(), v));
        }
    };
    put("vm_id", g.vm_id);
    put("task_id", g.task_id.map(|v| v.to_string()));
    put("request_id", g.request_id);
    put("correlation_id", g.correlation_id);
    put("http_method", g.http_method);
    put("path", g.path);
    put("http_status", g.http_status.map(|v| v.to_string()));
    put("latency_ms", g.latency_ms.map(|v| v.to_string()));
    put("ip_address", g.ip_address);
    put("user_agent", g.user_agent);
    put("node_ip", g.node_ip);
    put("worker_id", g.worker_id);
    put("error_message", g.error_message);
    attributes.extend(custom);
    let group = g.event_group.unwrap_or_else(|| match g.event_type.split_once('.') {
        Some((prefix, _)) if !prefix.is_empty() => prefix.to_string(),
        _ => "default".to_string(),
    });
    Ok(Event {
        id: g.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        tenant: tenant.to_string(),
        family: "generic".into(),
        name: g.event_type,
        group,
        status: g.status.unwrap_or_else(|| "success".into()),
        source: g.source.unwrap_or_else(|| "api".into()),
        occurred_at,
        received_at,
        actor_type: g.actor_type.unwrap_or_else(|| "unknown".into()),
        actor_id: g.actor_id,
        user_id: g.user_id,
        resource_type: g.resource_type,
        resource_id: g.resource_id,
        session_id: g.session_id,
        attributes,
        payload,
    })
}

/// Run inputs through the tenant's chain and commit the result, for
/// families whose request is one unit: when any event is rejected, no event
/// or dead letter of the request is stored (plugin logs and runs still are).
/// Returns once the batch is durable.
///
/// # Errors
///
/// 503 when the store is overloaded (nothing stored), 500 on store failure.
pub(crate) async fn run_and_commit_whole(
    state: &AppState,
    tenant: &str,
    inputs: Vec<Input>,
) -> Result<RunOutput, ApiError> {
    let mut output = state.pipeline.run(tenant, inputs).await?;
    commit_whole(state, &mut output).await?;
    Ok(output)
}

/// Commit a run's batch whole or not at all (see [`run_and_commit_whole`]),
/// leaving the committed events in `output` for the response.
///
/// # Errors
///
/// 503 when the store is overloaded (nothing stored), 500 on store failure.
pub(crate) async fn commit_whole(state: &AppState, output: &mut RunOutput) -> Result<(), ApiError> {
    if output.dispositions.iter().any(|d| matches!(d, Disposition::Rejected { .. })) {
        output.batch.events.clear();
        output.batch.dead_letters.clear();
    }
    let events = output.batch.events.clone();
    state.store.commit(std::mem::take(&mut output.batch)).await?;
    output.batch.events = events;
    Ok(())
}

/// Longest `Idempotency-Key` accepted.
const MAX_KEY: usize = 255;

/// A claim on an idempotency key while its request runs; released on drop.
struct InFlight {
    set: Arc<parking_lot::Mutex<std::collections::HashSet<(String, String)>>>,
    entry: (String, String),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.lock().remove(&self.entry);
    }
}

/// The request's `Idempotency-Key`, if it sent one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= MAX_KEY => Ok(Some(key.to_string())),
        _ => Err(ApiError::field(
            vec!["header".into(), "Idempotency-Key".into()],
            format!("Idempotency-Key should be 1..{MAX_KEY} visible ASCII characters"),
            "value_error",
        )),
    }
}

pub async fn ingest(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    ingest_with(&state, &principal, &headers, &body, "generic", to_event).await
}

/// The ingest flow shared by the families that take one event, an array or
/// NDJSON and report per event (generic, IAM): scope check, Idempotency-Key,
/// `normalize` per value (all field errors at once), the chain, one commit.
///
/// # Errors
///
/// 403, 409 (idempotency), 413/415/422 for the body, 503 when overloaded.
pub(crate) async fn ingest_with(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    body: &[u8],
    family: &'static str,
    normalize: impl Fn(&str, usize, &Value, i64) -> Result<Event, Vec<FieldError>>,
) -> Result<Response, ApiError> {
    require(principal, "events:write")?;
    // With an Idempotency-Key: claim the key (one request at a time), then
    // answer a retry with the remembered response, or a conflict when the
    // key was used for another request.
    let idempotency = match idempotency_key(headers)? {
        None => None,
        Some(key) => {
            let entry = (principal.tenant.clone(), key.clone());
            if !state.in_flight.lock().insert(entry.clone()) {
                return Err(ApiError::Conflict("a request with this Idempotency-Key is in progress".into()));
            }
            let claim = InFlight { set: state.in_flight.clone(), entry };
            let mut hasher = Sha256::new();
            hasher.update(headers.get(header::CONTENT_TYPE).map_or(&b""[..], |v| v.as_bytes()));
            hasher.update([0]);
            hasher.update(body);
            let hash = hex::encode(hasher.finalize());
            if let Some(done) = state.store.find_idempotent(principal.tenant.clone(), key.clone()).await? {
                if done.request_hash != hash {
                    return Err(ApiError::Conflict(
                        "this Idempotency-Key was used with a different request; use a new key".into(),
                    ));
                }
                let status = StatusCode::from_u16(done.status).unwrap_or(StatusCode::OK);
                let body: Value = serde_json::from_str(&done.body).unwrap_or(Value::Null);
                let mut response = (status, Json(body)).into_response();
                response.headers_mut().insert("idempotent-replayed", header::HeaderValue::from_static("true"));
                return Ok(response);
            }
            Some((claim, key, hash))
        }
    };
    let values = split_body(headers, body, state.settings.max_batch_events)?;
    let received_at = now_micros();
    let mut inputs = Vec::with_capacity(values.len());
    let mut errors = Vec::new();
    for (index, raw) in values.into_iter().enumerate() {
        match normalize(&principal.tenant, index, &raw, received_at) {
            Ok(event) => inputs.push(Input { event, raw: Arc::new(raw) }),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut output = state.pipeline.run(&principal.tenant, inputs).await?;
    let (status, report) = report(family, &output.dispositions);
    let mut batch = std::mem::take(&mut output.batch);
    let _claim = idempotency.map(|(claim, key, request_hash)| {
        batch.idempotency = Some(IdempotencyRecord {
            tenant: principal.tenant.clone(),
            key,
            request_hash,
            status: status.as_u16(),
            body: report.to_string(),
        });
        claim
    });
    state.store.commit(batch).await?;
    Ok((status, Json(report)).into_response())
}

/// The per-event report of an ingest request. 200 unless every event was
/// refused: then 422 (plugins rejected them) or 502 (plugins failed).
fn report(family: &'static str, dispositions: &[Disposition]) -> (StatusCode, Value) {
    let (mut stored, mut dropped, mut rejected, mut dead, mut failed) = (0, 0, 0, 0, 0);
    let results: Vec<Value> = dispositions
        .iter()
        .enumerate()
        .map(|(index, d)| {
            match d {
                Disposition::Stored { ids } => stored += ids.len(),
                Disposition::Dropped { .. } => dropped += 1,
                Disposition::Rejected { error } => {
                    rejected += 1;
                    if error.code == "plugin_failed" {
                        failed += 1;
                    }
                }
                Disposition::DeadLettered { .. } => dead += 1,
            }
            disposition_json(d, "index", index.into())
        })
        .collect();
    crate::metrics::ingest(family, stored, dropped, rejected, dead);
    let mut body = json!({
        "stored": stored,
        "dropped": dropped,
        "rejected": rejected,
        "dead_lettered": dead,
        "results": results,
    });
    let status = if rejected == dispositions.len() {
        body["detail"] = Value::Array(
            dispositions
                .iter()
                .enumerate()
                .filter_map(|(i, d)| match d {
                    Disposition::Rejected { error } => {
                        let mut loc = vec![Value::from("body"), Value::from(i)];
                        if let Some(f) = &error.field {
                            loc.extend(f.split('.').map(Value::from));
                        }
                        Some(json!({ "loc": loc, "msg": error.message, "type": error.code }))
                    }
                    _ => None,
                })
                .collect(),
        );
        if failed == rejected {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    } else {
        StatusCode::OK
    };
    (status, body)
}
