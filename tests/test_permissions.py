"""Permissions in auth mode (API.md §1.6, §1.12, §1.13, §3, §4, §16; CONFIG.md §7).

Table-driven: (actor, method, url, body) → exact status and message, against one shared application
whose records are created fresh for every case, so cases never depend on each other.
Actors: anonymous, viewer, member, contractor (custom role), admin; `other` is a second member who
owns the rows that fail the row-level read rule.
"""

import copy
import glob
import json
import os
import string
import urllib.parse
import uuid

import pytest
import webtest
import yaml

import sovrium

TEST_ENV = {"SOVRIUM_ARGON2_PROFILE": "test", "SOVRIUM_RATE_LIMITS": "off"}
PASSWORD = "correct-horse-battery-42"
JSON = "application/json"

AUTH = "Authentication required"
FORBIDDEN = "You do not have permission to perform this action"
NOT_FOUND = "Resource not found"
ROUTE_NOT_FOUND = "Route not found"
ROW_RULE = "The record does not satisfy the row-level rule for this action"
INVALID = "One or more fields failed validation"
MISSING = 987654321  # a record id that never exists

SECRET_NOTES = "zebra-notes-7f3a"
SECRET_PIN = "kiwi-pin-91c2"
SECRET_INTERNAL = "mango-internal-55d0"

PERM_CONFIG = {
    "name": "perm-app",
    "version": "1.0.0",
    "auth": {
        "strategies": [{"type": "emailAndPassword"}],
        "roles": ["contractor"],
    },
    "tables": [
        # no permissions at all: the defaults of CONFIG.md §7.3
        {"id": 1, "name": "defaults",
         "fields": [{"id": 1, "name": "title", "type": "single-line-text"}]},
        # public table: anonymous read and create; notes readable by all, writable by admin/member;
        # staff_only invisible to anonymous callers and viewers
        {"id": 2, "name": "public",
         "fields": [{"id": 1, "name": "title", "type": "single-line-text"},
                    {"id": 2, "name": "notes", "type": "long-text"},
                    {"id": 3, "name": "staff_only", "type": "single-line-text"}],
         "permissions": {"read": "all", "create": "all",
                         "fields": [{"field": "notes", "write": ["admin", "member"]},
                                    {"field": "staff_only", "read": ["member", "contractor"],
                                     "write": ["member", "contractor"]}]}},
        # explicit lists ([] = admins only)
        {"id": 3, "name": "explicit",
         "fields": [{"id": 1, "name": "title", "type": "single-line-text"}],
         "permissions": {"read": ["admin", "member"], "create": ["member"], "update": ["admin"],
                         "delete": [], "permanentDelete": ["member"]}},
        # inherit + override. Effective: read authenticated (own), create [contractor] (override),
        # update [contractor] (override beats own [member]), delete [] (inherited),
        # restore = delete = [] (default after inheritance), permanentDelete [member] (inherited)
        {"id": 4, "name": "inherited",
         "fields": [{"id": 1, "name": "title", "type": "single-line-text"}],
         "permissions": {"inherit": "explicit", "read": "authenticated", "update": ["member"],
                         "override": {"update": ["contractor"], "create": ["contractor"]}}},
        # admins only
        {"id": 5, "name": "closed",
         "fields": [{"id": 1, "name": "title", "type": "single-line-text"}],
         "permissions": {"read": []}},
        # row-level rules
        {"id": 6, "name": "owned",
         "fields": [{"id": 1, "name": "title", "type": "single-line-text"},
                    {"id": 2, "name": "owner", "type": "user"},
                    {"id": 3, "name": "shared", "type": "checkbox"}],
         "permissions": {"permanentDelete": ["member", "contractor"]},
         "rowLevelPermissions": {
             "read": {"logic": "or", "conditions": [
                 {"field": "owner", "operator": "eq", "value": "$currentUser.id"},
                 {"field": "shared", "operator": "eq", "value": True}]},
             "write": {"field": "owner", "operator": "eq", "value": "$currentUser.id"},
             "create": {"when": {"field": "owner", "operator": "eq", "value": "$currentUser.id"}}}},
        # field permissions; notes_len is a formula over the restricted notes
        {"id": 7, "name": "tasks",
         "fields": [{"id": 1, "name": "title", "type": "single-line-text", "required": True},
                    {"id": 2, "name": "notes", "type": "long-text"},
                    {"id": 3, "name": "pin", "type": "single-line-text"},
                    {"id": 4, "name": "internal", "type": "single-line-text"},
                    {"id": 5, "name": "notes_len", "type": "formula", "formula": "LEN({notes})"},
                    {"id": 6, "name": "link", "type": "relationship", "relatedTable": "owned"},
                    {"id": 7, "name": "exp", "type": "relationship", "relatedTable": "explicit"}],
         "permissions": {"fields": [
             # readable by admin/member, writable by admin only (contractor: invisible)
             {"field": "notes", "read": ["admin", "member"], "write": ["admin"]},
             # write-only for member and contractor, invisible to viewers
             {"field": "pin", "read": [], "write": ["member", "contractor"]},
             # invisible to viewers
             {"field": "internal", "read": ["member", "contractor"],
              "write": ["member", "contractor"]}]}},
        # row-level read rule on $currentUser.role and an `in` rule on $currentUser.email
        {"id": 8, "name": "roled",
         "fields": [{"id": 1, "name": "title", "type": "single-line-text"},
                    {"id": 2, "name": "audience", "type": "single-line-text"},
                    {"id": 3, "name": "editors", "type": "multi-select",
                     "options": ["member@example.com", "contractor@example.com"]}],
         "rowLevelPermissions": {
             "read": {"field": "audience", "operator": "eq", "value": "$currentUser.role"},
             "update": {"field": "editors", "operator": "eq", "value": "$currentUser.email"}}},
    ],
}
TABLES = [t["name"] for t in PERM_CONFIG["tables"]]
ROLES = ["viewer", "member", "contractor", "admin"]
ACTORS = ["anon"] + ROLES


###############################################################################
# The shared world
###############################################################################


def sign_in(wsgi, email, password=PASSWORD):
    """Sign in through HTTP on a throw-away client (so no cookie leaks into other requests)."""
    resp = webtest.TestApp(wsgi).post_json("/api/auth/sign-in/email",
                                           {"email": email, "password": password})
    assert resp.status_int == 200, resp.body
    token = resp.json["token"]
    assert isinstance(token, str) and token
    return token


class World:
    def __init__(self, app):
        self.app = app
        self.client = webtest.TestApp(app.wsgi)
        self.users, self.tokens = {}, {}

    def add_user(self, name, role, password=PASSWORD):
        email = f"{name}@example.com"
        self.users[name] = self.app.create_user(email, password, name=name.title(), role=role)
        self.tokens[name] = sign_in(self.app.wsgi, email, password)

    def uid(self, actor):
        return self.users[actor]["id"] if actor in self.users else None

    def request(self, actor, method, url, body=None, headers=None):
        self.client.reset()  # never send cookies: callers are identified by Bearer only
        hdrs = dict(headers or {})
        if actor != "anon":
            hdrs["Authorization"] = "Bearer " + self.tokens[actor]
        params = {"method": method, "headers": hdrs, "expect_errors": True}
        if body is not None:
            params["body"] = (body if isinstance(body, (str, bytes)) else json.dumps(body))
            if isinstance(params["body"], str):
                params["body"] = params["body"].encode()
            params["content_type"] = JSON
        return self.client.request(url, **params)

    def make(self, table, fields=None, trashed=False, actor="admin"):
        """Create a record as `actor` (admin bypasses every rule); optionally trash it."""
        resp = self.request(actor, "POST", f"/api/tables/{table}/records", fields or {})
        assert resp.status_int == 201, resp.body
        rid = resp.json["id"]
        if trashed:
            resp = self.request(actor, "DELETE", f"/api/tables/{table}/records/{rid}")
            assert resp.status_int == 204, resp.body
        return rid


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    db = tmp_path_factory.mktemp("perm") / "perm.db"
    app = sovrium.App(copy.deepcopy(PERM_CONFIG), db_path=str(db), env=dict(TEST_ENV))
    try:
        w = World(app)
        for role in ROLES:
            w.add_user(role, role)
        w.add_user("other", "member")
        yield w
    finally:
        app.close()


