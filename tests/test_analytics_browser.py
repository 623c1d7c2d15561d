"""The tracking script in a real headless Chromium (API.md §11.1, §11.2; issue 5 "Test with a real browser").

A real `sovrium start` process serves the API with `analytics: true`; a tiny stdlib HTTP server on
another port serves HTML pages that include `<script src="http://127.0.0.1:P/api/analytics/script.js"
data-allow-automation>`. Chromium is driven over the DevTools protocol (a minimal stdlib WebSocket
client): it loads page one, follows the link to page two, navigates like a single-page app, and the
test checks the stored events in the server's database, that no cookie and no localStorage or
sessionStorage entry exists (DevTools and the profile's Cookies database), and that a page whose
script tag lacks `data-allow-automation` sends nothing while `navigator.webdriver` is true.

Needs the Debian package `chromium` (`apt-get install -y chromium`); skipped only when no Chromium
binary can be found.
"""

import base64
import http.server
import json
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

from conftest import free_port

DESKTOP_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/126.0 Safari/537.36")
CONFIG = {"name": "browser-analytics", "version": "1.0.0", "analytics": True,
          "tables": [{"id": 1, "name": "notes", "fields": [{"id": 1, "name": "title", "type": "single-line-text"}]}]}


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    for path in ("/usr/bin/chromium", "/usr/lib/chromium/chromium", "/usr/bin/chromium-browser"):
        if os.path.exists(path):
            return path
    return None


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium not found: install the Debian package with `apt-get install -y chromium` "
           "to run the real-browser analytics test")


###############################################################################
# A minimal DevTools-protocol client over a stdlib WebSocket
###############################################################################

