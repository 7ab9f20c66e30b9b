//! Write Sluice plugins in Rust.
//!
//! A plugin is a type that implements [`Plugin`] and is exported with
//! [`export_plugin!`]. The host calls [`Plugin::init`] once per instance with
//! the installation's JSON configuration, then [`Plugin::process`] for every
//! event, batch by batch. Each call answers with one [`Outcome`]: keep the
//! (possibly rewritten) event, fan it out into several, drop it, or reject it
//! with a reason the client sees.
//!
//! # Example
//!
//! A complete plugin that tags events from a configured source and refuses
//! events without a session:
//!
//! ```no_run
//! use sluice_sdk::{export_plugin, log, Event, Outcome, Plugin};
//! use serde_json::Value;
//!
//! struct Tagger {
//!     source: String,
//! }
//!
//! impl Plugin for Tagger {
//!     fn init(config: Value) -> Result<Self, String> {
//!         let source = config["source"].as_str().ok_or("config.source must be a string")?;
//!         Ok(Tagger { source: source.to_string() })
//!     }
//!
//!     fn process(&mut self, mut event: Event) -> Outcome {
//!         if event.session_id.is_none() {
//!             return Outcome::reject_field("invalid_field", "session_id", "session_id is required");
//!         }
//!         if event.source == self.source {
//!             event.payload_mut()["tagged"] = Value::Bool(true);
//!             log::info("tagged an event");
//!         }
//!         Outcome::keep(event)
//!     }
//! }
//!
//! export_plugin!(Tagger);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm`
//! file under `target/wasm32-wasip2/release/` is the component to upload.

use std::cell::{OnceCell, RefCell};

use serde_json::Value;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_handler",
        default_bindings_module: "sluice_sdk::bindings",
    });
}

use bindings::exports::sluice::plugin::handler;
use bindings::sluice::plugin::types as wit;

/// The version of the WIT contract this SDK implements.
pub const CONTRACT_VERSION: &str = "0.1.0";

/// A plugin: built once per instance by [`Plugin::init`], then called for
/// every event.
pub trait Plugin: Sized + 'static {
    /// Build the plugin from the installation's configuration (`{}` when none is
    /// set).
    ///
    /// # Errors
    ///
    /// Return a message when the configuration is unusable; the host refuses the
    /// installation (or the configuration change) with it.
    fn init(config: Value) -> Result<Self, String>;

    /// Decide what becomes of one event.
    fn process(&mut self, event: Event) -> Outcome;

    /// Decide what becomes of a batch of events. The default calls
    /// [`Plugin::process`] for each; override it to share work across a batch.
    /// The result must hold one outcome per event, in order.
    fn process_batch(&mut self, events: Vec<Event>) -> Vec<Outcome> {
        events.into_iter().map(|event| self.process(event)).collect()
    }
}

/// One event, as the host hands it to a plugin. Field meanings are documented
/// in the WIT contract (`wit/sluice.wit`). Times are microseconds since the Unix
/// epoch.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    /// Owned by the host: changing it makes the host refuse the outcome.
    pub tenant: String,
    pub family: String,
    /// The event name (`event_type` in the listing API).
    pub name: String,
    pub group: String,
    pub status: String,
    pub source: String,
    pub occurred_at: i64,
    pub received_at: i64,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub user_id: Option<i64>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub session_id: Option<String>,
    pub attributes: Vec<(String, String)>,
    payload_text: String,
    payload: OnceCell<Value>,
    payload_dirty: bool,
}

impl Event {
    /// The payload as JSON, parsed on first use. An unparsable payload (the
    /// host never sends one) reads as `null`.
    pub fn payload(&self) -> &Value {
        self.payload.get_or_init(|| serde_json::from_str(&self.payload_text).unwrap_or(Value::Null))
    }

