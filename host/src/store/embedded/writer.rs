//! The writer threads: two lanes, each the sole owner of its writing
//! connection and Appenders. Requests of more than [`BULK_ROWS`] rows (a
//! large batch, a wide fan-out) are committed on the bulk lane and the rest
//! on the main lane, with control-plane jobs: DuckDB runs the two lanes'
//! transactions side by side (appends never conflict), so a small request
//! never waits for a large one's append and commit, only, at most, for the
//! database's short commit step.

use duckdb::types::{TimeUnit, Value};
use duckdb::{params, Connection};
use tokio::sync::mpsc;

use std::collections::BTreeMap;
use std::sync::Arc;

use duckdb::arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use duckdb::arrow::error::ArrowError;
use duckdb::arrow::record_batch::RecordBatch;

use super::{Command, StoreError, WriteBatch};
use crate::event::{Event, Lineage, StoredEvent, COLUMN_ATTRIBUTES};

/// Most write requests committed in one group.
const MAX_GROUP: usize = 256;

/// A request with more rows (events and dead letters) than this is
/// committed on the bulk lane.
pub(super) const BULK_ROWS: usize = 1024;

/// The main lane stops adding requests to a group at this many rows, so
/// its commits stay short (~5 ms) whatever the load.
const MAIN_GROUP_ROWS: usize = 2 * BULK_ROWS;

/// The bulk lane's bound: one group's rows are built into one Arrow batch
/// and one transaction.
const BULK_GROUP_ROWS: usize = 64 * BULK_ROWS;

/// Sequence numbers (the listing's keyset, and how snapshots follow
/// `events` and `dead_letters`): handed out in ranges to the lanes'
/// transactions, which may commit out of order. A reader of a space looks
/// only below the first range of that space still in flight, so it never
/// sees a row appear behind its cursor; a range rolled back stays a gap.
pub(super) struct Sequencer {
    state: parking_lot::Mutex<Ranges>,
}

struct Ranges {
    next: i64,
    /// In-flight ranges by first number, with the spaces they write.
    in_flight: BTreeMap<i64, Vec<String>>,
}

impl Sequencer {
    pub(super) fn new(next: i64) -> Sequencer {
        Sequencer { state: parking_lot::Mutex::new(Ranges { next, in_flight: BTreeMap::new() }) }
    }

    /// Reserve `n` (at least 1) numbers for a transaction writing
    /// `spaces`; the range counts as in flight until the returned guard
    /// drops (committed, rolled back, or unwound by a panic).
    fn reserve(&self, n: usize, spaces: Vec<String>) -> Reserved<'_> {
        debug_assert!(n > 0, "an empty range would share its key with the next");
        let mut state = self.state.lock();
        let first = state.next;
        state.next += n as i64;
        state.in_flight.insert(first, spaces);
        Reserved { sequencer: self, first }
    }

    /// Every number of `space` at or below this is committed (or a gap).
    pub(super) fn committed(&self, space: &str) -> i64 {
        let state = self.state.lock();
        let pending = state.in_flight.iter().find(|(_, spaces)| spaces.iter().any(|s| s == space));
        pending.map_or(state.next, |(first, _)| *first) - 1
    }
}

/// A range in flight; finished when dropped.
struct Reserved<'a> {
    sequencer: &'a Sequencer,
    first: i64,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.sequencer.state.lock().in_flight.remove(&self.first);
    }
}

/// The writer lanes' queues.
pub(super) struct Lanes {
    pub main: mpsc::Sender<Command>,
    pub bulk: mpsc::Sender<Command>,
}

/// Start the writer lanes on clones of `conn`, `depth` requests queued in
/// each; with `idle_checkpoint` (the WAL file and a size), the main lane
/// checkpoints whenever the WAL is past that size and no write is waiting.
/// Returns their queues and the sequencer readers consult.
pub(super) fn spawn(
    conn: &Connection,
    depth: usize,
    idle_checkpoint: Option<(std::path::PathBuf, u64)>,
) -> Result<(Lanes, Arc<Sequencer>), StoreError> {
    let next_seq: i64 = conn.query_row(
        "SELECT greatest((SELECT coalesce(max(seq), 0) FROM events), (SELECT coalesce(max(seq), 0) FROM dead_letters)) + 1",
        [],
        |row| row.get(0),
    )?;
    let sequencer = Arc::new(Sequencer::new(next_seq));
    let lane = |name: &str, group_rows: usize, idle_checkpoint| -> Result<mpsc::Sender<Command>, StoreError> {
        let (tx, rx) = mpsc::channel(depth.max(1));
        let writer = Writer { conn: conn.try_clone()?, sequencer: sequencer.clone(), group_rows, idle_checkpoint };
        std::thread::Builder::new().name(name.into()).spawn(move || writer.run(rx))?;
        Ok(tx)
    };
    let lanes = Lanes {
        main: lane("sluice-writer", MAIN_GROUP_ROWS, idle_checkpoint)?,
        bulk: lane("sluice-writer-bulk", BULK_GROUP_ROWS, None)?,
    };
    Ok((lanes, sequencer))
}

