//! A plugin installed for one tenant: its settings, its instances and its
//! health (consecutive failures, automatic disabling).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use wildmatch::WildMatch;

use crate::event::Event;
use crate::runtime::{CompiledPlugin, PluginFault, PluginInstances, PluginLimits};

/// What happens to events when a plugin faults (trap, timeout, limit, bad
/// output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Fail closed: the events are refused and the client gets an error.
    #[default]
    Reject,
    /// Fail open: the events continue down the chain without this plugin.
    Skip,
    /// The untransformed events go to the dead-letter table with the reason,
    /// to be inspected and replayed.
    DeadLetter,
}

fn yes() -> bool {
    true
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

fn five() -> u32 {
    5
}

/// The persisted settings of an installation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// The installed version (1, 2, ...) and its content hash.
    pub version: u32,
    pub sha256: String,
    /// Whether the plugin runs. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Place in the chain; lower runs first, ties by name. New plugins go last.
    #[serde(default)]
    pub position: i32,
    /// The JSON config handed to the plugin's `init`. Default `{}`.
    #[serde(default = "empty_object")]
    pub config: Value,
    #[serde(default)]
    pub limits: PluginLimits,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Families the plugin sees; empty means all.
    #[serde(default)]
    pub families: Vec<String>,
    /// Event names the plugin sees, as globs (`match.*`); empty means all.
    #[serde(default)]
    pub event_names: Vec<String>,
    /// Sources the plugin sees; empty means all.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Consecutive failed calls after which the plugin is disabled. Default 5.
    #[serde(default = "five")]
    pub max_consecutive_failures: u32,
    /// Why the host disabled the plugin, if it did.
    #[serde(default)]
    pub disabled_reason: Option<String>,
}

impl PluginSettings {
    pub fn new(version: u32, sha256: String, position: i32) -> Self {
        PluginSettings {
            version,
            sha256,
            enabled: true,
            position,
            config: empty_object(),
            limits: PluginLimits::default(),
            failure_policy: FailurePolicy::default(),
            families: Vec::new(),
            event_names: Vec::new(),
            sources: Vec::new(),
            max_consecutive_failures: five(),
            disabled_reason: None,
        }
    }
}

/// What a batch does with an installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Enabled and healthy: it runs.
    Active,
    /// Disabled by the customer (`enabled: false`): skipped, as if it were
    /// not installed.
    Disabled,
    /// Disabled by the host after repeated failures (the reason). It does not
    /// run, but its failure policy still applies to the events in its scope:
    /// a fail-closed plugin (`reject`) stays closed until the customer turns
    /// it back on, instead of letting the events it guards pass unprocessed.
    AutoDisabled(String),
}

/// One installed plugin of one tenant.
pub struct Installation {
    pub tenant: String,
    pub name: String,
    settings: Mutex<PluginSettings>,
    /// `settings.event_names`, compiled.
    name_globs: Vec<WildMatch>,
    pub instances: PluginInstances,
    consecutive_failures: AtomicU32,
    /// The config's size serialized, for listings: measured once, as the
    /// config never changes in place (a listing of 24 plugins of 1 MiB
    /// configs took 22 ms of the HTTP threads, serializing each;
    /// RELIABILITY.md, F60).
    config_bytes: usize,
}

impl Installation {
    pub fn new(tenant: String, name: String, settings: PluginSettings, plugin: Arc<CompiledPlugin>) -> Self {
        let config = settings.config.to_string();
        let config_bytes = config.len();
        let instances = PluginInstances::new(plugin, config, settings.limits);
        let name_globs = settings.event_names.iter().map(|g| WildMatch::new(g)).collect();
        Installation {
            config_bytes,
            tenant,
            name,
            settings: Mutex::new(settings),
            name_globs,
            instances,
            consecutive_failures: AtomicU32::new(0),
        }
    }

    pub fn settings(&self) -> PluginSettings {
        self.settings.lock().clone()
    }

    pub fn version(&self) -> u32 {
        self.settings.lock().version
    }

    /// Its place in the chain (lower runs first).
    pub fn position(&self) -> i32 {
        self.settings.lock().position
    }

    pub fn failure_policy(&self) -> FailurePolicy {
        self.settings.lock().failure_policy
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Whether the plugin runs now: enabled by the customer and not disabled
    /// by the host.
    pub fn is_active(&self) -> bool {
        self.standing() == Standing::Active
    }

    /// What a batch does with this installation now.
    pub fn standing(&self) -> Standing {
        let s = self.settings.lock();
        match &s.disabled_reason {
            _ if !s.enabled => Standing::Disabled,
            Some(reason) => Standing::AutoDisabled(reason.clone()),
            None => Standing::Active,
        }
    }

    /// Whether the event is in this installation's scope.
    /// Whether an event of this family and source may be in scope (its
    /// name not looked at): exact comparisons, cheap enough for the request
    /// threads.
    pub fn may_match(&self, family: &str, source: &str) -> bool {
        let s = self.settings.lock();
        (s.families.is_empty() || s.families.iter().any(|f| f == family))
            && (s.sources.is_empty() || s.sources.iter().any(|f| f == source))
    }

    pub fn matches(&self, event: &Event) -> bool {
        let s = self.settings.lock();
        (s.families.is_empty() || s.families.iter().any(|f| *f == event.family))
            && (s.sources.is_empty() || s.sources.iter().any(|f| *f == event.source))
            && (self.name_globs.is_empty() || self.name_globs.iter().any(|g| g.matches(&event.name)))
    }

    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Count a failed call. Returns the settings to persist when this failure
    /// disables the plugin.
    pub fn record_failure(&self, fault: &PluginFault) -> Option<PluginSettings> {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut s = self.settings.lock();
        if failures >= s.max_consecutive_failures && s.disabled_reason.is_none() {
            s.disabled_reason =
                Some(format!("disabled after {failures} consecutive failures; last: {} ({fault})", fault.reason()));
            tracing::warn!(tenant = %self.tenant, plugin = %self.name, reason = ?s.disabled_reason, "plugin disabled");
            return Some(s.clone());
        }
        None
    }

    /// The view in a listing of the chain: without the config (up to
    /// 1 MiB each), whose size it gives instead; the plugin's own view has
    /// it (RELIABILITY.md, F26).
    pub fn summary(&self) -> Value {
        self.view_with(false)
    }

    /// A JSON view for the API.
    pub fn view(&self) -> Value {
        self.view_with(true)
    }

    fn view_with(&self, config: bool) -> Value {
        let state = match self.standing() {
            Standing::Active => "enabled",
            Standing::Disabled => "disabled",
            Standing::AutoDisabled(_) => "auto-disabled",
        };
        let s = self.settings.lock();
        let mut view = serde_json::json!({
            "name": self.name,
            "version": s.version,
            "sha256": s.sha256,
            "state": state,
            "enabled": s.enabled,
            "disabled_reason": s.disabled_reason,
            "position": s.position,
            "limits": s.limits,
            "failure_policy": s.failure_policy,
            "families": s.families,
            "event_names": s.event_names,
            "sources": s.sources,
            "max_consecutive_failures": s.max_consecutive_failures,
            "consecutive_failures": self.consecutive_failures(),
        });
        if config {
            view["config"] = s.config.clone();
        } else {
            view["config_bytes"] = self.config_bytes.into();
        }
        view
    }
}
