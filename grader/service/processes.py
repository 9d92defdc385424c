"""The service's own commands started from Python: `flask --app grader <command>` run to its end, or
started in a process group of its own and stopped as an operator stops it. `make demo` (demo.py) uses
them, and so do the local service processes of the tools and tests (support/service.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def flask_command(*args: str) -> list[str]:
    """The command line of `flask --app grader <args>` with this interpreter."""
    return [sys.executable, "-m", "flask", "--app", "grader", *args]


def run_flask(env: dict, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run `flask --app grader <args>` from the repository to its end; its output captured as UTF-8 text
    (names from rosters are, whatever the caller's locale)."""
    return subprocess.run(flask_command(*args), cwd=REPO, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=timeout)


def start_flask(env: dict, *args: str, log) -> subprocess.Popen:
    """Start `flask --app grader <args>` in a process group of its own (a signal to the group reaches
    every process it starts), its output into ``log`` (a file opened for binary writing)."""
    return subprocess.Popen(flask_command(*args), cwd=REPO, env=env, start_new_session=True, stdout=log,
                            stderr=subprocess.STDOUT)


def stop_group(proc: subprocess.Popen, sig: int, grace: float) -> None:
    """``sig`` to the process group of ``proc`` (SIGINT: a worker finishes its job; SIGTERM: waitress),
    SIGKILL when it has not exited after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
