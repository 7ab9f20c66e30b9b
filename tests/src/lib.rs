//! Helpers for the end-to-end tests: build the plugins for wasm32-wasip2,
//! start the real service on port 0 with a fresh data directory, and talk to
//! it over HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};

/// The admin token of the default tenant in every test app.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The plugin every new tenant has: `customer-prefix` for session audit.
pub const SHIPPED: &str = "customer-prefix";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_path_buf()
}

/// Where plugin builds go: a target directory of their own (so the nested
/// cargo never waits on the lock of the outer build), under the outer one.
fn plugin_target_dir() -> PathBuf {
    let outer = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let outer = if outer.is_absolute() { outer } else { workspace_root().join(outer) };
    outer.join("plugins")
}

/// Every crate under `plugins/`.
fn plugin_crates() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(workspace_root().join("plugins"))
        .expect("plugins/ exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn ensure_wasm_target() {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    let has = installed.map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-wasip2"));
    if matches!(has, Ok(false)) {
        // RUSTUP_AUTO_INSTALL=0 machines do not install the toolchain file's
        // targets on their own.
        let status = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
        assert!(status.is_ok_and(|s| s.success()), "rustup target add wasm32-wasip2 failed");
    }
}

/// Build every plugin once per test process and return the directory of the
/// `.wasm` components.
fn build_plugins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        ensure_wasm_target();
        let target_dir = plugin_target_dir();
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(workspace_root())
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .args(["--config", "profile.release.debug=false", "--config", "profile.release.strip=true"])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env_remove("RUSTFLAGS");
        for name in plugin_crates() {
            cmd.args(["-p", &name]);
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building the plugins failed");
        target_dir.join("wasm32-wasip2").join("release")
    })
}

/// The component bytes of the plugin crate `name` (e.g. `customer-prefix`).
pub fn plugin_wasm(name: &str) -> Vec<u8> {
    let path = build_plugins().join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A running service with a fresh data directory.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    /// The server's store, to look beneath the API (e.g. DuckDB settings).
    pub store: sluice::store::EventStore,
    _dir: Option<tempfile::TempDir>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The `sluice` binary next to the test binaries (target/release/sluice;
/// cargo builds the workspace's binaries before running tests).
pub fn sluice_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(|deps| deps.parent()).expect("target directory").join("sluice")
}

/// Start the service on port 0 with a new temporary data directory.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Start the service with settings changed by `adjust`.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut sluice::Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_path_buf();
    let mut app = start(&path, adjust).await;
    app._dir = Some(dir);
    app
}

/// Start the service on port 0 over an existing data directory (to test
/// restarts).
pub async fn spawn_app_in(data_dir: &Path) -> TestApp {
    start(data_dir, |_| {}).await
}

