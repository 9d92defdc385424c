"""run.py phases against a fake VM whose executor is a LocalExecutor on this machine: the
"helper" and the lab programs are small shell scripts."""

import json
import os
import re
import stat
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.engine_runs import MSG, PORT, RBUF, SBUF, kmsg_text, trace_text

from grader.engine.labspec import load_lab
from grader.engine.profile import load_profile
from grader.engine.result import render_text, to_gradescope
from grader.engine.run import grade
from grader.executor import LocalExecutor

pytestmark = pytest.mark.timeout(120)


def script(path: Path, body: str):
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)


class FakeVM:
    def __init__(self, crash_after_load=False, alive=True):
        self.events = []
        self.crash_after_load = crash_after_load
        self._alive = alive
        self.loaded = False

    def acquire(self):
        self.events.append("acquire")

    @contextmanager
    def executor(self):
        self.events.append("executor")
        yield LocalExecutor()

    def crash_excerpt(self):
        if self.crash_after_load and self.loaded_marker.exists():
            return "BUG: kernel NULL pointer dereference, address: 0000000000000000\nOops: 0002 [#1]"
        return None

    def alive(self):
        return self._alive

    def release(self, dirty):
        self.events.append(("release", dirty))

    def environment(self):
        return {"accel": "tcg", "arch": "x86_64"}


@pytest.fixture
def env(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "kmsg.txt").write_text(kmsg_text())
    (fake / "trace.txt").write_text(trace_text())
    helper = fake / "helper"
    script(helper, f"""\
        echo "$@" >> {fake}/helper.log
        case "$1" in
          begin) echo "kmsg-seq 1000"; echo "taint 0" ;;
          end) t=0; [ -e {fake}/loaded ] && t=12288
               printf 'taint ok %s\\n%s' "${{#t}}" "$t"
               if [ "$2" != - ]; then printf 'trace ok %s\\n' "$(wc -m < {fake}/trace.txt)"; cat {fake}/trace.txt; fi
               if [ "$3" != - ]; then printf 'kmsg ok %s\\n' "$(wc -m < {fake}/kmsg.txt)"; cat {fake}/kmsg.txt; fi ;;
          load) test -f "$2" || exit 1; touch {fake}/loaded ;;
          unload) rm -f {fake}/loaded ;;
          net-up) echo '{{"ready": true, "copybreak": '"${{2:-256}}"', "nics": []}}' ;;
          net-run) shift 4; exec "$@" ;;
        esac
    """)
    # the "lab": a build command that turns the submission into runnable scripts
    labdir = tmp_path / "lab"
    labdir.mkdir()
    (labdir / "Makefile").write_text("unused\n")
    (labdir / "Kbuild").write_text("unused\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "sender.c").write_text(
        f'echo "sender: buffer at 0x{SBUF:x}"; echo "$1" > sent.msg; '
        f'echo "sender: sent 16 bytes \\"$1\\" to 127.0.0.1:$2"\n')
    (sub / "receiver.c").write_text(
        f'echo "receiver: listening on 127.0.0.1:$1"; echo "receiver: buffer at 0x{RBUF:x}"\n'
        f'while [ ! -e sent.msg ]; do sleep 0.05; done; [ -e hang ] && sleep 60\n'
        f'echo "receiver: received 16 bytes \\"$(cat sent.msg)\\""\n')
    (sub / "copytrace.c").write_text("module\n")
    lab = load_lab("lab1")
    lab.dir = labdir
    lab.build_command = ("cp sender.c sender && cp receiver.c receiver && chmod +x sender receiver"
                         " && cp copytrace.c copytrace.ko && echo built")
    lab.timeouts = dict(lab.timeouts, run=3, build=10)
    vm = FakeVM()
    vm.loaded_marker = fake / "loaded"

    def do(vm=vm, **kw):
        # the programs run as this test's own user (no program account on the test host)
        kw.setdefault("program_user", None)
        kw.setdefault("sudo", "")
        return grade(lab, vm, sub, tmp_path / "out", message=MSG, port=PORT, runid="run1",
                     helper=str(helper), runs_dir=str(tmp_path / "runs"),
                     poll_interval=0.05, **kw)
    return type("Env", (), dict(do=staticmethod(do), vm=vm, fake=fake, sub=sub, tmp=tmp_path,
                                lab=lab))


