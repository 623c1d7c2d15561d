"""Schema changes over existing data (CONFIG.md §3, §4, §13, §14).

Each test opens an App on a temporary database file with configuration A, writes records,
closes it, and reopens the same file with configuration B (a changed dict is imported as a new
version, OPERATIONS.md §11.1). Warnings that need a database come from `sovrium validate --db`
(read-only) or from the ConfigError raised by the data-loss guard.
"""

import copy
import json

import pytest
import webtest

import sovrium
from conftest import TEST_ENV

GUARD = "the configuration would clear stored values (see warnings); rerun with --allow-data-loss"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "schema.db")


def open_app(cfg, db, **kw):
    return sovrium.App(copy.deepcopy(cfg), db_path=db, env=dict(TEST_ENV), **kw)


def config(*fields, tables=(), table_id=1, table_name="items", **table_extra):
    """A one-table configuration (plus optional extra tables)."""
    return {"name": "schema-app", "version": "1",
            "tables": [{"id": table_id, "name": table_name, "fields": list(fields), **table_extra},
                       *tables]}


def F(id_, name, type_="single-line-text", **opts):
    field = {"name": name, "type": type_, **opts}
    if id_ is not None:
        field["id"] = id_
    return field


def seed(cfg, db, rows, table="items"):
    """Open with cfg, create rows, close; returns the created record ids."""
    with open_app(cfg, db) as app:
        return [app.table(table).create(row)["id"] for row in rows]


def read(cfg, db, table="items", **kw):
    """Open with cfg and return {id: fields} of every live record of the table."""
    with open_app(cfg, db, **kw) as app:
        return {r["id"]: r["fields"] for r in app.table(table).iterate()}


def guard_refuses(cfg, db):
    """Opening must raise the data-loss guard; returns its warnings."""
    with pytest.raises(sovrium.ConfigError) as exc:
        open_app(cfg, db)
    assert exc.value.errors[0]["message"] == GUARD
    return exc.value.warnings


def data_loss_messages(warnings):
    return [w["message"] for w in warnings if w.get("dataLoss") is True]


def validate_db(tmp_path, capsys, db, cfg, *extra):
    """Run `sovrium validate --json --db` on cfg; returns (exit code, parsed JSON)."""
    path = tmp_path / "next.json"
    path.write_text(json.dumps(cfg))
    capsys.readouterr()
    code = sovrium.main(["validate", "--json", "--db", db, *extra, str(path)])
    return code, json.loads(capsys.readouterr().out)


def messages(items):
    return [w["message"] for w in items]


# --------------------------------------------------------------------------- §13.1 renames


def test_rename_keeping_id_keeps_values_without_history(db):
    a = config(F(1, "title"), F(2, "amount", "decimal"))
    b = config(F(1, "label"), F(2, "amount", "decimal"))
    [rid] = seed(a, db, [{"title": "hello", "amount": 2.5}])
    with open_app(a, db) as app:
        before = app.table("items").history(rid)["history"]
        updated_at = app.table("items").get(rid)["updatedAt"]
    with open_app(b, db) as app:
        rec = app.table("items").get(rid)
        assert rec["fields"] == {"label": "hello", "amount": 2.5}
        assert rec["updatedAt"] == updated_at
        history = app.table("items").history(rid)["history"]
        assert len(history) == len(before)
        # history shows the past values under the field's new name
        assert history[-1]["after"]["label"] == "hello"
        assert "title" not in history[-1]["after"]


def test_swap_two_field_names_by_id(db):
    a = config(F(1, "first"), F(2, "second"))
    b = config(F(1, "second"), F(2, "first"))
    [rid] = seed(a, db, [{"first": "one", "second": "two"}])
    assert read(b, db)[rid] == {"second": "one", "first": "two"}


def test_rename_without_id_makes_values_dormant(tmp_path, capsys, db):
    a = config(F(1, "title"), F(2, "amount", "decimal"))
    b = config(F(2, "amount", "decimal"), F(None, "label"))
    ids = seed(a, db, [{"title": "x", "amount": 1}, {"title": "y"}, {"amount": 3}])

    code, doc = validate_db(tmp_path, capsys, db, b)
    assert code == 0
    dormant = [w for w in doc["warnings"] if w["message"] ==
               "Field 'title' is no longer configured; its 2 values become dormant (keep its id to rename it)"]
    assert dormant, doc["warnings"]
    assert dormant[0].get("dataLoss", False) is False

    with open_app(b, db) as app:  # dormancy is not data loss: no consent needed
        records = {r["id"]: r["fields"] for r in app.table("items").iterate()}
        assert records[ids[0]] == {"amount": 1, "label": None}
        assert records[ids[1]] == {"amount": None, "label": None}
        meta = webtest.TestApp(app.wsgi).get("/api/tables/items").json
        assert [(f["id"], f["name"]) for f in meta["fields"]] == [(2, "amount"), (3, "label")]


