"""Storage: query plans use the configured indexes, history comes from triggers only, layering."""

import ast
import json
import os
import re
import subprocess
import sys

import apsw
import pytest
import webtest

import sovrium

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PLAN_CONFIG = {
    "name": "plans",
    "tables": [
        {"id": 1, "name": "owners", "fields": [
            {"id": 1, "name": "name", "type": "single-line-text", "indexed": True},
            {"id": 2, "name": "things", "type": "relationship", "relatedTable": "things",
             "relationType": "one-to-many", "relatedField": "owner"},
            {"id": 3, "name": "thing_count", "type": "count", "relationshipField": "things"},
        ]},
        {"id": 2, "name": "things", "fields": [
            {"id": 1, "name": "title", "type": "single-line-text", "indexed": True},
            {"id": 2, "name": "status", "type": "single-select", "options": ["a", "b", "c"], "indexed": True},
            {"id": 3, "name": "due", "type": "date", "indexed": True},
            {"id": 4, "name": "done", "type": "checkbox", "indexed": True},
            {"id": 5, "name": "code", "type": "single-line-text", "unique": True},
            {"id": 6, "name": "owner", "type": "relationship", "relatedTable": "owners"},
            {"id": 7, "name": "tags", "type": "relationship", "relatedTable": "owners",
             "relationType": "many-to-many"},
            {"id": 8, "name": "note", "type": "long-text"},
        ], "indexes": [{"name": "status_due", "fields": ["status", "due"]}]},
    ],
}


@pytest.fixture
def plan_app(make_app):
    app = make_app(PLAN_CONFIG)
    owners, things = app.table("owners"), app.table("things")
    for i in range(30):
        owners.create({"name": f"owner {i}"})
    for i in range(300):
        things.create({"title": f"thing {i}", "status": "abc"[i % 3], "due": f"2026-01-{i % 28 + 1:02d}",
                       "done": i % 2 == 0, "code": f"C{i}", "owner": i % 30 + 1, "tags": [i % 30 + 1]})
    app.db.conn().execute("ANALYZE")
    return app


def plans_of(app, call):
    """Run `call` and return the query plan of every SELECT it executed on this thread's connection."""
    conn = app.db.conn()
    seen = []

    def trace(cursor, sql, bindings):
        if sql.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append((sql, bindings))
        return True

    conn.exec_trace = trace
    try:
        call()
    finally:
        conn.exec_trace = None
    plans = []
    for sql, bindings in seen:
        rows = conn.execute("EXPLAIN QUERY PLAN " + sql, bindings).fetchall()
        plans.append((sql, " | ".join(r[-1] for r in rows)))
    return plans


def page_plan(app, table, **kw):
    plans = plans_of(app, lambda: app.table(table).list(**kw))
    return [p for sql, p in plans if "LIMIT" in sql][0]


@pytest.mark.parametrize("kw,index", [
    ({"filter": "title:thing 5"}, "ix_t2_f1"),
    ({"filter": {"field": "title", "operator": "startsWith", "value": "thing 1"}, "sort": "title"}, "ix_t2_f1"),
    ({"filter": "status:b"}, "ix_t2_f2"),
    ({"sort": "due"}, "ix_t2_f3"),
    ({"sort": [("due", "desc")]}, "ix_t2_f3"),
    ({"filter": {"field": "due", "operator": "greaterThan", "value": "2026-01-20"}, "sort": "due"}, "ix_t2_f3"),
    ({"filter": {"field": "done", "operator": "isTrue"}}, "ix_t2_f4"),
    ({"filter": "owner:3"}, "ix_t2_f6"),
    ({"filter": "status:a", "sort": "due"}, "ix_t2_i_status_due"),
], ids=["text-equals", "text-prefix-sorted", "choice-equals", "sort-date", "sort-date-desc", "date-range",
        "checkbox", "many-to-one", "composite-equality-then-sort"])
def test_list_queries_use_the_field_indexes(plan_app, kw, index):
    plan = page_plan(plan_app, "things", **kw)
    assert f"INDEX {index}" in plan, plan
    assert "SCAN r" not in plan.replace(f"SCAN r USING INDEX {index}", ""), plan


