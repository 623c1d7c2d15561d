"""Real-process tests of `sovrium start`: OPERATIONS.md §4 (startup, banner, warnings), §5 (shutdown),
§6 (logging), §7.1 (lease, busy budget), §7.4 (application_id / user_version), §12 (bad input) and
API.md §1.11 (error envelope).

Every server runs as `python -m sovrium start …` with stderr sent to a file (never a pipe, so a busy
server cannot block on a full pipe) and only ever reached through 127.0.0.1.
"""

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_ENV = {"SOVRIUM_ARGON2_PROFILE": "test", "SOVRIUM_RATE_LIMITS": "off"}
SOVRIUM_VARS = (
    "HOST", "PORT", "DATABASE_PATH", "DATABASE_URL", "BASE_URL", "AUTH_SECRET", "AUTH_ADMIN_EMAIL",
    "AUTH_ADMIN_PASSWORD", "AUTH_ADMIN_NAME", "TRUST_PROXY", "SMTP_URL", "SMTP_FROM",
    "SCHEMA_EDIT_API_ENABLED", "LOG_LEVEL", "LOG_FORMAT", "SOVRIUM_ARGON2_PROFILE", "SOVRIUM_THREADS",
    "SOVRIUM_RATE_LIMITS",
)
APPLICATION_ID = 1397708370  # 0x534F5652, "SOVR" (§7.4)


def _schema_version():
    text = (ROOT / "schema.sql").read_text()
    found = re.findall(r"PRAGMA\s+user_version\s*=\s*(\d+)", text, re.I)
    assert found, "schema.sql must set PRAGMA user_version"
    return int(found[-1])


SCHEMA_VERSION = _schema_version()

APP_YAML = """\
name: srv-app
version: "1.0.0"
tables:
  - id: 1
    name: notes
    fields:
      - id: 1
        name: title
        type: single-line-text
        required: true
      - id: 2
        name: size
        type: integer
"""

AUTH_APP_YAML = APP_YAML + """\
auth:
  strategies:
    - type: emailAndPassword
"""

TS = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z"
NO_AUTH_WARNING = [
    "warning: AUTHENTICATION IS DISABLED AND THE SERVER LISTENS ON {host}:{port}.",
    "warning: ANYONE WHO CAN REACH THIS ADDRESS CAN READ, CHANGE AND DELETE ALL DATA.",
    "warning: CONFIGURE 'auth' OR BIND TO 127.0.0.1.",
]


# ------------------------------------------------------------------------------------------ helpers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in SOVRIUM_VARS and k != "PYTHONPATH"}
    env.update(TEST_ENV)
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def lines(text):
    return [line.rstrip("\r") for line in text.splitlines()]


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Resp:
    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = headers
        self.raw = raw
        try:
            self.json = json.loads(raw) if raw else None
        except ValueError:
            self.json = None

    def __repr__(self):
        return f"<Resp {self.status} {self.raw[:300]!r}>"


