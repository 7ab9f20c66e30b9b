//! Per-tenant retention: expired rows are deleted in bounded batches, each
//! its own short job on the writer, so ingest keeps flowing in between.

use super::{EventStore, StoreError};

/// A tenant's quotas; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    pub events_per_day: Option<i64>,
    pub storage_bytes: Option<i64>,
    /// Sustained ingest rate in events per second (`None`: the server's
    /// default, `SLUICE_TENANT_EVENTS_PER_SEC`).
    #[serde(default)]
    pub events_per_second: Option<i64>,
    /// Events at once before the rate applies (`None`: the server's
    /// default, `SLUICE_TENANT_EVENTS_BURST`).
    #[serde(default)]
    pub events_burst: Option<i64>,
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
                 quota_events_per_second = ?, quota_events_burst = ? WHERE id = ?",
                duckdb::params![
                    quotas.events_per_day,
                    quotas.storage_bytes,
                    quotas.events_per_second,
                    quotas.events_burst,
                    tenant
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Every tenant's own ingest rate: `(tenant, events per second, burst)`,
    /// for tenants that set either.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn load_rates(&self) -> Result<Vec<(String, Option<i64>, Option<i64>)>, StoreError> {
        self.read_blocking(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, quota_events_per_second, quota_events_burst FROM tenants \
                 WHERE quota_events_per_second IS NOT NULL OR quota_events_burst IS NOT NULL",
            )?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
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
        self.read(move |conn| {
            let quotas = conn.query_row(
                "SELECT quota_events_per_day, quota_storage_bytes, quota_events_per_second, quota_events_burst \
                 FROM tenants WHERE id = ?",
                [&tenant],
                |row| {
                    Ok(Quotas {
                        events_per_day: row.get(0)?,
                        storage_bytes: row.get(1)?,
                        events_per_second: row.get(2)?,
                        events_burst: row.get(3)?,
                    })
                },
            )?;
            if quotas.events_per_day.is_none() && quotas.storage_bytes.is_none() {
                return Ok((quotas, 0, 0));
            }
            let midnight =
                chrono::Utc::now().date_naive().and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp_micros());
            let (today, bytes): (i64, i64) = conn.query_row(
                "SELECT count(*) FILTER (WHERE received_at >= make_timestamp(?)), \
                 coalesce(sum(strlen(coalesce(event_payload, '')) + strlen(raw)), 0)::BIGINT \
                 FROM events WHERE tenant = ?",
                duckdb::params![midnight, space],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            Ok((quotas, today, bytes))
        })
        .await
    }

    /// Delete every row older than its tenant's retention period (test
    /// spaces age like their tenant), in batches. Returns how many rows were deleted.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn sweep_expired(&self) -> Result<u64, StoreError> {
        // Idempotency keys are kept for a day: long enough for any retry.
        let mut total = self
            .write(|conn| {
                conn.execute("DELETE FROM idempotency_keys WHERE created_at < now()::TIMESTAMP - INTERVAL 1 DAY", [])
            })
            .await? as u64;
        for (table, column) in AGED {
            loop {
                let sql = format!(
                    "DELETE FROM {table} WHERE rowid IN (SELECT x.rowid FROM {table} x JOIN tenants t ON split_part(x.tenant, ':', 1) = t.id \
                     WHERE t.retention_days IS NOT NULL \
                     AND x.{column} < now()::TIMESTAMP - to_days(t.retention_days) LIMIT {BATCH})"
                );
                let deleted = self.write(move |conn| conn.execute(&sql, [])).await?;
                total += deleted as u64;
                if deleted < BATCH {
                    break;
                }
            }
        }
        Ok(total)
    }
}
