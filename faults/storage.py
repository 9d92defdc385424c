"""Part ``storage``: what one student can make the service keep, at the default settings.

The real web process (`python -m flask --app grader serve`, waitress, SQLite) on an instance folder
that an operator made world-readable beforehand (mode 0755, its config.py 0644, under a 0755 folder),
spoken to over 127.0.0.1 only. Three bounded runs:

- trailing data: archives with bytes past their end (tar after its end-of-archive blocks, a tar padded
  to 1 MiB, gzip trailing garbage or extra members, zip before, between and after its records, an
  oversized zip comment), each once; every one must be refused and nothing of it kept;
- rate: one token submits the largest valid upload (an uncompressed tar of three files at the lab's
  size cap) over ATTACKERS parallel connections as fast as the service answers for ``window``
  seconds; the bytes kept on disk per accepted submission over the shortest gap between two
  acceptances give the bytes per hour (the quota and the storage budget, which end it later, are
  tested in tests/service/test_storage.py);
- files: every file and folder of the instance (database and its WAL files, queue, store, artifacts
  written through the store as a worker writes them) checked for group/other permission bits and,
  when run as root, opened as user ``nobody``.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from faults.report import Figure, ratio, zero
from faults.upload_archives import M, tar_bytes
from support.http import Client, multipart
from support.service import ServiceProcesses, add_token, in_process_app

PART = "storage"
MB = 1_000_000
TARGET_MB_PER_HOUR = 100   # one student at the defaults (70,000 MB/h without limits)
ATTACKERS = 4              # parallel connections of the attacking token


def tar_of(files: dict[str, bytes], gz: bool) -> bytes:
    """A plain ustar archive (gzip-compressed when `gz`) of regular files, as the lab's tools write."""
    return tar_bytes([M(n, d) for n, d in files.items()], gz, fmt=tarfile.USTAR_FORMAT)


def zip_of(files: dict[str, bytes], comment: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files.items():
            z.writestr(n, d)
        z.comment = comment
    return buf.getvalue()


def trailing_cases(files: dict[str, bytes]) -> dict[str, bytes]:
    """Valid archives of the lab's files with bytes the lab does not need before, between or after
    their records."""
    tar, tgz, zp = tar_of(files, False), tar_of(files, True), zip_of(files)
    junk = os.urandom(4096)
    z_first = zip_of(dict(list(files.items())[:1]))
    return {
        "tar + junk": tar + junk,
        "tar padded with zeros to 1 MiB": tar.ljust(1024 * 1024, b"\0"),
        "tar + a second tar": tar + tar,
        "tar.gz + junk": tgz + junk,
        "tar.gz + zeros": tgz + bytes(65536),
        "tar.gz + a gzip member of junk": tgz + gzip.compress(os.urandom(200_000)),
        "zip + junk": zp + junk,
        "junk + zip": b"PK\x03\x04" + junk + zp,
        "zip + 60 KB comment": zip_of(files, b"c" * 60_000),
        "zip with junk between members": zip_with_gap(files),
        "two zips": z_first + zp,
    }


def zip_with_gap(files: dict[str, bytes]) -> bytes:
    """A stored zip whose second member starts 4096 junk bytes after the first, offsets consistent."""
    import struct
    import zlib

    out, central = bytearray(), bytearray()
    for k, (name, data) in enumerate(files.items()):
        if k == 1:
            out += os.urandom(4096)
        offset, crc, nb = len(out), zlib.crc32(data), name.encode()
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, crc, len(data), len(data),
                           len(nb), 0) + nb + data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x0314, 20, 0, 0, 0, 0x21, crc, len(data),
                               len(data), len(nb), 0, 0, 0, 0, 0o100644 << 16, offset) + nb
    return bytes(out + central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(files), len(files),
                                             len(central), len(out), 0))