def test_dormant_field_invisible_to_filters(db):
    a = config(F(1, "title"), F(2, "amount", "decimal"))
    b = config(F(2, "amount", "decimal"))
    seed(a, db, [{"title": "x", "amount": 1}])
    with open_app(b, db) as app:
        with pytest.raises(sovrium.ValidationError) as exc:
            app.table("items").list(filter={"field": "title", "operator": "equals", "value": "x"})
        assert "Unknown field 'title'" in json.dumps(exc.value.errors)
        assert "title" not in app.table("items").list()["records"][0]["fields"]


def test_dormant_field_comes_back_by_explicit_id(db):
    a = config(F(1, "title"), F(2, "amount", "decimal"))
    b = config(F(2, "amount", "decimal"), F(None, "label"))
    c_by_id = config(F(1, "title"), F(2, "amount", "decimal"), F(3, "label"))
    ids = seed(a, db, [{"title": "x", "amount": 1}, {"title": "y"}])
    with open_app(b, db) as app:
        app.table("items").update(ids[0], {"label": "new"})
    records = read(c_by_id, db)
    assert records[ids[0]] == {"title": "x", "amount": 1, "label": "new"}
    assert records[ids[1]] == {"title": "y", "amount": None, "label": None}


def test_dormant_field_is_never_matched_by_name(db):
    a = config(F(1, "title"), F(2, "amount", "decimal"))
    b = config(F(2, "amount", "decimal"))
    c = config(F(2, "amount", "decimal"), F(None, "title"))  # same name, no id → a new, empty field
    [rid] = seed(a, db, [{"title": "x", "amount": 1}])
    read(b, db)
    with open_app(c, db) as app:
        assert app.table("items").get(rid)["fields"] == {"amount": 1, "title": None}
        meta = webtest.TestApp(app.wsgi).get("/api/tables/items").json
        assert [(f["id"], f["name"]) for f in meta["fields"]] == [(2, "amount"), (3, "title")]


def test_field_ids_are_never_reused(db):
    a = config(F(1, "title"), F(None, "extra"))
    b = config(F(1, "title"))
    c = config(F(1, "title"), F(None, "fresh"))
    seed(a, db, [{"title": "t", "extra": "e"}])
    read(b, db)
    with open_app(c, db) as app:
        meta = webtest.TestApp(app.wsgi).get("/api/tables/items").json
        assert [(f["id"], f["name"]) for f in meta["fields"]] == [(1, "title"), (3, "fresh")]
        rec = app.table("items").list()["records"][0]
        assert rec["fields"] == {"title": "t", "fresh": None}


def test_field_without_id_keeps_its_live_registered_id(db):
    a = config(F(None, "title"), F(None, "amount", "decimal"))
    b = config(F(None, "amount", "decimal"), F(None, "note"), F(None, "title"))  # reordered, one added
    [rid] = seed(a, db, [{"title": "t", "amount": 4}])
    with open_app(b, db) as app:
        assert app.table("items").get(rid)["fields"] == {"amount": 4, "note": None, "title": "t"}
        meta = webtest.TestApp(app.wsgi).get("/api/tables/items").json
        assert [(f["id"], f["name"]) for f in meta["fields"]] == [(2, "amount"), (3, "note"), (1, "title")]


# --------------------------------------------------------------------------- tables: rename, dormant, ids


NOTES = {"id": 2, "name": "notes", "fields": [{"id": 1, "name": "text", "type": "long-text"}]}


def test_table_rename_keeping_id(db):
    a = config(F(1, "title"))
    b = config(F(1, "title"), table_name="goods")
    [rid] = seed(a, db, [{"title": "kept"}])
    with open_app(b, db) as app:
        assert app.table("goods").get(rid)["fields"] == {"title": "kept"}
        client = webtest.TestApp(app.wsgi)
        assert client.get("/api/tables/goods").json["id"] == 1
        assert client.get("/api/tables/items", status=404).status_int == 404


