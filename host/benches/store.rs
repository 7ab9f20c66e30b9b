//! Store benchmarks: writer throughput by batch size, listing latency at 1M
//! and 10M events (first page and a page 10,000 rows deep), and a GROUP BY
//! over every event. Run with `cargo bench -p sluice --bench store`;
//! `SLUICE_BENCH_EVENTS` (default 10000000) sets the largest table.
//! Figures go to BENCHMARKS.md.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice::event::{Event, StoredEvent};
use sluice::store::{EventFilter, EventStore, QueryFormat, QueryLimits, QueryOptions, StoreOptions, WriteBatch};

fn event(tenant: &str, n: u64) -> StoredEvent {
    let raw = sluice::event::raw_of(&json!({"event_type": "bench"}));
    StoredEvent {
        event: Event {
            id: format!("{tenant}-{n}"),
            tenant: tenant.to_string(),
            family: "generic".into(),
            name: format!("type.{}", n % 50),
            group: "type".into(),
            status: if n % 10 == 0 { "failure".into() } else { "success".into() },
            source: "bench".into(),
            occurred_at: 1_700_000_000_000_000 + n as i64 * 1000,
            received_at: 1_700_000_000_000_000 + n as i64 * 1000,
            actor_type: "user".into(),
            actor_id: Some(format!("u{}", n % 1000)),
            user_id: Some((n % 1000) as i64),
            resource_type: Some("vm".into()),
            resource_id: Some(format!("vm-{}", n % 5000)),
            session_id: Some(format!("s-{}", n % 20000)),
            attributes: vec![("http_status".into(), "200".into()), ("latency_ms".into(), "12.5".into())],
            payload: r#"{"region":"eu-west-1","size":"large","tags":["a","b"]}"#.into(),
        },
        lineage: Vec::new().into(),
        raw,
    }
}

/// Write `total` events in batches of `batch` from `concurrency` tasks;
/// returns rows per second.
async fn write(store: &EventStore, tenant: &str, start: u64, total: u64, batch: u64, concurrency: u64) -> f64 {
    let began = Instant::now();
    let per_task = total / concurrency;
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let store = store.clone();
        let tenant = tenant.to_string();
        tasks.push(tokio::spawn(async move {
            let base = start + t * per_task;
            let mut n = 0;
            while n < per_task {
                let size = batch.min(per_task - n);
                let events = (0..size).map(|i| event(&tenant, base + n + i)).collect();
                // At most `concurrency` requests are queued, far below the
                // queue's depth, so the store never answers Overloaded here.
                store.commit(WriteBatch { events, ..Default::default() }).await.unwrap();
                n += size;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (per_task * concurrency) as f64 / began.elapsed().as_secs_f64()
}

/// Median of `runs` timings of `f`.
async fn median<F, Fut>(runs: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed());
    }
    times.sort();
    times[runs / 2]
}

async fn listing(store: &EventStore, label: &str) {
    let first = median(21, || async {
        store.list_events("bench".into(), EventFilter::default(), None, 50).await.unwrap();
    })
    .await;
    // The cursor of the page that starts 10,000 rows deep.
    let mut cursor = None;
    for _ in 0..50 {
        cursor = store.list_events("bench".into(), EventFilter::default(), cursor, 200).await.unwrap().next_cursor;
    }
    let deep = median(21, || {
        let cursor = cursor.clone();
        async move {
            store.list_events("bench".into(), EventFilter::default(), cursor, 50).await.unwrap();
        }
    })
    .await;
    let filtered = median(21, || async {
        let filter = EventFilter { status: Some("failure".into()), ..Default::default() };
        store.list_events("bench".into(), filter, None, 50).await.unwrap();
    })
    .await;
    println!("listing at {label}: first page {first:?}, page 10,000 rows deep {deep:?}, first page filtered by status {filtered:?}");
}

#[tokio::main]
async fn main() {
    let largest: u64 = std::env::var("SLUICE_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        components_dir: dir.path().join("plugins"),
        cursor_key: [1; 32],
        memory_limit: "8GB".into(),
        checkpoint_threshold: "512MB".into(),
        idle_checkpoint_bytes: 0,
        threads: 1,
        queue_depth: 512,
        // Queries run in `sluice query-worker`: the binary built beside
        // this bench (target/release/sluice).
        query: QueryOptions {
            worker_program: std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("sluice"),
            memory_limit: "1GB".into(),
            max_concurrent: 4,
            max_concurrent_per_tenant: 4,
        },
    };
    let store = EventStore::open(&dir.path().join("bench.duckdb"), options).unwrap();

    for (batch, concurrency, total) in [(1u64, 64u64, 20_000u64), (100, 16, 400_000), (1000, 8, 1_000_000)] {
        let rate = write(&store, "warmup", 0, total, batch, concurrency).await;
        println!("writer: batch size {batch:>4}, {concurrency} concurrent writers: {rate:>10.0} rows/s");
    }

    let mut stored = 0u64;
    for target in [1_000_000u64, largest] {
        if target > stored {
            let t = Instant::now();
            let rate = write(&store, "bench", stored, target - stored, 1000, 8).await;
            println!("loaded {} events in {:.1?} ({rate:.0} rows/s)", target, t.elapsed());
            stored = target;
        }
        listing(&store, &format!("{stored} events")).await;
        let limits = QueryLimits { timeout: Duration::from_secs(60), max_rows: 1000, max_bytes: 64 << 20 };
        let group_by = || async {
            store
                .query(
                    "bench".into(),
                    "SELECT event_type, count(*) FROM events GROUP BY 1".into(),
                    vec![],
                    QueryFormat::Json,
                    limits,
                )
                .await
                .unwrap();
        };
        // The first query after the load copies the new rows into the
        // tenant's snapshot; the others find it current.
        let t = Instant::now();
        group_by().await;
        println!("first GROUP BY event_type after loading to {stored} events (snapshot catch-up): {:?}", t.elapsed());
        let group_by = median(5, group_by).await;
        println!("GROUP BY event_type over {stored} events: {group_by:?}");
    }

    // A small tenant's first answer: snapshot created, worker started.
    write(&store, "small", 0, 100, 100, 1).await;
    let count = || async {
        let sql = "SELECT count(*) FROM events".to_string();
        store
            .query(
                "small".into(),
                sql,
                vec![],
                QueryFormat::Json,
                QueryLimits { timeout: Duration::from_secs(60), max_rows: 1000, max_bytes: 1 << 20 },
            )
            .await
            .unwrap();
    };
    let t = Instant::now();
    count().await;
    println!("first SQL answer of a new tenant (snapshot created, fresh worker): {:?}", t.elapsed());
    let warm = median(21, count).await;
    println!("SQL answer on a fresh worker, snapshot current: {warm:?}");
}