def test_sorted_page_needs_no_temporary_sort(plan_app):
    plan = page_plan(plan_app, "things", sort="due")
    assert "TEMP B-TREE FOR ORDER BY" not in plan, plan


def test_unique_check_uses_the_unique_index(plan_app):
    def create():
        # The same write path as HTTP, run on this thread so its statements can be traced.
        ctx = plan_app.context(sovrium.SYSTEM)
        with plan_app.db.write() as txn:
            sovrium.insert_record(ctx, txn, plan_app.schema.by_name["things"], {"title": "x", "code": "NEW"})

    plans = plans_of(plan_app, create)
    unique = [p for sql, p in plans if "json_extract(data, '$.f5') = ?" in sql]
    assert unique and "INDEX ux_t2_f5" in unique[0], plans


def test_inverse_and_count_use_the_many_to_one_index(plan_app):
    plan = page_plan(plan_app, "owners", limit=5)
    assert "INDEX ix_t2_f6" in plan, plan


def test_to_many_filter_uses_the_links_table(plan_app):
    plan = page_plan(plan_app, "things", filter={"field": "tags", "operator": "contains", "value": 4})
    assert "links_by_target" in plan or "links" in plan and "PRIMARY KEY" in plan, plan
    assert plan_app.table("things").count(filter={"field": "tags", "operator": "contains", "value": 4}) == 10


def test_index_sql_matches_the_compiler_forms(plan_app):
    sql = {name: text for name, text in plan_app.db.conn().execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name LIKE '%x_t2_%'")}
    assert sql["ix_t2_f1"] == ("CREATE INDEX ix_t2_f1 ON records(json_extract(data, '$.f1') COLLATE NOCASE) "
                               "WHERE table_id = 2 AND deleted_at IS NULL")
    assert sql["ix_t2_f2"] == ("CREATE INDEX ix_t2_f2 ON records(CASE json_extract(data, '$.f2') WHEN 'a' THEN 0 "
                               "WHEN 'b' THEN 1 WHEN 'c' THEN 2 END) WHERE table_id = 2 AND deleted_at IS NULL")
    assert sql["ix_t2_f4"] == ("CREATE INDEX ix_t2_f4 ON records(coalesce(json_extract(data, '$.f4'), 0)) "
                               "WHERE table_id = 2 AND deleted_at IS NULL")
    assert sql["ux_t2_f5"] == ("CREATE UNIQUE INDEX ux_t2_f5 ON records(json_extract(data, '$.f5')) WHERE "
                               "table_id = 2 AND deleted_at IS NULL AND json_extract(data, '$.f5') IS NOT NULL")


def test_choice_index_is_rebuilt_when_options_change(make_app, tmp_path):
    app = make_app(PLAN_CONFIG, db_name="opts.db")
    app.close()
    cfg = json.loads(json.dumps(PLAN_CONFIG))
    cfg["tables"][1]["fields"][1]["options"] = ["a", "b", "c", "d"]
    app = make_app(cfg, db_name="opts.db")
    sql = app.db.conn().execute("SELECT sql FROM sqlite_master WHERE name = 'ix_t2_f2'").fetchall()[0][0]
    assert "WHEN 'd' THEN 3" in sql


def test_history_is_written_by_triggers_only():
    source = open(os.path.join(ROOT, "sovrium.py"), encoding="utf-8").read()
    assert not re.search(r"INSERT\s+(OR\s+\w+\s+)?INTO\s+revisions", source, re.I)
    schema = open(os.path.join(ROOT, "schema.sql"), encoding="utf-8").read()
    assert len(re.findall(r"INSERT INTO revisions", schema)) == 3


def test_a_write_without_write_context_is_refused(app):
    conn = app.db.conn()
    with pytest.raises(apsw.ConstraintError, match="write context not set"):
        conn.execute("INSERT INTO records (table_id, data, created_at, updated_at) VALUES (2, '{}', 'x', 'x')")
    assert app.table("tasks").count() == 0
    assert conn.execute("SELECT actor_id, now, request_id FROM write_context").fetchall() == [(None, None, None)]


def test_write_context_is_reset_after_each_transaction(app):
    app.table("tasks").create({"title": "one"})
    conn = app.db.conn()
    assert conn.execute("SELECT actor_id, now, request_id FROM write_context").fetchall() == [(None, None, None)]


def test_pragmas_of_every_connection(app):
    conn = app.db.conn()
    assert conn.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchall()[0][0] == 1
    assert conn.execute("PRAGMA synchronous").fetchall()[0][0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchall()[0][0] == 5000
    assert conn.execute("PRAGMA application_id").fetchall()[0][0] == 1397708370
    assert conn.execute("PRAGMA user_version").fetchall()[0][0] == sovrium.SCHEMA_VERSION


def test_query_time_limit_answers_503(make_app, config):
    config["settings"] = {"queryTimeoutMs": 100}
    app = make_app(config)
    client = webtest.TestApp(app.wsgi)
    slow = "IF(LEN({title}) > 0, LEN(SUBSTITUTE({title}, 'a', 'bb')), 0)"
    app.table("tasks").create({"title": "a" * 100})
    # A recursive query far longer than 100 ms, through the same time-limited read path.
    ctx = app.context(sovrium.SYSTEM)
    with pytest.raises(sovrium.ServiceUnavailableError, match="The query took too long"):
        with ctx.read() as conn:
            conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                         "SELECT count(*) FROM c").fetchall()
    assert slow and client.get("/api/health").status_int == 200


def test_http_layer_is_the_only_one_that_knows_bottle():
    source = open(os.path.join(ROOT, "sovrium.py"), encoding="utf-8").read()
    banner = re.search(r"^# \d+\. HTTP layer", source, re.M).start()
    assert "bottle" not in source[:banner].lower().replace("bottle.py", "")
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.startswith("bottle") for n in names):
                assert node.lineno > source[:banner].count("\n")


