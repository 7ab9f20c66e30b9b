//! The wasmtime engine shared by every tenant, and the checks a plugin must
//! pass at upload.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{Plugin, PluginPre};
use super::codegen::{wasmtime_config, CodegenSettings, UploadError, EPOCH_TICK};
use super::compile_worker::{self, CompileJob};
use super::host::HostState;
use super::limits::PluginLimits;
use super::plugin::CompiledPlugin;

/// Contract versions (`sluice:plugin/handler@VERSION`) this host accepts.
pub const SUPPORTED_CONTRACTS: [&str; 1] = ["0.1.0"];

/// Address space a compile worker may use. Generous: Cranelift on a 16 MiB
/// component needs a fraction of it; a component built to exhaust the
/// compiler stops here instead of at the machine's memory.
const COMPILE_ADDRESS_SPACE: u64 = 4 << 30;

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

impl RuntimeConfig {
    fn codegen(&self) -> CodegenSettings {
        CodegenSettings {
            fuel_metering: self.fuel_metering,
            epoch_interruption: self.epoch_interruption,
            max_stack_bytes: self.max_stack_bytes,
        }
    }
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

/// A precompiled component, made by this binary's compiler (in this process
/// or a compile worker) from an upload that passed the format checks. The
/// only bytes the runtime deserializes at upload, so no caller can hand it
/// arbitrary ones.
pub struct Artifact(Vec<u8>);

impl Artifact {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
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
        let mut wasm = wasmtime_config(&config.codegen());
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
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

    /// The checks that need no compiler: size and format.
    fn check_format(&self, bytes: &[u8]) -> Result<(), UploadError> {
        if bytes.len() > self.config.max_module_bytes {
            return Err(UploadError::TooLarge { size: bytes.len(), limit: self.config.max_module_bytes });
        }
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(UploadError::NotWasm);
        }
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(UploadError::CoreModule);
        }
        Ok(())
    }

    /// Compile an uploaded component in a compile worker (`program
    /// compile-worker`), killed at the compile timeout. Customers' uploads
    /// come this way: nothing of the compilation runs in the server, so it
    /// can neither outlive its timeout nor take the server's memory. Finish
    /// with [`Runtime::prepare_compiled`].
    ///
    /// # Errors
    ///
    /// An [`UploadError`] naming the problem: size, format, compile time or
    /// memory, or the compiler's message; [`UploadError::Host`] when the
    /// worker cannot be run.
    pub async fn compile_in_worker(&self, program: &Path, bytes: &[u8]) -> Result<Artifact, UploadError> {
        self.check_format(bytes)?;
        // Enough CPU seconds for every core for the whole timeout (CPU time
        // adds up over threads), so the wall-clock kill always comes first.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let job = CompileJob {
            codegen: self.config.codegen(),
            address_space: COMPILE_ADDRESS_SPACE,
            cpu_seconds: (self.config.compile_timeout.as_secs() + 1) * cores + 1,
        };
        let artifact = compile_worker::compile(program, &job, bytes, self.config.compile_timeout).await?;
        Ok(Artifact(artifact))
    }

    /// Deserialize the artifact of `bytes` and check its imports and exports:
    /// the plugin ready to install. Work in proportion to the artifact, no
    /// compilation; run it on a blocking thread.
    ///
    /// # Errors
    ///
    /// [`UploadError::Invalid`] when wasmtime refuses the artifact (e.g. a
    /// worker built with another configuration), and the import and export
    /// checks' errors.
    pub fn prepare_compiled(&self, bytes: &[u8], artifact: &Artifact) -> Result<CompiledPlugin, UploadError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        // SAFETY: the artifact was produced by this binary's compiler with
        // this engine's code settings (`Artifact` has no other constructor),
        // and wasmtime checks that its settings match this engine's.
        let component = unsafe { Component::deserialize(&self.engine, artifact.as_bytes()) }
            .map_err(|e| UploadError::Invalid(format!("{e:#}")))?;
        self.prepare(sha256, component)
    }

    /// Validate and compile a component in this process. Returns the
    /// compiled plugin and its precompiled form, to be kept on disk. Only for
    /// components the host trusts to compile in time (the plugins it ships,
    /// and reloads of accepted uploads): a compilation past the timeout is
    /// answered but keeps running in the background, since Cranelift cannot
    /// be cancelled. Uploads go through [`Runtime::compile_in_worker`].
    ///
    /// # Errors
    ///
    /// An [`UploadError`] naming the problem: size, format, compile time,
    /// imports or exports.
    pub fn compile(&self, bytes: &[u8]) -> Result<(CompiledPlugin, Vec<u8>), UploadError> {
        self.check_format(bytes)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (engine, owned) = (self.engine.clone(), bytes.to_vec());
        std::thread::Builder::new()
            .name("sluice-compile".into())
            .spawn(move || {
                let _ = tx.send(engine.precompile_component(&owned));
            })
            .map_err(|e| UploadError::Host(format!("cannot start a compile thread: {e}")))?;
        let artifact = match rx.recv_timeout(self.config.compile_timeout) {
            Ok(Ok(artifact)) => Artifact(artifact),
            Ok(Err(e)) => return Err(UploadError::Invalid(format!("{e:#}"))),
            Err(_) => return Err(UploadError::CompileTimeout(self.config.compile_timeout)),
        };
        let plugin = self.prepare_compiled(bytes, &artifact)?;
        Ok((plugin, artifact.0))
    }

    /// Load a plugin from this host's cache of compiled artifacts
    /// (`cache`), falling back to compiling its component (`source`: its
    /// bytes from the store, which must have the digest `sha256`) when the
    /// artifact is missing or was made by another engine version; the
    /// compiled artifact is cached then.
    ///
    /// # Errors
    ///
    /// When neither the artifact nor the component can be loaded, or the
    /// component is not the one named.
    pub fn load(
        &self,
        cache: &Path,
        sha256: &str,
        source: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<CompiledPlugin> {
        let artifact = artifact_path(cache, sha256);
        // SAFETY: the cache is written only by `cache_compiled` and `load`,
        // from this binary's compiler's output.
        if let Ok(component) = unsafe { Component::deserialize_file(&self.engine, &artifact) } {
            return Ok(self.prepare(sha256.to_string(), component)?);
        }
        let source = source()?;
        let found = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&source));
        anyhow::ensure!(found == sha256, "the stored component {sha256} has the digest {found}");
        let (plugin, compiled) = self.compile(&source)?;
        cache_compiled(cache, sha256, &compiled)?;
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

/// Where the compiled artifact of a plugin is cached.
fn artifact_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.cwasm"))
}

/// Keep a plugin's compiled artifact in this host's cache, so a restart
/// loads instead of recompiling.
///
/// # Errors
///
/// I/O errors.
pub fn cache_compiled(cache: &Path, sha256: &str, artifact: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(cache)?;
    crate::files::write_atomic(&artifact_path(cache, sha256), artifact)
}
