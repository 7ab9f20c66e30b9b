//! Two tenants over every endpoint: no token reads or writes another
//! tenant's events, plugins, tokens, dead letters, logs or query results.

use serde_json::{json, Value};
use sluice_e2e::{plugin_wasm, spawn_app, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread")]
async fn no_endpoint_crosses_tenants() {
    let app = spawn_app().await;
    let a = app.create_tenant("alpha").await;
    let b = app.create_tenant("bravo").await;
    // Bravo's data: events, a plugin that dead-letters, a log line, a token.
    app.install(
        &b,
        "bravo-only",
        "hostile-panic",
        json!({"failure_policy": "dead-letter", "config": {"only_name": "dl"}}),
    )
    .await;
    let (_, stored) = app.post_events(&b, &json!([{"event_type": "bravo.secret", "id": "b-1"}])).await;
    assert_eq!(stored["stored"], 1, "{stored}");
    app.post_events(&b, &json!({"event_type": "dl"})).await;
    app.post(&b, "/logs", &json!({"level": "info", "message": "bravo log"})).await;
    let (_, bravo_token) = app.post(&b, "/v1/tokens", &json!({"name": "bt", "scopes": ["events:read"]})).await;
    let (_, bravo_page) = app.get(&b, "/v1/audit/events?limit=1").await;
    let bravo_cursor = bravo_page["next_cursor"].as_str().unwrap().to_string();
    let (_, bravo_letters) = app.get(&b, "/v1/dead-letters").await;
    let bravo_letter = bravo_letters["items"][0]["dead_letter_id"].clone();
    // Alpha's own event.
    app.post_events(&a, &json!({"event_type": "alpha.own"})).await;

    let names =
        |events: &Vec<Value>| events.iter().map(|e| e["event_type"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(names(&app.all_events(&a, "").await), ["alpha.own"]);
    let (status, _) = app.get(&a, "/v1/audit/events/b-1").await;
    assert_eq!(status, 404);
    let (status, _) = app.get(&a, &format!("/v1/audit/events?cursor={bravo_cursor}")).await;
    assert_eq!(status, 422, "another tenant's cursor is refused");

    for path in ["/v1/plugins/bravo-only", "/v1/plugins/bravo-only/versions"] {
        let (status, _) = app.get(&a, path).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = app.patch(&a, "/v1/plugins/bravo-only", &json!({"enabled": false})).await;
    assert_eq!(status, 404);
    for path in ["/v1/plugins/bravo-only/rollback", "/v1/plugins/bravo-only/shadow"] {
        let (status, _) = app.post(&a, path, &json!({})).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = app.post(&a, "/v1/plugins/bravo-only/test", &json!({"events": [{"event_type": "x"}]})).await;
    assert_eq!(status, 404);
    let r = app.client.delete(app.url("/v1/plugins/bravo-only")).bearer_auth(&a).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let (_, logs) = app.get(&a, "/v1/plugins/bravo-only/logs").await;
    assert_eq!(logs["items"], json!([]));
    assert!(!app.plugin_names(&a).await.contains(&"bravo-only".to_string()));
    // Alpha uploading a plugin of the same name makes its own.
    app.upload_bytes(&a, "bravo-only", plugin_wasm("customer-prefix")).await;
    assert_eq!(app.plugin(&b, "bravo-only").await["version"], 1, "bravo's plugin untouched");

    let (_, letters) = app.get(&a, "/v1/dead-letters").await;
    assert_eq!(letters["items"], json!([]));
    let (_, replay) = app.post(&a, "/v1/dead-letters/replay", &json!({"ids": [bravo_letter]})).await;
    assert_eq!(replay["replayed"], 0);
    let (_, letters) = app.get(&b, "/v1/dead-letters").await;
    assert_eq!(letters["items"].as_array().unwrap().len(), 1, "bravo's dead letter is still there");

    for sql in [
        "SELECT count(*) FROM events",
        "SELECT count(*) FROM dead_letters",
        "SELECT count(*) FROM plugin_logs",
        "SELECT count(*) FROM plugin_runs WHERE plugin = 'bravo-only'",
        "SELECT count(*) FROM events WHERE event_type LIKE 'bravo%' OR id = 'b-1'",
    ] {
        let (status, body) = app.post(&a, "/v1/query", &json!({"sql": sql})).await;
        assert_eq!(status, 200, "{sql}: {body}");
        let expected = if sql == "SELECT count(*) FROM events" { 1 } else { 0 };
        assert_eq!(body["rows"][0][0], expected, "{sql}");
    }
    let export = app.client.get(app.url("/v1/export")).bearer_auth(&a).send().await.unwrap().text().await.unwrap();
    assert_eq!(export.lines().count(), 1);
    assert!(!export.contains("bravo"));

    let (_, tokens) = app.get(&a, "/v1/tokens").await;
    assert!(tokens["items"].as_array().unwrap().iter().all(|t| t["tenant"] == "alpha"));
    let r = app
        .client
        .delete(app.url(&format!("/v1/tokens/{}", bravo_token["id"].as_str().unwrap())))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (status, _) = app.get(bravo_token["token"].as_str().unwrap(), "/v1/audit/events").await;
    assert_eq!(status, 200, "bravo's token still works");
    let (status, _) =
        app.post(&a, "/v1/tokens", &json!({"name": "x", "scopes": ["events:read"], "tenant": "bravo"})).await;
    assert_eq!(status, 403, "no tokens for another tenant");

    let (status, _) = app
        .post(&a, "/v1beta1/organizations/bravo/auditlogs", &json!({"logs": [{"source": "s", "action": "a"}]}))
        .await;
    assert_eq!(status, 403);
    let (_, logs) = app.get(&a, "/logs").await;
    assert_eq!(logs["data"], json!([]));
    app.put(&a, "/v1/quotas", &json!({"events_per_day": 0, "storage_bytes": null})).await;
    let (status, _) = app.post(&b, "/logs", &json!({"level": "info", "message": "still fine"})).await;
    assert_eq!(status, 201, "alpha's quota does not bind bravo");
    app.put(&a, "/v1/retention", &json!({"days": 1})).await;
    let (_, retention) = app.get(&b, "/v1/retention").await;
    assert_eq!(retention["days"], Value::Null);
    let r = app.client.get(app.url("/metrics")).bearer_auth(&a).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let (status, _) = app.post(&a, "/v1/tenants", &json!({"id": "charlie"})).await;
    assert_eq!(status, 403);
    // And the operator's own view is unaffected.
    assert!(app.all_events(ADMIN_TOKEN, "").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_get_413_in_each_familys_shape() {
    let app = sluice_e2e::spawn_app_with(|s| s.max_body_bytes = 4096).await;
    let big = json!({"event_type": "x", "event_payload": {"blob": "x".repeat(8192)}});
    for (path, check) in [
        ("/v1/events", "detail"),
        ("/iam/v1/events", "detail"),
        ("/session/v1/audit", "error_code"),
        ("/v1beta1/organizations/default/auditlogs", "code"),
        ("/logs", "error"),
    ] {
        let (status, body) = app.post(ADMIN_TOKEN, path, &big).await;
        assert_eq!(status, 413, "{path}: {body}");
        assert!(!body[check].is_null(), "{path}: {body}");
    }
    let batch: Vec<Value> = (0..20).map(|_| json!({"event_type": "x"})).collect();
    let app = sluice_e2e::spawn_app_with(|s| s.max_batch_events = 10).await;
    let (status, body) = app.post_events(ADMIN_TOKEN, &Value::Array(batch)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("the limit is 10"));
}

#[tokio::test(flavor = "multi_thread")]
async fn test_mode_tokens_write_to_an_isolated_test_space() {
    let app = spawn_app().await;
    let admin = app.create_tenant("acme").await;
    let scopes = json!(["events:write", "events:read", "query:run", "logs:write", "logs:read"]);
    let (status, test) = app.post(&admin, "/v1/tokens", &json!({"name": "ci", "scopes": scopes, "mode": "test"})).await;
    assert_eq!(status, 201, "{test}");
    let test = test["token"].as_str().unwrap().to_string();
    assert!(test.starts_with("so_test_"));
    let (_, live) = app.post(&admin, "/v1/tokens", &json!({"name": "prod", "scopes": scopes})).await;
    let live = live["token"].as_str().unwrap().to_string();
    assert!(live.starts_with("so_live_"));

    let (status, _) = app.post_events(&live, &json!({"id": "e-1", "event_type": "live.pay"})).await;
    assert_eq!(status, 200);
    // The same id in the test space is another event, not a retry or conflict.
    let (status, body) = app.post_events(&test, &json!({"id": "e-1", "event_type": "test.pay"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["results"][0].get("replayed").is_none());
    // The tenant's plugin chain runs for test events too (customer-prefix).
    let (status, body) =
        app.post(&test, "/session/v1/audit", &json!({"event_name": "kick", "session_id": "s-1"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app.post(&test, "/logs", &json!({"level": "info", "message": "from ci"})).await;
    assert_eq!(status, 201);

    let names = |events: Vec<Value>| -> Vec<String> {
        let mut n: Vec<String> = events.iter().map(|e| e["event_type"].as_str().unwrap().to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(names(app.all_events(&live, "").await), ["live.pay"]);
    assert_eq!(names(app.all_events(&admin, "").await), ["live.pay"], "live tokens never see test data");
    assert_eq!(names(app.all_events(&test, "").await), ["customer.kick", "log.info", "test.pay"]);
    let (_, one) = app.get(&test, "/v1/audit/events/e-1").await;
    assert_eq!(one["event_type"], "test.pay");
    let (_, one) = app.get(&live, "/v1/audit/events/e-1").await;
    assert_eq!(one["event_type"], "live.pay");
    let sql = json!({"sql": "SELECT count(*) FROM events"});
    assert_eq!(app.post(&test, "/v1/query", &sql).await.1["rows"][0][0], 3);
    assert_eq!(app.post(&live, "/v1/query", &sql).await.1["rows"][0][0], 1);
    let (_, logs) = app.get(&live, "/logs").await;
    assert_eq!(logs["data"].as_array().unwrap().len(), 0);
    let (_, logs) = app.get(&test, "/logs").await;
    assert_eq!(logs["data"][0]["message"], "from ci");
    // Nor does another tenant's test token see this one's test space.
    let other = app.create_tenant("other").await;
    let (_, other_test) =
        app.post(&other, "/v1/tokens", &json!({"name": "t", "scopes": ["events:read"], "mode": "test"})).await;
    assert!(app.all_events(other_test["token"].as_str().unwrap(), "").await.is_empty());
}

/// Every kind of token (admin, a narrow live reader, a test-mode reader)
/// of one tenant, against another tenant's live and test data: listings,
/// single events, SQL results and error messages, exports, dead letters,
/// logs and cursors. Zero cross-tenant reads.
#[tokio::test(flavor = "multi_thread")]
async fn no_token_kind_reads_another_tenant_or_space() {
    let app = spawn_app().await;
    let app = &app;
    let alpha = app.create_tenant("alpha").await;
    let bravo = app.create_tenant("bravo").await;
    let scopes = json!(["events:read", "query:run", "logs:read", "logs:write", "events:write"]);
    let scopes = &scopes;
    let token = |admin: &str, mode: &str| {
        let body = json!({"name": format!("{mode}-reader"), "scopes": scopes, "mode": mode});
        let admin = admin.to_string();
        async move {
            let (status, t) = app.post(&admin, "/v1/tokens", &body).await;
            assert_eq!(status, 201, "{t}");
            t["token"].as_str().unwrap().to_string()
        }
    };
    let bravo_test = token(&bravo, "test").await;
    // Bravo's secrets, live and test, two events each so listings page.
    for t in [&bravo, &bravo_test] {
        let secret = json!([{"event_type": "bravo-secret", "id": "b-1"}, {"event_type": "bravo-secret"}]);
        assert_eq!(app.post_events(t, &secret).await.0, 200);
        app.post(t, "/logs", &json!({"level": "error", "message": "bravo-secret"})).await;
    }
    let cursor = |t: String| async move {
        let (_, page) = app.get(&t, "/v1/audit/events?limit=1").await;
        page["next_cursor"].as_str().unwrap().to_string()
    };
    let bravo_cursors = [cursor(bravo.clone()).await, cursor(bravo_test.clone()).await];
    // A test token's cursor does not work for the live space either.
    let (status, _) = app.get(&bravo, &format!("/v1/audit/events?limit=1&cursor={}", bravo_cursors[1])).await;
    assert_eq!(status, 422, "a test-space cursor is refused in the live space");

    let kinds = [
        ("admin", alpha.clone()),
        ("live reader", token(&alpha, "live").await),
        ("test reader", token(&alpha, "test").await),
    ];
    for (kind, t) in &kinds {
        let leaks = |what: &str, body: &Value| {
            assert!(!body.to_string().contains("bravo-secret"), "{kind} read bravo's data via {what}: {body}");
        };
        let (_, list) = app.get(t, "/v1/audit/events").await;
        leaks("the listing", &list);
        // 404, or alpha's own b-1 once an earlier kind wrote one.
        let (status, one) = app.get(t, "/v1/audit/events/b-1").await;
        assert!(status == 404 || one["event_type"] == "alpha.own", "{kind}: {status} {one}");
        leaks("an event", &one);
        for sql in [
            "SELECT * FROM events",
            "SELECT CAST(event_type AS INTEGER) FROM events",
            "SELECT * FROM events WHERE event_type = 'bravo-secret'",
            "SELECT * FROM dead_letters",
            "SELECT * FROM plugin_logs",
        ] {
            let (_, body) = app.post(t, "/v1/query", &json!({"sql": sql})).await;
            leaks(sql, &body);
        }
        let r = app.client.get(app.url("/v1/export")).bearer_auth(t).send().await.unwrap();
        let text = r.text().await.unwrap();
        assert!(!text.contains("bravo-secret"), "{kind} exported bravo's data");
        let (_, letters) = app.get(t, "/v1/dead-letters").await;
        leaks("dead letters", &letters);
        let (_, logs) = app.get(t, "/logs").await;
        leaks("logs", &logs);
        for c in &bravo_cursors {
            let (status, body) = app.get(t, &format!("/v1/audit/events?cursor={c}")).await;
            assert_eq!(status, 422, "{kind}: another tenant's cursor is refused");
            leaks("a cursor", &body);
            let (status, body) = app.get(t, &format!("/logs?cursor={c}")).await;
            assert_eq!(status, 400, "{kind}: {body}");
        }
        // Writing with an id bravo used neither conflicts nor replays.
        let (status, body) = app.post_events(t, &json!({"event_type": "alpha.own", "id": "b-1"})).await;
        assert_eq!(status, 200, "{kind}: {body}");
        let (_, body) = app.post_events(t, &json!({"event_type": "alpha.own", "id": "b-1"})).await;
        assert_eq!(body["results"][0]["replayed"], true, "{kind}: the second is a retry");
    }
    // Bravo's data is untouched.
    for t in [&bravo, &bravo_test] {
        let events = app.all_events(t, "").await;
        assert_eq!(events.len(), 3, "2 events and a log line: {events:?}");
        assert!(events.iter().all(|e| e["event_type"] != "alpha.own"));
    }
}
