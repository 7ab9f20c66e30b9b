//! `POST /session/v1/audit` as document 000 specifies it.

use serde_json::{json, Value};
use sluice_e2e::{spawn_app, TestApp, ADMIN_TOKEN};

const SESSION: &str = "/session/v1/audit";

async fn post(app: &TestApp, token: &str, body: &Value) -> (u16, Value) {
    app.post(token, SESSION, body).await
}

fn full_example() -> Value {
    json!({
        "event_name": "player_joined",
        "session_id": "session-123",
        "custom_data": {"k": "v"},
        "session_type": "ranked",
        "region_id": "us-east",
        "joinable": true,
        "updated_teams": [{"max_size": 5, "custom_data": {"color": "red"}}],
        "source": "MATCHMAKING",
        "player_uuid": "6f1c2a9e-8d2b-4a8e-9d65-0d5b0f5b2a11",
        "team_id": 2,
        "invited_session_id": "s-2",
        "removed_session_id": "s-3",
        "version": "v7",
        "client_settings": {"platform_id": 3, "platform": "Steam", "input": "gamepad"},
        "crossplay_preferences": {"permitted_platform": "desired_platforms_any", "permitted_input": "desired_inputs_any"},
        "player_status": "leader",
        "platform": "PSN",
        "platform_session_id": "psn-1",
        "instance_id": "instance-9",
        "host_type": "dedicated",
        "host_player_uuid": "0a6d7b1e-5c1f-4f84-8b5d-3bbf5e1b9c22",
        "instance_request_template": "3c2d0a4e-2b8f-4d6a-9e1c-7f5a4b3c2d10",
        "map": "dust",
        "mode": "ctf",
        "allocation_id": "alloc-1",
        "join_status": "joinable",
        "join_params": {"public_conn_str": "1.2.3.4:7777", "private_conn_str": "10.0.0.1:7777", "custom_data": {"a": "b"}},
        "instance_health": "healthy",
        "queue_id": "q-1",
        "ticket_id": "t-1",
        "additional_params": {"double_args": {"skill": 1.5}, "string_args": {"mode": "x"}, "tags": ["a"], "extensions": {"e": "AA=="}},
        "map_preferences": ["dust", "nuke"],
        "queued_session_id": "qs-1",
        "match_id": "m-1"
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_body_is_stored_with_the_customer_prefix() {
    let app = spawn_app().await;
    let (status, body) = post(&app, ADMIN_TOKEN, &full_example()).await;
    assert_eq!(status, 200, "{body}");
    let events = app.all_events(ADMIN_TOKEN, "&family=session-audit").await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["id"], body["event_ids"][0]);
    assert_eq!(e["event_type"], "customer.player_joined", "the shipped customer-prefix plugin ran");
    assert_eq!(e["session_id"], "session-123");
    assert_eq!(e["vm_id"], "instance-9");
    assert_eq!(e["actor_id"], "6f1c2a9e-8d2b-4a8e-9d65-0d5b0f5b2a11");
    assert_eq!(e["event_payload"]["join_params"]["public_conn_str"], "1.2.3.4:7777");
    assert_eq!(e["lineage"][0]["plugin"], "customer-prefix");
    let (_, found) = app.get(ADMIN_TOKEN, "/v1/audit/events?session_id=session-123").await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1);

    // Already prefixed names stay as they are; the minimal body works.
    let (status, _) = post(&app, ADMIN_TOKEN, &json!({"event_name": "customer.x", "session_id": "s"})).await;
    assert_eq!(status, 200);
    assert_eq!(app.all_events(ADMIN_TOKEN, "").await[0]["event_type"], "customer.x");
}

#[tokio::test(flavor = "multi_thread")]
async fn players_fan_out_into_one_event_each() {
    let app = spawn_app().await;
    let players = [
        "11111111-1111-4111-8111-111111111111",
        "22222222-2222-4222-8222-222222222222",
        "33333333-3333-4333-8333-333333333333",
    ];
    let (status, body) =
        post(&app, ADMIN_TOKEN, &json!({"event_name": "kicked", "session_id": "s-9", "players": players})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event_ids"].as_array().unwrap().len(), 3);
    let events = app.all_events(ADMIN_TOKEN, "&session_id=s-9").await;
    let mut actors: Vec<&str> = events.iter().map(|e| e["actor_id"].as_str().unwrap()).collect();
    actors.sort();
    assert_eq!(actors, players);
    assert!(events.iter().all(|e| e["event_payload"]["player_uuid"] == e["actor_id"]));
    assert!(events.iter().all(|e| e["event_payload"].get("players").is_none()));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_constraint_is_checked_at_its_boundary() {
    let app = spawn_app().await;
    let base = json!({"event_name": "e", "session_id": "s"});
    let with = |key: &str, value: Value| {
        let mut b = base.clone();
        b[key] = value;
        b
    };
    let teams = |n: usize| Value::Array((0..n).map(|_| json!({"max_size": 1})).collect());
    // Just inside: accepted.
    for body in [
        with("event_name", json!("x".repeat(128))),
        with("session_id", json!("s".repeat(128))),
        with("updated_teams", teams(50)),
        with("updated_teams", json!([{"max_size": 100}])),
        with("custom_data", json!({"k": "v".repeat(4096)})),
        with("platform_session_id", json!("p".repeat(4096))),
        with("source", json!("PLAYER")),
    ] {
        let (status, resp) = post(&app, ADMIN_TOKEN, &body).await;
        assert_eq!(status, 200, "{body}: {resp}");
    }
    let stored = app.all_events(ADMIN_TOKEN, "").await.len();
    // Just outside: 422 with pydantic's loc, type and wording.
    for (body, loc, kind, msg) in [
        (
            with("event_name", json!("x".repeat(129))),
            json!(["body", "event_name"]),
            "string_too_long",
            "String should have at most 128 characters",
        ),
        (
            with("event_name", json!("")),
            json!(["body", "event_name"]),
            "string_too_short",
            "String should have at least 1 character",
        ),
        (json!({"event_name": "e"}), json!(["body", "session_id"]), "missing", "Field required"),
        (
            with("updated_teams", teams(51)),
            json!(["body", "updated_teams"]),
            "too_long",
            "List should have at most 50 items after validation, not 51",
        ),
        (
            with("updated_teams", json!([{"max_size": 0}])),
            json!(["body", "updated_teams", 0, "max_size"]),
            "greater_than_equal",
            "Input should be greater than or equal to 1",
        ),
        (
            with("updated_teams", json!([{"max_size": 101}])),
            json!(["body", "updated_teams", 0, "max_size"]),
            "less_than_equal",
            "Input should be less than or equal to 100",
        ),
        (
            with("custom_data", json!({"k": ""})),
            json!(["body", "custom_data", "k"]),
            "string_too_short",
            "String should have at least 1 character",
        ),
        (
            with("platform_session_id", json!("p".repeat(4097))),
            json!(["body", "platform_session_id"]),
            "string_too_long",
            "String should have at most 4096 characters",
        ),
        (
            with("source", json!("BOT")),
            json!(["body", "source"]),
            "enum",
            "Input should be 'BACKFILL', 'MATCHMAKING' or 'PLAYER'",
        ),
        (
            with("player_uuid", json!("not-a-uuid")),
            json!(["body", "player_uuid"]),
            "uuid_parsing",
            "Input should be a valid UUID",
        ),
        (
            with("client_settings", json!({"platform": "Steam"})),
            json!(["body", "client_settings", "input"]),
            "missing",
            "Field required",
        ),
        (with("joinable", json!("yes")), json!(["body", "joinable"]), "bool_type", "Input should be a valid boolean"),
        (with("team_id", json!("two")), json!(["body", "team_id"]), "int_type", "Input should be a valid integer"),
        (
            with("players", json!(["nope"])),
            json!(["body", "players", 0]),
            "uuid_parsing",
            "Input should be a valid UUID",
        ),
        (
            with("join_params", json!({"public_conn_str": "a"})),
            json!(["body", "join_params", "private_conn_str"]),
            "missing",
            "Field required",
        ),
    ] {
        let (status, resp) = post(&app, ADMIN_TOKEN, &body).await;
        assert_eq!(status, 422, "{body}: {resp}");
        let detail = &resp["detail"][0];
        assert_eq!(detail["loc"], loc, "{resp}");
        assert_eq!(detail["type"], kind, "{resp}");
        assert!(detail["msg"].as_str().unwrap().starts_with(msg), "{resp}");
    }
    let (status, resp) = post(&app, ADMIN_TOKEN, &json!([1])).await;
    assert_eq!((status, resp["detail"][0]["type"].clone()), (422, json!("dict_type")));
    assert_eq!(app.all_events(ADMIN_TOKEN, "").await.len(), stored, "nothing stored from refused requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_errors_and_plugin_rejections_use_the_documents_shapes() {
    let app = spawn_app().await;
    let body = json!({"event_name": "e", "session_id": "unknown-session"});
    let r = app.client.post(app.url(SESSION)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["auth_success"], false);
    assert!(err["error_code"].is_string() && err["desc"].is_string());

    let (_, reader) = app.post(ADMIN_TOKEN, "/v1/tokens", &json!({"name": "r", "scopes": ["events:read"]})).await;
    let (status, err) = post(&app, reader["token"].as_str().unwrap(), &body).await;
    assert_eq!(status, 403);
    assert_eq!(
        (err["auth_success"].clone(), err["error_code"].clone()),
        (json!(true), json!("insufficient_permissions"))
    );
    let (_, writer) =
        app.post(ADMIN_TOKEN, "/v1/tokens", &json!({"name": "w", "scopes": ["session-audit:update:self"]})).await;
    let writer = writer["token"].as_str().unwrap().to_string();

    // Sessions live in the customer's systems: their plugin says which exist.
    app.install(
        ADMIN_TOKEN,
        "sessions",
        "schema-guard",
        json!({"families": ["session-audit"], "config": {"rules": [
            {"field": "session_id", "enum": ["known"], "code": "session_not_found"},
            {"field": "event_payload.map", "enum": ["dust"]}
        ]}}),
    )
    .await;
    let (status, err) = post(&app, &writer, &body).await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["auth_success"], true);
    assert_eq!(err["error_code"], "session_not_found");
    assert!(err["desc"].as_str().unwrap().contains("session_id"));
    let (status, err) = post(&app, &writer, &json!({"event_name": "e", "session_id": "known", "map": "nuke"})).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["detail"][0]["loc"], json!(["body", "event_payload", "map"]));
    // A rejection of one player's event refuses the whole request.
    let players = json!(["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"]);
    let (status, _) = post(&app, &writer, &json!({"event_name": "e", "session_id": "nope", "players": players})).await;
    assert_eq!(status, 404);
    assert!(app.all_events(ADMIN_TOKEN, "&family=session-audit").await.is_empty());
    let (status, ok) = post(&app, &writer, &json!({"event_name": "e", "session_id": "known", "map": "dust"})).await;
    assert_eq!(status, 200, "{ok}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_players_event_keeps_the_request_naming_that_player_as_its_raw_input() {
    let app = spawn_app().await;
    // 1,000 players: the whole 40 kB request as every event's raw input
    // would store 40 MB.
    let players: Vec<String> = (0..1000).map(|i| format!("{i:08x}-1111-4111-8111-111111111111")).collect();
    let (status, body) =
        post(&app, ADMIN_TOKEN, &json!({"event_name": "joined", "session_id": "s-raw", "players": players})).await;
    assert_eq!(status, 200, "{body}");
    let sql = "SELECT count(*), max(strlen(raw)), count(*) FILTER (WHERE json_extract_string(raw, '$.players[0]') = actor_id \
               AND json_array_length(raw, '$.players') = 1) FROM events WHERE session_id = 's-raw'";
    let (status, answer) = app.post(ADMIN_TOKEN, "/v1/query", &json!({"sql": sql})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rows"][0][0], 1000);
    assert!(answer["rows"][0][1].as_i64().unwrap() < 200, "{answer}");
    assert_eq!(answer["rows"][0][2], 1000, "each raw input names its own player: {answer}");
}
