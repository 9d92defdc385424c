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


def link(name, mac, flags, addrs=(), rx=0, tx=0):
    return {"ifname": name, "address": mac, "flags": list(flags),
            "addr_info": [{"family": "inet", "local": a.split("/")[0], "prefixlen": int(a.split("/")[1])}
                          for a in addrs],
            "stats64": {"rx": {"packets": rx}, "tx": {"packets": tx}}}


@pytest.fixture
def fake_ip(tmp_path):
    """An `ip` on PATH that answers `netns list` and `-j -s addr show` from JSON files per namespace."""
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
elif a[:4] == ["-j", "-s", "addr", "show"]:
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
