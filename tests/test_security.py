"""Rate limiting (API.md §14, CONFIG.md §12), CSRF and CORS (API.md §1.7), order of checks (§1.12)."""

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest
import webtest

PASSWORD = "correct-horse-battery-42"
RATE_ON = {"SOVRIUM_RATE_LIMITS": "on"}
TOO_MANY = {"success": False, "message": "Too many requests. Please try again later.",
            "code": "RATE_LIMITED"}
CSRF = {"success": False, "message": "Cross-site request blocked", "code": "FORBIDDEN"}
T0 = datetime(2026, 3, 1, 9, 0, 0, tzinfo=timezone.utc)
SIGN_IN = "/api/auth/sign-in/email"
EXPOSE = "X-Request-Id, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, set-auth-token"

SEC_CONFIG = {
    "name": "sec-app",
    "version": "1.0.0",
    "auth": {"strategies": [{"type": "emailAndPassword"}],
             "trustedOrigins": ["https://auth.example"]},
    "settings": {"trustedOrigins": ["https://settings.example"]},
    "tables": [
        {"id": 1, "name": "notes", "fields": [{"id": 1, "name": "title", "type": "single-line-text"}]},
        {"id": 2, "name": "public", "fields": [{"id": 1, "name": "title", "type": "single-line-text"}],
         "permissions": {"read": "all", "create": "all"}},
    ],
}


def sec_config(rate_limits=None, **settings):
    cfg = copy.deepcopy(SEC_CONFIG)
    if rate_limits is not None:
        cfg["settings"]["rateLimits"] = rate_limits
    cfg["settings"].update(settings)
    return cfg


class Clock:
    def __init__(self):
        self.now = [T0]

    def __call__(self):
        return self.now[0]

    def advance(self, seconds):
        self.now[0] += timedelta(seconds=seconds)


@pytest.fixture
def clock():
    return Clock()


def build(make_app, clock=None, rate_limits=None, env=None, cfg=None, users=("ada",)):
    app = make_app(cfg or sec_config(rate_limits), env=env, **({"clock": clock} if clock else {}))
    for name in users:
        app.create_user(f"{name}@example.com", PASSWORD, name=name.title())
    return app, webtest.TestApp(app.wsgi)


def sign_in(client, email="ada@example.com", password=PASSWORD, ip="10.0.0.1", headers=None):
    client.reset()
    return client.post_json(SIGN_IN, {"email": email, "password": password},
                            headers=headers or {}, extra_environ={"REMOTE_ADDR": ip},
                            expect_errors=True)


def rl(resp):
    """The three RateLimit headers (API.md §14.2), as strings (None when absent)."""
    return tuple(resp.headers.get(h) for h in ("RateLimit-Limit", "RateLimit-Remaining",
                                                "RateLimit-Reset"))


def assert_429(resp, seconds=None):
    assert resp.status_int == 429, resp.body
    assert resp.json == TOO_MANY
    retry = resp.headers.get("Retry-After")
    assert retry is not None and retry.isdigit() and int(retry) >= 1, retry
    assert resp.headers.get("RateLimit-Reset") == retry
    assert resp.headers.get("RateLimit-Remaining") == "0"
    if seconds is not None:
        assert int(retry) == seconds


###############################################################################
# signIn: per client IP
###############################################################################


def test_sign_in_per_ip_limit_and_headers(make_app, clock):
    app, c = build(make_app, clock, {"signIn": {"limit": 3, "window": 60}}, RATE_ON)
    for remaining in (2, 1, 0):
        resp = sign_in(c)
        assert resp.status_int == 200, resp.body
        assert rl(resp) == ("3", str(remaining), "60")
    resp = sign_in(c)
    assert_429(resp, 60)
    assert resp.headers["RateLimit-Limit"] == "3"
    # wrong passwords from the same IP are refused too, before the password is checked
    assert_429(sign_in(c, password="wrong-password-1"), 60)
    # another IP has its own window
    other = sign_in(c, ip="10.0.0.2")
    assert other.status_int == 200
    assert rl(other) == ("3", "2", "60")