def test_removed_table_is_dormant_and_comes_back(tmp_path, capsys, db):
    a = config(F(1, "title"), tables=[NOTES])
    b = config(F(1, "title"))
    ids = seed(a, db, [{"text": "one"}, {"text": "two"}], table="notes")

    code, doc = validate_db(tmp_path, capsys, db, b)
    assert code == 0
    assert "Table 'notes' is no longer configured; its 2 records become dormant (keep its id to rename it)" \
        in messages(doc["warnings"])

    with open_app(b, db) as app:
        client = webtest.TestApp(app.wsgi)
        client.get("/api/tables/notes", status=404)
        client.get("/api/tables/2", status=404)
        assert [t["name"] for t in client.get("/api/tables").json["tables"]] == ["items"]
    assert sorted(read(a, db, table="notes")) == ids
    assert read(a, db, table="notes")[ids[0]] == {"text": "one"}


def test_dormant_table_is_never_matched_by_name(db):
    notes_without_id = {**NOTES}
    del notes_without_id["id"]
    a = config(F(1, "title"), tables=[NOTES])
    b = config(F(1, "title"))
    c = config(F(1, "title"), tables=[notes_without_id])
    seed(a, db, [{"text": "one"}], table="notes")
    read(b, db)
    with open_app(c, db) as app:
        assert app.table("notes").list()["records"] == []
        assert webtest.TestApp(app.wsgi).get("/api/tables/notes").json["id"] == 3


def test_table_ids_are_never_reused(db):
    other = {"name": "other", "fields": [{"name": "x", "type": "integer"}]}
    fresh = {"name": "fresh", "fields": [{"name": "y", "type": "integer"}]}
    a = config(F(1, "title"), tables=[other])
    b = config(F(1, "title"))
    c = config(F(1, "title"), tables=[fresh])
    with open_app(a, db) as app:
        assert webtest.TestApp(app.wsgi).get("/api/tables/other").json["id"] == 2
    read(b, db)
    with open_app(c, db) as app:
        assert webtest.TestApp(app.wsgi).get("/api/tables/fresh").json["id"] == 3


# --------------------------------------------------------------------------- identity conflicts (§3, §4, §14)


def test_field_identity_conflict(tmp_path, capsys, db):
    a = config(F(1, "title"), F(2, "amount", "decimal"))
    b = config(F(5, "title"), F(2, "amount", "decimal"))
    [rid] = seed(a, db, [{"title": "t"}])
    message = "Field 'title' is registered with id 1; it cannot change to 5"
    assert sovrium.validate_config(copy.deepcopy(b), env=dict(TEST_ENV))[0] == []  # no database: no conflict
    with pytest.raises(sovrium.ConfigError) as exc:
        open_app(b, db)
    assert message in messages(exc.value.errors)
    code, doc = validate_db(tmp_path, capsys, db, b)
    assert code == 1
    assert message in messages(doc["errors"])
    assert read(a, db)[rid] == {"title": "t", "amount": None}


def test_table_identity_conflict(db):
    a = config(F(1, "title"))
    b = config(F(1, "title"), table_id=5)
    seed(a, db, [{"title": "t"}])
    with pytest.raises(sovrium.ConfigError) as exc:
        open_app(b, db)
    assert "Table 'items' is registered with id 1; it cannot change to 5" in messages(exc.value.errors)


def test_field_id_swap_is_allowed(db):
    a = config(F(1, "title"), F(2, "note"))
    b = config(F(2, "title"), F(1, "note"))  # both ids used again: two renames
    [rid] = seed(a, db, [{"title": "t", "note": "n"}])
    assert read(b, db)[rid] == {"title": "n", "note": "t"}


def test_table_id_swap_is_allowed(db):
    a = config(F(1, "title"), tables=[NOTES])
    swapped_notes = {**NOTES, "id": 1}
    b = {"name": "schema-app", "version": "1",
         "tables": [{"id": 2, "name": "items", "fields": [F(1, "title")]}, swapped_notes]}
    seed(a, db, [{"title": "t"}])
    with open_app(b, db) as app:
        # table id 1 (holding the record) is now called 'notes'; its field id 1 is now 'text'
        assert [r["fields"] for r in app.table("notes").iterate()] == [{"text": "t"}]
        assert app.table("items").list()["records"] == []


