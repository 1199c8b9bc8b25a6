#!/usr/bin/env python3
"""The management-API half of bench/scale.sh: sets up an account, registers external
instances in parallel, fetches the driven instances' tokens and times the management routes.

bench/scale.sh owns the processes (redis-servers, RedisGate, wrk) and the measuring; this
helper only talks HTTP to the RedisGate it started, so that each step can be repeated at every
instance count without re-logging in. State (session, organization, instance ids) lives in a
JSON file in the output dir between calls. Python 3 standard library only.

  scale.py setup  --base URL --state FILE
  scale.py grow   --state FILE --to N --redis "PORT PORT ..." [--parallel 16]
  scale.py drive  --state FILE --count 100 --lua FILE.lua
  scale.py mgmt   --state FILE [--runs 50]

Every answer is one line of `key=value` pairs on stdout, for the shell to read.
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
import urllib.parse

CREDS = {"email": "scale@example.com", "password": "a long bench passphrase"}
KEY = "bench:key"
VALUE = "x" * 100
# Redis' default `databases`: the instances of one server are spread over its 16 db numbers.
DATABASES = 16


class Client:
    """One keep-alive connection to RedisGate with the session's bearer token."""

    def __init__(self, base, session=None):
        u = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        self.headers = {"content-type": "application/json"}
        if session:
            self.headers["authorization"] = f"Bearer {session}"

    def call(self, method, path, body=None, headers=None):
        """(status, parsed JSON body or raw bytes, milliseconds, body size)."""
        data = None if body is None else json.dumps(body).encode()
        start = time.perf_counter()
        self.conn.request(method, path, body=data, headers={**self.headers, **(headers or {})})
        r = self.conn.getresponse()
        raw = r.read()
        ms = (time.perf_counter() - start) * 1000
        parsed = raw
        if raw and r.getheader("content-type", "").startswith("application/json"):
            parsed = json.loads(raw)
        return r.status, parsed, ms, len(raw)

    def ok(self, method, path, body=None, headers=None):
        status, parsed, _, _ = self.call(method, path, body, headers)
        if not 200 <= status < 300:
            raise SystemExit(f"{method} {path}: {status} {str(parsed)[:300]}")
        return parsed


def load(path):
    with open(path) as f:
        return json.load(f)


def save(path, state):
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    # atomic: a run stopped by the time limit leaves the previous state readable
    os.replace(path + ".tmp", path)


def setup(args):
    c = Client(args.base)
    c.ok("POST", "/auth/register", CREDS)
    session = c.ok("POST", "/auth/login", CREDS)["token"]
    c = Client(args.base, session)
    me = c.ok("GET", "/auth/me")
    if not me["user"]["is_admin"]:
        raise SystemExit("the first account is not a deployment administrator; is the data dir fresh?")
    org = c.ok("POST", "/api/organizations", {"name": "Scale"})["id"]
    quota = c.ok("GET", f"/api/organizations/{org}/quota")
    # The first account administers the deployment, so it may lift its organization's quota
    # (plans top out at 200 instances) to the store's bound.
    quota.update(max_instances=1_000_000, max_api_keys=1_000_000)
    quota = c.ok("PUT", f"/api/organizations/{org}/quota", quota)
    save(args.state, {"base": args.base, "session": session, "org": org, "ids": [], "failed": 0})
    print(f"org={org} max_instances={quota['max_instances']}")


