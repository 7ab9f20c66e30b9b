//! `GET /openapi.json`: generated from the handlers, it must describe
//! exactly the routes that are served, and its constraints must be the ones
//! the endpoints enforce.

use serde_json::{json, Value};
use sluice_e2e::{spawn_app, ADMIN_TOKEN};

/// Every route the README documents, as (method, path).
const DOCUMENTED: [(&str, &str); 34] = [
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/v1/events"),
    ("post", "/session/v1/audit"),
    ("post", "/iam/v1/events"),
    ("post", "/v1beta1/organizations/{org_id}/auditlogs"),
    ("post", "/logs"),
    ("get", "/logs"),
    ("get", "/v1/quotas"),
    ("put", "/v1/quotas"),
    ("get", "/v1/audit/events"),
    ("get", "/v1/audit/events/{id}"),
    ("post", "/v1/plugins"),
    ("get", "/v1/plugins"),
    ("get", "/v1/plugins/{name}"),
    ("patch", "/v1/plugins/{name}"),
    ("delete", "/v1/plugins/{name}"),
    ("post", "/v1/plugins/{name}/rollback"),
    ("post", "/v1/plugins/{name}/test"),
    ("post", "/v1/plugins/{name}/shadow"),
    ("get", "/v1/plugins/{name}/versions"),
    ("get", "/v1/plugins/{name}/logs"),
    ("post", "/v1/pipeline/test"),
    ("get", "/v1/dead-letters"),
    ("post", "/v1/dead-letters/replay"),
    ("post", "/v1/tenants"),
    ("post", "/v1/tokens"),
    ("get", "/v1/tokens"),
    ("delete", "/v1/tokens/{id}"),
    ("post", "/v1/query"),
    ("get", "/v1/export"),
    ("get", "/v1/retention"),
    ("put", "/v1/retention"),
];

async fn spec(app: &sluice_e2e::TestApp) -> Value {
    let r = app.client.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200, "served without credentials");
    r.json().await.unwrap()
}

