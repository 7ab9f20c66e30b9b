//! Tenants and tokens: who is calling and what they may do. Tokens are stored
//! only as SHA-256 hashes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use parking_lot::RwLock;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::{ControlState, StoreError, TokenRecord};

/// The tenant that exists from the first start; the bootstrap admin token
/// belongs to it.
pub const DEFAULT_TENANT: &str = "default";

/// The scope that grants everything, including creating tenants.
pub const ADMIN_SCOPE: &str = "admin";

/// Every scope a token may carry. `admin` implies all others.
pub const SCOPES: [&str; 15] = [
    ADMIN_SCOPE,
    "events:write",
    "events:read",
    "logs:write",
    "logs:read",
    "plugins:write",
    "plugins:read",
    "query:run",
    "tokens:write",
    "session-audit:update:all",
    "session-audit:update:self",
    "session-player-audit:update:all",
    "session-player-audit:update:self",
    "session:*",
    "metrics:read",
];

/// How long a looked-up token is trusted without asking the store again.
const CACHE_TTL: Duration = Duration::from_secs(5);

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: String,
    pub token_name: String,
    pub scopes: Vec<String>,
    /// `live` or `test`.
    pub mode: String,
}

/// Where a tenant's test-mode tokens keep their events: `<tenant>:test`
/// (tenant ids cannot contain ':'), beside the live data, never mixed in.
pub const TEST_SPACE_SUFFIX: &str = ":test";

impl Principal {
    /// The space the caller's events are written to and read from: the
    /// tenant itself for live tokens, its test space for test tokens. The
    /// plugin chain, tokens and settings belong to the tenant either way.
    pub fn space(&self) -> String {
        if self.is_test() {
            format!("{}{TEST_SPACE_SUFFIX}", self.tenant)
        } else {
            self.tenant.clone()
        }
    }

    /// Whether the caller holds a test-mode token. Such a token never
    /// reaches live data, so nothing it can do may yield a live token: it
    /// creates, lists and revokes only test-mode tokens of its own tenant,
    /// and creates no tenants.
    pub fn is_test(&self) -> bool {
        self.mode == "test"
    }

    /// The token mode the caller may manage: `Some("test")` for a test-mode
    /// caller, `None` (every mode) for a live one.
    pub fn managed_mode(&self) -> Option<&'static str> {
        self.is_test().then_some("test")
    }

    /// Whether the caller holds `scope` (or `admin`).
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == ADMIN_SCOPE)
    }
}

/// A new random token secret, `so_live_...` or `so_test_...` as in the
/// structured-logs document.
pub fn generate_token(mode: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("so_{mode}_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Resolves tokens to principals, with a short cache in front of the store.
pub struct Auth {
    store: Arc<dyn ControlState>,
    cache: RwLock<HashMap<String, (Option<Principal>, Instant)>>,
}

impl Auth {
    pub fn new(store: Arc<dyn ControlState>) -> Auth {
        Auth { store, cache: RwLock::new(HashMap::new()) }
    }

    /// The principal of a token secret, or `None` for an unknown or revoked
    /// token.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Principal>, StoreError> {
        let hash = hash_token(secret);
        if let Some((principal, at)) = self.cache.read().get(&hash) {
            if at.elapsed() < CACHE_TTL {
                return Ok(principal.clone());
            }
        }
        let principal = self.store.find_token(hash.clone()).await?.map(|r| Principal {
            tenant: r.tenant,
            token_name: r.name,
            scopes: r.scopes,
            mode: r.mode,
        });
        let mut cache = self.cache.write();
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(hash, (principal.clone(), Instant::now()));
        Ok(principal)
    }

    /// Create a tenant and an admin token for it. Returns the token secret,
    /// or `None` when the tenant already exists.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn create_tenant(&self, tenant: &str) -> Result<Option<String>, StoreError> {
        if !self.store.create_tenant(tenant.to_string()).await? {
            return Ok(None);
        }
        let record = TokenRecord {
            tenant: tenant.to_string(),
            name: "admin".into(),
            scopes: vec![ADMIN_SCOPE.into()],
            mode: "live".into(),
        };
        Ok(Some(self.issue(record).await?))
    }

    /// Store a new token for `record` and return its secret (shown once).
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn issue(&self, record: TokenRecord) -> Result<String, StoreError> {
        let secret = generate_token(&record.mode);
        self.store.put_token(hash_token(&secret), record).await?;
        Ok(secret)
    }

    /// Revoke a token of `tenant` by id (with `mode`, only a token of that
    /// mode); it stops working at once.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn revoke(&self, tenant: &str, id: &str, mode: Option<&str>) -> Result<bool, StoreError> {
        let revoked = self.store.revoke_token(tenant.to_string(), id.to_string(), mode.map(str::to_string)).await?;
        // Only the revoked token is forgotten (its id is its hash's
        // prefix): clearing the whole cache sent every tenant's next
        // request to the store at each revocation (RELIABILITY.md, F62).
        if revoked {
            self.cache.write().retain(|hash, _| !hash.starts_with(id));
        }
        Ok(revoked)
    }

    /// Make sure the default tenant and its admin token exist. With a
    /// configured token, that token is (re)registered; without one, the first
    /// start generates a token and returns it to be shown once.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn bootstrap(&self, configured: Option<&str>) -> Result<Option<String>, StoreError> {
        self.store.create_tenant(DEFAULT_TENANT.to_string()).await?;
        let record = TokenRecord {
            tenant: DEFAULT_TENANT.into(),
            name: "bootstrap-admin".into(),
            scopes: vec![ADMIN_SCOPE.into()],
            mode: "live".into(),
        };
        if let Some(secret) = configured {
            self.store.put_token(hash_token(secret), record).await?;
            return Ok(None);
        }
        if self.store.has_tokens()? {
            return Ok(None);
        }
        Ok(Some(self.issue(record).await?))
    }
}
