"""The VM-side helper's lab 2 network commands on this host: argument checks for real, and the card
discovery and readiness over a stand-in `ip` that answers what iproute2 6.1 prints in a lab VM (this
host has no e1000e cards; tests/vm/test_lab2.py runs the commands in a real lab VM)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HELPER = Path(__file__).resolve().parents[2] / "grader" / "vmside" / "copylab-helper"


def helper(*args, env=None):
    return subprocess.run([sys.executable, str(HELPER), *args], capture_output=True, text=True, timeout=60,
                          env=env)


def link(name, mac, flags, addrs=(), rx=0, tx=0, dev=None):
    return {"ifname": name, "address": mac, "flags": list(flags),
            **({"parentbus": "pci", "parentdev": dev} if dev else {}),
            "addr_info": [{"family": "inet", "local": a.split("/")[0], "prefixlen": int(a.split("/")[1])}
                          for a in addrs],
            "stats64": {"rx": {"packets": rx}, "tx": {"packets": tx}}}


@pytest.fixture
def fake_ip(tmp_path):
    """An `ip` on PATH that answers `netns list` and `-j -s -d addr show` from JSON files per namespace."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    (bin_dir / "ip").write_text(f"""#!{sys.executable}
import sys, pathlib
a = sys.argv[1:]
st = pathlib.Path({str(state)!r})
ns = ""
if a[:1] == ["-n"]:
    ns, a = a[1], a[2:]
if a == ["netns", "list"]:
    print("copylab-rx (id: 0)" if (st / "copylab-rx.json").exists() else "")
elif a[:5] == ["-j", "-s", "-d", "addr", "show"]:
    print((st / ((ns or "root") + ".json")).read_text())
else:
    sys.exit(2)
