"""Authentication (API.md §1.5, §1.6, §1.11, §13.1–§13.6, §13.13; CONFIG.md §10; OPERATIONS.md §3, §4).

Everything is driven over HTTP through WebTest with a fake clock. E-mails are read from the
`mail_outbox` table (outbox mode, OPERATIONS.md §10 and §14).
"""

import base64
import copy
import hashlib
import hmac
import http.cookiejar
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
import webtest

import sovrium
from conftest import BASIC_CONFIG, TEST_ENV

COOKIE = "better-auth.session_token"
SECURE_COOKIE = "__Secure-better-auth.session_token"
SECRET = "sovrium-test-secret-0123456789-abcdefghijkl"
OTHER_SECRET = "another-secret-ZYXWVUTSRQPONMLKJIHGFEDCBA-987654"
BASE = "http://localhost:3000"
IP = "203.0.113.9"
UA = "Mozilla/5.0 (pytest) SovriumTests/1.0"
T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=timezone.utc)
WEEK = 7 * 86400
PASSWORD = "correct horse 1"
ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "root-password-1"
BASE_ENV = {**TEST_ENV, "AUTH_SECRET": SECRET, "BASE_URL": BASE}

ID_RE = re.compile(r"^[A-Za-z0-9]{32}$")
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32}$")
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
PHC_RE = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$")
USER_KEYS = {"id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt", "role", "banned",
             "banReason", "banExpires", "twoFactorEnabled"}
SESSION_KEYS = {"id", "token", "userId", "expiresAt", "createdAt", "updatedAt", "ipAddress", "userAgent",
                "impersonatedBy", "activeOrganizationId"}
RESET_MESSAGE = "If this email exists in our system, check your email for the reset link"
ROUTE_NOT_FOUND = {"success": False, "message": "Route not found", "code": "NOT_FOUND"}
UNAUTHORIZED = {"success": False, "message": "Authentication required", "code": "UNAUTHORIZED"}

NOTES = {
    "id": 1,
    "name": "notes",
    "fields": [{"id": 1, "name": "title", "type": "single-line-text"}],
    "permissions": {"create": ["member", "editor"]},
}


###############################################################################
# Helpers
###############################################################################


def ts(dt):
    """The API timestamp form of an aware datetime (API.md §1.4)."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class Clock:
    """A fake App clock (OPERATIONS.md §14)."""

    def __init__(self, start=T0):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, **kw):
        self.now += timedelta(**kw)
        return self.now


def auth_cfg(strategy=None, **auth):
    """An auth configuration with the emailAndPassword strategy (CONFIG.md §10)."""
    strat = {"type": "emailAndPassword", "minPasswordLength": 8}
    strat.update(strategy or {})
    section = {"strategies": [strat], "roles": ["editor"]}
    section.update(auth)
    return {"name": "auth-app", "auth": section, "tables": [copy.deepcopy(NOTES)]}


def sign(token, secret=SECRET):
    """`<token>.<base64 HMAC-SHA256(secret, token)>` (API.md §1.5)."""
    mac = hmac.new(secret.encode() if isinstance(secret, str) else secret, token.encode(), hashlib.sha256)
    return token + "." + base64.b64encode(mac.digest()).decode()


def cookie_for(token, secret=SECRET, name=COOKIE):
    return {"Cookie": f"{name}={quote(sign(token, secret), safe='')}"}


def bearer(value):
    return {"Authorization": f"Bearer {value}"}


def api(app, ip=IP):
    """A client that never stores cookies: credentials are always sent explicitly."""
    client = webtest.TestApp(app.wsgi, extra_environ={"REMOTE_ADDR": ip, "HTTP_USER_AGENT": UA})
    client.cookiejar.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return client


def browser(app, ip=IP):
    """A client that keeps cookies in its cookie jar, like a browser."""
    return webtest.TestApp(app.wsgi, extra_environ={"REMOTE_ADDR": ip, "HTTP_USER_AGENT": UA})


def post(client, path, body=None, headers=None):
    if body is None:
        return client.post(path, headers=headers or {}, expect_errors=True)
    return client.post_json(path, body, headers=headers or {}, expect_errors=True)


def get(client, path, headers=None):
    return client.get(path, headers=headers or {}, expect_errors=True)


def set_cookies(resp):
    """Parse every Set-Cookie header: name → (raw value, {attribute (lower-case): value or True})."""
    out = {}
    for raw in resp.headers.getall("Set-Cookie"):
        parts = [p.strip() for p in raw.split(";")]
        name, _, value = parts[0].partition("=")
        attrs = {}
        for p in parts[1:]:
            if not p:
                continue
            k, eq, v = p.partition("=")
            attrs[k.strip().lower()] = v.strip() if eq else True
        out[name.strip()] = (value, attrs)
    return out


def session_cookie(resp):
    cookies = set_cookies(resp)
    assert COOKIE in cookies, resp.headers.getall("Set-Cookie")
    return cookies[COOKIE]


def check_session_cookie(resp, token, max_age=WEEK, secure=False):
    value, attrs = session_cookie(resp)
    assert value == quote(sign(token), safe=""), value
    assert unquote(value) == sign(token)
    assert attrs.get("path") == "/"
    assert attrs.get("httponly") is True
    assert str(attrs.get("samesite", "")).lower() == "lax"
    if max_age is None:
        assert "max-age" not in attrs
        assert "expires" not in attrs
    else:
        assert attrs.get("max-age") == str(max_age)
    assert ("secure" in attrs) is secure


def check_expired_cookie(resp, name=COOKIE):
    cookies = set_cookies(resp)
    assert name in cookies, resp.headers.getall("Set-Cookie")
    assert cookies[name][1].get("max-age") == "0"


def check_user(user, **expected):
    assert set(user) == USER_KEYS, sorted(user)
    assert ID_RE.match(user["id"])
    assert TS_RE.match(user["createdAt"]) and TS_RE.match(user["updatedAt"])
    assert isinstance(user["emailVerified"], bool) and isinstance(user["banned"], bool)
    assert isinstance(user["twoFactorEnabled"], bool)
    for key, value in expected.items():
        assert user[key] == value, (key, user[key], value)


def check_session(session, **expected):
    assert set(session) == SESSION_KEYS, sorted(session)
    assert ID_RE.match(session["id"])
    assert TOKEN_RE.match(session["token"])
    for key in ("expiresAt", "createdAt", "updatedAt"):
        assert TS_RE.match(session[key]), session[key]
    for key, value in expected.items():
        assert session[key] == value, (key, session[key], value)


def envelope(status_code, message, error=None, field=None):
    body = {"success": False, "message": message, "code": status_code}
    if status_code == "VALIDATION_ERROR":
        body["errors"] = [{"field": field, "message": message}]
    if error is not None:
        body["error"] = error
    return body


def check_error(resp, status, code, message, error=None, field=None):
    assert resp.status_int == status, (resp.status, resp.body[:500])
    assert resp.content_type == "application/json"
    assert resp.json == envelope(code, message, error, field)


def sign_up(client, email="ada@example.com", password=PASSWORD, name="Ada Quill", **extra):
    return post(client, "/api/auth/sign-up/email", {"name": name, "email": email, "password": password, **extra})


def sign_in(client, email="ada@example.com", password=PASSWORD, **extra):
    return post(client, "/api/auth/sign-in/email", {"email": email, "password": password, **extra})


def new_user(client, email="ada@example.com", password=PASSWORD, name="Ada Quill"):
    resp = sign_up(client, email, password, name)
    assert resp.status_int == 200, resp.body
    return resp.json["user"], resp.json["token"]


def whoami(client, headers):
    """GET get-session with the given credentials: the user id, or None when anonymous."""
    resp = get(client, "/api/auth/get-session", headers)
    assert resp.status_int == 200, resp.body
    assert resp.content_type == "application/json"
    return None if resp.json is None else resp.json["user"]["id"]


def db_rows(app, sql, params=()):
    return [tuple(r) for r in app.db.conn().execute(sql, params).fetchall()]


def db_exec(app, sql, params=()):
    app.db.conn().execute(sql, params)


def mails(app, to=None):
    rows = db_rows(app, "SELECT to_addr, subject, body, status FROM mail_outbox ORDER BY id")
    out = [{"to": r[0], "subject": r[1], "body": r[2], "status": r[3]} for r in rows]
    return [m for m in out if to is None or m["to"] == to]


def link_in(body):
    m = re.search(r"https?://[^\s<>\"']+", body)
    assert m, body
    return m.group(0)


def password_hash(app, user_id):
    rows = db_rows(app, "SELECT password FROM accounts WHERE user_id = ? AND provider_id = 'credential'",
                   (user_id,))
    assert len(rows) == 1, rows
    return rows[0][0]


def phc_params(phc):
    m = PHC_RE.match(phc)
    assert m, phc
    return tuple(int(x) for x in m.groups())


def location(resp):
    """(path, {query param: value}) of a redirect's Location header."""
    loc = resp.headers["Location"]
    parts = urlsplit(loc)
    return parts, {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}


@pytest.fixture
def mk(tmp_path):
    """Build Apps with full control of the environment; `drop` removes variables of BASE_ENV."""
    apps = []

    def make(cfg=None, *, db="auth.db", env=None, clock=None, drop=()):
        full = {**BASE_ENV, **(env or {})}
        for key in drop:
            full.pop(key, None)
        app = sovrium.App(copy.deepcopy(cfg or auth_cfg()), db_path=str(tmp_path / db), env=full,
                          clock=clock or Clock())
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def app(mk, clock):
    return mk(clock=clock)


@pytest.fixture
def client(app):
    return api(app)


###############################################################################
# Sign-up (§13.2)
###############################################################################


