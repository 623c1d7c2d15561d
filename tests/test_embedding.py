"""Embedding API (OPERATIONS.md §11): App, table objects, identity and errors, module functions."""

import copy
import json
import pathlib
import re
from datetime import datetime, timezone

import pytest
import webtest
import yaml

import sovrium
from conftest import BASIC_CONFIG, TEST_ENV

T0 = datetime(2026, 3, 1, 9, 15, 2, 417000, tzinfo=timezone.utc)
RECORD_KEYS = {"id", "fields", "createdAt", "updatedAt", "createdBy", "updatedBy"}
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def memory_app():
    app = sovrium.App(copy.deepcopy(BASIC_CONFIG), db_path=":memory:", env=dict(TEST_ENV))
    yield app
    app.close()


@pytest.fixture
def tasks(app):
    return app.table("tasks")


def titles(page):
    return [r["fields"]["title"] for r in page["records"]]


###############################################################################
# Construction
###############################################################################


def test_app_from_dict_in_memory(memory_app):
    rec = memory_app.table("tasks").create({"title": "Write launch notes", "estimate": 2})
    assert set(rec) == RECORD_KEYS
    assert memory_app.table("tasks").get(rec["id"]) == rec
    assert memory_app.config["name"] == "test-app"


@pytest.mark.parametrize("kind", ["yaml-str", "yaml-pathlike", "json-str"])
def test_app_from_file(tmp_path, kind):
    if kind.startswith("yaml"):
        path = tmp_path / "app.yaml"
        path.write_text(yaml.safe_dump(BASIC_CONFIG, sort_keys=False))
    else:
        path = tmp_path / "app.json"
        path.write_text(json.dumps(BASIC_CONFIG))
    config = path if kind == "yaml-pathlike" else str(path)
    app = sovrium.App(config, db_path=str(tmp_path / "file.db"), env=dict(TEST_ENV))
    try:
        assert app.config["name"] == "test-app"
        assert [t["name"] for t in app.config["tables"]] == ["projects", "tasks"]
        rec = app.table("projects").create({"name": "From file"})
        assert rec["fields"]["name"] == "From file"
    finally:
        app.close()


def test_invalid_config_raises_config_error():
    with pytest.raises(sovrium.ConfigError) as info:
        sovrium.App({"name": "x", "bogus": 1}, db_path=":memory:", env=dict(TEST_ENV))
    exc = info.value
    assert isinstance(exc.errors, list) and isinstance(exc.warnings, list)
    assert {"path", "message"} <= set(exc.errors[0])
    assert "Unknown top-level key 'bogus'" in [e["message"] for e in exc.errors]


def test_context_manager_and_persistence(tmp_path):
    db = str(tmp_path / "ctx.db")
    with sovrium.App(copy.deepcopy(BASIC_CONFIG), db_path=db, env=dict(TEST_ENV)) as app:
        assert isinstance(app, sovrium.App)
        rec = app.table("tasks").create({"title": "kept"})
    with sovrium.App(copy.deepcopy(BASIC_CONFIG), db_path=db, env=dict(TEST_ENV)) as again:
        assert again.table("tasks").get(rec["id"]) == rec
        assert again.table("tasks").count() == 1


def test_memory_database_discarded_and_independent():
    env = dict(TEST_ENV)
    a = sovrium.App(copy.deepcopy(BASIC_CONFIG), db_path=":memory:", env=env)
    b = sovrium.App(copy.deepcopy(BASIC_CONFIG), db_path=":memory:", env=env)
    try:
        a.table("tasks").create({"title": "only in a"})
        assert a.table("tasks").count() == 1
        assert b.table("tasks").count() == 0
    finally:
        a.close()
        b.close()
    with sovrium.App(copy.deepcopy(BASIC_CONFIG), db_path=":memory:", env=env) as c:
        assert c.table("tasks").count() == 0


