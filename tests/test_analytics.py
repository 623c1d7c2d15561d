"""Cookie-free analytics (API.md §1.2, §1.7, §1.10, §1.12–§1.13, §11, §14, §17.7; CONFIG.md §11).

Everything goes over HTTP through WebTest; stored events are read straight from the database.
A fake clock (an aware UTC datetime in a one-element list) drives sessions, daily salts, buckets and
retention. Collect answers 202 before or after storing, so reads wait (briefly) for the rows to
arrive, and "dropped" checks send a dropped event followed by a good sentinel event and wait for the
sentinel.
"""

import hashlib
import json
import os
import re
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import webtest

COLLECT = "/api/analytics/collect"
SCRIPT = "/api/analytics/script.js"
REPORTS = ("overview", "pages", "referrers", "devices", "campaigns")
ROUTE_NOT_FOUND = {"success": False, "message": "Route not found", "code": "NOT_FOUND"}
UNAUTHORIZED = {"success": False, "message": "Authentication required", "code": "UNAUTHORIZED"}
FORBIDDEN = {"success": False, "message": "You do not have permission to perform this action", "code": "FORBIDDEN"}
SECRET = "sovrium-test-secret-0123456789-abcdefghijkl"
PASSWORD = "correct horse 1"

COLS = ("host, path, referrer_domain, utm_source, device, browser, os, language, visitor, session, "
        "is_entrance")
ALL_COLS = COLS + ", utm_medium, utm_campaign, utm_content, utm_term, ts, title, screen_w, screen_h"

T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=timezone.utc)
IP = "192.0.2.10"

UA_CHROME_WIN = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                 "Chrome/126.0.0.0 Safari/537.36")
UA_IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Version/17.5 Mobile/15E148 Safari/604.1")
UA_FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0"
UA_ANDROID_CHROME = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                     "Chrome/126.0.6478.71 Mobile Safari/537.36")
UA_FIREFOX_WIN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0"
UA = UA_CHROME_WIN


###############################################################################
# Helpers
###############################################################################

def analytics_cfg(analytics=True, auth=False, settings=None):
    cfg = {"name": "analytics-app", "version": "1.0.0",
           "tables": [{"id": 1, "name": "notes", "fields": [{"id": 1, "name": "title",
                                                              "type": "single-line-text"}]}]}
    if analytics is not None:
        cfg["analytics"] = analytics
    if auth:
        cfg["auth"] = {"strategies": [{"type": "emailAndPassword", "minPasswordLength": 8}]}
    if settings:
        cfg["settings"] = settings
    return cfg


class Clock:
    def __init__(self, start=T0):
        self.now = [start]

    def __call__(self):
        return self.now[0]

    def set(self, dt):
        self.now[0] = dt

    def advance(self, **kw):
        self.now[0] += timedelta(**kw)
        return self.now[0]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def build(make_app, clock):
    """build(analytics=..., auth=..., settings=..., env=...) → (app, client) on the fake clock."""

    def make(analytics=True, auth=False, settings=None, env=None, db_name="test.db"):
        app = make_app(analytics_cfg(analytics, auth, settings), db_name=db_name,
                       env={"AUTH_SECRET": SECRET, **(env or {})}, clock=clock)
        return app, webtest.TestApp(app.wsgi)

    return make


def collect(client, body=None, *, ua=UA, ip=IP, headers=None, content_type="application/json", raw=None):
    """POST a collect body (a dict, or raw bytes/str) with the given User-Agent and client IP."""
    data = raw if raw is not None else json.dumps(body)
    if isinstance(data, str):
        data = data.encode()
    hdrs = {}
    if ua is not None:
        hdrs["User-Agent"] = ua
    hdrs.update(headers or {})
    environ = {"REMOTE_ADDR": ip}
    if content_type is None:
        req = webtest.TestRequest.blank(COLLECT, environ={**environ, "REQUEST_METHOD": "POST"},
                                        headers=hdrs)
        req.body = data
        req.environ.pop("CONTENT_TYPE", None)
        return client.do_request(req, expect_errors=True)
    return client.post(COLLECT, params=data, headers=hdrs, content_type=content_type,
                       extra_environ=environ, expect_errors=True)


def check_accepted(resp):
    assert resp.status_int == 202, (resp.status, resp.body[:500])
    assert resp.body == b""
    assert not resp.headers.getall("Set-Cookie")
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers


def count(app):
    return app.db.conn().execute("SELECT count(*) FROM analytics_events").fetchall()[0][0]


def rows(app, cols=COLS):
    names = [c.strip() for c in cols.split(",")]
    cur = app.db.conn().execute(f"SELECT {cols} FROM analytics_events ORDER BY ts, id")
    return [dict(zip(names, r)) for r in cur.fetchall()]


def wait_rows(app, n, cols=COLS, timeout=5.0):
    """Wait until at least n events are stored; → all rows."""
    deadline = time.monotonic() + timeout
    while count(app) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    out = rows(app, cols)
    assert len(out) >= n, f"expected {n} stored events, found {len(out)}: {out}"
    return out


def sentinel(client, app, host="site.test", **kw):
    """Send an event that must be stored; wait for it; → its path."""
    path = f"/sentinel-{uuid.uuid4().hex[:12]}"
    check_accepted(collect(client, {"p": f"https://{host}{path}"}, **kw))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = app.db.conn().execute("SELECT count(*) FROM analytics_events WHERE path = ?", (path,)).fetchall()
        if found[0][0]:
            return path
        time.sleep(0.01)
    raise AssertionError(f"sentinel event {path} was never stored")


def stored_paths(app):
    return [r["path"] for r in rows(app)]


def salts(app):
    return app.db.conn().execute("SELECT day, salt FROM analytics_salts ORDER BY day").fetchall()


def visitor_hash(salt, ip, ua, host):
    return hashlib.sha256(f"{salt}|{ip}|{ua}|{host}".encode("utf-8")).hexdigest()


def check_validation(resp, *fields):
    assert resp.status_int == 400, (resp.status, resp.body[:500])
    assert resp.content_type == "application/json"
    body = resp.json
    assert body["success"] is False and body["code"] == "VALIDATION_ERROR", body
    assert isinstance(body["errors"], list) and body["errors"], body
    got = [e["field"] for e in body["errors"]]
    for f in fields:
        assert f in got, (f, body)
    assert body["message"] == body["errors"][0]["message"]
    for e in body["errors"]:
        assert set(e) == {"field", "message"} and isinstance(e["message"], str) and e["message"]
    return body


def check_error(resp, status, body):
    assert resp.status_int == status, (resp.status, resp.body[:500])
    assert resp.content_type == "application/json"
    assert resp.json == body


def report(client, name, query="", headers=None):
    url = f"/api/analytics/{name}" + (f"?{query}" if query else "")
    return client.get(url, headers=headers or {}, expect_errors=True)


def ok(resp):
    assert resp.status_int == 200, (resp.status, resp.body[:800])
    assert resp.content_type == "application/json"
    assert not resp.headers.getall("Set-Cookie")
    return resp.json


###############################################################################
# Collect: content types, response, cookies, CORS, CSRF
###############################################################################

@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "text/plain;charset=UTF-8",
                                          "application/json; charset=utf-8", None])
def test_collect_accepts_json_and_text_plain(build, content_type):
    app, client = build()
    resp = collect(client, {"p": "https://site.test/hello", "t": "Hello"}, content_type=content_type)
    check_accepted(resp)
    (row,) = wait_rows(app, 1)
    assert row["path"] == "/hello" and row["host"] == "site.test"


def test_collect_other_content_type_is_refused(build):
    app, client = build()
    resp = collect(client, raw="p=%2Fhello", content_type="application/x-www-form-urlencoded")
    check_validation(resp, "body")
    assert resp.json["errors"] == [{"field": "body", "message": "Content-Type must be application/json"}]
    sentinel(client, app)
    assert count(app) == 1


def test_collect_response_is_202_empty_no_cookie_cors_star(build):
    app, client = build(env={"BASE_URL": "http://localhost:3000"})
    for origin in (None, "https://elsewhere.example", "http://localhost:3000", "null"):
        headers = {"Origin": origin} if origin else {}
        resp = collect(client, {"p": "/page"}, headers=headers)
        check_accepted(resp)
        assert resp.headers.get("Access-Control-Allow-Origin") == "*", origin
    # Dropped events get the very same answer.
    check_accepted(collect(client, {"p": "/page"}, ua="Googlebot/2.1 (+http://www.google.com/bot.html)"))
    check_accepted(collect(client, {"p": "/page"}, ua=None))