def test_sign_up_creates_member_with_session_cookie_and_header(app, client):
    resp = sign_up(client, email="  Ada@Example.COM ", name="  Ada Quill ")
    assert resp.status_int == 200, resp.body
    assert resp.content_type == "application/json"
    body = resp.json
    assert set(body) == {"token", "user"}
    token = body["token"]
    assert TOKEN_RE.match(token)
    check_user(body["user"], name="Ada Quill", email="ada@example.com", emailVerified=False, image=None,
               role="member", banned=False, banReason=None, banExpires=None, twoFactorEnabled=False,
               createdAt=ts(T0), updatedAt=ts(T0))
    assert resp.headers["set-auth-token"] == token
    check_session_cookie(resp, token)

    uid = body["user"]["id"]
    assert db_rows(app, "SELECT email, email_verified, role, name FROM users WHERE id = ?", (uid,)) == [
        ("ada@example.com", 0, "member", "Ada Quill")]
    assert db_rows(app, "SELECT user_id, ip_address, user_agent, expires_at FROM sessions WHERE token = ?",
                   (token,)) == [(uid, IP, UA, ts(T0 + timedelta(days=7)))]
    stored = password_hash(app, uid)
    assert PASSWORD not in stored
    assert phc_params(stored) == (8, 1, 1)


def test_sign_up_with_image_and_session_object(app, client):
    resp = sign_up(client, image="https://cdn.example.com/ada.png")
    assert resp.status_int == 200, resp.body
    user, token = resp.json["user"], resp.json["token"]
    assert user["image"] == "https://cdn.example.com/ada.png"
    got = get(client, "/api/auth/get-session", bearer(token))
    assert got.status_int == 200
    assert set(got.json) == {"session", "user"}
    check_session(got.json["session"], token=token, userId=user["id"], ipAddress=IP, userAgent=UA,
                  impersonatedBy=None, activeOrganizationId=None, createdAt=ts(T0), updatedAt=ts(T0),
                  expiresAt=ts(T0 + timedelta(days=7)))
    check_user(got.json["user"], id=user["id"], email="ada@example.com")


def test_sign_up_default_role_from_config(mk):
    app = mk(auth_cfg(defaultRole="editor"))
    resp = sign_up(api(app))
    assert resp.status_int == 200, resp.body
    assert resp.json["user"]["role"] == "editor"


def test_sign_up_disabled(mk):
    app = mk(auth_cfg(disableSignUp=True))
    resp = sign_up(api(app))
    check_error(resp, 403, "FORBIDDEN", "Sign-up is disabled", "SIGN_UP_DISABLED")
    assert db_rows(app, "SELECT count(*) FROM users") == [(0,)]


def test_sign_up_existing_email_conflict(app, client):
    new_user(client)
    resp = sign_up(client, email=" ADA@example.com", name="Someone Else", password="another password")
    check_error(resp, 409, "CONFLICT", "User already exists", "USER_ALREADY_EXISTS")
    assert db_rows(app, "SELECT count(*) FROM users") == [(1,)]
    # The original password still works, the attempted one does not.
    assert sign_in(client).status_int == 200
    assert sign_in(client, password="another password").status_int == 401


def test_sign_up_require_email_verification(mk):
    app = mk(auth_cfg({"requireEmailVerification": True}))
    client = api(app)
    resp = sign_up(client, callbackURL="/welcome")
    assert resp.status_int == 200, resp.body
    assert resp.json["token"] is None
    check_user(resp.json["user"], email="ada@example.com", emailVerified=False)
    assert "set-auth-token" not in resp.headers
    assert COOKIE not in set_cookies(resp)
    assert db_rows(app, "SELECT count(*) FROM sessions") == [(0,)]
    sent = mails(app, "ada@example.com")
    assert len(sent) == 1
    link = link_in(sent[0]["body"])
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}" == BASE
    assert parts.path == "/api/auth/verify-email"
    query = parse_qs(parts.query)
    assert TOKEN_RE.match(query["token"][0])
    assert query["callbackURL"] == ["/welcome"]


def test_sign_up_auto_sign_in_false(mk):
    app = mk(auth_cfg({"autoSignIn": False}))
    resp = sign_up(api(app))
    assert resp.status_int == 200, resp.body
    assert resp.json["token"] is None
    check_user(resp.json["user"], email="ada@example.com", emailVerified=False, role="member")
    assert "set-auth-token" not in resp.headers
    assert COOKIE not in set_cookies(resp)
    assert db_rows(app, "SELECT count(*) FROM sessions") == [(0,)]
    # The account exists: signing in works.
    assert sign_in(api(app)).status_int == 200


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "a b@example.com", "@example.com", "ada@",
                                   "ada@@example.com", "x" * 245 + "@example.com"])
def test_sign_up_invalid_email(app, client, email):
    resp = sign_up(client, email=email)
    check_error(resp, 400, "VALIDATION_ERROR", "Invalid email address", "INVALID_EMAIL", "email")
    assert db_rows(app, "SELECT count(*) FROM users") == [(0,)]


def test_sign_up_password_too_short(app, client):
    check_error(sign_up(client, password="1234567"), 400, "VALIDATION_ERROR",
                "Password must be at least 8 characters", "PASSWORD_TOO_SHORT", "password")
    # Lengths are counted in code points: 7 two-byte characters are still too short …
    check_error(sign_up(client, password="é" * 7), 400, "VALIDATION_ERROR",
                "Password must be at least 8 characters", "PASSWORD_TOO_SHORT", "password")
    # … and 8 four-byte characters are long enough.
    assert sign_up(client, password="😀" * 8).status_int == 200


def test_sign_up_password_too_long(app, client):
    check_error(sign_up(client, password="p" * 129), 400, "VALIDATION_ERROR",
                "Password must be at most 128 characters", "PASSWORD_TOO_LONG", "password")
    assert sign_up(client, password="😀" * 128).status_int == 200


def test_sign_up_configured_password_limits(mk):
    app = mk(auth_cfg({"minPasswordLength": 10, "maxPasswordLength": 12}))
    client = api(app)
    check_error(sign_up(client, password="123456789"), 400, "VALIDATION_ERROR",
                "Password must be at least 10 characters", "PASSWORD_TOO_SHORT", "password")
    check_error(sign_up(client, password="1234567890123"), 400, "VALIDATION_ERROR",
                "Password must be at most 12 characters", "PASSWORD_TOO_LONG", "password")
    assert sign_up(client, password="123456789012").status_int == 200


def test_sign_up_body_shape_errors(client):
    check_error(post(client, "/api/auth/sign-up/email", {"email": "ada@example.com", "password": PASSWORD}),
                400, "VALIDATION_ERROR", "Field 'name' is required", field="name")
    check_error(post(client, "/api/auth/sign-up/email", {"name": "Ada", "email": 5, "password": PASSWORD}),
                400, "VALIDATION_ERROR", "Field 'email' must be a string", field="email")
    check_error(sign_up(client, rememberMe="yes"), 400, "VALIDATION_ERROR",
                "Field 'rememberMe' must be a boolean", field="rememberMe")
    check_error(post(client, "/api/auth/sign-up/email"), 400, "VALIDATION_ERROR",
                "Request body is required", field="body")
    resp = sign_up(client, name="   ")
    assert resp.status_int == 400 and resp.json["code"] == "VALIDATION_ERROR"
    assert resp.json["errors"][0]["field"] == "name"
    resp = sign_up(client, name="n" * 256)
    assert resp.status_int == 400 and resp.json["errors"][0]["field"] == "name"
    resp = sign_up(client, image="ftp://example.com/a.png")
    assert resp.status_int == 400 and resp.json["errors"][0]["field"] == "image"


def test_sign_up_ignores_unknown_members_and_cannot_choose_role(app, client):
    resp = sign_up(client, role="admin", emailVerified=True, banned=False, favouriteColour="blue")
    assert resp.status_int == 200, resp.body
    check_user(resp.json["user"], role="member", emailVerified=False)


###############################################################################
# Sign-in (§13.2)
###############################################################################


def test_sign_in_success(app, client, clock):
    user, _ = new_user(client)
    clock.advance(minutes=5)
    resp = sign_in(client, email=" ADA@example.com ")
    assert resp.status_int == 200, resp.body
    body = resp.json
    assert set(body) == {"redirect", "token", "user"}
    assert body["redirect"] is False
    check_user(body["user"], id=user["id"], email="ada@example.com")
    token = body["token"]
    assert TOKEN_RE.match(token)
    assert resp.headers["set-auth-token"] == token
    check_session_cookie(resp, token)
    assert db_rows(app, "SELECT user_id, expires_at FROM sessions WHERE token = ?", (token,)) == [
        (user["id"], ts(clock.now + timedelta(days=7)))]
    assert whoami(client, bearer(token)) == user["id"]


def test_sign_in_with_callback_url(client):
    new_user(client)
    resp = sign_in(client, callbackURL="/dashboard?tab=1")
    assert resp.status_int == 200, resp.body
    body = resp.json
    assert set(body) == {"redirect", "token", "url", "user"}
    assert body["redirect"] is True
    assert body["url"] == "/dashboard?tab=1"
    assert resp.headers["set-auth-token"] == body["token"]


def test_wrong_password_and_unknown_email_are_identical(client):
    new_user(client)
    wrong = sign_in(client, password="wrong password")
    unknown = sign_in(client, email="nobody@example.com")
    for resp in (wrong, unknown):
        check_error(resp, 401, "UNAUTHORIZED", "Invalid email or password", "INVALID_EMAIL_OR_PASSWORD")
        assert "set-auth-token" not in resp.headers
        assert COOKIE not in set_cookies(resp)
    assert wrong.body == unknown.body
    assert wrong.content_type == unknown.content_type


