//! The wasmtime engine shared by every tenant, and the checks a plugin must
//! pass at upload.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use super::bindings::{Plugin, PluginPre};
use super::host::HostState;
use super::limits::PluginLimits;
use super::plugin::CompiledPlugin;

/// Contract versions (`sluice:plugin/handler@VERSION`) this host accepts.
pub const SUPPORTED_CONTRACTS: [&str; 1] = ["0.1.0"];

/// How often the epoch advances; deadlines are rounded up to it.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Interface prefixes a plugin may import. WASI is granted only in a form
/// that reaches nothing: no preopened directories, empty environment, frozen
/// clocks, no stdio (see `host.rs`). Sockets and HTTP are never granted.
const GRANTED_IMPORTS: [&str; 6] =
    ["sluice:plugin/", "wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:cli/", "wasi:filesystem/"];

/// Engine-wide settings, from the service configuration.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Largest component accepted at upload. Default 16 MiB.
    pub max_module_bytes: usize,
    /// Longest compilation accepted at upload. Default 20 s.
    pub compile_timeout: Duration,
    /// Wasm stack per call (engine-wide). Default 512 KiB.
    pub max_stack_bytes: usize,
    /// Meter fuel on every call, so budgets can be set and reported. Default on.
    pub fuel_metering: bool,
    /// Interrupt calls at their deadline (epoch interruption). Default on;
    /// off only to measure its cost (BENCHMARKS.md): without it only fuel
    /// stops a runaway plugin.
    pub epoch_interruption: bool,
    /// Most plugin instances alive at once, across all tenants. Default 512.
    /// Each reserves a 4 GiB memory slot of address space (so bounds checks
    /// can be elided); none is committed until used.
    pub max_instances: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_module_bytes: 16 << 20,
            compile_timeout: Duration::from_secs(20),
            max_stack_bytes: 512 << 10,
            fuel_metering: true,
            epoch_interruption: true,
            max_instances: 512,
        }
    }
}

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
    #[error("import `{0}` is not granted: plugins may import only sluice:plugin/log and sandboxed WASI (io, clocks, random, cli, filesystem without directories); no network, no HTTP")]
    ForbiddenImport(String),
    #[error("component does not export a supported contract: expected one of {expected}, found exports [{found}]")]
    MissingExport { expected: String, found: String },
    #[error("component cannot be linked: {0}")]
    Link(String),
}

