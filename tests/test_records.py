"""Single-record API: create, get, update, delete, purge (API.md §4.1–§4.6, §6.3; CONFIG.md §5, §6).

Every expectation comes from the specification; exact statuses, messages and bodies are asserted.
"""

import copy
import json
import re
from datetime import datetime, timedelta, timezone

import pytest
import webtest

import sovrium

ENV = {"SOVRIUM_ARGON2_PROFILE": "test", "SOVRIUM_RATE_LIMITS": "off"}
FAILED = "One or more fields failed validation"
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
RECORD_KEYS = ["id", "fields", "createdAt", "updatedAt", "createdBy", "updatedBy"]
TASK_FIELDS = ["title", "status", "estimate", "due", "done", "project", "notes", "remaining", "ref",
               "tags", "email"]
PROJECT_FIELDS = ["name", "budget", "tasks", "task_count", "open_estimate"]
T0 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=timezone.utc)
NOT_FOUND = {"success": False, "message": "Resource not found", "code": "NOT_FOUND"}
RESTRICTED = {"success": False, "code": "CONFLICT",
              "message": "Record cannot be deleted because other records reference it"}
STALE = {"success": False, "code": "CONFLICT",
         "message": "Record has been modified since the supplied updatedAt"}


class Clock:
    """A settable fake App clock."""

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
    """Exact VALIDATION_ERROR envelope. `sort` compares errors regardless of order (see notes)."""
    assert resp.status_int == 400, resp.body
    body = resp.json
    got = body.get("errors")
    if sort and isinstance(got, list):
        got = sorted(got, key=lambda e: (e.get("field"), e.get("message")))
        errors = sorted(errors, key=lambda e: (e["field"], e["message"]))
    assert {**body, "errors": got} == {"success": False, "message": message,
                                       "code": "VALIDATION_ERROR", "errors": errors}


def records_url(table, rid=None):
    base = f"/api/tables/{table}/records"
    return base if rid is None else f"{base}/{rid}"


def create(client, table, body, status=201):
    return client.post_json(records_url(table), body, status=status, expect_errors=status >= 400)


def get(client, table, rid, **params):
    return client.get(records_url(table, rid), params=params, expect_errors=True)


def patch(client, table, rid, body):
    return client.patch_json(records_url(table, rid), body, expect_errors=True)


def delete(client, table, rid, permanent=False):
    url = records_url(table, rid) + ("?permanent=true" if permanent else "")
    return client.delete(url, expect_errors=True)


def new_client(make_app, cfg, **kw):
    return webtest.TestApp(make_app(cfg, **kw).wsgi)


def set_field(cfg, table, name, **changes):
    for t in cfg["tables"]:
        if t["name"] == table:
            for f in t["fields"]:
                if f["name"] == name:
                    f.update(changes)
                    return cfg
    raise KeyError(name)


# ---------------------------------------------------------------------------
# A table holding one field of every stored type of CONFIG.md §5.1
# (`user` needs auth and cannot exist in no-auth mode, CONFIG.md §5.10).
# ---------------------------------------------------------------------------

THINGS_CONFIG = {
    "name": "every-type",
    "version": "1.0.0",
    "tables": [
        {"id": 1, "name": "others", "fields": [{"id": 1, "name": "label", "type": "single-line-text"}]},
        {"id": 2, "name": "things", "fields": [
            {"id": 1, "name": "txt", "type": "single-line-text", "maxLength": 10},
            {"id": 2, "name": "long", "type": "long-text", "maxLength": 20},
            {"id": 3, "name": "rich", "type": "rich-text"},
            {"id": 4, "name": "mail", "type": "email", "unique": True},
            {"id": 5, "name": "site", "type": "url"},
            {"id": 6, "name": "phone", "type": "phone-number"},
            {"id": 7, "name": "snippet", "type": "code", "language": "python", "maxLength": 30},
            {"id": 8, "name": "qty", "type": "integer", "min": -5, "max": 100},
            {"id": 9, "name": "ratio", "type": "decimal", "min": 0, "max": 1},
            {"id": 10, "name": "price", "type": "currency", "currency": "USD"},
            {"id": 11, "name": "pct", "type": "percentage", "min": 0},
            {"id": 12, "name": "stars", "type": "rating", "max": 3},
            {"id": 13, "name": "prog", "type": "progress"},
            {"id": 14, "name": "dur", "type": "duration"},
            {"id": 15, "name": "day", "type": "date"},
            {"id": 16, "name": "at", "type": "datetime", "timeZone": "Europe/Paris"},
            {"id": 17, "name": "clock", "type": "time"},
            {"id": 18, "name": "flag", "type": "checkbox"},
            {"id": 19, "name": "choice", "type": "single-select", "options": ["a", "b", "c"]},
            {"id": 20, "name": "state", "type": "status", "options": ["new", "open", "closed"]},
            {"id": 21, "name": "labels", "type": "multi-select", "options": ["x", "y", "z"],
             "maxSelections": 2},
            {"id": 22, "name": "owner", "type": "relationship", "relatedTable": "others"},
            {"id": 23, "name": "friends", "type": "relationship", "relatedTable": "others",
             "relationType": "many-to-many"},
            {"id": 24, "name": "num", "type": "autonumber", "startFrom": 100},
            {"id": 25, "name": "doc", "type": "single-attachment", "allowedFileTypes": ["image/*"],
             "maxFileSize": 1000},
            {"id": 26, "name": "docs", "type": "multiple-attachments", "maxFiles": 2},
            {"id": 27, "name": "ean", "type": "barcode", "format": "EAN-13"},
            {"id": 28, "name": "hue", "type": "color"},
            {"id": 29, "name": "place", "type": "geolocation"},
            {"id": 30, "name": "blob", "type": "json"},
            {"id": 31, "name": "nums", "type": "array", "itemType": "number", "maxItems": 3},
            {"id": 32, "name": "code39", "type": "barcode", "format": "CODE-39"},
        ]},
    ],
}
THING_FIELDS = [f["name"] for f in THINGS_CONFIG["tables"][1]["fields"]]


@pytest.fixture(scope="module")
def things(tmp_path_factory):
    """(client, ids) over the every-type app; `others` holds o1, o2 (live) and gone (trashed)."""
    db = tmp_path_factory.mktemp("things") / "things.db"
    app = sovrium.App(copy.deepcopy(THINGS_CONFIG), db_path=str(db), env=dict(ENV))
    client = webtest.TestApp(app.wsgi)
    ids = {}
    for label in ("o1", "o2", "gone"):
        ids[label] = client.post_json("/api/tables/others/records", {"label": label}).json["id"]
    client.delete(f"/api/tables/others/records/{ids['gone']}", status=204)
    yield client, ids
    app.close()


def test_empty_body_creates_record_with_every_field_null(things):
    client, _ = things
    resp = create(client, "things", {})
    body = resp.json
    assert list(body) == RECORD_KEYS
    assert list(body["fields"]) == THING_FIELDS
    expected = {name: None for name in THING_FIELDS}
    expected["flag"] = False
    expected["num"] = body["fields"]["num"]
    assert body["fields"] == expected
    assert isinstance(body["fields"]["num"], int) and body["fields"]["num"] >= 100
    assert get(client, "things", body["id"]).json == body


