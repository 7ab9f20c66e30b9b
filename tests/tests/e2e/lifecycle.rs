//! Plugin lifecycle: versions and rollback, removal, scoping, dry runs and
//! hot swaps under load.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};
use sluice_e2e::{plugin_wasm, spawn_app, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread")]
async fn versions_roll_back_and_removal_keeps_lineage() {
    let app = spawn_app().await;
    app.install(ADMIN_TOKEN, "p", "customer-prefix", Value::Null).await;
    let (status, v2) = app.upload_bytes(ADMIN_TOKEN, "p", plugin_wasm("hostile-escape")).await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["version"], 2);
    app.post_events(ADMIN_TOKEN, &json!({"event_type": "with.v2"})).await;
    assert_eq!(app.all_events(ADMIN_TOKEN, "").await[0]["event_type"], "with.v2", "v2 does not prefix");

    let (status, view) = app.post(ADMIN_TOKEN, "/v1/plugins/p/rollback", &json!({})).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["version"], 1);
    app.post_events(ADMIN_TOKEN, &json!({"event_type": "with.v1"})).await;
    let latest = &app.all_events(ADMIN_TOKEN, "").await[0];
    assert_eq!(latest["event_type"], "customer.with.v1");
    assert_eq!(latest["lineage"][0]["version"], 1);
    let (status, _) = app.post(ADMIN_TOKEN, "/v1/plugins/p/rollback", &json!({"version": 9})).await;
    assert_eq!(status, 404);

    let r = app.client.delete(app.url("/v1/plugins/p")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(app.plugin_names(ADMIN_TOKEN).await, [sluice_e2e::SHIPPED]);
    let (status, versions) = app.get(ADMIN_TOKEN, "/v1/plugins/p/versions").await;
    assert_eq!(status, 200);
    assert_eq!(versions["items"].as_array().unwrap().len(), 2, "versions stay after removal");
    let events = app.all_events(ADMIN_TOKEN, "").await;
    assert_eq!(events[0]["lineage"][0]["plugin"], "p", "lineage of processed events stays readable");
    app.post_events(ADMIN_TOKEN, &json!({"event_type": "after.removal"})).await;
    assert_eq!(app.all_events(ADMIN_TOKEN, "").await[0]["event_type"], "after.removal");
}

