"""`sovrium admin create` (OPERATIONS.md §2.1, §2.2, §12), run in-process with sovrium.main([...]).

Decisions taken from the spec:

* §2.2 lists the commands that never create a database (`validate --db`, `backup`, `export`,
  `import`, `prune`); `admin create` is not among them, and like `start` it applies `--config`
  (whose password rules it uses). So a missing `--db` file together with `--config` is created and
  initialized with that configuration (tested); a missing parent directory is exit 3 (§4 step 4).
* Password length rules come "from `--config` or default to 8..128" — without `--config` the
  defaults apply, even when the database's active configuration says otherwise.
* E-mail addresses are trimmed and lower-cased as everywhere else (API.md §13.1), so an existing
  address in another case is the same user (exit 1).
"""

import io
import json
import re
import sys

import pytest
import webtest

import sovrium

ID_RE = re.compile(r"^[A-Za-z0-9]{32}$")
EXISTS = "error: a user with this email already exists"

CONFIG = {
    "name": "admin-app",
    "auth": {"strategies": [{"type": "emailAndPassword", "minPasswordLength": 10}],
             "roles": ["editor"]},
    "tables": [{"id": 1, "name": "notes",
                "fields": [{"id": 1, "name": "title", "type": "single-line-text", "required": True}]}],
}

SOVRIUM_VARS = (
    "HOST", "PORT", "DATABASE_PATH", "DATABASE_URL", "BASE_URL", "AUTH_SECRET", "AUTH_ADMIN_EMAIL",
    "AUTH_ADMIN_PASSWORD", "AUTH_ADMIN_NAME", "TRUST_PROXY", "SMTP_URL", "SMTP_FROM",
    "SCHEMA_EDIT_API_ENABLED", "LOG_LEVEL", "LOG_FORMAT", "SOVRIUM_ARGON2_PROFILE", "SOVRIUM_THREADS",
    "SOVRIUM_RATE_LIMITS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in SOVRIUM_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SOVRIUM_ARGON2_PROFILE", "test")
    monkeypatch.setenv("SOVRIUM_RATE_LIMITS", "off")
    monkeypatch.chdir(tmp_path)                       # a stray ./sovrium.db lands in tmp_path
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal, empty


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "app.json"
    path.write_text(json.dumps(CONFIG))
    return path


@pytest.fixture
def db(tmp_path):
    return tmp_path / "cli.db"


def admin_create(*args):
    return sovrium.main(["admin", "create", *[str(a) for a in args]])


def run(capsys, *args):
    code = admin_create(*args)
    out, err = capsys.readouterr()
    return code, out, err


def sign_in(make_app, config_file, email, password, db_name="cli.db"):
    app = make_app(str(config_file), db_name=db_name)
    resp = webtest.TestApp(app.wsgi).post_json(
        "/api/auth/sign-in/email", {"email": email, "password": password}, expect_errors=True)
    return app, resp


def test_admin_create_initializes_missing_database_and_prints_id(capsys, make_app, config_file, db):
    assert not db.exists()
    code, out, err = run(capsys, "--email", "root@example.com", "--password", "root-password",
                         "--db", db, "--config", config_file)
    assert code == 0, err
    assert db.exists()
    lines = out.splitlines()
    assert len(lines) == 1 and ID_RE.match(lines[0]), out
    app, resp = sign_in(make_app, config_file, "root@example.com", "root-password")
    assert resp.status_int == 200, resp.text
    user = resp.json["user"]
    assert user["id"] == lines[0]
    assert user["role"] == "admin"
    assert user["emailVerified"] is True
    assert user["name"] == "Administrator"
    assert user["email"] == "root@example.com"
    # a real admin
    listing = webtest.TestApp(app.wsgi).get(
        "/api/auth/admin/list-users", headers={"Authorization": f"Bearer {resp.json['token']}"})
    assert listing.json["total"] == 1


def test_admin_create_name_option_and_normalized_email(capsys, make_app, config_file, db):
    code, out, err = run(capsys, "--email", "  Boss@Example.COM ", "--password", "boss-password",
                         "--name", "Big Boss", "--db", db, "--config", config_file)
    assert code == 0, err
    _, resp = sign_in(make_app, config_file, "boss@example.com", "boss-password")
    assert resp.status_int == 200, resp.text
    assert resp.json["user"]["name"] == "Big Boss"
    assert resp.json["user"]["email"] == "boss@example.com"
    assert resp.json["user"]["id"] == out.strip()


def test_password_from_stdin_when_not_a_terminal(capsys, monkeypatch, make_app, config_file, db):
    monkeypatch.setattr(sys, "stdin", io.StringIO("secret-password\n"))
    code, out, err = run(capsys, "--email", "root@example.com", "--db", db, "--config", config_file)
    assert code == 0, err
    assert ID_RE.match(out.strip())
    _, resp = sign_in(make_app, config_file, "root@example.com", "secret-password")
    assert resp.status_int == 200, resp.text          # the newline is not part of the password
    assert resp.json["user"]["role"] == "admin"


def test_password_from_stdin_uses_the_first_line_only(capsys, monkeypatch, make_app, config_file, db):
    monkeypatch.setattr(sys, "stdin", io.StringIO("first-line-pw\nsecond-line-pw\n"))
    code, _, err = run(capsys, "--email", "root@example.com", "--db", db, "--config", config_file)
    assert code == 0, err
    _, resp = sign_in(make_app, config_file, "root@example.com", "first-line-pw")
    assert resp.status_int == 200, resp.text


