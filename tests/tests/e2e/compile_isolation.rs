//! A slow compilation stays with its tenant and within its timeout: uploads
//! compile in a worker process killed at the compile timeout, before any
//! control lock is taken, one upload per tenant at a time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::{plugin_wasm, spawn_app_with, TestApp};

/// Distinct values the slow function keeps alive at once: a component of
/// about 300 KB, like the finding's. Compile time grows with the square of
/// the count; this many take Cranelift over 20 s on a 2-core machine, ten
/// times the timeout of these tests.
const LIVE_VALUES: u32 = 40_000;

fn leb(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(mut n: i64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        let done = (n == 0 && byte & 0x40 == 0) || (n == -1 && byte & 0x40 != 0);
        out.push(if done { byte } else { byte | 0x80 });
        if done {
            return;
        }
    }
}

fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// A valid component that is slow to compile: a core module whose one
/// function pushes `values` distinct products of its parameter and only then
/// adds them up, so all of them are live at once and the register allocator
/// has that many live ranges to place; the component instantiates it.
/// Written out by hand (the binary format is small) to need no encoder.
fn slow_component(values: u32) -> Vec<u8> {
    let mut code = vec![0x00]; // no locals
    for k in 0..values {
        code.extend_from_slice(&[0x20, 0x00]); // local.get 0
        code.push(0x42); // i64.const k
        sleb(i64::from(k) + 3, &mut code);
        code.push(0x7e); // i64.mul
    }
    code.extend(std::iter::repeat_n(0x7c, values as usize - 1)); // i64.add
    code.push(0x0b); // end
    let mut bodies = vec![0x01];
    leb(code.len() as u64, &mut bodies);
    bodies.extend(code);

    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[0x01, 0x60, 0x01, 0x7e, 0x01, 0x7e], &mut module); // (func (param i64) (result i64))
    section(3, &[0x01, 0x00], &mut module); // one function of that type
    section(7, &[0x01, 0x04, b's', b'l', b'o', b'w', 0x00, 0x00], &mut module); // exported as "slow"
    section(10, &bodies, &mut module);

    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component); // the core module
    section(2, &[0x01, 0x00, 0x00, 0x00], &mut component); // instantiated with no arguments
    component
}

/// Processes whose program is `program` (their argv[0]).
fn processes_running(program: &Path) -> Vec<u32> {
    let wanted = program.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if cmdline.split(|b| *b == 0).next() == Some(wanted) {
            found.push(pid);
        }
    }
    found
}

/// Upload `bytes` as plugin `name`; returns status, `Retry-After` and body.
async fn upload(app: &TestApp, token: &str, name: &str, bytes: Vec<u8>) -> (u16, Option<String>, Value) {
    let r = app
        .client
        .post(app.url(&format!("/v1/plugins?name={name}")))
        .bearer_auth(token)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .expect("request");
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    (r.status().as_u16(), retry_after, r.json().await.unwrap_or(Value::Null))
}