INVALID_VALUES = [
    ("txt", 5, "Field 'txt' must be a string"),
    ("txt", True, "Field 'txt' must be a string"),
    ("txt", "a\nb", "Field 'txt' must not contain line breaks"),
    ("txt", "a\rb", "Field 'txt' must not contain line breaks"),
    ("txt", "x" * 11, "Field 'txt' must be at most 10 characters"),
    ("long", ["a"], "Field 'long' must be a string"),
    ("long", "x" * 21, "Field 'long' must be at most 20 characters"),
    ("rich", "<p>hi</p><script>alert(1)</script>", "Field 'rich' contains disallowed markup"),
    ("rich", "<SCRIPT>x</SCRIPT>", "Field 'rich' contains disallowed markup"),
    ("rich", "<style>p{}</style>", "Field 'rich' contains disallowed markup"),
    ("rich", "<iframe src='x'></iframe>", "Field 'rich' contains disallowed markup"),
    ("rich", "<a href='JavaScript:go()'>x</a>", "Field 'rich' contains disallowed markup"),
    ("rich", "<img src=x onerror=alert(1)>", "Field 'rich' contains disallowed markup"),
    ("rich", "<p OnClick='x'>hi</p>", "Field 'rich' contains disallowed markup"),
    ("rich", 3, "Field 'rich' must be a string"),
    ("mail", "nope", "Field 'mail' must be a valid email address"),
    ("mail", "a@b", "Field 'mail' must be a valid email address"),
    ("mail", "a b@c.de", "Field 'mail' must be a valid email address"),
    ("site", "ftp://example.com", "Field 'site' must be a valid http or https URL"),
    ("site", "example.com", "Field 'site' must be a valid http or https URL"),
    ("site", "https://exa mple.com", "Field 'site' must be a valid http or https URL"),
    ("site", "http://", "Field 'site' must be a valid http or https URL"),
    ("phone", "12", "Field 'phone' must be a valid phone number"),
    ("phone", "1+234", "Field 'phone' must be a valid phone number"),
    ("phone", "abc-123", "Field 'phone' must be a valid phone number"),
    ("phone", "+-()..", "Field 'phone' must be a valid phone number"),
    ("snippet", 1, "Field 'snippet' must be a string"),
    ("snippet", "x" * 31, "Field 'snippet' must be at most 30 characters"),
    ("qty", 1.5, "Field 'qty' must be an integer"),
    ("qty", "3", "Field 'qty' must be an integer"),
    ("qty", True, "Field 'qty' must be an integer"),
    ("qty", 101, "Field 'qty' must be at most 100"),
    ("qty", -6, "Field 'qty' must be at least -5"),
    ("ratio", "0.5", "Field 'ratio' must be a number"),
    ("ratio", False, "Field 'ratio' must be a number"),
    ("ratio", 1.5, "Field 'ratio' must be at most 1"),
    ("ratio", -0.1, "Field 'ratio' must be at least 0"),
    ("price", "10", "Field 'price' must be a number"),
    ("price", {"v": 1}, "Field 'price' must be a number"),
    ("pct", -1, "Field 'pct' must be at least 0"),
    ("pct", "12%", "Field 'pct' must be a number"),
    ("stars", 4, "Field 'stars' must be an integer between 1 and 3"),
    ("stars", 0, "Field 'stars' must be an integer between 1 and 3"),
    ("stars", 2.5, "Field 'stars' must be an integer between 1 and 3"),
    ("prog", 101, "Field 'prog' must be an integer between 0 and 100"),
    ("prog", -1, "Field 'prog' must be an integer between 0 and 100"),
    ("dur", -1, "Field 'dur' must be at least 0"),
    ("dur", 1.5, "Field 'dur' must be an integer"),
    ("day", "2026-02-30", "Field 'day' must be a date in YYYY-MM-DD format"),
    ("day", "2026-03-01T10:00:00Z", "Field 'day' must be a date in YYYY-MM-DD format"),
    ("day", "20260301", "Field 'day' must be a date in YYYY-MM-DD format"),
    ("day", 20260301, "Field 'day' must be a date in YYYY-MM-DD format"),
    ("at", "2026-03-01 10:00:00", "Field 'at' must be an ISO 8601 date-time"),
    ("at", "2026-03-01T24:00:00Z", "Field 'at' must be an ISO 8601 date-time"),
    ("at", "2026-03-01T10:00:00+24:00", "Field 'at' must be an ISO 8601 date-time"),
    ("at", "2026-03-01T10:00:00,5Z", "Field 'at' must be an ISO 8601 date-time"),
    ("at", "2026-W09-1", "Field 'at' must be an ISO 8601 date-time"),
    ("at", 1772359200, "Field 'at' must be an ISO 8601 date-time"),
    ("clock", "25:00", "Field 'clock' must be a time in HH:MM or HH:MM:SS format"),
    ("clock", "9:30", "Field 'clock' must be a time in HH:MM or HH:MM:SS format"),
    ("clock", "10:00:00Z", "Field 'clock' must be a time in HH:MM or HH:MM:SS format"),
    ("flag", "true", "Field 'flag' must be a boolean"),
    ("flag", 1, "Field 'flag' must be a boolean"),
    ("choice", "d", "Value 'd' is not a valid option for field 'choice'"),
    ("choice", "A", "Value 'A' is not a valid option for field 'choice'"),
    ("choice", 1, "Field 'choice' must be a string"),
    ("state", "done", "Value 'done' is not a valid option for field 'state'"),
    ("labels", "x", "Field 'labels' must be an array of strings"),
    ("labels", ["x", 1], "Field 'labels' must be an array of strings"),
    ("labels", ["w"], "Value 'w' is not a valid option for field 'labels'"),
    ("labels", ["x", "x"], "Field 'labels' contains duplicate values"),
    ("labels", ["x", "y", "z"], "Field 'labels' allows at most 2 selections"),
    ("owner", "1", "Field 'owner' must be a record id"),
    ("owner", True, "Field 'owner' must be a record id"),
    ("owner", 1.5, "Field 'owner' must be a record id"),
    ("owner", 0, "Field 'owner' must be a record id"),
    ("owner", -3, "Field 'owner' must be a record id"),
    ("owner", 9007199254740992, "Field 'owner' must be a record id"),
    ("owner", [1], "Field 'owner' must be a record id"),
    ("owner", 987654, "Field 'owner' references a record that does not exist: 987654"),
    ("friends", 3, "Field 'friends' must be an array of record ids"),
    ("friends", ["1"], "Field 'friends' must be an array of record ids"),
    ("friends", [987654], "Field 'friends' references a record that does not exist: 987654"),
    ("doc", "https://x.com/a.png", "Field 'doc' must be an attachment object"),
    ("doc", [{"url": "https://x.com/a.png", "filename": "a.png", "mimeType": "image/png", "size": 1}],
     "Field 'doc' must be an attachment object"),
    ("doc", {"url": "ftp://x.com/a.png", "filename": "a.png", "mimeType": "image/png", "size": 1},
     "Field 'doc' attachment 0: url must be an http or https URL"),
    ("doc", {"url": "https://x.com/a.png", "mimeType": "image/png", "size": 1},
     "Field 'doc' attachment 0: filename is required"),
    ("doc", {"url": "https://x.com/a.png", "filename": "a.png", "mimeType": "image/png", "size": 1,
             "extra": 1},
     "Field 'doc' attachment 0: unknown member 'extra'"),
    ("doc", {"url": "https://x.com/a.txt", "filename": "a.txt", "mimeType": "text/plain", "size": 1},
     "Field 'doc' attachment 0: file type 'text/plain' is not allowed"),
    ("doc", {"url": "https://x.com/a.png", "filename": "a.png", "mimeType": "image/png", "size": 1001},
     "Field 'doc' attachment 0: size exceeds the maximum of 1000 bytes"),
    ("docs", {"url": "https://x.com/a", "filename": "a"},
     "Field 'docs' must be an array of attachment objects"),
    ("docs", [{"url": "https://x.com/a", "filename": "a"}, {"url": "mailto:a@b.c", "filename": "b"}],
     "Field 'docs' attachment 1: url must be an http or https URL"),
    ("docs", [{"url": "https://x.com/a", "filename": "a"}] * 3, "Field 'docs' allows at most 2 files"),
    ("ean", "4006381333932", "Field 'ean' must be a valid EAN-13 barcode"),
    ("ean", "400638133393", "Field 'ean' must be a valid EAN-13 barcode"),
    ("ean", "400638133393A", "Field 'ean' must be a valid EAN-13 barcode"),
    ("code39", "abc", "Field 'code39' must be a valid CODE-39 barcode"),
    ("hue", "red", "Field 'hue' must be a color in #RRGGBB format"),
    ("hue", "#FFF", "Field 'hue' must be a color in #RRGGBB format"),
    ("hue", "#GG0000", "Field 'hue' must be a color in #RRGGBB format"),
    ("place", {"lat": 91, "lng": 0},
     "Field 'place' must be an object with lat between -90 and 90 and lng between -180 and 180"),
    ("place", {"lat": 0, "lng": -180.5},
     "Field 'place' must be an object with lat between -90 and 90 and lng between -180 and 180"),
    ("place", {"lat": 1, "lng": 2, "alt": 3},
     "Field 'place' must be an object with lat between -90 and 90 and lng between -180 and 180"),
    ("place", {"lat": "1", "lng": 2},
     "Field 'place' must be an object with lat between -90 and 90 and lng between -180 and 180"),
    ("place", [1, 2],
     "Field 'place' must be an object with lat between -90 and 90 and lng between -180 and 180"),
    ("blob", "x" * 1_048_577, "Field 'blob' is too large"),
    ("nums", "1,2", "Field 'nums' must be an array"),
    ("nums", [1, "2"], "Field 'nums' item 1 must be a number"),
    ("nums", [1, None], "Field 'nums' item 1 must be a number"),
    ("nums", [True], "Field 'nums' item 0 must be a number"),
    ("nums", [1, 2, 3, 4], "Field 'nums' allows at most 3 items"),
]


