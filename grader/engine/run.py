"""One grading run as explicit phases over a VM object and its Executor.

The VM provides the LabVM contract of grader/engine/vmcontract.py, and may offer a build sandbox on the
grader host (BuildsOnHost: without one the build runs in the VM) and views of the guest from outside it
(WatchedFromOutside: prepared in verify, armed around the student's programs). The phases, their
order and default time limits are the table of grader/engine/phases.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shlex
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from ..errors import GraderError
from .checkrun import run_checks
from .checks import CheckResult
from .evidence import parse_taint
from .hostevidence import HostEvidenceUnavailable, failed, unavailable
from .labspec import LabSpec
from .model import RunData
from .phases import PHASE_NAMES, PHASES
from .profile import KernelProfile, load_profile
from .result import build_result, write_result
from .vmcontract import BuildsOnHost, LabVM, WatchedFromOutside

HELPER = "/usr/local/libexec/copylab/copylab-helper"
RUNS_DIR = "/home/grader/runs"
# the account the student's programs run as in grading VMs (provisioning: copylab_grader_access);
# it has no sudo rule, and only the run folder's programs are open to its group
PROGRAM_USER = "copylab-run"
SELFTEST_MARK = "/var/lib/copylab/selftest.ok"
BUILD_PLACES = ("auto", "sandbox", "vm")
RUNID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# exit status of the run phase's wait when the receiver's shell ended without writing receiver.rc
NO_STATUS_FILE = 4
# the sender's own time limit ends this many seconds before the run phase's, which leaves time to
# read how the receiver ended
SENDER_MARGIN = 4
# exit statuses of `timeout -k 2 N CMD` when it ended CMD: SIGTERM after N s, SIGKILL 2 s later
TIMEOUT_EXITS = (124, 137)
# seconds for one last look at the receiver's status file once the run phase's time is up
RECEIVER_RECHECK = 10


@dataclass
class HelperSection:
    status: str          # "ok" or "error" (then text says why)
    text: str
    complete: bool       # False: the output was cut before the section's end


def helper_sections(out: str) -> dict[str, HelperSection]:
    """The helper's ``end`` output: "NAME STATUS NCHARS\\n" followed by exactly NCHARS characters, per
    section. Parsing stops at the first header that does not fit (output cut short)."""
    sections, pos = {}, 0
    while pos < len(out):
        nl = out.find("\n", pos)
        head = out[pos:nl].split(" ") if nl >= 0 else []
        if len(head) != 3 or not head[2].isdigit():
            break
        n = int(head[2])
        text = out[nl + 1:nl + 1 + n]
        sections[head[0]] = HelperSection(head[1], text, len(text) == n)
        pos = nl + 1 + n
    return sections


class PhaseFailed(Exception):
    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class GradedRun:
    run: RunData
    checks: list[CheckResult]
    result: dict
    outdir: Path


def new_runid(rng: random.Random | None = None) -> str:
    rng = rng or random.SystemRandom()
    return time.strftime("%Y%m%d-%H%M%S") + "-" + "".join(rng.choice("0123456789abcdef")
                                                          for _ in range(8))


def new_message(lab: LabSpec, rng: random.Random | None = None) -> str:
    rng = rng or random.SystemRandom()
    return "".join(rng.choice(lab.message_alphabet) for _ in range(lab.message_length))


def new_port(lab: LabSpec, rng: random.Random | None = None) -> int:
    rng = rng or random.SystemRandom()
    return rng.randint(*lab.port_range)


def submission_digest(files: dict[str, bytes]) -> tuple[str, dict[str, str]]:
    per = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    h = hashlib.sha256()
    for name, d in per.items():
        h.update(f"{name}\0{d}\n".encode())
    return h.hexdigest(), per


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self, floor: float = 1.0) -> float:
        rem = self.end - time.monotonic()
        if rem <= 0:
            raise PhaseFailed("timeout", "phase time limit reached")
        return max(floor, rem)


class GradingRun:
    """Runs the phases; ``self.run`` is the per-run RunData the checks read."""

    def __init__(self, lab: LabSpec, vm: LabVM, submission_dir: str | Path, outdir: str | Path, *,
                 profile: KernelProfile | None = None, message: str | None = None,
                 port: int | None = None, runid: str | None = None,
                 rng: random.Random | None = None, helper: str = HELPER,
                 runs_dir: str = RUNS_DIR, poll_interval: float = 0.1, sudo: str = "sudo -n",
                 build_place: str = "auto", program_user: str | None = PROGRAM_USER,
                 copybreak: int | None = None, host_evidence_required: bool = True):
        if build_place not in BUILD_PLACES:
            raise ValueError(f"build_place must be one of {BUILD_PLACES}: {build_place!r}")
        self.build_place = build_place
        self.lab = lab
        self.vm = vm
        self.submission_dir = Path(submission_dir)
        self.outdir = Path(outdir)
        # the default architecture's profile until verify reads `uname -m` (unless one is given)
        self.profile = profile or load_profile(lab.kernel)
        self._profile_given = profile is not None
        self.helper = helper
        self.sudo = sudo
        # None: the programs run as the executor's own user (`make check` in the student's VM)
        self.program_user = program_user
        self.poll = poll_interval
        runid = runid or new_runid(rng)
        if not RUNID_RE.match(runid):
            raise ValueError(f"bad run id {runid!r}")
        message = message if message is not None else new_message(lab, rng)
        if not re.fullmatch(r"[A-Za-z0-9_]+", message):
            raise ValueError(f"message must be [A-Za-z0-9_]+: {message!r}")
        self.run = RunData(lab_id=lab.id, runid=runid, message=message,
                           port=port if port is not None else new_port(lab, rng),
                           profile=self.profile, send_comm=lab.send_comm, recv_comm=lab.recv_comm,
                           receiver_addr=lab.receiver_addr, example_addresses=lab.example_addresses)
        # the e1000e driver's copybreak the lab network is set up with (None: the driver's own)
        self.copybreak = copybreak if copybreak is not None else lab.copybreak
        # False for `make check` in the student's own VM: no hypervisor view there, the checks say so
        self.host_evidence_required = host_evidence_required
        self.rdir = f"{runs_dir}/{runid}"
        for name in PHASE_NAMES:
            self.run.phase(name)
        self.ex = None
        self.host_sources: dict = {}    # name -> prepared HostEvidenceSource
        self.host_armed: list = []
        # each phase of the table but release (which needs to know whether the run left the VM dirty)
        self.steps = {"acquire": self.p_acquire, "verify": self.p_verify, "upload": self.p_upload,
                      "build": self.p_build, "trace_start": self.p_trace_start, "load": self.p_load,
                      "run": self.p_run, "collect": self.p_collect, "unload": self.p_unload}

    # ------------------------------------------------------------------ helpers
    def sh(self, cmd: str, timeout: float, **kw):
        return self.ex.run(cmd, timeout=timeout, **kw)

    def helper_cmd(self, *args: str) -> str:
        cmd = " ".join(shlex.quote(a) for a in (self.helper, *args))
        return f"{self.sudo} {cmd}" if self.sudo else cmd

    def as_program_user(self, cmd: str) -> str:
        """``cmd`` (a simple command) run as the program account, through sudo."""
        if not self.program_user:
            return cmd
        return f"{self.sudo or 'sudo -n'} -u {shlex.quote(self.program_user)} -- {cmd}"

    def programs(self) -> list[str]:
        """The run folder's files the student's commands execute (``./receiver`` -> receiver)."""
        names = {shlex.split(c)[0] for c in (self.lab.receiver_command, self.lab.sender_command)}
        return sorted(n[2:] if n.startswith("./") else n for n in names)

    def kill_programs(self, timeout: float = 10) -> None:
        """SIGKILL every process of the program account (whatever the student's programs left)."""
        if self.program_user:
            # procps's kill takes neither `--` nor `-s SIG` before a negative pid
            self.sh(self.as_program_user("kill -KILL -1") + " 2>/dev/null; true", timeout)

    def disk_free(self) -> int | None:
        """Free bytes on the run folder's file system, as an unprivileged account may use them."""
        r = self.sh(f"df -P -B1 {shlex.quote(self.rdir)} | tail -n 1", 10)
        fields = r.stdout.split()
        try:
            return int(fields[3])
        except (IndexError, ValueError):
            return None

    def _fmt(self, template: str) -> str:
        return template.format(message=self.run.message, port=self.run.port, runid=self.run.runid,
                               addr=self.run.receiver_addr,
                               copybreak="" if self.copybreak is None else self.copybreak)

    def phase(self, name: str, fn) -> bool:
        """Run one phase, record status, duration and detail. True when it ended ok."""
        rec = self.run.phase(name)
        t0 = time.monotonic()
        try:
            detail = fn(Deadline(self.lab.timeout(name)))
            rec.status, rec.detail = "ok", detail or ""
        except PhaseFailed as e:
            rec.status, rec.detail = e.status, e.detail
        except GraderError as e:
            rec.status, rec.detail = "failed", f"{type(e).__name__}: {e}"
        except Exception as e:  # keep grading what we have
            rec.status, rec.detail = "failed", f"unexpected {type(e).__name__}: {e}"
        rec.duration_s = time.monotonic() - t0
        return rec.status == "ok"

    def check_crash(self, phase: str) -> bool:
        if self.run.crash_excerpt is not None:
            return True
        try:
            excerpt = self.vm.crash_excerpt()
        except Exception:
            excerpt = None
        if excerpt:
            self.run.crash_excerpt = excerpt
            self.run.crash_phase = phase
            self.run.verdict = f"kernel crashed during {phase}"
            return True
        return False

    def alive(self) -> bool:
        try:
            return bool(self.vm.alive())
        except Exception:
            return False

    # ------------------------------------------------------------------ phases
    def p_acquire(self, dl):
        self.vm.acquire()

    def p_verify(self, dl):
        account = (f"; id -u {shlex.quote(self.program_user)} >/dev/null 2>&1 && echo program-user-ok"
                   if self.program_user else "")
        r = self.sh(f"uname -r; uname -m; test -f {SELFTEST_MARK} && echo selftest-ok{account}",
                    dl.left())
        if r.timed_out:
            raise PhaseFailed("timeout", "verify commands timed out")
        lines = r.stdout.split()
        release = lines[0] if lines else ""
        self.run.environment["kernel_release"] = release or None
        if len(lines) > 1:
            machine = self.run.environment["arch"] = lines[1]
            supported = ", ".join(self.lab.supported_kernels())
            if not self._profile_given and release != self.profile.release:
                if release not in self.lab.supported_kernels():
                    raise PhaseFailed("failed", f"the VM runs kernel {release!r} ({machine}); lab "
                                                f"{self.lab.id} runs on {supported}")
                try:
                    self.profile = self.run.profile = load_profile(release)
                except Exception as e:  # noqa: BLE001 - a missing or broken profile is the grader's
                    raise PhaseFailed("failed", f"no usable kernel profile {release!r} for a {machine} VM: {e}")
            if self.profile.arch != machine:
                raise PhaseFailed("failed", f"the VM is {machine} but kernel profile {self.profile.release!r} "
                                            f"is for {self.profile.arch}; lab {self.lab.id} runs on {supported}")
        if release != self.profile.release:
            raise PhaseFailed("failed", f"VM runs kernel {release!r}, the profile is for "
                                        f"{self.profile.release!r}")
        if "selftest-ok" not in lines:
            raise PhaseFailed("failed", f"{SELFTEST_MARK} is missing: the VM's probe self-test "
                                        f"did not pass")
        if self.program_user and "program-user-ok" not in lines:
            raise PhaseFailed("failed", f"the VM has no account {self.program_user!r} for the student's "
                                        f"programs: provision it with provision/site.yml")
        network = self._set_up_network(dl)
        watching = self._prepare_host_evidence()
        return (f"kernel {release}, self-test ok" + network
                + (f"; watched from outside by {watching}" if watching else ""))

    def _set_up_network(self, dl) -> str:
        """The lab's network ([network] setup, a helper command) before any student code: its failure
        is the grader's. The helper answers with its net-status JSON, kept in the run."""
        if not self.lab.net_setup:
            return ""
        args = [a for a in (self._fmt(a) for a in self.lab.net_setup) if a]
        r = self.sh(self.helper_cmd(*args), dl.left())
        try:
            status = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            status = None
        self.run.net_status = status if isinstance(status, dict) else None
        if not r.ok or self.run.net_status is None:
            raise PhaseFailed("timeout" if r.timed_out else "failed",
                              f"the lab network could not be set up ({' '.join(args)}): "
                              f"{(r.stderr or r.stdout).strip()[:500]}")
        self.run.copybreak = self.run.net_status.get("copybreak")
        return f"; network up ({' '.join(args)}, copybreak {self.run.copybreak})"

    def _prepare_host_evidence(self) -> str:
        """Each source the lab asks for, prepared while the guest is still clean. A required source
        that cannot run fails verify (the grader's failure); an optional one is recorded as unavailable."""
        for name in self.lab.host_evidence:
            source, why = self.vm.host_evidence(name, self.lab, self.profile) \
                if isinstance(self.vm, WatchedFromOutside) else \
                (None, "this VM offers no view from outside the guest")
            if source is not None:
                try:
                    source.prepare(self.ex, self.run)
                except HostEvidenceUnavailable as e:
                    source, why = None, str(e)
            if source is None:
                self.run.host_evidence[name] = unavailable(name, why)
                if name in self.lab.host_evidence_required and self.host_evidence_required:
                    raise PhaseFailed("failed", f"host evidence {name!r} is required by the lab and "
                                                f"unavailable: {why}")
                continue
            self.host_sources[name] = source
        return ", ".join(self.host_sources)

    def _arm_host_evidence(self) -> None:
        for name, source in self.host_sources.items():
            try:
                source.arm(self.run)
                self.host_armed.append(source)
            except Exception as e:  # noqa: BLE001 - a source's failure is recorded, grading goes on
                self.run.host_evidence[name] = failed(name, f"could not be armed: {type(e).__name__}: {e}",
                                                      source.where)

    def _collect_host_evidence(self) -> None:
        while self.host_armed:
            source = self.host_armed.pop(0)
            try:
                self.run.host_evidence[source.name] = source.collect(self.run)
            except Exception as e:  # noqa: BLE001 - collect must not lose the run
                self.run.host_evidence[source.name] = failed(
                    source.name, f"collect failed: {type(e).__name__}: {e}", source.where)

    def p_upload(self, dl):
        files: dict[str, bytes] = {}
        for name in self.lab.files:
            p = self.submission_dir / name
            if not p.is_file():
                raise PhaseFailed("failed", f"submission file {name} is missing")
            data = p.read_bytes()
            if len(data) > self.lab.max_file_bytes:
                raise PhaseFailed("failed", f"{name} is {len(data)} bytes, more than "
                                            f"{self.lab.max_file_bytes}")
            files[name] = data
        for name in self.lab.optional_files:
            p = self.submission_dir / name
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()[:self.lab.max_file_bytes]
                files[name] = data
                self.run.answers_text = data.decode("utf-8", errors="replace")
        self.run.submission_sha256, self.run.submission_files = submission_digest(files)
        parent = self.rdir.rsplit("/", 1)[0]
        r = self.sh(f"mkdir -p {shlex.quote(parent)} && mkdir {shlex.quote(self.rdir)}", dl.left())
        if not r.ok:
            raise PhaseFailed("timeout" if r.timed_out else "failed",
                              f"cannot create {self.rdir}: {r.stderr.strip()}")
        for name in self.lab.files:
            self.ex.put(self.submission_dir / name, f"{self.rdir}/{name}", mode=0o644)
        for name in self.lab.build_files:
            self.ex.put(self.lab.dir / name, f"{self.rdir}/{name}", mode=0o644)
        return f"{len(self.lab.files)} submission files + {', '.join(self.lab.build_files)}"

    def p_build(self, dl):
        builder, why = self._builder()
        self.run.environment["build_place"] = "sandbox" if builder else "vm"
        self.run.environment["build_place_reason"] = why
        if builder is not None:
            detail = self._build_on_host(builder, dl) + f" in the {why}"
        else:
            detail = self._build_in_vm(dl) + f" in the VM ({why})"
        if self.program_user:
            self._open_programs(dl)
        return detail

    def _builder(self):
        """(host builder, why) or (None, why the build stays in the VM)."""
        if self.build_place == "vm":
            return None, "build_place='vm' was asked for"
        builder, why = self.vm.host_builder() if isinstance(self.vm, BuildsOnHost) else \
            (None, "this VM offers no host build root")
        release = self.run.environment.get("kernel_release")
        if builder is not None and builder.release != release:
            builder, why = None, f"the build root is for {builder.release}, the VM runs {release}"
        if builder is None and self.build_place == "sandbox":
            raise PhaseFailed("failed", f"a sandbox build was asked for but is not possible: {why}")
        return builder, why

    def _build_on_host(self, builder, dl) -> str:
        """The lab's build command in the host sandbox; only the named outputs go to the VM."""
        sources = {name: self.submission_dir / name for name in self.lab.files}
        sources.update({name: self.lab.dir / name for name in self.lab.build_files})
        with tempfile.TemporaryDirectory(prefix="copylab-outputs-") as tmp:
            out = builder.build(sources, ["sh", "-c", self.lab.build_command], self.lab.build_outputs,
                                dl.left(), Path(tmp))
            self.run.build_log, self.run.build_exit = out.log, out.exit_code
            self.run.build_outputs_missing = out.missing
            reason = out.reason()
            if reason:
                raise PhaseFailed("timeout" if out.timed_out else "failed", reason)
            for name, path in out.outputs.items():
                self.ex.put(path, f"{self.rdir}/{name}", mode=path.stat().st_mode & 0o777)
            module = out.outputs.get(self.lab.module_file)
            if module is not None:
                self.run.module_sha256 = hashlib.sha256(module.read_bytes()).hexdigest()
        return "built " + ", ".join(self.lab.build_outputs)

    def _build_in_vm(self, dl) -> str:
        r = self.sh(f"cd {shlex.quote(self.rdir)} && {self.lab.build_command} 2>&1", dl.left())
        self.run.build_log = r.stdout + r.stderr
        self.run.build_exit = r.exit_code
        if r.timed_out:
            raise PhaseFailed("timeout", f"build exceeded {self.lab.timeout('build'):g}s")
        if r.exit_code != 0:
            raise PhaseFailed("failed", f"{self.lab.build_command} exited {r.exit_code}")
        outs = " ".join(shlex.quote(o) for o in self.lab.build_outputs)
        r = self.sh(f"cd {shlex.quote(self.rdir)} && for f in {outs}; do test -f \"$f\" || "
                    f"echo \"missing $f\"; done; sha256sum {shlex.quote(self.lab.module_file)} "
                    f"2>/dev/null || true", dl.left())
        self.run.build_outputs_missing = [ln.split(None, 1)[1] for ln in r.stdout.splitlines()
                                          if ln.startswith("missing ")]
        for ln in r.stdout.splitlines():
            parts = ln.split()
            if len(parts) == 2 and len(parts[0]) == 64 and parts[1] == self.lab.module_file:
                self.run.module_sha256 = parts[0]
        if self.run.build_outputs_missing:
            raise PhaseFailed("failed", "missing " + ", ".join(self.run.build_outputs_missing))
        return "built " + ", ".join(self.lab.build_outputs)

    def _open_programs(self, dl):
        """Only the programs (and entering the run folder) for the program account's group:
        sources, objects and the module stay the grader's."""
        progs = " ".join(shlex.quote(p) for p in self.programs())
        group = shlex.quote(self.program_user)
        r = self.sh(f"cd {shlex.quote(self.rdir)} && chmod -R go-rwx . && chgrp {group} . {progs} "
                    f"&& chmod g+x . && chmod g+rx {progs}", dl.left())
        if not r.ok:
            raise PhaseFailed("timeout" if r.timed_out else "failed",
                              f"cannot hand the programs to {self.program_user}: "
                              f"{(r.stderr or r.stdout).strip()}")

    def p_trace_start(self, dl):
        # one helper call (each costs about a second under TCG): "kmsg-seq N", "taint T", then trace-start
        own = [self.lab.id] if self.lab.id in self.profile.lab_event_templates else []
        r = self.sh(self.helper_cmd("begin", self.run.runid, *own), dl.left())
        facts = dict(line.split(" ", 1) for line in r.stdout.splitlines()[:2] if " " in line)
        try:
            self.run.kmsg_start_seq = int(facts["kmsg-seq"])
        except (KeyError, ValueError):
            raise PhaseFailed("timeout" if r.timed_out else "failed",
                              f"begin gave {r.stdout.strip()[:200]!r} {r.stderr.strip()!r}")
        self.run.taint_before = parse_taint(facts.get("taint", ""))
        if not r.ok:
            raise PhaseFailed("timeout" if r.timed_out else "failed",
                              f"trace-start failed: {(r.stderr or r.stdout).strip()}")
        return f"kmsg seq {self.run.kmsg_start_seq}, taint {self.run.taint_before}"

    def p_load(self, dl):
        args = [self._fmt(a) for a in self.lab.load_args]
        r = self.sh(self.helper_cmd("load", f"{self.rdir}/{self.lab.module_file}", *args),
                    dl.left())
        self.run.load_exit = r.exit_code
        self.run.load_output = (r.stdout + r.stderr).strip()
        if r.timed_out:
            raise PhaseFailed("timeout", "insmod did not return")
        if r.exit_code != 0:
            raise PhaseFailed("failed", f"load exited {r.exit_code}: {self.run.load_output}")
        return "loaded " + " ".join(args)

    def p_run(self, dl):
        run, d = self.run, shlex.quote(self.rdir)
        tmo = max(1, int(self.lab.timeout("run")))
        if self.lab.receiver_via == "net-run":
            # inside the receiver's network namespace: only the root helper can enter it
            recv = self.helper_cmd("net-run", "-t", str(tmo), self.program_user or "-",
                                   *shlex.split(self._fmt(self.lab.receiver_command)))
        else:
            recv = self.as_program_user(f"timeout -k 2 {tmo} {self._fmt(self.lab.receiver_command)}")
        inner = f"{recv} </dev/null >receiver.out 2>&1; echo $? >receiver.rc"
        # $! is setsid's pid, which becomes the receiver's session and process group id
        r = self.sh(f"cd {d} && rm -f receiver.out receiver.rc || exit 1; "
                    f"setsid sh -c {shlex.quote(inner)} </dev/null >/dev/null 2>&1 & "
                    f"echo $! > receiver.pid", min(10, dl.left()))
        if not r.ok:
            raise PhaseFailed("timeout" if r.timed_out else "failed",
                              f"cannot start the receiver: {r.stderr.strip()}")
        detail: list[str] = []
        status = "ok"
        # wait for "receiver: listening"
        wait = (f"cd {d}; while :; do grep -q '^receiver: listening' receiver.out 2>/dev/null "
                f"&& exit 0; test -e receiver.rc && exit 3; sleep {self.poll}; done")
        r = self.sh(wait, dl.left())
        run.receiver_listening = r.exit_code == 0
        if not run.receiver_listening:
            detail.append("receiver never printed its listening line"
                          + (" (it exited)" if r.exit_code == 3 else ""))
            status = "failed" if not r.timed_out else "timeout"
        # the sender gets its own time limit, inside the phase's, so that a sender that never
        # exits still leaves time to learn how the receiver ended
        send_tmo = max(1, int(dl.left()) - SENDER_MARGIN)
        send = self.as_program_user(f"timeout -k 2 {send_tmo} {self._fmt(self.lab.sender_command)}")
        r = self.sh(f"cd {d} && {send} </dev/null 2>&1", dl.left())
        run.sender_out, run.sender_exit = r.stdout + r.stderr, r.exit_code
        if r.timed_out or r.exit_code in TIMEOUT_EXITS:
            run.sender_timed_out = True
            status = "timeout"
            detail.append(f"the sender did not finish in time (still running after {send_tmo} s)")
        elif r.exit_code != 0:
            detail.append(f"the sender exited {r.exit_code}")
            status = "failed" if status == "ok" else status
        # wait for the receiver's shell to write the exit status file, or to end without it
        try:
            left = dl.left()
            r = self.sh(f"cd {d}; pid=$(cat receiver.pid); while ! test -e receiver.rc && "
                        f"kill -0 \"$pid\" 2>/dev/null; do sleep {self.poll}; done; "
                        f"test -e receiver.rc || exit {NO_STATUS_FILE}; cat receiver.rc", left)
            finished = r.ok or r.exit_code == NO_STATUS_FILE
        except PhaseFailed:
            finished, r = False, None
        if not finished:
            # the phase's time is up (a sender that overran its limit may have taken it): the
            # receiver may have ended all the same, and its status file says so
            r = self.sh(f"cd {d}; test -e receiver.rc || exit {NO_STATUS_FILE}; cat receiver.rc",
                        RECEIVER_RECHECK)
            finished = r.ok
        status_problem = None
        if finished:
            text = r.stdout.strip() if r.ok else ""
            try:
                run.receiver_exit = int(text.splitlines()[-1])
            except (ValueError, IndexError):
                run.receiver_exit = None
                status_problem = ("receiver.rc, the receiver's exit status, is missing" if not r.ok
                                  else f"receiver.rc, the receiver's exit status, is {'empty' if not text else repr(text[:40])}")
            if run.receiver_exit == 124:
                run.receiver_timed_out = True
        else:
            run.receiver_timed_out = True
            self.sh(f"kill -KILL -- -$(cat {d}/receiver.pid) 2>/dev/null; true", 10)
        self.kill_programs()
        run.disk_free_bytes = self.disk_free()
        if run.receiver_timed_out:
            status = "timeout"
            detail.append("the receiver did not finish in time")
        elif run.sender_timed_out and run.receiver_exit == 0:
            detail.append("the receiver finished (exit 0)")
        elif status_problem:
            free = "unknown" if run.disk_free_bytes is None else f"{run.disk_free_bytes} bytes"
            detail.append(f"{status_problem}: the VM could not record it (free disk after the run: {free})")
            status = "failed" if status == "ok" else status
        elif run.receiver_exit != 0:
            detail.append(f"the receiver exited {run.receiver_exit}")
            status = "failed" if status == "ok" else status
        r = self.sh(f"cat {d}/receiver.out", 10, max_output=200_000)
        run.receiver_out = r.stdout
        if status != "ok":
            raise PhaseFailed(status, "; ".join(detail))
        return f"port {run.port}, message {run.message}"

    def p_collect(self, dl):
        # one helper call: the taint mask, the trace and the kernel log as length-delimited sections
        runid = self.run.runid if self.run.phase_status("trace_start") == "ok" else "-"
        since = "-" if self.run.kmsg_start_seq is None else str(self.run.kmsg_start_seq)
        r = self.sh(self.helper_cmd("end", runid, since), dl.left(), max_output=8_000_000)
        sections = helper_sections(r.stdout)
        problems = []
        for name, wanted, field in (("trace", runid != "-", "trace_text"), ("kmsg", since != "-", "kmsg_text")):
            if not wanted:
                continue
            sec = sections.get(name)
            if sec is None:
                problems.append(f"{name}: {'timeout' if r.timed_out else f'missing (exit {r.exit_code})'}")
                continue
            if sec.status == "ok":
                setattr(self.run, field, sec.text)     # a log cut at max_output is kept as far as it goes
            else:
                problems.append(f"{name}: {sec.text.strip()}")
            if not sec.complete and r.timed_out:
                problems.append(f"{name}: timeout")
        taint = sections.get("taint")
        self.run.taint_after = parse_taint(taint.text) if taint and taint.status == "ok" else None
        if self.run.taint_after is None:
            problems.append("taint unreadable")
        if problems:
            raise PhaseFailed("failed", "; ".join(problems))
        return (f"{len(self.run.kmsg)} kernel records, {len(self.run.trace)} trace events, "
                f"taint {self.run.taint_after}")

    def p_unload(self, dl):
        r = self.sh(self.helper_cmd("unload", self.lab.module), dl.left())
        self.run.unload_exit = r.exit_code
        self.run.unload_output = (r.stdout + r.stderr).strip()
        if r.timed_out:
            raise PhaseFailed("timeout", "rmmod did not return")
        if r.exit_code != 0:
            raise PhaseFailed("failed", f"unload exited {r.exit_code}: {self.run.unload_output}")

    # ------------------------------------------------------------------ driver
    def execute(self) -> RunData:
        run = self.run
        if not self.phase("acquire", self.steps["acquire"]):
            self._skip_after("acquire", "the VM could not be acquired")
            self._release(dirty=True)
            return run
        try:
            run.environment.update(self.vm.environment() or {})
        except Exception:
            pass
        loaded = False
        trouble = False
        with ExitStack() as stack:
            try:
                self.ex = stack.enter_context(self.vm.executor())
            except Exception as e:
                run.phase("verify").status = "failed"
                run.phase("verify").detail = f"cannot reach the VM: {type(e).__name__}: {e}"
                self._skip_after("verify", "the VM could not be reached")
                self.check_crash("verify")
                self._release(dirty=True)
                return run
            # acquire is done; the others up to the first cleanup phase run one after the other
            main = [(p.name, self.steps[p.name]) for p in PHASES[1:] if not p.cleanup]
            stopped_at = None
            for name, fn in main:
                if name == "run":
                    self._arm_host_evidence()
                ok = self.phase(name, fn)
                if name == "run":
                    self._collect_host_evidence()
                if name == "load" and run.phase_status("load") in ("ok", "timeout"):
                    loaded = True
                if name in ("trace_start", "load", "run") or not ok:
                    if self.check_crash(name):
                        ok = False
                if not ok:
                    trouble = True
                    stopped_at = name
                    if not (name == "run" and run.crash_excerpt is None):
                        break
            if stopped_at is not None:
                idx = [n for n, _ in main].index(stopped_at)
                for n, _ in main[idx + 1:]:
                    run.phase(n).detail = f"not run: {stopped_at} did not succeed"
            # collect and unload whenever something ran in the kernel and the VM is alive
            needed = {"collect": run.phase_status("trace_start") != "skipped", "unload": loaded}
            for name in (p.name for p in PHASES if p.cleanup and p.name in self.steps):
                fn = self.steps[name]
                if not needed[name]:
                    run.phase(name).detail = "nothing to do"
                    continue
                if not self.alive():
                    run.phase(name).detail = "not run: the VM is not alive"
                    trouble = True
                    continue
                if trouble and run.crash_excerpt is not None:
                    # a fresh connection: the old session may hang behind the oopsed process
                    try:
                        self.ex = stack.enter_context(self.vm.executor())
                    except Exception as e:
                        run.phase(name).detail = f"not run: cannot reconnect ({e})"
                        continue
                if not self.phase(name, fn):
                    trouble = True
                self.check_crash(name)
        dirty = trouble or loaded and run.phase_status("unload") != "ok" \
            or run.crash_excerpt is not None
        self._release(dirty=dirty)
        return run

    def _skip_after(self, phase: str, why: str):
        names = list(self.run.phases)
        for n in names[names.index(phase) + 1:]:
            if n != "release":
                self.run.phase(n).detail = f"not run: {why}"

    def _release(self, dirty: bool):
        self.phase("release", lambda dl: self.vm.release(dirty=dirty) or
                   ("dirty" if dirty else "clean"))

    # ------------------------------------------------------------------ output
    def write_artifacts(self) -> dict[str, str]:
        self.outdir.mkdir(parents=True, exist_ok=True)
        run = self.run
        files = {"build.log": run.build_log, "kmsg.txt": run.kmsg_text,
                 "sender.out": run.sender_out, "receiver.out": run.receiver_out,
                 "trace.txt": run.trace_text}
        if run.crash_excerpt:
            files["crash.txt"] = run.crash_excerpt
        for evidence in run.host_evidence.values():
            if evidence.text:
                files[evidence.artifact_name] = evidence.text
        out = {}
        for name, text in files.items():
            if text is None:
                continue
            (self.outdir / name).write_text(text, encoding="utf-8")
            out[name] = name
        return out


def grade(lab: LabSpec, vm: LabVM, submission_dir: str | Path, outdir: str | Path, **kw) -> GradedRun:
    """Grade one submission: run the phases, run the checks, write artifacts and result.json."""
    g = GradingRun(lab, vm, submission_dir, outdir, **kw)
    g.execute()
    checks = run_checks(lab.checks, g.run)
    artifacts = g.write_artifacts()
    result = build_result(g.run, checks, artifacts, max_score=lab.max_score)
    write_result(result, g.outdir)
    return GradedRun(g.run, checks, result, g.outdir)
