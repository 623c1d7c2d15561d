"""E-mail delivery (API.md §13.14, OPERATIONS.md §6, §10, §14; CONFIG.md §10.6).

Outbox mode is read from `mail_outbox` and the `mail` log line; SMTP delivery is tested against a
real SMTP server on loopback (aiosmtpd), never a mock of smtplib.
"""

import copy
import email
import email.policy
import json
import logging
import re
import socket
import threading
import time
from datetime import datetime, timezone

import pytest
import webtest

import sovrium
from conftest import TEST_ENV, free_port

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")

BASE = "http://localhost:3000"
SECRET = "sovrium-test-secret-0123456789-abcdefghijkl"
PASSWORD = "correct horse 1"
RESET_BODY = {"status": True,
              "message": "If this email exists in our system, check your email for the reset link"}
SMTP_FROM_ADDR = "noreply@example.test"
LINK_RE = re.compile(r"https?://[^\s<>\"']+")


def auth_cfg(**auth):
    section = {"strategies": [{"type": "emailAndPassword", "minPasswordLength": 8}]}
    section.update(auth)
    return {"name": "auth-app", "auth": section,
            "tables": [{"id": 1, "name": "notes", "fields": [{"id": 1, "name": "title",
                                                             "type": "single-line-text"}]}]}


class Clock:
    def __init__(self):
        self.now = datetime(2026, 3, 1, 8, 0, 0, tzinfo=timezone.utc)

    def __call__(self):
        return self.now


@pytest.fixture
def mk(tmp_path):
    apps = []

    def make(cfg=None, env=None):
        full = {**TEST_ENV, "AUTH_SECRET": SECRET, "BASE_URL": BASE, **(env or {})}
        app = sovrium.App(copy.deepcopy(cfg or auth_cfg()), db_path=str(tmp_path / "mail.db"), env=full,
                          clock=Clock())
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def client_for(app):
    return webtest.TestApp(app.wsgi, extra_environ={"REMOTE_ADDR": "127.0.0.1"})


def sign_up(client, email_addr="ada@example.com", name="Ada Quill"):
    resp = client.post_json("/api/auth/sign-up/email", {"name": name, "email": email_addr, "password": PASSWORD},
                            expect_errors=True)
    assert resp.status_int == 200, resp.body
    return resp.json["user"]


def request_reset(client, email_addr="ada@example.com", redirect="/reset"):
    return client.post_json("/api/auth/request-password-reset", {"email": email_addr, "redirectTo": redirect},
                            expect_errors=True)


def outbox(app):
    rows = app.db.conn().execute("SELECT to_addr, subject, body, status, error, created_at, sent_at "
                                 "FROM mail_outbox ORDER BY id").fetchall()
    return [dict(zip(("to", "subject", "body", "status", "error", "created_at", "sent_at"), r)) for r in rows]


def mail_lines(caplog):
    """The `mail` event lines logged by the sovrium logger (OPERATIONS.md §6, §10)."""
    out = []
    for rec in caplog.records:
        if rec.name != "sovrium":
            continue
        msg = rec.getMessage()
        if re.match(r"^\S+ INFO mail ", msg):
            out.append(msg)
    return out


def log_value(line, key):
    """A key=value value of a text log line, decoding the JSON-string form."""
    m = re.search(r"(?:^| )" + re.escape(key) + r'=("(?:[^"\\]|\\.)*"|\S+)', line)
    assert m, (key, line)
    raw = m.group(1)
    return (json.loads(raw) if raw.startswith('"') else raw), raw


###############################################################################
# Outbox mode
###############################################################################


def test_outbox_stores_message_and_logs_one_line(mk, caplog):
    caplog.set_level(logging.INFO, logger="sovrium")
    app = mk()
    client = client_for(app)
    sign_up(client)
    caplog.clear()
    resp = request_reset(client)
    assert resp.status_int == 200 and resp.json == RESET_BODY
    rows = outbox(app)
    assert len(rows) == 1
    row = rows[0]
    assert row["to"] == "ada@example.com"
    assert row["status"] == "queued"
    assert row["subject"]
    assert row["created_at"] == "2026-03-01T08:00:00.000Z"
    links = LINK_RE.findall(row["body"])
    assert links, row["body"]
    link = links[0]
    assert re.match(re.escape(BASE) + r"/api/auth/reset-password/[A-Za-z0-9_-]{32}\?callbackURL=", link), link

    lines = mail_lines(caplog)
    assert len(lines) == 1, lines
    line = lines[0]
    assert log_value(line, "to")[0] == "ada@example.com"
    subject, raw_subject = log_value(line, "subject")
    assert subject == row["subject"]
    if " " in subject:
        assert raw_subject.startswith('"')
    logged_link, raw_link = log_value(line, "link")
    assert logged_link == link
    if "=" in link:
        # §6 / §17.25: a value containing '=' is written as a JSON string.
        assert raw_link == json.dumps(link)