@pytest.mark.parametrize("field,value,message", INVALID_VALUES,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(INVALID_VALUES)])
def test_invalid_value_rejected_with_exact_message(things, field, value, message):
    client, _ = things
    resp = create(client, "things", {field: value}, status=400)
    assert_400(resp, [err(field, message)])


def test_trashed_link_target_rejected_on_create(things):
    client, ids = things
    gone = ids["gone"]
    assert_400(create(client, "things", {"owner": gone}, status=400),
               [err("owner", f"Field 'owner' references a record that does not exist: {gone}")])
    assert_400(create(client, "things", {"friends": [ids["o1"], gone]}, status=400),
               [err("friends", f"Field 'friends' references a record that does not exist: {gone}")])


def test_link_to_record_of_another_table_rejected(things):
    client, _ = things
    other = create(client, "things", {}).json["id"]
    assert_400(create(client, "things", {"owner": other}, status=400),
               [err("owner", f"Field 'owner' references a record that does not exist: {other}")])


def test_duplicate_many_to_many_ids_rejected(things):
    client, ids = things
    assert_400(create(client, "things", {"friends": [ids["o1"], ids["o1"]]}, status=400),
               [err("friends", "Field 'friends' contains duplicate values")])


NORMALIZED = [
    ("txt", "", None),
    ("txt", "éééééééééé", "éééééééééé"),
    ("long", "a\nb\r\nc", "a\nb\r\nc"),
    ("rich", "<p>Hello <b>world</b></p>", "<p>Hello <b>world</b></p>"),
    ("mail", "  Foo.Bar@Example.COM ", "foo.bar@example.com"),
    ("site", "https://example.com/x?y=1", "https://example.com/x?y=1"),
    ("phone", "+1 (555) 123-4567", "+1 (555) 123-4567"),
    ("snippet", "def f():\n  return 1", "def f():\n  return 1"),
    ("qty", 3.0, 3),
    ("qty", -5, -5),
    ("ratio", 0.25, 0.25),
    ("ratio", 1, 1),
    ("price", 10.0, 10),
    ("price", 19.99, 19.99),
    ("pct", 12.5, 12.5),
    ("stars", 3, 3),
    ("prog", 0, 0),
    ("dur", 3600, 3600),
    ("day", "2024-02-29", "2024-02-29"),
    ("at", "2026-03-01T10:00", "2026-03-01T09:00:00.000Z"),
    ("at", "2026-03-01T10:00:00+02:00", "2026-03-01T08:00:00.000Z"),
    ("at", "2026-03-01T10:00:00.123987Z", "2026-03-01T10:00:00.123Z"),
    ("at", "2026-07-01", "2026-06-30T22:00:00.000Z"),
    ("at", "", None),
    ("clock", "09:30", "09:30:00"),
    ("clock", "23:59:59", "23:59:59"),
    ("flag", True, True),
    ("flag", None, False),
    ("choice", "b", "b"),
    ("choice", "", None),
    ("state", "closed", "closed"),
    ("labels", ["z", "x"], ["x", "z"]),
    ("labels", [], None),
    ("friends", [], None),
    ("doc", {"url": "https://x.com/a.png", "filename": "a.png", "mimeType": "image/png", "size": 10},
     {"url": "https://x.com/a.png", "filename": "a.png", "mimeType": "image/png", "size": 10}),
    ("docs", [{"url": "https://x.com/b.pdf", "filename": "b.pdf", "mimeType": "Application/PDF"},
              {"url": "http://x.com/a", "filename": "a"}],
     [{"url": "https://x.com/b.pdf", "filename": "b.pdf", "mimeType": "application/pdf"},
      {"url": "http://x.com/a", "filename": "a"}]),
    ("docs", [], None),
    ("ean", "4006381333931", "4006381333931"),
    ("code39", "ABC-12 $", "ABC-12 $"),
    ("hue", "#ff00aa", "#FF00AA"),
    ("place", {"lat": 48.85, "lng": 2.35}, {"lat": 48.85, "lng": 2.35}),
    ("place", {"lat": -90, "lng": 180}, {"lat": -90, "lng": 180}),
    ("blob", "", ""),
    ("blob", [], []),
    ("blob", {}, {}),
    ("blob", 0, 0),
    ("blob", False, False),
    ("blob", {"a": [1, {"b": None}], "c": "d"}, {"a": [1, {"b": None}], "c": "d"}),
    ("blob", None, None),
    ("nums", [3, 1.5, 3], [3, 1.5, 3]),
    ("nums", [], None),
]


@pytest.mark.parametrize("field,value,stored", NORMALIZED,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(NORMALIZED)])
def test_value_normalized_and_stored(things, field, value, stored):
    client, _ = things
    body = create(client, "things", {field: value}).json
    assert body["fields"][field] == stored
    assert type(body["fields"][field]) is type(stored)
    again = get(client, "things", body["id"]).json
    assert again["fields"][field] == stored
    assert type(again["fields"][field]) is type(stored)


def test_many_to_many_ids_stored_ascending(things):
    client, ids = things
    body = create(client, "things", {"friends": [ids["o2"], ids["o1"]], "owner": ids["o2"]}).json
    assert body["fields"]["friends"] == sorted([ids["o1"], ids["o2"]])
    assert body["fields"]["owner"] == ids["o2"]


def test_every_field_error_reported_once_per_field(things):
    client, _ = things
    resp = create(client, "things", {"qty": "x", "choice": "zz", "txt": "ok", "hue": "no"}, status=400)
    assert_400(resp, [err("qty", "Field 'qty' must be an integer"),
                      err("choice", "Value 'zz' is not a valid option for field 'choice'"),
                      err("hue", "Field 'hue' must be a color in #RRGGBB format")], sort=True)


def test_autonumber_starts_from_and_is_readonly(things):
    client, _ = things
    a = create(client, "things", {}).json["fields"]["num"]
    b = create(client, "things", {}).json["fields"]["num"]
    assert a >= 100 and b == a + 1
    assert_400(create(client, "things", {"num": 5}, status=400),
               [err("num", "Cannot write to readonly field 'num'")])


# ---------------------------------------------------------------------------
# Record object, create, get (BASIC_CONFIG)
# ---------------------------------------------------------------------------

def test_create_returns_full_record_object_and_location(client):
    resp = create(client, "tasks", {"title": "A"})
    body = resp.json
    assert list(body) == RECORD_KEYS
    assert isinstance(body["id"], int)
    assert list(body["fields"]) == TASK_FIELDS
    assert body["fields"] == {"title": "A", "status": "todo", "estimate": None, "due": None,
                              "done": False, "project": None, "notes": None, "remaining": None,
                              "ref": 1, "tags": None, "email": None}
    assert TS_RE.match(body["createdAt"])
    assert body["updatedAt"] == body["createdAt"]
    assert body["createdBy"] is None and body["updatedBy"] is None
    assert resp.headers["Location"] == f"/api/tables/2/records/{body['id']}"
    assert resp.content_type == "application/json"
    got = get(client, "tasks", body["id"])
    assert got.status_int == 200
    assert got.json == body


def test_create_by_table_id_and_location_uses_table_id(client):
    resp = create(client, "2", {"title": "A"})
    assert resp.headers["Location"] == f"/api/tables/2/records/{resp.json['id']}"
    presp = create(client, "projects", {"name": "P"})
    assert presp.headers["Location"] == f"/api/tables/1/records/{presp.json['id']}"
    assert get(client, "1", presp.json["id"]).json == presp.json


def test_project_record_has_computed_defaults(client):
    body = create(client, "projects", {"name": "P", "budget": 12.5}).json
    assert list(body["fields"]) == PROJECT_FIELDS
    assert body["fields"] == {"name": "P", "budget": 12.5, "tasks": [], "task_count": 0,
                              "open_estimate": 0}


