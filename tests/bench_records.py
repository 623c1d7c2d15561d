"""Benchmark of the records API (issue 2). Not collected by pytest; run it by hand:

    python tests/bench_records.py                    # 1,000,000 records, 10 s per HTTP run
    python tests/bench_records.py --records 200000 --duration 5

It prints two groups of figures:

1. HTTP throughput on loopback, measured with wrk when it is installed (Debian package `wrk`),
   else with a small stdlib client, each as a ratio to H, a bare WSGI hello-world served by
   waitress with the same thread count in the same run: GET record by id, POST create, list of 50,
   and the p99 latency at 16 connections.
2. Server time of list queries on the large table, measured in-process through the same service
   functions the HTTP handlers call (median of several runs).

The database is seeded once through the service layer (insert_record in batches) and cached in
the temporary directory, keyed by the record count.
"""

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import sovrium  # noqa: E402

CONFIG = {
    "name": "bench",
    "settings": {"maxPageSize": 1000},
    "tables": [
        {"id": 1, "name": "items", "fields": [
            {"id": 1, "name": "title", "type": "single-line-text", "required": True},
            {"id": 2, "name": "status", "type": "single-select", "options": ["new", "open", "hold", "done"],
             "indexed": True},
            {"id": 3, "name": "qty", "type": "integer", "indexed": True},
            {"id": 4, "name": "price", "type": "decimal"},
            {"id": 5, "name": "due", "type": "date", "indexed": True},
            {"id": 6, "name": "note", "type": "long-text"},
            {"id": 7, "name": "ticket", "type": "integer", "indexed": True},
        ], "indexes": [{"name": "status_due", "fields": ["status", "due"]}]},
        {"id": 2, "name": "small", "fields": [
            {"id": 1, "name": "title", "type": "single-line-text"},
            {"id": 2, "name": "note", "type": "long-text"},
        ]},
    ],
}
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron".split()
HELLO = """
import logging, sys, waitress
logging.getLogger("waitress.queue").setLevel(logging.ERROR)
def app(environ, start_response):
    body = b'{"hello":"world"}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
waitress.serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=int(sys.argv[2]), _quiet=True)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def item(i, rnd):
    return {"title": f"{rnd.choice(WORDS)} {rnd.choice(WORDS)} {i}", "status": rnd.choice(["new", "open", "hold", "done"]),
            "qty": rnd.randint(0, 10000), "price": round(rnd.uniform(1, 500), 2),
            "due": f"2026-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}",
            "note": " ".join(rnd.choice(WORDS) for _ in range(8)), "ticket": i}


def seed(path, records):
    """Seed `records` items and 100,000 small rows through the service layer, in batches."""
    rnd = random.Random(42)
    env = {"SOVRIUM_RATE_LIMITS": "off"}
    started = time.perf_counter()
    with sovrium.App(CONFIG, db_path=path, env=env) as app:
        ctx = app.context(sovrium.SYSTEM)
        for name, total, make in (("items", records, item),
                                  ("small", 100000, lambda i, r: {"title": f"row {i}",
                                                                  "note": " ".join(r.choice(WORDS) for _ in range(6))})):
            table = app.schema.by_name[name]
            done = 0
            while done < total:
                with app.db.write() as txn:
                    for i in range(done, min(total, done + 10000)):
                        sovrium.insert_record(ctx, txn, table, make(i, rnd))
                done = min(total, done + 10000)
                print(f"\r  seeding {name}: {done}/{total}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
        app.db.conn().execute("PRAGMA optimize = 0x10002")
    elapsed = time.perf_counter() - started
    print(f"  seeded {records + 100000} records in {elapsed:.0f} s "
          f"({(records + 100000) / elapsed:.0f} records/s through insert_record)")


def server_times(path):
    """Median in-process server time of list queries (the functions HTTP handlers call)."""
    results = {}
    with sovrium.App(CONFIG, db_path=path, env={"SOVRIUM_RATE_LIMITS": "off"}) as app:
        ctx = app.context(sovrium.SYSTEM)
        cases = [
            ("indexed filter + sort page (status=open, sort due, limit 50)",
             "items", {"filter": "status:open", "sort": "due", "limit": "50"}),
            ("indexed range filter + sort page (qty 100..200, sort qty)", "items",
             {"filter": json.dumps({"and": [{"field": "qty", "operator": "greaterThanOrEqual", "value": 100},
                                            {"field": "qty", "operator": "lessThan", "value": 200}]}),
              "sort": "qty", "limit": "50"}),
            ("deep page via offset on an indexed sort (ticket, offset 500000), skipTotal", "items",
             {"sort": "ticket", "offset": "500000", "limit": "50", "skipTotal": "true"}),
            ("deep page via offset on an indexed sort (ticket, offset 500000), with total", "items",
             {"sort": "ticket", "offset": "500000", "limit": "50"}),
            ("skipTotal=true list (limit 50)", "items", {"skipTotal": "true", "limit": "50"}),
            ("default list with total (limit 50)", "items", {"limit": "50"}),
            ("unindexed filter over 100,000 records (note contains, with total)", "small",
             {"filter": json.dumps({"field": "note", "operator": "contains", "value": "omicron kappa"}),
              "limit": "50"}),
        ]
        for label, table, params in cases:
            samples = []
            for _ in range(7):
                t = time.perf_counter()
                sovrium.records_list(ctx, table, params)
                samples.append((time.perf_counter() - t) * 1000)
            results[label] = statistics.median(samples)
    return results


def run_wrk(url, duration, connections=16, script=None):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, float(p99.group(1)) * scale, int(errors.group(1)) if errors else 0


def run_stdlib(url, duration, connections=16, method="GET", body=None, paths=None):
    """A small keep-alive load generator for machines without wrk."""
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    host, port, path = m.group(1), int(m.group(2)), m.group(3)
    latencies, errors = [], [0]
    stop = time.monotonic() + duration

    def worker():
        conn = http.client.HTTPConnection(host, port)
        rnd = random.Random()
        while time.monotonic() < stop:
            p = rnd.choice(paths) if paths else path
            t = time.perf_counter()
            conn.request(method, p, body=body, headers={"Content-Type": "application/json"} if body else {})
            resp = conn.getresponse()
            resp.read()
            latencies.append((time.perf_counter() - t) * 1000)
            if resp.status >= 300:
                errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return len(latencies) / duration, latencies[int(len(latencies) * 0.99)], errors[0]


def http_benchmarks(path, duration, threads, records):
    tmp = tempfile.mkdtemp(prefix="sovrium-bench-")
    procs = []
    try:
        hello_port, sov_port = free_port(), free_port()
        hello = os.path.join(tmp, "hello.py")
        with open(hello, "w") as fh:
            fh.write(HELLO)
        procs.append(subprocess.Popen([sys.executable, hello, str(hello_port), str(threads)],
                                      stderr=subprocess.DEVNULL))
        cfg = os.path.join(tmp, "bench.json")
        with open(cfg, "w") as fh:
            json.dump(CONFIG, fh)
        env = {**os.environ, "SOVRIUM_RATE_LIMITS": "off", "LOG_LEVEL": "warning"}
        procs.append(subprocess.Popen([sys.executable, "-m", "sovrium", "start", cfg, "--db", path, "--port",
                                       str(sov_port), "--threads", str(threads)], env=env,
                                      stderr=subprocess.DEVNULL))
        wait_port(hello_port)
        wait_port(sov_port)
        base = f"http://127.0.0.1:{sov_port}"
        use_wrk = shutil.which("wrk") is not None
        print(f"  load generator: {'wrk (2 threads, 16 connections)' if use_wrk else 'stdlib client (16 connections)'}")
        get_script = os.path.join(tmp, "get.lua")
        with open(get_script, "w") as fh:
            fh.write(f'math.randomseed(7)\nrequest = function()\n  return wrk.format("GET", '
                     f'"/api/tables/items/records/" .. math.random(1, {records}))\nend\n')
        post_script = os.path.join(tmp, "post.lua")
        with open(post_script, "w") as fh:
            body = json.dumps({"title": "bench row", "status": "open", "qty": 5, "price": 9.5, "due": "2026-05-01"})
            fh.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                     f'wrk.headers["Content-Type"] = "application/json"\n')
        runs = {}
        for label, url, script, stdlib in [
            ("H (hello world)", f"http://127.0.0.1:{hello_port}/", None, {}),
            ("GET record by id", base + "/api/tables/items/records/1", get_script,
             {"paths": [f"/api/tables/items/records/{random.randint(1, records)}" for _ in range(1000)]}),
            ("POST create", base + "/api/tables/items/records", post_script,
             {"method": "POST", "body": json.dumps({"title": "bench row", "qty": 5})}),
            ("list of 50", base + "/api/tables/small/records?limit=50", None, {}),
            ("list of 50, skipTotal", base + "/api/tables/small/records?limit=50&skipTotal=true", None, {}),
        ]:
            if use_wrk:
                runs[label] = run_wrk(url, duration, script=script)
            else:
                runs[label] = run_stdlib(url, duration, **stdlib)
        return runs
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def auth_benchmarks(path, duration, threads, records):
    """Authenticated GET (session lookup per request), sign-in throughput with the default argon2
    profile, and the p99 of GETs while a sign-in storm runs (issue 3)."""
    tmp = tempfile.mkdtemp(prefix="sovrium-bench-auth-")
    procs = []
    try:
        cfg = dict(CONFIG, auth={"strategies": ["emailAndPassword"]})
        cfg_path = os.path.join(tmp, "auth.json")
        with open(cfg_path, "w") as fh:
            json.dump(cfg, fh)
        env = {**os.environ, "SOVRIUM_RATE_LIMITS": "off", "LOG_LEVEL": "warning", "AUTH_SECRET": "x" * 40}
        env.pop("SOVRIUM_ARGON2_PROFILE", None)
        with sovrium.App(cfg, db_path=path, env=env) as app:
            if not app.db.conn().execute("SELECT 1 FROM users WHERE email = 'bench@example.com'").fetchall():
                app.create_user("bench@example.com", "bench-password-1", "Bench")
        hello_port, port = free_port(), free_port()
        hello = os.path.join(tmp, "hello.py")
        with open(hello, "w") as fh:
            fh.write(HELLO)
        procs.append(subprocess.Popen([sys.executable, hello, str(hello_port), str(threads)],
                                      stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([sys.executable, "-m", "sovrium", "start", cfg_path, "--db", path, "--port",
                                       str(port), "--threads", str(threads)], env=env, stderr=subprocess.DEVNULL))
        wait_port(hello_port)
        wait_port(port)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        body = json.dumps({"email": "bench@example.com", "password": "bench-password-1"})
        conn.request("POST", "/api/auth/sign-in/email", body, {"Content-Type": "application/json"})
        token = json.loads(conn.getresponse().read())["token"]
        auth_lua = os.path.join(tmp, "auth.lua")
        with open(auth_lua, "w") as fh:
            fh.write(f'wrk.headers["Authorization"] = "Bearer {token}"\nmath.randomseed(7)\n'
                     f'request = function()\n  return wrk.format("GET", "/api/tables/items/records/" .. '
                     f'math.random(1, {records}))\nend\n')
        signin_lua = os.path.join(tmp, "signin.lua")
        with open(signin_lua, "w") as fh:
            fh.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                     f'wrk.headers["Content-Type"] = "application/json"\n')
        runs = {"H (hello world)": run_wrk(f"http://127.0.0.1:{hello_port}/", duration),
                "authenticated GET by id": run_wrk(f"http://127.0.0.1:{port}/api/tables/items/records/1", duration,
                                                   script=auth_lua),
                "sign-in (argon2 owasp)": run_wrk(f"http://127.0.0.1:{port}/api/auth/sign-in/email", duration,
                                                  connections=8, script=signin_lua)}
        storm = subprocess.Popen(["wrk", "-t1", "-c8", f"-d{duration + 2}s", "-s", signin_lua,
                                  f"http://127.0.0.1:{port}/api/auth/sign-in/email"], stdout=subprocess.DEVNULL)
        time.sleep(1)
        runs["authenticated GET during a sign-in storm"] = run_wrk(
            f"http://127.0.0.1:{port}/api/tables/items/records/1", duration, connections=8, script=auth_lua)
        storm.wait()
        return runs
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1000000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--db", help="database file (default: cached in the temporary directory)")
    ap.add_argument("--http-only", action="store_true", help="skip the server-time measurements")
    ap.add_argument("--auth", action="store_true", help="only the authentication figures (needs wrk)")
    args = ap.parse_args()
    path = args.db or os.path.join(tempfile.gettempdir(), f"sovrium-bench-{args.records}-v2.db")
    if not os.path.exists(path):
        seed(path, args.records)
    print(f"sovrium {sovrium.__version__}, SQLite {sovrium.apsw.sqlite_lib_version()}, "
          f"{os.cpu_count()} cores, {args.records} items")
    if args.auth:
        runs = auth_benchmarks(path, args.duration, args.threads, args.records)
        h = runs["H (hello world)"][0]
        print(f"\nAuthentication, {args.duration} s per run, waitress threads={args.threads}:")
        for label, (rps, p99, errors) in runs.items():
            print(f"  {label:<42} {rps:9.1f} req/s  {rps / h:5.2f} H   p99 {p99:7.2f} ms"
                  + (f"   ({errors} non-2xx)" if errors else ""))
        return
    if not args.http_only:
        print("\nServer time of list queries (median of 7, in-process):")
        for label, ms in server_times(path).items():
            print(f"  {label:<78} {ms:8.2f} ms")
    print(f"\nHTTP on loopback, {args.duration} s per run, waitress threads={args.threads}:")
    runs = http_benchmarks(path, args.duration, args.threads, args.records)
    h = runs["H (hello world)"][0]
    for label, (rps, p99, errors) in runs.items():
        print(f"  {label:<28} {rps:9.0f} req/s  {rps / h:5.2f} H   p99 {p99:7.2f} ms"
              + (f"   ({errors} non-2xx)" if errors else ""))


if __name__ == "__main__":
    main()