# --------------------------------------------------------------------------- §13.3 conversions


SELECT = {"options": ["a", "b", "c"]}

# (from field definition, to field definition, stored value, expected value, data loss?)
# data loss: True = the guard must refuse; False = applies without consent; None = not checked.
CONVERSIONS = [
    pytest.param(("decimal", {}), ("single-line-text", {}), 2.5, "2.5", False, id="decimal-to-text"),
    pytest.param(("decimal", {}), ("single-line-text", {}), 3, "3", False, id="integral-decimal-to-text"),
    pytest.param(("decimal", {}), ("long-text", {}), 0.1 + 0.2, "0.30000000000000004", False,
                 id="decimal-repr-to-text"),
    pytest.param(("integer", {}), ("single-line-text", {}), 42, "42", False, id="integer-to-text"),
    pytest.param(("single-line-text", {}), ("integer", {}), " 7 ", 7, False, id="text-to-integer-trimmed"),
    pytest.param(("single-line-text", {}), ("integer", {}), "1e3", 1000, False, id="text-exponent-to-integer"),
    pytest.param(("single-line-text", {}), ("integer", {}), "2.5", None, True, id="text-fraction-to-integer"),
    pytest.param(("single-line-text", {}), ("integer", {}), "abc", None, True, id="text-word-to-integer"),
    pytest.param(("single-line-text", {}), ("decimal", {}), "2.5", 2.5, False, id="text-to-decimal"),
    pytest.param(("single-line-text", {}), ("decimal", {}), "-0.5e1", -5, False, id="text-signed-exp-to-decimal"),
    pytest.param(("single-line-text", {}), ("decimal", {}), "\u0661\u0662", None, True, id="non-ascii-digits"),
    pytest.param(("single-line-text", {}), ("decimal", {}), "1,5", None, True, id="comma-decimal"),
    pytest.param(("long-text", {}), ("single-line-text", {}), "a\r\nb\nc\rd", "a b c d", False,
                 id="line-breaks-to-spaces"),
    pytest.param(("checkbox", {}), ("single-line-text", {}), True, "true", False, id="boolean-to-text"),
    pytest.param(("checkbox", {}), ("integer", {}), True, 1, False, id="boolean-to-integer"),
    pytest.param(("single-line-text", {}), ("checkbox", {}), "Yes", True, False, id="text-yes-to-checkbox"),
    pytest.param(("single-line-text", {}), ("checkbox", {}), "FALSE", False, False, id="text-false-to-checkbox"),
    pytest.param(("single-line-text", {}), ("checkbox", {}), "maybe", False, True, id="text-other-to-checkbox"),
    pytest.param(("integer", {}), ("checkbox", {}), 0, False, False, id="zero-to-checkbox"),
    pytest.param(("decimal", {}), ("checkbox", {}), -2.5, True, False, id="number-to-checkbox"),
    pytest.param(("single-line-text", {}), ("single-select", SELECT), "b", "b", False, id="text-to-select-option"),
    pytest.param(("single-line-text", {}), ("single-select", SELECT), "B", None, True, id="text-to-select-other"),
    pytest.param(("single-select", SELECT), ("single-line-text", {}), "b", "b", False, id="select-to-text"),
    pytest.param(("single-select", SELECT), ("status", SELECT), "c", "c", False, id="select-to-status"),
    pytest.param(("single-select", SELECT), ("multi-select", SELECT), "b", ["b"], False, id="select-to-multi"),
    pytest.param(("multi-select", SELECT), ("single-select", SELECT), ["a"], "a", False, id="multi-one-to-select"),
    pytest.param(("multi-select", SELECT), ("single-select", SELECT), ["a", "b"], None, True,
                 id="multi-several-to-select"),
    pytest.param(("single-line-text", {}), ("multi-select", SELECT), "c, a ,z", ["a", "c"], None,
                 id="text-to-multi"),
    pytest.param(("multi-select", SELECT), ("single-line-text", {}), ["c", "a"], "a, c", False,
                 id="multi-to-text"),
    pytest.param(("array", {}), ("long-text", {}), ["x", "y"], "x, y", False, id="array-to-text"),
    pytest.param(("date", {}), ("datetime", {}), "2026-03-01", "2026-03-01T00:00:00.000Z", False,
                 id="date-to-datetime-utc"),
    pytest.param(("date", {}), ("datetime", {"timeZone": "Europe/Paris"}), "2026-03-01",
                 "2026-02-28T23:00:00.000Z", False, id="date-to-datetime-new-zone"),
    pytest.param(("datetime", {"timeZone": "Europe/Paris"}), ("date", {}), "2026-03-01T23:30:00Z",
                 "2026-03-02", False, id="datetime-to-date-old-zone"),
    pytest.param(("datetime", {}), ("date", {}), "2026-03-01T23:30:00Z", "2026-03-01", False,
                 id="datetime-to-date-utc"),
    pytest.param(("single-line-text", {}), ("date", {}), "2026-03-01", "2026-03-01", False, id="text-to-date"),
    pytest.param(("single-line-text", {}), ("date", {}), "01/03/2026", None, True, id="text-bad-date"),
    pytest.param(("single-line-text", {}), ("datetime", {"timeZone": "America/New_York"}), "2026-03-01T10:00",
                 "2026-03-01T15:00:00.000Z", False, id="text-to-datetime-in-zone"),
    pytest.param(("single-line-text", {}), ("time", {}), "09:30", "09:30:00", False, id="text-to-time"),
    pytest.param(("date", {}), ("single-line-text", {}), "2026-03-01", "2026-03-01", False, id="date-to-text"),
    pytest.param(("time", {}), ("single-line-text", {}), "09:30", "09:30:00", False, id="time-to-text"),
    pytest.param(("single-line-text", {}), ("json", {}), "x", "x", False, id="text-to-json"),
    pytest.param(("integer", {}), ("json", {}), 5, 5, False, id="integer-to-json"),
    pytest.param(("integer", {}), ("decimal", {}), 3, 3, False, id="integer-to-decimal"),
    pytest.param(("decimal", {}), ("integer", {}), 2.5, None, True, id="fractional-decimal-to-integer"),
    pytest.param(("single-line-text", {}), ("url", {}), "https://example.com/x", "https://example.com/x", False,
                 id="valid-url-kept"),
    pytest.param(("single-line-text", {}), ("url", {}), "not a url", None, True, id="invalid-url-cleared"),
    pytest.param(("single-line-text", {}), ("formula", {"formula": "'computed'"}), "x", "computed", True,
                 id="to-computed-deletes"),
]


