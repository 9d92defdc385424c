"""The hypervisor witness (host evidence source "gdbstub"): gdb's output parsed into observations,
the check kinds that rest on it (with gdb output as the script prints it), their fallback to the
guest trace, the kernel profile's [witness] plan and the VM helper's kallsyms command."""
from __future__ import annotations

import os
import subprocess
import types

import pytest
import sys
from pathlib import Path

from support.engine_runs import KADDR, MSG, RBUF, SBUF, good_run, trace_text

from grader.engine.checkrun import REGISTRY, run_checks
from grader.engine.hostevidence import unavailable
from grader.engine.labspec import load_lab
from grader.engine.profile import load_profile
from grader.vm.gdbwitness import evidence_from, parse_addresses, parse_output

REPO = Path(__file__).resolve().parents[2]
LAB = load_lab("lab1")
HEX = MSG.encode().hex()


def gdb_output(c1_src=SBUF, c1_dest=KADDR, c4_src=KADDR, c4_dest=RBUF, c1_bytes=HEX, c4_bytes=HEX,
               dest_bytes=HEX, end="reason=stopped stops=3 other=1", extra=()) -> str:
    """What gdb prints around the script's lines in a run window (its own chatter included)."""
    return "\n".join([
        'The target architecture is set to "i386:x86-64".',
        "0xffffffff81e7d9fb in ?? ()",
        "WITNESS attached",
        "WITNESS armed copy1=0xffffffff82059970 rxmsg=0xffffffff820a7d70 copy4=0xffffffff820a7c50",
        "WITNESS other copy1 len=52",
        f"WITNESS copy1 src=0x{c1_src:x} dest=0x{c1_dest:x} len=16 bytes={c1_bytes}",
        *extra,
        f"WITNESS copy4 src=0x{c4_src:x} dest=0x{c4_dest:x} len=16 bytes={c4_bytes} dest_bytes={dest_bytes}",
        "Program received signal SIGINT, Interrupt.",
        f"WITNESS end {end}", ""])


def witnessed(text: str = None, **over):
    run = good_run(**over)
    run.host_evidence["gdbstub"] = evidence_from(text if text is not None else gdb_output(), 16)
    return run


def check(name, run):
    return {r.name: r for r in run_checks(LAB.checks, run)}[name]


def texts(r):
    return "\n".join(f"{e.mark}: {e.text}" for e in r.evidence)


def test_output_is_parsed_into_typed_observations_and_the_window_facts():
    obs, facts = parse_output(gdb_output())
    assert facts["attached"] and facts["armed"] and facts["end"] == "stopped" and facts["stops"] == 3
    c1 = next(o for o in obs if o.kind == "copy1")
    assert c1.values == {"src": SBUF, "dest": KADDR, "len": 16, "bytes": MSG.encode()}
    c4 = next(o for o in obs if o.kind == "copy4")
    assert c4.num("src") == KADDR and c4.num("dest") == RBUF and c4.values["dest_bytes"] == MSG.encode()
    assert [o.values for o in obs if o.kind == "other"] == [{"point": "copy1", "len": 52}]
    e = evidence_from(gdb_output(), 16)
    assert e.ok and e.source == "gdbstub" and "outside the guest" in e.where
    assert e.text.startswith("The target") and e.artifact_name == "host-gdbstub.txt"
    assert e.as_dict()["observations"][1]["values"]["bytes"] == HEX


def test_unreadable_values_and_foreign_lines_are_not_invented():
    text = gdb_output(extra=["WITNESS copy1 src=- dest=0xffff888000000000 len=16 bytes=-",
                             "copytrace: WITNESS copy1 src=0x1 dest=0x2 len=16 bytes=00"])
    obs, _ = parse_output(text)
    c1s = [o for o in obs if o.kind == "copy1"]
    assert len(c1s) == 2 and c1s[1].values["src"] is None and c1s[1].values["bytes"] is None


def test_a_window_without_the_datagram_is_ok_and_says_none_was_seen():
    text = "WITNESS attached\nWITNESS armed copy1=0x1\nWITNESS end reason=stopped stops=0 other=0\n"
    e = evidence_from(text, 16)
    assert e.ok and not e.observations and "none of this run's length seen" in e.detail