def test_password_option_wins_over_stdin(capsys, monkeypatch, make_app, config_file, db):
    monkeypatch.setattr(sys, "stdin", io.StringIO("stdin-password\n"))
    code, _, err = run(capsys, "--email", "root@example.com", "--password", "option-password",
                       "--db", db, "--config", config_file)
    assert code == 0, err
    app, resp = sign_in(make_app, config_file, "root@example.com", "option-password")
    assert resp.status_int == 200, resp.text


def test_empty_stdin_password_is_exit_2(capsys, config_file, db):
    code, out, err = run(capsys, "--email", "root@example.com", "--db", db, "--config", config_file)
    assert code == 2
    assert out == ""
    assert "error:" in err and "password" in err.lower()


def test_existing_email_is_exit_1(capsys, make_app, config_file, db):
    code, first_id, err = run(capsys, "--email", "root@example.com", "--password", "root-password",
                              "--db", db, "--config", config_file)
    assert code == 0, err
    for email in ("root@example.com", "ROOT@Example.com"):
        code, out, err = run(capsys, "--email", email, "--password", "other-password",
                             "--db", db, "--config", config_file)
        assert code == 1
        assert out == ""
        assert EXISTS in err.splitlines()
    # the existing user is unchanged
    _, resp = sign_in(make_app, config_file, "root@example.com", "root-password")
    assert resp.status_int == 200
    assert resp.json["user"]["id"] == first_id.strip()


def test_existing_email_of_a_member_is_exit_1_and_unchanged(capsys, make_app, config_file, db):
    app = make_app(str(config_file), db_name="cli.db")
    member = app.create_user("mia@example.com", "member-password", name="Mia", role="member")
    app.close()
    code, out, err = run(capsys, "--email", "mia@example.com", "--password", "admin-password",
                         "--db", db, "--config", config_file)
    assert code == 1
    assert EXISTS in err.splitlines()
    _, resp = sign_in(make_app, config_file, "mia@example.com", "member-password")
    assert resp.json["user"]["id"] == member["id"]
    assert resp.json["user"]["role"] == "member"


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "two@@example.com", "sp ace@example.com",
                                   "x" * 250 + "@example.com"])
def test_invalid_email_is_exit_2(capsys, config_file, db, email):
    code, out, err = run(capsys, "--email", email, "--password", "root-password",
                         "--db", db, "--config", config_file)
    assert code == 2
    assert out == ""
    assert "error:" in err and "email" in err.lower()


def test_too_short_password_is_exit_2_and_nothing_created(capsys, make_app, config_file, db):
    # --config sets minPasswordLength 10
    code, out, err = run(capsys, "--email", "root@example.com", "--password", "nine-char",
                         "--db", db, "--config", config_file)
    assert code == 2
    assert out == ""
    assert "error:" in err and "password" in err.lower()
    code, out, err = run(capsys, "--email", "root@example.com", "--password", "ten-chars!",
                         "--db", db, "--config", config_file)
    assert code == 0, err                              # the address was not taken by the failure
    _, resp = sign_in(make_app, config_file, "root@example.com", "ten-chars!")
    assert resp.status_int == 200


def test_too_long_password_is_exit_2(capsys, config_file, db):
    code, out, err = run(capsys, "--email", "root@example.com", "--password", "x" * 129,
                         "--db", db, "--config", config_file)
    assert code == 2
    assert out == ""
    assert "error:" in err and "password" in err.lower()


def test_existing_database_without_config_uses_default_rules(capsys, make_app, config_file, db):
    app = make_app(str(config_file), db_name="cli.db")
    app.close()
    code, out, err = run(capsys, "--email", "short@example.com", "--password", "seven77", "--db", db)
    assert code == 2                                   # default minimum 8
    assert "password" in err.lower()
    code, out, err = run(capsys, "--email", "root@example.com", "--password", "nine-char", "--db", db)
    assert code == 0, err                              # 9 ≥ default 8 (no --config given)
    assert ID_RE.match(out.strip())
    _, resp = sign_in(make_app, config_file, "root@example.com", "nine-char")
    assert resp.status_int == 200, resp.text
    assert resp.json["user"]["role"] == "admin"
    assert resp.json["user"]["emailVerified"] is True


def test_database_from_environment(capsys, monkeypatch, make_app, config_file, tmp_path):
    monkeypatch.setenv("DATABASE_PATH", str(tmp_path / "env.db"))
    code, _, err = run(capsys, "--email", "root@example.com", "--password", "root-password",
                       "--config", config_file)
    assert code == 0, err
    _, resp = sign_in(make_app, config_file, "root@example.com", "root-password", db_name="env.db")
    assert resp.status_int == 200, resp.text


def test_missing_email_is_exit_2(capsys, config_file, db):
    code, out, err = run(capsys, "--password", "root-password", "--db", db, "--config", config_file)
    assert code == 2
    assert "error:" in err and "--email" in err


def test_unknown_option_is_exit_2(capsys, config_file, db):
    code, _, err = run(capsys, "--email", "root@example.com", "--password", "root-password",
                       "--role", "member", "--db", db, "--config", config_file)
    assert code == 2
    assert "--role" in err


def test_missing_parent_directory_is_exit_3(capsys, config_file, tmp_path):
    code, out, err = run(capsys, "--email", "root@example.com", "--password", "root-password",
                         "--db", tmp_path / "nowhere" / "x.db", "--config", config_file)
    assert code == 3
    assert out == ""
    assert "error:" in err


def test_bad_config_is_exit_1(capsys, tmp_path, db):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "tables": [{"id": 1, "name": "t", "fields": []}],
                               "auth": {"strategies": []}}))
    code, out, err = run(capsys, "--email", "root@example.com", "--password", "root-password",
                         "--db", db, "--config", bad)
    assert code == 1
    assert out == ""
    assert "auth.strategies" in err