def test_collect_error_responses_also_carry_cors_star(build):
    app, client = build()
    resp = collect(client, {"t": "no page"})
    check_validation(resp, "p")
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers


def test_collect_preflight_and_wrong_method(build):
    app, client = build()
    resp = client.options(COLLECT, headers={"Origin": "https://elsewhere.example",
                                            "Access-Control-Request-Method": "POST"}, expect_errors=True)
    assert resp.status_int == 204
    resp = client.get(COLLECT, expect_errors=True)
    assert resp.status_int == 405
    allow = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert allow == {"POST", "OPTIONS"}
    resp = client.post("/api/analytics/overview", expect_errors=True)
    assert resp.status_int == 405
    assert {m.strip() for m in resp.headers["Allow"].split(",")} == {"GET", "HEAD", "OPTIONS"}


def test_collect_never_reads_cookies_and_has_no_csrf(build, clock):
    """Auth mode: a signed-in admin's cookie, sent cross-site, neither blocks nor changes anything."""
    app, client = build(auth=True)
    app.create_user("root@example.com", PASSWORD, role="admin")
    signin = client.post_json("/api/auth/sign-in/email", {"email": "root@example.com", "password": PASSWORD},
                              expect_errors=True)
    assert signin.status_int == 200, signin.body
    cookie = "; ".join(c.split(";")[0] for c in signin.headers.getall("Set-Cookie"))
    assert "better-auth.session_token=" in cookie
    client.reset()
    plain = collect(client, {"p": "https://site.test/a"})
    check_accepted(plain)
    for headers in ({"Cookie": cookie, "Origin": "https://evil.example"},
                    {"Cookie": cookie, "Sec-Fetch-Site": "cross-site"},
                    {"Cookie": cookie + "; _ga=GA1.1.123; visitor=abc"}):
        check_accepted(collect(client, {"p": "https://site.test/a"}, headers=headers))
    stored = wait_rows(app, 4)
    # Same salt, IP, agent and host → same visitor and session whatever cookies were sent.
    assert len({r["visitor"] for r in stored}) == 1
    assert len({r["session"] for r in stored}) == 1
    assert [r["is_entrance"] for r in stored] == [1, 0, 0, 0]


def test_no_set_cookie_anywhere_on_analytics_routes(build, clock):
    app, client = build()
    responses = [collect(client, {"p": "/x"}), collect(client, {"p": ""}), collect(client, raw="{"),
                 client.get(SCRIPT, expect_errors=True)]
    responses += [report(client, name) for name in REPORTS]
    for resp in responses:
        assert not resp.headers.getall("Set-Cookie"), resp.request.path


###############################################################################
# Collect: validation (per-member 400s), body limit
###############################################################################

@pytest.mark.parametrize("body,fields", [
    ({}, ["p"]),
    ({"t": "x"}, ["p"]),
    ({"p": ""}, ["p"]),
    ({"p": None}, ["p"]),
    ({"p": 42}, ["p"]),
    ({"p": ["/a"]}, ["p"]),
    ({"p": "/" + "a" * 2048}, ["p"]),
    ({"p": "https://site.test/" + "a" * 2040}, ["p"]),
    ({"p": "relative/path"}, ["p"]),
    ({"p": "site.test/page"}, ["p"]),
    ({"p": "ftp://site.test/file"}, ["p"]),
    ({"p": "javascript:alert(1)"}, ["p"]),
    ({"p": "mailto:a@site.test"}, ["p"]),
    ({"p": "/ok", "t": "x" * 513}, ["t"]),
    ({"p": "/ok", "t": 5}, ["t"]),
    ({"p": "/ok", "r": "https://ref.example/" + "r" * 2030}, ["r"]),
    ({"p": "/ok", "r": 7}, ["r"]),
    ({"p": "/ok", "sw": 0}, ["sw"]),
    ({"p": "/ok", "sw": -1}, ["sw"]),
    ({"p": "/ok", "sw": 100001}, ["sw"]),
    ({"p": "/ok", "sw": 1.5}, ["sw"]),
    ({"p": "/ok", "sw": "1024"}, ["sw"]),
    ({"p": "/ok", "sw": True}, ["sw"]),
    ({"p": "/ok", "sh": 0}, ["sh"]),
    ({"p": "/ok", "sh": 100001}, ["sh"]),
    ({"p": "/ok", "us": "s" * 257}, ["us"]),
    ({"p": "/ok", "um": "m" * 257}, ["um"]),
    ({"p": "/ok", "uc": "c" * 257}, ["uc"]),
    ({"p": "/ok", "ux": "x" * 257}, ["ux"]),
    ({"p": "/ok", "ut": "t" * 257}, ["ut"]),
    ({"p": "/ok", "us": 3}, ["us"]),
    ({"p": "/ok", "t": "x" * 513, "sw": 0, "sh": 100001, "us": "s" * 257, "ut": "t" * 257},
     ["t", "sw", "sh", "us", "ut"]),
    ({"t": "x" * 513, "r": "r" * 2049}, ["p", "t", "r"]),
])
def test_collect_invalid_bodies(build, body, fields):
    app, client = build()
    resp = collect(client, body)
    check_validation(resp, *fields)
    assert not resp.headers.getall("Set-Cookie")
    sentinel(client, app)
    assert count(app) == 1


@pytest.mark.parametrize("raw,message", [
    ("{", "Request body is not valid JSON"),
    ("not json at all", "Request body is not valid JSON"),
    ('{"p": "/a",}', "Request body is not valid JSON"),
    ('{"p": NaN}', "Request body is not valid JSON"),
    ('{"p": "/a", "sw": 1e400}', "Request body is not valid JSON"),
    ('{"p": "\\ud800"}', "Request body is not valid JSON"),
    ("\xff\xfe", "Request body is not valid JSON"),
    ('["/a"]', "Request body must be a JSON object"),
    ('"/a"', "Request body must be a JSON object"),
    ("null", "Request body must be a JSON object"),
])
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_collect_garbage_bodies(build, raw, message, content_type):
    app, client = build()
    data = raw.encode("latin-1") if raw == "\xff\xfe" else raw
    resp = collect(client, raw=data, content_type=content_type)
    check_validation(resp, "body")
    assert resp.json["errors"] == [{"field": "body", "message": message}]


def test_collect_empty_body_is_400(build):
    app, client = build()
    resp = collect(client, raw=b"")
    check_validation(resp)
    assert resp.json["errors"][0]["field"] in ("body", "p")


def test_collect_valid_boundaries_are_accepted(build):
    app, client = build()
    p = "/" + "a" * 2047
    body = {"p": p, "t": "t" * 512, "r": "https://ref.example/" + "r" * (2048 - 20), "sw": 1, "sh": 100000,
            "us": "s" * 256, "um": "m" * 256, "uc": "c" * 256, "ux": "x" * 256, "ut": "t" * 256,
            "unknown": {"deep": [1, 2, 3]}, "another": None}
    assert len(body["r"]) == 2048
    check_accepted(collect(client, body))
    check_accepted(collect(client, {"p": "https://site.test/" + "b" * (2048 - 18), "sw": 100000, "sh": 1}))
    stored = wait_rows(app, 2, ALL_COLS)
    assert stored[0]["path"] == p
    assert stored[0]["screen_w"] == 1 and stored[0]["screen_h"] == 100000
    assert stored[0]["utm_source"] == "s" * 256 and stored[0]["utm_term"] == "t" * 256


def test_collect_body_limit_is_16384_bytes(build):
    app, client = build()
    base = {"p": "/limit", "pad": ""}
    overhead = len(json.dumps(base).encode())
    exact = json.dumps({"p": "/limit", "pad": "x" * (16384 - overhead)}).encode()
    assert len(exact) == 16384
    check_accepted(collect(client, raw=exact))
    over = json.dumps({"p": "/limit", "pad": "x" * (16385 - overhead)}).encode()
    assert len(over) == 16385
    for ct in ("application/json", "text/plain"):
        resp = collect(client, raw=over, content_type=ct)
        check_error(resp, 413, {"success": False, "code": "PAYLOAD_TOO_LARGE",
                                "message": "Request body exceeds the maximum size of 16384 bytes"})
    # The size check comes before parsing (§1.12): oversized garbage is still a 413.
    resp = collect(client, raw=b"{" * 20000)
    assert resp.status_int == 413 and resp.json["code"] == "PAYLOAD_TOO_LARGE"
    resp = collect(client, raw=b"x" * 200_000)
    assert resp.status_int == 413
    wait_rows(app, 1)
    assert stored_paths(app) == ["/limit"]


###############################################################################
# Collect: host, path, visitor hash, salts, IP, sessions
###############################################################################

