"""Provisioning: the cold image build (base + golden into an empty cache) and a re-run of the playbook
on a provisioned VM (a VM booted from the golden image), which must report changed=0."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILDER = REPO / "provision" / "image" / "build_image.py"


def _builder():
    spec = importlib.util.spec_from_file_location("copylab_build_image", BUILDER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cold_build(progress=print) -> dict:
    """Build base and golden into a fresh, empty cache folder (deleted afterwards)."""
    parent = Path(os.environ.get("COPYLAB_CACHE", Path.home() / ".cache" / "copylab"))
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-cold-", dir=parent) as cache:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, str(BUILDER), "--stage", "golden"], cwd=REPO,
                                env=dict(os.environ, COPYLAB_CACHE=cache), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        tail = []
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            if "ready" in line or "cached" in line:
                progress("cold build: " + line.strip())
        if proc.wait() != 0:
            raise RuntimeError("the cold image build failed:\n" + "".join(tail))
        wall = time.monotonic() - t0
        golden = next(p for p in Path(cache, "images").glob("golden-*") if (p / "manifest.json").is_file())
        base = next(p for p in Path(cache, "images").glob("base-*") if (p / "manifest.json").is_file())
        gm = json.loads((golden / "manifest.json").read_text())
        bm = json.loads((base / "manifest.json").read_text())
    return {"measured": True, "wall_s": round(wall), "base_s": bm["seconds"], "golden_s": gm["seconds"],
            "second_run_recap": gm.get("second_run_recap"), "accel": gm.get("accel_used")}


def cached_build_figures() -> dict:
    """What the image in the cache recorded when it was built (used with --skip-cold)."""
    from grader.vm.labvm import find_golden

    golden = find_golden()
    gm = json.loads((golden / "manifest.json").read_text())
    bm = json.loads((Path(gm["base"]) / "manifest.json").read_text())
    return {"measured": False, "source": f"manifests of the cached images (built {bm['built_at']} and "
            f"{gm['built_at']})", "wall_s": bm["seconds"]["total"] + gm["seconds"]["total"],
            "base_s": bm["seconds"], "golden_s": gm["seconds"], "second_run_recap": gm.get("second_run_recap"),
            "accel": gm.get("accel_used")}


def rerun(progress=print) -> dict:
    """Boot a VM from the golden image (QEMU user-mode network) and run site.yml against it again."""
    from grader.vm.labvm import find_golden
    from grader.vm.qemu import ImageSpec, QemuVM

    bi = _builder()
    golden = find_golden()
    gm = json.loads((golden / "manifest.json").read_text())
    image = ImageSpec(disk=golden / gm["disk"], kernel=Path(gm["kernel_path"]), initrd=Path(gm["initrd_path"]),
                      cmdline=gm["cmdline"], arch=gm.get("qemu_arch", "x86_64"))
    with tempfile.TemporaryDirectory(prefix="copylab-rerun-") as tmp:
        vm = QemuVM(image=image, workdir=Path(tmp), name="rerun", restrict_network=False)
        try:
            vm.start()
            progress("provisioning re-run: VM up, running site.yml")
            t0 = time.monotonic()
            out = bi.run_playbook(vm, Path(gm["admin_key_path"]), golden / (gm["grader_key"] + ".pub"),
                                  gm["kernel_release"], Path(tmp) / "rerun.log")
            seconds = time.monotonic() - t0
        finally:
            vm.destroy()
    recap = bi.parse_recap(out)
    return {"seconds": round(seconds, 1), "recap": recap, "accel": vm.accel.accel if vm.accel else None}