fn operations(spec: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_describes_exactly_the_served_routes() {
    let app = spawn_app().await;
    let spec = spec(&app).await;
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"), "{}", spec["openapi"]);
    // Every reference resolves.
    let text = spec.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &reference[..reference.find('"').unwrap()];
        assert!(spec["components"]["schemas"][name].is_object(), "unresolvable reference to {name}");
    }
    let ops = operations(&spec);
    let described: Vec<(String, String)> = ops.iter().map(|(m, p, _)| (m.clone(), p.clone())).collect();
    for (method, path) in DOCUMENTED {
        assert!(described.contains(&(method.into(), path.into())), "{method} {path} is not described");
    }
    let extra: Vec<_> =
        described.iter().filter(|(m, p)| !DOCUMENTED.contains(&(m.as_str(), p.as_str()))).cloned().collect();
    assert!(extra.is_empty(), "described but not in the README's list: {extra:?}");

    for (method, path, op) in &ops {
        // Every described operation is served: without credentials it is
        // refused (401) or answered (public ones), never "no such route".
        let url = app.url(&path.replace("{org_id}", "default").replace("{id}", "x").replace("{name}", "x"));
        let request = match method.as_str() {
            "get" => app.client.get(&url),
            "post" => app.client.post(&url),
            "put" => app.client.put(&url),
            "patch" => app.client.patch(&url),
            _ => app.client.delete(&url),
        };
        let status = request.send().await.unwrap().status().as_u16();
        let public = op["security"] == json!([{}]);
        let expected = if public { 200 } else { 401 };
        assert_eq!(status, expected, "{method} {path}");
        let responses = op["responses"].as_object().unwrap();
        assert!(responses.contains_key(&status.to_string()), "{method} {path}: {status} is not described");
        assert!(responses.keys().any(|k| k.starts_with('2')), "{method} {path}: no success response");
        if ["post", "put", "patch"].contains(&method.as_str()) && !path.ends_with("/rollback") {
            let body_optional = path.ends_with("/shadow");
            assert!(op["requestBody"].is_object() || body_optional, "{method} {path}: no request body");
        }
    }
    // And what is not described is not served.
    let r = app.client.get(app.url("/v1/not-a-route")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app.client.put(app.url("/v1/events")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

/// The `maxLength` the document gives each string field of a request
/// schema, checked against the endpoint: at the limit it is accepted, one
/// over it is refused naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn documented_string_limits_are_the_enforced_ones() {
    let app = spawn_app().await;
    let spec = spec(&app).await;
    let schemas = &spec["components"]["schemas"];
    let cases = [
        ("GenericEvent", "/v1/events", json!({"event_type": "e"})),
        ("IamEnvelope", "/iam/v1/events", json!({"name": "custom.kind"})),
        ("SessionAuditRequest", "/session/v1/audit", json!({"event_name": "e", "session_id": "s"})),
    ];
    let mut checked = 0;
    for (schema, path, base) in cases {
        let properties = schemas[schema]["properties"].as_object().unwrap_or_else(|| panic!("{schema} is described"));
        for (field, property) in properties {
            let Some(max) = property["maxLength"].as_u64() else { continue };
            let text = |n: u64| {
                let mut body = base.clone();
                // Distinct per schema: ids are deduplicated across requests.
                body[field] = Value::from(schema[..1].repeat(n as usize));
                if field != "id" && field != "created_at" {
                    body["id"] = Value::from(format!("{schema}-{field}-{n}"));
                }
                if schema == "SessionAuditRequest" {
                    body.as_object_mut().unwrap().remove("id");
                }
                body
            };
            let (status, body) = app.post(ADMIN_TOKEN, path, &text(max)).await;
            assert_eq!(status, 200, "{schema}.{field} at its documented maxLength {max}: {body}");
            let (status, body) = app.post(ADMIN_TOKEN, path, &text(max + 1)).await;
            assert_eq!(status, 422, "{schema}.{field} over its documented maxLength {max}: {body}");
            let loc = body["detail"][0]["loc"].as_array().unwrap();
            assert_eq!(loc.last().unwrap(), field, "{schema}.{field}: {body}");
            checked += 1;
        }
    }
    assert!(checked >= 39, "only {checked} limits were described");
}

#[tokio::test(flavor = "multi_thread")]
async fn integers_and_the_idempotency_key_are_read_as_the_document_says() {
    let app = spawn_app().await;
    // JSON Schema's integers: 5681.0 is one, 5681.5 is not.
    let (status, body) = app.put(ADMIN_TOKEN, "/v1/retention", &json!({"days": 5681.0})).await;
    assert_eq!((status, &body["days"]), (200, &json!(5681)), "{body}");
    let (status, body) = app.put(ADMIN_TOKEN, "/v1/retention", &json!({"days": 5681.5})).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"][0]["msg"].as_str().unwrap().contains("fractional part"), "{body}");
    let (status, body) = app.put(ADMIN_TOKEN, "/v1/quotas", &json!({"events_per_second": 500.0})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "whole", "task_id": 7.0})).await;
    assert_eq!(status, 200, "{body}");
    let (_, rows) = app.post(ADMIN_TOKEN, "/v1/query", &json!({"sql": "SELECT task_id FROM events"})).await;
    assert_eq!(rows["rows"][0][0], 7, "{rows}");

    // The header's documented pattern is the rule: visible ASCII only (no
    // spaces), 1..255 of them, and not the prefix of event-id claims.
    let spec = spec(&app).await;
    let header = spec["paths"]["/v1/events"]["post"]["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "Idempotency-Key"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(header["schema"]["pattern"], r"^(?!event-id:)[!-~]+$", "{header}");
    assert_eq!((header["schema"]["minLength"].as_u64(), header["schema"]["maxLength"].as_u64()), (Some(1), Some(255)));
    for (key, accepted) in [("a~!", true), ("two words", false), ("event-id:x", false), (&"k".repeat(256)[..], false)] {
        let r = app
            .client
            .post(app.url("/v1/events"))
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", key)
            .json(&json!({"event_type": "keyed"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().is_success(), accepted, "{key:?}: {}", r.status());
    }
}