def test_two_apps_on_different_files_are_independent(make_app, config):
    config["name"] = "other-app"
    config["tables"][1]["fields"][0]["maxLength"] = 5
    first = make_app(db_name="first.db")
    second = make_app(config, db_name="second.db")
    first.table("tasks").create({"title": "a long title"})
    first.table("tasks").create({"title": "another"})
    assert first.table("tasks").count() == 2
    assert second.table("tasks").count() == 0
    assert first.config["name"] == "test-app" and second.config["name"] == "other-app"
    with pytest.raises(sovrium.ValidationError):
        second.table("tasks").create({"title": "a long title"})
    # each app serves its own configuration over HTTP too
    h1 = webtest.TestApp(first.wsgi).get("/api/health").json
    h2 = webtest.TestApp(second.wsgi).get("/api/health").json
    assert (h1["app"]["name"], h2["app"]["name"]) == ("test-app", "other-app")


def test_config_is_normalized(make_app, config):
    config["tables"][1]["fields"].append({"id": 12, "name": "score", "type": "number"})
    config["tables"][1]["fields"].append({"name": "flag", "type": "boolean"})
    app = make_app(config)
    tasks = next(t for t in app.config["tables"] if t["name"] == "tasks")
    fields = {f["name"]: f for f in tasks["fields"]}
    assert fields["status"]["options"] == [{"value": v, "label": v, "color": None}
                                           for v in ("todo", "doing", "done")]
    assert fields["score"]["type"] == "decimal"
    assert fields["flag"]["type"] == "checkbox"
    assert fields["flag"]["id"] == 13
    assert tasks["views"][0]["groupBy"] == {"field": "status", "direction": "asc"}
    projects = next(t for t in app.config["tables"] if t["name"] == "projects")
    assert projects["primaryField"] == "name"


def test_config_is_read_only(app):
    try:
        app.config["name"] = "changed"
    except TypeError:
        pass
    try:
        app.config["tables"][1]["fields"][0]["maxLength"] = 1
    except TypeError:
        pass
    assert app.config["name"] == "test-app"
    assert app.table("tasks").create({"title": "longer than one"})["fields"]["title"] == \
        "longer than one"


###############################################################################
# Table objects
###############################################################################


def test_table_by_name_and_by_id(app):
    by_name, by_id = app.table("tasks"), app.table(2)
    rec = by_name.create({"title": "same table"})
    assert by_id.get(rec["id"]) == rec
    assert app.table(1).create({"name": "P"})["id"] != rec["id"]
    assert app.table("projects").count() == 1


def test_unknown_table_raises_not_found(app):
    with pytest.raises(sovrium.NotFoundError):
        app.table("nope").list()
    with pytest.raises(sovrium.NotFoundError):
        app.table(99).count()


def test_create_shape_and_system_identity(make_app):
    app = make_app(clock=lambda: T0)
    projects, tasks = app.table("projects"), app.table("tasks")
    project = projects.create({"name": "Launch"})
    rec = tasks.create({"title": "Write launch notes", "estimate": 2, "project": project["id"]})
    assert set(rec) == RECORD_KEYS
    assert type(rec["id"]) is int
    assert rec["fields"] == {"title": "Write launch notes", "status": "todo", "estimate": 2,
                             "due": None, "done": False, "project": project["id"], "notes": None,
                             "remaining": 2, "ref": 1, "tags": None, "email": None}
    assert rec["createdAt"] == rec["updatedAt"] == "2026-03-01T09:15:02.417Z"
    assert rec["createdBy"] is None and rec["updatedBy"] is None
    assert tasks.get(rec["id"]) == rec
    assert projects.get(project["id"])["fields"] == {
        "name": "Launch", "budget": None, "tasks": [rec["id"]], "task_count": 1,
        "open_estimate": 2}
    assert tasks.get(rec["id"], fields="title")["fields"] == {"title": "Write launch notes"}


