//! The slow half of the reliability suite (RELIABILITY.md): timing and
//! resource figures under abuse, measured over many requests. Every test is
//! ignored by the default `cargo test`; `scripts/reliability` runs them (one
//! at a time, so they do not disturb each other's figures) and prints the
//! `FIGURE` lines that RELIABILITY.md records.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::{spawn_app, spawn_app_with, TestApp, ADMIN_TOKEN};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Peak and current resident memory of this process (the server runs in
/// it), in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn timed_post(app: &TestApp, token: &str, body: &Value) -> (u16, Duration) {
    let started = Instant::now();
    let (status, _) = app.post_events(token, body).await;
    (status, started.elapsed())
}

/// Item 1: a runaway plugin is stopped at its deadline (+50 ms), a second
/// tenant's p99 stays within 20% of its baseline while it runs (measured
/// alternating, quiet and loud phases), and after N failures in a row the
/// plugin is disabled and shown as such.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "slow: scripts/reliability"]
async fn runaway_plugin_is_cut_at_its_deadline_and_isolated() {
    let app = Arc::new(spawn_app().await);
    let bystander = app.create_tenant("bystander").await;
    let deadline_ms = 100;
    app.install(
        ADMIN_TOKEN,
        "hostile-loop",
        "hostile-loop",
        json!({"limits": {"deadline_ms": deadline_ms}, "max_consecutive_failures": 1_000_000}),
    )
    .await;
    let calm = json!({"event_type": "calm"});
    let (mut quiet, mut loud, mut cut) = (Vec::new(), Vec::new(), Vec::new());
    for _phase in 0..5 {
        for _ in 0..200 {
            let (status, t) = timed_post(&app, &bystander, &calm).await;
            assert_eq!(status, 200);
            quiet.push(t);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let looper = {
            let (app, stop) = (app.clone(), stop.clone());
            tokio::spawn(async move {
                let mut cuts = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let (status, t) = timed_post(&app, ADMIN_TOKEN, &json!({"event_type": "spin"})).await;
                    assert_eq!(status, 502);
                    cuts.push(t);
                }
                cuts
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..200 {
            let (status, t) = timed_post(&app, &bystander, &calm).await;
            assert_eq!(status, 200);
            loud.push(t);
        }
        stop.store(true, Ordering::Relaxed);
        cut.extend(looper.await.unwrap());
    }
    let (q50, q99) = (percentile(&mut quiet, 0.5), percentile(&mut quiet, 0.99));
    let (l50, l99) = (percentile(&mut loud, 0.5), percentile(&mut loud, 0.99));
    let (c50, c99, cmax) = (percentile(&mut cut, 0.5), percentile(&mut cut, 0.99), percentile(&mut cut, 1.0));
    println!(
        "FIGURE runaway: deadline {deadline_ms} ms; looping request answered p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} requests",
        ms(c50),
        ms(c99),
        ms(cmax),
        cut.len()
    );
    println!(
        "FIGURE bystander: quiet p50 {:.2} ms p99 {:.2} ms; during the loop p50 {:.2} ms p99 {:.2} ms; p99 ratio {:.2}",
        ms(q50),
        ms(q99),
        ms(l50),
        ms(l99),
        ms(l99) / ms(q99)
    );
    assert!(ms(c99) <= f64::from(deadline_ms) + 50.0, "the loop was answered after {c99:?} (p99)");
    assert!(ms(l99) <= ms(q99) * 1.2, "bystander p99 {l99:?} vs baseline {q99:?}");

    // After N failures in a row the plugin is disabled and says why.
    let (status, _) = app.patch(ADMIN_TOKEN, "/v1/plugins/hostile-loop", &json!({"max_consecutive_failures": 3})).await;
    assert_eq!(status, 200);
    for _ in 0..3 {
        assert_eq!(app.post_events(ADMIN_TOKEN, &json!({"event_type": "spin"})).await.0, 502);
    }
    let shown = app.plugin(ADMIN_TOKEN, "hostile-loop").await;
    assert_eq!(shown["state"], "auto-disabled", "{shown}");
    assert!(shown["disabled_reason"].as_str().unwrap_or("").contains("deadline"), "{shown}");
    // It is not called any more, but still fails closed (policy reject).
    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "spin"})).await;
    assert_eq!(status, 502, "{body}");
    let message = body["results"][0]["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("auto-disabled"), "an auto-disabled reject plugin refuses: {body}");
}

/// Item 2: fifty concurrent memory and recursion bombs each end in a typed
/// fault, the host does not panic, and its resident memory stays bounded.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "slow: scripts/reliability"]
async fn fifty_concurrent_bombs_keep_memory_bounded() {
    let app = Arc::new(spawn_app_with(|s| s.max_plugin_instances = 128).await);
    let other = app.create_tenant("recursive").await;
    app.install(ADMIN_TOKEN, "hostile-memory", "hostile-memory", json!({"max_consecutive_failures": 1_000_000})).await;
    app.install(&other, "hostile-recursion", "hostile-recursion", json!({"max_consecutive_failures": 1_000_000})).await;
    let (peak_before, rss_before) = rss_mib();
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for _wave in 0..4 {
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let app = app.clone();
                let token = if i % 2 == 0 { ADMIN_TOKEN.to_string() } else { other.clone() };
                tokio::spawn(async move { app.post_events(&token, &json!({"event_type": "boom"})).await })
            })
            .collect();
        for call in calls {
            let (status, body) = call.await.unwrap();
            assert_eq!(status, 502, "{body}");
            let message = body["results"][0]["error"]["message"].as_str().unwrap_or("").to_string();
            let reason = ["memory limit", "stack overflow", "out of bounds memory access", "deadline", "fuel"]
                .into_iter()
                .find(|r| message.contains(r))
                .unwrap_or_else(|| panic!("an untyped fault: {message}"));
            *reasons.entry(reason.to_string()).or_default() += 1;
        }
    }
    let (peak_after, rss_after) = rss_mib();
    let (status, _) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "boom"})).await;
    assert_eq!(status, 502, "the host still serves");
    println!(
        "FIGURE bombs: 200 calls in waves of 50; faults {reasons:?}; peak RSS {peak_before:.0} -> {peak_after:.0} MiB, \
         RSS {rss_before:.0} -> {rss_after:.0} MiB"
    );
    // 4 plugin workers x 64 MiB default memory limit, plus slack.
    assert!(peak_after - peak_before < 512.0, "peak RSS grew by {:.0} MiB", peak_after - peak_before);
}