def placeholders(world, actor, names):
    """Values for the $names used by a case; records are created fresh for each case."""
    me, other = world.uid(actor), world.uid("other")
    makers = {
        "d": lambda: world.make("defaults", {"title": "d"}),
        "p": lambda: world.make("public", {"title": "p", "notes": "public notes"}),
        "p_trashed": lambda: world.make("public", {"title": "p"}, trashed=True),
        "d_trashed": lambda: world.make("defaults", {"title": "d"}, trashed=True),
        "e": lambda: world.make("explicit", {"title": "e"}),
        "i": lambda: world.make("inherited", {"title": "i"}),
        "c": lambda: world.make("closed", {"title": "c"}),
        "t": lambda: world.make("tasks", {"title": "t", "notes": SECRET_NOTES, "pin": SECRET_PIN,
                                          "internal": SECRET_INTERNAL}),
        "mine": lambda: world.make("owned", {"title": "mine", "owner": me}),
        "mine_trashed": lambda: world.make("owned", {"title": "mine", "owner": me}, trashed=True),
        "other": lambda: world.make("owned", {"title": "other", "owner": other}),
        "other_trashed": lambda: world.make("owned", {"title": "other", "owner": other},
                                            trashed=True),
        "shared": lambda: world.make("owned", {"title": "shared", "owner": other, "shared": True}),
        "me_id": lambda: me or "",
        "other_id": lambda: other,
        "missing": lambda: MISSING,
    }
    return {n: makers[n]() for n in names if n in makers}


def template_names(*texts):
    names = set()
    for text in texts:
        if text:
            for m in string.Template.pattern.finditer(text):
                name = m.group("named") or m.group("braced")
                if name:
                    names.add(name)
    return names


def check_error(resp, status, message, errors=None):
    """Exact envelope (API.md §1.11); `message` may be a tuple of acceptable messages."""
    assert resp.status_int == status, (resp.status_int, resp.body[:600])
    body = resp.json
    assert body["success"] is False
    if isinstance(message, tuple):
        assert body["message"] in message, body
    else:
        assert body["message"] == message, body
    code = {400: "VALIDATION_ERROR", 401: "UNAUTHORIZED", 403: "FORBIDDEN",
            404: "NOT_FOUND"}[status]
    assert body["code"] == code, body
    if errors is not None:
        assert body["errors"] == errors, body


def q(path, **params):
    return path + "?" + urllib.parse.urlencode(params)


###############################################################################
# Cases
###############################################################################


def C(case_id, actor, method, url, status, message=None, body=None, errors=None,
      optional_route=False):
    return pytest.param(actor, method, url, body, status, message, errors, optional_route,
                        id=case_id)


def deny(actor, readable=True):
    """Status and message when the action is refused (API.md §1.13)."""
    if actor == "anon":
        return 401, AUTH
    return (403, FORBIDDEN) if readable else (404, NOT_FOUND)


def unk(field, where):
    """400 for a field that does not exist for the caller, in a query parameter."""
    msg = f"Unknown field '{field}'"
    return {"status": 400, "message": msg, "errors": [{"field": where, "message": msg}]}


def unk_body(field):
    return {"status": 400, "message": INVALID,
            "errors": [{"field": field, "message": f"Unknown field '{field}'"}]}


def link_err(field, ref):
    msg = f"Field '{field}' references a record that does not exist: {ref}"
    return {"status": 400, "message": INVALID, "errors": [{"field": field, "message": msg}]}


CASES = []

# -- §1.13 row 1: unknown or unreadable table: anonymous 401, signed-in 404 ------------------------
TABLE_PATHS = [
    ("meta", "GET", "/api/tables/{t}", None),
    ("perms", "GET", "/api/tables/{t}/permissions", None),
    ("list", "GET", "/api/tables/{t}/records", None),
    ("get", "GET", "/api/tables/{t}/records/{r}", None),
    ("history", "GET", "/api/tables/{t}/records/{r}/history", None),
    ("create", "POST", "/api/tables/{t}/records", {"title": "x"}),
    ("update", "PATCH", "/api/tables/{t}/records/{r}", {"title": "x"}),
    ("delete", "DELETE", "/api/tables/{t}/records/{r}", None),
    ("purge", "DELETE", "/api/tables/{t}/records/{r}?permanent=true", None),
]
for actor, tables in [("anon", [("unknown", "nosuch", "1"), ("unknown-id", "99", "1"),
                                ("unreadable", "defaults", "$d"), ("closed", "closed", "$c")]),
                      ("viewer", [("unknown", "nosuch", "1"), ("unknown-id", "99", "1"),
                                  ("closed", "closed", "$c"), ("explicit", "explicit", "$e")]),
                      ("member", [("unknown", "nosuch", "1"), ("unknown-id", "99", "1"),
                                  ("closed", "closed", "$c"), ("bad-id", "007", "1")]),
                      ("contractor", [("unknown", "nosuch", "1"), ("closed", "closed", "$c"),
                                      ("explicit", "explicit", "$e")])]:
    for label, t, r in tables:
        for op, method, path, body in TABLE_PATHS:
            status, message = (401, AUTH) if actor == "anon" else (404, NOT_FOUND)
            CASES.append(C(f"{actor}-{label}-table-{op}", actor, method,
                           path.format(t=t, r=r), status, message, body))

