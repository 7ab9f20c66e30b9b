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
        ("auditlogs", "/v1beta1/organizations/default/auditlogs", "code", json!({"logs": [{"source": "s", "action": "fan.out"}]})),
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
        let (status, patched) = app.patch(ADMIN_TOKEN, "/v1/plugins/fan", &json!({"families": [family], "config": {"mode": "fanout", "copies": 1001}})).await;
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