def test_update_with_precondition(make_app):
    app = make_app(clock=lambda: T0)
    tasks = app.table("tasks")
    rec = tasks.create({"title": "t", "estimate": 2})
    updated = tasks.update(rec["id"], {"status": "doing"}, updated_at=rec["updatedAt"])
    assert updated["fields"]["status"] == "doing"
    assert updated["fields"]["title"] == "t"
    # the fixed clock is not later than the stored value → stored value + 1 ms (API.md §4.5)
    assert updated["updatedAt"] == "2026-03-01T09:15:02.418Z"
    assert updated["createdAt"] == rec["createdAt"]
    assert updated["updatedBy"] is None
    with pytest.raises(sovrium.ConflictError) as info:
        tasks.update(rec["id"], {"status": "done"}, updated_at=rec["updatedAt"])
    exc = info.value
    assert isinstance(exc, sovrium.ApiError)
    assert (exc.status, exc.code) == (409, "CONFLICT")
    assert str(exc) == "Record has been modified since the supplied updatedAt"
    assert tasks.get(rec["id"])["fields"]["status"] == "doing"
    # the same instant written with another offset is not stale
    same = tasks.update(rec["id"], {"done": True}, updated_at="2026-03-01T10:15:02.418+01:00")
    assert same["fields"]["done"] is True and same["fields"]["remaining"] == 0
    # without a precondition the update always applies
    assert tasks.update(rec["id"], {"title": "u"})["fields"]["title"] == "u"


def test_update_without_change_keeps_updated_at(tasks):
    rec = tasks.create({"title": "t"})
    assert tasks.update(rec["id"], {"title": "t"}) == rec
    assert tasks.update(rec["id"], {}) == rec


def test_delete_and_get(tasks):
    keep = tasks.create({"title": "keep"})
    gone = tasks.create({"title": "gone"})
    assert tasks.delete(gone["id"]) is None
    with pytest.raises(sovrium.NotFoundError) as info:
        tasks.get(gone["id"])
    assert (info.value.status, info.value.code) == (404, "NOT_FOUND")
    assert str(info.value) == "Resource not found"
    trashed = tasks.get(gone["id"], include_deleted=True)
    assert trashed["fields"]["title"] == "gone"
    assert TS_RE.match(trashed["deletedAt"]) and trashed["deletedBy"] is None
    assert [r["id"] for r in tasks.list()["records"]] == [keep["id"]]
    assert tasks.count() == 1
    assert tasks.delete(keep["id"], permanent=True) is None
    with pytest.raises(sovrium.NotFoundError):
        tasks.get(keep["id"], include_deleted=True)
    with pytest.raises(sovrium.NotFoundError):
        tasks.delete(keep["id"])


def _seed(tasks):
    rows = [("a", "todo", 3), ("b", "doing", 1), ("c", "doing", 5), ("d", "done", 2),
            ("e", "doing", None)]
    return [tasks.create({"title": t, "status": s, "estimate": e}) for t, s, e in rows]


def test_list_filter_sort_and_pagination(tasks):
    recs = _seed(tasks)
    page = tasks.list()
    assert set(page) == {"records", "pagination"}
    assert [r["id"] for r in page["records"]] == [r["id"] for r in recs]
    assert page["pagination"] == {"page": 1, "limit": 10, "offset": 0, "total": 5,
                                  "totalPages": 1, "hasNextPage": False,
                                  "hasPreviousPage": False}
    tree = {"field": "status", "operator": "equals", "value": "doing"}
    assert titles(tasks.list(filter=tree)) == ["b", "c", "e"]
    assert titles(tasks.list(filter="status:doing")) == ["b", "c", "e"]
    assert titles(tasks.list(filter=json.dumps(tree))) == ["b", "c", "e"]
    assert titles(tasks.list(filter=tree, sort=[("estimate", "desc")])) == ["c", "b", "e"]
    assert titles(tasks.list(filter=tree, sort="-estimate")) == ["c", "b", "e"]
    assert titles(tasks.list(sort=[("status", "asc"), ("estimate", "desc")])) == \
        ["a", "c", "b", "e", "d"]
    assert titles(tasks.list(sort="status:asc,estimate:desc")) == ["a", "c", "b", "e", "d"]
    page = tasks.list(limit=2, page=2)
    assert titles(page) == ["c", "d"]
    assert page["pagination"] == {"page": 2, "limit": 2, "offset": 2, "total": 5,
                                  "totalPages": 3, "hasNextPage": True, "hasPreviousPage": True}
    assert titles(tasks.list(limit=2, offset=4)) == ["e"]
    assert titles(tasks.list(filter_by_formula="{estimate} > 2")) == ["a", "c"]
    assert titles(tasks.list(search="C")) == ["c"]
    assert tasks.list(fields="title")["records"][0]["fields"] == {"title": "a"}
    skipped = tasks.list(limit=2, skip_total=True)["pagination"]
    assert skipped["total"] is None and skipped["totalPages"] is None
    assert skipped["hasNextPage"] is True


