//! Versioned migrations, run in order at startup inside one transaction each.

use duckdb::Connection;

/// `(version, SQL)`; append only, never edit a released entry.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "
    CREATE TABLE events (
        seq BIGINT NOT NULL,
        tenant VARCHAR NOT NULL,
        id VARCHAR NOT NULL,
        family VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL,
        received_at TIMESTAMP NOT NULL,
        user_id BIGINT,
        actor_type VARCHAR NOT NULL,
        actor_id VARCHAR,
        source VARCHAR NOT NULL,
        event_group VARCHAR NOT NULL,
        event_type VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        resource_type VARCHAR,
        resource_id VARCHAR,
        session_id VARCHAR,
        vm_id VARCHAR,
        task_id BIGINT,
        request_id VARCHAR,
        correlation_id VARCHAR,
        http_method VARCHAR,
        path VARCHAR,
        http_status INTEGER,
        latency_ms DOUBLE,
        ip_address VARCHAR,
        user_agent VARCHAR,
        node_ip VARCHAR,
        worker_id VARCHAR,
        event_payload VARCHAR,
        error_message VARCHAR,
        attributes VARCHAR,
        lineage VARCHAR NOT NULL,
        raw VARCHAR NOT NULL
    );
    CREATE TABLE dead_letters (
        seq BIGINT NOT NULL,
        tenant VARCHAR NOT NULL,
        id VARCHAR NOT NULL,
        family VARCHAR NOT NULL,
        received_at TIMESTAMP NOT NULL,
        plugin VARCHAR NOT NULL,
        plugin_version INTEGER NOT NULL,
        reason VARCHAR NOT NULL,
        event VARCHAR NOT NULL,
        raw VARCHAR NOT NULL
    );
    CREATE TABLE plugin_logs (
        tenant VARCHAR NOT NULL,
        plugin VARCHAR NOT NULL,
        plugin_version INTEGER NOT NULL,
        logged_at TIMESTAMP NOT NULL,
        level VARCHAR NOT NULL,
        message VARCHAR NOT NULL,
        fields VARCHAR NOT NULL
    );
    CREATE TABLE tenants (
        id VARCHAR PRIMARY KEY,
        created_at TIMESTAMP NOT NULL
    );
    CREATE TABLE tokens (
        hash VARCHAR PRIMARY KEY,
        tenant VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
        scopes VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL,
        revoked_at TIMESTAMP
    );
    CREATE TABLE plugin_versions (
        tenant VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
        version INTEGER NOT NULL,
        sha256 VARCHAR NOT NULL,
        size BIGINT NOT NULL,
        uploaded_at TIMESTAMP NOT NULL,
        PRIMARY KEY (tenant, name, version)
    );
    CREATE TABLE plugins (
        tenant VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
        settings VARCHAR NOT NULL,
        updated_at TIMESTAMP NOT NULL,
        PRIMARY KEY (tenant, name)
    );
    ",
    ),
    (
        2,
        "
        CREATE TABLE plugin_runs (
            tenant VARCHAR NOT NULL,
            plugin VARCHAR NOT NULL,
            plugin_version INTEGER NOT NULL,
            started_at TIMESTAMP NOT NULL,
            events_in INTEGER NOT NULL,
            events_out INTEGER NOT NULL,
            dropped INTEGER NOT NULL,
            rejected INTEGER NOT NULL,
            fault VARCHAR,
            elapsed_us BIGINT NOT NULL,
            fuel BIGINT NOT NULL
        );
        ALTER TABLE tenants ADD COLUMN retention_days INTEGER;
        ",
    ),
    (
        3,
        "
        ALTER TABLE tokens ADD COLUMN mode VARCHAR DEFAULT 'live';
        ",
    ),
    (
        4,
        "
        ALTER TABLE tenants ADD COLUMN quota_events_per_day BIGINT;
        ALTER TABLE tenants ADD COLUMN quota_storage_bytes BIGINT;
        ",
    ),
    (
        5,
        "
        CREATE TABLE idempotency_keys (
            tenant VARCHAR NOT NULL,
            key VARCHAR NOT NULL,
            request_hash VARCHAR NOT NULL,
            status INTEGER NOT NULL,
            body VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (tenant, key)
        );
        ",
    ),
    (
        6,
        "
        ALTER TABLE tenants ADD COLUMN quota_events_per_second BIGINT;
        ALTER TABLE tenants ADD COLUMN quota_events_burst BIGINT;
        ",
    ),
    (7, "ALTER TABLE tenants ADD COLUMN quota_plugin_ms_per_second BIGINT;"),
    (8, "ALTER TABLE tenants ADD COLUMN quota_bytes_per_second BIGINT;"),
    // Remembered answers move out of the indexed table: DuckDB's insert
    // into a table with a primary key costs time in proportion to the
    // bytes the table holds (~100 ms per insert beside 1.7 GB of answers),
    // which one tenant's large answers charged to every tenant's keyed
    // ingest (RELIABILITY.md, F22). The keys keep their index; the answers
    // table has none, and is read only by a retry.
    (
        9,
        "
        CREATE TABLE idempotency_answers (
            tenant VARCHAR NOT NULL,
            key VARCHAR NOT NULL,
            body VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
        INSERT INTO idempotency_answers SELECT tenant, key, body, created_at FROM idempotency_keys;
        CREATE TEMP TABLE keys_before AS SELECT tenant, key, request_hash, status, created_at FROM idempotency_keys;
        DROP TABLE idempotency_keys;
        CREATE TABLE idempotency_keys (
            tenant VARCHAR NOT NULL,
            key VARCHAR NOT NULL,
            request_hash VARCHAR NOT NULL,
            status INTEGER NOT NULL,
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (tenant, key)
        );
        INSERT INTO idempotency_keys SELECT * FROM keys_before;
        DROP TABLE keys_before;
        ",
    ),
];

/// Bring the database up to the newest schema.
///
/// # Errors
///
/// Any DuckDB error; a failed migration is rolled back whole.
pub fn migrate(conn: &Connection) -> duckdb::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL)",
    )?;
    let current: i32 =
        conn.query_row("SELECT coalesce(max(version), 0) FROM schema_migrations", [], |row| row.get(0))?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        conn.execute_batch("BEGIN TRANSACTION")?;
        let applied = conn
            .execute_batch(sql)
            .and_then(|()| conn.execute("INSERT INTO schema_migrations VALUES (?, now())", [version]).map(|_| ()));
        match applied {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(())
}
