//! Tenants' plugin chains: installing and configuring plugins, and running
//! events through the chain that is current when their batch starts.
//!
//! A chain is an immutable `Arc<[Installation]>`, swapped whole on every
//! change: a batch keeps the chain it started with, new batches take the new
//! one, so a change is atomic and no event is processed twice or dropped.

mod admission;
mod installation;
mod run;
mod workers;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::{Mutex, OwnedMutexGuard};

pub use admission::Rate;
pub use installation::{FailurePolicy, Installation, PluginSettings, Standing};
pub use run::{Disposition, Input, Mode, RejectedBy, Rejection, RunOutput};

use crate::runtime::{cache_compiled, Blame, CompiledPlugin, PluginFault, PluginLimits, Runtime, UploadError};
use crate::store::{Backend, InstalledPlugin, PluginVersion, QuotaUse, Quotas, StoreError};

/// Why a control-plane change was refused.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Upload(UploadError),
    #[error("plugin not found: {0}")]
    NotFound(String),
    /// `(field, message)`: a setting out of range or a config `init` refused.
    #[error("{0}: {1}")]
    Invalid(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The host could not run plugin `plugin` (the fault's blame is the
    /// host's, e.g. the instance pool is exhausted). Nothing of the run is
    /// kept and the plugin's health is untouched; a retry may succeed.
    #[error("the host could not run plugin {plugin} ({fault}); retry later")]
    Unavailable { plugin: String, fault: PluginFault },
    /// The tenant sends (or its plugins store) events faster than its rate:
    /// retry after the given time.
    #[error("this tenant is over its ingest rate of {per_second} events/s (burst {burst}); retry in {retry_after:?}")]
    RateLimited { per_second: f64, burst: f64, retry_after: std::time::Duration },
    /// The tenant's plugins used more than its plugin time per second:
    /// retry after the given time.
    #[error("this tenant's plugins used more than their {per_second_ms} ms of plugin time per second; retry in {retry_after:?}")]
    PluginTimeExceeded { per_second_ms: f64, retry_after: std::time::Duration },
    /// The space has used up one of its tenant's quotas (`events_per_day`,
    /// `storage_bytes`).
    #[error("quota exceeded for {metric}")]
    QuotaExceeded { metric: &'static str, quotas: Vec<QuotaUse> },
    /// The tenant stores (after its plugins) more bytes per second than
    /// its byte rate: retry after the given time.
    #[error("this tenant stores more than its {per_second} bytes/s (burst {burst}); retry in {retry_after:?}")]
    ByteRateLimited { per_second: f64, burst: f64, retry_after: std::time::Duration },
    /// The tenant already has as many batches waiting for its plugin
    /// workers as it may: retry after the given time.
    #[error(
        "this tenant already has {waiting} batches waiting for its {share} plugin worker(s); retry in {retry_after:?}"
    )]
    PluginWorkersBusy { waiting: usize, share: usize, retry_after: std::time::Duration },
    /// The plugins' output would store more events than one request may.
    #[error("the plugins' output would store {stored} events; one request may store at most {limit} (SLUICE_MAX_STORED_EVENTS)")]
    TooManyEvents { stored: usize, limit: usize },
    #[error("{0}")]
    Host(String),
}

impl PluginError {
    /// How long until a retry can succeed, for the refusals that say so
    /// (429: over the ingest rate, the plugin time budget, or the backlog
    /// at the plugin workers).
    pub fn retry_after(&mut self) -> Option<&mut std::time::Duration> {
        match self {
            PluginError::RateLimited { retry_after, .. }
            | PluginError::PluginTimeExceeded { retry_after, .. }
            | PluginError::ByteRateLimited { retry_after, .. }
            | PluginError::PluginWorkersBusy { retry_after, .. } => Some(retry_after),
            _ => None,
        }
    }
}

impl RunOutput {
    /// The output, or [`PluginError::Unavailable`] when the run was
    /// abandoned on a host fault.
    fn completed(mut self) -> Result<RunOutput, PluginError> {
        match self.host_fault.take() {
            Some((plugin, fault)) => Err(PluginError::Unavailable { plugin, fault }),
            None => Ok(self),
        }
    }
}

impl From<UploadError> for PluginError {
    /// The component's problems are the caller's to fix; the host failing
    /// to compile is an internal error.
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Host(message) => PluginError::Host(message),
            other => PluginError::Upload(other),
        }
    }
}

/// A tenant's one upload in progress, so its one compile worker (see
/// [`Pipeline::compile_slot`]); dropping it frees the slot.
pub struct CompileSlot {
    tenant: String,
    compiling: Arc<parking_lot::Mutex<HashSet<String>>>,
}

impl CompileSlot {
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl Drop for CompileSlot {
    fn drop(&mut self) {
        self.compiling.lock().remove(&self.tenant);
    }
}

/// A change to an installation's settings (`PATCH /v1/plugins/{name}`).
/// Absent fields keep their value.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "crate::whole::option")]
    pub position: Option<i32>,
    pub config: Option<Value>,
    pub limits: Option<PluginLimits>,
    pub failure_policy: Option<FailurePolicy>,
    pub families: Option<Vec<String>>,
    pub event_names: Option<Vec<String>>,
    pub sources: Option<Vec<String>>,
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    pub max_consecutive_failures: Option<u32>,
}

