//! Slow and idle clients cannot hold connections open: a request head and a
//! request body each have a deadline, and connections beyond the cap get a
//! 503 to retry. Spoken over raw sockets, since a well-behaved HTTP client
//! cannot be made to stall halfway.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::{spawn_app_with, TestApp, ADMIN_TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://")).await.expect("connect")
}

/// Everything the server sends until it closes the connection. Fails the
/// test if the connection is still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let mut received = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut received)).await {
        Ok(Ok(_)) => {}
        // A reset closes the connection too; what arrived before it counts.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("reading failed: {e}"),
        Err(_) => panic!("the server kept the connection open for {within:?}"),
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// The status code, lower-cased head and JSON body of a raw response.
fn parse(response: &str) -> (u16, String, Value) {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {head}"));
    (status, head.to_ascii_lowercase(), serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_app_with(|s| s.http_header_timeout_secs = 1).await;
    let half_sent = async {
        let started = Instant::now();
        let mut stream = connect(&app).await;
        stream.write_all(b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Ty").await.expect("write");
        let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        (answer, started.elapsed())
    };
    // A connection that sends nothing at all holds a socket just the same.
    let silent = async {
        let started = Instant::now();
        let mut stream = connect(&app).await;
        let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        (answer, started.elapsed())
    };
    let ((half_answer, half_elapsed), (silent_answer, silent_elapsed)) = tokio::join!(half_sent, silent);
    for (answer, elapsed) in [(half_answer, half_elapsed), (silent_answer, silent_elapsed)] {
        assert!(elapsed >= Duration::from_millis(900), "closed after {elapsed:?}, before the timeout: {answer:?}");
        assert!(elapsed < Duration::from_secs(3), "closed only after {elapsed:?}");
        assert!(!answer.starts_with("HTTP/1.1 2"), "a half-sent request was served: {answer}");
    }
    // The server itself is unaffected.
    let healthy = app.client.get(app.url("/healthz")).send().await.expect("request");
    assert_eq!(healthy.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_stalls_is_cut_at_the_body_deadline_with_408() {
    let app = spawn_app_with(|s| {
        s.http_header_timeout_secs = 5;
        s.http_body_timeout_secs = 1;
    })
    .await;
    let started = Instant::now();
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(br#"[{"event_t"#).await.expect("write 10 bytes");
    let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let elapsed = started.elapsed();

    let (status, head, body) = parse(&answer);
    assert_eq!(status, 408, "{answer}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let detail = body["detail"].as_str().unwrap_or_else(|| panic!("FastAPI shape expected: {body}"));
    assert!(detail.contains("within 1 s"), "{detail}");
    assert!(elapsed >= Duration::from_millis(900), "cut after {elapsed:?}, before the deadline");
    assert!(elapsed < Duration::from_secs(3), "cut only after {elapsed:?}");

    // Nothing of the half-sent batch was stored.
    assert_eq!(app.all_events(ADMIN_TOKEN, "").await, Vec::<Value>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_get_503_with_retry_after() {
    let app = spawn_app_with(|s| s.max_connections = 3).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(&app).await);
    }
    // The fourth arrives after the three (the server accepts in order).
    let mut fourth = connect(&app).await;
    let answer = read_until_closed(&mut fourth, Duration::from_secs(3)).await;
    let (status, head, body) = parse(&answer);
    assert_eq!(status, 503, "{answer}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, json!({"detail": "too many open connections; retry later"}));

    // The three held their places and are served.
    let mut first = open.remove(0);
    first.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("write");
    let (status, _, body) = parse(&read_until_closed(&mut first, Duration::from_secs(3)).await);
    assert_eq!((status, body), (200, json!({"status": "ok"})));

    // Once they close, a new client gets in.
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        // A refused connection may also end in a reset before the client
        // reads the 503: both mean "not yet".
        let status = app.client.get(app.url("/healthz")).send().await.map(|r| r.status().as_u16()).unwrap_or(503);
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "still refused after the connections closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_sent_at_a_steady_pace_are_served() {
    let app = spawn_app_with(|s| s.http_body_timeout_secs = 5).await;
    let (status, body) = app.post_events(ADMIN_TOKEN, &json!({"event_type": "limits.small"})).await;
    assert_eq!(status, 200, "{body}");

    // Nearly 10 MiB (the body limit), sent in 40 pieces over about a second:
    // the deadline is for the whole body, and this one makes it.
    let blob = "x".repeat(200_000);
    let batch: Vec<Value> =
        (0..50).map(|i| json!({"event_type": "limits.large", "event_payload": {"i": i, "blob": blob}})).collect();
    let payload = serde_json::to_vec(&batch).expect("json");
    assert!(payload.len() > 9 << 20 && payload.len() < 10 << 20, "{} bytes", payload.len());
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    for piece in payload.chunks(payload.len().div_ceil(40)) {
        stream.write_all(piece).await.expect("write body");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, _, body) = parse(&read_until_closed(&mut stream, Duration::from_secs(30)).await);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stored"], 50, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_address_cannot_fill_the_connection_cap() {
    let app = spawn_app_with(|s| {
        s.max_connections = 64;
        s.max_connections_per_client = 3;
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(&app).await);
    }
    // The client's fourth is refused, though the server has room...
    let mut fourth = connect(&app).await;
    let (status, head, _) = parse(&read_until_closed(&mut fourth, Duration::from_secs(3)).await);
    assert_eq!(status, 503);
    assert!(head.contains("retry-after: 1"), "{head}");
    // ...which another client address (here 127.0.0.2) gets.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(app.base.trim_start_matches("http://").parse().unwrap()).await.unwrap();
    other.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let (status, _, body) = parse(&read_until_closed(&mut other, Duration::from_secs(3)).await);
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    // And the client's own places come back when it closes one.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect(&app).await;
    again.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let (status, _, _) = parse(&read_until_closed(&mut again, Duration::from_secs(3)).await);
    assert_eq!(status, 200);
}

/// Opens a request announcing a body (`Content-Length: N`, or chunked) and
/// sends only its first byte, so the server holds room for it.
async fn hold_body(app: &TestApp, token: &str, announce: Option<usize>) -> TcpStream {
    let mut stream = connect(app).await;
    let length = match announce {
        Some(n) => format!("Content-Length: {n}\r\n\r\n["),
        None => "Transfer-Encoding: chunked\r\n\r\n1\r\n[\r\n".to_string(),
    };
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{length}"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_held_at_once_are_bounded_in_bytes_and_shared_by_tenants() {
    // 4 MiB in all; a body counts three times its length; a tenant holds at
    // most 1 MiB of it.
    let app = spawn_app_with(|s| s.max_body_bytes_in_flight = 4 << 20).await;
    let noisy = app.create_tenant("noisy").await;
    let quiet = app.create_tenant("quiet").await;
    // 300 kB announced and not sent: 879 KiB of noisy's share.
    let slow = hold_body(&app, &noisy, Some(300_000)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let big: Value =
        (0..10).map(|_| json!({"event_type": "big", "event_payload": {"p": "x".repeat(50_000)}})).collect();
    let post_big = |token: &str| app.client.post(app.url("/v1/events")).bearer_auth(token).json(&big).send();
    // Noisy's next 500 kB does not fit in its share: 429 with Retry-After,
    // after a short wait, counted by reason.
    let r = post_big(&noisy).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let answer: Value = r.json().await.unwrap();
    assert!(answer["detail"].as_str().unwrap().contains("large request bodies"), "{answer}");
    let metrics = app.client.get(app.url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains(r#"sluice_tenant_throttled_total{tenant="noisy",reason="bodies"} 1"#), "{metrics}");
    // Quiet's is served meanwhile.
    let r = post_big(&quiet).await.unwrap();
    assert_eq!(r.status(), 200);
    // Three more tenants announce chunked bodies (each counted as the
    // largest, so each holds its whole share): the budget is full, and
    // quiet's large body now finds no room: 503.
    let mut held = vec![slow];
    for id in ["c", "d", "e"] {
        let token = app.create_tenant(id).await;
        held.push(hold_body(&app, &token, None).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = post_big(&quiet).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    // Small bodies are not counted: a single event is still served.
    let (status, body) = app.post_events(&quiet, &json!({"event_type": "small"})).await;
    assert_eq!(status, 200, "{body}");
    // A body whose token does not authenticate takes no room: it is refused
    // at once, without being read.
    let mut stranger = hold_body(&app, "so_live_not-a-token", Some(5_000_000)).await;
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), stranger.read(&mut answer)).await.expect("answered").unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // Once the holders are gone, their room comes back.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = post_big(&noisy).await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