/// The app with a 2 s compile timeout, whose compile workers run under a
/// program name of their own (a link to the `sluice` binary), so this test
/// sees its own workers and no other test's.
async fn app_with_own_worker(dir: &Path) -> (TestApp, PathBuf) {
    let program = dir.join("sluice-compile-isolation");
    std::os::unix::fs::symlink(sluice_e2e::sluice_bin(), &program).expect("link the sluice binary");
    let worker = program.clone();
    let app = spawn_app_with(move |s| {
        s.compile_timeout_secs = 2;
        s.worker_program = Some(worker);
    })
    .await;
    (app, program)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_compile_is_killed_at_its_timeout_and_holds_up_no_other_tenant() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, program) = app_with_own_worker(dir.path()).await;
    let tenant_a = app.create_tenant("slow-compiler").await;
    let tenant_b = app.create_tenant("bystander").await;
    let slow = slow_component(LIVE_VALUES);
    // Built before the clock starts: the first build of the plugins is slow.
    let prefix = plugin_wasm("customer-prefix");

    let started = Instant::now();
    let first = {
        let (client, url, token) = (app.client.clone(), app.url("/v1/plugins?name=slow"), tenant_a.clone());
        tokio::spawn(async move {
            let r = client.post(url).bearer_auth(token).header("content-type", "application/wasm").body(slow);
            let r = r.send().await.expect("request");
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null), started.elapsed())
        })
    };
    // The compilation runs in a worker process (which also shows that the
    // check for leftover workers below can see one).
    let deadline = Instant::now() + Duration::from_millis(1500);
    while processes_running(&program).is_empty() {
        assert!(Instant::now() < deadline, "no compile worker started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another tenant's control plane answers at once, while A's compiles.
    let asked = Instant::now();
    let (status, body) =
        app.patch(&tenant_b, &format!("/v1/plugins/{}", sluice_e2e::SHIPPED), &json!({"position": 7})).await;
    let waited = asked.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["position"], 7, "{body}");
    assert!(waited < Duration::from_secs(1), "tenant B's PATCH waited {waited:?} behind A's compilation");
    let asked = Instant::now();
    let (status, body) = app.get(&tenant_b, "/v1/plugins").await;
    assert_eq!(status, 200, "{body}");
    assert!(asked.elapsed() < Duration::from_secs(1), "tenant B's GET waited {:?}", asked.elapsed());

    // A second upload by A while the first compiles: refused, retryable.
    let (status, retry_after, body) = upload(&app, &tenant_a, "second", prefix.clone()).await;
    assert_eq!(status, 429, "{body}");
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok()), "429 without a Retry-After");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("in progress")), "FastAPI shape: {body}");
    assert!(!processes_running(&program).is_empty(), "the first compilation should still be running here");

    // The first answers the timeout error at the timeout, not when the
    // compiler is done.
    let (status, body, elapsed) = first.await.expect("upload task");
    assert_eq!(status, 422, "{body}");
    let msg = body["detail"][0]["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("compilation took longer than 2s"), "{body}");
    assert!(elapsed < Duration::from_millis(3500), "answered after {elapsed:?}");
    // Killed and reaped before the answer: nothing keeps compiling.
    assert_eq!(processes_running(&program), Vec::<u32>::new(), "a compile worker outlived its timeout");

    // The slot is free again, and what the worker compiles installs and runs.
    let (status, _, body) = upload(&app, &tenant_a, "prefix", prefix).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app.post_events(&tenant_a, &json!({"event_type": "match.started"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(app.plugin_names(&tenant_a).await.contains(&"prefix".to_string()));
    assert_eq!(processes_running(&program), Vec::<u32>::new(), "a compile worker stayed after its answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compile_error_is_the_compilers_message_and_frees_the_slot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, program) = app_with_own_worker(dir.path()).await;
    let tenant = app.create_tenant("typo").await;
    // A component whose core module has a function of an undeclared type.
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(3, &[0x01, 0x05], &mut module);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component);
    for attempt in 0..2 {
        let (status, _, body) = upload(&app, &tenant, "broken", component.clone()).await;
        assert_eq!(status, 422, "attempt {attempt}: {body}");
        let msg = body["detail"][0]["msg"].as_str().unwrap_or_default();
        assert!(msg.starts_with("invalid component: ") && msg.len() > 30, "attempt {attempt}: {body}");
    }
    assert_eq!(processes_running(&program), Vec::<u32>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn compiles_are_bounded_across_tenants_too() {
    // One compile at a time on the server: a second tenant's upload while
    // the first compiles gets 429 + Retry-After, and gets in once it ended.
    let app = spawn_app_with(|s| {
        s.compile_timeout_secs = 2;
        s.compile_concurrency = 1;
    })
    .await;
    let first = app.create_tenant("first").await;
    let second = app.create_tenant("second").await;
    let slow = slow_component(LIVE_VALUES);
    let prefix = plugin_wasm("customer-prefix");
    let running = {
        let (client, url, token) = (app.client.clone(), app.url("/v1/plugins?name=slow"), first.clone());
        tokio::spawn(async move {
            let r = client.post(url).bearer_auth(token).header("content-type", "application/wasm").body(slow);
            r.send().await.expect("request").status().as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, retry_after, body) = upload(&app, &second, "p", prefix.clone()).await;
    assert_eq!(status, 429, "{body}");
    assert!(retry_after.is_some());
    assert_eq!(running.await.unwrap(), 422, "the slow compile timed out");
    let (status, _, body) = upload(&app, &second, "p", prefix).await;
    assert!(status == 200 || status == 201, "{status} {body}");
}