def test_sign_in_invalid_email_format_and_body_errors(client):
    check_error(sign_in(client, email="not-an-email"), 400, "VALIDATION_ERROR", "Invalid email address",
                "INVALID_EMAIL", "email")
    check_error(post(client, "/api/auth/sign-in/email", {"email": "ada@example.com"}), 400,
                "VALIDATION_ERROR", "Field 'password' is required", field="password")
    check_error(sign_in(client, password=12345678), 400, "VALIDATION_ERROR",
                "Field 'password' must be a string", field="password")


def test_sign_in_remember_me_false_cookie_without_max_age(app, client):
    new_user(client)
    resp = sign_in(client, rememberMe=False)
    assert resp.status_int == 200, resp.body
    token = resp.json["token"]
    check_session_cookie(resp, token, max_age=None)
    # The server-side lifetime is unchanged.
    assert db_rows(app, "SELECT expires_at FROM sessions WHERE token = ?", (token,)) == [
        (ts(T0 + timedelta(days=7)),)]


def test_sign_up_remember_me_false_cookie_without_max_age(client):
    resp = sign_up(client, rememberMe=False)
    assert resp.status_int == 200, resp.body
    check_session_cookie(resp, resp.json["token"], max_age=None)


def test_sign_in_unverified_with_required_verification(mk):
    app = mk(auth_cfg({"requireEmailVerification": True}))
    client = api(app)
    assert sign_up(client).status_int == 200
    assert len(mails(app, "ada@example.com")) == 1
    resp = sign_in(client)
    check_error(resp, 403, "FORBIDDEN", "Email not verified", "EMAIL_NOT_VERIFIED")
    assert "set-auth-token" not in resp.headers
    assert db_rows(app, "SELECT count(*) FROM sessions") == [(0,)]
    # A new verification e-mail is sent.
    sent = mails(app, "ada@example.com")
    assert len(sent) == 2
    assert "/api/auth/verify-email?" in link_in(sent[1]["body"])


def test_sign_in_banned_user(app, client):
    user, token = new_user(client)
    db_exec(app, "UPDATE users SET banned = 1, ban_reason = 'spam' WHERE id = ?", (user["id"],))
    resp = sign_in(client)
    check_error(resp, 403, "FORBIDDEN", "You have been banned from this application", "BANNED_USER")
    assert "set-auth-token" not in resp.headers
    # The live session of a banned user is rejected at once.
    assert whoami(client, bearer(token)) is None
    check_error(get(client, "/api/auth/list-sessions", bearer(token)), 401, "UNAUTHORIZED",
                "Authentication required")


def test_expired_ban_is_lifted_on_sign_in(app, client, clock):
    user, _ = new_user(client)
    db_exec(app, "UPDATE users SET banned = 1, ban_reason = 'spam', ban_expires = ? WHERE id = ?",
            (ts(T0 + timedelta(hours=1)), user["id"]))
    check_error(sign_in(client), 403, "FORBIDDEN", "You have been banned from this application", "BANNED_USER")
    clock.advance(hours=2)
    resp = sign_in(client)
    assert resp.status_int == 200, resp.body
    check_user(resp.json["user"], banned=False, banReason=None, banExpires=None)
    assert db_rows(app, "SELECT banned FROM users WHERE id = ?", (user["id"],)) == [(0,)]


###############################################################################
# Cookie and Bearer transport (§1.5)
###############################################################################


def test_cookie_attributes_follow_session_config(mk):
    app = mk(auth_cfg(session={"expiresIn": "2h", "updateAge": "1h"}))
    client = api(app)
    resp = sign_up(client)
    token = resp.json["token"]
    check_session_cookie(resp, token, max_age=7200)
    assert db_rows(app, "SELECT expires_at FROM sessions WHERE token = ?", (token,)) == [
        (ts(T0 + timedelta(hours=2)),)]


def test_secure_cookie_only_with_https_base_url(mk):
    app = mk(env={"BASE_URL": "https://app.example.com"})
    resp = sign_up(api(app))
    assert resp.status_int == 200, resp.body
    check_session_cookie(resp, resp.json["token"], secure=True)


def test_cookie_is_accepted_and_secure_name_too(client):
    user, token = new_user(client)
    assert whoami(client, cookie_for(token)) == user["id"]
    assert whoami(client, cookie_for(token, name=SECURE_COOKIE)) == user["id"]
    # Among other cookies.
    assert whoami(client, {"Cookie": "theme=dark; " + cookie_for(token)["Cookie"] + "; lang=en"}) == user["id"]


def test_browser_cookie_jar_flow(app):
    b = browser(app)
    resp = sign_up(b)
    user = resp.json["user"]
    got = get(b, "/api/auth/get-session")
    assert got.status_int == 200
    assert got.json["user"]["id"] == user["id"]
    out = post(b, "/api/auth/sign-out")
    assert out.status_int == 200 and out.json == {"success": True}
    assert get(b, "/api/auth/get-session").json is None


def test_bearer_raw_and_signed(client):
    user, token = new_user(client)
    assert whoami(client, bearer(token)) == user["id"]
    assert whoami(client, bearer(sign(token))) == user["id"]


def test_bearer_wins_over_cookie(client):
    ada, ada_token = new_user(client)
    bob, bob_token = new_user(client, email="bob@example.com", name="Bob")
    headers = {**cookie_for(ada_token), **bearer(bob_token)}
    assert whoami(client, headers) == bob["id"]
    headers = {**cookie_for(bob_token), **bearer(ada_token)}
    assert whoami(client, headers) == ada["id"]


