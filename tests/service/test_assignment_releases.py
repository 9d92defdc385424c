"""Instructors choose the kernel per assignment (a lab given to a cohort): `add-lab --suite` records the
Debian release, the worker leases a pool VM of that release, and an assignment the service cannot grade
on the release it names is refused when it is made, with the reason."""
from __future__ import annotations

import pytest

from support.app import StandInVM, replay_runner
from support.service import lab_files


class ReleaseVM(StandInVM):
    """A stand-in VM that says which release its slot was made for."""

    def __init__(self, suite: str):
        super().__init__()
        self.suite = suite


def add_lab(app, *args):
    from grader.service.models import Cohort, db

    with app.app_context():
        if db.session.execute(db.select(Cohort).filter_by(name="fall")).scalar_one_or_none() is None:
            db.session.add(Cohort(name="fall"))
            db.session.commit()
    return app.test_cli_runner().invoke(args=["add-lab", "fall", *args, "--deadline", "2030-01-01T00:00"])


def test_add_lab_records_the_release_the_pool_has(app):
    from grader.service.models import Assignment, db

    app.config["POOL_QEMU_SUITES"] = {"trixie": {"": 1}}
    r = add_lab(app, "lab1", "--suite", "trixie")
    assert r.exit_code == 0 and "graded on trixie" in r.output, r.output
    with app.app_context():
        a = db.session.execute(db.select(Assignment).filter_by(lab="lab1").order_by(Assignment.id.desc())).scalars().first()
        assert a.suite == "trixie"
        seeded = db.session.get(Assignment, app.ids["assignment"])
        assert seeded.suite is None          # no --suite: the service's POOL_SUITE


@pytest.mark.parametrize("config, args, why", [
    ({}, ["lab1", "--suite", "trixie"],
     "the VM pool has no trixie lab VM of lab1's shape '': set POOL_QEMU_SUITES"),
    ({"POOL_QEMU_SUITES": {"trixie": {"e1000e-pair": 1}}}, ["lab2", "--suite", "trixie"],
     "lab2 does not run on trixie's kernel 6.12.117+deb13-amd64 (its lab.toml [run] names 6.1.0-50-amd64)"),
    ({}, ["lab1", "--suite", "sid"], "no Debian release 'sid' (known: bookworm, trixie)"),
])
def test_a_release_the_service_cannot_grade_on_is_refused_with_its_reason(app, config, args, why):
    from grader.service.models import Assignment, db

    app.config.update(config)
    r = add_lab(app, *args)
    assert r.exit_code == 1 and why in r.output, r.output
    with app.app_context():
        assert db.session.execute(db.select(db.func.count(Assignment.id))).scalar_one() == 1   # the seeded one


def test_the_worker_grades_each_assignment_on_its_release(app):
    from grader.service.models import Assignment, Cohort, Membership, Result, User, db
    from grader.service.pool import Slot, VMPool
    from grader.service.submit import accept
    from grader.service.uploads import UploadPart
    from grader.service.worker import Worker

    pool = VMPool([Slot("vm1", lambda: ReleaseVM("bookworm")),
                   Slot("trixie-vm1", lambda: ReleaseVM("trixie"), suite="trixie")], suite="bookworm")
    seen = []
    replay = replay_runner()

    def runner(lab, vm, subdir, outdir):
        seen.append(vm.suite)
        return replay(lab, vm, subdir, outdir)

    with app.test_request_context():
        bookworm = db.session.get(Assignment, app.ids["assignment"])
        # a second cohort that takes lab 1 on Debian 13
        c2 = Cohort(name="c2")
        db.session.add(c2)
        db.session.flush()
        trixie = Assignment(cohort_id=c2.id, lab="lab1", title="lab 1", suite="trixie", deadline=bookworm.deadline)
        db.session.add_all([trixie, Membership(cohort_id=c2.id, user_id=app.ids["bob"])])
        db.session.commit()
        parts = [UploadPart(n, n, d) for n, d in lab_files().items()]
        accept(db.session.get(User, app.ids["alice"]), bookworm, parts, "api")
        accept(db.session.get(User, app.ids["bob"]), trixie, parts, "api")
    Worker(app, pool, runner=runner).drain(timeout=30)
    assert sorted(seen) == ["bookworm", "trixie"]
    with app.app_context():
        assert db.session.execute(db.select(db.func.count(Result.id))).scalar_one() == 2
    assert {s.name: s.suite for s in pool.slots} == {"vm1": "bookworm", "trixie-vm1": "trixie"}


def test_the_instructor_page_assigns_a_lab_on_a_release_the_pool_has(app, browser):
    from grader.service.models import Assignment, Cohort, db

    app.config["POOL_QEMU_SUITES"] = {"trixie": {"": 1}}
    t = browser("teacher")
    assert t.post("/instructor/cohorts", data={"name": "spring"}).status_code == 303
    with app.app_context():
        cid = db.session.execute(db.select(Cohort.id).filter_by(name="spring")).scalar_one()
    page = t.get(f"/instructor/cohorts/{cid}").data.decode()
    assert "<option>trixie</option>" in page and "the service's, bookworm" in page
    r = t.post(f"/instructor/cohorts/{cid}/assignments",
               data={"lab": "lab2", "deadline": "2030-05-01T12:00", "suite": "trixie"}, follow_redirects=True)
    assert b"Not created: lab2 does not run on trixie&#39;s kernel" in r.data, r.data
    r = t.post(f"/instructor/cohorts/{cid}/assignments",
               data={"lab": "lab1", "deadline": "2030-05-01T12:00", "suite": "trixie"})
    assert r.status_code == 303
    with app.app_context():
        assert db.session.execute(db.select(Assignment.suite).filter_by(cohort_id=cid)).scalar_one() == "trixie"
    assert "graded on trixie" in t.get(f"/instructor/cohorts/{cid}").data.decode()