def test_iterate_in_id_order_with_batches(tasks):
    recs = _seed(tasks) + _seed(tasks)
    it = tasks.iterate(batch_size=3)
    assert iter(it) is it
    first = next(it)
    assert first == recs[0]
    rest = list(it)
    assert [first["id"]] + [r["id"] for r in rest] == [r["id"] for r in recs]
    assert [r["id"] for r in tasks.iterate(batch_size=1)] == [r["id"] for r in recs]
    doing = [r["fields"]["title"] for r in tasks.iterate(filter="status:doing", batch_size=2)]
    assert doing == ["b", "c", "e"] * 2
    tree = {"field": "estimate", "operator": "greaterThan", "value": 2}
    assert [r["fields"]["title"] for r in tasks.iterate(filter=tree)] == ["a", "c"] * 2
    assert [r["fields"]["title"] for r in tasks.iterate(search="c", batch_size=500)] == ["c"] * 2
    # more records than one default page of a list
    assert len(list(tasks.iterate())) == len(recs) > 0


def test_count(tasks):
    assert tasks.count() == 0
    recs = _seed(tasks)
    assert tasks.count() == 5
    assert tasks.count(filter="status:doing") == 3
    assert tasks.count(filter={"field": "estimate", "operator": "isNull"}) == 1
    assert tasks.count(filter_by_formula="{estimate} >= 3") == 2
    assert tasks.count(search="c") == 1
    tasks.delete(recs[0]["id"])
    assert tasks.count() == 4


def test_history_actor_is_null(tasks):
    rec = tasks.create({"title": "t"})
    tasks.update(rec["id"], {"status": "done"})
    history = tasks.history(rec["id"])
    assert [h["action"] for h in history["history"]] == ["update", "create"]
    assert all(h["userId"] is None for h in history["history"])
    assert history["history"][0]["changes"] == {"status": {"from": "todo", "to": "done"}}


###############################################################################
# Errors (§11.3)
###############################################################################


def test_validation_error(tasks):
    with pytest.raises(sovrium.ValidationError) as info:
        tasks.create({"estimate": "2"})
    exc = info.value
    assert isinstance(exc, sovrium.ApiError)
    assert (exc.status, exc.code) == (400, "VALIDATION_ERROR")
    assert str(exc) == "One or more fields failed validation"
    assert sorted(exc.errors, key=lambda e: e["field"]) == [
        {"field": "estimate", "message": "Field 'estimate' must be a number"},
        {"field": "title", "message": "Field 'title' is required"}]
    with pytest.raises(sovrium.ValidationError) as info:
        tasks.create({"title": "x", "nope": 1, "ref": 3})
    assert sorted(info.value.errors, key=lambda e: e["field"]) == [
        {"field": "nope", "message": "Unknown field 'nope'"},
        {"field": "ref", "message": "Cannot write to readonly field 'ref'"}]
    assert tasks.count() == 0


def test_parameter_errors_are_validation_errors(tasks):
    with pytest.raises(sovrium.ValidationError) as info:
        tasks.list(limit=0)
    assert info.value.errors == [{"field": "limit",
                                  "message": "Parameter 'limit' must be between 1 and 1000"}]
    with pytest.raises(sovrium.ValidationError) as info:
        tasks.list(filter="nofield:1")
    assert info.value.errors == [{"field": "filter", "message": "Unknown field 'nofield'"}]
    with pytest.raises(sovrium.ValidationError):
        tasks.list(sort=[("title", "sideways")])


