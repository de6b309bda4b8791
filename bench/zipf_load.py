#!/usr/bin/env python3
"""A closed-loop load of many functions with Zipf popularity, through one
HTTP endpoint; counts how each call started (the worker's x-ol-timing
`start=`). Used by bench/locality.sh.

  zipf_load.py HOST:PORT FUNCTIONS CALLS CONCURRENCY [SEED] [BODY]

Functions are fn00, fn01, ...; call i goes to a function drawn with
P(k) ~ 1/(k+1)^1.1 from a seeded generator, so every run sees the same
sequence. Prints one JSON line: calls, errors, starts by kind, seconds.
"""
import http.client
import json
import random
import sys
import threading
import time


def main():
    host, port = sys.argv[1].split(":")
    nfun, calls, conc = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    seed = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    body = (sys.argv[6] if len(sys.argv) > 6 else "{}").encode()
    rng = random.Random(seed)
    weights = [1 / (k + 1) ** 1.1 for k in range(nfun)]
    seq = rng.choices(range(nfun), weights, k=calls)
    lock = threading.Lock()
    nxt = [0]
    starts, errors = {}, [0]

    def run():
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= calls:
                return
            try:
                c.request("POST", f"/run/fn{seq[i]:02d}", body, {"content-type": "application/json"})
                r = c.getresponse()
                r.read()
                timing = r.getheader("x-ol-timing") or ""
                start = timing.rsplit("start=", 1)[-1] if "start=" in timing else "none"
                ok = r.status == 200
            except OSError:
                c.close()
                c = http.client.HTTPConnection(host, int(port), timeout=30)
                ok, start = False, "none"
            with lock:
                starts[start] = starts.get(start, 0) + 1
                errors[0] += not ok

    t0 = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"calls": calls, "errors": errors[0], "starts": starts,
                      "seconds": round(time.monotonic() - t0, 2)}))


if __name__ == "__main__":
    main()
