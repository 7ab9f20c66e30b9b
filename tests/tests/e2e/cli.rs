//! The `sluice` command-line client against a running server.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;
use sluice_e2e::{plugin_wasm, spawn_app, TestApp, ADMIN_TOKEN};

/// The `sluice` binary next to this test's binary (cargo builds the
/// package's binaries before running tests).
fn sluice_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|deps| deps.parent()).unwrap().join("sluice")
}

/// Run the CLI against `app`; returns (success, stdout, stderr).
async fn sluice(app: &TestApp, token: &str, args: &[&str]) -> (bool, String, String) {
    let (url, token) = (app.base.clone(), token.to_string());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(sluice_bin())
            .args(&args)
            .env("SLUICE_URL", url)
            .env("SLUICE_TOKEN", token)
            .output()
            .expect("the sluice binary runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_manages_plugins_queries_and_tokens() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("prefix.wasm");
    std::fs::write(&v1, plugin_wasm("customer-prefix")).unwrap();
    let v2 = dir.path().join("escape.wasm");
    std::fs::write(&v2, plugin_wasm("hostile-escape")).unwrap();

    let (ok, out, err) = sluice(&app, ADMIN_TOKEN, &["plugin", "push", "prefix", v1.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert!(out.contains("prefix version 1") && out.contains("enabled"), "{out}");
    let (ok, out, _) = sluice(
        &app,
        ADMIN_TOKEN,
        &["plugin", "push", "prefix", v2.to_str().unwrap(), "--manifest", r#"{"failure_policy": "skip"}"#],
    )
    .await;
    assert!(ok && out.contains("prefix version 2"), "{out}");
    let (ok, out, _) = sluice(&app, ADMIN_TOKEN, &["plugin", "versions", "prefix"]).await;
    assert!(
        ok && out.contains("VERSION") && out.lines().filter(|l| l.contains("│ 1") || l.contains("│ 2")).count() >= 2,
        "{out}"
    );
    let (ok, out, _) = sluice(&app, ADMIN_TOKEN, &["plugin", "rollback", "prefix"]).await;
    assert!(ok && out.contains("prefix is at version 1"), "{out}");
    let (ok, out, _) = sluice(&app, ADMIN_TOKEN, &["plugin", "list"]).await;
    assert!(ok && out.contains("prefix") && out.contains("skip"), "{out}");
    let (ok, out, _) = sluice(&app, ADMIN_TOKEN, &["plugin", "disable", "prefix"]).await;
    assert!(ok && out.contains("disabled"), "{out}");
    let (ok, out, _) = sluice(&app, ADMIN_TOKEN, &["plugin", "enable", "prefix"]).await;
    assert!(ok && out.contains("enabled"), "{out}");
    let (ok, out, err) =
        sluice(&app, ADMIN_TOKEN, &["plugin", "test", "prefix", "--events", r#"[{"event_type": "cli.test"}]"#]).await;
    assert!(ok, "{err}");
    assert!(out.contains("stored") && out.contains("customer.cli.test") && out.contains("FUEL"), "{out}");
    let (ok, out, _) = sluice(&app, ADMIN_TOKEN, &["plugin", "logs", "prefix"]).await;
    assert!(ok && out.contains("LEVEL"), "{out}");

    app.post_events(ADMIN_TOKEN, &json!([{"event_type": "a"}, {"event_type": "b"}])).await;
    let (ok, out, _) = sluice(&app, ADMIN_TOKEN, &["query", "SELECT event_type FROM events ORDER BY event_type"]).await;
    assert!(ok && out.contains("customer.a") && out.contains("2 rows"), "{out}");
    let (ok, out, _) =
        sluice(&app, ADMIN_TOKEN, &["query", "--format", "csv", "SELECT count(*) AS n FROM events"]).await;
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "n\n2");
    let (ok, _, err) = sluice(&app, ADMIN_TOKEN, &["query", "SELECT * FROM read_csv('/etc/passwd')"]).await;
    assert!(!ok && err.contains("table functions are not allowed"), "{err}");

    let (ok, out, err) =
        sluice(&app, ADMIN_TOKEN, &["token", "create", "--name", "reader", "--scopes", "events:read"]).await;
    assert!(ok, "{err}");
    let secret = out.lines().find_map(|l| l.strip_prefix("token: ")).unwrap().trim().to_string();
    let id = out.lines().find_map(|l| l.strip_prefix("id:    ")).unwrap().trim().to_string();
    assert!(secret.starts_with("so_live_"), "{out}");
    let (status, _) = app.get(&secret, "/v1/audit/events").await;
    assert_eq!(status, 200);
    let (status, body) = app.post_events(&secret, &json!({"event_type": "x"})).await;
    assert_eq!(status, 403, "the reader may not write: {body}");
    let (ok, out, _) = sluice(&app, ADMIN_TOKEN, &["token", "list"]).await;
    assert!(ok && out.contains("reader") && out.contains(&id), "{out}");
    assert!(!out.contains(&secret), "secrets are never listed");
    let (ok, out, _) = sluice(&app, ADMIN_TOKEN, &["token", "revoke", &id]).await;
    assert!(ok && out.contains("revoked"), "{out}");
    let (status, _) = app.get(&secret, "/v1/audit/events").await;
    assert_eq!(status, 401, "a revoked token stops working at once");

    let (ok, out, _) = sluice(&app, ADMIN_TOKEN, &["dead-letters", "replay"]).await;
    assert!(ok && out.contains("replayed 0 dead letters"), "{out}");
    let (ok, _, err) = sluice(&app, "wrong-token", &["plugin", "list"]).await;
    assert!(!ok && err.contains("401"), "{err}");
}