def test_clock_drives_timestamps(make_app):
    clock = Clock(datetime(2026, 3, 1, 9, 15, 2, 417000, tzinfo=timezone.utc))
    client = new_client(make_app, None, clock=clock)
    body = create(client, "tasks", {"title": "A"}).json
    assert body["createdAt"] == body["updatedAt"] == "2026-03-01T09:15:02.417Z"


def test_ids_unique_across_tables_and_never_reused(client):
    p = create(client, "projects", {"name": "P"}).json["id"]
    t = create(client, "tasks", {"title": "T"}).json["id"]
    assert p != t
    assert delete(client, "tasks", t, permanent=True).status_int == 204
    t2 = create(client, "tasks", {"title": "T2"}).json["id"]
    assert t2 > t and t2 != p


@pytest.mark.parametrize("body", [
    {"title": "A", "estimate": 2.5, "tags": ["blue", "red"]},
    {"fields": {"title": "A", "estimate": 2.5, "tags": ["blue", "red"]}},
], ids=["flat", "wrapped"])
def test_write_body_forms(client, body):
    rec = create(client, "tasks", body).json
    assert rec["fields"]["title"] == "A"
    assert rec["fields"]["estimate"] == 2.5
    assert rec["fields"]["tags"] == ["red", "blue"]  # option order
    assert rec["fields"]["remaining"] == 2.5


BODY_ERRORS = [
    ("wrapped-extra-member", {"fields": {"title": "A"}, "x": 1}, "Unknown member 'x'",
     [err("x", "Unknown member 'x'")]),
    ("wrapped-updatedAt-on-create", {"fields": {"title": "A"}, "updatedAt": "2026-03-01T10:00:00Z"},
     "Unknown member 'updatedAt'", [err("updatedAt", "Unknown member 'updatedAt'")]),
    ("flat-fields-not-object", {"fields": "x", "title": "A"}, FAILED,
     [err("fields", "Unknown field 'fields'")]),
    ("array-body", [{"title": "A"}], "Request body must be a JSON object",
     [err("body", "Request body must be a JSON object")]),
    ("string-body", "title", "Request body must be a JSON object",
     [err("body", "Request body must be a JSON object")]),
]


@pytest.mark.parametrize("name,body,message,errors", BODY_ERRORS, ids=[b[0] for b in BODY_ERRORS])
def test_create_body_shape_errors(client, name, body, message, errors):
    assert_400(create(client, "tasks", body, status=400), errors, message=message)


@pytest.mark.parametrize("raw,content_type,message", [
    (b'{"title": ', "application/json", "Request body is not valid JSON"),
    (b'{"title": "A", "estimate": NaN}', "application/json", "Request body is not valid JSON"),
    (b'{"title": "A", "estimate": 1e400}', "application/json", "Request body is not valid JSON"),
    (b'{"title": "\\ud800"}', "application/json", "Request body is not valid JSON"),
    (b'{"title": "A"}', "text/plain", "Content-Type must be application/json"),
], ids=["truncated", "nan", "infinite", "lone-surrogate", "text-plain"])
def test_create_raw_body_errors(client, raw, content_type, message):
    resp = client.post(records_url("tasks"), params=raw, content_type=content_type, expect_errors=True)
    assert_400(resp, [err("body", message)], message=message)


def test_vendor_json_content_type_accepted_and_repeated_key_last_wins(client):
    resp = client.post(records_url("tasks"), params=b'{"title": "A", "title": "B"}',
                       content_type="application/vnd.api+json", status=201)
    assert resp.json["fields"]["title"] == "B"


def test_unknown_and_readonly_keys_rejected(client):
    resp = create(client, "tasks", {"title": "A", "bogus": 1, "ref": 5, "remaining": 1, "id": 3,
                                    "createdAt": "2026-03-01T10:00:00Z", "updatedBy": None,
                                    "deletedAt": None}, status=400)
    assert_400(resp, [
        err("bogus", "Unknown field 'bogus'"),
        err("ref", "Cannot write to readonly field 'ref'"),
        err("remaining", "Cannot write to readonly field 'remaining'"),
        err("id", "Cannot write to readonly field 'id'"),
        err("createdAt", "Cannot write to readonly field 'createdAt'"),
        err("updatedBy", "Cannot write to readonly field 'updatedBy'"),
        err("deletedAt", "Cannot write to readonly field 'deletedAt'"),
    ], sort=True)


def test_inverse_count_and_rollup_are_readonly(client):
    resp = create(client, "projects", {"name": "P", "tasks": [], "task_count": 1, "open_estimate": 2},
                  status=400)
    assert_400(resp, [err("tasks", "Cannot write to readonly field 'tasks'"),
                      err("task_count", "Cannot write to readonly field 'task_count'"),
                      err("open_estimate", "Cannot write to readonly field 'open_estimate'")],
               sort=True)


def test_key_errors_stop_before_value_errors(client):
    resp = create(client, "tasks", {"bogus": 1, "estimate": "x"}, status=400)
    assert_400(resp, [err("bogus", "Unknown field 'bogus'")])


@pytest.mark.parametrize("body", [{}, {"title": ""}, {"title": None}, {"fields": {}},
                                  {"estimate": 1}], ids=["empty", "blank", "null", "wrapped-empty",
                                                         "absent"])
def test_required_field(client, body):
    assert_400(create(client, "tasks", body, status=400), [err("title", "Field 'title' is required")])


BASIC_INVALID = [
    ("estimate", "3", "Field 'estimate' must be a number"),
    ("estimate", -1, "Field 'estimate' must be at least 0"),
    ("done", "true", "Field 'done' must be a boolean"),
    ("done", 0, "Field 'done' must be a boolean"),
    ("title", "x" * 201, "Field 'title' must be at most 200 characters"),
    ("due", "2026/03/01", "Field 'due' must be a date in YYYY-MM-DD format"),
    ("status", "later", "Value 'later' is not a valid option for field 'status'"),
    ("tags", ["red", "red"], "Field 'tags' contains duplicate values"),
    ("tags", ["purple"], "Value 'purple' is not a valid option for field 'tags'"),
    ("project", 987654, "Field 'project' references a record that does not exist: 987654"),
    ("email", "bad", "Field 'email' must be a valid email address"),
]


@pytest.mark.parametrize("field,value,message", BASIC_INVALID,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BASIC_INVALID)])
def test_basic_value_errors(client, field, value, message):
    body = {"title": "A", field: value} if field != "title" else {"title": value}
    assert_400(create(client, "tasks", body, status=400), [err(field, message)])


def test_example_error_body_of_spec(client):
    resp = create(client, "tasks", {"title": "A", "estimate": "x", "status": "later"}, status=400)
    assert_400(resp, [err("estimate", "Field 'estimate' must be a number"),
                      err("status", "Value 'later' is not a valid option for field 'status'")],
               sort=True)


def test_failed_create_writes_nothing(client):
    create(client, "tasks", {"title": "A", "estimate": "x"}, status=400)
    body = client.get(records_url("tasks")).json
    assert body["records"] == []
    assert body["pagination"]["total"] == 0


def test_unknown_table_and_missing_record(client):
    assert create(client, "nope", {"title": "A"}, status=404).json == NOT_FOUND
    assert get(client, "nope", 1).json == NOT_FOUND
    assert get(client, "tasks", 987654).status_int == 404
    assert get(client, "tasks", 987654).json == NOT_FOUND
    p = create(client, "projects", {"name": "P"}).json["id"]
    resp = get(client, "tasks", p)  # a record of another table
    assert resp.status_int == 404 and resp.json == NOT_FOUND


def test_get_fields_parameter(client):
    rec = create(client, "tasks", {"title": "A", "estimate": 2}).json
    body = get(client, "tasks", rec["id"], fields="estimate,title,id").json
    assert list(body) == RECORD_KEYS
    assert list(body["fields"]) == ["title", "estimate"]
    assert body["fields"] == {"title": "A", "estimate": 2}
    resp = get(client, "tasks", rec["id"], fields="title,nope")
    assert_400(resp, [err("fields", "Unknown field 'nope'")], message="Unknown field 'nope'")


# ---------------------------------------------------------------------------
# unique, composite unique, defaults, autonumber
# ---------------------------------------------------------------------------

