//! Per-space snapshot files: the only data a query worker can open.
//!
//! Each tenant space has one DuckDB file under `data/query/` holding copies
//! of its rows of the query views (without the `tenant` column). The server
//! brings it up to date before each query with SQL of its own, moving rows as
//! Arrow batches from a reader of the main database into the snapshot; the
//! caller's text never runs in a database that holds anything else.
//!
//! `events` and `dead_letters` are append-only by `seq` and copied
//! incrementally; a count check finds rows removed since (retention, replayed
//! dead letters), and the table is then copied again whole. `plugin_runs`
//! and `plugin_logs` have no sequence: the main table's row ids up to which
//! they were copied stand in for one (see [`Marks`]), with the same count
//! check; a new process copies them whole once.

use std::path::Path;

use duckdb::{params, Connection};

use super::StoreError;

/// How far each table without a sequence was copied: the main table's
/// highest row id at the last refresh, by table.
pub(super) type Marks = std::collections::HashMap<String, i64>;

/// A view's columns in the main database, without `tenant`: `(name, type)`.
fn columns(main: &Connection, table: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = main.prepare(&format!("DESCRIBE SELECT * EXCLUDE (tenant) FROM main.{table}"))?;
    let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
    Ok(rows.collect::<duckdb::Result<_>>()?)
}

/// Create `table` in the snapshot with `columns`, replacing a table of
/// another shape (a migration added a column). Returns whether it is new.
fn ensure_table(snap: &Connection, table: &str, columns: &[(String, String)]) -> Result<bool, StoreError> {
    let exists: i64 = snap.query_row(
        "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = ?",
        [table],
        |row| row.get(0),
    )?;
    if exists > 0 {
        let mut stmt = snap.prepare(&format!("DESCRIBE {table}"))?;
        let have: Vec<(String, String)> = stmt
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?
            .collect::<duckdb::Result<_>>()?;
        if have == columns {
            return Ok(false);
        }
        snap.execute_batch(&format!("DROP TABLE {table}"))?;
    }
    let list: Vec<String> =
        columns.iter().map(|(name, ty)| format!("\"{}\" {ty}", name.replace('"', "\"\""))).collect();
    snap.execute_batch(&format!("CREATE TABLE {table} ({})", list.join(", ")))?;
    Ok(true)
}

/// Rows copied per step. DuckDB materializes each step's result, so this
/// and [`STEP_BYTES`] bound the server's memory during a catch-up.
const CHUNK: usize = 2048;

/// Most bytes of text and blob columns copied per step: rows are sized
/// first, so a space of large rows (a plugin may store events of up to
/// 8 MiB) is copied in smaller steps (RELIABILITY.md, F19: 2,048 rows of
/// 1 MB took the server to 9.1 GB).
const STEP_BYTES: i64 = 32 << 20;

/// The size of a row, as counted against [`STEP_BYTES`]: its text and blob
/// columns, the only ones of unbounded size.
fn size_of_row(columns: &[(String, String)]) -> String {
    let sizes: Vec<String> = columns
        .iter()
        .filter_map(|(name, kind)| {
            let name = format!("\"{}\"", name.replace('"', "\"\""));
            match kind.as_str() {
                "VARCHAR" | "JSON" => Some(format!("coalesce(strlen({name}), 0)")),
                "BLOB" => Some(format!("coalesce(octet_length({name}), 0)")),
                _ => None,
            }
        })
        .collect();
    if sizes.is_empty() {
        "0".into()
    } else {
        sizes.join(" + ")
    }
}

