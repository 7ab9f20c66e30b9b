//! The one ingest path every family goes through, between the HTTP edge
//! (which parses a family's body and answers in its shape) and the pipeline
//! and store:
//! - [`Ingest::open`]: the request's `Idempotency-Key` (a retry is answered
//!   with what it was answered first) and its body's admission;
//! - [`Request::run`]: events' own ids (retried ones are not run again), the
//!   tenant's chain under the family's [`Policy`], the family's answer, one
//!   commit that remembers the answer with what it describes, the metrics;
//! - [`Ingest::replay_dead_letters`]: dead letters through the current
//!   chain, committed with their removal;
//! - [`keys`]: the keys themselves; [`Counts`]: the ingest metrics.
//!
//! Handlers never commit and never count by themselves: they hand their
//! canonical inputs and a function that answers a [`Report`] to
//! [`Request::run`], so the five families cannot drift apart in what they
//! store, remember or count.

pub mod keys;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::event::StoredEvent;
use crate::pipeline::{Disposition, Input, Mode, Pipeline, PluginError, Prepaid, RunOutput};
use crate::store::{Backend, EventLog, StoreError, WriteBatch};

use keys::{Begin, EventIds, Ticket};
pub use keys::{Keys, Refusal};

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

/// How one family's requests go through ingest.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Its name in the metrics (its events' `family`).
    pub family: &'static str,
    pub policy: Policy,
    /// Whether an item carrying its own `id` is deduplicated by it.
    pub by_event_id: bool,
}

/// Why a request was not ingested.
#[derive(Debug)]
pub enum Error {
    /// Its `Idempotency-Key` or one of its events' ids cannot be used now.
    Key(Refusal),
    /// The pipeline's refusals (rates, quotas, budgets) and host failures.
    Run(PluginError),
    /// Overloaded (nothing stored) or failed.
    Store(StoreError),
}

impl From<Refusal> for Error {
    fn from(e: Refusal) -> Self {
        Error::Key(e)
    }
}

impl From<PluginError> for Error {
    fn from(e: PluginError) -> Self {
        Error::Run(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

/// An answer: its status and JSON body, serialized once for the client
/// and for the record a retry is answered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// `body` as JSON with `status`.
    pub fn json(status: u16, body: &impl serde::Serialize) -> Reply {
        Reply { status, body: serde_json::to_string(body).unwrap_or_else(|_| "null".into()) }
    }
}

/// A request after [`Ingest::open`].
pub enum Opened<'a> {
    /// A retry of a request already answered: its first answer.
    Replay(Reply),
    /// A request to run.
    Fresh(Request<'a>),
}

/// A request whose key is claimed (if it has one) and whose body is
/// admitted: run it with [`Request::run`].
pub struct Request<'a> {
    ingest: &'a Ingest,
    tenant: String,
    space: String,
    mode: Mode,
    ticket: Option<Ticket>,
    prepaid: Prepaid,
}

/// What became of one input of a request.
#[derive(Debug)]
pub enum Entry {
    /// The chain's disposition now.
    Fresh(Disposition),
    /// What it became when its id was first sent (a retry), as remembered.
    Replayed(Value),
}

/// What a request's run did, for its family's answer.
pub struct Report<'a> {
    /// Input i's result at i.
    pub results: &'a [Entry],
    /// The events the commit stores (none of a whole request with a
    /// rejection).
    pub stored: &'a [StoredEvent],
}

impl Report<'_> {
    /// The chain's dispositions of the inputs run now, in order.
    pub fn fresh(&self) -> impl Iterator<Item = &Disposition> {
        self.results.iter().filter_map(|e| match e {
            Entry::Fresh(d) => Some(d),
            Entry::Replayed(_) => None,
        })
    }
}

/// The shared ingest steps.
pub struct Ingest {
    store: Arc<dyn EventLog>,
    pipeline: Arc<Pipeline>,
    keys: Keys,
}

impl Ingest {
    pub fn new(store: Arc<dyn Backend>, pipeline: Arc<Pipeline>) -> Ingest {
        Ingest { keys: Keys::new(store.clone()), store, pipeline }
    }