@pytest.mark.parametrize("headers", [
    {"Cookie": f"{COOKIE}=garbage"},
    {"Cookie": f"{COOKIE}="},
    {"Cookie": f"{COOKIE}=%ZZ%%.."},
    {"Cookie": f"{COOKIE}={'A' * 32}.{'B' * 44}"},
    {"Authorization": "Bearer garbage"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer"},
    {"Authorization": "Basic YWRhOnBhc3N3b3Jk"},
    {"Authorization": "Bearer " + "x" * 5000},
    {"Authorization": "Bearer " + "A" * 32},
    {"Authorization": "Bearer " + sign("A" * 32)},
])
def test_garbage_credentials_are_anonymous(client, headers):
    new_user(client)
    resp = get(client, "/api/auth/get-session", headers)
    assert resp.status_int == 200, resp.body
    assert resp.content_type == "application/json"
    assert resp.body.strip() == b"null"
    resp = post(client, "/api/auth/get-session", None, headers)
    assert resp.status_int == 200 and resp.json is None
    assert get(client, "/api/auth/ok", headers).json == {"ok": True}
    check_error(get(client, "/api/auth/list-sessions", headers), 401, "UNAUTHORIZED", "Authentication required")


def test_forged_signature_is_ignored(client):
    user, token = new_user(client)
    assert whoami(client, cookie_for(token, secret=OTHER_SECRET)) is None
    # An unsigned cookie, or a signature of another token, is ignored too.
    assert whoami(client, {"Cookie": f"{COOKIE}={token}"}) is None
    other_sig = sign("B" * 32).split(".", 1)[1]
    assert whoami(client, {"Cookie": f"{COOKIE}={quote(token + '.' + other_sig, safe='')}"}) is None
    # A signed Bearer value with a forged signature is not accepted either.
    assert whoami(client, bearer(sign(token, OTHER_SECRET))) is None
    # The genuine credential still works.
    assert whoami(client, cookie_for(token)) == user["id"]


def test_revoked_session_is_anonymous(app, client):
    user, token = new_user(client)
    out = post(client, "/api/auth/sign-out", None, bearer(token))
    assert out.status_int == 200 and out.json == {"success": True}
    assert db_rows(app, "SELECT count(*) FROM sessions WHERE token = ?", (token,)) == [(0,)]
    assert whoami(client, bearer(token)) is None
    assert whoami(client, cookie_for(token)) is None


def test_expired_session_is_anonymous(client, clock):
    user, token = new_user(client)
    clock.advance(days=7, seconds=1)
    assert whoami(client, bearer(token)) is None
    assert whoami(client, cookie_for(token)) is None
    check_error(get(client, "/api/auth/list-sessions", cookie_for(token)), 401, "UNAUTHORIZED",
                "Authentication required")


def test_sliding_expiry_moves_expires_at_and_resets_cookie(app, client, clock):
    user, token = new_user(client)
    original = ts(T0 + timedelta(days=7))
    # Younger than updateAge (1 day): nothing moves.
    clock.advance(hours=12)
    resp = get(client, "/api/auth/get-session", cookie_for(token))
    assert resp.json["session"]["expiresAt"] == original
    # Older than updateAge: expiresAt = now + 7 days, and the cookie is re-set.
    now = clock.advance(hours=12, seconds=1)
    resp = get(client, "/api/auth/get-session", cookie_for(token))
    assert resp.status_int == 200
    assert resp.json["session"]["expiresAt"] == ts(now + timedelta(days=7))
    check_session_cookie(resp, token, max_age=WEEK)
    assert db_rows(app, "SELECT expires_at FROM sessions WHERE token = ?", (token,)) == [
        (ts(now + timedelta(days=7)),)]
    # A session kept in use survives past its original expiry.
    clock.advance(days=6)
    assert whoami(client, cookie_for(token)) == user["id"]
    clock.advance(days=6)
    assert whoami(client, cookie_for(token)) == user["id"]
    # An idle one does not.
    clock.advance(days=7, seconds=1)
    assert whoami(client, cookie_for(token)) is None


def test_sliding_expiry_for_bearer_callers(app, client, clock):
    user, token = new_user(client)
    now = clock.advance(days=2)
    resp = get(client, "/api/auth/get-session", bearer(token))
    assert resp.json["session"]["expiresAt"] == ts(now + timedelta(days=7))
    assert db_rows(app, "SELECT expires_at FROM sessions WHERE token = ?", (token,)) == [
        (ts(now + timedelta(days=7)),)]


def test_sliding_expiry_with_configured_update_age(mk, clock):
    app = mk(auth_cfg(session={"expiresIn": "2h", "updateAge": "30m"}), clock=clock)
    client = api(app)
    user, token = new_user(client)
    clock.advance(minutes=20)
    assert get(client, "/api/auth/get-session", bearer(token)).json["session"]["expiresAt"] == \
        ts(T0 + timedelta(hours=2))
    now = clock.advance(minutes=11)
    resp = get(client, "/api/auth/get-session", cookie_for(token))
    assert resp.json["session"]["expiresAt"] == ts(now + timedelta(hours=2))
    check_session_cookie(resp, token, max_age=7200)


###############################################################################
# Sessions (§13.3)
###############################################################################


def test_get_session_get_and_post(client):
    user, token = new_user(client)
    for resp in (get(client, "/api/auth/get-session", bearer(token)),
                 post(client, "/api/auth/get-session", None, bearer(token))):
        assert resp.status_int == 200, resp.body
        assert set(resp.json) == {"session", "user"}
        check_session(resp.json["session"], token=token, userId=user["id"])
        check_user(resp.json["user"], id=user["id"])
    for resp in (get(client, "/api/auth/get-session"), post(client, "/api/auth/get-session")):
        assert resp.status_int == 200
        assert resp.content_type == "application/json"
        assert resp.json is None


def test_list_sessions(client, clock):
    check_error(get(client, "/api/auth/list-sessions"), 401, "UNAUTHORIZED", "Authentication required")
    user, t1 = new_user(client)
    clock.advance(minutes=1)
    t2 = sign_in(client).json["token"]
    clock.advance(minutes=1)
    t3 = sign_in(client).json["token"]
    other, other_token = new_user(client, email="bob@example.com", name="Bob")
    resp = get(client, "/api/auth/list-sessions", bearer(t1))
    assert resp.status_int == 200, resp.body
    sessions = resp.json
    assert isinstance(sessions, list)
    assert [s["token"] for s in sessions] == [t3, t2, t1]
    for s in sessions:
        check_session(s, userId=user["id"])
    assert sessions[0]["createdAt"] == ts(T0 + timedelta(minutes=2))
    # Expired sessions are not listed.
    clock.advance(days=7, seconds=-30)
    assert [s["token"] for s in get(client, "/api/auth/list-sessions", bearer(t3)).json] == [t3]


def test_revoke_session_own_and_foreign(app, client):
    user, t1 = new_user(client)
    t2 = sign_in(client).json["token"]
    bob, bob_token = new_user(client, email="bob@example.com", name="Bob")
    # A foreign token: answered with status true and nothing happens.
    resp = post(client, "/api/auth/revoke-session", {"token": bob_token}, bearer(t1))
    assert resp.status_int == 200 and resp.json == {"status": True}
    assert whoami(client, bearer(bob_token)) == bob["id"]
    # An unknown token: the same.
    resp = post(client, "/api/auth/revoke-session", {"token": "Z" * 32}, bearer(t1))
    assert resp.status_int == 200 and resp.json == {"status": True}
    # An own token: deleted.
    resp = post(client, "/api/auth/revoke-session", {"token": t2}, bearer(t1))
    assert resp.status_int == 200 and resp.json == {"status": True}
    assert whoami(client, bearer(t2)) is None
    assert whoami(client, bearer(t1)) == user["id"]
    assert db_rows(app, "SELECT count(*) FROM sessions WHERE token = ?", (t2,)) == [(0,)]


def test_revoke_session_requires_sign_in_and_token(client):
    user, token = new_user(client)
    check_error(post(client, "/api/auth/revoke-session", {"token": token}), 401, "UNAUTHORIZED",
                "Authentication required")
    assert whoami(client, bearer(token)) == user["id"]
    check_error(post(client, "/api/auth/revoke-session", {}, bearer(token)), 400, "VALIDATION_ERROR",
                "Field 'token' is required", field="token")


def test_revoke_sessions(app, client):
    user, t1 = new_user(client)
    t2 = sign_in(client).json["token"]
    bob, bob_token = new_user(client, email="bob@example.com", name="Bob")
    resp = post(client, "/api/auth/revoke-sessions", None, cookie_for(t1))
    assert resp.status_int == 200 and resp.json == {"status": True}
    check_expired_cookie(resp)
    assert whoami(client, bearer(t1)) is None
    assert whoami(client, bearer(t2)) is None
    assert whoami(client, bearer(bob_token)) == bob["id"]
    assert db_rows(app, "SELECT count(*) FROM sessions WHERE user_id = ?", (user["id"],)) == [(0,)]
    check_error(post(client, "/api/auth/revoke-sessions"), 401, "UNAUTHORIZED", "Authentication required")


def test_revoke_other_sessions(client):
    user, t1 = new_user(client)
    t2 = sign_in(client).json["token"]
    t3 = sign_in(client).json["token"]
    bob, bob_token = new_user(client, email="bob@example.com", name="Bob")
    resp = post(client, "/api/auth/revoke-other-sessions", None, bearer(t2))
    assert resp.status_int == 200 and resp.json == {"status": True}
    assert whoami(client, bearer(t2)) == user["id"]
    assert whoami(client, bearer(t1)) is None
    assert whoami(client, bearer(t3)) is None
    assert whoami(client, bearer(bob_token)) == bob["id"]
    check_error(post(client, "/api/auth/revoke-other-sessions"), 401, "UNAUTHORIZED", "Authentication required")


def test_sign_out(app, client):
    # Anonymous: still 200, cookies expired.
    resp = post(client, "/api/auth/sign-out")
    assert resp.status_int == 200 and resp.json == {"success": True}
    check_expired_cookie(resp)
    user, token = new_user(client)
    other = sign_in(client).json["token"]
    resp = post(client, "/api/auth/sign-out", None, cookie_for(token))
    assert resp.status_int == 200 and resp.json == {"success": True}
    check_expired_cookie(resp)
    check_expired_cookie(resp, "better-auth.admin_session")
    assert "better-auth.trust_device" not in set_cookies(resp)
    assert whoami(client, cookie_for(token)) is None
    # Only the current session is deleted.
    assert whoami(client, bearer(other)) == user["id"]
    # With a garbage credential: still 200.
    resp = post(client, "/api/auth/sign-out", None, bearer("garbage"))
    assert resp.status_int == 200 and resp.json == {"success": True}


###############################################################################
# Passwords (§13.4)
###############################################################################


def test_change_password(client):
    user, t1 = new_user(client)
    t2 = sign_in(client).json["token"]
    body = {"currentPassword": "not the password", "newPassword": "brand new password"}
    check_error(post(client, "/api/auth/change-password", body, bearer(t1)), 400, "VALIDATION_ERROR",
                "Invalid password", "INVALID_PASSWORD", "currentPassword")
    body = {"currentPassword": PASSWORD, "newPassword": "short"}
    check_error(post(client, "/api/auth/change-password", body, bearer(t1)), 400, "VALIDATION_ERROR",
                "Password must be at least 8 characters", "PASSWORD_TOO_SHORT", "newPassword")
    check_error(post(client, "/api/auth/change-password", {"currentPassword": PASSWORD,
                                                           "newPassword": "x" * 129}, bearer(t1)),
                400, "VALIDATION_ERROR", "Password must be at most 128 characters", "PASSWORD_TOO_LONG",
                "newPassword")
    check_error(post(client, "/api/auth/change-password", {"currentPassword": PASSWORD,
                                                           "newPassword": "brand new password"}),
                401, "UNAUTHORIZED", "Authentication required")
    assert sign_in(client).status_int == 200

    resp = post(client, "/api/auth/change-password",
                {"currentPassword": PASSWORD, "newPassword": "brand new password"}, bearer(t1))
    assert resp.status_int == 200, resp.body
    assert set(resp.json) == {"token", "user"}
    assert resp.json["token"] is None
    check_user(resp.json["user"], id=user["id"])
    assert sign_in(client).status_int == 401
    assert sign_in(client, password="brand new password").status_int == 200
    # Without revokeOtherSessions, sessions are kept.
    assert whoami(client, bearer(t1)) == user["id"]
    assert whoami(client, bearer(t2)) == user["id"]


def test_change_password_revoke_other_sessions(client):
    user, t1 = new_user(client)
    t2 = sign_in(client).json["token"]
    resp = post(client, "/api/auth/change-password",
                {"currentPassword": PASSWORD, "newPassword": "brand new password", "revokeOtherSessions": True},
                cookie_for(t1))
    assert resp.status_int == 200, resp.body
    new = resp.json["token"]
    assert TOKEN_RE.match(new) and new not in (t1, t2)
    check_user(resp.json["user"], id=user["id"])
    check_session_cookie(resp, new)
    assert whoami(client, bearer(new)) == user["id"]
    assert whoami(client, bearer(t1)) is None
    assert whoami(client, bearer(t2)) is None
    assert [s["token"] for s in get(client, "/api/auth/list-sessions", bearer(new)).json] == [new]


def request_reset(client, email="ada@example.com", redirect="/reset"):
    body = {"email": email}
    if redirect is not None:
        body["redirectTo"] = redirect
    return post(client, "/api/auth/request-password-reset", body)


def reset_link(app, email="ada@example.com"):
    sent = mails(app, email)
    assert sent, "no e-mail sent"
    return link_in(sent[-1]["body"])


def reset_token(link):
    m = re.match(re.escape(BASE) + r"/api/auth/reset-password/([^/?#]+)\?callbackURL=(.*)$", link)
    assert m, link
    assert TOKEN_RE.match(m.group(1)), m.group(1)
    return m.group(1), unquote(m.group(2))


def test_request_password_reset_same_answer_for_known_and_unknown(app, client):
    new_user(client)
    known = request_reset(client)
    unknown = request_reset(client, email="nobody@example.com")
    for resp in (known, unknown):
        assert resp.status_int == 200, resp.body
        assert resp.json == {"status": True, "message": RESET_MESSAGE}
    assert known.body == unknown.body
    assert mails(app, "nobody@example.com") == []
    sent = mails(app, "ada@example.com")
    assert len(sent) == 1 and sent[0]["status"] == "queued"
    token, callback = reset_token(link_in(sent[0]["body"]))
    assert callback == "/reset"


def test_reset_password_flow(app, client):
    user, session_token = new_user(client)
    other = sign_in(client).json["token"]
    assert request_reset(client, email="ADA@example.com").status_int == 200
    link = reset_link(app)
    token, callback = reset_token(link)

    # The link itself: 302 to the callback with the token added; it does not consume the token.
    resp = get(client, link[len(BASE):])
    assert resp.status_int == 302, resp.body
    parts, query = location(resp)
    assert parts.path == "/reset" and query == {"token": token}
    resp = get(client, f"/api/auth/reset-password/{token}?callbackURL=" + quote("/reset?step=2", safe=""))
    parts, query = location(resp)
    assert resp.status_int == 302 and parts.path == "/reset" and query == {"step": "2", "token": token}

    resp = post(client, "/api/auth/reset-password", {"token": token, "newPassword": "a whole new one"})
    assert resp.status_int == 200, resp.body
    assert resp.json == {"status": True}
    # The password is replaced and every session of the user deleted.
    assert sign_in(client).status_int == 401
    assert whoami(client, bearer(session_token)) is None
    assert whoami(client, bearer(other)) is None
    assert db_rows(app, "SELECT count(*) FROM sessions WHERE user_id = ?", (user["id"],)) == [(0,)]
    assert sign_in(client, password="a whole new one").status_int == 200
    # Single use.
    check_error(post(client, "/api/auth/reset-password", {"token": token, "newPassword": "yet another one"}),
                400, "VALIDATION_ERROR", "Invalid or expired token", "INVALID_TOKEN", "token")
    resp = get(client, link[len(BASE):])
    parts, query = location(resp)
    assert resp.status_int == 302 and parts.path == "/reset" and query == {"error": "INVALID_TOKEN"}
    assert sign_in(client, password="a whole new one").status_int == 200


def test_reset_password_token_in_query(app, client):
    new_user(client)
    request_reset(client)
    token, _ = reset_token(reset_link(app))
    resp = post(client, "/api/auth/reset-password?token=" + token, {"newPassword": "a whole new one"})
    assert resp.status_int == 200, resp.body
    assert resp.json == {"status": True}
    assert sign_in(client, password="a whole new one").status_int == 200


def test_reset_password_invalid_token_and_password_rules(app, client):
    new_user(client)
    check_error(post(client, "/api/auth/reset-password", {"token": "Q" * 32, "newPassword": "a whole new one"}),
                400, "VALIDATION_ERROR", "Invalid or expired token", "INVALID_TOKEN", "token")
    resp = get(client, "/api/auth/reset-password/" + "Q" * 32 + "?callbackURL=%2Freset")
    parts, query = location(resp)
    assert resp.status_int == 302 and parts.path == "/reset" and query == {"error": "INVALID_TOKEN"}
    request_reset(client)
    token, _ = reset_token(reset_link(app))
    # callbackURL is required on the GET link.
    resp = get(client, f"/api/auth/reset-password/{token}")
    assert resp.status_int == 400 and resp.json["code"] == "VALIDATION_ERROR"
    check_error(post(client, "/api/auth/reset-password", {"token": token, "newPassword": "short"}),
                400, "VALIDATION_ERROR", "Password must be at least 8 characters", "PASSWORD_TOO_SHORT",
                "newPassword")
    # A refused password does not consume the token.
    assert post(client, "/api/auth/reset-password", {"token": token, "newPassword": "long enough"}).status_int == 200


def test_reset_token_expires_after_one_hour(app, client, clock):
    new_user(client)
    request_reset(client)
    token, _ = reset_token(reset_link(app))
    clock.advance(hours=1, seconds=1)
    check_error(post(client, "/api/auth/reset-password", {"token": token, "newPassword": "a whole new one"}),
                400, "VALIDATION_ERROR", "Invalid or expired token", "INVALID_TOKEN", "token")
    resp = get(client, f"/api/auth/reset-password/{token}?callbackURL=%2Freset")
    parts, query = location(resp)
    assert resp.status_int == 302 and query == {"error": "INVALID_TOKEN"}
    assert sign_in(client).status_int == 200


def test_reset_token_valid_just_before_one_hour(app, client, clock):
    new_user(client)
    request_reset(client)
    token, _ = reset_token(reset_link(app))
    clock.advance(minutes=59)
    assert post(client, "/api/auth/reset-password",
                {"token": token, "newPassword": "a whole new one"}).status_int == 200


def test_new_reset_request_invalidates_older_tokens(app, client, clock):
    new_user(client)
    request_reset(client)
    first, _ = reset_token(reset_link(app))
    clock.advance(seconds=5)
    request_reset(client)
    second, _ = reset_token(reset_link(app))
    assert first != second
    check_error(post(client, "/api/auth/reset-password", {"token": first, "newPassword": "a whole new one"}),
                400, "VALIDATION_ERROR", "Invalid or expired token", "INVALID_TOKEN", "token")
    assert post(client, "/api/auth/reset-password",
                {"token": second, "newPassword": "a whole new one"}).status_int == 200


def test_reset_tokens_are_stored_hashed(app, client):
    new_user(client)
    request_reset(client)
    token, _ = reset_token(reset_link(app))
    for row in db_rows(app, "SELECT identifier, value, data FROM verifications"):
        assert all(token not in str(col) for col in row), row


###############################################################################
# E-mail verification (§13.5)
###############################################################################


def verify_link(app, email="ada@example.com"):
    sent = mails(app, email)
    assert sent, "no e-mail sent"
    link = link_in(sent[-1]["body"])
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == BASE + "/api/auth/verify-email", link
    query = parse_qs(parts.query, keep_blank_values=True)
    assert TOKEN_RE.match(query["token"][0]), link
    return query["token"][0], query.get("callbackURL", [""])[-1]


def test_send_verification_email(app, client):
    user, token = new_user(client)
    resp = post(client, "/api/auth/send-verification-email", {"email": "Ada@example.com", "callbackURL": "/ok"})
    assert resp.status_int == 200 and resp.json == {"status": True}
    vtoken, callback = verify_link(app)
    assert callback == "/ok"
    assert len(mails(app, "ada@example.com")) == 1
    # Unknown e-mail: the same answer, nothing sent.
    resp = post(client, "/api/auth/send-verification-email", {"email": "nobody@example.com"})
    assert resp.status_int == 200 and resp.json == {"status": True}
    assert mails(app, "nobody@example.com") == []
    # Verified user: nothing sent.
    db_exec(app, "UPDATE users SET email_verified = 1 WHERE id = ?", (user["id"],))
    resp = post(client, "/api/auth/send-verification-email", {"email": "ada@example.com"})
    assert resp.status_int == 200 and resp.json == {"status": True}
    assert len(mails(app, "ada@example.com")) == 1


def test_verify_email_without_callback(app, client, clock):
    user, _ = new_user(client)
    post(client, "/api/auth/send-verification-email", {"email": "ada@example.com"})
    vtoken, _ = verify_link(app)
    clock.advance(minutes=3)
    resp = get(client, "/api/auth/verify-email?token=" + vtoken)
    assert resp.status_int == 200, resp.body
    assert set(resp.json) == {"status", "user"}
    assert resp.json["status"] is True
    check_user(resp.json["user"], id=user["id"], emailVerified=True)
    new_token = resp.headers["set-auth-token"]
    assert TOKEN_RE.match(new_token)
    check_session_cookie(resp, new_token)
    assert whoami(client, bearer(new_token)) == user["id"]
    assert db_rows(app, "SELECT email_verified FROM users WHERE id = ?", (user["id"],)) == [(1,)]
    # Single use.
    check_error(get(client, "/api/auth/verify-email?token=" + vtoken), 400, "VALIDATION_ERROR",
                "Invalid or expired token", "INVALID_TOKEN", "token")


def test_verify_email_with_callback(app, client):
    user, _ = new_user(client)
    post(client, "/api/auth/send-verification-email", {"email": "ada@example.com", "callbackURL": "/welcome"})
    vtoken, callback = verify_link(app)
    resp = get(client, "/api/auth/verify-email?token=" + vtoken + "&callbackURL=" + quote(callback, safe=""))
    assert resp.status_int == 302, resp.body
    parts, query = location(resp)
    assert parts.path == "/welcome" and "error" not in query
    new_token = resp.headers["set-auth-token"]
    check_session_cookie(resp, new_token)
    assert whoami(client, bearer(new_token)) == user["id"]
    # Used token with a callback: 302 with the error.
    resp = get(client, "/api/auth/verify-email?token=" + vtoken + "&callbackURL=%2Fwelcome")
    assert resp.status_int == 302
    parts, query = location(resp)
    assert parts.path == "/welcome" and query == {"error": "INVALID_TOKEN"}
    assert "set-auth-token" not in resp.headers


def test_verify_email_invalid_token(client):
    check_error(get(client, "/api/auth/verify-email?token=" + "Q" * 32), 400, "VALIDATION_ERROR",
                "Invalid or expired token", "INVALID_TOKEN", "token")
    resp = get(client, "/api/auth/verify-email?token=garbage&callbackURL=%2Fdone")
    assert resp.status_int == 302
    parts, query = location(resp)
    assert parts.path == "/done" and query == {"error": "INVALID_TOKEN"}


def test_verification_token_expires_after_24_hours(app, client, clock):
    new_user(client)
    new_user(client, email="bob@example.com", name="Bob")
    post(client, "/api/auth/send-verification-email", {"email": "ada@example.com"})
    post(client, "/api/auth/send-verification-email", {"email": "bob@example.com"})
    ada_token, _ = verify_link(app, "ada@example.com")
    bob_token, _ = verify_link(app, "bob@example.com")
    clock.advance(hours=23, minutes=59)
    assert get(client, "/api/auth/verify-email?token=" + bob_token).status_int == 200
    clock.advance(minutes=1, seconds=1)
    check_error(get(client, "/api/auth/verify-email?token=" + ada_token), 400, "VALIDATION_ERROR",
                "Invalid or expired token", "INVALID_TOKEN", "token")


def test_required_verification_full_flow(mk, clock):
    app = mk(auth_cfg({"requireEmailVerification": True}), clock=clock)
    client = api(app)
    user = sign_up(client).json["user"]
    vtoken, _ = verify_link(app)
    resp = get(client, "/api/auth/verify-email?token=" + vtoken)
    assert resp.status_int == 200, resp.body
    assert resp.json["user"]["emailVerified"] is True
    resp = sign_in(client)
    assert resp.status_int == 200, resp.body
    check_user(resp.json["user"], id=user["id"], emailVerified=True)


###############################################################################
# Profile (§13.6)
###############################################################################


def test_update_user(app, client, clock):
    user, token = new_user(client)
    now = clock.advance(minutes=10)
    resp = post(client, "/api/auth/update-user", {"name": "  Ada Lovelace ", "image": "https://x.example/a.png",
                                                  "nickname": "ignored"}, bearer(token))
    assert resp.status_int == 200, resp.body
    assert set(resp.json) == {"user"}
    check_user(resp.json["user"], id=user["id"], name="Ada Lovelace", image="https://x.example/a.png",
               email="ada@example.com", updatedAt=ts(now), createdAt=ts(T0))
    resp = post(client, "/api/auth/update-user", {"image": None}, bearer(token))
    assert resp.status_int == 200, resp.body
    assert resp.json["user"]["image"] is None
    assert get(client, "/api/auth/get-session", bearer(token)).json["user"]["name"] == "Ada Lovelace"


@pytest.mark.parametrize("member,value", [("email", "evil@example.com"), ("emailVerified", True),
                                          ("role", "admin"), ("banned", False), ("password", "new password 1")])
def test_update_user_forbidden_members(app, client, member, value):
    user, token = new_user(client)
    resp = post(client, "/api/auth/update-user", {"name": "Changed", member: value}, bearer(token))
    check_error(resp, 400, "VALIDATION_ERROR", f"Field '{member}' cannot be updated", field=member)
    assert db_rows(app, "SELECT name, email, email_verified, role, banned FROM users WHERE id = ?",
                   (user["id"],)) == [("Ada Quill", "ada@example.com", 0, "member", 0)]
    assert sign_in(client).status_int == 200


def test_update_user_errors(client):
    check_error(post(client, "/api/auth/update-user", {"name": "X"}), 401, "UNAUTHORIZED",
                "Authentication required")
    user, token = new_user(client)
    resp = post(client, "/api/auth/update-user", {}, bearer(token))
    assert resp.status_int == 400 and resp.json["code"] == "VALIDATION_ERROR"
    check_error(post(client, "/api/auth/update-user", {"name": 5}, bearer(token)), 400, "VALIDATION_ERROR",
                "Field 'name' must be a string", field="name")
    for body in ({"name": "   "}, {"name": "n" * 256}):
        resp = post(client, "/api/auth/update-user", body, bearer(token))
        assert resp.status_int == 400 and resp.json["errors"][0]["field"] == "name", resp.body
    for image in ("javascript:alert(1)", "ftp://x.example/a.png", "not a url"):
        resp = post(client, "/api/auth/update-user", {"image": image}, bearer(token))
        assert resp.status_int == 400 and resp.json["errors"][0]["field"] == "image", resp.body
    assert get(client, "/api/auth/get-session", bearer(token)).json["user"]["name"] == "Ada Quill"


###############################################################################
# Redirect targets (§13.1)
###############################################################################

BAD_TARGETS = ["https://evil.example.com/x", "//evil.example.com/x", "javascript:alert(1)",
               "http://localhost:4000/x", "http://localhost:3000.evil.example/x", "evil.example.com/x"]
GOOD_TARGETS = ["/", "/dashboard?tab=2", "http://localhost:3000/after", "https://app.example.com/x"]


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_invalid_redirect_targets(mk, target):
    app = mk(auth_cfg(trustedOrigins=["https://app.example.com"]))
    client = api(app)
    new_user(client)
    check_error(sign_in(client, callbackURL=target), 400, "VALIDATION_ERROR", "Invalid redirect URL",
                "INVALID_CALLBACK_URL", "callbackURL")
    check_error(sign_up(client, email="bob@example.com", callbackURL=target), 400, "VALIDATION_ERROR",
                "Invalid redirect URL", "INVALID_CALLBACK_URL", "callbackURL")
    check_error(request_reset(client, redirect=target), 400, "VALIDATION_ERROR", "Invalid redirect URL",
                "INVALID_CALLBACK_URL", "redirectTo")
    check_error(post(client, "/api/auth/send-verification-email", {"email": "ada@example.com",
                                                                    "callbackURL": target}),
                400, "VALIDATION_ERROR", "Invalid redirect URL", "INVALID_CALLBACK_URL", "callbackURL")
    resp = get(client, "/api/auth/verify-email?token=garbage&callbackURL=" + quote(target, safe=""))
    check_error(resp, 400, "VALIDATION_ERROR", "Invalid redirect URL", "INVALID_CALLBACK_URL", "callbackURL")
    assert mails(app) == []
    assert db_rows(app, "SELECT count(*) FROM users") == [(1,)]


@pytest.mark.parametrize("target", GOOD_TARGETS)
def test_valid_redirect_targets(mk, target):
    app = mk(auth_cfg(trustedOrigins=["https://app.example.com"]))
    client = api(app)
    new_user(client)
    resp = sign_in(client, callbackURL=target)
    assert resp.status_int == 200, resp.body
    assert resp.json["url"] == target and resp.json["redirect"] is True
    assert request_reset(client, redirect=target).status_int == 200
    _, callback = reset_token(reset_link(app))
    assert callback == target


###############################################################################
# Routing (§1.6, §13, §13.13)
###############################################################################


def test_auth_ok(client):
    resp = get(client, "/api/auth/ok")
    assert resp.status_int == 200 and resp.json == {"ok": True}


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/auth/nope"),
    ("POST", "/api/auth/nope"),
    ("POST", "/api/auth/change-email"),
    ("POST", "/api/auth/delete-user"),
    ("POST", "/api/auth/two-factor/enable"),
    ("POST", "/api/auth/two-factor/get-totp-uri"),
    ("POST", "/api/auth/sign-in/magic-link"),
    ("GET", "/api/auth/magic-link/verify?token=x"),
    ("POST", "/api/auth/email-otp/send-verification-otp"),
    ("POST", "/api/auth/sign-in/email-otp"),
    ("POST", "/api/auth/sign-in/social"),
    ("GET", "/api/auth/callback/google"),
    ("POST", "/api/auth/organization/create"),
    ("GET", "/api/auth/organization/list"),
])
def test_unknown_and_unconfigured_auth_routes(client, method, path):
    user, token = new_user(client)
    for headers in ({}, bearer(token)):
        if method == "GET":
            resp = get(client, path, headers)
        else:
            resp = post(client, path, {"email": "ada@example.com", "password": PASSWORD}, headers)
        check_error(resp, 404, "NOT_FOUND", "Route not found")


