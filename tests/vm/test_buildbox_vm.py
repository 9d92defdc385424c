"""The build phase in the host sandbox (grader/buildbox.py) against the real build root of the golden
image: the module built there is the module built in the VM, it loads and gets full marks; hostile
builds end as build failures with their reason (the fault part `buildbox`, run here in one round)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from support.lab1_submissions import make_submission  # noqa: E402

from grader import buildbox  # noqa: E402
from grader.engine.labspec import load_lab  # noqa: E402
from grader.engine.run import grade  # noqa: E402

LAB = ROOT / "labs" / "lab1"


@pytest.fixture(scope="module")
def lab():
    return load_lab("lab1")


@pytest.fixture(scope="module")
def builder(golden):
    found, why = buildbox.for_golden(golden)
    assert found is not None, f"the image builder made no usable build root: {why}"
    return found


def section(ko: Path, name: str) -> bytes:
    out = ko.with_suffix(f".{name.strip('._')}.bin")
    subprocess.run(["objcopy", "-O", "binary", f"--only-section={name}", str(ko), str(out)], check=True)
    return out.read_bytes()


def module_facts(ko: Path) -> dict:
    """vermagic, the (symbol, CRC) pairs it imports and its undefined symbols: what decides whether
    the running kernel accepts the module."""
    modinfo = dict(f.split("=", 1) for f in section(ko, ".modinfo").decode().split("\0") if "=" in f)
    versions = section(ko, "__versions")
    imports = sorted((versions[i + 8:i + 64].split(b"\0")[0].decode(),
                      int.from_bytes(versions[i:i + 8], "little")) for i in range(0, len(versions), 64))
    undefined = sorted(ln.split()[-1] for ln in subprocess.run(["nm", "-u", str(ko)], capture_output=True,
                                                                text=True, check=True).stdout.splitlines())
    return {"vermagic": modinfo["vermagic"], "imports": imports, "undefined": undefined,
            "depends": modinfo.get("depends")}


def test_build_root_is_the_images_toolchain(golden, builder):
    m = json.loads((builder.root / "manifest.json").read_text())
    gm = json.loads((golden / "manifest.json").read_text())
    assert m["golden_key"] == gm["key"] and m["kernel_release"] == gm["kernel_release"]
    assert m["packages"][f"linux-headers-{gm['kernel_release']}"] and m["packages"]["gcc-12"]
    # nothing of the image's identity or accounts: only the toolchain's /etc files
    assert sorted(p.name for p in (builder.tree / "etc").iterdir()) == \
        ["alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d"]
    assert not (builder.tree / "home").exists() and not (builder.tree / "root").exists()


def test_module_built_in_the_sandbox_is_the_module_built_in_the_vm(lab, lab_vm, builder, tmp_path):
    sources = {n: LAB / "solution" / n for n in lab.files}
    sources.update({n: LAB / n for n in lab.build_files})
    out = builder.build(sources, ["sh", "-c", lab.build_command], lab.build_outputs, 120, tmp_path / "host")
    assert out.reason() is None, out.log
    assert re.search(r"CC \[M\]\s+/build/copytrace.o", out.log), out.log

    lab_vm.acquire()
    try:
        with lab_vm.executor() as ex:
            d = "/home/grader/runs/equivalence"
            assert ex.run(f"mkdir -p {d}", timeout=30).ok
            for name, path in sources.items():
                ex.put(path, f"{d}/{name}", mode=0o644)
            r = ex.run(f"cd {d} && {lab.build_command} 2>&1", timeout=lab.timeout("build"))
            assert r.ok, r.stdout + r.stderr
            ex.get(f"{d}/copytrace.ko", tmp_path / "vm.ko")
            vm_release = ex.run("uname -r", timeout=30).stdout.strip()
    finally:
        lab_vm.release(dirty=True)
    host, vm = module_facts(out.outputs["copytrace.ko"]), module_facts(tmp_path / "vm.ko")
    assert host == vm
    assert host["vermagic"].startswith(vm_release + " ") and host["imports"], host


def test_sandbox_built_solution_loads_and_gets_full_marks(lab, lab_vm, tmp_path):
    sub = make_submission("solution", tmp_path / "solution")
    result = grade(lab, lab_vm, sub, tmp_path / "out", build_place="sandbox").result
    phases = {p["name"]: p for p in result["phases"]}
    assert result["score"] == result["max_score"] == 100, phases
    assert result["environment"]["build_place"] == "sandbox"
    assert "sandbox (bubblewrap" in phases["build"]["detail"]
    assert "CC [M]" in (tmp_path / "out" / "build.log").read_text()


def test_operator_can_keep_the_build_in_the_vm(lab, lab_vm, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYLAB_BUILD", "vm")
    sub = make_submission("solution", tmp_path / "solution")
    result = grade(lab, lab_vm, sub, tmp_path / "out").result
    assert result["score"] == 100
    assert result["environment"]["build_place"] == "vm"
    assert "COPYLAB_BUILD=vm" in result["environment"]["build_place_reason"]


def test_host_path_include_is_a_compile_error_in_the_grading_run(lab, lab_vm, golden, tmp_path):
    sub = make_submission("solution", tmp_path / "sub")
    key = golden / "grader_ed25519"
    (sub / "copytrace.c").write_text(f'#include "{key}"\n' + (sub / "copytrace.c").read_text())
    result = grade(lab, lab_vm, sub, tmp_path / "out").result
    build = {p["name"]: p for p in result["phases"]}["build"]
    assert build["status"] == "failed" and "No such file or directory" in build["detail"], build
    assert result["score"] == 0
    assert "PRIVATE KEY" not in (tmp_path / "out" / "build.log").read_text()


def test_buildbox_fault_part_one_round(golden):
    from faults import buildbox as part

    r = part.measure(golden, rounds=1)
    off = [f for f in r["figures"] if f["met"] is not True]
    assert not off, json.dumps([off, r["cases"]], indent=1)
    assert len(r["figures"]) == len(part.cases(None, 1)) + 2