def test_sign_in_failed_attempts_count_per_ip(make_app, clock):
    app, c = build(make_app, clock, {"signIn": {"limit": 2, "window": 60}}, RATE_ON)
    for email in ("ada@example.com", "nobody@example.com"):
        resp = sign_in(c, email=email, password="wrong-password-1")
        assert resp.status_int == 401
    assert_429(sign_in(c))


def test_sign_in_window_counts_down_and_resets(make_app, clock):
    app, c = build(make_app, clock, {"signIn": {"limit": 2, "window": 60}}, RATE_ON)
    assert sign_in(c).status_int == 200
    clock.advance(5)
    resp = sign_in(c)
    assert resp.status_int == 200
    assert rl(resp) == ("2", "0", "55")   # the window opened at the first request
    clock.advance(5)
    assert_429(sign_in(c), 50)
    clock.advance(49.5)
    assert_429(sign_in(c), 1)              # never less than 1
    clock.advance(1.5)                     # 61 s after the window opened: a new window
    resp = sign_in(c)
    assert resp.status_int == 200, resp.body
    assert rl(resp) == ("2", "1", "60")


def test_rate_limit_counters_belong_to_the_app_instance(make_app, clock):
    cfg = sec_config({"signIn": {"limit": 1, "window": 60}})
    app1 = make_app(cfg, db_name="one.db", env=RATE_ON, clock=clock)
    app2 = make_app(cfg, db_name="two.db", env=RATE_ON, clock=clock)
    for app in (app1, app2):
        app.create_user("ada@example.com", PASSWORD)
    c1, c2 = webtest.TestApp(app1.wsgi), webtest.TestApp(app2.wsgi)
    assert sign_in(c1).status_int == 200
    assert_429(sign_in(c1))
    assert sign_in(c2).status_int == 200


###############################################################################
# signInAccount: failed attempts per lower-cased e-mail, across IPs
###############################################################################


def test_sign_in_account_counts_failures_across_ips(make_app, clock):
    app, c = build(make_app, clock, {"signIn": {"limit": 100, "window": 60},
                                     "signInAccount": {"limit": 3, "window": 900}}, RATE_ON)
    for i, email in enumerate(["ada@example.com", "ADA@example.com", "Ada@Example.COM"]):
        resp = sign_in(c, email=email, password="wrong-password-1", ip=f"10.1.0.{i}")
        assert resp.status_int == 401, resp.body
        assert resp.json["message"] == "Invalid email or password"
        # clarification 6: the headers describe the per-IP signIn rule
        assert rl(resp) == ("100", "99", "60")
    clock.advance(100)
    # the account is locked for everyone, even with the right password
    resp = sign_in(c, ip="10.1.0.9")
    assert_429(resp, 800)
    assert resp.headers["RateLimit-Limit"] == "3"  # the rule that caused the 429
    # another account from the same IPs is unaffected
    app.create_user("bob@example.com", PASSWORD)
    assert sign_in(c, email="bob@example.com", ip="10.1.0.0").status_int == 200
    # after the window the account can sign in again
    clock.advance(801)
    assert sign_in(c, ip="10.1.0.9").status_int == 200


def test_sign_in_account_counts_only_failures(make_app, clock):
    app, c = build(make_app, clock, {"signInAccount": {"limit": 2, "window": 900}}, RATE_ON)
    assert sign_in(c, password="wrong-password-1").status_int == 401
    for i in range(4):
        resp = sign_in(c, ip=f"10.2.0.{i}")
        assert resp.status_int == 200, resp.body
    assert sign_in(c, password="wrong-password-1", ip="10.2.0.9").status_int == 401
    assert_429(sign_in(c, ip="10.2.0.10"))