""")
    (bin_dir / "ip").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")

    def set_links(root, rx=None):
        (state / "root.json").write_text(json.dumps(root))
        if rx is None:
            (state / "copylab-rx.json").unlink(missing_ok=True)
        else:
            (state / "copylab-rx.json").write_text(json.dumps(rx))
    return env, set_links


def test_net_status_finds_the_cards_by_mac_in_either_namespace(fake_ip):
    env, set_links = fake_ip
    up = ("BROADCAST", "MULTICAST", "UP", "LOWER_UP")
    set_links([link("lo", "00:00:00:00:00:00", ("LOOPBACK", "UP")),
               link("eth1", "52:54:00:00:0a:01", up, ["169.254.10.1/24"], tx=3)],
              [link("eth2", "52:54:00:00:0b:01", up, ["169.254.10.2/24"], rx=3)])
    st = json.loads(helper("net-status", env=env).stdout)
    assert st["ready"] is True and st["namespace_exists"] is True
    sender, receiver = st["nics"]
    assert (sender["name"], sender["namespace"], sender["tx_packets"]) == ("eth1", "", 3)
    assert (receiver["name"], receiver["namespace"], receiver["rx_packets"]) == ("eth2", "copylab-rx", 3)


def test_net_status_is_not_ready_before_net_up(fake_ip):
    env, set_links = fake_ip
    set_links([link("eth1", "52:54:00:00:0a:01", ("BROADCAST",)),
               link("eth2", "52:54:00:00:0b:01", ("BROADCAST",))])
    st = json.loads(helper("net-status", env=env).stdout)
    assert st["ready"] is False and st["namespace_exists"] is False
    assert all(n["present"] and not n["up"] and n["addresses"] == [] for n in st["nics"])
    set_links([link("eth0", "52:54:00:12:34:56", ("UP", "LOWER_UP"))])
    st = json.loads(helper("net-status", env=env).stdout)
    assert [n["present"] for n in st["nics"]] == [False, False]


def test_net_up_names_the_missing_cards(fake_ip):
    env, set_links = fake_ip
    set_links([link("eth0", "52:54:00:12:34:56", ("UP", "LOWER_UP"))], [])
    r = helper("net-up", env=env)
    assert r.returncode == 3
    assert "no network card with MAC sender (52:54:00:00:0a:01), receiver (52:54:00:00:0b:01)" in r.stderr


@pytest.mark.parametrize("args, why", [
    (["net-up", "256x"], "COPYBREAK must be a number of bytes"),
    (["net-up", "1", "2"], "unknown command or wrong arguments"),
    (["net-run", "root", "/home/grader/runs/x/receiver"], "may run programs only as"),
    (["net-run", "-", "/tmp/receiver", "169.254.10.2", "5000"], "only lab programs under /home/<user>/"),
    (["kallsyms", "page_offset_base;reboot"], "not a kernel symbol name"),
])
def test_the_network_commands_refuse_bad_arguments(args, why, tmp_path):
    env = dict(os.environ, SUDO_USER="student")
    r = helper(*args, env=env)
    assert r.returncode != 0 and why in r.stderr, r.stderr


def test_net_run_lets_the_grader_choose_only_the_program_account():
    env = dict(os.environ, SUDO_USER="grader")
    r = helper("net-run", "student", "/home/grader/runs/x/receiver", env=env)
    assert r.returncode == 2 and "grader may run programs only as copylab-run or grader" in r.stderr


def test_net_run_time_limit_is_whole_seconds():
    env = dict(os.environ, SUDO_USER="grader")
    r = helper("net-run", "-t", "5s", "copylab-run", "/home/grader/runs/x/receiver", env=env)
    assert r.returncode == 2 and "-t takes whole seconds" in r.stderr


def test_unload_knows_both_labs_modules_and_nothing_else():
    r = helper("unload", "e1000e")
    assert r.returncode == 2 and "only ['copytrace', 'wiretrace'] can be unloaded" in r.stderr


def load_helper():
    """The helper as a module (it is a script without .py): its functions under a stand-in sysfs."""
    from importlib.machinery import SourceFileLoader
    from importlib.util import module_from_spec, spec_from_loader

    spec = spec_from_loader("copylab_helper", SourceFileLoader("copylab_helper", str(HELPER)))
    mod = module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def helper_with_cards(fake_ip, tmp_path, monkeypatch):
    """The helper module over the stand-in `ip` and a stand-in /sys/bus whose two PCI functions, the
    lab's cards, are bound to the driver a test names."""
    env, set_links = fake_ip
    monkeypatch.setenv("PATH", env["PATH"])  # the stand-in ip refuses every command that would change a link
    bus = tmp_path / "sysbus"

    def cards(driver: str, flags=("BROADCAST",)):
        devs = ("0000:00:1c.0", "0000:00:1d.0")
        (bus / "pci" / "drivers" / driver).mkdir(parents=True)
        for dev in devs:
            (bus / "pci" / "devices" / dev).mkdir(parents=True)
            (bus / "pci" / "devices" / dev / "driver").symlink_to(bus / "pci" / "drivers" / driver)
        set_links([link(name, mac, flags, dev=dev)
                   for name, mac, dev in zip(("eth1", "eth2"), ("52:54:00:00:0a:01", "52:54:00:00:0b:01"), devs)])
        h = load_helper()
        monkeypatch.setattr(h, "SYS_BUS", str(bus))
        return h
    return cards


def test_net_status_names_each_cards_driver_from_its_parent_device(helper_with_cards):
    h = helper_with_cards("e1000e", ("UP",))
    assert [n["driver"] for n in h.net_status()["nics"]] == ["e1000e", "e1000e"]
    # no parent device named, or a name that is no sysfs entry: no driver, nothing read outside the bus
    assert h.card_driver(link("eth1", "52:54:00:00:0a:01", ())) is None
    assert h.card_driver(link("eth1", "52:54:00:00:0a:01", (), dev="../../../etc")) is None


def test_net_up_refuses_cards_of_another_driver_before_touching_anything(helper_with_cards):
    """VirtualBox's 82545EM cards (driver e1000) have the lab's MACs but not its driver."""
    h = helper_with_cards("e1000")
    with pytest.raises(h.Refused) as e:
        h.net_up(256)
    assert e.value.code == 3
    assert ("lab 2 needs Intel 82574L cards driven by e1000e, but eth1 (52:54:00:00:0a:01) is driven by e1000 "
            "and eth2 (52:54:00:00:0b:01) is driven by e1000") in str(e.value)
    assert "VirtualBox has no 82574L" in str(e.value)