def test_a_qemu_that_ended_mid_window_fails_the_evidence_and_keeps_what_was_seen():
    e = evidence_from(gdb_output(end="reason=lost stops=1 other=0 detail=Remote connection closed"), 16)
    assert e.status == "failed" and "Remote connection closed" in e.detail and e.of("copy1")
    e = evidence_from("WITNESS end reason=unattached stops=0 other=0 detail=Connection refused\n", 16)
    assert e.status == "unavailable" and "Connection refused" in e.detail
    assert evidence_from("", 16, "gdb did not end within 20s and was killed").status == "unavailable"


def test_solution_records_agree_with_the_witness_and_the_message_was_there():
    run = witnessed()
    # the lab's checks (the answers file's questions are scored apart)
    res = {r.name: r for r in run_checks([c for c in LAB.checks if c.part == "lab"], run)}
    assert all(r.passed for r in res.values()), {n: texts(r) for n, r in res.items() if not r.passed}
    assert sum(r.points for r in res.values()) == 100
    agree = res["agrees_with_witness"]
    assert "QEMU's gdbstub" in agree.evidence[0].text
    assert any(e.mark == "good" and "COPY4 dest" in e.text and "hypervisor" in e.text for e in agree.evidence)
    there = texts(res["message_witnessed"])
    assert f'"{MSG}" at the skb' in there and "hypervisor read the message" in there


def test_a_forged_guest_trace_agrees_with_invented_records_but_not_with_the_witness():
    fake_k, fake_u = 0xFFFF888012345678, 0x7FFD00001000
    from support.engine_runs import kmsg_text
    forged = dict(kmsg_text=kmsg_text(
        copy1=f"copytrace: [COPY1] src={SBUF:016x} dest={fake_k:016x} len=16",
        copy4=f"copytrace: [COPY4] src={fake_k:016x} dest={RBUF:016x} len=16"),
        trace_text=trace_text(to=fake_k, data=fake_k))
    run = witnessed(**forged)
    assert check("agrees_with_trace", run).passed      # the guest's trace was rewritten to agree
    agree = check("agrees_with_witness", run)
    assert not agree.passed and "disagrees with the hypervisor" in agree.evidence[0].text
    assert "COPY1 dest" in agree.evidence[0].text and "COPY4 src" in agree.evidence[0].text
    there = check("message_witnessed", run)
    assert not there.passed and f"0x{fake_k:x}" in texts(there)


def test_a_message_that_was_never_at_the_kernel_address_fails():
    other = b"ANOTHER_MESSAGE_".hex()
    run = witnessed(gdb_output(c4_bytes=other, dest_bytes=other, c1_bytes=other))
    r = check("message_witnessed", run)
    assert not r.passed and "not this run's message" in texts(r)


def test_no_send_seen_by_the_witness_is_missing_evidence_not_a_crash():
    run = witnessed("WITNESS attached\nWITNESS armed copy1=0x1\nWITNESS end reason=stopped stops=0 other=0\n")
    r = check("agrees_with_witness", run)
    assert not r.passed and "saw 0 copy1 stops" in texts(r)
    assert not check("message_witnessed", run).passed


def test_without_the_witness_both_checks_judge_by_the_guest_trace_and_say_so():
    run = good_run()
    run.host_evidence["gdbstub"] = unavailable("gdbstub", "this VM offers no view from outside the guest")
    for name in ("agrees_with_witness", "message_witnessed"):
        r = check(name, run)
        assert r.passed, texts(r)
        assert "no hypervisor witness" in r.evidence[0].text and "offers no view" in r.evidence[0].text
        assert "guest's own trace" in r.evidence[0].text
    run = good_run(trace_text=trace_text(msg="XXXXXXXXXXXXXXXX"))
    assert not REGISTRY["message_witnessed"](run, {})[0]


def test_profiles_define_the_witness_points_from_their_symbols_and_offsets():
    for release, regs in (("6.1.0-50-amd64", ("rdi", "rsi", "rcx", "rsp")), ("6.1.0-50-arm64", ("x0", "x1", "x3", "sp"))):
        prof = load_profile(release)
        plan = prof.witness_plan()
        c1 = plan["points"]["copy1"]
        assert (c1["symbol"], c1["msghdr"], c1["dest"], c1["len"], plan["stack_register"]) == \
            (prof.symbols["send_caller"], *regs)
        assert plan["points"]["copy4"]["symbol"] == prof.symbols["consume"]
        assert plan["offsets"]["skb_data"] == prof.offsets["sk_buff_data"]
        assert plan["offsets"]["msghdr_iov"] == prof.offsets["msghdr_msg_iter"] + prof.offsets["iov_iter_iov"]


