//! The SQL escape corpus (RELIABILITY.md, item 5): every statement that
//! could reach files, the network, extensions, settings, secrets, the
//! catalog or another tenant's rows is refused, nothing is created on disk,
//! and DuckDB's settings are exactly as before.

use serde_json::{json, Value};
use sluice_e2e::{spawn_app_with, ADMIN_TOKEN};

/// Every DuckDB setting and its value.
async fn settings(app: &sluice_e2e::TestApp) -> Vec<(String, String)> {
    app.store
        .read(|conn| {
            let mut stmt = conn.prepare("SELECT name, coalesce(value, '') FROM duckdb_settings() ORDER BY name")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .expect("settings")
}

fn corpus(dir: &str) -> Vec<String> {
    let statements = [
        // File readers, as functions and as paths.
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_csv_auto('/etc/passwd')",
        "SELECT * FROM read_parquet('DIR/x.parquet')",
        "SELECT * FROM read_json('/etc/hosts')",
        "SELECT * FROM read_json_auto('/etc/hosts')",
        "SELECT * FROM read_ndjson_objects('/etc/hosts')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_blob('/etc/passwd')",
        "SELECT * FROM parquet_scan('DIR/x.parquet')",
        "SELECT * FROM sniff_csv('/etc/passwd')",
        "SELECT * FROM glob('/*')",
        "SELECT * FROM '/etc/passwd'",
        "FROM '/etc/passwd'",
        "SELECT * FROM 'DIR/data.duckdb'",
        "SELECT * FROM events UNION ALL SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM events, LATERAL (SELECT * FROM read_text('/etc/passwd'))",
        "SELECT * FROM (FROM read_text('/etc/passwd'))",
        "SELECT (SELECT content FROM read_text('/etc/passwd'))",
        "SELECT * FROM read_csv(['/etc/passwd', '/etc/hosts'])",
        "SELECT * FROM events e JOIN tokens t ON true",
        "SELECT * FROM query('SELECT * FROM tokens')",
        "SELECT * FROM query_table('tokens')",
        // COPY, export and import.
        "COPY events TO 'DIR/out.csv'",
        "COPY (SELECT * FROM events) TO 'DIR/out.parquet' (FORMAT parquet)",
        "COPY events FROM '/etc/passwd'",
        "COPY (SELECT 1) TO '/dev/stdout'",
        "COPY (SELECT 1) TO 'DIR/out.json' (FORMAT json)",
        "EXPORT DATABASE 'DIR/export'",
        "IMPORT DATABASE 'DIR/export'",
        // Other databases.
        "ATTACH 'DIR/other.duckdb' AS other",
        "ATTACH ':memory:' AS mem",
        "DETACH main",
        "USE system",
        // Extensions.
        "INSTALL httpfs",
        "LOAD httpfs",
        "FORCE INSTALL postgres_scanner",
        "LOAD 'DIR/evil.duckdb_extension'",
        // Settings.
        "SET enable_external_access = true",
        "SET GLOBAL enable_external_access = true",
        "SET memory_limit = '100GB'",
        "SET threads = 64",
        "SET lock_configuration = false",
        "RESET lock_configuration",
        "RESET ALL",
        "PRAGMA enable_profiling",
        "PRAGMA database_list",
        "PRAGMA threads = 1",
        "SELECT current_setting('enable_external_access')",
        "SELECT * FROM duckdb_settings()",
        "SELECT getenv('HOME')",
        "SELECT * FROM getenv('HOME')",
        // Secrets.
        "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
        "SELECT * FROM duckdb_secrets()",
        "SELECT * FROM which_secret('s3://x', 's3')",
        // DDL and DML.
        "CREATE TABLE x AS SELECT * FROM events",
        "CREATE VIEW x AS SELECT 1",
        "CREATE MACRO f(a) AS a",
        "CREATE TEMP TABLE t (a INT)",
        "DROP TABLE events",
        "DROP VIEW events",
        "DELETE FROM events",
        "UPDATE events SET event_type = 'x'",
        "INSERT INTO events SELECT * FROM events",
        "ALTER TABLE events ADD COLUMN x INT",
        "TRUNCATE events",
        "CHECKPOINT",
        "VACUUM",
        "BEGIN TRANSACTION",
        "CALL pragma_version()",
        // Several statements, and comment and quoting tricks.
        "SELECT 1; DROP TABLE events",
        "SELECT 1;DROP TABLE events;",
        "SELECT 1 /* ; */ ; DROP TABLE events",
        "SELECT 1 --\n; DROP TABLE events",
        "SELECT * FROM \"tokens\"",
        "SELECT * FROM Tokens",
        "SELECT * FROM \"TOKENS\"",
        "SELECT * FROM main.events",
        "SELECT * FROM \"main\".\"events\"",
        "SELECT * FROM memory.main.events",
        "SELECT * FROM system.main.duckdb_tables",
        "WITH x AS (SELECT * FROM tokens) SELECT * FROM x",
        "SELECT (SELECT count(*) FROM tokens)",
        "SELECT * FROM events WHERE id IN (SELECT id FROM idempotency_keys)",
        "SELECT * FROM plugins",
        "SELECT * FROM tenants",
        // The catalog.
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM duckdb_tables()",
        "SELECT * FROM duckdb_databases()",
        "SELECT * FROM duckdb_extensions()",
        "SELECT * FROM duckdb_functions()",
        "SELECT * FROM duckdb_columns()",
        "SELECT * FROM pragma_database_list",
        "SELECT * FROM sqlite_master",
        "SELECT * FROM pg_catalog.pg_tables",
        "SELECT current_database()",
        "SELECT current_schema()",
        "SHOW TABLES",
        "SHOW ALL TABLES",
        "DESCRIBE tokens",
        "SUMMARIZE tokens",
        "SUMMARIZE events",
        "DESCRIBE events",
        "SELECT * FROM (SHOW TABLES)",
        "EXPLAIN SELECT * FROM tokens",
        "EXPLAIN ANALYZE SELECT 1",
    ];
    statements.iter().map(|s| s.replace("DIR", dir)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sql_escape_corpus_is_refused_entirely() {
    let app = spawn_app_with(|s| s.query_timeout_secs = 2).await;
    let other = app.create_tenant("other").await;
    app.post_events(ADMIN_TOKEN, &json!({"event_type": "mine"})).await;
    app.post_events(&other, &json!({"event_type": "other-secret"})).await;
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().to_str().unwrap().to_string();
    let before = settings(&app).await;
    let corpus = corpus(&dir);
    assert!(corpus.len() >= 100, "{} statements", corpus.len());
    let mut accepted = Vec::new();
    for sql in &corpus {
        let (status, body) = app.post(ADMIN_TOKEN, "/v1/query", &json!({"sql": sql})).await;
        let kind = body["detail"][0]["type"].as_str().unwrap_or("");
        if status != 422 || !["query_refused", "query_invalid"].contains(&kind) {
            accepted.push(format!("{sql} -> {status} {body}"));
        }
        assert!(!body.to_string().contains("other-secret"), "{sql} leaked: {body}");
    }
    assert!(accepted.is_empty(), "not refused ({} of {}):\n{}", accepted.len(), corpus.len(), accepted.join("\n"));
    let created: Vec<_> = std::fs::read_dir(target.path()).unwrap().collect();
    assert!(created.is_empty(), "files created: {created:?}");
    assert_eq!(settings(&app).await, before, "a setting changed");
    // The data is intact.
    let (_, body) = app.post(ADMIN_TOKEN, "/v1/query", &json!({"sql": "SELECT event_type FROM events"})).await;
    assert_eq!(body["rows"], json!([["mine"]]));
    let (_, body) = app.post(&other, "/v1/query", &json!({"sql": "SELECT count(*) FROM events"})).await;
    assert_eq!(body["rows"][0][0], Value::from(1));
}
