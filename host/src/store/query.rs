//! Analysts' SQL: one read-only SELECT over the caller's own views.
//!
//! The text is checked with DuckDB's own parser (`json_serialize_sql`), so
//! the checker and the executor cannot disagree about what the query is. Only
//! the views `events`, `dead_letters`, `plugin_runs` and `plugin_logs` may be
//! named (and the query's own CTEs); table functions, qualified names and
//! functions that reveal or change state are refused. The query then runs
//! inside CTEs that shadow those names with the tenant's rows only, under a
//! time limit (interrupt) and a row cap. The database itself has external
//! access disabled and its configuration locked (see `EventStore::open`).

use std::collections::HashSet;
use std::time::Duration;

use duckdb::types::{TimeUnit, Value as DbValue};
use duckdb::Connection;
use serde_json::{json, Map, Value};

use super::{EventStore, StoreError};

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

/// Why a query was refused or failed. Messages never quote stored data.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the query ran longer than {0:?} and was interrupted")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Limits of one query.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub timeout: Duration,
    pub max_rows: usize,
}

/// A query's result, with the columns' names and DuckDB types.
#[derive(Debug)]
pub struct QueryResult {
    pub columns: Vec<(String, String)>,
    pub rows: Vec<Vec<Value>>,
    pub truncated: bool,
}

fn refuse(msg: impl Into<String>) -> QueryError {
    QueryError::Refused(msg.into())
}

/// Walk the parse tree and refuse anything outside the allowed surface.
fn check_node(node: &Value, ctes: &HashSet<String>) -> Result<(), QueryError> {
    match node {
        Value::Array(items) => items.iter().try_for_each(|n| check_node(n, ctes)),
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
                    if !QUERY_VIEWS.contains(&table.as_str()) && !ctes.contains(&table) {
                        return Err(refuse(format!(
                            "table {table} is not available; query one of {}",
                            QUERY_VIEWS.join(", ")
                        )));
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
            map.values().try_for_each(|n| check_node(n, ctes))
        }
        _ => Ok(()),
    }
}

/// Names the query defines itself (`WITH name AS ...`), anywhere in it.
fn collect_ctes(node: &Value, out: &mut HashSet<String>) {
    match node {
        Value::Array(items) => items.iter().for_each(|n| collect_ctes(n, out)),
        Value::Object(map) => {
            if let Some(entries) = map.get("cte_map").and_then(|c| c.get("map")).and_then(Value::as_array) {
                for entry in entries {
                    if let Some(key) = entry.get("key").and_then(Value::as_str) {
                        out.insert(key.to_lowercase());
                    }
                }
            }
            map.values().for_each(|n| collect_ctes(n, out));
        }
        _ => {}
    }
}

/// Check `sql` with DuckDB's parser. Returns the text to embed (trailing
/// semicolons removed).
fn check(conn: &Connection, sql: &str) -> Result<String, QueryError> {
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
    let mut ctes = HashSet::new();
    collect_ctes(&tree, &mut ctes);
    check_node(&tree["statements"], &ctes)?;
    Ok(text)
}

/// The query inside CTEs that shadow every view with the tenant's rows.
/// Tenant ids are `[a-z0-9_-]` (checked at creation), so quoting is safe.
fn wrap(tenant: &str, text: &str, max_rows: usize) -> String {
    let t = tenant.replace('\'', "''");
    format!(
        "WITH events AS (SELECT * EXCLUDE (tenant) FROM main.events WHERE tenant = '{t}'), \
         dead_letters AS (SELECT * EXCLUDE (tenant) FROM main.dead_letters WHERE tenant = '{t}'), \
         plugin_runs AS (SELECT * EXCLUDE (tenant) FROM main.plugin_runs WHERE tenant = '{t}'), \
         plugin_logs AS (SELECT * EXCLUDE (tenant) FROM main.plugin_logs WHERE tenant = '{t}') \
         SELECT * FROM (\n{text}\n) LIMIT {}",
        max_rows + 1
    )
}