    /// The payload for changing in place.
    pub fn payload_mut(&mut self) -> &mut Value {
        self.payload();
        self.payload_dirty = true;
        self.payload.get_mut().expect("payload parsed above")
    }

    /// Replace the payload.
    pub fn set_payload(&mut self, payload: Value) {
        self.payload = OnceCell::from(payload);
        self.payload_dirty = true;
    }

    /// The value of an attribute (`vm_id`, `request_id`, ... or a custom key).
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Set (or replace) an attribute.
    pub fn set_attribute(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((key, value)),
        }
    }

    /// Read a field by its listing-API name (`event_type`, `session_id`,
    /// `actor_id`, an attribute key, ...) or a payload path
    /// (`event_payload.user.email`). Numbers and booleans come back as JSON
    /// values; absent fields as `None`.
    pub fn field(&self, path: &str) -> Option<Value> {
        if let Some(rest) = path.strip_prefix("event_payload") {
            let mut value = self.payload();
            for part in rest.split('.').filter(|p| !p.is_empty()) {
                value = match value {
                    Value::Object(map) => map.get(part)?,
                    Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            return Some(value.clone());
        }
        let text = |s: &str| Some(Value::String(s.to_string()));
        match path {
            "id" => text(&self.id),
            "family" => text(&self.family),
            "event_type" | "name" => text(&self.name),
            "event_group" | "group" => text(&self.group),
            "status" => text(&self.status),
            "source" => text(&self.source),
            "actor_type" => text(&self.actor_type),
            "actor_id" => self.actor_id.as_deref().and_then(text),
            "user_id" => self.user_id.map(Value::from),
            "resource_type" => self.resource_type.as_deref().and_then(text),
            "resource_id" => self.resource_id.as_deref().and_then(text),
            "session_id" => self.session_id.as_deref().and_then(text),
            key => self.attribute(key).and_then(text),
        }
    }

    /// A copy of this event under a new id, for fan-out. `n` makes the id
    /// unique and deterministic (`<id>-<n>`).
    pub fn fork(&self, n: usize) -> Event {
        let mut copy = self.clone();
        copy.id = format!("{}-{n}", self.id);
        copy
    }
}

impl From<wit::Event> for Event {
    fn from(e: wit::Event) -> Self {
        Event {
            id: e.id,
            tenant: e.tenant,
            family: e.family,
            name: e.name,
            group: e.group,
            status: e.status,
            source: e.source,
            occurred_at: e.occurred_at,
            received_at: e.received_at,
            actor_type: e.actor_type,
            actor_id: e.actor_id,
            user_id: e.user_id,
            resource_type: e.resource_type,
            resource_id: e.resource_id,
            session_id: e.session_id,
            attributes: e.attributes,
            payload_text: e.payload,
            payload: OnceCell::new(),
            payload_dirty: false,
        }
    }
}

impl From<Event> for wit::Event {
    fn from(mut e: Event) -> Self {
        let payload = match (e.payload_dirty, e.payload.take()) {
            (true, Some(value)) => value.to_string(),
            _ => e.payload_text,
        };
        wit::Event {
            id: e.id,
            tenant: e.tenant,
            family: e.family,
            name: e.name,
            group: e.group,
            status: e.status,
            source: e.source,
            occurred_at: e.occurred_at,
            received_at: e.received_at,
            actor_type: e.actor_type,
            actor_id: e.actor_id,
            user_id: e.user_id,
            resource_type: e.resource_type,
            resource_id: e.resource_id,
            session_id: e.session_id,
            attributes: e.attributes,
            payload,
        }
    }
}

/// Why an event is refused; the client sees it in the endpoint's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

/// What becomes of one input event.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Keep these events (one for a rewrite, several for a fan-out).
    Keep(Vec<Event>),
    /// Drop the event, with a reason recorded by the host.
    Drop(String),
    /// Refuse the event.
    Reject(Rejection),
}

impl Outcome {
    /// Keep one event.
    pub fn keep(event: Event) -> Outcome {
        Outcome::Keep(vec![event])
    }

