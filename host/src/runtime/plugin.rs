//! A compiled plugin, the instances of one installation, and one call under
//! limits with a typed fault when the plugin misbehaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::{Engine, Store, Trap};

use super::bindings::{types, Plugin, PluginPre};
use super::codegen::EPOCH_TICK;
use super::host::{HostState, LogRecord};
use super::limits::PluginLimits;

/// A plugin compiled and linked, ready to be instantiated (`InstancePre`).
pub struct CompiledPlugin {
    sha256: String,
    pre: PluginPre<HostState>,
    engine: Engine,
    fuel_metering: bool,
}

impl CompiledPlugin {
    pub(crate) fn new(sha256: String, pre: PluginPre<HostState>, engine: Engine, fuel_metering: bool) -> Self {
        CompiledPlugin { sha256, pre, engine, fuel_metering }
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// Why a call into a plugin failed. `blame()` says whose fault it was; the
/// failure policy of the installation decides what happens to the events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFault {
    #[error("deadline exceeded")]
    Timeout,
    #[error("fuel budget exhausted")]
    OutOfFuel,
    #[error("memory limit exceeded")]
    MemoryLimit,
    #[error("stack overflow")]
    StackOverflow,
    #[error("plugin panicked (unreachable trap)")]
    Panic,
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("invalid output: {0}")]
    InvalidOutput(String),
    #[error("init failed: {0}")]
    Init(String),
    /// The host had no room for another instance (the pooling allocator's
    /// limit of live instances, memories or tables was reached). Transient:
    /// the same call succeeds once other calls give their instances back.
    #[error("host out of plugin capacity: {0}")]
    Capacity(String),
    /// Any other failure of the host's side of a call (e.g. it could not
    /// set up an instance), with no trap of the plugin's behind it.
    #[error("host error: {0}")]
    Host(String),
}

/// Who caused a fault. Policy reads it: only the guest's faults count
/// toward auto-disabling and follow the installation's failure policy; the
/// host's are the service's problem, answered with a retryable 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Guest,
    Host,
}

impl PluginFault {
    /// A stable short name, used in API responses, dead letters and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PluginFault::Timeout => "timeout",
            PluginFault::OutOfFuel => "out_of_fuel",
            PluginFault::MemoryLimit => "memory_limit",
            PluginFault::StackOverflow => "stack_overflow",
            PluginFault::Panic => "panic",
            PluginFault::Trap(_) => "trap",
            PluginFault::InvalidOutput(_) => "invalid_output",
            PluginFault::Init(_) => "init_failed",
            PluginFault::Capacity(_) => "host_capacity",
            PluginFault::Host(_) => "host_error",
        }
    }

    /// Whose fault it was. Listed variant by variant (no wildcard), so a new
    /// fault cannot be blamed on the guest by default.
    pub fn blame(&self) -> Blame {
        match self {
            PluginFault::Capacity(_) | PluginFault::Host(_) => Blame::Host,
            PluginFault::Timeout
            | PluginFault::OutOfFuel
            | PluginFault::MemoryLimit
            | PluginFault::StackOverflow
            | PluginFault::Panic
            | PluginFault::Trap(_)
            | PluginFault::InvalidOutput(_)
            | PluginFault::Init(_) => Blame::Guest,
        }
    }

    /// The fault of an instantiation that failed before any plugin code
    /// ran to completion. A trap (in a start function) or a refused memory
    /// growth is the plugin's; an exhausted pool is the host's capacity;
    /// anything else is the host failing to set the instance up.
    fn of_instantiation(err: wasmtime::Error, state: &HostState) -> PluginFault {
        if err.downcast_ref::<Trap>().is_some() || state.memory_exceeded {
            return PluginFault::classify(err, state);
        }
        if err.is::<wasmtime::PoolConcurrencyLimitError>() {
            return PluginFault::Capacity(format!("{err:#}"));
        }
        PluginFault::Host(format!("{err:#}"))
    }

    fn classify(err: wasmtime::Error, state: &HostState) -> PluginFault {
        if state.memory_exceeded {
            return PluginFault::MemoryLimit;
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginFault::Timeout,
            Some(Trap::OutOfFuel) => PluginFault::OutOfFuel,
            Some(Trap::StackOverflow) => PluginFault::StackOverflow,
            Some(Trap::UnreachableCodeReached) => PluginFault::Panic,
            Some(trap) => PluginFault::Trap(trap.to_string()),
            // Errors that are not traps come from lifting the plugin's answer
            // (bad UTF-8, out-of-bounds pointers): the plugin's fault.
            None => PluginFault::Trap(format!("{err:#}")),
        }
    }
}

/// What one call cost and what the plugin logged.
#[derive(Debug, Clone, Default)]
pub struct CallReport {
    pub elapsed: Duration,
    /// CPU time of the calling thread over the call: what the plugin used,
    /// not what it waited while other threads ran.
    pub cpu: Duration,
    /// Fuel burned (0 when metering is off).
    pub fuel: u64,
    pub logs: Vec<LogRecord>,
    pub logs_dropped: u32,
}

struct Live {
    store: Store<HostState>,
    bindings: Plugin,
}

