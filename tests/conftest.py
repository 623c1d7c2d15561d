"""Shared fixtures: an App on a fresh temporary database, driven through WebTest."""

import copy
import os
import socket
import subprocess
import sys
import time

import pytest
import webtest

import sovrium

TEST_ENV = {"SOVRIUM_ARGON2_PROFILE": "test", "SOVRIUM_RATE_LIMITS": "off"}

# A small no-auth application used by most record tests.
BASIC_CONFIG = {
    "name": "test-app",
    "version": "1.0.0",
    "tables": [
        {
            "id": 1,
            "name": "projects",
            "fields": [
                {"id": 1, "name": "name", "type": "single-line-text", "required": True, "unique": True},
                {"id": 2, "name": "budget", "type": "currency", "currency": "EUR", "min": 0},
                {"id": 3, "name": "tasks", "type": "relationship", "relatedTable": "tasks",
                 "relationType": "one-to-many", "relatedField": "project"},
                {"id": 4, "name": "task_count", "type": "count", "relationshipField": "tasks"},
                {"id": 5, "name": "open_estimate", "type": "rollup", "relationshipField": "tasks",
                 "relatedField": "remaining", "aggregation": "sum"},
            ],
        },
        {
            "id": 2,
            "name": "tasks",
            "fields": [
                {"id": 1, "name": "title", "type": "single-line-text", "required": True, "maxLength": 200},
                {"id": 2, "name": "status", "type": "single-select", "options": ["todo", "doing", "done"],
                 "default": "todo"},
                {"id": 3, "name": "estimate", "type": "decimal", "min": 0},
                {"id": 4, "name": "due", "type": "date", "indexed": True},
                {"id": 5, "name": "done", "type": "checkbox"},
                {"id": 6, "name": "project", "type": "relationship", "relatedTable": "projects",
                 "onDelete": "restrict"},
                {"id": 7, "name": "notes", "type": "long-text"},
                {"id": 8, "name": "remaining", "type": "formula", "formula": "IF({done}, 0, {estimate})"},
                {"id": 9, "name": "ref", "type": "autonumber"},
                {"id": 10, "name": "tags", "type": "multi-select", "options": ["red", "green", "blue"]},
                {"id": 11, "name": "email", "type": "email", "unique": True},
            ],
            "views": [
                {"id": "open", "name": "Open tasks", "isDefault": True,
                 "filters": {"and": [{"field": "done", "operator": "isFalse"}]},
                 "sorts": [{"field": "due", "direction": "asc"}], "groupBy": "status"},
            ],
        },
    ],
}


@pytest.fixture
def config():
    """A deep copy of BASIC_CONFIG that a test may change before building the app."""
    return copy.deepcopy(BASIC_CONFIG)


@pytest.fixture
def make_app(tmp_path):
    """Build App objects on temporary database files; all are closed after the test."""
    apps = []

    def make(cfg=None, db_name="test.db", env=None, **kw):
        app = sovrium.App(copy.deepcopy(cfg or BASIC_CONFIG), db_path=str(tmp_path / db_name),
                          env={**TEST_ENV, **(env or {})}, **kw)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    """WebTest client over the app's WSGI callable; errors are returned, never raised."""
    return webtest.TestApp(app.wsgi)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """Start a real `sovrium start` process; yields a function(config_path, **env) → base URL."""
    procs = []

    def start(config_path, db_path=None, env=None, args=()):
        port = free_port()
        db_path = db_path or str(tmp_path / "server.db")
        full_env = {**os.environ, **TEST_ENV, **(env or {})}
        proc = subprocess.Popen(
            [sys.executable, "-m", "sovrium", "start", str(config_path), "--port", str(port),
             "--db", db_path, *args],
            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("server exited: " + proc.stderr.read())
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("server did not start")
        start.proc = proc
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