def http(method, url, body=None, raw=None, headers=None, timeout=15):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return Resp(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        return Resp(exc.code, exc.headers, exc.read())


class Server:
    """One `sovrium start` process."""

    counter = 0

    def __init__(self, tmp_path, config, db, port=None, args=(), env=None, connect_host="127.0.0.1"):
        Server.counter += 1
        self.port = port or free_port()
        self.db = Path(db)
        self.connect_host = connect_host
        self.err_path = tmp_path / f"server-{Server.counter}.stderr"
        self.err_file = open(self.err_path, "w")
        self.out_path = tmp_path / f"server-{Server.counter}.stdout"
        self.out_file = open(self.out_path, "w")
        cmd = [sys.executable, "-m", "sovrium", "start", str(config), "--port", str(self.port),
               "--db", str(db), *map(str, args)]
        self.proc = subprocess.Popen(cmd, env=child_env(env), cwd=str(tmp_path),
                                     stdin=subprocess.DEVNULL, stdout=self.out_file,
                                     stderr=self.err_file)

    @property
    def url(self):
        return f"http://{self.connect_host}:{self.port}"

    @property
    def pid(self):
        return self.proc.pid

    def stderr(self):
        return self.err_path.read_text(errors="replace")

    def wait_ready(self, timeout=20):
        """Ready = the server answers an HTTP request (any status)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                http("GET", self.url + "/api/health", timeout=2)
                return self
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"server did not answer within {timeout}s:\n{self.stderr()}")

    def wait_for(self, pattern, timeout=5):
        """Wait until a stderr line matches the regex; return the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in lines(self.stderr()):
                m = rx.search(line)
                if m:
                    return m
            if time.monotonic() > deadline:
                pytest.fail(f"no stderr line matches {pattern!r}:\n{self.stderr()}")
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                pytest.fail(f"server did not exit within {timeout}s of {sig!r}:\n{self.stderr()}")
        return self.proc.returncode

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.err_file.close()
        self.out_file.close()


@pytest.fixture
def spawn(tmp_path):
    servers = []

    def start(config, db=None, **kw):
        srv = Server(tmp_path, config, db or tmp_path / "app.db", **kw)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


def run_start(tmp_path, config, db, port=None, args=(), env=None, timeout=25):
    """Run `sovrium start` that is expected to fail; a process still running after `timeout` is a
    server that should have refused to start."""
    cmd = [sys.executable, "-m", "sovrium", "start", str(config), "--port", str(port or free_port()),
           "--db", str(db), *map(str, args)]
    try:
        return subprocess.run(cmd, env=child_env(env), cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`sovrium start` did not exit within {timeout}s (stderr: {exc.stderr!r})")


@pytest.fixture
def app_yaml(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text(APP_YAML)
    return path


@pytest.fixture
def auth_yaml(tmp_path):
    path = tmp_path / "auth.yaml"
    path.write_text(AUTH_APP_YAML)
    return path


def records_url(srv):
    return srv.url + "/api/tables/notes/records"


def total(srv):
    r = http("GET", records_url(srv))
    assert r.status == 200, r
    return r.json["pagination"]["total"]


def make_sovrium_db(spawn, config, db, titles=("one", "two")):
    """Create a real Sovrium database through the server, then shut it down gracefully."""
    srv = spawn(config, db).wait_ready()
    ids = []
    for title in titles:
        r = http("POST", records_url(srv), {"title": title})
        assert r.status == 201, r
        ids.append(r.json["id"])
    assert srv.stop() == 0, srv.stderr()
    return ids


def assert_refused(proc, code, expected_line=None):
    assert proc.returncode == code, f"expected exit {code}, got {proc.returncode}:\n{proc.stderr}"
    if expected_line is not None:
        assert expected_line in lines(proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def path_variants(path):
    return {str(path), os.path.realpath(path)}


# -------------------------------------------------------------------------------- HTTP over a socket


def test_create_and_read_records(server, tmp_path):
    """Uses the conftest `server` fixture: config file → real process → records over HTTP."""
    cfg = tmp_path / "app.yaml"
    cfg.write_text(APP_YAML)
    base = server(cfg)

    health = http("GET", base + "/api/health")
    assert health.status == 200, health
    assert health.json["status"] == "ok"
    assert health.json["database"] == "ok"
    assert health.json["app"] == {"name": "srv-app", "version": "1.0.0"}
    assert health.json["server"]["name"] == "sovrium"
    assert health.json["schemaVersion"] == 1

    created = http("POST", base + "/api/tables/notes/records", {"title": "hello", "size": 3})
    assert created.status == 201, created
    rec = created.json
    assert isinstance(rec["id"], int)
    assert rec["fields"] == {"title": "hello", "size": 3}
    assert rec["createdAt"] == rec["updatedAt"]
    assert re.fullmatch(TS, rec["createdAt"])
    assert rec["createdBy"] is None and rec["updatedBy"] is None
    assert created.headers["Location"] == f"/api/tables/1/records/{rec['id']}"
    assert created.headers["Content-Type"].startswith("application/json")
    assert created.headers["X-Request-Id"]
    assert created.headers["Cache-Control"] == "no-store"
    assert created.headers["X-Sovrium-Schema-Version"] == "1"

    wrapped = http("POST", base + "/api/tables/1/records", {"fields": {"title": "wrapped"}})
    assert wrapped.status == 201, wrapped

    got = http("GET", base + f"/api/tables/notes/records/{rec['id']}")
    assert got.status == 200, got
    assert got.json == rec

    listing = http("GET", base + "/api/tables/notes/records")
    assert listing.status == 200
    assert [r["id"] for r in listing.json["records"]] == [rec["id"], wrapped.json["id"]]
    assert listing.json["pagination"]["total"] == 2


def test_error_envelope_over_http(spawn, app_yaml):
    srv = spawn(app_yaml).wait_ready()

    for path in ("/api/no-such-route", "/index.html", "/"):
        r = http("GET", srv.url + path)
        assert r.status == 404, (path, r)
        assert r.json == {"success": False, "message": "Route not found", "code": "NOT_FOUND"}, path
        assert r.headers["Content-Type"].startswith("application/json")

    r = http("GET", records_url(srv) + "/987654")
    assert r.status == 404
    assert r.json == {"success": False, "message": "Resource not found", "code": "NOT_FOUND"}

    r = http("POST", srv.url + "/api/health", {})
    assert r.status == 405
    assert r.json["code"] == "METHOD_NOT_ALLOWED" and r.json["success"] is False
    assert "GET" in r.headers["Allow"]

    r = http("POST", records_url(srv), raw=b'{"title": ')
    assert r.status == 400
    assert r.json == {"success": False, "message": "Request body is not valid JSON",
                      "code": "VALIDATION_ERROR",
                      "errors": [{"field": "body", "message": "Request body is not valid JSON"}]}

    r = http("POST", records_url(srv), {"size": "three"})
    assert r.status == 400
    assert r.json["success"] is False
    assert r.json["code"] == "VALIDATION_ERROR"
    assert r.json["message"] == "One or more fields failed validation"
    assert {e["field"] for e in r.json["errors"]} >= {"title", "size"}
    assert "requestId" not in r.json
    assert total(srv) == 0


# ------------------------------------------------------------------------ banner, warnings, logs


def banner_lines(stderr):
    """The banner block: from the `sovrium <version>` line to the `listening:` line."""
    out = lines(stderr)
    start = next((i for i, l in enumerate(out) if re.fullmatch(r"sovrium \d+\.\d+\.\d+\S*", l)), None)
    assert start is not None, f"no banner on stderr:\n{stderr}"
    end = next((i for i in range(start, len(out)) if out[i].startswith("listening:")), None)
    assert end is not None, f"no listening: line in the banner:\n{stderr}"
    return start, out[start:end + 1]


def banner_value(block, label):
    for line in block:
        if line.startswith(label + ":"):
            return line[len(label) + 1:].strip()
    pytest.fail(f"banner has no {label}: line: {block}")


def test_startup_banner(spawn, app_yaml, tmp_path):
    db = tmp_path / "banner.db"
    srv = spawn(app_yaml, db).wait_ready()
    stderr = srv.stderr()
    _, block = banner_lines(stderr)

    assert block[0] == "sovrium 0.1.0"
    labels = [line.split(":", 1)[0] for line in block[1:]]
    required = ["app", "config", "database", "auth", "listening"]
    assert [l for l in labels if l in required] == required, block
    assert banner_value(block, "app") == "srv-app 1.0.0 (schema version 1, in-sync)"
    assert banner_value(block, "config") in path_variants(app_yaml)
    assert banner_value(block, "database") in path_variants(db)
    assert banner_value(block, "listening") == (
        f"http://127.0.0.1:{srv.port} (base URL http://localhost:{srv.port})")
    assert srv.out_path.read_text() == "", "start writes its banner and logs to stderr, never stdout"
    # loopback without auth: no warning block
    assert "AUTHENTICATION IS DISABLED" not in stderr
    # step 11: logging is set up after the banner; `startup` and `config-imported` are logged
    srv.wait_for(rf"^{TS} INFO startup( |$)")
    m = srv.wait_for(rf"^{TS} INFO config-imported (.*)$")
    assert "version=1" in m.group(1).split(" ")


def test_restart_with_same_config_imports_nothing(spawn, app_yaml, tmp_path):
    db = tmp_path / "restart.db"
    make_sovrium_db(spawn, app_yaml, db)
    srv = spawn(app_yaml, db).wait_ready()
    _, block = banner_lines(srv.stderr())
    assert banner_value(block, "app") == "srv-app 1.0.0 (schema version 1, in-sync)"
    srv.wait_for(rf"^{TS} INFO startup( |$)")
    assert not re.search(r" INFO config-imported", srv.stderr()), srv.stderr()
    assert total(srv) == 2


@pytest.mark.parametrize("how", ["option", "env"])
def test_warning_block_for_wildcard_host_without_auth(spawn, app_yaml, how):
    port = free_port()
    if how == "option":
        srv = spawn(app_yaml, port=port, args=["--host", "0.0.0.0"])
    else:
        srv = spawn(app_yaml, port=port, env={"HOST": "0.0.0.0"})
    srv.wait_ready()
    out = lines(srv.stderr())
    expected = [w.format(host="0.0.0.0", port=port) for w in NO_AUTH_WARNING]
    idx = next((i for i, l in enumerate(out) if l == expected[0]), None)
    assert idx is not None, "\n".join(out)
    assert out[idx:idx + 3] == expected
    banner_start, block = banner_lines(srv.stderr())
    assert idx < banner_start, "warnings (step 9) come before the banner (step 10)"
    assert banner_value(block, "listening").endswith(f"(base URL http://localhost:{port})")
    assert http("GET", srv.url + "/api/health").status == 200


def test_no_warning_block_for_other_loopback_address(spawn, app_yaml):
    srv = spawn(app_yaml, args=["--host", "127.0.0.2"], connect_host="127.0.0.2").wait_ready()
    stderr = srv.stderr()
    assert "AUTHENTICATION IS DISABLED" not in stderr, "127.0.0.2 is a loopback address"
    _, block = banner_lines(stderr)
    assert banner_value(block, "listening") == (
        f"http://127.0.0.2:{srv.port} (base URL http://localhost:{srv.port})")


def test_base_url_shown_in_banner(spawn, app_yaml):
    srv = spawn(app_yaml, env={"BASE_URL": "https://tracker.example.com/app"}).wait_ready()
    _, block = banner_lines(srv.stderr())
    assert banner_value(block, "listening") == (
        f"http://127.0.0.1:{srv.port} (base URL https://tracker.example.com/app)")


def test_no_warning_block_for_wildcard_host_with_auth(spawn, auth_yaml):
    srv = spawn(auth_yaml, args=["--host", "0.0.0.0"]).wait_ready()
    stderr = srv.stderr()
    assert "AUTHENTICATION IS DISABLED" not in stderr
    _, block = banner_lines(stderr)
    assert "email+password" in banner_value(block, "auth")


def test_request_log_line(spawn, app_yaml):
    srv = spawn(app_yaml).wait_ready()
    r = http("GET", srv.url + "/api/health?token=query-canary-123")
    assert r.status == 200
    rid = r.headers["X-Request-Id"]
    assert rid
    m = srv.wait_for(rf"^{TS} INFO request id={re.escape(rid)} (.*)$")
    assert re.fullmatch(r"method=GET path=/api/health status=200 ms=\d+\.\d ip=127\.0\.0\.1 user=-",
                        m.group(1)), m.group(0)

    c = http("POST", records_url(srv), {"title": "body-canary-456"})
    assert c.status == 201
    m = srv.wait_for(rf"^{TS} INFO request id={re.escape(c.headers['X-Request-Id'])} (.*)$")
    assert re.fullmatch(r"method=POST path=/api/tables/notes/records status=201 ms=\d+\.\d "
                        r"ip=127\.0\.0\.1 user=-", m.group(1)), m.group(0)

    n = http("GET", srv.url + "/api/nowhere")
    assert n.status == 404
    m = srv.wait_for(rf"^{TS} INFO request id={re.escape(n.headers['X-Request-Id'])} (.*)$")
    assert re.fullmatch(r"method=GET path=/api/nowhere status=404 ms=\d+\.\d ip=127\.0\.0\.1 user=-",
                        m.group(1)), m.group(0)

    # a value containing a space, `"` or `=` is written as a JSON string (§6)
    for raw_path, decoded in (("/api/x%20y", "/api/x y"), ("/api/a%3Db", "/api/a=b")):
        q = http("GET", srv.url + raw_path)
        assert q.status == 404
        m = srv.wait_for(rf"^{TS} INFO request id={re.escape(q.headers['X-Request-Id'])} (.*)$")
        path_value = re.match(r"method=GET path=(\"(?:[^\"\\]|\\.)*\"|\S+) status=404 ", m.group(1))
        assert path_value, m.group(0)
        value = path_value.group(1)
        assert value == raw_path or (value.startswith('"') and json.loads(value) == decoded), m.group(0)

    stderr = srv.stderr()
    assert "query-canary-123" not in stderr, "query strings are not logged"
    assert "body-canary-456" not in stderr, "request bodies are not logged"
    # after step 11 every line has the log format; no stray print()s between log lines
    out = lines(stderr)
    first_log = next((i for i, l in enumerate(out) if re.match(rf"{TS} INFO startup", l)), None)
    assert first_log is not None, stderr
    for line in out[first_log:]:
        assert re.match(rf"^{TS} (DEBUG|INFO|WARNING|ERROR) [a-z-]+( |$)", line), line


def test_request_log_json(spawn, app_yaml):
    srv = spawn(app_yaml, env={"LOG_FORMAT": "json"}).wait_ready()
    r = http("GET", srv.url + "/api/health")
    assert r.status == 200
    rid = r.headers["X-Request-Id"]
    deadline = time.monotonic() + 5
    entry = None
    while entry is None and time.monotonic() < deadline:
        for line in lines(srv.stderr()):
            if line.startswith("{"):
                obj = json.loads(line)
                if obj.get("event") == "request" and rid in obj.values():
                    entry = obj
        time.sleep(0.05)
    assert entry is not None, srv.stderr()
    assert re.fullmatch(TS, entry["ts"])
    expected = {"level": "info", "event": "request", "requestId": rid, "method": "GET",
                "path": "/api/health", "status": 200, "ip": "127.0.0.1", "userId": None}
    assert {k: entry.get(k, "<missing>") for k in expected} == expected, entry
    assert isinstance(entry["ms"], (int, float))
    # after step 11 every line is a JSON object
    out = lines(srv.stderr())
    first = next(i for i, l in enumerate(out) if l.startswith("{"))
    for line in out[first:]:
        assert isinstance(json.loads(line), dict), line


def test_log_level_warning_hides_request_lines(spawn, app_yaml):
    srv = spawn(app_yaml, args=["--log-level", "warning"]).wait_ready()
    assert http("GET", srv.url + "/api/health").status == 200
    time.sleep(0.3)
    assert " INFO request " not in srv.stderr(), srv.stderr()


# ------------------------------------------------------------------ configuration errors (exit 1)


BAD_CONFIGS = {
    "validation": ("""\
name: srv-app
tables:
  - id: 1
    name: notes
    fields:
      - id: 1
        name: Bad Name
        type: single-line-text
      - id: 2
        name: amount
        type: numbr
""", [
        "error: tables[0].fields[0].name: Invalid name 'Bad Name': use lower-case letters, digits "
        "and underscores, starting with a letter",
        "error: tables[0].fields[1].type: Unknown field type 'numbr'",
    ]),
    "syntax": ("name: srv-app\ntables: [\n  {name: notes\n", [r"re:^error: app\.yaml:\d+:\d+: YAML syntax error: "]),
    "unset-variable": (APP_YAML.replace("name: srv-app", "name: ${SOVRIUM_TEST_NEVER_SET}"),
                       ["error: name: Environment variable 'SOVRIUM_TEST_NEVER_SET' is not set"]),
    "missing-file": (None, []),
}


@pytest.mark.parametrize("kind", list(BAD_CONFIGS))
def test_config_errors_exit_1_and_database_not_created(tmp_path, kind):
    text, expected = BAD_CONFIGS[kind]
    cfg = tmp_path / "app.yaml"
    if text is not None:
        cfg.write_text(text)
    db = tmp_path / "never.db"
    proc = run_start(tmp_path, cfg, db)
    assert_refused(proc, 1)
    errors = [l for l in lines(proc.stderr) if l.startswith("error: ")]
    assert errors, proc.stderr
    for exp in expected:
        if exp.startswith("re:"):
            assert any(re.search(exp[3:], l) for l in errors), proc.stderr
        else:
            assert exp in errors, proc.stderr
    assert not db.exists(), "the database must not be opened on a configuration error"
    assert not Path(str(db) + "-wal").exists()


# ---------------------------------------------------------------------- database file (exit 3)


def test_file_that_is_not_sqlite(tmp_path, app_yaml):
    db = tmp_path / "random.db"
    payload = b"NOTSQLITE" + os.urandom(8183)
    db.write_bytes(payload)
    proc = run_start(tmp_path, app_yaml, db)
    assert_refused(proc, 3)
    assert any(f"error: {p} is not a Sovrium database" in lines(proc.stderr) for p in path_variants(db)), \
        proc.stderr
    assert db.read_bytes() == payload, "the file must be left untouched"


def test_sqlite_file_with_another_application_id(tmp_path, app_yaml):
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA application_id = 42")
    con.execute("CREATE TABLE things (x)")
    con.execute("INSERT INTO things VALUES (1)")
    con.commit()
    con.close()
    before = db.read_bytes()
    proc = run_start(tmp_path, app_yaml, db)
    assert_refused(proc, 3)
    assert any(f"error: {p} is not a Sovrium database" in lines(proc.stderr) for p in path_variants(db)), \
        proc.stderr
    assert db.read_bytes() == before


def test_non_empty_sqlite_file_without_application_id(tmp_path, app_yaml):
    """application_id 0 but not new and empty (it has a table) → not a Sovrium database (§7.4)."""
    db = tmp_path / "plain.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE things (x)")
    con.commit()
    con.close()
    before = db.read_bytes()
    proc = run_start(tmp_path, app_yaml, db)
    assert_refused(proc, 3)
    assert any(f"error: {p} is not a Sovrium database" in lines(proc.stderr) for p in path_variants(db)), \
        proc.stderr
    assert db.read_bytes() == before


def test_empty_sqlite_file_is_initialised(spawn, tmp_path, app_yaml):
    """A zero-byte file is a new, empty database: it gets schema.sql (§4 step 4)."""
    db = tmp_path / "empty.db"
    db.write_bytes(b"")
    srv = spawn(app_yaml, db).wait_ready()
    assert http("POST", records_url(srv), {"title": "x"}).status == 201
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    con.close()


def test_corrupt_sqlite_file(tmp_path, app_yaml):
    db = tmp_path / "corrupt.db"
    payload = b"SQLite format 3\x00" + b"\xff" * 84 + os.urandom(4096 - 100)
    db.write_bytes(payload)
    proc = run_start(tmp_path, app_yaml, db)
    assert_refused(proc, 3)
    assert any(l.startswith("error: ") for l in lines(proc.stderr)), proc.stderr
    assert db.read_bytes() == payload


def test_database_from_newer_sovrium(spawn, tmp_path, app_yaml):
    db = tmp_path / "newer.db"
    make_sovrium_db(spawn, app_yaml, db)
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    before = db.read_bytes()
    proc = run_start(tmp_path, app_yaml, db)
    assert_refused(proc, 3, "error: the database was created by a newer Sovrium "
                            f"(schema 99; this version supports up to {SCHEMA_VERSION})")
    assert db.read_bytes() == before
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 99
    con.close()


def test_schema_version_is_one():
    """The brief and §7.4 example: this release's internal schema is version 1."""
    assert SCHEMA_VERSION == 1


def test_database_path_is_a_directory(tmp_path, app_yaml):
    db = tmp_path / "adir"
    db.mkdir()
    proc = run_start(tmp_path, app_yaml, db)
    assert_refused(proc, 3)
    assert any(l.startswith("error: ") for l in lines(proc.stderr)), proc.stderr
    assert list(db.iterdir()) == []


def test_missing_parent_directory(tmp_path, app_yaml):
    db = tmp_path / "no-such-dir" / "app.db"
    proc = run_start(tmp_path, app_yaml, db)
    assert_refused(proc, 3)
    assert any(l.startswith("error: ") for l in lines(proc.stderr)), proc.stderr
    assert not db.parent.exists()


def test_application_id_and_user_version(spawn, tmp_path, app_yaml):
    db = tmp_path / "ids.db"
    make_sovrium_db(spawn, app_yaml, db)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


# --------------------------------------------------------------------------- port and lease (exit 3)


def test_port_in_use(tmp_path, app_yaml):
    db = tmp_path / "port.db"
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        proc = run_start(tmp_path, app_yaml, db, port=port)
    assert_refused(proc, 3)
    assert any(l.startswith(f"error: cannot listen on 127.0.0.1:{port}: ") and
               len(l) > len(f"error: cannot listen on 127.0.0.1:{port}: ")
               for l in lines(proc.stderr)), proc.stderr
    assert not db.exists(), "the port is bound (step 3) before the database is opened (step 4)"


def test_second_server_on_same_database(spawn, tmp_path, app_yaml):
    db = tmp_path / "shared.db"
    first = spawn(app_yaml, db).wait_ready()
    assert http("POST", records_url(first), {"title": "first"}).status == 201
    lock = Path(str(db) + ".lock")
    assert lock.exists(), "the lease file is <database path>.lock"
    assert str(first.pid) in lock.read_text(), "the lease holder writes its pid into the lock file"

    proc = run_start(tmp_path, app_yaml, db)
    assert_refused(proc, 3, f"error: the database is in use by another Sovrium server (pid {first.pid})")

    # the first server is unaffected
    assert first.proc.poll() is None
    assert total(first) == 1
    assert first.stop() == 0

    # the lease is released at shutdown: a new server can take over
    again = spawn(app_yaml, db).wait_ready()
    assert total(again) == 1


# ------------------------------------------------------------------------------------- shutdown


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown_checkpoints_wal(spawn, tmp_path, app_yaml, sig):
    db = tmp_path / "graceful.db"
    srv = spawn(app_yaml, db).wait_ready()
    ids = []
    for i in range(20):
        r = http("POST", records_url(srv), {"title": f"rec {i}", "size": i})
        assert r.status == 201, r
        ids.append(r.json["id"])
    wal = Path(str(db) + "-wal")
    assert srv.stop(sig) == 0, srv.stderr()
    assert not wal.exists() or wal.stat().st_size == 0, f"-wal has {wal.stat().st_size} bytes"
    assert re.search(rf"^{TS} INFO shutdown status=complete$", srv.stderr(), re.M), srv.stderr()
    assert "Traceback" not in srv.stderr()

    srv2 = spawn(app_yaml, db).wait_ready()
    for i, rid in enumerate(ids):
        r = http("GET", records_url(srv2) + f"/{rid}")
        assert r.status == 200, r
        assert r.json["fields"] == {"title": f"rec {i}", "size": i}


def test_kill_9_loses_no_acknowledged_write(spawn, tmp_path, app_yaml):
    db = tmp_path / "crash.db"
    srv = spawn(app_yaml, db).wait_ready()
    url = records_url(srv)
    acknowledged = {}
    unexpected = []
    stop = threading.Event()

    def writer():
        deadline = time.monotonic() + 5
        i = 0
        while not stop.is_set() and i < 300 and time.monotonic() < deadline:
            title = f"write {i}"
            try:
                r = http("POST", url, {"title": title}, timeout=5)
            except Exception:
                break  # the server died under us
            if r.status == 201:
                acknowledged[r.json["id"]] = title
            else:
                unexpected.append(r.status)
            i += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    t0 = time.monotonic()
    while len(acknowledged) < 60 and t.is_alive() and time.monotonic() - t0 < 3:
        time.sleep(0.005)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    stop.set()
    t.join(10)
    assert not unexpected, f"unexpected statuses while writing: {unexpected}"
    assert acknowledged, "no write was acknowledged before the kill"

    again = spawn(app_yaml, db).wait_ready()
    missing = []
    for rid, title in acknowledged.items():
        r = http("GET", records_url(again) + f"/{rid}")
        if r.status != 200 or r.json["fields"]["title"] != title:
            missing.append((rid, r.status))
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged writes lost: {missing[:10]}"
    assert total(again) >= len(acknowledged)


# --------------------------------------------------------------------------------- busy database


def test_busy_database_gives_503_and_writes_nothing(spawn, tmp_path, app_yaml):
    db = tmp_path / "busy.db"
    srv = spawn(app_yaml, db).wait_ready()
    assert http("POST", records_url(srv), {"title": "before"}).status == 201
    assert total(srv) == 1

    holder = sqlite3.connect(db, isolation_level=None, timeout=5)
    try:
        assert holder.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        holder.execute("BEGIN IMMEDIATE")

        # reads are not blocked by a writer (WAL)
        t0 = time.monotonic()
        assert total(srv) == 1
        assert time.monotonic() - t0 < 2

        t0 = time.monotonic()
        r = http("POST", records_url(srv), {"title": "blocked"}, timeout=30)
        elapsed = time.monotonic() - t0
        assert r.status == 503, r
        assert r.headers["Retry-After"] == "1"
        assert r.json == {"success": False, "message": "The database is busy; please retry",
                          "code": "SERVICE_UNAVAILABLE"}
        assert 4.5 <= elapsed <= 8.5, f"the busy budget is 5 s; the request took {elapsed:.2f} s"
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()

    assert total(srv) == 1, "nothing may be written by a request that got 503"
    r = http("POST", records_url(srv), {"title": "after"})
    assert r.status == 201, r
    assert total(srv) == 2
    titles = [rec["fields"]["title"] for rec in http("GET", records_url(srv)).json["records"]]
    assert titles == ["before", "after"]


# ------------------------------------------------------------- configuration vs data (§4 step 5)


KIND_YAML = """\
name: srv-app
version: "1.0.0"
tables:
  - id: 1
    name: notes
    fields:
      - id: 1
        name: title
        type: single-line-text
        required: true
      - id: 3
        name: kind
        type: single-select
        options: [a, b]
"""


def test_data_loss_guard_refuses_and_leaves_database_unchanged(spawn, tmp_path):
    cfg = tmp_path / "kind.yaml"
    cfg.write_text(KIND_YAML)
    db = tmp_path / "guard.db"
    srv = spawn(cfg, db).wait_ready()
    r = http("POST", records_url(srv), {"title": "x", "kind": "b"})
    assert r.status == 201, r
    rid = r.json["id"]
    assert srv.stop() == 0

    cfg.write_text(KIND_YAML.replace("options: [a, b]", "options: [a]"))
    before = db.read_bytes()
    proc = run_start(tmp_path, cfg, db)
    assert_refused(proc, 1, "error: the configuration would clear stored values (see warnings); "
                            "rerun with --allow-data-loss")
    assert re.search(r"^warning: .*Removing option 'b' from 'kind' clears 1 values$", proc.stderr, re.M), \
        proc.stderr
    assert db.read_bytes() == before, "a refused configuration must leave the database unchanged"

    srv = spawn(cfg, db, args=["--allow-data-loss"]).wait_ready()
    _, block = banner_lines(srv.stderr())
    assert banner_value(block, "app").startswith("srv-app 1.0.0 (schema version 2, ")
    r = http("GET", records_url(srv) + f"/{rid}")
    assert r.status == 200
    assert r.json["fields"] == {"title": "x", "kind": None}


def test_identity_conflict_refuses_and_leaves_database_unchanged(spawn, tmp_path, app_yaml):
    db = tmp_path / "identity.db"
    make_sovrium_db(spawn, app_yaml, db)
    before = db.read_bytes()
    cfg = tmp_path / "renumbered.yaml"
    cfg.write_text(APP_YAML.replace("      - id: 1\n        name: title", "      - id: 5\n        name: title"))
    proc = run_start(tmp_path, cfg, db)
    assert_refused(proc, 1)
    assert re.search(r"^error: (\S+: )?Field 'title' is registered with id 1; it cannot change to 5$",
                     proc.stderr, re.M), proc.stderr
    assert db.read_bytes() == before


# ------------------------------------------------------------------- shutdown with a request in flight


def _blocked_post(url, result):
    try:
        result["resp"] = http("POST", url, {"title": "in flight"}, timeout=30)
    except Exception as exc:  # pragma: no cover - reported by the assertion below
        result["exc"] = exc


def test_sigterm_lets_in_flight_request_finish(spawn, tmp_path, app_yaml):
    db = tmp_path / "inflight.db"
    srv = spawn(app_yaml, db).wait_ready()
    assert http("POST", records_url(srv), {"title": "first"}).status == 201
    holder = sqlite3.connect(db, isolation_level=None, timeout=5)
    holder.execute("BEGIN IMMEDIATE")
    result = {}
    t = threading.Thread(target=_blocked_post, args=(records_url(srv), result), daemon=True)
    try:
        t.start()
        time.sleep(0.7)  # the POST is now waiting for the write lock
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.7)
        assert srv.proc.poll() is None, "the server must wait for the in-flight request"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    t.join(20)
    assert "exc" not in result, result
    assert result["resp"].status == 201, result["resp"]
    assert srv.stop() == 0, srv.stderr()
    assert re.search(rf"^{TS} INFO shutdown status=complete$", srv.stderr(), re.M), srv.stderr()
    wal = Path(str(db) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM records WHERE table_id = 1").fetchone()[0] == 2
    con.close()


def test_second_sigint_during_shutdown_exits_130(spawn, tmp_path, app_yaml):
    db = tmp_path / "double.db"
    srv = spawn(app_yaml, db).wait_ready()
    assert http("POST", records_url(srv), {"title": "kept"}).status == 201
    holder = sqlite3.connect(db, isolation_level=None, timeout=5)
    holder.execute("BEGIN IMMEDIATE")
    result = {}
    t = threading.Thread(target=_blocked_post, args=(records_url(srv), result), daemon=True)
    try:
        t.start()
        time.sleep(0.7)
        srv.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert srv.proc.poll() is None, "the first SIGINT waits for the in-flight request"
        srv.proc.send_signal(signal.SIGINT)
        try:
            rc = srv.proc.wait(3)
        except subprocess.TimeoutExpired:
            pytest.fail("a second SIGINT during shutdown must exit immediately")
        assert rc == 130, srv.stderr()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    t.join(10)
    # the database stays consistent: a new server opens it and has the committed record
    again = spawn(app_yaml, db).wait_ready()
    titles = [r["fields"]["title"] for r in http("GET", records_url(again)).json["records"]]
    assert titles == ["kept"]


def test_validate_with_database_reports_data_loss(spawn, tmp_path):
    """`validate --db` runs the data checks read-only; data-loss warnings → exit 1 unless
    --allow-data-loss (OPERATIONS.md §2.2)."""
    cfg = tmp_path / "kind.yaml"
    cfg.write_text(KIND_YAML)
    db = tmp_path / "validate.db"
    srv = spawn(cfg, db).wait_ready()
    assert http("POST", records_url(srv), {"title": "x", "kind": "b"}).status == 201
    assert srv.stop() == 0
    before = db.read_bytes()

    cfg.write_text(KIND_YAML.replace("options: [a, b]", "options: [a]"))
    cmd = [sys.executable, "-m", "sovrium", "validate", str(cfg), "--db", str(db)]
    proc = subprocess.run(cmd, env=child_env(), cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=25)
    assert proc.returncode == 1, proc.stderr
    assert re.search(r"^warning: .*Removing option 'b' from 'kind' clears 1 values$", proc.stderr, re.M), \
        proc.stderr
    proc = subprocess.run(cmd + ["--allow-data-loss"], env=child_env(), cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=25)
    assert proc.returncode == 0, proc.stderr
    assert "ok: srv-app — 1 tables" in lines(proc.stdout + proc.stderr)
    assert db.read_bytes() == before, "validate --db is read-only"


def test_auth_over_a_real_server(spawn, auth_yaml):
    """Sign-in, cookie and Bearer callers, CSRF and the anonymous 401, through a real process."""
    srv = spawn(auth_yaml, env={"AUTH_ADMIN_EMAIL": "root@example.com",
                                "AUTH_ADMIN_PASSWORD": "root-password-1"}).wait_ready()
    assert http("GET", records_url(srv)).status == 401
    resp = http("POST", srv.url + "/api/auth/sign-in/email",
                {"email": "root@example.com", "password": "root-password-1"})
    assert resp.status == 200, resp.raw
    token = resp.json["token"]
    assert resp.headers["set-auth-token"] == token
    cookie = resp.headers["Set-Cookie"].split(";")[0]
    assert cookie.startswith("better-auth.session_token=" + token + ".")
    bearer = {"Authorization": "Bearer " + token}
    created = http("POST", records_url(srv), {"title": "from bearer"}, headers=bearer)
    assert created.status == 201, created.raw
    assert created.json["createdBy"] == resp.json["user"]["id"]
    # A cookie caller posting from another site is refused before anything is read or written.
    refused = http("POST", records_url(srv), {"title": "forged"},
                   headers={"Cookie": cookie, "Origin": "https://evil.example"})
    assert refused.status == 403 and refused.json["message"] == "Cross-site request blocked"
    same_site = http("POST", records_url(srv), {"title": "same site"},
                     headers={"Cookie": cookie, "Origin": srv.url})
    assert same_site.status == 201, same_site.raw
    listing = http("GET", records_url(srv), headers=bearer).json
    assert [r["fields"]["title"] for r in listing["records"]] == ["from bearer", "same site"]
    assert http("POST", srv.url + "/api/auth/sign-out", headers=bearer).status == 200
    assert http("GET", records_url(srv), headers=bearer).status == 401
