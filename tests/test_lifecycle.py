"""Record lifecycle: batch, upsert, trash, restore, purge, retention, concurrency.

Written from the specification only: API.md §1.9, §1.11–§1.13, §4.1, §4.6, §5, §6, §16, §17
(clarifications 9 and 20); CONFIG.md §6.5, §7, §12; OPERATIONS.md §4 (housekeeping) and §11.2.
Exact statuses, messages and stored state are asserted.
"""

import copy
import threading
from datetime import datetime, timedelta, timezone

import pytest
import webtest

import sovrium

ENV = {"SOVRIUM_ARGON2_PROFILE": "test", "SOVRIUM_RATE_LIMITS": "off"}
PASSWORD = "correct-horse-battery-42"
FAILED = "One or more fields failed validation"
T0 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=timezone.utc)
NOT_FOUND = {"success": False, "message": "Resource not found", "code": "NOT_FOUND"}
RESTRICTED = {"success": False, "code": "CONFLICT",
              "message": "Record cannot be deleted because other records reference it"}
STALE = "Record has been modified since the supplied updatedAt"
FORBIDDEN = "You do not have permission to perform this action"
AUTH = "Authentication required"
ROW_RULE = "The record does not satisfy the row-level rule for this action"

TASKS = "/api/tables/tasks/records"
BATCH = TASKS + "/batch"
RESTORE_MANY = TASKS + "/batch/restore"
UPSERT = TASKS + "/upsert"
TRASH = "/api/tables/tasks/trash"


# --------------------------------------------------------------------------------------- helpers

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


def assert_400(resp, errors, message=FAILED, sort=False):
    assert resp.status_int == 400, resp.body
    body = resp.json
    got = body.get("errors")
    if sort and isinstance(got, list):
        got = sorted(got, key=lambda e: (e.get("field"), e.get("message")))
        errors = sorted(errors, key=lambda e: (e["field"], e["message"]))
    assert {**body, "errors": got} == {"success": False, "message": message,
                                       "code": "VALIDATION_ERROR", "errors": errors}


def assert_400_errors(resp, errors):
    """A 400 whose top-level message is either the record-validation message or the first error's
    message (§1.11 leaves open which one applies to item-id errors; see the report)."""
    assert resp.status_int == 400, resp.body
    body = resp.json
    assert body["code"] == "VALIDATION_ERROR" and body["success"] is False
    assert body["errors"] == errors
    assert body["message"] in (FAILED, errors[0]["message"])


def assert_error(resp, status, code, message):
    assert resp.status_int == status, resp.body
    assert resp.json == {"success": False, "code": code, "message": message}


def first_error_field(resp):
    assert resp.status_int == 400, resp.body
    assert resp.json["code"] == "VALIDATION_ERROR"
    return resp.json["errors"][0]["field"]


def post(client, url, body, **kw):
    return client.post_json(url, body, expect_errors=True, **kw)


def patch(client, url, body, **kw):
    return client.patch_json(url, body, expect_errors=True, **kw)


def delete(client, url, body=None, **kw):
    if body is None:
        return client.delete(url, expect_errors=True, **kw)
    return client.delete_json(url, body, expect_errors=True, **kw)


def get(client, url, **params):
    return client.get(url, params=params, expect_errors=True)


def mk(client, table="tasks", **fields):
    resp = post(client, f"/api/tables/{table}/records", {"fields": fields})
    assert resp.status_int == 201, resp.body
    return resp.json


def trash_one(client, rid, table="tasks"):
    resp = delete(client, f"/api/tables/{table}/records/{rid}")
    assert resp.status_int == 204, resp.body


def list_total(client, table="tasks", **params):
    resp = get(client, f"/api/tables/{table}/records", **params)
    assert resp.status_int == 200, resp.body
    return resp.json["pagination"]["total"]


def connect(db_path):
    """Read the database with the application's own SQLite build (apsw): the system sqlite3
    module of this environment does not see the application's later WAL commits."""
    return sovrium.apsw.Connection(db_path, flags=sovrium.apsw.SQLITE_OPEN_READONLY)


def revisions(db_path, where="1=1", args=()):
    con = connect(db_path)
    try:
        return [tuple(r) for r in con.execute(
            f"SELECT record_id, action FROM revisions WHERE {where} ORDER BY id", args)]
    finally:
        con.close()


def count_rows(db_path, sql, args=()):
    con = connect(db_path)
    try:
        return next(iter(con.execute(sql, args)))[0]
    finally:
        con.close()


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "test.db")


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def capp(make_app, clock, config):
    return make_app(config, clock=clock)


@pytest.fixture
def cclient(capp):
    return webtest.TestApp(capp.wsgi)


# =============================================================================== §5.1 batch create

def test_batch_create_wrapped_and_flat_items_in_request_order(client):
    resp = post(client, BATCH, {"records": [{"fields": {"title": "Draft agenda"}},
                                            {"title": "Book room", "due": "2026-03-12"}],
                                "returnRecords": True})
    assert resp.status_int == 201, resp.body
    body = resp.json
    assert set(body) == {"records", "count"}
    assert body["count"] == 2
    recs = body["records"]
    assert [r["fields"]["title"] for r in recs] == ["Draft agenda", "Book room"]
    assert recs[0]["id"] < recs[1]["id"]
    assert recs[0]["fields"]["status"] == "todo"  # default applied
    assert recs[1]["fields"]["due"] == "2026-03-12"
    for r in recs:
        assert set(r) == {"id", "fields", "createdAt", "updatedAt", "createdBy", "updatedBy"}
        assert r["createdAt"] == r["updatedAt"]
        assert r["createdBy"] is None and r["updatedBy"] is None
        assert get(client, f"{TASKS}/{r['id']}").json == r


def test_batch_create_return_records_false(client):
    resp = post(client, BATCH, {"records": [{"title": "a"}, {"title": "b"}, {"title": "c"}],
                                "returnRecords": False})
    assert resp.status_int == 201, resp.body
    assert resp.json == {"count": 3}
    assert list_total(client) == 3


def test_batch_create_default_return_records_true(client):
    resp = post(client, BATCH, {"records": [{"title": "a"}]})
    assert resp.status_int == 201
    assert resp.json["count"] == 1 and len(resp.json["records"]) == 1


def test_batch_create_empty_list(client):
    resp = post(client, BATCH, {"records": []})
    assert_400(resp, [err("records", "At least one record is required")],
               message="At least one record is required")


def test_batch_create_over_configured_limit_413_nothing_written(make_app, config):
    config["settings"] = {"batchLimit": 3}
    client = webtest.TestApp(make_app(config).wsgi)
    resp = post(client, BATCH, {"records": [{"title": str(i)} for i in range(4)]})
    assert_error(resp, 413, "PAYLOAD_TOO_LARGE", "Batch size exceeds maximum of 3 records")
    assert list_total(client) == 0
    resp = post(client, BATCH, {"records": [{"title": str(i)} for i in range(3)]})
    assert resp.status_int == 201 and resp.json["count"] == 3


def test_batch_limit_applies_to_every_batch_endpoint(make_app, config):
    config["settings"] = {"batchLimit": 2}
    client = webtest.TestApp(make_app(config).wsgi)
    msg = "Batch size exceeds maximum of 2 records"
    assert_error(patch(client, BATCH, {"records": [{"id": i, "title": "x"} for i in (1, 2, 3)]}),
                 413, "PAYLOAD_TOO_LARGE", msg)
    assert_error(delete(client, BATCH, {"ids": [1, 2, 3]}), 413, "PAYLOAD_TOO_LARGE", msg)
    assert_error(post(client, RESTORE_MANY, {"ids": [1, 2, 3]}), 413, "PAYLOAD_TOO_LARGE", msg)
    assert_error(post(client, UPSERT, {"records": [{"title": "a"}, {"title": "b"}, {"title": "c"}],
                                       "fieldsToMergeOn": ["title"]}),
                 413, "PAYLOAD_TOO_LARGE", msg)


def test_batch_create_default_limit_is_1000(client):
    resp = post(client, BATCH, {"records": [{"title": "t"}] * 1001, "returnRecords": False})
    assert_error(resp, 413, "PAYLOAD_TOO_LARGE", "Batch size exceeds maximum of 1000 records")
    assert list_total(client) == 0