@pytest.fixture(autouse=True)
def fake_verify(monkeypatch):
    # the host is not the lab VM: make verify see the profile's kernel and the self-test mark
    from grader.engine import run as runmod
    orig = runmod.GradingRun.p_verify

    def p_verify(self, dl):
        self.run.environment["kernel_release"] = self.profile.release
        return "faked; " + self._set_up_network(dl) + self._prepare_host_evidence()
    monkeypatch.setattr(runmod.GradingRun, "p_verify", p_verify)
    yield orig


def test_full_run_scores_100(env):
    out = env.do()
    res = out.result
    phases = {p["name"]: p for p in res["phases"]}
    assert all(p["status"] == "ok" for p in phases.values()), phases
    assert all(p["duration_s"] >= 0 for p in phases.values())
    assert phases["build"]["duration_s"] > 0
    assert res["score"] == 100 == res["max_score"], render_text(res)
    assert res["verdict"] is None
    assert env.vm.events[-1] == ("release", False)
    for key in ("lab", "submission", "score", "max_score", "checks", "phases", "environment",
                "verdict", "trace_table", "copies", "bytes_held", "artifacts"):
        assert key in res
    assert len(res["submission"]["sha256"]) == 64
    assert set(res["submission"]["files"]) == {"sender.c", "receiver.c", "copytrace.c"}
    assert res["environment"]["accel"] == "tcg" and len(res["environment"]["module_sha256"]) == 64
    assert res["copies"] == 2 and res["bytes_held"] == 48
    assert res["disk_free_after_run_bytes"] > 0
    assert [r["step"] for r in res["trace_table"]] == list(range(1, 8))
    assert "0x559c785ba060" in res["trace_table"][0]["location"]
    assert "0xff49648bc2a4da2c" in res["trace_table"][2]["location"]
    for c in res["checks"]:
        assert {"name", "passed", "points", "max_points", "evidence", "hint"} <= set(c)
        assert all(set(e) == {"mark", "text"} for e in c["evidence"])
    assert set(res["artifacts"]) == {"build.log", "kmsg.txt", "sender.out", "receiver.out",
                                     "trace.txt"}
    assert json.loads((out.outdir / "result.json").read_text())["score"] == 100
    assert (out.outdir / "receiver.out").read_text().startswith("receiver: listening")
    helper_log = (env.fake / "helper.log").read_text()
    assert f"load {env.tmp}/runs/run1/copytrace.ko payload={MSG}" in helper_log
    assert "begin run1" in helper_log and "end run1 1000" in helper_log
    assert "unload copytrace" in helper_log
    gs = to_gradescope(res)
    assert gs["score"] == 100 and len(gs["tests"]) == len(env.lab.checks)
    assert "the message's journey" in render_text(res)


def test_receiver_timeout_keeps_partial_output(env):
    (env.sub / "receiver.c").write_text(
        f'echo "receiver: listening on 127.0.0.1:$1"; echo "receiver: buffer at 0x{RBUF:x}"\n'
        'sleep 30\n')
    res = env.do().result
    phases = {p["name"]: p for p in res["phases"]}
    assert phases["run"]["status"] == "timeout" and "receiver" in phases["run"]["detail"]
    assert phases["run"]["duration_s"] < 10
    assert phases["collect"]["status"] == "ok" and phases["unload"]["status"] == "ok"
    checks = {c["name"]: c for c in res["checks"]}
    pr = checks["programs_report"]
    assert not pr["passed"]
    assert any(e["mark"] == "good" and "listening" in e["text"] for e in pr["evidence"])
    assert any(e["mark"] == "missing" and "timed out" in e["text"] for e in pr["evidence"])
    assert checks["copy1_kernel_side"]["passed"]
    assert env.vm.events[-1] == ("release", True)


@pytest.mark.parametrize("margin", [None, -3])
def test_a_sender_that_never_exits_is_reported_as_the_sender_s_end(env, monkeypatch, margin):
    """The receiver got the message and exited 0; only the sender overran its own time limit.
    With a margin below 0 the sender takes the phase's whole time (a slow VM): the receiver's status
    file still tells how it ended."""
    if margin is not None:
        from grader.engine import run as runmod
        monkeypatch.setattr(runmod, "SENDER_MARGIN", margin)
    (env.sub / "sender.c").write_text(
        f'echo "sender: buffer at 0x{SBUF:x}"; echo "$1" > sent.msg; '
        f'echo "sender: sent 16 bytes \\"$1\\" to 127.0.0.1:$2"; sleep 30\n')
    res = env.do().result
    run = {p["name"]: p for p in res["phases"]}["run"]
    assert run["status"] == "timeout", run
    assert "the sender did not finish in time" in run["detail"], run
    assert "the receiver did not finish" not in run["detail"], run
    assert "the receiver finished (exit 0)" in run["detail"], run
    assert run["duration_s"] < 10
    pr = {c["name"]: c for c in res["checks"]}["programs_report"]
    texts = [e["text"] for e in pr["evidence"]]
    assert not pr["passed"]
    assert any("the sender did not exit after it sent the message" in t for t in texts), texts
    assert any("received 16 bytes" in t for t in texts), texts
    assert not any("receiver did not finish" in t or "timed out" in t for t in texts), texts


