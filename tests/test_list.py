"""Record lists: pagination, filters, filterByFormula, sort, fields, search, includeDeleted,
skipTotal and computed fields (API.md §1.3, §1.9, §4.7–§4.12; CONFIG.md §5, §6)."""

import copy
import json
import re

import pytest
import webtest

import sovrium

ENV = {"SOVRIUM_ARGON2_PROFILE": "test", "SOVRIUM_RATE_LIMITS": "off"}
RECORD_KEYS = ["id", "fields", "createdAt", "updatedAt", "createdBy", "updatedBy"]
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
MAX = 9007199254740991

LIST_CONFIG = {
    "name": "list-app",
    "version": "1.0.0",
    "tables": [
        {"id": 1, "name": "groups", "fields": [
            {"id": 1, "name": "title", "type": "single-line-text"},
            {"id": 2, "name": "members", "type": "relationship", "relatedTable": "items",
             "relationType": "one-to-many", "relatedField": "group"},
            {"id": 3, "name": "member_count", "type": "count", "relationshipField": "members"},
            {"id": 4, "name": "qty_sum", "type": "rollup", "relationshipField": "members",
             "relatedField": "qty", "aggregation": "sum"},
            {"id": 5, "name": "member_names", "type": "lookup", "relationshipField": "members",
             "relatedField": "name"},
        ]},
        {"id": 2, "name": "items", "fields": [
            {"id": 1, "name": "name", "type": "single-line-text"},
            {"id": 2, "name": "kind", "type": "single-select", "options": ["low", "mid", "high"]},
            {"id": 3, "name": "qty", "type": "integer"},
            {"id": 4, "name": "price", "type": "decimal"},
            {"id": 5, "name": "day", "type": "date"},
            {"id": 6, "name": "at", "type": "datetime"},
            {"id": 7, "name": "flag", "type": "checkbox"},
            {"id": 8, "name": "tags", "type": "multi-select", "options": ["alpha", "beta", "gamma"]},
            {"id": 9, "name": "group", "type": "relationship", "relatedTable": "groups"},
            {"id": 10, "name": "blob", "type": "json"},
            {"id": 11, "name": "mail", "type": "email"},
            {"id": 12, "name": "notes", "type": "long-text"},
            {"id": 13, "name": "group_title", "type": "lookup", "relationshipField": "group",
             "relatedField": "title"},
            {"id": 14, "name": "doubled", "type": "formula", "formula": "{qty} * 2"},
            {"id": 15, "name": "label", "type": "formula", "formula": "IF({flag}, 'on', 'off')"},
            {"id": 16, "name": "circles", "type": "relationship", "relatedTable": "groups",
             "relationType": "many-to-many"},
            {"id": 17, "name": "clock", "type": "time"},
        ]},
    ],
}
ITEM_FIELDS = [f["name"] for f in LIST_CONFIG["tables"][1]["fields"]]

# Names of the five items, in id order; E has no name.
A, B, C, D, E = "apple", "Banana", "cherry", "date", None
ALL = [A, B, C, D, E]


def seed(client):
    """Create groups G1, G2, G3 and items A..E; return a dict of ids ('G1', 'A', ...)."""
    ids = {}
    for key, title in (("G1", "Group One"), ("G2", "Group Two"), ("G3", "Empty")):
        ids[key] = client.post_json("/api/tables/groups/records", {"title": title}).json["id"]
    items = {
        "A": {"name": "apple", "kind": "low", "qty": 5, "price": 1.5, "day": "2026-03-01",
              "at": "2026-03-01T10:00:00Z", "flag": True, "tags": ["alpha", "beta"], "group": ids["G1"],
              "blob": {"k": 1}, "mail": "a@x.com", "notes": "Hello World",
              "circles": [ids["G1"], ids["G2"]], "clock": "09:30"},
        "B": {"name": "Banana", "kind": "high", "qty": 10, "price": 2, "day": "2026-03-05",
              "at": "2026-03-01T23:59:59.999Z", "flag": False, "tags": ["beta"], "group": ids["G2"],
              "blob": [], "mail": "b@x.com", "notes": "hello there", "circles": [ids["G2"]],
              "clock": "18:00:00"},
        "C": {"name": "cherry", "kind": "mid", "qty": -3, "price": 0.5, "day": "2026-02-28",
              "at": "2026-03-02T00:00:00Z", "flag": True, "tags": ["gamma", "alpha"], "group": ids["G1"]},
        "D": {"name": "date"},
        "E": {"kind": "low", "qty": 0, "tags": ["gamma", "beta"]},
    }
    for key, body in items.items():
        ids[key] = client.post_json("/api/tables/items/records", body).json["id"]
    return ids


