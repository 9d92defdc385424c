"""What the engine asks of a lab VM (grader/vm/labvm.py over QEMU or an inventory host; `make check`'s
LocalVM; the unit tests' fakes). Stdlib only: the engine also runs inside the lab VM.

LabVM is what every VM provides. The optional capabilities are Protocols of their own, which the engine
checks with isinstance: a VM without one builds in itself, has no view from outside the guest, or has
no failure of its own to report."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from ..executor import Executor


@runtime_checkable
class LabVM(Protocol):
    def acquire(self) -> None:
        """Hand out a clean VM (restore it, or check that it is clean)."""

    def executor(self) -> AbstractContextManager[Executor]:
        """A connection to the VM as the unprivileged grader account."""

    def release(self, dirty: bool) -> str | None:
        """Take the VM back after a run (a dirty one is reset or retired); optional detail for the
        release phase."""

    def crash_excerpt(self) -> str | None:
        """The serial log's oops/panic text since acquire, or None."""

    def alive(self) -> bool: ...

    def environment(self) -> dict:
        """Facts for the result, e.g. {"accel": "kvm"|"tcg"|None, "arch": ..., "image": ...}."""


@runtime_checkable
class BuildsOnHost(Protocol):
    def host_builder(self) -> tuple[object | None, str]:
        """(builder, why): a sandbox on the grader host that builds with the VM image's own toolchain
        (grader/buildbox.py HostBuilder), or (None, why the build stays in the VM)."""


@runtime_checkable
class WatchedFromOutside(Protocol):
    def host_evidence(self, name: str, lab, profile) -> tuple[object | None, str]:
        """(source, why): a HostEvidenceSource (grader/engine/hostevidence.py) viewing the guest from
        outside it, or (None, why not)."""


@runtime_checkable
class ReportsInfrastructureFault(Protocol):
    def infrastructure_fault(self) -> str | None:
        """Why the VM failed for reasons that are not the submission's (e.g. QEMU killed from
        outside), or None."""


def infrastructure_fault(vm) -> str | None:
    """The VM's own report of a failure that is not the submission's; None from a VM that cannot
    have one."""
    return vm.infrastructure_fault() if isinstance(vm, ReportsInfrastructureFault) else None
