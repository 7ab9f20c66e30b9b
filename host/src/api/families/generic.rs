//! `POST /v1/events`: generic ingest of events in the listing document's
//! field names, as one JSON object, a JSON array, or NDJSON.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::Family;
use crate::api::dialect::FastApi;
use crate::api::openapi::{ApiErrors, IngestReport};
use crate::api::{parse_json, ApiError, AppState, FieldError};
use crate::auth::Principal;
use crate::event::{now_micros, Event, COLUMN_ATTRIBUTES};
use crate::ingest::{Entry, Opened, Policy, Reply};
use crate::pipeline::{Disposition, Input};

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

/// Longest custom attribute key, in characters.
const MAX_ATTRIBUTE_KEY: usize = 64;

/// One generic event, in the listing document's field names. Only
/// `event_type` is required; see the README for the defaults of the others.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GenericEvent<'a> {
    /// Your id for the event; a retry with the same id is not stored twice.
    #[schema(min_length = 1, max_length = 128)]
    id: Option<String>,
    /// When it happened (RFC 3339); default: when it was received.
    #[schema(format = DateTime)]
    created_at: Option<String>,
    #[serde(default, deserialize_with = "crate::whole::option")]
    user_id: Option<i64>,
    #[schema(min_length = 1, max_length = 1024)]
    actor_type: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    actor_id: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    source: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    event_group: Option<String>,
    #[schema(min_length = 1, max_length = 256)]
    event_type: String,
    #[schema(min_length = 1, max_length = 1024)]
    status: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    resource_type: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    resource_id: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    session_id: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    vm_id: Option<String>,
    #[serde(default, deserialize_with = "crate::whole::option")]
    task_id: Option<i64>,
    #[schema(min_length = 1, max_length = 1024)]
    request_id: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    correlation_id: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    http_method: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    path: Option<String>,
    #[schema(minimum = 100, maximum = 599)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    http_status: Option<i64>,
    #[schema(minimum = 0)]
    latency_ms: Option<f64>,
    #[schema(min_length = 1, max_length = 1024)]
    ip_address: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    user_agent: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    node_ip: Option<String>,
    #[schema(min_length = 1, max_length = 1024)]
    worker_id: Option<String>,
    /// Any JSON object, at most 256 KiB serialized.
    #[schema(value_type = Option<Object>)]
    #[serde(borrow)]
    event_payload: Option<&'a RawValue>,
    #[schema(max_length = 8192)]
    error_message: Option<String>,
    /// Custom indexed attributes (at most 32; keys of 1..64 characters, not
    /// one of the fields above; values of at most 1024), kept beside the
    /// columns.
    attributes: Option<BTreeMap<String, String>>,
}

/// One event, or a list of them (or NDJSON, one per line).
#[derive(utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum GenericEvents<'a> {
    One(GenericEvent<'a>),
    Many(Vec<GenericEvent<'a>>),
}

/// Split the body into its events, by content type: each item's exact text,
/// borrowed from the body (checked to be JSON, not yet parsed into a tree).
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8], max_events: usize) -> Result<Vec<&'a RawValue>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let values = match mime.as_str() {
        "application/x-ndjson" | "application/jsonl" | "application/ndjson" => {
            let mut values = Vec::new();
            for (line_no, line) in body.split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let value: &RawValue = parse_json(line).map_err(|e| match e {
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
        m if m == "application/json" || m.ends_with("+json") => {
            match body.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'[') => parse_json::<Vec<&RawValue>>(body)?,
                Some(b'{') => vec![parse_json::<&RawValue>(body)?],
                // Not JSON (the parser says where it breaks), or a scalar.
                _ => {
                    parse_json::<&RawValue>(body)?;
                    return Err(ApiError::field(
                        vec!["body".into()],
                        "Input should be an event object or a list of event objects",
                        "model_type",
                    ));
                }
            }
        }
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
    if let Some((msg, kind)) = value.and_then(|v| crate::api::validate::length_error(v.chars().count(), min, max)) {
        let mut loc = loc.to_vec();
        loc.push(field.into());
        errors.push(FieldError::new(loc, msg, kind));
    }
}

