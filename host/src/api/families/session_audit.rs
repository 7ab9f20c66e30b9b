//! `POST /session/v1/audit` (document 000): a game client or server records
//! a session event. Errors: 401/403/404/502/503 `{auth_success, error_code,
//! desc}`, 422 `{detail: [{loc, msg, type}]}` in pydantic's wording. `players` fans
//! one request out into one event per player. A request is stored whole or
//! not at all.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::Family;
use crate::api::dialect::{In, Session, SessionError};
use crate::api::validate::Validator;
use crate::api::{parse_json, ApiError, AppState};
use crate::auth::Principal;
use crate::event::{now_micros, Event};
use crate::ingest::{Opened, Policy, Reply};
use crate::pipeline::{Disposition, Input};

/// Session audit events (document 000).
pub struct SessionAudit;

impl Family for SessionAudit {
    const NAME: &'static str = "session-audit";
    const SCOPES: &'static [&'static str] = &PERMISSIONS;
    const POLICY: Policy = Policy::Whole;
    const BY_EVENT_ID: bool = false;
    type Dialect = Session;

    fn renormalize(space: &str, raw: &Value, _now: i64) -> Option<Vec<Event>> {
        raw.as_object().map(|o| to_events(space, o))
    }
}

/// Permissions that allow writing session audit events (document 000).
const PERMISSIONS: [&str; 6] = [
    "session-audit:update:all",
    "session-audit:update:self",
    "session-player-audit:update:all",
    "session-player-audit:update:self",
    "session:*",
    "events:write",
];

const PLATFORMS: [&str; 16] = [
    "Anon",
    "Basic",
    "XboxLive",
    "PSN",
    "NintendoNAID",
    "NintendoSwitch",
    "NintendoPPID",
    "Google",
    "GooglePlay",
    "Apple",
    "Epic",
    "Steam",
    "Amazon",
    "Twitch",
    "RallyHere",
    "LegacyName",
];

/// Plugin rejection codes that mean "session doesn't exist" (404).
const NOT_FOUND_CODES: [&str; 2] = ["session_not_found", "not_found"];

/// Most players one request may fan out to.
const MAX_PLAYERS: usize = 1_000;

/// Every constraint of the document's request body.
fn validate(body: &Map<String, Value>) -> Result<(), ApiError> {
    let mut v = Validator::default();
    let root: Vec<Value> = vec!["body".into()];
    let id = |v: &mut Validator, key: &str, required: bool| v.string(body, key, &root, required, 1, 128);
    id(&mut v, "event_name", true);
    id(&mut v, "session_id", true);
    v.string_map(body, "custom_data", &root, 1, 4096);
    v.string(body, "session_type", &root, false, 0, usize::MAX);
    id(&mut v, "region_id", false);
    v.boolean(body, "joinable", &root);
    if let Some(teams) = v.list(body, "updated_teams", &root, Some(50)) {
        for (i, team) in teams.iter().enumerate() {
            let loc: Vec<Value> = vec!["body".into(), "updated_teams".into(), i.into()];
            match team.as_object() {
                Some(team) => {
                    v.integer(team, "max_size", &loc, false, Some(1), Some(100));
                    v.string_map(team, "custom_data", &loc, 1, 4096);
                }
                None => {
                    v.errors.push(crate::api::FieldError::new(loc, "Input should be a valid dictionary", "dict_type"))
                }
            }
        }
    }
    v.one_of(body, "source", &root, false, &["BACKFILL", "MATCHMAKING", "PLAYER"]);
    v.uuid(body, "player_uuid", &root, false);
    v.integer(body, "team_id", &root, false, None, None);
    id(&mut v, "invited_session_id", false);
    id(&mut v, "removed_session_id", false);
    v.string(body, "version", &root, false, 0, usize::MAX);
    if let Some(settings) = v.object(body, "client_settings", &root, false) {
        let loc: Vec<Value> = vec!["body".into(), "client_settings".into()];
        v.integer(settings, "platform_id", &loc, false, None, None);
        v.one_of(settings, "platform", &loc, false, &PLATFORMS);
        v.one_of(settings, "input", &loc, true, &["keyboardandmouse", "gamepad", "touch"]);
    }
    if let Some(prefs) = v.object(body, "crossplay_preferences", &root, false) {
        let loc: Vec<Value> = vec!["body".into(), "crossplay_preferences".into()];
        v.one_of(
            prefs,
            "permitted_platform",
            &loc,
            true,
            &["desired_platforms_any", "desired_platforms_xboxlike", "desired_platforms_playstationlike"],
        );
        v.one_of(
            prefs,
            "permitted_input",
            &loc,
            true,
            &[
                "desired_inputs_any",
                "desired_inputs_keyboardandmouse",
                "desired_inputs_gamepad",
                "desired_inputs_touch",
            ],
        );
    }
    v.one_of(body, "player_status", &root, false, &["leader", "member", "invited", "reserved"]);
    v.one_of(body, "platform", &root, false, &PLATFORMS);
    v.string(body, "platform_session_id", &root, false, 1, 4096);
    id(&mut v, "instance_id", false);
    v.one_of(body, "host_type", &root, false, &["dedicated", "player"]);
    v.uuid(body, "host_player_uuid", &root, false);
    v.uuid(body, "instance_request_template", &root, false);
    v.string(body, "map", &root, false, 0, usize::MAX);
    v.string(body, "mode", &root, false, 0, usize::MAX);
    id(&mut v, "allocation_id", false);
    v.one_of(
        body,
        "join_status",
        &root,
        false,
        &["requested", "allocated", "pending", "joinable", "unjoinable", "closed"],
    );
    if let Some(join) = v.object(body, "join_params", &root, false) {
        let loc: Vec<Value> = vec!["body".into(), "join_params".into()];
        v.string(join, "public_conn_str", &loc, true, 0, usize::MAX);
        v.string(join, "private_conn_str", &loc, true, 0, usize::MAX);
        v.string_map(join, "custom_data", &loc, 1, 4096);
    }
    v.one_of(body, "instance_health", &root, false, &["healthy", "unhealthy", "degraded", "unknown"]);
    id(&mut v, "queue_id", false);
    v.string(body, "ticket_id", &root, false, 0, usize::MAX);
    if let Some(params) = v.object(body, "additional_params", &root, false) {
        let loc: Vec<Value> = vec!["body".into(), "additional_params".into()];
        v.number_map(params, "double_args", &loc);
        v.string_map(params, "string_args", &loc, 1, 4096);
        v.string_list(params, "tags", &loc, None);
        v.string_map(params, "extensions", &loc, 1, 4096);
    }
    v.string_list(body, "map_preferences", &root, None);
    id(&mut v, "queued_session_id", false);
    id(&mut v, "match_id", false);
    let players = v.string_list(body, "players", &root, Some(MAX_PLAYERS));
    for (i, player) in players.iter().enumerate() {
        if let Err(e) = uuid::Uuid::parse_str(player) {
            v.errors.push(crate::api::FieldError::new(
                vec!["body".into(), "players".into(), i.into()],
                format!("Input should be a valid UUID, {e}"),
                "uuid_parsing",
            ));
        }
    }
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(v.errors))
    }
}

