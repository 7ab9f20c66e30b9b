//! `sluice compile-worker`: one uploaded component compiled in a process of
//! its own, so a compilation that outlives its timeout can be stopped.
//!
//! Cranelift cannot be interrupted, and a component built to be slow to
//! compile (one function with tens of thousands of live values) keeps a core
//! busy for as long as it likes: on a thread of the server it would outlive
//! its request. In a child process the server kills it at the timeout (see
//! [`compile`]), and the kernel bounds what it takes meanwhile: address space
//! (RLIMIT_AS), CPU seconds (RLIMIT_CPU, for when the server dies before it
//! can kill), no core dump, a lower priority than ingest, and no file or
//! network access at all (Landlock, see `sandbox`).
//!
//! The exchange: the server writes one JSON line, a [`CompileJob`], then the
//! component's bytes, and closes stdin. The worker answers with the
//! precompiled artifact on stdout and status 0, or with the compiler's
//! message on stderr and status [`INVALID`] when the component is invalid.
//! A worker killed by a signal ran out of what it may use, which within these
//! limits means memory (a failed allocation aborts).

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::codegen::{wasmtime_config, CodegenSettings, UploadError};

/// Exit status of a worker whose component the compiler refused. Not 1:
/// that is what `main` returning an error exits with (a host fault).
const INVALID: i32 = 3;

/// How many times its component's size an artifact may be (plus 16 MiB):
/// compiled code with fuel and epoch checks is a few times the wasm it
/// comes from, data segments are copied as they are.
const ARTIFACT_GROWTH: u64 = 32;

/// What the worker needs besides the component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CompileJob {
    /// The settings that shape compiled code, the same as the server's.
    pub codegen: CodegenSettings,
    /// Address-space cap of the worker, in bytes.
    pub address_space: u64,
    /// CPU seconds the worker may use, all threads together: a backstop
    /// beyond the wall-clock timeout the server enforces.
    pub cpu_seconds: u64,
}

/// Compile the component on stdin and write its artifact on stdout.
///
/// # Errors
///
/// When the job cannot be read, the limits cannot be set or the artifact
/// cannot be written (exit status 1).
pub fn main() -> anyhow::Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut line = Vec::new();
    (&mut stdin).take(64 << 10).read_until(b'\n', &mut line).context("cannot read the job")?;
    let job: CompileJob = serde_json::from_slice(&line).context("cannot read the job")?;
    crate::sandbox::limit_resources(job.address_space, Some(job.cpu_seconds))
        .context("cannot set the worker's limits")?;
    // Cranelift compiles on a thread pool as wide as the CPUs it may use:
    // the upper half, like analysts' work, so a tenant's compile does not
    // keep every core busy (the pool's threads inherit this).
    crate::sandbox::keep_off_first_cores();
    // Compiling needs no file and no network: from here on there are none
    // (stdin and stdout are open already).
    crate::sandbox::confine_files(None).map_err(anyhow::Error::msg).context("cannot confine the worker")?;
    let mut component = Vec::new();
    stdin.read_to_end(&mut component).context("cannot read the component")?;
    let engine = wasmtime::Engine::new(&wasmtime_config(&job.codegen))?;
    match engine.precompile_component(&component) {
        Ok(artifact) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&artifact)?;
            out.flush()?;
            Ok(())
        }
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(INVALID);
        }
    }
}

/// Start a worker (`program compile-worker`) for `component`, wait for its
/// artifact until `timeout`, and kill it beyond. The answer is the artifact
/// exactly as the worker wrote it; the caller validates it by deserializing.
///
/// # Errors
///
/// [`UploadError::CompileTimeout`] at the timeout (the worker is killed and
/// reaped first), [`UploadError::Invalid`] with the compiler's message,
/// [`UploadError::CompileMemory`] when the worker was stopped at its limits,
/// [`UploadError::Host`] when it could not be run.
pub(crate) async fn compile(
    program: &Path,
    job: &CompileJob,
    component: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, UploadError> {
    let host = |what: &str, e: &dyn std::fmt::Display| UploadError::Host(format!("{what}: {e}"));
    let mut child = crate::sandbox::spawn_worker(program, "compile-worker", Path::new("/"))
        .map_err(|e| host("cannot start the compile worker", &e))?;
    let mut header = serde_json::to_vec(job).map_err(|e| host("cannot encode the job", &e))?;
    header.push(b'\n');
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(UploadError::Host("the compile worker has no pipes".into()));
    };
    // Artifacts are a few times their component; reading is capped so a
    // worker gone wrong cannot grow the server.
    let cap = (component.len() as u64).saturating_mul(ARTIFACT_GROWTH).saturating_add(16 << 20);
    let feed = async move {
        stdin.write_all(&header).await?;
        stdin.write_all(component).await
        // `stdin` is dropped here: end of input for the worker.
    };
    let read_out = async move {
        let mut out = Vec::new();
        (&mut stdout).take(cap + 1).read_to_end(&mut out).await.map(|_| out)
        // `stdout` is dropped here, so a worker writing past the cap fails
        // its write instead of blocking until the timeout.
    };
    let read_err = async {
        let mut err = Vec::new();
        (&mut stderr).take(64 << 10).read_to_end(&mut err).await.map(|_| err)
    };
    let exchange = async {
        let (fed, out, err) = tokio::join!(feed, read_out, read_err);
        (fed, out, err, child.wait().await)
    };
    let finished = tokio::time::timeout(timeout, exchange).await;
    let Ok((fed, out, err, status)) = finished else {
        // Killed and reaped before answering: no compilation outlives the
        // request that asked for it.
        let _ = child.kill().await;
        return Err(UploadError::CompileTimeout(timeout));
    };
    let status = status.map_err(|e| host("the compile worker failed", &e))?;
    let out = out.map_err(|e| host("cannot read the compile worker", &e))?;
    let err = err.unwrap_or_default();
    let message = String::from_utf8_lossy(&err).trim().to_string();
    if out.len() as u64 > cap {
        return Err(UploadError::Invalid(format!("the compiled component is larger than {cap} bytes")));
    }
    match status.code() {
        // A write that failed while the worker still succeeded means the
        // worker compiled something other than what was sent.
        Some(0) => fed.map(|_| out).map_err(|e| host("cannot write to the compile worker", &e)),
        Some(INVALID) => Err(UploadError::Invalid(message)),
        Some(code) => Err(UploadError::Host(format!("the compile worker exited with status {code}: {message}"))),
        None => {
            tracing::warn!(status = %status, stderr = %message, "compile worker stopped by a signal");
            Err(UploadError::CompileMemory(job.address_space))
        }
    }
}
