//! The store's typed rows as the APIs show them: listing JSON is shaped
//! here, not in the store. Each type is the response body itself
//! (`Serialize`) and its OpenAPI schema (`ToSchema`).

use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::event::rfc3339;
use crate::store::{DeadLetterRow, EventRow, PluginLogRow, PluginVersion, TokenInfo};

/// Stored JSON text as it is, or `null` when there is none or it is not
/// JSON. Text with a line break (outside a string it can only be
/// whitespace; inside one it is escaped) loses its whitespace, keys kept in
/// order, so an event stays one line of an NDJSON export.
fn json_text(text: Option<String>) -> Box<RawValue> {
    let Some(text) = text else { return null() };
    let text = if text.contains(['\n', '\r']) { without_whitespace(&text) } else { text };
    RawValue::from_string(text).unwrap_or_else(|_| null())
}

/// JSON text without the whitespace between its tokens.
fn without_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

/// An event as listed: document 002's `AuditEventResponse`, plus `family`,
/// `received_at` and `lineage` (the plugins it went through).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    pub id: String,
    pub family: String,
    /// The event's own time.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When Sluice received it.
    #[schema(format = DateTime)]
    pub received_at: String,
    pub user_id: Option<i64>,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub source: String,
    pub event_group: String,
    pub event_type: String,
    pub status: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub session_id: Option<String>,
    pub vm_id: Option<String>,
    pub task_id: Option<i64>,
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
    pub http_method: Option<String>,
    pub path: Option<String>,
    pub http_status: Option<i64>,
    pub latency_ms: Option<f64>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub node_ip: Option<String>,
    pub worker_id: Option<String>,
    #[schema(value_type = Object)]
    pub event_payload: Box<RawValue>,
    pub error_message: Option<String>,
    /// `[{plugin, version, sha256}]`, in the order the plugins ran.
    #[schema(value_type = Vec<Object>)]
    pub lineage: Box<RawValue>,
}

impl From<EventRow> for AuditEvent {
    fn from(r: EventRow) -> Self {
        AuditEvent {
            id: r.id,
            family: r.family,
            created_at: rfc3339(r.created_at),
            received_at: rfc3339(r.received_at),
            user_id: r.user_id,
            actor_type: r.actor_type.unwrap_or_default(),
            actor_id: r.actor_id,
            source: r.source.unwrap_or_default(),
            event_group: r.event_group.unwrap_or_default(),
            event_type: r.event_type.unwrap_or_default(),
            status: r.status.unwrap_or_default(),
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            session_id: r.session_id,
            vm_id: r.vm_id,
            task_id: r.task_id,
            request_id: r.request_id,
            correlation_id: r.correlation_id,
            http_method: r.http_method,
            path: r.path,
            http_status: r.http_status,
            latency_ms: r.latency_ms,
            ip_address: r.ip_address,
            user_agent: r.user_agent,
            node_ip: r.node_ip,
            worker_id: r.worker_id,
            event_payload: json_text(r.event_payload),
            error_message: r.error_message,
            lineage: json_text(r.lineage),
        }
    }
}

/// An event as one line of an NDJSON export.
pub fn ndjson_line(row: EventRow, out: &mut String) {
    // Serializing plain fields into a String cannot fail.
    if let Ok(line) = serde_json::to_string(&AuditEvent::from(row)) {
        out.push_str(&line);
        out.push('\n');
    }
}

/// A page of events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventPage {
    pub items: Vec<AuditEvent>,
    /// Opaque; null on the last page.
    pub next_cursor: Option<String>,
}

/// An event quarantined by the dead-letter failure policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// The event's id.
    pub id: String,
    pub family: String,
    #[schema(format = DateTime)]
    pub received_at: String,
    /// The plugin that failed on it, and its version.
    pub plugin: String,
    pub plugin_version: u32,
    pub reason: String,
    /// The event as it entered the failing plugin, in the listing's field
    /// names.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
    /// The client's input it came from.
    #[schema(value_type = Object)]
    pub raw: Box<RawValue>,
    /// What `POST /v1/dead-letters/replay` names.
    pub dead_letter_id: i64,
}

