"""The deployment behind Debian's nginx, for real: `flask --app grader nginx-site` renders the site file,
a private nginx serves it with a self-signed certificate made here by openssl, and the real `serve`
process listens on a Unix socket with PROXY_FIX_HOPS = 1. Also the real `serve` on its own (TCP,
PROXY_FIX_HOPS = 0) for what the app believes about forwarding headers and for its connection limits.
Everything listens on 127.0.0.1."""
from __future__ import annotations

import http.client
import re
import secrets
import socket
import time
import uuid
from pathlib import Path

import pytest

from faults.slowclients import HALF_BODY, SlowClients, timed_requests, tls_context
from support.http import Client, csrf_of, urlencoded
from support.service import LocalNginx, ServiceProcesses, self_signed_cert
from grader.vm.qemu import free_port

pytestmark = pytest.mark.slow

HEADER_TIMEOUT = 2      # seconds nginx gives a client for its header, short so the cut is seen quickly
BODY_TIMEOUT = 3        # seconds nginx waits for the next part of a body
STUDENT = ("alice", "tp-" + secrets.token_urlsafe(12))
INSTRUCTOR = ("prof", "tp-" + secrets.token_urlsafe(12))


def access_line(svc: ServiceProcesses, path: str, timeout: float = 10) -> str:
    """The web process's access log line for ``path`` (requested once with a unique path)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in svc.log("web").splitlines():
            if "copylab.access" in line and f" {path} " in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no access log line for {path}: {svc.log('web')}")


def render(svc: ServiceProcesses, cert, key, https_port: int, http_port: int, plain_http: str) -> str:
    return svc.flask("nginx-site", "--server-name", "localhost", "--cert", str(cert), "--key", str(key),
                     "--https-port", str(https_port), "--http-port", str(http_port), "--listen-address",
                     "127.0.0.1", "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
                     "--plain-http", plain_http)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """`serve` on a Unix socket behind nginx (HTTPS, plain HTTP redirected)."""
    tmp = tmp_path_factory.mktemp("proxy")
    sock = tmp / "run" / "web.sock"
    sock.parent.mkdir()
    svc = ServiceProcesses(tmp / "instance", None, progress=lambda m: None, settings={
        "SECRET_KEY": secrets.token_urlsafe(48), "PROXY_FIX_HOPS": 1, "SERVE_UNIX_SOCKET": str(sock)})
    svc.setup("proxied", [STUDENT], INSTRUCTOR)
    cert, key = self_signed_cert(tmp)
    tls = tls_context(cert)
    https_port, http_port = free_port(), free_port()
    nginx = LocalNginx(tmp / "nginx", render(svc, cert, key, https_port, http_port, "redirect"),
                       [https_port, http_port])
    nginx.start()
    try:
        svc.start_web(answers=lambda: timed_requests(https_port, 1, tls, 2)["failures"] == 0)
        yield {"svc": svc, "tls": tls, "https": https_port, "http": http_port, "cert": cert, "key": key,
               "tmp": tmp, "sock": sock}
    finally:
        nginx.stop()
        svc.stop()


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    """`serve` alone on 127.0.0.1:port with the default PROXY_FIX_HOPS = 0."""
    svc = ServiceProcesses(tmp_path_factory.mktemp("direct") / "instance", None, progress=lambda m: None,
                           settings={"SECRET_KEY": secrets.token_urlsafe(48)})
    svc.flask("init-db")
    svc.start_web()
    yield svc
    svc.stop()


def post_form(c: Client, path: str, fields: list[tuple[str, str]]):
    """Fill the form of ``path`` as a browser on nginx's HTTPS port would (its CSRF token and Referer)."""
    page = c.get(path)
    assert page.status == 200, page.status
    body, ctype = urlencoded([("csrf_token", csrf_of(page.text())), *fields])
    return c.request("POST", path, body, {"Content-Type": ctype, "Referer": f"https://127.0.0.1:{c.port}{path}"})