    /// Keep several events in place of one.
    pub fn fan_out(events: Vec<Event>) -> Outcome {
        Outcome::Keep(events)
    }

    /// Drop the event.
    pub fn drop(reason: impl Into<String>) -> Outcome {
        Outcome::Drop(reason.into())
    }

    /// Refuse the event without naming a field.
    pub fn reject(code: impl Into<String>, message: impl Into<String>) -> Outcome {
        Outcome::Reject(Rejection { code: code.into(), message: message.into(), field: None })
    }

    /// Refuse the event because of one field (dotted path, e.g.
    /// `event_payload.email`).
    pub fn reject_field(code: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Outcome {
        Outcome::Reject(Rejection { code: code.into(), message: message.into(), field: Some(field.into()) })
    }
}

impl From<Outcome> for wit::Outcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Keep(events) => wit::Outcome::Keep(events.into_iter().map(Into::into).collect()),
            Outcome::Drop(reason) => wit::Outcome::Drop(reason),
            Outcome::Reject(r) => {
                wit::Outcome::Reject(wit::Rejection { code: r.code, message: r.message, field: r.field })
            }
        }
    }
}

/// Structured logging into the host's per-plugin log.
pub mod log {
    use crate::bindings::sluice::plugin::log as host;
    pub use crate::bindings::sluice::plugin::types::Level;

    /// Log a message with key/value fields.
    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        host::log(level, message, &fields);
    }

    pub fn debug(message: &str) {
        log(Level::Debug, message, &[]);
    }

    pub fn info(message: &str) {
        log(Level::Info, message, &[]);
    }

    pub fn warn(message: &str) {
        log(Level::Warn, message, &[]);
    }

    pub fn error(message: &str) {
        log(Level::Error, message, &[]);
    }
}

/// The object-safe face of a plugin, so one `static` can hold any plugin type.
trait Instance {
    fn process_batch(&mut self, events: Vec<Event>) -> Vec<Outcome>;
}

impl<P: Plugin> Instance for P {
    fn process_batch(&mut self, events: Vec<Event>) -> Vec<Outcome> {
        Plugin::process_batch(self, events)
    }
}

thread_local! {
    // A component instance is single-threaded; the host calls init before
    // process, and again only on a fresh instance.
    static INSTANCE: RefCell<Option<Box<dyn Instance>>> = const { RefCell::new(None) };
}

#[doc(hidden)]
pub fn __init<P: Plugin>(config: String) -> Result<(), String> {
    let config: Value = serde_json::from_str(&config).map_err(|e| format!("config is not JSON: {e}"))?;
    let plugin = P::init(config)?;
    INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(plugin)));
    Ok(())
}

#[doc(hidden)]
pub fn __process(events: Vec<wit::Event>) -> Vec<wit::Outcome> {
    let events: Vec<Event> = events.into_iter().map(Into::into).collect();
    let outcomes = INSTANCE.with(|slot| match slot.borrow_mut().as_mut() {
        Some(plugin) => plugin.process_batch(events),
        None => events.iter().map(|_| Outcome::reject("not_initialized", "plugin called before init")).collect(),
    });
    outcomes.into_iter().map(Into::into).collect()
}

#[doc(hidden)]
pub use handler::Guest as __Guest;
#[doc(hidden)]
pub use wit::{Event as __WitEvent, Outcome as __WitOutcome};

/// Export a [`Plugin`] implementation as the component's `handler`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        struct __SluiceExport;

        impl $crate::__Guest for __SluiceExport {
            fn init(config: String) -> Result<(), String> {
                $crate::__init::<$plugin>(config)
            }

            fn process(events: Vec<$crate::__WitEvent>) -> Vec<$crate::__WitOutcome> {
                $crate::__process(events)
            }
        }

        $crate::bindings::__export_handler!(__SluiceExport);
    };
}
