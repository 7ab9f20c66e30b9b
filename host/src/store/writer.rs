//! The writer thread: sole owner of the writing connection and its Appenders.

use duckdb::types::{TimeUnit, Value};
use duckdb::{params, Connection};
use tokio::sync::mpsc;

use super::{Command, StoreError, WriteBatch};
use crate::event::{Event, COLUMN_ATTRIBUTES};

/// Most write requests committed in one group.
const MAX_GROUP: usize = 256;

pub(super) fn spawn(conn: Connection, rx: mpsc::Receiver<Command>) -> Result<(), StoreError> {
    let next_seq: i64 = conn.query_row(
        "SELECT greatest((SELECT coalesce(max(seq), 0) FROM events), (SELECT coalesce(max(seq), 0) FROM dead_letters)) + 1",
        [],
        |row| row.get(0),
    )?;
    std::thread::Builder::new()
        .name("sluice-writer".into())
        .spawn(move || Writer { conn, next_seq }.run(rx))
        .map_err(|e| StoreError::Db(duckdb::Error::ToSqlConversionFailure(Box::new(e))))?;
    Ok(())
}

struct Writer {
    conn: Connection,
    /// Insertion order of rows; the listing's keyset. Only this thread
    /// assigns it, so it is strictly increasing in commit order.
    next_seq: i64,
}

fn ts(micros: i64) -> Value {
    Value::Timestamp(TimeUnit::Microsecond, micros)
}

fn opt_int(s: Option<&str>) -> Value {
    s.and_then(|v| v.parse::<i64>().ok()).map_or(Value::Null, Value::BigInt)
}

fn opt_text(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |v| Value::Text(v.to_string()))
}

fn extra_attributes(event: &Event) -> Value {
    let extra: serde_json::Map<String, serde_json::Value> = event
        .attributes
        .iter()
        .filter(|(k, _)| !COLUMN_ATTRIBUTES.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    if extra.is_empty() {
        Value::Null
    } else {
        Value::Text(serde_json::Value::Object(extra).to_string())
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Write { batch, done } => group.push((batch, done)),
                    Command::Run(job) => {
                        // Keep order: commit what came before the job first.
                        self.commit_group(&mut group);
                        job(&self.conn);
                    }
                }
                if group.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            self.commit_group(&mut group);
        }
    }

    fn commit_group(&mut self, group: &mut Vec<(WriteBatch, tokio::sync::oneshot::Sender<Result<(), StoreError>>)>) {
        if group.is_empty() {
            return;
        }
        let start_seq = self.next_seq;
        let batches: Vec<&WriteBatch> = group.iter().map(|(b, _)| b).collect();
        match self.write(&batches) {
            Ok(()) => {
                for (_, done) in group.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                // One bad request must not fail its neighbours: retry each
                // request alone, so only the faulty one is refused.
                tracing::warn!(error = %e, requests = group.len(), "group commit failed; retrying one by one");
                self.next_seq = start_seq;
                for (batch, done) in group.drain(..) {
                    let seq = self.next_seq;
                    let result = self.write(&[&batch]);
                    if result.is_err() {
                        self.next_seq = seq;
                    }
                    let _ = done.send(result);
                }
            }
        }
    }

    fn write(&mut self, batches: &[&WriteBatch]) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN TRANSACTION")?;
        match self.append(batches) {
            Ok(()) => match self.conn.execute_batch("COMMIT") {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    Err(e.into())
                }
            },
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn append(&mut self, batches: &[&WriteBatch]) -> Result<(), StoreError> {
        let mut seq = self.next_seq;
        {
            let mut appender = self.conn.appender("events")?;
            for stored in batches.iter().flat_map(|b| &b.events) {
                let e = &stored.event;
                let attr = |k: &str| e.attribute(k);
                let lineage = serde_json::to_string(&stored.lineage).unwrap_or_else(|_| "[]".into());
                appender.append_row(params![
                    seq,
                    e.tenant,
                    e.id,
                    e.family,
                    ts(e.occurred_at),
                    ts(e.received_at),
                    e.user_id,
                    e.actor_type,
                    e.actor_id,
                    e.source,
                    e.group,
                    e.name,
                    e.status,
                    e.resource_type,
                    e.resource_id,
                    e.session_id,
                    opt_text(attr("vm_id")),
                    opt_int(attr("task_id")),
                    opt_text(attr("request_id")),
                    opt_text(attr("correlation_id")),
                    opt_text(attr("http_method")),
                    opt_text(attr("path")),
                    opt_int(attr("http_status")),
                    attr("latency_ms").and_then(|v| v.parse::<f64>().ok()),
                    opt_text(attr("ip_address")),
                    opt_text(attr("user_agent")),
                    opt_text(attr("node_ip")),
                    opt_text(attr("worker_id")),
                    e.payload,
                    opt_text(attr("error_message")),
                    extra_attributes(e),
                    lineage,
                    stored.raw.to_string(),
                ])?;
                seq += 1;
            }
            appender.flush()?;
        }
        {
            let mut appender = self.conn.appender("dead_letters")?;
            for d in batches.iter().flat_map(|b| &b.dead_letters) {
                appender.append_row(params![
                    seq,
                    d.tenant,
                    d.id,
                    d.family,
                    ts(d.received_at),
                    d.plugin,
                    d.plugin_version,
                    d.reason,
                    event_json(&d.event).to_string(),
                    d.raw.to_string(),
                ])?;
                seq += 1;
            }
            appender.flush()?;
        }
        {
            let mut appender = self.conn.appender("plugin_logs")?;
            for l in batches.iter().flat_map(|b| &b.logs) {
                let fields: serde_json::Map<String, serde_json::Value> =
                    l.fields.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
                appender.append_row(params![
                    l.tenant,
                    l.plugin,
                    l.plugin_version,
                    ts(l.at),
                    l.level,
                    l.message,
                    serde_json::Value::Object(fields).to_string(),
                ])?;
            }
            appender.flush()?;
        }
        {
            let mut appender = self.conn.appender("plugin_runs")?;
            for r in batches.iter().flat_map(|b| &b.runs) {
                appender.append_row(params![
                    r.tenant,
                    r.plugin,
                    r.plugin_version,
                    ts(r.started_at),
                    r.events_in,
                    r.events_out,
                    r.dropped,
                    r.rejected,
                    r.fault,
                    r.elapsed_us,
                    r.fuel as i64,
                ])?;
            }
            appender.flush()?;
        }
        self.next_seq = seq;
        Ok(())
    }
}

/// The canonical event as JSON in the listing API's field names, used for
/// dead letters (so a replay can rebuild it).
pub(crate) fn event_json(e: &Event) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert("id".into(), e.id.clone().into());
    map.insert("family".into(), e.family.clone().into());
    map.insert("created_at".into(), crate::store::read::rfc3339(e.occurred_at).into());
    map.insert("user_id".into(), e.user_id.into());
    map.insert("actor_type".into(), e.actor_type.clone().into());
    map.insert("actor_id".into(), e.actor_id.clone().into());
    map.insert("source".into(), e.source.clone().into());
    map.insert("event_group".into(), e.group.clone().into());
    map.insert("event_type".into(), e.name.clone().into());
    map.insert("status".into(), e.status.clone().into());
    map.insert("resource_type".into(), e.resource_type.clone().into());
    map.insert("resource_id".into(), e.resource_id.clone().into());
    map.insert("session_id".into(), e.session_id.clone().into());
    for (k, v) in &e.attributes {
        map.insert(k.clone(), v.clone().into());
    }
    map.insert("event_payload".into(), serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::Null));
    serde_json::Value::Object(map)
}
