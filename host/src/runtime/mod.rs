//! The sandbox: compiles plugin components, instantiates them under limits and
//! calls them. Nothing here knows about tenants' chains or HTTP.
//!
//! - `bindings`: the one place that generates host bindings from `wit/`.
//! - `engine`: the wasmtime engine (Cranelift, pooling allocator, epoch ticker)
//!   and upload validation.
//! - `limits`: per-call limits and their defaults.
//! - `host`: per-store state and the host side of the imports.
//! - `plugin`: a compiled plugin and its reusable instances.

pub mod bindings;
mod engine;
mod host;
mod limits;
mod plugin;

pub use engine::{store_artifacts, Runtime, RuntimeConfig, UploadError, SUPPORTED_CONTRACTS};
pub use limits::PluginLimits;
pub use plugin::{CallReport, CompiledPlugin, PluginFault, PluginInstances};
