//! Service settings: flags, `SLUICE_*` environment variables, and the
//! defaults documented on each field.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Settings of `sluice serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of the DuckDB file (`sluice.duckdb`) and compiled plugins
    /// (`plugins/`).
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Bootstrap admin token of the default tenant. When unset, the first
    /// start generates one and prints it once.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = 10 << 20)]
    pub max_body_bytes: usize,
    /// What request bodies being read and handled may hold at once, all
    /// clients together: three times each one's `Content-Length` (a chunked
    /// body counts as the largest). One tenant holds at most a quarter of it
    /// (beyond: 429); a request that finds no room within 1 s gets 503.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 512 << 20)]
    pub max_body_bytes_in_flight: u64,
    /// Most events accepted in one ingest request.
    #[arg(long, env = "SLUICE_MAX_BATCH_EVENTS", default_value_t = 10_000)]
    pub max_batch_events: usize,
    /// Largest plugin component accepted at upload, in bytes.
    #[arg(long, env = "SLUICE_MAX_PLUGIN_BYTES", default_value_t = 16 << 20)]
    pub max_plugin_bytes: usize,
    /// Longest compilation of an uploaded plugin, in seconds.
    #[arg(long, env = "SLUICE_COMPILE_TIMEOUT_SECS", default_value_t = 20)]
    pub compile_timeout_secs: u64,
    /// Most plugin uploads compiling at once, all tenants (one per tenant);
    /// beyond it 429 with Retry-After.
    #[arg(long, env = "SLUICE_COMPILE_CONCURRENCY", default_value_t = 2)]
    pub compile_concurrency: usize,
    /// Wasm stack available to a plugin call, in bytes (engine-wide).
    #[arg(long, env = "SLUICE_PLUGIN_STACK_BYTES", default_value_t = 512 << 10)]
    pub plugin_stack_bytes: usize,
    /// Most plugin instances alive at once across all tenants (each reserves
    /// address space in the pooling allocator).
    #[arg(long, env = "SLUICE_MAX_PLUGIN_INSTANCES", default_value_t = 512)]
    pub max_plugin_instances: u32,
    /// Most write requests waiting for the store; beyond it ingest answers
    /// 503 with Retry-After.
    #[arg(long, env = "SLUICE_WRITE_QUEUE_DEPTH", default_value_t = 512)]
    pub write_queue_depth: usize,
    /// How many batches run plugins at once (0: two per core). Further
    /// batches wait their turn; each running batch holds one instance of each
    /// plugin it calls.
    #[arg(long, env = "SLUICE_PLUGIN_WORKERS", default_value_t = 0)]
    pub plugin_workers: usize,
    /// How many of them one tenant holds at once (0: half of them and half
    /// of the cores, at least one). A deployment with one tenant raises it
    /// to use every core.
    #[arg(long, env = "SLUICE_PLUGIN_TENANT_WORKERS", default_value_t = 0)]
    pub plugin_tenant_workers: usize,
    /// Memory DuckDB may use for storage and queries (its `memory_limit`).
    #[arg(long, env = "SLUICE_DUCKDB_MEMORY_LIMIT", default_value = "4GB")]
    pub duckdb_memory_limit: String,
    /// WAL size that triggers a checkpoint (DuckDB's `checkpoint_threshold`;
    /// see BENCHMARKS.md for why it is large).
    #[arg(long, env = "SLUICE_CHECKPOINT_THRESHOLD", default_value = "512MB")]
    pub checkpoint_threshold: String,
    /// WAL bytes beyond which the writer checkpoints as soon as no write is
    /// waiting (0: never; DuckDB's own checkpoint at the threshold above
    /// still applies): short pauses while the store is idle, instead of
    /// one long pause for everyone once the WAL reaches the threshold.
    #[arg(long, env = "SLUICE_IDLE_CHECKPOINT_BYTES", default_value_t = 0)]
    pub idle_checkpoint_bytes: u64,
    /// DuckDB worker threads of the embedded store (its `threads`): its
    /// statements are appends, commits and keyed reads, which parallelism
    /// does not speed up but whose hand-offs to busy threads delay a
    /// one-row commit by up to 300 ms (BENCHMARKS.md, "Fairness"). Analysts'
    /// queries run in worker processes with threads of their own.
    #[arg(long, env = "SLUICE_STORE_THREADS", default_value_t = 1)]
    pub store_threads: usize,
    /// Longest analyst query before it is interrupted, in seconds.
    #[arg(long, env = "SLUICE_QUERY_TIMEOUT_SECS", default_value_t = 10)]
    pub query_timeout_secs: u64,
    /// Most rows a JSON or CSV query result returns (the rest is cut and the
    /// result marked truncated).
    #[arg(long, env = "SLUICE_QUERY_MAX_ROWS", default_value_t = 10_000)]
    pub query_max_rows: usize,
    /// How often the retention job runs, in seconds.
    #[arg(long, env = "SLUICE_RETENTION_INTERVAL_SECS", default_value_t = 300)]
    pub retention_interval_secs: u64,
    /// Meter fuel on every plugin call (needed for fuel budgets and reports).
    #[arg(long, env = "SLUICE_FUEL_METERING", default_value_t = true, action = clap::ArgAction::Set)]
    pub fuel_metering: bool,
    /// Events per second a tenant may ingest, sustained (live and test
    /// together; fan-out counts), unless `PUT /v1/quotas` sets its own.
    #[arg(long, env = "SLUICE_TENANT_EVENTS_PER_SEC", default_value_t = 50_000)]
    pub tenant_events_per_sec: u64,
    /// Events a tenant may ingest at once before its rate applies.
    #[arg(long, env = "SLUICE_TENANT_EVENTS_BURST", default_value_t = 100_000)]
    pub tenant_events_burst: u64,
    /// Bytes a tenant may store per second (payloads, raw inputs, custom
    /// attributes and lineage; request bodies before they are parsed; after
    /// its plugins' fan-out), all families together; beyond it, once the
    /// burst is spent, its requests get 429 until the debt is paid.
    #[arg(long, env = "SLUICE_TENANT_BYTES_PER_SEC", default_value_t = 32 << 20)]
    pub tenant_bytes_per_sec: u64,
    /// Bytes a tenant may store at once before its byte rate applies.
    #[arg(long, env = "SLUICE_TENANT_BYTES_BURST", default_value_t = 128 << 20)]
    pub tenant_bytes_burst: u64,
    /// Plugin time a tenant's plugins may use per second, all together, in
    /// milliseconds (1000: one core's worth); beyond it, once the burst of
    /// twice that is spent, its requests get 429 until the debt is paid.
    #[arg(long, env = "SLUICE_TENANT_PLUGIN_MS_PER_SEC", default_value_t = 1000)]
    pub tenant_plugin_ms_per_sec: u64,
    /// Most events one ingest request may store after its plugins ran
    /// (fan-out included); beyond it the request is refused whole with 413.
    #[arg(long, env = "SLUICE_MAX_STORED_EVENTS", default_value_t = 20_000)]
    pub max_stored_events: usize,
    /// Most bytes of the distinct plugin components one tenant may have
    /// uploaded (every version is kept); beyond it an upload gets 422.
    #[arg(long, env = "SLUICE_TENANT_PLUGIN_BYTES", default_value_t = 1 << 30)]
    pub tenant_plugin_bytes: u64,
    /// Program started for query and compile workers (`sluice query-worker`,
    /// `sluice compile-worker`); default: this executable.
    #[arg(long, env = "SLUICE_WORKER_PROGRAM")]
    pub worker_program: Option<PathBuf>,
    /// Largest answer of one query in any format, in bytes (JSON and CSV
    /// are cut and marked truncated; a larger Parquet result is refused).
    #[arg(long, env = "SLUICE_QUERY_MAX_BYTES", default_value_t = 64 << 20)]
    pub query_max_bytes: usize,
    /// DuckDB `memory_limit` of a query worker; the worker's address space is
    /// also capped by the OS at twice this plus 1 GiB.
    #[arg(long, env = "SLUICE_QUERY_MEMORY_LIMIT", default_value = "1GB")]
    pub query_memory_limit: String,
    /// Most analyst queries running at once, all tenants; beyond it 429.
    #[arg(long, env = "SLUICE_QUERY_CONCURRENCY", default_value_t = 4)]
    pub query_concurrency: usize,
    /// Most analyst queries running at once for one tenant; beyond it 429.
    #[arg(long, env = "SLUICE_QUERY_TENANT_CONCURRENCY", default_value_t = 2)]
    pub query_tenant_concurrency: usize,
    /// How often snapshots of spaces queried in the last hour are brought
    /// up to date in the background, in seconds (0: only at query time).
    #[arg(long, env = "SLUICE_QUERY_REFRESH_SECS", default_value_t = 5)]
    pub query_refresh_secs: u64,
    /// A client must send a request's headers within this, in seconds.
    #[arg(long, env = "SLUICE_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,
    /// A client must send a request's whole body within this, in seconds.
    #[arg(long, env = "SLUICE_HTTP_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub http_body_timeout_secs: u64,
    /// Most open client connections; beyond it new ones get 503.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Most open connections from one client address; beyond it its new
    /// ones get 503, so one client cannot fill the cap for everyone (behind
    /// a load balancer that hides client addresses, raise it to the cap).
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 256)]
    pub max_connections_per_client: usize,
}