def test_unique_among_live_records(client):
    first = create(client, "projects", {"name": "P"}).json["id"]
    assert_400(create(client, "projects", {"name": "P"}, status=400),
               [err("name", "Field 'name' must be unique")])
    create(client, "projects", {"name": "p"})  # text compared exactly
    assert delete(client, "projects", first).status_int == 204
    create(client, "projects", {"name": "P"})  # the trashed record no longer conflicts


def test_unique_email_compared_after_normalization_and_empty_never_conflicts(client):
    create(client, "tasks", {"title": "A", "email": "Ann@Example.com"})
    assert_400(create(client, "tasks", {"title": "B", "email": " ann@example.COM"}, status=400),
               [err("email", "Field 'email' must be unique")])
    create(client, "tasks", {"title": "C"})
    create(client, "tasks", {"title": "D", "email": None})
    create(client, "tasks", {"title": "E", "email": ""})


def test_patch_unique_conflict_and_own_value(client):
    a = create(client, "projects", {"name": "A"}).json
    b = create(client, "projects", {"name": "B"}).json
    assert patch(client, "projects", b["id"], {"name": "B"}).status_int == 200
    assert_400(patch(client, "projects", b["id"], {"name": "A"}), [err("name", "Field 'name' must be unique")])
    assert get(client, "projects", b["id"]).json["fields"]["name"] == "B"
    assert a["fields"]["name"] == "A"


@pytest.fixture
def composite_client(make_app, config):
    config["tables"][1]["indexes"] = [{"name": "one_per_project", "fields": ["project", "title"],
                                       "unique": True}]
    return new_client(make_app, config)


def test_composite_unique(composite_client):
    c = composite_client
    p1 = create(c, "projects", {"name": "P1"}).json["id"]
    p2 = create(c, "projects", {"name": "P2"}).json["id"]
    t1 = create(c, "tasks", {"title": "A", "project": p1}).json["id"]
    together = "Fields 'project', 'title' must be unique together"
    assert_400(create(c, "tasks", {"title": "A", "project": p1}, status=400),
               [err("project", together), err("title", together)], sort=True)
    # empty members never conflict
    create(c, "tasks", {"title": "A"})
    create(c, "tasks", {"title": "A"})
    t5 = create(c, "tasks", {"title": "A", "project": p2}).json["id"]
    # PATCH uses the stored values of the index's other fields
    assert_400(patch(c, "tasks", t5, {"project": p1}), [err("project", together), err("title", together)], sort=True)
    assert patch(c, "tasks", t5, {"title": "B"}).status_int == 200
    assert_400(patch(c, "tasks", t5, {"project": p1, "title": "A"}),
               [err("project", together), err("title", together)], sort=True)
    # only live records count
    assert delete(c, "tasks", t1).status_int == 204
    create(c, "tasks", {"title": "A", "project": p1})


@pytest.fixture
def default_config(config):
    config["tables"][1]["fields"] += [
        {"id": 12, "name": "stamp", "type": "datetime", "default": "now"},
        {"id": 13, "name": "day", "type": "date", "default": "today"},
        {"id": 14, "name": "points", "type": "integer", "default": 3},
        {"id": 15, "name": "flagged", "type": "checkbox", "default": True},
    ]
    return config


def test_defaults_including_now_and_today(make_app, default_config):
    clock = Clock(datetime(2026, 3, 1, 23, 59, 59, 500000, tzinfo=timezone.utc))
    c = new_client(make_app, default_config, clock=clock)
    body = create(c, "tasks", {"title": "A"}).json
    f = body["fields"]
    assert (f["status"], f["stamp"], f["day"], f["points"], f["flagged"]) == (
        "todo", "2026-03-01T23:59:59.500Z", "2026-03-01", 3, True)
    assert body["createdAt"] == "2026-03-01T23:59:59.500Z"
    clock.advance(seconds=1)
    f = create(c, "tasks", {"title": "B"}).json["fields"]
    assert (f["stamp"], f["day"]) == ("2026-03-02T00:00:00.500Z", "2026-03-02")


def test_explicit_null_does_not_take_default(make_app, default_config):
    c = new_client(make_app, default_config, clock=Clock())
    body = create(c, "tasks", {"title": "A", "status": None, "stamp": None, "day": "",
                               "points": None, "flagged": None}).json
    f = body["fields"]
    assert (f["status"], f["stamp"], f["day"], f["points"], f["flagged"]) == (None, None, None, None, False)
    # PATCH never applies defaults
    after = patch(c, "tasks", body["id"], {"title": "B"}).json["fields"]
    assert (after["status"], after["stamp"], after["points"]) == (None, None, None)


def test_autonumber_increments_and_is_not_reused(client):
    refs = [create(client, "tasks", {"title": t}).json for t in "ABC"]
    assert [r["fields"]["ref"] for r in refs] == [1, 2, 3]
    assert delete(client, "tasks", refs[2]["id"], permanent=True).status_int == 204
    assert delete(client, "tasks", refs[1]["id"]).status_int == 204
    assert create(client, "tasks", {"title": "D"}).json["fields"]["ref"] == 4


# ---------------------------------------------------------------------------
# PATCH
# ---------------------------------------------------------------------------

@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def tclient(make_app, clock):
    return new_client(make_app, None, clock=clock)


def test_patch_changes_only_given_fields(tclient, clock):
    rec = create(tclient, "tasks", {"title": "A", "estimate": 2, "notes": "n", "tags": ["red"]}).json
    clock.advance(seconds=5)
    resp = patch(tclient, "tasks", rec["id"], {"estimate": 3, "done": True})
    assert resp.status_int == 200
    body = resp.json
    assert list(body) == RECORD_KEYS
    assert body["fields"] == {**rec["fields"], "estimate": 3, "done": True, "remaining": 0}
    assert body["createdAt"] == rec["createdAt"]
    assert body["updatedAt"] == ts(clock.t)
    assert body["updatedBy"] is None
    assert get(tclient, "tasks", rec["id"]).json == body


def test_patch_wrapped_form_with_updated_at(tclient, clock):
    rec = create(tclient, "tasks", {"title": "A"}).json
    clock.advance(seconds=1)
    resp = patch(tclient, "tasks", rec["id"], {"fields": {"notes": "x"}, "updatedAt": rec["updatedAt"]})
    assert resp.status_int == 200
    assert resp.json["fields"]["notes"] == "x"
    resp = patch(tclient, "tasks", rec["id"], {"fields": {"notes": "y"}, "other": 1})
    assert_400(resp, [err("other", "Unknown member 'other'")], message="Unknown member 'other'")


def test_patch_null_and_empty_clear_fields(tclient):
    rec = create(tclient, "tasks", {"title": "A", "notes": "n", "estimate": 1, "tags": ["red"]}).json
    body = patch(tclient, "tasks", rec["id"], {"notes": None, "estimate": "", "tags": []}).json
    assert (body["fields"]["notes"], body["fields"]["estimate"], body["fields"]["tags"]) == (None, None, None)
    assert body["fields"]["remaining"] is None


@pytest.mark.parametrize("value", [None, ""], ids=["null", "blank"])
def test_patch_cannot_clear_required(tclient, value):
    rec = create(tclient, "tasks", {"title": "A"}).json
    assert_400(patch(tclient, "tasks", rec["id"], {"title": value}), [err("title", "Field 'title' is required")])
    assert get(tclient, "tasks", rec["id"]).json == rec


def test_patch_key_and_value_errors(tclient):
    rec = create(tclient, "tasks", {"title": "A"}).json
    assert_400(patch(tclient, "tasks", rec["id"], {"bogus": 1, "ref": 3}),
               [err("bogus", "Unknown field 'bogus'"), err("ref", "Cannot write to readonly field 'ref'")],
               sort=True)
    assert_400(patch(tclient, "tasks", rec["id"], {"estimate": "1"}),
               [err("estimate", "Field 'estimate' must be a number")])
    assert_400(patch(tclient, "tasks", rec["id"], {"id": 5}), [err("id", "Cannot write to readonly field 'id'")])
    assert get(tclient, "tasks", rec["id"]).json == rec


def test_patch_missing_or_trashed_record(tclient):
    assert patch(tclient, "tasks", 987654, {"title": "B"}).json == NOT_FOUND
    rec = create(tclient, "tasks", {"title": "A"}).json
    assert delete(tclient, "tasks", rec["id"]).status_int == 204
    resp = patch(tclient, "tasks", rec["id"], {"title": "B"})
    assert resp.status_int == 404 and resp.json == NOT_FOUND


