//! The server under test: the real `sluice` release binary, on a fresh data
//! directory and a free loopback port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

const ADMIN: &str = "so_live_bench_admin_token_0123456789";

pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Child,
    /// Whether the per-tenant limits are lifted (see `spawn`).
    unlimited: bool,
}

/// The `sluice` binary beside this one (`cargo build --release` builds it;
/// `scripts/bench` does both). Building it from here with `-p sluice` alone
/// would unify features differently and rebuild DuckDB.
fn binary() -> Result<PathBuf> {
    let here = std::env::current_exe()?;
    let bin = here.with_file_name("sluice");
    if !bin.exists() {
        bail!("{} is missing: run `cargo build --release` first (or scripts/bench)", bin.display());
    }
    Ok(bin)
}

fn spawn(bin: &Path, dir: &Path, port: u16, unlimited: bool) -> Result<Child> {
    let mut command = Command::new(bin);
    command
        .arg("serve")
        .env("SLUICE_DATA_DIR", dir)
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_ADMIN_TOKEN", ADMIN)
        .env("SLUICE_MAX_BATCH_EVENTS", "10000");
    if unlimited {
        // What one tenant can push through the server: the per-tenant rate,
        // byte rate, fan-out, plugin time and plugin worker bounds
        // (defaults 50,000 events/s, 32 MiB/s, 20,000 per request, one
        // core, half the cores) would cap the figures themselves.
        command
            .env("SLUICE_PLUGIN_TENANT_WORKERS", "1000")
            .env("SLUICE_TENANT_EVENTS_PER_SEC", "100000000")
            .env("SLUICE_TENANT_EVENTS_BURST", "100000000")
            .env("SLUICE_TENANT_BYTES_PER_SEC", "100000000000")
            .env("SLUICE_TENANT_BYTES_BURST", "100000000000")
            .env("SLUICE_MAX_STORED_EVENTS", "10000000")
            .env("SLUICE_TENANT_PLUGIN_MS_PER_SEC", "1000000");
    }
    command.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().context("start sluice")
}

async fn wait_healthy(client: &reqwest::Client, base: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if client.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("sluice did not become healthy")
}

impl Server {
    /// A server with the per-tenant limits lifted (throughput figures).
    pub async fn start(dir: &Path) -> Result<Server> {
        Self::start_with(dir, true).await
    }

    /// A server with the default per-tenant limits (fairness figures).
    pub async fn start_with_default_limits(dir: &Path) -> Result<Server> {
        Self::start_with(dir, false).await
    }

    async fn start_with(dir: &Path, unlimited: bool) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bin = binary()?;
        let child = spawn(&bin, dir, port, unlimited)?;
        let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&client, &base).await?;
        Ok(Server { base, client, bin, dir: dir.to_path_buf(), port, child, unlimited })
    }

    /// Create a tenant; returns its admin token.
    pub async fn tenant(&self, id: &str) -> Result<String> {
        let r = self
            .client
            .post(format!("{}/v1/tenants", self.base))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"id": id}))
            .send()
            .await?;
        let body: Value = r.json().await?;
        body["admin_token"].as_str().map(str::to_string).with_context(|| format!("tenant {id}: {body}"))
    }

    /// Install plugin `name` (the crate `krate` of `plugins/`) with settings.
    pub async fn install(&self, token: &str, name: &str, krate: &str, settings: Value) -> Result<()> {
        let form = reqwest::multipart::Form::new()
            .part("component", reqwest::multipart::Part::bytes(sluice_e2e::plugin_wasm(krate)))
            .text("manifest", settings.to_string());
        let r = self
            .client
            .post(format!("{}/v1/plugins?name={name}", self.base))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("install {name}: {} {}", r.status(), r.text().await?);
        }
        Ok(())
    }

    /// The server's peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// Stop gracefully (SIGTERM) and start again on the same data; returns
    /// the time from the new process's spawn to its first healthy answer.
    pub async fn restart(&mut self) -> Result<Duration> {
        self.terminate();
        let started = Instant::now();
        self.child = spawn(&self.bin, &self.dir, self.port, self.unlimited)?;
        wait_healthy(&self.client, &self.base).await?;
        Ok(started.elapsed())
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }

    pub async fn stop(mut self) {
        self.terminate();
    }
}
