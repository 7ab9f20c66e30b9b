//! Storage behind a narrow seam: the roles a backend plays, as traits,
//! and the backend that plays them today, [`embedded`] (one DuckDB file).
//! A shared-lake backend is a second implementation of the same traits.
//!
//! - [`EventLog`]: what ingest commits (events, dead letters, plugin logs
//!   and runs, remembered answers, in one transaction) and what listings,
//!   exports, shadow runs and replays read back, as typed rows with opaque
//!   cursors.
//! - [`ControlState`]: tenants, tokens, plugins and their versions,
//!   retention, quotas.
//! - [`Analytics`]: analysts' SQL over their own space, Parquet exports,
//!   and the slots they take.
//! - [`KeyClaims`]: idempotency keys claimed across everything that
//!   writes, and the answers remembered under them.
//! - [`UsageMeter`]: what each space uses of its quotas, with reservations
//!   that concurrent runs see.
//! - [`Components`]: plugin components, content-addressed (each host
//!   compiles and caches them itself).
//!
//! What a second host must share (sequence numbers, key claims, quota use,
//! components)
//! lives behind these traits, inside the backend; callers hold
//! `Arc<dyn Backend>` or one role.

pub mod embedded;
mod rows;

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::Value;

use crate::event::{DeadLetter, PluginLog, PluginRun, StoredEvent};

pub use embedded::{query_worker, EventStore, QueryOptions, StoreOptions, QUERY_VIEWS, TENANT_READS};
pub use rows::{
    DeadLetterRow, EventFilter, EventPage, EventRow, EventWithRaw, InstalledPlugin, Letter, PluginLogRow,
    PluginVersion, QueryAnswer, QueryError, QueryFormat, QueryLimits, QuotaUse, Quotas, TokenInfo, TokenRecord,
};

/// A file being written or read under the export directory; dropping the
/// guard removes it, so an export whose client left never stays on disk.
#[derive(Debug)]
pub struct ExportFile(PathBuf);

impl ExportFile {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ExportFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Everything one request writes; committed together or not at all.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub events: Vec<StoredEvent>,
    pub dead_letters: Vec<DeadLetter>,
    pub logs: Vec<PluginLog>,
    pub runs: Vec<PluginRun>,
    /// Dead letters (by `dead_letter_id`) that this batch replaces: deleted
    /// in the same transaction, so a replay happens exactly once.
    pub replayed: Vec<i64>,
    /// Results to remember under the request's `Idempotency-Key` and its
    /// events' own ids, committed with the events so a retry finds both or
    /// neither.
    pub idempotency: Vec<IdempotencyRecord>,
    /// The run's claim on its space's quotas, counted as use by the commit.
    pub reservation: Option<Reservation>,
    /// The request's claims on its keys: held until the commit has landed
    /// or failed, even when the caller stops waiting (a retry meanwhile
    /// would find the key neither claimed nor remembered).
    pub claims: Vec<KeyClaim>,
}

/// A response remembered under an `Idempotency-Key`.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub tenant: String,
    pub key: String,
    /// SHA-256 of the request (content type and body).
    pub request_hash: String,
    pub status: u16,
    pub body: String,
}

impl WriteBatch {
    /// Bytes of text the batch stores in its rows (what can be large; see
    /// [`StoredEvent::stored_bytes`]).
    pub fn stored_bytes(&self) -> usize {
        let events = self.events.iter().map(StoredEvent::stored_bytes);
        let letters = self.dead_letters.iter().map(crate::event::DeadLetter::stored_bytes);
        events.chain(letters).sum()
    }

    /// Bytes of the answers the batch remembers.
    pub fn remembered_bytes(&self) -> usize {
        self.idempotency.iter().map(|r| r.body.len()).sum()
    }

    /// Rows numbered by the sequence: events and dead letters.
    pub(crate) fn rows(&self) -> usize {
        self.events.len() + self.dead_letters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.dead_letters.is_empty()
            && self.logs.is_empty()
            && self.runs.is_empty()
            && self.replayed.is_empty()
            && self.idempotency.is_empty()
    }
}

/// A run's claim on its space's quotas ([`UsageMeter::reserve_usage`]):
/// carried by its batch, turned into use by the commit, released if the
/// batch is dropped uncommitted. What it holds is the backend's.
pub struct Reservation(Box<dyn Any + Send + Sync>);

impl Reservation {
    pub fn new(held: impl Any + Send + Sync) -> Reservation {
        Reservation(Box::new(held))
    }

    /// What the backend put in it, if it is a `T`.
    pub fn into_inner<T: Any>(self) -> Option<T> {
        self.0.downcast::<T>().ok().map(|held| *held)
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reservation")
    }
}

