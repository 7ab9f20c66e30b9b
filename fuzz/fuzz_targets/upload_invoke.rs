//! Upload + invoke, as a tenant would drive them. The first byte picks the
//! path:
//!
//! - even: the rest is a plugin upload. It is validated and compiled as
//!   at `POST /v1/plugins`; whatever compiles is instantiated, its `init`
//!   called with an empty config and its `process` with one event, under the
//!   default limits. Seed the corpus with the real plugins (RELIABILITY.md),
//!   so mutations stay near valid components.
//! - odd: the rest is an event (fields split at NUL bytes) for a real plugin
//!   (schema-guard with rules, pii-redact, customer-prefix), to drive the
//!   plugins' input handling and the host's output checks.
//!
//! Any outcome is fine except a panic, a crash or a hang of the host.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sluice::runtime::bindings::types;
use sluice::runtime::{PluginInstances, PluginLimits, Runtime, RuntimeConfig};

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let config = RuntimeConfig { max_instances: 16, ..RuntimeConfig::default() };
        Runtime::new(config).expect("runtime")
    })
}

/// The real plugins, compiled once: `SLUICE_FUZZ_PLUGINS` names a directory
/// of `.wasm` files (the test helper builds them into
/// `$CARGO_TARGET_DIR/plugins`).
fn real_plugins() -> &'static Vec<Arc<PluginInstances>> {
    static PLUGINS: OnceLock<Vec<Arc<PluginInstances>>> = OnceLock::new();
    PLUGINS.get_or_init(|| {
        let dir = std::env::var("SLUICE_FUZZ_PLUGINS").unwrap_or_default();
        let configs = [
            ("schema_guard.wasm", r#"{"rules":[{"field":"event_type","pattern":"^[a-z.]+$"},{"field":"event_payload.email","required":true,"max_length":64}]}"#),
            ("pii_redact.wasm", r#"{"key":"k","fields":["event_payload.email","actor_id"]}"#),
            ("customer_prefix.wasm", "{}"),
        ];
        let mut out = Vec::new();
        for (file, config) in configs {
            let Ok(bytes) = std::fs::read(std::path::Path::new(&dir).join(file)) else { continue };
            let (plugin, _) = runtime().compile(&bytes).expect("a real plugin compiles");
            out.push(Arc::new(PluginInstances::new(Arc::new(plugin), config.into(), PluginLimits::default())));
        }
        out
    })
}

fn event(fields: &[&str]) -> types::Event {
    let field = |i: usize| fields.get(i).map_or(String::new(), |s| s.to_string());
    types::Event {
        id: field(0),
        tenant: "fuzz".into(),
        family: "generic".into(),
        name: field(1),
        group: field(2),
        status: "success".into(),
        source: field(3),
        occurred_at: 0,
        received_at: 0,
        actor_type: "user".into(),
        actor_id: fields.get(4).map(|s| s.to_string()),
        user_id: None,
        resource_type: None,
        resource_id: None,
        session_id: fields.get(5).map(|s| s.to_string()),
        attributes: fields.get(6).map(|v| vec![("k".to_string(), v.to_string())]).unwrap_or_default(),
        payload: field(7),
    }
}

fn invoke(instances: &PluginInstances, events: &[types::Event]) {
    if instances.check().is_ok() {
        let _ = instances.process(events);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    if selector % 2 == 0 {
        let Ok((plugin, _artifact)) = runtime().compile(rest) else { return };
        let instances = PluginInstances::new(Arc::new(plugin), "{}".into(), PluginLimits::default());
        invoke(&instances, &[event(&["id", "fuzz.event", "fuzz", "fuzzer"])]);
    } else {
        let plugins = real_plugins();
        if plugins.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(rest);
        let fields: Vec<&str> = text.split('\0').collect();
        let plugin = &plugins[usize::from(selector / 2) % plugins.len()];
        invoke(plugin, &[event(&fields)]);
    }
});
