//! `POST /iam/v1/events` (document 001): IAM account events in the envelope
//! `{id, version, name, namespace, parentNamespace, timestamp, clientId,
//! userId, traceId, sessionId, payload}`, one object or a JSON array. Each
//! message kind of the document has a stable name (`iam_kinds.json`, also
//! tabled in the README); the payload of a known kind is checked against
//! the document's example of it (every field it names must have that type;
//! extra fields are kept). Unknown names are accepted as generic IAM events.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Map, Value};

use super::generic::ingest_with;
use super::Family;
use crate::api::dialect::FastApi;
use crate::api::validate::{self, Validator};
use crate::api::{ApiError, AppState, FieldError};
use crate::auth::Principal;
use crate::event::Event;
use crate::ingest::Policy;

/// IAM account events (document 001).
pub struct Iam;

impl Family for Iam {
    const NAME: &'static str = "iam";
    const SCOPES: &'static [&'static str] = &["events:write"];
    const POLICY: Policy = Policy::Each;
    const BY_EVENT_ID: bool = true;
    type Dialect = FastApi;

    fn renormalize(space: &str, raw: &Value, now: i64) -> Option<Vec<Event>> {
        to_event(space, 0, false, raw, now).ok().map(|e| vec![e])
    }
}

/// The document's message kinds: stable name, description, example payload.
const KINDS_JSON: &str = include_str!("iam_kinds.json");

#[derive(serde::Deserialize)]
struct Kind {
    name: String,
    payload: Value,
}

/// Example payload of each known kind, by name.
fn kinds() -> &'static HashMap<String, Value> {
    static KINDS: OnceLock<HashMap<String, Value>> = OnceLock::new();
    KINDS.get_or_init(|| {
        let list: Vec<Kind> = serde_json::from_str(KINDS_JSON).expect("iam_kinds.json is valid");
        list.into_iter().map(|k| (k.name, k.payload)).collect()
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// Check `value` against the document's example `shape`: same JSON type
/// (null allowed anywhere), recursively for objects and list items.
fn check_shape(value: &Value, shape: &Value, loc: &mut Vec<Value>, errors: &mut Vec<FieldError>) {
    match (value, shape) {
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Object(v), Value::Object(s)) => {
            for (key, sub) in s {
                if let Some(field) = v.get(key) {
                    loc.push(key.clone().into());
                    check_shape(field, sub, loc, errors);
                    loc.pop();
                }
            }
        }
        (Value::Array(items), Value::Array(s)) => {
            if let Some(item_shape) = s.first() {
                for (i, item) in items.iter().enumerate() {
                    loc.push(i.into());
                    check_shape(item, item_shape, loc, errors);
                    loc.pop();
                }
            }
        }
        // The document's examples hold a date-time exactly where its
        // tables say `string (date-time)` (bans' `endDate`).
        (Value::String(v), Value::String(s)) if validate::date_time(s).is_ok() => {
            if let Err(message) = validate::date_time(v) {
                errors.push(FieldError::new(loc.clone(), message, "datetime_parsing"));
            }
        }
        (v, s) if type_name(v) == type_name(s) => {}
        (v, s) => errors.push(FieldError::new(
            loc.clone(),
            format!("Input should be a valid {}, got {}", type_name(s), type_name(v)),
            &format!("{}_type", type_name(s)),
        )),
    }
}

/// Validate one envelope and turn it into the canonical event.
pub(crate) fn to_event(
    tenant: &str,
    index: usize,
    many: bool,
    raw: &Value,
    received_at: i64,
) -> Result<Event, Vec<FieldError>> {
    let mut base: Vec<Value> = vec!["body".into()];
    if many {
        base.push(index.into());
    }
    let at = |key: &str| {
        let mut l = base.clone();
        l.push(key.into());
        l
    };
    let Some(env) = raw.as_object() else {
        return Err(vec![FieldError::new(base.clone(), "Input should be a valid dictionary", "dict_type")]);
    };
    let mut v = Validator::default();
    let id = v.string(env, "id", &base, false, 1, 128);
    let name = v.string(env, "name", &base, true, 1, 256);
    let namespace = v.string(env, "namespace", &base, false, 1, 256);
    let parent = v.string(env, "parentNamespace", &base, false, 1, 256);
    let client = v.string(env, "clientId", &base, false, 1, 1024);
    let user = v.string(env, "userId", &base, false, 1, 1024);
    let trace = v.string(env, "traceId", &base, false, 1, 1024);
    let session = v.string(env, "sessionId", &base, false, 1, 1024);
    let occurred_at = v.date_time(env, "timestamp", &base, false, 64).unwrap_or(received_at);
    let version = v.integer(env, "version", &base, false, None, None);
    let mut errors = v.errors;
    let payload = match env.get("payload") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            errors.push(FieldError::new(at("payload"), "Input should be a valid dictionary", "dict_type"));
            Value::Null
        }
    };
    let known = name.as_deref().and_then(|n| kinds().get(n));
    if let Some(shape) = known {
        let mut loc = at("payload");
        check_shape(&payload, shape, &mut loc, &mut errors);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let name = name.unwrap_or_default();
    let group = match known {
        Some(_) => name.split('.').nth(1).unwrap_or("iam").to_string(),
        None => name.split_once('.').map_or("iam", |(g, _)| g).to_string(),
    };
    let mut attributes: Vec<(String, String)> =
        vec![("kind".into(), if known.is_some() { "known" } else { "generic" }.into())];
    if let Some(t) = trace {
        attributes.push(("correlation_id".into(), t));
    }
    if let Some(p) = parent {
        attributes.push(("parent_namespace".into(), p));
    }
    if let Some(v) = version {
        attributes.push(("version".into(), v.to_string()));
    }
    Ok(Event {
        id: id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        tenant: tenant.to_string(),
        family: Iam::NAME.into(),
        name,
        group,
        status: "success".into(),
        source: client.unwrap_or_else(|| "iam".into()),
        occurred_at,
        received_at,
        actor_type: if user.is_some() { "user".into() } else { "service".into() },
        actor_id: user,
        user_id: None,
        resource_type: namespace.as_ref().map(|_| "namespace".to_string()),
        resource_id: namespace,
        session_id: session,
        attributes,
        payload: payload.to_string(),
    })
}