def test_sign_in_account_unknown_email_behaves_like_known(make_app, clock):
    """Anti-enumeration: an unknown e-mail is locked exactly like an existing one."""
    app, c = build(make_app, clock, {"signInAccount": {"limit": 2, "window": 900}}, RATE_ON)
    answers = {}
    for email in ("ada@example.com", "ghost@example.com"):
        seq = []
        for i in range(3):
            resp = sign_in(c, email=email, password="wrong-password-1", ip=f"10.3.{i}.1")
            seq.append((resp.status_int, resp.json))
        answers[email] = seq
    assert answers["ada@example.com"] == answers["ghost@example.com"]
    assert [s for s, _ in answers["ada@example.com"]] == [401, 401, 429]


###############################################################################
# The api rule, /api/health, disabling
###############################################################################


def test_api_rule_when_enabled(make_app, clock):
    app, c = build(make_app, clock, {"api": {"limit": 2, "window": 30}}, RATE_ON)
    env = {"REMOTE_ADDR": "10.4.0.1"}
    first = c.get("/api/tables/public", extra_environ=env)
    assert rl(first) == ("2", "1", "30")
    second = c.get("/api/tables/public/records", extra_environ=env)
    assert second.status_int == 200 and rl(second) == ("2", "0", "30")
    assert_429(c.get("/api/tables", extra_environ=env, expect_errors=True), 30)
    assert_429(c.post_json("/api/tables/public/records", {"title": "x"}, extra_environ=env,
                           expect_errors=True), 30)
    # /api/health is never limited and carries no rate-limit headers
    for _ in range(5):
        health = c.get("/api/health", extra_environ=env)
        assert health.status_int == 200
        assert rl(health) == (None, None, None)
    # another IP is unaffected
    assert c.get("/api/tables", extra_environ={"REMOTE_ADDR": "10.4.0.2"}).status_int == 200
    clock.advance(31)
    assert c.get("/api/tables", extra_environ=env).status_int == 200


def test_api_rule_disabled_by_default(make_app, clock):
    app, c = build(make_app, clock, None, RATE_ON)
    for _ in range(40):
        assert c.get("/api/tables/public/records",
                     extra_environ={"REMOTE_ADDR": "10.5.0.1"}).status_int == 200


def test_health_never_limited_even_with_tiny_api_limit(make_app, clock):
    app, c = build(make_app, clock, {"api": {"limit": 1, "window": 60}}, RATE_ON)
    for _ in range(10):
        assert c.get("/api/health").status_int == 200


@pytest.mark.parametrize("env,rate_limits", [
    pytest.param({"SOVRIUM_RATE_LIMITS": "off"}, {"signIn": {"limit": 1, "window": 60},
                                                  "signInAccount": {"limit": 1, "window": 60},
                                                  "api": {"limit": 1, "window": 60}},
                 id="env-off"),
    pytest.param(RATE_ON, {"enabled": False, "signIn": {"limit": 1, "window": 60},
                           "signInAccount": {"limit": 1, "window": 60},
                           "api": {"limit": 1, "window": 60}}, id="settings-enabled-false"),
])
def test_rate_limits_disabled(make_app, clock, env, rate_limits):
    app, c = build(make_app, clock, rate_limits, env)
    for _ in range(5):
        assert sign_in(c, password="wrong-password-1").status_int == 401
    for _ in range(5):
        resp = sign_in(c)
        assert resp.status_int == 200
        assert rl(resp) == (None, None, None)
    for _ in range(5):
        resp = c.get("/api/tables/public/records")
        assert resp.status_int == 200
        assert rl(resp) == (None, None, None)


def test_rule_with_limit_zero_is_disabled(make_app, clock):
    app, c = build(make_app, clock, {"signIn": {"limit": 0, "window": 60}}, RATE_ON)
    for _ in range(25):   # beyond the default 20 / 60 s
        assert sign_in(c).status_int == 200


def test_default_sign_in_limit_is_20_per_minute(make_app, clock):
    app, c = build(make_app, clock, None, RATE_ON)
    for i in range(20):
        resp = sign_in(c)
        assert resp.status_int == 200
        assert rl(resp) == ("20", str(19 - i), "60")
    assert_429(sign_in(c), 60)


###############################################################################
# Client IP: X-Forwarded-For and TRUST_PROXY (§14.3)
###############################################################################


