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

    def start_web(self, timeout: float = 60) -> float:
        """Start the web process; return the seconds until it answered."""
        self.starts["web"] += 1
        t0 = time.monotonic()
        self.web = subprocess.Popen([sys.executable, "-m", "flask", "--app", "grader", "serve", "--port",
                                     str(self.port)], cwd=ROOT, env=self.env, start_new_session=True,
                                    stdout=open(self._log("web"), "wb"), stderr=subprocess.STDOUT)
        while time.monotonic() - t0 < timeout:
            if self.web.poll() is not None:
                raise HarnessError(f"the web process exited {self.web.returncode}: {self.log('web')}")
            try:
                urllib.request.urlopen(self.url + "/login", timeout=2)
                return time.monotonic() - t0
            except OSError:
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