struct Writer {
    conn: Connection,
    sequencer: Arc<Sequencer>,
    /// A group takes no further request once it holds this many rows.
    group_rows: usize,
    /// The WAL file, and the size past which this lane checkpoints when idle.
    idle_checkpoint: Option<(std::path::PathBuf, u64)>,
}

fn ts(micros: i64) -> Value {
    Value::Timestamp(TimeUnit::Microsecond, micros)
}

fn extra_attributes(event: &Event) -> Option<String> {
    let extra: serde_json::Map<String, serde_json::Value> = event
        .attributes
        .iter()
        .filter(|(k, _)| !COLUMN_ATTRIBUTES.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    (!extra.is_empty()).then(|| serde_json::Value::Object(extra).to_string())
}

/// The rows of `events` as one Arrow batch in the column order of the
/// `events` table, numbered from `seq`.
fn events_batch(events: &[&StoredEvent], seq: i64) -> Result<RecordBatch, ArrowError> {
    let n = events.len();
    let text = || StringBuilder::with_capacity(n, n * 16);
    let mut seqs = Int64Builder::with_capacity(n);
    let (mut tenant, mut id, mut family) = (text(), text(), text());
    let (mut created, mut received) =
        (TimestampMicrosecondBuilder::with_capacity(n), TimestampMicrosecondBuilder::with_capacity(n));
    let mut user_id = Int64Builder::with_capacity(n);
    let (mut actor_type, mut actor_id, mut source, mut group, mut name, mut status) =
        (text(), text(), text(), text(), text(), text());
    let (mut resource_type, mut resource_id, mut session_id) = (text(), text(), text());
    let mut vm_id = text();
    let mut task_id = Int64Builder::with_capacity(n);
    let (mut request_id, mut correlation_id, mut http_method, mut path) = (text(), text(), text(), text());
    let mut http_status = Int32Builder::with_capacity(n);
    let mut latency = Float64Builder::with_capacity(n);
    let (mut ip, mut agent, mut node_ip, mut worker) = (text(), text(), text(), text());
    let mut payload = StringBuilder::with_capacity(n, n * 128);
    let (mut error_message, mut attributes, mut lineage) = (text(), text(), text());
    let mut raw = StringBuilder::with_capacity(n, n * 128);
    let mut last_lineage: Option<(Lineage, String)> = None;
    for (i, stored) in events.iter().enumerate() {
        let e = &stored.event;
        let attr = |k: &str| e.attribute(k);
        seqs.append_value(seq + i as i64);
        tenant.append_value(&e.tenant);
        id.append_value(&e.id);
        family.append_value(&e.family);
        created.append_value(e.occurred_at);
        received.append_value(e.received_at);
        user_id.append_option(e.user_id);
        actor_type.append_value(&e.actor_type);
        actor_id.append_option(e.actor_id.as_deref());
        source.append_value(&e.source);
        group.append_value(&e.group);
        name.append_value(&e.name);
        status.append_value(&e.status);
        resource_type.append_option(e.resource_type.as_deref());
        resource_id.append_option(e.resource_id.as_deref());
        session_id.append_option(e.session_id.as_deref());
        vm_id.append_option(attr("vm_id"));
        task_id.append_option(attr("task_id").and_then(|v| v.parse().ok()));
        request_id.append_option(attr("request_id"));
        correlation_id.append_option(attr("correlation_id"));
        http_method.append_option(attr("http_method"));
        path.append_option(attr("path"));
        http_status.append_option(attr("http_status").and_then(|v| v.parse().ok()));
        latency.append_option(attr("latency_ms").and_then(|v| v.parse().ok()));
        ip.append_option(attr("ip_address"));
        agent.append_option(attr("user_agent"));
        node_ip.append_option(attr("node_ip"));
        worker.append_option(attr("worker_id"));
        payload.append_value(&e.payload);
        error_message.append_option(attr("error_message"));
        attributes.append_option(extra_attributes(e));
        // Events of one request usually share their lineage: serialize it once.
        if !last_lineage.as_ref().is_some_and(|(l, _)| Arc::ptr_eq(l, &stored.lineage)) {
            let text = serde_json::to_string(&*stored.lineage).unwrap_or_else(|_| "[]".into());
            last_lineage = Some((stored.lineage.clone(), text));
        }
        lineage.append_value(last_lineage.as_ref().map_or("[]", |(_, text)| text.as_str()));
        raw.append_value(&*stored.raw);
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("seq", Arc::new(seqs.finish())),
        ("tenant", Arc::new(tenant.finish())),
        ("id", Arc::new(id.finish())),
        ("family", Arc::new(family.finish())),
        ("created_at", Arc::new(created.finish())),
        ("received_at", Arc::new(received.finish())),
        ("user_id", Arc::new(user_id.finish())),
        ("actor_type", Arc::new(actor_type.finish())),
        ("actor_id", Arc::new(actor_id.finish())),
        ("source", Arc::new(source.finish())),
        ("event_group", Arc::new(group.finish())),
        ("event_type", Arc::new(name.finish())),
        ("status", Arc::new(status.finish())),
        ("resource_type", Arc::new(resource_type.finish())),
        ("resource_id", Arc::new(resource_id.finish())),
        ("session_id", Arc::new(session_id.finish())),
        ("vm_id", Arc::new(vm_id.finish())),
        ("task_id", Arc::new(task_id.finish())),
        ("request_id", Arc::new(request_id.finish())),
        ("correlation_id", Arc::new(correlation_id.finish())),
        ("http_method", Arc::new(http_method.finish())),
        ("path", Arc::new(path.finish())),
        ("http_status", Arc::new(http_status.finish())),
        ("latency_ms", Arc::new(latency.finish())),
        ("ip_address", Arc::new(ip.finish())),
        ("user_agent", Arc::new(agent.finish())),
        ("node_ip", Arc::new(node_ip.finish())),
        ("worker_id", Arc::new(worker.finish())),
        ("event_payload", Arc::new(payload.finish())),
        ("error_message", Arc::new(error_message.finish())),
        ("attributes", Arc::new(attributes.finish())),
        ("lineage", Arc::new(lineage.finish())),
        ("raw", Arc::new(raw.finish())),
    ];
    RecordBatch::try_from_iter(columns)
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        loop {
            if rx.is_empty() {
                self.checkpoint_if_due();
            }
            let Some(first) = rx.blocking_recv() else { break };
            let mut next = Some(first);
            // Rows in `group` so far.
            let mut rows = 0;
            while let Some(command) = next.take() {
                match command {
                    Command::Write { batch, done } => {
                        rows += batch.rows();
                        group.push((batch, done));
                    }
                    Command::Run(job) => {
                        // Keep order: commit what came before the job first.
                        self.commit_group(&mut group);
                        rows = 0;
                        job(&self.conn);
                    }
                }
                if group.len() < MAX_GROUP && rows < self.group_rows {
                    next = rx.try_recv().ok();
                }
            }
            self.commit_group(&mut group);
        }
    }

    /// Checkpoint when the WAL is past the idle size (nothing is waiting):
    /// a checkpoint holds every commit while it runs, and DuckDB's own, at
    /// `checkpoint_threshold`, is one long pause for every tenant (seconds
    /// at 512 MB; RELIABILITY.md, F18, F29). Checkpointing whenever the
    /// store is idle keeps each pause short and out of the way of waiting
    /// writes; under steady load the threshold still applies.
    fn checkpoint_if_due(&mut self) {
        let Some((wal, bytes)) = &self.idle_checkpoint else { return };
        if std::fs::metadata(wal).map_or(0, |m| m.len()) < *bytes {
            return;
        }
        let started = std::time::Instant::now();
        match self.conn.execute_batch("CHECKPOINT") {
            Ok(()) => crate::metrics::checkpoint(started.elapsed()),
            // E.g. another lane's transaction is open: the next idle moment.
            Err(e) => tracing::debug!(error = %e, "idle checkpoint skipped"),
        }
    }

    fn commit_group(&mut self, group: &mut Vec<(WriteBatch, tokio::sync::oneshot::Sender<Result<(), StoreError>>)>) {
        if group.is_empty() {
            return;
        }
        let batches: Vec<&WriteBatch> = group.iter().map(|(b, _)| b).collect();
        let rows: usize = batches.iter().map(|b| b.events.len()).sum();
        let started = std::time::Instant::now();
        let result = self.write(&batches);
        crate::metrics::commit(group.len(), rows, started.elapsed(), result.is_ok());
        match result {
            Ok(()) => {
                for (_, done) in group.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                // One bad request must not fail its neighbours: retry each
                // request alone, so only the faulty one is refused.
                tracing::warn!(error = %e, requests = group.len(), "group commit failed; retrying one by one");
                for (batch, done) in group.drain(..) {
                    let _ = done.send(self.write(&[&batch]));
                }
            }
        }
    }

    fn write(&mut self, batches: &[&WriteBatch]) -> Result<(), StoreError> {
        let rows: usize = batches.iter().map(|b| b.rows()).sum();
        if rows == 0 {
            // Runs, logs, idempotency records only: no sequence to guard.
            return self.transaction(batches, 0);
        }
        let spaces: std::collections::BTreeSet<&String> = batches
            .iter()
            .flat_map(|b| b.events.iter().map(|e| &e.event.tenant).chain(b.dead_letters.iter().map(|d| &d.tenant)))
            .collect();
        let sequencer = self.sequencer.clone();
        let range = sequencer.reserve(rows, spaces.into_iter().cloned().collect());
        self.transaction(batches, range.first)
    }

    fn transaction(&mut self, batches: &[&WriteBatch], first: i64) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN TRANSACTION")?;
        let result = self.append(batches, first).and_then(|()| Ok(self.conn.execute_batch("COMMIT")?));
        if result.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        result
    }

    fn append(&mut self, batches: &[&WriteBatch], first: i64) -> Result<(), StoreError> {
        let mut seq = first;
        let events: Vec<&StoredEvent> = batches.iter().flat_map(|b| &b.events).collect();
        if !events.is_empty() {
            // Columnar (Arrow) append: an order of magnitude faster than
            // appending value by value.
            let batch = events_batch(&events, seq).map_err(|e| StoreError::Encode(e.to_string()))?;
            let mut appender = self.conn.appender("events")?;
            appender.append_record_batch(batch)?;
            appender.flush()?;
            seq += events.len() as i64;
        }
        // An appender costs a catalog lookup: only for tables with rows.
        if batches.iter().any(|b| !b.dead_letters.is_empty()) {
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
                    d.event.to_stored(),
                    d.raw.to_string(),
                ])?;
                seq += 1;
            }
            appender.flush()?;
        }
        if batches.iter().any(|b| !b.logs.is_empty()) {
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
        if batches.iter().any(|b| !b.runs.is_empty()) {
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
        if batches.iter().any(|b| !b.idempotency.is_empty()) {
            let now = ts(crate::event::now_micros());
            let mut appender = self.conn.appender("idempotency_keys")?;
            for r in batches.iter().flat_map(|b| &b.idempotency) {
                appender.append_row(params![r.tenant, r.key, r.request_hash, r.status, now])?;
            }
            appender.flush()?;
            let mut appender = self.conn.appender("idempotency_answers")?;
            for r in batches.iter().flat_map(|b| &b.idempotency) {
                appender.append_row(params![r.tenant, r.key, r.body, now])?;
            }
            appender.flush()?;
        }
        let mut replayed: Vec<i64> = batches.iter().flat_map(|b| b.replayed.iter().copied()).collect();
        if !replayed.is_empty() {
            replayed.sort_unstable();
            let wanted = replayed.len();
            replayed.dedup();
            let list = replayed.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            let deleted = self.conn.execute(&format!("DELETE FROM dead_letters WHERE seq IN ({list})"), [])?;
            // Each letter is replayed once: a letter another replay took
            // meanwhile (or twice in this group) fails the transaction, and
            // the retry one request at a time refuses only the late one.
            if deleted != wanted {
                return Err(StoreError::Conflict(
                    "a dead letter of this replay was replayed meanwhile; list them again".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Sequencer;

    #[test]
    fn a_space_sees_only_below_its_own_first_range_in_flight() {
        let seq = Sequencer::new(1);
        let big = seq.reserve(10_000, vec!["noisy".into()]);
        let small = seq.reserve(1, vec!["quiet".into()]);
        assert_eq!((big.first, small.first), (1, 10_001));
        // The small range commits first: quiet sees it at once; noisy sees
        // nothing of its own range yet, whatever else committed.
        drop(small);
        assert_eq!(seq.committed("quiet"), 10_001);
        assert_eq!(seq.committed("noisy"), 0);
        let later = seq.reserve(5, vec!["noisy".into(), "quiet".into()]);
        assert_eq!(seq.committed("quiet"), later.first - 1);
        drop(big);
        assert_eq!(seq.committed("noisy"), later.first - 1);
        // A rolled-back (or panicked) range is a gap: finished all the same.
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _range = later;
            panic!("a lane fails mid-write");
        }));
        assert!(unwound.is_err());
        assert_eq!(seq.committed("noisy"), 10_006);
        assert_eq!(seq.committed("anyone"), 10_006);
    }
}