def test_batch_create_errors_name_items_and_nothing_written(client, db_path):
    resp = post(client, BATCH, {"records": [
        {"title": "ok"},
        {"fields": {"status": "todo"}},
        {"title": "x", "status": "later"},
        {"title": "y", "estimate": "3"},
    ]})
    assert_400(resp, [err("records[1].title", "Field 'title' is required"),
                      err("records[2].status", "Value 'later' is not a valid option for field 'status'"),
                      err("records[3].estimate", "Field 'estimate' must be a number")], sort=True)
    assert list_total(client) == 0
    assert revisions(db_path) == []


def test_batch_create_unknown_and_readonly_keys(client):
    resp = post(client, BATCH, {"records": [{"title": "a"}, {"title": "b", "bogus": 1, "ref": 5}]})
    assert_400(resp, [err("records[1].bogus", "Unknown field 'bogus'"),
                      err("records[1].ref", "Cannot write to readonly field 'ref'")], sort=True)
    assert list_total(client) == 0


def test_batch_create_unique_within_batch_and_against_stored(client):
    mk(client, title="old", email="taken@example.com")
    resp = post(client, BATCH, {"records": [{"title": "a", "email": "new@example.com"},
                                            {"title": "b", "email": "NEW@example.com"},
                                            {"title": "c", "email": "taken@example.com"}]})
    assert_400(resp, [err("records[1].email", "Field 'email' must be unique"),
                      err("records[2].email", "Field 'email' must be unique")], sort=True)
    assert list_total(client) == 1


def test_batch_create_item_not_an_object(client):
    resp = post(client, BATCH, {"records": [{"title": "a"}, "nope"]})
    assert first_error_field(resp) == "records[1]"
    assert list_total(client) == 0


@pytest.mark.parametrize("body", [{}, {"records": {"title": "a"}}, {"records": None}])
def test_batch_create_records_missing_or_not_a_list(client, body):
    assert first_error_field(post(client, BATCH, body)) == "records"


def test_batch_create_1000_items_atomic_last_invalid(client, db_path):
    items = [{"title": f"t{i}", "email": f"u{i}@example.com"} for i in range(999)]
    items.append({"title": "bad", "status": "nope"})
    resp = post(client, BATCH, {"records": items, "returnRecords": False})
    assert_400(resp, [err("records[999].status",
                          "Value 'nope' is not a valid option for field 'status'")])
    assert list_total(client) == 0
    assert revisions(db_path) == []
    assert count_rows(db_path, "SELECT count(*) FROM records") == 0
    # the same batch with a unique clash only at the very end
    items[999] = {"title": "dup", "email": "u0@example.com"}
    resp = post(client, BATCH, {"records": items, "returnRecords": False})
    assert_400(resp, [err("records[999].email", "Field 'email' must be unique")])
    assert count_rows(db_path, "SELECT count(*) FROM records") == 0
    assert revisions(db_path) == []
    # and valid → 1000 records, one history entry each
    items[999] = {"title": "last"}
    resp = post(client, BATCH, {"records": items, "returnRecords": False})
    assert resp.status_int == 201 and resp.json == {"count": 1000}
    assert list_total(client) == 1000
    revs = revisions(db_path)
    assert len(revs) == 1000 and {a for _, a in revs} == {"create"}
    assert len({r for r, _ in revs}) == 1000


def test_batch_create_relationship_to_missing_record(client):
    p = mk(client, "projects", name="P")
    resp = post(client, BATCH, {"records": [{"title": "a", "project": p["id"]},
                                            {"title": "b", "project": 99999}]})
    assert_400(resp, [err("records[1].project",
                          "Field 'project' references a record that does not exist: 99999")])


# =============================================================================== §5.2 batch update

def test_batch_update_wrapped_and_flat(cclient, clock, db_path):
    a = mk(cclient, title="a")
    b = mk(cclient, title="b", estimate=1)
    clock.advance(minutes=5)
    resp = patch(cclient, BATCH, {"records": [{"id": b["id"], "fields": {"done": True}},
                                              {"id": a["id"], "status": "doing"}]})
    assert resp.status_int == 200, resp.body
    body = resp.json
    assert set(body) == {"records", "count"} and body["count"] == 2
    rb, ra = body["records"]
    assert rb["id"] == b["id"] and ra["id"] == a["id"]
    assert rb["fields"]["done"] is True and rb["fields"]["estimate"] == 1
    assert rb["fields"]["title"] == "b" and rb["fields"]["remaining"] == 0
    assert ra["fields"]["status"] == "doing" and ra["fields"]["title"] == "a"
    assert ra["updatedAt"] == rb["updatedAt"] == ts(clock.t)
    assert ra["createdAt"] == a["createdAt"]
    assert get(cclient, f"{TASKS}/{a['id']}").json == ra
    assert sorted(revisions(db_path, "action = 'update'")) == sorted([(b["id"], "update"),
                                                                    (a["id"], "update")])


def test_batch_update_return_records_false(client):
    a = mk(client, title="a")
    resp = patch(client, BATCH, {"records": [{"id": a["id"], "title": "z"}], "returnRecords": False})
    assert resp.status_int == 200 and resp.json == {"count": 1}
    assert get(client, f"{TASKS}/{a['id']}").json["fields"]["title"] == "z"


def test_batch_update_unchanged_items_count_but_are_not_rewritten(cclient, clock, db_path):
    a = mk(cclient, title="a", status="doing")
    b = mk(cclient, title="b")
    clock.advance(minutes=1)
    resp = patch(cclient, BATCH, {"records": [{"id": a["id"], "status": "doing"},
                                              {"id": b["id"], "title": "b2"}]})
    assert resp.status_int == 200 and resp.json["count"] == 2
    assert resp.json["records"][0]["updatedAt"] == a["updatedAt"]
    assert get(cclient, f"{TASKS}/{a['id']}").json == a
    assert revisions(db_path, "action = 'update'") == [(b["id"], "update")]


def test_batch_update_id_errors(client):
    a = mk(client, title="a")
    resp = patch(client, BATCH, {"records": [{"title": "x"}]})
    assert_400_errors(resp, [err("records[0].id", "Field 'id' is required")])
    for bad in (0, -1, "5", 1.5, 2 ** 53, True, None):
        resp = patch(client, BATCH, {"records": [{"id": a["id"], "title": "x"},
                                                 {"id": bad, "title": "y"}]})
        if bad is None:
            assert first_error_field(resp) == "records[1].id"
            continue
        assert_400_errors(resp, [err("records[1].id", "Must be a record id")])
    assert get(client, f"{TASKS}/{a['id']}").json["fields"]["title"] == "a"


def test_batch_update_duplicate_id(client):
    a = mk(client, title="a")
    resp = patch(client, BATCH, {"records": [{"id": a["id"], "title": "x"},
                                             {"id": a["id"], "title": "y"}]})
    assert_400_errors(resp, [err("records[1].id", "Duplicate id")])
    assert get(client, f"{TASKS}/{a['id']}").json["fields"]["title"] == "a"


def test_batch_update_record_not_found(client):
    a = mk(client, title="a")
    t = mk(client, title="trashed")
    trash_one(client, t["id"])
    p = mk(client, "projects", name="other table")
    for rid in (999999, t["id"], p["id"]):
        resp = patch(client, BATCH, {"records": [{"id": a["id"], "title": "x"},
                                                 {"id": rid, "title": "y"}]})
        assert_400_errors(resp, [err("records[1].id", "Record not found")])
    assert get(client, f"{TASKS}/{a['id']}").json["fields"]["title"] == "a"


def test_batch_update_bad_updated_at(client):
    a = mk(client, title="a")
    resp = patch(client, BATCH, {"records": [{"id": a["id"], "title": "x", "updatedAt": "yesterday"}]})
    assert_400_errors(resp, [err("records[0].updatedAt", "updatedAt must be an ISO 8601 date-time")])


def test_batch_update_stale_precondition_409_nothing_written(cclient, clock, db_path):
    a = mk(cclient, title="a")
    b = mk(cclient, title="b")
    clock.advance(seconds=1)
    resp = patch(cclient, BATCH, {"records": [
        {"id": a["id"], "title": "a2", "updatedAt": a["updatedAt"]},
        {"id": b["id"], "title": "b2", "updatedAt": ts(T0 - timedelta(days=1))}]})
    assert_error(resp, 409, "CONFLICT",
                 f"Record {b['id']} has been modified since the supplied updatedAt")
    assert get(cclient, f"{TASKS}/{a['id']}").json == a
    assert revisions(db_path, "action = 'update'") == []
    # a matching precondition, also written with an offset, succeeds
    resp = patch(cclient, BATCH, {"records": [
        {"id": a["id"], "title": "a2", "updatedAt": a["updatedAt"]},
        {"id": b["id"], "fields": {"title": "b2"}, "updatedAt": b["updatedAt"][:-1] + "+00:00"}]})
    assert resp.status_int == 200, resp.body


