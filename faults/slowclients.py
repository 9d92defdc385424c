"""Part ``slowclients``: normal requests while slow clients hold connections open.

A slow client connects, sends half a request header (or a header and the first KB of a 100 KB body)
and then nothing (over TLS when it talks to nginx, after the handshake). The slow clients are reopened whenever the server cuts one, so their number
holds during a measurement. Meanwhile one normal client sends GET /login, each on a new connection (a
user's browser opening one), and the latency of each answer is taken; an answer that is not 200 within
the timeout is a failure.

Measured against the real `serve` process on 127.0.0.1: directly (waitress with the limits of
`serve`'s defaults, and for comparison with waitress's own limits), and behind Debian's nginx with the
site file `flask --app grader nginx-site` renders (TLS with a self-signed certificate, `serve` on a
Unix socket), each against its unloaded baseline. Afterwards, with the slow clients no longer reopened,
the ones still open after the server's timeout are counted: nginx and waitress must have cut them all.
Every loop is bounded in count and time; all traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import http.client
import secrets
import selectors
import shutil
import socket
import ssl
import statistics
import tempfile
import threading
import time
from pathlib import Path

from faults.report import Figure, zero
from support.service import LocalNginx, ServiceProcesses, self_signed_cert
from grader.vm.qemu import free_port

PART = "slowclients"
HALF_HEADER = b"GET /login HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slow-client\r\nX-Waiting: "
HALF_BODY = (b"POST /login HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slow-client\r\n"
             b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
P95_TARGET_MS = 500     # a page that answers within half a second is not noticeably slowed down


def tls_context(cert: Path) -> ssl.SSLContext:
    """A client context that trusts exactly the test certificate (and checks its address, 127.0.0.1)."""
    return ssl.create_default_context(cafile=str(cert))


class SlowClients:
    """``n`` connections to 127.0.0.1:port, each sending the start of a request (``sends``: half a header, or
    a header and part of the body) and then holding; the ones the server closes are reopened (while
    ``reopen`` is true) by a thread of their own, for at most ``limit`` s."""

    def __init__(self, port: int, n: int, tls: ssl.SSLContext | None = None, limit: float = 600,
                 sends: bytes = HALF_HEADER):
        self.port, self.n, self.tls, self.limit, self.sends = port, n, tls, limit, sends
        self.selector = selectors.DefaultSelector()
        self.reopen = True
        self.cut = 0                  # connections the server closed
        self.refused = 0              # connections that could not even be opened
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._lock = threading.Lock()

    def _open_one(self) -> None:
        try:
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            sock = self.tls.wrap_socket(raw, server_hostname="127.0.0.1") if self.tls else raw
            sock.sendall(self.sends)
            sock.setblocking(False)
        except OSError:
            self.refused += 1
            return
        with self._lock:
            self.selector.register(sock, selectors.EVENT_READ)

    def open_count(self) -> int:
        with self._lock:
            return len(self.selector.get_map())

    def _watch(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                events = self.selector.select(timeout=0.1) if self.selector.get_map() else []
            if not events:
                time.sleep(0.05)
                continue
            for key, _ in events:
                sock = key.fileobj
                try:
                    if sock.recv(4096):
                        continue          # an answer (408, 400): the server closes next
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue
                except OSError:
                    pass
                with self._lock:
                    self.selector.unregister(sock)
                sock.close()
                self.cut += 1
                if self.reopen and not self._stop.is_set():
                    self._open_one()

    def __enter__(self) -> "SlowClients":
        self.opened = time.monotonic()
        for _ in range(self.n):
            self._open_one()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()

    def wait_all_cut(self, after: float) -> int:
        """Stop reopening; wait until the server has closed them all, at most until ``after`` s since they were
        opened; return how many are still open."""
        self.reopen = False
        while self.open_count() and time.monotonic() < self.opened + after:
            time.sleep(0.2)
        return self.open_count()


def timed_requests(port: int, n: int, tls: ssl.SSLContext | None = None, timeout: float = 10) -> dict:
    """``n`` GET /login, each on a new connection: latencies (ms) of the answers and the failures."""
    ms, failures = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls) if tls
                else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout))
        try:
            conn.request("GET", "/login")
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                ms.append((time.perf_counter() - t0) * 1000)
            else:
                failures.append(f"HTTP {r.status}")
        except (OSError, http.client.HTTPException) as e:
            failures.append(f"{type(e).__name__}: {e}"[:120])
        finally:
            conn.close()
    return {"requests": n, "failures": len(failures), "failure_examples": failures[:3], "ms": ms,
            "median_ms": round(statistics.median(ms), 1) if ms else None,
            "p95_ms": round(statistics.quantiles(ms, n=20)[-1], 1) if len(ms) >= 2 else None}


def latency_figure(where: str, load: str, r: dict, target: bool = True) -> Figure:
    """One line: where, under which load, median/p95 and failures, against the target."""
    value = (f"median {r['median_ms']} ms, p95 {r['p95_ms']} ms, {r['failures']}/{r['requests']} failed"
             if r["ms"] else f"{r['failures']}/{r['requests']} failed")
    if not target:
        return Figure(PART, f"GET /login {where}, {load}", value, "", None,
                      "for comparison: waitress's own limits (100 connections, 120 s idle)")
    met = r["failures"] == 0 and r["p95_ms"] is not None and r["p95_ms"] <= P95_TARGET_MS
    return Figure(PART, f"GET /login {where}, {load}", value, f"p95 <= {P95_TARGET_MS} ms, 0 failed", met)


def measure(requests: int = 100, slow: tuple[int, ...] = (110, 300), progress=print, header_timeout: int = 10,
            body_timeout: int = 20, channel_timeout: int | None = None, compare_waitress_defaults: bool = True) -> dict:
    """The figures; ``channel_timeout`` None keeps `serve`'s default (the documented deployment), the nginx
    timeouts default to `nginx-site`'s."""
    from grader.service.config import Defaults

    tmp = Path(tempfile.mkdtemp(prefix="copylab-faults-slow-"))
    out: dict = {"figures": [], "runs": {}}
    direct = ServiceProcesses(tmp / "direct", None, progress, settings={"SECRET_KEY": secrets.token_urlsafe(48)})
    socket_path = tmp / "run" / "web.sock"
    socket_path.parent.mkdir()
    proxied = ServiceProcesses(tmp / "proxied", None, progress, settings={
        "SECRET_KEY": secrets.token_urlsafe(48), "PROXY_FIX_HOPS": 1, "SERVE_UNIX_SOCKET": str(socket_path)})
    nginx = None
    channel = channel_timeout or Defaults.SERVE_CHANNEL_TIMEOUT
    kinds = {"header": (HALF_HEADER, "half a header"), "body": (HALF_BODY, "a header and 1 KB of a 100 KB body")}
    try:
        direct.flask("init-db")
        proxied.flask("init-db")
        cert, key = self_signed_cert(tmp)
        tls = tls_context(cert)
        https_port, http_port = free_port(), free_port()
        site = proxied.flask("nginx-site", "--server-name", "localhost", "--cert", str(cert), "--key", str(key),
                             "--https-port", str(https_port), "--http-port", str(http_port), "--listen-address",
                             "127.0.0.1", "--header-timeout", str(header_timeout), "--body-timeout",
                             str(body_timeout))
        nginx = LocalNginx(tmp / "nginx", site, [https_port, http_port])
        nginx.start()

        def record(key_: str, where: str, n_slow: int, port: int, ctx, kind: str = "header", target: bool = True,
                   timeout: float = 10, n: int = requests) -> None:
            load = f"{n_slow} slow clients holding connections with {kinds[kind][1]}" if n_slow else \
                "no slow clients (baseline)"
            progress(f"slowclients: {where}, {load}")
            if n_slow:
                with SlowClients(port, n_slow, ctx, sends=kinds[kind][0]) as holders:
                    r = timed_requests(port, n, ctx, timeout)
                    r["slow_open_at_end"] = holders.open_count()
                    r["slow_refused"] = holders.refused
            else:
                r = timed_requests(port, n, ctx, timeout)
            out["runs"][key_] = {k: v for k, v in r.items() if k != "ms"}
            out["figures"].append(latency_figure(where, load, r, target).as_dict())

        def cut(where: str, port: int, ctx, timeouts: dict) -> None:
            """Slow clients of each kind opened together, no longer reopened: how many are still open 5 s after
            the server's timeout for that kind."""
            n = slow[0]
            with SlowClients(port, n, ctx, sends=HALF_HEADER) as header, \
                    SlowClients(port, n, ctx, sends=HALF_BODY) as body:
                for kind, holders in (("header", header), ("body", body)):
                    what, after = timeouts[kind]
                    left = holders.wait_all_cut(after + 5)
                    out["figures"].append(zero(PART, f"of {n} slow clients sending {kinds[kind][1]}, still connected "
                                                     f"to {where} {after + 5} s after connecting ({what})", left).as_dict())

        if compare_waitress_defaults:
            direct.start_web(args=("--connection-limit", "100", "--channel-timeout", "120",
                                   "--cleanup-interval", "30"))
            record("waitress_own_limits", "straight to waitress at its own limits", slow[0], direct.port, None,
                   target=False, timeout=2, n=min(requests, 10))
            direct.stop()
        direct.start_web(args=("--channel-timeout", str(channel)) if channel_timeout else ())
        record("direct_baseline", "straight to `serve`", 0, direct.port, None)
        for n in slow:
            record(f"direct_{n}", "straight to `serve`", n, direct.port, None)
        record(f"direct_{slow[-1]}_body", "straight to `serve`", slow[-1], direct.port, None, kind="body")
        proxied.start_web(answers=lambda: timed_requests(https_port, 1, tls, 2)["failures"] == 0)
        record("nginx_baseline", "through nginx (HTTPS)", 0, https_port, tls)
        for n in slow:
            record(f"nginx_{n}", "through nginx (HTTPS)", n, https_port, tls)
        record(f"nginx_{slow[-1]}_body", "through nginx (HTTPS)", slow[-1], https_port, tls, kind="body")

        cut("nginx", https_port, tls, {"header": (f"header timeout {header_timeout} s", header_timeout),
                                       "body": (f"body timeout {body_timeout} s", body_timeout)})
        # waitress looks for idle connections every cleanup interval
        idle = (f"idle timeout {channel} s", channel + Defaults.SERVE_CLEANUP_INTERVAL)
        cut("`serve`", direct.port, None, {"header": idle, "body": idle})
        out["settings"] = {"header_timeout": header_timeout, "body_timeout": body_timeout,
                           "channel_timeout": channel, "connection_limit": Defaults.SERVE_CONNECTION_LIMIT,
                           "requests": requests, "slow": list(slow)}
        return out
    finally:
        if nginx:
            nginx.stop()
        direct.stop()
        proxied.stop()
        shutil.rmtree(tmp, ignore_errors=True)