def test_https_end_to_end_login(deployed):
    """Login page and a real login over HTTPS through nginx; the app sees HTTPS, the client's address and
    the host and port the browser used (Flask-WTF's HTTPS referrer check compares them)."""
    c = Client(deployed["https"], timeout=20, tls=deployed["tls"])
    r = post_form(c, "/login", [("username", STUDENT[0]), ("password", STUDENT[1])])
    assert r.status == 302, r.text()[:300]
    home = c.get("/")
    assert home.status == 200 and STUDENT[0] in home.text()
    # the hand-in URL shown with a new token is the one the browser used: https and nginx's port
    r = post_form(c, "/tokens", [("name", "handin")])
    assert r.status == 200 and f"url = https://127.0.0.1:{deployed['https']}\n" in r.text(), r.text()[-600:]
    path = f"/probe-{uuid.uuid4().hex}"
    assert c.get(path, headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "http",
                                "X-Forwarded-Host": "evil.example"}).status == 404
    line = access_line(deployed["svc"], path)
    # the client's own X-Forwarded-For entry is not believed: the address is the one nginx saw
    host = f"127.0.0.1:{deployed['https']}"
    assert re.search(rf"copylab.access INFO 127\.0\.0\.1 https {host} GET {path} 404$", line), line
    assert "203.0.113.9" not in line


def test_plain_http_redirects_to_https(deployed):
    c = http.client.HTTPConnection("127.0.0.1", deployed["http"], timeout=10)
    c.request("GET", "/login?next=/", headers={"Host": "evil.example"})
    r = c.getresponse()
    assert r.status == 301
    assert r.getheader("Location") == f"https://localhost:{deployed['https']}/login?next=/"


def test_plain_http_refused_when_configured(deployed):
    """--plain-http refuse: nothing listens on the HTTP port, HTTPS still serves."""
    https_port, http_port = free_port(), free_port()
    site = render(deployed["svc"], deployed["cert"], deployed["key"], https_port, http_port, "refuse")
    assert f":{http_port}" not in site
    with LocalNginx(deployed["tmp"] / "nginx-refuse", site, [https_port]):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", http_port), timeout=5)
        assert timed_requests(https_port, 2, deployed["tls"])["failures"] == 0


def test_body_larger_than_max_content_length_refused_by_nginx(deployed):
    c = Client(deployed["https"], timeout=20, tls=deployed["tls"])
    r = c.request("POST", "/login", b"x" * (2 * 1024 * 1024 + 1), {"Content-Type": "application/octet-stream"})
    assert r.status == 413 and "larger than 2097152 bytes" in r.text()


def test_nginx_limits_login_attempts_per_address(deployed):
    """`nginx-site --login-rate 1 --login-burst 3`: an address's first 4 login attempts reach the app (401), the
    5th is refused by nginx (429, its own message and Retry-After) and never reaches the web process; the
    login page itself and other addresses are not limited, and the password form counts like a login."""
    from faults.login import posts_reaching_app

    https_port = free_port()
    site = deployed["svc"].flask(
        "nginx-site", "--server-name", "localhost", "--cert", str(deployed["cert"]), "--key", str(deployed["key"]),
        "--https-port", str(https_port), "--listen-address", "127.0.0.1", "--plain-http", "refuse",
        "--login-rate", "1", "--login-burst", "3")
    with LocalNginx(deployed["tmp"] / "nginx-login-limit", site, [https_port]):
        guesser = Client(https_port, timeout=20, tls=deployed["tls"], source="127.0.0.7")
        answers = [post_form(guesser, "/login", [("username", "mallory"), ("password", f"guess-{i}")])
                   for i in range(5)]
        assert [a.status for a in answers] == [401, 401, 401, 401, 429], [a.status for a in answers]
        refused = answers[-1]
        assert refused.headers["retry-after"] == "60" and refused.headers["content-type"].startswith("text/plain")
        assert "Too many login attempts from your network address; try again in 60 seconds." in refused.text()
        assert guesser.get("/login").status == 200
        assert posts_reaching_app(deployed["svc"].logs("web"), ["127.0.0.7"]) == 4
        other = Client(https_port, timeout=20, tls=deployed["tls"], source="127.0.0.8")
        assert post_form(other, "/login", [("username", "mallory"), ("password", "guess")]).status == 401
        changer = Client(https_port, timeout=20, tls=deployed["tls"], source="127.0.0.9")
        form = [("csrf_token", "x"), ("old", "a"), ("new", "b")]
        body, ctype = urlencoded(form)
        statuses = [changer.request("POST", "/account/password", body, {"Content-Type": ctype}).status
                    for _ in range(5)]
        assert 429 not in statuses[:4] and statuses[4] == 429, statuses


