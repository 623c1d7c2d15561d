"""User administration, first admin and embedding identities, written from the spec.

API.md §1.5 (transport), §1.6 (role read on every request, bans), §1.11 (envelope), §1.13
(admin-only surfaces), §13.1 (user/session objects, reason codes), §13.11 (/api/auth/admin/*),
§16 (RBAC), §17 clarification 5 (CANNOT_MODIFY_SELF before LAST_ADMIN); OPERATIONS.md §3, §4
step 7 (first admin from AUTH_ADMIN_*), §11 (app.create_user, app.as_user).

Every test drives the WSGI app with WebTest and signs in over HTTP; tokens are sent as
``Authorization: Bearer <token>`` except in the impersonation tests, which follow the browser
(cookie) flow because the admin session is kept in the ``better-auth.admin_session`` cookie.
"""

import copy
import re
import threading
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

import pytest
import webtest

import sovrium

T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=timezone.utc)
ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "root-password-1"
PASSWORD = "member-password"
ID_RE = re.compile(r"^[A-Za-z0-9]{32}$")

CONFIG = {
    "name": "admin-app",
    "auth": {"strategies": [{"type": "emailAndPassword"}], "roles": ["editor"]},
    "tables": [
        {"id": 1, "name": "notes",
         "fields": [{"id": 1, "name": "title", "type": "single-line-text", "required": True}]},
        # Readable (and writable) only by editors and admins: invisible to members and viewers.
        {"id": 2, "name": "secrets",
         "fields": [{"id": 1, "name": "code", "type": "single-line-text"}],
         "permissions": {"read": ["editor"], "create": ["editor"]}},
    ],
}

USER_KEYS = {"id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt", "role",
             "banned", "banReason", "banExpires", "twoFactorEnabled"}
SESSION_KEYS = {"id", "token", "userId", "expiresAt", "createdAt", "updatedAt", "ipAddress",
                "userAgent", "impersonatedBy", "activeOrganizationId"}

UNAUTHORIZED = {"success": False, "message": "Authentication required", "code": "UNAUTHORIZED"}
FORBIDDEN = {"success": False, "message": "You do not have permission to perform this action",
             "code": "FORBIDDEN"}
A = "/api/auth/admin/"


def ts(dt):
    """The ISO 8601 form of API.md §1.4 (milliseconds, Z)."""
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def envelope(resp, status, code, message=None, error=None):
    """Check a §1.11 error envelope; return the body."""
    assert resp.status_int == status, resp.text
    assert resp.content_type == "application/json"
    body = resp.json
    assert body["success"] is False
    assert body["code"] == code
    if message is not None:
        assert body["message"] == message
    if error is not None:
        assert body.get("error") == error, body
    if code == "VALIDATION_ERROR":
        assert isinstance(body.get("errors"), list) and body["errors"], body
        assert body["message"] == body["errors"][0]["message"]
    else:
        assert "errors" not in body
    assert set(body) <= {"success", "message", "code", "errors", "error"}
    return body


def without_error(body):
    return {k: v for k, v in body.items() if k != "error"}


def assert_user(user, **expected):
    assert set(user) == USER_KEYS, user
    assert ID_RE.match(user["id"])
    for key, value in expected.items():
        assert user[key] == value, (key, user)
    return user


def cookie_value(client, name):
    """The raw token part of a signed cookie stored in a WebTest client (None when absent)."""
    value = client.cookies.get(name)
    if value is None:
        return None
    return unquote(value.strip('"')).split(".")[0]


