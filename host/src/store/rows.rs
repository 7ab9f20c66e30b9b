//! What the storage roles take and give back: typed rows and values, no
//! JSON shaped for an API and no backend type. The API shapes them
//! (`api/views.rs`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::StoreError;

/// Filters of `GET /v1/audit/events`. `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_group: Option<String>,
    pub event_type: Option<String>,
    pub status: Option<String>,
    pub user_id: Option<i64>,
    pub vm_id: Option<String>,
    pub session_id: Option<String>,
    pub family: Option<String>,
    /// Inclusive lower bound on `created_at`, microseconds.
    pub from: Option<i64>,
    /// Exclusive upper bound on `created_at`, microseconds.
    pub to: Option<i64>,
}

/// One page of events, newest first.
#[derive(Debug)]
pub struct EventPage {
    pub items: Vec<EventRow>,
    /// Opaque to callers; continues this listing. `None` on the last page.
    pub next_cursor: Option<String>,
}

/// One stored event as listings read it: the events table's columns of the
/// listing document, typed as stored. Times are microseconds since the
/// epoch; `event_payload` and `lineage` are the JSON text stored. The API
/// shapes it (`api/views.rs`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventRow {
    pub id: String,
    pub family: String,
    pub created_at: i64,
    pub received_at: i64,
    pub user_id: Option<i64>,
    pub actor_type: Option<String>,
    pub actor_id: Option<String>,
    pub source: Option<String>,
    pub event_group: Option<String>,
    pub event_type: Option<String>,
    pub status: Option<String>,
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
    pub event_payload: Option<String>,
    pub error_message: Option<String>,
    pub lineage: Option<String>,
}

/// A stored event with the raw input it came from (the material of a
/// shadow run).
#[derive(Debug, Clone)]
pub struct EventWithRaw {
    pub row: EventRow,
    pub raw: crate::event::Raw,
}

/// A dead letter as listed: its event as stored, why and where it failed.
#[derive(Debug, Clone)]
pub struct DeadLetterRow {
    /// Its `dead_letter_id`, what a replay names.
    pub dead_letter_id: i64,
    pub id: String,
    pub family: String,
    pub received_at: i64,
    pub plugin: String,
    pub plugin_version: u32,
    pub reason: String,
    /// The event as it entered the failing plugin.
    pub event: crate::event::Event,
    /// The client's raw input (JSON text).
    pub raw: String,
}

/// A line a plugin logged.
#[derive(Debug, Clone)]
pub struct PluginLogRow {
    pub plugin: String,
    pub plugin_version: u32,
    pub at: i64,
    pub level: String,
    pub message: String,
    /// Its fields as a JSON object (text).
    pub fields: Option<String>,
}

/// A dead letter to replay: its `dead_letter_id`, its event and the raw
/// input it came from.
#[derive(Debug, Clone)]
pub struct Letter {
    pub id: i64,
    pub event: crate::event::Event,
    pub raw: crate::event::Raw,
}

/// A stored token: who it belongs to and what it may do.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub tenant: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// `live`, or `test` for test-mode tokens.
    pub mode: String,
}

/// A token as listed: never its secret. Times in microseconds.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// The first 16 hex digits of the secret's SHA-256.
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub mode: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// An installed plugin: its tenant, its name and its settings (JSON text,
/// the pipeline's own).
#[derive(Debug, Clone)]
pub struct InstalledPlugin {
    pub tenant: String,
    pub name: String,
    pub settings: String,
}

/// One uploaded version of a plugin (`uploaded_at` in microseconds).
#[derive(Debug, Clone)]
pub struct PluginVersion {
    pub version: u32,
    pub sha256: String,
    pub size: u64,
    pub uploaded_at: i64,
}

/// A tenant's quotas; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    #[schema(minimum = 0)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    pub events_per_day: Option<i64>,
    #[schema(minimum = 0)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    pub storage_bytes: Option<i64>,
    /// Sustained ingest rate in events per second (`None`: the server's
    /// default, `SLUICE_TENANT_EVENTS_PER_SEC`).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    pub events_per_second: Option<i64>,
    /// Events at once before the rate applies (`None`: the server's
    /// default, `SLUICE_TENANT_EVENTS_BURST`).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    pub events_burst: Option<i64>,
    /// Plugin CPU time per second, in milliseconds, all the tenant's
    /// plugins together (`None`: the server's default,
    /// `SLUICE_TENANT_PLUGIN_MS_PER_SEC`; twice it at once).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    pub plugin_ms_per_second: Option<i64>,
    /// Bytes its runs may store per second, four times that at once
    /// (`None`: the server's default, `SLUICE_TENANT_BYTES_PER_SEC`).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    pub bytes_per_second: Option<i64>,
}

/// One quota a space has, and what it uses of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUse {
    pub metric: &'static str,
    pub used: i64,
    pub limit: i64,
}

impl Quotas {
    /// The quotas that are set with their use (`today` events received,
    /// `bytes` stored), and the first one used up, if any.
    pub fn exceeded(&self, today: i64, bytes: i64) -> (Vec<QuotaUse>, Option<&'static str>) {
        let set: Vec<QuotaUse> =
            [("events_per_day", today, self.events_per_day), ("storage_bytes", bytes, self.storage_bytes)]
                .into_iter()
                .filter_map(|(metric, used, limit)| limit.map(|limit| QuotaUse { metric, used, limit }))
                .collect();
        let first = set.iter().find(|q| q.used >= q.limit).map(|q| q.metric);
        (set, first)
    }
}

/// Why a query was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the query ran longer than {0:?} and was stopped")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
    /// The answer would be larger than the byte cap (Parquet only; JSON and
    /// CSV are cut and marked truncated).
    #[error("{0}")]
    TooLarge(String),
    /// Too many queries running: retry later.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Limits of one query.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct QueryLimits {
    pub timeout: Duration,
    /// Most rows of a JSON or CSV answer.
    pub max_rows: usize,
    /// Most bytes of an answer in any format.
    pub max_bytes: usize,
}

/// The format of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryFormat {
    Json,
    Csv,
    Parquet,
}

impl QueryFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            QueryFormat::Json => "application/json",
            QueryFormat::Csv => "text/csv; charset=utf-8",
            QueryFormat::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// A finished answer, already encoded in its format and within the byte cap.
#[derive(Debug)]
pub struct QueryAnswer {
    pub format: QueryFormat,
    pub body: Vec<u8>,
    /// Whether the row or byte cap cut the result.
    pub truncated: bool,
}