/// One of a space's analyst slots ([`Analytics::analyst_slot`]), given
/// back on drop.
pub struct AnalystSlot {
    _held: Box<dyn Any + Send + Sync>,
}

impl AnalystSlot {
    pub fn new(held: impl Any + Send + Sync) -> AnalystSlot {
        AnalystSlot { _held: Box::new(held) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is overloaded; retry later")]
    Overloaded,
    #[error("the store is shut down")]
    Closed,
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("database error: {0}")]
    Db(String),
    /// DuckDB ran out of its memory (`SLUICE_DUCKDB_MEMORY_LIMIT`) for this
    /// statement: the host's condition, not the request's (503, retryable).
    #[error("the store is short of memory; retry later ({0})")]
    OutOfMemory(String),
    #[error("invalid cursor")]
    BadCursor,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot encode rows: {0}")]
    Encode(String),
    /// The caller has as much analyst work running as it may (429).
    #[error("{0}")]
    Busy(String),
    /// The write lost to a concurrent one (409): e.g. a dead letter
    /// replayed twice at once.
    #[error("{0}")]
    Conflict(String),
    /// A stored row that cannot be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// How an export writes one row (an NDJSON line, say).
pub type Encode = fn(EventRow, &mut String);

/// What ingest commits and what is read back of it. Every read is scoped
/// to one tenant space.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Commit a batch durably: all of it or nothing. Returns once it is
    /// committed.
    ///
    /// # Errors
    ///
    /// [`StoreError::Overloaded`] (nothing written), [`StoreError::Busy`]
    /// when the batch's tenant holds its share of the write queue,
    /// [`StoreError::Conflict`] when a replayed dead letter was taken by a
    /// concurrent replay, the error that rolled the batch back.
    async fn commit(&self, batch: WriteBatch) -> Result<(), StoreError>;

    /// One page of a space's events, newest first, after `cursor` (opaque,
    /// from the previous page, bound to the space and the filter).
    async fn list_events(
        &self,
        space: String,
        filter: EventFilter,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<EventPage, StoreError>;

    /// One event of a space by id.
    async fn get_event(&self, space: String, id: String) -> Result<Option<EventRow>, StoreError>;

    /// Up to `limit` of a space's events after position `after`, oldest
    /// first, each written by `encode`; with the position to continue
    /// after when more may follow.
    async fn export_page(
        &self,
        space: String,
        filter: EventFilter,
        after: i64,
        limit: usize,
        encode: Encode,
    ) -> Result<(String, Option<i64>), StoreError>;

    /// A space's last `n` stored events (newest first, bounded in bytes),
    /// each with the raw input it came from.
    async fn recent_with_raw(&self, space: String, n: usize) -> Result<Vec<EventWithRaw>, StoreError>;

    /// A space's dead letters, newest first (bounded in bytes).
    async fn list_dead_letters(&self, space: String, limit: usize) -> Result<Vec<DeadLetterRow>, StoreError>;

    /// Dead letters to replay, oldest first: the space's (up to `limit`),
    /// or those with the given ids (bounded in bytes).
    async fn dead_letters_for_replay(
        &self,
        space: String,
        ids: Option<Vec<i64>>,
        limit: usize,
    ) -> Result<Vec<Letter>, StoreError>;

    /// A tenant's plugin logs, newest first, optionally of one plugin.
    async fn list_plugin_logs(
        &self,
        tenant: String,
        plugin: Option<String>,
        limit: usize,
    ) -> Result<Vec<PluginLogRow>, StoreError>;

    /// Delete what is older than its tenant's retention period. Returns
    /// how many rows went.
    async fn sweep_expired(&self) -> Result<u64, StoreError>;
}

/// The control plane: tenants, tokens, plugins, retention, quotas.
#[async_trait]
pub trait ControlState: Send + Sync {
    /// Create a tenant if it does not exist; whether it was created.
    async fn create_tenant(&self, tenant: String) -> Result<bool, StoreError>;
    async fn tenant_exists(&self, tenant: String) -> Result<bool, StoreError>;
    /// Store a token under the hash of its secret.
    async fn put_token(&self, hash: String, record: TokenRecord) -> Result<(), StoreError>;
    /// The token in force with this hash.
    async fn find_token(&self, hash: String) -> Result<Option<TokenRecord>, StoreError>;
    async fn list_tokens(&self, tenant: String, mode: Option<String>) -> Result<Vec<TokenInfo>, StoreError>;
    /// Revoke one of the tenant's tokens; whether one was revoked.
    async fn revoke_token(&self, tenant: String, id: String, mode: Option<String>) -> Result<bool, StoreError>;
    /// Whether any token exists (startup).
    fn has_tokens(&self) -> Result<bool, StoreError>;
    /// The size of a tenant's component with this digest, 0 if it has none.
    async fn plugin_bytes(&self, tenant: String, sha256: String) -> Result<u64, StoreError>;
    /// Record an uploaded version: its number, and whether it is new.
    async fn add_plugin_version(
        &self,
        tenant: String,
        name: String,
        sha256: String,
        size: u64,
    ) -> Result<(u32, bool), StoreError>;
    async fn plugin_versions(&self, tenant: String, name: String) -> Result<Vec<PluginVersion>, StoreError>;
    /// Store a plugin's settings (JSON text, the pipeline's own).
    async fn save_plugin(&self, tenant: String, name: String, settings: String) -> Result<(), StoreError>;
    async fn delete_plugin(&self, tenant: String, name: String) -> Result<(), StoreError>;
    /// Every installed plugin (startup).
    fn load_plugins(&self) -> Result<Vec<InstalledPlugin>, StoreError>;
    async fn set_retention(&self, tenant: String, days: Option<u32>) -> Result<(), StoreError>;
    async fn retention(&self, tenant: String) -> Result<Option<u32>, StoreError>;
    async fn set_quotas(&self, tenant: String, quotas: Quotas) -> Result<(), StoreError>;
    /// Every tenant's quotas (startup).
    fn load_quotas(&self) -> Result<Vec<(String, Quotas)>, StoreError>;
    /// A tenant's quotas with what `space` uses of them (events today,
    /// bytes stored).
    async fn quota_usage(&self, tenant: String, space: String) -> Result<(Quotas, i64, i64), StoreError>;
}

/// Analysts' work: SQL over their own space and exports, within the
/// space's analyst slots.
#[async_trait]
pub trait Analytics: Send + Sync {
    /// One of the space's analyst slots, held by a long read (an NDJSON
    /// export) for as long as it runs.
    fn analyst_slot(&self, space: &str) -> Result<AnalystSlot, StoreError>;
    /// A space's events in a Parquet file, removed when the guard drops.
    async fn export_parquet(&self, space: String, filter: EventFilter) -> Result<ExportFile, StoreError>;
    /// Run one read-only SELECT over the space's own rows.
    async fn query(
        &self,
        space: String,
        sql: String,
        params: Vec<Value>,
        format: QueryFormat,
        limits: QueryLimits,
    ) -> Result<QueryAnswer, QueryError>;
    /// Bring what queries read up to date; how many spaces were refreshed.
    async fn refresh_query_snapshots(&self) -> Result<usize, StoreError>;
}

/// Idempotency keys: claimed while a request runs (one claim across
/// everything that writes), remembered with its commit
/// ([`WriteBatch::idempotency`]).
#[async_trait]
pub trait KeyClaims: Send + Sync {
    /// Claim every key of `space`, or none of them (`None`: one is claimed
    /// by a request running now). The claim ends when the guard drops.
    fn claim(&self, space: &str, keys: &[String]) -> Option<KeyClaim>;
    /// The answers remembered under these keys of `space`, by key.
    async fn find_idempotent(
        &self,
        space: String,
        keys: Vec<String>,
    ) -> Result<HashMap<String, IdempotencyRecord>, StoreError>;
}

/// A request's claim on its keys ([`KeyClaims::claim`]), released on drop.
pub struct KeyClaim {
    _held: Box<dyn Any + Send + Sync>,
}

impl KeyClaim {
    pub fn new(held: impl Any + Send + Sync) -> KeyClaim {
        KeyClaim { _held: Box::new(held) }
    }
}

impl std::fmt::Debug for KeyClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyClaim")
    }
}

