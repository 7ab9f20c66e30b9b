//! Prometheus metrics: one process-wide recorder, and the few functions the
//! rest of the code calls to record what happened. `GET /metrics` renders it.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::event::PluginRun;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first use. When another recorder
/// is already installed (an embedding program's), Sluice renders its own,
/// uninstalled one, which then stays empty.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("sluice_plugin_fuel".into()),
                        &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10],
                    )
                })
                .expect("bucket lists are non-empty")
        };
        builder().install_recorder().unwrap_or_else(|_| builder().build_recorder().handle())
    })
}

/// Render every metric in the Prometheus text format.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

/// Record one plugin call.
pub fn plugin_run(run: &PluginRun) {
    let labels =
        [("tenant", run.tenant.clone()), ("plugin", run.plugin.clone()), ("version", run.plugin_version.to_string())];
    counter!("sluice_plugin_invocations_total", &labels).increment(1);
    counter!("sluice_plugin_events_in_total", &labels).increment(run.events_in.into());
    counter!("sluice_plugin_events_kept_total", &labels).increment(run.events_out.into());
    counter!("sluice_plugin_events_dropped_total", &labels).increment(run.dropped.into());
    counter!("sluice_plugin_events_rejected_total", &labels).increment(run.rejected.into());
    if let Some(reason) = &run.fault {
        let mut with_reason = labels.to_vec();
        with_reason.push(("reason", reason.clone()));
        counter!("sluice_plugin_traps_total", &with_reason).increment(1);
    }
    histogram!("sluice_plugin_call_seconds", &labels).record(run.elapsed_us as f64 / 1e6);
    histogram!("sluice_plugin_fuel", &labels).record(run.fuel as f64);
}

/// Record an ingest request of `family` and how its events ended.
pub fn ingest(family: &'static str, stored: usize, dropped: usize, rejected: usize, dead_lettered: usize) {
    counter!("sluice_ingest_requests_total", "family" => family).increment(1);
    for (disposition, n) in
        [("stored", stored), ("dropped", dropped), ("rejected", rejected), ("dead_lettered", dead_lettered)]
    {
        if n > 0 {
            counter!("sluice_ingest_events_total", "family" => family, "disposition" => disposition)
                .increment(n as u64);
        }
    }
}

/// Record the CPU time a tenant's run took on its plugin worker: its
/// plugins' calls and the host's work for them, as its budget is charged.
pub fn tenant_plugin_time(tenant: &str, micros: u64) {
    let tenant = tenant.split(':').next().unwrap_or(tenant).to_string();
    counter!("sluice_tenant_plugin_microseconds_total", "tenant" => tenant).increment(micros);
}

/// Record a checkpoint the writer ran while idle, and how long it took.
pub fn checkpoint(took: std::time::Duration) {
    histogram!("sluice_store_idle_checkpoint_seconds").record(took.as_secs_f64());
}

/// Record a group commit of `requests` requests and `rows` rows.
pub fn commit(requests: usize, rows: usize, took: Duration, ok: bool) {
    counter!("sluice_store_commits_total", "result" => if ok { "ok" } else { "error" }).increment(1);
    counter!("sluice_store_rows_total").increment(rows as u64);
    histogram!("sluice_store_commit_requests").record(requests as f64);
    histogram!("sluice_store_commit_seconds").record(took.as_secs_f64());
}

/// Record a request of `tenant` refused by one of its limits: `rate`
/// (ingest rate), `bodies` (its share of the request bodies held at
/// once), `stored_events` (fan-out bound), `analyst_slots`
/// (queries and exports), `compile_slot` (one upload at a time). With the
/// per-tenant plugin time and workers below, an operator sees who is noisy.
pub fn throttled(tenant: &str, reason: &'static str) {
    let tenant = tenant.split(':').next().unwrap_or(tenant).to_string();
    counter!("sluice_tenant_throttled_total", "tenant" => tenant, "reason" => reason).increment(1);
}

/// Write requests of a tenant waiting for the store (queued or committing).
pub fn write_queue(tenant: &str, waiting: usize) {
    gauge!("sluice_tenant_write_queue", "tenant" => tenant.to_string()).set(waiting as f64);
}

/// How many plugin workers `tenant` holds now.
pub fn plugin_workers(tenant: &str, held: usize) {
    gauge!("sluice_tenant_plugin_workers", "tenant" => tenant.to_string()).set(held as f64);
}

/// Record a write refused because the queue was full.
pub fn overloaded() {
    counter!("sluice_store_overloaded_total").increment(1);
}
