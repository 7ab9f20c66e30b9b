//! Safe retries: an `Idempotency-Key` on every ingest endpoint, and the
//! events' own ids, each answered with the original result and stored once.

use serde_json::{json, Value};
use sluice_e2e::{spawn_app, ADMIN_TOKEN};

/// Rows of the tenant's events table.
async fn count(app: &sluice_e2e::TestApp, token: &str) -> i64 {
    let (status, body) = app.post(token, "/v1/query", &json!({"sql": "SELECT count(*) FROM events"})).await;
    assert_eq!(status, 200, "{body}");
    body["rows"][0][0].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_make_retries_safe_on_generic_ingest() {
    let app = spawn_app().await;
    let batch = json!([{"event_type": "pay"}, {"event_type": "ship"}]);
    let (status, replayed, first) = app.post_keyed(ADMIN_TOKEN, "/v1/events", "k-1", &batch).await;
    assert_eq!((status, replayed), (200, false), "{first}");
    let (status, replayed, again) = app.post_keyed(ADMIN_TOKEN, "/v1/events", "k-1", &batch).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(again, first, "the original result, with the same generated ids");
    assert_eq!(count(&app, ADMIN_TOKEN).await, 2, "stored once");
    let (status, _, conflict) = app.post_keyed(ADMIN_TOKEN, "/v1/events", "k-1", &json!({"event_type": "other"})).await;
    assert_eq!(status, 409, "{conflict}");
    assert!(conflict["detail"].as_str().unwrap().contains("different content"), "{conflict}");
    let (status, _, _) = app.post_keyed(ADMIN_TOKEN, "/v1/events", "k-2", &batch).await;
    assert_eq!(status, 200, "a new key is a new request");
    assert_eq!(count(&app, ADMIN_TOKEN).await, 4);
    let long = "x".repeat(256);
    let (status, _, body) = app.post_keyed(ADMIN_TOKEN, "/v1/events", &long, &batch).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["header", "Idempotency-Key"]));
    let (status, _, _) = app.post_keyed(ADMIN_TOKEN, "/v1/events", &long[..255], &batch).await;
    assert_eq!(status, 200, "255 characters is the longest key");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_ingest_family_honours_idempotency_keys() {
    let app = spawn_app().await;
    let session = json!({"event_name": "match.start", "session_id": "s-1"});
    let audit = json!({"logs": [{"source": "svc", "action": "user.login"}]});
    let log = json!({"level": "info", "message": "hello"});
    let cases = [
        ("/session/v1/audit", session, json!({"event_name": "other", "session_id": "s-1"}), 200),
        ("/v1beta1/organizations/default/auditlogs", audit, json!({"logs": [{"source": "a", "action": "b"}]}), 200),
        ("/logs", log, json!({"level": "warn", "message": "hello"}), 201),
    ];
    for (path, body, other, ok) in cases {
        let key = format!("retry-{path}");
        let before = count(&app, ADMIN_TOKEN).await;
        let (status, replayed, first) = app.post_keyed(ADMIN_TOKEN, path, &key, &body).await;
        assert_eq!((status, replayed), (ok, false), "{path}: {first}");
        let (status, replayed, again) = app.post_keyed(ADMIN_TOKEN, path, &key, &body).await;
        assert_eq!((status, replayed), (ok, true), "{path}");
        assert_eq!(again, first, "{path}: the original response");
        assert_eq!(count(&app, ADMIN_TOKEN).await, before + 1, "{path}: stored once");
        let (status, _, conflict) = app.post_keyed(ADMIN_TOKEN, path, &key, &other).await;
        assert_eq!(status, 409, "{path}: {conflict}");
        // Each family's own error shape.
        let message = match path {
            "/session/v1/audit" => {
                assert_eq!(conflict["error_code"], "idempotency_conflict");
                conflict["desc"].as_str()
            }
            "/logs" => {
                assert_eq!(conflict["error"]["code"], "idempotency_conflict");
                conflict["error"]["message"].as_str()
            }
            _ => {
                assert_eq!(conflict["code"], 10, "gRPC ABORTED");
                conflict["message"].as_str()
            }
        };
        assert!(message.unwrap().contains("different content"), "{conflict}");
        assert_eq!(count(&app, ADMIN_TOKEN).await, before + 1, "{path}: nothing stored by the conflict");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_events_own_id_makes_its_retry_safe() {
    let app = spawn_app().await;
    let batch = json!([{"id": "evt-1", "event_type": "pay"}, {"id": "evt-2", "event_type": "ship"}]);
    let (status, first) = app.post_events(ADMIN_TOKEN, &batch).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["stored"], 2);
    // A retry of the batch, one more new event in it: only that one is new.
    let retry = json!([
        {"id": "evt-1", "event_type": "pay"},
        {"event_type": "new"},
        {"id": "evt-2", "event_type": "ship"},
    ]);
    let (status, again) = app.post_events(ADMIN_TOKEN, &retry).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["results"][0]["replayed"], true, "{again}");
    assert_eq!(again["results"][0]["ids"], first["results"][0]["ids"]);
    assert_eq!(again["results"][0]["index"], 0);
    assert_eq!(again["results"][1]["status"], "stored");
    assert!(again["results"][1].get("replayed").is_none());
    assert_eq!(again["results"][2]["ids"], first["results"][1]["ids"]);
    assert_eq!(again["results"][2]["index"], 2);
    assert_eq!(count(&app, ADMIN_TOKEN).await, 3, "each event stored once");
    // The same content written differently (spacing, key order) is the same.
    let spaced = r#"{ "event_type": "pay",   "id": "evt-1" }"#;
    let (status, body) = app.post_text(ADMIN_TOKEN, "/v1/events", "application/json", spaced).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["replayed"], true, "{body}");
    // So is an id whose key is spelled with an escape.
    let escaped = r#"{"event_type": "pay", "i\u0064": "evt-1"}"#;
    let (status, body) = app.post_text(ADMIN_TOKEN, "/v1/events", "application/json", escaped).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["replayed"], true, "{body}");
    assert_eq!(count(&app, ADMIN_TOKEN).await, 3);
    // The same id with other content: a conflict, and nothing of the request stored.
    let (status, body) =
        app.post_events(ADMIN_TOKEN, &json!([{"event_type": "x"}, {"id": "evt-1", "event_type": "refund"}])).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("index 1"), "{body}");
    assert_eq!(count(&app, ADMIN_TOKEN).await, 3);
    // One id twice in one request: 422 naming the second.
    let (status, body) =
        app.post_events(ADMIN_TOKEN, &json!([{"id": "d", "event_type": "x"}, {"id": "d", "event_type": "x"}])).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", 1, "id"]));
    // Ids are per tenant: another tenant may use the same one.
    let other = app.create_tenant("other").await;
    let (status, body) = app.post_events(&other, &json!({"id": "evt-1", "event_type": "pay"})).await;
    assert_eq!((status, body["stored"].clone()), (200, json!(1)), "{body}");
    assert_eq!(count(&app, &other).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn iam_messages_are_deduplicated_by_their_id() {
    let app = spawn_app().await;
    let message = json!({
        "id": "5f1d6d3c8e6a4b0f9a2c7b1e3d4f5a6b",
        "name": "userLoggedIn",
        "namespace": "game",
        "userId": "u-1",
        "timestamp": "2026-11-22T05:00:00Z",
        "payload": {}
    });
    let (status, first) = app.post(ADMIN_TOKEN, "/iam/v1/events", &message).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = app.post(ADMIN_TOKEN, "/iam/v1/events", &json!([message])).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["results"][0]["replayed"], true, "{again}");
    assert_eq!(count(&app, ADMIN_TOKEN).await, 1);
    let mut changed = message.clone();
    changed["userId"] = Value::from("u-2");
    let (status, body) = app.post(ADMIN_TOKEN, "/iam/v1/events", &changed).await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_log_entries_are_deduplicated_by_their_id() {
    let app = spawn_app().await;
    let path = "/v1beta1/organizations/default/auditlogs";
    let entry = |id: &str, action: &str| json!({"id": id, "source": "svc", "action": action});
    let (status, body) =
        app.post(ADMIN_TOKEN, path, &json!({"logs": [entry("a-1", "login"), entry("a-2", "logout")]})).await;
    assert_eq!(status, 200, "{body}");
    // The whole batch again: nothing new.
    let (status, _) =
        app.post(ADMIN_TOKEN, path, &json!({"logs": [entry("a-1", "login"), entry("a-2", "logout")]})).await;
    assert_eq!(status, 200);
    assert_eq!(count(&app, ADMIN_TOKEN).await, 2);
    // A retry with one more entry stores only that one.
    let (status, _) = app.post(ADMIN_TOKEN, path, &json!({"logs": [entry("a-2", "logout"), entry("a-3", "x")]})).await;
    assert_eq!(status, 200);
    assert_eq!(count(&app, ADMIN_TOKEN).await, 3);
    // An id reused for other content: 409 (ABORTED), nothing stored.
    let (status, body) =
        app.post(ADMIN_TOKEN, path, &json!({"logs": [entry("a-4", "y"), entry("a-1", "other")]})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], 10);
    // One id twice in a batch: 400 naming the second.
    let (status, body) = app.post(ADMIN_TOKEN, path, &json!({"logs": [entry("d", "y"), entry("d", "y")]})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["details"][0]["field_violations"][0]["field"], "logs[1].id");
    assert_eq!(count(&app, ADMIN_TOKEN).await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_failure_is_not_remembered_so_the_retry_runs_again() {
    let app = spawn_app().await;
    app.install(ADMIN_TOKEN, "hostile-panic", "hostile-panic", json!({"max_consecutive_failures": 100})).await;
    let event = json!({"event_type": "boom"});
    let (status, replayed, body) = app.post_keyed(ADMIN_TOKEN, "/v1/events", "after-fix", &event).await;
    assert_eq!((status, replayed), (502, false), "{body}");
    // The operator fixes the chain; the client retries with the same key.
    let (status, _) = app.patch(ADMIN_TOKEN, "/v1/plugins/hostile-panic", &json!({"enabled": false})).await;
    assert_eq!(status, 200);
    let (status, replayed, body) = app.post_keyed(ADMIN_TOKEN, "/v1/events", "after-fix", &event).await;
    assert_eq!((status, replayed), (200, false), "{body}");
    assert_eq!(body["stored"], 1);
    // Now the success is what a further retry gets.
    let (status, replayed, again) = app.post_keyed(ADMIN_TOKEN, "/v1/events", "after-fix", &event).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(again, body);
    assert_eq!(count(&app, ADMIN_TOKEN).await, 1);
}
