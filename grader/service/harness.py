"""Run one instance folder's web and worker processes locally, as an operator would: used by the VM
tests of the service and by the fault suite (`make faults`), which kill and restart them.

Everything listens on 127.0.0.1; the pool VMs are QEMU VMs from the golden image (user-mode network).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from grader.service.private import make_dir, write_text
from grader.vm.qemu import free_port

ROOT = Path(__file__).resolve().parents[2]


class HarnessError(RuntimeError):
    """A service process did not start, or a CLI command failed (the message has its output)."""


class ServiceProcesses:
    """The web process and the worker process of one instance folder (SQLite, huey on SQLite)."""

    def __init__(self, instance: Path, golden: Path | None, progress=print, pool_vms: int = 1,
                 settings: dict | None = None):
        self.instance = Path(instance)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.progress = progress
        self.env = dict(os.environ, GRADER_INSTANCE_PATH=str(self.instance), PYTHONUNBUFFERED="1")
        make_dir(self.instance)
        conf = {"SECRET_KEY": secrets.token_urlsafe(48), "HEARTBEAT_SECONDS": 2, "LEASE_SECONDS": 30,
                "RECONCILE_SECONDS": 5}
        if golden is not None:   # None: no worker will run (grading paused)
            conf.update(POOL_GOLDEN=str(golden), POOL_QEMU_VMS=pool_vms)
        conf.update(settings or {})
        write_text(self.instance / "config.py", "".join(f"{k} = {v!r}\n" for k, v in conf.items()))
        self.web: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.starts = {"web": 0, "worker": 0}

    # ------------------------------------------------------------------ set-up
    def flask(self, *args: str, env: dict | None = None, timeout: float = 120) -> str:
        r = subprocess.run([sys.executable, "-m", "flask", "--app", "grader", *args], cwd=ROOT,
                           env=dict(self.env, **(env or {})), capture_output=True, text=True, timeout=timeout)
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
        logs = self.instance / "logs"
        logs.mkdir(exist_ok=True)
        return logs / f"{which}{self.starts[which]}.log"

    def _answers(self) -> bool:
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
        self.web = subprocess.Popen([sys.executable, "-m", "flask", "--app", "grader", "serve", "--port",
                                     str(self.port), *args], cwd=ROOT, env=self.env, start_new_session=True,
                                    stdout=open(self._log("web"), "wb"), stderr=subprocess.STDOUT)
        while time.monotonic() - t0 < timeout:
            if self.web.poll() is not None:
                raise HarnessError(f"the web process exited {self.web.returncode}: {self.log('web')}")
            if (answers or self._answers)():
                return time.monotonic() - t0
            time.sleep(0.2)
        raise HarnessError(f"the web process did not answer within {timeout:.0f}s: {self.log('web')}")

    def start_worker(self) -> None:
        self.starts["worker"] += 1
        self.worker = subprocess.Popen([sys.executable, "-m", "flask", "--app", "grader", "worker"], cwd=ROOT,
                                       env=self.env, start_new_session=True,
                                       stdout=open(self._log("worker"), "wb"), stderr=subprocess.STDOUT)

    def start(self) -> None:
        self.start_web()
        self.start_worker()

    def log(self, which: str) -> str:
        p = self.instance / "logs" / f"{which}{self.starts[which]}.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def logs(self, which: str) -> str:
        """Every log of ``which`` (all its starts), concatenated."""
        return "".join((self.instance / "logs" / f"{which}{i}.log").read_text(errors="replace")
                       for i in range(1, self.starts[which] + 1)
                       if (self.instance / "logs" / f"{which}{i}.log").exists())

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
            if p and p.poll() is None:
                os.killpg(p.pid, signal.SIGINT if p is self.worker else signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)

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
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def __enter__(self) -> "LocalNginx":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
