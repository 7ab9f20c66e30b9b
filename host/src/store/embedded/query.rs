//! Analysts' SQL: one read-only SELECT over the caller's own data, run in a
//! worker process that holds nothing else.
//!
//! Isolation does not rest on the checker. The server keeps, per tenant
//! space, a snapshot file with only that space's rows (`snapshot.rs`,
//! brought up to date by server-written SQL before each query), and starts a
//! `sluice query-worker` process that opens that file read-only, turns off
//! every file and extension access, locks its configuration, and only then
//! runs the caller's text, exactly as written. Even a perfect escape from
//! the checker reaches the caller's own rows and nothing else: no other
//! tenant's rows, no control tables, no file. The OS bounds the worker's
//! memory (RLIMIT_AS) as well as DuckDB does, the server kills it at the
//! deadline, and bounds how many run at once, overall and per tenant.
//!
//! The parser check stays as the first line, for clear error messages: the
//! text is parsed with DuckDB's own parser (`json_serialize_sql`), must be a
//! single SELECT naming only the views `events`, `dead_letters`,
//! `plugin_runs` and `plugin_logs` (or its own CTEs, in scope), and calls no
//! table function or function that reveals state.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use duckdb::Connection;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{EventStore, QueryAnswer, QueryError, QueryFormat, QueryLimits, StoreError};

/// The views a query may read.
pub const QUERY_VIEWS: [&str; 4] = ["events", "dead_letters", "plugin_runs", "plugin_logs"];

/// Functions refused in queries: they read settings or the environment,
/// change session state, or run SQL text of their own.
const DENIED_FUNCTIONS: [&str; 16] = [
    "getenv",
    "current_setting",
    "setseed",
    "nextval",
    "currval",
    "current_database",
    "current_catalog",
    "current_schema",
    "current_schemas",
    "current_user",
    "session_user",
    "user",
    "json_serialize_sql",
    "json_deserialize_sql",
    "json_execute_serialized_sql",
    "current_query",
];
const DENIED_PREFIXES: [&str; 6] = ["read_", "duckdb_", "pragma_", "sqlite_", "parquet_", "glob"];

/// How the server runs query workers.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// The program started as `PROGRAM query-worker`.
    pub worker_program: PathBuf,
    /// DuckDB `memory_limit` inside a worker, e.g. `1GB`.
    pub memory_limit: String,
    /// Most queries running at once, all tenants.
    pub max_concurrent: usize,
    /// Most queries running at once for one tenant.
    pub max_concurrent_per_tenant: usize,
}

/// What the server hands a worker on its stdin.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerJob {
    /// The tenant space's snapshot, opened read-only.
    pub snapshot: PathBuf,
    /// The worker's own empty directory (spill files, the Parquet answer).
    pub scratch: PathBuf,
    pub memory_limit: String,
    /// Address-space cap of the worker process, in bytes.
    pub address_space: u64,
    pub sql: String,
    pub params: Vec<Value>,
    pub format: QueryFormat,
    pub limits: QueryLimits,
}

/// The first line a worker writes on stdout; the answer's bytes follow.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub(crate) enum WorkerReply {
    /// `confined`: whether the kernel enforces the worker's file and network
    /// confinement (Landlock); false on kernels without it.
    Ok {
        truncated: bool,
        confined: bool,
    },
    Invalid {
        message: String,
    },
    Failed {
        message: String,
    },
    TooLarge {
        message: String,
    },
}

/// Admission and per-space state of the query path.
pub(crate) struct QueryService {
    pub options: QueryOptions,
    /// Parses query text; holds no data (the check never runs the text).
    parser: parking_lot::Mutex<Connection>,
    overall: Arc<Semaphore>,
    tenants: parking_lot::Mutex<HashMap<String, Arc<Semaphore>>>,
    /// One lock per space: refreshing its snapshot excludes the workers
    /// reading it (DuckDB allows one writer or many read-only openers).
    snapshots: parking_lot::Mutex<HashMap<String, Space>>,
    pub snapshot_dir: PathBuf,
    pub scratch_dir: PathBuf,
}

