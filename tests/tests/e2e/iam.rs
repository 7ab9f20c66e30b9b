//! `POST /iam/v1/events` as document 001 specifies the envelope and its
//! message kinds.

use serde_json::{json, Value};
use sluice_e2e::{spawn_app, ADMIN_TOKEN};

fn kinds() -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src/api/families/iam_kinds.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn envelope(name: &str, payload: Value) -> Value {
    json!({
        "id": format!("evt-{name}"), "version": 1, "name": name, "namespace": "game-ns",
        "parentNamespace": "publisher-ns", "timestamp": "2019-08-24T14:15:22Z", "clientId": "client-1",
        "userId": "user-42", "traceId": "trace-7", "sessionId": "sess-3", "payload": payload
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_kind_is_accepted_and_mapped() {
    let app = spawn_app().await;
    let kinds = kinds();
    assert_eq!(kinds.len(), 40);
    let batch: Vec<Value> = kinds.iter().map(|k| envelope(k["name"].as_str().unwrap(), k["payload"].clone())).collect();
    let (status, body) = app.post(ADMIN_TOKEN, "/iam/v1/events", &Value::Array(batch)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stored"], 40);

    let (_, one) = app.get(ADMIN_TOKEN, "/v1/audit/events/evt-iam.auth.login").await;
    assert_eq!(one["family"], "iam");
    assert_eq!(one["event_type"], "iam.auth.login");
    assert_eq!(one["event_group"], "auth");
    assert_eq!(one["actor_id"], "user-42");
    assert_eq!(one["session_id"], "sess-3");
    assert_eq!(one["correlation_id"], "trace-7");
    assert_eq!(one["resource_id"], "game-ns");
    assert_eq!(one["source"], "client-1");
    assert_eq!(one["created_at"], "2019-08-24T14:15:22.000000Z");
    assert!(one["event_payload"]["userAuthentication"].is_object());
    let (_, by_session) = app.get(ADMIN_TOKEN, "/v1/audit/events?session_id=sess-3&limit=200").await;
    assert_eq!(by_session["items"].as_array().unwrap().len(), 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn payloads_of_known_kinds_are_type_checked_and_unknown_kinds_kept() {
    let app = spawn_app().await;
    let bad = envelope("iam.account.created", json!({"userAccount": {"userId": 5, "emailAddress": "a@b"}}));
    let (status, body) = app.post(ADMIN_TOKEN, "/iam/v1/events", &bad).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "payload", "userAccount", "userId"]));
    assert_eq!(body["detail"][0]["type"], "string_type");

    // The document's `string (date-time)` payload fields are date-times:
    // a ban's `endDate`, alone and in a list of bans.
    let ban = |end: &str| json!({"userId": "u", "ban": "CHAT_ALL", "endDate": end, "enable": true});
    for (name, payload, loc) in [
        (
            "iam.ban.chat_all",
            json!({"userFeatureBan": ban("next week")}),
            json!(["body", "payload", "userFeatureBan", "endDate"]),
        ),
        (
            "iam.account.banned",
            json!({"userAccountBan": {"ban": [ban("2030-01-01T00:00:00Z"), ban("2030-13-01T00:00:00Z")]}}),
            json!(["body", "payload", "userAccountBan", "ban", 1, "endDate"]),
        ),
    ] {
        let (status, body) = app.post(ADMIN_TOKEN, "/iam/v1/events", &envelope(name, payload.clone())).await;
        assert_eq!(status, 422, "{name}: {body}");
        assert_eq!(body["detail"][0]["loc"], loc, "{body}");
        assert_eq!(body["detail"][0]["type"], "datetime_parsing", "{body}");
        assert!(body["detail"][0]["msg"].as_str().unwrap().starts_with("Input should be a valid datetime"), "{body}");
    }

    let (status, body) = app
        .post(
            ADMIN_TOKEN,
            "/iam/v1/events",
            &json!([{"name": "ok.one"}, {"payload": {}}, {"name": "x", "timestamp": "soon"}]),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["body", 1, "name"]));
    assert_eq!(body["detail"][1]["loc"], json!(["body", 2, "timestamp"]));
    assert!(app.all_events(ADMIN_TOKEN, "&family=iam").await.is_empty(), "nothing stored");

    let (status, body) = app
        .post(ADMIN_TOKEN, "/iam/v1/events", &json!({"name": "iam.something.new", "payload": {"anything": [1, "a"]}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let stored = &app.all_events(ADMIN_TOKEN, "&family=iam").await[0];
    assert_eq!(stored["event_type"], "iam.something.new");
    assert_eq!(stored["actor_type"], "service");
    let (_, kind) =
        app.post(ADMIN_TOKEN, "/v1/query", &json!({"sql": "SELECT attributes FROM events WHERE family = 'iam'"})).await;
    assert!(kind["rows"][0][0].as_str().unwrap().contains("generic"), "{kind}");
    let fine = envelope("iam.ban.chat_all", json!({"userFeatureBan": ban("2030-01-01T00:00:00+02:00")}));
    let (status, body) = app.post(ADMIN_TOKEN, "/iam/v1/events", &fine).await;
    assert_eq!(status, 200, "a valid endDate: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn envelope_strings_are_bounded_at_their_limits() {
    let app = spawn_app().await;
    let limits = [
        ("id", 128),
        ("name", 256),
        ("namespace", 256),
        ("parentNamespace", 256),
        ("clientId", 1024),
        ("userId", 1024),
        ("traceId", 1024),
        ("sessionId", 1024),
    ];
    for (n, (field, max)) in limits.into_iter().enumerate() {
        let mut inside = envelope("custom.kind", json!({}));
        inside["id"] = Value::from(format!("bound-{n}"));
        inside[field] = Value::from("a".repeat(max));
        let (status, body) = app.post(ADMIN_TOKEN, "/iam/v1/events", &inside).await;
        assert_eq!(status, 200, "{field} of {max} characters: {body}");
        for bad in ["a".repeat(max + 1), String::new()] {
            let mut outside = inside.clone();
            outside["id"] = Value::from(format!("bound-out-{n}"));
            outside[field] = Value::from(bad.clone());
            let (status, body) = app.post(ADMIN_TOKEN, "/iam/v1/events", &outside).await;
            assert_eq!(status, 422, "{field} of {} characters: {body}", bad.len());
            assert_eq!(body["detail"][0]["loc"], json!(["body", field]), "{body}");
            let kind = if bad.is_empty() { "string_too_short" } else { "string_too_long" };
            assert_eq!(body["detail"][0]["type"], kind, "{body}");
            let wording =
                if bad.is_empty() { "at least 1 character".to_string() } else { format!("at most {max} characters") };
            assert_eq!(body["detail"][0]["msg"], format!("String should have {wording}"), "{body}");
        }
    }
    // In a list the location names the index.
    let mut bad = envelope("custom.kind", json!({}));
    bad["traceId"] = Value::from("t".repeat(1025));
    let (status, body) = app.post(ADMIN_TOKEN, "/iam/v1/events", &json!([envelope("ok", json!({})), bad])).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", 1, "traceId"]));
    let (_, count) = app.post(ADMIN_TOKEN, "/v1/query", &json!({"sql": "SELECT count(*) FROM events"})).await;
    assert_eq!(count["rows"][0][0], limits.len(), "nothing of a refused request is stored");
}
