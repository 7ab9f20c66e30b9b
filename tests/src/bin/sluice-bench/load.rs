//! The load generator: closed-loop ingest at full speed, open-loop requests
//! at a fixed rate, and the listing and SQL latencies over stored events.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::server::Server;

/// Figures in the order they were measured.
#[derive(Default)]
pub struct Figures(Vec<(String, String)>);

impl Figures {
    pub fn add(&mut self, name: &str, value: String) {
        println!("{name}: {value}");
        self.0.push((name.to_string(), value));
    }

    /// The table for BENCHMARKS.md.
    pub fn print(&self) {
        println!("\n| figure | value |\n| --- | --- |");
        for (name, value) in &self.0 {
            println!("| {name} | {value} |");
        }
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A request body of `n` generic events with the fields the chain touches.
pub fn body(n: usize) -> Arc<Vec<u8>> {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "event_type": "order.paid",
                "user_id": i,
                "actor_id": format!("user-{i}"),
                "source": "shop",
                "ip_address": "203.0.113.7",
                "event_payload": {"email": format!("buyer{i}@example.com"), "amount": 12.5, "items": 3}
            })
        })
        .collect();
    let value = if n == 1 { events[0].clone() } else { Value::Array(events) };
    Arc::new(serde_json::to_vec(&value).expect("serializes"))
}

async fn post(server: &Server, token: &str, body: &Arc<Vec<u8>>) -> reqwest::Result<u16> {
    let r = server
        .client
        .post(format!("{}/v1/events", server.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.as_ref().clone())
        .send()
        .await?;
    let status = r.status().as_u16();
    r.bytes().await?;
    Ok(status)
}

/// Post `body` (`per_request` events) from `connections` closed loops for
/// `duration`; returns acknowledged events per second.
pub async fn ingest(
    server: &Server,
    token: &str,
    body: &Arc<Vec<u8>>,
    per_request: usize,
    connections: usize,
    duration: Duration,
) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let loops = (0..connections).map(|_| {
        let (stop, acked, refused) = (stop.clone(), acked.clone(), refused.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                match post(server, token, body).await {
                    Ok(200) => acked.fetch_add(per_request as u64, Ordering::Relaxed),
                    // 503: the store's queue is full; 429: the tenant's
                    // backlog at its plugin workers is (a bound the
                    // unlimited server keeps).
                    Ok(503 | 429) => refused.fetch_add(1, Ordering::Relaxed),
                    Ok(other) => panic!("ingest answered {other}"),
                    Err(e) => panic!("ingest failed: {e}"),
                };
            }
        }
    });
    let timer = async {
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
    };
    tokio::join!(join_all(loops), timer);
    let rate = acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    if refused.load(Ordering::Relaxed) > 0 {
        println!("  ({} requests shed with 503 or 429)", refused.load(Ordering::Relaxed));
    }
    Ok(rate)
}

/// How a flooding client takes a 429.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum On429 {
    /// Waits the `Retry-After` it was given (a well-behaved client).
    Wait,
    /// Posts again at once (a hostile one).
    Ignore,
}

/// Post `body` to `path` from `connections` closed loops until `stop`;
/// returns how many answers of each status came back.
pub async fn flood(
    server: &Server,
    token: &str,
    path: &str,
    body: &Arc<Vec<u8>>,
    connections: usize,
    duration: Duration,
    on_429: On429,
) -> std::collections::BTreeMap<u16, u64> {
    let deadline = Instant::now() + duration;
    let loops = (0..connections).map(|_| async move {
        let mut seen = std::collections::BTreeMap::new();
        while Instant::now() < deadline {
            let r = server
                .client
                .post(format!("{}{path}", server.base))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.as_ref().clone())
                .send()
                .await;
            let status = match r {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let wait = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    let _ = r.bytes().await;
                    if let (429, Some(secs), On429::Wait) = (status, wait, on_429) {
                        let left = deadline.saturating_duration_since(Instant::now());
                        tokio::time::sleep(Duration::from_secs(secs).min(left)).await;
                    }
                    status
                }
                Err(_) => 0,
            };
            *seen.entry(status).or_insert(0u64) += 1;
        }
        seen
    });
    let mut all = std::collections::BTreeMap::new();
    for seen in join_all(loops).await {
        for (status, n) in seen {
            *all.entry(status).or_insert(0) += n;
        }
    }
    all
}

/// Latency percentiles of an open-loop run, in seconds.
pub struct Latency {
    /// From when each request was due: includes any queueing, in the server
    /// or in the load generator (whose timer has 1 ms resolution).
    pub due: (f64, f64),
    /// From when each request was actually sent: the server's share.
    pub sent: (f64, f64),
    pub errors: u64,
}

