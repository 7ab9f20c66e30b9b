//! End-to-end tests: the real service over HTTP, real wasmtime running the
//! plugins built from `plugins/`, a real DuckDB file.

mod analytics;
mod auditlogs;
mod cli;
mod escapes;
mod hostile;
mod iam;
mod ingest;
mod lifecycle;
mod logs;
mod openapi;
mod plugins;
mod retries;
mod session_audit;
mod tenancy;