# -- GET /api/tables/{t}/records/{id} with a readable table ----------------------------------------
CASES += [
    C("anon-public-meta", "anon", "GET", "/api/tables/public", 200),
    C("anon-public-permissions", "anon", "GET", "/api/tables/public/permissions", 200),
    C("anon-public-list", "anon", "GET", "/api/tables/public/records", 200),
    C("anon-public-get", "anon", "GET", "/api/tables/public/records/$p", 200),
    C("anon-public-history", "anon", "GET", "/api/tables/public/records/$p/history", 200),
    C("anon-public-missing-record-404", "anon", "GET", "/api/tables/public/records/$missing", 404,
      NOT_FOUND),
    C("anon-public-trashed-record-404", "anon", "GET", "/api/tables/public/records/$p_trashed",
      404, NOT_FOUND),
    C("anon-public-missing-record-patch-401", "anon", "PATCH",
      "/api/tables/public/records/$missing", 401, AUTH, {"title": "x"}),
    C("anon-public-create", "anon", "POST", "/api/tables/public/records", 201,
      body={"title": "from anon"}),
    C("anon-public-update-401", "anon", "PATCH", "/api/tables/public/records/$p", 401, AUTH,
      {"title": "x"}),
    C("anon-public-delete-401", "anon", "DELETE", "/api/tables/public/records/$p", 401, AUTH),
    C("anon-public-purge-401", "anon", "DELETE", "/api/tables/public/records/$p?permanent=true",
      401, AUTH),
    C("anon-public-includeDeleted-get-401", "anon", "GET",
      "/api/tables/public/records/$p?includeDeleted=true", 401, AUTH),
    C("anon-public-includeDeleted-list-401", "anon", "GET",
      "/api/tables/public/records?includeDeleted=true", 401, AUTH),
    C("anon-public-write-readonly-field-401", "anon", "POST", "/api/tables/public/records", 401,
      AUTH, {"title": "x", "notes": "n"}),
    C("viewer-public-write-readonly-field-403", "viewer", "POST", "/api/tables/public/records",
      403, "You do not have permission to write field 'notes'", {"title": "x", "notes": "n"}),
    C("member-public-write-notes-201", "member", "POST", "/api/tables/public/records", 201,
      body={"title": "x", "notes": "n"}),
    C("viewer-public-create-201", "viewer", "POST", "/api/tables/public/records", 201,
      body={"title": "x"}),
    C("viewer-public-update-403", "viewer", "PATCH", "/api/tables/public/records/$p", 403,
      FORBIDDEN, {"title": "x"}),
    # history of a trashed record: only with the delete permission (API.md §7, §1.13)
    C("viewer-history-trashed-404", "viewer", "GET", "/api/tables/defaults/records/$d_trashed/history",
      404, NOT_FOUND),
    C("member-history-trashed", "member", "GET", "/api/tables/defaults/records/$d_trashed/history",
      200),
    C("member-history-trashed-other-row-404", "member", "GET",
      "/api/tables/owned/records/$other_trashed/history", 404, NOT_FOUND),
    C("member-history-trashed-own-row", "member", "GET",
      "/api/tables/owned/records/$mine_trashed/history", 200),
    C("viewer-get-trashed-404", "viewer", "GET", "/api/tables/defaults/records/$d_trashed", 404,
      NOT_FOUND),
    C("viewer-includeDeleted-trashed-403", "viewer", "GET",
      "/api/tables/defaults/records/$d_trashed?includeDeleted=true", 403, FORBIDDEN),
    C("admin-closed-meta", "admin", "GET", "/api/tables/closed", 200),
    C("admin-closed-list", "admin", "GET", "/api/tables/closed/records", 200),
    C("admin-closed-get", "admin", "GET", "/api/tables/closed/records/$c", 200),
]
for actor in ("anon", "viewer"):
    CASES.append(C(f"{actor}-public-invisible-field-in-body-400", actor, "POST",
                   "/api/tables/public/records", body={"title": "x", "staff_only": "s"},
                   **unk_body("staff_only")))
    CASES.append(C(f"{actor}-public-invisible-field-filter-400", actor, "GET",
                   q("/api/tables/public/records", filter="staff_only:s"),
                   **unk("staff_only", "filter")))

# -- action matrix: default permissions, explicit lists, inherit + override ------------------------
ACTIONS = {
    # action: (method, path, body, success status)
    "list": ("GET", "/api/tables/{t}/records", None, 200),
    "get": ("GET", "/api/tables/{t}/records/{r}", None, 200),
    "create": ("POST", "/api/tables/{t}/records", {"title": "new"}, 201),
    "update": ("PATCH", "/api/tables/{t}/records/{r}", {"title": "changed"}, 200),
    "delete": ("DELETE", "/api/tables/{t}/records/{r}", None, 204),
    "purge": ("DELETE", "/api/tables/{t}/records/{r}?permanent=true", None, 204),
    "includeDeleted-list": ("GET", "/api/tables/{t}/records?includeDeleted=true", None, 200),
    "includeDeleted-get": ("GET", "/api/tables/{t}/records/{r}?includeDeleted=true", None, 200),
}
ALL = set(ACTIONS)
READ = {"list", "get"}
WRITE = READ | {"create", "update", "delete", "includeDeleted-list", "includeDeleted-get"}
MATRIX = {
    # table: {actor: allowed actions, or None when the table is not readable}
    "defaults": {"anon": None, "viewer": READ, "member": WRITE, "contractor": WRITE, "admin": ALL},
    "explicit": {"anon": None, "viewer": None, "contractor": None, "admin": ALL,
                 "member": READ | {"create", "purge"}},
    "inherited": {"anon": None, "viewer": READ, "admin": ALL,
                  "member": READ | {"purge"},
                  "contractor": READ | {"create", "update"}},
}
REF = {"defaults": "$d", "explicit": "$e", "inherited": "$i"}
for table, per_actor in MATRIX.items():
    for actor, allowed in per_actor.items():
        for action, (method, path, body, ok) in ACTIONS.items():
            url = path.format(t=table, r=REF[table])
            if allowed is None:
                status, message = deny(actor, readable=False)
            elif action in allowed:
                status, message = ok, None
            else:
                status, message = deny(actor)
            CASES.append(C(f"{table}-{actor}-{action}", actor, method, url, status, message, body))

# -- row-level rules (owned) -----------------------------------------------------------------------
OWNED = "/api/tables/owned/records"
for actor in ("member", "contractor"):
    a = actor
    CASES += [
        C(f"{a}-row-get-mine", a, "GET", f"{OWNED}/$mine", 200),
        C(f"{a}-row-get-shared", a, "GET", f"{OWNED}/$shared", 200),
        C(f"{a}-row-get-other-404", a, "GET", f"{OWNED}/$other", 404, NOT_FOUND),
        C(f"{a}-row-get-missing-404", a, "GET", f"{OWNED}/$missing", 404, NOT_FOUND),
        C(f"{a}-row-get-mine-trashed-404", a, "GET", f"{OWNED}/$mine_trashed", 404, NOT_FOUND),
        C(f"{a}-row-includeDeleted-mine-trashed", a, "GET",
          f"{OWNED}/$mine_trashed?includeDeleted=true", 200),
        C(f"{a}-row-includeDeleted-other-404", a, "GET", f"{OWNED}/$other?includeDeleted=true",
          404, NOT_FOUND),
        C(f"{a}-row-includeDeleted-other-trashed-404", a, "GET",
          f"{OWNED}/$other_trashed?includeDeleted=true", 404, NOT_FOUND),
        C(f"{a}-row-history-other-404", a, "GET", f"{OWNED}/$other/history", 404, NOT_FOUND),
        C(f"{a}-row-history-shared", a, "GET", f"{OWNED}/$shared/history", 200),
        C(f"{a}-row-patch-other-404", a, "PATCH", f"{OWNED}/$other", 404, NOT_FOUND,
          {"title": "x"}),
        C(f"{a}-row-patch-other-trashed-404", a, "PATCH", f"{OWNED}/$other_trashed", 404,
          NOT_FOUND, {"title": "x"}),
        C(f"{a}-row-patch-shared-403", a, "PATCH", f"{OWNED}/$shared", 403, ROW_RULE,
          {"title": "x"}),
        C(f"{a}-row-patch-mine", a, "PATCH", f"{OWNED}/$mine", 200, body={"title": "x"}),
        C(f"{a}-row-patch-mine-give-away-403", a, "PATCH", f"{OWNED}/$mine", 403, ROW_RULE,
          {"owner": "$other_id"}),
        C(f"{a}-row-delete-other-404", a, "DELETE", f"{OWNED}/$other", 404, NOT_FOUND),
        C(f"{a}-row-delete-shared-403", a, "DELETE", f"{OWNED}/$shared", 403,
          (ROW_RULE, FORBIDDEN)),
        C(f"{a}-row-delete-mine", a, "DELETE", f"{OWNED}/$mine", 204),
        C(f"{a}-row-purge-other-404", a, "DELETE", f"{OWNED}/$other?permanent=true", 404,
          NOT_FOUND),
        C(f"{a}-row-purge-other-trashed-404", a, "DELETE",
          f"{OWNED}/$other_trashed?permanent=true", 404, NOT_FOUND),
        C(f"{a}-row-purge-shared-403", a, "DELETE", f"{OWNED}/$shared?permanent=true", 403,
          (ROW_RULE, FORBIDDEN)),
        C(f"{a}-row-purge-mine", a, "DELETE", f"{OWNED}/$mine?permanent=true", 204),
        C(f"{a}-row-purge-mine-trashed", a, "DELETE", f"{OWNED}/$mine_trashed?permanent=true",
          204),
        C(f"{a}-row-create-own", a, "POST", OWNED, 201, body={"title": "x", "owner": "$me_id"}),
        C(f"{a}-row-create-for-other-403", a, "POST", OWNED, 403, ROW_RULE,
          {"title": "x", "owner": "$other_id"}),
        C(f"{a}-row-create-unowned-403", a, "POST", OWNED, 403, ROW_RULE, {"title": "x"}),
        C(f"{a}-row-restore-other-trashed-404", a, "POST", f"{OWNED}/$other_trashed/restore",
          404, NOT_FOUND, optional_route=True),
        C(f"{a}-row-restore-mine-trashed", a, "POST", f"{OWNED}/$mine_trashed/restore", 200,
          optional_route=True),
    ]
