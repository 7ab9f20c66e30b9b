#!/usr/bin/env python3
"""A tenant's plugin changes beside another tenant's ingest (RELIABILITY.md,
F25). Tenant mallory installs PLUGINS copies of customer-prefix, each with a
config of ~0.9 MB (100,000 small arrays: costly to copy as a JSON tree), then
changes a small plugin's position back to back for SECONDS while tenant
victim posts single events. Prints how long the changes took and the
victim's latencies. Starts BINARY on a fresh data directory.
Usage: scripts/probe-plugin-changes.py BINARY PORT PLUGIN_DIR [PLUGINS] [SECONDS]"""
import json, os, shutil, subprocess, sys, threading, time, urllib.request, urllib.error, uuid

binary, port, plugins = sys.argv[1], int(sys.argv[2]), sys.argv[3]
copies = int(sys.argv[4]) if len(sys.argv) > 4 else 10
seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 10
d = f"/tmp/plugin-changes-{port}"
shutil.rmtree(d, ignore_errors=True)
os.makedirs(d)
env = dict(os.environ, SLUICE_DATA_DIR=d, SLUICE_LISTEN=f"127.0.0.1:{port}", SLUICE_ADMIN_TOKEN="op", RUST_LOG="error")
server = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{port}"


def call(method, path, token, data=b"", headers=None):
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})}
    r = urllib.request.Request(base + path, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(r, timeout=120) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def upload(token, name, wasm, manifest):
    boundary = "probe" + uuid.uuid4().hex
    form = b"".join([
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n".encode(),
        json.dumps(manifest).encode(),
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"component\"; filename=\"p.wasm\"\r\n"
        "Content-Type: application/wasm\r\n\r\n".encode(),
        wasm,
        f"\r\n--{boundary}--\r\n".encode(),
    ])
    return call("POST", f"/v1/plugins?name={name}", token, form, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


for _ in range(100):
    try:
        urllib.request.urlopen(base + "/healthz")
        break
    except Exception:
        time.sleep(0.1)
tokens = {t: json.loads(call("POST", "/v1/tenants", "op", json.dumps({"id": t}).encode())[1])["admin_token"]
          for t in ("mallory", "victim")}
wasm = open(os.path.join(plugins, "customer_prefix.wasm"), "rb").read()
config = {"prefix": "m.", "n": [[0]] * 100_000}
for i in range(copies):
    status, text = upload(tokens["mallory"], f"big{i}", wasm, {"config": config, "families": ["generic"]})
    assert status in (200, 201), (status, text[:200])
status, text = upload(tokens["mallory"], "small", wasm, {"families": ["iam"]})
assert status in (200, 201), (status, text[:200])
stop = time.time() + seconds
changes = []


def changer():
    position = 0
    while time.time() < stop:
        position = (position + 7) % 1000
        t0 = time.perf_counter()
        call("PATCH", "/v1/plugins/small", tokens["mallory"], json.dumps({"position": position}).encode())
        changes.append(time.perf_counter() - t0)


thread = threading.Thread(target=changer)
thread.start()
latencies = []
while time.time() < stop:
    t0 = time.perf_counter()
    status, _ = call("POST", "/v1/events", tokens["victim"], b'{"event_type": "v.x"}')
    latencies.append(time.perf_counter() - t0)
    time.sleep(0.01)
thread.join()
latencies.sort()
changes.sort()
n = len(latencies)
print(f"{binary}: {len(changes)} changes, median {changes[len(changes) // 2] * 1e3:.0f} ms, max {changes[-1] * 1e3:.0f} ms; "
      f"victim p50 {latencies[n // 2] * 1e3:.1f} ms, p99 {latencies[int(n * 0.99)] * 1e3:.1f} ms, max {latencies[-1] * 1e3:.0f} ms ({n} requests)")
server.terminate()
server.wait()
shutil.rmtree(d, ignore_errors=True)