/// What each space uses of its quotas.
#[async_trait]
pub trait UsageMeter: Send + Sync {
    /// A space's events received today (UTC) and bytes stored, with what
    /// runs that passed their quota check are about to store.
    async fn space_usage(&self, space: String) -> Result<(i64, i64), StoreError>;
    /// Reserve `events` and `bytes` for a run if `quotas` admit what the
    /// space uses now, checked and reserved at once; `Err` with the use
    /// when refused.
    async fn reserve_usage(
        &self,
        space: String,
        events: i64,
        bytes: i64,
        quotas: Quotas,
    ) -> Result<Result<Reservation, (i64, i64)>, StoreError>;
}

/// Plugin components, kept by their SHA-256 where every host can fetch
/// them. Called on blocking threads.
pub trait Components: Send + Sync {
    /// Keep a component's bytes under their digest (again: no change).
    fn put_component(&self, sha256: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// The bytes kept under a digest.
    fn component(&self, sha256: &str) -> Result<Vec<u8>, StoreError>;
}

/// Every role of one backend. `Arc<dyn Backend>` coerces to each role.
pub trait Backend: EventLog + ControlState + Analytics + KeyClaims + UsageMeter + Components {}

impl<T: EventLog + ControlState + Analytics + KeyClaims + UsageMeter + Components> Backend for T {}
