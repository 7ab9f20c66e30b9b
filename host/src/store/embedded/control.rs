//! The control plane's tables: tenants, tokens and plugin installations.
//! Writes go through the main writer lane, in order with its event writes.

use duckdb::OptionalExt;

use super::{EventStore, InstalledPlugin, PluginVersion, StoreError, TokenInfo, TokenRecord};

/// Most tokens one tenant has in force at once (live and test together);
/// beyond it an issue is refused (409) until some are revoked.
pub const MAX_TOKENS_PER_TENANT: i64 = 1_000;

/// Most tokens a listing shows, newest first.
const LISTED_TOKENS: usize = 2 * MAX_TOKENS_PER_TENANT as usize;

impl EventStore {
    /// Create a tenant if it does not exist. Returns whether it was created.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn create_tenant(&self, tenant: String) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let n = conn
                .execute("INSERT INTO tenants (id, created_at) VALUES (?, now()) ON CONFLICT DO NOTHING", [tenant])?;
            Ok(n == 1)
        })
        .await
    }

    /// Whether tenant `tenant` exists (tokens are issued only for tenants
    /// that do).
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn tenant_exists(&self, tenant: String) -> Result<bool, StoreError> {
        self.read(move |conn| {
            Ok(conn.query_row("SELECT count(*) > 0 FROM tenants WHERE id = ?", [tenant], |row| row.get(0))?)
        })
        .await
    }

    /// Store a token by its hash.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] when its tenant has
    /// [`MAX_TOKENS_PER_TENANT`] tokens in force; database errors.
    pub async fn put_token(&self, hash: String, record: TokenRecord) -> Result<(), StoreError> {
        let issued = self
            .write(move |conn| {
                let active: i64 = conn.query_row(
                    "SELECT count(*) FROM tokens WHERE tenant = ? AND revoked_at IS NULL",
                    [&record.tenant],
                    |row| row.get(0),
                )?;
                if active >= MAX_TOKENS_PER_TENANT {
                    return Ok(false);
                }
                let scopes = serde_json::to_string(&record.scopes).unwrap_or_else(|_| "[]".into());
                conn.execute(
                    "INSERT INTO tokens (hash, tenant, name, scopes, created_at, revoked_at, mode) \
                 VALUES (?, ?, ?, ?, now(), NULL, ?) ON CONFLICT (hash) DO UPDATE \
                 SET tenant = excluded.tenant, name = excluded.name, scopes = excluded.scopes, \
                 mode = excluded.mode, revoked_at = NULL",
                    [hash, record.tenant, record.name, scopes, record.mode],
                )?;
                Ok(true)
            })
            .await?;
        if !issued {
            return Err(StoreError::Conflict(format!(
                "the tenant has {MAX_TOKENS_PER_TENANT} tokens in force; revoke some before issuing more"
            )));
        }
        Ok(())
    }

    /// Look a token up by its hash; revoked tokens are not found.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn find_token(&self, hash: String) -> Result<Option<TokenRecord>, StoreError> {
        self.read(move |conn| {
            let row = conn
                .query_row(
                    "SELECT tenant, name, scopes, coalesce(mode, 'live') FROM tokens WHERE hash = ? AND revoked_at IS NULL",
                    [hash],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?, row.get::<_, String>(3)?)),
                )
                .optional()?;
            Ok(row.map(|(tenant, name, scopes, mode)| TokenRecord {
                tenant,
                name,
                scopes: serde_json::from_str(&scopes).unwrap_or_default(),
                mode,
            }))
        })
        .await
    }

    /// A tenant's tokens, newest first, without secrets (at most
    /// [`LISTED_TOKENS`]: those in force and the most recently revoked);
    /// with `mode`, only the tokens of that mode. Read under the tenant's
    /// gate of reads, like its listings (F61).
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn list_tokens(&self, tenant: String, mode: Option<String>) -> Result<Vec<TokenInfo>, StoreError> {
        self.read_as(&tenant.clone(), move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT left(hash, 16), tenant, name, scopes, coalesce(mode, 'live'), epoch_us(created_at), \
                 epoch_us(revoked_at) FROM tokens WHERE tenant = ? \
                 AND (CAST(? AS VARCHAR) IS NULL OR coalesce(mode, 'live') = ?) ORDER BY created_at DESC \
                 LIMIT {LISTED_TOKENS}"
            ))?;
            let rows = stmt.query_map(duckdb::params![tenant, mode, mode], |row| {
                Ok(TokenInfo {
                    id: row.get(0)?,
                    tenant: row.get(1)?,
                    name: row.get(2)?,
                    scopes: serde_json::from_str(&row.get::<_, String>(3)?).unwrap_or_default(),
                    mode: row.get(4)?,
                    created_at: row.get(5)?,
                    revoked_at: row.get(6)?,
                })
            })?;
            Ok(rows.collect::<duckdb::Result<_>>()?)
        })
        .await
    }

    /// Revoke a tenant's token by id; with `mode`, only a token of that
    /// mode. Returns whether one was revoked.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn revoke_token(&self, tenant: String, id: String, mode: Option<String>) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE tokens SET revoked_at = now() WHERE tenant = ? AND left(hash, 16) = ? AND revoked_at IS NULL \
                 AND (CAST(? AS VARCHAR) IS NULL OR coalesce(mode, 'live') = ?)",
                duckdb::params![tenant, id, mode, mode],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Whether any token exists (first start prints a generated one).
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn has_tokens(&self) -> Result<bool, StoreError> {
        self.read_blocking(|conn| Ok(conn.query_row("SELECT count(*) > 0 FROM tokens", [], |row| row.get(0))?))
    }

    /// Bytes of the distinct components a tenant has uploaded, not counting
    /// `sha256` (a component it uploads again takes no more room).
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn plugin_bytes(&self, tenant: String, sha256: String) -> Result<u64, StoreError> {
        self.read_as(&tenant.clone(), move |conn| {
            let bytes: i64 = conn.query_row(
                "SELECT coalesce(sum(size), 0)::BIGINT FROM \
                 (SELECT DISTINCT sha256, size FROM plugin_versions WHERE tenant = ? AND sha256 <> ?)",
                duckdb::params![tenant, sha256],
                |row| row.get(0),
            )?;
            Ok(bytes.max(0) as u64)
        })
        .await
    }

    /// Record an uploaded plugin version; uploading the same bytes again
    /// returns the existing version.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn add_plugin_version(
        &self,
        tenant: String,
        name: String,
        sha256: String,
        size: u64,
    ) -> Result<(u32, bool), StoreError> {
        self.write(move |conn| {
            let existing: Option<u32> = conn
                .query_row(
                    "SELECT version FROM plugin_versions WHERE tenant = ? AND name = ? AND sha256 = ?",
                    [&tenant, &name, &sha256],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(version) = existing {
                return Ok((version, false));
            }
            let version: u32 = conn.query_row(
                "SELECT coalesce(max(version), 0) + 1 FROM plugin_versions WHERE tenant = ? AND name = ?",
                [&tenant, &name],
                |row| row.get(0),
            )?;
            conn.execute(
                "INSERT INTO plugin_versions VALUES (?, ?, ?, ?, ?, now())",
                duckdb::params![tenant, name, version, sha256, size as i64],
            )?;
            Ok((version, true))
        })
        .await
    }

    /// The versions of a plugin, oldest first.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn plugin_versions(&self, tenant: String, name: String) -> Result<Vec<PluginVersion>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT version, sha256, size, epoch_us(uploaded_at) FROM plugin_versions \
                 WHERE tenant = ? AND name = ? ORDER BY version",
            )?;
            let rows = stmt.query_map([tenant, name], |row| {
                Ok(PluginVersion {
                    version: row.get(0)?,
                    sha256: row.get(1)?,
                    size: row.get::<_, i64>(2)? as u64,
                    uploaded_at: row.get(3)?,
                })
            })?;
            Ok(rows.collect::<duckdb::Result<_>>()?)
        })
        .await
    }

    /// Save the settings (JSON) of a plugin installation.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn save_plugin(&self, tenant: String, name: String, settings: String) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO plugins VALUES (?, ?, ?, now()) ON CONFLICT (tenant, name) DO UPDATE \
                 SET settings = excluded.settings, updated_at = excluded.updated_at",
                [tenant, name, settings],
            )?;
            Ok(())
        })
        .await
    }

    /// Remove a plugin installation (its versions stay).
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn delete_plugin(&self, tenant: String, name: String) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.execute("DELETE FROM plugins WHERE tenant = ? AND name = ?", [tenant, name])?;
            Ok(())
        })
        .await
    }

    /// Every plugin installation: `(tenant, name, settings JSON, sha256 of
    /// its current version)`.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn load_plugins(&self) -> Result<Vec<InstalledPlugin>, StoreError> {
        self.read_blocking(|conn| {
            let mut stmt = conn.prepare("SELECT tenant, name, settings FROM plugins ORDER BY tenant, name")?;
            let rows = stmt.query_map([], |row| {
                Ok(InstalledPlugin { tenant: row.get(0)?, name: row.get(1)?, settings: row.get(2)? })
            })?;
            Ok(rows.collect::<duckdb::Result<_>>()?)
        })
    }
}