CASES += [
    C("viewer-row-get-mine", "viewer", "GET", f"{OWNED}/$mine", 200),
    C("viewer-row-get-other-404", "viewer", "GET", f"{OWNED}/$other", 404, NOT_FOUND),
    C("viewer-row-patch-mine-403", "viewer", "PATCH", f"{OWNED}/$mine", 403, FORBIDDEN,
      {"title": "x"}),
    # §1.12: the action permission (step 7) is checked before the target lookup (step 9)
    C("viewer-row-delete-other-403-before-lookup", "viewer", "DELETE", f"{OWNED}/$other", 403,
      FORBIDDEN),
    C("viewer-row-delete-missing-403-before-lookup", "viewer", "DELETE", f"{OWNED}/$missing", 403,
      FORBIDDEN),
    C("member-defaults-purge-missing-403-before-lookup", "member", "DELETE",
      "/api/tables/defaults/records/$missing?permanent=true", 403, FORBIDDEN),
    C("viewer-row-create-403", "viewer", "POST", OWNED, 403, FORBIDDEN,
      {"title": "x", "owner": "$me_id"}),
    C("anon-row-get-401", "anon", "GET", f"{OWNED}/$other", 401, AUTH),
    C("admin-row-get-other", "admin", "GET", f"{OWNED}/$other", 200),
    C("admin-row-patch-other", "admin", "PATCH", f"{OWNED}/$other", 200, body={"title": "x"}),
    C("admin-row-create-unowned", "admin", "POST", OWNED, 201, body={"title": "x"}),
    C("admin-row-delete-other", "admin", "DELETE", f"{OWNED}/$other", 204),
]

# -- field permissions (tasks) ---------------------------------------------------------------------
TASKS = "/api/tables/tasks/records"
WRITE_NOTES = "You do not have permission to write field 'notes'"
CASES += [
    C("member-write-readonly-notes-create-403", "member", "POST", TASKS, 403, WRITE_NOTES,
      {"title": "a", "notes": "n"}),
    C("member-write-readonly-notes-patch-403", "member", "PATCH", f"{TASKS}/$t", 403, WRITE_NOTES,
      {"notes": "n"}),
    C("member-write-readonly-notes-wrapped-403", "member", "PATCH", f"{TASKS}/$t", 403,
      WRITE_NOTES, {"fields": {"title": "ok", "notes": "n"}}),
    C("contractor-write-invisible-notes-create-400", "contractor", "POST", TASKS,
      body={"title": "a", "notes": "n"}, **unk_body("notes")),
    C("contractor-write-invisible-notes-patch-400", "contractor", "PATCH", f"{TASKS}/$t",
      body={"notes": "n"}, **unk_body("notes")),
    C("contractor-write-invisible-formula-400", "contractor", "PATCH", f"{TASKS}/$t",
      body={"notes_len": 3}, **unk_body("notes_len")),
    C("member-write-visible-formula-readonly-400", "member", "PATCH", f"{TASKS}/$t", 400, INVALID,
      {"notes_len": 3},
      errors=[{"field": "notes_len", "message": "Cannot write to readonly field 'notes_len'"}]),
    C("member-write-only-pin-create", "member", "POST", TASKS, 201, body={"title": "a", "pin": "1"}),
    C("member-write-only-pin-patch", "member", "PATCH", f"{TASKS}/$t", 200, body={"pin": "2"}),
    C("contractor-write-only-pin-and-internal", "contractor", "POST", TASKS, 201,
      body={"title": "a", "pin": "1", "internal": "i"}),
    C("admin-write-notes", "admin", "POST", TASKS, 201, body={"title": "a", "notes": "n"}),
    C("viewer-tasks-create-403-before-body", "viewer", "POST", TASKS, 403, FORBIDDEN,
      {"title": "a", "internal": "x"}),
    C("member-filter-readable-notes", "member", "GET",
      q(TASKS, filter=json.dumps({"field": "notes", "operator": "isNotEmpty"})), 200),
    C("member-sort-readable-formula", "member", "GET", q(TASKS, sort="-notes_len"), 200),
    C("admin-filter-pin", "admin", "GET", q(TASKS, filter="pin:1"), 200),
]
for actor, field in [("member", "pin"), ("contractor", "notes"), ("contractor", "notes_len"),
                     ("contractor", "pin"), ("viewer", "internal"), ("viewer", "pin"),
                     ("viewer", "notes")]:
    a, f = actor, field
    leaf = json.dumps({"field": f, "operator": "isNotEmpty"})
    CASES += [
        C(f"{a}-unreadable-{f}-filter-json", a, "GET", q(TASKS, filter=leaf), **unk(f, "filter")),
        C(f"{a}-unreadable-{f}-filter-nested", a, "GET",
          q(TASKS, filter=json.dumps({"or": [{"field": "title", "operator": "isNotEmpty"},
                                             {"not": json.loads(leaf)}]})),
          **unk(f, "filter")),
        C(f"{a}-unreadable-{f}-filter-shorthand", a, "GET", q(TASKS, filter=f"{f}:1"),
          **unk(f, "filter")),
        C(f"{a}-unreadable-{f}-sort", a, "GET", q(TASKS, sort=f"title,-{f}"), **unk(f, "sort")),
        C(f"{a}-unreadable-{f}-fields", a, "GET", q(TASKS, fields=f"title,{f}"),
          **unk(f, "fields")),
        C(f"{a}-unreadable-{f}-fields-single", a, "GET", q(f"{TASKS}/$t", fields=f),
          **unk(f, "fields")),
        C(f"{a}-unreadable-{f}-filterByFormula", a, "GET",
          q(TASKS, filterByFormula=f"AND({{title}}, {{{f}}}>'0')"),
          **unk(f, "filterByFormula")),
    ]

