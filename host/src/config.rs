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
    /// Most events accepted in one ingest request.
    #[arg(long, env = "SLUICE_MAX_BATCH_EVENTS", default_value_t = 10_000)]
    pub max_batch_events: usize,
    /// Largest plugin component accepted at upload, in bytes.
    #[arg(long, env = "SLUICE_MAX_PLUGIN_BYTES", default_value_t = 16 << 20)]
    pub max_plugin_bytes: usize,
    /// Longest compilation of an uploaded plugin, in seconds.
    #[arg(long, env = "SLUICE_COMPILE_TIMEOUT_SECS", default_value_t = 20)]
    pub compile_timeout_secs: u64,
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
    /// Memory DuckDB may use for storage and queries (its `memory_limit`).
    #[arg(long, env = "SLUICE_DUCKDB_MEMORY_LIMIT", default_value = "4GB")]
    pub duckdb_memory_limit: String,
    /// WAL size that triggers a checkpoint (DuckDB's `checkpoint_threshold`;
    /// see BENCHMARKS.md for why it is large).
    #[arg(long, env = "SLUICE_CHECKPOINT_THRESHOLD", default_value = "512MB")]
    pub checkpoint_threshold: String,
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
            max_batch_events: 10_000,
            max_plugin_bytes: 16 << 20,
            compile_timeout_secs: 20,
            plugin_stack_bytes: 512 << 10,
            max_plugin_instances: 512,
            write_queue_depth: 512,
            plugin_workers: 0,
            duckdb_memory_limit: "4GB".into(),
            checkpoint_threshold: "512MB".into(),
            query_timeout_secs: 10,
            query_max_rows: 10_000,
            retention_interval_secs: 300,
            fuel_metering: true,
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