@pytest.mark.parametrize("body", [{}, {"fields": {}}, {"title": "A", "estimate": 2},
                                  {"email": " A@X.COM", "tags": ["blue", "red"]}],
                         ids=["empty", "wrapped-empty", "same-values", "same-after-normalization"])
def test_noop_patch_keeps_updated_at(tclient, clock, body):
    rec = create(tclient, "tasks", {"title": "A", "estimate": 2, "email": "a@x.com",
                                    "tags": ["red", "blue"]}).json
    clock.advance(minutes=5)
    resp = patch(tclient, "tasks", rec["id"], body)
    assert resp.status_int == 200
    assert resp.json == rec
    assert get(tclient, "tasks", rec["id"]).json["updatedAt"] == rec["updatedAt"]


def test_noop_patch_writes_no_history(tclient, clock):
    rec = create(tclient, "tasks", {"title": "A"}).json
    url = f"/api/tables/tasks/records/{rec['id']}/history"
    before = tclient.get(url).json
    clock.advance(seconds=1)
    patch(tclient, "tasks", rec["id"], {"title": "A"})
    assert tclient.get(url).json == before


def test_updated_at_strictly_increasing_with_frozen_clock(tclient, clock):
    rec = create(tclient, "tasks", {"title": "A"}).json
    assert rec["updatedAt"] == ts(T0)
    one = patch(tclient, "tasks", rec["id"], {"notes": "1"}).json
    two = patch(tclient, "tasks", rec["id"], {"notes": "2"}).json
    assert one["updatedAt"] == "2026-03-01T10:00:00.001Z"
    assert two["updatedAt"] == "2026-03-01T10:00:00.002Z"
    assert two["createdAt"] == ts(T0)


def test_updated_at_increases_when_clock_goes_back(tclient, clock):
    rec = create(tclient, "tasks", {"title": "A"}).json
    clock.advance(hours=-1)
    body = patch(tclient, "tasks", rec["id"], {"notes": "x"}).json
    assert body["updatedAt"] == "2026-03-01T10:00:00.001Z"


def test_updated_at_precondition(tclient, clock):
    rec = create(tclient, "tasks", {"title": "A"}).json
    clock.advance(seconds=1)
    ok = patch(tclient, "tasks", rec["id"], {"notes": "x", "updatedAt": rec["updatedAt"]})
    assert ok.status_int == 200
    assert ok.json["updatedAt"] == ts(clock.t)
    stale = patch(tclient, "tasks", rec["id"], {"notes": "y", "updatedAt": rec["updatedAt"]})
    assert stale.status_int == 409
    assert stale.json == STALE
    assert get(tclient, "tasks", rec["id"]).json == ok.json


@pytest.mark.parametrize("given", ["2026-03-01T11:00:00+01:00", "2026-03-01T10:00:00Z",
                                   "2026-03-01T10:00:00.000999Z", "2026-03-01T10:00"],
                         ids=["offset", "no-millis", "micro-cut", "no-offset-utc"])
def test_updated_at_precondition_compares_instants(tclient, clock, given):
    rec = create(tclient, "tasks", {"title": "A"}).json
    assert rec["updatedAt"] == "2026-03-01T10:00:00.000Z"
    clock.advance(seconds=1)
    resp = patch(tclient, "tasks", rec["id"], {"notes": "x", "updatedAt": given})
    assert resp.status_int == 200
    assert resp.json["fields"]["notes"] == "x"


def test_updated_at_precondition_one_millisecond_off_is_stale(tclient):
    rec = create(tclient, "tasks", {"title": "A"}).json
    resp = patch(tclient, "tasks", rec["id"], {"notes": "x", "updatedAt": "2026-03-01T10:00:00.001Z"})
    assert resp.status_int == 409 and resp.json == STALE


@pytest.mark.parametrize("value", ["yesterday", "2026-03-01 10:00:00", 5, "2026-02-30T10:00:00Z"],
                         ids=["word", "space", "number", "bad-date"])
def test_updated_at_must_be_datetime(tclient, value):
    rec = create(tclient, "tasks", {"title": "A"}).json
    msg = "updatedAt must be an ISO 8601 date-time"
    assert_400(patch(tclient, "tasks", rec["id"], {"notes": "x", "updatedAt": value}),
               [err("updatedAt", msg)], message=msg)


def test_patch_order_of_checks(tclient):
    rec = create(tclient, "tasks", {"title": "A"}).json
    msg = "updatedAt must be an ISO 8601 date-time"
    # 400 body before 404 record
    assert_400(patch(tclient, "tasks", 987654, {"updatedAt": "nope"}), [err("updatedAt", msg)], message=msg)
    # 404 before 409
    assert patch(tclient, "tasks", 987654, {"updatedAt": "2000-01-01T00:00:00Z"}).status_int == 404
    # 409 before key and value errors
    resp = patch(tclient, "tasks", rec["id"], {"bogus": 1, "estimate": "x",
                                                "updatedAt": "2000-01-01T00:00:00Z"})
    assert resp.status_int == 409 and resp.json == STALE


def test_patch_validates_only_given_fields_after_rules_tightened(tmp_path, make_app, config):
    db = str(tmp_path / "tight.db")
    first = sovrium.App(copy.deepcopy(config), db_path=db, env=dict(ENV))
    try:
        c1 = webtest.TestApp(first.wsgi)
        rec = create(c1, "tasks", {"title": "x" * 150, "estimate": 5}).json
    finally:
        first.close()
    set_field(config, "tasks", "title", maxLength=100)
    set_field(config, "tasks", "estimate", min=10)
    c2 = webtest.TestApp(make_app(config, db_name="tight.db").wsgi)
    resp = patch(c2, "tasks", rec["id"], {"notes": "still editable"})
    assert resp.status_int == 200
    assert resp.json["fields"]["title"] == "x" * 150
    assert resp.json["fields"]["estimate"] == 5
    assert_400(patch(c2, "tasks", rec["id"], {"estimate": 6}), [err("estimate", "Field 'estimate' must be at least 10")])
    assert_400(patch(c2, "tasks", rec["id"], {"title": "y" * 101}),
               [err("title", "Field 'title' must be at most 100 characters")])


# ---------------------------------------------------------------------------
# Links to trashed targets on update (CONFIG.md §6.2)
# ---------------------------------------------------------------------------

@pytest.fixture
def setnull_config(config):
    set_field(config, "tasks", "project", onDelete="set-null")
    config["tables"][1]["fields"].append(
        {"id": 12, "name": "watchers", "type": "relationship", "relatedTable": "projects",
         "relationType": "many-to-many"})
    return config


def test_stored_link_to_trashed_target_is_kept_on_update(make_app, setnull_config):
    c = new_client(make_app, setnull_config)
    p1, p2, p3, p4 = (create(c, "projects", {"name": n}).json["id"] for n in ("P1", "P2", "P3", "P4"))
    t = create(c, "tasks", {"title": "T", "project": p1, "watchers": [p1]}).json
    assert delete(c, "projects", p1).status_int == 204
    assert delete(c, "projects", p4).status_int == 204
    # the stored id stays in the value
    assert get(c, "tasks", t["id"]).json["fields"]["project"] == p1
    # other fields are not affected by the stale link
    assert patch(c, "tasks", t["id"], {"notes": "x"}).status_int == 200
    # ids already stored are accepted as they are
    resp = patch(c, "tasks", t["id"], {"project": p1, "watchers": [p3, p1]})
    assert resp.status_int == 200
    assert resp.json["fields"]["watchers"] == sorted([p1, p3])
    # added ids must be live
    assert_400(patch(c, "tasks", t["id"], {"watchers": [p1, p3, p4]}),
               [err("watchers", f"Field 'watchers' references a record that does not exist: {p4}")])
    assert_400(patch(c, "tasks", t["id"], {"project": p4}),
               [err("project", f"Field 'project' references a record that does not exist: {p4}")])
    assert patch(c, "tasks", t["id"], {"project": p2}).json["fields"]["project"] == p2
    # once replaced, the trashed id is no longer "already stored"
    assert_400(patch(c, "tasks", t["id"], {"project": p1}),
               [err("project", f"Field 'project' references a record that does not exist: {p1}")])


