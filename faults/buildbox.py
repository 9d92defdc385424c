"""Builds that try to escape the host-side build sandbox (grader/buildbox.py), each against the real
sandbox in the image's build root: host paths in `#include` and `.incbin`, the network, a fork bomb,
huge output, an endless compile, writes outside the build folder.

Lab 1's build runs only the lab's own Makefile, so a submission reaches the build through its sources;
the cases that need code running inside the build (network, fork bomb, writes) run it as the build
command, standing in for a compiler or Makefile that runs what it is given. Every case must end as a
build failure whose reason names the cause, leave no process, mount or folder on the host, and be
followed by a normal build of the reference solution. Nothing here talks to any address but
127.0.0.1, and the listener it opens there must see no connection from the sandbox.
"""
from __future__ import annotations

import dataclasses
import os
import re
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from faults.report import Figure, ratio

PART = "buildbox"
REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "labs" / "lab1"
SOURCES = ["sender.c", "receiver.c", "copytrace.c"]
OUTPUTS = ["sender", "receiver", "copytrace.ko"]
MAKE = ["sh", "-c", "make"]


@dataclasses.dataclass
class Case:
    name: str
    what: str                                    # in words, for the report
    sources: dict[str, str] = dataclasses.field(default_factory=dict)   # replaced solution files
    command: list[str] = dataclasses.field(default_factory=lambda: MAKE)
    timeout: float = 60.0
    reason: str = ""                             # regex the failure reason (and log) must match
    secret: str | None = None                    # text that must not reach the log or outputs


def cases(grader_key: Path | None, port: int) -> list[Case]:
    key = str(grader_key) if grader_key else "/etc/shadow"
    doubling = "\n".join(f"#define E{i + 1} E{i} E{i}" for i in range(40))
    return [
        Case("include_host_path", "#include of a host file (the grader's SSH key)",
             {"copytrace.c": f'#include "{key}"\n'}, reason=r"No such file or directory",
             secret="PRIVATE KEY"),
        Case("incbin_host_path", ".incbin of a host file",
             {"sender.c": '__asm__(".incbin \\"/etc/hostname\\"");\nint main(void) { return 0; }\n'},
             reason=r"file not found: /etc/hostname"),
        Case("incbin_dev_zero", "huge output: .incbin of /dev/zero",
             {"sender.c": '__asm__(".section .rodata\\n.incbin \\"/dev/zero\\"");\n'
                          'int main(void) { return 0; }\n'},
             reason=r"unable to include|output over|file size|SIGXFSZ"),
        Case("huge_object", "huge output: a 1 GB object file",
             {"sender.c": '__asm__(".section .data\\n.fill 1000000000, 1, 0");\nint main(void) { return 0; }\n'},
             reason=r"File size limit exceeded|File too large|over \d+ bytes"),
        Case("warning_flood", "huge output: a flood of compiler warnings",
             {"sender.c": '#define E0 _Pragma("GCC warning \\"flood flood flood flood flood\\"")\n'
                          + "\n".join(f"#define F{i + 1} F{i} F{i}" for i in range(24)).replace("F0", "E0")
                          + "\nint main(void) { F24 return 0; }\n"},
             reason=r"output over"),
        Case("endless_compile", "endless compile: exponential macro expansion",
             {"sender.c": "#define E0 x+\n" + doubling + "\nint main(void) { int x = 0; return E40 0; }\n"},
             timeout=30, reason=r"did not finish|out of memory|SIGXCPU"),
        Case("network", "network: connect to a listener on the host's 127.0.0.1",
             command=["python3", "-c", "import socket,sys\n"
                      f"s=socket.create_connection(('127.0.0.1',{port}),timeout=3)\nprint('CONNECTED')"],
             reason=r"Connection refused|unreachable", secret="CONNECTED"),
        Case("fork_bomb", "fork bomb",
             command=["sh", "-c", "b() { b & b & wait; }; b"], timeout=20,
             reason=r"Cannot fork|more than \d+ processes|Resource temporarily unavailable"),
        Case("write_outside", "writes outside the build folder (root file system, /proc)",
             command=["sh", "-c", "if echo x > /usr/bin/cc || echo x > /proc/sys/kernel/hostname || "
                                  "test -e /home || test -e /root; then echo ESCAPED; else exit 7; fi"],
             reason=r"exited 7: .*(Read-only file system|Permission denied)", secret="ESCAPED"),
    ]


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()
            except OSError:
                continue

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def left_behind(out) -> dict:
    """What this build left on the host: live processes in its pid namespace, mounts and files of its
    private folder. Only this build's own (a build on another worker may be running meanwhile)."""
    from grader.buildbox import namespace_pids

    procs = len(namespace_pids(out.pid_namespace)) if out.pid_namespace else 0
    mounts = sum(out.place in line for line in open("/proc/mounts")) if out.place else 0
    folders = int(bool(out.place) and Path(out.place).exists())
    return {k: v for k, v in {"processes": procs, "mounts": mounts, "folders": folders}.items() if v}


