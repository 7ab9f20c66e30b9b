//! The embedded store in each role of the seam ([`crate::store`]): each
//! method is the store's own, and key claims are held in this process (one
//! host writes the file).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::Value;

use super::*;
use crate::store::{Analytics, Components, ControlState, EventLog, KeyClaim, KeyClaims, UsageMeter};

#[async_trait]
impl EventLog for EventStore {
    async fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        EventStore::commit(self, batch).await
    }

    async fn list_events(
        &self,
        space: String,
        filter: EventFilter,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        EventStore::list_events(self, space, filter, cursor, limit).await
    }

    async fn get_event(&self, space: String, id: String) -> Result<Option<EventRow>, StoreError> {
        EventStore::get_event(self, space, id).await
    }

    async fn export_page(
        &self,
        space: String,
        filter: EventFilter,
        after: i64,
        limit: usize,
        encode: crate::store::Encode,
    ) -> Result<(String, Option<i64>), StoreError> {
        EventStore::export_page(self, space, filter, after, limit, encode).await
    }

    async fn recent_with_raw(&self, space: String, n: usize) -> Result<Vec<EventWithRaw>, StoreError> {
        EventStore::recent_with_raw(self, space, n).await
    }

    async fn list_dead_letters(&self, space: String, limit: usize) -> Result<Vec<DeadLetterRow>, StoreError> {
        EventStore::list_dead_letters(self, space, limit).await
    }

    async fn dead_letters_for_replay(
        &self,
        space: String,
        ids: Option<Vec<i64>>,
        limit: usize,
    ) -> Result<Vec<Letter>, StoreError> {
        EventStore::dead_letters_for_replay(self, space, ids, limit).await
    }

    async fn list_plugin_logs(
        &self,
        tenant: String,
        plugin: Option<String>,
        limit: usize,
    ) -> Result<Vec<PluginLogRow>, StoreError> {
        EventStore::list_plugin_logs(self, tenant, plugin, limit).await
    }

    async fn sweep_expired(&self) -> Result<u64, StoreError> {
        EventStore::sweep_expired(self).await
    }
}

#[async_trait]
impl ControlState for EventStore {
    async fn create_tenant(&self, tenant: String) -> Result<bool, StoreError> {
        EventStore::create_tenant(self, tenant).await
    }

    async fn tenant_exists(&self, tenant: String) -> Result<bool, StoreError> {
        EventStore::tenant_exists(self, tenant).await
    }

    async fn put_token(&self, hash: String, record: TokenRecord) -> Result<(), StoreError> {
        EventStore::put_token(self, hash, record).await
    }

    async fn find_token(&self, hash: String) -> Result<Option<TokenRecord>, StoreError> {
        EventStore::find_token(self, hash).await
    }

    async fn list_tokens(&self, tenant: String, mode: Option<String>) -> Result<Vec<TokenInfo>, StoreError> {
        EventStore::list_tokens(self, tenant, mode).await
    }

    async fn revoke_token(&self, tenant: String, id: String, mode: Option<String>) -> Result<bool, StoreError> {
        EventStore::revoke_token(self, tenant, id, mode).await
    }

    fn has_tokens(&self) -> Result<bool, StoreError> {
        EventStore::has_tokens(self)
    }

    async fn plugin_bytes(&self, tenant: String, sha256: String) -> Result<u64, StoreError> {
        EventStore::plugin_bytes(self, tenant, sha256).await
    }

    async fn add_plugin_version(
        &self,
        tenant: String,
        name: String,
        sha256: String,
        size: u64,
    ) -> Result<(u32, bool), StoreError> {
        EventStore::add_plugin_version(self, tenant, name, sha256, size).await
    }

    async fn plugin_versions(&self, tenant: String, name: String) -> Result<Vec<PluginVersion>, StoreError> {
        EventStore::plugin_versions(self, tenant, name).await
    }

    async fn save_plugin(&self, tenant: String, name: String, settings: String) -> Result<(), StoreError> {
        EventStore::save_plugin(self, tenant, name, settings).await
    }

    async fn delete_plugin(&self, tenant: String, name: String) -> Result<(), StoreError> {
        EventStore::delete_plugin(self, tenant, name).await
    }