impl SettingsPatch {
    /// The settings with this patch applied.
    ///
    /// # Errors
    ///
    /// [`PluginError::Invalid`] naming the first field out of range.
    pub fn apply(self, mut settings: PluginSettings) -> Result<PluginSettings, PluginError> {
        if let Some(enabled) = self.enabled {
            settings.enabled = enabled;
            if enabled {
                settings.disabled_reason = None;
            }
        }
        if let Some(position) = self.position {
            settings.position = position;
        }
        if let Some(config) = self.config {
            settings.config = config;
        }
        if let Some(limits) = self.limits {
            limits.validate().map_err(|(field, msg)| PluginError::Invalid(format!("limits.{field}"), msg))?;
            settings.limits = limits;
        }
        if let Some(policy) = self.failure_policy {
            settings.failure_policy = policy;
        }
        if let Some(families) = self.families {
            settings.families = families;
        }
        if let Some(names) = self.event_names {
            settings.event_names = names;
        }
        if let Some(sources) = self.sources {
            settings.sources = sources;
        }
        if let Some(max) = self.max_consecutive_failures {
            if max == 0 {
                return Err(PluginError::Invalid("max_consecutive_failures".into(), "must be at least 1".into()));
            }
            settings.max_consecutive_failures = max;
        }
        for (field, list) in
            [("families", &settings.families), ("event_names", &settings.event_names), ("sources", &settings.sources)]
        {
            if list.len() > MAX_SCOPE_ENTRIES || list.iter().any(|e| e.len() > MAX_SCOPE_ENTRY_BYTES) {
                return Err(PluginError::Invalid(
                    field.into(),
                    format!("at most {MAX_SCOPE_ENTRIES} entries of at most {MAX_SCOPE_ENTRY_BYTES} bytes each"),
                ));
            }
        }
        let size = serde_json::to_vec(&settings).map_or(usize::MAX, |v| v.len());
        if size > MAX_SETTINGS_BYTES {
            return Err(PluginError::Invalid(
                "config".into(),
                format!(
                    "an installation's settings (config, names, families, sources) are at most {MAX_SETTINGS_BYTES} \
                     bytes serialized; these are {size}"
                ),
            ));
        }
        Ok(settings)
    }
}

/// Most bytes of one installation's settings, serialized: its config, which
/// every instance's `init` is handed, is held in the chain and shown by the
/// API, and an 8 MB config made every change of the tenant's chain take
/// seconds (RELIABILITY.md, F25).
pub const MAX_SETTINGS_BYTES: usize = 1 << 20;

/// Most entries of an installation's scope lists (`families`,
/// `event_names`, `sources`), and their longest entry: every event is matched
/// against them (3,900 patterns of 250 bytes held every request 15 s;
/// RELIABILITY.md, F33).
pub const MAX_SCOPE_ENTRIES: usize = 64;
pub const MAX_SCOPE_ENTRY_BYTES: usize = 256;

/// Most plugins one tenant may install.
pub const MAX_PLUGINS_PER_TENANT: usize = 64;

#[derive(Default)]
struct TenantPlugins {
    all: HashMap<String, Arc<Installation>>,
    /// Installations in chain order (position, then name).
    chain: Arc<[Arc<Installation>]>,
}

impl TenantPlugins {
    fn rebuild(&mut self) {
        let mut chain: Vec<Arc<Installation>> = self.all.values().cloned().collect();
        // The position alone: cloning every installation's settings (its
        // config) here, under the chain lock, stalled every request.
        chain.sort_by_cached_key(|i| (i.position(), i.name.clone()));
        self.chain = chain.into();
    }
}

/// Bytes of a request already taken from its tenant's byte rate (its body,
/// by [`Pipeline::admit_early`]), not taken again when its run is admitted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prepaid(usize);

/// Keep an uploaded component in the store (where every host finds it)
/// and its compiled artifact in this host's cache (`cache`), so a restart
/// loads instead of recompiling.
fn keep(store: &dyn Backend, cache: &Path, sha256: &str, component: &[u8], artifact: &[u8]) -> Result<(), PluginError> {
    store.put_component(sha256, component).map_err(|e| PluginError::Host(format!("cannot store plugin: {e}")))?;
    cache_compiled(cache, sha256, artifact).map_err(|e| PluginError::Host(format!("cannot cache plugin: {e}")))
}

/// Every tenant's plugins, and the way events run through them.
pub struct Pipeline {
    runtime: Arc<Runtime>,
    store: Arc<dyn Backend>,
    /// This host's cache of compiled plugins (the components themselves
    /// are the store's).
    plugin_dir: PathBuf,
    tenants: RwLock<HashMap<String, TenantPlugins>>,
    /// One lock per tenant serializing its control-plane changes, so two
    /// changes of one chain cannot interleave. Per tenant, so one tenant's
    /// slow step (an `init` check runs up to its deadline) never holds up
    /// another's; compilation happens before the lock is taken.
    control: parking_lot::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Tenants with an upload in progress: at most one each, so one tenant
    /// cannot fill the machine with compile workers.
    compiling: Arc<parking_lot::Mutex<HashSet<String>>>,
    /// Most uploads running at once, all tenants.
    max_compiles: usize,
    /// Bounds how many batches run plugins at once, so plugin work cannot
    /// starve the machine, and how many one tenant runs (see `workers.rs`);
    /// further batches wait their turn.
    workers: workers::Workers,
    /// Most events one live run may store (fan-out included).
    max_stored: usize,
    /// Most bytes of the distinct components one tenant may have uploaded
    /// (every version is kept, for rollbacks and shadow runs): a bound on
    /// the disk one tenant's uploads take.
    max_plugin_bytes: u64,
    /// Each tenant's ingest rate (see `admission.rs`).
    rates: admission::Rates,
    /// Each tenant's byte rate: what its runs store (payloads and raw
    /// inputs, after fan-out), charged after each run like the fan-out, so
    /// a tenant cannot fill the store's write-ahead log (and force
    /// everyone's checkpoint pauses) faster than this.
    bytes: admission::Rates,
    /// Each tenant's plugin time budget, in microseconds per second, all
    /// its plugins together: a run starts only while the tenant is not in
    /// debt, and each run is charged the CPU time its calls used (each call is
    /// bounded by its epoch deadline).
    plugin_time: Arc<admission::Rates>,
    /// Tenants' quotas, as last set (`PUT /v1/quotas`), for the tenants
    /// that set any.
    quotas: parking_lot::Mutex<HashMap<String, Quotas>>,
}

fn check_name(name: &str) -> Result<(), PluginError> {
    let valid = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !valid {
        return Err(PluginError::Invalid(
            "name".into(),
            "must be 1..64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit".into(),
        ));
    }
    Ok(())
}

/// A plugin time budget of `per_second_ms` milliseconds per second (in
/// microseconds), twice that at once.
fn budget_of(per_second_ms: u64) -> Rate {
    let micros = per_second_ms.max(1).saturating_mul(1000) as f64;
    Rate { per_second: micros, burst: 2.0 * micros }
}

/// Longest a refused request is held before its 429 (see
/// `Pipeline::admit`).
const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

