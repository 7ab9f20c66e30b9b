//! The plugin workers, shared fairly between tenants.
//!
//! At most `total` batches run plugins at once (each holds one blocking
//! thread and one instance of each plugin it calls). A tenant may hold at
//! most its share of them: by default half of them and half of the cores
//! (at least one), and its further batches wait behind its own gate, not in
//! the shared queue: a tenant with a deep backlog of slow plugin calls leaves
//! the rest to everyone else, and each other tenant's batch waits behind at
//! most its share of anyone's, not behind the whole backlog. A tenant's live
//! and test spaces share one gate. At most [`WAITING_PER_WORKER`] batches
//! per worker of its share wait there; a batch beyond that is held for a
//! second and then refused (429) unless room was made meanwhile, so a
//! backlog cannot grow without bound in the server.
//!
//! The share is bounded by the cores, not only by the workers, because a
//! tenant whose plugins keep every core busy slows everyone even at a lower
//! priority: measured on two cores, one tenant's plugin spinning on both
//! cores starved the kernel's own threads (softirq, RCU, workqueues) for up
//! to 400 ms, and another tenant's plugin-free requests stalled with them
//! (p99 7-800 ms between runs); with one core left to the rest, 3-5 ms
//! (BENCHMARKS.md, issue #14).
//!
//! The batches run on threads of their own at nice [`PLUGIN_NICE`]: tenants'
//! plugin code competes with itself for the cores, while the service's own
//! work (reading requests, answering, committing) comes first, so one
//! tenant's heavy plugins cost another tenant's plugin-free requests
//! little. Each tenant's plugins are bounded by its time budget besides.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// The nice value of the threads that run plugins.
pub const PLUGIN_NICE: i32 = 5;

/// Batches of one tenant that may wait for its plugin workers, per worker
/// of its share.
pub const WAITING_PER_WORKER: usize = 4;

/// A tenant's gate: its share of the workers, and how many of its batches
/// wait for one.
struct Gate {
    permits: Arc<Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
}

/// One batch's place in its tenant's wait (given back when it stops
/// waiting, also when its request is abandoned).
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a batch got no worker.
#[derive(Debug)]
pub(super) enum Refused {
    /// The tenant already has `waiting` batches waiting for its `share`.
    Backlog {
        waiting: usize,
        share: usize,
    },
    Closed(AcquireError),
}

pub(super) struct Workers {
    all: Arc<Semaphore>,
    share: usize,
    tenants: parking_lot::Mutex<HashMap<String, Arc<Gate>>>,
    /// As many threads as permits, so a batch that holds a permit never
    /// waits for a thread.
    threads: crate::sandbox::Threads,
}

/// A running batch's hold on a worker: the tenant's and the shared permit.
pub(super) struct Permit {
    tenant: String,
    gate: Arc<Semaphore>,
    share: usize,
    _mine: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

impl Drop for Permit {
    fn drop(&mut self) {
        // `_mine` is released after this body: count it as released already.
        let held = self.share - self.gate.available_permits() - 1;
        crate::metrics::plugin_workers(&self.tenant, held);
    }
}

impl Workers {
    /// `total` workers, of which one tenant holds at most `share` (0: half
    /// of them and half of the cores, at least one; never more than all).
    ///
    /// # Errors
    ///
    /// When a thread cannot be started.
    pub fn new(total: usize, share: usize) -> std::io::Result<Workers> {
        let total = total.max(1);
        let share = match share {
            0 => {
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                (total / 2).min(cores / 2).max(1)
            }
            n => n.min(total),
        };
        Ok(Workers {
            all: Arc::new(Semaphore::new(total)),
            share,
            tenants: parking_lot::Mutex::new(HashMap::new()),
            threads: crate::sandbox::Threads::start("sluice-plugin", total, PLUGIN_NICE, false)?,
        })
    }

    /// Run `f` on a plugin thread, holding `permit` until it is done (also
    /// when the caller stops waiting).
    ///
    /// # Errors
    ///
    /// When `f` panicked or the threads are gone.
    pub async fn run<T: Send + 'static>(
        &self,
        permit: Permit,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let job = move || {
            let _permit = permit;
            f()
        };
        self.threads.run(job).await.map_err(|e| format!("plugin run: {e}"))
    }

    /// Wait for a worker for a batch of `tenant`.
    ///
    /// # Errors
    ///
    /// [`Refused::Backlog`] when the tenant already has its most batches
    /// waiting; [`Refused::Closed`] when the semaphores are closed (never,
    /// today).
    pub async fn acquire(&self, tenant: &str) -> Result<Permit, Refused> {
        use std::sync::atomic::Ordering::Relaxed;
        let owner = tenant.split(':').next().unwrap_or(tenant);
        let gate = self
            .tenants
            .lock()
            .entry(owner.to_string())
            .or_insert_with(|| {
                Arc::new(Gate { permits: Arc::new(Semaphore::new(self.share)), waiting: Default::default() })
            })
            .clone();
        let most = self.share.saturating_mul(WAITING_PER_WORKER);
        let mut held = false;
        let place = loop {
            let waiting = gate.waiting.fetch_add(1, Relaxed);
            let place = Waiting(&gate.waiting);
            if waiting < most || gate.permits.available_permits() > 0 {
                break place;
            }
            drop(place);
            if held {
                crate::metrics::throttled(owner, "plugin_workers");
                return Err(Refused::Backlog { waiting, share: self.share });
            }
            // Held before the refusal, like the pipeline's other ones: a
            // client that retries at once costs a request per second, not a
            // loop of refusals; and if the backlog shrank meanwhile, the
            // batch takes its place in it.
            held = true;
            tokio::time::sleep(super::MAX_HOLD).await;
        };
        let mine = gate.permits.clone().acquire_owned().await.map_err(Refused::Closed)?;
        drop(place);
        let all = self.all.clone().acquire_owned().await.map_err(Refused::Closed)?;
        crate::metrics::plugin_workers(owner, self.share - gate.permits.available_permits());
        Ok(Permit { tenant: owner.to_string(), gate: gate.permits.clone(), share: self.share, _mine: mine, _all: all })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_holds_at_most_half_of_the_workers_and_half_of_the_cores() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert_eq!(Workers::new(4 * cores, 0).unwrap().share, (cores / 2).max(1));
        assert_eq!(Workers::new(2, 0).unwrap().share, 1);
        assert_eq!(Workers::new(1, 0).unwrap().share, 1);
        // Set explicitly: as given, but never more than all of them.
        assert_eq!(Workers::new(4, 3).unwrap().share, 3);
        assert_eq!(Workers::new(4, 100).unwrap().share, 4);
    }
}