RECEIVER_THEN_RC = (f'echo "receiver: listening on 127.0.0.1:$1"; echo "receiver: buffer at 0x{RBUF:x}"\n'
                    'while [ ! -e sent.msg ]; do sleep 0.05; done\n'
                    'echo "receiver: received 16 bytes \\"$(cat sent.msg)\\""\n')


@pytest.mark.parametrize("target, says", [
    ("/dev/null", "is empty"),                       # the status is written nowhere: empty
    ("/nonexistent-copylab/receiver.rc", "is missing"),  # it cannot be created at all
])
def test_unrecorded_receiver_exit_status_fails_the_run_phase(env, target, says):
    # receiver.rc as a link stands for a full disk: the shell's `echo $? >receiver.rc` records nothing
    (env.sub / "receiver.c").write_text(RECEIVER_THEN_RC + f"ln -s {target} receiver.rc\n")
    res = env.do().result
    run = {p["name"]: p for p in res["phases"]}["run"]
    assert run["status"] == "failed", run
    assert f"receiver.rc, the receiver's exit status, {says}" in run["detail"]
    assert "free disk after the run: " in run["detail"]
    assert res["disk_free_after_run_bytes"] > 0
    pr = {c["name"]: c for c in res["checks"]}["programs_report"]
    assert not pr["passed"]
    assert any("exit status is unknown" in e["text"] for e in pr["evidence"])
    assert res["score"] < res["max_score"]


def test_programs_run_as_the_program_account_through_sudo(env):
    # a stand-in sudo: logs its arguments and runs the command as this user; `kill -1` is only logged
    log = env.fake / "sudo.log"
    script(env.fake / "sudo", f"""\
        echo "$@" >> {log}
        if [ "$1" = -u ]; then
          shift 3
          [ "$1" = kill ] && exit 0
        fi
        exec "$@"
    """)
    res = env.do(program_user="root", sudo=str(env.fake / "sudo")).result
    assert res["score"] == 100, render_text(res)
    calls = log.read_text().splitlines()
    assert any(c.startswith("-u root -- timeout -k 2 3 ./receiver ") for c in calls), calls
    assert any(re.match(rf"-u root -- timeout -k 2 \d+ ./sender {MSG} ", c) for c in calls), calls
    assert "-u root -- kill -KILL -1" in calls
    rdir = env.tmp / "runs" / "run1"
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in rdir.iterdir()}
    assert stat.S_IMODE(rdir.stat().st_mode) == 0o710
    assert mode["sender"] == mode["receiver"] == 0o750
    assert mode["sender.c"] & 0o077 == 0 and mode["copytrace.ko"] & 0o077 == 0


def test_crash_gives_verdict_and_dirty_release(env):
    vm = FakeVM(crash_after_load=True, alive=False)
    vm.loaded_marker = env.fake / "loaded"
    res = env.do(vm=vm).result
    assert res["verdict"] == "kernel crashed during load"
    phases = {p["name"]: p for p in res["phases"]}
    assert phases["run"]["status"] == "skipped"
    assert phases["collect"]["status"] == "skipped" and "not alive" in phases["collect"]["detail"]
    nkf = {c["name"]: c for c in res["checks"]}["no_kernel_fault"]
    assert not nkf["passed"] and any("NULL pointer" in e["text"] for e in nkf["evidence"])
    assert vm.events[-1] == ("release", True)
    assert "crash.txt" in res["artifacts"]


def test_build_failure_stops_before_load(env):
    env.lab.build_command = "echo 'copytrace.c:3: error: boom' >&2; exit 2"
    res = env.do().result
    phases = {p["name"]: p["status"] for p in res["phases"]}
    assert phases["build"] == "failed"
    assert phases["load"] == phases["run"] == phases["trace_start"] == "skipped"
    assert res["score"] == 0
    bo = res["checks"][0]
    assert bo["name"] == "build_ok" and any("boom" in e["text"] for e in bo["evidence"])


