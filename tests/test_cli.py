"""Command-line tests written from OPERATIONS.md §2, §3, §4 (step 1-2) and §12.

In-process tests call ``sovrium.main([...])`` for commands that can never start a server
(``--version``, ``--help``, usage errors, ``validate``, ``backup``/``prune`` with a bad
``DATABASE_URL``).  Everything that goes through ``start`` runs in a subprocess with a timeout, so a
server that wrongly starts cannot hang the suite.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

import sovrium

ROOT = Path(__file__).resolve().parent.parent
TEST_ENV = {"SOVRIUM_ARGON2_PROFILE": "test", "SOVRIUM_RATE_LIMITS": "off"}

# Every variable of OPERATIONS.md §3 that a test must not inherit from the outer environment.
SOVRIUM_VARS = (
    "HOST", "PORT", "DATABASE_PATH", "DATABASE_URL", "BASE_URL", "AUTH_SECRET", "AUTH_ADMIN_EMAIL",
    "AUTH_ADMIN_PASSWORD", "AUTH_ADMIN_NAME", "TRUST_PROXY", "SMTP_URL", "SMTP_FROM",
    "SCHEMA_EDIT_API_ENABLED", "LOG_LEVEL", "LOG_FORMAT", "SOVRIUM_ARGON2_PROFILE", "SOVRIUM_THREADS",
    "SOVRIUM_RATE_LIMITS",
)

SIMPLE_YAML = """\
name: cli-app
version: "2.0.0"
tables:
  - id: 1
    name: notes
    fields:
      - id: 1
        name: title
        type: single-line-text
        required: true
"""

AUTH_YAML = SIMPLE_YAML + """\
auth:
  strategies:
    - type: emailAndPassword
      minPasswordLength: 10