# -- relationship validation cannot see unreadable rows --------------------------------------------
CASES += [
    C("member-link-unreadable-row-400", "member", "POST", TASKS,
      body='{"title": "a", "link": $other}', **link_err("link", "$other")),
    C("member-link-missing-row-400", "member", "POST", TASKS,
      body='{"title": "a", "link": $missing}', **link_err("link", "$missing")),
    C("member-link-trashed-own-row-400", "member", "POST", TASKS,
      body='{"title": "a", "link": $mine_trashed}', **link_err("link", "$mine_trashed")),
    C("member-link-unreadable-row-patch-400", "member", "PATCH", f"{TASKS}/$t",
      body='{"link": $other}', **link_err("link", "$other")),
    C("member-link-shared-row", "member", "POST", TASKS, 201,
      body='{"title": "a", "link": $shared}'),
    C("member-link-own-row", "member", "POST", TASKS, 201, body='{"title": "a", "link": $mine}'),
    C("contractor-link-unreadable-table-400", "contractor", "POST", TASKS,
      body='{"title": "a", "exp": $e}', **link_err("exp", "$e")),
    C("contractor-link-unreadable-table-missing-400", "contractor", "POST", TASKS,
      body='{"title": "a", "exp": $missing}', **link_err("exp", "$missing")),
    C("member-link-readable-table", "member", "POST", TASKS, 201, body='{"title": "a", "exp": $e}'),
    C("admin-link-any-row", "admin", "POST", TASKS, 201, body='{"title": "a", "link": $other}'),
]


def _subst(value, mapping):
    if isinstance(value, str):
        return string.Template(value).safe_substitute(mapping)
    if isinstance(value, list):
        return [_subst(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v, mapping) for k, v in value.items()}
    return value


@pytest.mark.parametrize("actor,method,url,body,status,message,errors,optional_route", CASES)
def test_access(world, actor, method, url, body, status, message, errors, optional_route):
    body_text = body if isinstance(body, str) else (None if body is None else json.dumps(body))
    mapping = placeholders(world, actor, template_names(url, body_text, json.dumps(errors)))
    url = _subst(url, mapping)
    body_text = _subst(body_text, mapping) if body_text is not None else None
    resp = world.request(actor, method, url, body_text)
    if status >= 400:
        check_error(resp, status, message, _subst(errors, mapping))
    else:
        assert resp.status_int == status, resp.body[:600]


###############################################################################
# Lists, metadata, reports
###############################################################################

READABLE_TABLES = {
    "anon": ["public"],
    "viewer": ["defaults", "public", "inherited", "owned", "tasks", "roled"],
    "member": ["defaults", "public", "explicit", "inherited", "owned", "tasks", "roled"],
    "contractor": ["defaults", "public", "inherited", "owned", "tasks", "roled"],
    "admin": TABLES,
}


@pytest.mark.parametrize("actor", ACTORS)
def test_tables_list_only_readable(world, actor):
    resp = world.request(actor, "GET", "/api/tables")
    assert resp.status_int == 200, resp.body
    assert [t["name"] for t in resp.json["tables"]] == READABLE_TABLES[actor]


VISIBLE_FIELDS = {
    ("tasks", "viewer"): ["title", "link", "exp"],
    ("tasks", "member"): ["title", "notes", "pin", "internal", "notes_len", "link", "exp"],
    ("tasks", "contractor"): ["title", "pin", "internal", "link", "exp"],
    ("tasks", "admin"): ["title", "notes", "pin", "internal", "notes_len", "link", "exp"],
    ("public", "anon"): ["title", "notes"],
    ("public", "viewer"): ["title", "notes"],
    ("public", "member"): ["title", "notes", "staff_only"],
    ("public", "admin"): ["title", "notes", "staff_only"],
}


@pytest.mark.parametrize("table,actor", list(VISIBLE_FIELDS), ids=lambda v: str(v))
def test_table_metadata_omits_invisible_fields(world, table, actor):
    resp = world.request(actor, "GET", f"/api/tables/{table}")
    assert resp.status_int == 200, resp.body
    assert [f["name"] for f in resp.json["fields"]] == VISIBLE_FIELDS[table, actor]
    for f in resp.json["fields"]:  # field-level permission settings are not exposed
        assert "permissions" not in f and "read" not in f and "write" not in f, f
    perms = world.request(actor, "GET", f"/api/tables/{table}/permissions")
    assert set(perms.json["fields"]) == set(VISIBLE_FIELDS[table, actor])
    assert resp.json["permissions"] == perms.json["table"]


def perm(read, comment, create, update, delete, restore, permanent):
    return {"read": read, "comment": comment, "create": create, "update": update,
            "delete": delete, "restore": restore, "permanentDelete": permanent}


T, F = True, False
REPORTS = {
    ("defaults", "viewer"): perm(T, T, F, F, F, F, F),
    ("defaults", "member"): perm(T, T, T, T, T, T, F),
    ("defaults", "contractor"): perm(T, T, T, T, T, T, F),
    ("defaults", "admin"): perm(T, T, T, T, T, T, T),
    ("public", "anon"): perm(T, F, T, F, F, F, F),
    ("public", "viewer"): perm(T, T, T, F, F, F, F),
    ("public", "member"): perm(T, T, T, T, T, T, F),
    ("explicit", "member"): perm(T, T, T, F, F, F, T),
    ("explicit", "admin"): perm(T, T, T, T, T, T, T),
    ("inherited", "viewer"): perm(T, T, F, F, F, F, F),
    ("inherited", "member"): perm(T, T, F, F, F, F, T),
    ("inherited", "contractor"): perm(T, T, T, T, F, F, F),
    ("inherited", "admin"): perm(T, T, T, T, T, T, T),
    ("owned", "viewer"): perm(T, T, F, F, F, F, F),
    ("owned", "member"): perm(T, T, T, T, T, T, T),
    ("owned", "contractor"): perm(T, T, T, T, T, T, T),
    ("closed", "admin"): perm(T, T, T, T, T, T, T),
}


@pytest.mark.parametrize("table,actor", list(REPORTS), ids=lambda v: str(v))
def test_permissions_report_table(world, table, actor):
    resp = world.request(actor, "GET", f"/api/tables/{table}/permissions")
    assert resp.status_int == 200, resp.body
    assert list(resp.json) == ["table", "fields", "rowLevel"]
    assert resp.json["table"] == REPORTS[table, actor]
    if table != "owned":
        assert resp.json["rowLevel"] == {"read": F, "create": F, "update": F, "delete": F}


@pytest.mark.parametrize("actor,expected", [
    ("member", {"read": T, "create": T, "update": T, "delete": T}),
    ("contractor", {"read": T, "create": T, "update": T, "delete": T}),
    ("admin", {"read": F, "create": F, "update": F, "delete": F}),
])
def test_permissions_report_row_level(world, actor, expected):
    resp = world.request(actor, "GET", "/api/tables/owned/permissions")
    assert resp.json["rowLevel"] == expected


def test_permissions_report_row_level_viewer_read(world):
    resp = world.request("viewer", "GET", "/api/tables/owned/permissions")
    assert resp.json["rowLevel"]["read"] is True