def test_sections_have_banners_in_order():
    source = open(os.path.join(ROOT, "sovrium.py"), encoding="utf-8").read()
    numbers = [int(n) for n in re.findall(r"^# (\d+)\. .*#####$", source, re.M)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 10


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(ROOT, "examples"))
                                        if n.endswith((".yaml", ".json"))))
def test_every_example_loads_and_serves(tmp_path, name):
    path = os.path.join(ROOT, "examples", name)
    with sovrium.App(path, db_path=str(tmp_path / "ex.db"), env={"SOVRIUM_ARGON2_PROFILE": "test"}) as app:
        client = webtest.TestApp(app.wsgi)
        assert client.get("/api/health").json["status"] == "ok"
        tables = client.get("/api/tables").json["tables"]
        if app.schema.auth is None:
            assert [t["name"] for t in tables] == [t.name for t in app.schema.tables]
            for t in app.schema.tables:
                assert client.get(f"/api/tables/{t.name}/records").json["pagination"]["total"] == 0
        else:
            # Auth configured: an anonymous caller sees only tables readable by everyone.
            assert tables == []
            assert client.get("/api/tables/tasks/records", expect_errors=True).status_int == 401


def test_embedding_example_runs(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "embed.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    assert "to reorder: ['Wire 1.5mm', 'M4 nut']" in proc.stdout
    assert "rejected: [{'field': 'quantity', 'message': \"Field 'quantity' must be at least 0\"}]" in proc.stdout


def test_text_in_uses_the_nocase_index(plan_app):
    plan = page_plan(plan_app, "things", filter={"field": "title", "operator": "in", "value": ["thing 1", "THING 2"]})
    assert "INDEX ix_t2_f1" in plan, plan
    names = [r["fields"]["title"] for r in plan_app.table("things").list(
        filter={"field": "title", "operator": "in", "value": ["thing 1", "THING 2"]})["records"]]
    assert names == ["thing 1"]     # `in` is exact, like equals


def test_each_statement_of_a_read_has_its_own_time_limit(make_app, config):
    config["settings"] = {"queryTimeoutMs": 100}
    app = make_app(config)
    ctx = app.context(sovrium.SYSTEM)
    slow = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
            "SELECT count(*) FROM c")
    conn = app.db.conn()
    started = __import__("time").perf_counter()
    conn.execute(slow, (200000,)).fetchall()
    one = __import__("time").perf_counter() - started
    n = int(200000 * 0.06 / max(one, 1e-6))      # about 60 ms of work per statement
    with ctx.read() as conn:
        ctx.next_query()
        conn.execute(slow, (n,)).fetchall()
        ctx.next_query()
        conn.execute(slow, (n,)).fetchall()     # 120 ms in total, each statement under 100 ms