/// The shared engine, its linker and the epoch ticker that enforces deadlines.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    config: RuntimeConfig,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Build the engine and start its epoch ticker.
    ///
    /// # Errors
    ///
    /// When wasmtime rejects the configuration (e.g. the pooling allocator
    /// cannot reserve its address space).
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 4)
            .total_memories(config.max_instances)
            .total_tables(config.max_instances * 2)
            .max_memories_per_component(2)
            .max_tables_per_component(4)
            .max_core_instances_per_component(16)
            .max_memory_size(PluginLimits::MAX_MEMORY_BYTES as usize);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .cranelift_opt_level(OptLevel::Speed)
            .epoch_interruption(config.epoch_interruption)
            .consume_fuel(config.fuel_metering)
            .max_wasm_stack(config.max_stack_bytes)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&wasm)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Plugin::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(&mut linker, |s| s)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (stop, ticking) = (ticker_stop.clone(), engine.clone());
        std::thread::Builder::new().name("sluice-epoch".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                ticking.increment_epoch();
            }
        })?;
        Ok(Runtime { engine, linker, config, ticker_stop })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Validate and compile an uploaded component. Returns the compiled plugin
    /// and its precompiled form, to be kept on disk.
    ///
    /// # Errors
    ///
    /// An [`UploadError`] naming the problem: size, format, compile time,
    /// imports or exports.
    pub fn compile(&self, bytes: &[u8]) -> Result<(CompiledPlugin, Vec<u8>), UploadError> {
        if bytes.len() > self.config.max_module_bytes {
            return Err(UploadError::TooLarge { size: bytes.len(), limit: self.config.max_module_bytes });
        }
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(UploadError::NotWasm);
        }
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(UploadError::CoreModule);
        }
        // Compile on a thread of its own so a pathological module cannot hold
        // the caller past the budget. Cranelift cannot be cancelled, so a
        // timed-out compilation finishes in the background and is discarded.
        let (tx, rx) = std::sync::mpsc::channel();
        let (engine, owned) = (self.engine.clone(), bytes.to_vec());
        std::thread::Builder::new()
            .name("sluice-compile".into())
            .spawn(move || {
                let _ = tx.send(engine.precompile_component(&owned));
            })
            .map_err(|e| UploadError::Invalid(e.to_string()))?;
        let artifact = match rx.recv_timeout(self.config.compile_timeout) {
            Ok(Ok(artifact)) => artifact,
            Ok(Err(e)) => return Err(UploadError::Invalid(format!("{e:#}"))),
            Err(_) => return Err(UploadError::CompileTimeout(self.config.compile_timeout)),
        };
        let sha256 = hex::encode(Sha256::digest(bytes));
        // SAFETY: the artifact was produced just now by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &artifact) }
            .map_err(|e| UploadError::Invalid(format!("{e:#}")))?;
        let plugin = self.prepare(sha256, component)?;
        Ok((plugin, artifact))
    }

    /// Load a plugin precompiled by [`Runtime::compile`] from disk, falling
    /// back to compiling its source (`.wasm` beside it) when the artifact is
    /// missing or was made by another engine version.
    ///
    /// # Errors
    ///
    /// When neither the artifact nor the source can be loaded.
    pub fn load(&self, dir: &Path, sha256: &str) -> anyhow::Result<CompiledPlugin> {
        let artifact = artifact_path(dir, sha256);
        // SAFETY: artifacts in the data directory are written only by
        // `store_artifacts`, from this engine's own output.
        if let Ok(component) = unsafe { Component::deserialize_file(&self.engine, &artifact) } {
            return Ok(self.prepare(sha256.to_string(), component)?);
        }
        let source = std::fs::read(source_path(dir, sha256))?;
        let (plugin, compiled) = self.compile(&source)?;
        write_atomic(&artifact, &compiled)?;
        Ok(plugin)
    }

    fn prepare(&self, sha256: String, component: Component) -> Result<CompiledPlugin, UploadError> {
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.engine) {
            if !GRANTED_IMPORTS.iter().any(|prefix| name.starts_with(prefix)) {
                return Err(UploadError::ForbiddenImport(name.to_string()));
            }
        }
        let exports: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let supported = SUPPORTED_CONTRACTS.map(|v| format!("sluice:plugin/handler@{v}"));
        if !exports.iter().any(|name| supported.contains(name)) {
            return Err(UploadError::MissingExport { expected: supported.join(", "), found: exports.join(", ") });
        }
        let pre = self.linker.instantiate_pre(&component).map_err(|e| UploadError::Link(format!("{e:#}")))?;
        let pre = PluginPre::new(pre).map_err(|e| UploadError::Link(format!("{e:#}")))?;
        Ok(CompiledPlugin::new(sha256, pre, self.engine.clone(), self.config.fuel_metering))
    }
}

/// Where the precompiled artifact of a plugin lives.
pub(crate) fn artifact_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.cwasm"))
}

/// Where the uploaded component of a plugin lives.
pub(crate) fn source_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.wasm"))
}

/// Keep an uploaded component and its precompiled artifact on disk, so a
/// restart loads instead of recompiling.
///
/// # Errors
///
/// I/O errors writing either file.
pub fn store_artifacts(dir: &Path, sha256: &str, source: &[u8], artifact: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_atomic(&source_path(dir, sha256), source)?;
    write_atomic(&artifact_path(dir, sha256), artifact)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
}
