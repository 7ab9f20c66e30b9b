//! Per-tenant retention: expired rows are deleted in bounded batches, each
//! its own short job on the writer, so ingest keeps flowing in between.

use super::{EventStore, StoreError};

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

    /// Delete every row older than its tenant's retention period, in
    /// batches. Returns how many rows were deleted.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn sweep_expired(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for (table, column) in AGED {
            loop {
                let sql = format!(
                    "DELETE FROM {table} WHERE rowid IN (SELECT x.rowid FROM {table} x JOIN tenants t ON x.tenant = t.id \
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
