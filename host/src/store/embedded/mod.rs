//! The embedded backend, [`EventStore`]: one DuckDB file, playing every
//! role of [`crate::store`]'s seam.
//!
//! One writer thread owns the connection that writes (the Appender is neither
//! `Send` nor `Sync`); requests reach it through a bounded queue and are
//! committed in groups, and a request is acknowledged only after its group's
//! COMMIT returned. Reads use connections of their own on blocking threads.
//!
//! Analysts' SQL never runs here: `query.rs` runs it in a worker process
//! (`query_worker.rs`) over a snapshot holding only the caller's space
//! (`snapshot.rs`).

mod control;
mod query;
pub mod query_worker;
mod read;
mod retention;
mod roles;
mod schema;
mod snapshot;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use duckdb::Connection;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::{
    AnalystSlot, DeadLetterRow, EventFilter, EventPage, EventRow, EventWithRaw, ExportFile, IdempotencyRecord,
    InstalledPlugin, Letter, PluginLogRow, PluginVersion, QueryAnswer, QueryError, QueryFormat, QueryLimits, Quotas,
    Reservation, StoreError, TokenInfo, TokenRecord, WriteBatch,
};

pub use query::{QueryOptions, QUERY_VIEWS};

impl From<duckdb::Error> for StoreError {
    fn from(e: duckdb::Error) -> Self {
        // DuckDB's C API gives every error the same code; its message names
        // the kind first.
        // A checkpoint that could not pin a block is short of memory too.
        let message = e.to_string();
        if message.starts_with("Out of Memory Error") || message.contains("failed to pin block") {
            StoreError::OutOfMemory(message)
        } else {
            StoreError::Db(message)
        }
    }
}

type Job = Box<dyn FnOnce(&Connection) + Send>;

pub(crate) enum Command {
    Write { batch: WriteBatch, done: oneshot::Sender<Result<(), StoreError>> },
    Run(Job),
}

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Signs listing cursors.
    pub cursor_key: [u8; 32],
    /// DuckDB's `memory_limit`, e.g. `4GB`.
    pub memory_limit: String,
    /// DuckDB's `checkpoint_threshold`, e.g. `512MB`.
    pub checkpoint_threshold: String,
    /// WAL bytes beyond which the writer checkpoints when no write is
    /// waiting (0: never).
    pub idle_checkpoint_bytes: u64,
    /// DuckDB's `threads` (at least 1).
    pub threads: usize,
    /// Most write requests waiting for the writer; beyond it writes are
    /// refused with [`StoreError::Overloaded`] instead of growing memory.
    pub queue_depth: usize,
    /// How analysts' queries run (worker processes).
    pub query: QueryOptions,
    /// Where plugin components are kept.
    pub components_dir: PathBuf,
}

/// A cheap-to-clone handle to the store.
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: writer::Lanes,
    readers: Mutex<Vec<Connection>>,
    /// Per tenant (live and test space together), the reads of its
    /// listings, exports and lookups that may run at once.
    tenant_reads: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// A connection kept only to clone readers from.
    base: Mutex<Connection>,
    cursor_key: [u8; 32],
    /// The only directory DuckDB may write files to (exports).
    export_dir: PathBuf,
    /// Which sequence numbers are committed, by space (see
    /// `read::list_events`).
    sequencer: Arc<writer::Sequencer>,
    /// Admission, snapshots and workers of analysts' queries.
    query: query::QueryService,
    /// Where analysts' heavy reads run (snapshot copies, exports): as many
    /// threads as queries may run, at the query workers' nice 10.
    background: crate::sandbox::Threads,
    /// Bumped after every commit and control write: a snapshot refreshed at
    /// the current value needs no refresh.
    changes: std::sync::atomic::AtomicU64,
    /// What each space uses of its quotas, by space (see
    /// `EventStore::space_usage`).
    usage: Mutex<(HashMap<String, Usage>, HashMap<String, Pending>)>,
    /// Write requests waiting for the writer, by tenant: one tenant may
    /// hold at most a quarter of the queue, so its backlog cannot leave
    /// everyone else a full queue (503).
    waiting: Arc<Mutex<HashMap<String, usize>>>,
    tenant_queue_depth: usize,
    /// Idempotency keys claimed by requests running now.
    claimed: roles::Claimed,
    components_dir: PathBuf,
}

