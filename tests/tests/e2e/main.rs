//! End-to-end tests: the real service over HTTP, real wasmtime running the
//! plugins built from `plugins/`, a real DuckDB file.

mod analytics;
mod auditlogs;
mod blame;
mod cli;
mod compile_isolation;
mod escapes;
mod hostile;
mod http_limits;
mod iam;
mod ingest;
mod lifecycle;
mod limits;
mod logs;
mod openapi;
mod plugins;
mod query_isolation;
mod retries;
mod session_audit;
mod tenancy;
mod test_mode_boundary;
mod tokens_mode;
