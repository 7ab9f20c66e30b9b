//! The Extism peer of BENCHMARKS.md: Sluice's customer-prefix transform as
//! an Extism plugin (`extism-prefix`, JSON in and out, as Extism's PDK
//! offers structured data), run by the `extism` crate, per event, in
//! one-event calls and in batches of 1000, beside the same figures from
//! Sluice's runtime (`sluice-bench --only peer`, spawned between rounds, so
//! the two alternate on this shared, noisy machine).
//!
//! Usage: `extism-peer <extism-prefix.wasm> <sluice-bench> [rounds]`; run by
//! `scripts/bench-extism`, which builds both.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use extism::{Manifest, Plugin, Wasm};
use extism_record::Outcome;
use serde_json::{json, Value};

const SPELL: Duration = Duration::from_millis(1500);

/// The events of Sluice's runtime bench (`tests/src/bin/sluice-bench/runtime.rs`),
/// in the JSON form of the WIT `event` record.
fn events(n: usize) -> Vec<u8> {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "id": format!("0190f5c2-7d3e-7000-8000-{i:012}"),
                "tenant": "bench",
                "family": "generic",
                "name": "order.paid",
                "group": "order",
                "status": "success",
                "source": "shop",
                "occurred_at": 1_700_000_000_000_000i64,
                "received_at": 1_700_000_000_000_000i64,
                "actor_type": "user",
                "actor_id": format!("user-{i}"),
                "user_id": i,
                "resource_type": null,
                "resource_id": null,
                "session_id": null,
                "attributes": [["ip_address", "203.0.113.7"]],
                "payload": format!(r#"{{"email":"buyer{i}@example.com","amount":12.5,"items":3}}"#),
            })
        })
        .collect();
    serde_json::to_vec(&events).expect("events serialize")
}

/// Nanoseconds per event of `f` over `batch`-event calls, run for a spell.
fn per_event(batch: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < SPELL {
        f()?;
        calls += 1;
    }
    Ok(started.elapsed().as_nanos() as f64 / (calls as f64 * batch as f64))
}

/// One call: the events in, the outcomes read back into the host's typed
/// records (the host must read what the plugin answered, as Sluice does).
fn call(plugin: &mut Plugin, input: &[u8], expected: usize) -> Result<()> {
    let output: &[u8] = plugin.call("process", input)?;
    let outcomes: Vec<Outcome> = serde_json::from_slice(output)?;
    if outcomes.len() != expected {
        bail!("{} outcomes for {expected} events", outcomes.len());
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn sluice_round(sluice_bench: &str) -> Result<(f64, f64)> {
    let out = Command::new(sluice_bench).args(["--only", "peer"]).output().context("running sluice-bench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("sluice-peer ")).context("no sluice-peer line")?;
    let v: Value = serde_json::from_str(line)?;
    Ok((v["one_event_ns"].as_f64().context("one_event_ns")?, v["batch_ns"].as_f64().context("batch_ns")?))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, wasm, sluice_bench, rest @ ..] = args.as_slice() else {
        bail!("usage: extism-peer <extism-prefix.wasm> <sluice-bench> [rounds]");
    };
    let rounds: usize = rest.first().map_or(Ok(3), |r| r.parse())?;
    // Limits like Sluice's defaults: a deadline per call (Extism's is
    // epoch-based, as Sluice's) and a memory cap (64 MiB = 1024 pages).
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {wasm}"))?;
    let manifest = Manifest::new([Wasm::data(bytes)]).with_timeout(Duration::from_secs(1)).with_memory_max(1024);
    let mut plugin = Plugin::new(&manifest, [], true)?;
    let (batch, one) = (events(1000), events(1));

    let (mut e_one, mut e_batch, mut s_one, mut s_batch) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        e_batch.push(per_event(1000, || call(&mut plugin, &batch, 1000))?);
        e_one.push(per_event(1, || call(&mut plugin, &one, 1))?);
        let (one_ns, batch_ns) = sluice_round(sluice_bench)?;
        s_one.push(one_ns);
        s_batch.push(batch_ns);
        eprintln!(
            "round {round}: extism {:.0} / {:.0} ns, sluice {one_ns:.0} / {batch_ns:.0} ns (one-event call / per event in batches of 1000)",
            e_one[round - 1],
            e_batch[round - 1]
        );
    }
    let (eo, eb, so, sb) = (median(&mut e_one), median(&mut e_batch), median(&mut s_one), median(&mut s_batch));
    println!(
        "| customer-prefix, per event (median of {rounds} alternating rounds) | Sluice | Extism | Sluice / Extism |"
    );
    println!("| --- | --- | --- | --- |");
    println!("| one-event call, reused instance | {:.2} µs | {:.2} µs | {:.2}x |", so / 1e3, eo / 1e3, so / eo);
    println!("| batches of 1000 | {sb:.0} ns | {eb:.0} ns | {:.2}x |", sb / eb);
    Ok(())
}