impl Inner {
    /// Run `f` on a pooled reader connection (a new clone when none is
    /// free), on the calling thread.
    fn on_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = match self.readers.lock().pop() {
            Some(conn) => conn,
            None => self.base.lock().try_clone()?,
        };
        let result = f(&conn);
        self.readers.lock().push(conn);
        result
    }
}

/// The parameters of `tenant = ? AND key IN (?, ...)`.
fn tenant_and<'a>(tenant: &'a String, keys: &'a [String]) -> Vec<&'a dyn duckdb::ToSql> {
    std::iter::once(tenant as &dyn duckdb::ToSql).chain(keys.iter().map(|k| k as &dyn duckdb::ToSql)).collect()
}

/// How many of `sizes` (key, bytes), in reading order, fit in `budget`
/// bytes: at least one, so a page or a copy step always moves on. Reads
/// that hold whole pages or steps (listings, exports, snapshot catch-ups)
/// size their rows first with it, so what they hold is bounded in bytes,
/// not only in rows.
fn fitting(sizes: &[(i64, i64)], budget: i64) -> usize {
    let mut total: i64 = 0;
    sizes
        .iter()
        .position(|&(_, bytes)| {
            total = total.saturating_add(bytes);
            total > budget
        })
        .map_or(sizes.len(), |over| over.max(1))
}

/// A write request's place in its tenant's share of the queue.
struct Waiting {
    tenant: String,
    waiting: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut waiting = self.waiting.lock();
        if let Some(n) = waiting.get_mut(&self.tenant) {
            *n -= 1;
            crate::metrics::write_queue(&self.tenant, *n);
            if *n == 0 {
                waiting.remove(&self.tenant);
            }
        }
    }
}

/// The tenant a batch writes for (its first row's space, test spaces
/// counting as their tenant).
fn batch_tenant(batch: &WriteBatch) -> Option<String> {
    let space = batch
        .events
        .first()
        .map(|e| &e.event.tenant)
        .or_else(|| batch.dead_letters.first().map(|d| &d.tenant))
        .or_else(|| batch.runs.first().map(|r| &r.tenant))
        .or_else(|| batch.logs.first().map(|l| &l.tenant))
        .or_else(|| batch.idempotency.first().map(|i| &i.tenant))?;
    Some(space.split(':').next().unwrap_or(space).to_string())
}

/// Reads of one tenant's listings, exports and lookups at once
/// ([`EventStore::read_as`]).
pub const TENANT_READS: usize = 2;

/// A space's quota use as of its last commit.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// The day counted (its midnight UTC, in microseconds).
    midnight: i64,
    /// Events received since then.
    today: i64,
    /// Bytes of payloads and raw inputs stored.
    bytes: i64,
}

/// What runs that passed their quota check will store, until their commit
/// counts it as used (or they are dropped): concurrent requests see each
/// other's, so a quota is overshot by at most the one request that crossed
/// it (RELIABILITY.md, F20).
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    events: i64,
    bytes: i64,
}

/// What a [`Reservation`] holds here ([`EventStore::reserve_usage`]):
/// turned into use by the commit under the same lock, released if the
/// batch is dropped uncommitted.
struct Held {
    store: Arc<Inner>,
    space: String,
    pending: Pending,
}

impl Held {
    fn release(&mut self, pending: &mut HashMap<String, Pending>) {
        if let Some(p) = pending.get_mut(&self.space) {
            p.events = (p.events - self.pending.events).max(0);
            p.bytes = (p.bytes - self.pending.bytes).max(0);
            if p.events == 0 && p.bytes == 0 {
                pending.remove(&self.space);
            }
        }
        self.pending = Pending::default();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Released already by its commit (which holds the lock meanwhile).
        if self.pending.events == 0 && self.pending.bytes == 0 {
            return;
        }
        let store = self.store.clone();
        let mut usage = store.usage.lock();
        self.release(&mut usage.1);
    }
}

/// Refuse a size setting that is not like `512MB`.
fn check_size(name: &str, value: &str) -> Result<(), StoreError> {
    let size = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &value[size.len()..];
    let units = ["", "B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"];
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) || !units.contains(&unit) {
        return Err(StoreError::Config(format!("{name} {value:?} is not a size like 512MB")));
    }
    Ok(())
}