def test_verify_rejects_wrong_kernel(env, fake_verify, monkeypatch):
    from grader.engine import run as runmod
    monkeypatch.setattr(runmod.GradingRun, "p_verify", fake_verify)
    res = env.do().result
    phases = {p["name"]: p for p in res["phases"]}
    assert phases["verify"]["status"] == "failed"
    assert "6.1.0-50-amd64" in phases["verify"]["detail"]
    assert phases["build"]["status"] == "skipped"


@pytest.mark.parametrize("machine, release, expect", [
    ("aarch64", "6.1.0-50-arm64", "ok"),       # Apple Silicon's VM: the arm64 profile is taken
    ("x86_64", "6.1.0-50-amd64", "ok"),
    ("x86_64", "6.12.117+deb13-amd64", "ok"),  # a Debian 13 VM: its 6.12 profile is taken
    ("aarch64", "6.1.0-50-amd64", "failed"),   # an arm64 VM must run an arm64 kernel
    ("x86_64", "6.1.0-56-amd64", "failed"),    # a kernel the lab does not name
])
def test_verify_takes_the_profile_of_the_kernel_the_vm_runs(env, fake_verify, monkeypatch, machine, release,
                                                            expect):
    from grader.engine import run as runmod
    from grader.executor import CommandResult

    monkeypatch.setattr(runmod.GradingRun, "p_verify", fake_verify)
    real_sh = runmod.GradingRun.sh

    def sh(self, cmd, timeout, **kw):
        if cmd.startswith("uname -r; uname -m"):
            return CommandResult(0, f"{release}\n{machine}\nselftest-ok\n", "")
        return real_sh(self, cmd, timeout, **kw)
    monkeypatch.setattr(runmod.GradingRun, "sh", sh)
    out = env.do()
    verify = {p["name"]: p for p in out.result["phases"]}["verify"]
    assert verify["status"] == expect, verify
    if expect == "ok":
        assert out.run.profile.release == release and out.run.profile.arch == machine
    else:
        # the message names what the VM runs and every kernel the lab runs on
        assert release in verify["detail"] and machine in verify["detail"]
        assert "6.1.0-50-arm64" in verify["detail"] and "6.12.117+deb13-amd64" in verify["detail"]


def test_lab_spec_names_the_kernels_it_runs_on():
    lab = load_lab("lab1")
    assert lab.kernel == "6.1.0-50-amd64"
    assert lab.supported_kernels() == ["6.1.0-50-amd64", "6.1.0-50-arm64", "6.12.117+deb13-amd64"]
    for release in lab.supported_kernels():
        assert load_profile(release).release == release


class LocalBuilder:
    """Stands in for grader/buildbox.HostBuilder (tested for real in tests/vm/test_buildbox.py): runs
    the command in a scratch folder on this machine and hands back the named outputs."""

    def __init__(self, release):
        self.release = release
        self.calls = []

    def build(self, sources, command, outputs, timeout, dest):
        import shutil
        import subprocess
        import tempfile
        from grader.buildbox import BuildOutcome

        self.calls.append(command)
        with tempfile.TemporaryDirectory() as work:
            for name, src in sources.items():
                shutil.copy(src, Path(work) / name)
            r = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=timeout)
            out = BuildOutcome(log=r.stdout + r.stderr, exit_code=r.returncode, timeout=timeout)
            dest.mkdir(exist_ok=True)
            for name in outputs:
                shutil.copy(Path(work) / name, dest / name)
                out.outputs[name] = dest / name
        return out


def offering(vm, builder, why="sandbox (test)"):
    vm.host_builder = lambda: (builder, why)
    return vm


def test_build_in_the_host_sandbox_uploads_only_the_outputs(env):
    builder = LocalBuilder(release="6.1.0-50-amd64")
    res = env.do(vm=offering(env.vm, builder)).result
    assert res["score"] == 100, render_text(res)
    assert builder.calls == [["sh", "-c", env.lab.build_command]]
    assert res["environment"]["build_place"] == "sandbox"
    build = {p["name"]: p for p in res["phases"]}["build"]
    assert build["status"] == "ok" and "sandbox (test)" in build["detail"]
    run_dir = env.tmp / "runs" / "run1"
    # the VM got the outputs (executable programs), nothing the build made besides them
    assert os.access(run_dir / "sender", os.X_OK) and (run_dir / "copytrace.ko").is_file()
    assert "built" in (env.tmp / "out" / "build.log").read_text()


