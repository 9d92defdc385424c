"""Real throwaway servers on 127.0.0.1 for the service tests: PostgreSQL 15, Redis and Chromium.

Everything runs from Debian 12 packages, nothing is downloaded at run time:

=====================  ===================  =============================================
fixture                Debian package       Python package (requirements.txt)
=====================  ===================  =============================================
``postgres_server``    ``postgresql``       ``psycopg[binary]`` (SQLAlchemy URL driver)
``redis_server``       ``redis-server``     -- (the ``redis`` client is for the tests)
``chromium_browser``   ``chromium``         ``playwright`` (never ``playwright install``)
=====================  ===================  =============================================

The module has two layers:

* context managers (:func:`running_postgres`, :func:`running_redis`, :func:`running_chromium`)
  that need only the standard library at import time and raise :class:`ServerError`;
* session-scoped pytest fixtures on top of them that turn a missing package into a clear
  ``pytest.fail`` naming what to install (never a skip).

Use it from a conftest (or a test module) with::

    from tests.service.servers import *  # noqa: F401,F403  (fixtures + helper classes)

Under pytest-xdist every worker process gets its own servers (session scope is per worker);
each picks its own free loopback port and retries if another process grabbed it first.

Clean-up: teardown stops every server and deletes its temp dir. If the test process is killed
outright (SIGKILL, a CI time-out), redis-server dies with it (``setpriv --pdeathsig``) and
Playwright's driver takes Chromium down; the PostgreSQL cluster, which ``pg_ctl`` detaches, and
the temp dirs are reaped by the next start of the same fixture (each dir records its owner's pid).

Chromium is kept on loopback (see :data:`CHROMIUM_ARGS`): address the app as 127.0.0.1/localhost.

None of the servers uses the system services the Debian packages install (the ``main``
cluster on 5432, ``redis-server.service`` on 6379): no system config file is read, ports are
free ones picked at run time, and sockets, data and logs live in a private temp directory.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest

from grader.vm.qemu import free_port

__all__ = [
    "ServerError",
    "ServerMissing",
    "PostgresServer",
    "RedisServer",
    "running_postgres",
    "running_redis",
    "running_chromium",
    "serving",
    "serving_pages",
    "postgres_server",
    "redis_server",
    "chromium_browser",
]

HOST = "127.0.0.1"
OWNER_FILE = "owner.pid"   # in each server's temp dir: the pid of the test process that owns it
STARTUP_TIMEOUT = 30.0   # seconds for one server to come up (initdb excluded)
PORT_ATTEMPTS = 3        # free-port races (xdist workers, other processes) are retried

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_DIR_PREFIX = "copylab-pg-"
REDIS_DIR_PREFIX = "copylab-redis-"
CHROMIUM_DIR_PREFIX = "copylab-chromium-"
PG_SYSTEM_USER = "postgres"
RUNUSER = "/sbin/runuser"      # util-linux; /sbin is /usr/sbin on merged-/usr Debian 12
SETPRIV = "/usr/bin/setpriv"    # util-linux
REDIS_SERVER = "/usr/bin/redis-server"
CHROMIUM = "/usr/bin/chromium"

# Headless Chromium on a host whose only network is loopback: without the background-networking
# switches Chromium keeps trying to reach Google services (component updates, sync, variations),
# which this network refuses, and QUIC would add UDP attempts on top. Root needs --no-sandbox.
# Even with them, Debian's Chromium still looks up update.googleapis.com and accounts.google.com
# (seen with strace), and a page that fails with a DNS error makes Chromium's error-page "DNS probe"
# send a query for google.com straight to 8.8.8.8. The last two switches close that off: every host
# name but the loopback ones resolves to NOTFOUND inside Chromium, and every URL that is not on
# loopback goes to a proxy on 127.0.0.1:9 where nothing listens (Chromium never proxies loopback),
# so an outside URL fails at once with ERR_PROXY_CONNECTION_FAILED and no packet leaves the host.
# Tests must therefore address the service under test as 127.0.0.1 or localhost.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--proxy-server=http://127.0.0.1:9",
)

# initdb/postgres read the locale from the environment; pin one that Debian always has, so a
# caller's LANG for a locale that was never generated does not produce warnings or failures.
_PG_ENV_LOCALE = "C.UTF-8"


class ServerError(RuntimeError):
    """A server could not be started (or its start-up timed out); the message has its log."""


class ServerMissing(ServerError):
    """A program the server needs is not installed; the message names the package."""


# --------------------------------------------------------------------------- helpers

def _require(path: str | Path, package: str, manager: str = "apt") -> None:
    """Raise :class:`ServerMissing` naming ``package`` unless ``path`` is an executable."""
    if not os.access(path, os.X_OK):
        how = f"apt-get install {package}" if manager == "apt" else f"pip install '{package}'"
        raise ServerMissing(f"{path} not found: install the {manager} package {package!r} ({how})")


def _missing_module(name: str) -> bool:
    """True when ``import name`` would fail (checked without importing it)."""
    import importlib.util
    return importlib.util.find_spec(name) is None


def _tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists (a reused pid only makes us keep a dir: safe)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_server_dir(prefix: str) -> Path:
    """A fresh temp dir marked with this process's pid (see :func:`_stale_server_dirs`)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    (base / OWNER_FILE).write_text(f"{os.getpid()}\n")
    return base


