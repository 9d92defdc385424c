"""The service as the tools and the tests run it: instance folders (a sandbox with a private config, the
seeded cohort, database snapshots and API tokens), the in-process app on such a folder, and an instance
folder's `serve` and `worker` run as local processes (start, SIGKILL, restart, read the database), as an
operator would; behind a private nginx when asked. Used by the fault suite, the bench, and the service
and VM tests, which kill and restart them.

Everything listens on 127.0.0.1; the pool VMs are QEMU VMs from the golden image (user-mode network).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from grader.service.private import make_dir, write_text
from grader.service.processes import run_flask, start_flask, stop_group
from grader.vm.qemu import free_port

ROOT = Path(__file__).resolve().parents[1]

# the accounts of seed(): an instructor and two students
PASSWORDS = {"teacher": "teacher-pass-1", "alice": "alice-pass-1", "bob": "bob-pass-1"}
# a sandbox's limits: the parts using it send many uploads as one student to measure validation and
# access (the limits themselves are measured by faults/storage.py)
UNLIMITED = {"SUBMIT_COOLDOWN_SECONDS": 0, "SUBMIT_MAX_PER_ASSIGNMENT": 0, "STORAGE_BUDGET_BYTES": 0}


def lab_files(lab: str = "lab1") -> dict[str, bytes]:
    """The lab's reference solution: the content of every well-formed upload."""
    d = ROOT / "labs" / lab / "solution"
    return {n: (d / n).read_bytes() for n in ("sender.c", "receiver.c", "copytrace.c")}


# --------------------------------------------------------------------------------------------------
# Instance folders: sandbox, seeding, the in-process app, database snapshots
# --------------------------------------------------------------------------------------------------

def write_config(instance: Path, settings: dict) -> None:
    """The instance folder (0700) and its config.py (0600) holding ``settings``."""
    make_dir(instance)
    write_text(instance / "config.py", "".join(f"{k} = {v!r}\n" for k, v in settings.items()))


def new_sandbox(prefix: str) -> tuple[Path, Path]:
    """A temporary sandbox holding a private instance folder whose config.py has a random secret key
    and no per-student cooldown, quota or storage budget (UNLIMITED)."""
    sandbox = Path(tempfile.mkdtemp(prefix=prefix))
    instance = sandbox / "instance"
    write_config(instance, {"SECRET_KEY": secrets.token_urlsafe(48), **UNLIMITED})
    return sandbox, instance



@contextlib.contextmanager
def grader_env(instance: Path):
    """os.environ with GRADER_INSTANCE_PATH=instance and every other GRADER_* setting of the caller
    hidden (none may point the app at another database or queue); restored on exit."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("GRADER_")}
    for k in saved:
        del os.environ[k]
    os.environ["GRADER_INSTANCE_PATH"] = str(instance)
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith("GRADER_")]:
            del os.environ[k]
        os.environ.update(saved)


@contextlib.contextmanager
def in_process_app(instance: Path):
    """The service's Flask app on `instance` in this process (schema, seeding, checks afterwards)."""
    if not (instance / "config.py").is_file():  # create_app would make an empty instance folder
        raise RuntimeError(f"the instance folder {instance} is gone (removed by another process?)")
    with grader_env(instance):
        from grader import create_app

        app = create_app({"TESTING": True})
    try:
        yield app
    finally:
        from grader.service.models import db

        with app.app_context():
            db.engine.dispose()


def seed(app, deadline_days: float = 7, token_students: int = 0) -> dict:
    """teacher (instructor), alice and bob (students, PASSWORDS) in cohort c1, lab1 due in
    ``deadline_days``; plus ``token_students`` students without a password, each with one API token
    (``ids["tokens"]``, in order). Creates the schema first."""
    from flask_migrate import upgrade

    from grader.service.models import ApiToken, Assignment, Cohort, Membership, User, db

    with app.app_context():
        upgrade()
        ids: dict = {"tokens": []}
        c = Cohort(name="c1")
        db.session.add(c)
        db.session.flush()
        for name, role, num in (("teacher", "instructor", None), ("alice", "student", "S1"),
                                ("bob", "student", "S2")):
            u = User(username=name, name=name.title(), role=role, student_number=num,
                     email=f"{name}@example.invalid")
            u.set_password(PASSWORDS[name])
            db.session.add(u)
            db.session.flush()
            ids[name] = u.id
            if role == "student":
                db.session.add(Membership(cohort_id=c.id, user_id=u.id))
        a = Assignment(cohort_id=c.id, lab="lab1", title="lab 1",
                       deadline=dt.datetime.utcnow().replace(microsecond=0) + dt.timedelta(days=deadline_days),
                       penalty_per_day=10, penalty_cap=30)
        db.session.add(a)
        for i in range(token_students):
            u = User(username=f"b{i:05d}", name=f"B {i}", role="student", student_number=f"B{i:05d}")
            db.session.add(u)
            db.session.flush()
            db.session.add(Membership(cohort_id=c.id, user_id=u.id))
            tok = f"cl_burst_{i}_{secrets.token_hex(8)}"
            db.session.add(ApiToken(user_id=u.id, name="burst", token_hash=ApiToken.hash(tok), prefix=tok[:10]))
            ids["tokens"].append(tok)
        db.session.commit()
        ids["cohort"], ids["assignment"] = c.id, a.id
    return ids