    fn load_plugins(&self) -> Result<Vec<InstalledPlugin>, StoreError> {
        EventStore::load_plugins(self)
    }

    async fn set_retention(&self, tenant: String, days: Option<u32>) -> Result<(), StoreError> {
        EventStore::set_retention(self, tenant, days).await
    }

    async fn retention(&self, tenant: String) -> Result<Option<u32>, StoreError> {
        EventStore::retention(self, tenant).await
    }

    async fn set_quotas(&self, tenant: String, quotas: Quotas) -> Result<(), StoreError> {
        EventStore::set_quotas(self, tenant, quotas).await
    }

    fn load_quotas(&self) -> Result<Vec<(String, Quotas)>, StoreError> {
        EventStore::load_quotas(self)
    }

    async fn quota_usage(&self, tenant: String, space: String) -> Result<(Quotas, i64, i64), StoreError> {
        EventStore::quota_usage(self, tenant, space).await
    }
}

#[async_trait]
impl Analytics for EventStore {
    fn analyst_slot(&self, space: &str) -> Result<AnalystSlot, StoreError> {
        EventStore::analyst_slot(self, space)
    }

    async fn export_parquet(&self, space: String, filter: EventFilter) -> Result<ExportFile, StoreError> {
        EventStore::export_parquet(self, space, filter).await
    }

    async fn query(
        &self,
        space: String,
        sql: String,
        params: Vec<Value>,
        format: QueryFormat,
        limits: QueryLimits,
    ) -> Result<QueryAnswer, QueryError> {
        EventStore::query(self, space, sql, params, format, limits).await
    }

    async fn refresh_query_snapshots(&self) -> Result<usize, StoreError> {
        EventStore::refresh_query_snapshots(self).await
    }
}

/// `(space, key)` of requests being processed now.
pub(super) type Claimed = Arc<Mutex<HashSet<(String, String)>>>;

/// Claims on keys while their request runs; released on drop.
struct Claims {
    set: Claimed,
    entries: Vec<(String, String)>,
}

impl Drop for Claims {
    fn drop(&mut self) {
        let mut set = self.set.lock();
        for entry in &self.entries {
            set.remove(entry);
        }
    }
}

#[async_trait]
impl KeyClaims for EventStore {
    fn claim(&self, space: &str, keys: &[String]) -> Option<KeyClaim> {
        let mut set = self.inner.claimed.lock();
        let entries: Vec<(String, String)> = keys.iter().map(|k| (space.to_string(), k.clone())).collect();
        if entries.iter().any(|e| set.contains(e)) {
            return None;
        }
        set.extend(entries.iter().cloned());
        Some(KeyClaim::new(Claims { set: self.inner.claimed.clone(), entries }))
    }

    async fn find_idempotent(
        &self,
        space: String,
        keys: Vec<String>,
    ) -> Result<HashMap<String, IdempotencyRecord>, StoreError> {
        EventStore::find_idempotent(self, space, keys).await
    }
}

#[async_trait]
impl UsageMeter for EventStore {
    async fn space_usage(&self, space: String) -> Result<(i64, i64), StoreError> {
        EventStore::space_usage(self, space).await
    }

    async fn reserve_usage(
        &self,
        space: String,
        events: i64,
        bytes: i64,
        quotas: Quotas,
    ) -> Result<Result<Reservation, (i64, i64)>, StoreError> {
        EventStore::reserve_usage(self, space, events, bytes, quotas).await
    }
}

/// Components are files named by their digest in the components directory
/// (beside the runtime's cache of compiled artifacts).
impl Components for EventStore {
    fn put_component(&self, sha256: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = &self.inner.components_dir;
        std::fs::create_dir_all(dir)?;
        crate::files::write_atomic(&component_path(dir, sha256)?, bytes)?;
        Ok(())
    }

    fn component(&self, sha256: &str) -> Result<Vec<u8>, StoreError> {
        Ok(std::fs::read(component_path(&self.inner.components_dir, sha256)?)?)
    }
}

/// Where a component is kept; only a SHA-256 in hex names one.
fn component_path(dir: &std::path::Path, sha256: &str) -> Result<std::path::PathBuf, StoreError> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::Corrupt(format!("{sha256:?} is not a component digest")));
    }
    Ok(dir.join(format!("{sha256}.wasm")))
}