@pytest.mark.parametrize("src, dst, value, expected, loss", CONVERSIONS)
def test_type_conversion(db, src, dst, value, expected, loss):
    a = config(F(1, "title"), F(2, "v", src[0], **src[1]))
    b = config(F(1, "title"), F(2, "v", dst[0], **dst[1]))
    [rid] = seed(a, db, [{"title": "r", "v": value}])
    with open_app(a, db) as app:
        updated_at = app.table("items").get(rid)["updatedAt"]
    if loss is True:
        warnings = guard_refuses(b, db)
        assert f"Changing 'v' from {src[0]} to {dst[0]} clears 1 values" in data_loss_messages(warnings)
    elif loss is False:
        read(b, db)  # must apply without consent
    with open_app(b, db, allow_data_loss=True) as app:
        rec = app.table("items").get(rid)
        assert rec["fields"]["v"] == expected
        assert type(rec["fields"]["v"]) is type(expected)
        assert rec["updatedAt"] == updated_at  # migrations never touch updatedAt


def test_text_to_integer_guard_then_consent(tmp_path, capsys, db):
    a = config(F(1, "code"))
    b = config(F(1, "code", "integer"))
    ids = seed(a, db, [{"code": "42"}, {"code": " 7 "}, {"code": "abc"}, {"code": "2.5"}, {}])

    warnings = guard_refuses(b, db)
    assert data_loss_messages(warnings) == ["Changing 'code' from single-line-text to integer clears 2 values"]

    # nothing changed: the old configuration still reads the original strings
    assert [read(a, db)[i]["code"] for i in ids] == ["42", " 7 ", "abc", "2.5", None]

    code, doc = validate_db(tmp_path, capsys, db, b)
    assert code == 1
    assert "Changing 'code' from single-line-text to integer clears 2 values" in messages(doc["warnings"])
    code, _ = validate_db(tmp_path, capsys, db, b, "--allow-data-loss")
    assert code == 0
    assert [read(a, db)[i]["code"] for i in ids] == ["42", " 7 ", "abc", "2.5", None]  # validate is read-only

    with open_app(b, db, allow_data_loss=True) as app:
        table = app.table("items")
        assert [table.get(i)["fields"]["code"] for i in ids] == [42, 7, None, None, None]
        # converted records get an `update` history entry by the system (actor null)
        latest = table.history(ids[0])["history"][0]
        assert latest["action"] == "update"
        assert latest["userId"] is None
        assert latest["changes"] == {"code": {"from": "42", "to": 42}}
        # an untouched record gets no entry
        assert [h["action"] for h in table.history(ids[4])["history"]] == ["create"]