def test_host_rules(build):
    app, client = build()
    cases = [
        ({"p": "https://Example.COM:8443/abs?x=1#f"}, {"Origin": "https://origin.example"}, "example.com"),
        ({"p": "http://sub.Site.test/abs2"}, {}, "sub.site.test"),
        ({"p": "/rel-origin"}, {"Origin": "https://Origin.Example:444",
                                "Referer": "https://referer.example/page"}, "origin.example"),
        ({"p": "/rel-referer"}, {"Referer": "http://Referer.Example:8080/some/page?q=1"}, "referer.example"),
        ({"p": "/rel-host"}, {"Host": "Host.Example:8080"}, "host.example"),
        ({"p": "/rel-host2"}, {"Host": "plain-host.example"}, "plain-host.example"),
    ]
    for body, headers, _ in cases:
        check_accepted(collect(client, body, headers=headers))
    stored = wait_rows(app, len(cases))
    assert [(r["path"], r["host"]) for r in stored] == [
        ("/abs", "example.com"), ("/abs2", "sub.site.test"), ("/rel-origin", "origin.example"),
        ("/rel-referer", "referer.example"), ("/rel-host", "host.example"), ("/rel-host2", "plain-host.example")]


def test_path_has_no_query_or_fragment(build):
    app, client = build()
    for p in ("/a/b?q=1&utm_source=x#frag", "https://site.test/c/d/?z=9", "/e#only-fragment",
              "https://site.test/f%20g/h?x#y"):
        check_accepted(collect(client, {"p": p}))
    stored = wait_rows(app, 4)
    assert [r["path"] for r in stored][:3] == ["/a/b", "/c/d/", "/e"]
    assert stored[3]["path"] in ("/f%20g/h", "/f g/h")


def test_visitor_hash_uses_daily_salt(build, clock):
    app, client = build()
    check_accepted(collect(client, {"p": "https://Site.Test:8080/one"}, ip="198.51.100.4", ua=UA_IPHONE))
    check_accepted(collect(client, {"p": "/two"}, ip="198.51.100.4", ua=UA_IPHONE,
                           headers={"Origin": "https://site.test"}))
    check_accepted(collect(client, {"p": "https://other.test/three"}, ip="198.51.100.4", ua=UA_IPHONE))
    check_accepted(collect(client, {"p": "https://site.test/four"}, ip="198.51.100.5", ua=UA_IPHONE))
    check_accepted(collect(client, {"p": "https://site.test/five"}, ip="198.51.100.4", ua=UA_FIREFOX_LINUX))
    stored = wait_rows(app, 5)
    (day_salt,) = salts(app)
    assert "2026-03-01" in str(day_salt[0])
    salt = day_salt[1]
    assert re.fullmatch(r"[0-9a-f]{64}", salt), salt
    expected = [visitor_hash(salt, "198.51.100.4", UA_IPHONE, "site.test"),
                visitor_hash(salt, "198.51.100.4", UA_IPHONE, "site.test"),
                visitor_hash(salt, "198.51.100.4", UA_IPHONE, "other.test"),
                visitor_hash(salt, "198.51.100.5", UA_IPHONE, "site.test"),
                visitor_hash(salt, "198.51.100.4", UA_FIREFOX_LINUX, "site.test")]
    assert [r["visitor"] for r in stored] == expected
    assert len(set(expected)) == 4


def test_salt_rotates_daily_and_old_salts_are_deleted(build, clock):
    clock.set(datetime(2026, 3, 1, 23, 50, 0, tzinfo=timezone.utc))
    app, client = build()
    check_accepted(collect(client, {"p": "https://site.test/a"}))
    check_accepted(collect(client, {"p": "https://site.test/b"}))
    first = wait_rows(app, 2)
    day1 = salts(app)
    assert len(day1) == 1 and "2026-03-01" in str(day1[0][0])
    h1 = visitor_hash(day1[0][1], IP, UA, "site.test")
    assert first[0]["visitor"] == first[1]["visitor"] == h1
    # Five minutes later it is another UTC day: a new salt, the old one gone at once.
    clock.advance(minutes=15)
    check_accepted(collect(client, {"p": "https://site.test/c"}))
    stored = wait_rows(app, 3)
    day2 = salts(app)
    assert len(day2) == 1, day2
    assert "2026-03-02" in str(day2[0][0])
    assert day2[0][1] != day1[0][1] and re.fullmatch(r"[0-9a-f]{64}", day2[0][1])
    h2 = visitor_hash(day2[0][1], IP, UA, "site.test")
    assert stored[2]["visitor"] == h2 != h1
    # A new visitor hash → a new session, even within the session timeout.
    assert stored[2]["session"] != stored[1]["session"]
    assert [r["is_entrance"] for r in stored] == [1, 0, 1]
    # Days later: still exactly one salt, today's.
    clock.advance(days=3)
    check_accepted(collect(client, {"p": "https://site.test/d"}))
    wait_rows(app, 4)
    day5 = salts(app)
    assert len(day5) == 1 and "2026-03-05" in str(day5[0][0])


def test_client_ip_follows_trust_proxy(build, clock):
    app, client = build(env={"TRUST_PROXY": "true"})
    check_accepted(collect(client, {"p": "https://site.test/a"}, ip="10.0.0.1",
                           headers={"X-Forwarded-For": "203.0.113.5, 198.51.100.7"}))
    stored = wait_rows(app, 1)
    salt = salts(app)[0][1]
    assert stored[0]["visitor"] == visitor_hash(salt, "198.51.100.7", UA, "site.test")


def test_x_forwarded_for_ignored_without_trust_proxy(build, clock):
    app, client = build()
    check_accepted(collect(client, {"p": "https://site.test/a"}, ip="10.0.0.1",
                           headers={"X-Forwarded-For": "203.0.113.5"}))
    stored = wait_rows(app, 1)
    salt = salts(app)[0][1]
    assert stored[0]["visitor"] == visitor_hash(salt, "10.0.0.1", UA, "site.test")


def test_ip_is_never_stored(build, clock, tmp_path):
    app, client = build()
    ip = "198.51.100.203"
    forwarded = "203.0.113.177"
    for i in range(5):
        check_accepted(collect(client, {"p": f"https://site.test/p{i}", "r": "https://ref.example/"},
                               ip=ip, headers={"X-Forwarded-For": forwarded, "Accept-Language": "en"}))
        clock.advance(minutes=1)
    wait_rows(app, 5)
    for r in (report(client, "overview"), report(client, "pages")):
        ok(r)
    conn = app.db.conn()
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()]
    for table in tables:
        for row in conn.execute(f'SELECT * FROM "{table}"').fetchall():
            for value in row:
                text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                assert ip not in text and forwarded not in text, (table, row)
    app.db.conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    for suffix in ("", "-wal"):
        path = app.db_path + suffix
        if os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
            assert ip.encode() not in data and forwarded.encode() not in data, path


def test_sessions_continue_within_timeout(build, clock):
    app, client = build()
    other = UA_FIREFOX_LINUX
    p = lambda name: {"p": f"https://site.test/{name}"}  # noqa: E731
    check_accepted(collect(client, p("e1")))                       # 08:00:00 entrance of S1
    clock.advance(minutes=1)
    check_accepted(collect(client, p("o1"), ua=other))             # another visitor: S3
    clock.advance(minutes=28, seconds=59)
    check_accepted(collect(client, p("e2")))                       # 29:59 after e1 → S1
    clock.advance(minutes=29)
    check_accepted(collect(client, p("e3")))                       # 29:00 after e2 → S1
    clock.advance(minutes=30)
    check_accepted(collect(client, p("e4")))                       # exactly 30:00 → new S2
    clock.advance(seconds=1)
    check_accepted(collect(client, p("e5")))                       # S2
    clock.advance(minutes=31)
    check_accepted(collect(client, p("o2"), ua=other))             # 31 min later → new S4
    stored = {r["path"]: r for r in wait_rows(app, 7)}
    s = {k: v["session"] for k, v in stored.items()}
    assert s["/e1"] == s["/e2"] == s["/e3"]
    assert s["/e4"] == s["/e5"] != s["/e1"]
    assert s["/o1"] != s["/o2"]
    assert len(set(s.values())) == 4
    assert all(isinstance(v, str) and v for v in s.values())
    entrances = {k for k, v in stored.items() if v["is_entrance"] == 1}
    assert entrances == {"/e1", "/o1", "/e4", "/o2"}


def test_session_timeout_is_configurable(build, clock):
    app, client = build(analytics={"sessionTimeoutMinutes": 5})
    check_accepted(collect(client, {"p": "/a"}))
    clock.advance(minutes=4, seconds=59)
    check_accepted(collect(client, {"p": "/b"}))
    clock.advance(minutes=5, seconds=1)
    check_accepted(collect(client, {"p": "/c"}))
    stored = wait_rows(app, 3)
    assert stored[0]["session"] == stored[1]["session"] != stored[2]["session"]
    assert [r["is_entrance"] for r in stored] == [1, 0, 1]