def test_batch_update_value_errors_and_required(client):
    a = mk(client, title="a")
    b = mk(client, title="b")
    resp = patch(client, BATCH, {"records": [{"id": a["id"], "title": None},
                                             {"id": b["id"], "status": "zzz", "ref": 3}]})
    # §4.2's step order (keys before values) is applied per item or across the whole batch;
    # the spec does not say which, so both readings are accepted (see the report)
    assert resp.status_int == 400
    assert resp.json["message"] == FAILED
    assert resp.json["errors"] in (
        [err("records[1].ref", "Cannot write to readonly field 'ref'")],
        [err("records[0].title", "Field 'title' is required"),
         err("records[1].ref", "Cannot write to readonly field 'ref'")])
    resp = patch(client, BATCH, {"records": [{"id": a["id"], "title": None},
                                             {"id": b["id"], "status": "zzz"}]})
    assert_400(resp, [err("records[0].title", "Field 'title' is required"),
                      err("records[1].status", "Value 'zzz' is not a valid option for field 'status'")],
               sort=True)


def test_batch_update_unique_among_items(client):
    a = mk(client, title="a", email="a@example.com")
    b = mk(client, title="b", email="b@example.com")
    # two items of one batch setting the same unique value: the later item is reported
    resp = patch(client, BATCH, {"records": [{"id": a["id"], "email": "c@example.com"},
                                             {"id": b["id"], "email": "c@example.com"}]})
    assert_400(resp, [err("records[1].email", "Field 'email' must be unique")])
    assert get(client, f"{TASKS}/{a['id']}").json["fields"]["email"] == "a@example.com"


def test_batch_update_empty_list(client):
    assert_400(patch(client, BATCH, {"records": []}),
               [err("records", "At least one record is required")],
               message="At least one record is required")


# =============================================================================== §5.3 batch delete

def test_batch_delete_soft(cclient, clock, db_path):
    a, b, c = (mk(cclient, title=t) for t in "abc")
    clock.advance(minutes=2)
    resp = delete(cclient, BATCH, {"ids": [a["id"], c["id"]]})
    assert resp.status_int == 200 and resp.json == {"count": 2}
    assert get(cclient, f"{TASKS}/{a['id']}").status_int == 404
    assert get(cclient, f"{TASKS}/{b['id']}").status_int == 200
    r = get(cclient, f"{TASKS}/{a['id']}", includeDeleted="true").json
    assert r["deletedAt"] == ts(clock.t) and r["deletedBy"] is None
    assert r["updatedAt"] == a["updatedAt"]  # soft delete changes only deletedAt/deletedBy
    assert sorted(revisions(db_path, "action = 'delete'")) == [(a["id"], "delete"), (c["id"], "delete")]


def test_batch_delete_empty_and_bad_ids(client):
    a = mk(client, title="a")
    t = mk(client, title="t")
    trash_one(client, t["id"])
    assert_400(delete(client, BATCH, {"ids": []}), [err("ids", "At least one record is required")],
               message="At least one record is required")
    for bad in (0, -3, "1", 1.5, 2 ** 53, None, True):
        assert_400_errors(delete(client, BATCH, {"ids": [a["id"], bad]}),
                          [err("ids[1]", "Must be a record id")])
    assert_400_errors(delete(client, BATCH, {"ids": [a["id"], 99999]}),
                      [err("ids[1]", "Record not found")])
    assert_400_errors(delete(client, BATCH, {"ids": [a["id"], t["id"]]}),
                      [err("ids[1]", "Record not found")])
    assert_400_errors(delete(client, BATCH, {"ids": [a["id"], a["id"]]}),
                      [err("ids[1]", "Duplicate id")])
    assert get(client, f"{TASKS}/{a['id']}").status_int == 200


def test_batch_delete_restrict(client):
    p = mk(client, "projects", name="P")
    q = mk(client, "projects", name="Q")
    t = mk(client, title="t", project=p["id"])
    resp = delete(client, "/api/tables/projects/records/batch", {"ids": [q["id"], p["id"]]})
    assert_error(resp, 409, "CONFLICT", RESTRICTED["message"])
    assert get(client, f"/api/tables/projects/records/{q['id']}").status_int == 200
    # a trashed referencing task no longer blocks a soft delete
    trash_one(client, t["id"])
    resp = delete(client, "/api/tables/projects/records/batch", {"ids": [q["id"], p["id"]]})
    assert resp.status_int == 200 and resp.json == {"count": 2}


def test_batch_purge_restrict_counts_trashed_references(client):
    p = mk(client, "projects", name="P")
    t = mk(client, title="t", project=p["id"])
    trash_one(client, t["id"])
    resp = delete(client, "/api/tables/projects/records/batch", {"ids": [p["id"]], "permanent": True})
    assert_error(resp, 409, "CONFLICT", RESTRICTED["message"])
    # purging the referencing task first (it is trashed: permanent accepts it) frees the project
    resp = delete(client, BATCH, {"ids": [t["id"]], "permanent": True})
    assert resp.status_int == 200 and resp.json == {"count": 1}
    resp = delete(client, "/api/tables/projects/records/batch", {"ids": [p["id"]], "permanent": True})
    assert resp.status_int == 200 and resp.json == {"count": 1}


def test_batch_purge_live_and_trashed(client, db_path):
    a = mk(client, title="a")
    b = mk(client, title="b")
    trash_one(client, b["id"])
    resp = delete(client, BATCH, {"ids": [a["id"], b["id"]], "permanent": True})
    assert resp.status_int == 200 and resp.json == {"count": 2}
    for r in (a, b):
        assert get(client, f"{TASKS}/{r['id']}", includeDeleted="true").status_int == 404
    assert count_rows(db_path, "SELECT count(*) FROM records") == 0
    assert sorted(revisions(db_path, "action = 'purge'")) == [(a["id"], "purge"), (b["id"], "purge")]
    # purged ids are never reused
    c = mk(client, title="c")
    assert c["id"] > b["id"]


CASCADE_CONFIG = {
    "name": "cascade-app", "version": "1.0.0",
    "tables": [
        {"id": 1, "name": "parents", "fields": [
            {"id": 1, "name": "name", "type": "single-line-text"},
        ]},
        {"id": 2, "name": "children", "fields": [
            {"id": 1, "name": "name", "type": "single-line-text"},
            {"id": 2, "name": "parent", "type": "relationship", "relatedTable": "parents",
             "onDelete": "cascade"},
        ]},
        {"id": 3, "name": "refs", "fields": [
            {"id": 1, "name": "name", "type": "single-line-text"},
            {"id": 2, "name": "one", "type": "relationship", "relatedTable": "parents"},
            {"id": 3, "name": "many", "type": "relationship", "relatedTable": "parents",
             "relationType": "many-to-many", "onDelete": "set-null"},
        ]},
        {"id": 4, "name": "pins", "fields": [
            {"id": 1, "name": "name", "type": "single-line-text"},
            {"id": 2, "name": "child", "type": "relationship", "relatedTable": "children",
             "onDelete": "restrict"},
        ]},
    ],
}


@pytest.fixture
def casc(make_app, clock):
    app = make_app(CASCADE_CONFIG, clock=clock)
    return webtest.TestApp(app.wsgi)


def test_batch_delete_cascade_and_restore_does_not_restore_cascaded(casc, db_path):
    p1 = mk(casc, "parents", name="p1")
    p2 = mk(casc, "parents", name="p2")
    c1 = mk(casc, "children", name="c1", parent=p1["id"])
    c2 = mk(casc, "children", name="c2", parent=p2["id"])
    c3 = mk(casc, "children", name="c3")
    resp = delete(casc, "/api/tables/parents/records/batch", {"ids": [p1["id"], p2["id"]]})
    assert resp.status_int == 200 and resp.json == {"count": 2}
    assert get(casc, f"/api/tables/children/records/{c1['id']}").status_int == 404
    assert get(casc, f"/api/tables/children/records/{c2['id']}").status_int == 404
    assert get(casc, f"/api/tables/children/records/{c3['id']}").status_int == 200
    deleted = sorted(r for r, a in revisions(db_path, "action = 'delete'"))
    assert deleted == sorted([p1["id"], p2["id"], c1["id"], c2["id"]])
    resp = post(casc, "/api/tables/parents/records/batch/restore", {"ids": [p1["id"]]})
    assert resp.status_int == 200 and resp.json == {"count": 1}
    assert get(casc, f"/api/tables/children/records/{c1['id']}").status_int == 404