/// Append to the snapshot's `table` the rows of the main database's `table`
/// for `space` with `key` in `(after, upto]`, in key order, at most
/// [`CHUNK`] rows and [`STEP_BYTES`] per step (`columns`: the table's).
/// `key` is `seq` or `rowid` (selected first and dropped from what is
/// appended). Each step reads a window of keys: it
/// grows while the space's rows are sparse (other tenants' rows between
/// them) and falls back when a step fills, so a catch-up reads each row of
/// the table about once.
fn copy(
    main: &Connection,
    snap: &Connection,
    table: &str,
    columns: &[(String, String)],
    key: &str,
    space: &str,
    mut after: i64,
    upto: i64,
) -> Result<(), StoreError> {
    let (select, skip) = if key == "rowid" { ("rowid, *", true) } else { ("*", false) };
    let range = format!("FROM main.{table} WHERE tenant = ? AND {key} > ? AND {key} <= ? ORDER BY {key} LIMIT {CHUNK}");
    let mut sizing = main.prepare(&format!("SELECT {key}, {} {range}", size_of_row(columns)))?;
    let mut stmt = main.prepare(&format!("SELECT {select} EXCLUDE (tenant) {range}"))?;
    let mut appender = snap.appender(table)?;
    let mut window = CHUNK as i64;
    while after < upto {
        let mut end = after.saturating_add(window).min(upto);
        let sizes: Vec<(i64, i64)> = sizing
            .query_map(duckdb::params![space, after, end], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<duckdb::Result<_>>()?;
        let fit = super::fitting(&sizes, STEP_BYTES);
        // A step cut short by its bytes ends at its last row that fits, and
        // continues after it like a step that filled.
        let cut = fit < sizes.len();
        if cut {
            end = sizes[fit - 1].0;
        }
        let batches: Vec<_> = stmt.query_arrow(duckdb::params![space, after, end])?.collect();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let mut last = after;
        for batch in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = if skip { Some(batch.column(0)) } else { batch.column_by_name(key) };
            last = keys
                .and_then(|c| c.as_any().downcast_ref::<duckdb::arrow::array::Int64Array>())
                .map(|c| c.value(c.len() - 1))
                .ok_or_else(|| StoreError::Encode(format!("no {key} column in the copy of {table}")))?;
            let batch = if skip {
                let rest: Vec<usize> = (1..batch.num_columns()).collect();
                batch.project(&rest).map_err(|e| StoreError::Encode(e.to_string()))?
            } else {
                batch
            };
            appender.append_record_batch(batch)?;
        }
        if rows == CHUNK || cut {
            // The window held more: continue after the last row copied.
            after = last;
            window = (window / 2).max(CHUNK as i64);
        } else {
            after = end;
            window = window.saturating_mul(2).min(1 << 24);
        }
    }
    appender.flush()?;
    Ok(())
}

/// When the space's rows up to `upto` differ from the snapshot's only by
/// rows removed since (a replayed dead letter, rows past retention), remove
/// those from the snapshot and say so; otherwise change nothing. Compares
/// sequence numbers only, so one replay costs the space's row count in
/// integers, not a copy of its table (RELIABILITY.md, F57: a replay every
/// 2 s re-copied 1.2 GB of dead letters each time).
fn removed_only(main: &Connection, snap: &Connection, table: &str, space: &str, upto: i64) -> Result<bool, StoreError> {
    let seqs = |conn: &Connection, sql: &str, params: &[&dyn duckdb::ToSql]| -> Result<Vec<i64>, StoreError> {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map(params, |row| row.get(0))?;
        Ok(rows.collect::<duckdb::Result<_>>()?)
    };
    let there = seqs(
        main,
        &format!("SELECT seq FROM main.{table} WHERE tenant = ? AND seq <= ? ORDER BY seq"),
        &[&space, &upto],
    )?;
    let here = seqs(snap, &format!("SELECT seq FROM {table} ORDER BY seq"), &[])?;
    // Both sorted: walk them side by side.
    let (mut gone, mut there_at) = (Vec::new(), 0);
    for &seq in &here {
        if there.get(there_at).is_some_and(|&t| t < seq) {
            // A row of the space the snapshot lacks.
            return Ok(false);
        }
        if there.get(there_at) == Some(&seq) {
            there_at += 1;
        } else {
            gone.push(seq);
        }
    }
    if there_at != there.len() {
        return Ok(false);
    }
    for chunk in gone.chunks(1000) {
        let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
        snap.execute(&format!("DELETE FROM {table} WHERE seq IN ({})", list.join(", ")), [])?;
    }
    Ok(true)
}

