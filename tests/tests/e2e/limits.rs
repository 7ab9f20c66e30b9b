//! Limits on what one request may store: the bound on events stored after
//! fan-out (`SLUICE_MAX_STORED_EVENTS`), in each family's error shape.

use serde_json::{json, Value};
use sluice_e2e::{spawn_app_with, ADMIN_TOKEN};

/// One request per family, the field its error body always has, and the
/// family's scope name.
fn families() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    vec![
        ("generic", "/v1/events", "detail", json!({"event_type": "fan.out"})),
        ("iam", "/iam/v1/events", "detail", json!({"name": "iam.something.new", "payload": {}})),
        ("session-audit", "/session/v1/audit", "error_code", json!({"event_name": "fan", "session_id": "s-1"})),
        (
            "auditlogs",
            "/v1beta1/organizations/default/auditlogs",
            "code",
            json!({"logs": [{"source": "s", "action": "fan.out"}]}),
        ),
        ("logs", "/logs", "error", json!({"level": "info", "message": "fan out"})),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fan_out_beyond_the_stored_events_bound_is_refused_whole_in_each_familys_shape() {
    let app = spawn_app_with(|s| s.max_stored_events = 1000).await;
    let manifest = json!({"config": {"mode": "fanout", "copies": 1001}, "limits": {"max_fanout": 5000}, "max_consecutive_failures": 100});
    app.install(ADMIN_TOKEN, "fan", "hostile-output", manifest).await;
    let count = || async {
        let (_, body) = app.post(ADMIN_TOKEN, "/v1/query", &json!({"sql": "SELECT count(*) FROM events"})).await;
        body["rows"][0][0].as_i64().unwrap()
    };
    for (family, path, field, body) in families() {
        let (status, patched) = app
            .patch(
                ADMIN_TOKEN,
                "/v1/plugins/fan",
                &json!({"families": [family], "config": {"mode": "fanout", "copies": 1001}}),
            )
            .await;
        assert_eq!(status, 200, "{patched}");
        let before = count().await;
        let (status, answer) = app.post(ADMIN_TOKEN, path, &body).await;
        assert_eq!(status, 413, "{family}: {answer}");
        assert!(!answer[field].is_null(), "{family}: {answer}");
        assert!(answer.to_string().contains("at most 1000"), "{family}: {answer}");
        assert_eq!(count().await, before, "{family}: nothing stored");
        // At the bound, the request is stored whole.
        app.patch(ADMIN_TOKEN, "/v1/plugins/fan", &json!({"config": {"mode": "fanout", "copies": 1000}})).await;
        let (status, answer) = app.post(ADMIN_TOKEN, path, &body).await;
        assert!((200..300).contains(&status), "{family}: {status} {answer}");
        assert_eq!(count().await, before + 1000, "{family}");
    }
    // Plugin health is untouched: the bound is the request's, not a fault.
    let plugin = app.plugin(ADMIN_TOKEN, "fan").await;
    assert_eq!(plugin["state"], "enabled", "{plugin}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_over_its_ingest_rate_gets_429_in_each_familys_shape_and_others_carry_on() {
    let app = spawn_app_with(|_| {}).await;
    let noisy = app.create_tenant("noisy").await;
    let quiet = app.create_tenant("quiet").await;
    // One event per second after a burst of 5, for the noisy tenant only.
    let (status, body) = app.put(&noisy, "/v1/quotas", &json!({"events_per_second": 1, "events_burst": 5})).await;
    assert_eq!(status, 200, "{body}");
    let (_, shown) = app.get(&noisy, "/v1/quotas").await;
    assert_eq!(shown["events_per_second"], json!({"limit": 1.0, "burst": 5.0}), "{shown}");
    // A keyed request finished before the debt...
    let keyed = || {
        app.client
            .post(app.url("/v1/events"))
            .bearer_auth(&noisy)
            .header("idempotency-key", "before-the-debt")
            .json(&json!({"event_type": "keyed"}))
    };
    let first = keyed().send().await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    // A request larger than the burst is admitted on a (nearly) full
    // bucket, and leaves a debt of about 45 s (so the checks below cannot
    // race the refill).
    let batch: Vec<Value> = (0..50).map(|_| json!({"event_type": "burst"})).collect();
    let (status, body) = app.post_events(&noisy, &Value::Array(batch)).await;
    assert_eq!(status, 200, "on a full bucket: {body}");
    // ...is still answered from its key while the tenant is in debt.
    let retry = keyed().send().await.unwrap();
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.json::<Value>().await.unwrap(), first);
    for (_, path, field, body) in families() {
        let path = path.replace("default", "noisy");
        let r = app.client.post(app.url(&path)).bearer_auth(&noisy).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 429, "{path}");
        // Retry-After says how long the debt lasts (whole seconds).
        let secs: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((30..=46).contains(&secs), "{path}: Retry-After {secs}");
        let answer: Value = r.json().await.unwrap();
        assert!(!answer[field].is_null(), "{path}: {answer}");
        assert!(answer.to_string().contains("ingest rate"), "{path}: {answer}");
        if field == "code" {
            assert_eq!(answer["code"], 8, "google.rpc RESOURCE_EXHAUSTED: {answer}");
        }
        // Another tenant is not held to it.
        let quiet_path = path.replace("noisy", "quiet");
        let (status, answer) = app.post(&quiet, &quiet_path, &body).await;
        assert!((200..300).contains(&status), "{quiet_path}: {status} {answer}");
    }
    // The test space shares its tenant's rate.
    let (_, token) =
        app.post(&noisy, "/v1/tokens", &json!({"name": "t", "scopes": ["events:write"], "mode": "test"})).await;
    let (status, _) = app.post_events(token["token"].as_str().unwrap(), &json!({"event_type": "x"})).await;
    assert_eq!(status, 429);
    // The operator sees who is throttled, and why.
    let r = app.client.get(app.url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let metrics = r.text().await.unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("sluice_tenant_throttled_total")
                && l.contains("tenant=\"noisy\"")
                && l.contains("reason=\"rate\"")
        })
        .unwrap_or_else(|| panic!("no throttling metric for noisy:\n{metrics}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 6.0, "{line}");
    assert!(
        !metrics.contains("tenant=\"quiet\",reason") && !metrics.contains("reason=\"rate\",tenant=\"quiet\""),
        "quiet was never throttled"
    );
    // A tenant cannot raise its own rate above the server's default (that
    // default is what keeps it from taking the server), nor set another's.
    let (status, body) = app.put(&noisy, "/v1/quotas", &json!({"events_per_second": 1000000})).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = app.put(&noisy, "/v1/quotas?tenant=quiet", &json!({"events_per_second": 1})).await;
    assert_eq!(status, 403, "{body}");
    // The operator can; a higher rate takes effect at once and the debt is
    // paid within moments.
    let (status, body) = app
        .put(ADMIN_TOKEN, "/v1/quotas?tenant=noisy", &json!({"events_per_second": 100000, "events_burst": 100000}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app.put(ADMIN_TOKEN, "/v1/quotas?tenant=nope", &json!({})).await;
    assert_eq!(status, 404);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (status, body) = app.post_events(&noisy, &json!({"event_type": "later"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app.put(&noisy, "/v1/quotas", &json!({"events_per_second": 0})).await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn daily_and_storage_quotas_hold_on_every_family_in_its_shape() {
    let app = spawn_app_with(|_| {}).await;
    let quiet = app.create_tenant("quiet").await;
    for (i, (family, path, field, body)) in families().into_iter().enumerate() {
        for (metric, quota) in
            [("events_per_day", json!({"events_per_day": 2})), ("storage_bytes", json!({"storage_bytes": 1}))]
        {
            let tenant = format!("q{i}-{}", metric.replace('_', "-"));
            let token = app.create_tenant(&tenant).await;
            let (status, answer) = app.put(&token, "/v1/quotas", &quota).await;
            assert_eq!(status, 200, "{answer}");
            let path = path.replace("default", &tenant);
            let uses = if metric == "events_per_day" { 2 } else { 1 };
            for _ in 0..uses {
                let (status, answer) = app.post(&token, &path, &body).await;
                assert!((200..300).contains(&status), "{family} {metric}: within the quota: {status} {answer}");
            }
            let (status, answer) = app.post(&token, &path, &body).await;
            assert_eq!(status, 429, "{family} {metric}: {answer}");
            assert!(!answer[field].is_null(), "{family} {metric}: {answer}");
            assert!(answer.to_string().contains(metric), "{family} {metric}: {answer}");
            if family == "logs" {
                assert_eq!(answer["error"]["code"], "quota_exceeded", "{answer}");
                assert_eq!(answer["error"]["metric"], metric, "{answer}");
            }
            // Nothing more was stored, and another tenant is not held to it.
            let (_, count) = app.post(&token, "/v1/query", &json!({"sql": "SELECT count(*) FROM events"})).await;
            assert_eq!(count["rows"][0][0], uses, "{family} {metric}");
            let (status, answer) = app.post(&quiet, &path.replace(&tenant, "quiet"), &body).await;
            assert!((200..300).contains(&status), "{family}: {status} {answer}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenant_holds_at_most_a_quarter_of_the_write_queue() {
    // A queue of 8: a tenant may have 2 writes waiting; beyond, its own
    // requests get 429 while another tenant's are still taken.
    let app = spawn_app_with(|s| s.write_queue_depth = 8).await;
    let noisy = app.create_tenant("noisy-queue").await;
    let quiet = app.create_tenant("quiet").await;
    let batch: Vec<Value> = (0..2000).map(|i| json!({"event_type": "bulk", "task_id": i})).collect();
    let flood: Vec<_> = (0..24)
        .map(|_| {
            let (client, url, token, body) =
                (app.client.clone(), app.url("/v1/events"), noisy.clone(), Value::Array(batch.clone()));
            tokio::spawn(async move {
                let r = client.post(url).bearer_auth(token).json(&body).send().await.unwrap();
                (r.status().as_u16(), r.headers().contains_key("retry-after"))
            })
        })
        .collect();
    let mut quiet_statuses = Vec::new();
    for _ in 0..10 {
        quiet_statuses.push(app.post_events(&quiet, &json!({"event_type": "single"})).await.0);
    }
    let mut noisy_statuses = Vec::new();
    for task in flood {
        let (status, retry_after) = task.await.unwrap();
        if status == 429 {
            assert!(retry_after);
        }
        noisy_statuses.push(status);
    }
    assert!(quiet_statuses.iter().all(|s| *s == 200), "quiet: {quiet_statuses:?}");
    assert!(noisy_statuses.iter().all(|s| *s == 200 || *s == 429), "noisy: {noisy_statuses:?}");
    assert!(noisy_statuses.contains(&429), "the noisy tenant was held to its share: {noisy_statuses:?}");
    // The operator sees each tenant's place in the queue (all served now).
    let metrics =
        app.client.get(app.url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap().text().await.unwrap();
    let line = metrics.lines().find(|l| l.starts_with("sluice_tenant_write_queue{tenant=\"noisy-queue\"}"));
    assert_eq!(line.and_then(|l| l.rsplit(' ').next()), Some("0"), "{metrics}");
    // Everything acknowledged is stored.
    let stored = noisy_statuses.iter().filter(|s| **s == 200).count() as i64 * 2000;
    let (_, count) = app.post(&noisy, "/v1/query", &json!({"sql": "SELECT count(*) FROM events"})).await;
    assert_eq!(count["rows"][0][0], stored);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_over_its_plugin_time_waits_while_others_carry_on() {
    // 50 ms of plugin time per second (100 ms at once) for each tenant.
    let app = spawn_app_with(|s| s.tenant_plugin_ms_per_sec = 50).await;
    let noisy = app.create_tenant("noisy").await;
    let quiet = app.create_tenant("quiet").await;
    let settings = json!({"event_names": ["spin.*"], "failure_policy": "skip", "limits": {"deadline_ms": 1500}, "max_consecutive_failures": 1000});
    app.install(&noisy, "spin", "hostile-loop", settings).await;
    // One call spins until its 1.5 s deadline. Its charge is the CPU time it
    // got, which on a busy machine may be far less than 1.5 s, but is still
    // well over the 100 ms burst and a second's refill: the tenant is in
    // debt for several seconds.
    let (status, body) = app.post_events(&noisy, &json!({"event_type": "spin.x"})).await;
    assert_eq!(status, 200, "{body}");
    for (path, field, body) in [
        ("/v1/events", "detail", json!({"event_type": "spin.y"})),
        ("/session/v1/audit", "error_code", json!({"event_name": "x", "session_id": "s"})),
        ("/v1/pipeline/test", "detail", json!({"events": [{"event_type": "spin.z"}]})),
    ] {
        let started = std::time::Instant::now();
        let r = app.client.post(app.url(path)).bearer_auth(&noisy).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 429, "{path}");
        // Ingest refusals are held up to a second; a dry run's is not.
        if path != "/v1/pipeline/test" {
            assert!(started.elapsed() >= std::time::Duration::from_millis(900), "{path}: {:?}", started.elapsed());
        }
        assert!(r.headers().contains_key("retry-after"), "{path}");
        let answer: Value = r.json().await.unwrap();
        assert!(!answer[field].is_null() && answer.to_string().contains("plugin time"), "{path}: {answer}");
    }
    // Another tenant's plugins run as usual.
    let (status, body) = app.post(&quiet, "/session/v1/audit", &json!({"event_name": "x", "session_id": "s"})).await;
    assert!((200..300).contains(&status), "{status} {body}");
    // The debt is paid back at the tenant's rate: once the operator lifts
    // it to 10 s per second, what is left is paid in well under a second.
    let (status, body) =
        app.put(ADMIN_TOKEN, "/v1/quotas?tenant=noisy", &json!({"plugin_ms_per_second": 10_000})).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (status, body) = app.post_events(&noisy, &json!({"event_type": "plain"})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_sets_one_tenants_plugin_time_budget_and_others_keep_the_default() {
    let app = spawn_app_with(|_| {}).await;
    let noisy = app.create_tenant("budget-noisy").await;
    let quiet = app.create_tenant("budget-quiet").await;
    // A tenant may not raise its own budget above the server's default...
    let (status, body) = app.put(&noisy, "/v1/quotas", &json!({"plugin_ms_per_second": 100_000})).await;
    assert_eq!(status, 403, "{body}");
    // ...the operator sets it to anything: here 50 ms per second.
    let (status, body) =
        app.put(ADMIN_TOKEN, "/v1/quotas?tenant=budget-noisy", &json!({"plugin_ms_per_second": 50})).await;
    assert_eq!(status, 200, "{body}");
    let (_, shown) = app.get(&noisy, "/v1/quotas").await;
    assert_eq!(shown["plugin_ms_per_second"]["limit"], 50.0, "{shown}");
    let settings = json!({"event_names": ["spin.*"], "failure_policy": "skip", "limits": {"deadline_ms": 1500}, "max_consecutive_failures": 1000});
    app.install(&noisy, "spin", "hostile-loop", settings.clone()).await;
    app.install(&quiet, "spin", "hostile-loop", settings).await;
    // A spin to the 1.5 s deadline costs noisy far more CPU time than its
    // burst (100 ms) and a second's refill, even on a busy machine.
    for token in [&noisy, &quiet] {
        let (status, body) = app.post_events(token, &json!({"event_type": "spin.x"})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = app.post_events(&noisy, &json!({"event_type": "spin.y"})).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.to_string().contains("50 ms"), "{body}");
    // The other tenant's plugins still have the default (1000 ms per
    // second, 2000 at once): its next spin runs.
    let (status, body) = app.post_events(&quiet, &json!({"event_type": "spin.y"})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_backlog_for_its_plugin_workers_is_bounded_and_others_are_served() {
    // Two workers, one per tenant: one of noisy's batches runs, four wait
    // (four per worker of its share), and further ones are held a second
    // and refused (the first run takes 2 s: no room is made meanwhile).
    // (A plugin time budget out of the way: the first run's 2 s of CPU
    // would leave the tenant a little in debt, refusing the queued ones.)
    let app = spawn_app_with(|s| {
        s.plugin_workers = 2;
        s.plugin_tenant_workers = 1;
        s.tenant_plugin_ms_per_sec = 10_000;
    })
    .await;
    let noisy = app.create_tenant("backlogged").await;
    let quiet = app.create_tenant("served").await;
    let settings = json!({"event_names": ["spin.*"], "failure_policy": "skip", "limits": {"deadline_ms": 2000}, "max_consecutive_failures": 1000});
    app.install(&noisy, "spin", "hostile-loop", settings).await;
    let started = std::time::Instant::now();
    let requests: Vec<_> = (0..7)
        .map(|_| {
            let (client, url, token) = (app.client.clone(), app.url("/v1/events"), noisy.clone());
            tokio::spawn(async move {
                let r =
                    client.post(url).bearer_auth(token).json(&json!({"event_type": "spin.x"})).send().await.unwrap();
                let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                (r.status().as_u16(), retry_after, r.json::<Value>().await.unwrap(), started.elapsed())
            })
        })
        .collect();
    // Meanwhile another tenant's plugins (the shipped customer-prefix) run
    // on the other worker, without waiting for noisy's backlog.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let asked = std::time::Instant::now();
    let (status, body) = app.post(&quiet, "/session/v1/audit", &json!({"event_name": "x", "session_id": "s"})).await;
    assert!((200..300).contains(&status), "{status} {body}");
    assert!(asked.elapsed() < std::time::Duration::from_millis(900), "waited {:?}", asked.elapsed());
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert_eq!(answers.iter().filter(|a| a.0 == 200).count(), 5, "{answers:?}");
    assert_eq!(refused.len(), 2, "{answers:?}");
    for (_, retry_after, body, elapsed) in refused {
        assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
        assert!(body["detail"].as_str().is_some_and(|d| d.contains("waiting for its 1 plugin worker")), "{body}");
        // Refused after the hold, not after waiting its turn.
        let hold = std::time::Duration::from_millis(900)..std::time::Duration::from_millis(1900);
        assert!(hold.contains(elapsed), "{elapsed:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_abandoned_while_its_plugin_runs_still_pays_its_plugin_time() {
    // 50 ms of plugin time per second (100 ms at once).
    let app = spawn_app_with(|s| s.tenant_plugin_ms_per_sec = 50).await;
    let tenant = app.create_tenant("abandoner").await;
    let settings = json!({"event_names": ["spin.*"], "failure_policy": "skip", "limits": {"deadline_ms": 1500}, "max_consecutive_failures": 1000});
    app.install(&tenant, "spin", "hostile-loop", settings).await;
    // The client gives up long before the plugin's 1.5 s are spent.
    let impatient = reqwest::Client::builder().timeout(std::time::Duration::from_millis(50)).build().unwrap();
    let gave_up =
        impatient.post(app.url("/v1/events")).bearer_auth(&tenant).json(&json!({"event_type": "spin.x"})).send().await;
    assert!(gave_up.is_err(), "the client timed out");
    // The run went on to its deadline and was charged: the tenant is in
    // debt.
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    let (status, body) = app.post_events(&tenant, &json!({"event_type": "plain"})).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.to_string().contains("plugin time"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_a_little_over_the_rate_waits_instead_of_being_refused() {
    let app = spawn_app_with(|_| {}).await;
    let tenant = app.create_tenant("shaped").await;
    let (status, body) = app.put(&tenant, "/v1/quotas", &json!({"events_per_second": 10, "events_burst": 10})).await;
    assert_eq!(status, 200, "{body}");
    let events = |n: usize| Value::Array((0..n).map(|_| json!({"event_type": "shaped"})).collect());
    let (status, body) = app.post_events(&tenant, &events(10)).await;
    assert_eq!(status, 200, "the burst: {body}");
    // Five more need half a second of refill: the request waits it out.
    let started = std::time::Instant::now();
    let (status, body) = app.post_events(&tenant, &events(5)).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(400), "{:?}", started.elapsed());
    // Fifty (more than the burst) on a full bucket leave a debt of 4 s:
    // the next request is refused after a second's hold.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = app.post_events(&tenant, &events(50)).await;
    assert_eq!(status, 200, "{body}");
    let started = std::time::Instant::now();
    let r = app.client.post(app.url("/v1/events")).bearer_auth(&tenant).json(&events(1)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "{:?}", started.elapsed());
    let secs: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((2..=4).contains(&secs), "Retry-After {secs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_runs_duckdb_with_the_configured_worker_threads() {
    let threads = |app: &sluice_e2e::TestApp| {
        let store = app.store.clone();
        async move {
            store
                .read(|conn| Ok(conn.query_row("SELECT current_setting('threads')", [], |row| row.get::<_, i64>(0))?))
                .await
                .unwrap()
        }
    };
    // The default: one, so a one-row commit never waits on DuckDB's own
    // worker threads (BENCHMARKS.md, "Fairness").
    let app = spawn_app_with(|_| {}).await;
    assert_eq!(threads(&app).await, 1);
    let app = spawn_app_with(|s| s.store_threads = 3).await;
    assert_eq!(threads(&app).await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_cannot_lift_the_limits_the_operator_set_on_it() {
    let app = spawn_app_with(|_| {}).await;
    let tenant = app.create_tenant("capped").await;
    let set = json!({"events_per_day": 3, "storage_bytes": 100000, "events_per_second": 5, "events_burst": 5, "plugin_ms_per_second": 10});
    let (status, body) = app.put(ADMIN_TOKEN, "/v1/quotas?tenant=capped", &set).await;
    assert_eq!(status, 200, "{body}");
    // Each way of loosening one of them (the PUT replaces the record).
    for loosened in [
        json!({}),
        json!({"events_per_day": null, "storage_bytes": 100000, "events_per_second": 5, "events_burst": 5, "plugin_ms_per_second": 10}),
        json!({"events_per_day": 4, "storage_bytes": 100000, "events_per_second": 5, "events_burst": 5, "plugin_ms_per_second": 10}),
        json!({"events_per_day": 3, "storage_bytes": 100001, "events_per_second": 5, "events_burst": 5, "plugin_ms_per_second": 10}),
        json!({"events_per_day": 3, "storage_bytes": 100000, "events_per_second": 6, "events_burst": 5, "plugin_ms_per_second": 10}),
        json!({"events_per_day": 3, "storage_bytes": 100000, "events_per_second": 5, "events_burst": null, "plugin_ms_per_second": 10}),
        json!({"events_per_day": 3, "storage_bytes": 100000, "events_per_second": 5, "events_burst": 5, "plugin_ms_per_second": 11}),
    ] {
        let (status, body) = app.put(&tenant, "/v1/quotas", &loosened).await;
        assert_eq!(status, 403, "{loosened}: {body}");
    }
    let (_, shown) = app.get(&tenant, "/v1/quotas").await;
    assert_eq!(shown["events_per_day"]["limit"], 3, "{shown}");
    // Tightening is the tenant's own to do.
    let tighter = json!({"events_per_day": 2, "storage_bytes": 50000, "events_per_second": 4, "events_burst": 4, "plugin_ms_per_second": 5});
    let (status, body) = app.put(&tenant, "/v1/quotas", &tighter).await;
    assert_eq!(status, 200, "{body}");
    let (_, shown) = app.get(&tenant, "/v1/quotas").await;
    assert_eq!(shown["events_per_day"]["limit"], 2, "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_of_large_events_are_bounded_in_bytes_and_paging_loses_nothing() {
    // 160 events of ~250 KB: 40 MB of payloads, over a page's 8 MiB and a
    // snapshot copy step's 32 MiB.
    let app = spawn_app_with(|_| {}).await;
    let tenant = app.create_tenant("large-rows").await;
    let payload = json!({"blob": "x".repeat(250_000)});
    for batch in 0..16 {
        let events: Vec<Value> = (0..10)
            .map(|i| json!({"event_type": "big", "task_id": batch * 10 + i, "event_payload": payload}))
            .collect();
        let (status, body) = app.post_events(&tenant, &Value::Array(events)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, first) = app.get(&tenant, "/v1/audit/events?limit=100").await;
    assert_eq!(status, 200, "{first}");
    let shown = first["items"].as_array().unwrap().len();
    assert!((1..100).contains(&shown), "a page of {shown} events of 250 KB");
    assert!(first["next_cursor"].is_string(), "the page says more follow");
    // Paging and the NDJSON export both yield each event exactly once.
    let mut listed: Vec<i64> =
        app.all_events(&tenant, "").await.iter().map(|e| e["task_id"].as_i64().unwrap()).collect();
    listed.sort_unstable();
    assert_eq!(listed, (0..160).collect::<Vec<_>>());
    let export = app
        .client
        .get(app.url("/v1/export?format=ndjson"))
        .bearer_auth(&tenant)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut exported: Vec<i64> =
        export.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["task_id"].as_i64().unwrap()).collect();
    exported.sort_unstable();
    assert_eq!(exported, (0..160).collect::<Vec<_>>());
    // The query snapshot copies them in steps bounded in bytes: each row
    // once.
    let sql = json!({"sql": "SELECT count(*), count(DISTINCT task_id), sum(task_id) FROM events"});
    let (status, answer) = app.post(&tenant, "/v1/query", &sql).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rows"][0], json!([160, 160, 12720]), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_storing_more_bytes_than_its_byte_rate_gets_429_and_others_carry_on() {
    // 1 MiB/s, 2 MiB at once.
    let app = spawn_app_with(|s| {
        s.tenant_bytes_per_sec = 1 << 20;
        s.tenant_bytes_burst = 2 << 20;
    })
    .await;
    let heavy = app.create_tenant("bytes-heavy").await;
    let light = app.create_tenant("bytes-light").await;
    let payload = json!({"blob": "x".repeat(250_000)});
    let big: Value = (0..10).map(|_| json!({"event_type": "big", "event_payload": payload})).collect();
    // ~5 MB stored (each event's payload and its raw input): over the
    // burst, but admitted (its bytes are known once its plugins ran); the
    // tenant is then ~3 MB, 3 s, in debt.
    let (status, body) = app.post_events(&heavy, &big).await;
    assert_eq!(status, 200, "{body}");
    for (path, field, body) in [
        ("/v1/events", "detail", json!({"event_type": "small"})),
        ("/session/v1/audit", "error_code", json!({"event_name": "x", "session_id": "s"})),
    ] {
        let r = app.client.post(app.url(path)).bearer_auth(&heavy).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 429, "{path}");
        assert!(r.headers().contains_key("retry-after"), "{path}");
        let answer: Value = r.json().await.unwrap();
        assert!(!answer[field].is_null() && answer.to_string().contains("bytes/s"), "{path}: {answer}");
    }
    // Another tenant stores as usual, at once.
    let started = std::time::Instant::now();
    let (status, body) = app.post_events(&light, &json!({"event_type": "small"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "{:?}", started.elapsed());
    // Per tenant: a tenant may not loosen its own; the operator sets any
    // tenant's (four times it at once).
    let (status, body) = app.put(&light, "/v1/quotas", &json!({"bytes_per_second": 4 << 20})).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) =
        app.put(ADMIN_TOKEN, "/v1/quotas?tenant=bytes-light", &json!({"bytes_per_second": 3_000_000})).await;
    assert_eq!(status, 200, "{body}");
    let (_, shown) = app.get(&light, "/v1/quotas").await;
    assert_eq!(shown["bytes_per_second"], json!({"limit": 3e6, "burst": 1.2e7}), "{shown}");
    // 5 MB: within the new burst; the tenant is not in debt afterwards.
    let (status, body) = app.post_events(&light, &big).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.post_events(&light, &json!({"event_type": "small"})).await;
    assert_eq!(status, 200, "{body}");
}

/// A request's answer and its length in bytes.
async fn post_sized(
    app: &sluice_e2e::TestApp,
    token: &str,
    path: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, usize, Value) {
    let mut request = app.client.post(app.url(path)).bearer_auth(token).json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (status, bytes.len(), serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn remembered_answers_are_bounded_in_bytes_and_charged_to_the_byte_rate() {
    // 100 kB/s, 200 kB at once.
    let app = spawn_app_with(|s| {
        s.tenant_bytes_per_sec = 100_000;
        s.tenant_bytes_burst = 200_000;
    })
    .await;
    let t = app.create_tenant("remembers").await;
    let settings = json!({"families": ["generic"], "config": {"mode": "reject", "bytes": 4096}});
    app.install(&t, "rejects", "hostile-output", settings).await;
    // 2,000 rejections, each with a 4 KB code, message and field: 49 MB
    // of plugin text, twice over in the answer, without a bound.
    let events: Value = (0..2000).map(|i| json!({"event_type": "x", "id": format!("e-{i}")})).collect();
    let (status, size, answer) = post_sized(&app, &t, "/v1/events", None, &events).await;
    assert_eq!(status, 422, "{}", &answer.to_string()[..300]);
    assert!(size < 2_000_000, "the answer is {size} bytes");
    let errors = |answer: &Value| -> Vec<Value> {
        answer["results"].as_array().unwrap().iter().map(|r| r["error"].clone()).collect()
    };
    let first = &errors(&answer)[0];
    assert_eq!(first["message"].as_str().unwrap().len(), 2048, "the first messages are whole (to 2 KB)");
    assert_eq!(first["code"].as_str().unwrap().len(), 64);
    let last = errors(&answer).pop().unwrap();
    assert!(last["message"].as_str().unwrap().len() <= 64 && last["message"].as_str().unwrap().starts_with("m-e-1999"));
    // Nothing stored and nothing remembered: not charged, so not in debt.
    let (status, _, _) = post_sized(&app, &t, "/v1/events", None, &events).await;
    assert_eq!(status, 422, "an answer that is not remembered is not charged");
    // Remembered under a key: its bytes are charged, and the tenant is in debt.
    let (status, size, first_answer) = post_sized(&app, &t, "/v1/events", Some("big-answer"), &events).await;
    assert_eq!(status, 422);
    assert!(size > 200_000, "{size}");
    let (status, _, refusal) = post_sized(&app, &t, "/v1/events", None, &json!({"event_type": "x"})).await;
    assert_eq!(status, 429, "the remembered answer is charged: {refusal}");
    // A retry is still answered from the key, in debt, with the same answer.
    let (status, replayed, answer) = app.post_keyed(&t, "/v1/events", "big-answer", &events).await;
    assert_eq!((status, replayed), (422, true));
    assert_eq!(answer, first_answer);
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_runs_show_a_bounded_prefix_of_their_events_and_are_charged() {
    // 1 MB/s, 2 MB at once.
    let app = spawn_app_with(|s| {
        s.tenant_bytes_per_sec = 1_000_000;
        s.tenant_bytes_burst = 2_000_000;
    })
    .await;
    let t = app.create_tenant("pads").await;
    let settings =
        json!({"families": ["generic"], "enabled": false, "config": {"mode": "oversized", "bytes": 500_000}});
    app.install(&t, "pad", "hostile-output", settings).await;
    // 30 samples padded to 500 kB each: 15 MB of output events.
    let samples: Value = (0..30).map(|i| json!({"event_type": format!("s{i}")})).collect();
    let (status, size, answer) = post_sized(&app, &t, "/v1/plugins/pad/test", None, &json!({"events": samples})).await;
    assert_eq!(status, 200, "{answer}");
    let shown = answer["events"].as_array().unwrap().len();
    assert!((10..=16).contains(&shown), "{shown} events shown");
    assert_eq!(answer["events_omitted"].as_u64(), Some(30 - shown as u64));
    assert_eq!(answer["results"].as_array().unwrap().len(), 30, "every outcome is reported");
    assert!(size < (8 << 20) + 100_000, "the answer is {size} bytes");
    // What it made is charged: the next dry run is refused for the debt,
    // after the same hold as ingest, so a client retrying at once is not
    // answered thousands of times a second (RELIABILITY.md, F52).
    let asked = std::time::Instant::now();
    let (status, _, refusal) =
        post_sized(&app, &t, "/v1/plugins/pad/test", None, &json!({"events": [{"event_type": "x"}]})).await;
    assert_eq!(status, 429, "{refusal}");
    assert!(asked.elapsed() >= std::time::Duration::from_millis(900), "refused after {:?}", asked.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_runs_group_by_request_and_show_their_diffs_within_bytes() {
    let app = spawn_app_with(|_| {}).await;
    let config = json!({"mode": "oversized", "bytes": 400_000});
    app.install(ADMIN_TOKEN, "pad", "customer-prefix", json!({"families": ["generic"], "config": config})).await;
    // The same input in two requests is two inputs, not one fan-out.
    for _ in 0..2 {
        let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "same"})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, report) = app.post(ADMIN_TOKEN, "/v1/plugins/pad/shadow", &json!({"version": 1, "events": 2})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!((report["inputs"].as_u64(), report["unchanged"].as_u64()), (Some(2), Some(2)), "{report}");
    // A candidate that pads every event to 400 kB: 30 diffs of 12 MB.
    let batch: Value = (0..28).map(|i| json!({"event_type": format!("e{i}")})).collect();
    app.post_events(ADMIN_TOKEN, &batch).await;
    let (status, body) = app.upload_bytes(ADMIN_TOKEN, "pad", sluice_e2e::plugin_wasm("hostile-output")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.post(ADMIN_TOKEN, "/v1/plugins/pad/rollback", &json!({"version": 1})).await;
    assert_eq!(status, 200, "{body}");
    let (status, size, report) =
        post_sized(&app, ADMIN_TOKEN, "/v1/plugins/pad/shadow", None, &json!({"version": 2, "events": 30})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (report["events"].as_u64(), report["changed"].as_u64()),
        (Some(30), Some(30)),
        "{}",
        &report.to_string()[..500]
    );
    let diffs = report["diffs"].as_array().unwrap();
    assert_eq!(diffs.len(), 30);
    let shown: usize = diffs.iter().map(|d| d["candidate"].as_array().unwrap().len()).sum();
    let omitted: u64 = diffs.iter().map(|d| d["candidate_omitted"].as_u64().unwrap()).sum();
    assert!((15..=21).contains(&shown) && shown as u64 + omitted == 30, "{shown} shown, {omitted} omitted");
    assert!(diffs.iter().all(|d| d["stored"].as_array().unwrap().len() == 1), "the small stored sides fit");
    assert!(size < (8 << 20) + 200_000, "the answer is {size} bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_overshoot_a_quota_by_at_most_the_one_that_crossed_it() {
    let app = spawn_app_with(|_| {}).await;
    for (metric, quota) in
        [("storage_bytes", json!({"storage_bytes": 50_000})), ("events_per_day", json!({"events_per_day": 30}))]
    {
        let token = app.create_tenant(&format!("crowd-{}", metric.replace('_', "-"))).await;
        let (status, answer) = app.put(&token, "/v1/quotas", &quota).await;
        assert_eq!(status, 200, "{answer}");
        // 24 requests at once, each of 10 events and ~20 kB (payloads and
        // raw inputs): all would pass a check of the use before any commit.
        let body: Value =
            (0..10).map(|_| json!({"event_type": "crowd", "event_payload": {"p": "x".repeat(1000)}})).collect();
        let statuses = app.post_at_once(&token, "/v1/events", &body, 24).await;
        let stored = statuses.iter().filter(|s| **s == 200).count();
        assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
        let (_, shown) = app.get(&token, "/v1/quotas").await;
        let used = shown[metric]["used"].as_i64().unwrap();
        let limit = shown[metric]["limit"].as_i64().unwrap();
        let (_, count) = app.post(&token, "/v1/query", &json!({"sql": "SELECT count(*) FROM events"})).await;
        assert_eq!(count["rows"][0][0], 10 * stored as u64, "{metric}: what was answered 200 is stored");
        // One request is ~20 kB, 10 events: the quota is crossed by one at most.
        let one = if metric == "storage_bytes" { 21_000 } else { 10 };
        assert!(stored >= 1 && used < limit + one, "{metric}: {stored} stored, {used} used of {limit}: {statuses:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_listings_and_replays_are_bounded_in_bytes_and_lose_nothing() {
    let app = spawn_app_with(|_| {}).await;
    let settings =
        json!({"failure_policy": "dead-letter", "config": {"only_name": "big"}, "max_consecutive_failures": 1000});
    app.install(ADMIN_TOKEN, "picky", "hostile-panic", settings).await;
    // 80 letters of ~500 kB each (the event and its raw input): 40 MB.
    let payload = json!({"blob": "x".repeat(250_000)});
    for i in 0..8 {
        let batch: Value =
            (0..10).map(|j| json!({"event_type": "big", "task_id": i * 10 + j, "event_payload": payload})).collect();
        let (status, body) = app.post_events(ADMIN_TOKEN, &batch).await;
        assert_eq!((status, &body["dead_lettered"]), (200, &json!(10)), "{}", &body.to_string()[..200]);
    }
    let r = app.client.get(app.url("/v1/dead-letters?limit=100")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let bytes = r.bytes().await.unwrap();
    let listing: Value = serde_json::from_slice(&bytes).unwrap();
    let shown = listing["items"].as_array().unwrap();
    assert!((14..=17).contains(&shown.len()), "{} shown", shown.len());
    let task = |letter: &Value| letter["event"]["task_id"].as_str().unwrap().parse::<u32>().unwrap();
    assert!(task(&shown[0]) >= 70, "newest first: {}", task(&shown[0]));
    assert!(bytes.len() < (8 << 20) + 500_000, "{} bytes", bytes.len());
    // Replays take what fits, oldest first, and the next goes on: every
    // letter is replayed once.
    app.patch(ADMIN_TOKEN, "/v1/plugins/picky", &json!({"config": {"only_name": "nothing"}})).await;
    let mut rounds = Vec::new();
    loop {
        let (status, body) = app.post(ADMIN_TOKEN, "/v1/dead-letters/replay", &json!({"all": true})).await;
        assert_eq!(status, 200, "{body}");
        let n = body["replayed"].as_u64().unwrap();
        if n == 0 {
            break;
        }
        rounds.push(n);
    }
    assert!(rounds.len() >= 2 && rounds.iter().sum::<u64>() == 80, "{rounds:?}");
    let (_, count) = app
        .post(
            ADMIN_TOKEN,
            "/v1/query",
            &json!({"sql": "SELECT count(DISTINCT task_id) FROM events WHERE event_type = 'big'"}),
        )
        .await;
    assert_eq!(count["rows"][0][0], 80);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_reads_run_two_at_a_time_and_others_do_not_queue_behind_them() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let app = spawn_app_with(|_| {}).await;
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // Six slow reads of one tenant (its live and test space together)...
    let reads: Vec<_> = (0..6)
        .map(|i| {
            let (store, running, most) = (app.store.clone(), running.clone(), most.clone());
            let space = if i % 2 == 0 { "busy" } else { "busy:test" };
            tokio::spawn(async move {
                store
                    .read_as(space, move |_| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .await
                    .unwrap();
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // ...and another tenant's read meanwhile runs at once.
    let started = std::time::Instant::now();
    app.store.read_as("other", |_| Ok(())).await.unwrap();
    let waited = started.elapsed();
    for r in reads {
        r.await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), sluice::store::TENANT_READS, "at most two of a tenant's reads at once");
    assert!(waited < std::time::Duration::from_millis(250), "the other tenant waited {waited:?}");
}

/// The value of the ingest counter of `family` and `disposition`.
async fn ingest_counter(app: &sluice_e2e::TestApp, family: &str, disposition: &str) -> u64 {
    let r = app.client.get(app.url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let text = r.text().await.unwrap();
    let labels = format!(r#"{{family="{family}",disposition="{disposition}"}}"#);
    text.lines()
        .find(|l| l.starts_with("sluice_ingest_events_total") && l.contains(&labels))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_family_counts_its_dead_letters_and_stored_events_alike() {
    let app = spawn_app_with(|_| {}).await;
    for (family, path, _, body) in families() {
        let tenant = format!("counted-{family}");
        let token = app.create_tenant(&tenant).await;
        let path = path.replace("default", &tenant);
        let stored_before = ingest_counter(&app, family, "stored").await;
        let (status, answer) = app.post(&token, &path, &body).await;
        assert!((200..300).contains(&status), "{family}: {status} {answer}");
        assert!(ingest_counter(&app, family, "stored").await > stored_before, "{family}: stored events are counted");
        // A plugin that fails on every event, under the dead-letter policy.
        let settings = json!({"families": [family], "failure_policy": "dead-letter", "max_consecutive_failures": 1000});
        app.install(&token, "boom", "hostile-panic", settings).await;
        let letters_before = ingest_counter(&app, family, "dead_lettered").await;
        let (status, answer) = app.post(&token, &path, &body).await;
        assert!((200..300).contains(&status), "{family}: {status} {answer}");
        let (_, letters) = app.get(&token, "/v1/dead-letters").await;
        assert!(!letters["items"].as_array().unwrap().is_empty(), "{family}: {letters}");
        assert!(
            ingest_counter(&app, family, "dead_lettered").await > letters_before,
            "{family}: dead letters are counted as dead letters"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_writer_checkpoints_while_idle_so_the_wal_stays_short() {
    let app = spawn_app_with(|s| s.idle_checkpoint_bytes = 1 << 20).await;
    let wal = app.data_dir.join("sluice.duckdb.wal");
    // ~5 MB of events in five requests: past the idle size, far below
    // DuckDB's own threshold (512 MB).
    let payload = json!({"blob": "x".repeat(100_000)});
    for _ in 0..5 {
        let batch: Value = (0..10).map(|_| json!({"event_type": "wal", "event_payload": payload})).collect();
        let (status, body) = app.post_events(ADMIN_TOKEN, &batch).await;
        assert_eq!(status, 200, "{}", &body.to_string()[..100.min(body.to_string().len())]);
    }
    // Once nothing is waiting, the writer checkpoints: the WAL is emptied.
    app.post_events(ADMIN_TOKEN, &json!({"event_type": "nudge"})).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&wal).map_or(0, |m| m.len()) >= 1 << 20 {
        assert!(std::time::Instant::now() < deadline, "the WAL is {} bytes", std::fs::metadata(&wal).unwrap().len());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        app.post_events(ADMIN_TOKEN, &json!({"event_type": "nudge"})).await;
    }
    let (_, count) = app
        .post(ADMIN_TOKEN, "/v1/query", &json!({"sql": "SELECT count(*) FROM events WHERE event_type = 'wal'"}))
        .await;
    assert_eq!(count["rows"][0][0], 50, "nothing is lost by the checkpoint");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_fan_out_is_bounded_by_what_it_expands_to() {
    let app = spawn_app_with(|_| {}).await;
    let players: Vec<String> = (0..1000).map(|i| format!("{i:08x}-1111-4111-8111-111111111111")).collect();
    // 1,000 players and a 20 kB map: 1,000 copies of ~60 kB, past 10 MiB.
    let body = json!({"event_name": "x", "session_id": "s", "players": players, "map": "m".repeat(20_000)});
    let (status, answer) = app.post(ADMIN_TOKEN, "/session/v1/audit", &body).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error_code"], "payload_too_large", "{answer}");
    let (_, count) = app.post(ADMIN_TOKEN, "/v1/query", &json!({"sql": "SELECT count(*) FROM events"})).await;
    assert_eq!(count["rows"][0][0], 0);
    // The same players with a small request are stored.
    let body = json!({"event_name": "x", "session_id": "s", "players": players});
    let (status, answer) = app.post(ADMIN_TOKEN, "/session/v1/audit", &body).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_changes_are_charged_to_the_byte_rate_and_scopes_are_bounded() {
    // 100 kB/s, 200 kB at once.
    let app = spawn_app_with(|s| {
        s.tenant_bytes_per_sec = 100_000;
        s.tenant_bytes_burst = 200_000;
    })
    .await;
    let t = app.create_tenant("changes").await;
    app.install(&t, "p", "customer-prefix", Value::Null).await;
    let names: Vec<String> = (0..65).map(|i| format!("n{i}.*")).collect();
    let (status, body) = app.patch(&t, "/v1/plugins/p", &json!({"event_names": names})).await;
    assert_eq!((status, &body["detail"][0]["loc"][1]), (422, &json!("event_names")), "{body}");
    let (status, body) = app.patch(&t, "/v1/plugins/p", &json!({"event_names": ["x".repeat(257)]})).await;
    assert_eq!(status, 422, "{body}");
    // A 500 kB config is written: the tenant is in debt, and its next
    // change waits for it (429).
    let (status, body) = app.patch(&t, "/v1/plugins/p", &json!({"config": {"pad": "p".repeat(500_000)}})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.patch(&t, "/v1/plugins/p", &json!({"position": 3})).await;
    assert_eq!(status, 429, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_run_takes_an_analyst_slot() {
    let app = spawn_app_with(|s| s.query_tenant_concurrency = 1).await;
    let batch: Vec<Value> = (0..3000).map(|i| json!({"event_type": "bulk", "task_id": i})).collect();
    app.post_events(ADMIN_TOKEN, &Value::Array(batch)).await;
    // An export being streamed holds the tenant's one slot.
    let export = app.client.get(app.url("/v1/export?format=ndjson")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(export.status(), 200);
    let (status, body) =
        app.post(ADMIN_TOKEN, "/v1/plugins/customer-prefix/shadow", &json!({"version": 1, "events": 10})).await;
    assert_eq!(status, 429, "{body}");
    drop(export.text().await.unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, body) =
            app.post(ADMIN_TOKEN, "/v1/plugins/customer-prefix/shadow", &json!({"version": 1, "events": 10})).await;
        if status == 200 {
            assert_eq!(body["events"], 10, "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_queued_behind_a_tenants_own_are_held_to_its_plugin_time_too() {
    // 50 ms of plugin time per second (100 ms at once); one plugin worker
    // for the tenant, so its batches queue behind each other.
    let app = spawn_app_with(|s| {
        s.tenant_plugin_ms_per_sec = 50;
        s.plugin_tenant_workers = 1;
    })
    .await;
    let noisy = app.create_tenant("queued").await;
    let settings = json!({"event_names": ["spin.*"], "failure_policy": "skip", "limits": {"deadline_ms": 1500}, "max_consecutive_failures": 1000});
    app.install(&noisy, "spin", "hostile-loop", settings).await;
    // Four at once, all admitted (the tenant is not in debt yet): the first
    // spins 1.5 s; the rest, queued meanwhile, find the tenant in debt when
    // a worker is free, and are refused instead of spinning too.
    let statuses = app.post_at_once(&noisy, "/v1/events", &json!({"event_type": "spin.x"}), 4).await;
    let ran = statuses.iter().filter(|s| **s == 200).count();
    assert!(ran <= 2 && statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_take_their_own_bytes_from_the_byte_rate_before_they_run() {
    // 1 MB/s, 2 MB at once.
    let app = spawn_app_with(|s| {
        s.tenant_bytes_per_sec = 1_000_000;
        s.tenant_bytes_burst = 2_000_000;
    })
    .await;
    let t = app.create_tenant("bytes-at-once").await;
    // Eight requests at once, each storing ~2 MB (its payloads and raw
    // inputs): checked only for debt, all eight ran before any was charged.
    let payload = json!({"blob": "x".repeat(250_000)});
    let body: Value = (0..4).map(|_| json!({"event_type": "big", "event_payload": payload})).collect();
    let statuses = app.post_at_once(&t, "/v1/events", &body, 8).await;
    let stored = statuses.iter().filter(|s| **s == 200).count();
    assert!((1..=3).contains(&stored) && statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_the_service_refuses_as_invalid_are_charged_to_the_byte_rate() {
    // 1 MB/s, 2 MB at once.
    let app = spawn_app_with(|s| {
        s.tenant_bytes_per_sec = 1_000_000;
        s.tenant_bytes_burst = 2_000_000;
    })
    .await;
    let noisy = app.create_tenant("invalid-noisy").await;
    let quiet = app.create_tenant("invalid-quiet").await;
    // 1.5 MB of valid events and one with an unknown field: refused whole
    // with 422, nothing stored, but parsed all the same (RELIABILITY.md,
    // F46: such bodies were free, and 2 connections of them held another
    // tenant's p99 at 58 ms).
    let mut body: Vec<Value> =
        (0..15).map(|_| json!({"event_type": "big", "event_payload": {"p": "x".repeat(100_000)}})).collect();
    body.push(json!({"event_type": "bad", "not_a_field": 1}));
    let body = Value::Array(body);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = app.client.post(app.url("/v1/events")).bearer_auth(&noisy).json(&body).send().await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            let answer: Value = r.json().await.unwrap();
            assert!(answer["detail"].as_str().unwrap().contains("bytes/s"), "{answer}");
            break;
        }
    }
    assert_eq!(statuses.first(), Some(&422), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // Another tenant is not held to it.
    let (status, answer) = app.post_events(&quiet, &json!({"event_type": "small"})).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lineage_is_charged_to_the_byte_rate_and_counted_in_the_storage_quota() {
    // 1 MB/s, 1 MB at once.
    let app = spawn_app_with(|s| {
        s.tenant_bytes_per_sec = 1_000_000;
        s.tenant_bytes_burst = 1_000_000;
    })
    .await;
    let t = app.create_tenant("long-chain").await;
    // Twenty plugins (each event's lineage names all twenty, with their
    // sha256: ~2 KB of lineage per event from a ~30-byte item;
    // RELIABILITY.md, F54: 64 plugins made 11 KB per event, uncharged).
    for i in 0..19 {
        app.install(
            &t,
            &format!("prefix-{i:02}-{}", "x".repeat(40)),
            "customer-prefix",
            json!({"families": ["generic"]}),
        )
        .await;
    }
    let (status, body) = app.put(&t, "/v1/quotas", &json!({"storage_bytes": 100_000_000})).await;
    assert_eq!(status, 200, "{body}");
    let batch: Value = (0..400).map(|i| json!({"event_type": format!("e{i}")})).collect();
    let (status, body) = app.post_events(&t, &batch).await;
    assert_eq!(status, 200, "{body}");
    // The storage quota counts the lineage: ~800 KB for 400 events.
    let (_, shown) = app.get(&t, "/v1/quotas").await;
    let used = shown["storage_bytes"]["used"].as_i64().unwrap();
    assert!(used > 400 * 1_500, "{used} bytes counted for 400 events of twenty plugins: {shown}");
    // ...and so does the byte rate: the next batch finds the tenant in debt.
    let (status, body) = app.post_events(&t, &batch).await;
    assert_eq!(status, 200, "admitted on what is left of the burst: {body}");
    let (status, body) = app.post_events(&t, &batch).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("bytes/s"), "{body}");
}
