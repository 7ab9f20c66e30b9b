//! The edge's side of [`crate::ingest`]: the caller's tenant and space, and
//! errors as [`ApiError`]s, for the families' handlers.

use super::idempotency::Ticket;
use super::{run_mode, ApiError, AppState};
use crate::auth::Principal;
use crate::ingest::Policy;
use crate::pipeline::{Input, Prepaid, RunOutput};
use crate::store::WriteBatch;
use axum::http::StatusCode;

/// Run the caller's inputs through its tenant's chain under `policy`
/// (`prepaid`: what admitting its body took).
///
/// # Errors
///
/// The pipeline's refusals (429, 413, 503) and host errors (500).
pub(crate) async fn run(
    state: &AppState,
    principal: &Principal,
    inputs: Vec<Input>,
    policy: Policy,
    prepaid: Prepaid,
) -> Result<RunOutput, ApiError> {
    Ok(state.ingest.run(&principal.tenant, run_mode(principal), inputs, policy, prepaid).await?)
}

/// Commit a request's batch; with a ticket, remember the answer (`status`,
/// `body`) in the same transaction when `policy` remembers it. Returns once
/// the batch is durable.
///
/// # Errors
///
/// 503 when the store is overloaded (nothing stored), 500 on store failure.
pub(crate) async fn commit(
    state: &AppState,
    principal: &Principal,
    batch: WriteBatch,
    policy: Policy,
    answer: Option<(&Ticket, StatusCode, &impl serde::Serialize)>,
) -> Result<(), ApiError> {
    let answer = answer.map(|(ticket, status, body)| (ticket, status.as_u16(), body));
    Ok(state.ingest.commit(&principal.tenant, batch, policy, answer).await?)
}
