//! Safe retries. A request that carries an `Idempotency-Key` header, and an
//! event that carries its own `id`, is processed at most once per tenant:
//! the same key (or id) with the same content gets the original result
//! back without storing anything again; with different content it is a
//! conflict. The remembered result is committed in the same transaction as
//! the events it describes, so a retry after a crash finds both or neither.
//! Keys are kept for a day (see the retention job).
//!
//! While a request runs, its keys are claimed ([`KeyClaims::claim`], across
//! everything that writes the store), so two concurrent requests with one
//! key cannot both store.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::{IdempotencyRecord, KeyClaim, KeyClaims, StoreError};

/// Longest `Idempotency-Key` accepted.
pub const MAX_KEY: usize = 255;

/// Keys of events' own ids live beside header keys under this prefix.
pub const EVENT_ID_PREFIX: &str = "event-id:";

/// The keys of a tenant's requests and events: those remembered in the
/// store, and those claimed by requests running now.
pub struct Keys {
    store: Arc<dyn KeyClaims>,
}

/// Why a key cannot be used now.
#[derive(Debug)]
pub enum Refusal {
    /// The header is empty, too long or not visible ASCII.
    InvalidKey,
    /// A request with this key is being processed.
    InProgress(String),
    /// The key was used with different content.
    Mismatch(String),
    /// Item `index` of the request repeats the id of item `first`.
    DuplicateId {
        index: usize,
        first: usize,
    },
    Store(StoreError),
}