"""

BAD_YAML = """\
name: cli-app
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
"""

ERR_BAD_NAME = ("error: tables[0].fields[0].name: Invalid name 'Bad Name': use lower-case letters, "
                "digits and underscores, starting with a letter")
ERR_BAD_TYPE = "error: tables[0].fields[1].type: Unknown field type 'numbr'"

PORT_MESSAGE = "error: PORT must be an integer between 1 and 65535"
DB_URL_MESSAGE = "error: only sqlite:// database URLs are supported"


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """In-process tests read os.environ: make sure no Sovrium variable leaks in from outside."""
    for name in SOVRIUM_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)


def run_main(argv, capsys):
    """Call sovrium.main in-process; returns (exit code, stdout, stderr).

    main() is specified to *return* the exit code (§11.4); a SystemExit (argparse style) is accepted
    too and converted, since the console script turns either into the same process exit code.
    """
    try:
        rc = sovrium.main(list(argv))
    except SystemExit as exc:
        rc = exc.code
    if rc is None:
        rc = 0
    out, err = capsys.readouterr()
    return rc, out, err


def lines(text):
    return [line.rstrip("\r") for line in text.splitlines()]


def has_line(text, expected):
    return expected in lines(text)


def error_lines(text):
    return [line for line in lines(text) if line.startswith("error: ")]


def assert_usage_error(rc, err):
    assert rc == 2, f"expected exit 2, got {rc}; stderr:\n{err}"
    assert re.search(r"^usage:", err, re.M | re.I), f"no usage line on stderr:\n{err}"
    assert re.search(r"^error: \S", err, re.M), f"no 'error: …' line on stderr:\n{err}"
    assert "Traceback" not in err


def subprocess_env(extra=None, pythonpath=True):
    env = {k: v for k, v in os.environ.items() if k not in SOVRIUM_VARS and k != "PYTHONPATH"}
    env.update(TEST_ENV)
    if pythonpath:
        env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def run_cli(args, env=None, cwd=None, timeout=25, pythonpath=True):
    """Run `python -m sovrium ARGS` to completion. A process still running after `timeout` is a
    server that should have refused to start: it is killed and the test fails."""
    try:
        return subprocess.run([sys.executable, "-m", "sovrium", *map(str, args)],
                              env=subprocess_env(env, pythonpath), cwd=str(cwd or ROOT),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`sovrium {' '.join(map(str, args))}` did not exit within {timeout}s "
                    f"(stderr so far: {exc.stderr!r})")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method, url, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    return status, (json.loads(raw) if raw else None)


class Started:
    """A `sovrium start` process that is expected to come up."""

    def __init__(self, args, env, cwd, port, tmp_path):
        self.port = port
        self.err_path = tmp_path / f"start-{port}.stderr"
        self.err_file = open(self.err_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "sovrium", "start", *map(str, args)],
                                     env=subprocess_env(env), cwd=str(cwd),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.err_file)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stderr(self):
        return self.err_path.read_text(errors="replace")

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                http("GET", self.url + "/api/health", timeout=2)
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"server did not answer within {timeout}s:\n{self.stderr()}")

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                pytest.fail("server did not stop after SIGTERM")
        self.err_file.close()
        return self.proc.returncode


@pytest.fixture
def start_server(tmp_path):
    procs = []

    def start(args, env=None, cwd=None, port=None):
        s = Started(args, env, cwd or tmp_path, port, tmp_path)
        procs.append(s)
        return s

    yield start
    for s in procs:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(5)
        s.err_file.close()


@pytest.fixture
def app_yaml(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text(SIMPLE_YAML)
    return path


@pytest.fixture
def auth_yaml(tmp_path):
    path = tmp_path / "auth.yaml"
    path.write_text(AUTH_YAML)
    return path


# ------------------------------------------------------------------------------ --version / --help


def test_version_flag_prints_name_and_version(capsys):
    rc, out, err = run_main(["--version"], capsys)
    assert rc == 0
    assert out.strip() == f"sovrium {sovrium.__version__}"


def test_version_is_0_1_0():
    assert sovrium.__version__ == "0.1.0"


def test_version_flag_in_real_process():
    proc = run_cli(["--version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"sovrium {sovrium.__version__}"
    assert "Traceback" not in proc.stderr


def test_help_lists_commands(capsys):
    rc, out, err = run_main(["--help"], capsys)
    assert rc == 0
    text = out + err
    for command in ("start", "validate"):
        assert command in text


# ------------------------------------------------------------------------- usage errors → exit 2


def test_no_command_is_usage_error(capsys):
    rc, out, err = run_main([], capsys)
    assert_usage_error(rc, err)


def test_unknown_command_is_usage_error(capsys):
    rc, out, err = run_main(["frobnicate"], capsys)
    assert_usage_error(rc, err)


@pytest.mark.parametrize("command", ["start", "validate"])
def test_missing_config_argument_is_usage_error(capsys, command):
    rc, out, err = run_main([command], capsys)
    assert_usage_error(rc, err)


def test_unknown_option_is_usage_error(capsys, app_yaml):
    rc, out, err = run_main(["validate", str(app_yaml), "--no-such-option"], capsys)
    assert_usage_error(rc, err)


def test_unknown_global_option_is_usage_error(capsys):
    rc, out, err = run_main(["--frobnicate"], capsys)
    assert_usage_error(rc, err)


@pytest.mark.parametrize("option,value", [
    ("--port", "abc"), ("--port", "0"), ("--port", "65536"), ("--port", "-1"),
    ("--threads", "0"), ("--threads", "257"), ("--threads", "many"),
    ("--log-level", "loud"),
])
def test_start_bad_option_value_is_usage_error(tmp_path, app_yaml, option, value):
    db = tmp_path / "x.db"
    args = ["start", app_yaml, "--db", db, option, value]
    if option != "--port":
        args += ["--port", free_port()]
    proc = run_cli(args)
    assert_usage_error(proc.returncode, proc.stderr)
    assert not db.exists(), "a command-line error must not create the database"


# --------------------------------------------------------------------------------------- validate


def test_validate_ok(capsys, tmp_path, config):
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    rc, out, err = run_main(["validate", str(path)], capsys)
    assert rc == 0, err
    assert "ok: test-app — 2 tables" in lines(out + err), (out, err)
    assert not error_lines(err)


def test_validate_ok_json_file(capsys, tmp_path, config):
    path = tmp_path / "app.json"
    path.write_text(json.dumps(config))
    rc, out, err = run_main(["validate", str(path)], capsys)
    assert rc == 0, err
    assert "ok: test-app — 2 tables" in lines(out + err)


def test_validate_reports_every_error_with_its_path(capsys, tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text(BAD_YAML)
    rc, out, err = run_main(["validate", str(path)], capsys)
    assert rc == 1
    assert has_line(err, ERR_BAD_NAME), err
    assert has_line(err, ERR_BAD_TYPE), err
    assert "Traceback" not in err


def test_validate_json_output(capsys, tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text(BAD_YAML)
    rc, out, err = run_main(["validate", str(path), "--json"], capsys)
    assert rc == 1
    doc = json.loads(out)
    assert doc["valid"] is False
    assert {"path": "tables[0].fields[1].type", "message": "Unknown field type 'numbr'"} in doc["errors"]
    assert {"path": "tables[0].fields[0].name",
            "message": "Invalid name 'Bad Name': use lower-case letters, digits and underscores, "
                       "starting with a letter"} in doc["errors"]
    assert isinstance(doc["warnings"], list)
    for entry in doc["errors"]:
        assert set(entry) == {"path", "message"}


def test_validate_json_output_valid(capsys, app_yaml):
    rc, out, err = run_main(["validate", str(app_yaml), "--json"], capsys)
    assert rc == 0
    doc = json.loads(out)
    assert doc == {"valid": True, "errors": [], "warnings": []}


def test_validate_warns_about_ignored_keys_in_document_order(capsys, tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text("""\
name: cli-app
theme: {color: red}
tables:
  - id: 1
    name: notes
    webhooks: [x]
    fields:
      - id: 1
        name: title
        type: single-line-text