def test_cli_validate_db_prints_data_loss_warning(tmp_path, capsys, db):
    a = config(F(1, "code"))
    b = config(F(1, "code", "integer"))
    seed(a, db, [{"code": "abc"}])
    path = tmp_path / "b.json"
    path.write_text(json.dumps(b))
    capsys.readouterr()
    assert sovrium.main(["validate", "--db", db, str(path)]) == 1
    err = capsys.readouterr().err
    assert any(line.startswith("warning: ") and
               line.endswith("Changing 'code' from single-line-text to integer clears 1 values")
               for line in err.splitlines()), err


# --------------------------------------------------------------------------- §13.2 options, links, constraints


def test_removed_select_option_clears_values(db):
    a = config(F(1, "status", "single-select", options=["a", "b", "c"]),
               F(2, "tags", "multi-select", options=["a", "b", "c"]))
    b = config(F(1, "status", "single-select", options=["a", "c"]),
               F(2, "tags", "multi-select", options=["a", "c"]))
    ids = seed(a, db, [{"status": "a", "tags": ["a", "b"]}, {"status": "b", "tags": ["b"]}, {"status": "c"}])

    warnings = guard_refuses(b, db)
    assert "Removing option 'b' from 'status' clears 1 values" in data_loss_messages(warnings)
    assert any(m.startswith("Removing option 'b' from 'tags' clears ") for m in data_loss_messages(warnings))
    assert read(a, db)[ids[1]] == {"status": "b", "tags": ["b"]}  # nothing changed

    records = read(b, db, allow_data_loss=True)
    assert records[ids[0]] == {"status": "a", "tags": ["a"]}
    assert records[ids[1]] == {"status": None, "tags": None}
    assert records[ids[2]] == {"status": "c", "tags": None}


def test_renaming_an_option_label_only_is_not_data_loss(db):
    a = config(F(1, "status", "single-select", options=["a", "b"]))
    b = config(F(1, "status", "single-select", options=[{"value": "a", "label": "Alpha"}, "b", "new"]))
    [rid] = seed(a, db, [{"status": "a"}])
    assert read(b, db)[rid] == {"status": "a"}


def test_changing_related_table_clears_links(db):
    target = {"id": 2, "name": "first", "fields": [{"id": 1, "name": "n", "type": "integer"}]}
    other = {"id": 3, "name": "second", "fields": [{"id": 1, "name": "n", "type": "integer"}]}
    a = config(F(1, "title"), F(2, "link", "relationship", relatedTable="first"), tables=[target, other])
    b = config(F(1, "title"), F(2, "link", "relationship", relatedTable="second"), tables=[target, other])
    with open_app(a, db) as app:
        tid = app.table("first").create({"n": 1})["id"]
        rid = app.table("items").create({"title": "t", "link": tid})["id"]
    warnings = guard_refuses(b, db)
    assert "Changing the related table of 'link' clears 1 values" in data_loss_messages(warnings)
    assert read(b, db, allow_data_loss=True)[rid] == {"title": "t", "link": None}


def test_many_to_one_to_many_to_many(db):
    target = {"id": 2, "name": "first", "fields": [{"id": 1, "name": "n", "type": "integer"}]}
    a = config(F(1, "title"), F(2, "link", "relationship", relatedTable="first"), tables=[target])
    b = config(F(1, "title"), F(2, "link", "relationship", relatedTable="first", relationType="many-to-many"),
               tables=[target])
    with open_app(a, db) as app:
        tid = app.table("first").create({"n": 1})["id"]
        rid = app.table("items").create({"title": "t", "link": tid})["id"]
    assert read(b, db)[rid] == {"title": "t", "link": [tid]}


