//! The command-line client: `sluice plugin ...`, `sluice query`, `sluice
//! token ...`, `sluice dead-letters replay`, talking to a running server
//! (URL and token from flags or `SLUICE_URL` / `SLUICE_TOKEN`).

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::{json, Value};

/// Where the server is and who is calling.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Base URL of the Sluice server.
    #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// API token.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Upload a component (installs the plugin, or adds a version).
    Push {
        name: String,
        /// The `.wasm` component.
        file: PathBuf,
        /// Settings to apply with the upload, as JSON (config, limits, ...).
        #[arg(long)]
        manifest: Option<String>,
    },
    /// The plugins in chain order, with their state.
    List,
    /// The uploaded versions of a plugin.
    Versions { name: String },
    /// Make an earlier version current (default: the previous one).
    Rollback {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Turn a plugin on (also clears an automatic disable).
    Enable { name: String },
    /// Turn a plugin off.
    Disable { name: String },
    /// Dry-run sample events (a JSON array, or `@file`) through one plugin,
    /// or through the whole chain with `--chain`.
    Test {
        name: Option<String>,
        #[arg(long)]
        events: String,
        #[arg(long)]
        chain: bool,
    },
    /// What a plugin logged, newest first.
    Logs {
        name: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated scopes, e.g. `events:write,events:read`.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// `live` or `test`; default: the mode of the token you call with
        /// (a test-mode token creates only test-mode tokens).
        #[arg(long)]
        mode: Option<String>,
    },
    /// The tenant's tokens (never their secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

/// Output of `sluice query`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

struct Api {
    client: Client,
    remote: Remote,
}

impl Api {
    fn new(remote: Remote) -> anyhow::Result<Api> {
        if remote.token.is_none() {
            bail!("no token: pass --token or set SLUICE_TOKEN");
        }
        let client = Client::builder().timeout(Duration::from_secs(300)).build()?;
        Ok(Api { client, remote })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let url = format!("{}{path}", self.remote.url.trim_end_matches('/'));
        self.client.request(method, url).bearer_auth(self.remote.token.as_deref().unwrap_or_default())
    }

    /// Send and return the JSON body, or fail with the server's words.
    fn send(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().context("cannot reach the Sluice server")?;
        let status = response.status();
        let text = response.text()?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let detail = match &body["detail"] {
                Value::Array(items) => items
                    .iter()
                    .map(|d| format!("{}: {}", d["loc"], d["msg"].as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join("\n"),
                Value::String(s) => s.clone(),
                _ => body.to_string(),
            };
            bail!("{status}: {detail}");
        }
        Ok(body)
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::GET, path))
    }

    fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::POST, path).json(body))
    }

    fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::PATCH, path).json(body))
    }
}

fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.iter().copied());
    for row in rows {
        t.add_row(row);
    }
    t.to_string()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// JSON given inline or as `@path`.
fn json_arg(arg: &str) -> anyhow::Result<Value> {
    let raw = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?,
        None => arg.to_string(),
    };
    serde_json::from_str(&raw).context("not valid JSON")
}

fn plugin_rows(items: &Value) -> Vec<Vec<String>> {
    items
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                text(&p["name"]),
                text(&p["version"]),
                text(&p["state"]),
                text(&p["position"]),
                text(&p["failure_policy"]),
                p["families"].as_array().map_or(String::new(), |f| f.iter().map(text).collect::<Vec<_>>().join(",")),
                text(&p["disabled_reason"]),
            ]
        })
        .collect()
}

const PLUGIN_HEADER: [&str; 7] = ["NAME", "VERSION", "STATE", "POSITION", "POLICY", "FAMILIES", "DISABLED BECAUSE"];

