//! In-process figures of the sandbox itself (no HTTP, no storage): the cost
//! per event of a transform as a WASM plugin vs compiled into the host, a
//! fresh instance per call vs a reused one, and fuel metering and epoch
//! interruption on vs off. Pairs alternate, three rounds each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use sluice::runtime::bindings::types;
use sluice::runtime::{PluginInstances, PluginLimits, Runtime, RuntimeConfig};

use crate::load::{median, Figures};

const ROUNDS: usize = 3;
const SPELL: Duration = Duration::from_millis(1500);

fn events(n: usize) -> Vec<types::Event> {
    (0..n)
        .map(|i| types::Event {
            id: format!("0190f5c2-7d3e-7000-8000-{i:012}"),
            tenant: "bench".into(),
            family: "generic".into(),
            name: "order.paid".into(),
            group: "order".into(),
            status: "success".into(),
            source: "shop".into(),
            occurred_at: 1_700_000_000_000_000,
            received_at: 1_700_000_000_000_000,
            actor_type: "user".into(),
            actor_id: Some(format!("user-{i}")),
            user_id: Some(i as i64),
            resource_type: None,
            resource_id: None,
            session_id: None,
            attributes: vec![("ip_address".into(), "203.0.113.7".into())],
            payload: format!(r#"{{"email":"buyer{i}@example.com","amount":12.5,"items":3}}"#),
        })
        .collect()
}

/// Nanoseconds per event of `f` over `batch`-event calls, run for a spell.
fn per_event(batch: usize, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < SPELL {
        f();
        calls += 1;
    }
    started.elapsed().as_nanos() as f64 / (calls as f64 * batch as f64)
}

fn runtime(fuel: bool, epoch: bool) -> Result<Runtime> {
    Runtime::new(RuntimeConfig {
        max_instances: 16,
        fuel_metering: fuel,
        epoch_interruption: epoch,
        ..Default::default()
    })
}

fn instances(runtime: &Runtime, krate: &str, config: &str) -> Result<Arc<PluginInstances>> {
    let (plugin, _) = runtime.compile(&sluice_e2e::plugin_wasm(krate)).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Arc::new(PluginInstances::new(Arc::new(plugin), config.into(), PluginLimits::default())))
}

/// The customer-prefix transform, compiled into the host: the same work
/// on the same types, answering the same outcomes.
fn native_prefix(events: &[types::Event]) -> Vec<types::Outcome> {
    events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if !e.name.starts_with("customer.") {
                e.name = format!("customer.{}", e.name);
            }
            types::Outcome::Keep(vec![e])
        })
        .collect()
}

fn process(plugin: &PluginInstances, events: &[types::Event]) {
    let (result, _) = plugin.process(events);
    assert!(result.is_ok(), "the plugin failed: {:?}", result.err());
}

/// One round of Sluice's side of the Extism peer comparison
/// (`bench/extism-peer` spawns `sluice-bench --only peer` between its own
/// rounds): customer-prefix per event, in one-event calls and in batches of
/// 1000, on a reused instance with the default limits (fuel and epoch on).
/// Prints one line: `sluice-peer {"one_event_ns": .., "batch_ns": ..}`.
pub fn peer() -> Result<()> {
    let default = runtime(true, true)?;
    let prefix = instances(&default, "customer-prefix", "{}")?;
    let (batch, one) = (events(1000), events(1));
    let batch_ns = per_event(batch.len(), || process(&prefix, &batch));
    let one_event_ns = per_event(1, || process(&prefix, &one));
    println!("sluice-peer {}", serde_json::json!({"one_event_ns": one_event_ns, "batch_ns": batch_ns}));
    Ok(())
}

pub fn figures(figures: &mut Figures) -> Result<()> {
    let batch = events(1000);
    let one = events(1);
    let default = runtime(true, true)?;
    let prefix = instances(&default, "customer-prefix", "{}")?;

    // Native vs WASM, batches of 1000.
    let (mut native, mut wasm) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        native.push(per_event(batch.len(), || {
            std::hint::black_box(native_prefix(&batch));
        }));
        wasm.push(per_event(batch.len(), || process(&prefix, &batch)));
    }
    let (n, w) = (median(&native), median(&wasm));
    figures.add("customer-prefix compiled into the host", format!("{n:.0} ns/event"));
    figures.add("customer-prefix as a WASM plugin (batches of 1000)", format!("{w:.0} ns/event"));
    figures.add("WASM / native", format!("{:.1}x", w / n));

    // A fresh instance (instantiate + init) per call vs a reused one.
    let (plugin, _) =
        default.compile(&sluice_e2e::plugin_wasm("customer-prefix")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plugin = Arc::new(plugin);
    let (mut fresh, mut reused) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        fresh.push(per_event(1, || {
            let new = PluginInstances::new(plugin.clone(), "{}".into(), PluginLimits::default());
            process(&new, &one);
        }));
        reused.push(per_event(1, || process(&prefix, &one)));
    }
    let (f, r) = (median(&fresh), median(&reused));
    figures.add("one-event call on a fresh instance (instantiate + init)", format!("{:.1} µs", f / 1e3));
    figures.add("one-event call on a reused instance", format!("{:.1} µs", r / 1e3));
    figures.add("fresh / reused", format!("{:.1}x", f / r));

    // Each plugin of the three-plugin chain, with the chain's configuration:
    // what one event costs in the sandbox (default limits), in batches of 1000.
    let chain: Vec<_> = crate::chain()
        .into_iter()
        .map(|(_, krate, config)| Ok((krate, instances(&default, krate, &config.to_string())?)))
        .collect::<Result<_>>()?;
    let mut costs = vec![Vec::new(); chain.len()];
    for _ in 0..ROUNDS {
        for (i, (_, plugin)) in chain.iter().enumerate() {
            costs[i].push(per_event(batch.len(), || process(plugin, &batch)));
        }
    }
    let total: f64 = costs.iter().map(|c| median(c)).sum();
    for ((krate, _), c) in chain.iter().zip(&costs) {
        figures.add(&format!("chain plugin {krate}, batches of 1000"), format!("{:.0} ns/event", median(c)));
    }
    figures.add("the three chain plugins together", format!("{total:.0} ns/event"));

    // Fuel metering and epoch interruption, on pii-redact (HMAC per field).
    let config = r#"{"key": "bench-key", "fields": ["event_payload.email", "ip_address"]}"#;
    let variants =
        [("fuel on, epoch on", true, true), ("fuel off, epoch on", false, true), ("fuel off, epoch off", false, false)];
    let plugins: Vec<_> = variants
        .iter()
        .map(|(_, fuel, epoch)| {
            let rt = Arc::new(runtime(*fuel, *epoch)?);
            Ok((rt.clone(), instances(&rt, "pii-redact", config)?))
        })
        .collect::<Result<_>>()?;
    let mut costs = vec![Vec::new(); variants.len()];
    for _ in 0..ROUNDS {
        for (i, (_, plugin)) in plugins.iter().enumerate() {
            costs[i].push(per_event(batch.len(), || process(plugin, &batch)));
        }
    }
    let base = median(&costs[0]);
    for (i, (name, _, _)) in variants.iter().enumerate() {
        let c = median(&costs[i]);
        figures.add(&format!("pii-redact, {name}"), format!("{c:.0} ns/event ({:.2}x of fuel+epoch on)", c / base));
    }
    Ok(())
}
