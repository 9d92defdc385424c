"""The QEMU monitor socket must fit a UNIX socket path (108 bytes), however deep the cache folder."""
from pathlib import Path

from grader.vm.qemu import ImageSpec, QemuVM


def vm_in(workdir: Path) -> QemuVM:
    img = ImageSpec(disk=Path("d.qcow2"), kernel=Path("k"), initrd=Path("i"), cmdline="")
    return QemuVM(image=img, workdir=workdir, name="golden")


def test_short_workdir_keeps_the_socket_next_to_the_overlay(tmp_path):
    assert vm_in(Path("/tmp/x")).monitor_path == Path("/tmp/x/golden.monitor")


def test_long_workdir_moves_the_socket_to_a_short_stable_path():
    deep = Path("/root/.cache/copylab/bench-cold-pjs07p7i/images/golden-amd64-6.1.0-50-amd64-c505d203b85f247f.tmp/vm")
    a, b = vm_in(deep), vm_in(deep)
    assert len(str(a.monitor_path)) < 100 and a.monitor_path == b.monitor_path
    assert a.monitor_path != vm_in(deep / "other").monitor_path