/// The envelope of document 001. The payload of a known `name` (see the
/// README's table) is type-checked against the document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct IamEnvelope {
    /// The message id; a retry with the same id is not stored twice.
    #[schema(min_length = 1, max_length = 128)]
    id: Option<String>,
    version: Option<i64>,
    #[schema(min_length = 1, max_length = 256)]
    name: String,
    #[schema(min_length = 1, max_length = 256)]
    namespace: Option<String>,
    #[schema(min_length = 1, max_length = 256, rename = "parentNamespace")]
    parent_namespace: Option<String>,
    #[schema(format = DateTime)]
    timestamp: Option<String>,
    #[schema(min_length = 1, max_length = 1024, rename = "clientId")]
    client_id: Option<String>,
    #[schema(min_length = 1, max_length = 1024, rename = "userId")]
    user_id: Option<String>,
    #[schema(min_length = 1, max_length = 1024, rename = "traceId")]
    trace_id: Option<String>,
    #[schema(min_length = 1, max_length = 1024, rename = "sessionId")]
    session_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    payload: Option<Value>,
}

/// One envelope or a list of them.
#[derive(utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum IamEvents {
    One(IamEnvelope),
    Many(Vec<IamEnvelope>),
}

/// Ingest IAM account events (document 001).
#[utoipa::path(
    post,
    path = "/iam/v1/events",
    tag = "iam",
    params(crate::api::idempotency::IdempotencyKey),
    request_body = IamEvents,
    responses(
        (status = 200, description = "At least one event accepted", body = crate::api::openapi::IngestReport),
        (status = 502, description = "Plugins failed on every event", body = crate::api::openapi::IngestReport),
        crate::api::openapi::ApiErrors,
    )
)]
pub async fn ingest(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Error locations name the index only when the body is a list.
    let many = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    ingest_with::<Iam>(&state, &principal, &headers, &body, |tenant, index, raw, received_at| {
        // The item is JSON already (checked when the body was split).
        let raw: Value = serde_json::from_str(raw)
            .map_err(|e| vec![FieldError::new(vec!["body".into(), index.into()], e.to_string(), "json_invalid")])?;
        to_event(tenant, index, many, &raw, received_at)
    })
    .await
}