def test_batch_delete_cascade_reaching_restrict(casc):
    p = mk(casc, "parents", name="p")
    c = mk(casc, "children", name="c", parent=p["id"])
    mk(casc, "pins", name="pin", child=c["id"])
    resp = delete(casc, "/api/tables/parents/records/batch", {"ids": [p["id"]]})
    assert_error(resp, 409, "CONFLICT", RESTRICTED["message"])
    assert get(casc, f"/api/tables/parents/records/{p['id']}").status_int == 200
    assert get(casc, f"/api/tables/children/records/{c['id']}").status_int == 200


def test_batch_delete_cascade_over_limit(make_app):
    cfg = copy.deepcopy(CASCADE_CONFIG)
    cfg["settings"] = {"batchLimit": 2}
    c = webtest.TestApp(make_app(cfg).wsgi)
    p = mk(c, "parents", name="p")
    for i in range(3):
        mk(c, "children", name=f"c{i}", parent=p["id"])
    resp = delete(c, "/api/tables/parents/records/batch", {"ids": [p["id"]]})
    assert_error(resp, 409, "CONFLICT", "Delete would cascade to more than 2 records")
    assert list_total(c, "children") == 3


def test_purge_set_null_cleanup(casc, clock, db_path):
    p = mk(casc, "parents", name="p")
    keep = mk(casc, "parents", name="keep")
    r1 = mk(casc, "refs", name="r1", one=p["id"], many=[p["id"], keep["id"]])
    r2 = mk(casc, "refs", name="r2", one=keep["id"])
    clock.advance(hours=1)
    resp = casc.delete(f"/api/tables/parents/records/{p['id']}?permanent=true", expect_errors=True)
    assert resp.status_int == 204, resp.body
    got = get(casc, f"/api/tables/refs/records/{r1['id']}").json
    assert got["fields"]["one"] is None and got["fields"]["many"] == [keep["id"]]
    assert got["updatedAt"] == ts(clock.t)  # set-null cleanup is a write
    assert get(casc, f"/api/tables/refs/records/{r2['id']}").json == r2
    assert (r1["id"], "update") in revisions(db_path)
    assert (r2["id"], "update") not in revisions(db_path)
    assert (p["id"], "purge") in revisions(db_path)


def test_batch_purge_cascade_purges_children(casc, db_path):
    p = mk(casc, "parents", name="p")
    c = mk(casc, "children", name="c", parent=p["id"])
    resp = delete(casc, "/api/tables/parents/records/batch", {"ids": [p["id"]], "permanent": True})
    assert resp.status_int == 200 and resp.json == {"count": 1}
    assert get(casc, f"/api/tables/children/records/{c['id']}",
               includeDeleted="true").status_int == 404
    assert (c["id"], "purge") in revisions(db_path)


# =============================================================================== §5.4 batch restore

def test_batch_restore(cclient, clock):
    a = mk(cclient, title="a")
    b = mk(cclient, title="b")
    delete(cclient, BATCH, {"ids": [a["id"], b["id"]]})
    clock.advance(minutes=3)
    resp = post(cclient, RESTORE_MANY, {"ids": [b["id"], a["id"]]})
    assert resp.status_int == 200 and resp.json == {"count": 2}
    for r in (a, b):
        got = get(cclient, f"{TASKS}/{r['id']}", includeDeleted="true").json
        assert got["deletedAt"] is None and got["deletedBy"] is None
        assert got["updatedAt"] == ts(clock.t)
        assert got["fields"] == r["fields"]


def test_batch_restore_errors(client):
    live = mk(client, title="live")
    t = mk(client, title="t")
    trash_one(client, t["id"])
    assert_400(post(client, RESTORE_MANY, {"ids": []}), [err("ids", "At least one record is required")],
               message="At least one record is required")
    assert_400_errors(post(client, RESTORE_MANY, {"ids": [t["id"], live["id"]]}),
                      [err("ids[1]", "Record is not in the trash")])
    assert_400_errors(post(client, RESTORE_MANY, {"ids": [t["id"], 424242]}),
                      [err("ids[1]", "Record not found")])
    assert_400_errors(post(client, RESTORE_MANY, {"ids": ["x"]}), [err("ids[0]", "Must be a record id")])
    assert_400_errors(post(client, RESTORE_MANY, {"ids": [t["id"], t["id"]]}),
                      [err("ids[1]", "Duplicate id")])
    assert get(client, f"{TASKS}/{t['id']}").status_int == 404


def test_batch_restore_unique_conflict(client):
    a = mk(client, title="a", email="x@example.com")
    trash_one(client, a["id"])
    mk(client, title="b", email="x@example.com")
    resp = post(client, RESTORE_MANY, {"ids": [a["id"]]})
    # restore is record-value validation (§1.11): the top-level message is the fixed one
    assert_400(resp, [err("ids[0]", "Field 'email' must be unique")])
    assert get(client, f"{TASKS}/{a['id']}").status_int == 404


def test_batch_restore_two_trashed_with_same_unique_value(client):
    a = mk(client, title="a", email="x@example.com")
    trash_one(client, a["id"])
    b = mk(client, title="b", email="x@example.com")
    trash_one(client, b["id"])
    resp = post(client, RESTORE_MANY, {"ids": [a["id"], b["id"]]})
    assert_400(resp, [err("ids[1]", "Field 'email' must be unique")])
    assert list_total(client) == 0


# =============================================================================== §5.5 upsert

def test_upsert_creates_and_updates(cclient, clock, db_path):
    old = mk(cclient, title="Book room", estimate=2, notes="keep me")
    clock.advance(minutes=1)
    resp = post(cclient, UPSERT, {
        "records": [{"fields": {"title": "Book room", "status": "doing"}},
                    {"fields": {"title": "Order catering"}}],
        "fieldsToMergeOn": ["title"], "returnRecords": True})
    assert resp.status_int == 200, resp.body
    body = resp.json
    assert set(body) == {"records", "created", "updated", "createdRecords", "updatedRecords"}
    upd, new = body["records"]
    assert body["created"] == 1 and body["updated"] == 1
    assert body["createdRecords"] == [new["id"]] and body["updatedRecords"] == [old["id"]]
    assert upd["id"] == old["id"]
    assert upd["fields"]["status"] == "doing"
    assert upd["fields"]["estimate"] == 2 and upd["fields"]["notes"] == "keep me"  # PATCH semantics
    assert upd["updatedAt"] == ts(clock.t) and upd["createdAt"] == old["createdAt"]
    assert new["fields"]["title"] == "Order catering" and new["fields"]["status"] == "todo"
    assert new["id"] > old["id"]
    assert revisions(db_path)[-2:] in ([(old["id"], "update"), (new["id"], "create")],
                                       [(new["id"], "create"), (old["id"], "update")])


def test_upsert_return_records_false(client):
    resp = post(client, UPSERT, {"records": [{"title": "a"}, {"title": "b"}],
                                 "fieldsToMergeOn": ["title"], "returnRecords": False})
    assert resp.status_int == 200
    body = resp.json
    assert "records" not in body
    assert body["created"] == 2 and body["updated"] == 0 and len(body["createdRecords"]) == 2
    assert body["updatedRecords"] == []


def test_upsert_ids_in_request_order(client):
    x = mk(client, title="x")
    y = mk(client, title="y")
    resp = post(client, UPSERT, {"records": [{"title": "y", "done": True}, {"title": "n1"},
                                             {"title": "x", "done": True}, {"title": "n2"}],
                                 "fieldsToMergeOn": ["title"]})
    assert resp.status_int == 200, resp.body
    body = resp.json
    assert body["updatedRecords"] == [y["id"], x["id"]]
    recs = body["records"]
    assert [r["fields"]["title"] for r in recs] == ["y", "n1", "x", "n2"]
    assert body["createdRecords"] == [recs[1]["id"], recs[3]["id"]]