def table_rows(app, skip_columns: dict[str, set[str]] | None = None) -> dict[str, dict]:
    """Every row of every table of the service's database: {table: {primary key: row digest}}, without
    the columns named in `skip_columns` (bookkeeping such as a token's last use)."""
    from grader.service.models import db

    skip_columns = skip_columns or {}
    out: dict[str, dict] = {}
    with app.app_context():
        for table in db.metadata.sorted_tables:
            cols = [c for c in table.columns if c.name not in skip_columns.get(table.name, set())]
            pk = [c for c in table.primary_key.columns] or cols
            rows = db.session.execute(db.select(*cols)).all()
            index = [cols.index(c) for c in pk if c in cols]
            out[table.name] = {tuple(row[i] for i in index): hashlib.sha256(repr(tuple(row)).encode()).hexdigest()
                               for row in rows}
        db.session.rollback()
    return out


def row_changes(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict[str, int]]:
    """Per table: rows added, removed and changed between two table_rows() snapshots (tables with none
    left out)."""
    out = {}
    for table in sorted(set(before) | set(after)):
        b, a = before.get(table, {}), after.get(table, {})
        added, removed = len(a.keys() - b.keys()), len(b.keys() - a.keys())
        changed = sum(1 for k in a.keys() & b.keys() if a[k] != b[k])
        if added or removed or changed:
            out[table] = {"added": added, "removed": removed, "changed": changed}
    return out


def add_token(app, user_id: int, *, revoked: bool = False, expired: bool = False, name: str = "faults") -> str:
    """An API token for `user_id` (optionally revoked or expired); returns the token."""
    from grader.service.models import ApiToken, db, utcnow

    tok = "cl_" + secrets.token_urlsafe(32)  # as the tokens page makes them: the prefixes differ
    with app.app_context():
        t = ApiToken(user_id=user_id, name=name, token_hash=ApiToken.hash(tok), prefix=tok[:10])
        if revoked:
            t.revoked_at = utcnow()
        if expired:
            t.expires_at = utcnow() - dt.timedelta(hours=1)
        db.session.add(t)
        db.session.commit()
    return tok



def tracebacks(log: str, limit: int = 5) -> list[str]:
    """The last line of each traceback in a web process's output, the first `limit`."""
    out = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = [ln for ln in block.splitlines() if ln and not ln.startswith((" ", "\t"))]
        if lines:
            out.append(lines[0][:300])
    return out[:limit]



# --------------------------------------------------------------------------------------------------
# Local processes: serve and worker of one instance folder, a private nginx
# --------------------------------------------------------------------------------------------------

class HarnessError(RuntimeError):
    """A service process did not start, or a CLI command failed (the message has its output)."""


