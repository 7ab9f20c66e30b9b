#!/usr/bin/env python3
"""A tenant floods 10 MB bodies from CONNECTIONS connections for SECONDS
while another posts single events every 10 ms; prints the victim's p50 /
p99 / max, the flooder's answers and the server's peak resident memory.
SHAPE `wide` (default): 40 events of 255 KB each (RELIABILITY.md, F18);
`many`: 10,000 events of ~970 bytes, whose parsed form costs several times
their bytes (F45). Starts BINARY on a fresh data directory with its default
limits.
Usage: scripts/probe-byte-flood.py BINARY PORT [SECONDS] [CONNECTIONS] [SHAPE]"""
import json, os, shutil, subprocess, sys, threading, time, urllib.request, urllib.error
from collections import Counter

binary, port = sys.argv[1], int(sys.argv[2])
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 12
connections = int(sys.argv[4]) if len(sys.argv) > 4 else 1
shape = sys.argv[5] if len(sys.argv) > 5 else "wide"
d = f"/tmp/byte-flood-{port}"
shutil.rmtree(d, ignore_errors=True)
os.makedirs(d)
env = dict(os.environ, SLUICE_DATA_DIR=d, SLUICE_LISTEN=f"127.0.0.1:{port}", SLUICE_ADMIN_TOKEN="op", RUST_LOG="error")
server = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{port}"


def call(path, body, token, data=None):
    data = data if data is not None else json.dumps(body).encode()
    r = urllib.request.Request(base + path, data=data, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(r, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except (urllib.error.URLError, ConnectionError) as e:
        return type(getattr(e, "reason", e)).__name__, None


for _ in range(100):
    try:
        urllib.request.urlopen(base + "/healthz")
        break
    except Exception:
        time.sleep(0.1)
tokens = {t: call("/v1/tenants", {"id": t}, "op")[1]["admin_token"] for t in ("mallory", "victim")}
if shape == "many":
    flood = json.dumps([{"event_type": "raw.x", "event_payload": {"p": "y" * 900, "n": 1}}] * 10_000).encode()
else:
    flood = json.dumps([{"event_type": "raw.x", "event_payload": {"p": "y" * 255000}}] * 40).encode()
stop = time.time() + seconds
answers = Counter()


def flooder():
    while time.time() < stop:
        answers[call("/v1/events", None, tokens["mallory"], flood)[0]] += 1


threads = [threading.Thread(target=flooder) for _ in range(connections)]
for t in threads:
    t.start()
latencies, failed = [], 0
while time.time() < stop:
    started = time.perf_counter()
    status, _ = call("/v1/events", {"event_type": "victim.x"}, tokens["victim"])
    latencies.append(time.perf_counter() - started)
    failed += status != 200
    time.sleep(0.01)
for t in threads:
    t.join()
with open(f"/proc/{server.pid}/status") as f:
    peak = next(int(line.split()[1]) >> 10 for line in f if line.startswith("VmHWM"))
latencies.sort()
n = len(latencies)
print(f"{binary}: victim p50 {latencies[n // 2] * 1e3:.1f} ms, p99 {latencies[int(n * 0.99)] * 1e3:.1f} ms, "
      f"max {latencies[-1] * 1e3:.0f} ms, {failed} of {n} failed; flooder answered {dict(answers)}; peak RSS {peak} MiB; "
      f"database {sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if os.path.isfile(os.path.join(d, f))) >> 20} MiB")
server.terminate()
server.wait()
shutil.rmtree(d, ignore_errors=True)