/// Bring the snapshot of `views` for `space` up to sequence `committed`.
fn refresh_views(
    main: &Connection,
    snap: &Connection,
    space: &str,
    views: &[&str],
    committed: i64,
    marks: &mut Marks,
) -> Result<(), StoreError> {
    for &table in views {
        let columns = columns(main, table)?;
        ensure_table(snap, table, &columns)?;
        match table {
            "events" | "dead_letters" => {
                let (have_max, have_count): (i64, i64) =
                    snap.query_row(&format!("SELECT coalesce(max(seq), 0), count(*) FROM {table}"), [], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?;
                let main_count: i64 = main.query_row(
                    &format!("SELECT count(*) FROM main.{table} WHERE tenant = ? AND seq <= ?"),
                    params![space, have_max],
                    |row| row.get(0),
                )?;
                let after = if main_count == have_count || removed_only(main, snap, table, space, have_max)? {
                    have_max
                } else {
                    snap.execute_batch(&format!("DELETE FROM {table}"))?;
                    0
                };
                if committed > after {
                    copy(main, snap, table, &columns, "seq", space, after, committed)?;
                }
            }
            "plugin_runs" | "plugin_logs" => {
                // No sequence: the main table's row ids, as far as the last
                // refresh copied them (known to this process only), stand in
                // for one. Rows removed since (retention) show in the count.
                let have_count: i64 = snap.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0))?;
                let main_max: i64 =
                    main.query_row(&format!("SELECT coalesce(max(rowid), -1) FROM main.{table}"), [], |row| {
                        row.get(0)
                    })?;
                let known = match marks.get(table) {
                    Some(&last) => {
                        let main_count: i64 = main.query_row(
                            &format!("SELECT count(*) FROM main.{table} WHERE tenant = ? AND rowid <= ?"),
                            params![space, last],
                            |row| row.get(0),
                        )?;
                        (main_count == have_count).then_some(last)
                    }
                    None => None,
                };
                let after = match known {
                    Some(last) => last,
                    None => {
                        snap.execute_batch(&format!("DELETE FROM {table}"))?;
                        -1
                    }
                };
                if main_max > after {
                    copy(main, snap, table, &columns, "rowid", space, after, main_max)?;
                }
                marks.insert(table.to_string(), main_max);
            }
            other => return Err(StoreError::Config(format!("{other} is not a query view"))),
        }
    }
    Ok(())
}

/// Open the snapshot to write it. A worker killed because its client went
/// away may hold it read-only for a moment longer (the kill is not awaited
/// then), so a lock conflict is retried briefly.
fn open_for_writing(path: &Path) -> Result<Connection, StoreError> {
    let mut tries = 0;
    loop {
        match Connection::open(path) {
            Ok(conn) => return Ok(conn),
            Err(e) if tries < 40 && e.to_string().contains("lock") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Bring the snapshot file at `path` of tenant space `space` up to date for
/// `views`, reading the main database through `main`. The snapshot changes
/// in one transaction and is checkpointed, so a worker opening it read-only
/// finds a consistent file with no log to replay.
///
/// # Errors
///
/// Database and I/O errors; the snapshot is then left as it was.
pub(super) fn refresh(
    main: &Connection,
    path: &Path,
    space: &str,
    views: &[&str],
    committed: i64,
    marks: &mut Marks,
) -> Result<(), StoreError> {
    if views.is_empty() {
        // The query reads no view (`SELECT 1`): an empty file will do.
        if !path.exists() {
            Connection::open(path)?.execute_batch("CHECKPOINT")?;
        }
        return Ok(());
    }
    let snap = open_for_writing(path)?;
    // The copy streams batches; it needs little memory and one thread, and
    // must not compete with ingest for more.
    snap.execute_batch("SET memory_limit = '512MB'; SET threads = 1; BEGIN TRANSACTION")?;
    main.execute_batch("BEGIN TRANSACTION")?;
    let mut copied = marks.clone();
    let done = refresh_views(main, &snap, space, views, committed, &mut copied);
    let _ = main.execute_batch("COMMIT");
    match done {
        Ok(()) => {
            snap.execute_batch("COMMIT; CHECKPOINT")?;
            *marks = copied;
            Ok(())
        }
        Err(e) => {
            let _ = snap.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}