class ServiceProcesses:
    """The web process and the worker process of one instance folder (SQLite, huey on SQLite). As a
    context manager: the web process alone (no worker: grading paused), stopped on exit, errors or not.

    The folder's config.py is written from ``settings`` over a random secret key and short worker
    timings; a folder that already has one and no ``settings`` keeps it (a new_sandbox()). The
    processes see none of the caller's other GRADER_* settings (none may point them at another database
    or queue); their output goes to ``logs`` (default <instance>/logs) as web1.log, web2.log, ...
    """

    def __init__(self, instance: Path, golden: Path | None = None, progress=print, pool_vms: int = 1,
                 settings: dict | None = None, logs: Path | None = None, web_args: tuple = ()):
        self.instance = Path(instance)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.progress = progress
        self.logs_dir = Path(logs) if logs is not None else self.instance / "logs"
        self.web_args = tuple(web_args)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}
        self.env.update(GRADER_INSTANCE_PATH=str(self.instance), PYTHONUNBUFFERED="1")
        if settings is not None or golden is not None or not (self.instance / "config.py").is_file():
            conf = {"SECRET_KEY": secrets.token_urlsafe(48), "HEARTBEAT_SECONDS": 2, "LEASE_SECONDS": 30,
                    "RECONCILE_SECONDS": 5}
            if golden is not None:   # None: no worker will run (grading paused)
                conf.update(POOL_GOLDEN=str(golden), POOL_QEMU_VMS=pool_vms)
            conf.update(settings or {})
            write_config(self.instance, conf)
        self.web: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.starts = {"web": 0, "worker": 0}

    def __enter__(self) -> "ServiceProcesses":
        try:
            self.start_web(args=self.web_args)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ set-up
    def flask(self, *args: str, env: dict | None = None, timeout: float = 120) -> str:
        r = run_flask(dict(self.env, **(env or {})), *args, timeout=timeout)
        if r.returncode != 0:
            raise HarnessError(f"flask {' '.join(args)} exited {r.returncode}: {r.stdout}\n{r.stderr}")
        return r.stdout

    def setup(self, cohort: str, students: list[tuple[str, str]], instructor: tuple[str, str],
              lab: str = "lab1", deadline: str = "2099-01-01T00:00") -> None:
        """Database, one instructor, one cohort with ``students`` [(username, password)] and ``lab``."""
        self.flask("init-db")
        self.flask("create-instructor", instructor[0], "--name", "Instructor",
                   env={"GRADER_NEW_PASSWORD": instructor[1]})
        self.flask("create-cohort", cohort)
        roster = self.instance / "roster.csv"
        roster.write_text("student_number,name,email,username,password\n" + "".join(
            f"N{i},Student {u},{u}@example.invalid,{u},{pw}\n" for i, (u, pw) in enumerate(students, 1)))
        self.flask("import-roster", cohort, str(roster))
        self.flask("add-lab", cohort, lab, "--deadline", deadline)

    # ------------------------------------------------------------------ processes
    def _log(self, which: str) -> Path:
        self.logs_dir.mkdir(exist_ok=True)
        return self.logs_dir / f"{which}{self.starts[which]}.log"

    def _answers(self) -> bool:
        """This web process serves the port (its log says so: another process that took the port first
        must not be mistaken for it) and its login page answers."""
        if f"Serving on http://127.0.0.1:{self.port}" not in self.log("web", 100_000):
            return False
        try:
            urllib.request.urlopen(self.url + "/login", timeout=2)
            return True
        except OSError:
            return False

    def start_web(self, timeout: float = 60, answers=None, args: tuple = ()) -> float:
        """Start the web process (`serve` with ``args``); return the seconds until it answered (``answers()``
        is true; default: its login page on 127.0.0.1:port answers)."""
        self.starts["web"] += 1
        t0 = time.monotonic()
        with open(self._log("web"), "wb") as log:
            self.web = start_flask(self.env, "serve", "--port", str(self.port), *args, log=log)
        while time.monotonic() - t0 < timeout:
            if self.web.poll() is not None:
                raise HarnessError(f"the web process exited {self.web.returncode}: {self.log('web')}")
            if (answers or self._answers)():
                return time.monotonic() - t0
            time.sleep(0.2)
        raise HarnessError(f"the web process did not answer within {timeout:.0f}s: {self.log('web')}")

    def start_worker(self) -> None:
        self.starts["worker"] += 1
        with open(self._log("worker"), "wb") as log:
            self.worker = start_flask(self.env, "worker", log=log)

    def start(self) -> None:
        self.start_web()
        self.start_worker()

    def log(self, which: str, tail: int = 4000) -> str:
        """The last ``tail`` characters of the current log of ``which`` (web, worker)."""
        p = self.logs_dir / f"{which}{self.starts[which]}.log"
        return p.read_text(errors="replace")[-tail:] if p.exists() else ""

    def logs(self, which: str) -> str:
        """Every log of ``which`` (all its starts), concatenated."""
        return "".join((self.logs_dir / f"{which}{i}.log").read_text(errors="replace")
                       for i in range(1, self.starts[which] + 1)
                       if (self.logs_dir / f"{which}{i}.log").exists())

    def exceptions(self, limit: int = 5) -> list[str]:
        """The last line of each traceback the web process logged (its 500s), the first ``limit``."""
        return tracebacks(self.logs("web"), limit)

    @staticmethod
    def _sigkill(p: subprocess.Popen | None) -> None:
        if p and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)

    def kill_web(self) -> None:
        self._sigkill(self.web)

    def kill_worker(self) -> None:
        self._sigkill(self.worker)

    def kill(self) -> None:
        self.kill_web()
        self.kill_worker()

    def stop(self) -> None:
        """Stop both the way an operator does (SIGINT: the worker finishes, SIGTERM: waitress)."""
        for p in (self.worker, self.web):
            if p:
                stop_group(p, signal.SIGINT if p is self.worker else signal.SIGTERM, 60)

    def qemu_pids(self) -> list[int]:
        """QEMU processes of this instance's pool VMs."""
        out = subprocess.run(["pgrep", "-f", f"{self.instance}/vms/"], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    # ------------------------------------------------------------------ data
    def db(self, sql: str, *args):
        with sqlite3.connect(self.instance / "grader.sqlite3", timeout=30) as c:
            return c.execute(sql, args).fetchall()

    def token(self, username: str) -> str:
        """A fresh API token of ``username``, written straight into the database."""
        from grader.service.models import ApiToken

        tok = "cl_" + secrets.token_urlsafe(24)
        uid = self.db("SELECT id FROM users WHERE username=?", username)[0][0]
        self.db("INSERT INTO api_tokens (user_id, name, token_hash, prefix, created_at) "
                "VALUES (?, 'harness', ?, ?, datetime('now'))", uid, ApiToken.hash(tok), tok[:10])
        return tok

    def api(self, path: str, token: str, timeout: float = 30) -> dict:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())


