"""A pool of lab VMs: one grading job per VM at a time; a dead VM is replaced before its next job.

Each slot holds VMs of one shape, the shape a lab asks for in its spec ([vm] nics: "" for the plain
lab VM, "e1000e-pair" for lab 2's two network cards); a job leases a slot of its lab's shape.

Slots are filled lazily from factories (QEMU VMs from the golden image, inventory hosts). QEMU slots
are persistent: their overlay keeps the clean snapshot, so a restarted worker resumes them in seconds.
"""
from __future__ import annotations

import logging
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger("grader.pool")


@dataclass
class Slot:
    name: str
    factory: Callable[[], object]
    vm: object | None = None
    jobs: int = 0
    replaced: int = 0
    busy_with: int | None = field(default=None)
    shape: str = ""        # the lab spec's [vm] nics this slot's VMs have


class PoolClosed(Exception):
    pass


class NoVMOfShape(Exception):
    """The pool has no slot of the VM shape a lab asks for (a configuration problem, not the student's)."""


class VMPool:
    def __init__(self, slots: list[Slot]):
        if not slots:
            raise ValueError("the VM pool is empty: set GRADER_POOL_QEMU_VMS or GRADER_POOL_HOSTS")
        self.slots = slots
        self._free: dict[str, queue.Queue[Slot]] = {}
        for s in slots:
            self._free.setdefault(s.shape, queue.Queue()).put(s)
        self._closed = threading.Event()

    @property
    def size(self) -> int:
        return len(self.slots)

    @contextmanager
    def lease(self, job_id: int | None = None, timeout: float | None = None, shape: str = ""):
        """Yield a Slot of this VM shape whose ``vm`` is ready for the engine (it acquires/releases the
        VM itself)."""
        if self._closed.is_set():
            raise PoolClosed("the VM pool is shut down")
        free = self._free.get(shape)
        if free is None:
            raise NoVMOfShape(f"the VM pool has no lab VM of shape {shape!r} (has: "
                              f"{', '.join(repr(s) for s in sorted(self._free))}); see POOL_QEMU_SHAPES")
        slot = free.get(timeout=timeout)
        slot.busy_with = job_id
        try:
            if slot.vm is None:
                slot.vm = slot.factory()
            yield slot
        finally:
            slot.jobs += 1
            slot.busy_with = None
            if slot.vm is not None and not self._healthy(slot.vm):
                self.replace(slot, "the VM died or could not be reset")
            free.put(slot)

    @staticmethod
    def _healthy(vm) -> bool:
        if not getattr(vm, "prepared", True):
            return False
        try:
            return bool(vm.alive())
        except Exception:  # noqa: BLE001
            return False

    def replace(self, slot: Slot, why: str) -> None:
        log.warning("replacing VM %s: %s", slot.name, why)
        vm, slot.vm = slot.vm, None
        slot.replaced += 1
        if vm is not None:
            try:
                (getattr(vm, "discard", None) or vm.close)()
            except Exception as e:  # noqa: BLE001
                log.warning("VM %s did not shut down cleanly: %s", slot.name, e)

    def close(self) -> None:
        self._closed.set()
        for s in self.slots:
            if s.vm is not None:
                try:
                    s.vm.close()
                except Exception as e:  # noqa: BLE001
                    log.warning("VM %s did not shut down cleanly: %s", s.name, e)
                s.vm = None


def private_paths(config: dict, instance_path: str | Path | None) -> list[Path]:
    """What QEMU's account must never reach: the instance folder itself (files created there later,
    such as the database, are then out of reach too), its config.py (the secret), the SQLite database
    and the store (submissions, artifacts), wherever those two are configured to be."""
    inst = [Path(instance_path), Path(instance_path) / "config.py"] if instance_path else []
    paths = inst + [Path(config["STORE_DIR"])]
    uri = str(config.get("SQLALCHEMY_DATABASE_URI") or "")
    if uri.startswith("sqlite:///"):
        paths.append(Path(uri[len("sqlite:///"):]))
    return paths


def check_qemu_account(config: dict, instance_path: str | Path | None):
    """The pool's QEMU account (POOL_QEMU_USER), refused when it could reach any of private_paths."""
    from grader.vm.qemu import VMStartError, qemu_account

    account = qemu_account(config.get("POOL_QEMU_USER"))
    if account.switched:
        exposed = account.reachable(private_paths(config, instance_path))
        if exposed:
            raise VMStartError(
                f"QEMU's account {account.name} could read {', '.join(map(str, exposed))}: make the instance "
                f"folder private (chmod 700 {instance_path or 'on it'}) or keep these paths out of that "
                f"account's reach")
    else:
        log.warning("QEMU runs as %s: %s", account.name, account.why)
    return account


def pool_from_config(config: dict, progress=None, instance_path: str | Path | None = None) -> VMPool:
    """QEMU VMs (POOL_QEMU_VMS plain ones and POOL_QEMU_SHAPES of other shapes, from POOL_GOLDEN or
    the newest cached golden image of POOL_SUITE, as POOL_QEMU_USER, checked against the instance at
    ``instance_path``) and inventory hosts (POOL_HOSTS, plain shape)."""
    from grader.vm.labvm import QemuLabVM, StaticHostVM, find_golden, shape_options

    slots: list[Slot] = []
    counts = {"": int(config.get("POOL_QEMU_VMS") or 0)}
    for shape, n in (config.get("POOL_QEMU_SHAPES") or {}).items():
        shape_options(shape)    # an unknown shape is refused here, not at the first lab 2 job
        counts[shape] = int(n)
    if any(counts.values()):
        golden = Path(config["POOL_GOLDEN"]) if config.get("POOL_GOLDEN") else \
            find_golden(suite=config.get("POOL_SUITE"))
        vmdir = Path(config["POOL_VM_DIR"])
        account = check_qemu_account(config, instance_path)
        for shape, n in counts.items():
            for i in range(n):
                # plain VMs keep their names (vm1..): their persistent overlays are resumed by name
                name = f"vm{i + 1}" if not shape else f"{shape}-vm{i + 1}"

                def factory(name=name, shape=shape):
                    return QemuLabVM(golden=golden, workdir=vmdir / name, name=name, persistent=True,
                                     progress=progress, qemu_user=account.name if account.switched else "",
                                     **shape_options(shape))
                slots.append(Slot(name, factory, shape=shape))
    for h in config.get("POOL_HOSTS") or []:
        name = f"{h['host']}:{h.get('port', 22)}"

        def hfactory(h=h):
            return StaticHostVM(host=h["host"], port=int(h.get("port", 22)), key=Path(h["key"]),
                                known_hosts=Path(h["known_hosts"]), user=h.get("user", "grader"))
        slots.append(Slot(name, hfactory))
    return VMPool(slots)
