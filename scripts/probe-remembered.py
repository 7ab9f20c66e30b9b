#!/usr/bin/env python3
"""A tenant's remembered answers (RELIABILITY.md, F22). Tenant mallory
installs schema-guard with rules that every event breaks, with long field
names, and posts REQUESTS requests of 10,000 events, each under its own
Idempotency-Key; each answer is a 422 naming every event. Then tenant victim
posts single events with an Idempotency-Key and with an event id. Prints the
size of mallory's answer, what it was refused (429s), the database's growth
and the victim's latencies. Starts BINARY on a fresh data directory with its
default limits.
Usage: scripts/probe-remembered.py BINARY PORT PLUGIN_DIR [REQUESTS]"""
import json, os, shutil, subprocess, sys, time, urllib.request, urllib.error, uuid
from collections import Counter

binary, port, plugins = sys.argv[1], int(sys.argv[2]), sys.argv[3]
requests = int(sys.argv[4]) if len(sys.argv) > 4 else 40
d = f"/tmp/remembered-{port}"
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


def size():
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if os.path.isfile(os.path.join(d, f))) >> 20


for _ in range(100):
    try:
        urllib.request.urlopen(base + "/healthz")
        break
    except Exception:
        time.sleep(0.1)
tokens = {t: json.loads(call("POST", "/v1/tenants", "op", json.dumps({"id": t}).encode())[1])["admin_token"]
          for t in ("mallory", "victim")}
wasm = open(os.path.join(plugins, "schema_guard.wasm"), "rb").read()
rules = [{"field": "event_payload.f%02d_%s" % (i, "z" * 80), "required": True} for i in range(40)]
manifest = json.dumps({"families": ["generic"], "config": {"rules": rules}}).encode()
boundary = "probe" + uuid.uuid4().hex
form = b"".join([
    f"--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\nContent-Type: application/json\r\n\r\n".encode(),
    manifest,
    f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"component\"; filename=\"g.wasm\"\r\n"
    "Content-Type: application/wasm\r\n\r\n".encode(),
    wasm,
    f"\r\n--{boundary}--\r\n".encode(),
])
status, text = call("POST", "/v1/plugins?name=guard", tokens["mallory"], form,
                    {"Content-Type": f"multipart/form-data; boundary={boundary}"})
assert status in (200, 201), (status, text)
body = json.dumps([{"event_type": "m.x"}] * 10_000).encode()
answers, largest, started = Counter(), 0, time.time()
for i in range(requests):
    status, answer = call("POST", "/v1/events", tokens["mallory"], body, {"Idempotency-Key": f"k-{i}"})
    answers[status] += 1
    largest = max(largest, len(answer))
print(f"{binary}: mallory sent {requests} requests of {len(body) >> 10} KiB in {time.time() - started:.1f} s: "
      f"answers {dict(answers)}, largest {largest / 1e6:.1f} MB; database {size()} MiB")
for label, headers, item in (("no key", {}, lambda: {"event_type": "v.x"}),
                             ("Idempotency-Key", None, lambda: {"event_type": "v.x"}),
                             ("event id", {}, lambda: {"event_type": "v.x", "id": str(uuid.uuid4())})):
    latencies = []
    for _ in range(40):
        h = headers if headers is not None else {"Idempotency-Key": str(uuid.uuid4())}
        t0 = time.perf_counter()
        status, _ = call("POST", "/v1/events", tokens["victim"], json.dumps(item()).encode(), h)
        latencies.append(time.perf_counter() - t0)
        assert status == 200, status
    latencies.sort()
    print(f"  victim, {label}: p50 {latencies[20] * 1e3:.1f} ms, max {latencies[-1] * 1e3:.1f} ms")
server.terminate()
server.wait()
shutil.rmtree(d, ignore_errors=True)
