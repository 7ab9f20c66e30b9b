//! The boundary between a tenant's test space and its live behaviour, and
//! the edges of token management: test traffic cannot switch off a live
//! plugin, an auto-disabled plugin still fails closed, a test token writes
//! nothing the live space shares, a narrow token cannot revoke a broader
//! one, and ambiguous credentials authenticate nobody.

use reqwest::header::AUTHORIZATION;
use serde_json::{json, Value};
use sluice_e2e::{spawn_app, TestApp, ADMIN_TOKEN};

/// Issue a token with `admin` for its tenant; returns `(id, secret)`.
async fn token(app: &TestApp, admin: &str, name: &str, scopes: Value, mode: &str) -> (String, String) {
    let (status, body) = app.post(admin, "/v1/tokens", &json!({"name": name, "scopes": scopes, "mode": mode})).await;
    assert_eq!(status, 201, "{body}");
    (body["id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string())
}

async fn delete(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let r = app.client.delete(app.url(path)).bearer_auth(token).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// pii-redact guarding `event_payload.ssn`, failing closed, disabled after
/// two failures in a row. Its output limit of 1 KiB makes any larger event
/// a fault of the plugin (`invalid_output`), as a memory bomb in the payload
/// would, only cheaper.
async fn install_pii(app: &TestApp, admin: &str) {
    let settings = json!({
        "config": {"key": "k1", "fields": ["event_payload.ssn"]},
        "failure_policy": "reject",
        "max_consecutive_failures": 2,
        "limits": {"max_event_bytes": 1024},
    });
    app.install(admin, "pii", "pii-redact", settings).await;
}

/// An event the plugin faults on.
fn oversized() -> Value {
    json!({"event_type": "bulk", "event_payload": {"ssn": "078-05-1120", "pad": "x".repeat(4096)}})
}

fn ssn_event(id: &str) -> Value {
    json!({"id": id, "event_type": "signup", "event_payload": {"ssn": "078-05-1120"}})
}

fn lineage(event: &Value) -> Vec<&str> {
    event["lineage"].as_array().expect("lineage").iter().map(|s| s["plugin"].as_str().unwrap()).collect()
}

/// F3 (a): faults in the test space are reported but never count toward
/// the live plugin's health.
#[tokio::test(flavor = "multi_thread")]
async fn test_traffic_cannot_auto_disable_a_live_fail_closed_plugin() {
    let app = spawn_app().await;
    let alpha = app.create_tenant("alpha").await;
    install_pii(&app, &alpha).await;
    let (_, writer) = token(&app, &alpha, "ci-writer", json!(["events:write"]), "test").await;

    // The attack: more faults from the test space than the plugin tolerates.
    for _ in 0..4 {
        let (status, body) = app.post_events(&writer, &oversized()).await;
        assert_eq!(status, 502, "reported as usual: {body}");
        assert_eq!(body["results"][0]["error"]["code"], "plugin_failed", "{body}");
        assert!(body["results"][0]["error"]["message"].as_str().unwrap().contains("exceeds the limit"), "{body}");
    }
    let view = app.plugin(&alpha, "pii").await;
    assert_eq!(view["state"], "enabled", "test traffic changed the live plugin: {view}");
    assert_eq!(view["consecutive_failures"], 0, "{view}");
    assert!(view["disabled_reason"].is_null(), "{view}");

    // The next live event is still redacted.
    let (status, body) = app.post_events(&alpha, &ssn_event("live-1")).await;
    assert_eq!(status, 200, "{body}");
    let events = app.all_events(&alpha, "").await;
    assert_eq!(events.len(), 1);
    let ssn = events[0]["event_payload"]["ssn"].as_str().unwrap();
    assert!(ssn.starts_with("hmac:"), "stored in clear: {}", events[0]);
    assert_eq!(lineage(&events[0]), ["pii"]);

    // Live faults still count, as before.
    for _ in 0..2 {
        assert_eq!(app.post_events(&alpha, &oversized()).await.0, 502);
    }
    assert_eq!(app.plugin(&alpha, "pii").await["state"], "auto-disabled");
}

/// F3 (b): an auto-disabled plugin keeps applying its failure policy to the
/// events in its scope; only the customer's own `enabled: false` skips it.
#[tokio::test(flavor = "multi_thread")]
async fn an_auto_disabled_plugin_keeps_applying_its_failure_policy() {
    let app = spawn_app().await;
    let alpha = app.create_tenant("alpha").await;
    install_pii(&app, &alpha).await;
    for _ in 0..2 {
        assert_eq!(app.post_events(&alpha, &oversized()).await.0, 502);
    }
    let view = app.plugin(&alpha, "pii").await;
    assert_eq!(view["state"], "auto-disabled", "{view}");
    let reason = view["disabled_reason"].as_str().unwrap().to_string();
    assert!(reason.contains("2 consecutive failures"), "{view}");

    // reject: refused with plugin_failed, saying why; nothing stored.
    let (status, body) = app.post_events(&alpha, &ssn_event("r-1")).await;
    assert_eq!(status, 502, "fails closed: {body}");
    let error = &body["results"][0]["error"];
    assert_eq!(error["code"], "plugin_failed", "{body}");
    assert_eq!(error["plugin"], "pii", "{body}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("auto-disabled") && message.contains(&reason), "{body}");
    // In every family's own plugin_failed answer (session audit here).
    let (status, body) =
        app.post(&alpha, "/session/v1/audit", &json!({"event_name": "kick", "session_id": "s-1"})).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error_code"], "plugin_failed", "{body}");
    assert!(body["desc"].as_str().unwrap().contains("auto-disabled"), "{body}");
    // The test space meets the same chain.
    let (_, writer) = token(&app, &alpha, "ci", json!(["events:write"]), "test").await;
    assert_eq!(app.post_events(&writer, &ssn_event("t-1")).await.0, 502);
    // A dry run of the chain shows what live events meet.
    let (status, body) = app.post(&alpha, "/v1/pipeline/test", &json!({"events": [ssn_event("d-1")]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["error"]["code"], "plugin_failed", "{body}");
    assert!(app.all_events(&alpha, "").await.is_empty(), "nothing stored");

    // dead-letter: quarantined, untransformed, with the reason.
    let (status, view) = app.patch(&alpha, "/v1/plugins/pii", &json!({"failure_policy": "dead-letter"})).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "auto-disabled", "a policy change does not re-enable it: {view}");
    let (status, body) = app.post_events(&alpha, &ssn_event("dl-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "dead_lettered", "{body}");
    assert!(body["results"][0]["reason"].as_str().unwrap().starts_with("auto_disabled"), "{body}");
    let (_, letters) = app.get(&alpha, "/v1/dead-letters").await;
    assert_eq!(letters["items"][0]["id"], "dl-1", "{letters}");
    assert_eq!(letters["items"][0]["plugin"], "pii", "{letters}");
    assert!(app.all_events(&alpha, "").await.is_empty(), "nothing stored");

    // skip: the customer chose to fail open.
    app.patch(&alpha, "/v1/plugins/pii", &json!({"failure_policy": "skip"})).await;
    let (status, body) = app.post_events(&alpha, &ssn_event("s-1")).await;
    assert_eq!(status, 200, "{body}");
    let events = app.all_events(&alpha, "").await;
    assert_eq!(events.len(), 1);
    assert!(lineage(&events[0]).is_empty(), "{}", events[0]);

    // Disabled by the customer: skipped even under reject.
    let (_, view) = app.patch(&alpha, "/v1/plugins/pii", &json!({"failure_policy": "reject", "enabled": false})).await;
    assert_eq!(view["state"], "disabled", "{view}");
    let (status, body) = app.post_events(&alpha, &ssn_event("off-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "stored", "{body}");

    // Re-enabled: it runs again.
    let (_, view) = app.patch(&alpha, "/v1/plugins/pii", &json!({"enabled": true})).await;
    assert_eq!(view["state"], "enabled", "{view}");
    assert_eq!(app.post_events(&alpha, &ssn_event("on-1")).await.0, 200);
    let (_, one) = app.get(&alpha, "/v1/audit/events/on-1").await;
    assert!(one["event_payload"]["ssn"].as_str().unwrap().starts_with("hmac:"), "{one}");
    assert_eq!(lineage(&one), ["pii"]);
}

/// F7: a test-mode token reads the shared configuration and runs dry and
/// shadow runs, but every write to what the live space shares is a 403.
#[tokio::test(flavor = "multi_thread")]
async fn a_test_token_reads_but_never_writes_the_shared_configuration() {
    let app = spawn_app().await;
    let alpha = app.create_tenant("alpha").await;
    app.install(&alpha, "aloop", "customer-prefix", json!({"event_names": ["loop.*"]})).await;
    let (_, test_admin) = token(&app, &alpha, "test-admin", json!(["admin"]), "test").await;

    let refused = |what: &str, status: u16, body: &Value| {
        assert_eq!(status, 403, "{what}: {body}");
        let detail = body["detail"].as_str().unwrap_or_else(|| panic!("{what}: FastAPI shape: {body}"));
        assert!(detail.contains("test-mode"), "{what}: {body}");
    };
    let (status, body) = app.put(&test_admin, "/v1/retention", &json!({"days": 1})).await;
    refused("PUT /v1/retention", status, &body);
    let (status, body) = app.put(&test_admin, "/v1/quotas", &json!({"events_per_day": 1, "storage_bytes": 1})).await;
    refused("PUT /v1/quotas", status, &body);
    let (status, body) = delete(&app, &test_admin, "/v1/plugins/aloop").await;
    refused("DELETE /v1/plugins/aloop", status, &body);
    let (status, body) = app.patch(&test_admin, "/v1/plugins/aloop", &json!({"enabled": false})).await;
    refused("PATCH /v1/plugins/aloop", status, &body);
    let (status, body) = app.post(&test_admin, "/v1/plugins/aloop/rollback", &json!({"version": 1})).await;
    refused("POST rollback", status, &body);
    // The refusal comes before the body is parsed; the server reads what the
    // client still sends, so even a large upload gets the answer (not a
    // reset) every time.
    let large = vec![0u8; 4 << 20];
    for _ in 0..5 {
        let (status, body) = app.upload_bytes(&test_admin, "aloop", large.clone()).await;
        refused("POST /v1/plugins", status, &body);
        let (status, body) = app.upload_bytes(&test_admin, "fresh", large.clone()).await;
        refused("POST /v1/plugins (new)", status, &body);
    }
    // A narrower test token holding plugins:write is refused the same way.
    let (_, plugin_writer) = token(&app, &test_admin, "pw", json!(["plugins:write", "plugins:read"]), "test").await;
    let (status, body) = app.patch(&plugin_writer, "/v1/plugins/aloop", &json!({"position": 0})).await;
    refused("PATCH with plugins:write", status, &body);

    // Reads, dry runs and shadow runs are the test token's to use.
    let (status, body) = app.get(&test_admin, "/v1/plugins").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.get(&test_admin, "/v1/retention").await.0, 200);
    assert_eq!(app.get(&test_admin, "/v1/quotas").await.0, 200);
    let sample = json!({"events": [{"event_type": "loop.x"}]});
    let (status, body) = app.post(&test_admin, "/v1/plugins/aloop/test", &sample).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.post(&test_admin, "/v1/pipeline/test", &sample).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.post_events(&test_admin, &json!({"event_type": "loop.y"})).await.0, 200);
    let (status, body) = app.post(&test_admin, "/v1/plugins/aloop/shadow", &json!({"version": 1})).await;
    assert_eq!(status, 200, "{body}");

    // Live behaviour is as the live admin left it, and the live admin may
    // still change it.
    let view = app.plugin(&alpha, "aloop").await;
    assert_eq!((view["state"].clone(), view["version"].clone()), (json!("enabled"), json!(1)), "{view}");
    assert_eq!(view["position"], 1010, "{view}");
    assert_eq!(app.get(&alpha, "/v1/retention").await.1["days"], Value::Null);
    let (_, quotas) = app.get(&alpha, "/v1/quotas").await;
    assert_eq!(quotas["events_per_day"]["limit"], Value::Null, "{quotas}");
    assert_eq!(quotas["storage_bytes"]["limit"], Value::Null, "{quotas}");
    assert_eq!(app.put(&alpha, "/v1/retention", &json!({"days": 30})).await.0, 200);
    assert_eq!(delete(&app, &alpha, "/v1/plugins/aloop").await.0, 204);
}

/// F9: a token revokes (and lists) only tokens whose scopes it holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_narrow_token_cannot_revoke_a_broader_one() {
    let app = spawn_app().await;
    let alpha = app.create_tenant("alpha").await;
    let (narrow_id, narrow) = token(&app, &alpha, "narrow", json!(["tokens:write", "events:read"]), "live").await;
    let (reader_id, reader) = token(&app, &alpha, "reader", json!(["events:read"]), "live").await;
    let (writer_id, writer) = token(&app, &alpha, "writer", json!(["events:read", "events:write"]), "live").await;
    let (_, everything) = app.get(&alpha, "/v1/tokens").await;
    let admin_id = everything["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "admin")
        .and_then(|t| t["id"].as_str())
        .expect("the tenant's admin token is listed")
        .to_string();

    // The finding: the narrow token against the tenant's admin token.
    for id in [&admin_id, &writer_id] {
        let (status, body) = delete(&app, &narrow, &format!("/v1/tokens/{id}")).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["detail"], "Token not found");
    }
    assert_eq!(app.get(&alpha, "/v1/tokens").await.0, 200, "the admin token still works");
    assert_eq!(app.post_events(&writer, &json!({"event_type": "x"})).await.0, 200, "so does the writer");
    // Its listing shows only what it could grant.
    let (status, listed) = app.get(&narrow, "/v1/tokens").await;
    assert_eq!(status, 200, "{listed}");
    let mut names: Vec<&str> =
        listed["items"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["narrow", "reader"], "{listed}");

    // Narrower tokens it may revoke.
    assert_eq!(delete(&app, &narrow, &format!("/v1/tokens/{reader_id}")).await.0, 204);
    assert_eq!(app.get(&reader, "/v1/audit/events").await.0, 401, "revoked at once");
    // The admin revokes any token of its tenant.
    assert_eq!(delete(&app, &alpha, &format!("/v1/tokens/{writer_id}")).await.0, 204);
    assert_eq!(delete(&app, &alpha, &format!("/v1/tokens/{narrow_id}")).await.0, 204);
    assert_eq!(app.get(&narrow, "/v1/tokens").await.0, 401);
}

/// F12: two credentials that disagree authenticate nobody.
#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_credentials_are_unauthenticated() {
    let app = spawn_app().await;
    let alpha = app.create_tenant("alpha").await;
    let get = |headers: Vec<(&'static str, String)>, path: &'static str| {
        let mut request = app.client.get(app.url(path));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move {
            let r = request.send().await.expect("request");
            let status = r.status().as_u16();
            let challenge = r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
            (status, challenge, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let bearer = |t: &str| format!("Bearer {t}");
    let auth = AUTHORIZATION.as_str();

    // Each credential alone works, and both naming the same token.
    assert_eq!(get(vec![(auth, bearer(&alpha))], "/v1/tokens").await.0, 200);
    assert_eq!(get(vec![("x-api-key", alpha.clone())], "/v1/tokens").await.0, 200);
    assert_eq!(get(vec![(auth, bearer(&alpha)), ("x-api-key", alpha.clone())], "/v1/tokens").await.0, 200);

    let ambiguous = [
        ("two Authorization headers", vec![(auth, bearer(ADMIN_TOKEN)), (auth, bearer(&alpha))]),
        ("the same token twice in Authorization", vec![(auth, bearer(&alpha)), (auth, bearer(&alpha))]),
        ("Authorization and X-API-Key disagree", vec![(auth, bearer(&alpha)), ("x-api-key", ADMIN_TOKEN.to_string())]),
        ("two X-API-Key headers", vec![("x-api-key", alpha.clone()), ("x-api-key", ADMIN_TOKEN.to_string())]),
        (
            "a non-bearer Authorization beside a key",
            vec![(auth, "Basic Zm9vOmJhcg==".into()), ("x-api-key", alpha.clone())],
        ),
    ];
    for (what, headers) in ambiguous {
        let (status, challenge, body) = get(headers.clone(), "/v1/tokens").await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(challenge.as_deref(), Some("Bearer"), "{what}");
        assert_eq!(body, json!({"detail": "Not authenticated"}), "{what}");
        // Other families answer in their own unauthenticated shape.
        let (status, _, body) = get(headers, "/logs").await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    }
    let r = app
        .client
        .post(app.url("/session/v1/audit"))
        .header(auth, bearer(&alpha))
        .header("x-api-key", ADMIN_TOKEN)
        .json(&json!({"event_name": "kick", "session_id": "s-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["auth_success"].clone(), body["error_code"].clone()), (json!(false), json!("auth_token_invalid")));
    assert!(app.all_events(&alpha, "").await.is_empty() && app.all_events(ADMIN_TOKEN, "").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn test_traffics_plugin_runs_are_the_test_spaces_and_live_metrics_the_live_operators() {
    let app = spawn_app().await;
    app.install(ADMIN_TOKEN, "prefix", "customer-prefix", Value::Null).await;
    let scopes = json!(["events:write", "query:run", "metrics:read"]);
    let (_, test) = token(&app, ADMIN_TOKEN, "ci", scopes, "test").await;
    let (status, body) = app.post_events(&test, &json!([{"event_type": "a"}, {"event_type": "b"}])).await;
    assert_eq!(status, 200, "{body}");
    let runs = |token: String| {
        let app = &app;
        async move {
            let sql = json!({"sql": "SELECT count(*), coalesce(sum(events_in), 0) FROM plugin_runs"});
            let (status, body) = app.post(&token, "/v1/query", &sql).await;
            assert_eq!(status, 200, "{body}");
            body["rows"][0].clone()
        }
    };
    // The run of test traffic is the test space's, not the live space's.
    assert_eq!(runs(test.clone()).await, json!([1, 2]));
    assert_eq!(runs(ADMIN_TOKEN.to_string()).await, json!([0, 0]));
    // Metrics count live traffic of every tenant: the operator's test token
    // does not read them; its live admin does.
    let (status, _) = app.get(&test, "/metrics").await;
    assert_eq!(status, 403);
    let r = app.client.get(app.url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attribute_named_like_a_core_field_never_passes_for_it() {
    let app = spawn_app().await;
    let other = app.create_tenant("someone-else").await;
    app.install(
        &other,
        "boom",
        "hostile-panic",
        json!({"failure_policy": "dead-letter", "max_consecutive_failures": 100}),
    )
    .await;
    let spoof = json!({"event_type": "real", "id": "mine", "status": "ok",
        "attributes": {"tenant": "default", "id": "theirs", "status": "spoofed", "event_type": "fake", "zone": "eu"}});
    let (status, body) = app.post_events(&other, &spoof).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dead_lettered"], 1, "{body}");
    let (_, letters) = app.get(&other, "/v1/dead-letters").await;
    let event = &letters["items"][0]["event"];
    assert!(event.get("tenant").is_none(), "{event}");
    assert_eq!((&event["id"], &event["status"], &event["event_type"]), (&json!("mine"), &json!("ok"), &json!("real")));
    assert_eq!(event["zone"], "eu", "other attributes are shown");
    // A dry run shows its output events the same way.
    app.install(&other, "prefix", "customer-prefix", Value::Null).await;
    let (status, body) = app.post(&other, "/v1/plugins/prefix/test", &json!({"events": [spoof]})).await;
    assert_eq!(status, 200, "{body}");
    let event = &body["events"][0];
    assert!(event.get("tenant").is_none(), "{body}");
    assert_eq!(
        (&event["id"], &event["status"], &event["event_type"]),
        (&json!("mine"), &json!("ok"), &json!("customer.real"))
    );
}
