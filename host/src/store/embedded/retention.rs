//! Per-tenant retention: expired rows are deleted in bounded batches, each
//! its own short job on the writer, so ingest keeps flowing in between.

use super::{EventStore, Quotas, Reservation, StoreError};

/// The quota columns of `tenants`, in the order [`quotas_at`] reads them.
const QUOTA_COLUMNS: &str =
    "quota_events_per_day, quota_storage_bytes, quota_events_per_second, quota_events_burst, quota_plugin_ms_per_second, \
     quota_bytes_per_second";

fn quotas_at(row: &duckdb::Row<'_>, first: usize) -> duckdb::Result<Quotas> {
    Ok(Quotas {
        events_per_day: row.get(first)?,
        storage_bytes: row.get(first + 1)?,
        events_per_second: row.get(first + 2)?,
        events_burst: row.get(first + 3)?,
        plugin_ms_per_second: row.get(first + 4)?,
        bytes_per_second: row.get(first + 5)?,
    })
}

/// Midnight UTC today, in microseconds since the epoch.
pub(super) fn midnight_micros() -> i64 {
    chrono::Utc::now().date_naive().and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp_micros())
}

/// Most rows one deletion job removes.
const BATCH: usize = 10_000;

/// The tables swept and the time column that ages each.
const AGED: [(&str, &str); 4] = [
    ("events", "created_at"),
    ("dead_letters", "received_at"),
    ("plugin_logs", "logged_at"),
    ("plugin_runs", "started_at"),
];