def test_upsert_match_fields_alias(client):
    a = mk(client, title="a", email="a@example.com")
    resp = post(client, UPSERT, {"records": [{"email": "a@example.com", "title": "A"}],
                                 "matchFields": ["email"]})
    assert resp.status_int == 200, resp.body
    assert resp.json["updatedRecords"] == [a["id"]] and resp.json["created"] == 0
    assert get(client, f"{TASKS}/{a['id']}").json["fields"]["title"] == "A"
    # both given and equal: fine
    resp = post(client, UPSERT, {"records": [{"email": "a@example.com", "title": "B"}],
                                 "matchFields": ["email"], "fieldsToMergeOn": ["email"]})
    assert resp.status_int == 200 and resp.json["updated"] == 1
    # both given and different: 400
    resp = post(client, UPSERT, {"records": [{"email": "a@example.com", "title": "C"}],
                                 "matchFields": ["email"], "fieldsToMergeOn": ["title"]})
    assert first_error_field(resp) == "fieldsToMergeOn"
    assert get(client, f"{TASKS}/{a['id']}").json["fields"]["title"] == "B"


@pytest.mark.parametrize("merge, message", [
    (["bogus"], "Unknown field 'bogus'"),
    (["tags"], "Field 'tags' cannot be used to merge"),
    (["remaining"], "Field 'remaining' cannot be used to merge"),
    (["ref"], "Field 'ref' cannot be used to merge"),
    (["done"], "Field 'done' cannot be used to merge"),
])
def test_upsert_merge_field_errors(client, merge, message):
    resp = post(client, UPSERT, {"records": [{"title": "a"}], "fieldsToMergeOn": merge})
    assert_400(resp, [err("fieldsToMergeOn", message)], message=message)


@pytest.mark.parametrize("merge", [None, [], ["title", "title"], ["title", "status", "due", "email"],
                                   "title"])
def test_upsert_merge_field_shape_errors(client, merge):
    body = {"records": [{"title": "a", "status": "todo", "due": "2026-01-01",
                         "email": "a@example.com"}]}
    if merge is not None:
        body["fieldsToMergeOn"] = merge
    assert first_error_field(post(client, UPSERT, body)) == "fieldsToMergeOn"
    assert list_total(client) == 0


def test_upsert_mergeable_types_accepted(client):
    p = mk(client, "projects", name="P")
    resp = post(client, UPSERT, {"records": [{"title": "t", "status": "doing", "due": "2026-01-01",
                                              "project": p["id"]}],
                                 "fieldsToMergeOn": ["status", "due", "project"]})
    assert resp.status_int == 200 and resp.json["created"] == 1
    resp = post(client, UPSERT, {"records": [{"title": "t2", "status": "doing", "due": "2026-01-01",
                                              "project": p["id"]}],
                                 "fieldsToMergeOn": ["status", "due", "project"]})
    assert resp.status_int == 200 and resp.json["updated"] == 1
    assert list_total(client) == 1


def test_upsert_merge_field_required_in_every_item(client):
    resp = post(client, UPSERT, {"records": [{"title": "a", "email": "a@example.com"},
                                             {"title": "b"},
                                             {"title": "c", "email": None}],
                                 "fieldsToMergeOn": ["email"]})
    assert_400_errors(resp, [err("records[1].email", "Merge field 'email' is required"),
                             err("records[2].email", "Merge field 'email' is required")])
    assert list_total(client) == 0


def test_upsert_duplicate_merge_key(client):
    resp = post(client, UPSERT, {"records": [{"title": "a"}, {"title": "b"}, {"title": "a"}],
                                 "fieldsToMergeOn": ["title"]})
    assert resp.status_int == 400
    assert resp.json["errors"] == [err("records[2]", "Duplicate merge key")]
    assert list_total(client) == 0


def test_upsert_more_than_one_match(client):
    mk(client, title="same")
    mk(client, title="same")
    resp = post(client, UPSERT, {"records": [{"title": "new"}, {"title": "same", "done": True}],
                                 "fieldsToMergeOn": ["title"]})
    assert resp.status_int == 400
    assert resp.json["errors"] == [err("records[1]", "More than one record matches the merge fields")]
    assert list_total(client) == 2


def test_upsert_ignores_trashed_records(client):
    t = mk(client, title="gone")
    trash_one(client, t["id"])
    resp = post(client, UPSERT, {"records": [{"title": "gone"}], "fieldsToMergeOn": ["title"]})
    assert resp.status_int == 200 and resp.json["created"] == 1
    assert resp.json["createdRecords"][0] != t["id"]


def test_upsert_create_checks_required_and_values(client):
    resp = post(client, UPSERT, {"records": [{"email": "a@example.com"},
                                             {"email": "b@example.com", "title": "b", "status": "no"}],
                                 "fieldsToMergeOn": ["email"]})
    assert_400(resp, [err("records[0].title", "Field 'title' is required"),
                      err("records[1].status", "Value 'no' is not a valid option for field 'status'")],
               sort=True)
    assert list_total(client) == 0


def test_upsert_update_does_not_require_required_fields(client):
    a = mk(client, title="a", email="a@example.com")
    resp = post(client, UPSERT, {"records": [{"email": "a@example.com", "estimate": 4}],
                                 "fieldsToMergeOn": ["email"]})
    assert resp.status_int == 200 and resp.json["updatedRecords"] == [a["id"]]
    assert resp.json["records"][0]["fields"]["title"] == "a"


def test_upsert_atomic_on_late_error(client, db_path):
    mk(client, title="x0")
    items = [{"title": f"x{i}", "estimate": i} for i in range(50)]
    items.append({"title": "bad", "estimate": -1})
    resp = post(client, UPSERT, {"records": items, "fieldsToMergeOn": ["title"]})
    assert_400(resp, [err("records[50].estimate", "Field 'estimate' must be at least 0")])
    assert list_total(client) == 1
    assert [a for _, a in revisions(db_path)] == ["create"]


def test_upsert_unchanged_update_writes_nothing(cclient, clock, db_path):
    a = mk(cclient, title="a", status="doing")
    clock.advance(minutes=1)
    resp = post(cclient, UPSERT, {"records": [{"title": "a", "status": "doing"}],
                                  "fieldsToMergeOn": ["title"]})
    assert resp.status_int == 200 and resp.json["updated"] == 1
    assert get(cclient, f"{TASKS}/{a['id']}").json["updatedAt"] == a["updatedAt"]
    assert [x for _, x in revisions(db_path)] == ["create"]


def test_upsert_empty_records(client):
    assert_400(post(client, UPSERT, {"records": [], "fieldsToMergeOn": ["title"]}),
               [err("records", "At least one record is required")],
               message="At least one record is required")


# =============================================================================== §6.1 trash

def test_trash_default_order_deleted_at_desc_then_id_desc(cclient, clock):
    r = [mk(cclient, title=f"r{i}") for i in range(5)]
    clock.advance(minutes=1)
    trash_one(cclient, r[1]["id"])
    clock.advance(minutes=1)
    delete(cclient, BATCH, {"ids": [r[0]["id"], r[2]["id"]]})  # same deletedAt
    clock.advance(minutes=1)
    trash_one(cclient, r[3]["id"])
    resp = get(cclient, TRASH)
    assert resp.status_int == 200, resp.body
    body = resp.json
    assert [x["id"] for x in body["records"]] == [r[3]["id"], r[2]["id"], r[0]["id"], r[1]["id"]]
    assert body["pagination"] == {"page": 1, "limit": 10, "offset": 0, "total": 4, "totalPages": 1,
                                  "hasNextPage": False, "hasPreviousPage": False}
    first = body["records"][0]
    assert set(first) == {"id", "fields", "createdAt", "updatedAt", "createdBy", "updatedBy",
                          "deletedAt", "deletedBy"}
    assert first["deletedAt"] == ts(clock.t) and first["deletedBy"] is None
    assert first["fields"] == r[3]["fields"]