###############################################################################
# Collect: dropped events
###############################################################################

BOT_AGENTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0) Chrome/116 Safari/537.36",
    "ia_archiver CRAWLER (+http://www.alexa.com/site/help/webmasters)",
    "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
    "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) PhantomJS/2.1.1 Safari/538.1",
    "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/119.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse",
    "Pingdom.com_checker/1.0 (+http://www.pingdom.com/)",
    "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
    "Site24x7 Monitor/1.0",
    "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "curl/8.5.0",
    "Wget/1.21.4",
    "python-requests/2.31.0",
    "Python-urllib/3.11",
    "Go-http-client/1.1",
    "Java/17.0.2",
    "okhttp/4.12.0",
    "Apache-HttpClient/4.5.14 (Java/17.0.8)",
    "Scrapy/2.11.0 (+https://scrapy.org)",
    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "axios/1.6.7",
    "SOMEBOT/1.0",
    "",
    None,
]


def test_bot_and_empty_user_agents_are_dropped(build):
    app, client = build()
    for i, ua in enumerate(BOT_AGENTS):
        check_accepted(collect(client, {"p": f"https://site.test/bot-{i}"}, ua=ua))
    path = sentinel(client, app)
    assert stored_paths(app) == [path], [BOT_AGENTS[int(p.split("-")[1])] for p in stored_paths(app)
                                         if p.startswith("/bot-")]


@pytest.mark.parametrize("headers", [
    {"Sec-Purpose": "prefetch"},
    {"Sec-Purpose": "prefetch;prerender"},
    {"Sec-Purpose": "Prefetch"},
    {"Purpose": "prefetch"},
])
def test_prefetch_requests_are_dropped(build, headers):
    app, client = build()
    check_accepted(collect(client, {"p": "https://site.test/prefetched"}, headers=headers))
    path = sentinel(client, app)
    assert stored_paths(app) == [path]


def test_do_not_track_and_gpc_respected_by_default(build):
    app, client = build()
    check_accepted(collect(client, {"p": "https://site.test/dnt"}, headers={"DNT": "1"}))
    check_accepted(collect(client, {"p": "https://site.test/gpc"}, headers={"Sec-GPC": "1"}))
    check_accepted(collect(client, {"p": "https://site.test/dnt0"}, headers={"DNT": "0"}))
    path = sentinel(client, app)
    assert stored_paths(app) == ["/dnt0", path]


def test_do_not_track_ignored_when_disabled(build):
    app, client = build(analytics={"respectDoNotTrack": False})
    check_accepted(collect(client, {"p": "https://site.test/dnt"}, headers={"DNT": "1"}))
    check_accepted(collect(client, {"p": "https://site.test/gpc"}, headers={"Sec-GPC": "1"}))
    assert [r["path"] for r in wait_rows(app, 2)] == ["/dnt", "/gpc"]


def test_excluded_path_globs(build):
    app, client = build(analytics={"excludedPaths": ["/admin/*", "/preview/*", "/exact", "/docs/v1.0",
                                                     "*/secret"]})
    dropped = ["/admin/users/5", "/admin/", "/preview/a/b/c", "/exact", "/exact?x=1", "/docs/v1.0",
               "https://site.test/admin/deep/er", "/x/y/secret", "/secret"]
    kept = ["/admin", "/exact/more", "/x/admin/y", "/docs/v1x0", "/exactly", "/secret/no", "/preview"]
    for p in dropped + kept:
        check_accepted(collect(client, {"p": p}))
    path = sentinel(client, app)
    assert stored_paths(app) == kept + [path]


def test_allowed_hosts(build):
    app, client = build(analytics={"allowedHosts": ["example.com", "www.example.com"]})
    check_accepted(collect(client, {"p": "https://example.com/a"}))
    check_accepted(collect(client, {"p": "https://WWW.Example.com:8080/b"}))
    check_accepted(collect(client, {"p": "/c"}, headers={"Origin": "https://example.com"}))
    check_accepted(collect(client, {"p": "https://evil.test/d"}))
    check_accepted(collect(client, {"p": "https://sub.example.com/e"}))
    check_accepted(collect(client, {"p": "/f"}, headers={"Origin": "https://evil.test"}))
    check_accepted(collect(client, {"p": "/g"}))  # Host: localhost
    path = sentinel(client, app, host="example.com")
    assert stored_paths(app) == ["/a", "/b", "/c", path]


###############################################################################
# Collect: UTM, referrer, device/browser/OS, language
###############################################################################

def test_utm_from_body_or_page_url(build):
    app, client = build()
    q = "utm_source=news&utm_medium=email&utm_campaign=spring%20sale&utm_content=c1&utm_term=t+1"
    check_accepted(collect(client, {"p": f"https://site.test/l1?{q}"}))
    check_accepted(collect(client, {"p": f"https://site.test/l2?{q}", "us": "tw", "ut": "body-term"}))
    check_accepted(collect(client, {"p": "/l3?utm_source=rel&x=1"}))
    check_accepted(collect(client, {"p": "/l4", "us": "only", "um": "body", "uc": "c", "ux": "x", "ut": "t"}))
    check_accepted(collect(client, {"p": "/l5"}))
    cols = "path, utm_source, utm_medium, utm_campaign, utm_content, utm_term"
    stored = [tuple(r.values()) for r in wait_rows(app, 5, cols)]
    assert stored == [
        ("/l1", "news", "email", "spring sale", "c1", "t 1"),
        ("/l2", "tw", "email", "spring sale", "c1", "body-term"),
        ("/l3", "rel", None, None, None, None),
        ("/l4", "only", "body", "c", "x", "t"),
        ("/l5", None, None, None, None, None),
    ]


def test_referrer_domain(build):
    app, client = build()
    cases = [
        ("https://www.News.Example.org/a?b=1", "news.example.org"),
        ("http://google.com", "google.com"),
        ("https://sub.www.example.net/", "sub.www.example.net"),
        ("https://WWW.example.com:8443/x", "example.com"),
        ("https://site.test/internal", None),
        ("http://SITE.test:8080/other", None),
        ("", None),
        ("not a url", None),
        ("http://", None),
        (None, None),
    ]
    for i, (r, _) in enumerate(cases):
        body = {"p": f"https://site.test/r{i}"}
        if r is not None:
            body["r"] = r
        check_accepted(collect(client, body))
    stored = wait_rows(app, len(cases))
    assert [(r["path"], r["referrer_domain"]) for r in stored] == [
        (f"/r{i}", expected) for i, (_, expected) in enumerate(cases)]


