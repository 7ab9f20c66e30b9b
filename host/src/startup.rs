//! Building and running the service: open the store, load plugins, bind the
//! listener, serve until stopped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;
use tokio::net::TcpListener;

use crate::api::{router, AppState};
use crate::auth::Auth;
use crate::config::Settings;
use crate::pipeline::{Pipeline, Rate};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::{Backend, EventStore, QueryOptions, StoreOptions};

/// The service, built and bound, not yet serving.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// The embedded backend itself, for diagnostics ([`Application::store`]).
    embedded: EventStore,
    generated_admin_token: Option<String>,
}

fn cursor_key(settings: &Settings) -> anyhow::Result<[u8; 32]> {
    let path = settings.key_path();
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(key);
        }
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    std::fs::write(&path, key).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(key)
}

impl Application {
    /// Open the data directory, run migrations, load installed plugins and
    /// bind the listener.
    ///
    /// # Errors
    ///
    /// When the data directory, the database, the engine or the address
    /// cannot be set up.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("cannot create data directory {}", settings.data_dir.display()))?;
        let options = StoreOptions {
            cursor_key: cursor_key(&settings)?,
            memory_limit: settings.duckdb_memory_limit.clone(),
            checkpoint_threshold: settings.checkpoint_threshold.clone(),
            idle_checkpoint_bytes: settings.idle_checkpoint_bytes,
            threads: settings.store_threads,
            queue_depth: settings.write_queue_depth,
            query: QueryOptions {
                worker_program: settings.worker_program().context("cannot locate the query worker program")?,
                memory_limit: settings.query_memory_limit.clone(),
                max_concurrent: settings.query_concurrency,
                max_concurrent_per_tenant: settings.query_tenant_concurrency,
            },
            components_dir: settings.plugin_dir(),
        };
        let embedded = EventStore::open(&settings.database_path(), options)
            .with_context(|| format!("cannot open {}", settings.database_path().display()))?;
        let store: Arc<dyn Backend> = Arc::new(embedded.clone());
        let runtime = Arc::new(Runtime::new(RuntimeConfig {
            max_module_bytes: settings.max_plugin_bytes,
            compile_timeout: Duration::from_secs(settings.compile_timeout_secs),
            max_stack_bytes: settings.plugin_stack_bytes,
            fuel_metering: settings.fuel_metering,
            epoch_interruption: true,
            max_instances: settings.max_plugin_instances,
        })?);
        let pipeline = Pipeline::load(
            runtime,
            store.clone(),
            settings.plugin_dir(),
            (settings.plugin_workers, settings.plugin_tenant_workers),
        )?
        .with_max_stored_events(settings.max_stored_events)
        .with_tenant_plugin_bytes(settings.tenant_plugin_bytes)
        .with_plugin_time_budget(settings.tenant_plugin_ms_per_sec)
        .with_max_compiles(settings.compile_concurrency)
        .with_byte_rate(Rate {
            per_second: settings.tenant_bytes_per_sec.max(1) as f64,
            burst: settings.tenant_bytes_burst.max(1) as f64,
        })
        .with_default_rate(Rate {
            per_second: settings.tenant_events_per_sec.max(1) as f64,
            burst: settings.tenant_events_burst.max(1) as f64,
        });
        for (tenant, quotas) in store.load_quotas()? {
            pipeline.set_quotas(&tenant, quotas);
        }
        let auth = Arc::new(Auth::new(store.clone()));
        crate::metrics::handle();
        let first_start = !store.has_tokens()?;
        let generated_admin_token = auth.bootstrap(settings.admin_token.as_deref()).await?;
        if first_start {
            pipeline.install_defaults(crate::auth::DEFAULT_TENANT).await?;
        }
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let pipeline = Arc::new(pipeline);
        let ingest = Arc::new(crate::ingest::Ingest::new(store.clone(), pipeline.clone()));
        let state = AppState { store, pipeline, auth, settings: Arc::new(settings), ingest };
        Ok(Application { listener, state, embedded, generated_admin_token })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The service's embedded store (for in-process embedding and
    /// diagnostics).
    pub fn store(&self) -> EventStore {
        self.embedded.clone()
    }

    /// The admin token generated on first start, if this start generated one.
    pub fn generated_admin_token(&self) -> Option<&str> {
        self.generated_admin_token.as_deref()
    }

    /// Serve until Ctrl-C or SIGTERM, then finish in-flight requests (for at
    /// most [`crate::http::SHUTDOWN_GRACE`]).
    ///
    /// # Errors
    ///
    /// I/O errors of the listener.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let retention = tokio::spawn(retention_job(
            self.state.store.clone(),
            Duration::from_secs(self.state.settings.retention_interval_secs.max(1)),
        ));
        let refresh = (self.state.settings.query_refresh_secs > 0).then(|| {
            tokio::spawn(snapshot_job(
                self.state.store.clone(),
                Duration::from_secs(self.state.settings.query_refresh_secs),
            ))
        });
        // Our own accept loop rather than `axum::serve`: it adds header and
        // body deadlines and the connection cap (see `http`).
        let limits = crate::http::HttpLimits::from_settings(&self.state.settings);
        let served = crate::http::serve(self.listener, router(self.state), limits, shutdown_signal()).await;
        retention.abort();
        if let Some(refresh) = refresh {
            refresh.abort();
        }
        served
    }
}

/// Enforce tenants' retention periods, every `interval`.
async fn retention_job(store: Arc<dyn Backend>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match store.sweep_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "retention removed expired rows"),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        }
    }
}

/// Keep recently queried spaces' snapshots current, every `interval`, so a
/// query after heavy ingest finds little to copy.
async fn snapshot_job(store: Arc<dyn Backend>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = store.refresh_query_snapshots().await {
            tracing::warn!(error = %e, "query snapshot refresh failed");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
