"""History, comments, views and activity (API.md §1.9, §1.10, §1.13, §7–§10, §16, §17 items 13
and 18; CONFIG.md §7, §8, §12; OPERATIONS.md §4 housekeeping).

Written from the specification only; exact statuses, messages and stored state are asserted.
"""

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest
import webtest

import sovrium

PASSWORD = "correct-horse-battery-42"
FAILED = "One or more fields failed validation"
T0 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=timezone.utc)
NOT_FOUND = {"success": False, "message": "Resource not found", "code": "NOT_FOUND"}
FORBIDDEN = {"success": False, "code": "FORBIDDEN",
             "message": "You do not have permission to perform this action"}
UNAUTH = {"success": False, "code": "UNAUTHORIZED", "message": "Authentication required"}
IN_TRASH = {"success": False, "code": "CONFLICT", "message": "Record is in the trash"}
TASKS = "/api/tables/tasks/records"
TASK_STORED = ["title", "status", "estimate", "due", "done", "project", "notes", "ref", "tags", "email"]
COMMENT_KEYS = ["id", "tableId", "recordId", "userId", "user", "content", "parentCommentId",
                "createdAt", "updatedAt"]
ACTIVITY_KEYS = ["id", "action", "tableId", "tableName", "recordId", "userId", "createdAt",
                 "changedFields"]


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, **kw):
        self.t += timedelta(**kw)