USER_AGENTS = [
    # (user agent, device, browser, os)
    (UA_CHROME_WIN, "desktop", "Chrome", "Windows"),
    (UA_CHROME_WIN + " Edg/126.0.2592.68", "desktop", "Edge", "Windows"),
    (UA_CHROME_WIN + " OPR/111.0.0.0", "desktop", "Opera", "Windows"),
    (UA_FIREFOX_LINUX, "desktop", "Firefox", "Linux"),
    (UA_FIREFOX_WIN, "desktop", "Firefox", "Windows"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.5 Safari/605.1.15", "desktop", "Safari", "macOS"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:127.0) Gecko/20100101 Firefox/127.0",
     "desktop", "Firefox", "macOS"),
    ("Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 "
     "Safari/537.36", "desktop", "Chrome", "Chrome OS"),
    (UA_IPHONE, "mobile", "Safari", "iOS"),
    ("Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
     "Mobile/15E148 Safari/604.1", "tablet", "Safari", "iOS"),
    ("Mozilla/5.0 (iPod touch; CPU iPhone OS 15_8 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/15.6 Mobile/15E148 Safari/604.1", "mobile", "Safari", "iOS"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "FxiOS/127.0 Mobile/15E148 Safari/605.1.15", "mobile", "Firefox", "iOS"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "CriOS/126.0.6478.54 Mobile/15E148 Safari/604.1", "mobile", "Chrome", "iOS"),
    (UA_ANDROID_CHROME, "mobile", "Chrome", "Android"),
    ("Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 "
     "Safari/537.36", "tablet", "Chrome", "Android"),
    ("Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
     "SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36", "mobile", "Samsung Internet", "Android"),
    ("Mozilla/5.0 (Android 14; Mobile; rv:127.0) Gecko/127.0 Firefox/127.0", "mobile", "Firefox", "Android"),
    ("Mozilla/5.0 (Linux; Android 9; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/124.2.1 "
     "like Chrome/124.0.6367.219 Safari/537.36", "tablet", "Chrome", "Android"),
    ("Mozilla/5.0 (Windows Phone 10.0; Android 6.0.1; Microsoft; Lumia 950) AppleWebKit/537.36 (KHTML, "
     "like Gecko) Chrome/52.0.2743.116 Mobile Safari/537.36 Edge/15.15063", "mobile", "Chrome", "Android"),
    ("Opera/9.80 (J2ME/MIDP; Opera Mini/9.80 (S60; SymbOS; Opera Mobi/23.348; U; en) Presto/2.5.25 "
     "Version/10.54", "mobile", "Opera", "Other"),
    ("Mozilla/5.0 (BlackBerry; U; BlackBerry 9900; en) AppleWebKit/534.11+ (KHTML, like Gecko) "
     "Version/7.1.0.346 Mobile Safari/534.11+", "mobile", "Safari", "Other"),
    ("Mozilla/5.0 (PlayBook; U; RIM Tablet OS 2.1.0; en-US) AppleWebKit/536.2+ (KHTML, like Gecko) "
     "Version/7.2.1.0 Safari/536.2+", "tablet", "Safari", "Other"),
    ("Mozilla/5.0 (X11; U; Linux armv7l like Android; en-us) AppleWebKit/531.2+ (KHTML, like Gecko) "
     "Version/5.0 Safari/538.1 Kindle/3.0+", "tablet", "Safari", "Android"),
    ("Mozilla/5.0 (compatible; MSIE 10.0; Windows NT 6.2; Trident/6.0)", "desktop", "Other", "Windows"),
    ("SomeApp/1.0 (custom device)", "desktop", "Other", "Other"),
    ("MOZILLA/5.0 (IPHONE; CPU IPHONE OS 17_5 LIKE MAC OS X) MOBILE/15E148 SAFARI/604.1",
     "mobile", "Safari", "iOS"),
]


def test_device_browser_os_from_user_agent(build):
    app, client = build()
    for i, (ua, *_rest) in enumerate(USER_AGENTS):
        check_accepted(collect(client, {"p": f"https://site.test/ua-{i}"}, ua=ua))
    stored = {r["path"]: r for r in wait_rows(app, len(USER_AGENTS))}
    wrong = []
    for i, (ua, device, browser, os_name) in enumerate(USER_AGENTS):
        row = stored.get(f"/ua-{i}")
        got = (row["device"], row["browser"], row["os"]) if row else "not stored"
        if got != (device, browser, os_name):
            wrong.append((ua, "expected", (device, browser, os_name), "got", got))
    assert not wrong, "\n".join(map(str, wrong))


def test_language_is_first_accept_language_tag(build):
    app, client = build()
    cases = [("de-CH,de;q=0.9,en;q=0.8", "de-ch"), ("EN-US", "en-us"), ("fr;q=0.8, en", "fr"),
             ("pt-BR", "pt-br"), (None, None)]
    for i, (al, _) in enumerate(cases):
        headers = {"Accept-Language": al} if al is not None else {}
        check_accepted(collect(client, {"p": f"/lang-{i}"}, headers=headers))
    stored = wait_rows(app, len(cases))
    assert [r["language"] for r in stored] == [exp for _, exp in cases]


###############################################################################
# Script
###############################################################################

def test_script_js(build):
    app, client = build()
    resp = client.get(SCRIPT, headers={"Origin": "https://elsewhere.example"}, expect_errors=True)
    assert resp.status_int == 200
    assert resp.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert resp.headers["Cache-Control"] == "public, max-age=3600"
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert not resp.headers.getall("Set-Cookie")
    assert 0 < len(resp.body) <= 2048, len(resp.body)
    js = resp.body.decode("utf-8")
    for needle in ("sendBeacon", "keepalive", "omit", "pushState", "replaceState", "popstate", "webdriver",
                   "text/plain"):
        assert needle in js, needle
    for forbidden in ("document.cookie", "localStorage", "sessionStorage", "indexedDB"):
        assert forbidden not in js, forbidden
    head = client.head(SCRIPT, expect_errors=True)
    assert head.status_int == 200 and head.body == b""
    assert head.headers["Content-Type"] == "application/javascript; charset=utf-8"


###############################################################################
# Reports
###############################################################################

SITE = "https://site.test"
A = ("192.0.2.1", UA_CHROME_WIN)       # desktop / Chrome / Windows
B = ("192.0.2.2", UA_IPHONE)           # mobile / Safari / iOS
C = ("192.0.2.3", UA_FIREFOX_LINUX)    # desktop / Firefox / Linux
NOW = datetime(2026, 3, 10, 12, 0, 0, tzinfo=timezone.utc)
NEWSLETTER = {"us": "newsletter", "um": "email", "uc": "spring"}

EVENTS = [
    # (time, visitor, p, r, extra body members)
    ("2026-03-08T10:00:00", A, "/home", "https://www.google.com/", {}),            # S1 entrance
    ("2026-03-08T10:01:40", A, "/pricing", SITE + "/home", {}),                     # S1
    ("2026-03-08T10:05:00", A, "/docs", SITE + "/pricing", {}),                     # S1: 3 views, 300 s
    ("2026-03-08T11:00:00", B, "/home", "https://news.example.org/x", NEWSLETTER),  # S2: bounce
    ("2026-03-09T09:00:00", C, "/pricing?utm_source=ads&utm_medium=cpc&utm_campaign=launch", None, {}),  # S3
    ("2026-03-09T09:02:00", C, "/home", SITE + "/pricing", {}),                     # S3
    ("2026-03-09T09:03:00", C, "/about", SITE + "/home", {}),                       # S3: 3 views, 180 s
    ("2026-03-09T15:00:00", A, "/home", "https://google.com/", {}),                # S4 (new day hash): bounce
    ("2026-03-09T15:40:00", B, "/pricing", "https://news.example.org/", NEWSLETTER),  # S5: bounce
]


def at(text):
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def seed(app, client, clock, events=EVENTS, now=NOW):
    for when, (ip, ua), p, r, extra in events:
        clock.set(at(when))
        body = {"p": SITE + p, **extra}
        if r is not None:
            body["r"] = r
        check_accepted(collect(client, body, ip=ip, ua=ua))
    wait_rows(app, len(events))
    clock.set(now)


@pytest.fixture
def seeded(build, clock):
    app, client = build()
    seed(app, client, clock)
    return app, client


RANGE_3D = "from=2026-03-07&to=2026-03-09"


def test_overview_summary_and_daily_series(seeded):
    app, client = seeded
    body = ok(report(client, "overview", RANGE_3D))
    assert list(body) == ["summary", "timeSeries", "range"]
    assert body["summary"] == {"pageViews": 9, "uniqueVisitors": 5, "sessions": 5, "viewsPerSession": 1.8,
                               "bounceRate": 60.0, "avgSessionDuration": 96}
    assert body["timeSeries"] == [
        {"period": "2026-03-07", "pageViews": 0, "uniqueVisitors": 0, "sessions": 0},
        {"period": "2026-03-08", "pageViews": 4, "uniqueVisitors": 2, "sessions": 2},
        {"period": "2026-03-09", "pageViews": 5, "uniqueVisitors": 3, "sessions": 3},
    ]
    assert body["range"] == {"from": "2026-03-07T00:00:00.000Z", "to": "2026-03-09T23:59:59.999Z",
                             "interval": "day"}
    assert isinstance(body["summary"]["avgSessionDuration"], int)


def test_overview_hourly_series_and_offsets(seeded):
    app, client = seeded
    body = ok(report(client, "overview", "from=2026-03-08T10:30:00%2B01:00&to=2026-03-08T11:30:00Z"))
    # 09:30Z .. 11:30Z → ≤ 48 h → hourly buckets 09, 10, 11.
    assert body["range"] == {"from": "2026-03-08T09:30:00.000Z", "to": "2026-03-08T11:30:00.000Z",
                             "interval": "hour"}
    assert body["timeSeries"] == [
        {"period": "2026-03-08T09:00:00Z", "pageViews": 0, "uniqueVisitors": 0, "sessions": 0},
        {"period": "2026-03-08T10:00:00Z", "pageViews": 3, "uniqueVisitors": 1, "sessions": 1},
        {"period": "2026-03-08T11:00:00Z", "pageViews": 1, "uniqueVisitors": 1, "sessions": 1},
    ]
    assert body["summary"] == {"pageViews": 4, "uniqueVisitors": 2, "sessions": 2, "viewsPerSession": 2.0,
                               "bounceRate": 50.0, "avgSessionDuration": 150}
    # A date-time without an offset is UTC.
    body = ok(report(client, "overview", "from=2026-03-08T10:00:00&to=2026-03-08T10:59:59"))
    assert body["range"]["from"] == "2026-03-08T10:00:00.000Z"
    assert body["summary"]["pageViews"] == 3


