//! Generic ingest and the listing API, without plugins.

use serde_json::{json, Value};
use sluice_e2e::{spawn_app, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread")]
async fn one_event_round_trips_through_the_store() {
    let app = spawn_app().await;
    let event = json!({
        "event_type": "vm.started",
        "status": "success",
        "actor_type": "user",
        "actor_id": "u-1",
        "user_id": 42,
        "source": "control-plane",
        "resource_type": "vm",
        "resource_id": "vm-9",
        "session_id": "s-1",
        "vm_id": "vm-9",
        "task_id": 7,
        "http_method": "POST",
        "path": "/vms",
        "http_status": 201,
        "latency_ms": 12.5,
        "ip_address": "10.1.2.3",
        "created_at": "2026-11-01T10:00:00Z",
        "event_payload": {"size": "large"},
        "attributes": {"plan": "pro"}
    });
    let (status, body) = app.post_events(ADMIN_TOKEN, &event).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stored"], 1);
    let id = body["results"][0]["ids"][0].as_str().expect("id").to_string();

    let (status, page) = app.get(ADMIN_TOKEN, "/v1/audit/events").await;
    assert_eq!(status, 200);
    let item = &page["items"][0];
    assert_eq!(item["id"], id.as_str());
    assert_eq!(item["event_type"], "vm.started");
    assert_eq!(item["event_group"], "vm", "group defaults to the name's prefix");
    assert_eq!(item["user_id"], 42);
    assert_eq!(item["task_id"], 7);
    assert_eq!(item["http_status"], 201);
    assert_eq!(item["latency_ms"], 12.5);
    assert_eq!(item["vm_id"], "vm-9");
    assert_eq!(item["created_at"], "2026-11-01T10:00:00.000000Z");
    assert_eq!(item["event_payload"], json!({"size": "large"}));
    assert_eq!(item["lineage"], json!([]));
    assert_eq!(page["next_cursor"], Value::Null);

    let (status, one) = app.get(ADMIN_TOKEN, &format!("/v1/audit/events/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(one, *item);
    let (status, _) = app.get(ADMIN_TOKEN, "/v1/audit/events/nope").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn arrays_and_ndjson_are_accepted() {
    let app = spawn_app().await;
    let batch = json!([{"event_type": "a.one"}, {"event_type": "a.two", "id": "fixed-id"}]);
    let (status, body) = app.post_events(ADMIN_TOKEN, &batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stored"], 2);
    assert_eq!(body["results"][1]["ids"][0], "fixed-id");

    let ndjson = "{\"event_type\":\"b.one\"}\n\n{\"event_type\":\"b.two\"}\n";
    let r = app
        .client
        .post(app.url("/v1/events"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = app.all_events(ADMIN_TOKEN, "&event_group=b").await;
    let names: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(names, ["b.two", "b.one"], "newest first");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_field_errors_and_stores_nothing() {
    let app = spawn_app().await;
    let (status, body) =
        app.post_events(ADMIN_TOKEN, &json!([{"event_type": "ok"}, {"event_type": 5}, {"status": "x"}])).await;
    assert_eq!(status, 422, "{body}");
    let locs: Vec<&Value> = body["detail"].as_array().unwrap().iter().map(|d| &d["loc"]).collect();
    assert_eq!(locs[0], &json!(["body", 1, "event_type"]));
    assert_eq!(locs[1], &json!(["body", 2]));
    assert!(body["detail"][1]["msg"].as_str().unwrap().contains("event_type"));
    let msg = body["detail"][0]["msg"].as_str().unwrap();
    assert!(!msg.contains(" at line "), "positions within one item mean nothing to the client: {msg}");

    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "x", "bogus": 1})).await;
    assert_eq!(status, 422);
    assert!(body["detail"][0]["msg"].as_str().unwrap().contains("bogus"), "{body}");

    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "", "http_status": 700})).await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["type"], "string_too_short");
    assert_eq!(body["detail"][1]["loc"], json!(["body", 0, "http_status"]));

    let r = app.client.post(app.url("/v1/events")).bearer_auth(ADMIN_TOKEN).body("{").send().await.unwrap();
    assert_eq!(r.status(), 415, "no content type");
    let r = app
        .client
        .post(app.url("/v1/events"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(vec![b'{', 0xff, b'}'])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "invalid UTF-8");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["detail"][0]["type"], "json_invalid");
    for (text, kind) in [
        (r#"{"event_type": "a"} trailing"#, "json_invalid"),
        (r#"[{"event_type": "a"}] [1]"#, "json_invalid"),
        ("", "json_invalid"),
        ("42", "model_type"),
        (r#""event""#, "model_type"),
    ] {
        let (status, body) = app.post_text(ADMIN_TOKEN, "/v1/events", "application/json", text).await;
        assert_eq!(status, 422, "{text:?}");
        assert_eq!(body["detail"][0]["type"], kind, "{text:?}: {body}");
    }

    assert!(app.all_events(ADMIN_TOKEN, "").await.is_empty(), "nothing stored from refused requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_wrong_credentials_are_refused() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/v1/audit/events")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"detail": "Not authenticated"}));
    let (status, _) = app.get("wrong", "/v1/audit/events").await;
    assert_eq!(status, 401);
    let r = app.client.get(app.url("/v1/audit/events")).header("x-api-key", ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200, "X-API-Key works too");
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_pages_with_cursor_and_validates_parameters() {
    let app = spawn_app().await;
    let batch: Vec<Value> = (0..120).map(|i| json!({"event_type": "page.test", "task_id": i})).collect();
    let (status, _) = app.post_events(ADMIN_TOKEN, &Value::Array(batch)).await;
    assert_eq!(status, 200);

    let (_, first) = app.get(ADMIN_TOKEN, "/v1/audit/events").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 50, "default limit");
    // New events arriving while paging must not shift later pages.
    app.post_events(ADMIN_TOKEN, &json!({"event_type": "page.test", "task_id": 999})).await;
    let all = app.all_events(ADMIN_TOKEN, "&event_type=page.test").await;
    assert_eq!(all.len(), 121);
    let mut ids: Vec<i64> = all.iter().map(|e| e["task_id"].as_i64().unwrap()).collect();
    assert_eq!(ids[0], 999);
    ids.remove(0);
    assert_eq!(ids, (0..120).rev().collect::<Vec<_>>(), "no gaps, no duplicates, newest first");

    let cursor = first["next_cursor"].as_str().unwrap();
    let (status, body) = app.get(ADMIN_TOKEN, &format!("/v1/audit/events?cursor={cursor}x")).await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["query", "cursor"]));
    let (status, _) = app.get(ADMIN_TOKEN, &format!("/v1/audit/events?cursor={cursor}&status=other")).await;
    assert_eq!(status, 422, "a cursor only continues the listing it came from");

    for (query, kind) in [
        ("limit=0", "greater_than_equal"),
        ("limit=201", "less_than_equal"),
        ("limit=x", "int_parsing"),
        ("user_id=abc", "int_parsing"),
    ] {
        let (status, body) = app.get(ADMIN_TOKEN, &format!("/v1/audit/events?{query}")).await;
        assert_eq!(status, 422, "{query}");
        assert_eq!(body["detail"][0]["type"], kind, "{query}");
    }
    let (status, body) = app.get(ADMIN_TOKEN, "/v1/audit/events?limit=200").await;
    assert_eq!(status, 200);
    assert_eq!(body["items"].as_array().unwrap().len(), 121);
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_see_only_their_own_events() {
    let app = spawn_app().await;
    let other = app.create_tenant("acme").await;
    app.post_events(ADMIN_TOKEN, &json!({"event_type": "mine.default"})).await;
    app.post_events(&other, &json!({"event_type": "mine.acme", "id": "acme-1"})).await;
    let default_events = app.all_events(ADMIN_TOKEN, "").await;
    assert_eq!(default_events.len(), 1);
    assert_eq!(default_events[0]["event_type"], "mine.default");
    let acme_events = app.all_events(&other, "").await;
    assert_eq!(acme_events.len(), 1);
    let (status, _) = app.get(ADMIN_TOKEN, "/v1/audit/events/acme-1").await;
    assert_eq!(status, 404);
    let (status, _) = app.post(&other, "/v1/tenants", &json!({"id": "evil"})).await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_filters_by_every_documented_field() {
    let app = spawn_app().await;
    let batch = json!([
        {"event_type": "f.a", "status": "failure", "user_id": 1, "vm_id": "vm-1", "session_id": "s-1",
         "created_at": "2026-03-01T00:00:00Z"},
        {"event_type": "f.b", "event_group": "other", "status": "success", "user_id": 2, "vm_id": "vm-2",
         "session_id": "s-2", "created_at": "2026-03-02T00:00:00Z"},
    ]);
    app.post_events(ADMIN_TOKEN, &batch).await;
    for (query, expected) in [
        ("&event_group=f", "f.a"),
        ("&event_group=other", "f.b"),
        ("&event_type=f.b", "f.b"),
        ("&status=failure", "f.a"),
        ("&user_id=2", "f.b"),
        ("&vm_id=vm-1", "f.a"),
        ("&session_id=s-2", "f.b"),
        ("&family=generic&from=2026-03-02T00:00:00Z", "f.b"),
        ("&to=2026-03-02T00:00:00Z", "f.a"),
    ] {
        let events = app.all_events(ADMIN_TOKEN, query).await;
        let names: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
        assert_eq!(names, [expected], "{query}");
    }
    assert!(app.all_events(ADMIN_TOKEN, "&family=iam").await.is_empty());
    let (status, body) = app.get(ADMIN_TOKEN, "/v1/audit/events?from=yesterday").await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["query", "from"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_is_refused_with_503_and_retry_after_and_loses_nothing_acknowledged() {
    // A queue of 4 shared by 16 tenants (each may hold a quarter of it:
    // beyond its share a tenant gets 429; beyond the whole queue, 503).
    let app = sluice_e2e::spawn_app_with(|s| s.write_queue_depth = 4).await;
    let mut tokens = Vec::new();
    for t in 0..16 {
        tokens.push(app.create_tenant(&format!("load{t}")).await);
    }
    let mut stored = 0;
    let mut refused = 0;
    for round in 0..5 {
        let requests = (0..48).map(|i| {
            let batch: Vec<Value> =
                (0..200).map(|j| json!({"event_type": "load", "id": format!("{round}-{i}-{j}")})).collect();
            let token = &tokens[i % tokens.len()];
            let request = app.client.post(app.url("/v1/events")).bearer_auth(token).json(&batch).send();
            async move {
                let r = request.await.unwrap();
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                let body: Value = r.json().await.unwrap();
                (status, retry_after, body)
            }
        });
        for (status, retry_after, body) in futures_util::future::join_all(requests).await {
            match status {
                200 => stored += 200,
                503 => {
                    refused += 1;
                    assert_eq!(retry_after.as_deref(), Some("1"));
                    assert!(body["detail"].as_str().unwrap().contains("overloaded"), "{body}");
                }
                429 => assert_eq!(retry_after.as_deref(), Some("1"), "{body}"),
                other => panic!("unexpected status {other}: {body}"),
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(refused > 0, "a queue of depth 4 must overflow under 48 concurrent writers of 16 tenants");
    let mut counted = 0;
    for token in &tokens {
        let (_, body) = app.post(token, "/v1/query", &json!({"sql": "SELECT count(*) FROM events"})).await;
        counted += body["rows"][0][0].as_i64().unwrap();
    }
    assert_eq!(counted, stored, "exactly the acknowledged events are stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn payload_and_raw_input_are_kept_as_the_client_wrote_them() {
    let app = spawn_app().await;
    let item = r#"{ "event_type" : "order.paid",  "event_payload": {"b": 1, "a": [1, 2.50], "s": "caf\u00e9"} }"#;
    let (status, _) = app.post_text(ADMIN_TOKEN, "/v1/events", "application/json", &format!("[{item}]")).await;
    assert_eq!(status, 200);
    let sql = json!({"sql": "SELECT raw, event_payload FROM events WHERE event_type = 'order.paid'"});
    let (status, body) = app.post(ADMIN_TOKEN, "/v1/query", &sql).await;
    assert_eq!(status, 200, "{body}");
    let row = &body["rows"][0];
    assert_eq!(row[0], item, "raw is the item's exact text: {body}");
    assert_eq!(row[1], r#"{"b": 1, "a": [1, 2.50], "s": "caf\u00e9"}"#, "payload as written: {body}");
    let events = app.all_events(ADMIN_TOKEN, "").await;
    assert_eq!(events[0]["event_payload"], json!({"b": 1, "a": [1, 2.5], "s": "café"}), "the listing parses it");
}