def _stale_server_dirs(prefix: str) -> Iterator[Path]:
    """Server dirs left by test processes that died without teardown (SIGKILL, CI time-out).

    A dir whose owner is alive (another xdist worker or test run) or that has no owner file yet
    (being set up right now) is never touched.
    """
    for path in Path(tempfile.gettempdir()).glob(prefix + "*"):
        try:
            owner = int((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _pid_alive(owner):
            yield path


def _stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; always reaps the child."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- PostgreSQL

@dataclass
class PostgresServer:
    """A running private PostgreSQL cluster.

    ``url`` is a SQLAlchemy URL (psycopg 3 driver) for the test database, owned by a non-superuser
    role that logs in over TCP with a random password. :meth:`new_database` makes more, empty ones.
    """

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    dbname: str
    data_dir: Path
    log_file: Path
    admin_user: str = field(repr=False, default=PG_SYSTEM_USER)
    admin_password: str = field(repr=False, default="")
    _counter: Iterator[int] = field(repr=False, default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        """``postgresql+psycopg://user:pw@127.0.0.1:PORT/dbname`` for the default test database."""
        return self.url_for(self.dbname)

    def url_for(self, dbname: str) -> str:
        """The SQLAlchemy URL of database ``dbname`` on this server, as the test role."""
        return (f"postgresql+psycopg://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
                f"@{self.host}:{self.port}/{quote(dbname, safe='')}")

    @property
    def dsn(self) -> str:
        """A libpq connection string for the default database (for psycopg/psql directly)."""
        return (f"host={self.host} port={self.port} user={self.user} "
                f"password={self.password} dbname={self.dbname}")

    def admin_connect(self, dbname: str = "postgres"):
        """An autocommit psycopg connection as the cluster's superuser (caller closes it)."""
        import psycopg
        return psycopg.connect(host=self.host, port=self.port, user=self.admin_user,
                               password=self.admin_password, dbname=dbname,
                               autocommit=True, connect_timeout=10)

    def new_database(self, name: str | None = None) -> str:
        """Create a fresh, empty database owned by the test role and return its SQLAlchemy URL.

        ``name`` defaults to a new ``test_N``; an existing name is an error (no silent reuse).
        """
        from psycopg import sql
        name = name or f"test_{next(self._counter)}"
        if len(name.encode()) > 63:
            raise ValueError(f"database name must be 1..63 bytes: {name!r}")
        with self.admin_connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(self.user)))
        return self.url_for(name)


def _pg_command(args: list[str]) -> list[str]:
    """As root, run a PostgreSQL binary as the ``postgres`` user (initdb refuses root)."""
    if os.geteuid() == 0:
        return [RUNUSER, "-u", PG_SYSTEM_USER, "--", *args]
    return args


def _pg_run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool (output captured); a time-out becomes :class:`ServerError`."""
    env = dict(os.environ, LANG=_PG_ENV_LOCALE, LC_ALL=_PG_ENV_LOCALE)
    for var in ("PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE", "PGOPTIONS"):
        env.pop(var, None)
    try:
        return subprocess.run(_pg_command(args), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        raise ServerError(f"{Path(args[0]).name} timed out after {timeout:.0f}s:\n{out or ''}") \
            from None


def _pg_config(socket_dir: Path) -> str:
    """Settings appended to postgresql.conf: loopback TCP only, private socket, no durability."""
    return f"""
# --- copylab test cluster (tests/service/servers.py) ---
listen_addresses = '{HOST}'
unix_socket_directories = '{socket_dir}'
unix_socket_permissions = 0700
max_connections = 50
shared_buffers = 32MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_destination = 'stderr'
logging_collector = off
log_min_messages = warning
"""


@contextlib.contextmanager
def running_postgres(timeout: float = STARTUP_TIMEOUT, user: str = "copylab",
                     dbname: str = "copylab_test") -> Iterator[PostgresServer]:
    """Start a private PostgreSQL 15 cluster on a free 127.0.0.1 port; stop and delete it after.

    The cluster lives in a fresh temp directory (data, unix socket, log). As root, the directory is
    chowned to the ``postgres`` system user and every PostgreSQL binary runs through ``runuser``.
    Authentication: ``peer`` on the private socket, ``scram-sha-256`` over TCP.
    """
    for prog in ("initdb", "pg_ctl", "postgres"):
        _require(PG_BIN / prog, "postgresql")
    as_root = os.geteuid() == 0
    if as_root:
        _require(RUNUSER, "util-linux")
        try:
            pg_user = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            raise ServerMissing("no 'postgres' system user: install the apt package 'postgresql'") \
                from None
    if _missing_module("psycopg"):
        raise ServerMissing("python module psycopg missing: pip install 'psycopg[binary]'")

    for stale in _stale_server_dirs(PG_DIR_PREFIX):
        _pg_stop(stale / "data", stale)
        shutil.rmtree(stale, ignore_errors=True)
    # Not under pytest's basetemp: that is 0700 root, and the postgres user must reach its files.
    base = _make_server_dir(PG_DIR_PREFIX)
    data, sockets, log = base / "data", base / "run", base / "postgres.log"
    admin_password, password = secrets.token_hex(16), secrets.token_hex(16)
    started = False
    try:
        sockets.mkdir()
        pwfile = base / "pwfile"
        pwfile.write_text(admin_password + "\n")
        pwfile.chmod(0o600)
        if as_root:
            for path in (base, sockets, pwfile):
                os.chown(path, pg_user.pw_uid, pg_user.pw_gid)

        init = _pg_run([str(PG_BIN / "initdb"), "-D", str(data), "-U", PG_SYSTEM_USER,
                        f"--pwfile={pwfile}", "--auth-local=peer", "--auth-host=scram-sha-256",
                        "--encoding=UTF8", f"--locale={_PG_ENV_LOCALE}", "--no-sync"],
                       cwd=base, timeout=120)
        pwfile.unlink()
        if init.returncode != 0:
            raise ServerError(f"initdb failed ({init.returncode}):\n{init.stdout}")
        with open(data / "postgresql.conf", "a") as conf:   # appending keeps the owner
            conf.write(_pg_config(sockets))

        for _attempt in range(PORT_ATTEMPTS):
            port = free_port()
            start = _pg_run([str(PG_BIN / "pg_ctl"), "start", "-D", str(data), "-l", str(log),
                             "-w", "-t", str(int(timeout)), "-o", f"-p {port}"],
                            cwd=base, timeout=timeout + 15)
            if start.returncode == 0:
                started = True
                break
            _pg_stop(data, base)   # pg_ctl gave up: no half-started postmaster may linger
            if "Address already in use" not in _tail(log, 200):
                break              # a real failure, not a lost race for the port
        if not started:
            raise ServerError(f"PostgreSQL did not start (pg_ctl exit {start.returncode}, "
                              f"time-out {timeout:.0f}s):\n{start.stdout}\n"
                              f"--- {log} ---\n{_tail(log)}")

        server = PostgresServer(HOST, port, user, password, dbname, data, log,
                                admin_password=admin_password)
        from psycopg import sql
        with server.admin_connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(dbname), sql.Identifier(user)))
        yield server
    finally:
        _pg_stop(data, base)
        shutil.rmtree(base, ignore_errors=True)


def _pg_stop(data: Path, cwd: Path) -> None:
    """Stop the cluster in ``data`` if it runs: fast, then immediate, then SIGKILL."""
    pidfile = data / "postmaster.pid"
    if not pidfile.exists():
        return
    for mode in ("fast", "immediate"):
        with contextlib.suppress(ServerError):
            if _pg_run([str(PG_BIN / "pg_ctl"), "stop", "-D", str(data), "-m", mode, "-w",
                        "-t", "20"], cwd=cwd, timeout=30).returncode == 0:
                return
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pidfile.read_text().split()[0])
        # only if that pid is still this cluster's postmaster (pids get reused)
        if str(data).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.killpg(pid, signal.SIGKILL)   # pg_ctl puts the postmaster in its own session


# --------------------------------------------------------------------------- Redis

@dataclass
class RedisServer:
    """A running private ``redis-server``: no persistence, loopback only, no password."""

    host: str
    port: int
    dir: Path
    log_file: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        """The URL of logical database ``db`` (0..15) on this server."""
        return f"redis://{self.host}:{self.port}/{db}"


def _redis_ping(port: int) -> bool:
    """One RESP inline PING; True on ``+PONG``."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _wait_redis(proc: subprocess.Popen, port: int, timeout: float) -> bool:
    """Wait until the server answers PING (True), exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _redis_ping(port):
            return True
        time.sleep(0.05)
    return False


def _kill_stale_redis(base: Path) -> None:
    """SIGKILL the redis-server a dead test process left in ``base`` (if it is still that)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((base / "redis.pid").read_text())
        if REDIS_SERVER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running_redis(timeout: float = STARTUP_TIMEOUT) -> Iterator[RedisServer]:
    """Start ``redis-server`` in the foreground as a child on a free 127.0.0.1 port; kill it after.

    Only command-line options are used, so ``/etc/redis/redis.conf`` (and the Debian service that
    uses it) play no part. Nothing is persisted: ``--save ''``, ``--appendonly no``.
    """
    _require(REDIS_SERVER, "redis-server")
    _require(SETPRIV, "util-linux")
    for stale in _stale_server_dirs(REDIS_DIR_PREFIX):
        _kill_stale_redis(stale)
        shutil.rmtree(stale, ignore_errors=True)
    base = _make_server_dir(REDIS_DIR_PREFIX)
    log = base / "redis.log"
    proc: subprocess.Popen | None = None
    try:
        for _attempt in range(PORT_ATTEMPTS):
            port = free_port()
            command = [
                # setpriv --pdeathsig: SIGTERM to redis-server if this process dies without teardown
                SETPRIV, "--pdeathsig", "TERM", "--",
                REDIS_SERVER, "--port", str(port), "--bind", HOST, "--protected-mode", "yes",
                "--save", "", "--appendonly", "no", "--dir", str(base),
                "--daemonize", "no", "--supervised", "no", "--loglevel", "warning",
            ]
            with open(log, "ab") as out:
                proc = subprocess.Popen(command, cwd=base, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT)
            if _wait_redis(proc, port, timeout):
                (base / "redis.pid").write_text(f"{proc.pid}\n")
                break
            _stop_process(proc)
            if "Address already in use" not in _tail(log):
                raise ServerError(f"redis-server did not answer PING within {timeout:.0f}s "
                                  f"(exit {proc.returncode}):\n{_tail(log)}")
        else:
            raise ServerError(f"redis-server found no free port in {PORT_ATTEMPTS} tries:\n"
                              f"{_tail(log)}")
        yield RedisServer(HOST, port, base, log, proc)
    finally:
        if proc is not None:
            _stop_process(proc)
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- Chromium

@contextlib.contextmanager
def running_chromium(timeout: float = STARTUP_TIMEOUT, **launch_kwargs):
    """Launch Debian's headless Chromium through Playwright's sync API; yield the ``Browser``.

    Playwright drives ``/usr/bin/chromium`` (``executable_path``), so no Playwright browser build
    is needed: never run ``playwright install``. The sync API must not be started inside a running
    asyncio loop, and the Browser belongs to the thread that launched it. ``launch_kwargs`` go to
    ``BrowserType.launch``; extra ``args`` are appended to :data:`CHROMIUM_ARGS`.
    """
    _require(CHROMIUM, "chromium")
    if _missing_module("playwright"):
        raise ServerMissing("python module playwright missing: pip install playwright "
                            "(and never `playwright install`: Debian's chromium is used)")
    from playwright.sync_api import sync_playwright

    args = [*CHROMIUM_ARGS, *launch_kwargs.pop("args", ())]
    for stale in _stale_server_dirs(CHROMIUM_DIR_PREFIX):
        shutil.rmtree(stale, ignore_errors=True)
    with contextlib.ExitStack() as stack:
        # Chromium's crash-report database and caches go to $XDG_CONFIG_HOME / $XDG_CACHE_HOME,
        # i.e. ~/.config/chromium: point them at a temp dir (the profile already is one).
        home = _make_server_dir(CHROMIUM_DIR_PREFIX)
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        env = dict(os.environ, XDG_CONFIG_HOME=f"{home}/config", XDG_CACHE_HOME=f"{home}/cache")
        env.update(launch_kwargs.pop("env", {}))
        try:
            pw = sync_playwright().start()
        except Exception as exc:   # e.g. started inside a running asyncio loop
            raise ServerError(f"Playwright did not start: {exc}") from exc
        stack.callback(pw.stop)
        try:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args,
                                         env=env, timeout=timeout * 1000, **launch_kwargs)
        except Exception as exc:   # playwright's Error/TimeoutError carry chromium's output
            raise ServerError(f"Chromium did not start: {exc}") from exc
        stack.callback(browser.close)
        yield browser