def test_overview_sessions_count_by_entrance_in_range(seeded):
    app, client = seeded
    body = ok(report(client, "overview", "from=2026-03-08T10:01:00Z&to=2026-03-08T10:10:00Z"))
    assert body["summary"] == {"pageViews": 2, "uniqueVisitors": 1, "sessions": 0, "viewsPerSession": 0,
                               "bounceRate": 0, "avgSessionDuration": 0}
    assert body["timeSeries"] == [{"period": "2026-03-08T10:00:00Z", "pageViews": 2, "uniqueVisitors": 1,
                                   "sessions": 0}]


def test_overview_monthly_series(seeded):
    app, client = seeded
    body = ok(report(client, "overview", "from=2026-01-15&to=2026-03-09&interval=month"))
    assert [b["period"] for b in body["timeSeries"]] == ["2026-01", "2026-02", "2026-03"]
    assert [b["pageViews"] for b in body["timeSeries"]] == [0, 0, 9]
    assert body["range"]["interval"] == "month"
    # Longer than 92 days → month by default.
    body = ok(report(client, "overview", "from=2025-12-01&to=2026-03-09"))
    assert body["range"]["interval"] == "month"
    assert [b["period"] for b in body["timeSeries"]] == ["2025-12", "2026-01", "2026-02", "2026-03"]
    assert body["timeSeries"][-1] == {"period": "2026-03", "pageViews": 9, "uniqueVisitors": 5, "sessions": 5}
    # Exactly 48 hours and 92 days are still hour / day.
    body = ok(report(client, "overview", "from=2026-03-08T00:00:00Z&to=2026-03-10T00:00:00Z"))
    assert body["range"]["interval"] == "hour"
    body = ok(report(client, "overview", "from=2025-12-08T00:00:00Z&to=2026-03-10T00:00:00Z"))
    assert body["range"]["interval"] == "day"
    body = ok(report(client, "overview", "from=2025-12-08T00:00:00Z&to=2026-03-10T00:00:01Z"))
    assert body["range"]["interval"] == "month"


def test_overview_daily_explicit_interval(seeded):
    app, client = seeded
    body = ok(report(client, "overview", "from=2026-03-08&to=2026-03-09&interval=day"))
    assert body["range"]["interval"] == "day"
    assert [(b["period"], b["pageViews"]) for b in body["timeSeries"]] == [("2026-03-08", 4), ("2026-03-09", 5)]
    body = ok(report(client, "overview", "from=2026-03-08&to=2026-03-09"))
    assert body["range"]["interval"] == "hour" and len(body["timeSeries"]) == 48
    assert body["timeSeries"][0]["period"] == "2026-03-08T00:00:00Z"
    assert body["timeSeries"][-1]["period"] == "2026-03-09T23:00:00Z"
    assert sum(b["pageViews"] for b in body["timeSeries"]) == 9


def test_period_default_and_values(seeded, clock):
    app, client = seeded
    for query in ("", "period=", "period=30d"):
        body = ok(report(client, "overview", query))
        assert body["range"] == {"from": "2026-02-08T12:00:00.000Z", "to": "2026-03-10T12:00:00.000Z",
                                 "interval": "day"}, query
        assert len(body["timeSeries"]) == 31
        assert body["timeSeries"][0]["period"] == "2026-02-08"
        assert body["timeSeries"][-1]["period"] == "2026-03-10"
        assert body["summary"]["pageViews"] == 9
    body = ok(report(client, "overview", "period=7d"))
    assert body["range"] == {"from": "2026-03-03T12:00:00.000Z", "to": "2026-03-10T12:00:00.000Z",
                             "interval": "day"}
    assert len(body["timeSeries"]) == 8
    body = ok(report(client, "overview", "period=90d"))
    assert body["range"]["from"] == "2025-12-10T12:00:00.000Z" and body["range"]["interval"] == "day"
    assert len(body["timeSeries"]) == 91
    body = ok(report(client, "overview", "period=12m"))
    assert body["range"] == {"from": "2025-03-10T12:00:00.000Z", "to": "2026-03-10T12:00:00.000Z",
                             "interval": "month"}
    assert [b["period"] for b in body["timeSeries"]][:2] == ["2025-03", "2025-04"]
    assert len(body["timeSeries"]) == 13
    body = ok(report(client, "pages", "period=7d"))
    assert body["range"] == {"from": "2026-03-03T12:00:00.000Z", "to": "2026-03-10T12:00:00.000Z"}
    body = ok(report(client, "pages"))
    assert body["range"] == {"from": "2026-02-08T12:00:00.000Z", "to": "2026-03-10T12:00:00.000Z"}


def test_period_24h_buckets(seeded, clock):
    """§17.7: 24 hourly buckets when now is exactly on the hour, else 25."""
    app, client = seeded
    body = ok(report(client, "overview", "period=24h"))
    assert body["range"] == {"from": "2026-03-09T12:00:00.000Z", "to": "2026-03-10T12:00:00.000Z",
                             "interval": "hour"}
    series = body["timeSeries"]
    assert len(series) == 24
    assert series[0]["period"] == "2026-03-09T12:00:00Z" and series[-1]["period"] == "2026-03-10T11:00:00Z"
    assert body["summary"]["pageViews"] == 2
    by_label = {b["period"]: b for b in series}
    assert by_label["2026-03-09T15:00:00Z"] == {"period": "2026-03-09T15:00:00Z", "pageViews": 2,
                                                 "uniqueVisitors": 2, "sessions": 2}
    assert sum(b["pageViews"] for b in series) == 2
    clock.set(datetime(2026, 3, 10, 12, 30, 0, tzinfo=timezone.utc))
    series = ok(report(client, "overview", "period=24h"))["timeSeries"]
    assert len(series) == 25
    assert series[0]["period"] == "2026-03-09T12:00:00Z" and series[-1]["period"] == "2026-03-10T12:00:00Z"


def test_too_many_intervals(seeded):
    app, client = seeded
    # 2026-01-01T00 .. 2026-02-11T15:59:59.999 = 41 × 24 + 16 = 1000 hourly buckets: fine. Explicit
    # from/to are both inclusive (§1.10), so a `to` of exactly 16:00:00 intersects a 1001st bucket.
    # (Only a period's end, "now", opens no bucket when on a boundary: §17.7.)
    body = ok(report(client, "overview", "from=2026-01-01T00:00:00Z&to=2026-02-11T15:59:59.999Z&interval=hour"))
    assert len(body["timeSeries"]) == 1000
    assert body["timeSeries"][-1]["period"] == "2026-02-11T15:00:00Z"
    for query in ("from=2026-01-01T00:00:00Z&to=2026-02-11T16:00:00Z&interval=hour",
                  "from=2026-01-01&to=2026-03-09&interval=hour", "period=90d&interval=hour",
                  "from=2020-01-01&to=2026-03-09&interval=day"):
        resp = report(client, "overview", query)
        check_validation(resp, "interval")
        assert resp.json["errors"] == [{"field": "interval", "message": "Too many intervals for this range"}]
    ok(report(client, "overview", "period=12m&interval=day"))
    ok(report(client, "overview", "period=7d&interval=hour"))


@pytest.mark.parametrize("query,field,message", [
    ("from=2026-03-09&to=2026-03-08", "from", "from must not be later than to"),
    ("from=2026-03-08T10:00:00Z&to=2026-03-08T09:59:59Z", "from", "from must not be later than to"),
    ("from=yesterday&to=2026-03-08", "from", "Parameter 'from' must be an ISO 8601 date or date-time"),
    ("from=2026-03-01&to=2026-13-01", "to", "Parameter 'to' must be an ISO 8601 date or date-time"),
    ("from=2026-02-30&to=2026-03-01", "from", "Parameter 'from' must be an ISO 8601 date or date-time"),
    ("limit=0", "limit", "Parameter 'limit' must be between 1 and 1000"),
    ("limit=1001", "limit", "Parameter 'limit' must be between 1 and 1000"),
    ("limit=ten", "limit", "Parameter 'limit' must be an integer"),
])
def test_range_and_limit_errors(seeded, query, field, message):
    app, client = seeded
    names = REPORTS if not query.startswith("limit") else ("pages", "referrers", "campaigns")
    for name in names:
        resp = report(client, name, query)
        check_validation(resp, field)
        assert resp.json["errors"][0] == {"field": field, "message": message}, name


