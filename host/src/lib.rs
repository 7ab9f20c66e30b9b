//! Sluice runs customers' sandboxed WebAssembly plugins on a live stream of
//! events and stores what comes out in DuckDB.
//!
//! A tour, in the order data flows:
//! - [`http`]: the accept loop; header and body deadlines, the connection
//!   cap, graceful shutdown.
//! - [`api`]: the HTTP edge; routes, the one `ApiError` and its dialects
//!   (`api/dialect.rs`), the five families side by side (`api/families/`),
//!   the store's rows as response bodies (`api/views.rs`), extractors.
//! - [`auth`]: tenants and tokens (stored as hashes); who is calling.
//! - [`event`]: the canonical event every API family is normalized into.
//! - [`ingest`]: the one path every family's requests take: idempotency
//!   keys and event ids, the chain under the family's policy, the family's
//!   answer, the one commit per request, the metrics; dead-letter replays.
//! - [`pipeline`]: each tenant's plugin chain; running events through it
//!   under failure policies; installing and configuring plugins; each
//!   tenant's share of the plugin workers, ingest rate, plugin time and
//!   quotas.
//! - [`runtime`]: the wasmtime sandbox; compiling, limits, calls, faults.
//! - [`store`]: the storage seam, the roles a backend plays (event log,
//!   control state, analytics, key claims, quota use, components) as traits
//!   with typed rows; `store/embedded/` is the DuckDB-file backend: two
//!   group-committing writer lanes (main and bulk), listing, control-plane
//!   tables; analysts' SQL in query workers over per-space snapshots.
//! - [`sandbox`]: what the kernel enforces on the query and compile workers
//!   (rlimits, priority, Landlock), and the lower-priority threads that run
//!   plugins and analysts' heavy reads.
//! - [`metrics`]: Prometheus counters and histograms, rendered at `/metrics`.
//! - [`cli`]: the command-line client of a running server.
//! - [`whole`]: integers of request bodies read as pydantic reads them (`5.0` is 5).
//! - [`files`]: durable (write-then-rename) file writes.
//! - [`config`] and [`startup`]: settings and the `Application` that ties the
//!   rest together.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod event;
pub mod files;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod runtime;
pub mod sandbox;
pub mod shipped;
pub mod startup;
pub mod store;
pub mod whole;

pub use config::Settings;
pub use startup::Application;
