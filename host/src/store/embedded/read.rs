//! Reads: the event listing with its keyset cursor, single events, dead
//! letters and plugin logs. Every query is scoped to one tenant.

use std::sync::Arc;

use base64::Engine as _;
use duckdb::types::Value as DbValue;
use duckdb::{params_from_iter, Row};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{
    AnalystSlot, DeadLetterRow, EventFilter, EventPage, EventRow, EventStore, EventWithRaw, ExportFile, Letter,
    PluginLogRow, StoreError,
};

const EVENT_COLUMNS: &str = "id, epoch_us(created_at), user_id, actor_type, actor_id, source, event_group, \
     event_type, status, resource_type, resource_id, session_id, vm_id, task_id, request_id, correlation_id, \
     http_method, path, http_status, latency_ms, ip_address, user_agent, node_ip, worker_id, event_payload, \
     error_message, family, epoch_us(received_at), lineage, seq";

/// A row's sequence number and its size, as counted against
/// [`PAGE_BYTES`]: its payload and lineage, the columns of a page of
/// unbounded size.
const SIZE_COLUMNS: &str = "seq, coalesce(strlen(event_payload), 0) + strlen(lineage)";

/// What an event's row stores, in SQL: the columns
/// [`crate::event::StoredEvent::stored_bytes`] counts.
pub(super) const STORED_BYTES: &str =
    "coalesce(strlen(event_payload), 0) + strlen(raw) + coalesce(strlen(attributes), 0) + strlen(lineage)";

/// Most payload bytes in one page of a listing or an export: a page of
/// large events ends early (its cursor continues it), so what one read
/// holds, in DuckDB and in the answer, is bounded in bytes and not only in
/// rows (a tenant whose plugin stores 1 MB events made 200-row pages of
/// 200 MB; RELIABILITY.md, F17).
const PAGE_BYTES: i64 = 8 << 20;

/// Most bytes (payloads and raw inputs) of stored events one shadow run
/// reads and replays, and of dead letters one replay reads (RELIABILITY.md,
/// F23).
const REPLAY_BYTES: i64 = 32 << 20;

/// The first rows of `sql` (which selects `seq` and a size, in reading
/// order, for the tenant bound to its one `?`) whose sizes fit in `budget`
/// bytes (at least one).
fn sized_prefix(
    conn: &duckdb::Connection,
    sql: &str,
    tenant: &str,
    budget: i64,
) -> Result<Vec<(i64, i64)>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let mut sizes: Vec<(i64, i64)> =
        stmt.query_map([tenant], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<duckdb::Result<_>>()?;
    sizes.truncate(super::fitting(&sizes, budget));
    Ok(sizes)
}

/// The sequence numbers of sized rows, for an `IN (...)` list.
fn seq_list(sizes: &[(i64, i64)]) -> String {
    sizes.iter().map(|(seq, _)| seq.to_string()).collect::<Vec<_>>().join(",")
}

/// One row of `EVENT_COLUMNS`, with its sequence number.
fn event_row(row: &Row<'_>) -> duckdb::Result<(i64, EventRow)> {
    let event = EventRow {
        id: row.get(0)?,
        created_at: row.get(1)?,
        user_id: row.get(2)?,
        actor_type: row.get(3)?,
        actor_id: row.get(4)?,
        source: row.get(5)?,
        event_group: row.get(6)?,
        event_type: row.get(7)?,
        status: row.get(8)?,
        resource_type: row.get(9)?,
        resource_id: row.get(10)?,
        session_id: row.get(11)?,
        vm_id: row.get(12)?,
        task_id: row.get(13)?,
        request_id: row.get(14)?,
        correlation_id: row.get(15)?,
        http_method: row.get(16)?,
        path: row.get(17)?,
        http_status: row.get(18)?,
        latency_ms: row.get(19)?,
        ip_address: row.get(20)?,
        user_agent: row.get(21)?,
        node_ip: row.get(22)?,
        worker_id: row.get(23)?,
        event_payload: row.get(24)?,
        error_message: row.get(25)?,
        family: row.get(26)?,
        received_at: row.get(27)?,
        lineage: row.get(28)?,
    };
    Ok((row.get(29)?, event))
}

