"""`flask --app grader <command>`: the instructor's and the operator's commands."""
from __future__ import annotations

import datetime as dt
import secrets
import sys
import time
from pathlib import Path

import click
from flask import current_app

from .models import Assignment, Cohort, Job, Membership, User, db

FINISHED = ("done", "failed", "superseded")


def _assignment(spec: str) -> Assignment:
    """COHORT/LAB (or an assignment id)."""
    if spec.isdigit():
        a = db.session.get(Assignment, int(spec))
    else:
        cohort, _, lab = spec.rpartition("/")
        a = db.session.execute(db.select(Assignment).join(Cohort).where(Cohort.name == cohort, Assignment.lab == lab)
                               ).scalar_one_or_none()
    if a is None:
        raise click.ClickException(f"no assignment {spec!r}: use COHORT/LAB (see `flask --app grader status`)")
    return a


def follow_batch(batch_id: int, timeout: float, label: str) -> dict:
    """A progress bar until every job of the batch has finished; returns the state counts."""
    total = db.session.execute(db.select(db.func.count(Job.id)).where(Job.batch_id == batch_id)).scalar_one()
    deadline = time.monotonic() + timeout
    shown = 0
    with click.progressbar(length=total, label=label, show_pos=True, file=sys.stderr) as bar:
        while True:
            db.session.expire_all()
            rows = dict(db.session.execute(db.select(Job.state, db.func.count(Job.id)).where(
                Job.batch_id == batch_id).group_by(Job.state)).all())
            done = sum(rows.get(s, 0) for s in FINISHED)
            bar.update(done - shown)
            shown = done
            if done >= total:
                return rows
            if time.monotonic() > deadline:
                raise click.ClickException(f"batch {batch_id}: {done}/{total} finished after {timeout:.0f}s "
                                           f"({rows}); is a worker running? (`flask --app grader worker`)")
            time.sleep(2)


# `serve` option -> (config key, type, what it is); the config's Defaults say why each default is what it is
SERVE_OPTIONS = {
    "host": ("SERVE_HOST", str, "address to listen on"),
    "port": ("SERVE_PORT", int, "TCP port to listen on"),
    "unix_socket": ("SERVE_UNIX_SOCKET", str, "listen on this Unix socket instead of host:port"),
    "unix_socket_perms": ("SERVE_UNIX_SOCKET_PERMS", str, "octal mode of the Unix socket"),
    "threads": ("SERVE_THREADS", int, "requests handled at once"),
    "connection_limit": ("SERVE_CONNECTION_LIMIT", int, "open connections before new ones wait"),
    "channel_timeout": ("SERVE_CHANNEL_TIMEOUT", int, "seconds an idle connection is kept"),
    "cleanup_interval": ("SERVE_CLEANUP_INTERVAL", int, "seconds between checks for idle connections"),
    "backlog": ("SERVE_BACKLOG", int, "connections queued by the kernel"),
    "max_request_header_size": ("SERVE_MAX_REQUEST_HEADER_SIZE", int, "bytes of request line and headers"),
    "max_request_body_size": ("SERVE_MAX_REQUEST_BODY_SIZE", int, "bytes of a request body waitress buffers"),
}


def _serve_options(command):
    for name, (key, typ, what) in reversed(SERVE_OPTIONS.items()):
        command = click.option(f"--{name.replace('_', '-')}", name, type=typ, default=None,
                               help=f"{what} (config {key}, GRADER_{key})")(command)
    return command


def waitress_settings(config, options: dict) -> dict:
    """waitress.serve() keyword arguments: each `serve` option given, else its config key."""
    settings = {name: options.get(name) if options.get(name) is not None else config[key]
                for name, (key, _typ, _what) in SERVE_OPTIONS.items()}
    if settings["max_request_body_size"] is None:
        settings["max_request_body_size"] = 2 * config["MAX_CONTENT_LENGTH"]
    if settings["unix_socket"]:
        del settings["host"], settings["port"]
        settings["unix_socket_perms"] = str(settings["unix_socket_perms"])   # octal digits, even from JSON env
    else:
        del settings["unix_socket"], settings["unix_socket_perms"]
    # ProxyFix (PROXY_FIX_HOPS) alone decides which forwarding headers count; without it waitress drops them
    settings["clear_untrusted_proxy_headers"] = not config["PROXY_FIX_HOPS"]
    settings["asyncore_use_poll"] = True   # select() stops at 1024 descriptors, below a large connection limit
    return settings