def test_build_stays_in_the_vm_when_the_build_root_is_for_another_kernel(env):
    builder = LocalBuilder(release="6.1.0-49-amd64")
    res = env.do(vm=offering(env.vm, builder)).result
    assert res["score"] == 100 and builder.calls == []
    assert res["environment"]["build_place"] == "vm"
    assert "6.1.0-49-amd64" in res["environment"]["build_place_reason"]


def test_build_stays_in_the_vm_when_the_host_cannot(env):
    res = env.do(vm=offering(env.vm, None, "bwrap is not installed")).result
    assert res["score"] == 100
    assert res["environment"]["build_place"] == "vm"
    assert res["environment"]["build_place_reason"] == "bwrap is not installed"
    build = {p["name"]: p for p in res["phases"]}["build"]
    assert "in the VM (bwrap is not installed)" in build["detail"]


def test_a_required_sandbox_that_is_missing_fails_the_build(env):
    res = env.do(vm=offering(env.vm, None, "no build root"), build_place="sandbox").result
    build = {p["name"]: p for p in res["phases"]}["build"]
    assert build["status"] == "failed" and "no build root" in build["detail"]
    assert res["score"] == 0


def test_helper_sections_are_delimited_by_length_not_by_lines():
    """A trace line or kernel-log record may hold text that looks like a section header (a task can name
    itself so): only the lengths delimit sections; output cut short marks the section incomplete."""
    from grader.engine.run import helper_sections

    trace = "sender-1 [000] copylab_tx: x\nkmsg ok 3\nabc"
    out = f"taint ok 1\n0trace ok {len(trace)}\n{trace}kmsg ok 20\n6,5,1,-;hello"
    s = helper_sections(out)
    assert s["taint"].text == "0" and s["trace"].text == trace and s["trace"].complete
    assert s["kmsg"].text == "6,5,1,-;hello" and s["kmsg"].complete is False and s["kmsg"].status == "ok"
    assert helper_sections("trace error 19\nno trace instance x")["trace"].status == "error"
    assert helper_sections("garbage\n") == {}


