"""N concurrent calls at once, each on its own connection; prints one line:
served=<n> errors=<n> statuses=<status:count,...> p50_ms=<x> p99_ms=<x> max_ms=<x>.

    python3 bench/burst.py PORT PATH BODY N
"""
import http.client
import sys
import threading
import time

port, path, body, n = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])
results = []
lock = threading.Lock()
go = threading.Event()


def one():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.connect()
    go.wait()
    t = time.monotonic()
    try:
        c.request("POST", path, body, {"Content-Type": "application/json"})
        status = c.getresponse().status
    except OSError:
        status = 0
    with lock:
        results.append((status, (time.monotonic() - t) * 1000))


threads = [threading.Thread(target=one) for _ in range(n)]
for t in threads:
    t.start()
time.sleep(0.2)  # every connection is open: the calls start together
go.set()
for t in threads:
    t.join()
lat = sorted(ms for _, ms in results)
statuses = {}
for s, _ in results:
    statuses[s] = statuses.get(s, 0) + 1
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
served = statuses.get(200, 0)
print(
    f"served={served} errors={len(results) - served} "
    f"statuses={','.join(f'{k}:{v}' for k, v in sorted(statuses.items()))} "
    f"p50_ms={pct(0.5):.0f} p99_ms={pct(0.99):.0f} max_ms={lat[-1]:.0f}"
)