/// Item 8: ten times the sustainable rate for a bounded time: only 200,
/// 429 or 503 (with Retry-After), bounded memory, and full recovery.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "slow: scripts/reliability"]
async fn overload_is_shed_with_retry_after_and_recovers() {
    let app = Arc::new(spawn_app_with(|s| s.write_queue_depth = 64).await);
    let batch = Value::Array((0..100).map(|i| json!({"event_type": "load", "task_id": i})).collect());
    // The sustainable rate: sequential batches for two seconds.
    let started = Instant::now();
    let mut sustainable = 0;
    while started.elapsed() < Duration::from_secs(2) {
        assert_eq!(app.post_events(ADMIN_TOKEN, &batch).await.0, 200);
        sustainable += 1;
    }
    let rate = f64::from(sustainable) / started.elapsed().as_secs_f64();
    // Ten times that, offered for ten seconds by 200 concurrent clients.
    let (peak_before, _) = rss_mib();
    let stop = Arc::new(AtomicBool::new(false));
    let offered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let interval = Duration::from_secs_f64(200.0 / (rate * 10.0));
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let (app, stop, batch, offered) = (app.clone(), stop.clone(), batch.clone(), offered.clone());
            tokio::spawn(async move {
                let mut seen = std::collections::BTreeMap::<u16, u64>::new();
                let mut ticker = tokio::time::interval(interval);
                while !stop.load(Ordering::Relaxed) {
                    ticker.tick().await;
                    offered.fetch_add(1, Ordering::Relaxed);
                    let r = app.client.post(app.url("/v1/events")).bearer_auth(ADMIN_TOKEN).json(&batch).send().await;
                    let r = r.expect("the server answers");
                    let status = r.status().as_u16();
                    if status == 503 || status == 429 {
                        assert!(r.headers().contains_key("retry-after"), "{status} without Retry-After");
                    }
                    *seen.entry(status).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for c in clients {
        for (status, n) in c.await.unwrap() {
            *statuses.entry(status).or_default() += n;
        }
    }
    let (peak_after, _) = rss_mib();
    // Recovery: a normal request is served promptly right after.
    let (status, t) = timed_post(&app, ADMIN_TOKEN, &batch).await;
    println!(
        "FIGURE overload: sustainable {rate:.0} batches/s of 100; offered 10x for 10 s ({} requests); answers {statuses:?}; \
         peak RSS {peak_before:.0} -> {peak_after:.0} MiB; first request after: {status} in {:.1} ms",
        offered.load(Ordering::Relaxed),
        ms(t)
    );
    assert!(statuses.keys().all(|s| [200, 429, 503].contains(s)), "{statuses:?}");
    assert_eq!(status, 200);
    assert!(t < Duration::from_millis(500), "recovery took {t:?}");
    assert!(peak_after - peak_before < 1024.0, "peak RSS grew by {:.0} MiB", peak_after - peak_before);
    // Every acknowledged event is stored.
    let (_, count) = app.post(ADMIN_TOKEN, "/v1/query", &json!({"sql": "SELECT count(*) FROM events"})).await;
    let acked = (statuses.get(&200).copied().unwrap_or(0) + sustainable as u64 + 1) * 100;
    assert_eq!(count["rows"][0][0], json!(acked));
}