impl EventStore {
    /// Open (or create) the database file, run migrations and start the
    /// writer thread.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or migrated.
    pub fn open(path: &Path, options: StoreOptions) -> Result<EventStore, StoreError> {
        let StoreOptions {
            cursor_key,
            memory_limit,
            checkpoint_threshold,
            idle_checkpoint_bytes,
            threads,
            queue_depth,
            query,
            components_dir,
        } = options;
        check_size("memory limit", &memory_limit)?;
        check_size("checkpoint threshold", &checkpoint_threshold)?;
        let threads = threads.max(1);
        let dir = path.parent().unwrap_or(Path::new("."));
        let query = query::QueryService::new(query, dir)?;
        let export_dir = std::path::absolute(dir.join("exports"))?;
        std::fs::create_dir_all(&export_dir)?;
        // Left-overs of exports interrupted by a crash.
        for entry in std::fs::read_dir(&export_dir)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let conn = Connection::open(path)?;
        schema::migrate(&conn)?;
        // A large checkpoint threshold: each checkpoint recompresses the
        // last, partly filled row group, so frequent small checkpoints cost
        // more than they save (measured: BENCHMARKS.md). Recovery replays at
        // most this much WAL.
        // Analysts' SQL never runs here (query workers read snapshots); as
        // a second wall, this database reaches no file but its own and the
        // export directory, loads no extension, and no statement can change
        // these settings.
        let allowed = format!("{}/", export_dir.display()).replace('\'', "''");
        conn.execute_batch(&format!(
            "SET memory_limit = '{}'; \
             SET checkpoint_threshold = '{checkpoint_threshold}'; \
             SET threads = {threads}; \
             SET allowed_directories = ['{allowed}']; \
             SET enable_external_access = false; \
             SET autoinstall_known_extensions = false; \
             SET autoload_known_extensions = false; \
             SET lock_configuration = true;",
            memory_limit
        ))?;
        let idle_checkpoint = (idle_checkpoint_bytes > 0).then(|| {
            let mut wal = path.as_os_str().to_owned();
            wal.push(".wal");
            (PathBuf::from(wal), idle_checkpoint_bytes)
        });
        let (lanes, sequencer) = writer::spawn(&conn, queue_depth, idle_checkpoint)?;
        let background = crate::sandbox::Threads::start("sluice-analyst", query.options.max_concurrent, 10, true)?;
        Ok(EventStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: lanes,
                readers: Mutex::new(Vec::new()),
                tenant_reads: Mutex::new(HashMap::new()),
                base: Mutex::new(conn),
                cursor_key,
                export_dir,
                sequencer,
                query,
                background,
                changes: std::sync::atomic::AtomicU64::new(0),
                usage: Mutex::new((HashMap::new(), HashMap::new())),
                waiting: Arc::new(Mutex::new(HashMap::new())),
                tenant_queue_depth: (queue_depth / 4).max(1),
                claimed: roles::Claimed::default(),
                components_dir,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Commit a batch durably. Returns once it is committed (group commit).
    ///
    /// # Errors
    ///
    /// [`StoreError::Overloaded`] when the queue is full (nothing written),
    /// [`StoreError::Busy`] when the batch's tenant holds its share of the
    /// queue (a quarter) already, or the database error that rolled the batch
    /// back.
    pub async fn commit(&self, mut batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let _place = match batch_tenant(&batch) {
            Some(tenant) => Some(self.take_place(tenant)?),
            None => None,
        };
        // What the batch adds to its spaces' quota use, counted before the
        // writer takes it and applied once it is committed.
        let mut added: Vec<(String, i64, i64)> = Vec::new();
        for stored in &batch.events {
            let bytes = stored.stored_bytes() as i64;
            match added.iter_mut().find(|(space, _, _)| *space == stored.event.tenant) {
                Some(entry) => {
                    entry.1 += 1;
                    entry.2 += bytes;
                }
                None => added.push((stored.event.tenant.clone(), 1, bytes)),
            }
        }
        let reservation = batch.reservation.take().and_then(Reservation::into_inner::<Held>);
        let claims = std::mem::take(&mut batch.claims);
        let (done, wait) = oneshot::channel();
        let lane = if batch.rows() > writer::BULK_ROWS { &self.inner.writer.bulk } else { &self.inner.writer.main };
        lane.try_send(Command::Write { batch, done }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                crate::metrics::overloaded();
                StoreError::Overloaded
            }
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })?;
        // Awaited on a task of its own: a caller that goes away (its client
        // left) does not stop the writer, so the commit's use must still be
        // counted, and its place and reservation held until then.
        let inner = self.inner.clone();
        let settled = tokio::spawn(async move {
            let committed = wait.await.map_err(|_| StoreError::Closed)?;
            inner.changes.fetch_add(1, Ordering::AcqRel);
            if committed.is_ok() && (!added.is_empty() || reservation.is_some()) {
                let midnight = retention::midnight_micros();
                let mut usage = inner.usage.lock();
                let (used, pending) = &mut *usage;
                for (space, events, bytes) in added {
                    if let Some(u) = used.get_mut(&space).filter(|u| u.midnight == midnight) {
                        u.today += events;
                        u.bytes += bytes;
                    }
                }
                // Under the same lock: what was reserved is now used. (Its
                // drop then finds nothing left to release, and does not lock.)
                if let Some(mut reservation) = reservation {
                    reservation.release(pending);
                }
            }
            drop(_place);
            drop(claims);
            committed
        });
        settled.await.map_err(|_| StoreError::Closed)?
    }

