//! The ingest path every family shares, between the HTTP edge (which parses
//! a family's body and answers in its shape) and the pipeline and store:
//! - [`keys`]: safe retries: `Idempotency-Key`s and events' own ids, claimed
//!   while a request runs and remembered with its commit;
//! - [`Ingest::run`]: the tenant's chain, under the family's [`Policy`];
//! - [`Ingest::commit`]: one commit per request, with the answers it
//!   remembers charged to the tenant's byte rate;
//! - [`Counts`]: the ingest metrics, counted the same way for every family.
//!
//! Handlers never commit and never count by themselves: they go through
//! here, so the five families cannot drift apart in what they store,
//! remember or count.

pub mod keys;

use std::sync::Arc;

use crate::pipeline::{Disposition, Input, Mode, Pipeline, PluginError, Prepaid, RunOutput};
use crate::store::{EventStore, StoreError, WriteBatch};

pub use keys::{Begin, EventIds, Keys, Refusal, Ticket};

/// What a family keeps when some of a request's events are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Each event on its own: the rest are kept (generic events, IAM).
    Each,
    /// The request is one unit: when any event is rejected, none of its
    /// events or dead letters is kept (plugin logs and runs still are):
    /// session audit, audit logs, logs.
    Whole,
}

impl Policy {
    /// Whether an answer with `status` is remembered under the request's
    /// `Idempotency-Key`: never a server error (a retry after a plugin
    /// failure runs again, and should find the plugins fixed); for a whole
    /// request only a success.
    pub fn remembers(self, status: u16) -> bool {
        match self {
            Policy::Each => status < 500,
            Policy::Whole => (200..300).contains(&status),
        }
    }
}

/// The shared ingest steps.
pub struct Ingest {
    store: EventStore,
    pipeline: Arc<Pipeline>,
    pub keys: Keys,
}

impl Ingest {
    pub fn new(store: EventStore, pipeline: Arc<Pipeline>) -> Ingest {
        Ingest { keys: Keys::new(store.clone()), store, pipeline }
    }

    /// Run `inputs` through `tenant`'s chain (`mode`: its live or test
    /// space) under `policy`; `prepaid`: what [`Pipeline::admit_early`]
    /// took for the request's body. The caller commits the batch with
    /// [`Ingest::commit`].
    ///
    /// # Errors
    ///
    /// The pipeline's refusals (rates, quotas, budgets) and host failures.
    pub async fn run(
        &self,
        tenant: &str,
        mode: Mode,
        inputs: Vec<Input>,
        policy: Policy,
        prepaid: Prepaid,
    ) -> Result<RunOutput, PluginError> {
        let mut output = self.pipeline.run(tenant, inputs, mode, prepaid).await?;
        if policy == Policy::Whole && output.dispositions.iter().any(|d| matches!(d, Disposition::Rejected { .. })) {
            output.batch.events.clear();
            output.batch.dead_letters.clear();
        }
        Ok(output)
    }

    /// Commit a request's batch, with `ticket`'s record of the answer
    /// (`status`, `body`) when there is one and `policy` remembers it. The
    /// answers the batch remembers (under its key and its events' ids) are
    /// charged to the tenant's byte rate like what its run stores: they are
    /// kept for a day (RELIABILITY.md, F22). Returns once the batch is
    /// durable.
    ///
    /// # Errors
    ///
    /// [`StoreError::Overloaded`] (nothing stored) and store failures.
    pub async fn commit(
        &self,
        tenant: &str,
        mut batch: WriteBatch,
        policy: Policy,
        answer: Option<(&Ticket, u16, &impl serde::Serialize)>,
    ) -> Result<(), StoreError> {
        let remembered = answer.filter(|(_, status, _)| policy.remembers(*status));
        batch.idempotency.extend(remembered.map(|(ticket, status, body)| ticket.record(status, body)));
        self.pipeline.charge_bytes(tenant, batch.remembered_bytes());
        self.store.commit(batch).await
    }
}

/// What became of a request's events, as the ingest metrics count them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Events stored (a fan-out counts each copy).
    pub stored: usize,
    pub dropped: usize,
    pub rejected: usize,
    pub dead_lettered: usize,
}

impl Counts {
    /// The counts of a run's dispositions.
    pub fn of<'a>(dispositions: impl IntoIterator<Item = &'a Disposition>) -> Counts {
        let mut counts = Counts::default();
        for d in dispositions {
            counts.add(d);
        }
        counts
    }

    /// The counts of what a request under `policy` kept: a whole request
    /// with a rejected event keeps none of its events or dead letters.
    pub fn of_request<'a>(dispositions: impl IntoIterator<Item = &'a Disposition>, policy: Policy) -> Counts {
        let mut counts = Counts::of(dispositions);
        if policy == Policy::Whole && counts.rejected > 0 {
            counts.stored = 0;
            counts.dead_lettered = 0;
        }
        counts
    }

    pub fn add(&mut self, d: &Disposition) {
        match d {
            Disposition::Stored { ids } => self.stored += ids.len(),
            Disposition::Dropped { .. } => self.dropped += 1,
            Disposition::Rejected { .. } => self.rejected += 1,
            Disposition::DeadLettered { .. } => self.dead_lettered += 1,
        }
    }

    /// Count one ingest request of `family` in the metrics.
    pub fn record(&self, family: &'static str) {
        crate::metrics::ingest(family, self.stored, self.dropped, self.rejected, self.dead_lettered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{RejectedBy, Rejection};

    #[test]
    fn counts_count_each_disposition_and_every_stored_copy() {
        let rejection = Rejection {
            code: "c".into(),
            message: "m".into(),
            field: None,
            plugin: "p".into(),
            by: RejectedBy::Plugin,
        };
        let dispositions = [
            Disposition::Stored { ids: vec!["a".into(), "b".into()] },
            Disposition::Dropped { reason: "r".into(), plugin: "p".into() },
            Disposition::Rejected { error: rejection },
            Disposition::DeadLettered { reason: "r".into(), plugin: "p".into() },
            Disposition::DeadLettered { reason: "r".into(), plugin: "p".into() },
        ];
        assert_eq!(Counts::of(&dispositions), Counts { stored: 2, dropped: 1, rejected: 1, dead_lettered: 2 });
        // A whole request with a rejection kept none of its events.
        let kept = Counts::of_request(&dispositions, Policy::Whole);
        assert_eq!(kept, Counts { stored: 0, dropped: 1, rejected: 1, dead_lettered: 0 });
        assert_eq!(Counts::of_request(&dispositions[..2], Policy::Whole), Counts::of(&dispositions[..2]));
    }
}