#[tokio::test(flavor = "multi_thread")]
async fn scope_by_event_name_glob_and_source() {
    let app = spawn_app().await;
    app.install(ADMIN_TOKEN, "p", "customer-prefix", json!({"event_names": ["match.*"], "sources": ["game"]})).await;
    let batch = json!([
        {"event_type": "match.start", "source": "game"},
        {"event_type": "match.start", "source": "ops"},
        {"event_type": "login", "source": "game"}
    ]);
    app.post_events(ADMIN_TOKEN, &batch).await;
    let mut names: Vec<String> =
        app.all_events(ADMIN_TOKEN, "").await.iter().map(|e| e["event_type"].as_str().unwrap().to_string()).collect();
    names.sort();
    assert_eq!(names, ["customer.match.start", "login", "match.start"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_runs_report_outcomes_logs_time_and_fuel_and_store_nothing() {
    let app = spawn_app().await;
    app.install(
        ADMIN_TOKEN,
        "guard",
        "schema-guard",
        json!({"position": 0, "config": {"rules": [{"field": "session_id", "required": true}]}}),
    )
    .await;
    app.install(ADMIN_TOKEN, "prefix", "customer-prefix", json!({"position": 10})).await;
    app.install(ADMIN_TOKEN, "boom", "hostile-panic", json!({"enabled": false, "max_consecutive_failures": 1})).await;

    let samples = json!({"events": [{"event_type": "a", "session_id": "s"}, {"event_type": "b"}]});
    let (status, body) = app.post(ADMIN_TOKEN, "/v1/pipeline/test", &samples).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "stored");
    assert_eq!(body["results"][1]["status"], "rejected");
    assert_eq!(body["results"][1]["error"]["field"], "session_id");
    assert_eq!(body["events"][0]["event_type"], "customer.a");
    let runs = body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "the disabled plugin is not in the live chain");
    assert_eq!(runs[0]["plugin"], "guard");
    assert_eq!(runs[0]["events_in"], 2);
    assert_eq!(runs[0]["rejected"], 1);
    assert!(runs[0]["fuel"].as_u64().unwrap() > 0);
    assert!(runs[1]["elapsed_us"].as_i64().unwrap() >= 0);

    // One plugin, even a disabled one, and its failure does not count.
    let (status, body) =
        app.post(ADMIN_TOKEN, "/v1/plugins/boom/test", &json!({"events": [{"event_type": "x"}]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["error"]["code"], "plugin_failed");
    assert_eq!(body["runs"][0]["fault"], "panic");
    let (_, boom) = app.get(ADMIN_TOKEN, "/v1/plugins/boom").await;
    assert_eq!(boom["consecutive_failures"], 0);
    assert_eq!(boom["state"], "disabled");

    assert!(app.all_events(ADMIN_TOKEN, "").await.is_empty(), "dry runs store nothing");
    let (_, runs) = app.post(ADMIN_TOKEN, "/v1/query", &json!({"sql": "SELECT count(*) FROM plugin_runs"})).await;
    assert_eq!(runs["rows"][0][0], 0);

    let (status, _) = app.post(ADMIN_TOKEN, "/v1/plugins/nope/test", &samples).await;
    assert_eq!(status, 404);
    let (status, _) = app.post(ADMIN_TOKEN, "/v1/pipeline/test", &json!({"events": []})).await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn chain_changes_under_load_apply_atomically_per_batch() {
    let app = spawn_app().await;
    app.install(ADMIN_TOKEN, "p", "customer-prefix", json!({"config": {"prefix": "v0."}})).await;
    let writers = (0..4).map(|w| {
        let app = &app;
        async move {
            for r in 0..15 {
                let batch: Vec<Value> =
                    (0..20).map(|i| json!({"event_type": "e", "id": format!("w{w}-r{r}-{i}")})).collect();
                let (status, body) = app.post_events(ADMIN_TOKEN, &Value::Array(batch)).await;
                assert_eq!(status, 200, "{body}");
            }
        }
    });
    let swapper = async {
        for v in 1..=6 {
            tokio::time::sleep(std::time::Duration::from_millis(15)).await;
            let (status, body) =
                app.patch(ADMIN_TOKEN, "/v1/plugins/p", &json!({"config": {"prefix": format!("v{v}.")}})).await;
            assert_eq!(status, 200, "{body}");
        }
    };
    tokio::join!(futures_util::future::join_all(writers), swapper);

    let events = app.all_events(ADMIN_TOKEN, "").await;
    assert_eq!(events.len(), 4 * 15 * 20, "no event lost");
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "no event stored twice");
    let mut prefix_of_request: HashMap<String, HashSet<String>> = HashMap::new();
    for e in &events {
        let name = e["event_type"].as_str().unwrap();
        let (prefix, rest) = name.split_once('.').unwrap();
        assert_eq!(rest, "e", "processed by exactly one chain version: {name}");
        assert_eq!(e["lineage"].as_array().unwrap().len(), 1);
        let id = e["id"].as_str().unwrap();
        let request = id.rsplit_once('-').unwrap().0.to_string();
        prefix_of_request.entry(request).or_default().insert(prefix.to_string());
    }
    assert!(prefix_of_request.values().all(|p| p.len() == 1), "a batch runs on one chain");
    let used: HashSet<&String> = prefix_of_request.values().flatten().collect();
    assert!(used.len() > 1, "the swaps happened while events flowed: {used:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_replay_through_the_current_chain_exactly_once() {
    let app = spawn_app().await;
    app.install(
        ADMIN_TOKEN,
        "picky",
        "hostile-panic",
        json!({"failure_policy": "dead-letter", "config": {"only_name": "bad"}, "max_consecutive_failures": 100}),
    )
    .await;
    // Sent as text: its payload's keys in the client's order, and a custom
    // attribute named like a core field (kept apart from it).
    let batch = r#"[
        {"event_type": "bad", "id": "b-1", "created_at": "2026-05-01T00:00:00Z", "status": "failed",
         "attributes": {"status": "an attribute", "zone": "eu"}, "event_payload": {"z": 1, "a": [2]}},
        {"event_type": "good", "id": "g-1"}
    ]"#;
    let (status, body) = app.post_text(ADMIN_TOKEN, "/v1/events", "application/json", batch).await;
    assert_eq!(status, 200, "{body}");
    // The whole batch failed in the plugin, so both went to dead letters.
    assert_eq!(body["dead_lettered"], 2);
    let (_, letters) = app.get(ADMIN_TOKEN, "/v1/dead-letters").await;
    assert_eq!(letters["items"].as_array().unwrap().len(), 2);

    // Fix the configuration, then replay one by id and the rest with all.
    app.patch(ADMIN_TOKEN, "/v1/plugins/picky", &json!({"config": {"only_name": "nothing"}})).await;
    let first = letters["items"][0]["dead_letter_id"].clone();
    let (status, body) = app.post(ADMIN_TOKEN, "/v1/dead-letters/replay", &json!({"ids": [first]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 1);
    let (_, body) = app.post(ADMIN_TOKEN, "/v1/dead-letters/replay", &json!({"all": true})).await;
    assert_eq!(body["replayed"], 1);
    assert_eq!(body["results"][0]["status"], "stored");
    let (_, body) = app.post(ADMIN_TOKEN, "/v1/dead-letters/replay", &json!({"all": true})).await;
    assert_eq!(body["replayed"], 0, "replayed letters are gone");

    let events = app.all_events(ADMIN_TOKEN, "").await;
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["b-1", "g-1"]);
    let bad = events.iter().find(|e| e["id"] == "b-1").unwrap();
    assert_eq!(bad["created_at"], "2026-05-01T00:00:00.000000Z", "the original event, not a copy");
    assert_eq!(bad["lineage"][0]["plugin"], "picky");
    // A dead letter keeps the canonical event: what is stored after its
    // replay is what was sent, to the payload's bytes.
    assert_eq!(bad["status"], "failed");
    let sql = "SELECT event_payload, attributes, raw FROM events WHERE id = 'b-1'";
    let (status, rows) = app.post(ADMIN_TOKEN, "/v1/query", &json!({"sql": sql})).await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows["rows"][0][0], r#"{"z": 1, "a": [2]}"#);
    assert_eq!(rows["rows"][0][1], r#"{"status":"an attribute","zone":"eu"}"#);
    assert!(rows["rows"][0][2].as_str().unwrap().contains(r#""event_payload": {"z": 1, "a": [2]}"#), "{rows}");
    let (status, _) = app.post(ADMIN_TOKEN, "/v1/dead-letters/replay", &json!({})).await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_plugin_calls_outcomes_and_traps() {
    let app = spawn_app().await;
    let other = app.create_tenant("metrics-tenant").await;
    app.install(ADMIN_TOKEN, "metered", "customer-prefix", Value::Null).await;
    app.install(&other, "metered-boom", "hostile-panic", json!({"max_consecutive_failures": 100})).await;
    app.post_events(ADMIN_TOKEN, &json!([{"event_type": "a"}, {"event_type": "b"}])).await;
    app.post_events(&other, &json!({"event_type": "c"})).await;

    let r = app.client.get(app.url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
    assert_eq!(
        line(r#"sluice_plugin_invocations_total{tenant="default",plugin="metered",version="1"}"#).as_deref(),
        Some(r#"sluice_plugin_invocations_total{tenant="default",plugin="metered",version="1"} 1"#),
        "{text}"
    );
    assert!(line(r#"sluice_plugin_events_kept_total{tenant="default",plugin="metered",version="1"} 2"#).is_some());
    assert!(line(
        r#"sluice_plugin_traps_total{tenant="metrics-tenant",plugin="metered-boom",version="1",reason="panic"} 1"#
    )
    .is_some());
    assert!(line(r#"sluice_plugin_call_seconds_bucket{tenant="default",plugin="metered""#).is_some());
    assert!(line("sluice_ingest_events_total").is_some());
    assert!(line("sluice_store_commit_seconds_bucket").is_some());

    let r = app.client.get(app.url("/metrics")).bearer_auth(&other).send().await.unwrap();
    assert_eq!(r.status(), 403, "tenants do not see each other's metrics");
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_runs_diff_a_candidate_against_what_was_stored() {
    let app = spawn_app().await;
    app.install(ADMIN_TOKEN, "p", "customer-prefix", Value::Null).await;
    let batch = json!([
        {"event_type": "kept", "http_status": 200, "event_payload": {"a": 1}},
        {"event_type": "customer.already"},
        {"event_type": "third", "task_id": 3}
    ]);
    app.post_events(ADMIN_TOKEN, &batch).await;
    // Version 2 rewrites payloads; version 3 requires a session id.
    app.upload_bytes(ADMIN_TOKEN, "p", plugin_wasm("hostile-escape")).await;
    let rules = json!({"config": {"rules": [{"field": "session_id", "required": true}]}});
    let (status, body) = app.upload_with_manifest(ADMIN_TOKEN, "p", plugin_wasm("schema-guard"), &rules).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.post(ADMIN_TOKEN, "/v1/plugins/p/rollback", &json!({"version": 1})).await;
    assert_eq!(status, 200, "{body}");

    let shadow = |version: u32| {
        let body = json!({"version": version, "events": 10});
        let app = &app;
        async move { app.post(ADMIN_TOKEN, "/v1/plugins/p/shadow", &body).await }
    };
    let (status, report) = shadow(1).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!((report["inputs"].as_u64(), report["unchanged"].as_u64()), (Some(3), Some(3)), "{report}");

    let (_, report) = shadow(2).await;
    assert_eq!(report["candidate_version"], 2);
    assert_eq!(report["changed"], 3, "{report}");
    let diff = &report["diffs"][0];
    assert_eq!(diff["kind"], "changed");
    assert!(diff["candidate"][0]["event_payload"]["escape"].is_object());
    assert_eq!(
        diff["candidate"][0]["event_type"],
        diff["stored"][0]["event_type"].as_str().unwrap().trim_start_matches("customer.")
    );

    let (_, report) = shadow(3).await;
    assert_eq!(report["rejected"], 3, "{report}");
    assert_eq!(report["diffs"][0]["outcome"]["error"]["field"], "session_id");

    assert_eq!(app.all_events(ADMIN_TOKEN, "").await.len(), 3, "shadow runs store nothing");
    let (status, _) = shadow(9).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_runs_replay_every_family_including_fan_out() {
    let app = spawn_app().await;
    let players = json!(["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"]);
    let (status, _) = app
        .post(ADMIN_TOKEN, "/session/v1/audit", &json!({"event_name": "x", "session_id": "s", "players": players}))
        .await;
    assert_eq!(status, 200);
    app.post(ADMIN_TOKEN, "/logs", &json!({"level": "info", "message": "m"})).await;
    app.post(ADMIN_TOKEN, "/iam/v1/events", &json!({"name": "iam.auth.logout", "userId": "u"})).await;
    app.post(
        ADMIN_TOKEN,
        "/v1beta1/organizations/default/auditlogs",
        &json!({"logs": [{"source": "s", "action": "a.b"}]}),
    )
    .await;
    let (status, report) = app.post(ADMIN_TOKEN, "/v1/plugins/customer-prefix/shadow", &json!({"version": 1})).await;
    assert_eq!(status, 200, "{report}");
    // One input per request item, and per player of a session fan-out
    // (each player's event keeps the request naming that player).
    assert_eq!(report["inputs"], 5, "{report}");
    assert_eq!(report["unsupported"], 0);
    assert_eq!(report["unchanged"], 5, "{report}");
    // A candidate that rewrites payloads changes both players' events.
    app.upload_bytes(ADMIN_TOKEN, "customer-prefix", plugin_wasm("hostile-escape")).await;
    let (_, report) = app.post(ADMIN_TOKEN, "/v1/plugins/customer-prefix/shadow", &json!({"version": 2})).await;
    assert_eq!((report["changed"].as_u64(), report["unchanged"].as_u64()), (Some(2), Some(3)), "{report}");
    assert_eq!(report["diffs"][0]["candidate"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_replayed_twice_at_once_is_stored_once() {
    let app = spawn_app().await;
    app.install(
        ADMIN_TOKEN,
        "picky",
        "hostile-panic",
        json!({"failure_policy": "dead-letter", "config": {"only_name": "bad"}, "max_consecutive_failures": 1000}),
    )
    .await;
    let batch: Vec<Value> = (0..50).map(|i| json!({"event_type": "bad", "id": format!("twice-{i}")})).collect();
    let (status, body) = app.post_events(ADMIN_TOKEN, &Value::Array(batch)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dead_lettered"], 50);
    app.patch(ADMIN_TOKEN, "/v1/plugins/picky", &json!({"config": {"only_name": "nothing"}})).await;
    // Several replays of all letters at once: each letter is stored once,
    // whichever replay takes it; a replay that lost a letter is refused
    // whole (409) and stores nothing.
    let replays: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("/v1/dead-letters/replay"));
            tokio::spawn(async move {
                let r = client.post(url).bearer_auth(ADMIN_TOKEN).json(&json!({"all": true})).send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut replayed = 0;
    for task in replays {
        let (status, body) = task.await.unwrap();
        match status {
            200 => replayed += body["replayed"].as_i64().unwrap(),
            409 => {}
            other => panic!("replay answered {other}: {body}"),
        }
    }
    assert_eq!(replayed, 50, "every letter replayed once");
    let events = app.all_events(ADMIN_TOKEN, "").await;
    assert_eq!(events.len(), 50, "each stored once");
    let (_, letters) = app.get(ADMIN_TOKEN, "/v1/dead-letters").await;
    assert_eq!(letters["items"].as_array().unwrap().len(), 0);
}