impl QueryService {
    pub fn new(options: QueryOptions, data_dir: &std::path::Path) -> Result<QueryService, StoreError> {
        super::check_size("query memory limit", &options.memory_limit)?;
        let snapshot_dir = std::path::absolute(data_dir.join("query"))?;
        let scratch_dir = std::path::absolute(data_dir.join("query-scratch"))?;
        std::fs::create_dir_all(&snapshot_dir)?;
        // Left-overs of workers interrupted by a crash.
        let _ = std::fs::remove_dir_all(&scratch_dir);
        std::fs::create_dir_all(&scratch_dir)?;
        Ok(QueryService {
            overall: Arc::new(Semaphore::new(options.max_concurrent.max(1))),
            options,
            parser: parking_lot::Mutex::new(Connection::open_in_memory()?),
            tenants: parking_lot::Mutex::new(HashMap::new()),
            snapshots: parking_lot::Mutex::new(HashMap::new()),
            snapshot_dir,
            scratch_dir,
        })
    }

    /// Admit one more query of `space`, or say why not. The per-tenant bound
    /// counts the tenant's live and test spaces together (`acme:test` is
    /// `acme`), so one tenant cannot take every slot through both.
    pub(super) fn admit(&self, space: &str) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), QueryError> {
        let owner = space.split(':').next().unwrap_or(space);
        let tenant = self
            .tenants
            .lock()
            .entry(owner.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.options.max_concurrent_per_tenant.max(1))))
            .clone();
        let mine = tenant.try_acquire_owned().map_err(|_| {
            crate::metrics::throttled(owner, "analyst_slots");
            QueryError::Busy(format!(
                "{} queries or exports of this tenant are already running; retry later",
                self.options.max_concurrent_per_tenant.max(1)
            ))
        })?;
        let all = self.overall.clone().try_acquire_owned().map_err(|_| {
            crate::metrics::throttled(owner, "analyst_slots");
            QueryError::Busy("the server is running as many queries and exports as it allows; retry later".into())
        })?;
        Ok((mine, all))
    }

    /// The space's snapshot lock; marks the space as queried now.
    fn snapshot_lock(&self, space: &str) -> Arc<tokio::sync::RwLock<Fresh>> {
        let mut spaces = self.snapshots.lock();
        let entry = spaces
            .entry(space.to_string())
            .or_insert_with(|| Space { lock: Arc::default(), queried: std::time::Instant::now() });
        entry.queried = std::time::Instant::now();
        entry.lock.clone()
    }

    /// The snapshot file of a space (the name is the space's hex, so no
    /// space can name another's file).
    fn snapshot_path(&self, space: &str) -> PathBuf {
        self.snapshot_dir.join(format!("{}.duckdb", hex::encode(space)))
    }

    /// The worker's address-space cap: twice DuckDB's limit plus 1 GiB for
    /// the binary, thread stacks and what DuckDB does not count (lists,
    /// strings being built).
    fn address_space(&self) -> u64 {
        size_bytes(&self.options.memory_limit).saturating_mul(2).saturating_add(1 << 30)
    }
}

/// A space whose snapshot exists: its lock, and when it was last queried
/// (the background refresh keeps only recently queried spaces current).
struct Space {
    lock: Arc<tokio::sync::RwLock<Fresh>>,
    queried: std::time::Instant,
}

/// Spaces queried within this long are kept current in the background.
const KEEP_FRESH: Duration = Duration::from_secs(3600);

/// What a snapshot is known to hold: the views refreshed when the store's
/// change counter had this value (nothing written since means nothing to
/// copy).
#[derive(Debug, Default)]
pub(crate) struct Fresh {
    changes: Option<u64>,
    views: BTreeSet<&'static str>,
    /// How far the tables without a sequence were copied; locked by the
    /// refresh for as long as it writes the file, so that a refresh whose
    /// caller went away (releasing the lock above) still excludes the next
    /// one, and its marks are kept.
    file: Arc<parking_lot::Mutex<super::snapshot::Marks>>,
    /// The background refreshes that failed in a row, and when the last
    /// did: the next waits twice as long each time (RELIABILITY.md, F49:
    /// a snapshot that could not be built was retried every few seconds
    /// for an hour, at a core's worth of CPU).
    failed: Option<(u32, std::time::Instant)>,
}

/// The longest a failed background refresh waits before it is tried again.
const MOST_BACKOFF: Duration = Duration::from_secs(600);

impl Fresh {
    fn covers(&self, changes: u64, views: &BTreeSet<&'static str>) -> bool {
        self.changes == Some(changes) && views.is_subset(&self.views)
    }

