"""The engine's explicit contracts: the lab VM Protocol every VM class keeps, the one phase table
the lab spec, the run and the worker read, and the typed outcome of a run."""

import inspect

import pytest
from support.engine_runs import good_run
from test_engine_run import FakeVM

from grader.engine.check import LocalVM
from grader.engine.checkrun import run_checks
from grader.engine.labspec import load_lab, parse_lab
from grader.engine.phases import DEFAULT_TIMEOUTS, PHASE_NAMES, PHASES, Outcome, RunOutcome
from grader.engine.result import build_result
from grader.engine.run import GradingRun
from grader.engine.vmcontract import (BuildsOnHost, LabVM, ReportsInfrastructureFault, WatchedFromOutside,
                                      infrastructure_fault)
from grader.errors import LabSpecError
from grader.vm.labvm import QemuLabVM, StaticHostVM

CONTRACTS = (LabVM, BuildsOnHost, WatchedFromOutside, ReportsInfrastructureFault)


def members(protocol) -> list[str]:
    return [n for n, v in vars(protocol).items() if not n.startswith("_") and callable(v)]


@pytest.mark.parametrize("cls", [QemuLabVM, StaticHostVM, LocalVM, FakeVM])
def test_every_vm_class_keeps_the_lab_vm_contract(cls):
    assert issubclass(cls, LabVM)
    for protocol in CONTRACTS:
        if not issubclass(cls, protocol):
            continue
        for name in members(protocol):
            want = list(inspect.signature(getattr(protocol, name)).parameters)
            have = list(inspect.signature(getattr(cls, name)).parameters)
            assert have[:len(want)] == want, f"{cls.__name__}.{name}{have} differs from {protocol.__name__}"


def test_the_optional_capabilities_are_declared_not_probed(tmp_path):
    assert all(issubclass(QemuLabVM, p) for p in CONTRACTS)
    static = StaticHostVM("192.0.2.1", 22, tmp_path / "key", tmp_path / "known_hosts")
    for vm in (static, LocalVM(), FakeVM()):
        assert not isinstance(vm, (BuildsOnHost, WatchedFromOutside, ReportsInfrastructureFault))
        assert infrastructure_fault(vm) is None

    class Killed:
        def infrastructure_fault(self):
            return "QEMU was killed by signal 9 from outside the grader"

    assert infrastructure_fault(Killed()) == "QEMU was killed by signal 9 from outside the grader"


def test_one_phase_table_for_the_spec_and_the_run(tmp_path):
    assert len(set(PHASE_NAMES)) == len(PHASES) and PHASE_NAMES[0] == "acquire" and PHASE_NAMES[-1] == "release"
    g = GradingRun(load_lab("lab1"), LocalVM(), tmp_path, tmp_path / "out")
    assert list(g.run.phases) == list(PHASE_NAMES)
    assert set(g.steps) | {"release"} == set(PHASE_NAMES)
    assert [p.name for p in PHASES if p.student_code] == ["build", "load", "run", "unload"]
    assert [p.name for p in PHASES if p.grader_fault] == ["acquire", "verify"]
    # a lab spec without [timeouts] gets the table's; an unknown name is refused, naming the table's
    lab = load_lab("lab1")
    plain = parse_lab(dict(lab.raw, timeouts={}), lab.dir)
    assert plain.timeouts == {k: float(v) for k, v in DEFAULT_TIMEOUTS.items()}
    with pytest.raises(LabSpecError, match="unknown phase 'bild' \\(phases: " + ", ".join(PHASE_NAMES)):
        parse_lab(dict(lab.raw, timeouts={"bild": 3}), lab.dir)


def result_of(run):
    lab = load_lab("lab1")
    return build_result(run, run_checks(lab.checks, run), max_score=lab.max_score)


def test_a_result_carries_its_typed_outcome():
    graded = result_of(good_run())
    assert graded["outcome"] == {"kind": "graded", "phase": None, "reason": None}
    assert RunOutcome.of_result(graded).graded and RunOutcome.of_result(graded).grader_failure is None
    run = good_run()
    run.phases["verify"].status, run.phases["verify"].detail = "failed", "cannot reach the VM: HostKeyMismatch"
    broken = result_of(run)
    outcome = RunOutcome.of_result(broken)
    assert (outcome.kind, outcome.phase) == (Outcome.INFRASTRUCTURE, "verify")
    assert outcome.grader_failure == "phase verify failed: cannot reach the VM: HostKeyMismatch"
    assert broken["outcome"] == outcome.as_dict()


def test_a_result_stored_before_the_outcome_field_is_judged_by_its_phases():
    old = result_of(good_run())
    del old["outcome"]
    assert RunOutcome.of_result(old) == RunOutcome(Outcome.GRADED)
    old["phases"][0].update(status="failed", detail="VMStartError: QEMU could not start")
    assert RunOutcome.of_result(old).grader_failure == "phase acquire failed: VMStartError: QEMU could not start"