# --------------------------------------------------------------------------- pages for the browser

@contextlib.contextmanager
def serving(server) -> Iterator[str]:
    """Run an ``http.server``-style ``server`` bound to 127.0.0.1 (werkzeug's ``make_server`` too) in a
    thread; yield its base URL (no trailing slash); shut it down on exit."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def serving_pages(pages: dict[str, bytes], default: bytes) -> Iterator[str]:
    """A tiny http.server on a free 127.0.0.1 port answering ``pages[path]``, else ``default``, as HTML;
    yield its base URL."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.get(self.path, default)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep the test output quiet
            pass

    with serving(ThreadingHTTPServer((HOST, 0), Handler)) as url:
        yield url


# --------------------------------------------------------------------------- pytest fixtures

def _fixture(start) -> Iterator:
    """Yield the server of context manager ``start()``, stopping it at teardown.

    Start-up errors become ``pytest.fail`` (a missing package must never pass for a skip).
    """
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(start())
        except ServerError as exc:
            failure = str(exc)
        else:
            failure = None
        if failure is not None:   # outside the except block: no "during handling" echo
            pytest.fail(failure, pytrace=False)
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL 15 cluster for the session (per xdist worker).

    ``.url`` is the SQLAlchemy URL of an empty test database; ``.new_database(name)`` makes more.
    """
    yield from _fixture(running_postgres)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private ``redis-server`` for the session (per xdist worker); ``.url`` is its db 0."""
    yield from _fixture(running_redis)


@pytest.fixture(scope="session")
def chromium_browser():
    """A headless Debian Chromium as a Playwright (sync API) ``Browser`` for the session."""
    yield from _fixture(running_chromium)