def test_tightened_constraints_warn_but_keep_data(tmp_path, capsys, db):
    a = config(F(1, "title", maxLength=10), F(2, "qty", "integer"))
    b = config(F(1, "title", maxLength=3, required=True), F(2, "qty", "integer"))
    ids = seed(a, db, [{"title": "abcdef", "qty": 1}, {"title": "ok"}])
    code, doc = validate_db(tmp_path, capsys, db, b)
    assert code == 0
    tightened = [w for w in doc["warnings"] if w["message"] == "1 records do not satisfy the new rules of 'title'"]
    assert tightened, doc["warnings"]
    assert tightened[0].get("dataLoss", False) is False
    with open_app(b, db) as app:
        table = app.table("items")
        assert table.get(ids[0])["fields"]["title"] == "abcdef"
        # writes validate only the fields they contain
        assert table.update(ids[0], {"qty": 2})["fields"] == {"title": "abcdef", "qty": 2}
        with pytest.raises(sovrium.ValidationError):
            table.update(ids[0], {"title": "abcd"})


# --------------------------------------------------------------------------- unique over data (§9, §13.2)


def test_unique_added_over_duplicates_is_refused(tmp_path, capsys, db):
    a = config(F(1, "code"))
    b = config(F(1, "code", unique=True))
    ids = seed(a, db, [{"code": "x"}, {"code": "x"}, {"code": "y"}, {}, {}])
    message = "2 live records share a value in 'code'; it cannot be made unique"
    with pytest.raises(sovrium.ConfigError) as exc:
        open_app(b, db, allow_data_loss=True)
    assert message in messages(exc.value.errors)
    code, doc = validate_db(tmp_path, capsys, db, b)
    assert code == 1
    assert message in messages(doc["errors"])
    # only live records count (a trashed duplicate does not), and empty values never conflict
    with open_app(a, db) as app:
        app.table("items").delete(ids[1])
    with open_app(b, db) as app:
        with pytest.raises(sovrium.ApiError) as exc:
            app.table("items").create({"code": "x"})
        assert "Field 'code' must be unique" in json.dumps(exc.value.errors)


def test_unique_is_checked_on_converted_values(db):
    a = config(F(1, "code"))
    b = config(F(1, "code", "integer", unique=True))
    seed(a, db, [{"code": "7"}, {"code": " 7"}, {"code": "8"}])
    with pytest.raises(sovrium.ConfigError) as exc:
        open_app(b, db, allow_data_loss=True)
    assert "2 live records share a value in 'code'; it cannot be made unique" in messages(exc.value.errors)


def test_composite_unique_index_over_duplicates_is_refused(db):
    a = config(F(1, "a"), F(2, "b"))
    b = config(F(1, "a"), F(2, "b"), indexes=[{"fields": ["a", "b"], "unique": True}])
    seed(a, db, [{"a": "1", "b": "2"}, {"a": "1", "b": "2"}])
    with pytest.raises(sovrium.ConfigError):
        open_app(b, db, allow_data_loss=True)


# --------------------------------------------------------------------------- new fields, defaults, autonumber


def test_new_autonumber_numbers_existing_records_in_id_order(db):
    a = config(F(1, "title"))
    b = config(F(1, "title"), F(2, "ref", "autonumber"))
    ids = seed(a, db, [{"title": "first"}, {"title": "second"}, {"title": "third"}])
    with open_app(a, db) as app:
        updated = {i: app.table("items").get(i)["updatedAt"] for i in ids}
    with open_app(b, db) as app:
        table = app.table("items")
        assert [table.get(i)["fields"]["ref"] for i in ids] == [1, 2, 3]
        assert {i: table.get(i)["updatedAt"] for i in ids} == updated
        assert table.history(ids[0])["history"][0]["action"] == "update"
        assert table.create({"title": "fourth"})["fields"]["ref"] == 4


def test_new_autonumber_with_start_from(db):
    a = config(F(1, "title"))
    b = config(F(1, "title"), F(2, "ref", "autonumber", startFrom=100))
    ids = seed(a, db, [{"title": "first"}, {"title": "second"}])
    with open_app(b, db) as app:
        table = app.table("items")
        assert [table.get(i)["fields"]["ref"] for i in ids] == [100, 101]
        assert table.create({"title": "third"})["fields"]["ref"] == 102