/// The instances of one installation: a plugin with its config and limits.
/// Instances are reused across batches (never across installations, so never
/// across tenants); one that faulted is thrown away, since its memory may be
/// in any state.
pub struct PluginInstances {
    plugin: Arc<CompiledPlugin>,
    config: String,
    limits: PluginLimits,
    idle: Mutex<Vec<Live>>,
    max_idle: usize,
}

impl PluginInstances {
    pub fn new(plugin: Arc<CompiledPlugin>, config: String, limits: PluginLimits) -> Self {
        // Enough for every batch the pipeline runs at once (two per core by
        // default) to find an instance instead of instantiating a fresh one.
        let max_idle = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        PluginInstances { plugin, config, limits, idle: Mutex::new(Vec::new()), max_idle }
    }

    pub fn plugin(&self) -> &Arc<CompiledPlugin> {
        &self.plugin
    }

    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    fn arm(&self, store: &mut Store<HostState>) -> u64 {
        let ticks = self.limits.deadline_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1;
        store.set_epoch_deadline(ticks);
        let budget = if self.plugin.fuel_metering { self.limits.fuel.unwrap_or(u64::MAX / 2) } else { 0 };
        if self.plugin.fuel_metering {
            // Cannot fail: metering is on.
            let _ = store.set_fuel(budget);
        }
        budget
    }

    fn spent(&self, store: &Store<HostState>, budget: u64) -> u64 {
        if self.plugin.fuel_metering {
            budget.saturating_sub(store.get_fuel().unwrap_or(budget))
        } else {
            0
        }
    }

    fn take_logs(store: &mut Store<HostState>, report: &mut CallReport) {
        let state = store.data_mut();
        report.logs.append(&mut state.logs);
        report.logs_dropped += std::mem::take(&mut state.logs_dropped);
    }

    /// Create an instance and run `init` with the installation's config.
    fn instantiate(&self, report: &mut CallReport) -> Result<Live, PluginFault> {
        let mut store = Store::new(&self.plugin.engine, HostState::new(self.limits.memory_bytes));
        store.limiter(|state| state);
        let budget = self.arm(&mut store);
        let bindings = match self.plugin.pre.instantiate(&mut store) {
            Ok(bindings) => bindings,
            Err(e) => return Err(PluginFault::of_instantiation(e, store.data())),
        };
        let result = bindings.sluice_plugin_handler().call_init(&mut store, &self.config);
        report.fuel += self.spent(&store, budget);
        Self::take_logs(&mut store, report);
        match result {
            Ok(Ok(())) => Ok(Live { store, bindings }),
            Ok(Err(message)) => Err(PluginFault::Init(message)),
            Err(e) => Err(match PluginFault::classify(e, store.data()) {
                PluginFault::Timeout => PluginFault::Init("init exceeded the deadline".into()),
                other => PluginFault::Init(other.to_string()),
            }),
        }
    }

    /// Instantiate and initialize once, to check that the config is accepted.
    /// The instance is kept for the first batch.
    ///
    /// # Errors
    ///
    /// The fault of `init` (usually [`PluginFault::Init`] with the plugin's
    /// message).
    pub fn check(&self) -> Result<CallReport, PluginFault> {
        let mut report = CallReport::default();
        let started = Instant::now();
        let live = self.instantiate(&mut report)?;
        report.elapsed = started.elapsed();
        self.idle.lock().push(live);
        Ok(report)
    }

    /// Run one batch through the plugin. Returns one outcome per event or the
    /// fault, together with the cost and the logs of the call.
    pub fn process(&self, events: &[types::Event]) -> (Result<Vec<types::Outcome>, PluginFault>, CallReport) {
        let mut report = CallReport::default();
        let started = Instant::now();
        let cpu = crate::sandbox::thread_cpu_time();
        let live = self.idle.lock().pop();
        let mut live = match live {
            Some(live) => live,
            None => match self.instantiate(&mut report) {
                Ok(live) => live,
                Err(fault) => {
                    report.elapsed = started.elapsed();
                    report.cpu = crate::sandbox::thread_cpu_time().saturating_sub(cpu);
                    return (Err(fault), report);
                }
            },
        };
        let budget = self.arm(&mut live.store);
        let result = live.bindings.sluice_plugin_handler().call_process(&mut live.store, events);
        report.fuel += self.spent(&live.store, budget);
        Self::take_logs(&mut live.store, &mut report);
        report.elapsed = started.elapsed();
        report.cpu = crate::sandbox::thread_cpu_time().saturating_sub(cpu);
        match result {
            Ok(outcomes) if outcomes.len() == events.len() => {
                let mut idle = self.idle.lock();
                if idle.len() < self.max_idle {
                    idle.push(live);
                }
                (Ok(outcomes), report)
            }
            Ok(outcomes) => (
                Err(PluginFault::InvalidOutput(format!(
                    "{} outcomes for {} events; the contract asks for exactly one per event",
                    outcomes.len(),
                    events.len()
                ))),
                report,
            ),
            Err(e) => (Err(PluginFault::classify(e, live.store.data())), report),
        }
    }
}