/// Validate one generic event (its JSON text) and turn it into the
/// canonical record.
pub(crate) fn to_event(tenant: &str, index: usize, raw: &str, received_at: i64) -> Result<Event, Vec<FieldError>> {
    let loc: Vec<Value> = vec!["body".into(), index.into()];
    let mut de = serde_json::Deserializer::from_str(raw);
    let g: GenericEvent = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let mut loc = loc.clone();
        loc.extend(e.path().iter().filter_map(|s| match s {
            serde_path_to_error::Segment::Map { key } => Some(Value::from(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Value::from(*index)),
            _ => None,
        }));
        let inner = e.into_inner();
        // The position is within the item, which the client does not see
        // on its own: the location says where the error is.
        let mut msg = inner.to_string();
        if inner.line() > 0 {
            if let Some(at) = msg.rfind(" at line ") {
                msg.truncate(at);
            }
        }
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
    // The payload is kept as the client wrote it (JSON checked, not re-serialized).
    let payload = match g.event_payload.map(RawValue::get) {
        None => "{}".to_string(),
        Some(text) if text.starts_with('{') => text.to_string(),
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
        } else if key.is_empty() || key.chars().count() > MAX_ATTRIBUTE_KEY || value.chars().count() > MAX_TEXT {
            let m = format!("Attribute keys are 1..{MAX_ATTRIBUTE_KEY} characters, values at most {MAX_TEXT}");
            errors.push(FieldError::new(l, m, "value_error"));
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
        family: Generic::NAME.into(),
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

/// Ingest generic events: one object, a JSON array, or NDJSON. Events are
/// committed before the answer; the report says what became of each.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    params(crate::api::idempotency::IdempotencyKey),
    request_body(content(
        (GenericEvents = "application/json"),
        (String = "application/x-ndjson"),
    )),
    responses(
        (status = 200, description = "At least one event accepted", body = IngestReport),
        (status = 502, description = "Plugins failed on every event", body = IngestReport),
        ApiErrors,
    )
)]
pub async fn ingest(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    ingest_with::<Generic>(&state, &principal, &headers, &body, to_event).await
}

/// Describe `GenericEvent`'s custom attributes in the OpenAPI document
/// (`schemas`: its component schemas) as [`to_event`] checks them, which
/// utoipa's attributes cannot say of a map's keys.
pub(crate) fn describe_attributes(schemas: &mut serde_json::Map<String, Value>) {
    if let Some(attributes) = schemas.get_mut("GenericEvent").and_then(|s| s.pointer_mut("/properties/attributes")) {
        attributes["maxProperties"] = MAX_ATTRIBUTES.into();
        attributes["propertyNames"] = serde_json::json!({
            "type": "string", "minLength": 1, "maxLength": MAX_ATTRIBUTE_KEY,
            "not": {"enum": crate::event::COLUMN_ATTRIBUTES},
        });
        attributes["additionalProperties"] = serde_json::json!({"type": "string", "maxLength": MAX_TEXT});
    }
}

/// Generic events (document 002).
pub struct Generic;

impl Family for Generic {
    const NAME: &'static str = "generic";
    const SCOPES: &'static [&'static str] = &["events:write"];
    const POLICY: Policy = Policy::Each;
    const BY_EVENT_ID: bool = true;
    type Dialect = FastApi;

    fn renormalize(space: &str, raw: &Value, now: i64) -> Option<Vec<Event>> {
        to_event(space, 0, &raw.to_string(), now).ok().map(|e| vec![e])
    }
}