# ---------------------------------------------------------------------------
# DELETE and purge
# ---------------------------------------------------------------------------

def test_soft_delete(tclient, clock):
    rec = create(tclient, "tasks", {"title": "A"}).json
    clock.advance(seconds=3)
    resp = delete(tclient, "tasks", rec["id"])
    assert resp.status_int == 204
    assert resp.body == b""
    assert get(tclient, "tasks", rec["id"]).json == NOT_FOUND
    trashed = get(tclient, "tasks", rec["id"], includeDeleted="true")
    assert trashed.status_int == 200
    body = trashed.json
    assert list(body) == RECORD_KEYS + ["deletedAt", "deletedBy"]
    assert body["deletedAt"] == ts(clock.t)
    assert body["deletedBy"] is None
    # soft delete changes only deletedAt/deletedBy
    assert {k: v for k, v in body.items() if k not in ("deletedAt", "deletedBy")} == rec
    assert delete(tclient, "tasks", rec["id"]).json == NOT_FOUND
    assert client_list_ids(tclient, "tasks") == []


def client_list_ids(client, table, **params):
    return [r["id"] for r in client.get(records_url(table), params=params).json["records"]]


def test_include_deleted_on_live_record_adds_null_members(tclient):
    rec = create(tclient, "tasks", {"title": "A"}).json
    body = get(tclient, "tasks", rec["id"], includeDeleted="true").json
    assert body == {**rec, "deletedAt": None, "deletedBy": None}
    assert list(body)[-2:] == ["deletedAt", "deletedBy"]


@pytest.mark.parametrize("flag", ["true", "1", "TRUE"])
def test_purge_live_record(tclient, flag):
    rec = create(tclient, "tasks", {"title": "A"}).json
    resp = tclient.delete(records_url("tasks", rec["id"]) + f"?permanent={flag}", expect_errors=True)
    assert resp.status_int == 204 and resp.body == b""
    assert get(tclient, "tasks", rec["id"], includeDeleted="true").json == NOT_FOUND
    assert delete(tclient, "tasks", rec["id"], permanent=True).json == NOT_FOUND


def test_purge_trashed_record(tclient):
    rec = create(tclient, "tasks", {"title": "A"}).json
    assert delete(tclient, "tasks", rec["id"]).status_int == 204
    assert delete(tclient, "tasks", rec["id"], permanent=True).status_int == 204
    assert get(tclient, "tasks", rec["id"], includeDeleted="true").status_int == 404


def test_delete_missing_record(tclient):
    resp = delete(tclient, "tasks", 987654)
    assert resp.status_int == 404 and resp.json == NOT_FOUND
    resp = delete(tclient, "tasks", 987654, permanent=True)
    assert resp.status_int == 404 and resp.json == NOT_FOUND


def test_trashed_records_excluded_from_computed_values(client):
    p = create(client, "projects", {"name": "P"}).json["id"]
    t1 = create(client, "tasks", {"title": "A", "project": p, "estimate": 2}).json["id"]
    t2 = create(client, "tasks", {"title": "B", "project": p, "estimate": 3}).json["id"]
    f = get(client, "projects", p).json["fields"]
    assert (f["tasks"], f["task_count"], f["open_estimate"]) == (sorted([t1, t2]), 2, 5)
    assert delete(client, "tasks", t2).status_int == 204
    f = get(client, "projects", p).json["fields"]
    assert (f["tasks"], f["task_count"], f["open_estimate"]) == ([t1], 1, 2)


# --- onDelete: restrict (BASIC_CONFIG: tasks.project restrict) -------------

def test_restrict_on_soft_delete_and_purge(client):
    p = create(client, "projects", {"name": "P"}).json
    t = create(client, "tasks", {"title": "T", "project": p["id"]}).json["id"]
    resp = delete(client, "projects", p["id"])
    assert resp.status_int == 409 and resp.json == RESTRICTED
    assert get(client, "projects", p["id"]).json == {**p, "fields": {**p["fields"], "tasks": [t],
                                                                      "task_count": 1}}
    resp = delete(client, "projects", p["id"], permanent=True)
    assert resp.status_int == 409 and resp.json == RESTRICTED
    # a trashed referrer does not block a soft delete ...
    assert delete(client, "tasks", t).status_int == 204
    # ... but does block a purge
    resp = delete(client, "projects", p["id"], permanent=True)
    assert resp.status_int == 409 and resp.json == RESTRICTED
    assert delete(client, "projects", p["id"]).status_int == 204
    resp = delete(client, "projects", p["id"], permanent=True)
    assert resp.status_int == 409 and resp.json == RESTRICTED
    assert delete(client, "tasks", t, permanent=True).status_int == 204
    assert delete(client, "projects", p["id"], permanent=True).status_int == 204


# --- onDelete: set-null ----------------------------------------------------

def test_set_null_keeps_links_on_soft_delete_and_clears_on_purge(make_app, setnull_config, clock):
    c = new_client(make_app, setnull_config, clock=clock)
    p1 = create(c, "projects", {"name": "P1"}).json["id"]
    p2 = create(c, "projects", {"name": "P2"}).json["id"]
    t = create(c, "tasks", {"title": "T", "project": p1, "watchers": [p1, p2]}).json
    only = create(c, "tasks", {"title": "U", "watchers": [p1]}).json
    trashed = create(c, "tasks", {"title": "V", "project": p1}).json
    assert delete(c, "tasks", trashed["id"]).status_int == 204
    clock.advance(seconds=1)
    assert delete(c, "projects", p1).status_int == 204
    assert get(c, "tasks", t["id"]).json == t  # links kept, nothing rewritten
    clock.advance(seconds=1)
    assert delete(c, "projects", p1, permanent=True).status_int == 204
    after = get(c, "tasks", t["id"]).json
    assert after["fields"]["project"] is None
    assert after["fields"]["watchers"] == [p2]
    assert after["updatedAt"] == ts(clock.t)
    assert after["updatedBy"] is None
    assert get(c, "tasks", only["id"]).json["fields"]["watchers"] is None
    # trashed linking records are cleaned up too
    assert get(c, "tasks", trashed["id"], includeDeleted="true").json["fields"]["project"] is None


# --- onDelete: cascade -----------------------------------------------------

@pytest.fixture
def cascade_config(config):
    set_field(config, "tasks", "project", onDelete="cascade")
    config["tables"].append({"id": 3, "name": "subtasks", "fields": [
        {"id": 1, "name": "label", "type": "single-line-text"},
        {"id": 2, "name": "task", "type": "relationship", "relatedTable": "tasks", "onDelete": "cascade"},
    ]})
    return config


def test_cascade_soft_delete_recursive(make_app, cascade_config, clock):
    c = new_client(make_app, cascade_config, clock=clock)
    p = create(c, "projects", {"name": "P"}).json["id"]
    other = create(c, "projects", {"name": "Q"}).json["id"]
    t1 = create(c, "tasks", {"title": "A", "project": p}).json["id"]
    t2 = create(c, "tasks", {"title": "B", "project": p}).json["id"]
    t3 = create(c, "tasks", {"title": "C", "project": other}).json["id"]
    s1 = create(c, "subtasks", {"label": "s", "task": t1}).json["id"]
    clock.advance(seconds=2)
    assert delete(c, "projects", p).status_int == 204
    for table, rid in (("tasks", t1), ("tasks", t2), ("subtasks", s1)):
        assert get(c, table, rid).status_int == 404
        assert get(c, table, rid, includeDeleted="true").json["deletedAt"] == ts(clock.t)
    assert get(c, "tasks", t3).status_int == 200
    assert client_list_ids(c, "tasks") == [t3]


def test_cascade_purge_recursive(make_app, cascade_config):
    c = new_client(make_app, cascade_config)
    p = create(c, "projects", {"name": "P"}).json["id"]
    t1 = create(c, "tasks", {"title": "A", "project": p}).json["id"]
    s1 = create(c, "subtasks", {"label": "s", "task": t1}).json["id"]
    assert delete(c, "subtasks", s1).status_int == 204  # trashed records are purged too
    assert delete(c, "projects", p, permanent=True).status_int == 204
    assert get(c, "tasks", t1, includeDeleted="true").status_int == 404
    assert get(c, "subtasks", s1, includeDeleted="true").status_int == 404