def self_signed_cert(folder: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A fresh self-signed certificate and key for ``name`` and 127.0.0.1 (openssl), valid for a day."""
    cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout",
                        str(key), "-out", str(cert), "-subj", f"/CN={name}", "-addext",
                        f"subjectAltName=DNS:{name},IP:127.0.0.1"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise HarnessError(f"openssl could not make a certificate: {r.stderr}")
    return cert, key


class LocalNginx:
    """Debian's nginx as a private process serving one rendered site file, as its nginx.conf would include
    it (sites-enabled/), with everything it writes inside ``folder``. Used by the tests and the fault suite."""

    def __init__(self, folder: Path, site: str, ports: list[int], worker_connections: int = 2048):
        self.folder, self.ports = Path(folder), ports
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "site.conf").write_text(site)
        temp = "\n".join(f"    {k}_temp_path {self.folder / 'tmp' / k};" for k in
                         ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        # as root, the workers would otherwise become nobody, who cannot reach a private folder's socket
        user = "user root;\n" if os.geteuid() == 0 else ""
        (self.folder / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.folder / 'nginx.pid'};\n"
            f"error_log {self.folder / 'error.log'} warn;\n"
            f"events {{\n    worker_connections {worker_connections};\n}}\n"
            f"http {{\n    access_log {self.folder / 'access.log'};\n{temp}\n"
            f"    include {self.folder / 'site.conf'};\n}}\n")
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def binary() -> str:
        import shutil

        found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
        if not found:
            raise HarnessError("nginx is not installed (apt-get install nginx; provision/host-packages.txt)")
        return found

    def start(self, timeout: float = 20) -> None:
        import socket

        (self.folder / "tmp").mkdir(exist_ok=True)
        cmd = [self.binary(), "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"),
               "-e", str(self.folder / "error.log")]
        check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise HarnessError(f"nginx refuses the configuration: {check.stderr}")
        self.proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=open(self.folder / "stderr.log", "wb"))
        deadline = time.monotonic() + timeout
        waiting = list(self.ports)
        while waiting and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"nginx exited {self.proc.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", waiting[0]), timeout=1).close()
                waiting.pop(0)
            except OSError:
                time.sleep(0.1)
        if waiting:
            self.stop()
            raise HarnessError(f"nginx does not listen on {waiting} after {timeout:.0f}s: {self.log()}")

    def log(self) -> str:
        p = self.folder / "error.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown) to its process group, SIGKILL after 10 s."""
        if self.proc:
            stop_group(self.proc, signal.SIGTERM, 10)

    def __enter__(self) -> "LocalNginx":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