def xff_sign_in(c, xff=None, ip="10.9.9.9"):
    return sign_in(c, ip=ip, headers={"X-Forwarded-For": xff} if xff else None)


def test_x_forwarded_for_ignored_without_trust_proxy(make_app, clock):
    app, c = build(make_app, clock, {"signIn": {"limit": 2, "window": 60}}, RATE_ON)
    assert xff_sign_in(c, "1.1.1.1").status_int == 200
    assert xff_sign_in(c, "2.2.2.2").status_int == 200
    assert_429(xff_sign_in(c, "3.3.3.3"))
    assert_429(xff_sign_in(c))


@pytest.mark.parametrize("trust", ["1", "true"])
def test_trust_proxy_one_uses_rightmost_entry(make_app, clock, trust):
    app, c = build(make_app, clock, {"signIn": {"limit": 2, "window": 60}},
                   {**RATE_ON, "TRUST_PROXY": trust})
    assert xff_sign_in(c, "9.9.9.9, 1.1.1.1").status_int == 200
    assert xff_sign_in(c, "8.8.8.8,1.1.1.1").status_int == 200
    assert_429(xff_sign_in(c, "1.1.1.1"))            # same client 1.1.1.1
    assert xff_sign_in(c, "1.1.1.1, 2.2.2.2").status_int == 200   # client 2.2.2.2
    # without the header, the peer address is the client
    assert xff_sign_in(c).status_int == 200
    assert xff_sign_in(c).status_int == 200
    assert_429(xff_sign_in(c))
    assert xff_sign_in(c, "7.7.7.7").status_int == 200  # not the peer's bucket


def test_trust_proxy_two_uses_second_from_right(make_app, clock):
    app, c = build(make_app, clock, {"signIn": {"limit": 3, "window": 60}},
                   {**RATE_ON, "TRUST_PROXY": "2"})
    assert xff_sign_in(c, "7.7.7.7, 1.1.1.1, 2.2.2.2").status_int == 200   # client 1.1.1.1
    assert xff_sign_in(c, "6.6.6.6, 1.1.1.1, 3.3.3.3").status_int == 200   # client 1.1.1.1
    assert xff_sign_in(c, "1.1.1.1").status_int == 200   # fewer entries: the leftmost
    assert_429(xff_sign_in(c, "1.1.1.1, 2.2.2.2"))       # client 1.1.1.1
    assert_429(xff_sign_in(c, "5.5.5.5, 1.1.1.1, 4.4.4.4"))
    assert xff_sign_in(c, "1.1.1.1, 9.9.9.9, 2.2.2.2").status_int == 200   # client 9.9.9.9
    assert xff_sign_in(c, "2.2.2.2, 1.1.1.1").status_int == 200            # client 2.2.2.2


@pytest.mark.parametrize("trust,xff,expected", [
    (None, "5.5.5.5, 4.4.4.4", "10.9.9.9"),
    ("1", "5.5.5.5, 4.4.4.4", "4.4.4.4"),
    ("2", "5.5.5.5, 4.4.4.4", "5.5.5.5"),
    ("3", "5.5.5.5, 4.4.4.4", "5.5.5.5"),
    ("1", None, "10.9.9.9"),
])
def test_session_ip_address_uses_client_ip(make_app, trust, xff, expected):
    env = {"TRUST_PROXY": trust} if trust else {}
    app, c = build(make_app, env=env)
    resp = xff_sign_in(c, xff)
    assert resp.status_int == 200, resp.body
    session = c.get("/api/auth/get-session",
                    headers={"Authorization": "Bearer " + resp.json["token"]}).json
    assert session["session"]["ipAddress"] == expected


###############################################################################
# CSRF (§1.7) and its place in the order of checks (§1.12)
###############################################################################


def session_cookie(resp):
    for value in resp.headers.getall("Set-Cookie"):
        if value.startswith("better-auth.session_token="):
            return value.split(";", 1)[0].split("=", 1)[1]
    raise AssertionError("no session cookie set")