@pytest.mark.parametrize("actor,expected", [
    ("member", {"title": {"read": T, "write": T}, "notes": {"read": T, "write": F},
                "pin": {"read": F, "write": T}, "internal": {"read": T, "write": T},
                "notes_len": {"read": T, "write": F}, "link": {"read": T, "write": T},
                "exp": {"read": T, "write": T}}),
    ("contractor", {"title": {"read": T, "write": T}, "pin": {"read": F, "write": T},
                    "internal": {"read": T, "write": T}, "link": {"read": T, "write": T},
                    "exp": {"read": T, "write": T}}),
    ("admin", {"title": {"read": T, "write": T}, "notes": {"read": T, "write": T},
               "pin": {"read": T, "write": T}, "internal": {"read": T, "write": T},
               "notes_len": {"read": T, "write": F}, "link": {"read": T, "write": T},
               "exp": {"read": T, "write": T}}),
])
def test_permissions_report_fields(world, actor, expected):
    resp = world.request(actor, "GET", "/api/tables/tasks/permissions")
    assert resp.json["fields"] == expected


def test_permissions_report_fields_viewer(world):
    fields = world.request("viewer", "GET", "/api/tables/tasks/permissions").json["fields"]
    assert list(fields) == ["title", "link", "exp"]
    assert all(v["read"] is True for v in fields.values())


###############################################################################
# Row-level read rule on lists
###############################################################################


def all_ids(world, actor, url):
    resp = world.request(actor, "GET", url)
    assert resp.status_int == 200, resp.body
    body = resp.json
    assert body["pagination"]["total"] == len(body["records"])
    return {r["id"] for r in body["records"]}


@pytest.mark.parametrize("actor", ["member", "contractor", "viewer"])
def test_list_excludes_rows_failing_read_rule(world, actor):
    mp = placeholders(world, actor, ["mine", "mine_trashed", "other", "other_trashed", "shared"])
    live = all_ids(world, actor, q(OWNED, limit=1000))
    assert mp["mine"] in live and mp["shared"] in live
    assert not live & {mp["other"], mp["other_trashed"], mp["mine_trashed"]}
    # a filter naming the hidden row directly still finds nothing
    hit = all_ids(world, actor, q(OWNED, filter=f"id:{mp['other']}"))
    assert hit == set()
    hit = all_ids(world, actor, q(OWNED, search="e", limit=1000))  # other, shared, mine
    assert mp["other"] not in hit and {mp["shared"], mp["mine"]} <= hit
    if actor != "viewer":
        both = all_ids(world, actor, q(OWNED, limit=1000, includeDeleted="true"))
        assert {mp["mine"], mp["mine_trashed"], mp["shared"]} <= both
        assert not both & {mp["other"], mp["other_trashed"]}
    # the admin sees every row
    every = all_ids(world, "admin", q(OWNED, limit=1000, includeDeleted="true"))
    assert set(mp.values()) <= every


###############################################################################
# Values of unreadable fields never appear
###############################################################################


def _task_with_history(world):
    rid = placeholders(world, "admin", ["t"])["t"]
    resp = world.request("admin", "PATCH", f"{TASKS}/{rid}",
                         {"notes": SECRET_NOTES + "-v2", "pin": SECRET_PIN + "-v2",
                          "internal": SECRET_INTERNAL + "-v2", "title": "t2"})
    assert resp.status_int == 200, resp.body
    return rid


HIDDEN = {
    "member": {"pin": SECRET_PIN},
    "contractor": {"notes": SECRET_NOTES, "notes_len": None, "pin": SECRET_PIN},
    "viewer": {"notes": SECRET_NOTES, "pin": SECRET_PIN, "internal": SECRET_INTERNAL,
               "notes_len": None},
}
READABLE_TASK_FIELDS = {
    "member": ["title", "notes", "internal", "notes_len", "link", "exp"],
    "contractor": ["title", "internal", "link", "exp"],
    "viewer": ["title", "link", "exp"],
}


@pytest.mark.parametrize("actor", list(HIDDEN))
def test_unreadable_values_never_returned(world, actor):
    rid = _task_with_history(world)
    hidden = HIDDEN[actor]
    visible = READABLE_TASK_FIELDS[actor]
    responses = {
        "get": world.request(actor, "GET", f"{TASKS}/{rid}"),
        "list": world.request(actor, "GET", q(TASKS, limit=1000)),
        "history": world.request(actor, "GET", f"{TASKS}/{rid}/history"),
        "meta": world.request(actor, "GET", "/api/tables/tasks"),
        "perms": world.request(actor, "GET", "/api/tables/tasks/permissions"),
    }
    for name, resp in responses.items():
        assert resp.status_int == 200, (name, resp.body)
        for secret in filter(None, hidden.values()):
            assert secret not in resp.text, (name, secret)
    record = responses["get"].json
    assert list(record["fields"]) == visible
    for rec in responses["list"].json["records"]:
        assert list(rec["fields"]) == visible
    history = responses["history"].json["history"]
    admin_history = world.request("admin", "GET", f"{TASKS}/{rid}/history").json["history"]
    assert len(history) == len(admin_history) == 2  # entries stay even when stripped
    for entry in history:
        for part in ("before", "after", "changes"):
            if entry[part] is not None:
                assert not set(entry[part]) & set(hidden), (part, entry[part])
    # the update entry still lists the visible change
    assert history[0]["changes"]["title"] == {"from": "t", "to": "t2"}


@pytest.mark.parametrize("actor,text,found", [
    ("member", SECRET_NOTES, True),
    ("member", SECRET_PIN, False),
    ("contractor", SECRET_NOTES, False),
    ("contractor", SECRET_INTERNAL, True),
    ("viewer", SECRET_INTERNAL, False),
    ("viewer", SECRET_NOTES, False),
    ("admin", SECRET_PIN, True),
])
def test_search_scope_only_readable_fields(world, actor, text, found):
    rid = placeholders(world, "admin", ["t"])["t"]
    resp = world.request(actor, "GET", q(TASKS, search=text, limit=1000))
    assert resp.status_int == 200, resp.body
    ids = {r["id"] for r in resp.json["records"]}
    assert (rid in ids) is found


def test_unknown_field_message_same_as_nonexistent(world):
    """An unreadable field's error is indistinguishable from a field that does not exist."""
    hidden = world.request("contractor", "GET", q(TASKS, sort="notes"))
    absent = world.request("contractor", "GET", q(TASKS, sort="nosuch"))
    assert hidden.status_int == absent.status_int == 400
    assert hidden.json["message"].replace("notes", "X") == absent.json["message"].replace(
        "nosuch", "X")


def test_write_responses_do_not_echo_unreadable_values(world):
    resp = world.request("member", "POST", TASKS, {"title": "w", "pin": SECRET_PIN})
    assert resp.status_int == 201, resp.body
    assert "pin" not in resp.json["fields"] and SECRET_PIN not in resp.text
    rid = resp.json["id"]
    resp = world.request("member", "PATCH", f"{TASKS}/{rid}", {"pin": SECRET_PIN + "x"})
    assert resp.status_int == 200 and SECRET_PIN not in resp.text
    stored = world.request("admin", "GET", f"{TASKS}/{rid}").json["fields"]
    assert stored["pin"] == SECRET_PIN + "x"


