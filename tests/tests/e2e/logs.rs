//! `POST /logs` and `GET /logs` as document 004 specifies them.

use serde_json::{json, Value};
use sluice_e2e::{spawn_app, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread")]
async fn logs_are_ingested_listed_and_scoped() {
    let app = spawn_app().await;
    let example = json!({"level": "info", "message": "Player connected",
                         "meta": {"player_id": "steam:110000112345678", "server_id": "main-1"}});
    let (status, body) = app.post(ADMIN_TOKEN, "/logs", &example).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["level"], "info");
    assert_eq!(body["message"], "Player connected");
    assert_eq!(body["meta"], example["meta"]);
    assert!(body["id"].is_string() && body["created_at"].is_string());
    app.post(ADMIN_TOKEN, "/logs", &json!({"level": "error", "message": "boom"})).await;

    let (status, page) = app.get(ADMIN_TOKEN, "/logs?limit=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"][0]["message"], "boom", "newest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = app.get(ADMIN_TOKEN, &format!("/logs?limit=1&cursor={cursor}")).await;
    assert_eq!(next["data"][0]["id"], body["id"]);
    let (_, errors) = app.get(ADMIN_TOKEN, "/logs?level=error").await;
    assert_eq!(errors["data"].as_array().unwrap().len(), 1);
    let stored = app.all_events(ADMIN_TOKEN, "&family=logs").await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["error_message"], "boom");

    for (bad, needle) in [
        (json!({"message": "m"}), "level"),
        (json!({"level": "loud", "message": "m"}), "level"),
        (json!({"level": "info"}), "message"),
        (json!({"level": "info", "message": "m", "meta": [1]}), "meta"),
        (json!({"level": "info", "message": "m", "extra": 1}), "extra"),
    ] {
        let (status, body) = app.post(ADMIN_TOKEN, "/logs", &bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"]["code"], "bad_request");
        assert!(body["error"]["message"].as_str().unwrap().contains(needle), "{body}");
    }

    let r = app.client.post(app.url("/logs")).json(&example).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let (_, writer) = app.post(ADMIN_TOKEN, "/v1/tokens", &json!({"name": "w", "scopes": ["logs:write"]})).await;
    let writer = writer["token"].as_str().unwrap();
    let (status, _) = app.post(writer, "/logs", &example).await;
    assert_eq!(status, 201);
    let (status, body) = app.get(writer, "/logs").await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("forbidden")));
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_refuse_with_quota_exceeded_and_the_tenants_usage() {
    let app = spawn_app().await;
    let (status, body) = app.put(ADMIN_TOKEN, "/v1/quotas", &json!({"events_per_day": 2, "storage_bytes": null})).await;
    assert_eq!(status, 200, "{body}");
    let line = json!({"level": "info", "message": "m"});
    for _ in 0..2 {
        let (status, _) = app.post(ADMIN_TOKEN, "/logs", &line).await;
        assert_eq!(status, 201);
    }
    let (status, body) = app.post(ADMIN_TOKEN, "/logs", &line).await;
    assert_eq!(status, 429, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], "quota_exceeded");
    assert_eq!(error["metric"], "events_per_day");
    assert_eq!(error["message"], "tier quota exceeded for events_per_day");
    assert_eq!(error["quotas"], json!([{"metric": "events_per_day", "used": 2, "limit": 2, "cumulative": false}]));

    app.put(ADMIN_TOKEN, "/v1/quotas", &json!({"events_per_day": null, "storage_bytes": 10})).await;
    let (status, body) = app.post(ADMIN_TOKEN, "/logs", &line).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["metric"], "storage_bytes");
    assert_eq!(body["error"]["quotas"][0]["cumulative"], true);
    assert_eq!(body["error"]["quotas"][0]["limit"], 10);
    let (_, usage) = app.get(ADMIN_TOKEN, "/v1/quotas").await;
    assert_eq!(usage["events_per_day"]["used"], 2);

    app.put(ADMIN_TOKEN, "/v1/quotas", &json!({"events_per_day": null, "storage_bytes": null})).await;
    let (status, _) = app.post(ADMIN_TOKEN, "/logs", &line).await;
    assert_eq!(status, 201, "quotas lifted");
}

#[tokio::test(flavor = "multi_thread")]
async fn log_constraints_hold_at_their_boundaries() {
    let app = spawn_app().await;
    let post = |body: Value| {
        let app = &app;
        async move { app.post(ADMIN_TOKEN, "/logs", &body).await }
    };
    // Just inside: every level, a 10,000-character message, 64 KiB of meta.
    for level in ["debug", "info", "warn", "error"] {
        assert_eq!(post(json!({"level": level, "message": "m"})).await.0, 201, "{level}");
    }
    assert_eq!(post(json!({"level": "info", "message": "m".repeat(10_000)})).await.0, 201);
    let meta = |n: usize| json!({"k": "x".repeat(n)});
    assert_eq!(meta(65_528).to_string().len(), 65_536);
    assert_eq!(post(json!({"level": "info", "message": "m", "meta": meta(65_528)})).await.0, 201);
    // Just outside, each with this family's error shape.
    for (body, says) in [
        (json!({"level": "info", "message": "m".repeat(10_001)}), "1..10000"),
        (json!({"level": "info", "message": ""}), "1..10000"),
        (json!({"level": "info", "message": "m", "meta": meta(65_529)}), "65536"),
        (json!({"level": "fatal", "message": "m"}), "level must be one of"),
        (json!({"message": "m"}), "level"),
        (json!({"level": "info"}), "message"),
        (json!({"level": "info", "message": "m", "meta": [1]}), "meta must be an object"),
        (json!({"level": "info", "message": "m", "extra": 1}), "unknown field: extra"),
        (json!(["not", "an", "object"]), "JSON object"),
    ] {
        let (status, err) = post(body.clone()).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["code"], "bad_request");
        assert!(err["error"]["message"].as_str().unwrap().contains(says), "{body}: {err}");
    }
    let (_, page) = app.get(ADMIN_TOKEN, "/logs?limit=200").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 6, "only the accepted entries are stored");
}
