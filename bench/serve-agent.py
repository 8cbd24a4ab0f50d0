# The agent of bench/serve.sh: one of N, in an Agent Space cell (through its gateway)
# or under plain bubblewrap (straight to the stand-in). It waits for a common start
# time, then makes requests back to back on one keep-alive HTTPS connection for the
# load phase: allowed ones (GET /v1/items/N), every fifth one a request the policy
# denies (GET /v2/private/N), and, for the first few agents, one request that needs
# an approval (GET /v1/pay?size=big-N), timed from sending to the answer's last byte.
# Prints one JSON line of latencies (microseconds) and counts; the first request on
# each connection (which also pays for connecting: CONNECT and two TLS handshakes
# through the gateway, one directly) is counted as `first`, not by its kind.
#
# With RATE > 0, request n is due at START_AT + n / RATE instead (paced load), and its
# latency counts from when it was due, so that a slow answer delaying the next request
# is not hidden (no coordinated omission).
#
# Usage: python3 serve-agent.py INDEX START_AT SECONDS APPROVALS MODE [RATE]
#   MODE `proxy`: through HTTPS_PROXY (the cell's door) to api.bench.test:443
#   MODE `direct:PORT:CAFILE`: straight to api.bench.test:PORT, trusting CAFILE
import http.client, json, os, ssl, sys, time

index, start_at, seconds, approvals = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
mode = sys.argv[5]
rate = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
host = "api.bench.test"

if mode == "proxy":
    ctx = ssl.create_default_context()  # SSL_CERT_FILE: the cell's bundle with the tenant CA
    proxy = os.environ["HTTPS_PROXY"].split("//", 1)[1].rstrip("/")
    phost, pport = proxy.rsplit(":", 1)

    def connect():
        c = http.client.HTTPSConnection(phost, int(pport), context=ctx, timeout=600)
        c.set_tunnel(host, 443)
        return c
else:
    _, port, cafile = mode.split(":", 2)
    ctx = ssl.create_default_context(cafile=cafile)

    def connect():
        return http.client.HTTPSConnection(host, int(port), context=ctx, timeout=600)

out = {"index": index, "allowed": [], "denied": [], "approval": [], "first": [], "errors": [],
       "late_ms": 0, "reconnects": 0}
late = time.time() - start_at
if late > 0:
    out["late_ms"] = int(late * 1000)
else:
    time.sleep(-late)
end = start_at + seconds
# The approval-required request of this agent (if any), spread over the middle of the run.
approval_at = start_at + seconds * (0.2 + 0.6 * index / max(approvals, 1)) if index < approvals else None

conn = connect()
fresh = True
n = 0
while time.time() < end:
    n += 1
    if approval_at is not None and time.time() >= approval_at:
        kind, path = "approval", "/v1/pay?size=big-%d" % index
        approval_at = None
    elif n % 5 == 0:
        kind, path = "denied", "/v2/private/%d" % n
    else:
        kind, path = "allowed", "/v1/items/%d" % n
    t0 = time.perf_counter()
    if rate > 0:
        # Spread the agents over the first second, then one request every 1/RATE s.
        due = start_at + (index % 100) / 100.0 / rate + (n - 1) / rate
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        t0 = time.perf_counter() - max(0.0, -wait)
        if due >= end:
            break
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        r.read()
        status = r.status
        was_fresh, fresh = fresh, False
        if r.will_close:
            conn.close()
            conn = connect()
            fresh = True
            out["reconnects"] += 1
    except (OSError, http.client.HTTPException) as e:
        out["errors"].append("%s %s: %r" % (kind, path, e))
        conn.close()
        conn = connect()
        fresh = True
        out["reconnects"] += 1
        continue
    us = int((time.perf_counter() - t0) * 1e6)
    want = 403 if (kind == "denied" and mode == "proxy") else 200
    if status != want:
        out["errors"].append("%s %s: status %d" % (kind, path, status))
        continue
    out["first" if was_fresh and kind != "approval" else kind].append(us)
print(json.dumps(out), flush=True)