def test_formula_over_restricted_field_hidden(world):
    rid = placeholders(world, "admin", ["t"])["t"]
    member = world.request("member", "GET", f"{TASKS}/{rid}").json["fields"]
    assert member["notes_len"] == len(SECRET_NOTES)
    contractor = world.request("contractor", "GET", f"{TASKS}/{rid}").json["fields"]
    assert "notes_len" not in contractor and "notes" not in contractor
    # probing through filterByFormula is refused exactly like an unknown field
    resp = world.request("contractor", "GET",
                         q(TASKS, filterByFormula=f"{{notes_len}}={len(SECRET_NOTES)}"))
    check_error(resp, 400, "Unknown field 'notes_len'",
                [{"field": "filterByFormula", "message": "Unknown field 'notes_len'"}])


###############################################################################
# Viewer cannot write through any endpoint; purge is admin-only by default
###############################################################################

WRITE_ENDPOINTS = [
    ("create", "POST", "/api/tables/{t}/records", {"title": "x"}),
    ("update", "PATCH", "/api/tables/{t}/records/{r}", {"title": "x"}),
    ("delete", "DELETE", "/api/tables/{t}/records/{r}", None),
    ("purge", "DELETE", "/api/tables/{t}/records/{r}?permanent=true", None),
    ("restore", "POST", "/api/tables/{t}/records/{r}/restore", None),
    ("batch-create", "POST", "/api/tables/{t}/records/batch", {"records": [{"title": "x"}]}),
    ("batch-update", "PATCH", "/api/tables/{t}/records/batch",
     {"records": [{"id": "{r}", "fields": {"title": "x"}}]}),
    ("batch-delete", "DELETE", "/api/tables/{t}/records/batch", {"ids": ["{r}"]}),
    ("batch-purge", "DELETE", "/api/tables/{t}/records/batch", {"ids": ["{r}"], "permanent": True}),
    ("batch-restore", "POST", "/api/tables/{t}/records/batch/restore", {"ids": ["{r}"]}),
    ("upsert", "POST", "/api/tables/{t}/records/upsert",
     {"fieldsToMergeOn": ["title"], "records": [{"fields": {"title": "x"}}]}),
]


@pytest.mark.parametrize("table", ["defaults", "tasks", "owned"])
@pytest.mark.parametrize("endpoint", WRITE_ENDPOINTS, ids=lambda e: e[0])
def test_viewer_cannot_write(world, table, endpoint):
    name, method, path, body = endpoint
    fields = {"title": "keep"}
    if table == "owned":
        fields["owner"] = world.uid("viewer")
    rid = world.make(table, fields, trashed=(name in ("restore", "batch-restore")))
    marker = "vw-" + uuid.uuid4().hex[:10]
    url = path.format(t=table, r=rid)
    body_text = None if body is None else (
        json.dumps(body).replace('"{r}"', str(rid)).replace('"x"', json.dumps(marker)))
    before = world.request("admin", "GET", f"/api/tables/{table}/records/{rid}?includeDeleted=true")
    resp = world.request("viewer", method, url, body_text)
    check_error(resp, 403, FORBIDDEN)
    after = world.request("admin", "GET", f"/api/tables/{table}/records/{rid}?includeDeleted=true")
    assert after.json == before.json
    listing = world.request("admin", "GET", q(f"/api/tables/{table}/records", limit=1000,
                                              filter=f"title:{marker}", includeDeleted="true"))
    assert listing.json["records"] == []


@pytest.mark.parametrize("actor,status", [("viewer", 403), ("member", 403), ("contractor", 403),
                                          ("admin", 204)])
def test_permanent_delete_admin_only_by_default(world, actor, status):
    rid = world.make("defaults", {"title": "p"}, trashed=True)
    resp = world.request(actor, "DELETE", f"/api/tables/defaults/records/{rid}?permanent=true")
    if status == 403:
        check_error(resp, 403, FORBIDDEN)
        assert world.request("admin", "GET", f"/api/tables/defaults/records/{rid}"
                                             "?includeDeleted=true").status_int == 200
    else:
        assert resp.status_int == 204
        gone = world.request("admin", "GET", f"/api/tables/defaults/records/{rid}"
                                             "?includeDeleted=true")
        check_error(gone, 404, NOT_FOUND)


###############################################################################
# The permissions report matches what is enforced, for every example configuration with auth
###############################################################################

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "examples")


def _example_params():
    params = []
    for path in sorted(glob.glob(os.path.join(EXAMPLES_DIR, "*.yaml"))):
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
        if not isinstance(raw, dict) or not raw.get("auth"):
            continue
        custom = [r if isinstance(r, str) else r["name"] for r in raw["auth"].get("roles") or []]
        for role in ["anon", "viewer", "member", *custom, "admin"]:
            params.append(pytest.param(path, role,
                                       id=f"{os.path.basename(path)}-{role}"))
    return params


TEXT_TYPES = {"single-line-text", "long-text", "rich-text", "code"}


def _value_for(field, actor_id, uniq):
    kind = field["type"]
    if kind in TEXT_TYPES:
        return f"v-{uniq}"
    if kind == "email":
        return f"u{uniq}@example.com"
    if kind == "url":
        return f"https://example.com/{uniq}"
    if kind in ("integer", "decimal", "currency", "percentage", "rating", "progress", "duration"):
        return max(1, field.get("min") or 1)
    if kind == "checkbox":
        return True
    if kind == "date":
        return "2026-03-01"
    if kind == "datetime":
        return "2026-03-01T10:00:00.000Z"
    if kind in ("single-select", "status"):
        return field["options"][0]["value"]
    if kind == "multi-select":
        return [field["options"][0]["value"]]
    if kind == "user":
        return actor_id if not field.get("allowMultiple") else [actor_id]
    pytest.fail(f"no generic value for required field {field['name']!r} of type {kind}")


class Explorer:
    """Attempts every action for one caller on one table and records report/outcome mismatches."""

    def __init__(self, world, table, actor):
        self.w, self.table, self.actor = world, table, actor
        meta = world.request("admin", "GET", f"/api/tables/{table}").json
        self.fields = meta["fields"]
        self.base = f"/api/tables/{table}/records"
        self.mismatches = []

    def body(self, user_id, writable=None, uniq=None):
        uniq = uniq or uuid.uuid4().hex[:12]
        out = {}
        for f in self.fields:
            if f["readOnly"] or (writable is not None and not writable.get(f["name"], False)):
                continue
            if f["type"] == "user" and user_id:
                out[f["name"]] = _value_for(f, user_id, uniq)
            elif f.get("required") and f.get("default") is None:
                out[f["name"]] = _value_for(f, user_id, uniq)
        return out

    def record(self, user_id, trashed=False):
        """A record made by the admin whose user fields name `user_id` (so owner rules hold)."""
        return self.w.make(self.table, self.body(user_id), trashed=trashed)

    def check(self, action, allowed, resp, ok, deny_status):
        got_ok = resp.status_int == ok
        if allowed and not got_ok or not allowed and resp.status_int != deny_status:
            self.mismatches.append(
                f"{action}: report says {'allowed' if allowed else 'refused'}, expected "
                f"{ok if allowed else deny_status}, got {resp.status_int} {resp.body[:200]!r}")