    /// Open a request of `tenant` writing to `space` (`mode`: its live or
    /// test space): its `Idempotency-Key` (`key`: the header's bytes; the
    /// content type and body are the content it is bound to), then its
    /// body charged to the tenant's byte rate before it is parsed. A retry
    /// of a finished request is answered even in debt.
    ///
    /// # Errors
    ///
    /// [`Error::Key`] when the key is invalid, in use or bound to other
    /// content; [`Error::Run`] when the tenant is over its rates.
    pub async fn open(
        &self,
        tenant: &str,
        space: String,
        mode: Mode,
        key: Option<&[u8]>,
        content_type: &[u8],
        body: &[u8],
    ) -> Result<Opened<'_>, Error> {
        let ticket = match self.keys.begin(&space, key, content_type, body).await? {
            Begin::Replay(status, body) => return Ok(Opened::Replay(Reply { status, body })),
            Begin::Fresh => None,
            Begin::Keyed(ticket) => Some(ticket),
        };
        let prepaid = self.pipeline.admit_early(tenant, body.len()).await?;
        Ok(Opened::Fresh(Request { ingest: self, tenant: tenant.into(), space, mode, ticket, prepaid }))
    }

    /// Run up to `limit` of the space's dead letters (`ids`: those; `None`:
    /// the oldest) through `tenant`'s current chain. What comes out is
    /// stored and the letters are removed in one commit; a letter that
    /// fails again becomes a new dead letter. Returns each replayed
    /// letter's id with its disposition.
    ///
    /// # Errors
    ///
    /// The pipeline's refusals, store failures ([`StoreError::Conflict`]
    /// when a concurrent replay took a letter first).
    pub async fn replay_dead_letters(
        &self,
        tenant: &str,
        space: &str,
        mode: Mode,
        ids: Option<Vec<i64>>,
        limit: usize,
    ) -> Result<Vec<(i64, Disposition)>, Error> {
        let letters = self.store.dead_letters_for_replay(space.into(), ids, limit).await?;
        let (replayed, inputs): (Vec<i64>, Vec<Input>) =
            letters.into_iter().map(|l| (l.id, Input { event: l.event, raw: l.raw })).unzip();
        let mut output = self.pipeline.run(tenant, inputs, mode, Prepaid::default()).await?;
        output.batch.replayed = replayed.clone();
        self.commit(tenant, output.batch, Policy::Each, None, None).await?;
        Ok(replayed.into_iter().zip(output.dispositions).collect())
    }

    /// Commit a request's batch, with `reply` remembered under the key of
    /// `ticket` when there are both and `policy` remembers the reply's
    /// status; the claim of `ticket` is held until the commit has landed.
    /// The answers the batch remembers (under its key and its events' ids)
    /// are charged to the tenant's byte rate like what its run stores: they
    /// are kept for a day (RELIABILITY.md, F22). Returns once the batch is
    /// durable.
    async fn commit(
        &self,
        tenant: &str,
        mut batch: WriteBatch,
        policy: Policy,
        ticket: Option<Ticket>,
        reply: Option<&Reply>,
    ) -> Result<(), StoreError> {
        if let Some(ticket) = ticket {
            if let Some(reply) = reply.filter(|r| policy.remembers(r.status)) {
                batch.idempotency.push(ticket.record(reply.status, &reply.body));
            }
            batch.claims.push(ticket.into_claim());
        }
        self.pipeline.charge_bytes(tenant, batch.remembered_bytes());
        self.store.commit(batch).await
    }
}

impl Request<'_> {
    /// Run the request's `inputs` (in request order) under `rules`: items
    /// whose own id was stored before are not run again, the rest go
    /// through the tenant's chain under the family's policy; `answer` makes
    /// the family's answer from the [`Report`]. The batch is committed with
    /// the answer under the request's key (when `Ok` and the policy
    /// remembers its status) and with what each fresh input it stores
    /// became under the input's own id (whatever the answer: a retry must
    /// not store it again); an `Err` answer is returned once committed.
    /// Counted in the metrics once committed. The claims on the key and the
    /// ids are held until the commit has landed, even if the caller goes.
    ///
    /// # Errors
    ///
    /// `answer`'s error, or an [`Error`]: an id in use or bound to other
    /// content, the pipeline's refusals, store failures (nothing stored).
    pub async fn run<E: From<Error>>(
        self,
        rules: Rules,
        inputs: Vec<Input>,
        answer: impl FnOnce(&Report) -> Result<Reply, E>,
    ) -> Result<Reply, E> {
        let ingest = self.ingest;
        let mut ids = if rules.by_event_id {
            let ids = ingest.keys.event_ids(&self.space, inputs.iter().map(|i| &*i.raw)).await.map_err(Error::from)?;
            Some(ids)
        } else {
            None
        };
        let mut replayed: HashMap<usize, Value> =
            ids.as_mut().map(|ids| std::mem::take(&mut ids.replayed)).unwrap_or_default();
        let total = inputs.len();
        let fresh: Vec<Input> =
            inputs.into_iter().enumerate().filter(|(i, _)| !replayed.contains_key(i)).map(|(_, x)| x).collect();
        let mut output = if fresh.is_empty() {
            RunOutput::default()
        } else {
            let run = ingest.pipeline.run(&self.tenant, fresh, self.mode, self.prepaid).await.map_err(Error::from)?;
            Self::keep(run, rules.policy)
        };
        let counts = Counts::of_request(&output.dispositions, rules.policy);
        // Each input's result in request order; under a whole request's
        // policy, ids are remembered only when nothing was rejected.
        let remember_ids = rules.policy == Policy::Each || counts.rejected == 0;
        let mut dispositions = std::mem::take(&mut output.dispositions).into_iter();
        let mut results = Vec::with_capacity(total);
        for index in 0..total {
            let entry = match replayed.remove(&index) {
                Some(mut done) => {
                    done["replayed"] = Value::Bool(true);
                    Entry::Replayed(done)
                }
                None => {
                    let d = dispositions.next().expect("one disposition per fresh input");
                    if remember_ids && !matches!(d, Disposition::Rejected { .. }) {
                        output.batch.idempotency.extend(ids.as_ref().and_then(|ids| ids.record(index, &d)));
                    }
                    Entry::Fresh(d)
                }
            };
            results.push(entry);
        }
        let reply = answer(&Report { results: &results, stored: &output.batch.events });
        output.batch.claims.extend(ids.map(EventIds::into_claim));
        let remembered = reply.as_ref().ok();
        ingest.commit(&self.tenant, output.batch, rules.policy, self.ticket, remembered).await.map_err(Error::from)?;
        counts.record(rules.family);
        reply
    }

    /// A run's output as `policy` keeps it: a whole request with a rejected
    /// event keeps none of its events or dead letters.
    fn keep(mut output: RunOutput, policy: Policy) -> RunOutput {
        if policy == Policy::Whole && output.dispositions.iter().any(|d| matches!(d, Disposition::Rejected { .. })) {
            output.batch.events.clear();
            output.batch.dead_letters.clear();
        }
        output
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