def test_outbox_unknown_email_stores_and_logs_nothing(mk, caplog):
    caplog.set_level(logging.INFO, logger="sovrium")
    app = mk()
    client = client_for(app)
    sign_up(client)
    caplog.clear()
    resp = request_reset(client, email_addr="nobody@example.com")
    assert resp.status_int == 200 and resp.json == RESET_BODY
    assert outbox(app) == []
    assert mail_lines(caplog) == []


def test_outbox_verification_mail_logged(mk, caplog):
    caplog.set_level(logging.INFO, logger="sovrium")
    app = mk(auth_cfg(strategies=[{"type": "emailAndPassword", "requireEmailVerification": True}]))
    client = client_for(app)
    caplog.clear()
    sign_up(client)
    rows = outbox(app)
    assert len(rows) == 1 and rows[0]["status"] == "queued"
    link = LINK_RE.findall(rows[0]["body"])[0]
    assert link.startswith(BASE + "/api/auth/verify-email?token=")
    lines = mail_lines(caplog)
    assert len(lines) == 1
    assert log_value(lines[0], "link")[0] == link


def test_no_secrets_in_logs(mk, caplog):
    caplog.set_level(logging.DEBUG, logger="sovrium")
    app = mk()
    client = client_for(app)
    resp = client.post_json("/api/auth/sign-up/email",
                            {"name": "Ada", "email": "ada@example.com", "password": PASSWORD})
    token = resp.json["token"]
    client.get("/api/auth/get-session", headers={"Authorization": "Bearer " + token})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert PASSWORD not in text
    assert token not in text


###############################################################################
# Templates (CONFIG.md §10.6)
###############################################################################


def test_templates_with_placeholders(mk):
    templates = {
        "resetPassword": {"subject": "{appName}: new password for {name}",
                          "text": "Hi {name} <{email}>, open {url} within the hour. {unknown} stays."},
        "verifyEmail": {"subject": "Confirm {email} for {appName}", "text": "Welcome {name}! Confirm: {url}"},
    }
    app = mk(auth_cfg(emailTemplates=templates))
    client = client_for(app)
    sign_up(client, name="Zoë Ångström")
    assert request_reset(client).status_int == 200
    client.post_json("/api/auth/send-verification-email", {"email": "ada@example.com"})
    reset, verify = outbox(app)
    assert reset["subject"] == "auth-app: new password for Zoë Ångström"
    url = LINK_RE.findall(reset["body"])[0]
    assert url.startswith(BASE + "/api/auth/reset-password/")
    assert reset["body"] == f"Hi Zoë Ångström <ada@example.com>, open {url} within the hour. {{unknown}} stays."
    assert verify["subject"] == "Confirm ada@example.com for auth-app"
    vurl = LINK_RE.findall(verify["body"])[0]
    assert vurl.startswith(BASE + "/api/auth/verify-email?token=")
    assert verify["body"] == f"Welcome Zoë Ångström! Confirm: {vurl}"


def test_default_templates_contain_link(mk):
    app = mk()
    client = client_for(app)
    sign_up(client)
    request_reset(client)
    row = outbox(app)[0]
    assert "auth-app" in row["subject"]
    assert LINK_RE.search(row["body"])


###############################################################################
# SMTP delivery against a real server on loopback
###############################################################################


class Collector:
    """aiosmtpd handler: collects messages; DATA can be held until `release` is set."""

    def __init__(self, hold=False):
        self.messages = []
        self.release = threading.Event()
        self.in_data = threading.Event()
        if not hold:
            self.release.set()

    async def handle_DATA(self, server, session, envelope):
        self.in_data.set()
        self.release.wait(5)
        self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                              "content": envelope.original_content or envelope.content})
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server():
    started = []

    def start(hold=False):
        handler = Collector(hold)
        port = free_port()
        controller = aiosmtpd_controller.Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        started.append((controller, handler))
        return handler, port

    yield start
    for controller, handler in started:
        handler.release.set()
        controller.stop()


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return predicate()


