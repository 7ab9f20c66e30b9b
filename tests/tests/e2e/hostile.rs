//! Hostile plugins are contained: typed reason, host healthy, other tenants
//! unaffected, and the effect matches the failure policy.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::{plugin_wasm, spawn_app, spawn_app_with, TestApp, ADMIN_TOKEN};

/// Install `krate` for the token's tenant with `settings`.
async fn hostile(app: &TestApp, token: &str, krate: &str, settings: Value) {
    app.install(token, krate, krate, settings).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_loop_is_stopped_at_its_deadline_while_other_tenants_carry_on() {
    let app = spawn_app().await;
    let other = app.create_tenant("bystander").await;
    hostile(
        &app,
        ADMIN_TOKEN,
        "hostile-loop",
        json!({"limits": {"deadline_ms": 200}, "max_consecutive_failures": 100}),
    )
    .await;

    let started = Instant::now();
    let spin = json!({"event_type": "spin"});
    let looping = app.post_events(ADMIN_TOKEN, &spin);
    let bystander = async {
        // While the loop spins, the other tenant is served promptly.
        let t = Instant::now();
        let (status, _) = app.post_events(&other, &json!({"event_type": "calm"})).await;
        (status, t.elapsed())
    };
    let ((status, body), (other_status, other_elapsed)) = tokio::join!(looping, bystander);
    let elapsed = started.elapsed();
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["results"][0]["error"]["code"], "plugin_failed");
    assert!(body["results"][0]["error"]["message"].as_str().unwrap().contains("deadline exceeded"), "{body}");
    assert!(elapsed < Duration::from_millis(1500), "returned after {elapsed:?}");
    assert_eq!(other_status, 200);
    assert!(other_elapsed < Duration::from_millis(1000), "bystander took {other_elapsed:?}");
    assert!(app.all_events(ADMIN_TOKEN, "").await.is_empty());
    assert_eq!(app.all_events(&other, "").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fuel_budget_stops_a_loop_deterministically() {
    let app = spawn_app().await;
    hostile(&app, ADMIN_TOKEN, "hostile-loop", json!({"limits": {"fuel": 1000000, "deadline_ms": 5000}})).await;
    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "spin"})).await;
    assert_eq!(status, 502);
    assert!(body["results"][0]["error"]["message"].as_str().unwrap().contains("fuel budget exhausted"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_bomb_is_dead_lettered_with_its_reason() {
    let app = spawn_app().await;
    hostile(
        &app,
        ADMIN_TOKEN,
        "hostile-memory",
        json!({"limits": {"memory_bytes": 16777216}, "failure_policy": "dead-letter"}),
    )
    .await;
    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "hog", "id": "hog-1"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "dead_lettered");
    assert!(body["results"][0]["reason"].as_str().unwrap().starts_with("memory_limit"), "{body}");
    let (status, letters) = app.get(ADMIN_TOKEN, "/v1/dead-letters").await;
    assert_eq!(status, 200);
    let letter = &letters["items"][0];
    assert_eq!(letter["id"], "hog-1");
    assert_eq!(letter["plugin"], "hostile-memory");
    assert_eq!(letter["raw"], json!({"event_type": "hog", "id": "hog-1"}), "the untransformed input");
    assert_eq!(letter["event"]["event_type"], "hog");
    assert!(app.all_events(ADMIN_TOKEN, "").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn runaway_recursion_under_skip_lets_the_event_through_untouched() {
    let app = spawn_app().await;
    hostile(&app, ADMIN_TOKEN, "hostile-recursion", json!({"failure_policy": "skip"})).await;
    app.install(ADMIN_TOKEN, "prefix", "customer-prefix", json!({"position": 100})).await;
    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "deep"})).await;
    assert_eq!(status, 200, "{body}");
    let events = app.all_events(ADMIN_TOKEN, "").await;
    assert_eq!(events[0]["event_type"], "customer.deep", "the next plugin still ran");
    let lineage: Vec<&str> =
        events[0]["lineage"].as_array().unwrap().iter().map(|s| s["plugin"].as_str().unwrap()).collect();
    assert_eq!(lineage, ["prefix"], "the skipped plugin is not in the lineage");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_plugin_is_disabled_after_repeated_failures() {
    let app = spawn_app().await;
    hostile(&app, ADMIN_TOKEN, "hostile-panic", json!({"max_consecutive_failures": 3})).await;
    for _ in 0..3 {
        let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "boom"})).await;
        assert_eq!(status, 502, "{body}");
        assert!(body["results"][0]["error"]["message"].as_str().unwrap().contains("panicked"), "{body}");
    }
    let (_, plugin) = app.get(ADMIN_TOKEN, "/v1/plugins/hostile-panic").await;
    assert_eq!(plugin["state"], "auto-disabled", "{plugin}");
    assert!(plugin["disabled_reason"].as_str().unwrap().contains("3 consecutive failures; last: panic"));
    // It no longer runs, but it fails closed (policy reject): its events
    // are refused, saying why, instead of passing unprocessed.
    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "after"})).await;
    assert_eq!(status, 502, "{body}");
    let message = body["results"][0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("auto-disabled") && message.contains("3 consecutive failures"), "{body}");
    assert_eq!(app.plugin(ADMIN_TOKEN, "hostile-panic").await["consecutive_failures"], 3, "it was not called");
    assert!(app.all_events(ADMIN_TOKEN, "").await.is_empty());
    // Re-enabling clears the reason.
    let (_, plugin) = app.patch(ADMIN_TOKEN, "/v1/plugins/hostile-panic", &json!({"enabled": true})).await;
    assert_eq!(plugin["state"], "enabled");
}