impl EventFilter {
    /// SQL conditions and their parameters, after the tenant condition.
    fn conditions(&self, sql: &mut String, args: &mut Vec<DbValue>) {
        let mut text = |column: &str, value: &Option<String>| {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                args.push(DbValue::Text(v.clone()));
            }
        };
        text("event_group", &self.event_group);
        text("event_type", &self.event_type);
        text("status", &self.status);
        text("vm_id", &self.vm_id);
        text("session_id", &self.session_id);
        text("family", &self.family);
        if let Some(user_id) = self.user_id {
            sql.push_str(" AND user_id = ?");
            args.push(DbValue::BigInt(user_id));
        }
        if let Some(from) = self.from {
            sql.push_str(" AND created_at >= make_timestamp(?)");
            args.push(DbValue::BigInt(from));
        }
        if let Some(to) = self.to {
            sql.push_str(" AND created_at < make_timestamp(?)");
            args.push(DbValue::BigInt(to));
        }
    }

    /// Bound into the cursor's signature, so a cursor only continues the
    /// listing it came from.
    fn fingerprint(&self) -> String {
        format!("{self:?}")
    }
}

type CursorMac = Hmac<Sha256>;

fn cursor_mac(key: &[u8; 32], tenant: &str, filter: &EventFilter, seq: i64) -> CursorMac {
    let mut mac = CursorMac::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(tenant.as_bytes());
    mac.update(&[0]);
    mac.update(filter.fingerprint().as_bytes());
    mac.update(&seq.to_be_bytes());
    mac
}

/// An opaque cursor: the last row's sequence number, signed with the
/// server's key over the tenant and the filter. A cursor cannot be forged, nor
/// replayed by another tenant or with other filters.
fn encode_cursor(key: &[u8; 32], tenant: &str, filter: &EventFilter, seq: i64) -> String {
    let tag = cursor_mac(key, tenant, filter, seq).finalize().into_bytes();
    let mut bytes = seq.to_be_bytes().to_vec();
    bytes.extend_from_slice(&tag[..16]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_cursor(key: &[u8; 32], tenant: &str, filter: &EventFilter, cursor: &str) -> Result<i64, StoreError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).map_err(|_| StoreError::BadCursor)?;
    if bytes.len() != 24 {
        return Err(StoreError::BadCursor);
    }
    let seq = i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    cursor_mac(key, tenant, filter, seq).verify_truncated_left(&bytes[8..]).map_err(|_| StoreError::BadCursor)?;
    Ok(seq)
}