    /// A place in the tenant's share of the write queue, or
    /// [`StoreError::Busy`] when its share is taken.
    fn take_place(&self, tenant: String) -> Result<Waiting, StoreError> {
        let mut waiting = self.inner.waiting.lock();
        let n = waiting.entry(tenant.clone()).or_insert(0);
        if *n >= self.inner.tenant_queue_depth {
            crate::metrics::throttled(&tenant, "write_queue");
            return Err(StoreError::Busy(format!(
                "{} writes of this tenant are waiting for the store; retry later",
                self.inner.tenant_queue_depth
            )));
        }
        *n += 1;
        crate::metrics::write_queue(&tenant, *n);
        Ok(Waiting { tenant, waiting: self.inner.waiting.clone() })
    }

    /// Run a control-plane write (tenants, tokens, plugin settings) on the
    /// main writer lane's connection, in order with that lane's writes
    /// (every write acknowledged before it was queued is committed).
    ///
    /// # Errors
    ///
    /// The closure's error, or [`StoreError::Closed`].
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> duckdb::Result<T> + Send + 'static,
    {
        self.write_on(&self.inner.writer.main, f).await
    }

    /// The same on the bulk lane, for long maintenance writes (retention
    /// sweeps), so they hold up no small write.
    pub(crate) async fn write_bulk<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> duckdb::Result<T> + Send + 'static,
    {
        self.write_on(&self.inner.writer.bulk, f).await
    }

