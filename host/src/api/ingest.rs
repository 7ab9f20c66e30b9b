//! The ingest steps shared by the families whose request is one unit
//! (session audit, audit logs, logs): the run under the whole-or-nothing
//! rule and the commit with the request's idempotency record.

use axum::http::StatusCode;
use serde_json::Value;

use super::idempotency::Ticket;
use super::{run_mode, ApiError, AppState};
use crate::auth::Principal;
use crate::pipeline::{Disposition, Input, RunOutput};
use crate::store::WriteBatch;

/// Run the caller's inputs through its tenant's chain, for families whose
/// request is one unit: when any event is rejected, no event or dead letter
/// of the request is kept in the batch (plugin logs and runs still are). The
/// caller commits the batch with [`commit_whole`].
///
/// # Errors
///
/// Plugin host errors (500).
pub(crate) async fn run_whole(
    state: &AppState,
    principal: &Principal,
    inputs: Vec<Input>,
) -> Result<RunOutput, ApiError> {
    let mut output = state.pipeline.run(&principal.tenant, inputs, run_mode(principal)).await?;
    if output.dispositions.iter().any(|d| matches!(d, Disposition::Rejected { .. })) {
        output.batch.events.clear();
        output.batch.dead_letters.clear();
    }
    Ok(output)
}

/// Commit a whole request's batch; with a ticket, remember a successful
/// response under its Idempotency-Key in the same transaction. Returns
/// once the batch is durable.
///
/// # Errors
///
/// 503 when the store is overloaded (nothing stored), 500 on store failure.
pub(crate) async fn commit_whole(
    state: &AppState,
    principal: &Principal,
    mut batch: WriteBatch,
    ticket: Option<&Ticket>,
    status: StatusCode,
    body: &Value,
) -> Result<(), ApiError> {
    if status.is_success() {
        batch.idempotency.extend(ticket.map(|t| t.record(status, body)));
    }
    commit(state, principal, batch).await
}

/// Commit a request's batch. The answers it remembers (under its
/// `Idempotency-Key` and its events' ids) are charged to the tenant's byte
/// rate like what its run stores: they are kept for a day (RELIABILITY.md,
/// F22).
///
/// # Errors
///
/// 503 when the store is overloaded (nothing stored), 500 on store failure.
pub(crate) async fn commit(state: &AppState, principal: &Principal, batch: WriteBatch) -> Result<(), ApiError> {
    state.pipeline.charge_bytes(&principal.tenant, batch.remembered_bytes());
    state.store.commit(batch).await?;
    Ok(())
}