def test_helper_kallsyms_names_addresses_and_refuses_what_it_lacks():
    """The VM helper's read-only command on this host (root reads real addresses)."""
    helper = REPO / "grader" / "vmside" / "copylab-helper"
    names = ["ip_generic_getfrag", "udp_recvmsg"]
    r = subprocess.run([sys.executable, str(helper), "kallsyms", *names], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    found = parse_addresses(r.stdout, names)
    assert set(found) == set(names) and all(a >= 0xffff800000000000 for a in found.values())
    r = subprocess.run([sys.executable, str(helper), "kallsyms", "no_such_symbol_x"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 3 and "no symbol no_such_symbol_x" in r.stderr
    r = subprocess.run([sys.executable, str(helper), "kallsyms", "a;rm"], capture_output=True, text=True)
    assert r.returncode == 2 and "not a kernel symbol name" in r.stderr


# --- the gdbstub socket and gdb against a real QEMU (no guest OS: a q35 machine in its firmware) ---

def test_lab_vms_get_a_gdbstub_on_a_socket_the_runner_bound(tmp_path):
    import socket

    from grader.vm.qemu import ImageSpec, QemuFiles, QemuVM

    for name in ("k", "i"):
        (tmp_path / name).write_bytes(b"\0" * 64)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "lab.qcow2"), "16M"], check=True)
    image = ImageSpec(disk=tmp_path / "lab.qcow2", kernel=tmp_path / "k", initrd=tmp_path / "i", cmdline="quiet")
    vm = QemuVM(image=image, workdir=tmp_path, gdbstub=True)
    vm._chain = []
    with QemuFiles() as files:
        cmd = vm._qemu_command(2222, None, files)
        gdb = cmd[cmd.index("-gdb") + 1]
        chardev = next(a for a in cmd if a.startswith("socket,id=gdb0,"))
        fd = int(chardev.rsplit("fd=", 1)[1])
        s = socket.socket(fileno=os.dup(fd))
        try:
            assert s.getsockname() == ("127.0.0.1", vm.gdb_port)   # loopback only, the port it reports
        finally:
            s.close()
    assert gdb == "chardev:gdb0" and cmd.count("-gdb") == 1   # no "tcp::PORT" QEMU would bind itself
    plain = QemuVM(image=image, workdir=tmp_path, _chain=[])
    with QemuFiles() as files:
        assert "-gdb" not in plain._qemu_command(2222, None, files)