def test_trash_parameters(cclient, clock):
    recs = [mk(cclient, title=f"t{i}", status="doing" if i % 2 else "todo") for i in range(12)]
    for rec in recs:
        clock.advance(seconds=1)
        trash_one(cclient, rec["id"])
    mk(cclient, title="live one")
    body = get(cclient, TRASH).json
    assert len(body["records"]) == 10
    assert body["pagination"] == {"page": 1, "limit": 10, "offset": 0, "total": 12, "totalPages": 2,
                                  "hasNextPage": True, "hasPreviousPage": False}
    body = get(cclient, TRASH, page="2").json
    assert [x["id"] for x in body["records"]] == [recs[1]["id"], recs[0]["id"]]
    body = get(cclient, TRASH, filter="status:doing", limit="3", sort="deletedAt:asc").json
    assert [x["id"] for x in body["records"]] == [recs[1]["id"], recs[3]["id"], recs[5]["id"]]
    assert body["pagination"]["total"] == 6
    body = get(cclient, TRASH, fields="title", limit="1").json
    assert body["records"][0]["fields"] == {"title": "t11"}
    assert "deletedAt" in body["records"][0]
    cutoff = ts(T0 + timedelta(seconds=10))
    flt = '{"field":"deletedAt","operator":"greaterThanOrEqual","value":"%s"}' % cutoff
    body = get(cclient, TRASH, filter=flt).json
    assert [x["id"] for x in body["records"]] == [recs[11]["id"], recs[10]["id"], recs[9]["id"]]
    body = get(cclient, TRASH, search="t1", sort="id").json
    assert [x["id"] for x in body["records"]] == [recs[1]["id"], recs[10]["id"], recs[11]["id"]]
    body = get(cclient, TRASH, skipTotal="true", limit="12").json
    assert body["pagination"]["total"] is None and body["pagination"]["hasNextPage"] is False
    resp = get(cclient, TRASH, limit="1001")
    assert_400(resp, [err("limit", "Parameter 'limit' must be between 1 and 1000")],
               message="Parameter 'limit' must be between 1 and 1000")
    resp = get(cclient, TRASH, limit="2", page="2", offset="1")
    assert_400(resp, [err("page", "Use either page or offset, not both")],
               message="Use either page or offset, not both")
    resp = get(cclient, TRASH, sort="nope")
    assert_400(resp, [err("sort", "Unknown field 'nope'")], message="Unknown field 'nope'")


def test_trash_unknown_table(client):
    assert get(client, "/api/tables/nope/trash").json == NOT_FOUND


# =============================================================================== §6.2 single restore

def test_restore_single(cclient, clock, db_path):
    a = mk(cclient, title="a", email="a@example.com")
    clock.advance(minutes=1)
    trash_one(cclient, a["id"])
    clock.advance(minutes=1)
    resp = post(cclient, f"{TASKS}/{a['id']}/restore", {})
    assert resp.status_int == 200, resp.body
    body = resp.json
    assert set(body) == {"id", "fields", "createdAt", "updatedAt", "createdBy", "updatedBy",
                         "deletedAt", "deletedBy"}
    assert body["deletedAt"] is None and body["deletedBy"] is None
    assert body["updatedAt"] == ts(clock.t) and body["fields"] == a["fields"]
    assert get(cclient, f"{TASKS}/{a['id']}").status_int == 200
    assert [x for _, x in revisions(db_path)] == ["create", "delete", "restore"]


def test_restore_single_errors(client):
    a = mk(client, title="a")
    assert_error(post(client, f"{TASKS}/{a['id']}/restore", {}), 409, "CONFLICT",
                 "Record is not in the trash")
    assert post(client, f"{TASKS}/777777/restore", {}).json == NOT_FOUND
    p = mk(client, "projects", name="P")
    trash_one(client, p["id"], "projects")
    # the record exists, but not in this table
    assert post(client, f"{TASKS}/{p['id']}/restore", {}).json == NOT_FOUND
    assert post(client, f"{TASKS}/007/restore", {}).json == NOT_FOUND


def test_restore_single_unique_conflict(client):
    a = mk(client, title="a", email="dup@example.com")
    trash_one(client, a["id"])
    mk(client, title="b", email="dup@example.com")
    assert_400(post(client, f"{TASKS}/{a['id']}/restore", {}),
               [err("email", "Field 'email' must be unique")])
    assert get(client, f"{TASKS}/{a['id']}").status_int == 404


def test_restore_without_body(client):
    a = mk(client, title="a")
    trash_one(client, a["id"])
    resp = client.post(f"{TASKS}/{a['id']}/restore", expect_errors=True)
    assert resp.status_int == 200, resp.body


def test_route_literals_take_precedence_and_methods(client):
    resp = client.get(BATCH, expect_errors=True)
    assert resp.status_int == 405
    allow = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert {"POST", "PATCH", "DELETE"} <= allow
    resp = client.get(UPSERT, expect_errors=True)
    assert resp.status_int == 405
    resp = client.post_json(TRASH, {}, expect_errors=True)
    assert resp.status_int == 405


# =============================================================================== purge (§6.3)

def test_single_purge(client, db_path):
    a = mk(client, title="a")
    resp = client.delete(f"{TASKS}/{a['id']}?permanent=true", expect_errors=True)
    assert resp.status_int == 204
    assert get(client, f"{TASKS}/{a['id']}", includeDeleted="true").json == NOT_FOUND
    assert [x for _, x in revisions(db_path)] == ["create", "purge"]
    assert get(client, f"{TASKS}/{a['id']}/history").status_int == 404


# =============================================================================== retention

def test_trash_retention_via_housekeep(make_app, config, clock, db_path):
    config["settings"] = {"trashRetentionDays": 30}
    app = make_app(config, clock=clock)
    c = webtest.TestApp(app.wsgi)
    old = mk(c, title="old")
    young = mk(c, title="young")
    live = mk(c, title="live")
    p = mk(c, "projects", name="P")
    blocker = mk(c, title="blocker", project=p["id"])
    trash_one(c, old["id"])
    trash_one(c, blocker["id"])  # the blocker is trashed...
    trash_one(c, p["id"], "projects")  # ...so the project can be trashed (soft restrict: live only)
    clock.advance(days=20)
    trash_one(c, young["id"])
    # blocker must outlive the project in the trash: restore it and trash again now
    post(c, f"{TASKS}/{blocker['id']}/restore", {})
    trash_one(c, blocker["id"])
    clock.advance(days=11)
    app.housekeep()
    assert get(c, f"{TASKS}/{old['id']}", includeDeleted="true").json == NOT_FOUND
    assert get(c, f"{TASKS}/{young['id']}", includeDeleted="true").status_int == 200
    assert get(c, f"{TASKS}/{live['id']}").status_int == 200
    # the project's purge would be refused by a (trashed) restrict reference: skipped
    assert get(c, f"/api/tables/projects/records/{p['id']}", includeDeleted="true").status_int == 200
    purges = revisions(db_path, "action = 'purge'")
    assert purges == [(old["id"], "purge")]
    assert count_rows(db_path, "SELECT actor_id FROM revisions WHERE action = 'purge'") is None
    # housekeeping is idempotent
    app.housekeep()
    assert revisions(db_path, "action = 'purge'") == [(old["id"], "purge")]


def test_no_trash_retention_by_default(capp, cclient, clock):
    a = mk(cclient, title="a")
    trash_one(cclient, a["id"])
    clock.advance(days=3650)
    capp.housekeep()
    assert get(cclient, f"{TASKS}/{a['id']}", includeDeleted="true").status_int == 200


# =============================================================================== embedding (§11.2)

def test_embedding_batch_methods(app):
    tasks = app.table("tasks")
    res = tasks.batch_create([{"title": "a"}, {"fields": {"title": "b"}}])
    assert res["count"] == 2
    a, b = res["records"]
    assert tasks.batch_create([{"title": "c"}], return_records=False) == {"count": 1}
    res = tasks.batch_update([{"id": a["id"], "status": "done"}])
    assert res["count"] == 1 and res["records"][0]["fields"]["status"] == "done"
    res = tasks.upsert([{"title": "a", "estimate": 3}, {"title": "z"}], merge_on=["title"])
    assert res["updatedRecords"] == [a["id"]] and res["created"] == 1
    assert tasks.batch_delete([a["id"], b["id"]]) == {"count": 2}
    trash = tasks.trash()
    assert [r["id"] for r in trash["records"]] == [b["id"], a["id"]]
    assert tasks.batch_restore([a["id"]]) == {"count": 1}
    restored = tasks.restore(b["id"])
    assert restored["deletedAt"] is None
    with pytest.raises(sovrium.ConflictError) as exc:
        tasks.restore(b["id"])
    assert str(exc.value) == "Record is not in the trash"
    with pytest.raises(sovrium.ValidationError) as exc:
        tasks.batch_create([])
    assert exc.value.errors == [err("records", "At least one record is required")]
    with pytest.raises(sovrium.PayloadTooLargeError):
        tasks.batch_delete(list(range(1, 1002)))
    hist = tasks.history(a["id"])
    assert [h["action"] for h in hist["history"]] == ["restore", "delete", "update", "update",
                                                      "create"]
    assert tasks.batch_delete([a["id"]], permanent=True) == {"count": 1}
    with pytest.raises(sovrium.NotFoundError):
        tasks.history(a["id"])