def test_wrong_method_on_auth_route(client):
    resp = get(client, "/api/auth/sign-out")
    check_error(resp, 405, "METHOD_NOT_ALLOWED", "Method not allowed")
    assert {m.strip() for m in resp.headers["Allow"].split(",")} == {"POST", "OPTIONS"}
    resp = client.put_json("/api/auth/get-session", {}, expect_errors=True)
    check_error(resp, 405, "METHOD_NOT_ALLOWED", "Method not allowed")
    assert {m.strip() for m in resp.headers["Allow"].split(",")} == {"GET", "HEAD", "POST", "OPTIONS"}


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/auth/ok"), ("GET", "/api/auth/get-session"), ("POST", "/api/auth/sign-up/email"),
    ("POST", "/api/auth/sign-in/email"), ("POST", "/api/auth/sign-out"), ("GET", "/api/auth/list-sessions"),
    ("POST", "/api/auth/request-password-reset"), ("GET", "/api/auth/verify-email?token=x"),
    ("POST", "/api/auth/admin/set-role"), ("GET", "/api/auth/nope"),
])
def test_no_auth_mode_has_no_auth_routes(make_app, method, path):
    app = make_app(BASIC_CONFIG)
    client = api(app)
    if method == "GET":
        resp = get(client, path)
    else:
        resp = post(client, path, {"email": "ada@example.com", "password": PASSWORD, "name": "Ada"})
    check_error(resp, 404, "NOT_FOUND", "Route not found")
    assert db_rows(app, "SELECT count(*) FROM users") == [(0,)]