@pytest.mark.parametrize("query,field", [
    ("period=7d&from=2026-03-01&to=2026-03-08", None),
    ("period=7d&from=2026-03-01", None),
    ("period=7d&to=2026-03-08", None),
    ("from=2026-03-01", None),
    ("to=2026-03-08", None),
    ("period=1w", "period"),
    ("period=30D", "period"),
    ("period=24", "period"),
])
def test_period_errors(seeded, query, field):
    app, client = seeded
    for name in REPORTS:
        resp = report(client, name, query)
        if field:
            check_validation(resp, field)
        else:
            check_validation(resp)


def test_interval_errors(seeded):
    app, client = seeded
    for value in ("week", "HOURS", "minute"):
        check_validation(report(client, "overview", f"interval={value}"), "interval")


def test_pages_report(seeded):
    app, client = seeded
    body = ok(report(client, "pages", RANGE_3D))
    assert list(body) == ["pages", "total", "range"]
    assert body["pages"] == [
        {"path": "/home", "pageViews": 4, "uniqueVisitors": 4},
        {"path": "/pricing", "pageViews": 3, "uniqueVisitors": 3},
        {"path": "/about", "pageViews": 1, "uniqueVisitors": 1},
        {"path": "/docs", "pageViews": 1, "uniqueVisitors": 1},
    ]
    assert body["total"] == 4
    assert body["range"] == {"from": "2026-03-07T00:00:00.000Z", "to": "2026-03-09T23:59:59.999Z"}
    body = ok(report(client, "pages", RANGE_3D + "&limit=2"))
    assert [p["path"] for p in body["pages"]] == ["/home", "/pricing"] and body["total"] == 4
    body = ok(report(client, "pages", "from=2026-03-08&to=2026-03-08"))
    assert body["pages"] == [
        {"path": "/home", "pageViews": 2, "uniqueVisitors": 2},
        {"path": "/docs", "pageViews": 1, "uniqueVisitors": 1},
        {"path": "/pricing", "pageViews": 1, "uniqueVisitors": 1},
    ]
    assert body["total"] == 3


def test_referrers_report(seeded):
    app, client = seeded
    body = ok(report(client, "referrers", RANGE_3D))
    assert list(body) == ["referrers", "total", "range"]
    assert body["referrers"] == [
        {"domain": None, "pageViews": 5, "uniqueVisitors": 2},
        {"domain": "google.com", "pageViews": 2, "uniqueVisitors": 2},
        {"domain": "news.example.org", "pageViews": 2, "uniqueVisitors": 2},
    ]
    assert body["total"] == 3
    assert body["range"] == {"from": "2026-03-07T00:00:00.000Z", "to": "2026-03-09T23:59:59.999Z"}
    body = ok(report(client, "referrers", RANGE_3D + "&limit=1"))
    assert body["referrers"] == [{"domain": None, "pageViews": 5, "uniqueVisitors": 2}] and body["total"] == 3


def test_devices_report(seeded):
    app, client = seeded
    body = ok(report(client, "devices", RANGE_3D))
    assert list(body) == ["deviceTypes", "browsers", "operatingSystems", "range"]
    assert body["deviceTypes"] == [{"name": "desktop", "count": 7, "percentage": 77.78},
                                   {"name": "mobile", "count": 2, "percentage": 22.22}]
    assert body["browsers"] == [{"name": "Chrome", "count": 4, "percentage": 44.44},
                                {"name": "Firefox", "count": 3, "percentage": 33.33},
                                {"name": "Safari", "count": 2, "percentage": 22.22}]
    assert body["operatingSystems"] == [{"name": "Windows", "count": 4, "percentage": 44.44},
                                        {"name": "Linux", "count": 3, "percentage": 33.33},
                                        {"name": "iOS", "count": 2, "percentage": 22.22}]
    assert body["range"] == {"from": "2026-03-07T00:00:00.000Z", "to": "2026-03-09T23:59:59.999Z"}


def test_campaigns_report(seeded):
    app, client = seeded
    body = ok(report(client, "campaigns", RANGE_3D))
    assert list(body) == ["campaigns", "total", "range"]
    assert body["campaigns"] == [
        {"source": "newsletter", "medium": "email", "campaign": "spring", "pageViews": 2, "uniqueVisitors": 2},
        {"source": "ads", "medium": "cpc", "campaign": "launch", "pageViews": 1, "uniqueVisitors": 1},
    ]
    assert body["total"] == 2
    body = ok(report(client, "campaigns", RANGE_3D + "&limit=1"))
    assert len(body["campaigns"]) == 1 and body["total"] == 2


def test_report_tie_ordering(build, clock):
    """§17.7: ties by pageViews are ordered by text keys ascending, null last; devices by name."""
    app, client = build()
    events = [
        ("2026-03-08T10:00:00", ("192.0.2.1", UA_ANDROID_CHROME), "/b", None, {"us": "x"}),
        ("2026-03-08T10:01:00", ("192.0.2.2", UA_FIREFOX_WIN), "/a", "https://a.example/", {"us": "x", "um": "a"}),
        ("2026-03-08T10:02:00", ("192.0.2.3", UA_ANDROID_CHROME), "/c", "https://b.example/",
         {"us": "x", "um": "a", "uc": "z"}),
        ("2026-03-08T10:03:00", ("192.0.2.4", UA_FIREFOX_WIN), "/d", None, {"um": "only-medium"}),
    ]
    seed(app, client, clock, events)
    q = "from=2026-03-08&to=2026-03-08"
    body = ok(report(client, "referrers", q))
    assert [r["domain"] for r in body["referrers"]] == [None, "a.example", "b.example"]
    assert body["total"] == 3
    body = ok(report(client, "pages", q))
    assert [p["path"] for p in body["pages"]] == ["/a", "/b", "/c", "/d"]
    body = ok(report(client, "campaigns", q))
    assert [(c["source"], c["medium"], c["campaign"]) for c in body["campaigns"]] == [
        ("x", "a", "z"), ("x", "a", None), ("x", None, None), (None, "only-medium", None)]
    assert body["total"] == 4
    body = ok(report(client, "devices", q))
    assert body["deviceTypes"] == [{"name": "desktop", "count": 2, "percentage": 50.0},
                                   {"name": "mobile", "count": 2, "percentage": 50.0}]
    assert [b["name"] for b in body["browsers"]] == ["Chrome", "Firefox"]
    assert [o["name"] for o in body["operatingSystems"]] == ["Android", "Windows"]


def test_referrer_null_last_on_tie(build, clock):
    app, client = build()
    events = [
        ("2026-03-08T10:00:00", ("192.0.2.1", UA), "/x", None, {}),
        ("2026-03-08T10:01:00", ("192.0.2.2", UA), "/y", "https://z.example/", {}),
    ]
    seed(app, client, clock, events)
    body = ok(report(client, "referrers", "from=2026-03-08&to=2026-03-08"))
    assert body["referrers"] == [{"domain": "z.example", "pageViews": 1, "uniqueVisitors": 1},
                                 {"domain": None, "pageViews": 1, "uniqueVisitors": 1}]
    assert body["total"] == 2


def test_reports_on_empty_database(build, clock):
    clock.set(NOW)
    app, client = build()
    body = ok(report(client, "overview", "period=7d"))
    assert body["summary"] == {"pageViews": 0, "uniqueVisitors": 0, "sessions": 0, "viewsPerSession": 0,
                               "bounceRate": 0, "avgSessionDuration": 0}
    assert len(body["timeSeries"]) == 8
    assert all(b["pageViews"] == b["uniqueVisitors"] == b["sessions"] == 0 for b in body["timeSeries"])
    assert ok(report(client, "pages"))["pages"] == [] and ok(report(client, "pages"))["total"] == 0
    assert ok(report(client, "referrers"))["referrers"] == []
    assert ok(report(client, "referrers"))["total"] == 0
    assert ok(report(client, "campaigns"))["campaigns"] == []
    devices = ok(report(client, "devices"))
    assert devices["deviceTypes"] == devices["browsers"] == devices["operatingSystems"] == []


def test_reports_include_bounds(seeded):
    """Both bounds are inclusive (§1.10)."""
    app, client = seeded
    body = ok(report(client, "overview", "from=2026-03-08T10:00:00Z&to=2026-03-08T10:05:00Z"))
    assert body["summary"]["pageViews"] == 3
    body = ok(report(client, "pages", "from=2026-03-08T10:05:00.000Z&to=2026-03-08T10:05:00.000Z"))
    assert body["pages"] == [{"path": "/docs", "pageViews": 1, "uniqueVisitors": 1}]


###############################################################################
# Access rules, disabled analytics
###############################################################################