# =============================================================================== concurrency

def _run_threads(targets):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


def test_two_clients_same_precondition_exactly_one_wins(app):
    for round_ in range(5):
        c0 = webtest.TestApp(app.wsgi)
        rec = mk(c0, title=f"race{round_}")
        barrier = threading.Barrier(2)
        results = []

        def writer(value):
            def run():
                c = webtest.TestApp(app.wsgi)
                barrier.wait()
                resp = patch(c, f"{TASKS}/{rec['id']}",
                             {"fields": {"notes": value}, "updatedAt": rec["updatedAt"]})
                results.append((resp.status_int, value, resp.json))
            return run

        _run_threads([writer("first"), writer("second")])
        statuses = sorted(s for s, _, _ in results)
        assert statuses == [200, 409], results
        winner = next(v for s, v, _ in results if s == 200)
        loser = next(j for s, _, j in results if s == 409)
        assert loser == {"success": False, "code": "CONFLICT", "message": STALE}
        assert get(c0, f"{TASKS}/{rec['id']}").json["fields"]["notes"] == winner


def test_batch_and_single_writers_no_lost_update(app, db_path):
    c0 = webtest.TestApp(app.wsgi)
    a = mk(c0, title="A", estimate=0)
    b = mk(c0, title="B", estimate=0)
    counts = {"batch": 0, "single": 0}
    lock = threading.Lock()
    N = 15

    def batch_incr():
        c = webtest.TestApp(app.wsgi)
        done = 0
        while done < N:
            ra = get(c, f"{TASKS}/{a['id']}").json
            rb = get(c, f"{TASKS}/{b['id']}").json
            resp = patch(c, BATCH, {"records": [
                {"id": a["id"], "estimate": ra["fields"]["estimate"] + 1, "updatedAt": ra["updatedAt"]},
                {"id": b["id"], "estimate": rb["fields"]["estimate"] + 1, "updatedAt": rb["updatedAt"]},
            ], "returnRecords": False})
            assert resp.status_int in (200, 409), resp.body
            if resp.status_int == 200:
                done += 1
        with lock:
            counts["batch"] += done

    def single_incr():
        c = webtest.TestApp(app.wsgi)
        done = 0
        while done < N:
            ra = get(c, f"{TASKS}/{a['id']}").json
            resp = patch(c, f"{TASKS}/{a['id']}", {"estimate": ra["fields"]["estimate"] + 1,
                                                   "updatedAt": ra["updatedAt"]})
            assert resp.status_int in (200, 409), resp.body
            if resp.status_int == 200:
                done += 1
        with lock:
            counts["single"] += done

    _run_threads([batch_incr, batch_incr, single_incr, single_incr])
    fa = get(c0, f"{TASKS}/{a['id']}").json["fields"]["estimate"]
    fb = get(c0, f"{TASKS}/{b['id']}").json["fields"]["estimate"]
    assert fb == counts["batch"] == 2 * N
    assert fa == counts["batch"] + counts["single"] == 4 * N
    assert len(revisions(db_path, "record_id = ? AND action = 'update'", (a["id"],))) == 4 * N
    assert len(revisions(db_path, "record_id = ? AND action = 'update'", (b["id"],))) == 2 * N


def test_concurrent_batches_are_all_or_nothing(app, db_path):
    SIZE = 25
    outcomes = {}
    lock = threading.Lock()

    def batcher(k):
        def run():
            c = webtest.TestApp(app.wsgi)
            for j in range(6):
                tag = f"b{k}-{j}"
                items = [{"title": f"{tag}-{i}", "notes": tag} for i in range(SIZE)]
                if j % 2:  # every other batch fails on its last item
                    items[-1]["status"] = "invalid"
                resp = post(c, BATCH, {"records": items, "returnRecords": False})
                with lock:
                    outcomes[tag] = resp.status_int
        return run

    def single():
        c = webtest.TestApp(app.wsgi)
        for j in range(40):
            assert post(c, TASKS, {"title": f"s{j}", "notes": "single"}).status_int == 201

    _run_threads([batcher(0), batcher(1), batcher(2), single])
    con = connect(db_path)
    try:
        rows = dict(tuple(r) for r in con.execute(
            "SELECT json_extract(data, '$.f7'), count(*) FROM records GROUP BY 1"))
    finally:
        con.close()
    assert rows.pop("single") == 40
    for tag, status in outcomes.items():
        if status == 201:
            assert rows.get(tag) == SIZE, tag
        else:
            assert status == 400 and tag not in rows, tag
    assert sum(1 for s in outcomes.values() if s == 201) == 9
    assert not set(rows) - set(outcomes)
    total = count_rows(db_path, "SELECT count(*) FROM records")
    assert count_rows(db_path, "SELECT count(*) FROM revisions WHERE action = 'create'") == total


# =============================================================================== auth mode