impl Pipeline {
    /// Load every installed plugin from the store and the cache of compiled
    /// artifacts;
    /// at most `workers.0` batches (0: two per core) run plugins at once, at
    /// most `workers.1` of one tenant (0: half of them and half of the
    /// cores, at least one).
    ///
    /// # Errors
    ///
    /// When the store cannot be read. A plugin whose artifact cannot be
    /// loaded is logged and left out (its settings stay stored).
    pub fn load(
        runtime: Arc<Runtime>,
        store: Arc<dyn Backend>,
        plugin_dir: PathBuf,
        (workers, tenant_workers): (usize, usize),
    ) -> Result<Pipeline, PluginError> {
        let mut tenants: HashMap<String, TenantPlugins> = HashMap::new();
        for InstalledPlugin { tenant, name, settings } in store.load_plugins()? {
            let settings: PluginSettings = match serde_json::from_str(&settings) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(%tenant, %name, error = %e, "unreadable plugin settings; plugin not loaded");
                    continue;
                }
            };
            match runtime.load(&plugin_dir, &settings.sha256, || Ok(store.component(&settings.sha256)?)) {
                Ok(compiled) => {
                    let inst = Installation::new(tenant.clone(), name.clone(), settings, Arc::new(compiled));
                    tenants.entry(tenant).or_default().all.insert(name, Arc::new(inst));
                }
                Err(e) => tracing::error!(%tenant, %name, error = %e, "cannot load plugin artifact; plugin not loaded"),
            }
        }
        for plugins in tenants.values_mut() {
            plugins.rebuild();
        }
        let workers = match workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()) * 2,
            n => n,
        };
        Ok(Pipeline {
            runtime,
            store,
            plugin_dir,
            tenants: RwLock::new(tenants),
            control: Default::default(),
            compiling: Default::default(),
            max_compiles: usize::MAX,
            workers: workers::Workers::new(workers, tenant_workers).map_err(|e| PluginError::Host(e.to_string()))?,
            max_stored: usize::MAX,
            max_plugin_bytes: u64::MAX,
            rates: admission::Rates::new(Rate { per_second: f64::INFINITY, burst: f64::INFINITY }),
            bytes: admission::Rates::new(Rate { per_second: f64::INFINITY, burst: f64::INFINITY }),
            plugin_time: Arc::new(admission::Rates::new(Rate { per_second: f64::INFINITY, burst: f64::INFINITY })),
            quotas: Default::default(),
        })
    }

    /// Hold every tenant to `rate` bytes stored per second (payloads and raw
    /// inputs, after its plugins).
    pub fn with_byte_rate(mut self, rate: Rate) -> Pipeline {
        self.bytes = admission::Rates::new(rate);
        self
    }

    /// Hold tenants to `default` events per second unless [`Pipeline::set_rate`]
    /// gave them their own.
    pub fn with_default_rate(mut self, default: Rate) -> Pipeline {
        self.rates = admission::Rates::new(default);
        self
    }

    /// Hold a tenant to `quotas` (its rate, and its daily and storage quotas
    /// on every family).
    pub fn set_quotas(&self, tenant: &str, quotas: Quotas) {
        self.set_rate(tenant, quotas.events_per_second, quotas.events_burst);
        let budget = quotas.plugin_ms_per_second.map(|ms| budget_of(ms.max(1) as u64));
        self.plugin_time.set(tenant, budget);
        let bytes = quotas.bytes_per_second.map(|b| Rate { per_second: b.max(1) as f64, burst: 4.0 * b.max(1) as f64 });
        self.bytes.set(tenant, bytes);
        self.quotas.lock().insert(tenant.to_string(), quotas);
    }

    /// Refuse a run of the tenant's space (`mode` tells live from test)
    /// that has used up one of the tenant's quotas. With `claim` (events,
    /// bytes: what a finished run will store), check again and reserve the
    /// claim under the same lock, for the run's batch to carry to its
    /// commit: concurrent requests then cannot all pass on the use counted
    /// before any of them committed (RELIABILITY.md, F20).
    async fn check_quotas(
        &self,
        tenant: &str,
        mode: Mode,
        claim: Option<(i64, i64)>,
    ) -> Result<Option<crate::store::Reservation>, PluginError> {
        let quotas = self.quotas.lock().get(tenant).copied();
        let Some(quotas) = quotas.filter(|q| q.events_per_day.is_some() || q.storage_bytes.is_some()) else {
            return Ok(None);
        };
        let space = match mode {
            Mode::Test => format!("{tenant}{}", crate::auth::TEST_SPACE_SUFFIX),
            _ => tenant.to_string(),
        };
        let (reservation, (today, bytes)) = match claim {
            None => (None, self.store.space_usage(space).await?),
            Some((events, bytes)) => match self.store.reserve_usage(space, events, bytes, quotas).await? {
                Ok(reservation) => return Ok(Some(reservation)),
                Err(used) => (None, used),
            },
        };
        match quotas.exceeded(today, bytes) {
            (_, None) => Ok(reservation),
            (quotas, Some(metric)) => {
                crate::metrics::throttled(tenant, "quota");
                Err(PluginError::QuotaExceeded { metric, quotas })
            }
        }
    }

    /// Hold every tenant to `per_second_ms` of plugin time per second (all
    /// its plugins together), with twice that at once.
    pub fn with_plugin_time_budget(mut self, per_second_ms: u64) -> Pipeline {
        self.plugin_time = Arc::new(admission::Rates::new(budget_of(per_second_ms)));
        self
    }

    /// The plugin time budget a tenant is held to, in milliseconds per
    /// second (its own, or the server's default).
    pub fn plugin_budget_ms(&self, tenant: &str) -> f64 {
        self.plugin_time.of(tenant).per_second / 1000.0
    }

    /// The server's default plugin time budget, in milliseconds per second.
    pub fn default_plugin_budget_ms(&self) -> f64 {
        self.plugin_time.default().per_second / 1000.0
    }

    /// Set a tenant's ingest rate; what is `None` keeps the default (both
    /// `None`: the default rate).
    fn set_rate(&self, tenant: &str, per_second: Option<i64>, burst: Option<i64>) {
        let rate = (per_second.is_some() || burst.is_some()).then(|| {
            let default = self.rates.default();
            Rate {
                per_second: per_second.map_or(default.per_second, |v| v as f64),
                burst: burst.map_or(default.burst, |v| v as f64),
            }
        });
        self.rates.set(tenant, rate);
    }

    /// The ingest rate of tenants without their own.
    pub fn default_rate(&self) -> Rate {
        self.rates.default()
    }

    /// The quotas last set for a tenant (none set: all `None`).
    pub fn quotas(&self, tenant: &str) -> Quotas {
        self.quotas.lock().get(tenant).copied().unwrap_or_default()
    }

    /// The byte rate a tenant is held to (its own, or the server's).
    pub fn byte_rate(&self, tenant: &str) -> Rate {
        self.bytes.of(tenant)
    }

    /// The byte rate of tenants without their own.
    pub fn default_byte_rate(&self) -> Rate {
        self.bytes.default()
    }

    /// The ingest rate a tenant is held to.
    pub fn rate(&self, tenant: &str) -> Rate {
        self.rates.of(tenant)
    }

    /// Refuse uploads that would take a tenant's distinct components past
    /// `limit` bytes.
    pub fn with_tenant_plugin_bytes(mut self, limit: u64) -> Pipeline {
        self.max_plugin_bytes = limit;
        self
    }

    /// Refuse runs (live, dry and shadow) whose output would hold more than
    /// `limit` events (a tenant's fan-out cannot turn one request into
    /// millions of rows).
    pub fn with_max_stored_events(mut self, limit: usize) -> Pipeline {
        self.max_stored = limit.max(1);
        self
    }

    /// The chain a new batch of `tenant` runs through.
    pub fn chain(&self, tenant: &str) -> Arc<[Arc<Installation>]> {
        self.tenants.read().get(tenant).map(|t| t.chain.clone()).unwrap_or_else(|| Arc::new([]))
    }

    /// Run events to be stored through the tenant's current chain on a
    /// blocking thread, and persist any plugin the run disabled. `mode` is
    /// [`Mode::Live`] for the tenant's own events, [`Mode::Test`] for its
    /// test space's (whose faults never count toward plugin health).
    ///
    /// # Errors
    ///
    /// [`PluginError::Unavailable`] when the host failed a plugin call
    /// (nothing of the run is to be stored), [`PluginError::Host`] when the
    /// blocking pool is gone (shutdown).
    pub async fn run(
        &self,
        tenant: &str,
        inputs: Vec<Input>,
        mode: Mode,
        prepaid: Prepaid,
    ) -> Result<RunOutput, PluginError> {
        debug_assert!(mode != Mode::Dry, "a dry run is Pipeline::dry_run");
        let received = inputs.len();
        let received_bytes: usize = inputs.iter().map(|i| i.event.payload.len() + i.raw.len()).sum();
        self.check_quotas(tenant, mode, None).await?;
        if prepaid.0 == 0 {
            self.admit(tenant, received, Some(received_bytes)).await?;
        } else {
            // Its body was taken (and the tenant's debt checked) before it
            // was parsed; what its events hold beyond that is debt, taken
            // before the run so concurrent requests see it (F40).
            self.admit(tenant, received, None).await?;
            self.bytes.charge(tenant, received_bytes.saturating_sub(prepaid.0));
        }
        let chain = self.chain(tenant);
        let output = self.run_on(chain, inputs, mode).await?;
        output.batch.runs.iter().for_each(crate::metrics::plugin_run);
        // Persisted even when the run was abandoned later: an earlier plugin
        // of the chain may have been disabled by its own (guest) fault.
        for (tenant, name, settings) in &output.disabled {
            let json = serde_json::to_string(settings).unwrap_or_default();
            if let Err(e) = self.store.save_plugin(tenant.clone(), name.clone(), json).await {
                tracing::error!(%tenant, %name, error = %e, "cannot persist disabled plugin");
            }
        }
        let output = output.completed()?;
        // The fan-out is charged even when refused: the plugins did the
        // work, and a request refused this way must not be free to repeat.
        self.rates.charge(tenant, output.batch.events.len().saturating_sub(received));
        let (mut output, stored_bytes) = self.settle(tenant, output, received_bytes)?;
        let claim = (output.batch.events.len() as i64, stored_bytes as i64);
        output.batch.reservation = self.check_quotas(tenant, mode, Some(claim)).await?;
        Ok(output)
    }

    /// Charge what a run made (its events' bytes) to the tenant's byte
    /// rate, and refuse a run that made more than the per-request bound of
    /// events: live runs, and dry and shadow runs, whose output is held in
    /// memory and answered whole (RELIABILITY.md, F23, F24). Returns the
    /// bytes the run's batch stores.
    fn settle(&self, tenant: &str, output: RunOutput, paid: usize) -> Result<(RunOutput, usize), PluginError> {
        let bytes = output.batch.stored_bytes();
        self.bytes.charge(tenant, bytes.saturating_sub(paid));
        let stored = output.batch.events.len();
        if stored > self.max_stored {
            crate::metrics::throttled(tenant, "stored_events");
            return Err(PluginError::TooManyEvents { stored, limit: self.max_stored });
        }
        Ok((output, bytes))
    }

    /// Charge `bytes` to a tenant's byte rate: what its requests make the
    /// server keep besides their events (the answers remembered under
    /// idempotency keys).
    pub fn charge_bytes(&self, tenant: &str, bytes: usize) {
        self.bytes.charge(tenant, bytes);
    }

    /// Run `inputs` through one plugin (`Some(name)`, even when disabled) or
    /// the tenant's whole chain (as live events run through it, auto-disabled
    /// plugins applying their failure policy), without touching plugin
    /// health. The output is for the caller to show; nothing is stored.
    ///
    /// # Errors
    ///
    /// [`PluginError::NotFound`] for an unknown plugin,
    /// [`PluginError::Unavailable`] when the host failed a plugin call.
    pub async fn dry_run(
        &self,
        tenant: &str,
        plugin: Option<&str>,
        inputs: Vec<Input>,
    ) -> Result<RunOutput, PluginError> {
        let (chain, mode): (Arc<[Arc<Installation>]>, _) = match plugin {
            Some(name) => (Arc::new([self.installation(tenant, name)?]), Mode::Dry),
            None => (self.chain(tenant), Mode::Test),
        };
        self.dry_on(tenant, chain, inputs, mode).await
    }

    /// A dry run of `inputs` through `chain`: it spends plugin time and
    /// makes bytes too, so it is held to the same budgets.
    async fn dry_on(
        &self,
        tenant: &str,
        chain: Arc<[Arc<Installation>]>,
        inputs: Vec<Input>,
        mode: Mode,
    ) -> Result<RunOutput, PluginError> {
        // Refused in debt after the same hold as ingest, so a client that
        // retries at once is not answered thousands of times a second
        // (RELIABILITY.md, F52).
        self.refuse_in_debt(tenant).await?;
        let output = self.run_on(chain, inputs, mode).await?.completed()?;
        self.settle(tenant, output, 0).map(|(output, _)| output)
    }

    /// Take a request's body (`body_bytes`) from the tenant's byte rate
    /// before it is parsed, or refuse it while the tenant is in debt (over
    /// its ingest or byte rate, or its plugins over their time budget): a
    /// flood of refused requests then costs little more than reading them,
    /// and parsing bodies the tenant's own validation refuses (422, nothing
    /// stored) is paid for too (RELIABILITY.md, F46). The bytes taken count
    /// toward what the request's run stores ([`Pipeline::run`]'s `prepaid`).
    ///
    /// # Errors
    ///
    /// [`PluginError::PluginTimeExceeded`], [`PluginError::RateLimited`],
    /// [`PluginError::ByteRateLimited`].
    pub async fn admit_early(&self, tenant: &str, body_bytes: usize) -> Result<Prepaid, PluginError> {
        self.admit(tenant, 0, Some(body_bytes)).await?;
        Ok(Prepaid(body_bytes))
    }

    /// Refuse work of a tenant in debt (any of its rates or its plugin time
    /// budget), after the same hold as ingest: dry and shadow runs, uploads
    /// and PATCHes, which take no events of their own.
    async fn refuse_in_debt(&self, tenant: &str) -> Result<(), PluginError> {
        self.admit(tenant, 0, Some(0)).await
    }

    /// Admit `events` of the tenant under its plugin time budget and ingest
    /// rate. A request that would wait at most [`MAX_HOLD`] waits and is
    /// admitted then (if nothing took its place meanwhile); a longer wait is
    /// refused, answered only after [`MAX_HOLD`] (less remains in its
    /// `Retry-After`): a client that retries at once, however many times,
    /// keeps each of its connections to one refused request per second
    /// instead of spending the server's cores on refusals.
    async fn admit(&self, tenant: &str, events: usize, bytes: Option<usize>) -> Result<(), PluginError> {
        let try_admit = || {
            self.admit_plugin_time(tenant)?;
            self.admit_rate(tenant, events)?;
            // The request's own bytes are taken before its run, as its events
            // are, so concurrent requests see each other's (RELIABILITY.md,
            // F40); what its plugins add is charged after. `None`: taken
            // already.
            match bytes {
                Some(bytes) => self.bytes_admitted(tenant, bytes).inspect_err(|_| self.rates.refund(tenant, events)),
                None => Ok(()),
            }
        };
        let mut refusal = match try_admit() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let Some(wait) = refusal.retry_after() else {
            return Err(refusal);
        };
        if *wait <= MAX_HOLD {
            tokio::time::sleep(*wait).await;
            return try_admit();
        }
        *wait -= MAX_HOLD;
        tokio::time::sleep(MAX_HOLD).await;
        Err(refusal)
    }

    /// Take `events` from the tenant's ingest rate, or refuse (429).
    fn admit_rate(&self, tenant: &str, events: usize) -> Result<(), PluginError> {
        self.rates.admit(tenant, events).map_err(|retry_after| {
            crate::metrics::throttled(tenant, "rate");
            let rate = self.rates.of(tenant);
            PluginError::RateLimited { per_second: rate.per_second, burst: rate.burst, retry_after }
        })
    }

    /// Take `bytes` from the tenant's byte rate, or refuse (429).
    fn bytes_admitted(&self, tenant: &str, bytes: usize) -> Result<(), PluginError> {
        self.bytes.admit(tenant, bytes).map_err(|retry_after| {
            crate::metrics::throttled(tenant, "bytes");
            let rate = self.bytes.of(tenant);
            PluginError::ByteRateLimited { per_second: rate.per_second, burst: rate.burst, retry_after }
        })
    }

    /// Refuse a run while the tenant's plugins are over their time budget.
    fn admit_plugin_time(&self, tenant: &str) -> Result<(), PluginError> {
        self.plugin_time.admit(tenant, 0).map_err(|retry_after| {
            crate::metrics::throttled(tenant, "plugin_time");
            PluginError::PluginTimeExceeded { per_second_ms: self.plugin_budget_ms(tenant), retry_after }
        })
    }

    async fn run_on(
        &self,
        chain: Arc<[Arc<Installation>]>,
        inputs: Vec<Input>,
        mode: Mode,
    ) -> Result<RunOutput, PluginError> {
        // Nothing to run (every plugin is switched off by its customer, or
        // scoped to other families or sources): stay on this thread instead
        // of a worker. Only exact family and source comparisons are made
        // here, over the batch's few distinct pairs: matching names against
        // plugins' patterns is work a tenant controls (thousands of long
        // patterns), so it is done on the tenant's workers and charged to
        // it (RELIABILITY.md, F33).
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for input in &inputs {
            let pair = (input.event.family.as_str(), input.event.source.as_str());
            if !pairs.contains(&pair) {
                pairs.push(pair);
                if pairs.len() > 16 {
                    break;
                }
            }
        }
        let out_of_scope = |i: &Installation| pairs.len() <= 16 && !pairs.iter().any(|(f, s)| i.may_match(f, s));
        let idle = mode != Mode::Dry && chain.iter().all(|i| i.standing() == Standing::Disabled || out_of_scope(i));
        if idle {
            return Ok(run::run_chain(&chain, inputs, mode));
        }
        let tenant = chain.first().map_or_else(String::new, |i| i.tenant.clone());
        let permit = self.worker(&tenant).await?;
        // Checked again once a worker is free: batches admitted together
        // and queued behind the tenant's own would otherwise all run past
        // its budget (RELIABILITY.md, F41). Dry runs are held to it too.
        if !tenant.is_empty() {
            self.admit_plugin_time(&tenant)?;
        }
        // The run is charged on its thread: a request abandoned meanwhile
        // still pays for what its plugins used (and holds its worker until
        // they are done).
        let budget = self.plugin_time.clone();
        let run = move || {
            // The whole run's CPU time: its plugins' calls, and the host's
            // work for them (scope matching, conversions, checks).
            let started = crate::sandbox::thread_cpu_time();
            let output = run::run_chain(&chain, inputs, mode);
            let spent = crate::sandbox::thread_cpu_time().saturating_sub(started);
            budget.charge(&tenant, spent.as_micros() as usize);
            crate::metrics::tenant_plugin_time(&tenant, spent.as_micros() as u64);
            output
        };
        self.workers.run(permit, run).await.map_err(PluginError::Host)
    }

    /// One of the tenant's share of the plugin workers.
    async fn worker(&self, tenant: &str) -> Result<workers::Permit, PluginError> {
        self.workers.acquire(tenant).await.map_err(|refused| match refused {
            workers::Refused::Backlog { waiting, share } => {
                PluginError::PluginWorkersBusy { waiting, share, retry_after: MAX_HOLD }
            }
            workers::Refused::Closed(e) => PluginError::Host(e.to_string()),
        })
    }

    /// The tenant's active chain with plugin `name` running `version`
    /// instead of its current one (same settings): the candidate of a shadow
    /// run. Returns the chain and the candidate's version.
    ///
    /// # Errors
    ///
    /// [`PluginError::NotFound`] for an unknown plugin or version.
    pub async fn candidate_chain(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<(Arc<[Arc<Installation>]>, u32), PluginError> {
        let current = self.installation(tenant, name)?;
        let versions = self.versions(tenant, name).await?;
        let target = match version {
            Some(v) => versions.iter().find(|x| x.version == v),
            None => versions.last(),
        }
        .ok_or_else(|| PluginError::NotFound(format!("{name} version {}", version.unwrap_or(0))))?;
        let (runtime, dir, sha, store) =
            (self.runtime.clone(), self.plugin_dir.clone(), target.sha256.clone(), self.store.clone());
        let compiled = tokio::task::spawn_blocking(move || runtime.load(&dir, &sha, || Ok(store.component(&sha)?)))
            .await
            .map_err(|e| PluginError::Host(e.to_string()))?
            .map_err(|e| PluginError::Host(format!("cannot load version {}: {e:#}", target.version)))?;
        let mut settings = current.settings();
        settings.version = target.version;
        settings.sha256 = target.sha256.clone();
        settings.enabled = true;
        settings.disabled_reason = None;
        let candidate = Arc::new(Installation::new(tenant.into(), name.into(), settings, Arc::new(compiled)));
        let chain = self
            .chain(tenant)
            .iter()
            .filter(|i| i.name == name || i.is_active())
            .map(|i| if i.name == name { candidate.clone() } else { i.clone() })
            .collect();
        Ok((chain, target.version))
    }

    /// Run `inputs` through a given chain of `tenant` as a dry run, under
    /// the tenant's plugin time budget and byte rate.
    ///
    /// # Errors
    ///
    /// [`PluginError::Unavailable`] when the host failed a plugin call,
    /// [`PluginError::TooManyEvents`] over the bound of events per request,
    /// 429s of the budgets.
    pub async fn dry_run_chain(
        &self,
        tenant: &str,
        chain: Arc<[Arc<Installation>]>,
        inputs: Vec<Input>,
    ) -> Result<RunOutput, PluginError> {
        self.dry_on(tenant, chain, inputs, Mode::Dry).await
    }

    /// Views of a tenant's plugins in chain order.
    pub fn list(&self, tenant: &str) -> Vec<Value> {
        self.chain(tenant).iter().map(|i| i.summary()).collect()
    }

    /// The view of one plugin.
    ///
    /// # Errors
    ///
    /// [`PluginError::NotFound`].
    pub fn get(&self, tenant: &str, name: &str) -> Result<Value, PluginError> {
        self.installation(tenant, name).map(|i| i.view())
    }

    fn installation(&self, tenant: &str, name: &str) -> Result<Arc<Installation>, PluginError> {
        self.tenants
            .read()
            .get(tenant)
            .and_then(|t| t.all.get(name).cloned())
            .ok_or_else(|| PluginError::NotFound(name.to_string()))
    }

    /// The versions uploaded for a plugin.
    ///
    /// # Errors
    ///
    /// [`PluginError::NotFound`] when none was uploaded.
    pub async fn versions(&self, tenant: &str, name: &str) -> Result<Vec<PluginVersion>, PluginError> {
        let versions = self.store.plugin_versions(tenant.to_string(), name.to_string()).await?;
        if versions.is_empty() {
            return Err(PluginError::NotFound(name.to_string()));
        }
        Ok(versions)
    }

    /// The tenant's compile slot, unless another upload of the tenant holds
    /// it or as many uploads as the server allows are running (then `None`:
    /// the caller answers 429).
    pub fn compile_slot(&self, tenant: &str) -> Option<CompileSlot> {
        let owner = tenant.split(':').next().unwrap_or(tenant).to_string();
        let mut compiling = self.compiling.lock();
        if compiling.len() >= self.max_compiles || !compiling.insert(owner.clone()) {
            return None;
        }
        Some(CompileSlot { tenant: owner, compiling: self.compiling.clone() })
    }

    /// Run at most `n` uploads (each a compile worker) at once, all tenants.
    pub fn with_max_compiles(mut self, n: usize) -> Pipeline {
        self.max_compiles = n.max(1);
        self
    }

    /// Wait for the tenant's control lock.
    async fn lock_tenant(&self, tenant: &str) -> OwnedMutexGuard<()> {
        let lock = self.control.lock().entry(tenant.to_string()).or_default().clone();
        lock.lock_owned().await
    }

    /// Upload a component as the new version of plugin `name` of the slot's
    /// tenant (installing it if new), with optional settings changes from
    /// the upload's manifest. The component is compiled in a compile worker
    /// (`worker compile-worker`) before the tenant's control lock is taken.
    /// Other settings are kept; `init` must accept the config before the new
    /// version goes live. Returns the view and whether the plugin was new.
    ///
    /// # Errors
    ///
    /// [`PluginError::Upload`] for a component that fails validation or
    /// compiles too long, [`PluginError::Invalid`] when `init` refuses the
    /// config.
    pub async fn upload(
        &self,
        slot: CompileSlot,
        name: &str,
        bytes: Vec<u8>,
        patch: SettingsPatch,
        worker: &Path,
    ) -> Result<(Value, bool), PluginError> {
        check_name(name)?;
        // The component (and its compiled artifact) is written to disk:
        // charged to the byte rate like ingest, and refused in debt.
        self.refuse_in_debt(slot.tenant()).await?;
        self.bytes.charge(slot.tenant(), bytes.len());
        // Refused before the compile and before anything is written to disk
        // (checked again under the tenant's lock at install).
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        self.admit_upload(slot.tenant(), name, &sha256, bytes.len() as u64).await?;
        let artifact = self.runtime.compile_in_worker(worker, &bytes).await?;
        let (runtime, dir, size, store) =
            (self.runtime.clone(), self.plugin_dir.clone(), bytes.len() as u64, self.store.clone());
        let compiled = tokio::task::spawn_blocking(move || -> Result<_, PluginError> {
            let plugin = runtime.prepare_compiled(&bytes, &artifact)?;
            keep(&*store, &dir, plugin.sha256(), &bytes, artifact.as_bytes())?;
            Ok(plugin)
        })
        .await
        .map_err(|e| PluginError::Host(e.to_string()))??;
        // The compile slot is for compiling: the `init` check of the install
        // (up to the plugin's own deadline, 30 s at most) runs without it,
        // so two tenants cannot hold every slot with slow `init`s
        // (RELIABILITY.md, F34). A tenant's installs stay one at a time
        // under its control lock.
        let tenant = slot.tenant().to_string();
        drop(slot);
        self.install(&tenant, name, compiled, size, patch).await
    }

    /// Make a compiled plugin (of a component of `size` bytes) the new
    /// version of `name`, under the tenant's control lock.
    async fn install(
        &self,
        tenant: &str,
        name: &str,
        compiled: CompiledPlugin,
        size: u64,
        patch: SettingsPatch,
    ) -> Result<(Value, bool), PluginError> {
        let _guard = self.lock_tenant(tenant).await;
        let compiled = Arc::new(compiled);
        let sha256 = compiled.sha256().to_string();
        // Every check before anything is recorded: a refused upload leaves
        // no version behind.
        self.admit_upload(tenant, name, &sha256, size).await?;
        let existing = self.installation(tenant, name).ok();
        let is_new = existing.is_none();
        let mut settings = match existing {
            Some(inst) => inst.settings(),
            None => {
                let last = self.chain(tenant).iter().map(|i| i.position()).max();
                PluginSettings::new(0, sha256.clone(), last.map_or(0, |p| p + 10))
            }
        };
        settings.sha256 = sha256.clone();
        settings.disabled_reason = None;
        let mut settings = patch.apply(settings)?;
        // The version it will be (the same content is the same version),
        // recorded only once its `init` accepted the config (a refused
        // upload left a version behind: RELIABILITY.md, F64). The tenant's
        // lock keeps the number from being taken meanwhile.
        let versions = self.store.plugin_versions(tenant.to_string(), name.to_string()).await?;
        settings.version = versions
            .iter()
            .find(|v| v.sha256 == sha256)
            .map_or_else(|| versions.iter().map(|v| v.version).max().unwrap_or(0) + 1, |v| v.version);
        let inst = Installation::new(tenant.to_string(), name.to_string(), settings, compiled);
        let inst = self.check(inst).await?;
        let (version, _) = self.store.add_plugin_version(tenant.to_string(), name.to_string(), sha256, size).await?;
        if version != inst.version() {
            return Err(PluginError::Host(format!(
                "version {version} recorded for {name}, {} expected",
                inst.version()
            )));
        }
        self.go_live(inst).await?;
        Ok((self.get(tenant, name)?, is_new))
    }

    /// Refuse an upload of a component (`sha256`, `size` bytes) as `name`
    /// that would take the tenant past [`MAX_PLUGINS_PER_TENANT`] or past
    /// its bound of component bytes (`SLUICE_TENANT_PLUGIN_BYTES`).
    async fn admit_upload(&self, tenant: &str, name: &str, sha256: &str, size: u64) -> Result<(), PluginError> {
        let chain = self.chain(tenant);
        if chain.len() >= MAX_PLUGINS_PER_TENANT && !chain.iter().any(|i| i.name == name) {
            return Err(PluginError::Invalid(
                "name".into(),
                format!("a tenant has at most {MAX_PLUGINS_PER_TENANT} plugins; delete one first"),
            ));
        }
        let kept = self.store.plugin_bytes(tenant.to_string(), sha256.to_string()).await?;
        if kept + size > self.max_plugin_bytes {
            return Err(PluginError::Invalid(
                "component".into(),
                format!(
                    "this tenant's plugin components take {kept} bytes; with this one they would pass the bound of \
                     {} (SLUICE_TENANT_PLUGIN_BYTES)",
                    self.max_plugin_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Change an installation's settings. A new config or new limits are
    /// checked by running the plugin's `init` before they go live.
    ///
    /// # Errors
    ///
    /// [`PluginError::NotFound`], or [`PluginError::Invalid`] naming the field.
    pub async fn update(&self, tenant: &str, name: &str, patch: SettingsPatch) -> Result<Value, PluginError> {
        self.refuse_in_debt(tenant).await?;
        let _guard = self.lock_tenant(tenant).await;
        let current = self.installation(tenant, name)?;
        let settings = patch.apply(current.settings())?;
        let inst =
            Installation::new(tenant.to_string(), name.to_string(), settings, current.instances.plugin().clone());
        self.activate(inst).await?;
        self.get(tenant, name)
    }

    /// Install the plugins a new tenant gets by default: `customer-prefix`
    /// for the session-audit family, as document 000 promises ("customer
    /// created events will be prepended with `customer.`"). It runs late in
    /// the chain (position 1000), so customers' own plugins see the client's
    /// names.
    ///
    /// # Errors
    ///
    /// As [`Pipeline::upload`].
    pub async fn install_defaults(&self, tenant: &str) -> Result<(), PluginError> {
        let patch = SettingsPatch {
            families: Some(vec!["session-audit".into()]),
            position: Some(1000),
            ..SettingsPatch::default()
        };
        // Compiled in this process, not in a worker: the host trusts the
        // plugin it ships to compile in time.
        let (runtime, dir, bytes, store) =
            (self.runtime.clone(), self.plugin_dir.clone(), crate::shipped::CUSTOMER_PREFIX, self.store.clone());
        let compiled = tokio::task::spawn_blocking(move || -> Result<_, PluginError> {
            let (plugin, artifact) = runtime.compile(bytes)?;
            keep(&*store, &dir, plugin.sha256(), bytes, &artifact)?;
            Ok(plugin)
        })
        .await
        .map_err(|e| PluginError::Host(e.to_string()))??;
        self.install(tenant, "customer-prefix", compiled, bytes.len() as u64, patch).await?;
        Ok(())
    }

    /// Make an earlier version of a plugin current again (the previous one
    /// when `version` is `None`), keeping the installation's settings.
    ///
    /// # Errors
    ///
    /// [`PluginError::NotFound`] for an unknown plugin or version;
    /// [`PluginError::Invalid`] when that version's `init` refuses the config.
    pub async fn rollback(&self, tenant: &str, name: &str, version: Option<u32>) -> Result<Value, PluginError> {
        let _guard = self.lock_tenant(tenant).await;
        let current = self.installation(tenant, name)?;
        let mut settings = current.settings();
        let versions = self.store.plugin_versions(tenant.to_string(), name.to_string()).await?;
        let wanted = version.unwrap_or(settings.version.saturating_sub(1));
        let target = versions
            .iter()
            .find(|v| v.version == wanted)
            .ok_or_else(|| PluginError::NotFound(format!("{name} version {wanted}")))?;
        let (runtime, dir, sha, store) =
            (self.runtime.clone(), self.plugin_dir.clone(), target.sha256.clone(), self.store.clone());
        let compiled = tokio::task::spawn_blocking(move || runtime.load(&dir, &sha, || Ok(store.component(&sha)?)))
            .await
            .map_err(|e| PluginError::Host(e.to_string()))?
            .map_err(|e| PluginError::Host(format!("cannot load version {wanted}: {e:#}")))?;
        settings.version = target.version;
        settings.sha256 = target.sha256.clone();
        settings.disabled_reason = None;
        let inst = Installation::new(tenant.to_string(), name.to_string(), settings, Arc::new(compiled));
        self.activate(inst).await?;
        self.get(tenant, name)
    }

    /// Remove a plugin from the tenant's chain. Its versions stay recorded,
    /// and events it processed keep their lineage.
    ///
    /// # Errors
    ///
    /// [`PluginError::NotFound`].
    pub async fn remove(&self, tenant: &str, name: &str) -> Result<(), PluginError> {
        let _guard = self.lock_tenant(tenant).await;
        self.installation(tenant, name)?;
        self.store.delete_plugin(tenant.to_string(), name.to_string()).await?;
        let mut tenants = self.tenants.write();
        if let Some(plugins) = tenants.get_mut(tenant) {
            plugins.all.remove(name);
            plugins.rebuild();
        }
        Ok(())
    }

    /// Check the installation's config with `init`, persist its settings and
    /// swap it into the tenant's chain.
    async fn activate(&self, inst: Installation) -> Result<(), PluginError> {
        let inst = self.check(inst).await?;
        self.go_live(inst).await
    }

    /// Run an installation's `init` check (its config, its limits) before
    /// anything of it is recorded.
    ///
    /// It runs on one of the tenant's plugin workers and is charged to its
    /// plugin time, like its events' calls: a loop of uploads and PATCHes
    /// whose `init` spins took the service's threads (RELIABILITY.md, F63).
    async fn check(&self, inst: Installation) -> Result<Arc<Installation>, PluginError> {
        let inst = Arc::new(inst);
        let (checking, tenant, budget) = (inst.clone(), inst.tenant.clone(), self.plugin_time.clone());
        let permit = self.worker(&tenant).await?;
        let check = move || {
            let started = crate::sandbox::thread_cpu_time();
            let checked = checking.instances.check();
            let spent = crate::sandbox::thread_cpu_time().saturating_sub(started);
            budget.charge(&tenant, spent.as_micros() as usize);
            crate::metrics::tenant_plugin_time(&tenant, spent.as_micros() as u64);
            checked
        };
        let checked = self.workers.run(permit, check).await.map_err(PluginError::Host)?;
        match checked {
            Ok(_) => {}
            Err(PluginFault::Init(message)) => return Err(PluginError::Invalid("config".into(), message)),
            // No room for the check's instance now: nothing is wrong with the
            // plugin or its config, so the change is refused as retryable.
            // Other host faults here are not transient (this component cannot
            // be instantiated on this host) and stay a refusal.
            Err(fault @ PluginFault::Capacity(_)) => {
                return Err(PluginError::Unavailable { plugin: inst.name.clone(), fault })
            }
            Err(fault) if fault.blame() == Blame::Host => {
                return Err(PluginError::Invalid("config".into(), format!("cannot instantiate: {fault}")))
            }
            Err(fault) => return Err(PluginError::Invalid("config".into(), format!("init failed: {fault}"))),
        }
        Ok(inst)
    }

    /// Store a checked installation's settings and put it in its tenant's
    /// chain.
    async fn go_live(&self, inst: Arc<Installation>) -> Result<(), PluginError> {
        let json = serde_json::to_string(&inst.settings()).map_err(|e| PluginError::Host(e.to_string()))?;
        // What a change writes is charged like what ingest stores: a loop of
        // 1 MB PATCHes wrote the WAL at twice the byte rate (F35).
        self.bytes.charge(&inst.tenant, json.len());
        self.store.save_plugin(inst.tenant.clone(), inst.name.clone(), json).await?;
        let mut tenants = self.tenants.write();
        let plugins = tenants.entry(inst.tenant.clone()).or_default();
        plugins.all.insert(inst.name.clone(), inst);
        plugins.rebuild();
        Ok(())
    }
}