def grow(args):
    state = load(args.state)
    ports = args.redis.split()
    have = len(state["ids"])
    todo = list(range(have + state["failed"], have + state["failed"] + max(0, args.to - have)))
    lock = threading.Lock()
    created, errors, times = [], [], []

    def worker():
        c = Client(state["base"], state["session"])
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            port = ports[i % len(ports)]
            db = (i // len(ports)) % DATABASES
            body = {"name": f"scale-{i}", "provisioner": "external", "url": f"redis://127.0.0.1:{port}/{db}"}
            try:
                status, r, ms, _ = c.call("POST", f"/api/organizations/{state['org']}/redis-instances", body)
            except (OSError, http.client.HTTPException) as e:
                status, r, ms = 0, str(e), 0.0
                c = Client(state["base"], state["session"])
            with lock:
                times.append(ms)
                if status == 201 and r.get("status") == "running":
                    created.append(r["id"])
                else:
                    detail = (r.get("status_detail") or r.get("status_reason") or r.get("error")) if isinstance(r, dict) else r
                    errors.append(f"{status} {detail}"[:200])

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - start
    state["ids"] += created
    state["failed"] += len(errors)
    save(args.state, state)
    if errors:
        with open(args.state + ".errors", "a") as f:
            f.write("\n".join(errors) + "\n")
    times.sort()
    p50 = statistics.median(times) if times else 0
    p99 = times[max(0, int(len(times) * 0.99) - 1)] if times else 0
    rate = len(times) / took if took > 0 else 0
    first = (errors[0].replace(" ", "_") if errors else "-")[:120]
    print(f"total={len(state['ids'])} created={len(created)} failed={len(errors)} seconds={took:.1f} "
          f"per_s={rate:.0f} create_p50_ms={p50:.1f} create_p99_ms={p99:.1f} first_error={first}")


def drive(args):
    """The first --count instances' REST URLs and tokens (the connect route, as a tenant gets
    them) into a wrk script that rotates over them; each instance gets the 100-byte value."""
    state = load(args.state)
    c = Client(state["base"], state["session"])
    targets, first, warm = [], [], []
    for iid in state["ids"][: args.count]:
        conn = c.ok("GET", f"/api/organizations/{state['org']}/redis-instances/{iid}/connect")
        path = urllib.parse.urlsplit(conn["rest_url"]).path
        auth = {"authorization": f"Bearer {conn['rest_token']}"}
        # The first request to an idle instance: its token looked up, its connection opened
        # (on demand; before that change, the connection was already open), one command.
        status, _, ms, _ = c.call("GET", f"{path}/set/{KEY}/{VALUE}", headers=auth)
        if status != 200:
            raise SystemExit(f"SET through {path}: {status}")
        first.append(ms)
        status, got, ms, _ = c.call("GET", f"{path}/get/{KEY}", headers=auth)
        warm.append(ms)
        if not isinstance(got, dict) or got.get("result") != VALUE:
            raise SystemExit(f"GET through {path} did not return the value: {str(got)[:200]}")
        targets.append((f"{path}/get/{KEY}", conn["rest_token"]))
    rows = ",\n".join(f'  {{"{p}", "{t}"}}' for p, t in targets)
    with open(args.lua, "w") as f:
        f.write(f"""-- written by bench/scale.py: GET of a 100-byte value, rotating over {len(targets)} instances,
-- each with its own REST token (as from its connect page)
local targets = {{
{rows}
}}
local reqs, i, threads = {{}}, 0, 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  for k, t in ipairs(targets) do
    reqs[k] = wrk.format("GET", t[1], {{ ["Authorization"] = "Bearer " .. t[2] }})
  end
  -- threads start half the list apart
  i = (id or 0) * math.floor(#reqs / 2) % #reqs
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
""")
    print(f"driven={len(targets)} first_ms={statistics.median(first):.2f} warm_ms={statistics.median(warm):.2f}")


def timed(c, runs, path, max_seconds=20):
    """p50, p99 (ms), body size and calls made: `runs` calls, or fewer if they take longer
    than `max_seconds` together (a listing of every instance can)."""
    c.ok("GET", path)  # warm-up
    times, size, until = [], 0, time.perf_counter() + max_seconds
    for _ in range(runs):
        if times and time.perf_counter() > until:
            break
        status, _, ms, size = c.call("GET", path)
        if status != 200:
            raise SystemExit(f"GET {path}: {status}")
        times.append(ms)
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.99) - 1)], size, len(times)


def mgmt(args):
    state = load(args.state)
    c = Client(state["base"], state["session"])
    o = f"/api/organizations/{state['org']}/redis-instances"
    g50, g99, _, _ = timed(c, args.runs, f"{o}/{state['ids'][len(state['ids']) // 2]}")
    # `?limit=100`: the first page once listings are paged; ignored (the whole list) before.
    listed = c.ok("GET", f"{o}?limit=100")
    items = len(listed["items"] if isinstance(listed, dict) and "items" in listed else listed)
    l50, l99, size, runs = timed(c, args.runs, f"{o}?limit=100")
    print(f"get_p50_ms={g50:.2f} get_p99_ms={g99:.2f} list_p50_ms={l50:.2f} list_p99_ms={l99:.2f} "
          f"list_items={items} list_bytes={size} runs={runs}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--base", required=True)
    p.add_argument("--state", required=True)
    p = sub.add_parser("grow")
    p.add_argument("--state", required=True)
    p.add_argument("--to", type=int, required=True)
    p.add_argument("--redis", required=True, help="ports of the redis-servers, space-separated")
    p.add_argument("--parallel", type=int, default=16)
    p = sub.add_parser("drive")
    p.add_argument("--state", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--lua", required=True)
    p = sub.add_parser("mgmt")
    p.add_argument("--state", required=True)
    p.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    {"setup": setup, "grow": grow, "drive": drive, "mgmt": mgmt}[args.cmd](args)


if __name__ == "__main__":
    try:
        main()
    except (OSError, http.client.HTTPException) as e:
        sys.exit(f"scale.py: {e}")