@pytest.fixture
def csrf(make_app):
    app, c = build(make_app)
    signed = sign_in(c)
    assert signed.status_int == 200, signed.body
    c.reset()

    class Ctx:
        pass

    ctx = Ctx()
    ctx.app, ctx.client = app, c
    ctx.cookie, ctx.token = session_cookie(signed), signed.json["token"]

    def send(method="POST", path="/api/tables/notes/records", headers=None, cookie=True,
             bearer=False, cookie_name="better-auth.session_token", cookie_value=None, body=None):
        c.reset()
        hdrs = dict(headers or {})
        if cookie:
            hdrs["Cookie"] = f"{cookie_name}={cookie_value or ctx.cookie}"
        if bearer:
            hdrs["Authorization"] = "Bearer " + ctx.token
        if method in ("POST", "PATCH", "PUT"):
            return c.request(path, method=method, headers=hdrs, expect_errors=True,
                             body=json.dumps(body if body is not None else {"title": "x"}).encode(),
                             content_type="application/json")
        return c.request(path, method=method, headers=hdrs, expect_errors=True)

    ctx.send = send
    return ctx


EVIL = "https://evil.example"


@pytest.mark.parametrize("headers,status", [
    pytest.param({"Origin": EVIL}, 403, id="evil-origin"),
    pytest.param({"Origin": "null"}, 403, id="origin-null"),
    pytest.param({"Origin": "http://localhost:80.evil.example"}, 403, id="origin-lookalike"),
    pytest.param({"Sec-Fetch-Site": "cross-site"}, 403, id="sec-fetch-cross-site"),
    pytest.param({"Sec-Fetch-Site": "same-site"}, 403, id="sec-fetch-same-site"),
    pytest.param({"Sec-Fetch-Site": "same-origin"}, 201, id="sec-fetch-same-origin"),
    pytest.param({"Sec-Fetch-Site": "none"}, 201, id="sec-fetch-none"),
    pytest.param({}, 201, id="no-headers"),
    pytest.param({"Origin": "https://settings.example"}, 201, id="settings-trusted-origin"),
    pytest.param({"Origin": "https://auth.example"}, 201, id="auth-trusted-origin"),
    pytest.param({"Origin": "https://auth.example", "Sec-Fetch-Site": "cross-site"}, 201,
                 id="trusted-origin-wins-over-sec-fetch"),
    pytest.param({"Origin": EVIL, "Sec-Fetch-Site": "same-origin"}, 403,
                 id="untrusted-origin-wins-over-sec-fetch"),
    pytest.param({"Origin": "http://myhost.test", "Host": "myhost.test"}, 201,
                 id="own-host-origin-trusted-without-base-url"),
    pytest.param({"Origin": "https://myhost.test", "Host": "myhost.test"}, 403,
                 id="own-host-other-scheme"),
    pytest.param({"Origin": "http://myhost.test", "Host": "other.test"}, 403,
                 id="other-host-origin"),
])
def test_csrf_cookie_post(csrf, headers, status):
    resp = csrf.send(headers=headers)
    assert resp.status_int == status, resp.body
    if status == 403:
        assert resp.json == CSRF


@pytest.mark.parametrize("headers", [{"Origin": EVIL}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}],
                         ids=["evil", "null", "sec-fetch"])
def test_csrf_bearer_header_passes(csrf, headers):
    """The same cross-site request with a Bearer header is not subject to the rule."""
    resp = csrf.send(headers=headers, bearer=True)
    assert resp.status_int == 201, resp.body


@pytest.mark.parametrize("method,path", [
    ("PATCH", "/api/tables/notes/records/{r}"),
    ("DELETE", "/api/tables/notes/records/{r}"),
    ("DELETE", "/api/tables/notes/records/{r}?permanent=true"),
    ("POST", "/api/auth/sign-out"),
    ("POST", "/api/auth/update-user"),
])
def test_csrf_applies_to_every_unsafe_method(csrf, method, path):
    created = csrf.send(bearer=True, cookie=False)
    assert created.status_int == 201
    rid = created.json["id"]
    resp = csrf.send(method=method, path=path.format(r=rid), headers={"Origin": EVIL},
                     body={"title": "y"} if method == "PATCH" else {"name": "Eve"})
    assert resp.status_int == 403, resp.body
    assert resp.json == CSRF
    # nothing happened: the record and the session are intact
    got = csrf.send(method="GET", path=f"/api/tables/notes/records/{rid}", cookie=False,
                    bearer=True)
    assert got.status_int == 200 and got.json["fields"]["title"] == "x"
    session = csrf.send(method="GET", path="/api/auth/get-session")
    assert session.json and session.json["user"]["name"] == "Ada"


