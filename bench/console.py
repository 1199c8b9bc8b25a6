#!/usr/bin/env python3
"""Server time of the web console's pages: the API calls each page makes, and data-browser
pages at 100,000 keys. Numbers, not assertions (bench/README.md, "Console").

Starts its own RedisGate (the binary given, default $CARGO_TARGET_DIR/release/redisgate) on a
free loopback port with a fresh data_dir, signs up, creates an organization and a local
instance, fills it with --keys keys through the command route, then times every call --runs
times over one keep-alive connection. On loopback the client-side latency is the server's time
plus well under 0.1 ms of Python and TCP. Python 3 standard library only; needs redis-server
(for the local instance).
"""

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"content-type": "application/json"}

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        start = time.perf_counter()
        self.conn.request(method, path, body=data, headers=self.headers)
        r = self.conn.getresponse()
        raw = r.read()
        elapsed = time.perf_counter() - start
        if r.status >= 300 and r.status != 304:
            raise RuntimeError(f"{method} {path}: {r.status} {raw[:300]!r}")
        return (json.loads(raw) if raw and r.getheader("content-type", "").startswith("application/json") else raw), elapsed


def timed(client, runs, method, path, body=None):
    client.call(method, path, body)  # warm-up
    times = sorted(client.call(method, path, body)[1] * 1000 for _ in range(runs))
    return statistics.median(times), times[max(0, int(len(times) * 0.99) - 1)]


def browser_page(client, command_path, match, type_=None):
    """One data-browser page exactly as console/browser.js loads it: SCAN with COUNT 50, then 4
    times more per call up to 1000, until 50 keys or 20 calls or the end; then TYPE, TTL and
    MEMORY USAGE of each key in one pipeline."""
    cursor, found, calls, count = "0", [], 0, 50
    while calls < 20 and len(found) < 50:
        args = ["SCAN", cursor, "MATCH", match, "COUNT", str(count)] + (["TYPE", type_] if type_ else [])
        count = min(count * 4, 1000)
        reply, _ = client.call("POST", command_path, {"command": args, "encoding": "base64"})
        cursor = base64.b64decode(reply["result"][0]).decode()
        found += [base64.b64decode(k).decode() for k in reply["result"][1]]
        calls += 1
        if cursor == "0":
            break
    pipeline = [c for k in found for c in (["TYPE", k], ["TTL", k], ["MEMORY", "USAGE", k])]
    if pipeline:
        client.call("POST", command_path, {"pipeline": pipeline, "encoding": "base64"})
    return len(found), calls


def timed_page(client, runs, command_path, match, type_=None):
    browser_page(client, command_path, match, type_)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        n, calls = browser_page(client, command_path, match, type_)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.99) - 1)], n, calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    ap.add_argument("--binary", default=os.path.join(target, "release", "redisgate"))
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"no binary at {args.binary}: cargo build --release -p redisgate, or --binary PATH")
    if not shutil.which("redis-server"):
        sys.exit("redis-server is needed (apt-get install redis-server)")

    data = tempfile.mkdtemp(prefix="redisgate-console-bench.")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDISGATE_", "SRH_", "OTEL_"))}
    env.update({"REDISGATE_LISTEN": f"127.0.0.1:{port}", "REDISGATE_DATA_DIR": data,
                "REDISGATE_LOG": "warn", "REDISGATE_RATE_LIMIT__ENABLED": "false"})
    server = subprocess.Popen([args.binary, "serve"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 30
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/health/live")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                sys.exit("RedisGate did not start")
            time.sleep(0.1)
        cl = Client(port)
        creds = {"email": "bench@example.com", "password": "a long bench passphrase"}
        cl.call("POST", "/auth/register", creds)
        login, _ = cl.call("POST", "/auth/login", creds)
        cl.headers["authorization"] = f"Bearer {login['token']}"
        org, _ = cl.call("POST", "/api/organizations", {"name": "Bench"})
        o = f"/api/organizations/{org['id']}"
        inst, _ = cl.call("POST", f"{o}/redis-instances", {"name": "big", "memory_mb": 256})
        i = f"{o}/redis-instances/{inst['id']}"
        cl.call("POST", f"{o}/api-keys", {"name": "k", "scope": "read-write"})
        cmd = f"{i}/command"
        # 1 % of the keys under a prefix of their own, for a filtered page.
        for start in range(0, args.keys, 1000):
            pairs = []
            for n in range(start, min(start + 1000, args.keys)):
                pairs += [f"rare:{n}" if n % 100 == 0 else f"user:{n}", f"value {n}"]
            cl.call("POST", cmd, {"command": ["MSET", *pairs]})
        dbsize, _ = cl.call("POST", cmd, {"command": ["DBSIZE"]})

        rows = []
        calls = [
            ("console page (index.html)", "GET", "/console/"),
            ("console script (app.js)", "GET", "/console/app.js"),
            ("every page: GET /auth/me", "GET", "/auth/me"),
            ("organizations", "GET", "/api/organizations"),
            ("instances", "GET", f"{o}/redis-instances"),
            ("instance: GET instance", "GET", i),
            ("instance: GET stats", "GET", f"{i}/stats"),
            ("API keys", "GET", f"{o}/api-keys"),
            ("members", "GET", f"{o}/members"),
            ("members: invitations", "GET", f"{o}/invitations"),
            ("audit log (50)", "GET", f"{o}/audit-logs?limit=50"),
            ("settings: quota", "GET", f"{o}/quota"),
            ("administration: plans", "GET", "/api/plans"),
        ]
        for name, method, path in calls:
            rows.append((name, *timed(cl, args.runs, method, path)))
        rows.append(("CLI: GET through /command", *timed(cl, args.runs, "POST", cmd, {"command": ["GET", "user:1"]})))
        rows.append(("CLI: SET through /command", *timed(cl, args.runs, "POST", cmd, {"command": ["SET", "x", "y"]})))
        print(f"RedisGate {args.binary}, {dbsize['result']} keys, {args.runs} runs each; milliseconds\n")
        print(f"| {'call':<40} | p50 | p99 |\n|---|---|---|")
        for name, p50, p99 in rows:
            print(f"| {name:<40} | {p50:.2f} | {p99:.2f} |")
        print(f"\n| data-browser page at {dbsize['result']} keys | p50 | p99 | keys | SCAN calls |\n|---|---|---|---|---|")
        for name, match, type_ in [("all keys", "*", None), ("prefix rare: (1 % of keys)", "rare:*", None),
                                   ("type string", "*", "string"), ("prefix none: (no match)", "none:*", None)]:
            p50, p99, n, scans = timed_page(cl, args.runs, cmd, match, type_)
            print(f"| {name} | {p50:.2f} | {p99:.2f} | {n} | {scans} |")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
