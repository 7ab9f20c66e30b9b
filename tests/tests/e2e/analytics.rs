//! Analysts' SQL and exports, through HTTP against the real DuckDB file.

use serde_json::{json, Value};
use sluice_e2e::{spawn_app_with, TestApp, ADMIN_TOKEN};

async fn query(app: &TestApp, token: &str, sql: &str, params: Value) -> (u16, Value) {
    app.post(token, "/v1/query", &json!({"sql": sql, "params": params})).await
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_see_only_the_tenants_rows_and_refuse_escapes() {
    let app = spawn_app_with(|s| {
        s.query_max_rows = 5;
        s.query_timeout_secs = 1;
    })
    .await;
    let acme = app.create_tenant("acme").await;
    let batch: Vec<Value> = (0..30).map(|i| json!({"event_type": format!("t{}", i % 3), "task_id": i})).collect();
    app.post_events(ADMIN_TOKEN, &Value::Array(batch)).await;
    app.post_events(&acme, &json!({"event_type": "acme-secret-value"})).await;

    let (status, body) =
        query(&app, ADMIN_TOKEN, "SELECT event_type, count(*) AS n FROM events GROUP BY 1 ORDER BY 1", json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["columns"][0]["name"], "event_type");
    assert_eq!(body["rows"], json!([["t0", 10], ["t1", 10], ["t2", 10]]));
    assert_eq!(body["truncated"], false);

    let (_, body) = query(&app, ADMIN_TOKEN, "SELECT count(*) FROM events WHERE event_type = $1", json!(["t1"])).await;
    assert_eq!(body["rows"], json!([[10]]));
    let (_, body) = query(&app, &acme, "SELECT event_type FROM events", json!([])).await;
    assert_eq!(body["rows"], json!([["acme-secret-value"]]));
    let (_, body) = query(&app, ADMIN_TOKEN, "SELECT task_id FROM events ORDER BY task_id", json!([])).await;
    assert_eq!(body["row_count"], 5);
    assert_eq!(body["truncated"], true);

    for (sql, reason) in [
        ("SELECT * FROM read_csv('/etc/passwd')", "table functions are not allowed"),
        ("SELECT * FROM main.events", "qualified table names are not allowed"),
        ("SELECT * FROM tokens", "table tokens is not available"),
        ("SELECT getenv('HOME')", "function getenv is not allowed"),
        ("ATTACH '/tmp/x.db' AS x", "only a single SELECT"),
        ("SELECT 1; DROP TABLE events", "only a single SELECT"),
        ("COPY (SELECT 1) TO '/tmp/sluice-escape.csv'", "only a single SELECT"),
    ] {
        let (status, body) = query(&app, ADMIN_TOKEN, sql, json!([])).await;
        assert_eq!(status, 422, "{sql}: {body}");
        assert_eq!(body["detail"][0]["type"], "query_refused", "{sql}");
        assert!(body["detail"][0]["msg"].as_str().unwrap().contains(reason), "{sql}: {body}");
    }
    assert!(!std::path::Path::new("/tmp/sluice-escape.csv").exists());

    // Runtime errors are reported in full: the worker's database holds only
    // the caller's rows, so they can quote nothing of another tenant's.
    let (status, body) = query(&app, ADMIN_TOKEN, "SELECT CAST(event_type AS INTEGER) FROM events", json!([])).await;
    assert_eq!(status, 422);
    let msg = body["detail"][0]["msg"].as_str().unwrap();
    assert!(msg.contains("Conversion Error") && !msg.contains("acme"), "{msg}");

    // A runaway cross join is interrupted at the time limit.
    let started = std::time::Instant::now();
    let (status, body) = query(
        &app,
        ADMIN_TOKEN,
        "SELECT max(hash(a.id || b.id || c.id || d.id || e.id || f.id)) FROM events a, events b, events c, events d, events e, events f",
        json!([]),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["detail"][0]["type"], "query_timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    let (status, _) = query(&app, ADMIN_TOKEN, "SELEC 1", json!([])).await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn results_and_exports_come_as_csv_ndjson_and_parquet() {
    let app = spawn_app_with(|_| {}).await;
    let other = app.create_tenant("other").await;
    let batch: Vec<Value> = (0..25)
        .map(|i| json!({"event_type": "x", "task_id": i, "created_at": format!("2026-01-{:02}T00:00:00Z", i + 1)}))
        .collect();
    app.post_events(ADMIN_TOKEN, &Value::Array(batch)).await;
    app.post_events(&other, &json!({"event_type": "not-yours"})).await;

    let r = app
        .client
        .post(app.url("/v1/query"))
        .bearer_auth(ADMIN_TOKEN)
        .header("accept", "text/csv")
        .json(&json!({"sql": "SELECT task_id, 'a,b' AS s FROM events ORDER BY task_id LIMIT 2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "task_id,s\n0,\"a,b\"\n1,\"a,b\"\n");

    let r = app
        .client
        .get(app.url("/v1/export?format=ndjson&from=2026-01-05T00:00:00Z&to=2026-01-10T00:00:00Z"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let tasks: Vec<i64> =
        text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["task_id"].as_i64().unwrap()).collect();
    assert_eq!(tasks, [4, 5, 6, 7, 8], "oldest first, [from, to)");

    for (path, accept, body) in [
        ("/v1/export?format=parquet", None, None),
        ("/v1/query", Some("application/vnd.apache.parquet"), Some(json!({"sql": "SELECT * FROM events"}))),
    ] {
        let request = match &body {
            Some(b) => app.client.post(app.url(path)).json(b),
            None => app.client.get(app.url(path)),
        };
        let request = match accept {
            Some(a) => request.header("accept", a),
            None => request,
        };
        let r = request.bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let bytes = r.bytes().await.unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bytes).unwrap();
        let conn = duckdb::Connection::open_in_memory().unwrap();
        let (n, foreign): (i64, i64) = conn
            .query_row(
                &format!(
                    "SELECT count(*), count(*) FILTER (WHERE event_type = 'not-yours') FROM read_parquet('{}')",
                    file.path().display()
                ),
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, foreign), (25, 0), "{path}");
    }
    let leftovers = std::fs::read_dir(app.data_dir.join("exports")).unwrap().count();
    assert_eq!(leftovers, 0, "export files are removed once streamed");

    let (status, _) = app.get(ADMIN_TOKEN, "/v1/export?format=xml").await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_only_expired_events_of_that_tenant() {
    let app = spawn_app_with(|s| s.retention_interval_secs = 1).await;
    let other = app.create_tenant("keeper").await;
    let (old, recent) = (days_ago(40), days_ago(1));
    for token in [ADMIN_TOKEN, other.as_str()] {
        let batch = json!([
            {"event_type": "old", "created_at": old},
            {"event_type": "new", "created_at": recent}
        ]);
        app.post_events(token, &batch).await;
    }
    let (status, body) = app.put(ADMIN_TOKEN, "/v1/retention", &json!({"days": 30})).await;
    assert_eq!(status, 200, "{body}");
    let (_, got) = app.get(ADMIN_TOKEN, "/v1/retention").await;
    assert_eq!(got, json!({"days": 30}));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let names: Vec<String> = app
            .all_events(ADMIN_TOKEN, "")
            .await
            .iter()
            .map(|e| e["event_type"].as_str().unwrap().to_string())
            .collect();
        if names == ["new"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "expired events still there: {names:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(app.all_events(&other, "").await.len(), 2, "a tenant without retention keeps everything");
    let (status, _) = app.put(ADMIN_TOKEN, "/v1/retention", &json!({"days": 0})).await;
    assert_eq!(status, 422);
}

/// An RFC 3339 time `days` days before now.
fn days_ago(days: u64) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - days * 86_400;
    let conn = duckdb::Connection::open_in_memory().unwrap();
    conn.query_row("SELECT strftime(to_timestamp(?), '%Y-%m-%dT%H:%M:%SZ')", [secs as i64], |row| row.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pretty_printed_payload_is_one_line_of_an_ndjson_export_and_listed_as_sent() {
    let app = sluice_e2e::spawn_app().await;
    let body = "{\"event_type\": \"pretty\", \"event_payload\": {\n  \"z\": 1,\n  \"a\": \"x\\ny\"\r\n}}";
    let (status, body) = app.post_text(ADMIN_TOKEN, "/v1/events", "application/json", body).await;
    assert_eq!(status, 200, "{body}");
    app.post_events(ADMIN_TOKEN, &json!({"event_type": "plain"})).await;
    let r = app.client.get(app.url("/v1/export?format=ndjson")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["event_payload"], json!({"z": 1, "a": "x\ny"}));
    // A listing shows the payload too (its keys in the client's order).
    let r =
        app.client.get(app.url("/v1/audit/events?event_type=pretty")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let listed = r.text().await.unwrap();
    assert!(listed.contains(r#""event_payload":{"z":1,"a":"x\ny"}"#), "{listed}");
}