    async fn write_on<T, F>(&self, lane: &mpsc::Sender<Command>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> duckdb::Result<T> + Send + 'static,
    {
        let (done, wait) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = done.send(f(conn));
        });
        lane.send(Command::Run(job)).await.map_err(|_| StoreError::Closed)?;
        let done = wait.await.map_err(|_| StoreError::Closed);
        self.inner.changes.fetch_add(1, Ordering::AcqRel);
        Ok(done??)
    }

    /// Run a read on a reader connection, on a blocking thread.
    ///
    /// # Errors
    ///
    /// The closure's error.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.on_reader(f)).await.map_err(|_| StoreError::Closed)?
    }

    /// A read for tenant space `space` (a listing page, an export page, a
    /// lookup): like [`EventStore::read`], but at most
    /// [`TENANT_READS`] of one tenant's run at once; more wait their turn,
    /// so a tenant asking for many large pages at once queues behind its
    /// own reads and holds no more of the cores (RELIABILITY.md, F17).
    ///
    /// # Errors
    ///
    /// The closure's error, or [`StoreError::Closed`] when the threads are
    /// gone.
    pub async fn read_as<T, F>(&self, space: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let owner = space.split(':').next().unwrap_or(space);
        let gate = self
            .inner
            .tenant_reads
            .lock()
            .entry(owner.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(TENANT_READS)))
            .clone();
        let _turn = gate.acquire_owned().await.map_err(|_| StoreError::Closed)?;
        self.read(f).await
    }

    /// A read for an analyst (a snapshot copy, an export) on the store's
    /// background threads, which yield the cores to ingest.
    ///
    /// # Errors
    ///
    /// The closure's error, or [`StoreError::Closed`] when the threads are
    /// gone.
    pub(crate) async fn read_in_background<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        self.inner.background.run(move || inner.on_reader(f)).await.map_err(|_| StoreError::Closed)?
    }

    /// The same reads, synchronously, for callers already on a blocking
    /// thread (startup).
    ///
    /// # Errors
    ///
    /// The closure's error.
    pub fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = self.inner.base.lock().try_clone()?;
        f(&conn)
    }

    /// A fresh file in the export directory, removed when the guard drops.
    pub(crate) fn export_file(&self, extension: &str) -> ExportFile {
        ExportFile(self.inner.export_dir.join(format!("{}.{extension}", uuid::Uuid::new_v4())))
    }

    /// The results remembered under these idempotency keys, by key. The
    /// lookup reads the indexed keys only; the answers (in a table of their
    /// own) are read for the keys found, which are retries.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn find_idempotent(
        &self,
        tenant: String,
        keys: Vec<String>,
    ) -> Result<HashMap<String, IdempotencyRecord>, StoreError> {
        self.read(move |conn| {
            let marks = vec!["?"; keys.len()].join(", ");
            let mut stmt = conn.prepare(&format!(
                "SELECT key, request_hash, status FROM idempotency_keys WHERE tenant = ? AND key IN ({marks})"
            ))?;
            let rows = stmt.query_map(tenant_and(&tenant, &keys).as_slice(), |row| {
                Ok(IdempotencyRecord {
                    tenant: tenant.clone(),
                    key: row.get(0)?,
                    request_hash: row.get(1)?,
                    status: row.get::<_, i32>(2)? as u16,
                    body: String::new(),
                })
            })?;
            let mut found = HashMap::new();
            for row in rows {
                let record = row?;
                found.insert(record.key.clone(), record);
            }
            if !found.is_empty() {
                let marks = vec!["?"; found.len()].join(", ");
                let mut stmt = conn.prepare(&format!(
                    "SELECT key, body FROM idempotency_answers WHERE tenant = ? AND key IN ({marks})"
                ))?;
                let keys: Vec<String> = found.keys().cloned().collect();
                let answers: Vec<(String, String)> = stmt
                    .query_map(tenant_and(&tenant, &keys).as_slice(), |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                for (key, body) in answers {
                    if let Some(record) = found.get_mut(&key) {
                        record.body = body;
                    }
                }
            }
            Ok(found)
        })
        .await
    }

    /// How many writes have finished (any table): a change detector.
    pub(crate) fn changes(&self) -> u64 {
        self.inner.changes.load(Ordering::Acquire)
    }

    /// Every sequence number of `space` at or below this is committed.
    pub(crate) fn committed_seq(&self, space: &str) -> i64 {
        self.inner.sequencer.committed(space)
    }

    pub(crate) fn cursor_key(&self) -> &[u8; 32] {
        &self.inner.cursor_key
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn out_of_memory_is_told_apart_from_other_database_errors() {
        let conn = duckdb::Connection::open_in_memory().unwrap();
        conn.execute_batch("SET memory_limit = '8MB'; SET threads = 1;").unwrap();
        let oom = conn
            .query_row("SELECT count(DISTINCT x::VARCHAR || repeat('y', 100)) FROM range(2000000) t(x)", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap_err();
        assert!(matches!(super::StoreError::from(oom), super::StoreError::OutOfMemory(_)));
        let other = conn.execute_batch("SELECT * FROM no_such_table").unwrap_err();
        assert!(matches!(super::StoreError::from(other), super::StoreError::Db(_)));
    }

    #[test]
    fn a_page_takes_the_rows_that_fit_and_always_one() {
        let sizes = [(1, 4), (2, 4), (3, 4)];
        assert_eq!(super::fitting(&sizes, 12), 3);
        assert_eq!(super::fitting(&sizes, 11), 2);
        assert_eq!(super::fitting(&sizes, 8), 2);
        assert_eq!(super::fitting(&sizes, 7), 1);
        // A first row larger than the budget is still taken alone.
        assert_eq!(super::fitting(&[(1, 100), (2, 1)], 10), 1);
        assert_eq!(super::fitting(&[], 10), 0);
        assert_eq!(super::fitting(&[(1, i64::MAX), (2, i64::MAX)], i64::MAX), 2);
    }
}
