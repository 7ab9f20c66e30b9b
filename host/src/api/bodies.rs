//! The bytes of request bodies the server holds at once.
//!
//! A request takes from the budget what its `Content-Length` says (a
//! chunked body: the largest a body may be), times what parsing makes of
//! those bytes, before its body is read, and gives it back with its answer.
//! The budget is shared by tenants, each of which may hold at most a
//! quarter of it: one tenant (or one client with one token) cannot hold
//! the room everyone's large requests need (RELIABILITY.md, F38, F43, F45).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, AppState};

/// Bodies up to this size (by `Content-Length`) are not counted: a
/// thousand connections of them hold little, and a client filling the
/// budget with large (or chunked) bodies must not starve everyone's single
/// events.
const SMALL_BODY: u64 = 64 << 10;

/// How long a request may wait for room in the budget.
const BODY_WAIT: Duration = Duration::from_secs(1);

/// What a body costs in the budget per byte it announces. A handler holds
/// the bytes, the JSON values parsed from them and the events made of those
/// values at once: measured, 100 requests of 9.7 MB generic batches held
/// 2.9 GB (RELIABILITY.md, F45).
const HELD_PER_BYTE: u64 = 3;

/// The most of the budget one tenant holds at once: a quarter.
const TENANT_SHARE: u64 = 4;

#[derive(Clone)]
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    share_kib: u64,
    /// Each tenant's share, made when it first sends a large body (tenants
    /// are made by admins, so they are few).
    tenants: Arc<parking_lot::Mutex<HashMap<String, Arc<Semaphore>>>>,
    /// What a body of unknown length counts as, in bytes.
    largest: u64,
}

impl BodyBudget {
    /// `bytes` in all, bodies of at most `largest` bytes.
    pub fn new(bytes: u64, largest: usize) -> BodyBudget {
        let total_kib = bytes.div_ceil(1024).clamp(1, u64::from(u32::MAX >> 3));
        BodyBudget {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            share_kib: (total_kib / TENANT_SHARE).max(1),
            tenants: Arc::default(),
            largest: largest as u64,
        }
    }

    fn share(&self, tenant: &str) -> Arc<Semaphore> {
        let mut tenants = self.tenants.lock();
        if let Some(share) = tenants.get(tenant) {
            return share.clone();
        }
        let share = Arc::new(Semaphore::new(self.share_kib as usize));
        tenants.insert(tenant.to_owned(), share.clone());
        share
    }

    /// Room for a body of `bytes` from `tenant`: its share first, then the
    /// whole budget, each waited for at most [`BODY_WAIT`] in all.
    async fn take(&self, tenant: &str, bytes: u64) -> Result<Held, Refusal> {
        let kib = bytes.saturating_mul(HELD_PER_BYTE).div_ceil(1024);
        // A body larger than a share counts as the whole share: it goes
        // alone, and leaves room for others.
        let kib = kib.min(self.share_kib) as u32;
        let deadline = tokio::time::Instant::now() + BODY_WAIT;
        let share = tokio::time::timeout_at(deadline, self.share(tenant).acquire_many_owned(kib))
            .await
            .map_err(|_| Refusal::Tenant)?
            .map_err(|_| Refusal::Server)?;
        let all = tokio::time::timeout_at(deadline, self.kib.clone().acquire_many_owned(kib))
            .await
            .map_err(|_| Refusal::Server)?
            .map_err(|_| Refusal::Server)?;
        Ok(Held { _share: share, _all: all })
    }
}

/// Room held in the budget, given back when dropped.
struct Held {
    _share: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

enum Refusal {
    /// The tenant holds its share.
    Tenant,
    /// The server holds its whole budget.
    Server,
}

/// The middleware. A request whose token does not authenticate takes no
/// room: its handler refuses it (401) before reading its body, as every
/// handler's first extractor is the caller. The caller found here is kept
/// in the request, so the handler does not look it up again.
pub async fn body_budget(
    State((state, budget)): State<(AppState, BodyBudget)>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let bytes = match length {
        Some(n) => n.min(budget.largest),
        None if chunked => budget.largest,
        None => 0,
    };
    if bytes <= SMALL_BODY {
        return next.run(request).await;
    }
    let principal = match super::credential(headers) {
        Some(secret) => state.auth.authenticate(secret).await.ok().flatten(),
        None => None,
    };
    let Some(principal) = principal else {
        return next.run(request).await;
    };
    let tenant = principal.tenant.clone();
    request.extensions_mut().insert(principal);
    match budget.take(&tenant, bytes).await {
        Ok(held) => {
            let response = next.run(request).await;
            drop(held);
            response
        }
        Err(refusal) => {
            let path = request.uri().path().to_owned();
            let error = match refusal {
                Refusal::Tenant => {
                    crate::metrics::throttled(&tenant, "bodies");
                    let m = "this tenant is sending as many large request bodies as it may at once; retry later";
                    ApiError::TooManyRequests(m.into(), 1)
                }
                Refusal::Server => ApiError::Unavailable(
                    "the server is reading as many request bodies as it holds at once; retry later".into(),
                ),
            };
            metrics::counter!("sluice_http_bodies_refused_total").increment(1);
            let response = super::dialect::by_path(&path, error);
            // The body is read and thrown away, holding nothing: a client
            // still sending it when the connection closed would see a
            // reset instead of this answer and its `Retry-After`. The body
            // deadline bounds how long this takes.
            let mut body = request.into_body().into_data_stream();
            while let Some(Ok(_)) = futures_util::StreamExt::next(&mut body).await {}
            response
        }
    }
}

/// Body-size refusals come from axum's extractors as plain text; give them
/// the error shape of the family the path belongs to.
pub async fn shape_too_large(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v: &HeaderValue| v.to_str().unwrap_or("").starts_with("application/json"));
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE || is_json {
        return response;
    }
    let message = "the request body is larger than this server accepts";
    super::dialect::by_path(&path, ApiError::PayloadTooLarge(message.into()))
}
