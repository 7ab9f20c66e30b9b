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
/// Its serde form (these field names, attributes as `[key, value]` pairs,
/// the payload as its text) is how a dead letter keeps it
/// ([`Event::to_stored`]).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// The event as a dead letter stores it: canonical and lossless (every
    /// field as it is, the payload's text and the attributes' order kept),
    /// unlike the listing's JSON form ([`Event::to_json`]).
    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// An event stored by [`Event::to_stored`], in `tenant`'s space; or, as
    /// dead letters written before it existed were, in the listing's JSON
    /// form ([`Event::from_json`]).
    ///
    /// # Errors
    ///
    /// A message naming what is missing or mistyped.
    pub fn from_stored(tenant: &str, text: &str) -> Result<Event, String> {
        match serde_json::from_str::<Event>(text) {
            Ok(mut event) => {
                event.tenant = tenant.to_string();
                Ok(event)
            }
            Err(_) => {
                let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
                Event::from_json(tenant, &value)
            }
        }
    }

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

/// A client's input for one request item, as the JSON text it came in (for
/// the generic family, the exact bytes of the item; shared by the fan-out
/// copies of one item). Kept in the `raw` column, for replays and audits.
pub type Raw = std::sync::Arc<str>;

/// The [`Raw`] form of an input the API has as a parsed value.
pub fn raw_of(value: &impl serde::Serialize) -> Raw {
    serde_json::to_string(value).unwrap_or_default().into()
}

/// The plugins an event went through, in order. Shared: the events of a
/// batch that took the same path share one list.
pub type Lineage = std::sync::Arc<[LineageStep]>;

/// An event ready to be stored: the canonical record, the plugins it went
/// through, and the raw input it came from.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event: Event,
    pub lineage: Lineage,
    /// The client's input for this event, as received (shared by fan-out copies).
    pub raw: Raw,
}

impl StoredEvent {
    /// The bytes this event's row holds in its text columns of unbounded
    /// total size: payload, raw input, custom attributes and lineage (the
    /// serialized length of each; [`crate::store`] counts the same columns
    /// with SQL). What the byte rate, the storage quota and listing pages
    /// count. Lineage counts: 64 plugins made 11 KB of it per event from
    /// 30 bytes of request (RELIABILITY.md, F54).
    pub fn stored_bytes(&self) -> usize {
        let attributes: usize = self.event.attributes.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
        self.event.payload.len() + self.raw.len() + attributes + lineage_bytes(&self.lineage)
    }
}

/// How many decimal digits `n` has.
fn digits(n: u32) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The length of a lineage serialized as JSON, as it is stored:
/// `[{"plugin":"p","version":1,"sha256":"..."},...]`.
pub fn lineage_bytes(lineage: &[LineageStep]) -> usize {
    let steps: usize = lineage.iter().map(|s| 36 + s.plugin.len() + s.sha256.len() + digits(s.version)).sum();
    2 + steps + lineage.len().saturating_sub(1)
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
    pub raw: Raw,
}

impl DeadLetter {
    /// Like [`StoredEvent::stored_bytes`]: the event, raw input and reason.
    pub fn stored_bytes(&self) -> usize {
        let attributes: usize = self.event.attributes.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
        self.event.payload.len() + self.raw.len() + attributes + self.reason.len()
    }
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
    /// CPU time of the call (what the tenant's plugin time budget is
    /// charged); not stored.
    pub cpu_us: i64,
    pub fuel: u64,
}

/// RFC 3339 with microseconds and `Z`, as the APIs show times.
pub fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Canonical fields under their listing-API names; every other key of the
/// JSON form is an attribute.
pub const CORE_FIELDS: [&str; 16] = [
    "id",
    "family",
    "created_at",
    "received_at",
    "user_id",
    "actor_type",
    "actor_id",
    "source",
    "event_group",
    "event_type",
    "status",
    "resource_type",
    "resource_id",
    "session_id",
    "event_payload",
    "tenant",
];

