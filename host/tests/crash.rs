//! Crash safety with the real binary: clients write while the process is
//! killed with SIGKILL at an arbitrary moment, repeatedly, some rounds with a
//! tiny checkpoint threshold so kills land during checkpoints too. Clients
//! retry every unacknowledged batch after the restart with the same
//! `Idempotency-Key` (and event ids), as a real client would. In the end
//! every batch is stored exactly once.
//!
//! `SLUICE_CRASH_ROUNDS` sets the number of kills (default 4; the
//! reliability suite runs 20).

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TOKEN: &str = "crash-test-token";
const WRITERS: usize = 4;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(dir: &std::path::Path, port: u16, checkpoint_threshold: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .env("SLUICE_DATA_DIR", dir)
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_ADMIN_TOKEN", TOKEN)
        .env("SLUICE_MAX_PLUGIN_INSTANCES", "16")
        .env("SLUICE_CHECKPOINT_THRESHOLD", checkpoint_threshold)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sluice starts")
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if client.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sluice did not become ready");
}

/// One batch: its Idempotency-Key and event ids.
#[derive(Clone)]
struct Batch {
    key: String,
    ids: Vec<String>,
}

impl Batch {
    fn new(writer: usize, n: usize) -> Batch {
        Batch { key: format!("w{writer}-b{n}"), ids: (0..50).map(|i| format!("w{writer}-b{n}-e{i}")).collect() }
    }

    fn body(&self) -> Value {
        Value::Array(self.ids.iter().map(|id| json!({"id": id, "event_type": "crash.test"})).collect())
    }
}

/// What a writer has done so far: batches acknowledged, and the one in
/// flight when the server went away (to retry).
#[derive(Default)]
struct Progress {
    acked: Vec<Batch>,
    pending: Option<Batch>,
    next: usize,
}

/// Send the pending batch (a retry) and then new ones until the server goes
/// away (or, with `stop_after`, until that many are acknowledged).
async fn writer(
    client: reqwest::Client,
    base: String,
    id: usize,
    progress: Arc<Mutex<Progress>>,
    stop_after: Option<usize>,
) {
    let mut done = 0;
    loop {
        let batch = {
            let mut p = progress.lock().unwrap();
            if p.pending.is_none() {
                p.next += 1;
                p.pending = Some(Batch::new(id, p.next));
            }
            p.pending.clone().unwrap()
        };
        let sent = client
            .post(format!("{base}/v1/events"))
            .bearer_auth(TOKEN)
            .header("idempotency-key", &batch.key)
            .json(&batch.body())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                let mut p = progress.lock().unwrap();
                p.acked.push(batch);
                p.pending = None;
                done += 1;
                if stop_after.is_some_and(|n| done >= n) {
                    return;
                }
            }
            Ok(r) if r.status() == 503 => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(r) => panic!("unexpected answer {}", r.status()),
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_events_survive_repeated_kill_9() {
    let rounds: u64 = std::env::var("SLUICE_CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let progress: Vec<_> = (0..WRITERS).map(|_| Arc::new(Mutex::new(Progress::default()))).collect();
    let mut retried = 0;
    for round in 0..rounds {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        // Odd rounds checkpoint after nearly every commit.
        let threshold = if round % 2 == 1 { "64KB" } else { "512MB" };
        let mut child = start(dir.path(), port, threshold);
        wait_ready(&client, &base).await;
        retried += progress.iter().filter(|p| p.lock().unwrap().pending.is_some()).count();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(writer(client.clone(), base.clone(), w, progress[w].clone(), None)))
            .collect();
        // Kill at a different moment each round, mid-stream.
        tokio::time::sleep(Duration::from_millis(300 + 170 * (round % 5))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for w in writers {
            w.await.unwrap();
        }
    }
    // Restart; every writer retries what was in flight, then sends one more.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(dir.path(), port, "512MB");
    wait_ready(&client, &base).await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(client.clone(), base.clone(), w, progress[w].clone(), Some(2))))
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let batches: Vec<Batch> = progress.iter().flat_map(|p| p.lock().unwrap().acked.clone()).collect();
    assert!(batches.len() > 20, "the writers got going: {} batches acknowledged", batches.len());
    assert!(progress.iter().all(|p| p.lock().unwrap().pending.is_none()));

    let stored = client.get(format!("{base}/v1/export?format=ndjson")).bearer_auth(TOKEN).send().await.unwrap();
    let text = stored.text().await.unwrap();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        let id = serde_json::from_str::<Value>(line).unwrap()["id"].as_str().unwrap().to_string();
        *counts.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
    assert!(twice.is_empty(), "stored more than once: {:?}", &twice[..twice.len().min(5)]);
    let expected: HashSet<&String> = batches.iter().flat_map(|b| &b.ids).collect();
    let missing: Vec<_> = expected.iter().filter(|id| !counts.contains_key(**id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(counts.len(), expected.len(), "nothing stored that was not sent");
    println!(
        "FIGURE crash: {rounds} kills, {} batches ({} events) acknowledged, {retried} in-flight batches retried, 0 lost, 0 duplicated",
        batches.len(),
        expected.len()
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