impl From<DeadLetterRow> for DeadLetterView {
    fn from(r: DeadLetterRow) -> Self {
        DeadLetterView {
            id: r.id,
            family: r.family,
            received_at: rfc3339(r.received_at),
            plugin: r.plugin,
            plugin_version: r.plugin_version,
            reason: r.reason,
            event: r.event.to_json(),
            raw: json_text(Some(r.raw)),
            dead_letter_id: r.dead_letter_id,
        }
    }
}

/// The tenant's dead letters, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetters {
    pub items: Vec<DeadLetterView>,
}

/// A line a plugin logged.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginLogView {
    pub plugin: String,
    pub plugin_version: u32,
    #[schema(format = DateTime)]
    pub at: String,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
    /// The fields logged with it.
    #[schema(value_type = Object)]
    pub fields: Box<RawValue>,
}

impl From<PluginLogRow> for PluginLogView {
    fn from(r: PluginLogRow) -> Self {
        PluginLogView {
            plugin: r.plugin,
            plugin_version: r.plugin_version,
            at: rfc3339(r.at),
            level: r.level,
            message: r.message,
            fields: json_text(r.fields),
        }
    }
}

/// A plugin's logs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginLogs {
    pub items: Vec<PluginLogView>,
}

/// A token as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// The first 16 hex digits of the secret's SHA-256: what a revocation
    /// names.
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// `live` or `test`.
    pub mode: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
}

impl From<TokenInfo> for TokenView {
    fn from(t: TokenInfo) -> Self {
        TokenView {
            id: t.id,
            tenant: t.tenant,
            name: t.name,
            scopes: t.scopes,
            mode: t.mode,
            created_at: rfc3339(t.created_at),
            revoked_at: t.revoked_at.map(rfc3339),
        }
    }
}

/// The tenant's tokens the caller may manage, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct Tokens {
    pub items: Vec<TokenView>,
}

/// One uploaded version of a plugin.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionView {
    pub version: u32,
    /// The component's SHA-256, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    #[schema(format = DateTime)]
    pub uploaded_at: String,
}

impl From<PluginVersion> for VersionView {
    fn from(v: PluginVersion) -> Self {
        VersionView { version: v.version, sha256: v.sha256, size: v.size, uploaded_at: rfc3339(v.uploaded_at) }
    }
}

/// A plugin's versions, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct Versions {
    pub items: Vec<VersionView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_row_shows_as_the_listing_document_shows_it() {
        let row = EventRow {
            id: "e1".into(),
            family: "generic".into(),
            created_at: 1_700_000_000_000_000,
            received_at: 1_700_000_000_000_001,
            actor_type: Some("user".into()),
            source: Some("api".into()),
            event_group: Some("auth".into()),
            event_type: Some("login".into()),
            status: Some("ok".into()),
            task_id: Some(7),
            latency_ms: Some(1.5),
            event_payload: Some(r#"{"b":1,"a":[2]}"#.into()),
            lineage: Some("not json".into()),
            ..EventRow::default()
        };
        let mut line = String::new();
        ndjson_line(row, &mut line);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(v["received_at"], "2023-11-14T22:13:20.000001Z");
        assert_eq!(v["task_id"], 7);
        assert_eq!(v["latency_ms"], 1.5);
        assert!(v["vm_id"].is_null() && v.get("vm_id").is_some(), "absent columns are null, not missing");
        assert_eq!(v["event_payload"], serde_json::json!({"b": 1, "a": [2]}));
        assert!(line.contains(r#""event_payload":{"b":1,"a":[2]}"#), "the payload's text as stored: {line}");
        assert!(v["lineage"].is_null(), "text that is not JSON shows as null");

        // A payload stored as a client pretty-printed it is still one line.
        let pretty =
            EventRow { event_payload: Some("{\n  \"a\": \"x\\ny\",\r\n  \"b\": 2\n}".into()), ..EventRow::default() };
        let mut line = String::new();
        ndjson_line(pretty, &mut line);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event_payload"], serde_json::json!({"a": "x\ny", "b": 2}));
        assert!(line.contains(r#""event_payload":{"a":"x\ny","b":2}"#), "keys in order, strings untouched: {line}");
        let quoted = without_whitespace("{ \"k \\\" v\" :\n [1, \"a b\"] }");
        assert_eq!(quoted, r#"{"k \" v":[1,"a b"]}"#);
    }
}