/// Most bytes a `players` fan-out expands to (players times the request
/// without its list of players): the expansion is built before the request
/// is admitted, so many at once must stay small (RELIABILITY.md, F32, F44:
/// a hundred concurrent 10 MB expansions took the server past 5 GB).
const MAX_FAN_OUT_BYTES: usize = 1 << 20;

/// The request's events, each with its raw input: the request itself, or,
/// for a `players` fan-out, the request as it names that one player (the
/// whole request per player stored 1,000 copies of a 1,000-player list:
/// 39 MB for a 40 kB request; RELIABILITY.md, F29). Re-normalized, a
/// player's raw input gives that player's event again.
fn with_raw(body: &Map<String, Value>, events: Vec<Event>) -> Vec<Input> {
    let fan_out = body.get("players").and_then(Value::as_array).is_some_and(|l| !l.is_empty());
    if !fan_out {
        let raw = crate::event::raw_of(body);
        return events.into_iter().map(|event| Input { event, raw: raw.clone() }).collect();
    }
    let mut one = body.clone();
    events
        .into_iter()
        .map(|event| {
            one.insert("players".into(), Value::Array(event.actor_id.iter().cloned().map(Value::from).collect()));
            Input { raw: crate::event::raw_of(&one), event }
        })
        .collect()
}

