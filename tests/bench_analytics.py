"""Benchmark of analytics (issue 5). Not collected by pytest; run it by hand:

    python tests/bench_analytics.py

1. POST /api/analytics/collect throughput on loopback with wrk (Debian package `wrk`) as a ratio to
   H, a bare WSGI hello-world on the same waitress settings in the same run.
2. Server time of each report over 1,000,000 events spread over 30 days, in-process through the
   service functions the HTTP handlers call (median of 5). The events are generated with SQL
   (realistic paths, referrers, devices and sessions) and cached in the temporary directory.
"""

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import sovrium  # noqa: E402
from bench_records import HELLO, free_port, run_wrk, wait_port  # noqa: E402

CONFIG = {"name": "bench-analytics", "analytics": True, "tables": []}
EVENTS = 1_000_000
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def seed(path, now):
    rnd = random.Random(5)
    start = now.timestamp() - 30 * 86400
    with sovrium.App(CONFIG, db_path=path, env={}) as app:
        conn = app.db.conn()
        conn.execute("BEGIN")
        rows = []
        for i in range(EVENTS):
            ts = sovrium.format_ts(sovrium.datetime.datetime.fromtimestamp(start + i * 30 * 86400 / EVENTS,
                                                                            sovrium.datetime.timezone.utc))
            visitor = f"{rnd.randrange(200000):064x}"
            rows.append((ts, "example.com", f"/page/{rnd.randrange(300)}", None,
                         rnd.choice([None, None, "news.example.org", "search.example", "social.example"]),
                         rnd.choice([None] * 8 + ["newsletter", "ads"]), None, None, None, None,
                         rnd.choice(["desktop", "desktop", "mobile", "tablet"]),
                         rnd.choice(["Chrome", "Firefox", "Safari", "Edge"]),
                         rnd.choice(["Windows", "macOS", "Linux", "iOS", "Android"]), "en", visitor,
                         f"s{i // 4}", 1 if i % 4 == 0 else 0))
            if len(rows) == 50000:
                conn.executemany("INSERT INTO analytics_events (ts, host, path, title, referrer_domain, utm_source, "
                                 "utm_medium, utm_campaign, utm_content, utm_term, device, browser, os, language, "
                                 "visitor, session, is_entrance) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                                 "?, ?, ?)", rows)
                rows = []
                print(f"\r  events {i + 1}/{EVENTS}", end="", file=sys.stderr, flush=True)
        conn.execute("COMMIT")
        conn.execute("PRAGMA optimize = 0x10002")
        print(file=sys.stderr)


def main():
    path = os.path.join(tempfile.gettempdir(), "sovrium-bench-analytics-v2.db")
    now = sovrium.utcnow()
    if not os.path.exists(path):
        seed(path, now)
    with sovrium.App(CONFIG, db_path=path, env={}, clock=lambda: now) as app:
        ctx = app.context(sovrium.LOCAL)
        params = {"period": "30d"}
        figures = {}
        app.db.conn().execute("DELETE FROM analytics_rollups")
        t = time.perf_counter()
        sovrium.analytics_overview(ctx, params)
        cold = (time.perf_counter() - t) * 1000
        for name in ("overview", "pages", "referrers", "devices", "campaigns"):
            fn = getattr(sovrium, f"analytics_{name}")
            samples = []
            for _ in range(5):
                t = time.perf_counter()
                fn(ctx, params)
                samples.append((time.perf_counter() - t) * 1000)
            figures[name] = statistics.median(samples)
    print(f"sovrium {sovrium.__version__}, SQLite {sovrium.apsw.sqlite_lib_version()}, {os.cpu_count()} cores")
    print(f"First report after the rollup cache is emptied (computes 28 final days): {cold:.0f} ms")
    print("Reports over 1,000,000 events, 30-day range (median of 5, in-process, rollups cached):")
    for name, ms in figures.items():
        print(f"  {name:<12} {ms:8.1f} ms")
    tmp = tempfile.mkdtemp(prefix="sovrium-bench-collect-")
    procs = []
    try:
        hello_port, port = free_port(), free_port()
        hello = os.path.join(tmp, "hello.py")
        with open(hello, "w") as fh:
            fh.write(HELLO)
        cfg = os.path.join(tmp, "a.json")
        with open(cfg, "w") as fh:
            json.dump(CONFIG, fh)
        procs.append(subprocess.Popen([sys.executable, hello, str(hello_port), "8"], stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([sys.executable, "-m", "sovrium", "start", cfg, "--db",
                                       os.path.join(tmp, "collect.db"), "--port", str(port)],
                                      env={**os.environ, "SOVRIUM_RATE_LIMITS": "off", "LOG_LEVEL": "warning"},
                                      stderr=subprocess.DEVNULL))
        wait_port(hello_port)
        wait_port(port)
        lua = os.path.join(tmp, "collect.lua")
        with open(lua, "w") as fh:
            fh.write('wrk.method = "POST"\nwrk.body = \'{"p": "https://example.com/pricing?utm_source=nl", '
                     '"r": "https://news.example.org/a", "sw": 1440, "sh": 900}\'\n'
                     f'wrk.headers["Content-Type"] = "text/plain"\nwrk.headers["User-Agent"] = "{UA}"\n')
        h = run_wrk(f"http://127.0.0.1:{hello_port}/", 10)
        c = run_wrk(f"http://127.0.0.1:{port}/api/analytics/collect", 10, script=lua)
        print("Collect on loopback, 10 s per run, waitress threads=8, wrk 16 connections:")
        print(f"  H (hello world) {h[0]:9.0f} req/s   p99 {h[1]:6.2f} ms")
        print(f"  collect         {c[0]:9.0f} req/s   {c[0] / h[0]:4.2f} H   p99 {c[1]:6.2f} ms"
              + (f"   ({c[2]} non-2xx)" if c[2] else ""))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    main()
