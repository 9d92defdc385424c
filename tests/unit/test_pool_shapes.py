"""The VM pool holds lab VMs of several shapes and leases each job a VM of its lab's shape."""
from __future__ import annotations

import pytest

from grader.engine.labspec import load_lab
from grader.errors import VMError
from grader.service.pool import NoVMOfShape, Slot, VMPool
from grader.vm.labvm import shape_options


class StandIn:
    def __init__(self, shape):
        self.shape = shape

    def alive(self):
        return True

    def close(self):
        pass


def test_each_lab_leases_a_vm_of_the_shape_it_asks_for():
    pool = VMPool([Slot("vm1", lambda: StandIn("")),
                   Slot("e1000e-pair-vm1", lambda: StandIn("e1000e-pair"), shape="e1000e-pair")])
    for lab in ("lab1", "lab2"):
        shape = load_lab(lab).vm_shape
        with pool.lease(1, shape=shape) as slot:
            assert slot.vm.shape == shape and slot.shape == shape
    assert [s.shape for s in pool.slots] == ["", "e1000e-pair"]
    with pool.lease(2, shape="e1000e-pair") as slot, pytest.raises(Exception):
        with pool.lease(3, timeout=0.1, shape="e1000e-pair"):
            pass           # the only VM of that shape is busy; the plain one is not handed out instead


def test_a_shape_the_pool_lacks_is_a_clear_configuration_error():
    pool = VMPool([Slot("vm1", lambda: StandIn(""))])
    with pytest.raises(NoVMOfShape, match="no lab VM of shape 'e1000e-pair'.*POOL_QEMU_SHAPES"):
        with pool.lease(1, shape="e1000e-pair"):
            pass


def test_shapes_map_to_runner_options():
    from grader.engine.labspec import VM_SHAPES
    from grader.vm.labvm import SHAPES
    assert set(SHAPES) == set(VM_SHAPES)      # every shape a lab spec accepts, a QEMU lab VM can have
    assert shape_options("") == {} and shape_options("e1000e-pair") == {"nic_pair": True}
    with pytest.raises(VMError, match="no lab VM shape 'token-ring'"):
        shape_options("token-ring")


def test_the_pool_holds_vms_of_each_release_it_is_asked_for():
    from grader.service.pool import qemu_counts

    cfg = {"POOL_QEMU_VMS": 2, "POOL_QEMU_SHAPES": {"e1000e-pair": 1}, "POOL_SUITE": "bookworm",
           "POOL_QEMU_SUITES": {"trixie": {"": 1}}}
    assert qemu_counts(cfg) == {("", "bookworm"): 2, ("e1000e-pair", "bookworm"): 1, ("", "trixie"): 1}
    with pytest.raises(ValueError, match="no Debian release 'buster'"):
        qemu_counts({**cfg, "POOL_QEMU_SUITES": {"buster": {"": 1}}})
    pool = VMPool([Slot("vm1", lambda: StandIn("")), Slot("trixie-vm1", lambda: StandIn(""), suite="trixie")])
    with pool.lease(1, suite="trixie") as slot:
        assert slot.name == "trixie-vm1"
    with pool.lease(2) as slot:                 # no release named: the pool's own
        assert slot.name == "vm1"
    with pytest.raises(NoVMOfShape, match="no lab VM of shape 'e1000e-pair' on Debian trixie"):
        with pool.lease(3, shape="e1000e-pair", suite="trixie"):
            pass


class Persistent(StandIn):
    """Keeps state between jobs like QemuLabVM: replacing it discards that state."""

    def __init__(self):
        super().__init__("")
        self.prepared, self.discarded, self.closed = True, False, False

    def discard(self):
        self.discarded = True

    def close(self):
        self.closed = True


def test_a_vm_that_lost_its_preparation_is_replaced_and_its_state_discarded():
    from grader.service.pool import PersistentVM
    from grader.vm.labvm import QemuLabVM

    assert hasattr(QemuLabVM, "discard")   # the pool's PersistentVM: QemuLabVM.__init__ sets prepared
    first = Persistent()
    made = iter([first, Persistent()])
    pool = VMPool([Slot("vm1", lambda: next(made))])
    assert isinstance(first, PersistentVM) and not isinstance(StandIn(""), PersistentVM)
    with pool.lease(1) as slot:
        slot.vm.prepared = False          # e.g. its reset failed
    assert first.discarded and not first.closed and pool.slots[0].replaced == 1
    with pool.lease(2) as slot:
        assert slot.vm is not first and slot.vm.prepared
