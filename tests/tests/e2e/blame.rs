//! Blame is data: when the host, not the plugin, fails a call (here the
//! instance pool, exhausted for real), every family answers a retryable 503
//! with `Retry-After` in its own dialect, and the plugin is not blamed: no
//! count toward auto-disabling, no dead letter, nothing stored, nothing
//! remembered under an Idempotency-Key.

use serde_json::{json, Value};
use sluice_e2e::{spawn_app_with, TestApp, ADMIN_TOKEN};

/// POST with an optional Idempotency-Key; status, `Retry-After`, body.
async fn send(app: &TestApp, path: &str, body: &Value, key: Option<&str>) -> (u16, Option<String>, Value) {
    let mut request = app.client.post(app.url(path)).bearer_auth(ADMIN_TOKEN).json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_instance_pool_is_a_retryable_503_and_never_the_plugins_failure() {
    // Room for two instances. The shipped `customer-prefix` keeps one (its
    // config check's instance, kept for its first batch); the plugin under
    // test keeps the other.
    let app = spawn_app_with(|s| s.max_plugin_instances = 2).await;
    let settings = json!({
        "config": {"only_name": "boom"},
        "failure_policy": "dead-letter",
        "max_consecutive_failures": 2,
    });
    app.install(ADMIN_TOKEN, "hostile-panic", "hostile-panic", settings).await;

    // One real (guest) failure: counted and dead-lettered as its policy
    // says. The faulted instance is thrown away, which frees its slot...
    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "boom", "id": "b-1"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "dead_lettered", "{body}");
    assert_eq!(app.plugin(ADMIN_TOKEN, "hostile-panic").await["consecutive_failures"], 1);
    // ...for another installation to take: the pool is full and the plugin
    // under test has no instance left, so its next call must instantiate.
    app.install(ADMIN_TOKEN, "filler", "customer-prefix", json!({"event_names": ["never.*"]})).await;

    // More host faults than max_consecutive_failures, across every family.
    let generic = json!({"event_type": "ok", "id": "ok-1"});
    let (status, retry_after, body) = send(&app, "/v1/events", &generic, Some("retry-1")).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{body}");
    let detail = body["detail"].as_str().expect("FastAPI {detail}");
    assert!(detail.contains("hostile-panic") && detail.contains("retry later"), "{body}");
    assert!(detail.contains("host out of plugin capacity"), "the pool, not something else: {body}");

    let iam = json!({"name": "iam.something.new", "payload": {}});
    let (status, retry_after, body) = send(&app, "/iam/v1/events", &iam, None).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{body}");
    assert!(body["detail"].is_string(), "{body}");

    let session = json!({"event_name": "kick", "session_id": "s-1"});
    let (status, retry_after, body) = send(&app, "/session/v1/audit", &session, Some("retry-2")).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{body}");
    assert_eq!((body["auth_success"].clone(), body["error_code"].clone()), (json!(true), json!("unavailable")));
    assert!(body["desc"].as_str().unwrap().contains("retry later"), "{body}");

    let audit = json!({"logs": [{"source": "s", "action": "a"}]});
    let (status, retry_after, body) =
        send(&app, "/v1beta1/organizations/default/auditlogs", &audit, Some("retry-3")).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{body}");
    assert_eq!((body["code"].clone(), body["details"].clone()), (json!(14), json!([])), "UNAVAILABLE: {body}");
    assert!(body["message"].as_str().unwrap().contains("retry later"), "{body}");

    let log = json!({"level": "info", "message": "m"});
    let (status, retry_after, body) = send(&app, "/logs", &log, Some("retry-4")).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    // A dry run meets the same pool.
    let (status, retry_after, body) =
        send(&app, "/v1/plugins/hostile-panic/test", &json!({"events": [{"event_type": "ok"}]}), None).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{body}");
    // So does a config check: nothing is wrong with the config, so it is a
    // retryable 503, not a 422, and the old config stays.
    let r = app
        .client
        .patch(app.url("/v1/plugins/hostile-panic"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"config": {"only_name": "bang"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));

    // The plugin was not blamed: still enabled, its count where the guest
    // fault left it; nothing stored, no other dead letter.
    let view = app.plugin(ADMIN_TOKEN, "hostile-panic").await;
    assert_eq!(view["state"], "enabled", "{view}");
    assert_eq!(view["consecutive_failures"], 1, "{view}");
    assert_eq!(view["config"], json!({"only_name": "boom"}));
    assert!(app.all_events(ADMIN_TOKEN, "").await.is_empty(), "nothing stored");
    let (_, letters) = app.get(ADMIN_TOKEN, "/v1/dead-letters").await;
    assert_eq!(letters["items"].as_array().unwrap().len(), 1, "only the guest fault's: {letters}");

    // Room again: the same Idempotency-Key runs afresh (the 503 was not
    // remembered), stores, and only then is remembered.
    let r = app.client.delete(app.url("/v1/plugins/filler")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (status, _, body) = send(&app, "/v1/events", &generic, Some("retry-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "stored", "{body}");
    assert!(body["results"][0].get("replayed").is_none(), "{body}");
    let (status, _, body) = send(&app, "/session/v1/audit", &session, Some("retry-2")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.all_events(ADMIN_TOKEN, "").await.len(), 2);
    assert_eq!(app.plugin(ADMIN_TOKEN, "hostile-panic").await["consecutive_failures"], 0, "a success resets it");
}