impl Event {
    /// The event as JSON in the listing API's field names (attributes as
    /// top-level keys). Used for dry runs and dead letters; [`Event::from_json`]
    /// reads it back.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("id".into(), self.id.clone().into());
        map.insert("family".into(), self.family.clone().into());
        map.insert("created_at".into(), rfc3339(self.occurred_at).into());
        map.insert("received_at".into(), rfc3339(self.received_at).into());
        map.insert("user_id".into(), self.user_id.into());
        map.insert("actor_type".into(), self.actor_type.clone().into());
        map.insert("actor_id".into(), self.actor_id.clone().into());
        map.insert("source".into(), self.source.clone().into());
        map.insert("event_group".into(), self.group.clone().into());
        map.insert("event_type".into(), self.name.clone().into());
        map.insert("status".into(), self.status.clone().into());
        map.insert("resource_type".into(), self.resource_type.clone().into());
        map.insert("resource_id".into(), self.resource_id.clone().into());
        map.insert("session_id".into(), self.session_id.clone().into());
        // An attribute named like a core field (`tenant`, `id`, `status`,
        // ...) is not shown here: it must not pass for that field (an
        // event claiming another tenant; RELIABILITY.md, F67). It is kept
        // in the event, and stored.
        for (k, v) in self.attributes.iter().filter(|(k, _)| !CORE_FIELDS.contains(&k.as_str())) {
            map.insert(k.clone(), v.clone().into());
        }
        map.insert("event_payload".into(), serde_json::from_str(&self.payload).unwrap_or(Value::Null));
        Value::Object(map)
    }

    /// Read back the JSON form of [`Event::to_json`] for `tenant`.
    ///
    /// # Errors
    ///
    /// A message naming the first missing or mistyped field.
    pub fn from_json(tenant: &str, value: &Value) -> Result<Event, String> {
        let map = value.as_object().ok_or("event must be an object")?;
        let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_string);
        let required = |k: &str| text(k).ok_or_else(|| format!("{k} is missing"));
        let time = |k: &str| -> Result<i64, String> {
            let t = required(k)?;
            chrono::DateTime::parse_from_rfc3339(&t).map(|t| t.timestamp_micros()).map_err(|e| format!("{k}: {e}"))
        };
        let attributes = map
            .iter()
            .filter(|(k, _)| !CORE_FIELDS.contains(&k.as_str()))
            .filter_map(|(k, v)| match v {
                Value::Null => None,
                Value::String(s) => Some((k.clone(), s.clone())),
                other => Some((k.clone(), other.to_string())),
            })
            .collect();
        Ok(Event {
            id: required("id")?,
            tenant: tenant.to_string(),
            family: required("family")?,
            name: required("event_type")?,
            group: required("event_group")?,
            status: required("status")?,
            source: required("source")?,
            occurred_at: time("created_at")?,
            received_at: time("received_at")?,
            actor_type: required("actor_type")?,
            actor_id: text("actor_id"),
            user_id: map.get("user_id").and_then(Value::as_i64),
            resource_type: text("resource_type"),
            resource_id: text("resource_id"),
            session_id: text("session_id"),
            attributes,
            payload: map.get("event_payload").map_or_else(|| "{}".to_string(), Value::to_string),
        })
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::{lineage_bytes, Event, LineageStep};

    #[test]
    fn a_stored_event_reads_back_exactly_and_old_dead_letters_still_read() {
        let event = Event {
            id: "e1".into(),
            tenant: "acme".into(),
            family: "generic".into(),
            name: "login".into(),
            occurred_at: 1_700_000_000_000_001,
            user_id: Some(7),
            // Order kept; a key named like a core field stays an attribute.
            attributes: vec![("zeta".into(), "1".into()), ("status".into(), "x".into()), ("alpha".into(), "2".into())],
            payload: r#"{"b": 1,  "a": [2]}"#.into(),
            ..Event::default()
        };
        let stored = event.to_stored();
        assert_eq!(Event::from_stored("acme", &stored).unwrap(), event);
        // The row's space wins over what the text says.
        assert_eq!(Event::from_stored("other", &stored).unwrap().tenant, "other");
        // Written before: the listing's JSON form.
        let old = serde_json::json!({"id": "e2", "family": "iam", "created_at": "2023-11-14T22:13:20Z",
            "received_at": "2023-11-14T22:13:20Z", "actor_type": "user", "source": "s", "event_group": "g",
            "event_type": "account.created", "status": "ok", "event_payload": {"k": 1}});
        let read = Event::from_stored("acme", &old.to_string()).unwrap();
        assert_eq!(
            (read.name.as_str(), read.family.as_str(), read.tenant.as_str()),
            ("account.created", "iam", "acme")
        );
        assert!(Event::from_stored("acme", "not json").is_err());
    }

    #[test]
    fn a_lineages_bytes_are_its_json_length() {
        for steps in [0, 1, 3] {
            let lineage: Vec<LineageStep> = (0..steps)
                .map(|i| LineageStep {
                    plugin: format!("plugin-{i}"),
                    version: [1, 9, 10, 1234][i % 4],
                    sha256: "ab".repeat(32),
                })
                .collect();
            assert_eq!(lineage_bytes(&lineage), serde_json::to_string(&lineage).unwrap().len(), "{steps} steps");
        }
    }
}
