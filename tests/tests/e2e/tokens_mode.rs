//! A test-mode token never becomes a live one: it creates, lists and revokes
//! only test-mode tokens of its own tenant and creates no tenants; and no
//! token is issued for a tenant that does not exist.

use serde_json::{json, Value};
use sluice_e2e::{spawn_app, spawn_app_with, TestApp, ADMIN_TOKEN};

async fn delete(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let r = app.client.delete(app.url(path)).bearer_auth(token).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn names(list: &Value) -> Vec<&str> {
    list["items"].as_array().expect("items").iter().map(|t| t["name"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_token_cannot_mint_list_or_revoke_live_tokens() {
    let app = spawn_app().await;
    let admin = app.create_tenant("acme").await;
    let (status, live_reader) =
        app.post(&admin, "/v1/tokens", &json!({"name": "prod-reader", "scopes": ["events:read"]})).await;
    assert_eq!(status, 201, "{live_reader}");
    let scopes = json!(["tokens:write", "events:read", "events:write"]);
    let (status, test) = app.post(&admin, "/v1/tokens", &json!({"name": "ci", "scopes": scopes, "mode": "test"})).await;
    assert_eq!(status, 201, "{test}");
    let test = test["token"].as_str().unwrap().to_string();
    assert_eq!(app.post_events(&admin, &json!({"event_type": "live.secret"})).await.0, 200);

    // The attack of the finding: so_test_ with tokens:write asks for a live token.
    let (status, body) =
        app.post(&test, "/v1/tokens", &json!({"name": "escalate", "scopes": ["events:read"], "mode": "live"})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["detail"], "a test-mode token can only create test-mode tokens");
    assert!(body.get("token").is_none());

    // Without a mode, a test token mints in its own mode, and what it mints
    // sees no live data.
    let (status, minted) = app.post(&test, "/v1/tokens", &json!({"name": "ci-2", "scopes": ["events:read"]})).await;
    assert_eq!(status, 201, "{minted}");
    assert_eq!(minted["mode"], "test");
    let minted_secret = minted["token"].as_str().unwrap();
    assert!(minted_secret.starts_with("so_test_"), "{minted}");
    assert!(app.all_events(minted_secret, "").await.is_empty(), "a token minted by a test token reads no live data");

    // The test token's listing has only test tokens; the live admin's has all.
    let (status, listed) = app.get(&test, "/v1/tokens").await;
    assert_eq!(status, 200, "{listed}");
    assert!(listed["items"].as_array().unwrap().iter().all(|t| t["mode"] == "test"), "{listed}");
    let mut seen = names(&listed);
    seen.sort();
    assert_eq!(seen, ["ci", "ci-2"]);
    let (_, everything) = app.get(&admin, "/v1/tokens").await;
    for name in ["admin", "prod-reader", "ci", "ci-2"] {
        assert!(names(&everything).contains(&name), "{name} missing from {everything}");
    }

    // A live token's id is unknown to the test token: 404, and it still works.
    let live_id = live_reader["id"].as_str().unwrap();
    let (status, body) = delete(&app, &test, &format!("/v1/tokens/{live_id}")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["detail"], "Token not found");
    let live_secret = live_reader["token"].as_str().unwrap();
    assert_eq!(app.all_events(live_secret, "").await.len(), 1, "the live token was not revoked");
    // Its own kind it may revoke.
    let (status, _) = delete(&app, &test, &format!("/v1/tokens/{}", minted["id"].as_str().unwrap())).await;
    assert_eq!(status, 204);
    let (status, _) = app.get(minted_secret, "/v1/audit/events").await;
    assert_eq!(status, 401, "revoked at once");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operators_test_token_neither_creates_tenants_nor_mints_for_others() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let (status, op_test) =
        app.post(ADMIN_TOKEN, "/v1/tokens", &json!({"name": "op-ci", "scopes": ["admin"], "mode": "test"})).await;
    assert_eq!(status, 201, "{op_test}");
    let op_test = op_test["token"].as_str().unwrap();

    // A new tenant comes with a live admin token: refused.
    let (status, body) = app.post(op_test, "/v1/tenants", &json!({"id": "evil"})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.get("admin_token").is_none());
    assert!(body["detail"].as_str().unwrap().contains("test-mode"), "{body}");
    // Nor does it reach another tenant, even in test mode.
    let body = json!({"name": "x", "scopes": ["events:read"], "tenant": "acme", "mode": "test"});
    let (status, body) = app.post(op_test, "/v1/tokens", &body).await;
    assert_eq!(status, 403, "{body}");
    // The tenant was not created: the live operator can still create it.
    assert_eq!(app.post(ADMIN_TOKEN, "/v1/tenants", &json!({"id": "evil"})).await.0, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_issued_only_for_tenants_that_exist() {
    let app = spawn_app().await;
    let (status, body) =
        app.post(ADMIN_TOKEN, "/v1/tokens", &json!({"name": "x", "scopes": ["events:read"], "tenant": "nope"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "tenant"]));
    assert!(body["detail"][0]["msg"].as_str().unwrap().contains("\"nope\" does not exist"), "{body}");
    assert!(body.get("token").is_none());
    // A test space is not a tenant either.
    let body = json!({"name": "x", "scopes": ["events:read"], "tenant": "default:test"});
    assert_eq!(app.post(ADMIN_TOKEN, "/v1/tokens", &body).await.0, 422);

    // For a tenant that exists, the operator may.
    app.create_tenant("acme").await;
    let (status, body) =
        app.post(ADMIN_TOKEN, "/v1/tokens", &json!({"name": "x", "scopes": ["events:read"], "tenant": "acme"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["tenant"], "acme");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_names_each_scope_once_and_a_tenant_holds_a_bounded_number() {
    let app = spawn_app_with(|_| {}).await;
    let t = app.create_tenant("many-tokens").await;
    // 650,000 copies of one scope made a 10 MB token (RELIABILITY.md, F56).
    let (status, body) =
        app.post(&t, "/v1/tokens", &json!({"name": "dup", "scopes": ["events:read", "events:read"]})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "scopes", 1]), "{body}");
    // At most 1,000 in force (the tenant's admin token is one).
    for i in 1..1_000 {
        let (status, body) =
            app.post(&t, "/v1/tokens", &json!({"name": format!("t{i}"), "scopes": ["events:read"]})).await;
        assert_eq!(status, 201, "token {i}: {body}");
    }
    let (status, body) = app.post(&t, "/v1/tokens", &json!({"name": "one-more", "scopes": ["events:read"]})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("revoke"), "{body}");
    // Another tenant is not held to it.
    let (status, body) = app.post(ADMIN_TOKEN, "/v1/tokens", &json!({"name": "x", "scopes": ["events:read"]})).await;
    assert_eq!(status, 201, "{body}");
}