def ts(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def err(field, message):
    return {"field": field, "message": message}


def assert_400(resp, errors, message=None):
    assert resp.status_int == 400, resp.body
    assert resp.json == {"success": False, "code": "VALIDATION_ERROR",
                         "message": message or errors[0]["message"], "errors": errors}


def first_error_field(resp):
    assert resp.status_int == 400, resp.body
    return resp.json["errors"][0]["field"]


def get(c, url, **params):
    return c.get(url, params=params, expect_errors=True)


def post(c, url, body):
    return c.post_json(url, body, expect_errors=True)


def patch(c, url, body):
    return c.patch_json(url, body, expect_errors=True)


def mk(c, table="tasks", **fields):
    resp = post(c, f"/api/tables/{table}/records", fields)
    assert resp.status_int == 201, resp.body
    return resp.json


def pag(page, limit, offset, total, returned):
    return {"page": page, "limit": limit, "offset": offset, "total": total,
            "totalPages": -(-total // limit) if total else 0,
            "hasNextPage": offset + returned < total, "hasPreviousPage": offset > 0}


def full(**values):
    """A before/after snapshot of a task: every stored field, null where absent."""
    snap = {name: None for name in TASK_STORED}
    snap.update(values)
    return snap


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def capp(make_app, clock, config):
    return make_app(config, clock=clock)


@pytest.fixture
def c(capp):
    return webtest.TestApp(capp.wsgi)


# ================================================================================ §7 history

def test_history_actions_changes_before_after(c, clock):
    rec = mk(c, title="Write launch notes")
    t_create = clock.t
    clock.advance(minutes=1)
    assert patch(c, f"{TASKS}/{rec['id']}", {"status": "doing", "estimate": 2.5}).status_int == 200
    t_update = clock.t
    clock.advance(minutes=1)
    assert c.delete(f"{TASKS}/{rec['id']}").status_int == 204
    t_delete = clock.t
    clock.advance(minutes=1)
    assert post(c, f"{TASKS}/{rec['id']}/restore", {}).status_int == 200
    t_restore = clock.t
    resp = get(c, f"{TASKS}/{rec['id']}/history")
    assert resp.status_int == 200, resp.body
    body = resp.json
    assert set(body) == {"history", "pagination"}
    assert body["pagination"] == pag(1, 50, 0, 4, 4)
    h = body["history"]
    assert [e["action"] for e in h] == ["restore", "delete", "update", "create"]
    assert [e["id"] for e in h] == sorted((e["id"] for e in h), reverse=True)
    for e in h:
        assert set(e) == {"id", "action", "changes", "before", "after", "userId", "createdAt"}
        assert e["userId"] is None
    assert [e["createdAt"] for e in h] == [ts(t_restore), ts(t_delete), ts(t_update), ts(t_create)]
    created = full(title="Write launch notes", status="todo", done=False, ref=1)
    updated = full(title="Write launch notes", status="doing", estimate=2.5, done=False, ref=1)
    restore, delete_, update, create = h
    assert create["before"] is None and create["after"] == created
    assert create["changes"] == {"title": {"from": None, "to": "Write launch notes"},
                                 "status": {"from": None, "to": "todo"},
                                 "done": {"from": None, "to": False},
                                 "ref": {"from": None, "to": 1}}
    assert update["before"] == created and update["after"] == updated
    assert update["changes"] == {"status": {"from": "todo", "to": "doing"},
                                 "estimate": {"from": None, "to": 2.5}}
    assert list(update["changes"]) == ["status", "estimate"]  # configuration order
    for e in (delete_, restore):
        assert e["changes"] == {} and e["before"] == updated and e["after"] == updated


def test_history_rebuilds_before_when_a_field_is_cleared(c):
    rec = mk(c, title="t", notes="n", estimate=3)
    patch(c, f"{TASKS}/{rec['id']}", {"notes": None, "estimate": 4})
    e = get(c, f"{TASKS}/{rec['id']}/history").json["history"][0]
    assert e["before"] == full(title="t", notes="n", estimate=3, status="todo", done=False, ref=1)
    assert e["after"] == full(title="t", estimate=4, status="todo", done=False, ref=1)
    assert e["changes"] == {"estimate": {"from": 3, "to": 4}, "notes": {"from": "n", "to": None}}


def test_history_no_entry_for_unchanged_update(c):
    rec = mk(c, title="t")
    assert patch(c, f"{TASKS}/{rec['id']}", {"title": "t"}).status_int == 200
    assert get(c, f"{TASKS}/{rec['id']}/history").json["pagination"]["total"] == 1


def test_history_pagination_and_params(c):
    rec = mk(c, title="t0")
    for i in range(1, 6):
        patch(c, f"{TASKS}/{rec['id']}", {"title": f"t{i}"})
    body = get(c, f"{TASKS}/{rec['id']}/history", limit="2").json
    assert body["pagination"] == pag(1, 2, 0, 6, 2)
    assert [e["after"]["title"] for e in body["history"]] == ["t5", "t4"]
    body = get(c, f"{TASKS}/{rec['id']}/history", limit="2", page="3").json
    assert body["pagination"] == pag(3, 2, 4, 6, 2)
    assert [e["action"] for e in body["history"]] == ["update", "create"]
    body = get(c, f"{TASKS}/{rec['id']}/history", offset="5").json
    assert body["pagination"] == pag(1, 50, 5, 6, 1)
    body = get(c, f"{TASKS}/{rec['id']}/history", offset="50").json
    assert body["history"] == [] and body["pagination"]["total"] == 6
    assert_400(get(c, f"{TASKS}/{rec['id']}/history", limit="0"),
               [err("limit", "Parameter 'limit' must be between 1 and 1000")])
    assert_400(get(c, f"{TASKS}/{rec['id']}/history", page="1", offset="0"),
               [err("page", "Use either page or offset, not both")])


def test_history_missing_purged_and_other_table(c):
    assert get(c, f"{TASKS}/424242/history").json == NOT_FOUND
    p = mk(c, "projects", name="P")
    assert get(c, f"{TASKS}/{p['id']}/history").json == NOT_FOUND
    rec = mk(c, title="t")
    assert c.delete(f"{TASKS}/{rec['id']}?permanent=true").status_int == 204
    assert get(c, f"{TASKS}/{rec['id']}/history").json == NOT_FOUND


def test_history_of_trashed_record_visible_with_delete_permission_no_auth(c):
    rec = mk(c, title="t")
    c.delete(f"{TASKS}/{rec['id']}")
    resp = get(c, f"{TASKS}/{rec['id']}/history")
    assert resp.status_int == 200
    assert [e["action"] for e in resp.json["history"]] == ["delete", "create"]


def test_history_shows_renamed_field_under_new_name(make_app, config, tmp_path):
    app = make_app(config, db_name="r.db")
    c1 = webtest.TestApp(app.wsgi)
    rec = mk(c1, title="t", notes="n")
    cfg = copy.deepcopy(config)
    cfg["version"] = "1.0.1"
    cfg["tables"][1]["fields"][6]["name"] = "remarks"
    c2 = webtest.TestApp(make_app(cfg, db_name="r.db").wsgi)
    e = get(c2, f"{TASKS}/{rec['id']}/history").json["history"][-1]
    assert e["after"]["remarks"] == "n" and "notes" not in e["after"]
    assert e["changes"]["remarks"] == {"from": None, "to": "n"}


def test_history_retention_via_housekeep(make_app, config, clock):
    config["settings"] = {"historyRetentionDays": 10}
    app = make_app(config, clock=clock)
    c1 = webtest.TestApp(app.wsgi)
    rec = mk(c1, title="old")
    clock.advance(days=5)
    patch(c1, f"{TASKS}/{rec['id']}", {"title": "mid"})
    clock.advance(days=4)
    patch(c1, f"{TASKS}/{rec['id']}", {"title": "new"})
    clock.advance(days=2)  # create is 11 days old, first update 6, second 2
    app.housekeep()
    h = get(c1, f"{TASKS}/{rec['id']}/history").json
    assert [e["after"]["title"] for e in h["history"]] == ["new", "mid"]
    assert h["pagination"]["total"] == 2
    assert get(c1, "/api/activity").json["pagination"]["total"] == 2
    # the record itself is untouched
    assert get(c1, f"{TASKS}/{rec['id']}").json["fields"]["title"] == "new"


def test_history_kept_forever_by_default(capp, c, clock):
    rec = mk(c, title="t")
    clock.advance(days=5000)
    capp.housekeep()
    assert get(c, f"{TASKS}/{rec['id']}/history").json["pagination"]["total"] == 1


def test_history_batch_writes_one_entry_per_record(c):
    resp = post(c, TASKS + "/batch", {"records": [{"title": "a"}, {"title": "b"}]})
    ids = [r["id"] for r in resp.json["records"]]
    patch(c, TASKS + "/batch", {"records": [{"id": i, "done": True} for i in ids]})
    for i in ids:
        h = get(c, f"{TASKS}/{i}/history").json["history"]
        assert [e["action"] for e in h] == ["update", "create"]
        assert h[0]["changes"] == {"done": {"from": False, "to": True}}


# ================================================================================ §8 comments

def curl(rid, cid=None, table="tasks"):
    base = f"/api/tables/{table}/records/{rid}/comments"
    return base if cid is None else f"{base}/{cid}"


def test_comment_create_and_shape(c, clock):
    rec = mk(c, title="t")
    resp = post(c, curl(rec["id"]), {"content": "Can we move this to Thursday?"})
    assert resp.status_int == 201, resp.body
    cm = resp.json
    assert set(cm) == set(COMMENT_KEYS)
    assert isinstance(cm["id"], int)
    assert cm == {"id": cm["id"], "tableId": 2, "recordId": rec["id"], "userId": None, "user": None,
                  "content": "Can we move this to Thursday?", "parentCommentId": None,
                  "createdAt": ts(clock.t), "updatedAt": ts(clock.t)}
    assert get(c, curl(rec["id"], cm["id"])).json == cm
    # the table may be named by id
    assert get(c, f"/api/tables/2/records/{rec['id']}/comments/{cm['id']}").json == cm


def test_comment_body_alias(c):
    rec = mk(c, title="t")
    resp = post(c, curl(rec["id"]), {"body": "via body"})
    assert resp.status_int == 201 and resp.json["content"] == "via body"
    resp = post(c, curl(rec["id"]), {"body": "loser", "content": "winner"})
    assert resp.status_int == 201 and resp.json["content"] == "winner"


@pytest.mark.parametrize("body, message", [
    ({}, "Field 'content' is required"),
    ({"content": ""}, "Field 'content' is required"),
    ({"content": "  \n\t "}, "Field 'content' is required"),
    ({"content": None}, "Field 'content' is required"),
    ({"content": "x" * 10001}, "Field 'content' must be at most 10000 characters"),
])
def test_comment_content_rules(c, body, message):
    rec = mk(c, title="t")
    assert_400(post(c, curl(rec["id"]), body), [err("content", message)])
    assert get(c, curl(rec["id"])).json["comments"] == []


def test_comment_content_limits_ok(c):
    rec = mk(c, title="t")
    assert post(c, curl(rec["id"]), {"content": "x" * 10000}).status_int == 201
    assert post(c, curl(rec["id"]), {"content": "é" * 10000}).status_int == 201  # characters
    assert post(c, curl(rec["id"]), {"content": "x"}).status_int == 201


def test_comment_content_not_a_string(c):
    rec = mk(c, title="t")
    assert first_error_field(post(c, curl(rec["id"]), {"content": 5})) == "content"


def test_comment_threading(c):
    rec = mk(c, title="t")
    other = mk(c, title="o")
    root = post(c, curl(rec["id"]), {"content": "root"}).json
    reply = post(c, curl(rec["id"]), {"content": "reply", "parentCommentId": root["id"]}).json
    assert reply["parentCommentId"] == root["id"]
    deep = post(c, curl(rec["id"]), {"content": "deep", "parentCommentId": reply["id"]})
    assert deep.status_int == 201 and deep.json["parentCommentId"] == reply["id"]
    elsewhere = post(c, curl(other["id"]), {"content": "x"}).json
    for parent in (999999, elsewhere["id"]):
        assert_400(post(c, curl(rec["id"]), {"content": "bad", "parentCommentId": parent}),
                   [err("parentCommentId", "Parent comment not found")])
    # deleting a comment keeps its replies and their parentCommentId
    assert c.delete(curl(rec["id"], root["id"])).status_int == 204
    assert get(c, curl(rec["id"], reply["id"])).json["parentCommentId"] == root["id"]
    assert_400(post(c, curl(rec["id"]), {"content": "late", "parentCommentId": root["id"]}),
               [err("parentCommentId", "Parent comment not found")])


def test_comment_list_order_and_pagination(c):
    rec = mk(c, title="t")
    ids = [post(c, curl(rec["id"]), {"content": f"c{i}"}).json["id"] for i in range(5)]
    mk_other = mk(c, title="o")
    post(c, curl(mk_other["id"]), {"content": "elsewhere"})
    body = get(c, curl(rec["id"])).json
    assert set(body) == {"comments", "pagination"}
    assert [x["id"] for x in body["comments"]] == ids
    assert body["pagination"] == pag(1, 50, 0, 5, 5)
    body = get(c, curl(rec["id"]), sortOrder="desc", limit="2").json
    assert [x["id"] for x in body["comments"]] == ids[::-1][:2]
    assert body["pagination"] == pag(1, 2, 0, 5, 2)
    body = get(c, curl(rec["id"]), sortOrder="asc", limit="2", page="3").json
    assert [x["id"] for x in body["comments"]] == ids[4:]
    assert first_error_field(get(c, curl(rec["id"]), sortOrder="newest")) == "sortOrder"
    c.delete(curl(rec["id"], ids[1]))
    body = get(c, curl(rec["id"])).json
    assert [x["id"] for x in body["comments"]] == [ids[0]] + ids[2:]
    assert body["pagination"]["total"] == 4


def test_comment_patch(c, clock):
    rec = mk(c, title="t")
    cm = post(c, curl(rec["id"]), {"content": "first"}).json
    clock.advance(minutes=7)
    resp = patch(c, curl(rec["id"], cm["id"]), {"content": "second"})
    assert resp.status_int == 200, resp.body
    assert resp.json == {**cm, "content": "second", "updatedAt": ts(clock.t)}
    resp = patch(c, curl(rec["id"], cm["id"]), {"body": "third"})
    assert resp.status_int == 200 and resp.json["content"] == "third"
    assert_400(patch(c, curl(rec["id"], cm["id"]), {"content": " "}),
               [err("content", "Field 'content' is required")])
    assert get(c, curl(rec["id"], cm["id"])).json["content"] == "third"


def test_comment_not_found_cases(c):
    rec = mk(c, title="t")
    other = mk(c, title="o")
    cm = post(c, curl(rec["id"]), {"content": "x"}).json
    assert get(c, curl(other["id"], cm["id"])).json == NOT_FOUND
    assert patch(c, curl(other["id"], cm["id"]), {"content": "y"}).json == NOT_FOUND
    assert c.delete(curl(other["id"], cm["id"]), expect_errors=True).json == NOT_FOUND
    assert get(c, curl(rec["id"], 99999)).json == NOT_FOUND
    assert get(c, curl(rec["id"], "01")).json == NOT_FOUND
    assert get(c, curl(424242)).json == NOT_FOUND
    assert post(c, curl(424242), {"content": "x"}).json == NOT_FOUND
    assert c.delete(curl(rec["id"], cm["id"])).status_int == 204
    assert get(c, curl(rec["id"], cm["id"])).json == NOT_FOUND
    assert patch(c, curl(rec["id"], cm["id"]), {"content": "y"}).json == NOT_FOUND
    assert c.delete(curl(rec["id"], cm["id"]), expect_errors=True).json == NOT_FOUND


def test_comments_on_trashed_record_no_auth(c):
    rec = mk(c, title="t")
    cm = post(c, curl(rec["id"]), {"content": "x"}).json
    c.delete(f"{TASKS}/{rec['id']}")
    # the local user has the delete permission: it can read, but nobody can write
    body = get(c, curl(rec["id"])).json
    assert [x["id"] for x in body["comments"]] == [cm["id"]]
    assert get(c, curl(rec["id"], cm["id"])).json == cm
    resp = post(c, curl(rec["id"]), {"content": "y"})
    assert resp.status_int == 409 and resp.json == IN_TRASH
    resp = patch(c, curl(rec["id"], cm["id"]), {"content": "y"})
    assert resp.status_int == 409 and resp.json == IN_TRASH
    resp = c.delete(curl(rec["id"], cm["id"]), expect_errors=True)
    assert resp.status_int == 409 and resp.json == IN_TRASH
    post(c, f"{TASKS}/{rec['id']}/restore", {})
    assert post(c, curl(rec["id"]), {"content": "y"}).status_int == 201


def test_comments_removed_on_purge(capp, c, tmp_path):
    rec = mk(c, title="t")
    post(c, curl(rec["id"]), {"content": "x"})
    post(c, curl(rec["id"]), {"content": "y"})
    keep = mk(c, title="k")
    post(c, curl(keep["id"]), {"content": "z"})
    assert c.delete(f"{TASKS}/{rec['id']}?permanent=true").status_int == 204
    con = sovrium.apsw.Connection(str(tmp_path / "test.db"), flags=sovrium.apsw.SQLITE_OPEN_READONLY)
    try:
        rows = [tuple(r) for r in con.execute("SELECT record_id FROM comments")]
    finally:
        con.close()
    assert rows == [(keep["id"],)]
    assert get(c, curl(rec["id"])).json == NOT_FOUND


# ================================================================================ §9 views

VIEW_OPEN = {"id": "open", "name": "Open tasks", "isDefault": True,
             "filters": {"and": [{"field": "done", "operator": "isFalse"}]},
             "sorts": [{"field": "due", "direction": "asc"}], "fields": None,
             "groupBy": {"field": "status", "direction": "asc"}}


@pytest.fixture
def vconfig(config):
    config["tables"][1]["views"].extend([
        {"id": 7, "name": "Slim", "fields": ["due", "title"]},
        {"id": "by-status-desc", "name": "Desc", "groupBy": {"field": "status", "direction": "desc"},
         "fields": ["title", "status"]},
    ])
    return config


@pytest.fixture
def vc(make_app, vconfig):
    return webtest.TestApp(make_app(vconfig).wsgi)


def test_views_list_and_get(vc):
    resp = get(vc, "/api/tables/tasks/views")
    assert resp.status_int == 200
    views = resp.json["views"]
    assert list(resp.json) == ["views"]
    assert views[0] == VIEW_OPEN
    assert views[1] == {"id": 7, "name": "Slim", "isDefault": False, "filters": None, "sorts": [],
                        "fields": ["due", "title"], "groupBy": None}
    assert views[2]["id"] == "by-status-desc"
    assert views[2]["groupBy"] == {"field": "status", "direction": "desc"}
    assert get(vc, "/api/tables/tasks/views/open").json == VIEW_OPEN
    assert get(vc, "/api/tables/2/views/7").json == views[1]
    assert get(vc, "/api/tables/projects/views").json == {"views": []}
    for bad in ("nope", "8", "OPEN"):
        assert get(vc, f"/api/tables/tasks/views/{bad}").json == NOT_FOUND
        assert get(vc, f"/api/tables/tasks/views/{bad}/records").json == NOT_FOUND
    assert get(vc, "/api/tables/nope/views").json == NOT_FOUND


def seed_view_tasks(c):
    r = {}
    r["a"] = mk(c, title="a", status="doing", due="2026-03-05")
    r["b"] = mk(c, title="b", status="todo", due="2026-03-01")
    r["c"] = mk(c, title="c", status="todo", due="2026-03-03", done=True)
    r["d"] = mk(c, title="d", status=None, due="2026-03-09")
    r["e"] = mk(c, title="e", status="done", due="2026-03-02")
    r["f"] = mk(c, title="f", status="todo", due="2026-03-04")
    r["g"] = mk(c, title="g", status="doing", due="2026-03-01")
    return r


def titles(resp):
    assert resp.status_int == 200, resp.body
    return [x["fields"]["title"] for x in resp.json["records"]]


def test_view_records_filter_sort_groups(vc):
    seed_view_tasks(vc)
    url = "/api/tables/tasks/views/open/records"
    resp = get(vc, url)
    # done filtered out; group field (status asc: empty first, then option order), then due asc
    assert titles(resp) == ["d", "b", "f", "g", "a", "e"]
    assert resp.json["groups"] == [{"value": None, "count": 1}, {"value": "todo", "count": 2},
                                   {"value": "doing", "count": 2}, {"value": "done", "count": 1}]
    assert resp.json["pagination"] == pag(1, 10, 0, 6, 6)
    # groups are computed over all matching records, not the page
    resp = get(vc, url, limit="2", page="2")
    assert titles(resp) == ["f", "g"]
    assert resp.json["groups"] == [{"value": None, "count": 1}, {"value": "todo", "count": 2},
                                   {"value": "doing", "count": 2}, {"value": "done", "count": 1}]
    # request filter AND view filter
    resp = get(vc, url, filter="status:todo")
    assert titles(resp) == ["b", "f"]
    assert resp.json["groups"] == [{"value": "todo", "count": 2}]
    assert resp.json["pagination"]["total"] == 2
    # request sort replaces the view's sorts, but the group field stays first
    resp = get(vc, url, sort="-title")
    assert titles(resp) == ["d", "f", "b", "g", "a", "e"]
    resp = get(vc, url, search="a")
    assert titles(resp) == ["a"]
    # includeDeleted is ignored
    resp = get(vc, url, includeDeleted="true")
    assert titles(resp) == ["d", "b", "f", "g", "a", "e"]
    assert "deletedAt" not in resp.json["records"][0]


def test_view_group_direction_desc_and_fields(vc):
    seed_view_tasks(vc)
    resp = get(vc, "/api/tables/tasks/views/by-status-desc/records", limit="100")
    assert resp.json["groups"] == [{"value": "done", "count": 1}, {"value": "doing", "count": 2},
                                   {"value": "todo", "count": 3}, {"value": None, "count": 1}]
    assert titles(resp) == ["e", "a", "g", "b", "c", "f", "d"]
    assert set(resp.json["records"][0]["fields"]) == {"title", "status"}


def test_view_fields_restrict_and_request_subset(vc):
    r = seed_view_tasks(vc)
    url = "/api/tables/tasks/views/7/records"
    resp = get(vc, url)
    rec = resp.json["records"][0]
    assert set(rec["fields"]) == {"title", "due"}
    assert set(rec) == {"id", "fields", "createdAt", "updatedAt", "createdBy", "updatedBy"}
    assert "groups" not in resp.json
    assert [x["id"] for x in resp.json["records"]] == sorted(x["id"] for x in r.values())
    resp = get(vc, url, fields="title")
    assert resp.json["records"][0]["fields"] == {"title": "a"}
    assert_400(get(vc, url, fields="title,notes"), [err("fields", "Unknown field 'notes'")])
    assert_400(get(vc, url, fields="bogus"), [err("fields", "Unknown field 'bogus'")])


def test_view_records_trash_never_shown(vc):
    r = seed_view_tasks(vc)
    vc.delete(f"{TASKS}/{r['b']['id']}")
    resp = get(vc, "/api/tables/tasks/views/open/records")
    assert "b" not in titles(resp)
    assert {"value": "todo", "count": 1} in resp.json["groups"]


def test_view_records_bad_params(vc):
    url = "/api/tables/tasks/views/open/records"
    assert_400(get(vc, url, limit="0"), [err("limit", "Parameter 'limit' must be between 1 and 1000")])
    assert_400(get(vc, url, sort="bogus"), [err("sort", "Unknown field 'bogus'")])


# ================================================================================ §10 activity (no auth)

def test_activity_list_and_filters(c, clock):
    a = mk(c, title="a")                     # T0
    clock.advance(hours=1)
    p = mk(c, "projects", name="P")          # T0+1h
    clock.advance(hours=1)
    patch(c, f"{TASKS}/{a['id']}", {"status": "doing", "estimate": 3})  # T0+2h
    clock.advance(days=1)
    c.delete(f"{TASKS}/{a['id']}")           # T0+1d2h
    clock.advance(days=1)
    post(c, f"{TASKS}/{a['id']}/restore", {})  # T0+2d2h
    resp = get(c, "/api/activity")
    assert resp.status_int == 200, resp.body
    body = resp.json
    assert set(body) == {"activities", "pagination"}
    acts = body["activities"]
    assert body["pagination"] == pag(1, 50, 0, 5, 5)
    assert [x["action"] for x in acts] == ["restore", "delete", "update", "create", "create"]
    assert [x["id"] for x in acts] == sorted((x["id"] for x in acts), reverse=True)
    for x in acts:
        assert set(x) == set(ACTIVITY_KEYS)
    upd = acts[2]
    assert upd == {"id": upd["id"], "action": "update", "tableId": 2, "tableName": "tasks",
                   "recordId": a["id"], "userId": None, "createdAt": ts(T0 + timedelta(hours=2)),
                   "changedFields": ["status", "estimate"]}
    assert acts[3]["tableName"] == "projects" and acts[3]["recordId"] == p["id"]
    assert acts[0]["changedFields"] == [] and acts[1]["changedFields"] == []

    def actions(**params):
        resp = get(c, "/api/activity", **params)
        assert resp.status_int == 200, resp.body
        return [x["action"] for x in resp.json["activities"]]

    assert actions(tableId="1") == ["create"]
    assert actions(tableName="tasks") == ["restore", "delete", "update", "create"]
    assert actions(tableName="nope") == []
    assert actions(tableId="99") == []
    assert actions(recordId=str(a["id"])) == ["restore", "delete", "update", "create"]
    assert actions(recordId=str(p["id"]), tableName="tasks") == []
    assert actions(action="update") == ["update"]
    assert actions(action="create", tableName="tasks") == ["create"]
    assert actions(userId="abc") == []
    # time ranges: inclusive bounds, date-only `to` is the end of that day
    assert actions(to="2026-03-01") == ["update", "create", "create"]
    assert actions(**{"from": "2026-03-02"}) == ["restore", "delete"]
    assert actions(**{"from": ts(T0 + timedelta(hours=1)), "to": ts(T0 + timedelta(hours=2))}) == \
        ["update", "create"]
    assert actions(**{"from": "2026-03-01T11:00:00+01:00", "to": "2026-03-01T10:00:00"}) == ["create"]
    assert actions(**{"from": "2026-03-01", "to": "2026-03-01"}) == ["update", "create", "create"]
    body = get(c, "/api/activity", limit="2", page="2").json
    assert [x["action"] for x in body["activities"]] == ["update", "create"]
    assert body["pagination"] == pag(2, 2, 2, 5, 2)


def test_activity_parameter_errors(c):
    resp = get(c, "/api/activity", action="edit")
    assert first_error_field(resp) == "action"
    assert resp.json["message"] == resp.json["errors"][0]["message"]  # message unspecified
    assert_400(get(c, "/api/activity", **{"from": "2026-03-02", "to": "2026-03-01"}),
               [err("from", "from must not be later than to")])
    assert_400(get(c, "/api/activity", **{"from": "2026-03-01T00:00:01Z", "to": "2026-03-01T00:00:00Z"}),
               [err("from", "from must not be later than to")])
    assert_400(get(c, "/api/activity", **{"from": "yesterday"}),
               [err("from", "Parameter 'from' must be an ISO 8601 date or date-time")])
    assert_400(get(c, "/api/activity", to="2026-02-30"),
               [err("to", "Parameter 'to' must be an ISO 8601 date or date-time")])
    assert_400(get(c, "/api/activity", tableId="x"), [err("tableId", "Parameter 'tableId' must be an integer")])
    assert_400(get(c, "/api/activity", recordId="1.5"),
               [err("recordId", "Parameter 'recordId' must be an integer")])
    assert_400(get(c, "/api/activity", limit="1001"),
               [err("limit", "Parameter 'limit' must be between 1 and 1000")])


def test_activity_detail(c):
    a = mk(c, title="a")
    patch(c, f"{TASKS}/{a['id']}", {"notes": "n"})
    entry = get(c, "/api/activity", action="update").json["activities"][0]
    resp = get(c, f"/api/activity/{entry['id']}")
    assert resp.status_int == 200, resp.body
    d = resp.json
    assert set(d) == set(ACTIVITY_KEYS) | {"before", "after", "changes"}
    assert {k: d[k] for k in ACTIVITY_KEYS} == entry
    assert d["before"] == full(title="a", status="todo", done=False, ref=1)
    assert d["after"] == full(title="a", status="todo", done=False, ref=1, notes="n")
    assert d["changes"] == {"notes": {"from": None, "to": "n"}}
    # the history endpoint shows the same entry
    h = get(c, f"{TASKS}/{a['id']}/history").json["history"][0]
    assert h["id"] == d["id"] and h["before"] == d["before"] and h["after"] == d["after"]
    for bad in ("999999", "abc", "01", "0", "-1"):
        assert get(c, f"/api/activity/{bad}").json == NOT_FOUND


def test_activity_keeps_purged_records(c):
    a = mk(c, title="a")
    c.delete(f"{TASKS}/{a['id']}?permanent=true")
    acts = get(c, "/api/activity", recordId=str(a["id"])).json["activities"]
    assert [x["action"] for x in acts] == ["purge", "create"]
    d = get(c, f"/api/activity/{acts[0]['id']}").json
    assert d["after"] is None
    assert d["before"] == full(title="a", status="todo", done=False, ref=1)


# ================================================================================ auth mode

AUTH_CONFIG = {
    "name": "cva-auth", "version": "1.0.0",
    "auth": {"strategies": [{"type": "emailAndPassword"}]},
    "tables": [
        {"id": 1, "name": "notes",
         "fields": [{"id": 1, "name": "title", "type": "single-line-text"},
                    {"id": 2, "name": "secret", "type": "single-line-text"},
                    {"id": 3, "name": "kind", "type": "single-select", "options": ["a", "b"]}],
         "permissions": {"delete": ["admin"],
                         "fields": [{"field": "secret", "read": ["admin"], "write": ["admin"]}]},
         "views": [
             {"id": "all", "name": "All"},
             {"id": "staff", "name": "Staff", "permissions": {"read": ["admin"]}},
             {"id": "secretive", "name": "Secretive", "groupBy": "secret",
              "filters": {"field": "secret", "operator": "isNotEmpty"},
              "sorts": [{"field": "secret", "direction": "desc"}, {"field": "title", "direction": "asc"}],
              "fields": ["title", "secret"]},
         ]},
        {"id": 2, "name": "private",
         "fields": [{"id": 1, "name": "title", "type": "single-line-text"},
                    {"id": 2, "name": "owner", "type": "single-line-text"}],
         "rowLevelPermissions": {"read": {"field": "owner", "operator": "eq",
                                          "value": "$currentUser.id"}},
         "views": [{"id": "mine", "name": "Mine"}]},
        {"id": 3, "name": "hidden", "fields": [{"id": 1, "name": "title", "type": "single-line-text"}],
         "permissions": {"read": ["admin"]}},
        {"id": 4, "name": "public", "fields": [{"id": 1, "name": "title", "type": "single-line-text"}],
         "permissions": {"read": "all", "comment": "all"}},
        {"id": 5, "name": "readonly_public",
         "fields": [{"id": 1, "name": "title", "type": "single-line-text"}],
         "permissions": {"read": "all"}},
    ],
}


class Actors:
    def __init__(self, app):
        self.app = app
        self.client = webtest.TestApp(app.wsgi)
        self.users, self.tokens = {}, {}

    def add(self, name, role):
        email = f"{name}@example.com"
        self.users[name] = self.app.create_user(email, PASSWORD, name=name.title(), role=role)
        resp = webtest.TestApp(self.app.wsgi).post_json("/api/auth/sign-in/email",
                                                        {"email": email, "password": PASSWORD})
        assert resp.status_int == 200, resp.body
        self.tokens[name] = resp.json["token"]

    def uid(self, name):
        return self.users[name]["id"]

    def req(self, actor, method, url, body=None, params=None):
        self.client.reset()
        headers = {} if actor == "anon" else {"Authorization": "Bearer " + self.tokens[actor]}
        if params:
            from urllib.parse import urlencode
            url += "?" + urlencode(params)
        kw = {"method": method, "headers": headers, "expect_errors": True}
        if body is not None:
            kw["body"] = json.dumps(body).encode()
            kw["content_type"] = "application/json"
        return self.client.request(url, **kw)

    def make(self, table, actor="admin", **fields):
        resp = self.req(actor, "POST", f"/api/tables/{table}/records", fields)
        assert resp.status_int == 201, resp.body
        return resp.json


@pytest.fixture
def actors(make_app, clock):
    a = Actors(make_app(AUTH_CONFIG, clock=clock))
    a.add("admin", "admin")
    a.add("mem", "member")
    a.add("other", "member")
    a.add("view", "viewer")
    return a


def test_auth_history_field_stripping(actors):
    rec = actors.make("notes", title="t", secret="s1")
    actors.req("admin", "PATCH", f"/api/tables/notes/records/{rec['id']}", {"secret": "s2"})
    actors.req("admin", "PATCH", f"/api/tables/notes/records/{rec['id']}", {"title": "t2"})
    h = actors.req("mem", "GET", f"/api/tables/notes/records/{rec['id']}/history").json["history"]
    assert [e["action"] for e in h] == ["update", "update", "create"]
    assert h[0]["changes"] == {"title": {"from": "t", "to": "t2"}}
    assert h[0]["before"] == {"title": "t", "kind": None}
    assert h[0]["after"] == {"title": "t2", "kind": None}
    # an entry whose only change was stripped remains
    assert h[1]["changes"] == {} and h[1]["before"] == h[1]["after"] == {"title": "t", "kind": None}
    assert h[2]["changes"] == {"title": {"from": None, "to": "t"}}
    assert h[2]["userId"] == actors.uid("admin")
    h = actors.req("admin", "GET", f"/api/tables/notes/records/{rec['id']}/history").json["history"]
    assert h[1]["changes"] == {"secret": {"from": "s1", "to": "s2"}}
    # activity strips the same way
    acts = actors.req("mem", "GET", "/api/activity", params={"tableName": "notes"}).json["activities"]
    assert [x["changedFields"] for x in acts] == [["title"], [], ["title"]]
    d = actors.req("mem", "GET", f"/api/activity/{acts[1]['id']}").json
    assert d["changes"] == {} and "secret" not in d["before"] and "secret" not in d["after"]
    acts = actors.req("admin", "GET", "/api/activity", params={"tableName": "notes"}).json["activities"]
    assert [x["changedFields"] for x in acts] == [["title"], ["secret"], ["title", "secret"]]


def test_auth_history_access(actors):
    rec = actors.make("notes", title="t")
    url = f"/api/tables/notes/records/{rec['id']}/history"
    assert actors.req("view", "GET", url).status_int == 200
    assert actors.req("anon", "GET", url).json == UNAUTH
    hidden = actors.make("hidden", title="h")
    assert actors.req("mem", "GET", f"/api/tables/hidden/records/{hidden['id']}/history").json == NOT_FOUND
    assert actors.req("anon", "GET", f"/api/tables/hidden/records/{hidden['id']}/history").json == UNAUTH
    pub = actors.make("readonly_public", title="p")
    assert actors.req("anon", "GET",
                      f"/api/tables/readonly_public/records/{pub['id']}/history").status_int == 200
    # row-level read
    theirs = actors.make("private", title="x", owner=actors.uid("other"))
    purl = f"/api/tables/private/records/{theirs['id']}/history"
    assert actors.req("mem", "GET", purl).json == NOT_FOUND
    assert actors.req("other", "GET", purl).status_int == 200
    # trashed record: only callers with delete permission (notes: admin only)
    actors.req("admin", "DELETE", f"/api/tables/notes/records/{rec['id']}")
    assert actors.req("mem", "GET", url).json == NOT_FOUND
    assert actors.req("view", "GET", url).json == NOT_FOUND
    assert [e["action"] for e in actors.req("admin", "GET", url).json["history"]] == ["delete", "create"]
    # private: members have the default delete permission
    actors.req("admin", "DELETE", f"/api/tables/private/records/{theirs['id']}")
    assert actors.req("other", "GET", purl).status_int == 200
    assert actors.req("mem", "GET", purl).json == NOT_FOUND


def test_auth_comments_author_rules(actors):
    rec = actors.make("notes", title="t")
    url = f"/api/tables/notes/records/{rec['id']}/comments"
    resp = actors.req("mem", "POST", url, {"content": "mine"})
    assert resp.status_int == 201, resp.body
    cm = resp.json
    assert cm["userId"] == actors.uid("mem")
    assert cm["user"] == {"id": actors.uid("mem"), "name": "Mem"}
    curl_ = f"{url}/{cm['id']}"
    assert actors.req("other", "PATCH", curl_, {"content": "hijack"}).json == FORBIDDEN
    assert actors.req("admin", "PATCH", curl_, {"content": "admin edit"}).json == FORBIDDEN
    assert actors.req("anon", "PATCH", curl_, {"content": "x"}).json == UNAUTH
    assert actors.req("other", "DELETE", curl_).json == FORBIDDEN
    assert actors.req("view", "DELETE", curl_).json == FORBIDDEN
    assert actors.req("anon", "DELETE", curl_).json == UNAUTH
    resp = actors.req("mem", "PATCH", curl_, {"content": "edited"})
    assert resp.status_int == 200 and resp.json["content"] == "edited"
    assert actors.req("admin", "DELETE", curl_).status_int == 204
    assert actors.req("mem", "GET", curl_).json == NOT_FOUND
    mine2 = actors.req("other", "POST", url, {"content": "x"}).json
    assert actors.req("other", "DELETE", f"{url}/{mine2['id']}").status_int == 204
    # viewers comment by default; anonymous cannot read this table at all
    assert actors.req("view", "POST", url, {"content": "v"}).status_int == 201
    assert actors.req("anon", "GET", url).json == UNAUTH
    assert actors.req("anon", "POST", url, {"content": "a"}).json == UNAUTH


def test_auth_anonymous_comments_only_with_comment_all(actors):
    pub = actors.make("public", title="p")
    url = f"/api/tables/public/records/{pub['id']}/comments"
    resp = actors.req("anon", "POST", url, {"content": "hello"})
    assert resp.status_int == 201, resp.body
    assert resp.json["userId"] is None and resp.json["user"] is None
    assert actors.req("anon", "GET", url).json["comments"][0]["content"] == "hello"
    # anonymous comments cannot be edited or deleted by anyone anonymous
    assert actors.req("anon", "PATCH", f"{url}/{resp.json['id']}", {"content": "x"}).json == UNAUTH
    ro = actors.make("readonly_public", title="r")
    rurl = f"/api/tables/readonly_public/records/{ro['id']}/comments"
    assert actors.req("anon", "POST", rurl, {"content": "x"}).json == UNAUTH
    assert actors.req("anon", "GET", rurl).status_int == 200
    assert actors.req("mem", "POST", rurl, {"content": "x"}).status_int == 201


def test_auth_comments_invisible_and_trashed_records(actors):
    theirs = actors.make("private", title="x", owner=actors.uid("other"))
    url = f"/api/tables/private/records/{theirs['id']}/comments"
    cm = actors.req("other", "POST", url, {"content": "x"}).json
    assert actors.req("mem", "GET", url).json == NOT_FOUND
    assert actors.req("mem", "POST", url, {"content": "y"}).json == NOT_FOUND
    assert actors.req("mem", "GET", f"{url}/{cm['id']}").json == NOT_FOUND
    h = actors.make("hidden", title="h")
    assert actors.req("mem", "GET", f"/api/tables/hidden/records/{h['id']}/comments").json == NOT_FOUND
    # notes: delete is admin-only, so members see nothing of a trashed record
    rec = actors.make("notes", title="t")
    nurl = f"/api/tables/notes/records/{rec['id']}/comments"
    ncm = actors.req("mem", "POST", nurl, {"content": "before trash"}).json
    actors.req("admin", "DELETE", f"/api/tables/notes/records/{rec['id']}")
    assert actors.req("mem", "GET", nurl).json == NOT_FOUND
    assert actors.req("mem", "GET", f"{nurl}/{ncm['id']}").json == NOT_FOUND
    assert actors.req("mem", "POST", nurl, {"content": "x"}).json == NOT_FOUND
    assert actors.req("mem", "PATCH", f"{nurl}/{ncm['id']}", {"content": "x"}).json == NOT_FOUND
    assert actors.req("admin", "GET", nurl).json["comments"][0]["id"] == ncm["id"]
    assert actors.req("admin", "POST", nurl, {"content": "x"}).json == IN_TRASH
    assert actors.req("admin", "DELETE", f"{nurl}/{ncm['id']}").json == IN_TRASH
    # private: the owner has the delete permission and can read, not write
    actors.req("other", "DELETE", f"/api/tables/private/records/{theirs['id']}")
    assert actors.req("other", "GET", url).status_int == 200
    assert actors.req("other", "POST", url, {"content": "z"}).json == IN_TRASH
    assert actors.req("other", "PATCH", f"{url}/{cm['id']}", {"content": "z"}).json == IN_TRASH


def test_auth_views_permissions_and_hidden_fields(actors):
    for t, s, k in (("n1", "zz", "a"), ("n2", None, "b"), ("n3", "aa", "a"), ("n4", "zz", None)):
        actors.make("notes", title=t, secret=s, kind=k)
    views = actors.req("mem", "GET", "/api/tables/notes/views").json["views"]
    assert [v["id"] for v in views] == ["all", "secretive"]
    assert [v["id"] for v in actors.req("admin", "GET", "/api/tables/notes/views").json["views"]] == \
        ["all", "staff", "secretive"]
    sec = views[1]
    # clarification 18: hidden field references are removed from the view object
    assert sec == {"id": "secretive", "name": "Secretive", "isDefault": False, "filters": None,
                   "sorts": [{"field": "title", "direction": "asc"}], "fields": ["title"],
                   "groupBy": None}
    adm = actors.req("admin", "GET", "/api/tables/notes/views/secretive").json
    assert adm["filters"] == {"field": "secret", "operator": "isNotEmpty"} or \
        adm["filters"] == {"and": [{"field": "secret", "operator": "isNotEmpty"}]}
    assert adm["groupBy"] == {"field": "secret", "direction": "asc"}
    assert adm["fields"] == ["title", "secret"]
    assert actors.req("mem", "GET", "/api/tables/notes/views/staff").json == NOT_FOUND
    assert actors.req("mem", "GET", "/api/tables/notes/views/staff/records").json == NOT_FOUND
    assert actors.req("admin", "GET", "/api/tables/notes/views/staff/records").status_int == 200
    assert actors.req("anon", "GET", "/api/tables/notes/views").json == UNAUTH
    assert actors.req("anon", "GET", "/api/tables/notes/views/all").json == UNAUTH
    assert actors.req("anon", "GET", "/api/tables/public/views").json == {"views": []}
    assert actors.req("anon", "GET", "/api/tables/public/views/x").json == NOT_FOUND
    # the view's filter and group order apply with the server's rights; groups are hidden
    resp = actors.req("mem", "GET", "/api/tables/notes/views/secretive/records")
    assert resp.status_int == 200, resp.body
    body = resp.json
    assert "groups" not in body
    assert [r["fields"] for r in body["records"]] == [{"title": "n3"}, {"title": "n1"}, {"title": "n4"}]
    resp = actors.req("admin", "GET", "/api/tables/notes/views/secretive/records")
    assert resp.json["groups"] == [{"value": "aa", "count": 1}, {"value": "zz", "count": 2}]
    # a request `fields` naming the hidden field is unknown for the member
    resp = actors.req("mem", "GET", "/api/tables/notes/views/secretive/records",
                      params={"fields": "secret"})
    assert_400(resp, [err("fields", "Unknown field 'secret'")])
    resp = actors.req("mem", "GET", "/api/tables/notes/views/all/records",
                      params={"filter": "secret:zz"})
    assert_400(resp, [err("filter", "Unknown field 'secret'")])


def test_auth_view_records_apply_row_level_read(actors):
    actors.make("private", title="m", owner=actors.uid("mem"))
    actors.make("private", title="o", owner=actors.uid("other"))
    resp = actors.req("mem", "GET", "/api/tables/private/views/mine/records")
    assert [r["fields"]["title"] for r in resp.json["records"]] == ["m"]
    assert resp.json["pagination"]["total"] == 1


def test_auth_activity_visibility(actors):
    n = actors.make("notes", title="n")
    h = actors.make("hidden", title="h")
    mine = actors.make("private", title="m", owner=actors.uid("mem"))
    theirs = actors.make("private", title="o", owner=actors.uid("other"))
    mine_trashed = actors.make("private", title="mt", owner=actors.uid("mem"))
    actors.req("admin", "DELETE", f"/api/tables/private/records/{mine_trashed['id']}")
    assert actors.req("anon", "GET", "/api/activity").json == UNAUTH
    assert actors.req("anon", "GET", "/api/activity/1").json == UNAUTH

    def ids(actor, **params):
        resp = actors.req(actor, "GET", "/api/activity", params=params)
        assert resp.status_int == 200, resp.body
        return [(x["tableName"], x["recordId"], x["action"]) for x in resp.json["activities"]]

    all_ = ids("admin")
    assert len(all_) == 6 and ("hidden", h["id"], "create") in all_
    seen = ids("mem")
    # hidden table excluded; private only for live records passing the read rule
    assert seen == [("private", mine["id"], "create"), ("notes", n["id"], "create")]
    assert ids("other") == [("private", theirs["id"], "create"), ("notes", n["id"], "create")]
    assert ids("mem", tableName="hidden") == []
    assert ids("mem", tableId="3") == []
    assert ids("mem", recordId=str(theirs["id"])) == []
    # detail of an invisible entry → 404
    hid_entry = actors.req("admin", "GET", "/api/activity",
                           params={"tableName": "hidden"}).json["activities"][0]
    assert actors.req("mem", "GET", f"/api/activity/{hid_entry['id']}").json == NOT_FOUND
    assert actors.req("admin", "GET", f"/api/activity/{hid_entry['id']}").status_int == 200
    their_entry = actors.req("admin", "GET", "/api/activity",
                             params={"recordId": str(theirs["id"])}).json["activities"][0]
    assert actors.req("mem", "GET", f"/api/activity/{their_entry['id']}").json == NOT_FOUND
    # userId filter
    actors.req("mem", "PATCH", f"/api/tables/notes/records/{n['id']}", {"title": "by mem"})
    got = actors.req("admin", "GET", "/api/activity", params={"userId": actors.uid("mem")}).json
    assert [(x["action"], x["userId"]) for x in got["activities"]] == [("update", actors.uid("mem"))]
    assert ids("view", userId=actors.uid("admin"), tableName="notes") == [("notes", n["id"], "create")]


@pytest.mark.parametrize("parent", ["1", 1.5, True, 0, -4])
def test_comment_parent_not_an_integer_id(c, parent):
    rec = mk(c, title="t")
    post(c, curl(rec["id"]), {"content": "root"})
    assert_400(post(c, curl(rec["id"]), {"content": "x", "parentCommentId": parent}),
               [err("parentCommentId", "Parent comment not found")])


def test_comment_parent_null_is_a_root_comment(c):
    rec = mk(c, title="t")
    resp = post(c, curl(rec["id"]), {"content": "x", "parentCommentId": None})
    assert resp.status_int == 201 and resp.json["parentCommentId"] is None
