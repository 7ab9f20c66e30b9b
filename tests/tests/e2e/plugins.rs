//! The shipped plugins, uploads, settings and restarts.

use serde_json::{json, Value};
use sluice_e2e::{plugin_wasm, spawn_app, spawn_app_in, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread")]
async fn customer_prefix_rewrites_names_with_lineage_and_never_double_prefixes() {
    let app = spawn_app().await;
    let view = app.install(ADMIN_TOKEN, "prefix", "customer-prefix", Value::Null).await;
    assert_eq!(view["version"], 1);
    let sha = view["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha.len(), 64);

    let (status, body) = app
        .post_events(ADMIN_TOKEN, &json!([{"event_type": "match.started"}, {"event_type": "customer.already"}]))
        .await;
    assert_eq!(status, 200, "{body}");
    let events = app.all_events(ADMIN_TOKEN, "").await;
    let names: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(names, ["customer.already", "customer.match.started"]);
    assert_eq!(events[1]["lineage"], json!([{"plugin": "prefix", "version": 1, "sha256": sha}]));

    // The rule is configurable: only events from source "game".
    let (status, body) = app
        .patch(
            ADMIN_TOKEN,
            "/v1/plugins/prefix",
            &json!({"config": {"match": {"source": ["game"]}, "prefix": "cust:"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.post_events(
        ADMIN_TOKEN,
        &json!([{"event_type": "e1", "source": "game"}, {"event_type": "e2", "source": "ops"}]),
    )
    .await;
    let names: Vec<String> = app.all_events(ADMIN_TOKEN, "").await[..2]
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["e2", "cust:e1"]);

    let (status, body) = app.patch(ADMIN_TOKEN, "/v1/plugins/prefix", &json!({"config": {"prefix": 3}})).await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["body", "config"]));
    assert!(body["detail"][0]["msg"].as_str().unwrap().contains("prefix must be a non-empty string"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_guard_rejects_with_field_level_errors() {
    let app = spawn_app().await;
    let rules = json!({"rules": [
        {"field": "session_id", "required": true, "max_length": 8},
        {"field": "status", "enum": ["success", "failure"]},
        {"field": "event_payload.email", "pattern": "^[^@]+@[^@]+$"}
    ]});
    app.install(ADMIN_TOKEN, "schema-guard", "schema-guard", json!({"config": rules})).await;
    let (status, body) = app
        .post_events(
            ADMIN_TOKEN,
            &json!([
                {"event_type": "ok", "session_id": "s1", "event_payload": {"email": "a@b"}},
                {"event_type": "bad", "status": "maybe", "event_payload": {"email": "nope"}}
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "stored");
    let rejected = &body["results"][1];
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["error"]["code"], "invalid_field");
    assert_eq!(rejected["error"]["field"], "session_id");
    let message = rejected["error"]["message"].as_str().unwrap();
    assert!(message.contains("session_id: field required"), "{message}");
    assert!(message.contains("status: must be one of"), "{message}");
    assert!(message.contains("event_payload.email: does not match pattern"), "{message}");

    // All events refused: the request fails in the 422 shape, naming the field.
    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "bad"})).await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["body", 0, "session_id"]));
    assert_eq!(app.all_events(ADMIN_TOKEN, "").await.len(), 1);

    let (status, body) = app
        .patch(ADMIN_TOKEN, "/v1/plugins/schema-guard", &json!({"config": {"rules": [{"field": "x", "pattern": "("}]}}))
        .await;
    assert_eq!(status, 422);
    assert!(body["detail"][0]["msg"].as_str().unwrap().contains("config.rules[0].pattern"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pii_redact_hashes_fields_consistently_and_geo_enrich_adds_location() {
    let app = spawn_app().await;
    app.install(
        ADMIN_TOKEN,
        "geo",
        "geo-enrich",
        json!({"position": 0, "config": {"table": [
            {"cidr": "81.2.0.0/16", "country": "GB"},
            {"cidr": "81.2.69.0/24", "country": "GB", "city": "London"}
        ]}}),
    )
    .await;
    app.install(
        ADMIN_TOKEN,
        "pii",
        "pii-redact",
        json!({"position": 10, "config": {"key": "k1", "fields": ["event_payload.email", "ip_address", "actor_id"]}}),
    )
    .await;
    let event = |n: i64| {
        json!({"event_type": "login", "task_id": n, "actor_id": "alice", "ip_address": "81.2.69.160",
               "event_payload": {"email": "alice@example.com", "keep": "me"}})
    };
    let (status, body) = app.post_events(ADMIN_TOKEN, &json!([event(1), event(2)])).await;
    assert_eq!(status, 200, "{body}");
    let events = app.all_events(ADMIN_TOKEN, "").await;
    let (a, b) = (&events[0], &events[1]);
    let email = a["event_payload"]["email"].as_str().unwrap();
    assert!(email.starts_with("hmac:") && email.len() == 37, "{email}");
    assert_ne!(email, "alice@example.com");
    assert_eq!(a["event_payload"]["email"], b["event_payload"]["email"], "same input, same hash: joinable");
    assert_eq!(a["event_payload"]["keep"], "me");
    assert!(a["ip_address"].as_str().unwrap().starts_with("hmac:"));
    assert!(a["actor_id"].as_str().unwrap().starts_with("hmac:"));
    // geo-enrich ran first (position 0), on the clear address.
    assert_eq!(a["event_payload"]["geo"], json!({"country": "GB", "city": "London"}));
    let lineage: Vec<&str> = a["lineage"].as_array().unwrap().iter().map(|s| s["plugin"].as_str().unwrap()).collect();
    assert_eq!(lineage, ["geo", "pii"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_uploads_are_refused_with_the_exact_problem() {
    let app = spawn_app().await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("random", b"hello, world".to_vec(), "not a WebAssembly binary"),
        ("core", b"\0asm\x01\0\0\0".to_vec(), "core WebAssembly module, not a component"),
        ("truncated", plugin_wasm("customer-prefix")[..4000].to_vec(), "invalid component"),
        ("net", plugin_wasm("hostile-network"), "import `wasi:sockets/"),
    ];
    for (name, bytes, expected) in cases {
        let (status, body) = app.upload_bytes(ADMIN_TOKEN, name, bytes).await;
        assert_eq!(status, 422, "{name}: {body}");
        let msg = body["detail"][0]["msg"].as_str().unwrap();
        assert!(msg.contains(expected), "{name}: {msg}");
    }
    let (status, _) = app.upload_bytes(ADMIN_TOKEN, "Bad Name", plugin_wasm("customer-prefix")).await;
    assert_eq!(status, 422);
    let (status, body) = app.upload_bytes(ADMIN_TOKEN, "big", vec![0; 17 << 20]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(app.plugin_names(ADMIN_TOKEN).await, [sluice_e2e::SHIPPED], "nothing installed");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_and_events_survive_a_restart_and_versions_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let app = spawn_app_in(dir.path()).await;
        app.install(ADMIN_TOKEN, "prefix", "customer-prefix", json!({"families": ["generic"]})).await;
        let (status, body) = app.upload_bytes(ADMIN_TOKEN, "prefix", plugin_wasm("customer-prefix")).await;
        assert_eq!(status, 200, "same bytes again: {body}");
        assert_eq!(body["version"], 1, "content-addressed");
        app.post_events(ADMIN_TOKEN, &json!({"event_type": "before"})).await;
    }
    let artifacts = std::fs::read_dir(dir.path().join("plugins")).unwrap().count();
    assert_eq!(artifacts, 2, "component and its precompiled artifact");
    let app = spawn_app_in(dir.path()).await;
    app.post_events(ADMIN_TOKEN, &json!({"event_type": "after"})).await;
    let names: Vec<String> =
        app.all_events(ADMIN_TOKEN, "").await.iter().map(|e| e["event_type"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["customer.after", "customer.before"]);
    assert_eq!(app.plugin(ADMIN_TOKEN, "prefix").await["families"], json!(["generic"]));
    let (status, versions) = app.get(ADMIN_TOKEN, "/v1/plugins/prefix/versions").await;
    assert_eq!(status, 200);
    assert_eq!(versions["items"].as_array().unwrap().len(), 1);

    // Scope: a plugin limited to another family leaves generic events alone.
    let (status, _) = app.patch(ADMIN_TOKEN, "/v1/plugins/prefix", &json!({"families": ["session-audit"]})).await;
    assert_eq!(status, 200);
    app.post_events(ADMIN_TOKEN, &json!({"event_type": "scoped"})).await;
    assert_eq!(app.all_events(ADMIN_TOKEN, "").await[0]["event_type"], "scoped");
    let (status, body) = app.patch(ADMIN_TOKEN, "/v1/plugins/prefix", &json!({"limits": {"deadline_ms": 0}})).await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["body", "limits", "deadline_ms"]));
    let (status, body) = app.patch(ADMIN_TOKEN, "/v1/plugins/prefix", &json!({"failure_policy": "explode"})).await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["body", "failure_policy"]), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_settings_and_a_tenants_components_are_bounded_and_listings_leave_configs_out() {
    let app = sluice_e2e::spawn_app_with(|s| s.tenant_plugin_bytes = 500_000).await;
    let t = app.create_tenant("bounded-plugins").await;
    app.install(&t, "small", "customer-prefix", json!({"config": {"prefix": "c."}})).await;
    // Settings over 1 MiB are refused, at upload and at a change.
    let big = json!({"config": {"prefix": "c.", "table": "x".repeat(1_100_000)}});
    let (status, body) = app.patch(&t, "/v1/plugins/small", &big).await;
    assert_eq!(status, 422, "{}", &body.to_string()[..200.min(body.to_string().len())]);
    assert_eq!(body["detail"][0]["loc"][1], "config", "{body}");
    let (status, _) = app.upload_with_manifest(&t, "large", plugin_wasm("customer-prefix"), &big).await;
    assert_eq!(status, 422);
    // The listing gives each config's size; the plugin's own view has it.
    let (_, list) = app.get(&t, "/v1/plugins").await;
    let small = list["items"].as_array().unwrap().iter().find(|p| p["name"] == "small").unwrap().clone();
    assert!(
        small.get("config").is_none() && small["config_bytes"] == json!({"prefix": "c."}).to_string().len(),
        "{small}"
    );
    let (_, view) = app.get(&t, "/v1/plugins/small").await;
    assert_eq!(view["config"], json!({"prefix": "c."}));
    // Components: the shipped one (~220 kB) and geo-enrich (~240 kB) fit
    // in 500 kB, the same bytes again take no more room, a third does not fit.
    let geo = json!({"config": {"table": []}});
    let (status, body) = app.upload_with_manifest(&t, "geo", plugin_wasm("geo-enrich"), &geo).await;
    assert!(status == 200 || status == 201, "{body}");
    let (status, body) = app.upload_with_manifest(&t, "geo-again", plugin_wasm("geo-enrich"), &geo).await;
    assert!(status == 200 || status == 201, "{body}");
    let (status, body) = app.upload_bytes(&t, "pii", plugin_wasm("pii-redact")).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("SLUICE_TENANT_PLUGIN_BYTES"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_without_compiled_artifacts_compiles_from_the_stored_component_and_checks_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let sha = {
        let app = spawn_app_in(dir.path()).await;
        let view = app.install(ADMIN_TOKEN, "prefix", "customer-prefix", json!({"families": ["generic"]})).await;
        view["sha256"].as_str().unwrap().to_string()
    };
    let forget_compiled = || {
        for entry in std::fs::read_dir(&plugins).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "cwasm") {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    };
    // The host's cache of compiled plugins is gone: the component is
    // fetched from the store and compiled again.
    forget_compiled();
    {
        let app = spawn_app_in(dir.path()).await;
        app.post_events(ADMIN_TOKEN, &json!({"event_type": "recompiled"})).await;
        assert_eq!(app.all_events(ADMIN_TOKEN, "").await[0]["event_type"], "customer.recompiled");
    }
    assert!(plugins.join(format!("{sha}.cwasm")).exists(), "compiled again and cached");
    // A stored component that is not the one its digest names is not run.
    forget_compiled();
    std::fs::write(plugins.join(format!("{sha}.wasm")), plugin_wasm("hostile-escape")).unwrap();
    let app = spawn_app_in(dir.path()).await;
    app.post_events(ADMIN_TOKEN, &json!({"event_type": "tampered"})).await;
    assert_eq!(app.all_events(ADMIN_TOKEN, "").await[0]["event_type"], "tampered", "the plugin was not loaded");
    assert!(!plugins.join(format!("{sha}.cwasm")).exists(), "nothing compiled from the wrong bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_whose_init_refuses_its_config_records_no_version() {
    let app = spawn_app().await;
    let bytes = plugin_wasm("customer-prefix");
    let (status, body) =
        app.upload_with_manifest(ADMIN_TOKEN, "p1", bytes.clone(), &json!({"config": {"prefix": 3}})).await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = app.get(ADMIN_TOKEN, "/v1/plugins/p1/versions").await;
    assert_eq!(status, 404, "nothing installed, nothing recorded");
    // With a config it accepts, the plugin is installed at version 1.
    let (status, body) = app.upload_with_manifest(ADMIN_TOKEN, "p1", bytes, &json!({"config": {"prefix": "c."}})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 1, "{body}");
    let (_, versions) = app.get(ADMIN_TOKEN, "/v1/plugins/p1/versions").await;
    assert_eq!(versions["items"].as_array().unwrap().len(), 1, "{versions}");
}
