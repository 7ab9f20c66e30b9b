//! `sluice query-worker`: one analyst query in a process of its own.
//!
//! The server starts it per query (see `query.rs`) and writes a
//! [`WorkerJob`] on its stdin. Before the caller's text arrives at DuckDB the
//! worker caps its own address space (RLIMIT_AS: DuckDB's `memory_limit`
//! does not cover list and string values) and CPU time, lowers its CPU
//! priority below ingest, opens the tenant space's snapshot read-only, turns
//! off file and extension access except its own empty scratch directory,
//! locks the configuration, and has the kernel hold it to that scratch
//! directory and no network (Landlock, see `sandbox`). It then runs the text exactly as written and answers on
//! stdout: one [`WorkerReply`] line, then the encoded answer, never more
//! than the byte cap.
//!
//! The database holds only the caller's rows, so errors are reported in
//! full: they can quote nothing but the caller's own data.

use std::io::{Read, Write};

use duckdb::types::{TimeUnit, Value as DbValue};
use duckdb::{AccessMode, Config, Connection};
use serde_json::{json, Map, Value};

use super::query::{WorkerJob, WorkerReply};
use super::QueryFormat;

/// Run the job on stdin and answer on stdout.
///
/// # Errors
///
/// When the job cannot be read or the answer cannot be written.
pub fn main() -> anyhow::Result<()> {
    let mut input = Vec::new();
    std::io::stdin().take(16 << 20).read_to_end(&mut input)?;
    let job: WorkerJob = serde_json::from_slice(&input)?;
    // A backstop of CPU seconds beyond the server's wall-clock kill, for
    // when the server dies first: every thread busy for the whole deadline.
    let cpu = job.limits.timeout.as_secs().saturating_add(1).saturating_mul(THREADS as u64);
    crate::sandbox::limit_resources(job.address_space, Some(cpu))?;
    // Before DuckDB starts its threads, which inherit it: analysts' queries
    // share the upper half of the cores, whatever their number.
    crate::sandbox::keep_off_first_cores();
    let (reply, body) = match answer(&job) {
        Ok((truncated, confined, body)) => (WorkerReply::Ok { truncated, confined }, body),
        Err(reply) => (reply, Vec::new()),
    };
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &reply)?;
    out.write_all(b"\n")?;
    out.write_all(&body)?;
    out.flush()?;
    Ok(())
}

/// DuckDB threads of a worker: at most this many, so one query takes at
/// most this many cores (at nice 10, of the upper half of the cores).
const THREADS: usize = 4;

fn failed(e: duckdb::Error) -> WorkerReply {
    let message = e.to_string();
    if ["Parser Error", "Binder Error", "Catalog Error"].iter().any(|kind| message.contains(kind)) {
        WorkerReply::Invalid { message }
    } else {
        WorkerReply::Failed { message }
    }
}

/// Open the snapshot and lock everything down before any caller text runs.
/// Returns the connection and whether the kernel confines the process too.
fn open(job: &WorkerJob) -> Result<(Connection, bool), WorkerReply> {
    let config = Config::default()
        .access_mode(AccessMode::ReadOnly)
        .and_then(|c| c.enable_autoload_extension(false))
        .map_err(failed)?;
    let conn = Connection::open_with_flags(&job.snapshot, config).map_err(failed)?;
    let scratch = format!("{}/", job.scratch.display()).replace('\'', "''");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(THREADS);
    conn.execute_batch(&format!(
        "SET memory_limit = '{memory}'; \
         SET threads = {threads}; \
         SET temp_directory = '{scratch}'; \
         SET max_temp_directory_size = '1GB'; \
         SET allowed_directories = ['{scratch}']; \
         SET enable_external_access = false; \
         SET autoinstall_known_extensions = false; \
         SET autoload_known_extensions = false; \
         SET lock_configuration = true;",
        memory = job.memory_limit.replace('\'', "''"),
    ))
    .map_err(failed)?;
    // Below DuckDB's own settings, the kernel's: from here on this process
    // opens nothing but files in its scratch directory and reaches no
    // network. The snapshot stays readable because it is open already.
    let sandbox =
        |message: String| WorkerReply::Failed { message: format!("cannot confine the query worker: {message}") };
    let confined = crate::sandbox::confine_files(Some(&job.scratch)).map_err(sandbox)?;
    // Check it: a confined worker must not be able to open the snapshot
    // again (it lies outside the scratch directory).
    if confined && std::fs::File::open(&job.snapshot).is_ok() {
        return Err(sandbox("the snapshot is still openable after confinement".into()));
    }
    Ok((conn, confined))
}

