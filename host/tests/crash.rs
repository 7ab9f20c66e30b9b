//! Crash safety with the real binary: clients write while the process is
//! killed with SIGKILL at an arbitrary moment, repeatedly; after each restart
//! on the same data directory every acknowledged event is there exactly once.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TOKEN: &str = "crash-test-token";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .env("SLUICE_DATA_DIR", dir)
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_ADMIN_TOKEN", TOKEN)
        .env("SLUICE_MAX_PLUGIN_INSTANCES", "16")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sluice starts")
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if client.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sluice did not become ready");
}

/// Post batches with unique ids until the server goes away; record what was
/// acknowledged.
async fn writer(client: reqwest::Client, base: String, prefix: String, acked: Arc<Mutex<Vec<String>>>) {
    for n in 0.. {
        let ids: Vec<String> = (0..50).map(|i| format!("{prefix}-{n}-{i}")).collect();
        let batch: Vec<Value> = ids.iter().map(|id| json!({"id": id, "event_type": "crash.test"})).collect();
        let sent = client.post(format!("{base}/v1/events")).bearer_auth(TOKEN).json(&batch).send().await;
        match sent {
            Ok(r) if r.status().is_success() => acked.lock().unwrap().extend(ids),
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_events_survive_repeated_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..4u64 {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = start(dir.path(), port);
        wait_ready(&client, &base).await;
        let writers: Vec<_> = (0..4)
            .map(|c| tokio::spawn(writer(client.clone(), base.clone(), format!("r{round}-c{c}"), acked.clone())))
            .collect();
        // Kill at a different moment each round, mid-stream.
        tokio::time::sleep(Duration::from_millis(300 + 170 * round)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for w in writers {
            w.await.unwrap();
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 1000, "the writers got going: {} acknowledged", acked.len());

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(dir.path(), port);
    wait_ready(&client, &base).await;
    let stored = client.get(format!("{base}/v1/export?format=ndjson")).bearer_auth(TOKEN).send().await.unwrap();
    let text = stored.text().await.unwrap();
    let ids: Vec<String> =
        text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_string()).collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event stored twice");
    let missing: Vec<&String> = acked.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // And the restarted service takes writes again.
    let r = client
        .post(format!("{base}/v1/events"))
        .bearer_auth(TOKEN)
        .json(&json!({"event_type": "after.crash"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    child.kill().unwrap();
    child.wait().unwrap();
}
