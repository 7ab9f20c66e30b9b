#!/usr/bin/env python3
"""The first query of a tenant (its snapshot catch-up): starts BINARY on a fresh
data directory at PORT, posts 30 batches of 10,000 events of ~0.6 KB, and times
two `SELECT count(*)`. Usage: scripts/probe-first-query.py target/release/sluice 18681"""
import json, subprocess, sys, time, urllib.request, shutil, os
binary, port = sys.argv[1], int(sys.argv[2])
d = f"/tmp/fq-{port}"; shutil.rmtree(d, ignore_errors=True); os.makedirs(d)
env = dict(os.environ, SLUICE_DATA_DIR=d, SLUICE_LISTEN=f"127.0.0.1:{port}", SLUICE_ADMIN_TOKEN="tok", SLUICE_MAX_BATCH_EVENTS="10000", SLUICE_TENANT_EVENTS_PER_SEC="100000000", SLUICE_TENANT_EVENTS_BURST="100000000", RUST_LOG="warn")
p = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def req(path, body=None):
    r = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode() if body is not None else None, headers={"Authorization": "Bearer tok", "Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(r, timeout=120).read())
for _ in range(100):
    try: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz"); break
    except Exception: time.sleep(0.1)
batch = [{"event_type": "e.x", "task_id": i, "status": "ok", "event_payload": {"k": "v" * 500}} for i in range(10000)]
for _ in range(30): req("/v1/events", batch)
t = time.time(); a = req("/v1/query", {"sql": "SELECT count(*) FROM events"}); first = time.time() - t
t = time.time(); req("/v1/query", {"sql": "SELECT count(*) FROM events"}); second = time.time() - t
print(f"{binary}: first query {first*1e3:.0f} ms (catch-up of {a['rows'][0][0]} events), then {second*1e3:.0f} ms")
p.terminate(); p.wait(); shutil.rmtree(d, ignore_errors=True)
