"""The grading worker: takes job ids from the queue, claims the job, grades the stored submission on a
pool VM with the engine, stores artifacts and completes the job; heartbeats keep its lease.

Failure handling:
- the student's code fails (build error, oops, hang): that is a result with its evidence, not a failure;
- the grading infrastructure fails (no VM, the VM unreachable or not the lab's, an exception here):
  the job is requeued (at most MAX_ATTEMPTS attempts) and the VM is replaced; after the last attempt
  the job is 'failed' with the reason, and the student sees that it was not their code;
- the worker is killed: its lease expires (or it restarts under the same name) and the job is requeued;
  a stale worker can never complete a job it no longer holds.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import traceback
from pathlib import Path

from grader.engine.phases import RunOutcome
from grader.engine.vmcontract import infrastructure_fault
from grader.errors import InfrastructureFailure, StoreDamaged

from . import jobs
from .models import Job, db
from .store import Store

log = logging.getLogger("grader.worker")


def vm_fault(vm) -> str | None:
    """The VM's own report of a failure that is not the submission's (e.g. QEMU killed from outside
    while grading): whatever the engine concluded, such a run is retried, never scored."""
    try:
        return infrastructure_fault(vm)
    except Exception as e:  # noqa: BLE001
        return f"the VM's state could not be read: {e}"


def engine_runner(lab, vm, submission_dir: Path, outdir: Path) -> dict:
    from grader.engine.run import grade

    return grade(lab, vm, submission_dir, outdir).result


class Heartbeat(threading.Thread):
    def __init__(self, app, job_id: int, token: str):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.app, self.job_id, self.token = app, job_id, token
        self.phase: str | None = None
        self.lost = threading.Event()
        self._halt = threading.Event()  # not _stop: that name is threading.Thread's own method

    def run(self) -> None:
        every = float(self.app.config["HEARTBEAT_SECONDS"])
        lease = int(self.app.config["LEASE_SECONDS"])
        while not self._halt.wait(every):
            try:
                with self.app.app_context():
                    if not jobs.heartbeat(self.job_id, self.token, lease, self.phase):
                        self.lost.set()
                        return
            except Exception as e:  # noqa: BLE001 - the database may be briefly unavailable
                log.warning("heartbeat for job %s failed: %s", self.job_id, e)

    def stop(self) -> None:
        self._halt.set()


class Worker:
    def __init__(self, app, pool, runner=None):
        self.app = app
        self.pool = pool
        self.dispatch = app.extensions["copylab_dispatch"]
        self.store = Store(app.config["STORE_DIR"])
        self.name = app.config["WORKER_NAME"]
        self.runner = runner or engine_runner
        self._stop = threading.Event()
        self.completed = 0

    # ---------------------------------------------------------------- one job
    def handle(self, job_id: int) -> str:
        """Grade one job if it can be claimed. Returns what happened (for logs and tests)."""
        cfg = self.app.config
        try:
            job, token = jobs.claim(job_id, self.name, int(cfg["LEASE_SECONDS"]))
        except jobs.ClaimRefused as e:
            if e.why == "busy":
                job = db.session.get(Job, job_id)
                self.dispatch.send(job_id, job.priority, delay=float(cfg["BUSY_RETRY_SECONDS"]))
            return e.why
        priority = job.priority
        sub = job.submission
        lab_id, suite = sub.assignment.lab, sub.assignment.suite
        storage_key, files = sub.storage_key, sub.files
        hb = Heartbeat(self.app, job_id, token)
        hb.start()
        log.info("job %s (submission %s, %s, attempt %s): grading", job_id, sub.id, lab_id, job.attempts)
        tmp = Path(tempfile.mkdtemp(prefix=f"copylab-job{job_id}-"))
        try:
            from grader.engine.labspec import load_lab

            lab = load_lab(lab_id, cfg["LABS_DIR"])
            subdir = tmp / "submission"
            subdir.mkdir()
            if not self.store.verify_submission(storage_key, files):
                raise StoreDamaged(f"the stored files of submission {sub.id} do not match their "
                                   "receipt (store damaged); not graded")
            for name in files:
                shutil.copyfile(self.store.submission_dir(storage_key) / name, subdir / name)
            outdir = tmp / "out"
            db.session.remove()  # no database connection held while grading
            with self.pool.lease(job_id, shape=lab.vm_shape, suite=suite) as slot:
                hb.phase = f"grading on {slot.name}"
                result = self.runner(lab, slot.vm, subdir, outdir)
                why = vm_fault(slot.vm) or RunOutcome.of_result(result).grader_failure
                if why:
                    self.pool.replace(slot, why)
                    raise InfrastructureFailure(f"{slot.name}: {why}")
            akey = self.store.put_artifacts(job_id, outdir)
            hb.stop()
            if hb.lost.is_set() or not jobs.complete(job_id, token, result, akey):
                log.warning("job %s: this worker lost its lease; the result is discarded", job_id)
                return "lost"
            self.completed += 1
            log.info("job %s: done, %s/%s", job_id, result["score"], result["max_score"])
            return "done"
        except Exception as e:  # noqa: BLE001 - every failure is recorded on the job
            hb.stop()
            detail = str(e) if isinstance(e, InfrastructureFailure) else \
                f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
            retry = not isinstance(e, StoreDamaged)
            db.session.rollback()
            state = jobs.fail(job_id, token, detail, retry=retry, max_attempts=int(cfg["MAX_ATTEMPTS"]))
            log.warning("job %s: could not grade (%s); now %s", job_id, detail.splitlines()[0], state)
            if state == "queued":
                self.dispatch.send(job_id, priority, delay=2)
            return f"infrastructure:{state}"
        finally:
            hb.stop()
            shutil.rmtree(tmp, ignore_errors=True)
            db.session.remove()

    # ---------------------------------------------------------------- the process
    def recover(self) -> None:
        """At start: our own orphaned jobs back to the queue, then every queued job gets a message."""
        with self.app.app_context():
            n = jobs.release_orphans(self.name)
            if n:
                log.warning("requeued %d job(s) this worker held when it stopped", n)
            sent = self.dispatch.reconcile()
            log.info("worker %s: %d VM slot(s), %d queued job(s) dispatched", self.name, self.pool.size, sent)

    def _reconcile_loop(self) -> None:
        every = float(self.app.config["RECONCILE_SECONDS"])
        while not self._stop.wait(every):
            try:
                with self.app.app_context():
                    self.dispatch.reconcile()
            except Exception as e:  # noqa: BLE001
                log.warning("reconcile failed: %s", e)

    def start_consumer(self):
        """Recover, then start the reconciler and one huey consumer thread per pool slot. Returns the
        consumer (already started); `run()` blocks on it, tests stop it themselves."""
        self.recover()
        self.dispatch.handler = self.handle
        threading.Thread(target=self._reconcile_loop, daemon=True, name="reconcile").start()
        consumer = self.dispatch.huey.create_consumer(workers=self.pool.size, worker_type="thread",
                                                      periodic=False, max_delay=1.0,
                                                      check_worker_health=True)
        consumer.start()
        return consumer

    def stop(self) -> None:
        self._stop.set()
        self.pool.close()

    def run(self) -> None:
        """Block until SIGINT (graceful: running jobs finish) or SIGTERM."""
        from huey.consumer import ConsumerStopped

        consumer = self.start_consumer()
        health = time.monotonic()
        try:
            while True:
                try:
                    health = consumer.loop(health)
                except ConsumerStopped:
                    break
        finally:
            self.stop()

    def drain(self, timeout: float = 60.0) -> int:
        """Grade queued jobs in this thread until none is left (tests and `make demo`). Returns the number
        of jobs handled."""
        self.dispatch.handler = self.handle
        handled = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.app.app_context():
                jobs.requeue_expired()
                queued = jobs.queued_jobs()
            if not queued:
                return handled
            for jid, _prio in queued:
                with self.app.app_context():
                    self.handle(jid)
                handled += 1
        raise TimeoutError(f"jobs still queued after {timeout:.0f}s")
