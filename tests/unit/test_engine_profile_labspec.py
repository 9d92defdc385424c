import pytest

from grader.engine.labspec import load_lab, parse_lab
from grader.engine.profile import load_profile
from grader.errors import LabSpecError


def test_profile_events_derived_from_offsets():
    p = load_profile("6.1.0-50-amd64")
    assert p.release == "6.1.0-50-amd64" and p.arch == "x86_64"
    assert (p.copy_from, p.copy_to) == ("_copy_from_iter", "_copy_to_iter")
    ev = p.kprobe_events()
    assert ev["copylab_tx"] == ("p:copylab/copylab_tx ip_generic_getfrag to=%si:x64 len=%cx:u32 "
                                "ubase=+0(+40(%di)):x64 uoff=+24(%di):x64 comm=$comm")
    assert ev["copylab_rxmsg"] == ("p:copylab/copylab_rxmsg udp_recvmsg ubase=+0(+40(%si)):x64 "
                                   "uoff=+24(%si):x64 comm=$comm")
    assert ev["copylab_rx"] == ("p:copylab/copylab_rx skb_consume_udp data=+208(%si):x64 "
                                "len=%dx:s32 w0=+0(+208(%si)):x64 w1=+8(+208(%si)):x64 comm=$comm")
    assert p.is_kernel_address(0xFF49648BC2A4DA2C) and p.is_kernel_address(0xFFFF888003A1B02C)
    assert not p.is_kernel_address(0x559C785BA060) and p.is_user_address(0x7FFC12345678)


def test_lab1_spec():
    lab = load_lab("lab1")
    assert lab.files == ["sender.c", "receiver.c", "copytrace.c"]
    assert lab.max_score == 100 and lab.kernel == "6.1.0-50-amd64"
    assert lab.build_files == ["Makefile", "Kbuild"]
    assert lab.timeout("build") > lab.timeout("run") > 0
    names = {c.name for c in lab.checks}
    assert {"build_ok", "copy1_kernel_side", "agrees_with_trace", "no_kernel_fault"} <= names
    # milestone 1 earns partial credit
    ms1 = {"build_ok", "module_loads", "module_unloads", "programs_report",
           "copy1_kernel_side", "copy4_kernel_side", "no_kernel_fault"}
    assert 0 < sum(c.points for c in lab.checks if c.name in ms1) < 100


BASE = {"lab": {"id": "x"}, "submission": {"files": ["a.c"]}}


def spec(checks, **extra):
    return {**BASE, "checks": checks, **extra}


def test_unknown_kind():
    with pytest.raises(LabSpecError, match="unknown kind 'nope'"):
        parse_lab(spec([{"name": "a", "kind": "nope", "points": 1}]), ".")


def test_unknown_dependency():
    with pytest.raises(LabSpecError, match="depends on unknown check 'ghost'"):
        parse_lab(spec([{"name": "a", "kind": "build_ok", "points": 1, "depends": ["ghost"]}]), ".")


def test_dependency_cycle():
    with pytest.raises(LabSpecError, match="cycle: a -> b -> a"):
        parse_lab(spec([{"name": "a", "kind": "build_ok", "points": 1, "depends": ["b"]},
                        {"name": "b", "kind": "build_ok", "points": 1, "depends": ["a"]}]), ".")


def test_points_total_and_duplicates_and_timeouts():
    with pytest.raises(LabSpecError, match="add up to 1"):
        parse_lab(spec([{"name": "a", "kind": "build_ok", "points": 1}], grading={"total": 100}), ".")
    with pytest.raises(LabSpecError, match="duplicate"):
        parse_lab(spec([{"name": "a", "kind": "build_ok", "points": 1}] * 2), ".")
    with pytest.raises(LabSpecError, match="unknown phase"):
        parse_lab(spec([], timeouts={"bild": 3}), ".")
    lab = parse_lab(spec([{"name": "a", "kind": "copy_kernel_side", "points": 2, "copy": "COPY4",
                           "hint": "h"}]), ".")
    assert lab.checks[0].options == {"copy": "COPY4"} and lab.checks[0].hint == "h"


def test_run_kernels_is_a_list_of_releases_or_a_table_by_architecture():
    listed = parse_lab(spec([], run={"kernel": "6.1.0-50-amd64", "kernels": ["6.12.117+deb13-amd64"]}), ".")
    assert listed.supported_kernels() == ["6.1.0-50-amd64", "6.12.117+deb13-amd64"]
    by_arch = parse_lab(spec([], run={"kernel": "6.1.0-50-amd64", "kernels": {"aarch64": "6.1.0-50-arm64"}}), ".")
    assert by_arch.supported_kernels() == ["6.1.0-50-amd64", "6.1.0-50-arm64"]
    with pytest.raises(LabSpecError, match="'../etc' is not a kernel release"):
        parse_lab(spec([], run={"kernel": "6.1.0-50-amd64", "kernels": ["../etc"]}), ".")


def test_lab2_spec_asks_for_its_vm_shape_network_and_the_cards_trace(tmp_path):
    import pytest

    from grader.engine.labspec import load_lab, parse_lab
    from grader.engine.profile import load_profile
    from grader.errors import LabSpecError

    lab = load_lab("lab2")
    assert (lab.vm_shape, lab.receiver_via, lab.receiver_addr, lab.copybreak) == \
        ("e1000e-pair", "net-run", "169.254.10.2", 256)
    assert lab.net_setup == ["net-up", "{copybreak}"]
    assert lab.host_evidence == lab.host_evidence_required == ["nic-trace"]
    assert lab.max_score == 100
    events = load_profile(lab.kernel).kprobe_events(lab.id)
    assert "e1000e:e1000_xmit_frame data=+208(%di):x64 len=+112(%di):u32" in events["copylab_nic_tx"]
    assert "e1000e:e1000_receive_skb data=+208(%dx):x64" in events["copylab_nic_rx"]
    assert "copylab_nic_tx" not in load_profile(lab.kernel).kprobe_events("lab1")
    base = {"lab": {"id": "x"}, "submission": {"files": ["a.c"]}}
    with pytest.raises(LabSpecError, match=r"\[vm\] nics must be one of"):
        parse_lab(dict(base, vm={"nics": "token-ring"}), tmp_path, kinds=set())
    with pytest.raises(LabSpecError, match="receiver_via must be one of"):
        parse_lab(dict(base, network={"receiver_via": "ssh"}), tmp_path, kinds=set())
    with pytest.raises(LabSpecError, match="receiver_addr must be an IPv4 address"):
        parse_lab(dict(base, network={"receiver_addr": "169.254.10.2; reboot"}), tmp_path, kinds=set())