def _fit_open_files(needed: int) -> None:
    """Raise this process's open-file limit to ``needed`` when it is lower, or refuse to start."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise click.ClickException(f"the connection limit needs {needed} open files but this account may open "
                                       f"only {hard} (ulimit -Hn); lower SERVE_CONNECTION_LIMIT or raise the limit")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def register(app) -> None:
    @app.cli.command("init-db")
    def init_db():
        """Create or upgrade the database schema (migrations)."""
        from flask_migrate import upgrade

        upgrade()
        click.echo(f"database ready: {db.engine.url.render_as_string(hide_password=True)}")

    @app.cli.command("create-instructor")
    @click.argument("username")
    @click.option("--name", default="")
    @click.option("--email", default=None)
    @click.password_option(envvar="GRADER_NEW_PASSWORD", help="or GRADER_NEW_PASSWORD")
    def create_instructor(username, name, email, password):
        """Create an instructor account (or reset its password: that revokes the account's API tokens)."""
        from .passwords import user_password_problem

        u = db.session.execute(db.select(User).filter_by(username=username)).scalar_one_or_none()
        if u is not None and u.role != "instructor":
            raise click.ClickException(f"{username} exists and is a {u.role}")
        u = u or User(username=username, role="instructor")
        u.name, u.email = name or u.name or username, email or u.email
        problem = user_password_problem(password, u)
        if problem:
            raise click.ClickException(problem)
        u.set_password(password)
        db.session.add(u)
        db.session.commit()
        click.echo(f"instructor {username} ready")

    @app.cli.command("create-cohort")
    @click.argument("name")
    def create_cohort(name):
        if db.session.execute(db.select(Cohort).filter_by(name=name)).scalar_one_or_none():
            raise click.ClickException(f"cohort {name} exists already")
        db.session.add(Cohort(name=name))
        db.session.commit()
        click.echo(f"cohort {name} created")

    @app.cli.command("import-roster")
    @click.argument("cohort")
    @click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
    def import_roster_cmd(cohort, csv_file):
        """Import students from CSV (student_number,name,email[,username,password]): all rows or none."""
        from .roster import RosterError, import_roster

        c = db.session.execute(db.select(Cohort).filter_by(name=cohort)).scalar_one_or_none()
        if c is None:
            raise click.ClickException(f"no cohort {cohort!r} (create it with create-cohort)")
        try:
            report = import_roster(c, Path(csv_file).read_text(encoding="utf-8-sig"))
        except (RosterError, UnicodeDecodeError) as e:
            errors = getattr(e, "errors", [f"the file is not UTF-8 text: {e}"])
            raise click.ClickException("nothing imported:\n  " + "\n  ".join(errors)) from None
        click.echo(f"{len(report.enrolled)} enrolled, {len(report.already)} already in {cohort}, "
                   f"{len(report.created)} new accounts")
        for user, pw in report.created:
            if pw:
                click.echo(f"  {user}\t{pw}")

    @app.cli.command("add-lab")
    @click.argument("cohort")
    @click.argument("lab")
    @click.option("--deadline", required=True, help="UTC, e.g. 2026-12-01T23:59")
    @click.option("--penalty-per-day", type=float, default=10.0, show_default=True)
    @click.option("--penalty-cap", type=float, default=50.0, show_default=True)
    @click.option("--max-submissions", type=int, default=0, show_default=True,
                  help="0: the service's SUBMIT_MAX_PER_ASSIGNMENT")
    @click.option("--cooldown", type=int, default=0, show_default=True,
                  help="seconds between submissions (0: the service's SUBMIT_COOLDOWN_SECONDS)")
    @click.option("--suite", default=None,
                  help="Debian release (kernel) its jobs are graded on: bookworm (6.1) or trixie (6.12); "
                       "default: the service's POOL_SUITE")
    def add_lab(cohort, lab, deadline, penalty_per_day, penalty_cap, max_submissions, cooldown, suite):
        """Assign labs/LAB to COHORT with its deadline and policies."""
        from .labs import available_labs, lab_spec, suite_problem
        from .policy import parse_utc

        c = db.session.execute(db.select(Cohort).filter_by(name=cohort)).scalar_one_or_none()
        if c is None:
            raise click.ClickException(f"no cohort {cohort!r}")
        if lab not in available_labs():
            raise click.ClickException(f"no lab {lab!r} in {current_app.config['LABS_DIR']}")
        why = suite and suite_problem(lab, suite)
        if why:
            raise click.ClickException(f"{lab} cannot be graded on {suite}: {why}")
        a = Assignment(cohort_id=c.id, lab=lab, title=lab_spec(lab).title, deadline=parse_utc(deadline),
                       penalty_per_day=penalty_per_day, penalty_cap=penalty_cap,
                       max_submissions=max_submissions, cooldown_seconds=cooldown, suite=suite)
        db.session.add(a)
        db.session.commit()
        on = f", graded on {suite}" if suite else ""
        click.echo(f"{lab} assigned to {cohort}, due {a.deadline:%Y-%m-%d %H:%M} UTC{on}")

    @app.cli.command("grade")
    @click.argument("assignment")
    @click.argument("folder", type=click.Path(exists=True, file_okay=False))
    @click.option("--wait/--no-wait", default=True, show_default=True)
    @click.option("--timeout", type=float, default=6 * 3600)
    def grade_cmd(assignment, folder, wait, timeout):
        """Grade a folder of collected submissions (FOLDER/<student>{/,.tar.gz,.zip}) for COHORT/LAB."""
        from .batches import grade_folder

        a = _assignment(assignment)
        batch, problems = grade_folder(a, Path(folder), created_by="cli")
        for p in problems:
            click.echo(f"not accepted: {p}", err=True)
        click.echo(f"batch {batch.id}: {len(batch.jobs)} submission(s) queued")
        if wait and batch.jobs:
            click.echo(f"finished: {follow_batch(batch.id, timeout, 'grading')}")

    @app.cli.command("regrade")
    @click.argument("assignment")
    @click.option("--wait/--no-wait", default=True, show_default=True)
    @click.option("--timeout", type=float, default=6 * 3600)
    def regrade_cmd(assignment, wait, timeout):
        """Regrade every student's latest submission for COHORT/LAB (behind live submissions)."""
        from .batches import regrade

        a = _assignment(assignment)
        batch = regrade(a, created_by="cli")
        click.echo(f"regrade batch {batch.id}: {len(batch.jobs)} job(s) queued")
        if wait and batch.jobs:
            click.echo(f"finished: {follow_batch(batch.id, timeout, 'regrading')}")

    @app.cli.command("export-grades")
    @click.argument("assignment")
    @click.option("-o", "--output", type=click.Path(dir_okay=False), help="default: stdout")
    @click.option("--json-dir", type=click.Path(file_okay=False), help="also write one JSON file per student")
    def export_grades(assignment, output, json_dir):
        """The gradebook CSV (late penalty applied) and, optionally, per-student JSON results."""
        import json

        from .gradebook import gradebook_csv, rows, student_results

        a = _assignment(assignment)
        text = gradebook_csv(a)
        if output:
            Path(output).write_text(text, encoding="utf-8")
            click.echo(f"wrote {output}", err=True)
        else:
            click.echo(text, nl=False)
        if json_dir:
            d = Path(json_dir)
            d.mkdir(parents=True, exist_ok=True)
            for r in rows(a):
                name = (r.user.student_number or r.user.username) + ".json"
                (d / name).write_text(json.dumps(student_results(a, r.user), indent=2) + "\n")
            click.echo(f"wrote per-student JSON into {d}", err=True)

    @app.cli.command("status")
    def status():
        """Cohorts, labs and the job queue."""
        for a in db.session.execute(db.select(Assignment)).scalars():
            counts = dict(db.session.execute(db.select(Job.state, db.func.count(Job.id)).where(
                Job.assignment_id == a.id).group_by(Job.state)).all())
            n = db.session.execute(db.select(db.func.count(Membership.id)).where(
                Membership.cohort_id == a.cohort_id)).scalar_one()
            click.echo(f"{a.cohort.name}/{a.lab}: {n} members, due {a.deadline:%Y-%m-%d %H:%M} UTC, jobs {counts}")

    @app.cli.command("worker")
    @click.option("--vms", type=int, default=None, help="QEMU lab VMs in the pool (GRADER_POOL_QEMU_VMS)")
    def worker_cmd(vms):
        """Run a grading worker with its VM pool until interrupted (SIGINT: let running jobs finish)."""
        from grader.errors import VMError

        from .pool import pool_from_config
        from .worker import Worker

        cfg = dict(current_app.config)
        if vms is not None:
            cfg["POOL_QEMU_VMS"] = vms
        try:
            pool = pool_from_config(cfg, progress=lambda m: click.echo(f"[pool] {m}", err=True),
                                    instance_path=current_app.instance_path)
        except VMError as e:
            raise click.ClickException(str(e)) from None
        Worker(current_app._get_current_object(), pool).run()

    @app.cli.command("serve")
    @_serve_options
    def serve(**options):
        """Serve the web UI and API with waitress (the app refuses a missing, short or placeholder secret
        key before this runs: grader/service/app.py)."""
        from waitress import serve as wserve

        app_ = current_app._get_current_object()
        settings = waitress_settings(app_.config, options)
        _fit_open_files(settings["connection_limit"] + settings["threads"] + 64)
        where = (f"unix:{settings['unix_socket']}" if settings.get("unix_socket")
                 else f"http://{settings['host']}:{settings['port']}/")
        click.echo(f"copylab grader on {where} (up to {settings['connection_limit']} connections, idle ones "
                   f"closed after {settings['channel_timeout']}s)", err=True)
        wserve(app_, ident="copylab", **settings)

    @app.cli.command("nginx-site")
    @click.option("--server-name", required=True, help="the name in the certificate, e.g. grader.example.edu")
    @click.option("--cert", required=True, type=click.Path(exists=True, dir_okay=False), help="PEM certificate chain")
    @click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="PEM private key")
    @click.option("--https-port", type=int, default=443, show_default=True)
    @click.option("--http-port", type=int, default=80, show_default=True)
    @click.option("--plain-http", type=click.Choice(["redirect", "refuse"]), default="redirect", show_default=True,
                  help="redirect: the HTTP port sends browsers to HTTPS; refuse: nothing listens on it")
    @click.option("--listen-address", default="*", show_default=True)
    @click.option("--header-timeout", type=int, default=10, show_default=True,
                  help="seconds a client has for its whole request header")
    @click.option("--body-timeout", type=int, default=20, show_default=True,
                  help="seconds a client may pause while sending a body")
    @click.option("--login-rate", type=int, default=20, show_default=True,
                  help="login attempts (POST /login, the password form) per minute per client address that nginx "
                       "passes on; more answer 429")
    @click.option("--login-burst", type=int, default=40, show_default=True,
                  help="login attempts per address nginx passes on at once beyond that rate (a lab room behind NAT)")
    @click.option("-o", "--output", type=click.Path(dir_okay=False), help="default: stdout")
    def nginx_site(output, **params):
        """The nginx site file (TLS, timeouts, body limit, login rate limit, forwarding headers) in front of this
        instance's `serve`."""
        from .deploy import DeployError, render_site

        try:
            text = render_site(current_app.config, **params)
        except DeployError as e:
            raise click.ClickException(str(e)) from None
        if current_app.config["PROXY_FIX_HOPS"] != 1:
            click.echo(f"warning: PROXY_FIX_HOPS is {current_app.config['PROXY_FIX_HOPS']}; behind this nginx set "
                       "PROXY_FIX_HOPS = 1, or every client has nginx's address and HTTPS is not seen", err=True)
        if output:
            Path(output).write_text(text, encoding="utf-8")
            click.echo(f"wrote {output}", err=True)
        else:
            click.echo(text, nl=False)

    @app.cli.command("demo-setup")
    @click.option("--students", type=int, default=3, show_default=True)
    def demo_setup(students):
        """A demo cohort: an instructor, students, lab1 due in a week. Prints the logins."""
        from flask_migrate import upgrade

        upgrade()
        logins = []
        if db.session.execute(db.select(User).filter_by(username="instructor")).scalar_one_or_none() is None:
            pw = secrets.token_urlsafe(9)
            u = User(username="instructor", name="Demo Instructor", role="instructor")
            u.set_password(pw)
            db.session.add(u)
            logins.append(("instructor", pw))
        cohort = db.session.execute(db.select(Cohort).filter_by(name="demo")).scalar_one_or_none()
        if cohort is None:
            cohort = Cohort(name="demo")
            db.session.add(cohort)
            db.session.flush()
            db.session.add(Assignment(cohort_id=cohort.id, lab="lab1", title="Where do my 16 bytes go?",
                                      deadline=(dt.datetime.utcnow() + dt.timedelta(days=7)).replace(microsecond=0),
                                      penalty_per_day=10, penalty_cap=50))
        for i in range(1, students + 1):
            name = f"student{i}"
            if db.session.execute(db.select(User).filter_by(username=name)).scalar_one_or_none() is None:
                pw = secrets.token_urlsafe(9)
                u = User(username=name, name=f"Demo Student {i}", role="student", student_number=f"S{i:04d}",
                         email=f"{name}@example.invalid")
                u.set_password(pw)
                db.session.add(u)
                db.session.flush()
                db.session.add(Membership(cohort_id=cohort.id, user_id=u.id))
                logins.append((name, pw))
        db.session.commit()
        for user, pw in logins:
            click.echo(f"login\t{user}\t{pw}")