def sources_for(case: Case, workdir: Path) -> dict[str, Path]:
    src = {name: LAB / "solution" / name for name in SOURCES}
    src.update({name: LAB / name for name in ("Makefile", "Kbuild")})
    for name, text in case.sources.items():
        p = workdir / f"{case.name}-{name}"
        p.write_text(text)
        src[name] = p
    return src


def run_case(builder, case: Case, workdir: Path) -> dict:
    t0 = time.monotonic()
    out = builder.build(sources_for(case, workdir), case.command, OUTPUTS if case.command == MAKE else [],
                        case.timeout, workdir / f"{case.name}-out")
    seconds = time.monotonic() - t0
    reason = out.reason()
    leaked_text = bool(case.secret) and (case.secret in out.log or any(
        case.secret.encode() in p.read_bytes() for p in out.outputs.values()))
    matched = bool(reason) and re.search(case.reason, reason) is not None
    left = left_behind(out)
    return {"case": case.name, "failed": reason is not None, "reason": reason, "matched": matched,
            "leaked": leaked_text, "left_behind": left, "seconds": round(seconds, 2),
            "log_tail": out.log[-300:]}


def solution_build(builder, workdir: Path, tag: str) -> tuple[bool, float]:
    normal = Case(f"solution-{tag}", "the reference solution")
    out = builder.build(sources_for(normal, workdir), MAKE, OUTPUTS, 120, workdir / f"solution-{tag}-out")
    return out.reason() is None and set(out.outputs) == set(OUTPUTS), out.seconds


def measure(golden: Path, rounds: int = 2, only: list[str] | None = None, progress=print) -> dict:
    from grader import buildbox

    builder, why = buildbox.for_golden(golden)
    if builder is None:
        raise RuntimeError(f"no host build sandbox: {why}")
    listener = Listener()
    figures, details, solution_s = [], [], []
    try:
        with tempfile.TemporaryDirectory(prefix="copylab-faults-buildbox-") as tmp:
            work = Path(tmp)
            os.chmod(work, 0o755)
            all_cases = [c for c in cases(golden / "grader_ed25519", listener.port) if not only or c.name in only]
            for case in all_cases:
                good = 0
                for i in range(rounds):
                    r = run_case(builder, case, work)
                    next_ok, s = solution_build(builder, work, f"{case.name}-{i}")
                    solution_s.append(s)
                    r["next_build_ok"] = next_ok
                    ok = r["failed"] and r["matched"] and not r["leaked"] and not r["left_behind"] and next_ok
                    good += ok
                    details.append(r)
                    progress(f"{PART}: {case.name} round {i + 1}: {'ok' if ok else 'NOT OK'} "
                             f"({r['reason']}; {r['seconds']}s)")
                figures.append(ratio(PART, f"{case.what}: a build failure naming the cause, nothing left "
                                           f"on the host, the next build normal", good, rounds))
    finally:
        listener.close()
    figures.append(Figure(PART, "connections the sandbox made to a listener on the host's 127.0.0.1",
                          str(listener.accepted), "0", listener.accepted == 0))
    med = statistics.median(solution_s) if solution_s else 0.0
    figures.append(Figure(PART, "reference solution build in the sandbox, median seconds (host CPU)",
                          f"{med:.1f}", "<= 15", bool(solution_s) and med <= 15,
                          f"{len(solution_s)} builds, each right after a hostile one"))
    return {"figures": [f.as_dict() for f in figures], "cases": details, "sandbox": why}
