"""`make demo`: a fresh instance with a demo cohort, the lab 1 reference solution and skeleton graded on
a real lab VM by a real worker, then the service served on localhost until Ctrl-C."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from grader.service.private import make_dir, write_text
from grader.service.processes import REPO, flask_command, run_flask, start_flask, stop_group
from grader.vm.qemu import free_port

def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def flask(env: dict, *args: str) -> str:
    r = run_flask(env, *args, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"demo: `flask --app grader {' '.join(args)}` failed:\n{r.stdout}{r.stderr}")
    return r.stdout


def main(instance: Path | None = None, port: int | None = None) -> int:
    from grader.vm.labvm import find_golden

    instance = Path(instance or os.environ.get("COPYLAB_DEMO_INSTANCE") or REPO / "build" / "demo-instance")
    if instance.exists():
        shutil.rmtree(instance)
    make_dir(instance)
    # `make demo COPYLAB_SUITE=trixie`: the Debian 13 (kernel 6.12) image `make image` just built
    golden = find_golden(suite=os.environ.get("COPYLAB_SUITE") or None)
    write_text(instance / "config.py",
               "# written by `make demo`: a random secret for this demo instance only\n"
               f"SECRET_KEY = {secrets.token_urlsafe(48)!r}\nPOOL_GOLDEN = {str(golden)!r}\nPOOL_QEMU_VMS = 1\n")
    env = dict(os.environ, GRADER_INSTANCE_PATH=str(instance), PYTHONUNBUFFERED="1")
    say(f"instance folder {instance}; golden image {golden.name}")
    logins = [line.split("\t")[1:] for line in flask(env, "demo-setup").splitlines() if line.startswith("login\t")]

    # the two submissions, through the same acceptance path as the web form and the API
    os.environ["GRADER_INSTANCE_PATH"] = str(instance)
    from grader import create_app
    from grader.service.models import Assignment, User, db
    from grader.service.submit import accept
    from grader.service.uploads import UploadPart

    app = create_app()
    subs = {}
    with app.test_request_context():
        a = db.session.execute(db.select(Assignment)).scalars().first()
        for who, folder in (("student1", "solution"), ("student2", "skeleton")):
            u = db.session.execute(db.select(User).filter_by(username=who)).scalar_one()
            d = REPO / "labs" / "lab1" / folder
            parts = [UploadPart(n, n, (d / n).read_bytes()) for n in ("sender.c", "receiver.c", "copytrace.c")]
            sub, _job = accept(u, a, parts, "web")
            subs[folder] = sub.id
            say(f"{who} submitted the lab 1 {folder}: submission #{sub.id}, receipt {sub.sha256[:16]}...")

    log = open(instance / "worker.log", "wb")
    worker = start_flask(env, "worker", log=log)
    say("worker started (log: worker.log); the first job boots the lab VM (1-2 min under TCG), "
        "each grading run takes about 1.5 min under TCG")
    try:
        _wait_graded(app, subs, worker, instance)
        port = free_port(preferred=port or int(os.environ.get("COPYLAB_DEMO_PORT", "8000")))
        url = f"http://127.0.0.1:{port}/"
        print("\n" + "=" * 72)
        print(f"copylab grader demo: {url}")
        for user, pw in logins:
            print(f"  login {user:<11} password {pw}")
        print(f"  student1's solution: {url}submissions/{subs['solution']}")
        print(f"  the instructor's dashboard: {url}instructor/")
        print(f"  instance folder (database, store, VM overlay): {instance}")
        print("Ctrl-C stops the web process and the worker.")
        print("=" * 72 + "\n", flush=True)
        # in the foreground: its output on the terminal, Ctrl-C reaches it
        serve = subprocess.Popen(flask_command("serve", "--port", str(port)), cwd=REPO, env=env)
        try:
            return serve.wait()
        except KeyboardInterrupt:
            serve.send_signal(signal.SIGTERM)
            serve.wait(30)
            return 0
    finally:
        stop_group(worker, signal.SIGINT, 60)


def _wait_graded(app, subs: dict, worker, instance: Path, timeout: float = 1800) -> None:
    from grader.service.models import Job, Result, db

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"demo: the worker exited ({worker.returncode}); see {instance / 'worker.log'}")
        with app.app_context():
            states, graded = [], 0
            for name, sid in subs.items():
                res = db.session.execute(db.select(Result).filter_by(submission_id=sid)).scalars().first()
                job = db.session.execute(db.select(Job).filter_by(submission_id=sid)).scalars().first()
                if job is not None and job.state == "failed":
                    raise SystemExit(f"demo: grading the {name} failed: {job.error}")
                graded += res is not None
                states.append(f"{name}: {res.score:g}/{res.max_score:g}" if res else
                              f"{name}: {job.state}{' (' + job.phase + ')' if job.phase else ''}")
            db.session.remove()
        line = "; ".join(states)
        if line != last:
            say(line)
            last = line
        if graded == len(subs):
            return
        time.sleep(3)
    raise SystemExit(f"demo: not graded after {timeout:.0f}s; see {instance / 'worker.log'}")
