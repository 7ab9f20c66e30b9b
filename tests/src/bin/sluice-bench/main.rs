//! The performance harness (BENCHMARKS.md). It builds and starts the real
//! `sluice` binary (release, fresh data directory), drives it from a load
//! generator on loopback, and prints every figure, bounded in time.
//! Compared configurations run in the same process, alternating, and are
//! reported as ratios as well as absolutes: this machine is shared and noisy.
//!
//! `scripts/bench` (options: `--help`) builds everything as `cargo test
//! --release` does, so DuckDB is not compiled twice, and runs this.

mod load;
mod runtime;
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use serde_json::{json, Value};

use load::{body, fixed_rate, ingest, Figures, On429};
use server::Server;

#[derive(Parser)]
#[command(about = "Sluice's performance harness: a real server and a load generator on loopback")]
struct Args {
    /// Seconds per measured ingest phase.
    #[arg(long, default_value_t = 5)]
    phase_secs: u64,
    /// How many times each compared pair alternates.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Events stored before the listing and SQL figures (0 skips them).
    #[arg(long, default_value_t = 10_000_000)]
    stored: u64,
    /// Only these sections, comma separated: ingest, sizes, latency,
    /// runtime, twenty, startup, fairness, query; `peer` alone prints one round of
    /// Sluice's side of the Extism comparison (`scripts/bench-extism`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only the fairness scenarios whose description contains this (e.g.
    /// `spinning`, `fan-out`); the quiet tenant alone always runs, and the
    /// query scenario only unfiltered (it queries the fan-out's rows).
    #[arg(long)]
    scenario: Option<String>,
}

impl Args {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

/// The three-plugin chain of the targets, for generic events.
pub(crate) fn chain() -> [(&'static str, &'static str, serde_json::Value); 3] {
    [
        (
            "guard",
            "schema-guard",
            json!({"rules": [
                {"field": "event_type", "required": true, "pattern": "^[a-z.]+$"},
                {"field": "event_payload.email", "max_length": 254}
            ]}),
        ),
        ("redact", "pii-redact", json!({"key": "bench-key", "fields": ["event_payload.email", "ip_address"]})),
        ("prefix", "customer-prefix", json!({})),
    ]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let phase = Duration::from_secs(args.phase_secs);
    let mut figures = Figures::default();
    if args.only == ["peer"] {
        return runtime::peer();
    }

    if args.runs("runtime") {
        // In-process and first, before the server takes the cores.
        runtime::figures(&mut figures)?;
    }

    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path()).await?;
    let bare = server.tenant("bare").await?;
    let chained = server.tenant("chained").await?;
    for (name, krate, config) in chain() {
        server.install(&chained, name, krate, json!({"config": config, "families": ["generic"]})).await?;
    }

    if args.runs("ingest") {
        // Batches of 1000, no plugins vs the three-plugin chain, alternating.
        let batch = body(1000);
        let (mut plain, mut three) = (Vec::new(), Vec::new());
        for round in 1..=args.rounds {
            plain.push(ingest(&server, &bare, &batch, 1000, args.connections, phase).await?);
            three.push(ingest(&server, &chained, &batch, 1000, args.connections, phase).await?);
            println!(
                "  round {round}: no plugins {:.0}, chain {:.0} events/s",
                plain.last().unwrap(),
                three.last().unwrap()
            );
        }
        let (p, t) = (load::median(&plain), load::median(&three));
        figures.add("ingest, batches of 1000, no plugins", format!("{p:.0} events/s"));
        figures.add("ingest, batches of 1000, 3-plugin chain", format!("{t:.0} events/s"));
        figures.add("3-plugin chain / no plugins", format!("{:.2}x", t / p));
    }

    if args.runs("sizes") {
        // Request sizes through the chain: single events vs batches.
        for size in [1usize, 100, 1000] {
            let rate = ingest(&server, &chained, &body(size), size, args.connections * 4, phase).await?;
            figures.add(
                &format!("ingest through the chain, {size} event(s) per POST"),
                format!("{rate:.0} events/s ({:.0} requests/s)", rate / size as f64),
            );
        }
    }

