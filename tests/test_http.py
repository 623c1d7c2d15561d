"""HTTP conventions (API.md §1–§3, §4.3 Location): envelope, headers, routing, bodies, CORS."""

import io
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import webob
import webtest

import sovrium

STD_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
MAX_SAFE = 9007199254740991
JSON = "application/json"


###############################################################################
# Helpers
###############################################################################


def check_std_headers(resp):
    """The headers every /api response carries (API.md §1.4)."""
    for name, value in STD_HEADERS.items():
        assert resp.headers.get(name) == value, name
    assert resp.headers.get("X-Request-Id"), "X-Request-Id missing"
    schema_version = resp.headers.get("X-Sovrium-Schema-Version", "")
    assert re.fullmatch(r"[1-9][0-9]*", schema_version), schema_version


def check_envelope(resp, status, code, message, errors=None):
    """The exact error envelope of API.md §1.11."""
    assert resp.status_int == status, resp.body[:500]
    assert resp.content_type == JSON
    assert b"Traceback" not in resp.body
    expected = {"success": False, "message": message, "code": code}
    if code == "VALIDATION_ERROR":
        expected["errors"] = errors
    if status == 500:
        expected["requestId"] = resp.headers["X-Request-Id"]
    assert resp.json == expected


def allow_set(resp):
    return {m.strip() for m in resp.headers.get("Allow", "").split(",") if m.strip()}


class CountingStream:
    """A wsgi.input that records how many bytes the application consumed."""

    def __init__(self, data):
        self._buf = io.BytesIO(data)
        self.consumed = 0

    def read(self, size=-1):
        chunk = self._buf.read() if size is None or size < 0 else self._buf.read(size)
        self.consumed += len(chunk)
        return chunk

    def readline(self, size=-1):
        chunk = self._buf.readline(size)
        self.consumed += len(chunk)
        return chunk

    def readlines(self, hint=-1):
        return list(iter(self.readline, b""))

    def __iter__(self):
        return iter(self.readline, b"")


def raw_request(wsgi, method, path, stream, content_length=None, headers=None):
    """Call the WSGI app directly (no lint), with full control of wsgi.input and CONTENT_LENGTH."""
    req = webob.Request.blank(path, method=method)
    req.environ["wsgi.input"] = stream
    req.environ.pop("CONTENT_LENGTH", None)
    if content_length is None:
        # What a host passes for a chunked upload it has de-chunked itself: no CONTENT_LENGTH,
        # an input that ends at EOF (PEP 3333 wsgi.input_terminated).
        req.environ["wsgi.input_terminated"] = True
    else:
        req.environ["CONTENT_LENGTH"] = str(content_length)
    req.environ["CONTENT_TYPE"] = JSON
    for k, v in (headers or {}).items():
        req.headers[k] = v
    return req.get_response(wsgi)


def create_task(client, fields=None, url="/api/tables/tasks/records"):
    resp = client.post_json(url, fields or {"title": "t"}, status=201)
    return resp.json


def nested(depth):
    """A JSON object nested `depth` levels deep (the outermost object counts as level 1)."""
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


###############################################################################
# Every error source of API.md §1.11 reachable in no-auth mode
###############################################################################

NF_ROUTE = (404, "NOT_FOUND", "Route not found")
NF_RES = (404, "NOT_FOUND", "Resource not found")
BAD_JSON = (400, "VALIDATION_ERROR", "Request body is not valid JSON",
            [{"field": "body", "message": "Request body is not valid JSON"}])
NOT_OBJECT = (400, "VALIDATION_ERROR", "Request body must be a JSON object",
              [{"field": "body", "message": "Request body must be a JSON object"}])
BAD_CTYPE = (400, "VALIDATION_ERROR", "Content-Type must be application/json",
             [{"field": "body", "message": "Content-Type must be application/json"}])
NO_BODY = (400, "VALIDATION_ERROR", "Request body is required",
           [{"field": "body", "message": "Request body is required"}])
TOO_LARGE = (413, "PAYLOAD_TOO_LARGE", "Request body exceeds the maximum size of 1024 bytes")
M405 = (405, "METHOD_NOT_ALLOWED", "Method not allowed")
INTERNAL = (500, "INTERNAL_ERROR", "An unexpected error occurred")
VALFAIL = "One or more fields failed validation"


def qerr(name, message):
    return (400, "VALIDATION_ERROR", message, [{"field": name, "message": message}])