/// Open loop: requests are due at a fixed rate whatever the answers do.
/// Returns p50 and p99 counted from when each request was due (queueing
/// included) and from when it was sent, and the number of failed requests.
pub async fn fixed_rate(
    server: &Server,
    token: &str,
    body: &Arc<Vec<u8>>,
    per_second: f64,
    duration: Duration,
) -> Result<Latency> {
    let total = (per_second * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / per_second);
    let started = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total as usize);
    let client = server.client.clone();
    let url = format!("{}/v1/events", server.base);
    for i in 0..total {
        let due = started + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let (client, url, token, body) = (client.clone(), url.clone(), token.to_string(), body.clone());
        tasks.push(tokio::spawn(async move {
            let sent = tokio::time::Instant::now();
            let r = client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.as_ref().clone())
                .send()
                .await;
            let ok = match r {
                Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (due.elapsed().as_secs_f64(), sent.elapsed().as_secs_f64(), ok)
        }));
    }
    let (mut from_due, mut from_sent) = (Vec::with_capacity(tasks.len()), Vec::with_capacity(tasks.len()));
    let mut errors = 0;
    for t in tasks {
        let (due, sent, ok) = t.await?;
        from_due.push(due);
        from_sent.push(sent);
        errors += u64::from(!ok);
    }
    let percentiles = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
        (at(0.5), at(0.99))
    };
    Ok(Latency { due: percentiles(from_due), sent: percentiles(from_sent), errors })
}

/// Median of `n` timed GETs or POSTs.
async fn timed(server: &Server, token: &str, n: usize, request: impl Fn() -> reqwest::RequestBuilder) -> Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let r = request().bearer_auth(token).send().await?;
        let status = r.status();
        let text = r.text().await?;
        if !status.is_success() {
            bail!("{status}: {text}");
        }
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let _ = server;
    Ok(median(&times))
}

/// Store `stored` events for a tenant of their own (batches of 10,000 over
/// four connections), then time the listing and SQL over HTTP.
pub async fn query_figures(server: &Server, stored: u64, figures: &mut crate::Figures) -> Result<()> {
    let token = server.tenant("analytics").await?;
    let per_request = 10_000usize;
    let batches: Vec<Arc<Vec<u8>>> = (0..8)
        .map(|k| {
            let events: Vec<Value> = (0..per_request)
                .map(|i| {
                    json!({
                        "event_type": format!("kind.{}", (k * per_request + i) % 20),
                        "event_group": "kind",
                        "status": if i % 10 == 0 { "failure" } else { "success" },
                        "user_id": (k * per_request + i) % 5000,
                        "session_id": format!("s-{}", i % 997),
                        "event_payload": {"n": i}
                    })
                })
                .collect();
            Arc::new(serde_json::to_vec(&events).expect("serializes"))
        })
        .collect();
    let requests = stored.div_ceil(per_request as u64);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let loops = (0..4).map(|_| {
        let (next, token, batches) = (next.clone(), token.clone(), batches.clone());
        async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    return;
                }
                let body = &batches[(n % batches.len() as u64) as usize];
                loop {
                    match post(server, &token, body).await {
                        Ok(200) => break,
                        Ok(503) => tokio::time::sleep(Duration::from_millis(20)).await,
                        other => panic!("bulk load: {other:?}"),
                    }
                }
            }
        }
    });
    join_all(loops).await;
    let loaded = requests * per_request as u64;
    figures.add(
        &format!("bulk load of {loaded} events (batches of {per_request})"),
        format!(
            "{:.0} s, {:.0} events/s",
            started.elapsed().as_secs_f64(),
            loaded as f64 / started.elapsed().as_secs_f64()
        ),
    );
    let base = server.base.clone();
    let get = |path: String| {
        let url = format!("{base}{path}");
        move || server.client.get(&url)
    };
    figures.add(
        &format!("first page (50) at {loaded} events"),
        format!("{:.1} ms", timed(server, &token, 20, get("/v1/audit/events".into())).await?),
    );
    figures.add(
        "filtered page (event_type and status)",
        format!(
            "{:.1} ms",
            timed(server, &token, 20, get("/v1/audit/events?event_type=kind.7&status=failure".into())).await?
        ),
    );
    // A page 10,000 rows deep: follow the cursor 50 pages of 200.
    let mut cursor = String::new();
    for _ in 0..50 {
        let url = format!("{base}/v1/audit/events?limit=200{cursor}");
        let page: Value = server.client.get(url).bearer_auth(&token).send().await?.json().await?;
        cursor = format!("&cursor={}", page["next_cursor"].as_str().unwrap_or(""));
    }
    figures.add(
        "page 10,000 rows deep (limit 200)",
        format!("{:.1} ms", timed(server, &token, 20, get(format!("/v1/audit/events?limit=200{cursor}"))).await?),
    );
    let sql = |text: &'static str| {
        let url = format!("{base}/v1/query");
        move || server.client.post(&url).json(&json!({ "sql": text }))
    };
    figures
        .add("SQL count(*)", format!("{:.1} ms", timed(server, &token, 10, sql("SELECT count(*) FROM events")).await?));
    figures.add(
        "SQL GROUP BY event_type",
        format!(
            "{:.1} ms",
            timed(server, &token, 10, sql("SELECT event_type, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC"))
                .await?
        ),
    );
    figures.add(
        "SQL failures per user (filter + GROUP BY + ORDER BY + LIMIT)",
        format!(
            "{:.1} ms",
            timed(
                server,
                &token,
                10,
                sql("SELECT user_id, count(*) n FROM events WHERE status = 'failure' GROUP BY 1 ORDER BY n DESC LIMIT 10")
            )
            .await?
        ),
    );
    Ok(())
}
