//! `POST /v1beta1/organizations/{org_id}/auditlogs` as document 003
//! specifies it.

use serde_json::{json, Value};
use sluice_e2e::{spawn_app, ADMIN_TOKEN};

const PATH: &str = "/v1beta1/organizations/default/auditlogs";

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_stored_whole_with_generated_ids() {
    let app = spawn_app().await;
    let batch = json!({"logs": [
        {"source": "frontier", "action": "project.create",
         "actor": {"id": "u-1", "type": "user", "name": "Ada"},
         "target": {"id": "p-1", "type": "project", "name": "Apollo"},
         "context": {"ip": "10.0.0.1"}, "created_at": "2026-02-03T04:05:06Z"},
        {"id": "given-id", "source": "frontier", "action": "user.update"}
    ]});
    let (status, body) = app.post(ADMIN_TOKEN, PATH, &batch).await;
    assert_eq!((status, body), (200, json!({})));
    let events = app.all_events(ADMIN_TOKEN, "&family=auditlogs").await;
    assert_eq!(events.len(), 2);
    let created = events.iter().find(|e| e["event_type"] == "project.create").unwrap();
    assert_eq!(created["event_group"], "project");
    assert_eq!(created["source"], "frontier");
    assert_eq!((created["actor_id"].clone(), created["actor_type"].clone()), (json!("u-1"), json!("user")));
    assert_eq!((created["resource_id"].clone(), created["resource_type"].clone()), (json!("p-1"), json!("project")));
    assert_eq!(created["created_at"], "2026-02-03T04:05:06.000000Z");
    assert_eq!(created["event_payload"]["context"], json!({"ip": "10.0.0.1"}));
    assert_eq!(created["event_payload"]["target"]["name"], "Apollo");
    assert!(uuid_like(created["id"].as_str().unwrap()), "id generated when absent");
    assert!(events.iter().any(|e| e["id"] == "given-id"));
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.matches('-').count() == 4
}

#[tokio::test(flavor = "multi_thread")]
async fn one_bad_entry_rejects_the_batch_naming_its_index() {
    let app = spawn_app().await;
    let batch = json!({"logs": [
        {"source": "s", "action": "a.ok"},
        {"source": "s"},
        {"action": "a.b", "source": "", "context": {"n": 1}},
        {"source": "s", "action": "x", "created_at": "yesterday", "actor": {"role": "x"}}
    ]});
    let (status, body) = app.post(ADMIN_TOKEN, PATH, &batch).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], 3);
    assert!(body["message"].is_string());
    let detail = &body["details"][0];
    assert_eq!(detail["@type"], "type.googleapis.com/google.rpc.BadRequest");
    let fields: Vec<&str> =
        detail["field_violations"].as_array().unwrap().iter().map(|v| v["field"].as_str().unwrap()).collect();
    assert_eq!(
        fields,
        ["logs[1].action", "logs[2].source", "logs[2].context.n", "logs[3].created_at", "logs[3].actor.role"]
    );
    assert!(app.all_events(ADMIN_TOKEN, "&family=auditlogs").await.is_empty(), "nothing of the batch stored");

    let (status, body) = app.post(ADMIN_TOKEN, PATH, &json!({"entries": []})).await;
    assert_eq!((status, body["code"].clone()), (400, json!(3)));
    let r = app.client.post(app.url(PATH)).bearer_auth(ADMIN_TOKEN).body("{").send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_and_organization_errors_use_the_rpc_shape() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme").await;
    let batch = json!({"logs": [{"source": "s", "action": "a"}]});
    let r = app.client.post(app.url(PATH)).json(&batch).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 16);
    let (status, body) = app.post(&acme, PATH, &batch).await;
    assert_eq!((status, body["code"].clone()), (403, json!(7)), "org_id must be the token's tenant");
    let (_, reader) = app.post(ADMIN_TOKEN, "/v1/tokens", &json!({"name": "r", "scopes": ["events:read"]})).await;
    let (status, body) = app.post(reader["token"].as_str().unwrap(), PATH, &batch).await;
    assert_eq!((status, body["code"].clone()), (403, json!(7)));
    let (status, _) = app.post(&acme, "/v1beta1/organizations/acme/auditlogs", &batch).await;
    assert_eq!(status, 200);
    assert!(app.all_events(ADMIN_TOKEN, "&family=auditlogs").await.is_empty());
    assert_eq!(app.all_events(&acme, "&family=auditlogs").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn entry_constraints_hold_at_their_boundaries() {
    let app = spawn_app().await;
    let entry = |field: &str, value: Value| {
        let mut e = json!({"source": "svc", "action": "user.login", "actor": {"id": "u"}, "target": {"id": "t"}});
        match field.split_once('.') {
            Some((part, key)) => e[part][key] = value,
            None => e[field] = value,
        }
        e
    };
    let mut stored = 0;
    for field in ["source", "action", "id", "actor.id", "actor.type", "actor.name", "target.id", "target.name"] {
        let (status, body) =
            app.post(ADMIN_TOKEN, PATH, &json!({"logs": [entry(field, json!("a".repeat(1024)))]})).await;
        assert_eq!(status, 200, "{field} of 1024 characters: {body}");
        stored += 1;
        let (status, body) =
            app.post(ADMIN_TOKEN, PATH, &json!({"logs": [entry(field, json!("b".repeat(1025)))]})).await;
        assert_eq!(status, 400, "{field} of 1025 characters: {body}");
        assert_eq!(body["code"], 3);
        assert_eq!(body["details"][0]["field_violations"][0]["field"], format!("logs[0].{field}"), "{body}");
    }
    for field in ["source", "action", "id"] {
        let (status, body) = app.post(ADMIN_TOKEN, PATH, &json!({"logs": [entry(field, json!(""))]})).await;
        assert_eq!(status, 400, "empty {field}: {body}");
    }
    // The batch limit (10,000 entries by default): one over is a 413.
    let many: Vec<Value> = (0..10_001).map(|_| json!({"source": "s", "action": "a"})).collect();
    let (status, body) = app.post(ADMIN_TOKEN, PATH, &json!({ "logs": many })).await;
    assert_eq!(status, 413, "{body}");
    let (_, count) = app.post(ADMIN_TOKEN, "/v1/query", &json!({"sql": "SELECT count(*) FROM events"})).await;
    assert_eq!(count["rows"][0][0], stored);
}