def test_type_change_to_autonumber_is_data_loss_and_renumbers(db):
    a = config(F(1, "title"), F(2, "num", "integer"))
    b = config(F(1, "title"), F(2, "num", "autonumber"))
    ids = seed(a, db, [{"title": "a", "num": 50}, {"title": "b"}])
    warnings = guard_refuses(b, db)
    assert "Changing 'num' from integer to autonumber clears 1 values" in data_loss_messages(warnings)
    records = read(b, db, allow_data_loss=True)
    assert [records[i]["num"] for i in ids] == [1, 2]


def test_adding_a_field_with_default_never_writes_existing_records(db):
    a = config(F(1, "title"))
    b = config(F(1, "title"), F(2, "status", "single-select", options=["todo", "done"], default="todo"),
               F(3, "done", "checkbox", default=True))
    [rid] = seed(a, db, [{"title": "old"}])
    with open_app(a, db) as app:
        before = app.table("items").get(rid)
        history = app.table("items").history(rid)["history"]
    with open_app(b, db) as app:
        table = app.table("items")
        rec = table.get(rid)
        assert rec["fields"] == {"title": "old", "status": None, "done": False}
        assert rec["updatedAt"] == before["updatedAt"]
        assert len(table.history(rid)["history"]) == len(history)
        assert table.create({"title": "new"})["fields"] == {"title": "new", "status": "todo", "done": True}


def test_adding_a_default_to_an_existing_field_never_writes_records(db):
    a = config(F(1, "title"), F(2, "status", "single-select", options=["todo", "done"]))
    b = config(F(1, "title"), F(2, "status", "single-select", options=["todo", "done"], default="done"))
    [rid] = seed(a, db, [{"title": "old"}])
    with open_app(b, db) as app:
        table = app.table("items")
        assert table.get(rid)["fields"]["status"] is None
        assert table.create({"title": "new"})["fields"]["status"] == "done"


def test_reopening_with_same_config_changes_nothing(db):
    a = config(F(1, "title"), F(2, "ref", "autonumber"))
    ids = seed(a, db, [{"title": "x"}, {"title": "y"}])
    with open_app(a, db) as app:
        snapshot = [app.table("items").get(i) for i in ids]
    with open_app(a, db) as app:
        assert [app.table("items").get(i) for i in ids] == snapshot


def test_guard_does_not_depend_on_the_environment_of_the_previous_version(db):
    """The previous version is compared by its tables, even when a ${VAR} it used is unset now."""
    cfg = config(F(1, "s", "single-select", options=["a", "b"]))
    cfg["settings"] = {"maxBodyBytes": "${MAXB}"}
    with sovrium.App(copy.deepcopy(cfg), db_path=db, env={**TEST_ENV, "MAXB": "4096"}) as app:
        app.table("items").create({"s": "b"})
    cfg["settings"] = {}
    cfg["tables"][0]["fields"][0]["options"] = ["a"]
    with pytest.raises(sovrium.ConfigError) as exc:
        open_app(cfg, db)
    assert data_loss_messages(exc.value.warnings) == ["Removing option 'b' from 's' clears 1 values"]


def test_field_back_from_dormancy_is_checked_against_its_new_options(db):
    seed(config(F(1, "title"), F(2, "s", "single-select", options=["a", "b"])), db, [{"title": "x", "s": "b"}])
    with open_app(config(F(1, "title")), db):
        pass
    back = config(F(1, "title"), F(2, "s", "single-select", options=["a"]))
    with pytest.raises(sovrium.ConfigError) as exc:
        open_app(back, db)
    assert data_loss_messages(exc.value.warnings) == ["Removing option 'b' from 's' clears 1 values"]
    with open_app(back, db, allow_data_loss=True) as app:
        assert app.table("items").list()["records"][0]["fields"]["s"] is None


@pytest.mark.parametrize("value,kept", [("4006381333931", True), ("4006381333932", False), ("not a barcode", False)])
def test_text_to_ean13_barcode_keeps_only_valid_codes(db, value, kept):
    seed(config(F(1, "code")), db, [{"code": value}])
    target = config(F(1, "code", "barcode", format="EAN-13"))
    if not kept:
        with pytest.raises(sovrium.ConfigError) as exc:
            open_app(target, db)
        assert data_loss_messages(exc.value.warnings) == [
            "Changing 'code' from single-line-text to barcode clears 1 values"]
        return
    with open_app(target, db) as app:
        assert app.table("items").list()["records"][0]["fields"]["code"] == value
