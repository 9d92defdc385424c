"""Queue messages that wake workers up: huey, on SQLite in the instance folder by default (one
machine), on Redis (``GRADER_QUEUE_URL=redis://...``) when workers run on several hosts.

A message carries only a job id. The job row (grader/service/jobs.py) is the truth: a lost message
(a worker killed after taking it, a web process killed before sending it) is re-sent by the
reconciler, and a duplicate message is harmless because only one claim of a job can succeed.
"""
from __future__ import annotations

import logging
from pathlib import Path

from . import jobs

log = logging.getLogger("grader.dispatch")
TASK_NAME = "grade_job"


def make_huey(config: dict, instance_path: str):
    url = config.get("QUEUE_URL")
    name = config.get("QUEUE_NAME", "copylab")
    if url and str(url).startswith(("redis://", "rediss://", "unix://")):
        from huey import PriorityRedisHuey

        return PriorityRedisHuey(name, url=url, results=False, utc=True)
    if url:
        raise ValueError(f"GRADER_QUEUE_URL {url!r}: expected redis://host:port/db (or leave it unset "
                         "for the embedded SQLite queue)")
    from huey import SqliteHuey

    from .private import touch

    return SqliteHuey(name, filename=str(touch(Path(instance_path) / "queue.sqlite3")), results=False, utc=True)


class Dispatcher:
    """Sends job ids to the queue; registered on the app as ``app.extensions['copylab_dispatch']``."""

    def __init__(self, app):
        self.app = app
        self.huey = make_huey(app.config, app.instance_path)
        self.handler = None  # set by a worker: handler(job_id) grades the job

        @self.huey.task(name=TASK_NAME)
        def grade_job(job_id: int):
            if self.handler is None:
                raise RuntimeError("a grading message reached a process that is not a worker")
            with self.app.app_context():
                self.handler(int(job_id))

        self.task = grade_job

    def send(self, job_id: int, priority: int, delay: float | None = None) -> bool:
        """True when the message was queued; False (logged) when the queue is unreachable: the job
        stays queued in the database and the reconciler sends it later."""
        try:
            if delay:
                self.task.schedule((job_id,), delay=delay, priority=priority)
            else:
                self.huey.enqueue(self.task.s(job_id, priority=priority))
            return True
        except Exception as e:  # noqa: BLE001 - the database still holds the job
            log.warning("could not queue job %s (%s: %s); the reconciler will retry", job_id,
                        type(e).__name__, e)
            return False

    def pending_job_ids(self) -> set[int]:
        ids = set()
        for t in list(self.huey.pending()) + list(self.huey.scheduled()):
            if t.args:
                ids.add(int(t.args[0]))
        return ids

    def reconcile(self) -> int:
        """Requeue jobs whose worker vanished and send a message for every queued job that has none.
        Returns how many messages were sent."""
        jobs.requeue_expired()
        pending = self.pending_job_ids()
        sent = [jid for jid, prio in jobs.queued_jobs() if jid not in pending and self.send(jid, prio)]
        jobs.mark_dispatched(sent)
        return len(sent)

    def flush(self) -> None:
        self.huey.flush()
