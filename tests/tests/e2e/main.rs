//! End-to-end tests: the real service over HTTP, real wasmtime running the
//! plugins built from `plugins/`, a real DuckDB file.

mod analytics;
mod auditlogs;
mod cli;
mod hostile;
mod ingest;
mod lifecycle;
mod plugins;
mod session_audit;