###############################################################################
# AUTH_SECRET (OPERATIONS.md §3, §4 step 6)
###############################################################################


def test_generated_auth_secret_is_stored_and_reused(mk, tmp_path):
    app1 = mk(drop=("AUTH_SECRET",))
    client = api(app1)
    resp = sign_up(client)
    token = resp.json["token"]
    user = resp.json["user"]
    raw_cookie, _ = session_cookie(resp)
    value = unquote(raw_cookie)
    assert value.split(".", 1)[0] == token
    # The cookie is signed with a secret stored in the meta table.
    stored = [v for (v,) in db_rows(app1, "SELECT value FROM meta") if v is not None]
    assert any(sign(token, v if isinstance(v, (str, bytes)) else str(v)) == value for v in stored), \
        "no meta value signs the cookie"
    cookie = {"Cookie": f"{COOKIE}={raw_cookie}"}
    assert whoami(client, cookie) == user["id"]
    app1.close()

    # Reopened without AUTH_SECRET: the same secret, so the old cookie still works.
    app2 = mk(drop=("AUTH_SECRET",))
    assert whoami(api(app2), cookie) == user["id"]
    # A cookie signed with another secret is ignored.
    assert whoami(api(app2), cookie_for(token, secret=OTHER_SECRET)) is None
    app2.close()

    # With another AUTH_SECRET set, the old cookie no longer verifies; Bearer tokens keep working.
    app3 = mk(env={"AUTH_SECRET": OTHER_SECRET})
    c3 = api(app3)
    assert whoami(c3, cookie) is None
    assert whoami(c3, bearer(token)) == user["id"]
    assert whoami(c3, cookie_for(token, secret=OTHER_SECRET)) == user["id"]