def real_qemu_with_gdbstub():
    """QEMU sandboxed as its account (qemu.SANDBOX, qemu_account()), gdbstub on a socket bound here."""
    from grader.vm.qemu import SANDBOX, QemuFiles, qemu_account, read_confinement, spawn_qemu

    files = QemuFiles()
    fd, port = files.tcp_listening_socket()
    cmd = ["qemu-system-x86_64", "-machine", "q35", "-nodefaults", "-display", "none", "-sandbox", SANDBOX,
           "-chardev", f"socket,id=gdb0,server=on,wait=off,fd={fd}", "-gdb", "chardev:gdb0"]
    proc = spawn_qemu(cmd, files, qemu_account(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    qemu = types.SimpleNamespace(gdb_port=port, running=lambda: proc.poll() is None, accel=None,
                                 monitor=lambda command, timeout=5: "VM status: running")
    return proc, qemu, read_confinement


def test_gdb_attaches_to_the_sandboxed_qemu_and_ends_its_window_on_the_graders_word():
    from grader.vm.gdbwitness import GdbWitness

    proc, qemu, read_confinement = real_qemu_with_gdbstub()
    try:
        w = GdbWitness(qemu, load_profile("6.1.0-50-amd64").witness_plan(), "gdb")
        # kernel addresses the firmware never reaches: no stop, the window still opens and closes
        w.addresses = {"copy1": 0xffffffff81000000, "rxmsg": 0xffffffff81000010, "copy4": 0xffffffff81000020}
        run = types.SimpleNamespace(payload_len=16)
        for _ in range(2):   # the stub takes the next run's gdb after a detach
            w.arm(run)
            e = w.collect(run)
            assert e.ok, e.detail + e.text
            assert "WITNESS armed copy1=0xffffffff81000000" in e.text and "reason=stopped" in e.text
            assert "none of this run's length seen" in e.detail
        assert proc.poll() is None     # detached: QEMU runs on
        # the KVM code path: hardware breakpoints (QEMU's TCG stub takes them too; KVM is not here)
        qemu.accel = types.SimpleNamespace(accel="kvm")
        assert w.script_config(run, 0)["hardware"] is True
        w.arm(run)
        assert w.collect(run).ok
        qemu.accel = None
        c = read_confinement(proc.pid)
        assert c["seccomp"] == 2 and (os.geteuid() != 0 or c["uid"] != 0)
        # QEMU ends while the window is open (a panic with -no-reboot): collect returns at once
        w.arm(run)
        proc.kill()
        proc.wait(10)
        e = w.collect(run)
        assert e.status == "failed" and "lost the VM" in e.detail
    finally:
        proc.kill()
        proc.wait(10)
        proc.stderr.close()


class FakeExecutor:
    """Answers `copylab-helper kallsyms` as the VM's helper does."""

    def __init__(self, stdout: str, exit_code: int = 0, stderr: str = ""):
        self.calls: list[str] = []
        self.result = types.SimpleNamespace(stdout=stdout, stderr=stderr, exit_code=exit_code)

    def run(self, cmd, timeout):
        self.calls.append(cmd)
        return self.result


def test_prepare_reads_the_addresses_once_per_snapshot_and_names_what_it_lacks():
    from grader.engine.hostevidence import HostEvidenceUnavailable
    from grader.vm.gdbwitness import GdbWitness

    plan = load_profile("6.1.0-50-amd64").witness_plan()
    qemu = types.SimpleNamespace(gdb_port=1234, running=lambda: True)
    ex = FakeExecutor("ip_generic_getfrag 0xffffffff82059970\nskb_consume_udp 0xffffffff820a7c50\n"
                      "udp_recvmsg 0xffffffff820a7d70\n")
    facts: dict = {}
    first = GdbWitness(qemu, plan, "gdb", facts)
    first.prepare(ex, None)
    assert first.addresses == {"copy1": 0xffffffff82059970, "rxmsg": 0xffffffff820a7d70,
                               "copy4": 0xffffffff820a7c50}
    assert ex.calls == ["sudo -n /usr/local/libexec/copylab/copylab-helper kallsyms "
                        "ip_generic_getfrag skb_consume_udp udp_recvmsg"]
    assert "this run's verify phase" in first.addresses_from
    second = GdbWitness(qemu, plan, "gdb", facts)       # the next run, restored from the same snapshot
    second.prepare(ex, None)
    assert len(ex.calls) == 1 and second.addresses == first.addresses
    assert "earlier run's verify phase" in second.addresses_from
    broken = FakeExecutor("udp_recvmsg 0xffffffff820a7d70\n", 3, "copylab-helper: no text symbol ...")
    with pytest.raises(HostEvidenceUnavailable, match="ip_generic_getfrag, skb_consume_udp could not be read"):
        GdbWitness(qemu, plan, "gdb", {}).prepare(broken, None)
    gone = types.SimpleNamespace(gdb_port=None, running=lambda: True)
    with pytest.raises(HostEvidenceUnavailable, match="without|gdbstub"):
        GdbWitness(gone, plan, "gdb", {}).prepare(ex, None)


def test_the_source_is_offered_only_to_a_qemu_vm_with_its_gdbstub():
    from grader.vm import hostsources

    prof = load_profile("6.1.0-50-amd64")
    source, why = hostsources.offer("gdbstub", types.SimpleNamespace(vm=types.SimpleNamespace(gdbstub=False)),
                                    LAB, prof)
    assert source is None and "without QEMU's gdbstub" in why
    lab_vm = types.SimpleNamespace(vm=types.SimpleNamespace(gdbstub=True), snapshot_facts={})
    source, why = hostsources.offer("gdbstub", lab_vm, LAB, prof)
    assert source is not None and source.name == "gdbstub" and source.snapshot_facts is lab_vm.snapshot_facts
    no_witness = load_profile("6.1.0-50-amd64")
    no_witness.raw = {k: v for k, v in no_witness.raw.items() if k != "witness"}
    source, why = hostsources.offer("gdbstub", lab_vm, LAB, no_witness)
    assert source is None and "defines no witness points" in why


def test_the_same_call_stopped_twice_is_one_copy():
    again = f"WITNESS copy1 src=0x{SBUF:x} dest=0x{KADDR:x} len=16 bytes={HEX}"
    e = evidence_from(gdb_output(extra=[again]), 16)
    assert len(e.of("copy1")) == 1 and "1 repeated stops of the same call counted once" in e.detail
    assert check("agrees_with_witness", witnessed(gdb_output(extra=[again]))).passed