def connections_to(sock) -> int:
    """Connected streams on the Unix socket ``sock`` (waitress's side of each nginx connection)."""
    rows = Path("/proc/net/unix").read_text().splitlines()[1:]
    return sum(1 for r in rows if r.split()[-1] == str(sock) and r.split()[5] == "03")


def test_slow_clients_are_cut_and_lock_nobody_out(deployed):
    """150 clients after the TLS handshake with half a header, 150 that never start TLS, 100 with half a
    body: normal requests still answer, the slow ones never reach waitress, and nginx closes each once its
    header or body timeout has passed."""
    port, tls = deployed["https"], deployed["tls"]
    with SlowClients(port, 150, tls) as half_header, SlowClients(port, 150, None) as silent, \
            SlowClients(port, 100, tls, sends=HALF_BODY) as half_body:
        r = timed_requests(port, 20, tls)
        assert r["failures"] == 0, r["failure_examples"]
        assert half_header.refused == silent.refused == half_body.refused == 0
        held = half_header.open_count() + silent.open_count() + half_body.open_count()
        assert held > 350, held                        # they really were holding connections
        assert connections_to(deployed["sock"]) <= 2   # at most a normal request in flight
        assert half_header.wait_all_cut(HEADER_TIMEOUT + 5) == 0
        assert silent.wait_all_cut(HEADER_TIMEOUT + 5) == 0
        assert half_body.wait_all_cut(HEADER_TIMEOUT + BODY_TIMEOUT + 5) == 0


def test_trickling_header_is_cut_at_the_header_timeout(deployed):
    """A client that sends one header byte a second is cut when the header timeout has passed in all:
    each byte does not buy it more time."""
    sock = deployed["tls"].wrap_socket(socket.create_connection(("127.0.0.1", deployed["https"]), timeout=10),
                                       server_hostname="127.0.0.1")
    t0 = time.monotonic()
    closed_after = None
    try:
        sock.sendall(b"GET /login HTTP/1.1\r\nHost: localhost\r\n")
        sock.settimeout(1)
        while time.monotonic() - t0 < HEADER_TIMEOUT + 6:
            try:
                sock.sendall(b"X")
                if sock.recv(4096) == b"":
                    closed_after = time.monotonic() - t0
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - t0
                break
    finally:
        sock.close()
    assert closed_after is not None and closed_after < HEADER_TIMEOUT + 3, closed_after


def test_forwarding_headers_ignored_without_proxyfix(direct):
    """PROXY_FIX_HOPS = 0: whatever a client claims in X-Forwarded-*, the app sees the connection's address."""
    path = f"/probe-{uuid.uuid4().hex}"
    c = Client(direct.port, timeout=20)
    assert c.get(path, headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                                "Forwarded": "for=203.0.113.9;proto=https"}).status == 404
    line = access_line(direct, path)
    assert re.search(rf"copylab.access INFO 127\.0\.0\.1 http 127\.0\.0\.1:{direct.port} GET {path} 404$", line), line


def test_serve_alone_outlasts_110_slow_clients(direct):
    """`serve`'s connection limit: 110 half-header clients (waitress's own limit of 100 locks everyone out)."""
    with SlowClients(direct.port, 110) as slow:
        r = timed_requests(direct.port, 10, timeout=10)
        assert slow.open_count() == 110
    assert r["failures"] == 0, r["failure_examples"]