    /// Whether the background refresh waits still after failures.
    fn backing_off(&self) -> bool {
        self.failed.is_some_and(|(n, at)| {
            let wait = Duration::from_secs(5).saturating_mul(1 << n.min(10)).min(MOST_BACKOFF);
            at.elapsed() < wait
        })
    }
}

/// `512MB`, `1GiB`, ... in bytes (the text was checked by `check_size`).
fn size_bytes(text: &str) -> u64 {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().unwrap_or(0);
    let unit = match &text[digits.len()..] {
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => 1,
    };
    n.saturating_mul(unit)
}

fn refuse(msg: impl Into<String>) -> QueryError {
    QueryError::Refused(msg.into())
}

/// Walk the parse tree and refuse anything outside the allowed surface;
/// collect the views the query reads. `scope` holds the CTE names visible
/// here: a CTE is visible in the body of its query and in the CTEs defined
/// after it, never in its own body unless it is recursive.
fn check_node(node: &Value, scope: &[String], views: &mut BTreeSet<&'static str>) -> Result<(), QueryError> {
    match node {
        Value::Array(items) => items.iter().try_for_each(|n| check_node(n, scope, views)),
        Value::Object(map) => {
            match map.get("type").and_then(Value::as_str) {
                Some("TABLE_FUNCTION") => {
                    let name =
                        map.get("function").and_then(|f| f.get("function_name")).and_then(Value::as_str).unwrap_or("?");
                    return Err(refuse(format!("table functions are not allowed ({name})")));
                }
                // SHOW, DESCRIBE and SUMMARIZE read the catalog.
                Some(kind @ ("SHOW_REF" | "COLUMN_DATA" | "DELIM_GET")) => {
                    return Err(refuse(format!("{} is not allowed", kind.to_lowercase().replace('_', " "))));
                }
                Some("BASE_TABLE") => {
                    let qualified = ["schema_name", "catalog_name"]
                        .iter()
                        .any(|k| map.get(*k).and_then(Value::as_str).is_some_and(|s| !s.is_empty()));
                    let table = map.get("table_name").and_then(Value::as_str).unwrap_or("").to_lowercase();
                    if qualified {
                        return Err(refuse(format!("qualified table names are not allowed ({table})")));
                    }
                    if !scope.contains(&table) {
                        match QUERY_VIEWS.iter().find(|v| **v == table) {
                            Some(view) => {
                                views.insert(view);
                            }
                            None => {
                                return Err(refuse(format!(
                                    "table {table} is not available; query one of {}",
                                    QUERY_VIEWS.join(", ")
                                )))
                            }
                        }
                    }
                }
                _ => {}
            }
            if map.get("class").and_then(Value::as_str) == Some("FUNCTION") {
                let name = map.get("function_name").and_then(Value::as_str).unwrap_or("").to_lowercase();
                let qualified = ["schema", "catalog"]
                    .iter()
                    .any(|k| map.get(*k).and_then(Value::as_str).is_some_and(|s| !s.is_empty()));
                if qualified
                    || DENIED_FUNCTIONS.contains(&name.as_str())
                    || DENIED_PREFIXES.iter().any(|p| name.starts_with(p))
                {
                    return Err(refuse(format!("function {name} is not allowed")));
                }
            }
            let ctes = map.get("cte_map").and_then(|c| c.get("map")).and_then(Value::as_array);
            let mut inner: Vec<String> = scope.to_vec();
            if let Some(entries) = ctes {
                for entry in entries {
                    let name = entry.get("key").and_then(Value::as_str).unwrap_or("").to_lowercase();
                    let body = entry.get("value").unwrap_or(&Value::Null);
                    let recursive = body
                        .get("query")
                        .and_then(|q| q.get("node"))
                        .and_then(|n| n.get("type"))
                        .and_then(Value::as_str)
                        == Some("RECURSIVE_CTE_NODE");
                    if recursive {
                        inner.push(name);
                        check_node(body, &inner, views)?;
                    } else {
                        check_node(body, &inner, views)?;
                        inner.push(name);
                    }
                }
            }
            map.iter().filter(|(k, _)| k.as_str() != "cte_map").try_for_each(|(_, n)| check_node(n, &inner, views))
        }
        _ => Ok(()),
    }
}