class Env:
    """An auth app on a fake clock with the first admin from AUTH_ADMIN_*, signed in."""

    def __init__(self, app, now):
        self.app, self.now = app, now
        self.admin_token = self.token(ADMIN_EMAIL, ADMIN_PASSWORD)
        self.admin_id = self.get("/api/auth/get-session", self.admin_token).json["user"]["id"]

    def client(self):
        return webtest.TestApp(self.app.wsgi)

    def advance(self, **delta):
        self.now[0] = self.now[0] + timedelta(**delta)

    def get(self, path, token=None, **params):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client().get(path, params=params, headers=headers, expect_errors=True)

    def post(self, path, body=None, token=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client().post_json(path, {} if body is None else body, headers=headers,
                                       expect_errors=True)

    def admin_get(self, endpoint, **params):
        resp = self.get(A + endpoint, self.admin_token, **params)
        assert resp.status_int == 200, resp.text
        return resp.json

    def admin_post(self, endpoint, body=None):
        resp = self.post(A + endpoint, body, self.admin_token)
        assert resp.status_int == 200, resp.text
        return resp.json

    def sign_in(self, email, password):
        return self.post("/api/auth/sign-in/email", {"email": email, "password": password})

    def token(self, email, password):
        resp = self.sign_in(email, password)
        assert resp.status_int == 200, resp.text
        return resp.json["token"]

    def user(self, email, role="member", name=None, password=PASSWORD):
        """Create a user with app.create_user and sign in: (user id, token)."""
        user = self.app.create_user(email, password, name=name or email.split("@")[0].title(),
                                    role=role)
        return user["id"], self.token(email, password)

    def session_user(self, token):
        """The user a token authenticates, or None when the request is anonymous."""
        resp = self.get("/api/auth/get-session", token)
        assert resp.status_int == 200, resp.text
        return None if resp.json is None else resp.json["user"]

    def create_note(self, token, title="n"):
        return self.post("/api/tables/notes/records", {"title": title}, token)


@pytest.fixture
def env(make_app):
    now = [T0]
    app = make_app(CONFIG, env={"AUTH_ADMIN_EMAIL": ADMIN_EMAIL, "AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD},
                   clock=lambda: now[0])
    return Env(app, now)


@pytest.fixture
def member(env):
    return env.user("mia@example.com", "member", name="Mia Member")


@pytest.fixture
def viewer(env):
    return env.user("vic@example.com", "viewer", name="Vic Viewer")


###############################################################################
# Access: anonymous 401, non-admin 403 on every /api/auth/admin/* endpoint
###############################################################################

ENDPOINTS = [
    ("GET", "list-users"), ("GET", "get-user"), ("POST", "create-user"), ("POST", "update-user"),
    ("POST", "set-role"), ("POST", "ban-user"), ("POST", "unban-user"),
    ("POST", "list-user-sessions"), ("POST", "revoke-user-session"),
    ("POST", "revoke-user-sessions"), ("POST", "remove-user"), ("POST", "set-user-password"),
    ("POST", "impersonate-user"), ("POST", "stop-impersonating"),
]


def _valid_request(endpoint, target_id):
    """Query/body that an admin could send successfully (so refusals come from access alone)."""
    bodies = {
        "get-user": {"id": target_id},
        "create-user": {"email": "new@example.com", "name": "New", "password": PASSWORD},
        "update-user": {"userId": target_id, "data": {"name": "Renamed"}},
        "set-role": {"userId": target_id, "role": "viewer"},
        "set-user-password": {"userId": target_id, "newPassword": "another-password"},
        "revoke-user-session": {"sessionToken": "x" * 32},
    }
    return bodies.get(endpoint, {"userId": target_id})


@pytest.mark.parametrize("method,endpoint", ENDPOINTS)
def test_anonymous_caller_gets_401(env, member, method, endpoint):
    target = member[0]
    req = _valid_request(endpoint, target)
    resp = env.get(A + endpoint, **req) if method == "GET" else env.post(A + endpoint, req)
    assert resp.status_int == 401
    assert without_error(resp.json) == UNAUTHORIZED


@pytest.mark.parametrize("method,endpoint", ENDPOINTS)
def test_garbage_token_is_anonymous_401(env, member, method, endpoint):
    req = _valid_request(endpoint, member[0])
    token = "not-a-session-token"
    resp = (env.get(A + endpoint, token, **req) if method == "GET"
            else env.post(A + endpoint, req, token))
    assert resp.status_int == 401
    assert without_error(resp.json) == UNAUTHORIZED


# stop-impersonating is excluded: its caller is, by design, the (non-admin) impersonated session.
@pytest.mark.parametrize("method,endpoint", [e for e in ENDPOINTS if e[1] != "stop-impersonating"])
@pytest.mark.parametrize("role", ["member", "viewer", "editor"])
def test_non_admin_caller_gets_403(env, method, endpoint, role):
    _, token = env.user(f"{role}@example.com", role)
    target, _ = env.user("target@example.com", "member")
    req = _valid_request(endpoint, target)
    resp = env.get(A + endpoint, token, **req) if method == "GET" else env.post(A + endpoint, req, token)
    assert resp.status_int == 403, resp.text
    assert without_error(resp.json) == FORBIDDEN
    # nothing happened
    assert env.admin_get("get-user", id=target)["user"]["name"] == "Target"
    assert env.admin_get("get-user", id=target)["user"]["role"] == "member"


@pytest.mark.parametrize("method,endpoint", [("POST", "ban-user"), ("POST", "set-role"),
                                             ("GET", "list-users")])
def test_access_is_checked_before_the_body(env, member, method, endpoint):
    """API.md §1.12: surface access (step 6) comes before body/parameter checks (step 8)."""
    bad = {"limit": "0"} if method == "GET" else {}
    anon = env.get(A + endpoint, **bad) if method == "GET" else env.post(A + endpoint, bad)
    assert anon.status_int == 401
    token = member[1]
    resp = env.get(A + endpoint, token, **bad) if method == "GET" else env.post(A + endpoint, bad, token)
    assert resp.status_int == 403


def test_admin_routes_do_not_exist_without_auth(make_app):
    client = webtest.TestApp(make_app().wsgi)
    resp = client.get(A + "list-users", expect_errors=True)
    envelope(resp, 404, "NOT_FOUND", "Route not found")
    resp = client.post_json(A + "ban-user", {"userId": "x"}, expect_errors=True)
    envelope(resp, 404, "NOT_FOUND", "Route not found")


def test_wrong_method_is_405(env):
    resp = env.client().get(A + "ban-user", headers={"Authorization": f"Bearer {env.admin_token}"},
                            expect_errors=True)
    envelope(resp, 405, "METHOD_NOT_ALLOWED", "Method not allowed")
    assert "POST" in resp.headers["Allow"]


###############################################################################
# Unknown userId → 404 USER_NOT_FOUND
###############################################################################

UNKNOWN = "Zz" * 16


@pytest.mark.parametrize("method,endpoint,req", [
    ("GET", "get-user", {"id": UNKNOWN}),
    ("POST", "update-user", {"userId": UNKNOWN, "data": {"name": "X"}}),
    ("POST", "set-role", {"userId": UNKNOWN, "role": "member"}),
    ("POST", "ban-user", {"userId": UNKNOWN}),
    ("POST", "unban-user", {"userId": UNKNOWN}),
    ("POST", "list-user-sessions", {"userId": UNKNOWN}),
    ("POST", "revoke-user-sessions", {"userId": UNKNOWN}),
    ("POST", "remove-user", {"userId": UNKNOWN}),
    ("POST", "set-user-password", {"userId": UNKNOWN, "newPassword": "long-enough-pw"}),
    ("POST", "impersonate-user", {"userId": UNKNOWN}),
])
def test_unknown_user_id_is_404_user_not_found(env, method, endpoint, req):
    token = env.admin_token
    resp = env.get(A + endpoint, token, **req) if method == "GET" else env.post(A + endpoint, req, token)
    envelope(resp, 404, "NOT_FOUND", "User not found", "USER_NOT_FOUND")


def test_missing_user_id_is_400(env):
    resp = env.post(A + "ban-user", {}, env.admin_token)
    body = envelope(resp, 400, "VALIDATION_ERROR", "Field 'userId' is required")
    assert body["errors"] == [{"field": "userId", "message": "Field 'userId' is required"}]
    resp = env.post(A + "ban-user", {"userId": 5}, env.admin_token)
    body = envelope(resp, 400, "VALIDATION_ERROR", "Field 'userId' must be a string")
    assert body["errors"] == [{"field": "userId", "message": "Field 'userId' must be a string"}]


def test_get_user_without_id_is_400(env):
    resp = env.get(A + "get-user", env.admin_token)
    envelope(resp, 400, "VALIDATION_ERROR")


###############################################################################
# First admin from AUTH_ADMIN_* (OPERATIONS.md §3, §4 step 7)
###############################################################################

def test_first_admin_is_created_at_construction(env):
    resp = env.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD)
    assert resp.status_int == 200
    body = resp.json
    assert body["redirect"] is False
    assert ID_RE.match(body["token"])
    assert resp.headers["set-auth-token"] == body["token"]
    assert_user(body["user"], email=ADMIN_EMAIL, role="admin", emailVerified=True,
                name="Administrator", banned=False, banReason=None, banExpires=None, image=None,
                twoFactorEnabled=False, createdAt=ts(T0), updatedAt=ts(T0))
    # it is an admin for real
    listing = env.admin_get("list-users")
    assert listing["total"] == 1
    assert listing["users"][0]["id"] == env.admin_id


def test_first_admin_name_from_auth_admin_name(make_app):
    app = make_app(CONFIG, env={"AUTH_ADMIN_EMAIL": "  Boss@Example.COM ",
                                "AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "AUTH_ADMIN_NAME": "Big Boss"})
    resp = webtest.TestApp(app.wsgi).post_json(
        "/api/auth/sign-in/email", {"email": "boss@example.com", "password": ADMIN_PASSWORD})
    assert_user(resp.json["user"], name="Big Boss", email="boss@example.com", role="admin",
                emailVerified=True)


def test_first_admin_is_not_created_twice_nor_changed_on_restart(make_app):
    envs = {"AUTH_ADMIN_EMAIL": ADMIN_EMAIL, "AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
    first = make_app(CONFIG, db_name="restart.db", env=envs)
    c = webtest.TestApp(first.wsgi)
    original = c.post_json("/api/auth/sign-in/email",
                           {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).json["user"]
    first.close()
    second = make_app(CONFIG, db_name="restart.db",
                      env={**envs, "AUTH_ADMIN_PASSWORD": "a-new-password", "AUTH_ADMIN_NAME": "New"})
    c = webtest.TestApp(second.wsgi)
    resp = c.post_json("/api/auth/sign-in/email", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert resp.json["user"] == original
    resp = c.post_json("/api/auth/sign-in/email", {"email": ADMIN_EMAIL, "password": "a-new-password"},
                       expect_errors=True)
    envelope(resp, 401, "UNAUTHORIZED", "Invalid email or password", "INVALID_EMAIL_OR_PASSWORD")
    token = c.post_json("/api/auth/sign-in/email",
                        {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).json["token"]
    listing = c.get(A + "list-users", headers={"Authorization": f"Bearer {token}"}).json
    assert listing["total"] == 1


def test_existing_user_with_admin_email_is_left_unchanged(make_app):
    first = make_app(CONFIG, db_name="existing.db")
    user = first.create_user(ADMIN_EMAIL, PASSWORD, name="Plain Member", role="member")
    first.close()
    second = make_app(CONFIG, db_name="existing.db",
                      env={"AUTH_ADMIN_EMAIL": ADMIN_EMAIL, "AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD})
    c = webtest.TestApp(second.wsgi)
    resp = c.post_json("/api/auth/sign-in/email", {"email": ADMIN_EMAIL, "password": PASSWORD})
    assert_user(resp.json["user"], id=user["id"], role="member", name="Plain Member")
    resp = c.post_json("/api/auth/sign-in/email", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
                       expect_errors=True)
    assert resp.status_int == 401


@pytest.mark.parametrize("var,value", [("AUTH_ADMIN_EMAIL", "not-an-email"),
                                       ("AUTH_ADMIN_PASSWORD", "short")])
def test_invalid_auth_admin_variables_refuse_construction(make_app, var, value):
    envs = {"AUTH_ADMIN_EMAIL": ADMIN_EMAIL, "AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, var: value}
    with pytest.raises((sovrium.StartupError, sovrium.ConfigError)) as info:
        make_app(CONFIG, env=envs)
    exc = info.value
    text = str(exc) + repr(getattr(exc, "errors", ""))
    assert var in text


def test_auth_admin_variables_without_auth_are_ignored(make_app):
    app = make_app(env={"AUTH_ADMIN_EMAIL": ADMIN_EMAIL, "AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD})
    resp = webtest.TestApp(app.wsgi).get("/api/tables/projects/records")
    assert resp.status_int == 200


###############################################################################
# list-users
###############################################################################

PEOPLE = [  # email, name, role, emailVerified
    ("alice@example.com", "Alice Able", "member", False),
    ("bob@corp.test", "Bob Baker", "viewer", False),
    ("carol@example.com", "Carol Crane", "editor", True),
    ("dave@corp.test", "Dave Able", "member", False),
]


@pytest.fixture
def people(env):
    """The admin (created at T0) plus PEOPLE created one minute apart: email → user."""
    users = {ADMIN_EMAIL: env.admin_get("get-user", id=env.admin_id)["user"]}
    for email, name, role, verified in PEOPLE:
        env.advance(minutes=1)
        user = env.admin_post("create-user", {"email": email, "name": name, "password": PASSWORD,
                                              "role": role, "data": {"emailVerified": verified}})["user"]
        users[email] = user
    return users


def emails(listing):
    return [u["email"] for u in listing["users"]]


def test_list_users_default_order_and_envelope(env, people):
    resp = env.get(A + "list-users", env.admin_token)
    assert resp.content_type == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    listing = resp.json
    assert set(listing) == {"users", "total", "limit", "offset"}
    assert listing["total"] == 5
    assert listing["limit"] == 100
    assert listing["offset"] == 0
    assert emails(listing) == [ADMIN_EMAIL] + [p[0] for p in PEOPLE]
    for user in listing["users"]:
        assert_user(user)
        assert user == people[user["email"]]


def test_list_users_sort_direction_desc(env, people):
    listing = env.admin_get("list-users", sortDirection="desc")
    assert emails(listing) == [p[0] for p in reversed(PEOPLE)] + [ADMIN_EMAIL]


@pytest.mark.parametrize("sort_by,key", [("email", "email"), ("name", "name")])
@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_list_users_sort_by_text(env, people, sort_by, key, direction):
    listing = env.admin_get("list-users", sortBy=sort_by, sortDirection=direction)
    expected = sorted(people.values(), key=lambda u: u[key], reverse=direction == "desc")
    assert emails(listing) == [u["email"] for u in expected]


def test_list_users_sort_by_role_ties_broken_by_id(env, people):
    listing = env.admin_get("list-users", sortBy="role")
    expected = sorted(people.values(), key=lambda u: (u["role"], u["id"]))
    assert [u["id"] for u in listing["users"]] == [u["id"] for u in expected]


def test_list_users_sort_by_updated_at(env, people):
    env.advance(minutes=5)
    env.admin_post("update-user", {"userId": people["alice@example.com"]["id"],
                                   "data": {"name": "Alice Again"}})
    listing = env.admin_get("list-users", sortBy="updatedAt", sortDirection="desc")
    assert emails(listing)[0] == "alice@example.com"
    assert listing["users"][0]["updatedAt"] == ts(env.now[0])


def test_list_users_equal_created_at_ordered_by_id(env):
    ids = [env.admin_post("create-user", {"email": f"same{i}@example.com", "name": f"Same {i}",
                                          "password": PASSWORD})["user"]["id"] for i in range(5)]
    listing = env.admin_get("list-users")
    # all created at T0 like the admin: the whole list is in id order
    assert [u["id"] for u in listing["users"]] == sorted(ids + [env.admin_id])


def test_list_users_search_email_contains_by_default(env, people):
    listing = env.admin_get("list-users", searchValue="corp")
    assert emails(listing) == ["bob@corp.test", "dave@corp.test"]
    assert listing["total"] == 2


@pytest.mark.parametrize("field,operator,value,expected", [
    ("name", "starts_with", "Al", ["alice@example.com"]),
    ("name", "contains", "Able", ["alice@example.com", "dave@corp.test"]),
    ("name", "ends_with", "Crane", ["carol@example.com"]),
    ("email", "ends_with", ".test", ["bob@corp.test", "dave@corp.test"]),
    ("email", "starts_with", "car", ["carol@example.com"]),
    ("email", "contains", "example.com", [ADMIN_EMAIL, "alice@example.com", "carol@example.com"]),
    ("email", "starts_with", "example", []),
])
def test_list_users_search_field_and_operator(env, people, field, operator, value, expected):
    listing = env.admin_get("list-users", searchField=field, searchOperator=operator, searchValue=value)
    assert emails(listing) == expected
    assert listing["total"] == len(expected)


def test_list_users_empty_parameters_are_absent(env, people):
    listing = env.admin_get("list-users", searchValue="", filterField="", sortBy="")
    assert emails(listing) == [ADMIN_EMAIL] + [p[0] for p in PEOPLE]


def test_list_users_search_treats_wildcards_literally(env, people):
    assert env.admin_get("list-users", searchValue="%")["total"] == 0
    assert env.admin_get("list-users", searchValue="_")["total"] == 0


@pytest.mark.parametrize("field,operator,value,expected", [
    ("role", "eq", "member", ["alice@example.com", "dave@corp.test"]),
    ("role", "ne", "member", [ADMIN_EMAIL, "bob@corp.test", "carol@example.com"]),
    ("role", None, "editor", ["carol@example.com"]),
    ("email", "eq", "bob@corp.test", ["bob@corp.test"]),
    ("name", "eq", "Dave Able", ["dave@corp.test"]),
    ("emailVerified", "eq", "true", [ADMIN_EMAIL, "carol@example.com"]),
    ("emailVerified", "eq", "false", ["alice@example.com", "bob@corp.test", "dave@corp.test"]),
    ("banned", "eq", "false", [ADMIN_EMAIL] + [p[0] for p in PEOPLE]),
])
def test_list_users_filter(env, people, field, operator, value, expected):
    params = {"filterField": field, "filterValue": value}
    if operator:
        params["filterOperator"] = operator
    listing = env.admin_get("list-users", **params)
    assert emails(listing) == expected
    assert listing["total"] == len(expected)


def test_list_users_filter_by_id_and_banned(env, people):
    bob = people["bob@corp.test"]
    listing = env.admin_get("list-users", filterField="id", filterValue=bob["id"])
    assert [u["id"] for u in listing["users"]] == [bob["id"]]
    env.admin_post("ban-user", {"userId": bob["id"]})
    listing = env.admin_get("list-users", filterField="banned", filterValue="true")
    assert emails(listing) == ["bob@corp.test"]
    assert listing["users"][0]["banned"] is True
    listing = env.admin_get("list-users", filterField="banned", filterValue="true", filterOperator="ne")
    assert listing["total"] == 4


def test_list_users_search_and_filter_combine(env, people):
    listing = env.admin_get("list-users", searchValue="example.com", filterField="role",
                            filterValue="member")
    assert emails(listing) == ["alice@example.com"]
    assert listing["total"] == 1


def test_list_users_limit_offset_and_total(env, people):
    listing = env.admin_get("list-users", limit="2", offset="1")
    assert emails(listing) == ["alice@example.com", "bob@corp.test"]
    assert (listing["total"], listing["limit"], listing["offset"]) == (5, 2, 1)
    listing = env.admin_get("list-users", limit="2", offset="4")
    assert emails(listing) == ["dave@corp.test"]
    listing = env.admin_get("list-users", offset="50")
    assert listing["users"] == [] and listing["total"] == 5
    listing = env.admin_get("list-users", limit="1000")
    assert listing["limit"] == 1000
    listing = env.admin_get("list-users", offset="9007199254740991")
    assert listing["users"] == [] and listing["offset"] == 9007199254740991


@pytest.mark.parametrize("params,field", [
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"offset": "-1"}, "offset"), ({"offset": "9007199254740992"}, "offset"), ({"sortBy": "password"}, "sortBy"),
    ({"sortDirection": "up"}, "sortDirection"), ({"searchField": "role", "searchValue": "x"}, "searchField"),
    ({"searchOperator": "like", "searchValue": "x"}, "searchOperator"),
    ({"filterField": "image", "filterValue": "x"}, "filterField"),
    ({"filterField": "role", "filterValue": "x", "filterOperator": "gt"}, "filterOperator"),
])
def test_list_users_bad_parameters_are_400(env, params, field):
    resp = env.get(A + "list-users", env.admin_token, **params)
    body = envelope(resp, 400, "VALIDATION_ERROR")
    assert body["errors"][0]["field"] == field


def test_list_users_limit_message(env):
    resp = env.get(A + "list-users", env.admin_token, limit="0")
    envelope(resp, 400, "VALIDATION_ERROR", "Parameter 'limit' must be between 1 and 1000")


###############################################################################
# get-user, create-user, update-user
###############################################################################

def test_get_user(env, member):
    uid, _ = member
    body = env.admin_get("get-user", id=uid)
    assert set(body) == {"user"}
    assert_user(body["user"], id=uid, email="mia@example.com", name="Mia Member", role="member",
                banned=False, createdAt=ts(T0))


def test_create_user_shape_and_sign_in(env):
    env.advance(hours=1)
    body = env.admin_post("create-user", {"email": "  New.Person@Example.COM ", "name": "  New Person ",
                                          "password": PASSWORD})
    assert set(body) == {"user"}
    user = assert_user(body["user"], email="new.person@example.com", name="New Person", role="member",
                       emailVerified=False, image=None, banned=False, banReason=None, banExpires=None,
                       twoFactorEnabled=False, createdAt=ts(env.now[0]), updatedAt=ts(env.now[0]))
    resp = env.sign_in("new.person@example.com", PASSWORD)
    assert resp.status_int == 200
    assert resp.json["user"]["id"] == user["id"]
    assert env.admin_get("get-user", id=user["id"])["user"] == user


def test_create_user_with_role_and_data(env):
    user = env.admin_post("create-user", {
        "email": "ed@example.com", "name": "Ed", "password": PASSWORD, "role": "editor",
        "data": {"emailVerified": True, "image": "https://img.example.com/ed.png"}})["user"]
    assert_user(user, role="editor", emailVerified=True, image="https://img.example.com/ed.png")
    admin2 = env.admin_post("create-user", {"email": "a2@example.com", "name": "A2",
                                            "password": PASSWORD, "role": "admin"})["user"]
    assert admin2["role"] == "admin"
    token = env.token("a2@example.com", PASSWORD)
    assert env.get(A + "list-users", token).status_int == 200


def test_create_user_without_password_cannot_sign_in(env):
    user = env.admin_post("create-user", {"email": "nopw@example.com", "name": "No Pw"})["user"]
    assert_user(user, email="nopw@example.com")
    resp = env.sign_in("nopw@example.com", PASSWORD)
    envelope(resp, 401, "UNAUTHORIZED", "Invalid email or password", "INVALID_EMAIL_OR_PASSWORD")


def test_create_user_existing_email_is_409(env, member):
    for email in ("mia@example.com", "MIA@Example.com", ADMIN_EMAIL):
        resp = env.post(A + "create-user", {"email": email, "name": "Dup", "password": PASSWORD},
                        env.admin_token)
        envelope(resp, 409, "CONFLICT", "User already exists", "USER_ALREADY_EXISTS")
    assert env.admin_get("list-users")["total"] == 2


def test_create_user_unknown_role_is_400(env):
    resp = env.post(A + "create-user", {"email": "x@example.com", "name": "X", "password": PASSWORD,
                                        "role": "superuser"}, env.admin_token)
    body = envelope(resp, 400, "VALIDATION_ERROR")
    assert body["errors"][0]["field"] == "role"
    assert env.admin_get("list-users")["total"] == 1


@pytest.mark.parametrize("password,ok", [
    ("a" * 7, False), ("a" * 8, True), ("a" * 128, True), ("a" * 129, False),
    ("\U0001F600" * 7, False), ("\U0001F600" * 8, True),        # code points, not bytes/UTF-16
    ("\U0001F600" * 128, True), ("\U0001F600" * 129, False),
])
def test_create_user_password_length_rules(env, password, ok):
    resp = env.post(A + "create-user", {"email": "pw@example.com", "name": "Pw", "password": password},
                    env.admin_token)
    if ok:
        assert resp.status_int == 200, resp.text
        assert env.sign_in("pw@example.com", password).status_int == 200
        return
    if len(password) < 8:
        body = envelope(resp, 400, "VALIDATION_ERROR", "Password must be at least 8 characters",
                        "PASSWORD_TOO_SHORT")
    else:
        body = envelope(resp, 400, "VALIDATION_ERROR", "Password must be at most 128 characters",
                        "PASSWORD_TOO_LONG")
    assert body["errors"][0]["field"] == "password"
    assert env.admin_get("list-users")["total"] == 1


def test_create_user_password_rules_follow_the_strategy(make_app):
    cfg = copy.deepcopy(CONFIG)
    cfg["auth"]["strategies"] = [{"type": "emailAndPassword", "minPasswordLength": 12,
                                  "maxPasswordLength": 20}]
    now = [T0]
    e = Env(make_app(cfg, env={"AUTH_ADMIN_EMAIL": ADMIN_EMAIL, "AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD},
                     clock=lambda: now[0]), now)
    resp = e.post(A + "create-user", {"email": "p@example.com", "name": "P", "password": "a" * 11},
                  e.admin_token)
    envelope(resp, 400, "VALIDATION_ERROR", "Password must be at least 12 characters", "PASSWORD_TOO_SHORT")
    resp = e.post(A + "create-user", {"email": "p@example.com", "name": "P", "password": "a" * 21},
                  e.admin_token)
    envelope(resp, 400, "VALIDATION_ERROR", "Password must be at most 20 characters", "PASSWORD_TOO_LONG")
    assert e.post(A + "create-user", {"email": "p@example.com", "name": "P", "password": "a" * 12},
                  e.admin_token).status_int == 200


def test_create_user_invalid_email_and_missing_members(env):
    resp = env.post(A + "create-user", {"email": "not-an-email", "name": "X", "password": PASSWORD},
                    env.admin_token)
    body = envelope(resp, 400, "VALIDATION_ERROR", "Invalid email address", "INVALID_EMAIL")
    assert body["errors"][0]["field"] == "email"
    resp = env.post(A + "create-user", {"name": "X", "password": PASSWORD}, env.admin_token)
    body = envelope(resp, 400, "VALIDATION_ERROR", "Field 'email' is required")
    assert body["errors"][0] == {"field": "email", "message": "Field 'email' is required"}
    resp = env.post(A + "create-user", {"email": "x@example.com", "password": PASSWORD}, env.admin_token)
    body = envelope(resp, 400, "VALIDATION_ERROR", "Field 'name' is required")
    assert body["errors"][0] == {"field": "name", "message": "Field 'name' is required"}
    assert env.admin_get("list-users")["total"] == 1


def test_update_user(env, member):
    uid, _ = member
    env.advance(minutes=30)
    user = env.admin_post("update-user", {"userId": uid, "data": {
        "name": "Mia Renamed", "email": "Mia.New@Example.com", "emailVerified": True,
        "image": "https://img.example.com/mia.png"}})["user"]
    assert_user(user, id=uid, name="Mia Renamed", email="mia.new@example.com", emailVerified=True,
                image="https://img.example.com/mia.png", role="member", createdAt=ts(T0),
                updatedAt=ts(env.now[0]))
    assert env.admin_get("get-user", id=uid)["user"] == user
    assert env.sign_in("mia.new@example.com", PASSWORD).status_int == 200
    assert env.sign_in("mia@example.com", PASSWORD).status_int == 401


def test_update_user_to_an_existing_email_is_409(env, member):
    uid, _ = member
    resp = env.post(A + "update-user", {"userId": uid, "data": {"email": "ROOT@example.com"}},
                    env.admin_token)
    envelope(resp, 409, "CONFLICT", "User already exists", "USER_ALREADY_EXISTS")
    assert env.admin_get("get-user", id=uid)["user"]["email"] == "mia@example.com"


def test_admin_may_update_own_profile(env):
    """Only ban, remove and role changes are refused on oneself (§13.11)."""
    user = env.admin_post("update-user", {"userId": env.admin_id, "data": {"name": "Chief"}})["user"]
    assert_user(user, id=env.admin_id, name="Chief", role="admin")


def test_update_user_cannot_change_role_or_ban(env, member):
    """update-user's data has name, image, email, emailVerified only: role and ban state are
    changed through set-role / ban-user and their safety rules, never around them (other members
    are ignored, §1.2, or refused)."""
    uid, _ = member
    for target, data in ((uid, {"role": "admin", "banned": True, "banReason": "x"}),
                         (env.admin_id, {"role": "member"})):
        resp = env.post(A + "update-user", {"userId": target, "data": data}, env.admin_token)
        assert resp.status_int in (200, 400), resp.text
    assert_user(env.admin_get("get-user", id=uid)["user"], role="member", banned=False, banReason=None)
    assert_user(env.admin_get("get-user", id=env.admin_id)["user"], role="admin")


def test_update_user_invalid_values(env, member):
    uid, _ = member
    resp = env.post(A + "update-user", {"userId": uid, "data": {"email": "nope"}}, env.admin_token)
    envelope(resp, 400, "VALIDATION_ERROR", "Invalid email address", "INVALID_EMAIL")
    resp = env.post(A + "update-user", {"userId": uid, "data": {"image": "ftp://x.example.com/a"}},
                    env.admin_token)
    envelope(resp, 400, "VALIDATION_ERROR")
    assert env.admin_get("get-user", id=uid)["user"]["email"] == "mia@example.com"


###############################################################################
# set-role
###############################################################################

def test_set_role_changes_role_at_the_next_request(env, viewer):
    uid, token = viewer
    resp = env.create_note(token)
    assert resp.status_int == 403
    assert without_error(resp.json) == FORBIDDEN
    user = env.admin_post("set-role", {"userId": uid, "role": "member"})["user"]
    assert_user(user, id=uid, role="member")
    resp = env.create_note(token)           # same token, no new sign-in
    assert resp.status_int == 201, resp.text
    assert resp.json["createdBy"] == uid


def test_set_role_demotion_takes_effect_at_once(env, member):
    uid, token = member
    assert env.create_note(token).status_int == 201
    env.admin_post("set-role", {"userId": uid, "role": "viewer"})
    assert env.create_note(token).status_int == 403
    assert env.get("/api/tables/notes/records", token).status_int == 200


def test_set_role_to_custom_role_and_to_admin(env, member):
    uid, token = member
    assert env.get("/api/tables/secrets/records", token).status_int == 404
    assert env.admin_post("set-role", {"userId": uid, "role": "editor"})["user"]["role"] == "editor"
    assert env.get("/api/tables/secrets/records", token).status_int == 200
    assert env.get(A + "list-users", token).status_int == 403
    assert env.admin_post("set-role", {"userId": uid, "role": "admin"})["user"]["role"] == "admin"
    assert env.get(A + "list-users", token).status_int == 200


def test_demoted_admin_loses_admin_access_at_once(env):
    uid, token = env.user("second@example.com", "admin")
    assert env.get(A + "list-users", token).status_int == 200
    env.admin_post("set-role", {"userId": uid, "role": "member"})
    resp = env.get(A + "list-users", token)
    assert resp.status_int == 403


@pytest.mark.parametrize("role", ["superuser", "Admin", "all", "authenticated", ""])
def test_set_role_unknown_role_is_400(env, member, role):
    uid, _ = member
    resp = env.post(A + "set-role", {"userId": uid, "role": role}, env.admin_token)
    envelope(resp, 400, "VALIDATION_ERROR")
    assert env.admin_get("get-user", id=uid)["user"]["role"] == "member"


###############################################################################
# ban-user / unban-user
###############################################################################

def test_ban_user_deletes_sessions_and_refuses_sign_in(env, member):
    uid, token = member
    token2 = env.token("mia@example.com", PASSWORD)
    assert len(env.admin_post("list-user-sessions", {"userId": uid})["sessions"]) == 2
    env.advance(minutes=1)
    body = env.admin_post("ban-user", {"userId": uid, "banReason": "spam"})
    assert set(body) == {"user"}
    assert_user(body["user"], id=uid, banned=True, banReason="spam", banExpires=None)
    assert env.admin_post("list-user-sessions", {"userId": uid}) == {"sessions": []}
    for t in (token, token2):
        assert env.session_user(t) is None
        resp = env.get("/api/tables/notes/records", t)
        assert resp.status_int == 401
        assert without_error(resp.json) == UNAUTHORIZED
    resp = env.sign_in("mia@example.com", PASSWORD)
    envelope(resp, 403, "FORBIDDEN", "You have been banned from this application", "BANNED_USER")
    assert "set-auth-token" not in resp.headers
    assert env.admin_post("list-user-sessions", {"userId": uid}) == {"sessions": []}


def test_banned_user_wrong_password_is_still_401(env, member):
    uid, _ = member
    env.admin_post("ban-user", {"userId": uid})
    resp = env.sign_in("mia@example.com", "wrong-password")
    envelope(resp, 401, "UNAUTHORIZED", "Invalid email or password", "INVALID_EMAIL_OR_PASSWORD")


def test_ban_expiry_is_lifted_on_next_sign_in(env, member):
    uid, _ = member
    user = env.admin_post("ban-user", {"userId": uid, "banReason": "cool off",
                                       "banExpiresIn": 3600})["user"]
    assert_user(user, banned=True, banReason="cool off", banExpires=ts(T0 + timedelta(hours=1)))
    env.advance(minutes=59)
    resp = env.sign_in("mia@example.com", PASSWORD)
    envelope(resp, 403, "FORBIDDEN", error="BANNED_USER")
    env.advance(minutes=1, seconds=1)
    resp = env.sign_in("mia@example.com", PASSWORD)
    assert resp.status_int == 200, resp.text
    assert_user(resp.json["user"], id=uid, banned=False, banReason=None, banExpires=None)
    assert env.session_user(resp.json["token"])["id"] == uid
    assert_user(env.admin_get("get-user", id=uid)["user"], banned=False, banReason=None,
                banExpires=None)


def test_ban_expires_in_must_be_an_integer(env, member):
    uid, _ = member
    resp = env.post(A + "ban-user", {"userId": uid, "banExpiresIn": "soon"}, env.admin_token)
    body = envelope(resp, 400, "VALIDATION_ERROR", "Field 'banExpiresIn' must be an integer")
    assert body["errors"][0]["field"] == "banExpiresIn"
    assert env.admin_get("get-user", id=uid)["user"]["banned"] is False


def test_unban_user(env, member):
    uid, _ = member
    env.admin_post("ban-user", {"userId": uid, "banReason": "spam", "banExpiresIn": 600})
    body = env.admin_post("unban-user", {"userId": uid})
    assert set(body) == {"user"}
    assert_user(body["user"], id=uid, banned=False, banReason=None, banExpires=None)
    token = env.token("mia@example.com", PASSWORD)
    assert env.create_note(token).status_int == 201


def test_admin_can_ban_another_admin(env):
    uid, token = env.user("other-admin@example.com", "admin")
    env.admin_post("ban-user", {"userId": uid})
    assert env.get(A + "list-users", token).status_int == 401
    envelope(env.sign_in("other-admin@example.com", PASSWORD), 403, "FORBIDDEN", error="BANNED_USER")


###############################################################################
# Sessions
###############################################################################

def test_list_user_sessions(env, member):
    uid, token = member
    env.advance(hours=1)
    token2 = env.token("mia@example.com", PASSWORD)
    body = env.admin_post("list-user-sessions", {"userId": uid})
    assert set(body) == {"sessions"}
    sessions = body["sessions"]
    assert {s["token"] for s in sessions} == {token, token2}
    for s in sessions:
        assert set(s) == SESSION_KEYS
        assert s["userId"] == uid
        assert s["impersonatedBy"] is None
        assert s["activeOrganizationId"] is None
        assert ID_RE.match(s["id"])
        created = T0 if s["token"] == token else T0 + timedelta(hours=1)
        assert s["createdAt"] == ts(created)
        assert s["expiresAt"] == ts(created + timedelta(days=7))
    # other users' sessions are not listed
    assert env.admin_post("list-user-sessions", {"userId": env.admin_id})["sessions"][0]["userId"] == env.admin_id


def test_list_user_sessions_omits_expired(env, member):
    uid, token = member
    env.advance(days=7, seconds=1)
    assert env.session_user(token) is None
    env.admin_token = env.token(ADMIN_EMAIL, ADMIN_PASSWORD)
    assert env.admin_post("list-user-sessions", {"userId": uid}) == {"sessions": []}


def test_revoke_user_session(env, member):
    uid, token = member
    token2 = env.token("mia@example.com", PASSWORD)
    body = env.admin_post("revoke-user-session", {"sessionToken": token})
    assert body == {"success": True}
    assert env.session_user(token) is None
    assert env.session_user(token2)["id"] == uid
    assert [s["token"] for s in env.admin_post("list-user-sessions", {"userId": uid})["sessions"]] == [token2]


def test_revoke_user_sessions(env, member):
    uid, token = member
    token2 = env.token("mia@example.com", PASSWORD)
    assert env.admin_post("revoke-user-sessions", {"userId": uid}) == {"success": True}
    assert env.session_user(token) is None
    assert env.session_user(token2) is None
    assert env.admin_post("list-user-sessions", {"userId": uid}) == {"sessions": []}
    # the user can sign in again; the admin's own session is untouched
    assert env.session_user(env.token("mia@example.com", PASSWORD))["id"] == uid
    assert env.session_user(env.admin_token)["id"] == env.admin_id


###############################################################################
# remove-user
###############################################################################

def test_remove_user(env, member):
    uid, token = member
    rec = env.create_note(token, "kept").json
    assert rec["createdBy"] == uid
    body = env.admin_post("remove-user", {"userId": uid})
    assert body == {"success": True}
    assert env.session_user(token) is None
    assert env.create_note(token).status_int == 401
    resp = env.get(A + "get-user", env.admin_token, id=uid)
    envelope(resp, 404, "NOT_FOUND", "User not found", "USER_NOT_FOUND")
    resp = env.post(A + "remove-user", {"userId": uid}, env.admin_token)
    envelope(resp, 404, "NOT_FOUND", "User not found", "USER_NOT_FOUND")
    resp = env.post(A + "list-user-sessions", {"userId": uid}, env.admin_token)
    envelope(resp, 404, "NOT_FOUND", "User not found", "USER_NOT_FOUND")
    envelope(env.sign_in("mia@example.com", PASSWORD), 401, "UNAUTHORIZED",
             "Invalid email or password", "INVALID_EMAIL_OR_PASSWORD")
    got = env.get(f"/api/tables/notes/records/{rec['id']}", env.admin_token)
    assert got.status_int == 200
    assert got.json["createdBy"] == uid
    assert got.json["updatedBy"] == uid
    assert env.admin_get("list-users")["total"] == 1
    # the e-mail address is free again
    again = env.admin_post("create-user", {"email": "mia@example.com", "name": "Mia 2",
                                           "password": PASSWORD})["user"]
    assert again["id"] != uid


###############################################################################
# set-user-password
###############################################################################

def test_set_user_password(env, member):
    uid, _ = member
    body = env.admin_post("set-user-password", {"userId": uid, "newPassword": "brand-new-password"})
    assert body == {"status": True}
    envelope(env.sign_in("mia@example.com", PASSWORD), 401, "UNAUTHORIZED", error="INVALID_EMAIL_OR_PASSWORD")
    assert env.sign_in("mia@example.com", "brand-new-password").status_int == 200


@pytest.mark.parametrize("password,error,message", [
    ("short", "PASSWORD_TOO_SHORT", "Password must be at least 8 characters"),
    ("x" * 129, "PASSWORD_TOO_LONG", "Password must be at most 128 characters"),
])
def test_set_user_password_length_rules(env, member, password, error, message):
    uid, _ = member
    resp = env.post(A + "set-user-password", {"userId": uid, "newPassword": password}, env.admin_token)
    body = envelope(resp, 400, "VALIDATION_ERROR", message, error)
    assert body["errors"][0]["field"] == "newPassword"
    assert env.sign_in("mia@example.com", PASSWORD).status_int == 200


###############################################################################
# Impersonation
###############################################################################

def signed_in_client(env, email, password):
    client = env.client()
    resp = client.post_json("/api/auth/sign-in/email", {"email": email, "password": password})
    return client, resp.json["token"]


def test_impersonate_and_stop_with_cookies(env, member):
    uid, member_token = member
    admin_client, admin_token = signed_in_client(env, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert cookie_value(admin_client, "better-auth.session_token") == admin_token
    env.advance(minutes=10)
    resp = admin_client.post_json(A + "impersonate-user", {"userId": uid})
    assert resp.status_int == 200
    body = resp.json
    assert set(body) == {"session", "user"}
    session = body["session"]
    assert set(session) == SESSION_KEYS
    assert session["userId"] == uid
    assert session["impersonatedBy"] == env.admin_id
    assert session["createdAt"] == ts(env.now[0])
    assert session["expiresAt"] == ts(env.now[0] + timedelta(hours=1))
    assert session["token"] not in (admin_token, member_token)
    assert_user(body["user"], id=uid, role="member")
    assert resp.headers["set-auth-token"] == session["token"]
    # the browser now carries the impersonation session; the admin session is kept aside
    assert cookie_value(admin_client, "better-auth.session_token") == session["token"]
    assert cookie_value(admin_client, "better-auth.admin_session") == admin_token
    current = admin_client.get("/api/auth/get-session").json
    assert current["user"]["id"] == uid
    assert current["session"]["impersonatedBy"] == env.admin_id
    # acting as the member: no admin powers
    assert admin_client.get(A + "list-users", expect_errors=True).status_int == 403
    # the admin's own session still exists
    assert env.session_user(admin_token)["id"] == env.admin_id

    resp = admin_client.post_json(A + "stop-impersonating", {})
    assert resp.status_int == 200, resp.text
    body = resp.json
    assert set(body) == {"session", "user"}
    assert body["session"]["token"] == admin_token
    assert body["session"]["userId"] == env.admin_id
    assert body["session"]["impersonatedBy"] is None
    assert_user(body["user"], id=env.admin_id, role="admin")
    assert cookie_value(admin_client, "better-auth.session_token") == admin_token
    assert admin_client.get("/api/auth/get-session").json["user"]["id"] == env.admin_id
    assert admin_client.get(A + "list-users").status_int == 200


def test_sign_out_while_impersonating_expires_both_cookies(env, member):
    """Clarification 4: sign-out removes the session cookie and better-auth.admin_session."""
    uid, _ = member
    client, _ = signed_in_client(env, ADMIN_EMAIL, ADMIN_PASSWORD)
    imp = client.post_json(A + "impersonate-user", {"userId": uid}).json["session"]["token"]
    resp = client.post_json("/api/auth/sign-out", {})
    assert resp.json == {"success": True}
    set_cookies = resp.headers.getall("Set-Cookie")
    for name in ("better-auth.session_token", "better-auth.admin_session"):
        matching = [c for c in set_cookies if c.startswith(name + "=")]
        assert matching and "max-age=0" in matching[0].lower(), set_cookies
    assert env.session_user(imp) is None
    assert client.get("/api/auth/get-session").json is None


def test_impersonation_with_bearer_and_one_hour_lifetime(env, member):
    uid, _ = member
    resp = env.post(A + "impersonate-user", {"userId": uid}, env.admin_token)
    assert resp.status_int == 200
    token = resp.json["session"]["token"]
    assert resp.headers["set-auth-token"] == token
    assert env.session_user(token)["id"] == uid
    assert env.create_note(token).json["createdBy"] == uid
    assert env.session_user(env.admin_token)["id"] == env.admin_id
    sessions = env.admin_post("list-user-sessions", {"userId": uid})["sessions"]
    assert [s["impersonatedBy"] for s in sessions if s["token"] == token] == [env.admin_id]
    env.advance(minutes=59)
    assert env.session_user(token)["id"] == uid
    env.advance(minutes=1, seconds=1)
    assert env.session_user(token) is None
    assert env.session_user(env.admin_token)["id"] == env.admin_id


def test_admins_cannot_be_impersonated(env):
    other, _ = env.user("other-admin@example.com", "admin")
    for target in (other, env.admin_id):
        resp = env.post(A + "impersonate-user", {"userId": target}, env.admin_token)
        envelope(resp, 403, "FORBIDDEN", error="CANNOT_IMPERSONATE_ADMIN")
    assert all(s["impersonatedBy"] is None
               for s in env.admin_post("list-user-sessions", {"userId": other})["sessions"])


def test_stop_impersonating_when_not_impersonating_is_400(env, member):
    resp = env.post(A + "stop-impersonating", {}, env.admin_token)
    envelope(resp, 400, "VALIDATION_ERROR")
    client, _ = signed_in_client(env, ADMIN_EMAIL, ADMIN_PASSWORD)
    resp = client.post_json(A + "stop-impersonating", {}, expect_errors=True)
    envelope(resp, 400, "VALIDATION_ERROR")
    assert client.get("/api/auth/get-session").json["user"]["id"] == env.admin_id


def test_stop_impersonating_anonymous_is_401(env):
    resp = env.post(A + "stop-impersonating", {})
    assert resp.status_int == 401
    assert without_error(resp.json) == UNAUTHORIZED


###############################################################################
# Safety rules (§13.11, clarification 5)
###############################################################################

@pytest.mark.parametrize("endpoint,extra", [("ban-user", {}), ("remove-user", {}),
                                            ("set-role", {"role": "member"})])
def test_last_admin_modifying_self_is_cannot_modify_self(env, endpoint, extra):
    """The only admin acting on themself breaks both rules: CANNOT_MODIFY_SELF is reported."""
    resp = env.post(A + endpoint, {"userId": env.admin_id, **extra}, env.admin_token)
    envelope(resp, 400, "VALIDATION_ERROR", error="CANNOT_MODIFY_SELF")
    assert_user(env.admin_get("get-user", id=env.admin_id)["user"], role="admin", banned=False)


@pytest.mark.parametrize("endpoint,extra", [("ban-user", {}), ("remove-user", {}),
                                            ("set-role", {"role": "viewer"})])
def test_admin_cannot_modify_self_even_with_other_admins(env, endpoint, extra):
    env.user("second@example.com", "admin")
    resp = env.post(A + endpoint, {"userId": env.admin_id, **extra}, env.admin_token)
    envelope(resp, 400, "VALIDATION_ERROR", error="CANNOT_MODIFY_SELF")
    assert env.get(A + "list-users", env.admin_token).status_int == 200


def test_admin_can_demote_and_remove_another_admin(env):
    b, b_token = env.user("b@example.com", "admin")
    c, _ = env.user("c@example.com", "admin")
    assert env.admin_post("set-role", {"userId": b, "role": "member"})["user"]["role"] == "member"
    assert env.get(A + "list-users", b_token).status_int == 403
    assert env.admin_post("remove-user", {"userId": c}) == {"success": True}
    admins = env.admin_get("list-users", filterField="role", filterValue="admin")
    assert [u["id"] for u in admins["users"]] == [env.admin_id]


@pytest.mark.parametrize("endpoint,extra", [("set-role", {"role": "member"}), ("remove-user", {})])
def test_banned_other_admin_is_not_the_last_admin(env, endpoint, extra):
    """With the caller still an admin, a (banned) second admin is never "the last admin"."""
    b, _ = env.user("b@example.com", "admin")
    env.admin_post("ban-user", {"userId": b})
    resp = env.post(A + endpoint, {"userId": b, **extra}, env.admin_token)
    assert resp.status_int == 200, resp.text


def test_two_admins_demoting_each_other_at_once_leave_one_admin(make_app):
    """The last admin cannot be demoted (LAST_ADMIN) even when two admins race each other."""
    for round_ in range(4):
        app = make_app(CONFIG, db_name=f"race{round_}.db")
        a = app.create_user("a@example.com", PASSWORD, name="A", role="admin")["id"]
        b = app.create_user("b@example.com", PASSWORD, name="B", role="admin")["id"]
        tokens = {}
        for email, uid in (("a@example.com", a), ("b@example.com", b)):
            tokens[uid] = webtest.TestApp(app.wsgi).post_json(
                "/api/auth/sign-in/email", {"email": email, "password": PASSWORD}).json["token"]
        barrier = threading.Barrier(2)
        results = {}

        def demote(caller, target):
            client = webtest.TestApp(app.wsgi)
            barrier.wait()
            results[caller] = client.post_json(
                A + "set-role", {"userId": target, "role": "member"},
                headers={"Authorization": f"Bearer {tokens[caller]}"}, expect_errors=True)

        threads = [threading.Thread(target=demote, args=(a, b)),
                   threading.Thread(target=demote, args=(b, a))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        statuses = {uid: r.status_int for uid, r in results.items()}
        winners = [uid for uid, s in statuses.items() if s == 200]
        assert len(winners) == 1, statuses
        loser = a if winners[0] == b else b
        resp = results[loser]
        if resp.status_int == 400:
            envelope(resp, 400, "VALIDATION_ERROR", error="LAST_ADMIN")
        else:
            assert resp.status_int == 403, resp.text
        listing = webtest.TestApp(app.wsgi).get(
            A + "list-users", {"filterField": "role", "filterValue": "admin"},
            headers={"Authorization": f"Bearer {tokens[winners[0]]}"}).json
        assert [u["id"] for u in listing["users"]] == winners
        app.close()


###############################################################################
# Embedding: app.create_user and app.as_user (OPERATIONS.md §11)
###############################################################################

def test_create_user_returns_user_dict(env):
    user = env.app.create_user("  Emb@Example.com ", PASSWORD, name="Emb User")
    assert_user(user, email="emb@example.com", name="Emb User", role="member", banned=False)
    resp = env.sign_in("emb@example.com", PASSWORD)
    assert resp.json["user"]["id"] == user["id"]
    assert env.admin_get("get-user", id=user["id"])["user"]["role"] == "member"
    assert env.app.create_user("emb2@example.com", PASSWORD, role="editor")["role"] == "editor"
    assert env.app.create_user("emb3@example.com", PASSWORD, role="admin")["role"] == "admin"


def test_create_user_errors(env):
    env.app.create_user("dup@example.com", PASSWORD)
    with pytest.raises(sovrium.ConflictError):
        env.app.create_user("DUP@example.com", PASSWORD)
    with pytest.raises(sovrium.ValidationError):
        env.app.create_user("x@example.com", PASSWORD, role="superuser")
    with pytest.raises(sovrium.ValidationError):
        env.app.create_user("y@example.com", "short")
    with pytest.raises(sovrium.ValidationError):
        env.app.create_user("not-an-email", PASSWORD)
    assert env.admin_get("list-users")["total"] == 2


def test_as_user_enforces_table_permissions(env):
    viewer = env.app.create_user("v@example.com", PASSWORD, role="viewer")["id"]
    member = env.app.create_user("m@example.com", PASSWORD, role="member")["id"]
    editor = env.app.create_user("e@example.com", PASSWORD, role="editor")["id"]

    with pytest.raises(sovrium.ForbiddenError) as info:
        env.app.as_user(viewer).table("notes").create({"title": "nope"})
    assert info.value.status == 403
    assert info.value.code == "FORBIDDEN"
    assert env.app.table("notes").count() == 0

    rec = env.app.as_user(member).table("notes").create({"title": "by member"})
    assert rec["createdBy"] == member and rec["updatedBy"] == member
    assert env.app.as_user(viewer).table("notes").get(rec["id"])["fields"]["title"] == "by member"
    assert env.app.as_user(viewer).table("notes").list()["pagination"]["total"] == 1

    for uid in (viewer, member):
        with pytest.raises(sovrium.NotFoundError):
            env.app.as_user(uid).table("secrets").list()
        with pytest.raises(sovrium.NotFoundError):
            env.app.as_user(uid).table("secrets").create({"code": "x"})
    secret = env.app.as_user(editor).table("secrets").create({"code": "s1"})
    assert secret["createdBy"] == editor
    assert env.app.as_user(env.admin_id).table("secrets").list()["pagination"]["total"] == 1
    # the system identity still bypasses everything
    assert env.app.table("secrets").get(secret["id"])["createdBy"] == editor


def test_as_user_reads_the_role_on_every_call(env, viewer):
    uid, _ = viewer
    handle = env.app.as_user(uid)
    with pytest.raises(sovrium.ForbiddenError):
        handle.table("notes").create({"title": "x"})
    env.admin_post("set-role", {"userId": uid, "role": "member"})
    assert env.app.as_user(uid).table("notes").create({"title": "x"})["createdBy"] == uid


def test_stored_role_no_longer_declared_is_treated_as_viewer(make_app):
    """API.md §1.6: a custom role removed from the configuration acts as `viewer`."""
    first = make_app(CONFIG, db_name="roles.db",
                     env={"AUTH_ADMIN_EMAIL": ADMIN_EMAIL, "AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD})
    ed = first.create_user("ed@example.com", PASSWORD, name="Ed", role="editor")["id"]
    first.close()
    cfg = copy.deepcopy(CONFIG)
    del cfg["auth"]["roles"]
    cfg["tables"][1]["permissions"] = {"read": ["member"]}
    now = [T0]
    e = Env(make_app(cfg, db_name="roles.db", clock=lambda: now[0]), now)
    token = e.token("ed@example.com", PASSWORD)
    assert e.create_note(token).status_int == 403
    assert e.get("/api/tables/notes/records", token).status_int == 200
    assert e.get("/api/tables/secrets/records", token).status_int == 404
    with pytest.raises(sovrium.ForbiddenError):
        e.app.as_user(ed).table("notes").create({"title": "x"})
    # the role is no longer assignable
    resp = e.post(A + "set-role", {"userId": ed, "role": "editor"}, e.admin_token)
    envelope(resp, 400, "VALIDATION_ERROR")