/// The canonical events of a valid request: one, or one per player.
pub(crate) fn to_events(tenant: &str, body: &Map<String, Value>) -> Vec<Event> {
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let received_at = now_micros();
    let session_id = text("session_id").unwrap_or_default();
    let mut attributes = Vec::new();
    if let Some(instance) = text("instance_id") {
        attributes.push(("vm_id".to_string(), instance));
    }
    for key in ["region_id", "match_id", "queue_id", "ticket_id", "allocation_id"] {
        if let Some(value) = text(key) {
            attributes.push((key.to_string(), value));
        }
    }
    let players: Vec<Option<String>> = match body.get("players").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list.iter().map(|p| p.as_str().map(str::to_string)).collect(),
        _ => vec![text("player_uuid")],
    };
    let fan_out = body.get("players").and_then(Value::as_array).is_some_and(|l| !l.is_empty());
    players
        .into_iter()
        .map(|player| {
            let mut payload = body.clone();
            payload.remove("players");
            if fan_out {
                if let Some(p) = &player {
                    payload.insert("player_uuid".into(), p.clone().into());
                }
            }
            Event {
                id: uuid::Uuid::now_v7().to_string(),
                tenant: tenant.to_string(),
                family: SessionAudit::NAME.into(),
                name: text("event_name").unwrap_or_default(),
                group: "session".into(),
                status: "success".into(),
                source: text("source").map_or_else(|| "session-audit".into(), |s| s.to_lowercase()),
                occurred_at: received_at,
                received_at,
                actor_type: if player.is_some() { "player".into() } else { "client".into() },
                actor_id: player,
                user_id: None,
                resource_type: Some("session".into()),
                resource_id: Some(session_id.clone()),
                session_id: Some(session_id.clone()),
                attributes: attributes.clone(),
                payload: Value::Object(payload).to_string(),
            }
        })
        .collect()
}

/// The request body of document 000 (its constraints are checked by
/// `validate`, which reports them in pydantic's words).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SessionAuditRequest {
    #[schema(min_length = 1, max_length = 128)]
    event_name: String,
    #[schema(min_length = 1, max_length = 128)]
    session_id: String,
    custom_data: Option<HashMap<String, String>>,
    session_type: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    region_id: Option<String>,
    joinable: Option<bool>,
    #[schema(max_items = 50)]
    updated_teams: Option<Vec<UpdatedTeam>>,
    #[schema(pattern = "^(BACKFILL|MATCHMAKING|PLAYER)$")]
    source: Option<String>,
    #[schema(format = Uuid)]
    player_uuid: Option<String>,
    team_id: Option<i64>,
    #[schema(min_length = 1, max_length = 128)]
    invited_session_id: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    removed_session_id: Option<String>,
    version: Option<String>,
    client_settings: Option<ClientSettings>,
    crossplay_preferences: Option<CrossplayPreferences>,
    #[schema(pattern = "^(leader|member|invited|reserved)$")]
    player_status: Option<String>,
    #[schema(
        pattern = "^(Anon|Basic|XboxLive|PSN|NintendoNAID|NintendoSwitch|NintendoPPID|Google|GooglePlay|Apple|Epic|Steam|Amazon|Twitch|RallyHere|LegacyName)$"
    )]
    platform: Option<String>,
    #[schema(min_length = 1, max_length = 4096)]
    platform_session_id: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    instance_id: Option<String>,
    #[schema(pattern = "^(dedicated|player)$")]
    host_type: Option<String>,
    #[schema(format = Uuid)]
    host_player_uuid: Option<String>,
    #[schema(format = Uuid)]
    instance_request_template: Option<String>,
    map: Option<String>,
    mode: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    allocation_id: Option<String>,
    #[schema(pattern = "^(requested|allocated|pending|joinable|unjoinable|closed)$")]
    join_status: Option<String>,
    join_params: Option<JoinParams>,
    #[schema(pattern = "^(healthy|unhealthy|degraded|unknown)$")]
    instance_health: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    queue_id: Option<String>,
    ticket_id: Option<String>,
    additional_params: Option<AdditionalParams>,
    map_preferences: Option<Vec<String>>,
    #[schema(min_length = 1, max_length = 128)]
    queued_session_id: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    match_id: Option<String>,
    /// One stored event per player (UUIDs).
    #[schema(max_items = 1000)]
    players: Option<Vec<uuid::Uuid>>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UpdatedTeam {
    #[schema(minimum = 1, maximum = 100)]
    max_size: Option<i64>,
    custom_data: Option<HashMap<String, String>>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ClientSettings {
    platform_id: Option<i64>,
    #[schema(
        pattern = "^(Anon|Basic|XboxLive|PSN|NintendoNAID|NintendoSwitch|NintendoPPID|Google|GooglePlay|Apple|Epic|Steam|Amazon|Twitch|RallyHere|LegacyName)$"
    )]
    platform: Option<String>,
    #[schema(pattern = "^(keyboardandmouse|gamepad|touch)$")]
    input: String,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CrossplayPreferences {
    #[schema(pattern = "^(desired_platforms_any|desired_platforms_xboxlike|desired_platforms_playstationlike)$")]
    permitted_platform: String,
    #[schema(
        pattern = "^(desired_inputs_any|desired_inputs_keyboardandmouse|desired_inputs_gamepad|desired_inputs_touch)$"
    )]
    permitted_input: String,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct JoinParams {
    public_conn_str: String,
    private_conn_str: String,
    custom_data: Option<HashMap<String, String>>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct AdditionalParams {
    double_args: Option<HashMap<String, f64>>,
    string_args: Option<HashMap<String, String>>,
    tags: Option<Vec<String>>,
    extensions: Option<HashMap<String, String>>,
}

/// The 200 answer: the stored events' ids.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SessionAuditResponse {
    event_ids: Vec<String>,
}

