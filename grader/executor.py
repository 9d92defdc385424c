"""Executors: run commands and move files. ``LocalExecutor`` runs them here (inside the VM, for
``make check``); :class:`grader.ssh.SSHConnection` is the Executor over SSH and builds on this module.

Stdlib only, so that this module can be copied into the lab VM and used there by ``make check``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

DEFAULT_MAX_OUTPUT = 1_000_000


@dataclass
class CommandResult:
    exit_code: int | None          # None when the command timed out (no exit status)
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False        # stdout or stderr was longer than max_output and was cut
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.exit_code == 0


@runtime_checkable
class Executor(Protocol):
    def run(self, cmd: str, timeout: float, stdin: str | bytes | None = None,
            max_output: int = DEFAULT_MAX_OUTPUT) -> CommandResult: ...

    def put(self, local: str | os.PathLike, remote: str, mode: int | None = None) -> None: ...

    def get(self, remote: str, local: str | os.PathLike) -> None: ...

    def write_text(self, remote: str, text: str) -> None: ...


class CappedBuffer:
    """Keeps at most ``cap`` bytes; counts (and discards) the rest."""

    def __init__(self, cap: int):
        self.cap = cap
        self.parts: list[bytes] = []
        self.kept = 0
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - self.kept
        if room > 0:
            part = data[:room]
            self.parts.append(part)
            self.kept += len(part)

    @property
    def truncated(self) -> bool:
        return self.total > self.kept

    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8", errors="replace")


def _to_bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


class LocalExecutor:
    """Runs shell commands with /bin/sh in their own process group (killed as a group on timeout)."""

    def __init__(self, cwd: str | None = None, env: dict | None = None):
        self.cwd = cwd
        self.env = env

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def run(self, cmd: str, timeout: float, stdin: str | bytes | None = None,
            max_output: int = DEFAULT_MAX_OUTPUT) -> CommandResult:
        start = time.monotonic()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", cmd], cwd=self.cwd, env=self.env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        bufs = [CappedBuffer(max_output), CappedBuffer(max_output)]

        def pump(stream, buf):
            try:
                while True:
                    chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
                    if not chunk:
                        break
                    buf.feed(chunk)
            finally:
                stream.close()

        threads = [threading.Thread(target=pump, args=(s, b), daemon=True)
                   for s, b in ((proc.stdout, bufs[0]), (proc.stderr, bufs[1]))]
        for t in threads:
            t.start()
        if stdin is not None:
            def feed():
                try:
                    proc.stdin.write(_to_bytes(stdin))
                except (BrokenPipeError, OSError):
                    pass
                finally:
                    try:
                        proc.stdin.close()
                    except OSError:
                        pass
            threading.Thread(target=feed, daemon=True).start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _killpg(proc.pid)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # a background grandchild may keep the pipes open: do not wait for it forever
        remaining = max(0.5, timeout - (time.monotonic() - start)) if not timed_out else 1.0
        for t in threads:
            t.join(remaining)
        return CommandResult(
            exit_code=None if timed_out else proc.returncode,
            stdout=bufs[0].text(), stderr=bufs[1].text(), timed_out=timed_out,
            truncated=bufs[0].truncated or bufs[1].truncated,
            duration=time.monotonic() - start)

    def put(self, local, remote, mode=None):
        shutil.copyfile(local, remote)
        if mode is not None:
            os.chmod(remote, mode)

    def get(self, remote, local):
        shutil.copyfile(remote, local)

    def write_text(self, remote, text):
        with open(remote, "w", encoding="utf-8") as f:
            f.write(text)

    def close(self):
        pass


def _killpg(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.2)