def case(id, method, url, expect, body=None, ctype=JSON, headers=None, allow=None, setup=()):
    """One row of the error walk: `expect` is (status, code, message[, errors])."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    return pytest.param(dict(method=method, url=url, expect=expect, body=body, ctype=ctype,
                             headers=headers or {}, allow=allow, setup=set(setup)), id=id)


RECS = "/api/tables/tasks/records"
BIG = '{"title": "' + "x" * 2000 + '"}'

ERROR_CASES = [
    # -- routing (§1.1, §1.6, §1.12 step 1, §12.1) ------------------------------------------
    case("route-unknown-api", "GET", "/api/nope", NF_ROUTE),
    case("route-api-root", "GET", "/api", NF_ROUTE),
    case("route-outside-api", "GET", "/nope", NF_ROUTE),
    case("route-site-root", "GET", "/", NF_ROUTE),
    case("route-case-sensitive", "GET", "/api/Tables", NF_ROUTE),
    case("route-case-sensitive-prefix", "GET", "/API/health", NF_ROUTE),
    case("route-deeper-than-any", "GET", "/api/tables/tasks/records/1/nope", NF_ROUTE),
    case("route-unknown-post", "POST", "/api/nope", NF_ROUTE, body="{}"),
    case("route-unknown-big-body", "POST", "/api/nope", NF_ROUTE, body=BIG, setup={"small"}),
    case("auth-off-get-session", "GET", "/api/auth/get-session", NF_ROUTE),
    case("auth-off-sign-in", "POST", "/api/auth/sign-in/email", NF_ROUTE,
         body='{"email": "a@b.co", "password": "secretsecret"}'),
    case("auth-off-sign-up-put", "PUT", "/api/auth/sign-up/email", NF_ROUTE, body="{}"),
    case("auth-off-openapi", "GET", "/api/auth/openapi.json", NF_ROUTE),
    case("schema-api-off-no-auth", "GET", "/api/admin/schema/status", NF_ROUTE,
         setup={"schema_env"}),
    case("mcp-off-no-auth-post", "POST", "/api/mcp", NF_ROUTE,
         body='{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}', setup={"schema_env"}),
    case("mcp-off-no-auth-get", "GET", "/api/mcp", NF_ROUTE),
    case("analytics-off-collect", "POST", "/api/analytics/collect", NF_ROUTE, body="{}"),
    case("analytics-off-script", "GET", "/api/analytics/script.js", NF_ROUTE),
    case("analytics-off-overview", "GET", "/api/analytics/overview", NF_ROUTE),
    # -- wrong method (§1.14) -------------------------------------------------------------
    case("405-post-health", "POST", "/api/health", M405, body="{}",
         allow={"GET", "HEAD", "OPTIONS"}),
    case("405-delete-tables", "DELETE", "/api/tables", M405, allow={"GET", "HEAD", "OPTIONS"}),
    case("405-put-table", "PUT", "/api/tables/tasks", M405, body="{}",
         allow={"GET", "HEAD", "OPTIONS"}),
    case("405-unknown-table-still-405", "POST", "/api/tables/nosuch", M405, body="{}",
         allow={"GET", "HEAD", "OPTIONS"}),
    case("405-put-records", "PUT", RECS, M405, body='{"title": "x"}',
         allow={"GET", "HEAD", "POST", "OPTIONS"}),
    case("405-put-record", "PUT", RECS + "/{task}", M405, body='{"title": "x"}',
         allow={"GET", "HEAD", "PATCH", "DELETE", "OPTIONS"}, setup={"seed"}),
    case("405-post-permissions", "POST", "/api/tables/tasks/permissions", M405, body="{}",
         allow={"GET", "HEAD", "OPTIONS"}),
    # -- malformed JSON (§1.2) ------------------------------------------------------------
    case("json-truncated", "POST", RECS, BAD_JSON, body='{"title": "x"'),
    case("json-garbage", "POST", RECS, BAD_JSON, body="title=x"),
    case("json-nan", "POST", RECS, BAD_JSON, body='{"title": "x", "estimate": NaN}'),
    case("json-infinity", "POST", RECS, BAD_JSON, body='{"title": "x", "estimate": Infinity}'),
    case("json-minus-infinity", "POST", RECS, BAD_JSON,
         body='{"title": "x", "estimate": -Infinity}'),
    case("json-1e400", "POST", RECS, BAD_JSON, body='{"title": "x", "estimate": 1e400}'),
    case("json-minus-1e400", "POST", RECS, BAD_JSON, body='{"title": "x", "estimate": -1e400}'),
    case("json-4301-digit-int", "POST", RECS, BAD_JSON,
         body='{"title": "x", "estimate": ' + "9" * 4301 + "}"),
    case("json-lone-surrogate", "POST", RECS, BAD_JSON, body='{"title": "\\ud800"}'),
    case("json-lone-low-surrogate-key", "POST", RECS, BAD_JSON, body='{"\\udc00": "x"}'),
    case("json-nesting-65", "POST", RECS, BAD_JSON, body=nested(65)),
    case("json-invalid-utf8", "POST", RECS, BAD_JSON, body=b'{"title": "\xff\xfe"}'),
    case("json-malformed-patch", "PATCH", RECS + "/{task}", BAD_JSON, body="{", setup={"seed"}),
    # nesting 64 is still JSON: it fails later, on the record's own rules (boundary of §1.2)
    case("json-nesting-64-is-json", "POST", RECS,
         (400, "VALIDATION_ERROR", VALFAIL,
          [{"field": "notes", "message": "Field 'notes' must be a string"}]),
         body='{"title": "x", "notes": ' + "[" * 63 + "]" * 63 + "}"),
    # -- non-object body, content type, missing body (§1.2) -------------------------------
    case("body-array", "POST", RECS, NOT_OBJECT, body='[{"title": "x"}]'),
    case("body-string", "POST", RECS, NOT_OBJECT, body='"title"'),
    case("body-number", "POST", RECS, NOT_OBJECT, body="1"),
    case("body-null", "POST", RECS, NOT_OBJECT, body="null"),
    case("body-array-patch", "PATCH", RECS + "/{task}", NOT_OBJECT, body="[]", setup={"seed"}),
    case("ctype-text-plain", "POST", RECS, BAD_CTYPE, body='{"title": "x"}', ctype="text/plain"),
    case("ctype-form", "POST", RECS, BAD_CTYPE, body="title=x",
         ctype="application/x-www-form-urlencoded"),
    case("ctype-multipart", "PATCH", RECS + "/{task}", BAD_CTYPE, body='{"title": "x"}',
         ctype="multipart/form-data; boundary=xyz", setup={"seed"}),
    # -- body size (§1.2, §1.12 step 2: before table lookup, content type and parsing) -----
    case("413-declared", "POST", RECS, TOO_LARGE, body=BIG, setup={"small"}),
    case("413-declared-1025", "POST", RECS, TOO_LARGE,
         body='{"title": "' + "x" * (1025 - 13) + '"}', setup={"small"}),
    case("413-before-content-type", "POST", RECS, TOO_LARGE, body="x" * 2000,
         ctype="text/plain", setup={"small"}),
    case("413-before-table-lookup", "POST", "/api/tables/nosuch/records", TOO_LARGE, body=BIG,
         setup={"small"}),
    case("413-patch", "PATCH", RECS + "/{task}", TOO_LARGE, body=BIG, setup={"small", "seed"}),
    case("413-declared-stream", "POST", RECS, TOO_LARGE, body=BIG, setup={"small", "declared"}),
    case("413-chunked-stream", "POST", RECS, TOO_LARGE, body=BIG * 50,
         setup={"small", "chunked"}),
    # -- invalid integer ids in paths (§1.14) → like a missing resource ------------------
    case("id-leading-zero", "GET", RECS + "/0{task}", NF_RES, setup={"seed"}),
    case("id-plus-sign", "GET", RECS + "/+{task}", NF_RES, setup={"seed"}),
    case("id-exponent", "GET", RECS + "/{task}e0", NF_RES, setup={"seed"}),
    case("id-1e3", "GET", RECS + "/1e3", NF_RES),
    case("id-decimal", "GET", RECS + "/{task}.0", NF_RES, setup={"seed"}),
    case("id-17-digits", "GET", RECS + "/12345678901234567", NF_RES),
    case("id-17-digits-padded", "GET", RECS + "/0000000000000000{task}", NF_RES,
         setup={"seed"}),
    case("id-16-digits-missing", "GET", RECS + "/9999999999999999", NF_RES),
    case("id-zero", "GET", RECS + "/0", NF_RES),
    case("id-negative", "GET", RECS + "/-{task}", NF_RES, setup={"seed"}),
    case("id-word", "GET", RECS + "/abc", NF_RES),
    case("id-leading-zero-patch", "PATCH", RECS + "/0{task}", NF_RES, body='{"title": "y"}',
         setup={"seed"}),
    case("id-leading-zero-delete", "DELETE", RECS + "/0{task}", NF_RES, setup={"seed"}),
    case("id-missing-record", "GET", RECS + "/999999", NF_RES),
    case("table-unknown-name", "GET", "/api/tables/nosuch", NF_RES),
    case("table-unknown-id", "GET", "/api/tables/99", NF_RES),
    case("table-id-leading-zero", "GET", "/api/tables/02", NF_RES),
    case("table-id-plus", "GET", "/api/tables/+2", NF_RES),
    case("table-id-exponent", "GET", "/api/tables/2e0", NF_RES),
    case("table-unknown-records", "GET", "/api/tables/nosuch/records", NF_RES),
    case("table-unknown-permissions", "GET", "/api/tables/nosuch/permissions", NF_RES),
    case("table-unknown-create", "POST", "/api/tables/nosuch/records", NF_RES,
         body='{"title": "x"}'),
    case("table-name-case", "GET", "/api/tables/Tasks", NF_RES),
    # -- query parameters (§1.3, §1.9, §17.21) ------------------------------------------
    case("q-limit-zero", "GET", RECS + "?limit=0",
         qerr("limit", "Parameter 'limit' must be between 1 and 1000")),
    case("q-limit-too-big", "GET", RECS + "?limit=1001",
         qerr("limit", "Parameter 'limit' must be between 1 and 1000")),
    case("q-limit-negative", "GET", RECS + "?limit=-5",
         qerr("limit", "Parameter 'limit' must be between 1 and 1000")),
    case("q-limit-17-digits", "GET", RECS + "?limit=12345678901234567",
         qerr("limit", "Parameter 'limit' must be between 1 and 1000")),
    case("q-limit-word", "GET", RECS + "?limit=ten",
         qerr("limit", "Parameter 'limit' must be an integer")),
    case("q-limit-fraction", "GET", RECS + "?limit=1.5",
         qerr("limit", "Parameter 'limit' must be an integer")),
    case("q-limit-plus", "GET", RECS + "?limit=%2B5",
         qerr("limit", "Parameter 'limit' must be an integer")),
    case("q-limit-space", "GET", RECS + "?limit=%205",
         qerr("limit", "Parameter 'limit' must be an integer")),
    case("q-limit-repeated-last-wins", "GET", RECS + "?limit=5&limit=ten",
         qerr("limit", "Parameter 'limit' must be an integer")),
    case("q-offset-negative", "GET", RECS + "?offset=-1",
         qerr("offset", "Parameter 'offset' must be between 0 and 9007199254740991")),
    case("q-offset-too-big", "GET", RECS + "?offset=9007199254740992",
         qerr("offset", "Parameter 'offset' must be between 0 and 9007199254740991")),
    case("q-page-zero", "GET", RECS + "?page=0",
         qerr("page", "Parameter 'page' must be between 1 and 900719925474100")),
    case("q-page-zero-limit-1000", "GET", RECS + "?page=0&limit=1000",
         qerr("page", "Parameter 'page' must be between 1 and 9007199254741")),
    case("q-page-past-max", "GET", RECS + "?page=9007199254742&limit=1000",
         qerr("page", "Parameter 'page' must be between 1 and 9007199254741")),
    case("q-page-word", "GET", RECS + "?page=two",
         qerr("page", "Parameter 'page' must be an integer")),
    case("q-page-and-offset", "GET", RECS + "?page=2&offset=0",
         qerr("page", "Use either page or offset, not both")),
    case("q-include-deleted-bad", "GET", RECS + "?includeDeleted=yes",
         qerr("includeDeleted", "Parameter 'includeDeleted' must be a boolean")),
    case("405-get-batch", "GET", RECS + "/batch", M405,
         allow={"POST", "PATCH", "DELETE", "OPTIONS"}),
    case("405-patch-batch-restore", "PATCH", RECS + "/batch/restore", M405, body="{}",
         allow={"POST", "OPTIONS"}),
    case("405-get-upsert", "GET", RECS + "/upsert", M405, allow={"POST", "OPTIONS"}),
    case("405-get-restore", "GET", RECS + "/{task}/restore", M405, allow={"POST", "OPTIONS"},
         setup={"seed"}),
    case("405-delete-activity", "DELETE", "/api/activity", M405,
         allow={"GET", "HEAD", "OPTIONS"}),
    case("json-malformed-batch", "POST", RECS + "/batch", BAD_JSON, body="[{"),
    case("body-missing-batch", "POST", RECS + "/batch", NO_BODY, body=b""),
    case("body-missing-upsert", "POST", RECS + "/upsert", NO_BODY, body=b""),
    case("413-batch-items", "POST", RECS + "/batch",
         (413, "PAYLOAD_TOO_LARGE", "Batch size exceeds maximum of 2 records"),
         body='{"records": [{"title": "a"}, {"title": "b"}, {"title": "c"}]}', setup={"small"}),
    case("view-unknown", "GET", "/api/tables/tasks/views/nope", NF_RES),
    case("activity-non-integer", "GET", "/api/activity/007", NF_RES),
    case("q-trash-limit", "GET", "/api/tables/tasks/trash?limit=0",
         qerr("limit", "Parameter 'limit' must be between 1 and 1000")),
    case("q-activity-offset", "GET", "/api/activity?offset=-1",
         qerr("offset", "Parameter 'offset' must be between 0 and 9007199254740991")),
    case("q-history-limit", "GET", RECS + "/{task}/history?limit=abc",
         qerr("limit", "Parameter 'limit' must be an integer"), setup={"seed"}),
    case("q-skip-total-bad", "GET", RECS + "?skipTotal=2",
         qerr("skipTotal", "Parameter 'skipTotal' must be a boolean")),
    case("q-get-include-deleted-bad", "GET", RECS + "/{task}?includeDeleted=on",
         qerr("includeDeleted", "Parameter 'includeDeleted' must be a boolean"), setup={"seed"}),
    case("q-delete-permanent-bad", "DELETE", RECS + "/{task}?permanent=sure",
         qerr("permanent", "Parameter 'permanent' must be a boolean"), setup={"seed"}),
    # -- a few endpoint-level sources, for the envelope ----------------------------------
    case("record-unknown-field", "POST", RECS,
         (400, "VALIDATION_ERROR", VALFAIL, [{"field": "nope", "message": "Unknown field 'nope'"}]),
         body='{"title": "x", "nope": 1}'),
    case("record-bad-updated-at", "PATCH", RECS + "/{task}",
         qerr("updatedAt", "updatedAt must be an ISO 8601 date-time"),
         body='{"updatedAt": "yesterday", "title": "y"}', setup={"seed"}),
    case("409-stale-updated-at", "PATCH", RECS + "/{task}",
         (409, "CONFLICT", "Record has been modified since the supplied updatedAt"),
         body='{"updatedAt": "2000-01-01T00:00:00.000Z", "title": "y"}', setup={"seed"}),
    case("409-restrict", "DELETE", "/api/tables/projects/records/{project}",
         (409, "CONFLICT", "Record cannot be deleted because other records reference it"),
         setup={"seed"}),
    # -- crashes (§1.11 500, OPERATIONS.md §12 "HTTP crash") ------------------------------
    case("500-service-crash-echoed-id", "GET", RECS, INTERNAL,
         headers={"X-Request-Id": "crash-test.1"}, setup={"crash_patch"}),
    case("500-service-crash-generated-id", "GET", RECS, INTERNAL, setup={"crash_patch"}),
    case("500-clock-crash", "POST", RECS, INTERNAL, body='{"title": "x"}',
         headers={"X-Request-Id": "clock_crash"}, setup={"crash_clock"}),
]


class _Boom(RuntimeError):
    pass


SECRET = "secret-internal-detail-42"


class _Clock:
    """A clock that raises once `armed` is set (OPERATIONS.md §11.1 `clock=`)."""

    def __init__(self):
        self.armed = False

    def __call__(self):
        if self.armed:
            raise _Boom(SECRET)
        return datetime.now(timezone.utc)


@pytest.mark.parametrize("c", ERROR_CASES)
def test_error_envelope(c, make_app, config, monkeypatch):
    setup = c["setup"]
    env = {"SCHEMA_EDIT_API_ENABLED": "true"} if "schema_env" in setup else None
    if "small" in setup:
        config["settings"] = {"maxBodyBytes": 1024, "batchLimit": 2}
    clock = _Clock()
    app = make_app(config, env=env, clock=clock)
    client = webtest.TestApp(app.wsgi)

    url, body = c["url"], c["body"]
    if "seed" in setup:
        project = client.post_json("/api/tables/projects/records", {"name": "P"}, status=201).json
        task = create_task(client, {"title": "T", "project": project["id"]})
        for key, value in (("{task}", task["id"]), ("{project}", project["id"])):
            url = url.replace(key, str(value))
            body = body.replace(key.encode(), str(value).encode()) if body else body

    if "crash_patch" in setup:
        if not hasattr(sovrium, "records_list"):
            pytest.fail("sovrium.records_list does not exist: no service hook to inject a crash")

        def boom(*args, **kwargs):
            raise _Boom(SECRET)

        monkeypatch.setattr(sovrium, "records_list", boom)
    if "crash_clock" in setup:
        clock.armed = True

    headers = dict(c["headers"])
    if "declared" in setup or "chunked" in setup:
        stream = CountingStream(body)
        declared = len(body) if "declared" in setup else None
        resp = raw_request(app.wsgi, c["method"], url, stream, declared, headers)
        if declared is not None:
            assert stream.consumed == 0, "a declared oversized body must not be read at all"
        else:
            assert stream.consumed <= 1025, f"read {stream.consumed} bytes past the 1024 limit"
    else:
        if body is not None and c["ctype"]:
            headers["Content-Type"] = c["ctype"]
        resp = client.request(url, method=c["method"], body=body, headers=headers,
                              expect_errors=True)

    check_envelope(resp, *c["expect"])
    if url.startswith("/api"):
        check_std_headers(resp)
    if c["allow"] is not None:
        assert allow_set(resp) == c["allow"]
    if resp.status_int == 500:
        assert SECRET.encode() not in resp.body
        assert b"_Boom" not in resp.body and b"RuntimeError" not in resp.body
        if "X-Request-Id" in headers:
            assert resp.headers["X-Request-Id"] == headers["X-Request-Id"]
        else:
            assert uuid.UUID(resp.headers["X-Request-Id"]).version == 4


###############################################################################
# Headers, request ids, HEAD, OPTIONS, trailing slash, query parameters
###############################################################################


@pytest.mark.parametrize("method,url,status", [
    ("GET", "/api/health", 200),
    ("GET", "/api/tables", 200),
    ("GET", "/api/tables/tasks/records", 200),
    ("GET", "/api/nope", 404),
    ("POST", "/api/health", 405),
    ("GET", "/api/tables/tasks/records?limit=0", 400),
    ("OPTIONS", "/api/tables", 204),
    ("HEAD", "/api/health", 200),
])
def test_standard_headers_on_every_api_response(client, method, url, status):
    resp = client.request(url, method=method, expect_errors=True)
    assert resp.status_int == status
    check_std_headers(resp)


def test_schema_version_header_matches_health(client):
    resp = client.get("/api/health")
    assert resp.headers["X-Sovrium-Schema-Version"] == str(resp.json["schemaVersion"])
    other = client.get("/api/nope", expect_errors=True)
    assert other.headers["X-Sovrium-Schema-Version"] == str(resp.json["schemaVersion"])


def test_request_id_generated_as_uuid4(client):
    ids = [client.get("/api/health").headers["X-Request-Id"] for _ in range(2)]
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert parsed.version == 4 and str(parsed) == rid
    assert ids[0] != ids[1]


@pytest.mark.parametrize("sent", ["abc", "A.b_c-9", "x" * 128, "0", "req-2026.03.01_17"])
def test_request_id_echoed_when_valid(client, sent):
    resp = client.get("/api/health", headers={"X-Request-Id": sent})
    assert resp.headers["X-Request-Id"] == sent
    err = client.get("/api/nope", headers={"X-Request-Id": sent}, expect_errors=True)
    assert err.headers["X-Request-Id"] == sent


@pytest.mark.parametrize("sent", ["x" * 129, "has space", "a/b", "semi;colon", "é", "a:b", "{x}"])
def test_request_id_regenerated_when_invalid(client, sent):
    resp = client.get("/api/health", headers={"X-Request-Id": sent.encode("utf-8").decode("latin-1")})
    rid = resp.headers["X-Request-Id"]
    assert rid != sent
    assert uuid.UUID(rid).version == 4


@pytest.mark.parametrize("url,status", [
    ("/api/health", 200),
    ("/api/tables/tasks/records/batch", 405),
    ("/api/tables", 200),
    ("/api/tables/tasks", 200),
    ("/api/tables/tasks/records", 200),
    ("/api/tables/tasks/permissions", 200),
    ("/api/nope", 404),
    ("/api/tables/nosuch", 404),
])
def test_head_like_get_without_body(client, url, status):
    get = client.get(url, expect_errors=True)
    head = client.head(url, expect_errors=True)
    assert get.status_int == head.status_int == status
    assert head.body == b""
    assert head.content_type == get.content_type
    check_std_headers(head)
    if status == 405:
        assert allow_set(head) == allow_set(get)


@pytest.mark.parametrize("url", [
    "/api/health", "/api/tables", "/api/tables/tasks/records", "/api/tables/tasks/records/batch",
    "/api/nope", "/api/nope/deeper/still", "/api/tables/nosuch/records/007",
    "/api/auth/sign-in/email", "/api/admin/schema/status", "/api/mcp",
    "/api/analytics/collect", "/api",
])
def test_options_anywhere_under_api_is_204(client, url):
    resp = client.options(url, expect_errors=True)
    assert resp.status_int == 204
    assert resp.body == b""
    check_std_headers(resp)


def test_trailing_slash_ignored(client):
    assert client.get("/api/health/").json["status"] == "ok"
    assert client.get("/api/tables/").json == client.get("/api/tables").json
    assert client.get("/api/tables/tasks/").json == client.get("/api/tables/tasks").json
    rec = client.post_json("/api/tables/tasks/records/", {"title": "slash"}, status=201).json
    assert client.get(f"/api/tables/tasks/records/{rec['id']}/").json == rec
    listed = client.get("/api/tables/tasks/records/").json
    assert [r["id"] for r in listed["records"]] == [rec["id"]]
    resp = client.post_json("/api/health/", {}, expect_errors=True)
    assert resp.status_int == 405


def test_query_param_repeated_uses_last_and_empty_is_absent(client):
    for i in range(3):
        create_task(client, {"title": f"t{i}"})
    resp = client.get("/api/tables/tasks/records?limit=ten&limit=2")
    assert resp.json["pagination"]["limit"] == 2
    assert len(resp.json["records"]) == 2
    resp = client.get("/api/tables/tasks/records?limit=&offset=&page=&search=&sort=&filter=")
    assert resp.json["pagination"] == {"page": 1, "limit": 10, "offset": 0, "total": 3,
                                       "totalPages": 1, "hasNextPage": False,
                                       "hasPreviousPage": False}
    # page and offset both present, but offset empty → only page counts
    resp = client.get("/api/tables/tasks/records?page=2&limit=2&offset=")
    assert resp.json["pagination"]["offset"] == 2
    # booleans are case-insensitive and accept 1/0; unknown parameters are ignored
    for value in ("TRUE", "False", "1", "0", "tRuE"):
        client.get(f"/api/tables/tasks/records?skipTotal={value}&includeDeleted={value}")
    client.get("/api/tables/tasks/records?whatever=1&x=%ff")


def test_integer_parameter_boundaries(client):
    create_task(client)
    client.get("/api/tables/tasks/records?limit=1000")
    client.get("/api/tables/tasks/records?limit=1")
    resp = client.get(f"/api/tables/tasks/records?offset={MAX_SAFE}")
    assert resp.json["records"] == []
    assert resp.json["pagination"]["hasPreviousPage"] is True
    resp = client.get("/api/tables/tasks/records?page=9007199254741&limit=1000")
    assert resp.json["records"] == []


###############################################################################
# Bodies (§1.2) — accepted forms
###############################################################################


@pytest.mark.parametrize("ctype", [None, "application/json", "application/json; charset=utf-8",
                                   "application/merge-patch+json", "APPLICATION/JSON"])
def test_json_content_types_accepted(client, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    resp = client.request("/api/tables/tasks/records", method="POST",
                          body=b'{"title": "ok"}', headers=headers, expect_errors=True)
    assert resp.status_int == 201, resp.body
    assert resp.json["fields"]["title"] == "ok"


def test_duplicate_keys_last_wins(client):
    resp = client.request("/api/tables/tasks/records", method="POST",
                          body=b'{"title": "first", "title": "second"}',
                          headers={"Content-Type": JSON})
    assert resp.status_int == 201
    assert resp.json["fields"]["title"] == "second"


def test_bodies_ignored_on_get_and_delete(client):
    rec = create_task(client)
    resp = client.request("/api/tables", method="GET", body=b"not json",
                          headers={"Content-Type": "text/plain"})
    assert resp.status_int == 200
    resp = client.request(f"/api/tables/tasks/records/{rec['id']}", method="DELETE",
                          body=b"[not json", headers={"Content-Type": JSON})
    assert resp.status_int == 204
    assert resp.body == b""


def test_body_exactly_at_limit_accepted(make_app, config):
    config["settings"] = {"maxBodyBytes": 1024}
    client = webtest.TestApp(make_app(config).wsgi)
    head, tail = '{"title": "x", "notes": "', '"}'
    body = (head + "n" * (1024 - len(head) - len(tail)) + tail).encode()
    assert len(body) == 1024
    resp = client.request("/api/tables/tasks/records", method="POST", body=body,
                          headers={"Content-Type": JSON}, expect_errors=True)
    assert resp.status_int == 201, resp.body


def test_chunked_body_within_limit_is_read(make_app, config):
    config["settings"] = {"maxBodyBytes": 1024}
    app = make_app(config)
    stream = CountingStream(b'{"title": "chunked"}')
    resp = raw_request(app.wsgi, "POST", "/api/tables/tasks/records", stream)
    assert resp.status_int == 201, resp.body
    assert resp.json["fields"]["title"] == "chunked"


def test_default_body_limit_message(client):
    resp = client.request("/api/tables/tasks/records", method="POST",
                          body=b" " * (10485760 + 1), headers={"Content-Type": JSON},
                          expect_errors=True)
    check_envelope(resp, 413, "PAYLOAD_TOO_LARGE",
                   "Request body exceeds the maximum size of 10485760 bytes")


###############################################################################
# Location (§4.3)
###############################################################################


@pytest.mark.parametrize("table", ["tasks", "2"])
def test_create_location_header(client, table):
    resp = client.post_json(f"/api/tables/{table}/records", {"title": "loc"}, status=201)
    assert resp.headers["Location"] == f"/api/tables/2/records/{resp.json['id']}"
    assert client.get(resp.headers["Location"]).json == resp.json


###############################################################################
# Health (§2)
###############################################################################


def test_health_body(make_app):
    fixed = datetime(2026, 3, 1, 9, 15, 2, 417123, tzinfo=timezone.utc)
    app = make_app(clock=lambda: fixed)
    resp = webtest.TestApp(app.wsgi).get("/api/health")
    assert resp.content_type == JSON
    body = resp.json
    assert set(body) == {"status", "timestamp", "app", "server", "database", "schemaVersion"}
    assert body["status"] == "ok"
    assert body["timestamp"] == "2026-03-01T09:15:02.417Z"
    assert body["app"] == {"name": "test-app", "version": "1.0.0"}
    assert body["server"] == {"name": "sovrium", "version": sovrium.__version__}
    assert body["database"] == "ok"
    assert type(body["schemaVersion"]) is int and body["schemaVersion"] >= 1


def test_health_version_null_and_system_clock(make_app, config):
    del config["version"]
    body = webtest.TestApp(make_app(config).wsgi).get("/api/health").json
    assert body["app"] == {"name": "test-app", "version": None}
    assert TS_RE.match(body["timestamp"])
    stamp = datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc)
    assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=1)


###############################################################################
# Tables (§3)
###############################################################################

ALL_TRUE = {"read": True, "comment": True, "create": True, "update": True, "delete": True,
            "restore": True, "permanentDelete": True}
COMMON_FIELD_KEYS = {"id", "name", "type", "description", "required", "unique", "indexed",
                     "readOnly", "default"}


def test_tables_list(client):
    assert client.get("/api/tables").json == {"tables": [
        {"id": 1, "name": "projects", "description": None, "primaryField": "name"},
        {"id": 2, "name": "tasks", "description": None, "primaryField": "title"},
    ]}


@pytest.mark.parametrize("ref", ["tasks", "2"])
def test_table_detail(client, ref):
    body = client.get(f"/api/tables/{ref}").json
    assert set(body) == {"id", "name", "description", "primaryField", "fields", "views",
                         "permissions"}
    assert (body["id"], body["name"], body["description"], body["primaryField"]) == \
        (2, "tasks", None, "title")
    assert body["permissions"] == ALL_TRUE
    fields = {f["name"]: f for f in body["fields"]}
    assert [f["name"] for f in body["fields"]] == [
        "title", "status", "estimate", "due", "done", "project", "notes", "remaining", "ref",
        "tags", "email"]
    assert [f["id"] for f in body["fields"]] == list(range(1, 12))
    for f in body["fields"]:
        assert COMMON_FIELD_KEYS <= set(f), f["name"]
        assert f["readOnly"] is (f["name"] in ("remaining", "ref")), f["name"]
        assert "permissions" not in f
    assert fields["title"] == {
        "id": 1, "name": "title", "type": "single-line-text", "description": None,
        "required": True, "unique": False, "indexed": False, "readOnly": False,
        "default": None, "maxLength": 200}
    assert fields["status"] == {
        "id": 2, "name": "status", "type": "single-select", "description": None,
        "required": False, "unique": False, "indexed": False, "readOnly": False,
        "default": "todo",
        "options": [{"value": "todo", "label": "todo", "color": None},
                    {"value": "doing", "label": "doing", "color": None},
                    {"value": "done", "label": "done", "color": None}]}
    assert fields["estimate"] == {
        "id": 3, "name": "estimate", "type": "decimal", "description": None,
        "required": False, "unique": False, "indexed": False, "readOnly": False,
        "default": None, "precision": None, "min": 0, "max": None}
    assert fields["due"]["indexed"] is True
    assert fields["done"]["default"] is False  # checkbox option `default`, default false
    assert fields["notes"]["maxLength"] == 100000
    assert fields["email"]["unique"] is True
    assert fields["tags"]["options"][0] == {"value": "red", "label": "red", "color": None}
    assert fields["tags"]["maxSelections"] is None
    assert fields["project"]["relatedTable"] == "projects"
    assert fields["project"]["relationType"] == "many-to-one"
    assert fields["project"]["onDelete"] == "restrict"
    assert fields["project"]["relatedField"] is None
    assert fields["remaining"]["formula"] == "IF({done}, 0, {estimate})"
    assert fields["ref"]["startFrom"] == 1
    assert body["views"] == [{
        "id": "open", "name": "Open tasks", "isDefault": True,
        "filters": {"and": [{"field": "done", "operator": "isFalse"}]},
        "sorts": [{"field": "due", "direction": "asc"}], "fields": None,
        "groupBy": {"field": "status", "direction": "asc"}}]


def test_table_detail_projects(client):
    body = client.get("/api/tables/1").json
    assert body == client.get("/api/tables/projects").json
    assert body["primaryField"] == "name"
    assert body["views"] == []
    assert body["permissions"] == ALL_TRUE
    ro = {f["name"]: f["readOnly"] for f in body["fields"]}
    assert ro == {"name": False, "budget": False, "tasks": True, "task_count": True,
                  "open_estimate": True}
    budget = next(f for f in body["fields"] if f["name"] == "budget")
    assert budget["currency"] == "EUR" and budget["precision"] == 2 and budget["min"] == 0


def test_table_permissions_no_auth(client):
    body = client.get("/api/tables/tasks/permissions").json
    writable = {"title", "status", "estimate", "due", "done", "project", "notes", "tags",
                "email"}
    assert body == {
        "table": ALL_TRUE,
        "fields": {name: {"read": True, "write": name in writable} for name in [
            "title", "status", "estimate", "due", "done", "project", "notes", "remaining", "ref",
            "tags", "email"]},
        "rowLevel": {"read": False, "create": False, "update": False, "delete": False},
    }
    body = client.get("/api/tables/1/permissions").json
    assert body["fields"] == {"name": {"read": True, "write": True},
                              "budget": {"read": True, "write": True},
                              "tasks": {"read": True, "write": False},
                              "task_count": {"read": True, "write": False},
                              "open_estimate": {"read": True, "write": False}}


###############################################################################
# CORS (§1.7)
###############################################################################

PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type"}
EXPOSE = ("X-Request-Id, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, "
          "set-auth-token")


def _tokens(value):
    return [t.strip() for t in (value or "").split(",") if t.strip()]


def check_cors(resp, origin, preflight):
    assert resp.headers.get("Access-Control-Allow-Origin") == origin
    assert resp.headers.get("Access-Control-Allow-Credentials") == "true"
    assert "Origin" in _tokens(resp.headers.get("Vary"))
    assert _tokens(resp.headers.get("Access-Control-Expose-Headers")) == _tokens(EXPOSE)
    if preflight:
        assert _tokens(resp.headers.get("Access-Control-Allow-Methods")) == \
            ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        assert _tokens(resp.headers.get("Access-Control-Allow-Headers")) == \
            ["Content-Type", "Authorization", "X-Request-Id"]
        assert resp.headers.get("Access-Control-Max-Age") == "600"


def check_no_cors(resp):
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


def test_cors_own_host_origin_trusted_without_base_url(client):
    origin = "http://localhost:3000"
    headers = {"Host": "localhost:3000", "Origin": origin}
    resp = client.options("/api/tables/tasks/records", headers={**headers, **PREFLIGHT})
    assert resp.status_int == 204
    check_cors(resp, origin, preflight=True)
    resp = client.get("/api/tables", headers=headers)
    check_cors(resp, origin, preflight=False)
    resp = client.get("/api/nope", headers=headers, expect_errors=True)
    assert resp.status_int == 404
    check_cors(resp, origin, preflight=False)


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "https://localhost:3000",
                                    "http://localhost:3001"])
def test_cors_untrusted_origin(client, origin):
    headers = {"Host": "localhost:3000", "Origin": origin}
    resp = client.options("/api/tables/tasks/records", headers={**headers, **PREFLIGHT})
    assert resp.status_int == 204
    check_no_cors(resp)
    resp = client.get("/api/tables", headers=headers)
    assert resp.status_int == 200
    check_no_cors(resp)


def test_cors_settings_trusted_origins(make_app, config):
    config["settings"] = {"trustedOrigins": ["http://app.example"]}
    client = webtest.TestApp(make_app(config).wsgi)
    resp = client.options("/api/health", headers={"Origin": "http://app.example", **PREFLIGHT})
    assert resp.status_int == 204
    check_cors(resp, "http://app.example", preflight=True)


def test_cors_base_url_replaces_host_origin(make_app):
    client = webtest.TestApp(make_app(env={"BASE_URL": "https://sov.example"}).wsgi)
    resp = client.options("/api/health", headers={"Host": "localhost:3000",
                                                  "Origin": "http://localhost:3000", **PREFLIGHT})
    assert resp.status_int == 204
    check_no_cors(resp)
    resp = client.options("/api/health", headers={"Host": "localhost:3000",
                                                  "Origin": "https://sov.example", **PREFLIGHT})
    assert resp.status_int == 204
    check_cors(resp, "https://sov.example", preflight=True)


def test_no_cors_without_origin(client):
    check_no_cors(client.get("/api/health"))
    resp = client.options("/api/health")
    assert resp.status_int == 204
    check_no_cors(resp)


@pytest.mark.parametrize("path", ["/api/tables/tasks/records/1%0A", "/api/tables/2%0A/records"])
def test_ids_with_a_trailing_newline_name_nothing(client, path):
    client.post_json("/api/tables/tasks/records", {"title": "x"})
    r = client.get(path, expect_errors=True)
    assert r.status_int == 404 and r.json["code"] == "NOT_FOUND"