/// A reader that advances a progress bar.
struct Progress<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// Run `sluice plugin ...`.
///
/// # Errors
///
/// Connection failures and the server's refusals, worded by the server.
pub fn plugin(remote: Remote, command: PluginCommand) -> anyhow::Result<String> {
    let api = Api::new(remote)?;
    Ok(match command {
        PluginCommand::Push { name, file, manifest } => {
            let f = std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
            let len = f.metadata()?.len();
            let bar = ProgressBar::new(len).with_style(
                ProgressStyle::with_template("uploading {bytes}/{total_bytes} {wide_bar} {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let part =
                reqwest::blocking::multipart::Part::reader_with_length(Progress { inner: f, bar: bar.clone() }, len)
                    .mime_str("application/wasm")?;
            let mut form = reqwest::blocking::multipart::Form::new().part("component", part);
            if let Some(m) = manifest {
                form = form.text("manifest", json_arg(&m)?.to_string());
            }
            let body =
                api.send(api.request(reqwest::Method::POST, &format!("/v1/plugins?name={name}")).multipart(form));
            bar.finish_and_clear();
            let body = body?;
            format!(
                "{} version {} ({}) is {}",
                text(&body["name"]),
                text(&body["version"]),
                &text(&body["sha256"])[..12.min(text(&body["sha256"]).len())],
                text(&body["state"])
            )
        }
        PluginCommand::List => table(&PLUGIN_HEADER, plugin_rows(&api.get("/v1/plugins")?["items"])),
        PluginCommand::Versions { name } => {
            let body = api.get(&format!("/v1/plugins/{name}/versions"))?;
            let rows = body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| vec![text(&v["version"]), text(&v["sha256"]), text(&v["size"]), text(&v["uploaded_at"])]);
            table(&["VERSION", "SHA256", "BYTES", "UPLOADED"], rows)
        }
        PluginCommand::Rollback { name, version } => {
            let body = api.post(&format!("/v1/plugins/{name}/rollback"), &json!({ "version": version }))?;
            format!("{name} is at version {}", text(&body["version"]))
        }
        PluginCommand::Enable { name } => {
            let body = api.patch(&format!("/v1/plugins/{name}"), &json!({"enabled": true}))?;
            table(&PLUGIN_HEADER, plugin_rows(&json!([body])))
        }
        PluginCommand::Disable { name } => {
            let body = api.patch(&format!("/v1/plugins/{name}"), &json!({"enabled": false}))?;
            table(&PLUGIN_HEADER, plugin_rows(&json!([body])))
        }
        PluginCommand::Test { name, events, chain } => {
            let events = json_arg(&events)?;
            let path = match (&name, chain) {
                (_, true) => "/v1/pipeline/test".to_string(),
                (Some(name), false) => format!("/v1/plugins/{name}/test"),
                (None, false) => bail!("name a plugin, or pass --chain"),
            };
            let body = api.post(&path, &json!({ "events": events }))?;
            let outcomes = body["results"].as_array().into_iter().flatten().map(|r| {
                let detail = match r["status"].as_str() {
                    Some("stored") => text(&r["ids"]),
                    Some("rejected") => format!("{}: {}", text(&r["error"]["code"]), text(&r["error"]["message"])),
                    _ => text(&r["reason"]),
                };
                vec![text(&r["index"]), text(&r["status"]), detail]
            });
            let runs = body["runs"].as_array().into_iter().flatten().map(|r| {
                vec![
                    text(&r["plugin"]),
                    text(&r["version"]),
                    text(&r["events_in"]),
                    text(&r["events_out"]),
                    text(&r["dropped"]),
                    text(&r["rejected"]),
                    text(&r["fault"]),
                    text(&r["elapsed_us"]),
                    text(&r["fuel"]),
                ]
            });
            format!(
                "{}\n{}\n{}",
                table(&["EVENT", "OUTCOME", "DETAIL"], outcomes),
                table(&["PLUGIN", "VERSION", "IN", "OUT", "DROPPED", "REJECTED", "FAULT", "MICROS", "FUEL"], runs),
                serde_json::to_string_pretty(&body["events"])?
            )
        }
        PluginCommand::Logs { name, limit } => {
            let body = api.get(&format!("/v1/plugins/{name}/logs?limit={limit}"))?;
            let rows = body["items"].as_array().into_iter().flatten().map(|l| {
                vec![
                    text(&l["at"]),
                    text(&l["plugin_version"]),
                    text(&l["level"]),
                    text(&l["message"]),
                    text(&l["fields"]),
                ]
            });
            table(&["AT", "VERSION", "LEVEL", "MESSAGE", "FIELDS"], rows)
        }
    })
}

/// Run `sluice query "SQL"`.
///
/// # Errors
///
/// Connection failures and the server's refusals.
pub fn query(remote: Remote, sql: String, params: Option<String>, format: Format) -> anyhow::Result<String> {
    let api = Api::new(remote)?;
    let params = params.map(|p| json_arg(&p)).transpose()?.unwrap_or(json!([]));
    let body = json!({ "sql": sql, "params": params });
    match format {
        Format::Csv => {
            let response =
                api.request(reqwest::Method::POST, "/v1/query").header("accept", "text/csv").json(&body).send()?;
            if !response.status().is_success() {
                bail!("{}: {}", response.status(), response.text()?);
            }
            Ok(response.text()?)
        }
        Format::Json => Ok(serde_json::to_string_pretty(&api.post("/v1/query", &body)?)?),
        Format::Table => {
            let result = api.post("/v1/query", &body)?;
            let header: Vec<String> =
                result["columns"].as_array().into_iter().flatten().map(|c| text(&c["name"])).collect();
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            let rows = result["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r.as_array().into_iter().flatten().map(text).collect());
            let mut out = table(&header, rows);
            out.push_str(&format!("\n{} rows", text(&result["row_count"])));
            if result["truncated"] == true {
                out.push_str(" (truncated)");
            }
            Ok(out)
        }
    }
}

/// Run `sluice token ...`.
///
/// # Errors
///
/// Connection failures and the server's refusals.
pub fn token(remote: Remote, command: TokenCommand) -> anyhow::Result<String> {
    let api = Api::new(remote)?;
    Ok(match command {
        TokenCommand::Create { name, scopes, tenant, mode } => {
            let body =
                api.post("/v1/tokens", &json!({"name": name, "scopes": scopes, "tenant": tenant, "mode": mode}))?;
            format!("id:    {}\ntoken: {}\n(the token is shown only now)", text(&body["id"]), text(&body["token"]))
        }
        TokenCommand::List => {
            let body = api.get("/v1/tokens")?;
            let rows = body["items"].as_array().into_iter().flatten().map(|t| {
                vec![
                    text(&t["id"]),
                    text(&t["name"]),
                    t["scopes"].as_array().map_or(String::new(), |s| s.iter().map(text).collect::<Vec<_>>().join(",")),
                    text(&t["mode"]),
                    text(&t["created_at"]),
                    text(&t["revoked_at"]),
                ]
            });
            table(&["ID", "NAME", "SCOPES", "MODE", "CREATED", "REVOKED"], rows)
        }
        TokenCommand::Revoke { id } => {
            api.send(api.request(reqwest::Method::DELETE, &format!("/v1/tokens/{id}")))?;
            format!("token {id} revoked")
        }
    })
}

/// Run `sluice dead-letters replay`: replays every dead letter, 1,000 per
/// call, with a progress spinner.
///
/// # Errors
///
/// Connection failures and the server's refusals.
pub fn replay_dead_letters(remote: Remote) -> anyhow::Result<String> {
    let api = Api::new(remote)?;
    let bar = ProgressBar::new_spinner().with_message("replaying dead letters");
    bar.enable_steady_tick(Duration::from_millis(100));
    let (mut total, mut stored, mut failed) = (0u64, 0u64, 0u64);
    loop {
        let body = api.post("/v1/dead-letters/replay", &json!({"all": true}))?;
        let n = body["replayed"].as_u64().unwrap_or(0);
        for r in body["results"].as_array().into_iter().flatten() {
            match r["status"].as_str() {
                Some("stored") => stored += 1,
                Some("dead_lettered") => failed += 1,
                _ => {}
            }
        }
        total += n;
        bar.set_message(format!("replayed {total}"));
        // Letters that fail again go back to the dead-letter table: stop
        // when a round only produced failures, so this ends.
        if n < 1_000 || failed >= n {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(format!("replayed {total} dead letters: {stored} stored, {failed} dead-lettered again"))
}
