"""A pool of lab VMs: one grading job per VM at a time; a dead VM is replaced before its next job.

Each slot holds VMs of one shape, the shape a lab asks for in its spec ([vm] nics: "" for the plain
lab VM, "e1000e-pair" for lab 2's two network cards), and of one Debian release (the pool's own, POOL_SUITE,
or one that POOL_QEMU_SUITES adds for assignments that name it); a job leases a slot of its lab's shape
and its assignment's release.

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
from typing import Callable, Protocol, runtime_checkable

log = logging.getLogger("grader.pool")
DEFAULT_SUITE = "bookworm"      # grader.vm.labvm.DEFAULT_SUITE (not imported: this module loads no VM code)


@runtime_checkable
class PersistentVM(Protocol):
    """A pooled VM that keeps state between jobs (QemuLabVM's overlay and clean snapshot): one that
    never got prepared is unhealthy, and replacing it must discard that state, not keep it for a
    restarted worker to resume."""
    prepared: bool

    def discard(self) -> None: ...


@dataclass
class Slot:
    name: str
    factory: Callable[[], object]
    vm: object | None = None
    jobs: int = 0
    replaced: int = 0
    busy_with: int | None = field(default=None)
    shape: str = ""        # the lab spec's [vm] nics this slot's VMs have
    suite: str = DEFAULT_SUITE   # the Debian release of its golden image (bookworm: 6.1, trixie: 6.12)


class PoolClosed(Exception):
    pass


class NoVMOfShape(Exception):
    """The pool has no slot of the VM shape and Debian release a job asks for (a configuration problem,
    not the student's)."""


class VMPool:
    def __init__(self, slots: list[Slot], suite: str = DEFAULT_SUITE):
        if not slots:
            raise ValueError("the VM pool is empty: set GRADER_POOL_QEMU_VMS or GRADER_POOL_HOSTS")
        self.slots = slots
        self.suite = suite      # the release of jobs whose assignment names none
        self._free: dict[tuple[str, str], queue.Queue[Slot]] = {}
        for s in slots:
            self._free.setdefault((s.shape, s.suite), queue.Queue()).put(s)
        self._closed = threading.Event()

    @property
    def size(self) -> int:
        return len(self.slots)

    @contextmanager
    def lease(self, job_id: int | None = None, timeout: float | None = None, shape: str = "",
              suite: str | None = None):
        """Yield a Slot of this VM shape and Debian release (None: the pool's) whose ``vm`` is ready for
        the engine (it acquires/releases the VM itself)."""
        if self._closed.is_set():
            raise PoolClosed("the VM pool is shut down")
        suite = suite or self.suite
        free = self._free.get((shape, suite))
        if free is None:
            has = ", ".join(f"{sh!r} on {su}" for sh, su in sorted(self._free))
            raise NoVMOfShape(f"the VM pool has no lab VM of shape {shape!r} on Debian {suite} (has: {has}); "
                              f"see POOL_QEMU_SHAPES, POOL_SUITE and POOL_QEMU_SUITES")
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
        if isinstance(vm, PersistentVM) and not vm.prepared:
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
                vm.discard() if isinstance(vm, PersistentVM) else vm.close()
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


def pool_suite(config: dict) -> str:
    """The Debian release of the pool's own VMs, which grades the assignments that name none."""
    return config.get("POOL_SUITE") or DEFAULT_SUITE


def qemu_counts(config: dict) -> dict[tuple[str, str], int]:
    """(shape, Debian release) -> how many QEMU lab VMs: POOL_QEMU_VMS plain ones and POOL_QEMU_SHAPES
    of POOL_SUITE, and POOL_QEMU_SUITES ({release: {shape: n}}) of the other releases. An unknown shape
    or release is refused here, not at the first job that asks for it."""
    from grader.kit import suite_kernels
    from grader.vm.labvm import shape_options

    default = pool_suite(config)
    wanted = {suite: dict(shapes) for suite, shapes in (config.get("POOL_QEMU_SUITES") or {}).items()}
    # POOL_QEMU_VMS and POOL_QEMU_SHAPES count POOL_SUITE's VMs
    wanted[default] = {**wanted.get(default, {}), "": config.get("POOL_QEMU_VMS") or 0,
                       **(config.get("POOL_QEMU_SHAPES") or {})}
    known = suite_kernels()
    counts = {}
    for suite, shapes in wanted.items():
        if suite not in known:
            raise ValueError(f"POOL_SUITE / POOL_QEMU_SUITES: no Debian release {suite!r} (known: "
                             f"{', '.join(known)})")
        for shape, n in shapes.items():
            shape_options(shape)
            counts[(shape, suite)] = int(n)
    return counts


def pool_from_config(config: dict, progress=None, instance_path: str | Path | None = None) -> VMPool:
    """QEMU VMs (qemu_counts: from POOL_GOLDEN or the newest cached golden image of each release, as
    POOL_QEMU_USER, checked against the instance at ``instance_path``) and inventory hosts (POOL_HOSTS,
    plain shape, counted as POOL_SUITE)."""
    from grader.vm.labvm import QemuLabVM, StaticHostVM, find_golden, shape_options

    default = pool_suite(config)
    slots: list[Slot] = []
    counts = qemu_counts(config)
    if any(counts.values()):
        vmdir = Path(config["POOL_VM_DIR"])
        account = check_qemu_account(config, instance_path)
        goldens: dict[str, Path] = {}
        for (shape, suite), n in counts.items():
            if n and suite not in goldens:
                goldens[suite] = Path(config["POOL_GOLDEN"]) if config.get("POOL_GOLDEN") and suite == default \
                    else find_golden(suite=suite)
            for i in range(n):
                # the pool's own plain VMs keep their names (vm1..): persistent overlays are resumed by name
                name = "-".join(filter(None, (shape, suite if suite != default else "", f"vm{i + 1}")))

                def factory(name=name, shape=shape, golden=goldens.get(suite)):
                    return QemuLabVM(golden=golden, workdir=vmdir / name, name=name, persistent=True,
                                     progress=progress, qemu_user=account.name if account.switched else "",
                                     **shape_options(shape))
                slots.append(Slot(name, factory, shape=shape, suite=suite))
    for h in config.get("POOL_HOSTS") or []:
        name = f"{h['host']}:{h.get('port', 22)}"

        def hfactory(h=h):
            return StaticHostVM(host=h["host"], port=int(h.get("port", 22)), key=Path(h["key"]),
                                known_hosts=Path(h["known_hosts"]), user=h.get("user", "grader"))
        slots.append(Slot(name, hfactory, suite=default))
    return VMPool(slots, suite=default)