def test_restrict_reached_through_cascade_refuses_everything(make_app, cascade_config):
    set_field(cascade_config, "subtasks", "task", onDelete="restrict")
    c = new_client(make_app, cascade_config)
    p = create(c, "projects", {"name": "P"}).json["id"]
    t1 = create(c, "tasks", {"title": "A", "project": p}).json["id"]
    t2 = create(c, "tasks", {"title": "B", "project": p}).json["id"]
    create(c, "subtasks", {"label": "s", "task": t2})
    resp = delete(c, "projects", p)
    assert resp.status_int == 409 and resp.json == RESTRICTED
    for table, rid in (("projects", p), ("tasks", t1), ("tasks", t2)):
        assert get(c, table, rid).status_int == 200


def test_cascade_limit(make_app, cascade_config):
    cascade_config["settings"] = {"batchLimit": 2}
    c = new_client(make_app, cascade_config)
    p = create(c, "projects", {"name": "P"}).json["id"]
    q = create(c, "projects", {"name": "Q"}).json["id"]
    for title in "ABC":
        create(c, "tasks", {"title": title, "project": p})
    for title in "AB":
        create(c, "tasks", {"title": title, "project": q})
    resp = delete(c, "projects", p)
    assert resp.status_int == 409
    assert resp.json == {"success": False, "code": "CONFLICT",
                         "message": "Delete would cascade to more than 2 records"}
    assert get(c, "projects", p).status_int == 200
    assert len(client_list_ids(c, "tasks")) == 5
    assert delete(c, "projects", q).status_int == 204
    assert len(client_list_ids(c, "tasks")) == 3


def test_cascade_cycle_terminates(make_app):
    cfg = {"name": "cycle", "version": "1.0.0", "tables": [{"id": 1, "name": "nodes", "fields": [
        {"id": 1, "name": "label", "type": "single-line-text"},
        {"id": 2, "name": "parent", "type": "relationship", "relatedTable": "nodes", "onDelete": "cascade"},
    ]}]}
    c = new_client(make_app, cfg)
    a = create(c, "nodes", {"label": "a"}).json["id"]
    b = create(c, "nodes", {"label": "b", "parent": a}).json["id"]
    assert patch(c, "nodes", a, {"parent": b}).status_int == 200
    keep = create(c, "nodes", {"label": "c"}).json["id"]
    assert delete(c, "nodes", a).status_int == 204
    assert client_list_ids(c, "nodes") == [keep]
    assert delete(c, "nodes", b, permanent=True).status_int == 204
    assert get(c, "nodes", a, includeDeleted="true").status_int == 404


def test_cascade_soft_delete_leaves_already_trashed_untouched(make_app, cascade_config, clock):
    c = new_client(make_app, cascade_config, clock=clock)
    p = create(c, "projects", {"name": "P"}).json["id"]
    t = create(c, "tasks", {"title": "A", "project": p}).json["id"]
    assert delete(c, "tasks", t).status_int == 204
    first = get(c, "tasks", t, includeDeleted="true").json["deletedAt"]
    clock.advance(seconds=10)
    assert delete(c, "projects", p).status_int == 204
    assert get(c, "tasks", t, includeDeleted="true").json["deletedAt"] == first


def test_request_body_json_numbers_strict(client):
    body = json.dumps({"title": "A", "estimate": 2.5, "done": False})
    rec = client.post(records_url("tasks"), params=body, content_type="application/json", status=201).json
    assert rec["fields"]["estimate"] == 2.5


def test_integral_float_accepted_as_record_id(things):
    client, ids = things
    body = create(client, "things", {"owner": float(ids["o1"]), "friends": [float(ids["o2"])]}).json
    assert body["fields"]["owner"] == ids["o1"] and type(body["fields"]["owner"]) is int
    assert body["fields"]["friends"] == [ids["o2"]] and type(body["fields"]["friends"][0]) is int


def test_location_includes_mount_prefix(app):
    client = webtest.TestApp(app.wsgi, extra_environ={"SCRIPT_NAME": "/base"})
    resp = client.post_json("/api/tables/tasks/records", {"title": "A"}, status=201)
    assert resp.headers["Location"] == f"/base/api/tables/2/records/{resp.json['id']}"


def test_body_size_limit(make_app, config):
    config["settings"] = {"maxBodyBytes": 1024}
    c = new_client(make_app, config)
    resp = c.post_json(records_url("tasks"), {"title": "A", "notes": "x" * 2000}, expect_errors=True)
    assert resp.status_int == 413
    assert resp.json == {"success": False, "code": "PAYLOAD_TOO_LARGE",
                         "message": "Request body exceeds the maximum size of 1024 bytes"}
    assert c.get(records_url("tasks")).json["records"] == []


def test_json_nesting_limit(client):
    deep = "[" * 70 + "]" * 70
    raw = ('{"title": "A", "x": ' + deep + "}").encode()
    resp = client.post(records_url("tasks"), params=raw, content_type="application/json", expect_errors=True)
    msg = "Request body is not valid JSON"
    assert_400(resp, [err("body", msg)], message=msg)
    raw = ('{"title": "A", "estimate": ' + "1" * 4301 + "}").encode()
    resp = client.post(records_url("tasks"), params=raw, content_type="application/json", expect_errors=True)
    assert_400(resp, [err("body", msg)], message=msg)


def test_absent_content_type_parsed_as_json(client):
    req = webtest.TestRequest.blank(records_url("tasks"), method="POST", body=b'{"title": "A"}')
    req.environ.pop("CONTENT_TYPE", None)
    resp = client.do_request(req, status=201)
    assert resp.json["fields"]["title"] == "A"


def test_patch_with_empty_body_is_noop(tclient, clock):
    rec = create(tclient, "tasks", {"title": "A"}).json
    clock.advance(seconds=1)
    resp = tclient.patch(records_url("tasks", rec["id"]), params=b"", content_type="application/json",
                         expect_errors=True)
    assert resp.status_int == 200
    assert resp.json == rec


def test_several_unknown_members(client):
    # The spec does not say whether every unknown member gets an entry; the first one must.
    resp = create(client, "tasks", {"fields": {"title": "A"}, "a": 1, "b": 2}, status=400)
    body = resp.json
    assert body["message"] == "Unknown member 'a'" and body["code"] == "VALIDATION_ERROR"
    assert body["errors"][0] == err("a", "Unknown member 'a'")
    assert set(map(json.dumps, body["errors"])) <= {json.dumps(err("a", "Unknown member 'a'")),
                                                   json.dumps(err("b", "Unknown member 'b'"))}


def test_patch_wrapped_updated_at_inside_fields_is_readonly(tclient):
    rec = create(tclient, "tasks", {"title": "A"}).json
    assert_400(patch(tclient, "tasks", rec["id"], {"fields": {"updatedAt": rec["updatedAt"]}}),
               [err("updatedAt", "Cannot write to readonly field 'updatedAt'")])


def test_patch_json_value_to_another_type_is_a_change(make_app):
    app = make_app({"name": "j", "tables": [{"id": 1, "name": "t", "fields": [
        {"id": 1, "name": "meta", "type": "json"}]}]})
    client = webtest.TestApp(app.wsgi)
    rec = client.post_json("/api/tables/t/records", {"meta": 1}).json
    after = client.patch_json(f"/api/tables/t/records/{rec['id']}", {"meta": True}).json
    assert after["fields"]["meta"] is True and after["updatedAt"] != rec["updatedAt"]
    after2 = client.patch_json(f"/api/tables/t/records/{rec['id']}", {"meta": [False]}).json
    assert after2["fields"]["meta"] == [False]


def test_patching_an_unset_checkbox_to_false_changes_nothing(make_app, tmp_path):
    cfg = {"name": "c", "tables": [{"id": 1, "name": "t", "fields": [{"id": 1, "name": "title", "type": "single-line-text"}]}]}
    app = make_app(cfg, db_name="cb.db")
    rid = app.table("t").create({"title": "a"})["id"]
    app.close()
    cfg["tables"][0]["fields"].append({"id": 2, "name": "done", "type": "checkbox"})
    app = make_app(cfg, db_name="cb.db")
    before = app.table("t").get(rid)
    after = app.table("t").update(rid, {"done": False})
    assert after["fields"]["done"] is False and after["updatedAt"] == before["updatedAt"]
    assert [h["action"] for h in app.table("t").history(rid)["history"]] == ["create"]