fn to_param(v: &Value) -> DbValue {
    match v {
        Value::Null => DbValue::Null,
        Value::Bool(b) => DbValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => DbValue::BigInt(i),
            None => DbValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => DbValue::Text(s.clone()),
        other => DbValue::Text(other.to_string()),
    }
}

fn micros_text(micros: i64) -> String {
    super::read::rfc3339(micros)
}

/// A DuckDB value as JSON. Times as RFC 3339, big integers as strings when
/// they do not fit a double exactly.
pub fn to_json(v: DbValue) -> Value {
    match v {
        DbValue::Null => Value::Null,
        DbValue::Boolean(b) => b.into(),
        DbValue::TinyInt(i) => i.into(),
        DbValue::SmallInt(i) => i.into(),
        DbValue::Int(i) => i.into(),
        DbValue::BigInt(i) => i.into(),
        DbValue::HugeInt(i) => i64::try_from(i).map_or_else(|_| i.to_string().into(), Value::from),
        DbValue::UHugeInt(i) => u64::try_from(i).map_or_else(|_| i.to_string().into(), Value::from),
        DbValue::UTinyInt(i) => i.into(),
        DbValue::USmallInt(i) => i.into(),
        DbValue::UInt(i) => i.into(),
        DbValue::UBigInt(i) => i.into(),
        DbValue::Float(f) => serde_json::Number::from_f64(f.into()).map_or(Value::Null, Value::Number),
        DbValue::Double(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        DbValue::Decimal(d) => {
            d.to_string().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
        }
        DbValue::Timestamp(unit, t) => micros_text(unit.to_micros(t)).into(),
        DbValue::Text(s) | DbValue::Enum(s) => s.into(),
        DbValue::Blob(b) | DbValue::Geometry(b) => hex::encode(b).into(),
        DbValue::Date32(days) => {
            chrono::NaiveDate::from_num_days_from_ce_opt(days + 719_163).map_or(Value::Null, |d| d.to_string().into())
        }
        DbValue::Time64(unit, t) => {
            let micros = TimeUnit::to_micros(&unit, t);
            chrono::NaiveTime::from_num_seconds_from_midnight_opt(
                (micros / 1_000_000) as u32,
                ((micros % 1_000_000) * 1000) as u32,
            )
            .map_or(Value::Null, |t| t.to_string().into())
        }
        DbValue::Interval { months, days, nanos } => json!({"months": months, "days": days, "nanos": nanos}),
        DbValue::List(items) | DbValue::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        DbValue::Struct(fields) => {
            let map: Map<String, Value> = fields.keys().cloned().zip(fields.values().cloned().map(to_json)).collect();
            Value::Object(map)
        }
        DbValue::Map(entries) => {
            let map: Map<String, Value> = entries
                .keys()
                .map(|k| match to_json(k.clone()) {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .zip(entries.values().cloned().map(to_json))
                .collect();
            Value::Object(map)
        }
        DbValue::Union(inner) => to_json(*inner),
        other => format!("{other:?}").into(),
    }
}

/// Errors of the executor. Parser and binder errors are about the query text
/// and pass through; errors raised while running (conversions, ranges) can
/// quote stored values, which may belong to rows the optimizer touched before
/// the tenant filter, so their detail is withheld.
fn execution_error(e: duckdb::Error, timeout: Duration) -> QueryError {
    let message = e.to_string();
    if message.contains("INTERRUPT") || message.contains("Interrupt") {
        return QueryError::Timeout(timeout);
    }
    for kind in ["Parser Error", "Binder Error"] {
        if message.contains(kind) {
            return QueryError::Invalid(message);
        }
    }
    let kind = message.split(':').next().unwrap_or("Error").trim();
    QueryError::Failed(format!("{kind} while running the query (details withheld: they could quote stored data)"))
}

/// Arm an interrupt of `conn` after `timeout`; dropping the guard disarms it.
struct Deadline {
    done: std::sync::mpsc::Sender<()>,
}

impl Deadline {
    fn arm(conn: &Connection, timeout: Duration) -> Deadline {
        let handle = conn.interrupt_handle();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(timeout) {
                handle.interrupt();
            }
        });
        Deadline { done }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let _ = self.done.send(());
    }
}

impl EventStore {
    /// Check and run an analyst's query for `tenant`.
    ///
    /// # Errors
    ///
    /// [`QueryError::Refused`] naming what is not allowed,
    /// [`QueryError::Invalid`] for parse and bind errors, timeouts, failures.
    pub async fn query(
        &self,
        tenant: String,
        sql: String,
        params: Vec<Value>,
        limits: QueryLimits,
    ) -> Result<QueryResult, QueryError> {
        let outcome = self
            .read(move |conn| {
                let text = match check(conn, &sql) {
                    Ok(text) => text,
                    Err(e) => return Ok(Err(e)),
                };
                let wrapped = wrap(&tenant, &text, limits.max_rows);
                let _deadline = Deadline::arm(conn, limits.timeout);
                Ok(run(conn, &wrapped, &params, limits))
            })
            .await?;
        outcome
    }

    /// Run the checked query into a Parquet file under the export directory
    /// and return its path; the caller streams and deletes it.
    ///
    /// # Errors
    ///
    /// As [`EventStore::query`].
    pub async fn query_to_parquet(
        &self,
        tenant: String,
        sql: String,
        params: Vec<Value>,
        limits: QueryLimits,
    ) -> Result<std::path::PathBuf, QueryError> {
        let path = self.export_path("parquet");
        let target = path.clone();
        self.read(move |conn| {
            let text = match check(conn, &sql) {
                Ok(text) => text,
                Err(e) => return Ok(Err(e)),
            };
            // Parquet is for bulk results: the row cap does not apply, the
            // time limit does.
            let wrapped = wrap(&tenant, &text, usize::MAX - 1).replace(&format!(" LIMIT {}", usize::MAX), "");
            let copy = format!("COPY ({wrapped}) TO '{}' (FORMAT parquet)", target.display());
            let _deadline = Deadline::arm(conn, limits.timeout);
            let args: Vec<DbValue> = params.iter().map(to_param).collect();
            Ok(conn
                .execute(&copy, duckdb::params_from_iter(args))
                .map(|_| target)
                .map_err(|e| execution_error(e, limits.timeout)))
        })
        .await?
    }
}

fn run(conn: &Connection, wrapped: &str, params: &[Value], limits: QueryLimits) -> Result<QueryResult, QueryError> {
    let mut stmt = conn.prepare(wrapped).map_err(|e| execution_error(e, limits.timeout))?;
    let args: Vec<DbValue> = params.iter().map(to_param).collect();
    let mut rows = stmt.query(duckdb::params_from_iter(args)).map_err(|e| execution_error(e, limits.timeout))?;
    let mut out = Vec::new();
    let mut truncated = false;
    let mut width = 0;
    while let Some(row) = rows.next().map_err(|e| execution_error(e, limits.timeout))? {
        if out.len() == limits.max_rows {
            truncated = true;
            break;
        }
        width = row.as_ref().column_count();
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(to_json(row.get::<_, DbValue>(i).map_err(|e| execution_error(e, limits.timeout))?));
        }
        out.push(values);
    }
    let stmt = rows.as_ref().ok_or_else(|| QueryError::Failed("no statement".into()))?;
    let columns = (0..stmt.column_count().max(width))
        .map(|i| {
            let name = stmt.column_name(i).map(|s| s.to_string()).unwrap_or_default();
            (name, format!("{:?}", stmt.column_type(i)))
        })
        .collect();
    Ok(QueryResult { columns, rows: out, truncated })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(sql: &str) -> Result<String, QueryError> {
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
        ] {
            assert!(checked(sql).is_ok(), "{sql}: {:?}", checked(sql).err());
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
}