/// The ingest flow shared by the families that take one event, an array or
/// NDJSON and report per event (generic, IAM): scope check, the request
/// opened, `normalize` per value (all field errors at once), then the one
/// ingest path with the per-event report as its answer.
///
/// # Errors
///
/// 403, 409 (idempotency), 413/415/422 for the body, 503 when overloaded.
pub(crate) async fn ingest_with<F: Family>(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    body: &[u8],
    normalize: impl Fn(&str, usize, &str, i64) -> Result<Event, Vec<FieldError>>,
) -> Result<Response, ApiError> {
    F::permits(principal)?;
    let request = match crate::api::ingest::open(state, principal, headers, body).await? {
        Opened::Replay(reply) => return Ok(crate::api::ingest::replayed(reply)),
        Opened::Fresh(request) => request,
    };
    let space = principal.space();
    let values = split_body(headers, body, state.settings.max_batch_events)?;
    let received_at = now_micros();
    let mut inputs = Vec::with_capacity(values.len());
    let mut errors = Vec::new();
    for (index, raw) in values.into_iter().enumerate() {
        match normalize(&space, index, raw.get(), received_at) {
            Ok(event) => inputs.push(Input { event, raw: raw.get().into() }),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let reply = request
        .run(F::RULES, inputs, |run| {
            let (status, report) = report(run.results);
            Ok::<_, ApiError>(Reply::json(status.as_u16(), &report))
        })
        .await?;
    Ok(reply.into_response())
}

/// The answer to an ingest request, serialized straight from the
/// dispositions (no intermediate JSON tree for the common case).
#[derive(serde::Serialize)]
struct Report<'a> {
    stored: usize,
    dropped: usize,
    rejected: usize,
    dead_lettered: usize,
    results: Vec<Indexed<'a>>,
    /// Only when every event was refused: each refusal with its location.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<Vec<FieldError>>,
}

/// `results[i]`: input i's result with its `index`.
struct Indexed<'a> {
    index: usize,
    entry: &'a Entry,
}

impl serde::Serialize for Indexed<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Fresh<'a> {
            #[serde(flatten)]
            disposition: &'a Disposition,
            index: usize,
        }
        match self.entry {
            Entry::Fresh(disposition) => Fresh { disposition, index: self.index }.serialize(serializer),
            Entry::Replayed(remembered) => {
                let mut value = remembered.clone();
                value["index"] = self.index.into();
                value.serialize(serializer)
            }
        }
    }
}

/// The per-event report of an ingest request (`results[i]` is input i's
/// disposition). 200 unless every event was refused: then 422 (plugins
/// rejected them) or 502 (plugins failed).
fn report<'a>(results: &'a [Entry]) -> (StatusCode, Report<'a>) {
    let (mut stored, mut dropped, mut rejected, mut dead, mut failed) = (0, 0, 0, 0, 0);
    let mut detail = Vec::new();
    for (index, result) in results.iter().enumerate() {
        let refusal = match result {
            Entry::Fresh(Disposition::Stored { ids }) => {
                stored += ids.len();
                None
            }
            Entry::Fresh(Disposition::Dropped { .. }) => {
                dropped += 1;
                None
            }
            Entry::Fresh(Disposition::DeadLettered { .. }) => {
                dead += 1;
                None
            }
            Entry::Fresh(Disposition::Rejected { error }) => {
                Some((error.code.as_str(), error.message.as_str(), error.field.as_deref(), error.plugin_failed()))
            }
            Entry::Replayed(done) => match done["status"].as_str().unwrap_or("") {
                "stored" => {
                    stored += done["ids"].as_array().map_or(0, Vec::len);
                    None
                }
                "dropped" => {
                    dropped += 1;
                    None
                }
                "dead_lettered" => {
                    dead += 1;
                    None
                }
                // Rejections are never remembered per event (a retry runs
                // them again), so a remembered refusal is not a failure.
                _ => Some((
                    done["error"]["code"].as_str().unwrap_or(""),
                    done["error"]["message"].as_str().unwrap_or(""),
                    done["error"]["field"].as_str(),
                    false,
                )),
            },
        };
        if let Some((code, message, field, plugin_failed)) = refusal {
            rejected += 1;
            if plugin_failed {
                failed += 1;
            }
            let mut loc = vec![Value::from("body"), Value::from(index)];
            if let Some(f) = field {
                loc.extend(f.split('.').map(Value::from));
            }
            detail.push(FieldError::new(loc, message, code));
        }
    }
    let all_refused = rejected == results.len();
    let report = Report {
        stored,
        dropped,
        rejected,
        dead_lettered: dead,
        results: results.iter().enumerate().map(|(index, entry)| Indexed { index, entry }).collect(),
        detail: all_refused.then_some(detail),
    };
    if !all_refused {
        return (StatusCode::OK, report);
    }
    let status = if failed == rejected { StatusCode::BAD_GATEWAY } else { StatusCode::UNPROCESSABLE_ENTITY };
    (status, report)
}