/// Document 000's errors.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum SessionErrors {
    /// Missing or invalid credentials.
    #[response(status = 401)]
    Unauthorized(#[to_schema] SessionError),
    /// The token lacks every session-audit permission.
    #[response(status = 403)]
    Forbidden(#[to_schema] SessionError),
    /// A plugin says the session doesn't exist.
    #[response(status = 404)]
    NotFound(#[to_schema] SessionError),
    /// The Idempotency-Key is in use or bound to another body.
    #[response(status = 409)]
    Conflict(#[to_schema] SessionError),
    #[response(status = 413)]
    PayloadTooLarge(#[to_schema] SessionError),
    #[response(status = 422)]
    Invalid(#[to_schema] crate::api::dialect::HttpValidationError),
    /// The tenant's plugins failed (reject policy).
    /// Over one of the tenant's rates or budgets (retry after
    /// `Retry-After` seconds), or a quota used up.
    #[response(status = 429)]
    TooManyRequests(#[to_schema] SessionError),
    #[response(status = 502)]
    PluginFailed(#[to_schema] SessionError),
    /// The host could not run a plugin, or the store is overloaded: retry
    /// after `Retry-After` seconds.
    #[response(status = 503)]
    Unavailable(#[to_schema] SessionError),
}

/// Record a session event; `players` fans it out into one event per player.
#[utoipa::path(
    post,
    path = "/session/v1/audit",
    tag = "session-audit",
    params(crate::api::idempotency::IdempotencyKey),
    request_body = SessionAuditRequest,
    responses((status = 200, description = "Stored", body = SessionAuditResponse), SessionErrors)
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, In<Session>> {
    let principal = SessionAudit::authorize(principal)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(ApiError::field(
            vec!["body".into()],
            "Content type should be application/json",
            "model_attributes_type",
        )
        .into());
    }
    let request = match crate::api::ingest::open(&state, &principal, &headers, &body).await? {
        Opened::Replay(reply) => return Ok(crate::api::ingest::replayed(reply)),
        Opened::Fresh(request) => request,
    };
    let raw: Value = parse_json(&body)?;
    let Some(object) = raw.as_object() else {
        return Err(ApiError::field(vec!["body".into()], "Input should be a valid dictionary", "dict_type").into());
    };
    validate(object)?;
    // A fan-out copies the request (all but its players) into each player's
    // event and raw input: what it expands to is bounded like a body
    // (RELIABILITY.md, F32: 9 MB to 1,000 players took the server to 23 GB).
    let list = object.get("players").and_then(Value::as_array);
    let players = list.map_or(1, |p| p.len().max(1));
    // Each copy is the request without its list of players, and one player.
    let copy = body.len().saturating_sub(list.map_or(0, |p| serde_json::to_vec(p).map_or(0, |v| v.len()))) + 64;
    if players.saturating_mul(copy) > MAX_FAN_OUT_BYTES {
        return Err(ApiError::PayloadTooLarge(format!(
            "{players} players times {copy} bytes of request expand past {MAX_FAN_OUT_BYTES} bytes; \
             send fewer players per request, or a smaller request"
        ))
        .into());
    }
    let inputs = with_raw(object, to_events(&principal.space(), object));
    let reply = request
        .run(SessionAudit::RULES, inputs, |run| {
            // Nothing of a rejected request is stored; its plugin logs and
            // runs are.
            if let Some(error) = run.fresh().find_map(|d| match d {
                Disposition::Rejected { error } => Some(error),
                _ => None,
            }) {
                if NOT_FOUND_CODES.contains(&error.code.as_str()) {
                    let (code, message) = (error.code.clone(), error.message.clone());
                    return Err(ApiError::Coded { status: StatusCode::NOT_FOUND, code, message }.into());
                }
                if error.plugin_failed() {
                    return Err(ApiError::BadGateway(error.message.clone()).into());
                }
                let mut loc = vec![Value::from("body")];
                loc.extend(error.field.iter().flat_map(|f| f.split('.')).map(Value::from));
                return Err(ApiError::field(loc, error.message.clone(), &error.code).into());
            }
            let event_ids = run
                .fresh()
                .flat_map(|d| match d {
                    Disposition::Stored { ids } => ids.as_slice(),
                    _ => &[],
                })
                .cloned()
                .collect();
            Ok::<_, In<Session>>(Reply::json(StatusCode::OK.as_u16(), &SessionAuditResponse { event_ids }))
        })
        .await?;
    Ok(reply.into_response())
}