def largest_upload(names: list[str], cap: int) -> bytes:
    """An uncompressed tar of the lab's files, each exactly at the size cap (printable text)."""
    files = {}
    for i, n in enumerate(names):
        line = f"/* {n} {i} padding the file to the lab's size cap */\n".encode()
        files[n] = (line * (cap // len(line) + 1))[:cap - 1] + b"\n"
    return tar_of(files, gz=False)


def setup(app, students: list[str]) -> dict:
    """A cohort with lab1 (no quota or cooldown of its own: the service's defaults apply), the
    students and one API token each."""
    import datetime as dt

    from grader.service.labs import lab_spec
    from grader.service.models import Assignment, Cohort, Membership, User, db

    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        c = Cohort(name="storage")
        db.session.add(c)
        db.session.flush()
        db.session.add(Assignment(cohort_id=c.id, lab="lab1", title="lab1", deadline=dt.datetime(2099, 1, 1)))
        ids = {}
        for k, name in enumerate(students):
            u = User(username=name, name=name, role="student", student_number=f"ST{k}")
            db.session.add(u)
            db.session.flush()
            db.session.add(Membership(cohort_id=c.id, user_id=u.id))
            ids[name] = u.id
        db.session.commit()
        lab = lab_spec("lab1")
        cfg = {k: app.config[k] for k in ("SUBMIT_COOLDOWN_SECONDS", "SUBMIT_MAX_PER_ASSIGNMENT",
                                          "STORAGE_BUDGET_BYTES")}
        out = {"files": list(lab.files), "cap": lab.max_file_bytes, "config": cfg}
    out["tokens"] = {name: add_token(app, uid) for name, uid in ids.items()}
    return out


def kept(app, username: str) -> tuple[int, int]:
    """(submissions, bytes on disk in the store) of ``username``."""
    from grader.service.models import Submission, User, db
    from grader.service.store import Store

    with app.app_context():
        db.session.expire_all()
        keys = db.session.execute(db.select(Submission.storage_key).join(User, User.id == Submission.user_id)
                                  .where(User.username == username)).scalars().all()
        store = Store(app.config["STORE_DIR"])
        return len(keys), sum(store.kept_bytes(k) for k in keys)


def open_to_others(instance: Path) -> tuple[list[str], int]:
    """(paths with group/other permission bits, how many paths were checked)."""
    bad, n = [], 0
    for dirpath, dirnames, filenames in os.walk(instance):
        for name in [""] + dirnames + filenames if dirpath == str(instance) else dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            n += 1
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                bad.append(f"{p.relative_to(instance)} {st.st_mode & 0o777:o}")
    return bad, n


def readable_by_nobody(instance: Path) -> list[str] | None:
    """The instance's paths user ``nobody`` can read or list (None when not run as root). A forked
    child drops to nobody and tries each path (exec'ing an interpreter as nobody may itself be
    refused)."""
    if os.geteuid() != 0:
        return None
    import pwd

    who = pwd.getpwnam("nobody")
    paths = [instance] + sorted(instance.rglob("*"))
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns into the caller's code
        code = 1
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(who.pw_gid)
            os.setuid(who.pw_uid)
            ok = []
            for p in paths:
                try:
                    if p.is_dir():
                        os.listdir(p)
                    else:
                        os.close(os.open(p, os.O_RDONLY))
                    ok.append(str(p.relative_to(instance)))
                except OSError:
                    pass
            os.write(wfd, json.dumps(ok).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"the check as nobody failed (wait status {status})")
    return json.loads(out)


def measure(window: float | None = None, cooldown: int | None = None, progress=print) -> dict:
    """``cooldown``: override SUBMIT_COOLDOWN_SECONDS (a fast test); None keeps the default, and the
    rate run then lasts two cooldowns and a bit unless ``window`` says otherwise."""
    from grader.service.store import Store

    t0 = time.monotonic()
    sandbox = Path(tempfile.mkdtemp(prefix="copylab-faults-storage-"))
    os.chmod(sandbox, 0o755)   # only the instance's own modes may keep other users out
    instance = sandbox / "instance"
    instance.mkdir(mode=0o755)
    os.chmod(instance, 0o755)
    conf = f"SECRET_KEY = {secrets.token_urlsafe(48)!r}\n"
    if cooldown is not None:
        conf += f"SUBMIT_COOLDOWN_SECONDS = {int(cooldown)}\n"
    (instance / "config.py").write_text(conf)
    os.chmod(instance / "config.py", 0o644)
    try:
        with in_process_app(instance) as app:
            world = setup(app, ["padder", "control", "attacker"])
        cfg = world["config"]
        window = window or 2 * cfg["SUBMIT_COOLDOWN_SECONDS"] + 8
        good = {n: (Path(__file__).resolve().parents[1] / "labs" / "lab1" / "solution" / n).read_bytes()
                for n in world["files"]}
        with ServiceProcesses(instance, progress=progress, logs=sandbox) as server:
            def post(token: str, data: bytes, via: Client | None = None):
                body, ctype = multipart([("archive", "handin.tar.gz", data)])
                return (via or client).request("POST", "/api/v1/labs/lab1/submissions", body,
                                      {"Authorization": f"Bearer {token}", "Content-Type": ctype})

            client = Client(server.port)
            # 1. trailing data
            cases = trailing_cases(good)
            trailing = {}
            for what, data in cases.items():
                r = post(world["tokens"]["padder"], data)
                trailing[what] = {"status": r.status, "bytes": len(data),
                                  "message": (r.json() or {}).get("error", r.text()[:200])}
            control = post(world["tokens"]["control"], tar_of(good, gz=True))
            progress(f"storage: {len(cases)} archives with trailing data sent; control answered {control.status}")
            # 2. rate: the largest valid upload, as fast as the service answers
            big = largest_upload(world["files"], world["cap"])
            accepted, statuses, retry_after = [], [], []
            start = time.monotonic()

            def attacker() -> None:   # one of ATTACKERS connections of the same token
                mine = Client(server.port)
                while time.monotonic() - start < window:
                    r = post(world["tokens"]["attacker"], big, mine)
                    statuses.append(r.status)
                    if r.status == 201:
                        accepted.append(time.monotonic() - start)
                    elif r.status == 429:
                        retry_after.append(int(r.headers.get("retry-after", 0)))
                mine.close()
            with ThreadPoolExecutor(ATTACKERS) as ex:
                for f in [ex.submit(attacker) for _ in range(ATTACKERS)]:
                    f.result()
            accepted.sort()
            refused = statuses.count(429)
            other = {str(c): statuses.count(c) for c in set(statuses) if c not in (201, 429)}
            progress(f"storage: attacker {len(accepted)} accepted, {refused} refused (429) in {window:.0f} s")
            client.close()
            server_errors = server.exceptions()
        with in_process_app(instance) as app:
            padder_subs, padder_bytes = kept(app, "padder")
            n_acc, attacker_bytes = kept(app, "attacker")
            # artifacts as a worker writes them (Store.put_artifacts), from a run folder open to all
            src = sandbox / "run-out"
            src.mkdir()
            (src / "kmsg.txt").write_text("copytrace: [COPY1]\n")
            os.chmod(src / "kmsg.txt", 0o666)
            Store(app.config["STORE_DIR"]).put_artifacts(1, src)
        bad_modes, checked = open_to_others(instance)
        by_nobody = readable_by_nobody(instance)
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)

    kept_trailing = sum(1 for v in trailing.values() if v["status"] == 201) + padder_subs
    per_sub = attacker_bytes / n_acc if n_acc else 0
    gaps = [b - a for a, b in zip(accepted, accepted[1:])]
    # the rate the service let through, measured: bytes per acceptance over the shortest gap seen
    bytes_hour = per_sub * 3600 / min(gaps) if gaps else None
    readable = sorted(set(bad_modes) | set(by_nobody or []))
    crashes = [f"{w}: {v['status']}" for w, v in trailing.items() if not 0 <= v["status"] < 500]
    crashes += [f"rate run: HTTP {k} x{n}" for k, n in other.items() if not 0 <= int(k) < 500]
    crashes += [] if 0 <= control.status < 500 else [f"control: {control.status}"]
    budget, quota = cfg["STORAGE_BUDGET_BYTES"], cfg["SUBMIT_MAX_PER_ASSIGNMENT"]
    figures = [
        Figure(PART, "bytes stored per student per hour at the defaults (one token sending the largest valid "
               f"upload over {ATTACKERS} connections as fast as the service answers, extrapolated)",
               "?" if bytes_hour is None else f"{bytes_hour / MB:.1f} MB", f"<= {TARGET_MB_PER_HOUR} MB",
               bytes_hour is not None and bytes_hour <= TARGET_MB_PER_HOUR * MB,
               f"{len(accepted)} accepted, {refused} refused (429) in {window:.0f} s; {per_sub / 1000:.0f} kB kept "
               f"per submission, acceptances {min(gaps, default=0):.1f} s apart (cooldown "
               f"{cfg['SUBMIT_COOLDOWN_SECONDS']} s); then the quota ({quota or 'none'} per lab) and the budget "
               f"({budget / MB:.1f} MB per student, all labs) stop it; before: 60 in 3 s, about 70 GB/h"),
        zero(PART, "submissions with trailing data kept", kept_trailing,
             f"{len(cases)} archives with bytes before, between or after their records, each refused with the "
             f"reason; {padder_bytes} bytes kept for them"),
        ratio(PART, "a well-formed hand-in next to them accepted", int(control.status == 201), 1,
              "" if control.status == 201 else f"answered {control.status}: {control.text()[:200]}"),
        zero(PART, "instance files readable by other users", len(readable),
             f"{checked} files and folders (database and WAL, queue, store, artifacts, config.py) of an instance "
             "folder made 0755 with a 0644 config.py beforehand; "
             + ("also opened as nobody" if by_nobody is not None else "modes only (not root: not tried as "
                                                                      "another user)")
             + (f"; {', '.join(readable[:5])}" if readable else "")),
        zero(PART, "server errors (HTTP 5xx or dropped connection)", len(crashes),
             "; ".join(crashes[:3] + server_errors[:2])),
    ]
    return {"figures": [f.as_dict() for f in figures], "trailing": trailing,
            "accepted_at_s": [round(a, 2) for a in accepted], "refused_429": refused, "other_statuses": other,
            "retry_after": sorted(set(retry_after)), "kept_bytes_attacker": attacker_bytes,
            "bytes_per_submission": per_sub, "bytes_per_hour": bytes_hour, "config": cfg,
            "open_to_others": bad_modes[:20], "readable_by_nobody": by_nobody, "paths_checked": checked,
            "server_log_exceptions": server_errors,
            "elapsed_s": round(time.monotonic() - t0, 1)}