    if args.runs("latency") {
        // The chain's tenant, then the plugin-free one: what the store and
        // HTTP cost alone.
        for (what, token) in [("chain", &chained), ("no plugins", &bare)] {
            let l = fixed_rate(&server, token, &body(1), 2000.0, phase * 2).await?;
            figures.add(
                &format!("single-event POST at 2,000 requests/s ({what})"),
                format!(
                    "from due: p50 {:.2} ms, p99 {:.2} ms; from sent: p50 {:.2} ms, p99 {:.2} ms; {} errors",
                    l.due.0 * 1e3,
                    l.due.1 * 1e3,
                    l.sent.0 * 1e3,
                    l.sent.1 * 1e3,
                    l.errors
                ),
            );
        }
    }

    if args.runs("twenty") || args.runs("startup") {
        // A fresh server (its own data directory), so its memory is this
        // load's alone: a tenant with a chain of 20 plugins, all active on
        // its events, loaded together with a plugin-free tenant.
        let fresh_dir = tempfile::tempdir()?;
        let mut fresh = Server::start(fresh_dir.path()).await?;
        let twenty = fresh.tenant("twenty").await?;
        let plain = fresh.tenant("plain").await?;
        for i in 0..20 {
            let (_, krate, config) = &chain()[i % 3];
            let name = format!("p{i:02}");
            fresh.install(&twenty, &name, krate, json!({"config": config, "families": ["generic"]})).await?;
        }
        if args.runs("twenty") {
            let before = fresh.peak_rss_mib();
            let batch = body(1000);
            let started = Instant::now();
            let (a, b) = tokio::join!(
                ingest(&fresh, &twenty, &batch, 1000, args.connections, phase * 2),
                ingest(&fresh, &plain, &batch, 1000, args.connections, phase * 2)
            );
            figures.add(
                "peak server RSS, fresh server, 20-plugin chain under full load",
                format!(
                    "{:.0} MiB (after installing: {before:.0} MiB; 20-plugin tenant {:.0} events/s, \
                     plugin-free tenant {:.0} events/s, over {:.0} s)",
                    fresh.peak_rss_mib(),
                    a?,
                    b?,
                    started.elapsed().as_secs_f64()
                ),
            );
        }
        if args.runs("startup") {
            let mut times = Vec::new();
            for _ in 0..3 {
                times.push(fresh.restart().await?.as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            figures.add(
                "startup with 20 installed plugins (+1 shipped per tenant), to first healthy answer",
                format!("{:.0} ms (median of 3; {:.0}..{:.0} ms)", times[1] * 1e3, times[0] * 1e3, times[2] * 1e3),
            );
        }
        fresh.stop().await;
    }

    if args.runs("fairness") {
        fairness(&mut figures, phase, args.scenario.as_deref().unwrap_or("")).await?;
    }

    if args.runs("query") && args.stored > 0 {
        load::query_figures(&server, args.stored, &mut figures).await?;
    }

    server.stop().await;
    figures.print();
    Ok(())
}

/// A quiet tenant's single-event POSTs (200/s, open loop) alone and beside a
/// noisy tenant, on a fresh server with the default per-tenant limits: the
/// noisy tenant fans each event out 100 times from two connections, or
/// spins a plugin to its deadline, or runs a heavy query in a loop.
async fn fairness(figures: &mut Figures, phase: Duration, only: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with_default_limits(dir.path()).await?;
    let quiet = server.tenant("quiet").await?;
    let noisy = server.tenant("noisy").await?;
    let fan = json!({"config": {"mode": "fanout", "copies": 100}, "families": ["generic"], "event_names": ["fan.*"],
                     "max_consecutive_failures": 1000000});
    server.install(&noisy, "fan", "hostile-output", fan).await?;
    let spin = json!({"families": ["generic"], "event_names": ["spin.*"], "failure_policy": "skip",
                      "limits": {"deadline_ms": 500}, "max_consecutive_failures": 1000000});
    server.install(&noisy, "spin", "hostile-loop", spin).await?;
    let events = |name: &str, n: usize| {
        let list: Vec<Value> = (0..n).map(|i| json!({"event_type": name, "task_id": i})).collect();
        Arc::new(serde_json::to_vec(&Value::Array(list)).expect("serializes"))
    };
    let single = body(1);
    let quiet_latency = |l: &load::Latency| {
        format!("p50 {:.2} ms, p99 {:.2} ms (from due), {} errors", l.due.0 * 1e3, l.due.1 * 1e3, l.errors)
    };
    let alone = fixed_rate(&server, &quiet, &single, 200.0, phase).await?;
    figures.add("fairness: quiet tenant alone", quiet_latency(&alone));
    // Each load twice: from a client that waits out the Retry-After of a
    // 429, and from one that posts again at once.
    let scenarios: [(&str, &str, Arc<Vec<u8>>, usize, On429); 6] = [
        ("fan-out x100, batches of 100 from 2 connections", "/v1/events", events("fan.out", 100), 2, On429::Wait),
        ("fan-out x100, batches of 100 from 2 connections", "/v1/events", events("fan.out", 100), 2, On429::Ignore),
        ("fan-out x100, batches of 1000 from 2 connections", "/v1/events", events("fan.out", 1000), 2, On429::Wait),
        ("fan-out x100, batches of 1000 from 2 connections", "/v1/events", events("fan.out", 1000), 2, On429::Ignore),
        ("a plugin spinning to its 500 ms deadline, 8 connections", "/v1/events", events("spin.x", 1), 8, On429::Wait),
        (
            "a plugin spinning to its 500 ms deadline, 8 connections",
            "/v1/events",
            events("spin.x", 1),
            8,
            On429::Ignore,
        ),
    ];
    for (what, path, noisy_body, connections, on_429) in scenarios.into_iter().filter(|s| s.0.contains(only)) {
        // A pause between phases: one phase's tail does not run into the next.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let what = match on_429 {
            On429::Wait => format!("{what}, waiting out 429s"),
            On429::Ignore => format!("{what}, ignoring 429s"),
        };
        let (latency, statuses) = tokio::join!(
            fixed_rate(&server, &quiet, &single, 200.0, phase),
            load::flood(&server, &noisy, path, &noisy_body, connections, phase, on_429)
        );
        figures.add(
            &format!("fairness: quiet beside {what}"),
            format!("{}; noisy answered {statuses:?}", quiet_latency(&latency?)),
        );
    }
    // A heavy analyst query of the noisy tenant, in a loop on two connections.
    const QUERY: &str = "a heavy query in a loop";
    // It runs over the rows the fan-out phases stored: alone, over none.
    if !only.is_empty() {
        server.stop().await;
        return Ok(());
    }
    let heavy = Arc::new(serde_json::to_vec(
        &json!({"sql": "SELECT count(DISTINCT a.task_id * b.task_id) FROM events a, events b"}),
    )?);
    let (latency, statuses) = tokio::join!(
        fixed_rate(&server, &quiet, &single, 200.0, phase),
        load::flood(&server, &noisy, "/v1/query", &heavy, 2, phase, On429::Ignore)
    );
    figures.add(
        &format!("fairness: quiet beside {QUERY}"),
        format!("{}; noisy answered {statuses:?}", quiet_latency(&latency?)),
    );
    // Two noisy loads at once, each within its own bound: the plugin spins
    // on its half of the CPUs, the query on the upper half, which together
    // may be every CPU.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spin_body = events("spin.x", 1);
    let (latency, spun, queried) = tokio::join!(
        fixed_rate(&server, &quiet, &single, 200.0, phase),
        load::flood(&server, &noisy, "/v1/events", &spin_body, 8, phase, On429::Wait),
        load::flood(&server, &noisy, "/v1/query", &heavy, 2, phase, On429::Ignore)
    );
    figures.add(
        "fairness: quiet beside a spinning plugin and a heavy query at once",
        format!("{}; noisy answered {spun:?} and {queried:?}", quiet_latency(&latency?)),
    );
    server.stop().await;
    Ok(())
}
