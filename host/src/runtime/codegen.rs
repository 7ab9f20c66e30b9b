//! How components are compiled, shared by the server's engine and the
//! compile worker (`compile_worker.rs`) so an artifact made by one loads in
//! the other: the code-shaping engine settings, the epoch tick, and why an
//! upload can be refused. It imports nothing else of the runtime, so both
//! sides depend on it and not on each other.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmtime::{Config, OptLevel};

/// How often the epoch advances; deadlines are rounded up to it.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Why an upload was refused. Every message names the exact problem.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("plugin is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("not a WebAssembly binary (no \\0asm header)")]
    NotWasm,
    #[error("this is a core WebAssembly module, not a component: build it for wasm32-wasip2 with the sluice-sdk, or wrap it with `wasm-tools component new`")]
    CoreModule,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error("compilation took longer than {0:?}")]
    CompileTimeout(Duration),
    /// The compile worker was stopped at its limits (the value, in bytes, is
    /// its address-space cap).
    #[error("compilation needed more than the {} MiB of memory it may use", .0 >> 20)]
    CompileMemory(u64),
    #[error("import `{0}` is not granted: plugins may import only sluice:plugin/log and sandboxed WASI (io, clocks, random, cli, filesystem without directories); no network, no HTTP")]
    ForbiddenImport(String),
    #[error("component does not export a supported contract: expected one of {expected}, found exports [{found}]")]
    MissingExport { expected: String, found: String },
    #[error("component cannot be linked: {0}")]
    Link(String),
    /// The host could not compile (e.g. the compile worker could not be
    /// started): not the component's fault, and not to be shown as such.
    #[error("{0}")]
    Host(String),
}

/// The part of the engine's configuration that shapes compiled code. The
/// server and its compile workers build their engines from these alone (see
/// [`wasmtime_config`]), so an artifact made by a worker loads in the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CodegenSettings {
    pub fuel_metering: bool,
    pub epoch_interruption: bool,
    pub max_stack_bytes: usize,
}

/// The wasmtime configuration every engine of this binary compiles with.
/// The instance allocator is left to the caller: wasmtime documents that it
/// does not affect compiled code, and a compile worker must not reserve the
/// pooling allocator's address space. Wasmtime still checks compatibility
/// when the server deserializes a worker's artifact.
pub(crate) fn wasmtime_config(codegen: &CodegenSettings) -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .cranelift_opt_level(OptLevel::Speed)
        .epoch_interruption(codegen.epoch_interruption)
        .consume_fuel(codegen.fuel_metering)
        .max_wasm_stack(codegen.max_stack_bytes);
    wasm
}
