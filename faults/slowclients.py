"""Part ``slowclients``: normal requests while slow clients hold connections open.

A slow client connects, sends half a request header and then nothing (over TLS when it talks to nginx,
after the handshake). The slow clients are reopened whenever the server cuts one, so their number
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
from grader.service.harness import LocalNginx, ServiceProcesses, self_signed_cert
from grader.vm.qemu import free_port

PART = "slowclients"
HALF_HEADER = b"GET /login HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slow-client\r\nX-Waiting: "
P95_TARGET_MS = 500     # a page that answers within half a second is not noticeably slowed down


def tls_context(cert: Path) -> ssl.SSLContext:
    """A client context that trusts exactly the test certificate (and checks its address, 127.0.0.1)."""
    return ssl.create_default_context(cafile=str(cert))


class SlowClients:
    """``n`` connections to 127.0.0.1:port, each sending half a request header and then holding; the ones the
    server closes are reopened (while ``reopen`` is true) by a thread of their own, for at most ``limit`` s."""

    def __init__(self, port: int, n: int, tls: ssl.SSLContext | None = None, limit: float = 600):
        self.port, self.n, self.tls, self.limit = port, n, tls, limit
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
            sock.sendall(HALF_HEADER)
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

    def wait_all_cut(self, timeout: float) -> int:
        """Stop reopening; wait up to ``timeout`` s for the server to close them all; return how many are open."""
        self.reopen = False
        deadline = time.monotonic() + timeout
        while self.open_count() and time.monotonic() < deadline:
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


def latency_figure(where: str, slow: int, r: dict, target: bool = True) -> Figure:
    """One line: where, how many slow clients, median/p95 and failures, against the target."""
    load = f"{slow} slow clients holding connections" if slow else "no slow clients (baseline)"
    value = (f"median {r['median_ms']} ms, p95 {r['p95_ms']} ms, {r['failures']}/{r['requests']} failed"
             if r["ms"] else f"{r['failures']}/{r['requests']} failed")
    if not target:
        return Figure(PART, f"GET /login {where}, {load}", value, "", None,
                      "for comparison: waitress's own limits (100 connections, 120 s idle)")
    met = r["failures"] == 0 and r["p95_ms"] is not None and r["p95_ms"] <= P95_TARGET_MS
    return Figure(PART, f"GET /login {where}, {load}", value, f"p95 <= {P95_TARGET_MS} ms, 0 failed", met)


def measure(requests: int = 100, slow: tuple[int, ...] = (110, 300), progress=print, header_timeout: int = 10,
            channel_timeout: int | None = None, compare_waitress_defaults: bool = True) -> dict:
    """The figures; ``channel_timeout`` None keeps `serve`'s default (the documented deployment)."""
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
    try:
        direct.flask("init-db")
        proxied.flask("init-db")
        cert, key = self_signed_cert(tmp)
        tls = tls_context(cert)
        https_port, http_port = free_port(), free_port()
        site = proxied.flask("nginx-site", "--server-name", "localhost", "--cert", str(cert), "--key", str(key),
                             "--https-port", str(https_port), "--http-port", str(http_port), "--listen-address",
                             "127.0.0.1", "--header-timeout", str(header_timeout))
        nginx = LocalNginx(tmp / "nginx", site, [https_port, http_port])
        nginx.start()

        def record(key_: str, where: str, n_slow: int, port: int, ctx, target: bool = True,
                   timeout: float = 10, n: int = requests) -> dict:
            progress(f"slowclients: {where}, {n_slow} slow clients")
            if n_slow:
                with SlowClients(port, n_slow, ctx) as holders:
                    r = timed_requests(port, n, ctx, timeout)
                    r["slow_open_at_end"] = holders.open_count()
                    r["slow_refused"] = holders.refused
            else:
                r = timed_requests(port, n, ctx, timeout)
            out["runs"][key_] = {k: v for k, v in r.items() if k != "ms"}
            out["figures"].append(latency_figure(where, n_slow, r, target).as_dict())
            return r

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
        proxied.start_web(answers=lambda: timed_requests(https_port, 1, tls, 2)["failures"] == 0)
        record("nginx_baseline", "through nginx (HTTPS)", 0, https_port, tls)
        for n in slow:
            record(f"nginx_{n}", "through nginx (HTTPS)", n, https_port, tls)

        # cut: slow clients that stay open past the server's timeout (nginx: header timeout; waitress:
        # idle timeout plus one cleanup interval)
        n = slow[0]
        with SlowClients(https_port, n, tls) as holders:
            left = holders.wait_all_cut(header_timeout + 5)
        out["figures"].append(zero(PART, f"of {n} slow clients, still connected to nginx {header_timeout + 5} s "
                                         f"after their first byte (header timeout {header_timeout} s)", left).as_dict())
        waited = channel + Defaults.SERVE_CLEANUP_INTERVAL + 5
        with SlowClients(direct.port, n, None) as holders:
            left = holders.wait_all_cut(waited)
        out["figures"].append(zero(PART, f"of {n} slow clients, still connected to `serve` {waited} s after their "
                                         f"first byte (idle timeout {channel} s)", left).as_dict())
        out["settings"] = {"header_timeout": header_timeout, "channel_timeout": channel,
                           "connection_limit": Defaults.SERVE_CONNECTION_LIMIT, "requests": requests,
                           "slow": list(slow)}
        return out
    finally:
        if nginx:
            nginx.stop()
        direct.stop()
        proxied.stop()
        shutil.rmtree(tmp, ignore_errors=True)