#[tokio::test(flavor = "multi_thread")]
async fn abusive_output_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let victim = app.create_tenant("victim").await;
    hostile(&app, ADMIN_TOKEN, "hostile-output", json!({"max_consecutive_failures": 100})).await;
    let cases = [
        (json!({"mode": "oversized"}), "exceeds the limit"),
        (json!({"mode": "malformed"}), "is not valid JSON"),
        (json!({"mode": "tenant", "tenant": "victim"}), "tenant was changed"),
        (json!({"mode": "fanout", "copies": 5000}), "fan-out of 5000 events exceeds the limit of 1000"),
        (json!({"mode": "twins"}), "fan-out repeats event id"),
        (json!({"mode": "count"}), "2 outcomes for 1 events"),
    ];
    for (config, expected) in cases {
        let (status, _) = app.patch(ADMIN_TOKEN, "/v1/plugins/hostile-output", &json!({"config": config})).await;
        assert_eq!(status, 200);
        let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "abuse"})).await;
        assert_eq!(status, 502, "{config}: {body}");
        let message = body["results"][0]["error"]["message"].as_str().unwrap();
        assert!(message.contains("invalid output") && message.contains(expected), "{config}: {message}");
    }
    assert!(app.all_events(ADMIN_TOKEN, "").await.is_empty());
    assert!(app.all_events(&victim, "").await.is_empty(), "nothing written into another tenant");
    let (status, _) = app.get(ADMIN_TOKEN, "/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_cannot_reach_files_environment_or_clocks() {
    let app = spawn_app().await;
    hostile(&app, ADMIN_TOKEN, "hostile-escape", Value::Null).await;
    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "peek"})).await;
    assert_eq!(status, 200, "{body}");
    let seen = &app.all_events(ADMIN_TOKEN, "").await[0]["event_payload"]["escape"];
    assert!(seen["file"].as_str().unwrap().starts_with("denied"), "{seen}");
    assert!(seen["dir"].as_str().unwrap().starts_with("denied"), "{seen}");
    assert_eq!(seen["env"], 0, "{seen}");
    assert_eq!(seen["args"], 0, "{seen}");
    assert_eq!(seen["wall_clock_secs"], 0, "the wall clock is frozen at the epoch");
    assert_eq!(seen["monotonic_elapsed_ns"], 0, "no timer to measure with");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_whose_init_never_returns_is_refused_at_install() {
    let app = spawn_app().await;
    let started = Instant::now();
    let (status, body) = app.upload_bytes(ADMIN_TOKEN, "slow", sluice_e2e::plugin_wasm("hostile-slow-init")).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"][0]["msg"].as_str().unwrap().contains("init exceeded the deadline"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(app.plugin_names(ADMIN_TOKEN).await, [sluice_e2e::SHIPPED], "only the default plugin");
    // The check ran on the tenant's plugin workers and its CPU time, up to
    // the deadline, was charged to the tenant (RELIABILITY.md, F63).
    let r = app.client.get(app.url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let text = r.text().await.unwrap();
    let charged: u64 = text
        .lines()
        .find(|l| l.starts_with("sluice_tenant_plugin_microseconds_total{tenant=\"default\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(charged >= 100_000, "{charged} us charged for an init that spun to its deadline");
}

/// Hostile uploads (RELIABILITY.md, item 3): random bytes, components cut
/// at every tenth of their length, a core module, an empty component, a
/// forbidden import and an oversized body each get a 4xx naming the
/// problem, within a bounded time, and nothing is installed.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_uploads_get_a_clear_4xx_in_bounded_time() {
    let app = spawn_app().await;
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // A small deterministic generator: the same corpus every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..20 {
        let len = (next() % 65_536) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Half of them look like a component or a module at first glance.
        if i % 2 == 0 && bytes.len() >= 8 {
            let header: &[u8] = if i % 4 == 0 { b"\0asm\x0d\0\x01\0" } else { b"\0asm\x01\0\0\0" };
            bytes[..8].copy_from_slice(header);
        }
        cases.push((format!("random-{i}"), bytes));
    }
    for krate in ["customer-prefix", "schema-guard"] {
        let whole = plugin_wasm(krate);
        for tenth in 1..10 {
            cases.push((format!("{krate}-cut-{tenth}0pct"), whole[..whole.len() * tenth / 10].to_vec()));
        }
    }
    cases.push(("core-module".into(), b"\0asm\x01\0\0\0".to_vec()));
    cases.push(("empty-component".into(), b"\0asm\x0d\0\x01\0".to_vec()));
    cases.push(("empty".into(), Vec::new()));
    cases.push(("sockets".into(), plugin_wasm("hostile-network")));
    let mut slowest = Duration::ZERO;
    for (name, bytes) in cases {
        let started = Instant::now();
        let (status, body) = app.upload_bytes(ADMIN_TOKEN, &name, bytes).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 422, "{name}: {body}");
        let msg = body["detail"][0]["msg"].as_str().unwrap_or("");
        assert!(msg.len() > 10, "{name}: a clear message, got {body}");
    }
    // Bounded by the compile timeout (20 s); in practice far below it.
    assert!(slowest < Duration::from_secs(20), "slowest refusal took {slowest:?}");
    let (status, _) = app.upload_bytes(ADMIN_TOKEN, "oversized", vec![0; 17 << 20]).await;
    assert_eq!(status, 413);
    assert_eq!(app.plugin_names(ADMIN_TOKEN).await, [sluice_e2e::SHIPPED], "nothing installed");
    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "still.fine"})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_workers_bound_how_many_batches_run_plugins_at_once() {
    // Two requests into a plugin that spins to its deadline: with one plugin
    // worker they run one after the other; with two, two tenants' run side
    // by side, but one tenant's still one after the other (a tenant may hold
    // half of the workers), and at most half of the cores: with four
    // workers a tenant's two run side by side only on four cores or more.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    for (workers, same_tenant, serialized) in
        [(1, false, true), (2, false, false), (2, true, true), (4, false, false), (4, true, cores < 4)]
    {
        let app = spawn_app_with(|s| s.plugin_workers = workers).await;
        // A deadline long enough that scheduling noise of a busy machine
        // (other tests run beside this one) cannot blur 1x from 2x.
        let settings = json!({"limits": {"deadline_ms": 1000}, "max_consecutive_failures": 100});
        let other = if same_tenant { ADMIN_TOKEN.to_string() } else { app.create_tenant("other").await };
        hostile(&app, ADMIN_TOKEN, "hostile-loop", settings.clone()).await;
        if !same_tenant {
            hostile(&app, &other, "hostile-loop", settings).await;
        }
        let spin = json!({"event_type": "spin"});
        let started = Instant::now();
        let (a, b) = tokio::join!(app.post_events(ADMIN_TOKEN, &spin), app.post_events(&other, &spin));
        let elapsed = started.elapsed();
        assert_eq!((a.0, b.0), (502, 502));
        let case = format!("{workers} worker(s), same tenant: {same_tenant}: both done after {elapsed:?}");
        if serialized {
            assert!(elapsed >= Duration::from_millis(2000), "{case}");
        } else {
            assert!(elapsed < Duration::from_millis(1700), "{case}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_with_a_backlog_of_slow_plugin_calls_leaves_workers_to_the_others() {
    // The attack pass's F1: eight parallel requests into a plugin spinning
    // to its deadline took every plugin worker, and another tenant's
    // session-audit event (which runs the shipped customer-prefix) waited
    // for them all: 22 s.
    let app = spawn_app_with(|s| s.plugin_workers = 4).await;
    let quiet = app.create_tenant("quiet").await;
    let settings = json!({"limits": {"deadline_ms": 2000}, "max_consecutive_failures": 1000, "failure_policy": "skip"});
    hostile(&app, ADMIN_TOKEN, "hostile-loop", settings).await;
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("/v1/events"));
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"event_type": "spin"}))
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) =
            app.post(&quiet, "/session/v1/audit", &json!({"event_name": "player_joined", "session_id": "s-1"})).await;
        assert!(status == 200 || status == 201, "{body}");
        // Waiting for a worker would take until a 2 s deadline.
        assert!(started.elapsed() < Duration::from_millis(1000), "the quiet tenant waited {:?}", started.elapsed());
    }
    for task in flood {
        task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_cannot_pass_its_refusal_off_as_a_plugin_failure() {
    let app = spawn_app().await;
    // The plugin's own rejection code spells the host's failure code.
    let rules = json!({"rules": [{"field": "event_payload.must", "required": true, "code": "plugin_failed"}]});
    app.install(ADMIN_TOKEN, "guard", "schema-guard", json!({"config": rules})).await;
    // Generic events: a refusal by every plugin is a 422, not the 502 of
    // plugins that failed on every event.
    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "x"})).await;
    assert_eq!(status, 422, "{body}");
    // Logs: a refusal is the family's 400, a failure would be its 502.
    let (status, body) = app.post(ADMIN_TOKEN, "/logs", &json!({"level": "info", "message": "m"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
}