def test_explicit_auth_secret_signs_cookies(client):
    resp = sign_up(client)
    raw, _ = session_cookie(resp)
    assert unquote(raw) == sign(resp.json["token"], SECRET)


###############################################################################
# Roles read on every request (§1.6)
###############################################################################


def create_note(client, headers):
    return post(client, "/api/tables/notes/records", {"title": "hello"}, headers)


def test_role_is_read_on_every_request(app, client):
    user, token = new_user(client)
    auth = bearer(token)
    assert create_note(client, auth).status_int == 201
    db_exec(app, "UPDATE users SET role = 'viewer' WHERE id = ?", (user["id"],))
    resp = create_note(client, auth)
    check_error(resp, 403, "FORBIDDEN", "You do not have permission to perform this action")
    assert get(client, "/api/auth/get-session", auth).json["user"]["role"] == "viewer"
    assert get(client, "/api/tables/notes/records", auth).status_int == 200
    db_exec(app, "UPDATE users SET role = 'editor' WHERE id = ?", (user["id"],))
    assert create_note(client, auth).status_int == 201
    # Anonymous callers cannot create.
    check_error(create_note(client, {}), 401, "UNAUTHORIZED", "Authentication required")


def test_unconfigured_stored_role_counts_as_viewer(app, client):
    user, token = new_user(client)
    db_exec(app, "UPDATE users SET role = 'ghost' WHERE id = ?", (user["id"],))
    auth = bearer(token)
    check_error(create_note(client, auth), 403, "FORBIDDEN", "You do not have permission to perform this action")
    assert get(client, "/api/tables/notes/records", auth).status_int == 200
    assert whoami(client, auth) == user["id"]