/// Check `sql` with DuckDB's parser. Returns the text to run (trailing
/// semicolons removed) and the views it reads.
fn check(conn: &Connection, sql: &str) -> Result<(String, BTreeSet<&'static str>), QueryError> {
    let text = sql.trim().trim_end_matches(|c: char| c == ';' || c.is_whitespace()).to_string();
    if text.is_empty() {
        return Err(QueryError::Invalid("the query is empty".into()));
    }
    let tree: String = conn
        .query_row("SELECT json_serialize_sql(?::VARCHAR)", [&text], |row| row.get(0))
        .map_err(|e| QueryError::Invalid(e.to_string()))?;
    let tree: Value = serde_json::from_str(&tree).map_err(|e| QueryError::Failed(e.to_string()))?;
    if tree["error"].as_bool() == Some(true) {
        let message = tree["error_message"].as_str().unwrap_or("invalid query");
        if message.contains("Only SELECT statements") {
            return Err(refuse("only a single SELECT statement is allowed"));
        }
        return Err(QueryError::Invalid(message.to_string()));
    }
    let statements = tree["statements"].as_array().map_or(0, Vec::len);
    if statements != 1 {
        return Err(refuse(format!("exactly one statement is allowed, found {statements}")));
    }
    let mut views = BTreeSet::new();
    check_node(&tree["statements"], &[], &mut views)?;
    Ok((text, views))
}

impl EventStore {
    /// Refresh the space's snapshot (its lock held for writing in `fresh`)
    /// unless it already holds `views` as of `changes`.
    async fn bring_up_to_date(
        &self,
        space: &str,
        fresh: &mut Fresh,
        changes: u64,
        views: &BTreeSet<&'static str>,
    ) -> Result<(), StoreError> {
        if fresh.covers(changes, views) {
            return Ok(());
        }
        let wanted: Vec<&'static str> = views.iter().copied().collect();
        let path = self.inner.query.snapshot_path(space);
        let (space, committed) = (space.to_string(), self.committed_seq(space));
        let file = fresh.file.clone();
        self.read_in_background(move |conn| {
            let mut marks = file.lock();
            super::snapshot::refresh(conn, &path, &space, &wanted, committed, &mut marks)
        })
        .await?;
        if fresh.changes != Some(changes) {
            fresh.views.clear();
        }
        fresh.changes = Some(changes);
        fresh.views.extend(views);
        Ok(())
    }