def test_real_helper_end_without_a_trace_reads_taint_and_kernel_log():
    """The VM-side helper's own `end` on this host (root reads /dev/kmsg): sections the engine parses."""
    import subprocess
    import sys

    from grader.engine.run import helper_sections

    helper = Path(__file__).resolve().parents[2] / "grader" / "vmside" / "copylab-helper"
    r = subprocess.run([sys.executable, str(helper), "end", "-", "-1"], capture_output=True, text=True,
                       timeout=60)
    s = helper_sections(r.stdout)
    assert set(s) == {"taint", "kmsg"}, (r.stdout[:300], r.stderr)
    assert s["taint"].text == Path("/proc/sys/kernel/tainted").read_text().strip()
    if s["kmsg"].status == "ok":      # root: the whole log, every record complete
        assert s["kmsg"].complete and r.returncode == 0
    else:                             # not root: the reason, and the exit status says so
        assert s["kmsg"].text and r.returncode == 3
    bad = subprocess.run([sys.executable, str(helper), "end", "../x", "-"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "unknown command or wrong arguments" in bad.stderr


class RecordingSource:
    """A host evidence source that records the calls it gets and what the guest held at each."""

    where = "a test double on the grader host"

    def __init__(self, name, vm, fail_prepare=None):
        self.name, self.vm, self.fail_prepare, self.calls = name, vm, fail_prepare, []

    def prepare(self, ex, run):
        self.calls.append(("prepare", self.vm.loaded_marker.exists()))
        if self.fail_prepare:
            from grader.engine.hostevidence import HostEvidenceUnavailable
            raise HostEvidenceUnavailable(self.fail_prepare)

    def arm(self, run):
        self.calls.append(("arm", self.vm.loaded_marker.exists()))

    def collect(self, run):
        from grader.engine.hostevidence import HostEvidence, Observation
        self.calls.append(("collect", self.vm.loaded_marker.exists()))
        return HostEvidence(self.name, self.where, "ok", "2 stops",
                            [Observation("copy1", {"dest": 0x1000, "bytes": MSG.encode()})], "raw log\n")


def offering_sources(vm, sources):
    vm.host_evidence = lambda name, lab, profile: (sources[name], "") if name in sources \
        else (None, f"no {name} here")
    return vm


def test_host_evidence_is_prepared_before_the_module_and_armed_around_the_programs(env):
    env.lab.host_evidence = ["witness", "absent"]
    src = RecordingSource("witness", env.vm)
    out = env.do(vm=offering_sources(env.vm, {"witness": src}))
    # prepared while no student module was loaded, armed and collected with it loaded
    assert src.calls == [("prepare", False), ("arm", True), ("collect", True)]
    he = out.result["host_evidence"]
    assert he["witness"]["status"] == "ok" and he["witness"]["where"] == src.where
    assert he["witness"]["observations"][0]["values"]["bytes"] == MSG.encode().hex()
    assert he["absent"] == {"source": "absent", "where": "outside the guest", "status": "unavailable",
                            "detail": "no absent here", "observations": []}
    assert (out.outdir / "host-witness.txt").read_text() == "raw log\n"
    assert out.result["artifacts"]["host-witness.txt"] == "host-witness.txt"
    assert out.result["score"] == 100


def test_a_required_host_source_that_cannot_run_fails_verify_not_the_student(env):
    env.lab.host_evidence = ["witness"]
    env.lab.host_evidence_required = ["witness"]
    src = RecordingSource("witness", env.vm, fail_prepare="QEMU has no gdbstub")
    out = env.do(vm=offering_sources(env.vm, {"witness": src}))
    verify = next(p for p in out.result["phases"] if p["name"] == "verify")
    assert verify["status"] == "failed" and "QEMU has no gdbstub" in verify["detail"]
    assert "required" in verify["detail"]
    assert not (env.fake / "loaded").exists() and src.calls == [("prepare", False)]


def test_lab_spec_host_evidence_must_name_required_sources_among_its_sources(tmp_path):
    from grader.engine.labspec import parse_lab
    from grader.errors import LabSpecError
    base = {"lab": {"id": "x"}, "submission": {"files": ["a.c"]}}
    spec = parse_lab(dict(base, evidence={"host": ["gdbstub"], "host_required": []}), tmp_path, kinds=set())
    assert spec.host_evidence == ["gdbstub"] and spec.host_evidence_required == []
    with pytest.raises(LabSpecError, match="host_required names sources missing from host: nic-trace"):
        parse_lab(dict(base, evidence={"host": ["gdbstub"], "host_required": ["nic-trace"]}), tmp_path,
                  kinds=set())


def test_a_qemu_lab_vm_names_the_host_sources_it_knows_when_asked_for_another():
    from grader.vm import hostsources
    source, why = hostsources.offer("no-such-source", None, None, None)
    assert source is None and "no host evidence source 'no-such-source'" in why


def test_make_check_records_a_required_host_source_it_cannot_have_and_goes_on(env):
    """`make check` (host_evidence_required=False): no hypervisor in the student's VM is no failure."""
    env.lab.host_evidence = ["nic-trace"]
    env.lab.host_evidence_required = ["nic-trace"]
    out = env.do(host_evidence_required=False)
    verify = next(p for p in out.result["phases"] if p["name"] == "verify")
    assert verify["status"] == "ok"
    assert out.result["host_evidence"]["nic-trace"]["status"] == "unavailable"


def test_a_lab_network_is_set_up_in_verify_and_the_receiver_started_inside_it(env):
    """Lab 2's shape of a run: the helper's net-up (with the run's copybreak) before student code,
    the receiver through net-run (its time limit inside), the copybreak the helper reported kept."""
    env.lab.net_setup = ["net-up", "{copybreak}"]
    env.lab.receiver_via = "net-run"
    env.lab.copybreak = 256
    out = env.do(copybreak=0)
    log = (env.fake / "helper.log").read_text().splitlines()
    assert log[0] == "net-up 0" and log.index("net-up 0") < log.index("begin run1")
    assert f"net-run -t 3 - ./receiver {PORT}" in log
    verify = next(p for p in out.result["phases"] if p["name"] == "verify")
    assert "network up (net-up 0, copybreak 0)" in verify["detail"]
    assert out.run.copybreak == 0 and out.result["score"] == 100


def test_a_network_that_does_not_come_up_is_the_graders_failure(env):
    env.lab.net_setup = ["net-down-not-a-command"]
    out = env.do()
    verify = next(p for p in out.result["phases"] if p["name"] == "verify")
    assert verify["status"] == "failed" and "the lab network could not be set up" in verify["detail"]
    assert not (env.fake / "loaded").exists()
