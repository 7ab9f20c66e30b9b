//! The canonical event: what every API family is normalized into, what plugins
//! see (through the WIT `event` record) and what the store keeps.

use serde_json::Value;

/// Attribute keys that the listing API shows as columns of their own. Any
/// other attribute is kept in the `attributes` JSON column.
pub const COLUMN_ATTRIBUTES: [&str; 13] = [
    "vm_id",
    "task_id",
    "request_id",
    "correlation_id",
    "http_method",
    "path",
    "http_status",
    "latency_ms",
    "ip_address",
    "user_agent",
    "node_ip",
    "worker_id",
    "error_message",
];

/// One event in canonical form. Times are microseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub tenant: String,
    pub family: String,
    /// `event_type` in the listing API.
    pub name: String,
    /// `event_group` in the listing API.
    pub group: String,
    pub status: String,
    pub source: String,
    /// When the event happened according to the client; the listing API's
    /// `created_at`.
    pub occurred_at: i64,
    /// When Sluice received it.
    pub received_at: i64,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub user_id: Option<i64>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub session_id: Option<String>,
    /// Listing-API columns beyond the core ones (`vm_id`, `http_status`, ...)
    /// and custom indexed attributes, as strings.
    pub attributes: Vec<(String, String)>,
    /// The event payload (`event_payload`), serialized JSON.
    pub payload: String,
}

impl Event {
    /// The value of an attribute.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Approximate size in bytes, used to bound what plugins may return.
    pub fn size(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        self.id.len()
            + self.tenant.len()
            + self.family.len()
            + self.name.len()
            + self.group.len()
            + self.status.len()
            + self.source.len()
            + self.actor_type.len()
            + opt(&self.actor_id)
            + opt(&self.resource_type)
            + opt(&self.resource_id)
            + opt(&self.session_id)
            + self.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + self.payload.len()
            + 32
    }
}

/// One plugin that processed an event, recorded in the event's lineage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineageStep {
    pub plugin: String,
    pub version: u32,
    pub sha256: String,
}

/// An event ready to be stored: the canonical record, the plugins it went
/// through, and the raw input it came from.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event: Event,
    pub lineage: Vec<LineageStep>,
    /// The client's input for this event, as received (shared by fan-out copies).
    pub raw: std::sync::Arc<Value>,
}

/// An event a plugin failed on under the `dead-letter` failure policy: stored
/// untransformed, with the reason, for inspection and replay.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    pub tenant: String,
    pub family: String,
    pub received_at: i64,
    pub plugin: String,
    pub plugin_version: u32,
    pub reason: String,
    pub event: Event,
    pub raw: std::sync::Arc<Value>,
}

/// A log line a plugin wrote through the `log` import.
#[derive(Debug, Clone)]
pub struct PluginLog {
    pub tenant: String,
    pub plugin: String,
    pub plugin_version: u32,
    pub at: i64,
    pub level: &'static str,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

/// One call of one plugin on one batch: what went in, what came out, what
/// it cost. Kept in `plugin_runs`.
#[derive(Debug, Clone)]
pub struct PluginRun {
    pub tenant: String,
    pub plugin: String,
    pub plugin_version: u32,
    pub started_at: i64,
    pub events_in: u32,
    pub events_out: u32,
    pub dropped: u32,
    pub rejected: u32,
    /// The fault's reason (`timeout`, `panic`, ...) when the call failed.
    pub fault: Option<String>,
    pub elapsed_us: i64,
    pub fuel: u64,
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