    /// Bring the snapshots of recently queried spaces up to date, so the
    /// next query after heavy ingest does not pay the whole catch-up. A
    /// space whose snapshot is being read is skipped (its next query
    /// refreshes it), and so is one whose last refreshes failed, for 10 s,
    /// 20 s, ... up to 10 minutes. Returns how many were refreshed.
    ///
    /// # Errors
    ///
    /// The first refresh that failed (the others are still tried).
    pub async fn refresh_query_snapshots(&self) -> Result<usize, StoreError> {
        let recent: Vec<(String, Arc<tokio::sync::RwLock<Fresh>>)> = self
            .inner
            .query
            .snapshots
            .lock()
            .iter()
            .filter(|(_, s)| s.queried.elapsed() < KEEP_FRESH)
            .map(|(space, s)| (space.clone(), s.lock.clone()))
            .collect();
        let (mut refreshed, mut first_error) = (0, None);
        for (space, lock) in recent {
            let changes = self.changes();
            let Ok(mut fresh) = lock.try_write_owned() else { continue };
            let views = fresh.views.clone();
            if views.is_empty() || fresh.covers(changes, &views) || fresh.backing_off() {
                continue;
            }
            match self.bring_up_to_date(&space, &mut fresh, changes, &views).await {
                Ok(()) => {
                    fresh.failed = None;
                    refreshed += 1;
                }
                Err(e) => {
                    let failures = fresh.failed.map_or(1, |(n, _)| n + 1);
                    fresh.failed = Some((failures, std::time::Instant::now()));
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(refreshed)
    }

    /// Check and run an analyst's query for the tenant space `space`, in a
    /// worker process that holds only that space's rows.
    ///
    /// # Errors
    ///
    /// [`QueryError::Refused`] naming what is not allowed,
    /// [`QueryError::Invalid`] for parse and bind errors,
    /// [`QueryError::Busy`] beyond the concurrency limits, timeouts,
    /// failures, [`QueryError::TooLarge`] for a Parquet answer over the cap.
    pub async fn query(
        &self,
        space: String,
        sql: String,
        params: Vec<Value>,
        format: QueryFormat,
        limits: QueryLimits,
    ) -> Result<QueryAnswer, QueryError> {
        let service = &self.inner.query;
        let (text, views) = check(&service.parser.lock(), &sql)?;
        let _permits = service.admit(&space)?;
        let lock = service.snapshot_lock(&space);
        let snapshot = service.snapshot_path(&space);
        let changes = self.changes();
        // Bring the snapshot up to date with server-written SQL unless
        // nothing was written since it was; the refresh waits for the
        // space's running workers (one writer or many read-only openers).
        let current = lock.clone().read_owned().await;
        let _reading = if current.covers(changes, &views) {
            current
        } else {
            drop(current);
            let mut refreshing = lock.write_owned().await;
            self.bring_up_to_date(&space, &mut refreshing, changes, &views).await?;
            refreshing.downgrade()
        };
        let scratch = Scratch::create(&service.scratch_dir)?;
        let job = WorkerJob {
            snapshot,
            scratch: scratch.0.clone(),
            memory_limit: service.options.memory_limit.clone(),
            address_space: service.address_space(),
            sql: text,
            params,
            format,
            limits,
        };
        run_worker(&service.options.worker_program, &job).await
    }
}

/// A worker's own directory, removed when the query ends however it ends
/// (also when its client goes away and the request is dropped).
struct Scratch(PathBuf);

impl Scratch {
    fn create(parent: &std::path::Path) -> Result<Scratch, StoreError> {
        let dir = parent.join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether the missing kernel confinement was logged already (once).
static UNCONFINED_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Start a worker for `job`, wait for its answer until the deadline, kill it
/// beyond.
async fn run_worker(program: &std::path::Path, job: &WorkerJob) -> Result<QueryAnswer, QueryError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| QueryError::Failed(format!("{what}: {e}"));
    let mut child = crate::sandbox::spawn_worker(program, "query-worker", &job.scratch)
        .map_err(|e| failed("cannot start the query worker", &e))?;
    let input = serde_json::to_vec(job).map_err(|e| failed("cannot encode the job", &e))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    // The worker caps its own answer; reading is capped too, so a worker
    // gone wrong cannot grow the server.
    let cap = (job.limits.max_bytes as u64).saturating_add(1 << 20);
    let exchange = async {
        stdin.write_all(&input).await?;
        drop(stdin);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut stdout = (&mut stdout).take(cap);
        let mut stderr = (&mut stderr).take(64 << 10);
        let (read_out, read_err) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        read_out?;
        read_err?;
        Ok::<_, std::io::Error>((out, err))
    };
    let deadline = tokio::time::Instant::now() + job.limits.timeout;
    let finished = match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok((out, err))) => match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(Ok(status)) => Some((status, out, err)),
            Ok(Err(e)) => return Err(failed("the query worker failed", &e)),
            Err(_) => None,
        },
        Ok(Err(e)) => return Err(failed("the query worker failed", &e)),
        Err(_) => None,
    };
    let Some((status, out, err)) = finished else {
        // Killed and reaped before the snapshot's read lock is released, so
        // no refresh ever meets a dying reader.
        let _ = child.kill().await;
        return Err(QueryError::Timeout(job.limits.timeout));
    };
    let newline = out.iter().position(|b| *b == b'\n');
    let reply = newline.and_then(|n| serde_json::from_slice::<WorkerReply>(&out[..n]).ok());
    match reply {
        Some(WorkerReply::Ok { truncated, confined }) if status.success() => {
            if !confined && !UNCONFINED_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!("this kernel does not enforce Landlock: query workers run without file confinement by the kernel (DuckDB's own lockdown and the OS limits still apply)");
            }
            let start = newline.map_or(out.len(), |n| n + 1);
            Ok(QueryAnswer { format: job.format, body: out[start..].to_vec(), truncated })
        }
        Some(WorkerReply::Invalid { message }) => Err(QueryError::Invalid(message)),
        Some(WorkerReply::Failed { message }) => Err(QueryError::Failed(message)),
        Some(WorkerReply::TooLarge { message }) => Err(QueryError::TooLarge(message)),
        _ => {
            // No answer: the OS or the allocator stopped the worker, which
            // within our limits means memory.
            let detail = String::from_utf8_lossy(&err);
            tracing::warn!(status = %status, stderr = %detail.trim(), "query worker ended without an answer");
            Err(QueryError::Failed(format!("the query ran out of memory (limit {}) and was stopped", job.memory_limit)))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failing_background_refresh_waits_twice_as_long_each_time() {
        let ago = |secs| std::time::Instant::now() - std::time::Duration::from_secs(secs);
        let mut fresh = super::Fresh::default();
        assert!(!fresh.backing_off());
        fresh.failed = Some((1, ago(9)));
        assert!(fresh.backing_off(), "10 s after the first failure");
        fresh.failed = Some((1, ago(11)));
        assert!(!fresh.backing_off());
        fresh.failed = Some((3, ago(39)));
        assert!(fresh.backing_off(), "40 s after the third");
        fresh.failed = Some((30, ago(599)));
        assert!(fresh.backing_off(), "at most 10 minutes");
        fresh.failed = Some((30, ago(601)));
        assert!(!fresh.backing_off());
    }

    use super::*;

    fn checked(sql: &str) -> Result<(String, BTreeSet<&'static str>), QueryError> {
        let conn = Connection::open_in_memory().unwrap();
        check(&conn, sql)
    }

    #[test]
    fn allowed_queries_pass() {
        for sql in [
            "SELECT event_type, count(*) FROM events GROUP BY 1",
            "WITH recent AS (SELECT * FROM events) SELECT * FROM recent r JOIN dead_letters d ON r.id = d.id;",
            "SELECT json_extract(event_payload, '$.a') FROM events WHERE created_at > now() - INTERVAL 1 DAY",
            "SELECT 1 -- trailing comment",
            "WITH a AS (SELECT 1 AS x), b AS (SELECT * FROM a) SELECT * FROM b",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
            "WITH events AS (SELECT 1 AS x) SELECT * FROM events",
        ] {
            assert!(checked(sql).is_ok(), "{sql}: {:?}", checked(sql).err());
        }
    }

    #[test]
    fn the_views_read_are_collected() {
        let (_, views) = checked("WITH e AS (SELECT * FROM events) SELECT * FROM e, plugin_logs").unwrap();
        assert_eq!(views.into_iter().collect::<Vec<_>>(), ["events", "plugin_logs"]);
        let (_, views) = checked("WITH events AS (SELECT * FROM events) SELECT * FROM events").unwrap();
        assert_eq!(views.into_iter().collect::<Vec<_>>(), ["events"]);
    }

    #[test]
    fn cte_names_do_not_leak_out_of_their_scope() {
        for sql in [
            "WITH tokens AS (SELECT * FROM tokens) SELECT * FROM tokens",
            "SELECT t.* FROM (WITH tokens AS (SELECT 1) SELECT 1) x, tokens t",
            "SELECT * FROM events WHERE id IN (WITH tenants AS (SELECT 1) SELECT 1) UNION ALL SELECT * FROM tenants",
            "WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a",
            "SELECT * FROM events, LATERAL (WITH plugins AS (SELECT 1) SELECT 1) l, plugins",
        ] {
            match checked(sql) {
                Err(QueryError::Refused(msg)) => assert!(msg.contains("is not available"), "{sql}: {msg}"),
                other => panic!("{sql}: expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn escapes_are_refused_with_a_reason() {
        for (sql, reason) in [
            ("SELECT * FROM read_csv('/etc/passwd')", "table functions are not allowed (read_csv)"),
            ("SELECT * FROM 'data.parquet'", "is not available"),
            ("SELECT * FROM main.events", "qualified table names"),
            ("SELECT * FROM tokens", "table tokens is not available"),
            ("SELECT getenv('HOME')", "function getenv is not allowed"),
            ("SELECT current_setting('threads')", "function current_setting"),
            ("SELECT 1; SELECT 2", "exactly one statement"),
            ("COPY events TO 'x.csv'", "only a single SELECT"),
            ("ATTACH 'x.db'", "only a single SELECT"),
            ("INSTALL httpfs", "only a single SELECT"),
            ("SET threads = 1", "only a single SELECT"),
            ("PRAGMA version", "only a single SELECT"),
            ("DELETE FROM events", "only a single SELECT"),
            ("SELECT * FROM duckdb_settings()", "table functions are not allowed"),
            ("SELECT * FROM (SELECT * FROM glob('/*'))", "table functions are not allowed"),
        ] {
            match checked(sql) {
                Err(QueryError::Refused(msg)) => assert!(msg.contains(reason), "{sql}: {msg}"),
                other => panic!("{sql}: expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn sizes_are_read_in_bytes() {
        assert_eq!(size_bytes("1GB"), 1_000_000_000);
        assert_eq!(size_bytes("256MiB"), 256 << 20);
        assert_eq!(size_bytes("1000"), 1000);
    }
}