impl Refusal {
    /// A sentence for the client.
    pub fn message(&self) -> String {
        match self {
            Refusal::InvalidKey => format!("Idempotency-Key should be 1..{MAX_KEY} visible ASCII characters"),
            Refusal::InProgress(what) => format!("a request with this {what} is in progress; retry later"),
            Refusal::Mismatch(what) => format!("this {what} was used with different content; use a new one"),
            Refusal::DuplicateId { first, .. } => {
                format!("the id of item {first} appears again; each item of a request needs its own id")
            }
            Refusal::Store(e) => e.to_string(),
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}

fn sha256(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// A request's claim on its `Idempotency-Key`.
pub struct Ticket {
    claims: KeyClaim,
    tenant: String,
    key: String,
    hash: String,
}

impl Ticket {
    /// The claim on the key, to hold until the request's commit landed.
    pub fn into_claim(self) -> KeyClaim {
        self.claims
    }

    /// The record that remembers this request's response (`body`: its JSON).
    pub fn record(&self, status: u16, body: &str) -> IdempotencyRecord {
        IdempotencyRecord {
            tenant: self.tenant.clone(),
            key: self.key.clone(),
            request_hash: self.hash.clone(),
            status,
            body: body.into(),
        }
    }
}

/// What to do with a request.
pub enum Begin {
    /// No key: process it.
    Fresh,
    /// A new key: process it, and remember the response with the ticket.
    Keyed(Ticket),
    /// A retry: answer with the remembered response (status and JSON body,
    /// as first sent).
    Replay(u16, String),
}

/// The client-chosen ids of a request's events, claimed for its duration.
pub struct EventIds {
    claims: KeyClaim,
    tenant: String,
    /// Input index → (key, content hash), for inputs that carry an id.
    keyed: HashMap<usize, (String, String)>,
    /// Input index → the result remembered for its id (a retry).
    pub replayed: HashMap<usize, Value>,
}

impl EventIds {
    /// The claims on the ids, to hold until the request's commit landed.
    pub fn into_claim(self) -> KeyClaim {
        self.claims
    }

    /// The record that remembers input `index`'s result, if it has an id.
    pub fn record(&self, index: usize, result: &impl serde::Serialize) -> Option<IdempotencyRecord> {
        let (key, hash) = self.keyed.get(&index)?;
        Some(IdempotencyRecord {
            tenant: self.tenant.clone(),
            key: key.clone(),
            request_hash: hash.clone(),
            status: 200,
            body: serde_json::to_string(result).unwrap_or_default(),
        })
    }
}

impl Keys {
    pub fn new(store: Arc<dyn KeyClaims>) -> Keys {
        Keys { store }
    }

    /// Claim every key for `tenant`, or none of them.
    fn claim(&self, tenant: &str, keys: &[String], what: &str) -> Result<KeyClaim, Refusal> {
        self.store.claim(tenant, keys).ok_or_else(|| Refusal::InProgress(what.into()))
    }

    /// Look at the request's `Idempotency-Key` (`key`: the header's bytes;
    /// the content type and body are the content it is bound to).
    ///
    /// # Errors
    ///
    /// [`Refusal`] when the key is invalid, in use, or bound to other content.
    pub async fn begin(
        &self,
        tenant: &str,
        key: Option<&[u8]>,
        content_type: &[u8],
        body: &[u8],
    ) -> Result<Begin, Refusal> {
        let Some(key) = key else {
            return Ok(Begin::Fresh);
        };
        let key = match std::str::from_utf8(key) {
            Ok(key)
                if !key.is_empty()
                    && key.len() <= MAX_KEY
                    && key.bytes().all(|b| b.is_ascii_graphic())
                    && !key.starts_with(EVENT_ID_PREFIX) =>
            {
                key.to_string()
            }
            _ => return Err(Refusal::InvalidKey),
        };
        let claims = self.claim(tenant, std::slice::from_ref(&key), "Idempotency-Key")?;
        let hash = sha256(&[content_type, body]);
        let found = self.store.find_idempotent(tenant.to_string(), vec![key.clone()]).await?;
        if let Some(done) = found.get(&key) {
            if done.request_hash != hash {
                return Err(Refusal::Mismatch("Idempotency-Key".into()));
            }
            return Ok(Begin::Replay(done.status, done.body.clone()));
        }
        Ok(Begin::Keyed(Ticket { claims: claims, tenant: tenant.to_string(), key, hash }))
    }

    /// Claim the ids that a request's items carry (their `id` field) and find
    /// those already processed: an item whose id was stored before with the
    /// same content is a retry; with other content, a conflict.
    ///
    /// # Errors
    ///
    /// [`Refusal`] when an id repeats within the request, is in use by a
    /// running request, or was stored with different content.
    pub async fn event_ids<'a>(
        &self,
        tenant: &str,
        items: impl IntoIterator<Item = &'a str>,
    ) -> Result<EventIds, Refusal> {
        /// The one field looked at first; the rest of the item is skipped.
        #[derive(serde::Deserialize)]
        struct IdOnly {
            id: Option<Value>,
        }
        let mut seen = HashMap::new();
        let mut keyed: HashMap<usize, (String, String)> = HashMap::new();
        for (index, raw) in items.into_iter().enumerate() {
            // Most items carry no id: a byte search rules them out without
            // parsing (a key can only spell `id` otherwise through an escape).
            if !raw.contains("\"id\"") && !raw.contains('\\') {
                continue;
            }
            let Ok(IdOnly { id: Some(Value::String(id)) }) = serde_json::from_str(raw) else { continue };
            // The content hash is over the parsed item in its canonical form, so
            // a retry that spaces or orders its keys differently is the same.
            let canonical = serde_json::from_str::<Value>(raw).map(|v| v.to_string()).unwrap_or_default();
            let key = format!("{EVENT_ID_PREFIX}{id}");
            if let Some(first) = seen.insert(id, index) {
                return Err(Refusal::DuplicateId { index, first });
            }
            keyed.insert(index, (key, sha256(&[canonical.as_bytes()])));
        }
        let keys: Vec<String> = keyed.values().map(|(k, _)| k.clone()).collect();
        let claims = self.claim(tenant, &keys, "event id")?;
        let found =
            if keys.is_empty() { HashMap::new() } else { self.store.find_idempotent(tenant.into(), keys).await? };
        let mut replayed = HashMap::new();
        for (index, (key, hash)) in &keyed {
            if let Some(done) = found.get(key) {
                if &done.request_hash != hash {
                    return Err(Refusal::Mismatch(format!("event id (at index {index})")));
                }
                replayed.insert(*index, serde_json::from_str(&done.body).unwrap_or(Value::Null));
            }
        }
        Ok(EventIds { claims: claims, tenant: tenant.to_string(), keyed, replayed })
    }
}