async fn start(data_dir: &Path, adjust: impl FnOnce(&mut sluice::Settings)) -> TestApp {
    let mut settings = sluice::Settings::new(data_dir.to_path_buf(), "127.0.0.1:0".parse().expect("addr"));
    settings.admin_token = Some(ADMIN_TOKEN.to_string());
    // Many apps share one test process: keep each engine's pool small.
    settings.max_plugin_instances = 32;
    settings.duckdb_memory_limit = "1GB".into();
    // The server runs in this process; its query and compile workers are
    // the `sluice` binary cargo built beside the test binaries.
    settings.worker_program = Some(sluice_bin());
    adjust(&mut settings);
    let app = sluice::Application::build(settings).await.expect("app builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let store = app.store();
    let server = tokio::spawn(async move {
        let _ = app.run_until_stopped().await;
    });
    // The server closes a keep-alive connection idle for its header timeout
    // (10 s); a pooled connection must be dropped before that, or a request
    // racing the close fails. Real clients: the README says the same.
    let client =
        reqwest::Client::builder().pool_idle_timeout(std::time::Duration::from_secs(5)).build().expect("client");
    TestApp { base, client, data_dir: data_dir.to_path_buf(), store, _dir: None, server }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST JSON with a token; returns status and body.
    pub async fn post(&self, token: &str, path: &str, body: &Value) -> (u16, Value) {
        let r = self.client.post(self.url(path)).bearer_auth(token).json(body).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST the same JSON `n` times at once; the statuses, in order.
    pub async fn post_at_once(&self, token: &str, path: &str, body: &Value, n: usize) -> Vec<u16> {
        let requests: Vec<_> = (0..n)
            .map(|_| {
                let request = self.client.post(self.url(path)).bearer_auth(token).json(body);
                tokio::spawn(async move { request.send().await.expect("request").status().as_u16() })
            })
            .collect();
        let mut statuses = Vec::with_capacity(n);
        for r in requests {
            statuses.push(r.await.expect("request task"));
        }
        statuses
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).bearer_auth(token).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn patch(&self, token: &str, path: &str, body: &Value) -> (u16, Value) {
        let r = self.client.patch(self.url(path)).bearer_auth(token).json(body).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, token: &str, path: &str, body: &Value) -> (u16, Value) {
        let r = self.client.put(self.url(path)).bearer_auth(token).json(body).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST JSON with an `Idempotency-Key`; returns status, whether the
    /// response was a replay, and body.
    pub async fn post_keyed(&self, token: &str, path: &str, key: &str, body: &Value) -> (u16, bool, Value) {
        let request = self.client.post(self.url(path)).bearer_auth(token).header("idempotency-key", key).json(body);
        let r = request.send().await.expect("request");
        let replayed = r.headers().contains_key("idempotent-replayed");
        (r.status().as_u16(), replayed, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_events(&self, token: &str, body: &Value) -> (u16, Value) {
        self.post(token, "/v1/events", body).await
    }

    /// POST a body exactly as given (not re-serialized), with its content
    /// type; returns status and body.
    pub async fn post_text(&self, token: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        let request = self.client.post(self.url(path)).bearer_auth(token).header("content-type", content_type);
        let r = request.body(body.to_string()).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Upload raw bytes as plugin `name`.
    pub async fn upload_bytes(&self, token: &str, name: &str, bytes: Vec<u8>) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(&format!("/v1/plugins?name={name}")))
            .bearer_auth(token)
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Upload the plugin crate `krate` as plugin `name` with `settings` (null
    /// for none) as the upload's manifest; panics unless it succeeds.
    pub async fn install(&self, token: &str, name: &str, krate: &str, settings: Value) -> Value {
        let (status, body) = self.upload_with_manifest(token, name, plugin_wasm(krate), &settings).await;
        assert!(status == 201 || status == 200, "upload of {krate} failed: {status} {body}");
        body
    }

    /// Upload as `multipart/form-data`: the component and, unless null, a
    /// manifest of settings.
    pub async fn upload_with_manifest(
        &self,
        token: &str,
        name: &str,
        bytes: Vec<u8>,
        manifest: &Value,
    ) -> (u16, Value) {
        let mut form = reqwest::multipart::Form::new()
            .part("component", reqwest::multipart::Part::bytes(bytes).mime_str("application/wasm").expect("mime"));
        if !manifest.is_null() {
            form = form.text("manifest", manifest.to_string());
        }
        let r = self
            .client
            .post(self.url(&format!("/v1/plugins?name={name}")))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Names of the token's tenant's plugins, in chain order.
    pub async fn plugin_names(&self, token: &str) -> Vec<String> {
        let (status, body) = self.get(token, "/v1/plugins").await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().expect("items").iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
    }

    /// One plugin's view, from the listing.
    pub async fn plugin(&self, token: &str, name: &str) -> Value {
        let (status, body) = self.get(token, &format!("/v1/plugins/{name}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Create a tenant; returns its admin token.
    pub async fn create_tenant(&self, id: &str) -> String {
        let (status, body) = self.post(ADMIN_TOKEN, "/v1/tenants", &json!({ "id": id })).await;
        assert_eq!(status, 201, "{body}");
        body["admin_token"].as_str().expect("token").to_string()
    }

    /// Every stored event of the token's tenant (newest first), following
    /// cursors.
    pub async fn all_events(&self, token: &str, query: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/audit/events?limit=200{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = self.get(token, &path).await;
            assert_eq!(status, 200, "{body}");
            items.extend(body["items"].as_array().expect("items").iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return items,
            }
        }
    }
}