AUTH_CONFIG = {
    "name": "lifecycle-auth", "version": "1.0.0",
    "auth": {"strategies": [{"type": "emailAndPassword"}], "roles": ["helper"]},
    "tables": [
        {"id": 1, "name": "items",
         "fields": [
             {"id": 1, "name": "title", "type": "single-line-text", "required": True},
             {"id": 2, "name": "code", "type": "single-line-text", "unique": True},
             {"id": 3, "name": "secret", "type": "single-line-text"},
             {"id": 4, "name": "owner", "type": "single-line-text"},
             {"id": 5, "name": "locked", "type": "checkbox"},
         ],
         "permissions": {"fields": [{"field": "secret", "write": ["admin"]}]},
         "rowLevelPermissions": {
             "read": {"logic": "or", "conditions": [
                 {"field": "owner", "operator": "eq", "value": "$currentUser.id"},
                 {"field": "owner", "operator": "eq", "value": "shared"}]},
             "update": {"field": "locked", "operator": "eq", "value": False},
             "delete": {"field": "locked", "operator": "eq", "value": False},
         }},
        {"id": 2, "name": "open", "fields": [{"id": 1, "name": "title", "type": "single-line-text"}],
         "permissions": {"read": "all", "create": "all", "update": "all", "delete": "all",
                         "restore": "all"}},
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

    def req(self, actor, method, url, body=None):
        self.client.reset()
        headers = {} if actor == "anon" else {"Authorization": "Bearer " + self.tokens[actor]}
        kw = {"method": method, "headers": headers, "expect_errors": True}
        if body is not None:
            import json as _json
            kw["body"] = _json.dumps(body).encode()
            kw["content_type"] = "application/json"
        return self.client.request(url, **kw)


@pytest.fixture
def actors(make_app):
    a = Actors(make_app(AUTH_CONFIG))
    a.add("admin", "admin")
    a.add("mem", "member")
    a.add("other", "member")
    a.add("view", "viewer")
    return a


ITEMS = "/api/tables/items/records"


def test_auth_batch_create_sets_created_by(actors):
    resp = actors.req("mem", "POST", ITEMS + "/batch",
                      {"records": [{"title": "a", "owner": actors.uid("mem")}]})
    assert resp.status_int == 201, resp.body
    rec = resp.json["records"][0]
    assert rec["createdBy"] == rec["updatedBy"] == actors.uid("mem")


def test_auth_batch_permissions(actors):
    body = {"records": [{"title": "a", "owner": "shared"}]}
    assert_error(actors.req("view", "POST", ITEMS + "/batch", body), 403, "FORBIDDEN", FORBIDDEN)
    assert_error(actors.req("anon", "POST", ITEMS + "/batch", body), 401, "UNAUTHORIZED", AUTH)
    # write permission on a field: 403 naming the field; the whole batch is rejected
    resp = actors.req("mem", "POST", ITEMS + "/batch",
                      {"records": [{"title": "ok", "owner": "shared"},
                                   {"title": "b", "owner": "shared", "secret": "s"}]})
    assert_error(resp, 403, "FORBIDDEN", "You do not have permission to write field 'secret'")
    resp = actors.req("admin", "GET", ITEMS)
    assert resp.json["pagination"]["total"] == 0


def test_auth_batch_update_row_rules(actors):
    mine = actors.req("mem", "POST", ITEMS, {"title": "m", "owner": actors.uid("mem")}).json
    locked = actors.req("admin", "POST", ITEMS,
                        {"title": "l", "owner": actors.uid("mem"), "locked": True}).json
    theirs = actors.req("admin", "POST", ITEMS, {"title": "o", "owner": actors.uid("other")}).json
    # a record failing the row-level read rule does not exist for the caller
    resp = actors.req("mem", "PATCH", ITEMS + "/batch",
                      {"records": [{"id": mine["id"], "title": "x"}, {"id": theirs["id"], "title": "y"}]})
    assert_400_errors(resp, [err("records[1].id", "Record not found")])
    # a readable record failing the update rule → 403, whole batch
    resp = actors.req("mem", "PATCH", ITEMS + "/batch",
                      {"records": [{"id": mine["id"], "title": "x"}, {"id": locked["id"], "title": "y"}]})
    assert_error(resp, 403, "FORBIDDEN", ROW_RULE)
    # the resulting record must pass the update rule too
    resp = actors.req("mem", "PATCH", ITEMS + "/batch",
                      {"records": [{"id": mine["id"], "locked": True}]})
    assert_error(resp, 403, "FORBIDDEN", ROW_RULE)
    assert actors.req("mem", "GET", f"{ITEMS}/{mine['id']}").json["fields"]["title"] == "m"
    # batch delete: missing for the caller vs row rule
    resp = actors.req("mem", "DELETE", ITEMS + "/batch", {"ids": [theirs["id"]]})
    assert_400_errors(resp, [err("ids[0]", "Record not found")])
    resp = actors.req("mem", "DELETE", ITEMS + "/batch", {"ids": [mine["id"], locked["id"]]})
    assert_error(resp, 403, "FORBIDDEN", ROW_RULE)
    resp = actors.req("mem", "DELETE", ITEMS + "/batch", {"ids": [mine["id"]]})
    assert resp.status_int == 200 and resp.json == {"count": 1}


def test_auth_purge_and_trash_permissions(actors):
    rec = actors.req("mem", "POST", ITEMS, {"title": "m", "owner": actors.uid("mem")}).json
    assert_error(actors.req("mem", "DELETE", ITEMS + "/batch", {"ids": [rec["id"]], "permanent": True}),
                 403, "FORBIDDEN", FORBIDDEN)
    assert_error(actors.req("mem", "DELETE", f"{ITEMS}/{rec['id']}?permanent=true"),
                 403, "FORBIDDEN", FORBIDDEN)
    assert actors.req("mem", "DELETE", f"{ITEMS}/{rec['id']}").status_int == 204
    assert_error(actors.req("view", "GET", "/api/tables/items/trash"), 403, "FORBIDDEN", FORBIDDEN)
    assert_error(actors.req("anon", "GET", "/api/tables/items/trash"), 401, "UNAUTHORIZED", AUTH)
    assert_error(actors.req("view", "POST", f"{ITEMS}/{rec['id']}/restore"), 403, "FORBIDDEN", FORBIDDEN)
    assert_error(actors.req("view", "POST", ITEMS + "/batch/restore", {"ids": [rec["id"]]}),
                 403, "FORBIDDEN", FORBIDDEN)
    # the trash shows only records passing the read rule
    theirs = actors.req("admin", "POST", ITEMS, {"title": "o", "owner": actors.uid("other")}).json
    actors.req("admin", "DELETE", f"{ITEMS}/{theirs['id']}")
    resp = actors.req("mem", "GET", "/api/tables/items/trash")
    assert [r["id"] for r in resp.json["records"]] == [rec["id"]]
    assert resp.json["records"][0]["deletedBy"] == actors.uid("mem")
    assert actors.req("mem", "POST", f"{ITEMS}/{theirs['id']}/restore").json == NOT_FOUND
    resp = actors.req("mem", "POST", ITEMS + "/batch/restore", {"ids": [theirs["id"]]})
    assert_400_errors(resp, [err("ids[0]", "Record not found")])
    resp = actors.req("admin", "GET", "/api/tables/items/trash")
    assert len(resp.json["records"]) == 2
    # admin purges
    resp = actors.req("admin", "DELETE", ITEMS + "/batch", {"ids": [rec["id"], theirs["id"]],
                                                          "permanent": True})
    assert resp.status_int == 200 and resp.json == {"count": 2}


def test_auth_restore_row_level_delete_rule(actors):
    rec = actors.req("admin", "POST", ITEMS, {"title": "l", "owner": actors.uid("mem"),
                                              "locked": True}).json
    actors.req("admin", "DELETE", f"{ITEMS}/{rec['id']}")
    assert_error(actors.req("mem", "POST", f"{ITEMS}/{rec['id']}/restore"), 403, "FORBIDDEN", ROW_RULE)
    assert_error(actors.req("mem", "POST", ITEMS + "/batch/restore", {"ids": [rec["id"]]}),
                 403, "FORBIDDEN", ROW_RULE)


def test_auth_restore_sets_updated_by(actors):
    rec = actors.req("admin", "POST", ITEMS, {"title": "s", "owner": "shared"}).json
    actors.req("admin", "DELETE", f"{ITEMS}/{rec['id']}")
    resp = actors.req("mem", "POST", f"{ITEMS}/{rec['id']}/restore")
    assert resp.status_int == 200, resp.body
    assert resp.json["updatedBy"] == actors.uid("mem") and resp.json["createdBy"] == actors.uid("admin")


def test_auth_upsert_matches_only_readable_records(actors):
    theirs = actors.req("admin", "POST", ITEMS, {"title": "same", "owner": actors.uid("other")}).json
    resp = actors.req("mem", "POST", ITEMS + "/upsert",
                      {"records": [{"title": "same", "owner": actors.uid("mem")}],
                       "fieldsToMergeOn": ["title"]})
    assert resp.status_int == 200, resp.body
    assert resp.json["created"] == 1 and resp.json["updated"] == 0
    assert resp.json["createdRecords"][0] != theirs["id"]
    # a viewer may neither create nor update
    resp = actors.req("view", "POST", ITEMS + "/upsert",
                      {"records": [{"title": "x"}], "fieldsToMergeOn": ["title"]})
    assert_error(resp, 403, "FORBIDDEN", FORBIDDEN)


def test_auth_upsert_needs_update_only_for_updates(make_app):
    cfg = copy.deepcopy(AUTH_CONFIG)
    cfg["tables"][1]["permissions"] = {"read": "all", "create": "all", "update": ["admin"]}
    a = Actors(make_app(cfg))
    a.add("mem", "member")
    url = "/api/tables/open/records/upsert"
    resp = a.req("mem", "POST", url, {"records": [{"title": "n"}], "fieldsToMergeOn": ["title"]})
    assert resp.status_int == 200 and resp.json["created"] == 1
    resp = a.req("mem", "POST", url, {"records": [{"title": "n"}, {"title": "m"}],
                                      "fieldsToMergeOn": ["title"]})
    assert_error(resp, 403, "FORBIDDEN", FORBIDDEN)
    resp = a.req("anon", "POST", url, {"records": [{"title": "k"}], "fieldsToMergeOn": ["title"]})
    assert resp.status_int == 200 and resp.json["created"] == 1
    resp = a.req("anon", "POST", url, {"records": [{"title": "k"}], "fieldsToMergeOn": ["title"]})
    assert_error(resp, 401, "UNAUTHORIZED", AUTH)


def test_auth_anonymous_batch_on_open_table(actors):
    resp = actors.req("anon", "POST", "/api/tables/open/records/batch", {"records": [{"title": "a"}]})
    assert resp.status_int == 201
    rec = resp.json["records"][0]
    assert rec["createdBy"] is None
    resp = actors.req("anon", "DELETE", "/api/tables/open/records/batch", {"ids": [rec["id"]]})
    assert resp.status_int == 200
    # permanentDelete stays admin-only
    resp = actors.req("anon", "DELETE", "/api/tables/open/records/batch",
                      {"ids": [rec["id"]], "permanent": True})
    assert_error(resp, 401, "UNAUTHORIZED", AUTH)


def test_batch_update_unknown_field_in_flat_item(client):
    a = mk(client, title="a")
    resp = patch(client, BATCH, {"records": [{"id": a["id"], "bogus": 1}]})
    assert_400(resp, [err("records[0].bogus", "Unknown field 'bogus'")])