def build(path):
    app = sovrium.App(copy.deepcopy(LIST_CONFIG), db_path=str(path), env=dict(ENV))
    return app, webtest.TestApp(app.wsgi)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Read-only dataset shared by the module: (client, ids)."""
    app, client = build(tmp_path_factory.mktemp("list") / "list.db")
    ids = seed(client)
    yield client, ids
    app.close()


@pytest.fixture
def fresh(tmp_path):
    """A dataset a test may change: (client, ids)."""
    app, client = build(tmp_path / "fresh.db")
    yield client, seed(client)
    app.close()


def lst(client, table="items", status=200, **params):
    return client.get(f"/api/tables/{table}/records", params=params, status=status,
                      expect_errors=status >= 400)


def names(body):
    return [r["fields"]["name"] for r in body["records"]]


def resolve(value, ids):
    """Replace '$KEY' strings (at any depth) by the id of that seeded record."""
    if isinstance(value, str) and value.startswith("$"):
        return ids[value[1:]]
    if isinstance(value, list):
        return [resolve(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, ids) for k, v in value.items()}
    return value


def assert_400(resp, field, message):
    assert resp.status_int == 400, resp.body
    assert resp.json == {"success": False, "message": message, "code": "VALIDATION_ERROR",
                         "errors": [{"field": field, "message": message}]}


def leaf(field, operator, *value):
    node = {"field": field, "operator": operator}
    if value:
        node["value"] = value[0]
    return node


# ---------------------------------------------------------------------------
# Envelope and pagination (§1.9, §4.7)
# ---------------------------------------------------------------------------

def test_default_list_envelope_and_order(data):
    client, ids = data
    body = lst(client).json
    assert list(body) == ["records", "pagination"]
    assert [r["id"] for r in body["records"]] == [ids[k] for k in "ABCDE"]
    assert names(body) == ALL
    assert body["pagination"] == {"page": 1, "limit": 10, "offset": 0, "total": 5, "totalPages": 1,
                                  "hasNextPage": False, "hasPreviousPage": False}
    rec = body["records"][0]
    assert list(rec) == RECORD_KEYS
    assert list(rec["fields"]) == ITEM_FIELDS
    assert TS_RE.match(rec["createdAt"]) and rec["createdBy"] is None and rec["updatedBy"] is None


def test_record_values_in_list(data):
    client, ids = data
    records = lst(client).json["records"]
    assert records[0]["fields"] == {
        "name": "apple", "kind": "low", "qty": 5, "price": 1.5, "day": "2026-03-01",
        "at": "2026-03-01T10:00:00.000Z", "flag": True, "tags": ["alpha", "beta"], "group": ids["G1"],
        "blob": {"k": 1}, "mail": "a@x.com", "notes": "Hello World", "group_title": "Group One",
        "doubled": 10, "label": "on", "circles": sorted([ids["G1"], ids["G2"]]), "clock": "09:30:00"}
    assert records[2]["fields"]["tags"] == ["alpha", "gamma"]
    assert records[3]["fields"] == {
        "name": "date", "kind": None, "qty": None, "price": None, "day": None, "at": None,
        "flag": False, "tags": None, "group": None, "blob": None, "mail": None, "notes": None,
        "group_title": None, "doubled": None, "label": "off", "circles": None, "clock": None}


PAGES = [
    ("limit=2", [A, B], {"page": 1, "limit": 2, "offset": 0, "total": 5, "totalPages": 3,
                         "hasNextPage": True, "hasPreviousPage": False}),
    ("limit=2&page=2", [C, D], {"page": 2, "limit": 2, "offset": 2, "total": 5, "totalPages": 3,
                                "hasNextPage": True, "hasPreviousPage": True}),
    ("limit=2&page=3", [E], {"page": 3, "limit": 2, "offset": 4, "total": 5, "totalPages": 3,
                             "hasNextPage": False, "hasPreviousPage": True}),
    ("limit=2&offset=3", [D, E], {"page": 2, "limit": 2, "offset": 3, "total": 5, "totalPages": 3,
                                  "hasNextPage": False, "hasPreviousPage": True}),
    ("offset=1", [B, C, D, E], {"page": 1, "limit": 10, "offset": 1, "total": 5, "totalPages": 1,
                                "hasNextPage": False, "hasPreviousPage": True}),
    ("limit=5", ALL, {"page": 1, "limit": 5, "offset": 0, "total": 5, "totalPages": 1,
                      "hasNextPage": False, "hasPreviousPage": False}),
    ("offset=10", [], {"page": 2, "limit": 10, "offset": 10, "total": 5, "totalPages": 1,
                       "hasNextPage": False, "hasPreviousPage": True}),
    ("limit=1000&page=9007199254741", [], {"page": 9007199254741, "limit": 1000,
                                           "offset": 9007199254740000, "total": 5, "totalPages": 1,
                                           "hasNextPage": False, "hasPreviousPage": True}),
    ("limit=&offset=", ALL, {"page": 1, "limit": 10, "offset": 0, "total": 5, "totalPages": 1,
                             "hasNextPage": False, "hasPreviousPage": False}),
    ("limit=1&limit=3", [A, B, C], {"page": 1, "limit": 3, "offset": 0, "total": 5, "totalPages": 2,
                                    "hasNextPage": True, "hasPreviousPage": False}),
    ("skipTotal=true&limit=2", [A, B], {"page": 1, "limit": 2, "offset": 0, "total": None,
                                        "totalPages": None, "hasNextPage": True,
                                        "hasPreviousPage": False}),
    ("skipTotal=1&limit=2&page=3", [E], {"page": 3, "limit": 2, "offset": 4, "total": None,
                                         "totalPages": None, "hasNextPage": False,
                                         "hasPreviousPage": True}),
    ("skipTotal=TRUE&limit=4&offset=1", [B, C, D, E], {"page": 1, "limit": 4, "offset": 1,
                                                       "total": None, "totalPages": None,
                                                       "hasNextPage": False, "hasPreviousPage": True}),
    ("skipTotal=false&limit=4", [A, B, C, D], {"page": 1, "limit": 4, "offset": 0, "total": 5,
                                               "totalPages": 2, "hasNextPage": True,
                                               "hasPreviousPage": False}),
]


@pytest.mark.parametrize("query,expected,pagination", PAGES, ids=[p[0] for p in PAGES])
def test_pagination(data, query, expected, pagination):
    client, _ = data
    body = client.get("/api/tables/items/records?" + query).json
    assert names(body) == expected
    assert body["pagination"] == pagination
    assert list(body["pagination"]) == ["page", "limit", "offset", "total", "totalPages",
                                        "hasNextPage", "hasPreviousPage"]


def test_total_zero(make_app):
    client = webtest.TestApp(make_app().wsgi)
    body = lst(client, "tasks").json
    assert body == {"records": [], "pagination": {"page": 1, "limit": 10, "offset": 0, "total": 0,
                                                  "totalPages": 0, "hasNextPage": False,
                                                  "hasPreviousPage": False}}


def test_default_page_size_is_ten(client):
    created = [client.post_json("/api/tables/tasks/records", {"title": f"t{i}"}).json["id"]
               for i in range(12)]
    body = lst(client, "tasks").json
    assert [r["id"] for r in body["records"]] == created[:10]
    assert body["pagination"] == {"page": 1, "limit": 10, "offset": 0, "total": 12, "totalPages": 2,
                                  "hasNextPage": True, "hasPreviousPage": False}


def test_configured_page_sizes(make_app, config):
    config["settings"] = {"defaultPageSize": 3, "maxPageSize": 4}
    client = webtest.TestApp(make_app(config).wsgi)
    for i in range(5):
        client.post_json("/api/tables/tasks/records", {"title": f"t{i}"})
    body = lst(client, "tasks").json
    assert len(body["records"]) == 3 and body["pagination"]["limit"] == 3
    assert len(lst(client, "tasks", limit="4").json["records"]) == 4
    assert_400(lst(client, "tasks", status=400, limit="5"), "limit", "Parameter 'limit' must be between 1 and 4")
    assert_400(lst(client, "tasks", status=400, page="0", limit="4"), "page",
               f"Parameter 'page' must be between 1 and {MAX // 4 + 1}")


PARAM_ERRORS = [
    ("limit=0", "limit", "Parameter 'limit' must be between 1 and 1000"),
    ("limit=1001", "limit", "Parameter 'limit' must be between 1 and 1000"),
    ("limit=-1", "limit", "Parameter 'limit' must be between 1 and 1000"),
    ("limit=99999999999999999", "limit", "Parameter 'limit' must be between 1 and 1000"),
    ("limit=abc", "limit", "Parameter 'limit' must be an integer"),
    ("limit=1.5", "limit", "Parameter 'limit' must be an integer"),
    ("limit=%2B5", "limit", "Parameter 'limit' must be an integer"),
    ("limit=%205", "limit", "Parameter 'limit' must be an integer"),
    ("limit=1e2", "limit", "Parameter 'limit' must be an integer"),
    ("offset=-1", "offset", "Parameter 'offset' must be between 0 and 9007199254740991"),
    ("offset=9007199254740992", "offset", "Parameter 'offset' must be between 0 and 9007199254740991"),
    ("offset=x", "offset", "Parameter 'offset' must be an integer"),
    ("offset=12345678901234567", "offset", "Parameter 'offset' must be between 0 and 9007199254740991"),
    ("page=0", "page", "Parameter 'page' must be between 1 and 900719925474100"),
    ("page=-2", "page", "Parameter 'page' must be between 1 and 900719925474100"),
    ("page=900719925474101", "page", "Parameter 'page' must be between 1 and 900719925474100"),
    ("limit=1000&page=9007199254742", "page", "Parameter 'page' must be between 1 and 9007199254741"),
    ("page=one", "page", "Parameter 'page' must be an integer"),
    ("page=1&offset=0", "page", "Use either page or offset, not both"),
    ("page=2&offset=5&limit=2", "page", "Use either page or offset, not both"),
    ("skipTotal=yes", "skipTotal", "Parameter 'skipTotal' must be a boolean"),
    ("includeDeleted=2", "includeDeleted", "Parameter 'includeDeleted' must be a boolean"),
    ("search=" + "x" * 201, "search", "Parameter 'search' must be between 1 and 200 characters"),
]


@pytest.mark.parametrize("query,field,message", PARAM_ERRORS, ids=[p[0][:40] for p in PARAM_ERRORS])
def test_parameter_errors(data, query, field, message):
    client, _ = data
    resp = client.get("/api/tables/items/records?" + query, expect_errors=True)
    assert_400(resp, field, message)


def test_page_at_the_upper_bound_is_valid(data):
    client, _ = data
    body = client.get("/api/tables/items/records?page=900719925474100").json
    assert body["records"] == []
    assert body["pagination"]["offset"] == 9007199254740990


# ---------------------------------------------------------------------------
# Operators per family (§4.9)
# ---------------------------------------------------------------------------

OPS = [
    # Text
    ("text-equals", leaf("name", "equals", "apple"), [A]),
    ("text-equals-case-sensitive", leaf("name", "equals", "Apple"), []),
    ("text-notEquals-includes-empty", leaf("name", "notEquals", "apple"), [B, C, D, E]),
    ("text-equals-null", leaf("name", "equals", None), [E]),
    ("text-notEquals-null", leaf("name", "notEquals", None), [A, B, C, D]),
    ("text-gt-nocase", leaf("name", "greaterThan", "b"), [B, C, D]),
    ("text-lt", leaf("name", "lessThan", "c"), [A, B]),
    ("text-lte-nocase", leaf("name", "lessThanOrEqual", "BANANA"), [A, B]),
    ("text-gte", leaf("name", "greaterThanOrEqual", "CHERRY"), [C, D]),
    ("text-contains-nocase", leaf("name", "contains", "AN"), [B]),
    ("text-contains", leaf("name", "contains", "e"), [A, C, D]),
    ("text-notContains-includes-empty", leaf("name", "notContains", "e"), [B, E]),
    ("text-contains-percent-literal", leaf("name", "contains", "%"), []),
    ("text-contains-underscore-literal", leaf("name", "contains", "_"), []),
    ("text-startsWith", leaf("name", "startsWith", "b"), [B]),
    ("text-endsWith", leaf("name", "endsWith", "RY"), [C]),
    ("text-isNull", leaf("name", "isNull"), [E]),
    ("text-isEmpty", leaf("name", "isEmpty", "ignored"), [E]),
    ("text-isNotNull", leaf("name", "isNotNull"), [A, B, C, D]),
    ("text-isNotEmpty", leaf("name", "isNotEmpty", 5), [A, B, C, D]),
    ("text-in", leaf("name", "in", ["apple", "date", "nothing"]), [A, D]),
    ("text-in-empty", leaf("name", "in", []), []),
    ("text-notIn", leaf("name", "notIn", ["apple"]), [B, C, D, E]),
    ("text-notIn-empty", leaf("name", "notIn", []), ALL),
    ("email-equals-lowercases-value", leaf("mail", "equals", "A@X.COM"), [A]),
    ("long-text-contains", leaf("notes", "contains", "HELLO"), [A, B]),
    ("formula-text-equals", leaf("label", "equals", "on"), [A, C]),
    ("lookup-text-startsWith", leaf("group_title", "startsWith", "group o"), [A, C]),
    ("lookup-text-isNull", leaf("group_title", "isNull"), [D, E]),
    # Choice
    ("choice-equals", leaf("kind", "equals", "low"), [A, E]),
    ("choice-equals-non-option", leaf("kind", "equals", "nope"), []),
    ("choice-notEquals-non-option", leaf("kind", "notEquals", "nope"), ALL),
    ("choice-notEquals", leaf("kind", "notEquals", "low"), [B, C, D]),
    ("choice-in-ignores-non-option", leaf("kind", "in", ["low", "nope"]), [A, E]),
    ("choice-in-only-non-options", leaf("kind", "in", ["nope"]), []),
    ("choice-notIn-non-option", leaf("kind", "notIn", ["nope"]), ALL),
    ("choice-notIn", leaf("kind", "notIn", ["low", "nope"]), [B, C, D]),
    ("choice-contains", leaf("kind", "contains", "I"), [B, C]),
    ("choice-notContains", leaf("kind", "notContains", "i"), [A, D, E]),
    ("choice-startsWith", leaf("kind", "startsWith", "H"), [B]),
    ("choice-endsWith", leaf("kind", "endsWith", "w"), [A, E]),
    ("choice-isNull", leaf("kind", "isNull"), [D]),
    ("choice-isNotEmpty", leaf("kind", "isNotEmpty"), [A, B, C, E]),
    # Number
    ("number-equals", leaf("qty", "equals", 5), [A]),
    ("number-equals-numeric-string", leaf("qty", "equals", "5"), [A]),
    ("number-equals-float", leaf("qty", "equals", 5.0), [A]),
    ("number-notEquals", leaf("qty", "notEquals", 5), [B, C, D, E]),
    ("number-gt", leaf("qty", "greaterThan", 0), [A, B]),
    ("number-gte", leaf("qty", "greaterThanOrEqual", 0), [A, B, E]),
    ("number-lt", leaf("qty", "lessThan", 0), [C]),
    ("number-lte", leaf("qty", "lessThanOrEqual", 5), [A, C, E]),
    ("number-gt-numeric-string", leaf("qty", "greaterThan", "-3.5"), [A, B, C, E]),
    ("number-in", leaf("qty", "in", [5, 0]), [A, E]),
    ("number-notIn", leaf("qty", "notIn", [5]), [B, C, D, E]),
    ("number-isNull", leaf("qty", "isNull"), [D]),
    ("number-isNotNull", leaf("qty", "isNotNull"), [A, B, C, E]),
    ("decimal-gt", leaf("price", "greaterThan", 1.5), [B]),
    ("decimal-equals", leaf("price", "equals", 2), [B]),
    ("formula-number-gt", leaf("doubled", "greaterThan", 0), [A, B]),
    ("formula-number-equals", leaf("doubled", "equals", -6), [C]),
    ("pseudo-id-equals", leaf("id", "equals", "$C"), [C]),
    ("pseudo-id-in", leaf("id", "in", ["$A", "$E"]), [A, E]),
    ("pseudo-id-gt", leaf("id", "greaterThan", "$C"), [D, E]),
    # Date
    ("date-equals", leaf("day", "equals", "2026-03-01"), [A]),
    ("date-notEquals", leaf("day", "notEquals", "2026-03-01"), [B, C, D, E]),
    ("date-gt", leaf("day", "greaterThan", "2026-03-01"), [B]),
    ("date-gte", leaf("day", "greaterThanOrEqual", "2026-03-01"), [A, B]),
    ("date-lt", leaf("day", "lessThan", "2026-03-01"), [C]),
    ("date-lte", leaf("day", "lessThanOrEqual", "2026-03-01"), [A, C]),
    ("date-in", leaf("day", "in", ["2026-03-05", "2026-02-28"]), [B, C]),
    ("date-isNull", leaf("day", "isNull"), [D, E]),
    ("datetime-equals-day", leaf("at", "equals", "2026-03-01"), [A, B]),
    ("datetime-notEquals-day", leaf("at", "notEquals", "2026-03-01"), [C, D, E]),
    ("datetime-gt-day", leaf("at", "greaterThan", "2026-03-01"), [C]),
    ("datetime-gte-day", leaf("at", "greaterThanOrEqual", "2026-03-01"), [A, B, C]),
    ("datetime-lt-day", leaf("at", "lessThan", "2026-03-02"), [A, B]),
    ("datetime-lte-day", leaf("at", "lessThanOrEqual", "2026-03-01"), [A, B]),
    ("datetime-lt-day-start", leaf("at", "lessThan", "2026-03-01"), []),
    ("datetime-equals-instant", leaf("at", "equals", "2026-03-01T10:00:00Z"), [A]),
    ("datetime-equals-offset", leaf("at", "equals", "2026-03-01T11:00:00+01:00"), [A]),
    ("datetime-equals-no-offset-utc", leaf("at", "equals", "2026-03-01T10:00"), [A]),
    ("datetime-gt-instant", leaf("at", "greaterThan", "2026-03-01T10:00:00.000Z"), [B, C]),
    ("datetime-in", leaf("at", "in", ["2026-03-02T00:00:00Z"]), [C]),
    ("datetime-isNotNull", leaf("at", "isNotNull"), [A, B, C]),
    ("time-equals", leaf("clock", "equals", "09:30:00"), [A]),
    ("time-equals-short", leaf("clock", "equals", "09:30"), [A]),
    ("time-gt", leaf("clock", "greaterThan", "10:00"), [B]),
    ("time-lte", leaf("clock", "lessThanOrEqual", "18:00"), [A, B]),
    ("time-notEquals", leaf("clock", "notEquals", "09:30"), [B, C, D, E]),
    ("time-isNull", leaf("clock", "isNull"), [C, D, E]),
    ("pseudo-createdBy-isNull", leaf("createdBy", "isNull"), ALL),
    ("in-500-elements", leaf("qty", "in", list(range(-250, 250))), [A, B, C, E]),
    ("pseudo-createdAt-gte", leaf("createdAt", "greaterThanOrEqual", "2000-01-01"), ALL),
    ("pseudo-updatedAt-lt", leaf("updatedAt", "lessThan", "2000-01-01T00:00:00Z"), []),
    # Boolean
    ("bool-isTrue", leaf("flag", "isTrue"), [A, C]),
    ("bool-isFalse", leaf("flag", "isFalse"), [B, D, E]),
    ("bool-equals-true", leaf("flag", "equals", True), [A, C]),
    ("bool-equals-false", leaf("flag", "equals", False), [B, D, E]),
    ("bool-notEquals-true", leaf("flag", "notEquals", True), [B, D, E]),
    # Link
    ("link-equals", leaf("group", "equals", "$G1"), [A, C]),
    ("link-notEquals", leaf("group", "notEquals", "$G1"), [B, D, E]),
    ("link-in", leaf("group", "in", ["$G2"]), [B]),
    ("link-notIn", leaf("group", "notIn", ["$G1"]), [B, D, E]),
    ("link-isNull", leaf("group", "isNull"), [D, E]),
    ("link-equals-null", leaf("group", "equals", None), [D, E]),
    # Multi
    ("multi-contains", leaf("tags", "contains", "alpha"), [A, C]),
    ("multi-notContains", leaf("tags", "notContains", "alpha"), [B, D, E]),
    ("multi-equals-set", leaf("tags", "equals", ["beta", "alpha", "alpha"]), [A]),
    ("multi-equals-single", leaf("tags", "equals", ["beta"]), [B]),
    ("multi-notEquals", leaf("tags", "notEquals", ["beta"]), [A, C, D, E]),
    ("multi-in", leaf("tags", "in", ["gamma"]), [C, E]),
    ("multi-in-any", leaf("tags", "in", ["alpha", "gamma"]), [A, C, E]),
    ("multi-notIn", leaf("tags", "notIn", ["alpha"]), [B, D, E]),
    ("multi-in-empty", leaf("tags", "in", []), []),
    ("multi-notIn-empty", leaf("tags", "notIn", []), ALL),
    ("multi-isNull", leaf("tags", "isNull"), [D]),
    ("multi-isNotEmpty", leaf("tags", "isNotEmpty"), [A, B, C, E]),
    ("multi-equals-null", leaf("tags", "equals", None), [D]),
    ("m2m-contains", leaf("circles", "contains", "$G2"), [A, B]),
    ("m2m-notContains", leaf("circles", "notContains", "$G1"), [B, C, D, E]),
    ("m2m-equals-set", leaf("circles", "equals", ["$G2", "$G1"]), [A]),
    ("m2m-in", leaf("circles", "in", ["$G1", "$G3"]), [A]),
    ("m2m-isEmpty", leaf("circles", "isEmpty"), [C, D, E]),
    # Opaque
    ("json-isNull", leaf("blob", "isNull"), [C, D, E]),
    ("json-isNotNull-empty-array-is-value", leaf("blob", "isNotNull"), [A, B]),
    ("json-isEmpty", leaf("blob", "isEmpty"), [C, D, E]),
    ("json-isNotEmpty", leaf("blob", "isNotEmpty"), [A, B]),
    # groups
    ("and-empty-matches-all", {"and": []}, ALL),
    ("or-empty-matches-nothing", {"or": []}, []),
    ("not", {"not": leaf("flag", "isTrue")}, [B, D, E]),
    ("and", {"and": [leaf("flag", "isTrue"), leaf("qty", "greaterThan", 0)]}, [A]),
    ("or", {"or": [leaf("kind", "equals", "high"), leaf("qty", "lessThan", 0)]}, [B, C]),
    ("nested", {"and": [leaf("kind", "in", ["low", "high"]),
                        {"or": [leaf("qty", "greaterThan", 3), leaf("day", "isNull")]}]}, [A, B, E]),
    ("not-or", {"not": {"or": [leaf("name", "isNull"), leaf("flag", "isTrue")]}}, [B, D]),
    ("spec-example", {"and": [leaf("kind", "in", ["low", "mid"]),
                              {"or": [leaf("qty", "greaterThan", 3),
                                      leaf("day", "lessThanOrEqual", "2026-03-31")]}]}, [A, C]),
]


@pytest.mark.parametrize("name,tree,expected", OPS, ids=[o[0] for o in OPS])
def test_filter_operator(data, name, tree, expected):
    client, ids = data
    body = lst(client, filter=json.dumps(resolve(tree, ids)), limit="100").json
    assert names(body) == expected
    assert body["pagination"]["total"] == len(expected)


def test_filter_with_leading_whitespace_is_json(data):
    client, _ = data
    assert names(lst(client, filter='  ' + json.dumps(leaf("qty", "equals", 10))).json) == [B]


UNSUPPORTED = [
    ("name", "isTrue"), ("name", "isFalse"),
    ("kind", "greaterThan"), ("kind", "lessThanOrEqual"), ("kind", "isTrue"),
    ("qty", "contains"), ("qty", "startsWith"), ("qty", "isFalse"),
    ("day", "contains"), ("at", "endsWith"), ("createdAt", "contains"),
    ("flag", "in"), ("flag", "notIn"), ("flag", "isNull"), ("flag", "isNotEmpty"), ("flag", "greaterThan"),
    ("flag", "contains"),
    ("group", "greaterThan"), ("group", "contains"), ("group", "isTrue"),
    ("tags", "greaterThan"), ("tags", "startsWith"), ("tags", "isTrue"),
    ("circles", "lessThan"),
    ("blob", "equals"), ("blob", "notEquals"), ("blob", "contains"), ("blob", "in"), ("blob", "greaterThan"),
    ("doubled", "contains"), ("label", "isTrue"), ("id", "contains"),
]


@pytest.mark.parametrize("field,op", UNSUPPORTED, ids=[f"{f}-{o}" for f, o in UNSUPPORTED])
def test_operator_not_supported(data, field, op):
    client, _ = data
    resp = lst(client, status=400, filter=json.dumps({"field": field, "operator": op, "value": "x"}))
    assert_400(resp, "filter", f"Operator '{op}' is not supported for field '{field}'")


INVALID_VALUES = [
    ("name", "equals", 5), ("name", "contains", ["a"]), ("name", "in", "apple"),
    ("kind", "equals", 1), ("kind", "in", [1]),
    ("qty", "equals", "abc"), ("qty", "equals", True), ("qty", "equals", 9007199254740992),
    ("qty", "equals", [5]), ("qty", "in", 5), ("qty", "in", [1, "x"]), ("qty", "in", list(range(501))),
    ("qty", "greaterThan", None),
    ("day", "equals", "2026-03-01T00:00:00Z"), ("day", "equals", "2026-02-30"), ("day", "equals", 20260301),
    ("at", "equals", "yesterday"), ("clock", "equals", "9:30"), ("clock", "equals", "2026-03-01"), ("at", "greaterThan", "2026-03-01 10:00"),
    ("createdAt", "equals", "x"),
    ("flag", "equals", None), ("flag", "equals", "true"), ("flag", "notEquals", 1),
    ("group", "equals", "x"), ("group", "in", ["x"]),
    ("tags", "contains", ["alpha"]), ("tags", "equals", "alpha"), ("tags", "in", "alpha"),
    ("tags", "contains", 5),
    ("circles", "contains", "x"),
    ("id", "equals", "abc"),
]


@pytest.mark.parametrize("field,op,value", INVALID_VALUES,
                         ids=[f"{f}-{o}-{i}" for i, (f, o, _) in enumerate(INVALID_VALUES)])
def test_invalid_filter_value(data, field, op, value):
    client, _ = data
    resp = lst(client, status=400, filter=json.dumps({"field": field, "operator": op, "value": value}))
    assert_400(resp, "filter", f"Invalid filter value for field '{field}'")


def nested(depth):
    node = leaf("qty", "isNotNull")
    for _ in range(depth):
        node = {"and": [node]}
    return node


FILTER_ERRORS = [
    ("{bad", "Invalid filter: not valid JSON"),
    ('{"field":"qty","operator":"equals","value":NaN}', "Invalid filter: not valid JSON"),
    ('{"field":"qty","operator":"equals","value":1e400}', "Invalid filter: not valid JSON"),
    ('{"field":"name","operator":"equals","value":"\\ud800"}', "Invalid filter: not valid JSON"),
    ("{}", "Invalid filter: expected a group or a leaf"),
    ('{"field":"qty"}', "Invalid filter: expected a group or a leaf"),
    ('{"field":"qty","operator":"equals"}', "Invalid filter: expected a group or a leaf"),
    ('{"field":"qty","operator":"equals","value":1,"x":2}', "Invalid filter: expected a group or a leaf"),
    ('{"and":[],"or":[]}', "Invalid filter: expected a group or a leaf"),
    ('{"and":{"field":"qty","operator":"isNull"}}', "Invalid filter: expected a group or a leaf"),
    ('{"and":[5]}', "Invalid filter: expected a group or a leaf"),
    ('{"not":[]}', "Invalid filter: expected a group or a leaf"),
    ('{"xor":[]}', "Invalid filter: expected a group or a leaf"),
    ("qty", "Invalid filter: expected field:value"),
    (json.dumps(nested(9)), "Invalid filter: too deeply nested"),
    (json.dumps({"or": [leaf("qty", "equals", i) for i in range(101)]}, separators=(",", ":")),
     "Invalid filter: too many conditions"),
    (json.dumps({"and": [{"or": [leaf("qty", "equals", i) for i in range(51)]},
                         {"or": [leaf("qty", "equals", i) for i in range(50)]}]}, separators=(",", ":")),
     "Invalid filter: too many conditions"),
    ('{"field":"nope","operator":"equals","value":1}', "Unknown field 'nope'"),
    ('{"field":"deletedAt","operator":"isNull"}', "Unknown field 'deletedAt'"),
    ('{"field":"qty","operator":"like","value":1}', "Unknown operator 'like'"),
    ('{"field":"qty","operator":"EQUALS","value":1}', "Unknown operator 'EQUALS'"),
    ("nope:1", "Unknown field 'nope'"),
    ("qty:abc", "Invalid filter value for field 'qty'"),
    ("flag:yes", "Invalid filter value for field 'flag'"),
    ("day:tomorrow", "Invalid filter value for field 'day'"),
]


@pytest.mark.parametrize("raw,message", FILTER_ERRORS, ids=[f"{i}-{m[:30]}" for i, (_, m) in enumerate(FILTER_ERRORS)])
def test_filter_errors(data, raw, message):
    client, _ = data
    assert_400(lst(client, status=400, filter=raw), "filter", message)


def test_filter_limits_at_the_edge_are_accepted(data):
    client, _ = data
    assert names(lst(client, filter=json.dumps(nested(8))).json) == [A, B, C, E]
    not8 = leaf("flag", "isTrue")
    for _ in range(8):
        not8 = {"not": not8}
    assert names(lst(client, filter=json.dumps(not8)).json) == [A, C]
    hundred = {"or": [leaf("qty", "equals", i) for i in range(100)]}
    assert names(lst(client, filter=json.dumps(hundred, separators=(",", ":"))).json) == [A, B, E]


SHORTHAND = [
    ("name:apple", [A]),
    ("kind:low", [A, E]),
    ("kind:nope", []),
    ("qty:5", [A]),
    ("qty:-3", [C]),
    ("price:1.5", [A]),
    ("flag:true", [A, C]),
    ("flag:false", [B, D, E]),
    ("tags:alpha", [A, C]),
    ("day:2026-03-01", [A]),
    ("at:2026-03-01", [A, B]),
    ("group:$G1", [A, C]),
    ("circles:$G2", [A, B]),
    ("mail:A@X.COM", [A]),
    ("notes:Hello World", [A]),
]


@pytest.mark.parametrize("raw,expected", SHORTHAND, ids=[s[0] for s in SHORTHAND])
def test_shorthand_filter(data, raw, expected):
    client, ids = data
    field, _, value = raw.partition(":")
    if value.startswith("$"):
        value = str(ids[value[1:]])
    assert names(lst(client, filter=f"{field}:{value}").json) == expected


def test_shorthand_value_after_first_colon(fresh):
    client, _ = fresh
    client.post_json("/api/tables/items/records", {"name": "a:b"})
    assert names(lst(client, filter="name:a:b").json) == ["a:b"]


def test_filter_and_formula_combined_by_and(data):
    client, _ = data
    assert names(lst(client, filter="kind:low", filterByFormula="{qty} > 1").json) == [A]


# ---------------------------------------------------------------------------
# filterByFormula (§4.10)
# ---------------------------------------------------------------------------

FORMULAS = [
    ("{qty} > 4", [A, B]),
    ("5 < {qty}", [B]),
    ("{name} = 'apple'", [A]),
    ('{name} = "apple"', [A]),
    ("{name} = 'APPLE'", []),
    ("{qty} != 5", [B, C, D, E]),
    ("{qty} <> 5", [B, C, D, E]),
    ("{qty} >= 5", [A, B]),
    ("{qty} <= 0", [C, E]),
    ("{qty} > -3", [A, B, E]),
    ("{qty} = -3", [C]),
    ("{qty} = (-3)", [C]),
    ("{qty} > 4.5", [A, B]),
    ("{day} = BLANK()", [D, E]),
    ("{day} != BLANK()", [A, B, C]),
    ("BLANK() = {day}", [D, E]),
    ("{flag}", [A, C]),
    ("{flag} = TRUE", [A, C]),
    ("{flag} = true()", [A, C]),
    ("{flag} != FALSE", [A, C]),
    ("{flag} = FALSE()", [B, D, E]),
    ("{flag} != TRUE", [B, D, E]),
    ("FALSE = {flag}", [B, D, E]),
    ("{name}", [A, B, C, D]),
    ("{tags}", [A, B, C, E]),
    ("NOT({flag})", [B, D, E]),
    ("TRUE", ALL),
    ("FALSE", []),
    ("TRUE()", ALL),
    ("AND({kind}!='low', OR({qty}>=3, {day}=BLANK()))", [B, D]),
    ("and({flag}, {qty} >= 5)", [A]),
    ("Or({kind} = 'mid', {kind} = 'high')", [B, C]),
    ("({qty} > (4))", [A, B]),
    ("  {qty}\t>\n4  ", [A, B]),
    ("{day} >= '2026-03-01'", [A, B]),
    ("{at} = '2026-03-01'", [A, B]),
    ("{kind} = 'nope'", []),
    ("{kind} != 'nope'", ALL),
    ("{label} = 'on'", [A, C]),
    ("{doubled} < 0", [C]),
    ("{group} = $G1", [A, C]),
    ("{id} = $B", [B]),
    ("{name} = 'it\\'s'", []),
]


@pytest.mark.parametrize("formula,expected", FORMULAS, ids=[f[0] for f in FORMULAS])
def test_filter_by_formula(data, formula, expected):
    client, ids = data
    formula = re.sub(r"\$(\w+)", lambda m: str(ids[m.group(1)]), formula)
    assert names(lst(client, filterByFormula=formula).json) == expected


FORMULA_ERRORS = [
    ("{qty} > > 3", "Invalid filterByFormula: unexpected token at position 8"),
    ("{qty} > 1 extra", "Invalid filterByFormula: unexpected token at position 10"),
    ("{qty} > 1)", "Invalid filterByFormula: unexpected token at position 9"),
    ("{name} = 'abc", "Invalid filterByFormula: unterminated string at position 9"),
    ("AND({flag}, 5)", "Invalid filterByFormula: expected a comparison at position 12"),
    ("5", "Invalid filterByFormula: expected a comparison at position 0"),
    ("'x'", "Invalid filterByFormula: expected a comparison at position 0"),
    ("LEN({name}) > 3", "Invalid filterByFormula: function not allowed here at position 0"),
    ("{qty} > ABS(-3)", "Invalid filterByFormula: function not allowed here at position 8"),
    ("{nope} = 1", "Unknown field 'nope'"),
    ("{qty} = 'abc'", "Invalid filter value for field 'qty'"),
    ("{flag} = 1", "Invalid filter value for field 'flag'"),
    ("{flag} > 1", "Operator 'greaterThan' is not supported for field 'flag'"),
    ("{tags} > 'alpha'", "Operator 'greaterThan' is not supported for field 'tags'"),
    ("{day} = 'soon'", "Invalid filter value for field 'day'"),
]


@pytest.mark.parametrize("formula,message", FORMULA_ERRORS, ids=[f[0] for f in FORMULA_ERRORS])
def test_filter_by_formula_errors(data, formula, message):
    client, _ = data
    assert_400(lst(client, status=400, filterByFormula=formula), "filterByFormula", message)


@pytest.mark.parametrize("formula,reason", [
    ("{qty} = {price}", "field-to-field comparison"),
    ("{qty} + 1", "expected a comparison"),
    ("{name} = 'a\\b'", "unexpected token"),
    ("{name} & 'x'", "expected a comparison"),
    ("IF({flag}, TRUE, FALSE)", "function not allowed here"),
])
def test_filter_by_formula_error_reasons(data, formula, reason):
    client, _ = data
    resp = lst(client, status=400, filterByFormula=formula)
    assert resp.status_int == 400
    body = resp.json
    assert re.fullmatch(rf"Invalid filterByFormula: {reason} at position \d+", body["message"]), body
    assert body["errors"] == [{"field": "filterByFormula", "message": body["message"]}]
    assert body["code"] == "VALIDATION_ERROR" and body["success"] is False


# ---------------------------------------------------------------------------
# Sort (§4.11)
# ---------------------------------------------------------------------------

SORTS = [
    ("qty", [D, C, E, A, B]),
    ("qty:asc", [D, C, E, A, B]),
    ("-qty", [B, A, E, C, D]),
    ("qty:desc", [B, A, E, C, D]),
    ("name", [E, A, B, C, D]),
    ("-name", [D, C, B, A, E]),
    ("kind", [D, A, E, C, B]),
    ("-kind", [B, C, A, E, D]),
    ("flag", [B, D, E, A, C]),
    ("-flag", [A, C, B, D, E]),
    ("day", [D, E, C, A, B]),
    ("-day", [B, A, C, D, E]),
    ("at", [D, E, A, B, C]),
    ("group", [D, E, A, C, B]),
    ("-group", [B, A, C, D, E]),
    ("flag,-qty", [B, E, D, A, C]),
    ("-flag,name:desc", [C, A, D, B, E]),
    ("kind:asc,qty:desc", [D, A, E, C, B]),
    ("-id", [E, D, C, B, A]),
    ("id:asc", ALL),
    ("doubled", [D, C, E, A, B]),
    ("-doubled", [B, A, E, C, D]),
    ("label", [B, D, E, A, C]),
    ("-group_title,name", [B, A, C, E, D]),
    ("createdAt", ALL),
    ("mail", [C, D, E, A, B]),
    ("-clock", [B, A, C, D, E]),
    ("", ALL),
    ("createdBy,name", [E, A, B, C, D]),
]


@pytest.mark.parametrize("sort,expected", SORTS, ids=[s[0] for s in SORTS])
def test_sort(data, sort, expected):
    client, _ = data
    assert names(lst(client, sort=sort).json) == expected


def test_sort_with_pagination_and_filter(data):
    client, _ = data
    body = lst(client, sort="-qty", limit="2", page="2", filter='{"field":"qty","operator":"isNotNull"}').json
    assert names(body) == [E, C]
    assert body["pagination"]["total"] == 4


SORT_ERRORS = [
    ("tags", "Field 'tags' cannot be sorted"),
    ("blob", "Field 'blob' cannot be sorted"),
    ("circles", "Field 'circles' cannot be sorted"),
    ("qty,-tags", "Field 'tags' cannot be sorted"),
    ("nope", "Unknown field 'nope'"),
    ("-nope", "Unknown field 'nope'"),
    ("deletedAt", "Unknown field 'deletedAt'"),
    ("qty,qty", "Duplicate sort field 'qty'"),
    ("qty,-qty", "Duplicate sort field 'qty'"),
    ("qty:up", "Invalid sort direction 'up'"),
    ("qty:DESCENDING", "Invalid sort direction 'DESCENDING'"),
    ("name,kind,qty,price,day,at,flag,group,id", "Too many sort fields (at most 8)"),
]


@pytest.mark.parametrize("sort,message", SORT_ERRORS, ids=[s[0] for s in SORT_ERRORS])
def test_sort_errors(data, sort, message):
    client, _ = data
    assert_400(lst(client, status=400, sort=sort), "sort", message)


def test_eight_sort_keys_allowed(data):
    client, _ = data
    assert names(lst(client, sort="flag,kind,qty,price,day,at,group,name").json) == [D, E, B, A, C]


def test_sort_on_groups_computed_fields(data):
    client, ids = data
    titles = lambda b: [r["fields"]["title"] for r in b["records"]]  # noqa: E731
    assert titles(lst(client, "groups", sort="-member_count").json) == ["Group One", "Group Two", "Empty"]
    assert titles(lst(client, "groups", sort="qty_sum").json) == ["Empty", "Group One", "Group Two"]
    assert_400(lst(client, "groups", status=400, sort="members"), "sort", "Field 'members' cannot be sorted")
    assert_400(lst(client, "groups", status=400, sort="member_names"), "sort",
               "Field 'member_names' cannot be sorted")


# ---------------------------------------------------------------------------
# fields, search, includeDeleted (§4.12)
# ---------------------------------------------------------------------------

def test_fields_parameter(data):
    client, ids = data
    body = lst(client, fields="qty,name").json
    assert [list(r["fields"]) for r in body["records"]] == [["name", "qty"]] * 5
    assert body["records"][0]["fields"] == {"name": "apple", "qty": 5}
    assert list(body["records"][0]) == RECORD_KEYS
    body = lst(client, fields="id,createdAt,label").json
    assert body["records"][0]["fields"] == {"label": "on"}
    assert body["records"][0]["id"] == ids["A"]


@pytest.mark.parametrize("value,bad", [("nope", "nope"), ("name,nope", "nope"), ("Name", "Name")],
                         ids=["unknown", "one-unknown", "case-sensitive"])
def test_fields_parameter_errors(data, value, bad):
    client, _ = data
    assert_400(lst(client, status=400, fields=value), "fields", f"Unknown field '{bad}'")


SEARCHES = [
    ("APP", [A]),
    ("hello", [A, B]),
    ("IGH", [B]),
    ("x.com", [A, B]),
    ("amm", [C, E]),
    ("10", []),
    ("Group", []),
    ("on", []),
    ("%", []),
    ("_", []),
    ("x" * 200, []),
]


@pytest.mark.parametrize("text,expected", SEARCHES, ids=[s[0][:20] for s in SEARCHES])
def test_search(data, text, expected):
    client, _ = data
    body = lst(client, search=text).json
    assert names(body) == expected
    assert body["pagination"]["total"] == len(expected)


def test_search_combined_with_filter_and_empty_search_ignored(data):
    client, _ = data
    assert names(lst(client, search="a", filter="flag:true").json) == [A, C]
    assert names(lst(client, search="").json) == ALL
    assert names(lst(client, search="a", filterByFormula="{qty} > 4", sort="-qty").json) == [B, A]


def test_include_deleted_in_no_auth_mode(fresh):
    client, ids = fresh
    assert client.delete(f"/api/tables/items/records/{ids['B']}").status_int == 204
    body = lst(client).json
    assert names(body) == [A, C, D, E]
    assert all(list(r) == RECORD_KEYS for r in body["records"])
    body = lst(client, includeDeleted="true").json
    assert names(body) == ALL
    assert body["pagination"]["total"] == 5
    for r in body["records"]:
        assert list(r) == RECORD_KEYS + ["deletedAt", "deletedBy"]
        assert r["deletedBy"] is None
        if r["id"] == ids["B"]:
            assert TS_RE.match(r["deletedAt"])
        else:
            assert r["deletedAt"] is None
    assert names(lst(client, includeDeleted="1", filter="flag:false").json) == [B, D, E]
    assert names(lst(client, includeDeleted="false").json) == [A, C, D, E]


def test_trashed_records_not_found_by_filter_or_search(fresh):
    client, ids = fresh
    client.delete(f"/api/tables/items/records/{ids['A']}")
    assert names(lst(client, search="hello").json) == [B]
    assert names(lst(client, filter="flag:true").json) == [C]


# ---------------------------------------------------------------------------
# Computed fields (CONFIG.md §5.7, §6)
# ---------------------------------------------------------------------------

def groups_by_title(client, **params):
    return {r["fields"]["title"]: r for r in lst(client, "groups", **params).json["records"]}


def test_inverse_count_rollup_lookup_values(data):
    client, ids = data
    g = groups_by_title(client)
    assert list(g["Group One"]["fields"]) == ["title", "members", "member_count", "qty_sum", "member_names"]
    assert g["Group One"]["fields"] == {"title": "Group One", "members": sorted([ids["A"], ids["C"]]),
                                        "member_count": 2, "qty_sum": 2, "member_names": ["apple", "cherry"]}
    assert g["Group Two"]["fields"] == {"title": "Group Two", "members": [ids["B"]], "member_count": 1,
                                        "qty_sum": 10, "member_names": ["Banana"]}
    assert g["Empty"]["fields"] == {"title": "Empty", "members": [], "member_count": 0, "qty_sum": 0,
                                    "member_names": []}
    assert isinstance(g["Group One"]["fields"]["qty_sum"], int)


GROUP_FILTERS = [
    (leaf("member_count", "equals", 1), ["Group Two"]),
    (leaf("member_count", "greaterThanOrEqual", 1), ["Group One", "Group Two"]),
    (leaf("members", "contains", "$A"), ["Group One"]),
    (leaf("members", "equals", ["$C", "$A"]), ["Group One"]),
    (leaf("members", "isEmpty"), ["Empty"]),
    (leaf("members", "isNotEmpty"), ["Group One", "Group Two"]),
    (leaf("members", "notContains", "$A"), ["Group Two", "Empty"]),
    (leaf("member_names", "contains", "Banana"), ["Group Two"]),
    (leaf("member_names", "isEmpty"), ["Empty"]),
    (leaf("qty_sum", "greaterThan", 5), ["Group Two"]),
    (leaf("qty_sum", "equals", 0), ["Empty"]),
]


@pytest.mark.parametrize("tree,expected", GROUP_FILTERS, ids=[f"{t['field']}-{t['operator']}" for t, _ in GROUP_FILTERS])
def test_filter_on_group_computed_fields(data, tree, expected):
    client, ids = data
    body = lst(client, "groups", filter=json.dumps(resolve(tree, ids))).json
    assert [r["fields"]["title"] for r in body["records"]] == expected


def test_trashed_related_records_excluded_from_computed_values(fresh):
    client, ids = fresh
    assert client.delete(f"/api/tables/items/records/{ids['C']}").status_int == 204
    g = groups_by_title(client)["Group One"]["fields"]
    assert g == {"title": "Group One", "members": [ids["A"]], "member_count": 1, "qty_sum": 5,
                 "member_names": ["apple"]}
    body = lst(client, "groups", filter=json.dumps(leaf("member_count", "equals", 2))).json
    assert body["records"] == []
    assert client.delete(f"/api/tables/items/records/{ids['A']}").status_int == 204
    g = groups_by_title(client)["Group One"]["fields"]
    assert g == {"title": "Group One", "members": [], "member_count": 0, "qty_sum": 0, "member_names": []}


def test_lookup_through_many_to_one_follows_related_changes(fresh):
    client, ids = fresh
    client.patch_json(f"/api/tables/groups/records/{ids['G1']}", {"title": "Renamed"})
    body = lst(client, filter=json.dumps(leaf("group_title", "equals", "Renamed"))).json
    assert names(body) == [A, C]
    assert body["records"][0]["fields"]["group_title"] == "Renamed"


def test_basic_formula_count_and_rollup(client):
    p = client.post_json("/api/tables/projects/records", {"name": "P"}).json["id"]
    q = client.post_json("/api/tables/projects/records", {"name": "Q"}).json["id"]
    t1 = client.post_json("/api/tables/tasks/records", {"title": "a", "estimate": 2.5, "project": p}).json
    t2 = client.post_json("/api/tables/tasks/records",
                          {"title": "b", "estimate": 4, "done": True, "project": p}).json
    t3 = client.post_json("/api/tables/tasks/records", {"title": "c", "estimate": 1, "project": p}).json
    t4 = client.post_json("/api/tables/tasks/records", {"title": "d", "project": q}).json
    assert [t["fields"]["remaining"] for t in (t1, t2, t3, t4)] == [2.5, 0, 1, None]
    proj = client.get(f"/api/tables/projects/records/{p}").json["fields"]
    assert proj == {"name": "P", "budget": None, "tasks": [t1["id"], t2["id"], t3["id"]], "task_count": 3,
                    "open_estimate": 3.5}
    assert client.get(f"/api/tables/projects/records/{q}").json["fields"]["open_estimate"] == 0
    # filter and sort on computed fields
    titles = lambda b: [r["fields"]["title"] for r in b["records"]]  # noqa: E731
    assert titles(lst(client, "tasks", filterByFormula="{remaining} > 0.5").json) == ["a", "c"]
    assert titles(lst(client, "tasks", filter=json.dumps(leaf("remaining", "equals", 0))).json) == ["b"]
    assert titles(lst(client, "tasks", sort="-remaining").json) == ["a", "c", "b", "d"]
    assert titles(lst(client, "tasks", sort="remaining").json) == ["d", "b", "c", "a"]
    names_ = lambda b: [r["fields"]["name"] for r in b["records"]]  # noqa: E731
    assert names_(lst(client, "projects", sort="-open_estimate").json) == ["P", "Q"]
    assert names_(lst(client, "projects", filter=json.dumps(leaf("task_count", "equals", 1))).json) == ["Q"]
    assert names_(lst(client, "projects", filter=json.dumps(leaf("tasks", "contains", t4["id"]))).json) == ["Q"]
    # trashing a task removes it from every computed value
    client.delete(f"/api/tables/tasks/records/{t3['id']}")
    proj = client.get(f"/api/tables/projects/records/{p}").json["fields"]
    assert (proj["tasks"], proj["task_count"], proj["open_estimate"]) == ([t1["id"], t2["id"]], 2, 2.5)


def test_trailing_slash_ignored(data):
    client, _ = data
    assert names(client.get("/api/tables/items/records/").json) == ALL


def test_search_and_text_collation_fold_ascii_only(fresh):
    client, _ = fresh
    for n in ("\u00c9lan", "zebra", "Zulu"):
        client.post_json("/api/tables/items/records", {"name": n})
    assert names(lst(client, search="\u00e9LAN").json) == []
    assert names(lst(client, search="\u00c9LAN").json) == ["\u00c9lan"]
    body = lst(client, sort="-name", limit="3").json
    assert names(body) == ["\u00c9lan", "Zulu", "zebra"]
    body = lst(client, filter=json.dumps(leaf("name", "greaterThan", "ZZZ"))).json
    assert names(body) == ["\u00c9lan"]


def test_lookup_through_many_to_one_ignores_trashed_target(fresh):
    client, ids = fresh
    assert client.delete(f"/api/tables/groups/records/{ids['G2']}").status_int == 204
    rec = client.get(f"/api/tables/items/records/{ids['B']}").json
    assert rec["fields"]["group"] == ids["G2"]  # the stored link is kept
    assert rec["fields"]["group_title"] is None
    assert names(lst(client, filter=json.dumps(leaf("group_title", "isNull"))).json) == [B, D, E]


def test_empty_tests_on_a_computed_opaque_field(make_app):
    app = make_app({"name": "o", "tables": [
        {"id": 1, "name": "places", "fields": [{"id": 1, "name": "name", "type": "single-line-text"},
                                                {"id": 2, "name": "loc", "type": "geolocation"}]},
        {"id": 2, "name": "visits", "fields": [
            {"id": 1, "name": "title", "type": "single-line-text"},
            {"id": 2, "name": "place", "type": "relationship", "relatedTable": "places"},
            {"id": 3, "name": "where", "type": "lookup", "relationshipField": "place", "relatedField": "loc"}]}]})
    p1 = app.table("places").create({"name": "a", "loc": {"lat": 1, "lng": 2}})["id"]
    p2 = app.table("places").create({"name": "b"})["id"]
    app.table("visits").create({"title": "with loc", "place": p1})
    app.table("visits").create({"title": "no place", "place": p2})
    titles = lambda op: [r["fields"]["title"] for r in app.table("visits").list(
        filter={"field": "where", "operator": op})["records"]]
    assert titles("isNotEmpty") == ["with loc"]
    assert titles("isEmpty") == ["no place"]


@pytest.mark.parametrize("raw", ["estimate:1e400", "estimate:99999999999999999999"])
def test_shorthand_numbers_out_of_range_are_invalid(client, raw):
    r = client.get("/api/tables/tasks/records", {"filter": raw}, expect_errors=True)
    assert r.status_int == 400
    assert r.json["errors"] == [{"field": "filter", "message": "Invalid filter value for field 'estimate'"}]