def test_smtp_delivery_after_response(mk, smtp_server):
    handler, port = smtp_server(hold=True)
    app = mk(env={"SMTP_URL": f"smtp://127.0.0.1:{port}", "SMTP_FROM": f"Sovrium Tests <{SMTP_FROM_ADDR}>"},
             cfg=auth_cfg(emailTemplates={"resetPassword": {"subject": "Reset for {appName} ✓",
                                                            "text": "Hello {name}: {url}"}}))
    client = client_for(app)
    sign_up(client, name="Zoë Ångström")

    started = time.monotonic()
    resp = request_reset(client)
    elapsed = time.monotonic() - started
    assert resp.status_int == 200 and resp.json == RESET_BODY
    # The SMTP server holds the message in DATA: the response did not wait for delivery.
    assert handler.messages == []
    assert elapsed < 4.0
    assert wait_for(handler.in_data.is_set), "the message never reached the SMTP server"
    assert handler.messages == []
    handler.release.set()
    assert wait_for(lambda: handler.messages), "no message delivered within 5 s"

    msg = handler.messages[0]
    assert msg["from"] == SMTP_FROM_ADDR
    assert msg["to"] == ["ada@example.com"]
    parsed = email.message_from_bytes(msg["content"], policy=email.policy.default)
    assert parsed["To"].addresses[0].addr_spec == "ada@example.com"
    assert parsed["From"].addresses[0].addr_spec == SMTP_FROM_ADDR
    assert str(parsed["Subject"]) == "Reset for auth-app ✓"
    assert parsed.get_content_type() == "text/plain"
    body = parsed.get_content()
    assert body.strip().startswith("Hello Zoë Ångström: ")
    link = LINK_RE.findall(body)[0]
    assert re.match(re.escape(BASE) + r"/api/auth/reset-password/([A-Za-z0-9_-]{32})\?callbackURL=", link), link
    token = re.search(r"/reset-password/([^?]+)", link).group(1)
    # The delivered link works.
    resp = client.post_json("/api/auth/reset-password", {"token": token, "newPassword": "a whole new one"},
                            expect_errors=True)
    assert resp.status_int == 200 and resp.json == {"status": True}
    # Nothing is left queued or failed for this message.
    assert wait_for(lambda: all(r["status"] != "queued" for r in outbox(app)))
    assert all(r["status"] == "sent" for r in outbox(app)), outbox(app)


def test_smtp_unknown_email_sends_nothing(mk, smtp_server):
    handler, port = smtp_server()
    app = mk(env={"SMTP_URL": f"smtp://127.0.0.1:{port}", "SMTP_FROM": SMTP_FROM_ADDR})
    client = client_for(app)
    sign_up(client)
    resp = request_reset(client, email_addr="nobody@example.com")
    assert resp.status_int == 200 and resp.json == RESET_BODY
    resp = request_reset(client)
    assert resp.status_int == 200
    assert wait_for(lambda: handler.messages)
    time.sleep(0.1)
    assert [m["to"] for m in handler.messages] == [["ada@example.com"]]


def test_smtp_failure_recorded(mk, caplog):
    caplog.set_level(logging.INFO, logger="sovrium")
    with socket.socket() as s:  # a port on which nothing listens: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = mk(env={"SMTP_URL": f"smtp://127.0.0.1:{port}", "SMTP_FROM": SMTP_FROM_ADDR})
    client = client_for(app)
    sign_up(client)
    resp = request_reset(client)
    assert resp.status_int == 200 and resp.json == RESET_BODY

    def failed():
        rows = [r for r in outbox(app) if r["status"] == "failed"]
        return rows
    rows = wait_for(failed)
    assert rows, outbox(app)
    assert len(rows) == 1
    assert rows[0]["to"] == "ada@example.com"
    assert rows[0]["error"]
    assert LINK_RE.search(rows[0]["body"])
    assert wait_for(lambda: any(r.levelno == logging.ERROR and r.name == "sovrium" for r in caplog.records))
    # The application keeps answering normally.
    resp = request_reset(client)
    assert resp.status_int == 200 and resp.json == RESET_BODY


def test_smtp_default_sender(mk, smtp_server):
    handler, port = smtp_server()
    app = mk(env={"SMTP_URL": f"smtp://127.0.0.1:{port}"})
    client = client_for(app)
    sign_up(client)
    request_reset(client)
    assert wait_for(lambda: handler.messages), "no message delivered within 5 s"
    msg = handler.messages[0]
    # OPERATIONS.md §3: SMTP_FROM defaults to `<app name> <no-reply@<BASE_URL host>>`.
    assert msg["from"] == "no-reply@localhost"
    parsed = email.message_from_bytes(msg["content"], policy=email.policy.default)
    assert parsed["From"].addresses[0].addr_spec == "no-reply@localhost"
    assert parsed["From"].addresses[0].display_name == "auth-app"


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_login_with_credentials(mk):
    from aiosmtpd.smtp import AuthResult

    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        ok = auth_data.login == b"mailer" and auth_data.password == b"s3cret"
        return AuthResult(success=ok)

    handler = Collector()
    port = free_port()
    controller = aiosmtpd_controller.Controller(handler, hostname="127.0.0.1", port=port,
                                                authenticator=authenticator, auth_require_tls=False,
                                                auth_required=True)
    controller.start()
    try:
        app = mk(env={"SMTP_URL": f"smtp://mailer:s3cret@127.0.0.1:{port}", "SMTP_FROM": SMTP_FROM_ADDR})
        client = client_for(app)
        sign_up(client)
        assert request_reset(client).status_int == 200
        assert wait_for(lambda: handler.messages), f"no message delivered within 5 s; logins={logins}"
        assert (b"mailer", b"s3cret") in logins
        assert handler.messages[0]["to"] == ["ada@example.com"]
    finally:
        controller.stop()