/// Run the job: whether the answer was cut, whether the kernel confined the
/// worker, and the answer's bytes.
fn answer(job: &WorkerJob) -> Result<(bool, bool, Vec<u8>), WorkerReply> {
    let (conn, confined) = open(job)?;
    let args: Vec<DbValue> = job.params.iter().map(to_param).collect();
    if job.format == QueryFormat::Parquet {
        return parquet(&conn, job, args).map(|body| (false, confined, body));
    }
    let mut stmt = conn.prepare(&job.sql).map_err(failed)?;
    let mut rows = stmt.query(duckdb::params_from_iter(args)).map_err(failed)?;
    let mut lines: Vec<String> = Vec::new();
    let mut size = 0usize;
    let mut truncated = false;
    let mut width = 0;
    while let Some(row) = rows.next().map_err(failed)? {
        if lines.len() == job.limits.max_rows {
            truncated = true;
            break;
        }
        width = row.as_ref().column_count();
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(to_json(row.get::<_, DbValue>(i).map_err(failed)?));
        }
        let line = match job.format {
            QueryFormat::Csv => values.iter().map(csv_field).collect::<Vec<_>>().join(","),
            _ => Value::Array(values).to_string(),
        };
        // A 1 KiB allowance for the envelope (columns, counts).
        if size + line.len() + 1 + 1024 > job.limits.max_bytes {
            truncated = true;
            break;
        }
        size += line.len() + 1;
        lines.push(line);
    }
    let stmt = rows.as_ref().ok_or_else(|| WorkerReply::Failed { message: "no statement".into() })?;
    let columns: Vec<(String, String)> = (0..stmt.column_count().max(width))
        .map(|i| {
            let name = stmt.column_name(i).map(|s| s.to_string()).unwrap_or_default();
            (name, format!("{:?}", stmt.column_type(i)))
        })
        .collect();
    let body = match job.format {
        QueryFormat::Csv => {
            let mut out =
                columns.iter().map(|(n, _)| csv_field(&Value::String(n.clone()))).collect::<Vec<_>>().join(",");
            out.push('\n');
            for line in &lines {
                out.push_str(line);
                out.push('\n');
            }
            out
        }
        _ => {
            let columns: Vec<Value> = columns.iter().map(|(name, ty)| json!({"name": name, "type": ty})).collect();
            format!(
                "{{\"columns\":{},\"rows\":[{}],\"row_count\":{},\"truncated\":{truncated}}}",
                Value::Array(columns),
                lines.join(","),
                lines.len()
            )
        }
    };
    Ok((truncated, confined, body.into_bytes()))
}

/// A Parquet answer: written by DuckDB into the scratch directory, then
/// returned whole if it fits the byte cap.
fn parquet(conn: &Connection, job: &WorkerJob, args: Vec<DbValue>) -> Result<Vec<u8>, WorkerReply> {
    let target = job.scratch.join("result.parquet");
    let path = target.display().to_string().replace('\'', "''");
    // The text is embedded as written, between its own lines, in a database
    // that holds only the caller's rows (nothing else to reach).
    let copy = format!("COPY (\n{}\n) TO '{path}' (FORMAT parquet)", job.sql);
    conn.execute(&copy, duckdb::params_from_iter(args)).map_err(failed)?;
    let size = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    if size > job.limits.max_bytes as u64 {
        return Err(WorkerReply::TooLarge {
            message: format!(
                "the Parquet result is {size} bytes, more than the {} allowed; narrow the query or add a LIMIT",
                job.limits.max_bytes
            ),
        });
    }
    std::fs::read(&target).map_err(|e| WorkerReply::Failed { message: format!("cannot read the result: {e}") })
}

fn csv_field(v: &Value) -> String {
    let text = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
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

/// A DuckDB value as JSON. Times as RFC 3339, big integers as strings when
/// they do not fit a double exactly.
fn to_json(v: DbValue) -> Value {
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
        DbValue::Timestamp(unit, t) => crate::event::rfc3339(unit.to_micros(t)).into(),
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