@pytest.mark.parametrize("config_path,role", _example_params())
def test_permissions_report_matches_enforcement(make_app, config_path, role):
    app = make_app(config_path)
    w = World(app)
    w.add_user("admin", "admin")
    w.add_user("stranger", "member")
    if role != "anon":
        if role != "admin":
            w.add_user(role, role)
    actor = role
    me = w.uid(actor)
    stranger = w.uid("stranger")
    problems = []
    for table in [t["name"] for t in app.config["tables"]]:
        ex = Explorer(w, table, actor)
        rep = w.request(actor, "GET", f"/api/tables/{table}/permissions")
        if rep.status_int != 200:
            # the table is not readable: every surface must answer like the report does
            expected = 401 if actor == "anon" else 404
            if rep.status_int != expected:
                problems.append(f"{table}: permissions report gave {rep.status_int}")
            rid = ex.record(me)
            for method, url, body in [("GET", ex.base, None), ("POST", ex.base, ex.body(me)),
                                      ("GET", f"{ex.base}/{rid}", None),
                                      ("PATCH", f"{ex.base}/{rid}", {}),
                                      ("DELETE", f"{ex.base}/{rid}", None),
                                      ("DELETE", f"{ex.base}/{rid}?permanent=true", None)]:
                resp = w.request(actor, method, url, body)
                if resp.status_int != expected:
                    problems.append(f"{table}: {method} {url} gave {resp.status_int}, "
                                    f"expected {expected} (table not readable)")
            continue
        report = rep.json
        tperm, rowlevel, fperm = report["table"], report["rowLevel"], report["fields"]
        writable = {n: v["write"] for n, v in fperm.items()}
        deny_status = 401 if actor == "anon" else 403
        # read
        ex.check("read", tperm["read"], w.request(actor, "GET", ex.base), 200, deny_status)
        if tperm["read"]:
            mine, others = ex.record(me), ex.record(stranger)
            got_mine = w.request(actor, "GET", f"{ex.base}/{mine}")
            ex.check("read (row satisfying rules)", True, got_mine, 200, 404)
            got_other = w.request(actor, "GET", f"{ex.base}/{others}")
            ex.check("read (row of another user)", not rowlevel["read"], got_other, 200, 404)
        # create
        resp = w.request(actor, "POST", ex.base, ex.body(me, writable))
        ex.check("create", tperm["create"], resp, 201, deny_status)
        if tperm["create"] and any(f["type"] == "user" for f in ex.fields) and actor != "anon":
            resp = w.request(actor, "POST", ex.base, ex.body(stranger, writable))
            ex.check("create (row for another user)", not rowlevel["create"], resp, 201, 403)
        # update
        text = [n for n, v in writable.items() if v and any(
            f["name"] == n and f["type"] in TEXT_TYPES and not f.get("unique") for f in ex.fields)]
        patch = {text[0]: "changed"} if text else {}
        rid = ex.record(me)
        ex.check("update", tperm["update"], w.request(actor, "PATCH", f"{ex.base}/{rid}", patch),
                 200, deny_status)
        if tperm["update"] and tperm["read"] and not rowlevel["read"]:
            rid = ex.record(stranger)
            ex.check("update (row of another user)", not rowlevel["update"],
                     w.request(actor, "PATCH", f"{ex.base}/{rid}", patch), 200, 403)
        # delete
        rid = ex.record(me)
        ex.check("delete", tperm["delete"], w.request(actor, "DELETE", f"{ex.base}/{rid}"), 204,
                 deny_status)
        if tperm["delete"] and not rowlevel["read"]:
            rid = ex.record(stranger)
            ex.check("delete (row of another user)", not rowlevel["delete"],
                     w.request(actor, "DELETE", f"{ex.base}/{rid}"), 204, 403)
        # restore
        rid = ex.record(me, trashed=True)
        ex.check("restore", tperm["restore"], w.request(actor, "POST", f"{ex.base}/{rid}/restore"), 200,
                 deny_status)
        # permanentDelete
        rid = ex.record(me)
        ex.check("permanentDelete", tperm["permanentDelete"],
                 w.request(actor, "DELETE", f"{ex.base}/{rid}?permanent=true"), 204, deny_status)
        # comment
        rid = ex.record(me)
        ex.check("comment", tperm["comment"],
                 w.request(actor, "POST", f"{ex.base}/{rid}/comments", {"content": "hello"}), 201, deny_status)
        # field reports: readable fields are returned, unreadable ones are not
        rid = ex.record(me)
        got = w.request(actor, "GET", f"{ex.base}/{rid}")
        if got.status_int == 200:
            returned = set(got.json["fields"])
            expected_fields = {n for n, v in fperm.items() if v["read"]} - {
                f["name"] for f in ex.fields if f["type"] == "button"}
            if returned != expected_fields:
                ex.mismatches.append(f"fields returned {sorted(returned)} but report says "
                                     f"readable {sorted(expected_fields)}")
        # a field readable but not writable is refused in a write body
        for name, v in fperm.items():
            field = next(f for f in ex.fields if f["name"] == name)
            if v["read"] and not v["write"] and not field["readOnly"] and tperm["create"]:
                body = ex.body(me, writable)
                body[name] = _value_for(field, me, uuid.uuid4().hex[:8]) if field.get(
                    "type") in TEXT_TYPES else None
                resp = w.request(actor, "POST", ex.base, body)
                ex.check(f"write field {name}", False, resp, 201, deny_status)
        problems += [f"{table}: {m}" for m in ex.mismatches]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("actor", ["viewer", "member", "contractor"])
def test_row_rules_on_current_user_role_and_email(world, actor):
    rows = {aud: world.make("roled", {"title": aud, "audience": aud,
                                      "editors": ["member@example.com"]})
            for aud in ("viewer", "member", "contractor")}
    seen = all_ids(world, actor, q("/api/tables/roled/records", limit=1000))
    assert rows[actor] in seen
    assert not seen & {rid for aud, rid in rows.items() if aud != actor}
    for aud, rid in rows.items():
        resp = world.request(actor, "GET", f"/api/tables/roled/records/{rid}")
        if aud == actor:
            assert resp.status_int == 200
        else:
            check_error(resp, 404, NOT_FOUND)
    resp = world.request(actor, "PATCH", f"/api/tables/roled/records/{rows[actor]}",
                         {"title": "changed"})
    if actor == "viewer":
        check_error(resp, 403, FORBIDDEN)
    elif actor == "member":   # member@example.com is an editor
        assert resp.status_int == 200, resp.body
    else:
        check_error(resp, 403, ROW_RULE)


def test_role_change_takes_effect_on_the_next_request(world):
    """The role is read from the user record on every request (API.md §1.6)."""
    email = f"flip-{uuid.uuid4().hex[:8]}@example.com"
    user = world.app.create_user(email, PASSWORD, role="member")
    token = sign_in(world.app.wsgi, email)
    world.tokens["flip"] = token
    assert world.request("flip", "POST", "/api/tables/defaults/records",
                         {"title": "ok"}).status_int == 201
    resp = world.request("admin", "POST", "/api/auth/admin/set-role",
                         {"userId": user["id"], "role": "viewer"})
    assert resp.status_int == 200, resp.body
    check_error(world.request("flip", "POST", "/api/tables/defaults/records", {"title": "no"}),
                403, FORBIDDEN)
    assert world.request("flip", "GET", "/api/tables/defaults/permissions").json["table"][
        "create"] is False
    resp = world.request("admin", "POST", "/api/auth/admin/set-role",
                         {"userId": user["id"], "role": "contractor"})
    assert resp.status_int == 200, resp.body
    assert world.request("flip", "POST", "/api/tables/inherited/records",
                         {"title": "ok"}).status_int == 201