def test_csrf_safe_methods_not_subject(csrf):
    resp = csrf.send(method="GET", path="/api/tables/notes/records", headers={"Origin": EVIL})
    assert resp.status_int == 200
    resp = csrf.send(method="GET", path="/api/auth/get-session",
                     headers={"Sec-Fetch-Site": "cross-site"})
    assert resp.status_int == 200 and resp.json["user"]["email"] == "ada@example.com"


def test_csrf_cookieless_requests_not_subject(csrf):
    # a public form posting to a `create: all` table from another site
    resp = csrf.send(path="/api/tables/public/records", headers={"Origin": EVIL}, cookie=False)
    assert resp.status_int == 201, resp.body
    # an anonymous cross-site POST to a protected table is an authentication problem, not CSRF
    resp = csrf.send(headers={"Origin": EVIL}, cookie=False)
    assert resp.status_int == 401
    assert resp.json["message"] == "Authentication required"


@pytest.mark.parametrize("cookie_value", [
    "forged.c2lnbmF0dXJl", "garbage", "abcdefghijklmnopqrstuvwxyz012345.AAAA%3D"])
def test_csrf_runs_before_authentication(csrf, cookie_value):
    """A forged cookie is still a cookie: cross-site → 403; same-site → anonymous → 401."""
    resp = csrf.send(headers={"Origin": EVIL}, cookie_value=cookie_value)
    assert resp.status_int == 403 and resp.json == CSRF
    resp = csrf.send(cookie_value=cookie_value)
    assert resp.status_int == 401 and resp.json["message"] == "Authentication required"


def test_csrf_secure_cookie_name(csrf):
    resp = csrf.send(headers={"Origin": EVIL}, cookie_name="__Secure-better-auth.session_token")
    assert resp.status_int == 403 and resp.json == CSRF
    resp = csrf.send(cookie_name="__Secure-better-auth.session_token")
    assert resp.status_int == 201, resp.body


def test_csrf_cross_site_sign_in_with_cookie_refused(csrf):
    resp = csrf.send(path=SIGN_IN, headers={"Origin": EVIL},
                     body={"email": "ada@example.com", "password": PASSWORD})
    assert resp.status_int == 403 and resp.json == CSRF


def test_csrf_base_url_replaces_host_origin(make_app):
    app, c = build(make_app, env={"BASE_URL": "https://sovrium.example.com/app"})
    cookie = session_cookie(sign_in(c))

    def post(headers):
        c.reset()
        return c.post_json("/api/tables/notes/records", {"title": "x"},
                           headers={"Cookie": f"better-auth.session_token={cookie}", **headers},
                           expect_errors=True)

    assert post({"Origin": "https://sovrium.example.com"}).status_int == 201
    assert post({"Origin": "https://auth.example"}).status_int == 201
    resp = post({"Origin": "http://myhost.test", "Host": "myhost.test"})
    assert resp.status_int == 403 and resp.json == CSRF
    resp = post({"Origin": "http://localhost:80"})
    assert resp.status_int == 403 and resp.json == CSRF


def test_rate_limit_checked_before_csrf(make_app, clock):
    app, c = build(make_app, clock, {"signIn": {"limit": 1, "window": 60}}, RATE_ON)
    signed = sign_in(c)
    assert signed.status_int == 200
    cookie = session_cookie(signed)
    c.reset()
    resp = c.post_json(SIGN_IN, {"email": "ada@example.com", "password": PASSWORD},
                       headers={"Origin": EVIL, "Cookie": f"better-auth.session_token={cookie}"},
                       extra_environ={"REMOTE_ADDR": "10.0.0.1"}, expect_errors=True)
    assert_429(resp)