class CDP:
    def __init__(self, ws_url, timeout=30):
        u = urllib.parse.urlsplit(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("DevTools closed the WebSocket handshake")
            data += chunk
        head, self.buf = data.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n")[0]
        if b" 101 " not in status + b" ":
            raise RuntimeError(f"DevTools WebSocket handshake failed: {head!r}")
        self.next_id = 0
        self.events = []

    def _send_frame(self, opcode, data):
        header = bytearray([0x80 | opcode])
        n = len(data)
        if n < 126:
            header.append(0x80 | n)
        elif n < 65536:
            header.append(0x80 | 126)
            header += struct.pack(">H", n)
        else:
            header.append(0x80 | 127)
            header += struct.pack(">Q", n)
        mask = os.urandom(4)
        header += mask
        self.sock.sendall(bytes(header) + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _recv_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("DevTools connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _recv_message(self):
        parts = []
        while True:
            b0, b1 = self._recv_exact(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            mask = self._recv_exact(4) if b1 & 0x80 else None
            payload = self._recv_exact(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise EOFError("DevTools connection closed")
            if opcode == 0xA:
                continue
            parts.append(payload)
            if b0 & 0x80:
                return json.loads(b"".join(parts))

    def call(self, method, **params):
        self.next_id += 1
        mid = self.next_id
        self._send_frame(0x1, json.dumps({"id": mid, "method": method, "params": params}).encode())
        while True:
            msg = self._recv_message()
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def drop_events(self, method):
        self.events = [e for e in self.events if e.get("method") != method]

    def wait_event(self, method, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            self.events.append(self._recv_message())

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url):
        self.drop_events("Page.loadEventFired")
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


###############################################################################
# Fixtures: the page server, Chromium
###############################################################################

def page(title, script_src, link=None, allow_automation=True):
    attr = " data-allow-automation" if allow_automation else ""
    link_html = f'<a id="next" href="{link}">next</a>' if link else ""
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title></head><body>"
            f"<h1>{title}</h1>{link_html}<p id=wd></p>"
            f"<script>document.getElementById('wd').textContent = String(navigator.webdriver)</script>"
            f'<script src="{script_src}"{attr}></script></body></html>')


@pytest.fixture
def site():
    """A stdlib HTTP server on a free port; yields (base URL, pages dict to fill)."""
    pages = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.get(self.path.split("?")[0].split("#")[0])
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", pages
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def chromium(tmp_path):
    """Start headless Chromium with remote debugging; yields (CDP page session, profile dir)."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    log = open(tmp_path / "chromium.log", "wb")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage", "--enable-automation",
         "--lang=en-US", f"--user-data-dir={profile}", f"--user-agent={DESKTOP_UA}",
         "--remote-debugging-port=0", "--remote-allow-origins=*", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT)
    cdp = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip().count("\n") >= 1):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError("Chromium did not start: " +
                                   (tmp_path / "chromium.log").read_text(errors="replace")[-2000:])
            time.sleep(0.05)
        port = int(port_file.read_text().split("\n")[0])
        target = None
        while target is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
                targets = json.load(resp)
            target = next((t for t in targets if t.get("type") == "page"), None)
            if target is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no page target: {targets}")
                time.sleep(0.05)
        cdp = CDP(target["webSocketDebuggerUrl"])
        cdp.call("Page.enable")
        cdp.call("Network.enable")
        yield cdp, profile, proc
    finally:
        if cdp is not None:
            try:
                cdp.call("Browser.close")
            except Exception:
                pass
            cdp.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def read_events(db_path):
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        cur = conn.execute("SELECT host, path, title, referrer_domain, device, browser, os, language, screen_w, "
                           "screen_h, visitor, session, is_entrance FROM analytics_events ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        conn.close()


def wait_events(db_path, n, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        events = read_events(db_path)
        if len(events) >= n or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


###############################################################################
# The test
###############################################################################

def test_script_in_real_chromium(server, site, chromium, tmp_path):
    config_path = tmp_path / "app.json"
    config_path.write_text(json.dumps(CONFIG))
    db_path = tmp_path / "server.db"
    api = server(config_path, db_path=str(db_path))
    api_port = urllib.parse.urlsplit(api).port
    site_url, pages = site
    site_port = urllib.parse.urlsplit(site_url).port
    src = f"http://127.0.0.1:{api_port}/api/analytics/script.js"
    pages["/page1.html"] = page("Page one", src, link="/page2.html")
    pages["/page2.html"] = page("Page two", src, link="/page1.html")
    pages["/page3.html"] = page("Page three", src, allow_automation=False)
    cdp, profile, proc = chromium

    # 1. Load page one, follow its link to page two: two page views arrive.
    cdp.navigate(f"{site_url}/page1.html")
    assert cdp.evaluate("navigator.userAgent") == DESKTOP_UA
    events = wait_events(db_path, 1)
    assert [e["path"] for e in events] == ["/page1.html"], events
    cdp.drop_events("Page.loadEventFired")
    cdp.evaluate("document.getElementById('next').click()")
    cdp.wait_event("Page.loadEventFired")
    assert cdp.evaluate("location.pathname") == "/page2.html"
    events = wait_events(db_path, 2)
    assert [e["path"] for e in events] == ["/page1.html", "/page2.html"], events
    first, second = events
    for e in events:
        assert e["host"] == "127.0.0.1"
        assert (e["device"], e["browser"], e["os"]) == ("desktop", "Chrome", "Linux"), e
        assert e["language"] == "en-us", e
        assert e["referrer_domain"] is None, e     # page one: no referrer; page two: internal
        assert isinstance(e["screen_w"], int) and e["screen_w"] > 0
        assert isinstance(e["screen_h"], int) and e["screen_h"] > 0
    assert (first["title"], second["title"]) == ("Page one", "Page two")
    assert first["visitor"] == second["visitor"] and first["session"] == second["session"]
    assert (first["is_entrance"], second["is_entrance"]) == (1, 0)

    # 2. Single-page navigation: pushState sends, replaceState to the same URL does not (never the
    #    same p twice in a row), popstate sends.
    cdp.evaluate("history.pushState({}, '', '/spa/next'); 1")
    events = wait_events(db_path, 3)
    assert [e["path"] for e in events][2:] == ["/spa/next"], events
    cdp.evaluate("history.replaceState({}, '', '/spa/next'); 1")
    cdp.evaluate("new Promise(r => { addEventListener('popstate', () => r(1), {once: true}); history.back(); })")
    events = wait_events(db_path, 4)
    assert [e["path"] for e in events] == ["/page1.html", "/page2.html", "/spa/next", "/page2.html"], events

    # 3. No cookie and no storage entry anywhere.
    cookies = cdp.call("Network.getCookies", urls=[f"{site_url}/page1.html", src, api + "/"])["cookies"]
    assert cookies == []
    assert cdp.evaluate("[document.cookie, localStorage.length, sessionStorage.length]") == ["", 0, 0]
    # The API's own origin (a document loaded from it) has none either.
    cdp.navigate(src)
    assert cdp.evaluate("location.origin") == f"http://127.0.0.1:{api_port}"
    assert cdp.evaluate("[document.cookie, localStorage.length, sessionStorage.length]") == ["", 0, 0]

    # 4. An automated browser (navigator.webdriver) is not counted unless the tag opts in.
    cdp.navigate(f"{site_url}/page3.html")
    assert cdp.evaluate("navigator.webdriver") is True
    cdp.navigate(f"{site_url}/page1.html")
    events = wait_events(db_path, 5)
    time.sleep(0.3)
    events = read_events(db_path)
    assert [e["path"] for e in events] == ["/page1.html", "/page2.html", "/spa/next", "/page2.html",
                                           "/page1.html"], events

    # 5. The report agrees.
    with urllib.request.urlopen(api + "/api/analytics/overview?period=24h", timeout=10) as resp:
        overview = json.load(resp)
    assert overview["summary"]["pageViews"] == 5
    assert overview["summary"]["sessions"] == 1
    with urllib.request.urlopen(api + "/api/analytics/pages?period=24h", timeout=10) as resp:
        assert json.load(resp)["pages"][0] == {"path": "/page1.html", "pageViews": 2, "uniqueVisitors": 1}

    # 6. After the browser is closed, its profile holds no cookie and no localStorage data for either origin.
    cdp.call("Browser.close")
    proc.wait(15)
    cookie_db = profile / "Default" / "Cookies"
    if cookie_db.exists():
        conn = sqlite3.connect(f"file:{cookie_db}?mode=ro", uri=True)
        try:
            assert conn.execute("SELECT count(*) FROM cookies").fetchone()[0] == 0
        finally:
            conn.close()
    local_storage = profile / "Default" / "Local Storage"
    if local_storage.exists():
        for root, _dirs, files in os.walk(local_storage):
            for name in files:
                data = (open(os.path.join(root, name), "rb").read())
                for port in (site_port, api_port):
                    assert f"127.0.0.1:{port}".encode() not in data, (name, port)