def test_restrict_delete_conflict(app):
    project = app.table("projects").create({"name": "P"})
    app.table("tasks").create({"title": "t", "project": project["id"]})
    with pytest.raises(sovrium.ConflictError) as info:
        app.table("projects").delete(project["id"])
    assert str(info.value) == "Record cannot be deleted because other records reference it"
    assert app.table("projects").count() == 1


def test_error_hierarchy():
    expected = {"ValidationError": (400, "VALIDATION_ERROR"),
                "UnauthorizedError": (401, "UNAUTHORIZED"),
                "ForbiddenError": (403, "FORBIDDEN"),
                "NotFoundError": (404, "NOT_FOUND"),
                "ConflictError": (409, "CONFLICT"),
                "PayloadTooLargeError": (413, "PAYLOAD_TOO_LARGE"),
                "RateLimitedError": (429, "RATE_LIMITED"),
                "ServiceUnavailableError": (503, "SERVICE_UNAVAILABLE")}
    for name, (status, code) in expected.items():
        cls = getattr(sovrium, name)
        assert issubclass(cls, sovrium.ApiError), name
        assert (cls.status, cls.code) == (status, code), name


def test_api_error_constructor():
    exc = sovrium.ApiError(409, "CONFLICT", "Something clashed")
    assert (exc.status, exc.code, str(exc), exc.errors) == (409, "CONFLICT", "Something clashed",
                                                            None)
    errors = [{"field": "x", "message": "bad"}]
    exc = sovrium.ApiError(400, "VALIDATION_ERROR", "bad", errors=errors)
    assert exc.errors == errors


###############################################################################
# Module functions (§11.4)
###############################################################################


def test_version(memory_app):
    assert isinstance(sovrium.__version__, str)
    assert re.match(r"^\d+\.\d+\.\d+", sovrium.__version__)
    health = webtest.TestApp(memory_app.wsgi).get("/api/health").json
    assert health["server"] == {"name": "sovrium", "version": sovrium.__version__}


def test_validate_config():
    errors, warnings = sovrium.validate_config(copy.deepcopy(BASIC_CONFIG))
    assert errors == [] and isinstance(warnings, list)

    errors, warnings = sovrium.validate_config({"name": "x", "bogus": 1, "pages": []})
    assert "Unknown top-level key 'bogus'" in [e["message"] for e in errors]
    assert {"path": "", "message": "ignored unsupported keys: pages"} in warnings

    config = copy.deepcopy(BASIC_CONFIG)
    config["tables"][1]["fields"][0]["requried"] = True
    errors, _ = sovrium.validate_config(config)
    assert {"path": "tables[1].fields[0].requried",
            "message": "Unknown key 'requried' (did you mean 'required'?)"} in errors

    errors, _ = sovrium.validate_config({"name": "${APP_NAME}"}, env={"APP_NAME": "from-env"})
    assert errors == []


def test_load_config(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text("name: loaded\nversion: '2'\ntables: []\n")
    doc = sovrium.load_config(str(path))
    assert doc["name"] == "loaded" and doc["version"] == "2"
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(sovrium.ConfigError):
        sovrium.load_config(str(tmp_path / "broken.yaml"))


###############################################################################
# WSGI under a prefix (§11.1, API.md §1.1, §4.3)
###############################################################################


@pytest.mark.parametrize("prefix", ["/prefix", "/a/b"])
def test_wsgi_mounted_under_prefix(app, prefix):
    client = webtest.TestApp(app.wsgi, extra_environ={"SCRIPT_NAME": prefix})
    assert client.get(f"{prefix}/api/health").json["status"] == "ok"
    resp = client.post_json(f"{prefix}/api/tables/tasks/records", {"title": "mounted"}, status=201)
    location = resp.headers["Location"]
    assert location == f"{prefix}/api/tables/2/records/{resp.json['id']}"
    assert client.get(location).json == resp.json
    err = client.get(f"{prefix}/api/nope", expect_errors=True)
    assert err.status_int == 404 and err.json["message"] == "Route not found"
    # the same app at the root
    root = webtest.TestApp(app.wsgi).post_json("/api/tables/tasks/records", {"title": "root"})
    assert root.headers["Location"] == f"/api/tables/2/records/{root.json['id']}"