def sign_in(client, email, password=PASSWORD):
    resp = client.post_json("/api/auth/sign-in/email", {"email": email, "password": password},
                            expect_errors=True)
    assert resp.status_int == 200, resp.body
    client.reset()
    return {"Authorization": f"Bearer {resp.json['token']}"}


def test_reports_are_admin_only_in_auth_mode(build, clock):
    clock.set(NOW)
    app, client = build(auth=True)
    app.create_user("root@example.com", PASSWORD, role="admin")
    app.create_user("ada@example.com", PASSWORD, role="member")
    app.create_user("vic@example.com", PASSWORD, role="viewer")
    admin = sign_in(client, "root@example.com")
    member = sign_in(client, "ada@example.com")
    viewer = sign_in(client, "vic@example.com")
    # Collect and the script stay public.
    check_accepted(collect(client, {"p": "https://site.test/x"}))
    assert client.get(SCRIPT, expect_errors=True).status_int == 200
    wait_rows(app, 1)
    for name in REPORTS:
        check_error(report(client, name), 401, UNAUTHORIZED)
        check_error(report(client, name, headers={"Authorization": "Bearer nonsense"}), 401, UNAUTHORIZED)
        check_error(report(client, name, headers=member), 403, FORBIDDEN)
        check_error(report(client, name, headers=viewer), 403, FORBIDDEN)
        ok(report(client, name, headers=admin))
        # Access comes before parameter validation (§1.12).
        check_error(report(client, name, "period=bogus"), 401, UNAUTHORIZED)
        check_error(report(client, name, "period=bogus", headers=member), 403, FORBIDDEN)
    assert ok(report(client, "overview", headers=admin))["summary"]["pageViews"] == 1


def test_reports_open_in_no_auth_mode(build, clock):
    clock.set(NOW)
    app, client = build()
    for name in REPORTS:
        ok(report(client, name))


DISABLED_REQUESTS = [("POST", COLLECT), ("GET", SCRIPT), ("GET", "/api/analytics/overview"),
                     ("GET", "/api/analytics/pages"), ("GET", "/api/analytics/referrers"),
                     ("GET", "/api/analytics/devices"), ("GET", "/api/analytics/campaigns"),
                     ("GET", "/api/analytics/unknown"), ("DELETE", "/api/analytics/overview"),
                     ("GET", "/api/analytics/collect"), ("POST", "/api/analytics/overview")]


@pytest.mark.parametrize("analytics", [None, False, {"enabled": False, "retentionDays": 10}])
@pytest.mark.parametrize("auth", [False, True])
def test_disabled_analytics_is_route_not_found(build, analytics, auth):
    app, client = build(analytics=analytics, auth=auth)
    for method, path in DISABLED_REQUESTS:
        if method == "POST":
            resp = client.post(path, params=json.dumps({"p": "/x"}), content_type="application/json",
                               headers={"User-Agent": UA}, expect_errors=True)
        else:
            resp = client.request(path, method=method, expect_errors=True)
        check_error(resp, 404, ROUTE_NOT_FOUND)
    resp = client.head(SCRIPT, expect_errors=True)
    assert resp.status_int == 404
    # OPTIONS is never 404 (§1.4, §1.12).
    assert client.options(COLLECT, expect_errors=True).status_int == 204
    assert count(app) == 0


def test_unknown_analytics_path_when_enabled(build):
    app, client = build()
    check_error(client.get("/api/analytics/nope", expect_errors=True), 404, ROUTE_NOT_FOUND)


###############################################################################
# Rate limit, retention, storm
###############################################################################

def test_collect_rate_limit_rule(build, clock):
    app, client = build(settings={"rateLimits": {"collect": {"limit": 3, "window": 60}}},
                        env={"SOVRIUM_RATE_LIMITS": "on"})
    for remaining in (2, 1, 0):
        resp = collect(client, {"p": "https://site.test/rl"}, ip="198.51.100.1")
        check_accepted(resp)
        assert resp.headers["RateLimit-Limit"] == "3"
        assert resp.headers["RateLimit-Remaining"] == str(remaining)
    resp = collect(client, {"p": "https://site.test/rl"}, ip="198.51.100.1")
    assert resp.status_int == 429
    assert resp.json == {"success": False, "code": "RATE_LIMITED",
                         "message": "Too many requests. Please try again later."}
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    check_accepted(collect(client, {"p": "https://site.test/rl-other"}, ip="198.51.100.2"))
    clock.advance(seconds=61)
    check_accepted(collect(client, {"p": "https://site.test/rl-later"}, ip="198.51.100.1"))
    stored = wait_rows(app, 5)
    assert len(stored) == 5


def test_collect_default_rate_limit_is_120_per_minute(build, clock):
    app, client = build(env={"SOVRIUM_RATE_LIMITS": "on"})
    for i in range(120):
        resp = collect(client, {"p": f"/r{i}"}, ip="198.51.100.9")
        assert resp.status_int == 202, (i, resp.status)
    assert resp.headers["RateLimit-Limit"] == "120" and resp.headers["RateLimit-Remaining"] == "0"
    resp = collect(client, {"p": "/r-over"}, ip="198.51.100.9")
    assert resp.status_int == 429 and "Retry-After" in resp.headers


def test_retention_by_housekeep(build, clock):
    app, client = build(analytics={"retentionDays": 2})
    check_accepted(collect(client, {"p": "/old"}))
    clock.advance(hours=1)
    check_accepted(collect(client, {"p": "/newer"}))
    wait_rows(app, 2)
    clock.set(T0 + timedelta(days=2, minutes=30))   # cutoff T0 + 30 min: /old is older, /newer is not
    app.housekeep()
    assert stored_paths(app) == ["/newer"]
    clock.advance(days=1)
    app.housekeep()
    assert stored_paths(app) == []


def test_default_retention_is_365_days(build, clock):
    app, client = build()
    check_accepted(collect(client, {"p": "/year-old"}))
    clock.advance(days=1)
    check_accepted(collect(client, {"p": "/recent"}))
    wait_rows(app, 2)
    clock.set(T0 + timedelta(days=365, hours=1))
    app.housekeep()
    assert stored_paths(app) == ["/recent"]


def test_collect_storm_stores_every_event(build, clock):
    app, client = build()
    threads, per_thread = 8, 100
    results, errors = [], []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def worker(n):
        local = webtest.TestApp(app.wsgi)
        ip = f"198.51.100.{n % 4 + 1}"   # two threads share each visitor
        statuses = []
        try:
            start.wait()
            for i in range(per_thread):
                resp = collect(local, {"p": f"https://site.test/storm/{n}/{i}", "t": "x" * 50, "sw": 1280},
                               ip=ip)
                statuses.append((resp.status_int, resp.body))
        except Exception as exc:  # pragma: no cover - reported below
            with lock:
                errors.append(repr(exc))
        with lock:
            results.extend(statuses)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert not errors, errors
    assert len(results) == threads * per_thread
    bad = [s for s in results if s != (202, b"")]
    assert not bad, bad[:5]
    stored = wait_rows(app, threads * per_thread, timeout=20)
    assert len(stored) == threads * per_thread
    assert {r["path"] for r in stored} == {f"/storm/{n}/{i}" for n in range(threads) for i in range(per_thread)}
    by_visitor = {}
    for r in stored:
        by_visitor.setdefault(r["visitor"], []).append(r)
    assert len(by_visitor) == 4
    for visitor, events in by_visitor.items():
        assert len(events) == 2 * per_thread
        assert len({e["session"] for e in events}) == 1, "one visitor, one session"
        assert sum(e["is_entrance"] for e in events) == 1


def test_reports_from_cached_daily_rollups_equal_reports_from_events(build, clock):
    """Final days are read from cached per-day rollups: the answers must be the same as from events."""
    app, client = build()
    seed(app, client, clock)
    queries = [("overview", RANGE_3D), ("overview", RANGE_3D + "&interval=month"), ("pages", RANGE_3D),
               ("referrers", RANGE_3D), ("devices", RANGE_3D), ("campaigns", RANGE_3D)]
    clock.set(at("2026-03-08T00:00:00Z"))           # no seeded day is final yet: answers from events
    fresh = [ok(report(client, name, q)) for name, q in queries]
    assert app.db.conn().execute("SELECT count(*) FROM analytics_rollups").fetchall()[0][0] == 0
    clock.set(at("2026-06-01T00:00:00Z"))           # every seeded day is final now
    cold = [ok(report(client, name, q)) for name, q in queries]
    assert app.db.conn().execute("SELECT count(*) FROM analytics_rollups").fetchall()[0][0] == 3
    warm = [ok(report(client, name, q)) for name, q in queries]
    assert fresh == cold == warm