def test_concurrent_writes_succeed_or_fail_alone(make_app, config):
    """Group commit: each write is atomic on its own, failures never leak into other writes."""
    import threading
    app = make_app(config)
    results = []

    def create(i):
        try:
            # Every third write repeats a unique e-mail and must fail alone.
            email = "dup@example.com" if i % 3 == 0 else f"u{i}@example.com"
            results.append(("ok", app.table("tasks").create({"title": f"t{i}", "email": email})["id"]))
        except sovrium.ValidationError as exc:
            results.append(("invalid", exc.errors[0]["message"]))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r[0] == "ok"]
    invalid = [r for r in results if r[0] == "invalid"]
    assert len(ok) == 21 and len(invalid) == 9
    assert {m for _, m in invalid} == {"Field 'email' must be unique"}
    assert app.table("tasks").count() == 21
    refs = sorted(r["fields"]["ref"] for r in app.table("tasks").list(limit=100)["records"])
    assert len(set(refs)) == 21            # autonumbers of failed writes were rolled back with them
    conn = app.db.conn()
    assert conn.execute("SELECT count(*) FROM revisions").fetchall()[0][0] == 21


def test_a_crashing_write_fails_alone(make_app, config, monkeypatch):
    app = make_app(config)
    client = webtest.TestApp(app.wsgi)
    original = sovrium.insert_record

    def flaky(ctx, txn, table, values, *a, **kw):
        if values.get("title") == "boom":
            raise RuntimeError("disk on fire")
        return original(ctx, txn, table, values, *a, **kw)

    monkeypatch.setattr(sovrium, "insert_record", flaky)
    r = client.post_json("/api/tables/tasks/records", {"title": "boom"}, expect_errors=True)
    assert r.status_int == 500 and r.json["code"] == "INTERNAL_ERROR"
    assert "disk on fire" not in r.text
    assert client.post_json("/api/tables/tasks/records", {"title": "fine"}).status_int == 201
    assert app.table("tasks").count() == 1


def test_a_write_that_times_out_fails_alone_in_its_group(tmp_path):
    """An interrupted write can make SQLite roll back the whole shared transaction: the other writes
    of the group run again, and only the slow one fails, with 503."""
    import datetime
    import threading
    db = sovrium.Database(str(tmp_path / "g.db"), lambda: datetime.datetime.now(datetime.timezone.utc))
    db.conn().execute("CREATE TABLE t(x)")
    gate, results = threading.Event(), {}

    def blocker(txn):       # holds the writer so the next three jobs form one group
        gate.wait(5)
        return "blocker"

    def insert(value):
        return lambda txn: txn.execute("INSERT INTO t VALUES (?)", (value,)) and value

    def slow(txn):
        txn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 5000000) "
                    "INSERT INTO t SELECT i FROM n")

    def run(name, fn, timeout=None):
        try:
            results[name] = ("ok", db.submit(fn, timeout_ms=timeout))
        except Exception as exc:
            results[name] = ("error", type(exc).__name__, str(exc))

    threads = [threading.Thread(target=run, args=("blocker", blocker))]
    threads[0].start()
    __import__("time").sleep(0.2)
    for name, fn, timeout in (("good", insert("good"), None), ("slow", slow, 50), ("after", insert("after"), None)):
        threads.append(threading.Thread(target=run, args=(name, fn, timeout)))
        threads[-1].start()
        __import__("time").sleep(0.05)
    gate.set()
    for t in threads:
        t.join(30)
    assert results["slow"] == ("error", "ServiceUnavailableError", "The query took too long")
    assert results["good"] == ("ok", "good") and results["after"] == ("ok", "after")
    with db.read() as conn:
        assert sorted(r[0] for r in conn.execute("SELECT x FROM t")) == ["after", "good"]
    db.close()