impl Settings {
    /// The defaults, with another data directory and port (for tests and
    /// embedding).
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Settings {
        Settings {
            listen,
            data_dir,
            admin_token: None,
            max_body_bytes: 10 << 20,
            max_body_bytes_in_flight: 512 << 20,
            max_batch_events: 10_000,
            max_plugin_bytes: 16 << 20,
            compile_timeout_secs: 20,
            compile_concurrency: 2,
            plugin_stack_bytes: 512 << 10,
            max_plugin_instances: 512,
            write_queue_depth: 512,
            plugin_workers: 0,
            plugin_tenant_workers: 0,
            duckdb_memory_limit: "4GB".into(),
            checkpoint_threshold: "512MB".into(),
            idle_checkpoint_bytes: 0,
            store_threads: 1,
            query_timeout_secs: 10,
            query_max_rows: 10_000,
            retention_interval_secs: 300,
            fuel_metering: true,
            tenant_events_per_sec: 50_000,
            tenant_events_burst: 100_000,
            tenant_bytes_per_sec: 32 << 20,
            tenant_bytes_burst: 128 << 20,
            tenant_plugin_ms_per_sec: 1000,
            max_stored_events: 20_000,
            tenant_plugin_bytes: 1 << 30,
            worker_program: None,
            query_max_bytes: 64 << 20,
            query_memory_limit: "1GB".into(),
            query_concurrency: 4,
            query_tenant_concurrency: 2,
            query_refresh_secs: 5,
            http_header_timeout_secs: 10,
            http_body_timeout_secs: 30,
            max_connections: 1024,
            max_connections_per_client: 256,
        }
    }

    /// The program that runs query and compile workers.
    ///
    /// # Errors
    ///
    /// When no program is set and this executable cannot be located.
    pub fn worker_program(&self) -> std::io::Result<PathBuf> {
        match &self.worker_program {
            Some(path) => Ok(path.clone()),
            None => std::env::current_exe(),
        }
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("sluice.duckdb")
    }

    pub fn plugin_dir(&self) -> PathBuf {
        self.data_dir.join("plugins")
    }

    /// The key that signs listing cursors, kept in the data directory.
    pub fn key_path(&self) -> PathBuf {
        self.data_dir.join("cursor.key")
    }
}