impl EventStore {
    /// One page of a tenant's events, newest first, after `cursor`.
    ///
    /// # Errors
    ///
    /// [`StoreError::BadCursor`] for a cursor this server did not issue for
    /// this tenant and filter; database errors.
    pub async fn list_events(
        &self,
        tenant: String,
        filter: EventFilter,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let key = *self.cursor_key();
        let after = cursor.map(|c| decode_cursor(&key, &tenant, &filter, &c)).transpose()?;
        // Rows are appended in about sequence order (each lane in order; the
        // two lanes' requests interleave), so DuckDB's per-row-group min/max
        // of `seq` lets it skip everything outside a sequence window.
        // Look in a window below the cursor first and widen it until the page
        // is full or the window covers the table: the first page and deep
        // pages then read a few row groups, not the whole table.
        let below = after.unwrap_or(self.committed_seq(&tenant) + 1);
        self.read_as(&tenant.clone(), move |conn| {
            let mut conditions = " WHERE tenant = ?".to_string();
            let mut args = vec![DbValue::Text(tenant.clone())];
            filter.conditions(&mut conditions, &mut args);
            conditions.push_str(" AND seq < ? AND seq >= ?");
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {SIZE_COLUMNS} FROM events{conditions} ORDER BY seq DESC LIMIT {}",
                limit + 1
            ))?;
            let mut window: i64 = 16_384;
            let sizes: Vec<(i64, i64)> = loop {
                let floor = below.saturating_sub(window).max(0);
                let mut bound = args.clone();
                bound.push(DbValue::BigInt(below));
                bound.push(DbValue::BigInt(floor));
                let sizes: Vec<(i64, i64)> = stmt
                    .query_map(params_from_iter(bound), |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<duckdb::Result<_>>()?;
                if sizes.len() > limit || floor == 0 {
                    break sizes;
                }
                window = window.saturating_mul(16);
            };
            let fit = super::fitting(&sizes[..sizes.len().min(limit)], PAGE_BYTES);
            let Some(((newest, _), (oldest, _))) = sizes.first().zip(sizes[..fit].last()) else {
                return Ok(EventPage { items: Vec::new(), next_cursor: None });
            };
            // The rows of the page, between its newest and oldest sequence
            // numbers under the same conditions: exactly those sized above.
            args.push(DbValue::BigInt(newest + 1));
            args.push(DbValue::BigInt(*oldest));
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events{conditions} ORDER BY seq DESC"))?;
            let rows: Vec<(i64, EventRow)> =
                stmt.query_map(params_from_iter(args), event_row)?.collect::<duckdb::Result<_>>()?;
            let next_cursor = (sizes.len() > fit).then(|| encode_cursor(&key, &tenant, &filter, *oldest));
            Ok(EventPage { items: rows.into_iter().map(|(_, v)| v).collect(), next_cursor })
        })
        .await
    }

    /// Export: up to `limit` of a tenant's events after sequence `after`,
    /// oldest first, in `[from, to)` of `created_at`, no further than what
    /// is committed of the space (a page never passes a range still being
    /// written, whose rows would land behind it), and at most
    /// [`PAGE_BYTES`] of payloads. Returns the rows, each written by
    /// `encode` (an NDJSON line, say), and, when more may follow, the
    /// sequence number to continue after.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn export_page(
        &self,
        tenant: String,
        filter: EventFilter,
        after: i64,
        limit: usize,
        encode: crate::store::Encode,
    ) -> Result<(String, Option<i64>), StoreError> {
        let upto = self.committed_seq(&tenant);
        // Read and serialized on the background threads, which yield the
        // cores to ingest (RELIABILITY.md, F28: four exports serialized on
        // the request threads raised another tenant's p99 from 9 to 280 ms).
        self.read_in_background(move |conn| {
            let mut conditions = " WHERE tenant = ?".to_string();
            let mut args = vec![DbValue::Text(tenant)];
            filter.conditions(&mut conditions, &mut args);
            conditions.push_str(" AND seq >= ? AND seq <= ?");
            let mut bound = args.clone();
            bound.push(DbValue::BigInt(after + 1));
            bound.push(DbValue::BigInt(upto));
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {SIZE_COLUMNS} FROM events{conditions} ORDER BY seq LIMIT {limit}"))?;
            let sizes: Vec<(i64, i64)> = stmt
                .query_map(params_from_iter(bound), |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<duckdb::Result<_>>()?;
            let fit = super::fitting(&sizes, PAGE_BYTES);
            let Some(((first, _), (last, _))) = sizes.first().zip(sizes[..fit].last()) else {
                return Ok((String::new(), None));
            };
            args.push(DbValue::BigInt(*first));
            args.push(DbValue::BigInt(*last));
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events{conditions} ORDER BY seq"))?;
            let rows: Vec<(i64, EventRow)> =
                stmt.query_map(params_from_iter(args), event_row)?.collect::<duckdb::Result<_>>()?;
            // More may follow when the page stopped at its row limit or
            // at its byte bound.
            let more = sizes.len() == limit || fit < sizes.len();
            let mut text = String::new();
            for (_, row) in rows {
                encode(row, &mut text);
            }
            Ok((text, more.then_some(*last)))
        })
        .await
    }

    /// One of the space's analyst slots (shared with queries and Parquet
    /// exports), held by an NDJSON export for as long as it streams.
    ///
    /// # Errors
    ///
    /// [`StoreError::Busy`] beyond the analyst slots.
    pub fn analyst_slot(&self, space: &str) -> Result<AnalystSlot, StoreError> {
        let permits = self.inner.query.admit(space).map_err(|e| StoreError::Busy(e.to_string()))?;
        Ok(AnalystSlot::new(permits))
    }

    /// Export a tenant space's events in `[from, to)` into a Parquet file
    /// under the export directory. An export takes one of the space's
    /// analyst slots (shared with queries) while DuckDB writes the file, runs
    /// in commit order without a sort (so its memory does not grow with
    /// the export), and is interrupted when the caller stops waiting; the
    /// file is removed when the returned guard drops.
    ///
    /// # Errors
    ///
    /// [`StoreError::Busy`] beyond the analyst slots, database errors.
    pub async fn export_parquet(&self, space: String, filter: EventFilter) -> Result<ExportFile, StoreError> {
        let _permits = self.inner.query.admit(&space).map_err(|e| StoreError::Busy(e.to_string()))?;
        let file = self.export_file("parquet");
        let cancel = Interrupter::default();
        let running = cancel.clone();
        let mut guard = InterruptOnDrop(Some(cancel));
        let done = self
            .read_in_background(move |conn| {
                let mut sql = "SELECT * EXCLUDE (tenant) FROM events WHERE tenant = ?".to_string();
                let mut args = vec![DbValue::Text(space)];
                filter.conditions(&mut sql, &mut args);
                // DuckDB keeps rows in commit order (each request's rows in
                // `seq` order): no ORDER BY, no sort.
                let copy = format!("COPY ({sql}) TO '{}' (FORMAT parquet)", file.path().display());
                if !running.arm(conn) {
                    return Err(StoreError::Closed);
                }
                let copied = conn.execute(&copy, params_from_iter(args));
                running.disarm();
                copied?;
                Ok(file)
            })
            .await;
        guard.0 = None;
        done
    }

    /// The tenant's last `n` stored events (newest first), each with the raw
    /// input it came from: the material of a shadow run. Bounded in bytes
    /// too: the newest events whose payloads and raw inputs fit in
    /// [`REPLAY_BYTES`] (at least one), sized first like a listing page.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn recent_with_raw(&self, tenant: String, n: usize) -> Result<Vec<EventWithRaw>, StoreError> {
        self.read_as(&tenant.clone(), move |conn| {
            let sizes = sized_prefix(
                conn,
                &format!(
                    "SELECT seq, coalesce(strlen(event_payload), 0) + strlen(raw) FROM events WHERE tenant = ? \
                     ORDER BY seq DESC LIMIT {n}"
                ),
                &tenant,
                REPLAY_BYTES,
            )?;
            if sizes.is_empty() {
                return Ok(Vec::new());
            }
            // The rows sized, by their numbers: a range could take in rows
            // committed since into a gap of the sequence, unsized.
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, raw FROM events WHERE tenant = ? AND seq IN ({}) ORDER BY seq DESC",
                seq_list(&sizes)
            );
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([&tenant], |row| {
                let (_, event) = event_row(row)?;
                Ok(EventWithRaw { row: event, raw: row.get::<_, String>(30)?.into() })
            })?;
            Ok(rows.collect::<duckdb::Result<_>>()?)
        })
        .await
    }

    /// One event of a tenant by id.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn get_event(&self, tenant: String, id: String) -> Result<Option<EventRow>, StoreError> {
        self.read_as(&tenant.clone(), move |conn| {
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant = ? AND id = ? ORDER BY seq LIMIT 1");
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query_map([tenant, id], event_row)?;
            Ok(rows.next().transpose()?.map(|(_, v)| v))
        })
        .await
    }

    /// A tenant's dead letters, newest first: up to `limit`, and at most
    /// [`PAGE_BYTES`] of their events and raw inputs (at least one).
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn list_dead_letters(&self, tenant: String, limit: usize) -> Result<Vec<DeadLetterRow>, StoreError> {
        self.read_as(&tenant.clone(), move |conn| {
            let sizes = sized_prefix(
                conn,
                &format!(
                    "SELECT seq, strlen(event) + strlen(raw) FROM dead_letters WHERE tenant = ? \
                     ORDER BY seq DESC LIMIT {limit}"
                ),
                &tenant,
                PAGE_BYTES,
            )?;
            if sizes.is_empty() {
                return Ok(Vec::new());
            }
            let mut stmt = conn.prepare(&format!(
                "SELECT id, family, epoch_us(received_at), plugin, plugin_version, reason, event, raw, seq \
                 FROM dead_letters WHERE tenant = ? AND seq IN ({}) ORDER BY seq DESC",
                seq_list(&sizes)
            ))?;
            let rows = stmt.query_map([&tenant], |row| {
                Ok((
                    DeadLetterRow {
                        id: row.get(0)?,
                        family: row.get(1)?,
                        received_at: row.get(2)?,
                        plugin: row.get(3)?,
                        plugin_version: row.get(4)?,
                        reason: row.get(5)?,
                        event: crate::event::Event::default(),
                        raw: row.get(7)?,
                        dead_letter_id: row.get(8)?,
                    },
                    row.get::<_, String>(6)?,
                ))
            })?;
            let mut letters = Vec::with_capacity(sizes.len());
            for row in rows {
                let (mut letter, event) = row?;
                letter.event = crate::event::Event::from_stored(&tenant, &event).map_err(|e| {
                    StoreError::Corrupt(format!("dead letter {} unreadable: {e}", letter.dead_letter_id))
                })?;
                letters.push(letter);
            }
            Ok(letters)
        })
        .await
    }

    /// Dead letters to replay, oldest first: all of the tenant's (up to
    /// `limit`) or those with the given dead-letter ids, and of those the
    /// first whose events and raw inputs fit in [`REPLAY_BYTES`] (at least
    /// one).
    ///
    /// # Errors
    ///
    /// Database errors; [`StoreError::Corrupt`] for a letter whose event
    /// cannot be read back.
    pub async fn dead_letters_for_replay(
        &self,
        tenant: String,
        ids: Option<Vec<i64>>,
        limit: usize,
    ) -> Result<Vec<Letter>, StoreError> {
        self.read_as(&tenant.clone(), move |conn| {
            let mut condition = String::new();
            if let Some(ids) = &ids {
                let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                condition = format!(" AND seq IN ({})", if list.is_empty() { "NULL".into() } else { list });
            }
            // The oldest letters that fit: a replay holds them, and its
            // run's output, in memory; the next replay goes on.
            let sizes = sized_prefix(
                conn,
                &format!(
                    "SELECT seq, strlen(event) + strlen(raw) FROM dead_letters WHERE tenant = ?{condition} \
                     ORDER BY seq LIMIT {limit}"
                ),
                &tenant,
                REPLAY_BYTES,
            )?;
            if sizes.is_empty() {
                return Ok(Vec::new());
            }
            let sql = format!(
                "SELECT seq, event, raw FROM dead_letters WHERE tenant = ? AND seq IN ({}) ORDER BY seq",
                seq_list(&sizes)
            );
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([&tenant], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?))
            })?;
            let mut letters = Vec::with_capacity(sizes.len());
            for row in rows {
                let (id, event, raw) = row?;
                let event = crate::event::Event::from_stored(&tenant, &event)
                    .map_err(|e| StoreError::Corrupt(format!("dead letter {id} unreadable: {e}")))?;
                letters.push(Letter { id, event, raw: raw.into() });
            }
            Ok(letters)
        })
        .await
    }

    /// A tenant's plugin logs, newest first, optionally for one plugin.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn list_plugin_logs(
        &self,
        tenant: String,
        plugin: Option<String>,
        limit: usize,
    ) -> Result<Vec<PluginLogRow>, StoreError> {
        self.read_as(&tenant.clone(), move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT plugin, plugin_version, epoch_us(logged_at), level, message, fields FROM plugin_logs \
                 WHERE tenant = ? AND (? IS NULL OR plugin = ?) ORDER BY logged_at DESC LIMIT ?",
            )?;
            let rows = stmt.query_map(duckdb::params![tenant, plugin, plugin, limit as i64], |row| {
                Ok(PluginLogRow {
                    plugin: row.get(0)?,
                    plugin_version: row.get(1)?,
                    at: row.get(2)?,
                    level: row.get(3)?,
                    message: row.get(4)?,
                    fields: row.get(5)?,
                })
            })?;
            Ok(rows.collect::<duckdb::Result<_>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_tampering() {
        let key = [7u8; 32];
        let filter = EventFilter { status: Some("ok".into()), ..Default::default() };
        let cursor = encode_cursor(&key, "acme", &filter, 42);
        assert_eq!(decode_cursor(&key, "acme", &filter, &cursor).unwrap(), 42);
        assert!(matches!(decode_cursor(&key, "other", &filter, &cursor), Err(StoreError::BadCursor)));
        assert!(matches!(decode_cursor(&key, "acme", &EventFilter::default(), &cursor), Err(StoreError::BadCursor)));
        assert!(matches!(decode_cursor(&[8u8; 32], "acme", &filter, &cursor), Err(StoreError::BadCursor)));
        let mut forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&cursor).unwrap();
        forged[7] ^= 1;
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
        assert!(matches!(decode_cursor(&key, "acme", &filter, &forged), Err(StoreError::BadCursor)));
        assert!(matches!(decode_cursor(&key, "acme", &filter, "!!"), Err(StoreError::BadCursor)));
    }
}

/// The interrupt handle of a connection running a long statement, shared
/// with the async side that may give up on it.
#[derive(Clone, Default)]
struct Interrupter(Arc<parking_lot::Mutex<InterruptState>>);

#[derive(Default)]
struct InterruptState {
    handle: Option<Arc<duckdb::InterruptHandle>>,
    cancelled: bool,
}

impl Interrupter {
    /// Register `conn` as running; false if the caller gave up already.
    fn arm(&self, conn: &duckdb::Connection) -> bool {
        let mut state = self.0.lock();
        state.handle = Some(conn.interrupt_handle());
        !state.cancelled
    }

    fn disarm(&self) {
        self.0.lock().handle = None;
    }

    fn cancel(&self) {
        let mut state = self.0.lock();
        state.cancelled = true;
        if let Some(handle) = state.handle.take() {
            handle.interrupt();
        }
    }
}

/// Interrupts the statement when dropped before it finished (the request
/// was cancelled: its client went away).
struct InterruptOnDrop(Option<Interrupter>);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            cancel.cancel();
        }
    }
}