pages: []
""")
    rc, out, err = run_main(["validate", str(path)], capsys)
    assert rc == 0, err
    assert has_line(err, "warning: ignored unsupported keys: theme, tables[0].webhooks, pages"), err
    rc, out, err = run_main(["validate", str(path), "--json"], capsys)
    assert rc == 0
    doc = json.loads(out)
    assert doc["valid"] is True
    assert {"path": "", "message": "ignored unsupported keys: theme, tables[0].webhooks, pages"} in [
        {k: w[k] for k in ("path", "message")} for w in doc["warnings"]]


def test_validate_likely_typo_is_an_error(capsys, tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text(SIMPLE_YAML.replace("required: true", "requried: true"))
    rc, out, err = run_main(["validate", str(path)], capsys)
    assert rc == 1
    assert re.search(r"^error: tables\[0\]\.fields\[0\](\.requried)?: "
                     r"Unknown key 'requried' \(did you mean 'required'\?\)$", err, re.M), err


def test_validate_unset_environment_variable(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("SOVRIUM_TEST_UNSET_VARIABLE", raising=False)
    path = tmp_path / "app.yaml"
    path.write_text(SIMPLE_YAML.replace("name: cli-app", "name: ${SOVRIUM_TEST_UNSET_VARIABLE}"))
    rc, out, err = run_main(["validate", str(path)], capsys)
    assert rc == 1
    assert has_line(err, "error: name: Environment variable 'SOVRIUM_TEST_UNSET_VARIABLE' is not set"), err


def test_validate_substitutes_environment_variable(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SOVRIUM_TEST_APP_NAME", "from-env")
    path = tmp_path / "app.yaml"
    path.write_text(SIMPLE_YAML.replace("name: cli-app", "name: ${SOVRIUM_TEST_APP_NAME}"))
    rc, out, err = run_main(["validate", str(path)], capsys)
    assert rc == 0, err
    assert "ok: from-env — 1 tables" in lines(out + err)


def test_validate_missing_file(capsys, tmp_path):
    rc, out, err = run_main(["validate", str(tmp_path / "nope.yaml")], capsys)
    assert rc == 1
    assert error_lines(err), err
    assert "nope.yaml" in err
    assert "Traceback" not in err


def test_validate_yaml_syntax_error(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: cli-app\ntables: [\n  {name: notes\n")
    rc, out, err = run_main(["validate", str(path)], capsys)
    assert rc == 1
    assert re.search(r"^error: broken\.yaml:\d+:\d+: YAML syntax error: \S", err, re.M), err
    assert "Traceback" not in err


def test_validate_json_syntax_error(capsys, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "cli-app",\n "tables": [}\n')
    rc, out, err = run_main(["validate", str(path)], capsys)
    assert rc == 1
    assert re.search(r"^error: broken\.json:2:\d+: JSON syntax error: \S", err, re.M), err


def test_validate_duplicate_key(capsys, tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: cli-app\nname: other\n")
    rc, out, err = run_main(["validate", str(path)], capsys)
    assert rc == 1
    assert re.search(r"^error: .*Duplicate key 'name'$", err, re.M), err


def test_validate_with_missing_database_exits_3(capsys, tmp_path, app_yaml):
    db = tmp_path / "missing.db"
    rc, out, err = run_main(["validate", str(app_yaml), "--db", str(db)], capsys)
    assert rc == 3
    assert has_line(err, f"error: database not found: {db}"), err
    assert not db.exists(), "validate --db must never create a database"


def test_schema_file_missing_exits_3(tmp_path, app_yaml):
    isolated = tmp_path / "isolated"
    isolated.mkdir()
    shutil.copy(ROOT / "sovrium.py", isolated / "sovrium.py")
    proc = run_cli(["validate", app_yaml], cwd=isolated, pythonpath=False)
    assert proc.returncode == 3, proc.stderr
    assert has_line(proc.stderr, "error: database schema file not found next to sovrium.py"), proc.stderr


def test_schema_file_found_under_wheel_name(tmp_path, app_yaml):
    isolated = tmp_path / "isolated"
    isolated.mkdir()
    shutil.copy(ROOT / "sovrium.py", isolated / "sovrium.py")
    shutil.copy(ROOT / "schema.sql", isolated / "sovrium_schema.sql")
    proc = run_cli(["validate", app_yaml], cwd=isolated, pythonpath=False)
    assert proc.returncode == 0, proc.stderr
    assert "ok: cli-app — 1 tables" in lines(proc.stdout + proc.stderr)


# ------------------------------------------------------------------ environment variables (§3)


@pytest.mark.parametrize("scheme_url", ["postgres://user:pw@localhost/db", "mysql://localhost/db"])
@pytest.mark.parametrize("command", [["backup", "{tmp}/out.db"], ["start", "{tmp}/app.yaml"]])
def test_database_url_with_other_scheme_in_process(capsys, tmp_path, monkeypatch, scheme_url, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", scheme_url)
    argv = [part.replace("{tmp}", str(tmp_path)) for part in command]
    rc, out, err = run_main(argv, capsys)
    assert rc == 2, err
    assert has_line(err, DB_URL_MESSAGE), err
    assert not (tmp_path / "sovrium.db").exists()
    assert not (tmp_path / "out.db").exists()


@pytest.mark.parametrize("value", ["abc", "0", "65536", "80x", "-5", "3000.5"])
def test_start_invalid_port_env(tmp_path, app_yaml, value):
    db = tmp_path / "x.db"
    proc = run_cli(["start", app_yaml, "--db", db], env={"PORT": value})
    assert proc.returncode == 2, proc.stderr
    assert has_line(proc.stderr, PORT_MESSAGE), proc.stderr
    assert not db.exists()
    assert "Traceback" not in proc.stderr


def test_environment_is_checked_before_the_configuration(tmp_path):
    """§4 step 1 (options and environment, exit 2) comes before step 2 (configuration, exit 1)."""
    db = tmp_path / "x.db"
    proc = run_cli(["start", tmp_path / "missing.yaml", "--db", db], env={"PORT": "abc"})
    assert proc.returncode == 2, proc.stderr
    assert has_line(proc.stderr, PORT_MESSAGE), proc.stderr
    assert not db.exists()


@pytest.mark.parametrize("url", ["postgres://user:pw@localhost/db", "mysql://localhost/db",
                                 "file:///tmp/x.db"])
def test_start_database_url_other_scheme(tmp_path, app_yaml, url):
    proc = run_cli(["start", app_yaml, "--port", free_port()], env={"DATABASE_URL": url}, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert has_line(proc.stderr, DB_URL_MESSAGE), proc.stderr
    assert not (tmp_path / "sovrium.db").exists()


@pytest.mark.parametrize("var,value", [
    ("LOG_LEVEL", "verbose"),
    ("LOG_LEVEL", "trace"),
    ("LOG_FORMAT", "xml"),
    ("SOVRIUM_THREADS", "0"),
    ("SOVRIUM_THREADS", "257"),
    ("SOVRIUM_THREADS", "lots"),
    ("BASE_URL", "not a url"),
    ("SMTP_URL", "http://mail.example.com"),
    ("TRUST_PROXY", "sometimes"),
    ("SCHEMA_EDIT_API_ENABLED", "maybe"),
])
def test_start_invalid_environment_value(tmp_path, app_yaml, var, value):
    db = tmp_path / "x.db"
    proc = run_cli(["start", app_yaml, "--db", db, "--port", free_port()], env={var: value})
    assert proc.returncode == 2, proc.stderr
    errors = error_lines(proc.stderr)
    assert errors and errors[0].startswith(f"error: {var} "), proc.stderr
    assert not db.exists(), "an environment error must not open the database"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("var,env", [
    ("AUTH_ADMIN_EMAIL", {"AUTH_ADMIN_EMAIL": "not-an-email", "AUTH_ADMIN_PASSWORD": "long-enough-password"}),
    ("AUTH_ADMIN_PASSWORD", {"AUTH_ADMIN_EMAIL": "admin@example.com", "AUTH_ADMIN_PASSWORD": "short"}),
    ("AUTH_ADMIN_PASSWORD", {"AUTH_ADMIN_EMAIL": "admin@example.com", "AUTH_ADMIN_PASSWORD": "x" * 129}),
])
def test_start_invalid_auth_admin_variables(tmp_path, auth_yaml, var, env):
    db = tmp_path / "x.db"
    proc = run_cli(["start", auth_yaml, "--db", db, "--port", free_port()], env=env)
    assert proc.returncode == 2, proc.stderr
    errors = error_lines(proc.stderr)
    assert errors and errors[0].startswith(f"error: {var} "), proc.stderr
    assert not db.exists(), "the database is not touched before step 4"


def test_start_config_error_exits_1_without_creating_database(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(BAD_YAML)
    db = tmp_path / "x.db"
    proc = run_cli(["start", cfg, "--db", db, "--port", free_port()])
    assert proc.returncode == 1, proc.stderr
    assert has_line(proc.stderr, ERR_BAD_NAME), proc.stderr
    assert has_line(proc.stderr, ERR_BAD_TYPE), proc.stderr
    assert not db.exists()


# ------------------------------------------------------------- database path precedence (§3)


def _banner_database(stderr):
    for line in lines(stderr):
        if line.startswith("database:"):
            return line[len("database:"):].strip()
    return None


def test_port_env_is_used(tmp_path, app_yaml, start_server):
    port = free_port()
    db = tmp_path / "env-port.db"
    srv = start_server([app_yaml, "--db", db], env={"PORT": str(port)}, port=port)
    srv.wait_ready()
    status, body = http("GET", srv.url + "/api/health")
    assert status == 200


def test_port_option_overrides_env(tmp_path, app_yaml, start_server):
    port = free_port()
    db = tmp_path / "opt-port.db"
    srv = start_server([app_yaml, "--db", db, "--port", port], env={"PORT": str(free_port())}, port=port)
    srv.wait_ready()
    status, body = http("GET", srv.url + "/api/health")
    assert status == 200


def test_database_url_relative(tmp_path, app_yaml, start_server):
    port = free_port()
    srv = start_server([app_yaml, "--port", port], env={"DATABASE_URL": "sqlite:///rel.db"}, port=port)
    srv.wait_ready()
    assert (tmp_path / "rel.db").exists()
    assert not (tmp_path / "sovrium.db").exists()
    assert (_banner_database(srv.stderr()) or "").endswith("rel.db"), srv.stderr()


def test_database_url_absolute(tmp_path, app_yaml, start_server):
    port = free_port()
    target = tmp_path / "sub" / "abs.db"
    target.parent.mkdir()
    srv = start_server([app_yaml, "--port", port], env={"DATABASE_URL": f"sqlite:///{target}"}, port=port)
    srv.wait_ready()
    assert target.exists()
    assert not (tmp_path / "sovrium.db").exists()


def test_database_url_memory(tmp_path, app_yaml, start_server):
    port = free_port()
    srv = start_server([app_yaml, "--port", port], env={"DATABASE_URL": "sqlite:///:memory:"}, port=port)
    srv.wait_ready()
    status, body = http("POST", srv.url + "/api/tables/notes/records", {"title": "in memory"})
    assert status == 201, body
    leftovers = [p.name for p in tmp_path.iterdir()
                 if p.name not in ("app.yaml",) and not p.name.endswith(".stderr")]
    assert leftovers == [], f"an in-memory database must not create files: {leftovers}"


def test_database_path_beats_database_url(tmp_path, app_yaml, start_server):
    port = free_port()
    srv = start_server([app_yaml, "--port", port],
                       env={"DATABASE_PATH": str(tmp_path / "from-path.db"),
                            "DATABASE_URL": f"sqlite:///{tmp_path / 'from-url.db'}"}, port=port)
    srv.wait_ready()
    assert (tmp_path / "from-path.db").exists()
    assert not (tmp_path / "from-url.db").exists()


def test_db_option_beats_database_path(tmp_path, app_yaml, start_server):
    port = free_port()
    srv = start_server([app_yaml, "--port", port, "--db", tmp_path / "from-option.db"],
                       env={"DATABASE_PATH": str(tmp_path / "from-path.db")}, port=port)
    srv.wait_ready()
    assert (tmp_path / "from-option.db").exists()
    assert not (tmp_path / "from-path.db").exists()


def test_default_database_in_working_directory(tmp_path, app_yaml, start_server):
    port = free_port()
    srv = start_server([app_yaml, "--port", port], port=port)
    srv.wait_ready()
    assert (tmp_path / "sovrium.db").exists()