def admin_app(mk, clock=None, cfg=None):
    return mk(cfg, clock=clock, env={"AUTH_ADMIN_EMAIL": ADMIN_EMAIL, "AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD})


def test_first_admin_from_environment(mk):
    app = admin_app(mk)
    client = api(app)
    resp = sign_in(client, email=ADMIN_EMAIL, password=ADMIN_PASSWORD)
    assert resp.status_int == 200, resp.body
    check_user(resp.json["user"], email=ADMIN_EMAIL, role="admin", emailVerified=True, name="Administrator")


def test_role_change_through_admin_api_takes_effect_at_once(mk):
    app = admin_app(mk)
    client = api(app)
    admin_token = sign_in(client, email=ADMIN_EMAIL, password=ADMIN_PASSWORD).json["token"]
    user, token = new_user(client)
    assert create_note(client, bearer(token)).status_int == 201
    resp = post(client, "/api/auth/admin/set-role", {"userId": user["id"], "role": "viewer"}, bearer(admin_token))
    assert resp.status_int == 200, resp.body
    check_user(resp.json["user"], id=user["id"], role="viewer")
    check_error(create_note(client, bearer(token)), 403, "FORBIDDEN",
                "You do not have permission to perform this action")
    resp = post(client, "/api/auth/admin/set-role", {"userId": user["id"], "role": "member"}, bearer(admin_token))
    assert resp.status_int == 200, resp.body
    assert create_note(client, bearer(token)).status_int == 201
    # A member cannot use the admin API.
    resp = post(client, "/api/auth/admin/set-role", {"userId": user["id"], "role": "admin"}, bearer(token))
    check_error(resp, 403, "FORBIDDEN", "You do not have permission to perform this action")
    assert get(client, "/api/auth/get-session", bearer(token)).json["user"]["role"] == "member"


def test_ban_through_admin_api_ends_live_sessions(mk):
    app = admin_app(mk)
    client = api(app)
    admin_token = sign_in(client, email=ADMIN_EMAIL, password=ADMIN_PASSWORD).json["token"]
    user, token = new_user(client)
    resp = post(client, "/api/auth/admin/ban-user", {"userId": user["id"], "banReason": "spam"}, bearer(admin_token))
    assert resp.status_int == 200, resp.body
    check_user(resp.json["user"], id=user["id"], banned=True, banReason="spam")
    assert whoami(client, bearer(token)) is None
    check_error(sign_in(client), 403, "FORBIDDEN", "You have been banned from this application", "BANNED_USER")


###############################################################################
# argon2 (CONFIG.md §10.5, API.md §13.1)
###############################################################################


def test_password_hash_is_argon2id_with_test_profile(app, client):
    user, _ = new_user(client)
    stored = password_hash(app, user["id"])
    assert stored.startswith("$argon2id$v=19$")
    assert phc_params(stored) == (8, 1, 1)


def test_environment_profile_overrides_config(mk):
    app = mk(auth_cfg(argon2={"profile": "owasp"}))
    user, _ = new_user(api(app))
    assert phc_params(password_hash(app, user["id"])) == (8, 1, 1)


@pytest.mark.parametrize("argon2,expected", [
    ({"profile": "owasp"}, (19456, 2, 1)),
    ({}, (19456, 2, 1)),
    ({"profile": "test"}, (8, 1, 1)),
    ({"profile": "test", "timeCost": 3, "memoryCost": 64}, (64, 3, 1)),
    ({"profile": "owasp", "memoryCost": 1024, "parallelism": 2}, (1024, 2, 2)),
])
def test_config_profile_sets_phc_parameters(mk, argon2, expected):
    cfg = auth_cfg(argon2=argon2) if argon2 else auth_cfg()
    app = mk(cfg, drop=("SOVRIUM_ARGON2_PROFILE",))
    client = api(app)
    user, _ = new_user(client)
    assert phc_params(password_hash(app, user["id"])) == expected
    assert sign_in(client).status_int == 200


def test_outdated_hash_is_upgraded_on_sign_in(mk):
    cfg = auth_cfg(argon2={"profile": "test", "timeCost": 2, "memoryCost": 32})
    app1 = mk(cfg)  # SOVRIUM_ARGON2_PROFILE=test overrides: m=8, t=1, p=1
    user, _ = new_user(api(app1))
    old = password_hash(app1, user["id"])
    assert phc_params(old) == (8, 1, 1)
    app1.close()

    app2 = mk(cfg, drop=("SOVRIUM_ARGON2_PROFILE",))
    client = api(app2)
    assert sign_in(client, password="wrong password").status_int == 401
    assert password_hash(app2, user["id"]) == old
    assert sign_in(client).status_int == 200
    new = password_hash(app2, user["id"])
    assert new != old
    assert phc_params(new) == (32, 2, 1)
    assert sign_in(client).status_int == 200
    assert password_hash(app2, user["id"]) == new


###############################################################################
# More anti-enumeration and token hygiene (§1.13, §13.2, §13.4, §13.5)
###############################################################################


def test_unverified_or_banned_with_wrong_password_reveal_nothing(mk):
    app = mk(auth_cfg({"requireEmailVerification": True}))
    client = api(app)
    assert sign_up(client).status_int == 200
    assert sign_up(client, email="bob@example.com", name="Bob").status_int == 200
    db_exec(app, "UPDATE users SET banned = 1, email_verified = 1 WHERE email = 'bob@example.com'")
    unknown = sign_in(client, email="nobody@example.com")
    for resp in (sign_in(client, password="wrong password"),
                 sign_in(client, email="bob@example.com", password="wrong password")):
        check_error(resp, 401, "UNAUTHORIZED", "Invalid email or password", "INVALID_EMAIL_OR_PASSWORD")
        assert resp.body == unknown.body
    # No verification e-mail is sent for a failed password check.
    assert len(mails(app, "ada@example.com")) == 1


def test_unknown_email_verifies_a_dummy_hash(mk):
    """Unknown e-mails cost about as much as a wrong password (a dummy hash is verified, §1.13)."""
    import statistics
    import time

    app = mk(auth_cfg(argon2={"profile": "owasp"}), drop=("SOVRIUM_ARGON2_PROFILE",))
    client = api(app)
    new_user(client)

    def median(**kw):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            assert sign_in(client, **kw).status_int == 401
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    wrong = median(password="wrong password")
    unknown = median(email="nobody@example.com")
    assert unknown > 0.5 * wrong, (unknown, wrong)


def test_reset_and_verification_tokens_are_not_interchangeable(app, client):
    new_user(client)
    request_reset(client)
    reset_tok, _ = reset_token(reset_link(app))
    post(client, "/api/auth/send-verification-email", {"email": "ada@example.com"})
    verify_tok, _ = verify_link(app)
    check_error(get(client, "/api/auth/verify-email?token=" + reset_tok), 400, "VALIDATION_ERROR",
                "Invalid or expired token", "INVALID_TOKEN", "token")
    check_error(post(client, "/api/auth/reset-password", {"token": verify_tok, "newPassword": "a whole new one"}),
                400, "VALIDATION_ERROR", "Invalid or expired token", "INVALID_TOKEN", "token")
    assert db_rows(app, "SELECT email_verified FROM users") == [(0,)]
    assert sign_in(client).status_int == 200
    # Both still work for their own purpose.
    assert get(client, "/api/auth/verify-email?token=" + verify_tok).status_int == 200
    assert post(client, "/api/auth/reset-password",
                {"token": reset_tok, "newPassword": "a whole new one"}).status_int == 200


def test_head_get_session(client):
    user, token = new_user(client)
    resp = client.head("/api/auth/get-session", headers=bearer(token), expect_errors=True)
    assert resp.status_int == 200
    assert resp.body == b""


###############################################################################
# Links, BASE_URL and trusted origins (OPERATIONS.md §3, API.md §1.7)
###############################################################################


def test_links_use_base_url_with_path_prefix(mk):
    app = mk(env={"BASE_URL": "https://example.com/tracker"})
    client = api(app)
    new_user(client)
    assert request_reset(client, redirect="https://example.com/tracker/done").status_int == 200
    link = reset_link(app)
    m = re.match(r"^https://example\.com/tracker/api/auth/reset-password/([A-Za-z0-9_-]{32})\?callbackURL=(.*)$",
                 link)
    assert m, link
    assert unquote(m.group(2)) == "https://example.com/tracker/done"
    post(client, "/api/auth/send-verification-email", {"email": "ada@example.com"})
    vlink = link_in(mails(app)[-1]["body"])
    assert vlink.startswith("https://example.com/tracker/api/auth/verify-email?token="), vlink


def test_request_host_is_trusted_only_without_base_url(mk):
    app = mk(drop=("BASE_URL",))
    client = api(app)
    new_user(client)
    host = {"Host": "app.local:8080"}
    resp = post(client, "/api/auth/sign-in/email",
                {"email": "ada@example.com", "password": PASSWORD, "callbackURL": "http://app.local:8080/x"}, host)
    assert resp.status_int == 200, resp.body
    resp = post(client, "/api/auth/sign-in/email",
                {"email": "ada@example.com", "password": PASSWORD, "callbackURL": "http://other.local:8080/x"}, host)
    check_error(resp, 400, "VALIDATION_ERROR", "Invalid redirect URL", "INVALID_CALLBACK_URL", "callbackURL")
    # With BASE_URL set, the Host header is not trusted.
    app2 = mk(db="other.db")
    c2 = api(app2)
    new_user(c2)
    resp = post(c2, "/api/auth/sign-in/email",
                {"email": "ada@example.com", "password": PASSWORD, "callbackURL": "http://app.local:8080/x"}, host)
    check_error(resp, 400, "VALIDATION_ERROR", "Invalid redirect URL", "INVALID_CALLBACK_URL", "callbackURL")


###############################################################################
# Startup steps 6–8 (OPERATIONS.md §4)
###############################################################################


def test_startup_deletes_expired_sessions_and_tokens(mk, clock):
    app1 = mk(clock=clock)
    client = api(app1)
    user, token = new_user(client)
    request_reset(client)
    post(client, "/api/auth/send-verification-email", {"email": "ada@example.com"})
    assert db_rows(app1, "SELECT count(*) FROM verifications")[0][0] >= 2
    app1.close()
    clock.advance(days=8)
    app2 = mk(clock=clock)
    assert db_rows(app2, "SELECT count(*) FROM sessions") == [(0,)]
    assert db_rows(app2, "SELECT count(*) FROM verifications") == [(0,)]
    assert db_rows(app2, "SELECT count(*) FROM users") == [(1,)]


def test_startup_keeps_live_sessions(mk, clock):
    app1 = mk(clock=clock)
    user, token = new_user(api(app1))
    app1.close()
    clock.advance(days=3)
    app2 = mk(clock=clock)
    assert whoami(api(app2), bearer(token)) == user["id"]


def test_admin_env_leaves_existing_user_unchanged(mk):
    app1 = mk()
    user, _ = new_user(api(app1))
    app1.close()
    app2 = mk(env={"AUTH_ADMIN_EMAIL": "ada@example.com", "AUTH_ADMIN_PASSWORD": "another password"})
    client = api(app2)
    assert db_rows(app2, "SELECT role, email_verified, name FROM users") == [("member", 0, "Ada Quill")]
    assert sign_in(client).status_int == 200
    assert sign_in(client, password="another password").status_int == 401


def test_admin_env_created_once(mk):
    env = {"AUTH_ADMIN_EMAIL": ADMIN_EMAIL, "AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "AUTH_ADMIN_NAME": "Root"}
    app1 = mk(env=env)
    assert db_rows(app1, "SELECT email, role, email_verified, name FROM users") == [
        (ADMIN_EMAIL, "admin", 1, "Root")]
    stored = db_rows(app1, "SELECT password FROM accounts")
    assert len(stored) == 1 and phc_params(stored[0][0]) == (8, 1, 1)
    app1.close()
    app2 = mk(env=env)
    assert db_rows(app2, "SELECT count(*) FROM users") == [(1,)]


@pytest.mark.parametrize("env,var", [
    ({"AUTH_ADMIN_EMAIL": ADMIN_EMAIL, "AUTH_ADMIN_PASSWORD": "short"}, "AUTH_ADMIN_PASSWORD"),
    ({"AUTH_ADMIN_EMAIL": "not-an-email", "AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}, "AUTH_ADMIN_EMAIL"),
])
def test_invalid_admin_env_fails_before_touching_the_database(mk, tmp_path, env, var):
    with pytest.raises((sovrium.StartupError, sovrium.ConfigError)) as info:
        mk(env=env, db="admin.db")
    assert var in str(info.value) or var in repr(getattr(info.value, "errors", ""))
    # Startup step 2: "The database is not touched yet."
    assert not (tmp_path / "admin.db").exists()


###############################################################################
# Odds and ends
###############################################################################


def test_passwords_are_not_trimmed(client):
    new_user(client, password="  pass word  ")
    assert sign_in(client, password="  pass word  ").status_int == 200
    check_error(sign_in(client, password="pass word"), 401, "UNAUTHORIZED", "Invalid email or password",
                "INVALID_EMAIL_OR_PASSWORD")


def test_member_type_errors_use_the_standard_messages(client):
    user, token = new_user(client)
    check_error(post(client, "/api/auth/change-password", {"currentPassword": PASSWORD, "newPassword": 12345678},
                     bearer(token)), 400, "VALIDATION_ERROR", "Field 'newPassword' must be a string",
                field="newPassword")
    check_error(post(client, "/api/auth/change-password", {"currentPassword": PASSWORD,
                                                           "newPassword": "brand new password",
                                                           "revokeOtherSessions": "yes"}, bearer(token)),
                400, "VALIDATION_ERROR", "Field 'revokeOtherSessions' must be a boolean", field="revokeOtherSessions")
    check_error(post(client, "/api/auth/revoke-session", {"token": 5}, bearer(token)), 400, "VALIDATION_ERROR",
                "Field 'token' must be a string", field="token")
    check_error(post(client, "/api/auth/request-password-reset", {}), 400, "VALIDATION_ERROR",
                "Field 'email' is required", field="email")
    check_error(post(client, "/api/auth/reset-password", {"newPassword": "brand new password"}), 400,
                "VALIDATION_ERROR", "Field 'token' is required", field="token")
    # §13.1: a member of the wrong JSON type gets the type message.
    check_error(post(client, "/api/auth/update-user", {"image": 5}, bearer(token)), 400, "VALIDATION_ERROR",
                "Field 'image' must be a string", field="image")


@pytest.mark.parametrize("method,path", [
    ("POST", "/api/auth/sign-up/email"), ("POST", "/api/auth/sign-in/email"), ("GET", "/api/auth/get-session"),
    ("GET", "/api/auth/verify-email?token=x&callbackURL=%2Fa"), ("GET", "/api/auth/list-sessions"),
])
def test_standard_headers_on_auth_responses(client, method, path):
    if method == "GET":
        resp = get(client, path)
    else:
        resp = post(client, path, {"name": "Ada", "email": "ada@example.com", "password": PASSWORD})
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert resp.headers.get("X-Request-Id")
    assert re.fullmatch(r"[1-9][0-9]*", resp.headers.get("X-Sovrium-Schema-Version", ""))
    if resp.status_int != 302:
        assert resp.content_type == "application/json"


def test_sliding_expiry_on_any_authenticated_request(app, client, clock):
    user, token = new_user(client)
    now = clock.advance(days=2)
    resp = get(client, "/api/tables/notes/records", cookie_for(token))
    assert resp.status_int == 200, resp.body
    check_session_cookie(resp, token)
    assert db_rows(app, "SELECT expires_at FROM sessions WHERE token = ?", (token,)) == [
        (ts(now + timedelta(days=7)),)]


@pytest.mark.parametrize("target", ["/\t/evil.example", "/\n/evil.example", "/\\evil.example", "//evil.example",
                                    "https://evil.example/x", "javascript:alert(1)", "evil.example"])
def test_redirect_targets_cannot_leave_the_site(client, target):
    resp = client.get("/api/auth/reset-password/" + "a" * 32, {"callbackURL": target}, expect_errors=True)
    assert resp.status_int == 400 and resp.json["error"] == "INVALID_CALLBACK_URL"
    resp = client.post_json("/api/auth/sign-up/email", {"name": "A", "email": "a@example.com",
                                                        "password": "long-password", "callbackURL": target},
                            expect_errors=True)
    assert resp.status_int == 400 and resp.json["error"] == "INVALID_CALLBACK_URL"


def test_reset_tokens_in_paths_are_not_logged(client, caplog):
    with caplog.at_level("INFO", logger="sovrium"):
        client.get("/api/auth/reset-password/" + "b" * 32, {"callbackURL": "/done"})
    lines = [r.getMessage() for r in caplog.records if " request " in r.getMessage()]
    assert lines and all("b" * 32 not in line for line in lines)
    assert "path=/api/auth/reset-password/[redacted]" in lines[-1]