def test_analytics_collect_exempt_from_csrf(make_app):
    cfg = sec_config()
    cfg["analytics"] = True
    app, c = build(make_app, cfg=cfg)
    cookie = session_cookie(sign_in(c))
    c.reset()
    resp = c.post_json("/api/analytics/collect", {"p": "/home"},
                       headers={"Origin": EVIL, "Cookie": f"better-auth.session_token={cookie}",
                                "User-Agent": "Mozilla/5.0 Firefox/130.0"},
                       expect_errors=True)
    assert resp.status_int == 202, resp.body


###############################################################################
# CORS
###############################################################################


@pytest.mark.parametrize("origin", ["https://auth.example", "https://settings.example"])
def test_cors_headers_for_trusted_origin(csrf, origin):
    for resp in (csrf.send(method="GET", path="/api/tables/public", headers={"Origin": origin},
                           cookie=False),
                 csrf.send(method="GET", path="/api/tables/nosuch", headers={"Origin": origin})):
        assert resp.headers["Access-Control-Allow-Origin"] == origin
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in [v.strip() for v in resp.headers["Vary"].split(",")]
        assert resp.headers["Access-Control-Expose-Headers"] == EXPOSE


@pytest.mark.parametrize("origin", [EVIL, "null", "https://auth.example.evil"])
def test_no_cors_headers_for_untrusted_origin(csrf, origin):
    resp = csrf.send(method="GET", path="/api/tables/public", headers={"Origin": origin},
                     cookie=False)
    assert resp.status_int == 200
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert "Access-Control-Allow-Credentials" not in resp.headers
    blocked = csrf.send(headers={"Origin": origin})
    assert blocked.status_int == 403
    assert "Access-Control-Allow-Origin" not in blocked.headers


def test_cors_preflight_trusted(csrf):
    c = csrf.client
    resp = c.options("/api/tables/notes/records",
                     headers={"Origin": "https://auth.example",
                              "Access-Control-Request-Method": "POST",
                              "Access-Control-Request-Headers": "content-type, authorization"},
                     expect_errors=True)
    assert resp.status_int == 204
    assert resp.body == b""
    h = resp.headers
    assert h["Access-Control-Allow-Origin"] == "https://auth.example"
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert h["Access-Control-Allow-Methods"] == "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    assert h["Access-Control-Allow-Headers"] == "Content-Type, Authorization, X-Request-Id"
    assert h["Access-Control-Max-Age"] == "600"


@pytest.mark.parametrize("path", ["/api/tables/notes/records", "/api/auth/sign-in/email",
                                  "/api/nowhere"])
def test_cors_preflight_untrusted(csrf, path):
    resp = csrf.client.options(path, headers={"Origin": EVIL,
                                              "Access-Control-Request-Method": "POST"},
                               expect_errors=True)
    assert resp.status_int == 204
    for h in ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
              "Access-Control-Allow-Headers", "Access-Control-Max-Age"):
        assert h not in resp.headers


def test_preflight_not_rate_limited_or_csrf_checked(make_app, clock):
    app, c = build(make_app, clock, {"signIn": {"limit": 1, "window": 60}}, RATE_ON)
    assert sign_in(c).status_int == 200
    assert_429(sign_in(c))
    resp = c.options(SIGN_IN, headers={"Origin": "https://auth.example"},
                     extra_environ={"REMOTE_ADDR": "10.0.0.1"}, expect_errors=True)
    assert resp.status_int == 204


def test_rate_limit_headers_exposed_on_cors_429(make_app, clock):
    app, c = build(make_app, clock, {"signIn": {"limit": 1, "window": 60}}, RATE_ON)
    assert sign_in(c).status_int == 200
    resp = sign_in(c, headers={"Origin": "https://auth.example"})
    assert_429(resp)
    assert resp.headers["Access-Control-Allow-Origin"] == "https://auth.example"
    assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]