impl EventStore {
    /// Set (or clear, with `None`) a tenant's retention period in days.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn set_retention(&self, tenant: String, days: Option<u32>) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.execute("UPDATE tenants SET retention_days = ? WHERE id = ?", duckdb::params![days, tenant])?;
            Ok(())
        })
        .await
    }

    /// A tenant's retention period in days (`None`: kept forever).
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn retention(&self, tenant: String) -> Result<Option<u32>, StoreError> {
        self.read(move |conn| {
            let days: Option<Option<u32>> = duckdb::OptionalExt::optional(conn.query_row(
                "SELECT retention_days FROM tenants WHERE id = ?",
                [tenant],
                |row| row.get(0),
            ))?;
            Ok(days.flatten())
        })
        .await
    }

    /// Set a tenant's quotas (`None`: unlimited).
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn set_quotas(&self, tenant: String, quotas: Quotas) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE tenants SET quota_events_per_day = ?, quota_storage_bytes = ?, \
                 quota_events_per_second = ?, quota_events_burst = ?, quota_plugin_ms_per_second = ?, \
                 quota_bytes_per_second = ? WHERE id = ?",
                duckdb::params![
                    quotas.events_per_day,
                    quotas.storage_bytes,
                    quotas.events_per_second,
                    quotas.events_burst,
                    quotas.plugin_ms_per_second,
                    quotas.bytes_per_second,
                    tenant
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Every tenant's quotas, for tenants that set any.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn load_quotas(&self) -> Result<Vec<(String, Quotas)>, StoreError> {
        self.read_blocking(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT id, {QUOTA_COLUMNS} FROM tenants WHERE quota_events_per_day IS NOT NULL \
                 OR quota_storage_bytes IS NOT NULL OR quota_events_per_second IS NOT NULL \
                 OR quota_events_burst IS NOT NULL OR quota_plugin_ms_per_second IS NOT NULL \
                 OR quota_bytes_per_second IS NOT NULL"
            ))?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, quotas_at(row, 1)?)))?;
            Ok(rows.collect::<duckdb::Result<_>>()?)
        })
    }

    /// A tenant's quotas and what one of its spaces (the tenant itself, or
    /// its test space) uses of them: events received since midnight UTC,
    /// and bytes stored (payloads and raw inputs of its events).
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn quota_usage(&self, tenant: String, space: String) -> Result<(Quotas, i64, i64), StoreError> {
        let quotas = self
            .read(move |conn| {
                Ok(conn.query_row(&format!("SELECT {QUOTA_COLUMNS} FROM tenants WHERE id = ?"), [&tenant], |row| {
                    quotas_at(row, 0)
                })?)
            })
            .await?;
        if quotas.events_per_day.is_none() && quotas.storage_bytes.is_none() {
            return Ok((quotas, 0, 0));
        }
        let (today, bytes) = self.space_usage(space).await?;
        Ok((quotas, today, bytes))
    }

    /// What a space uses of its tenant's quotas: events received since
    /// midnight UTC and bytes stored, with what runs that passed their
    /// quota check are about to store. Counted once from the table, then
    /// kept up to date by each commit (so a check costs no scan); recounted
    /// after a retention sweep removed rows, and at midnight.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn space_usage(&self, space: String) -> Result<(i64, i64), StoreError> {
        self.counted(&space).await?;
        let usage = self.inner.usage.lock();
        let (used, pending) = &*usage;
        let u = used.get(&space).copied().map_or((0, 0), |u| (u.today, u.bytes));
        let p = pending.get(&space).copied().unwrap_or_default();
        Ok((u.0 + p.events, u.1 + p.bytes))
    }

    /// Reserve `events` and `bytes` of a space's quotas for a run about to
    /// be committed, if `quotas` admit what the space uses (as
    /// [`EventStore::space_usage`] counts it) — checked and reserved under
    /// one lock, so of concurrent runs only one can cross a quota. `Err`
    /// with the use when refused.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn reserve_usage(
        &self,
        space: String,
        events: i64,
        bytes: i64,
        quotas: Quotas,
    ) -> Result<Result<Reservation, (i64, i64)>, StoreError> {
        self.counted(&space).await?;
        let mut usage = self.inner.usage.lock();
        let (used, pending) = &mut *usage;
        let u = used.get(&space).copied().map_or((0, 0), |u| (u.today, u.bytes));
        let p = pending.entry(space.clone()).or_default();
        let now = (u.0 + p.events, u.1 + p.bytes);
        if quotas.exceeded(now.0, now.1).1.is_some() {
            return Ok(Err(now));
        }
        p.events += events;
        p.bytes += bytes;
        let pending = super::Pending { events, bytes };
        Ok(Ok(Reservation::new(super::Held { store: self.inner.clone(), space, pending })))
    }

    /// Count a space's use from the table unless it is counted for today.
    async fn counted(&self, space: &str) -> Result<(), StoreError> {
        let midnight = midnight_micros();
        if self.inner.usage.lock().0.get(space).is_some_and(|u| u.midnight == midnight) {
            return Ok(());
        }
        let key = space.to_string();
        let (today, bytes): (i64, i64) = self
            .read(move |conn| {
                let sql = format!(
                    "SELECT count(*) FILTER (WHERE received_at >= make_timestamp(?)), \
                     coalesce(sum({}), 0)::BIGINT FROM events WHERE tenant = ?",
                    super::read::STORED_BYTES
                );
                Ok(conn.query_row(&sql, duckdb::params![midnight, key], |row| Ok((row.get(0)?, row.get(1)?)))?)
            })
            .await?;
        let mut usage = self.inner.usage.lock();
        let entry = usage.0.entry(space.to_string()).or_insert(super::Usage { midnight, today, bytes });
        if entry.midnight != midnight {
            *entry = super::Usage { midnight, today, bytes };
        }
        Ok(())
    }

    /// Delete every row older than its tenant's retention period (test
    /// spaces age like their tenant), in batches. Returns how many rows were deleted.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn sweep_expired(&self) -> Result<u64, StoreError> {
        // Idempotency keys are kept for a day: long enough for any retry. A
        // key and its answer (written with one time) go together, in one
        // transaction with one cutoff, so no key outlives its answer.
        let mut total = self
            .write_bulk(|conn| {
                let cutoff: i64 = crate::event::now_micros() - 86_400_000_000;
                conn.execute_batch("BEGIN TRANSACTION")?;
                let deleted = ["idempotency_keys", "idempotency_answers"].iter().try_fold(0, |n, table| {
                    let sql = format!("DELETE FROM {table} WHERE created_at < make_timestamp(?)");
                    conn.execute(&sql, [cutoff]).map(|d| n + d)
                });
                match deleted {
                    Ok(n) => conn.execute_batch("COMMIT").map(|()| n),
                    Err(e) => {
                        let _ = conn.execute_batch("ROLLBACK");
                        Err(e)
                    }
                }
            })
            .await? as u64;
        for (table, column) in AGED {
            loop {
                let sql = format!(
                    "DELETE FROM {table} WHERE rowid IN (SELECT x.rowid FROM {table} x JOIN tenants t ON split_part(x.tenant, ':', 1) = t.id \
                     WHERE t.retention_days IS NOT NULL \
                     AND x.{column} < now()::TIMESTAMP - to_days(t.retention_days) LIMIT {BATCH})"
                );
                let deleted = self.write_bulk(move |conn| conn.execute(&sql, [])).await?;
                total += deleted as u64;
                if deleted < BATCH {
                    break;
                }
            }
        }
        if total > 0 {
            // Rows went: what spaces use is counted again when next asked.
            self.inner.usage.lock().0.clear();
        }
        Ok(total)
    }
}
