//! The sandbox: compiles plugin components, instantiates them under limits and
//! calls them. Nothing here knows about tenants' chains or HTTP.
//!
//! - `bindings`: the one place that generates host bindings from `wit/`.
//! - `engine`: the wasmtime engine (Cranelift, pooling allocator, epoch ticker)
//!   and upload validation.
//! - `codegen`: what the server's engine and the compile worker share: the
//!   code-shaping settings, the epoch tick, upload errors.
//! - `compile_worker`: `sluice compile-worker`, the process an upload is
//!   compiled in, and the server's side of it (killed at the timeout).
//! - `limits`: per-call limits and their defaults.
//! - `host`: per-store state and the host side of the imports.
//! - `plugin`: a compiled plugin and its reusable instances.

pub mod bindings;
mod codegen;
pub mod compile_worker;
mod engine;
mod host;
mod limits;
mod plugin;

pub use codegen::UploadError;
pub use engine::{cache_compiled, Artifact, Runtime, RuntimeConfig, SUPPORTED_CONTRACTS};
pub use limits::PluginLimits;
pub use plugin::{Blame, CallReport, CompiledPlugin, PluginFault, PluginInstances};
