#!/usr/bin/env python3
"""Package a lab submission and, when configured, upload it to the grading service.

    handin.py --lab-dir DIR [--spec LAB_TOML] [--skeleton-sums FILE] [--out-dir DIR]
              [--config FILE] [--no-upload]

The files to hand in are `[submission].files` of the lab spec: `--spec` when given, else
`<lab-dir>/lab.toml`. They are packaged, flat, as regular files with mode 0644 and no owner
names, into `handin-<lab>-<UTC timestamp>.tar.gz` in the output folder (default: the lab folder).

The lab's optional answers file (`[submission].answers_file`, e.g. answers.txt) goes along when it
holds answers; when it is missing, empty or still the unchanged template, the archive is made
without it and a note says so (only the questions' points are lost). A link or an oversized
answers file is refused like a lab file.

Refused (exit status 2, nothing written) when a file is missing, not a regular file, empty,
larger than `[submission].max_file_bytes`, or byte-identical to the generated skeleton. The
skeleton is known from a SHA256SUMS manifest written by mkskeleton.py: `--skeleton-sums`, else
the first of `<lab-dir>/skeleton/SHA256SUMS` (repository layout), `<lab-dir>/SHA256SUMS` (a
student's copy of the skeleton), `<lab-dir>/.skeleton-sha256`.

Upload: when a grader URL and a token are known (environment `COPYLAB_GRADER_URL` and
`COPYLAB_TOKEN`, else the INI file `--config` or `$XDG_CONFIG_HOME/copylab/handin.conf`
(default `~/.config/copylab/handin.conf`) with `url` and `token` in a `[handin]` section or at
the top), the archive is POSTed as multipart form field `archive` to
`<url>/api/v1/labs/<lab>/submissions` with `Authorization: Bearer <token>`; the JSON receipt
(`id`, `sha256`) is printed. On an HTTP or network error the reason is printed, the archive is
kept, and the exit status is 3. The archive is kept in every case, so the student holds the
exact bytes the receipt's sha256 names.

The token is sent only over https://, or over plain http:// to this machine (localhost, 127.0.0.0/8,
::1); any other http:// URL is refused (exit status 2) before anything is sent. Redirects are never
followed: the token would go along to wherever the answer points (the reason names the new address,
exit status 3).

Standard library only (Python 3.11).
"""

from __future__ import annotations

import argparse
import configparser
import datetime as dt
import hashlib
import io
import ipaddress
import json
import os
import stat
import sys
import tarfile
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

EXIT_REFUSED = 2
EXIT_UPLOAD_FAILED = 3
UPLOAD_TIMEOUT = 60.0
SUMS_CANDIDATES = ("skeleton/SHA256SUMS", "SHA256SUMS", ".skeleton-sha256")


class Refused(Exception):
    """The submission cannot be handed in; the message says why."""


def load_spec(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise Refused(f"lab spec {path} not found (pass --spec PATH/lab.toml)") from None
    except tomllib.TOMLDecodeError as exc:
        raise Refused(f"lab spec {path} is not valid TOML: {exc}") from None


def submission_files(spec: dict, spec_path: Path) -> list[str]:
    files = spec.get("submission", {}).get("files")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise Refused(f"{spec_path}: [submission].files must be a non-empty list of file names")
    for name in files:
        if name != Path(name).name or name in (".", ".."):
            raise Refused(f"{spec_path}: submission file {name!r} is not a plain file name")
    return files


def read_sums(path: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        sums[name.strip().lstrip("*")] = digest.lower()
    return sums


def find_sums(lab_dir: Path, explicit: Path | None) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise Refused(f"skeleton manifest {explicit} not found")
        return explicit
    for rel in SUMS_CANDIDATES:
        if (lab_dir / rel).is_file():
            return lab_dir / rel
    return None


def answers_file(spec: dict, spec_path: Path) -> str | None:
    name = spec.get("submission", {}).get("answers_file")
    if name is None:
        return None
    if not isinstance(name, str) or name != Path(name).name or name in (".", ".."):
        raise Refused(f"{spec_path}: [submission].answers_file {name!r} is not a plain file name")
    return name


def optional_answers(
    lab_dir: Path, name: str, sums: dict[str, str], max_bytes: int | None
) -> tuple[bytes | None, str]:
    """(content or None, why it is left out). Refused for a link or an oversized file."""
    try:
        st = (lab_dir / name).lstat()
    except FileNotFoundError:
        return None, f"no {name}"
    # links, folders and oversized files are refused as for the lab's files
    data = check_files(lab_dir, [name], {}, max_bytes)[name] if st.st_size else b""
    if not data.strip():
        return None, f"{name} is empty"
    if sums.get(name) == hashlib.sha256(data).hexdigest():
        return None, f"{name} is the unchanged template"
    return data, ""


def check_files(
    lab_dir: Path,
    files: list[str],
    sums: dict[str, str],
    max_bytes: int | None,
) -> dict[str, bytes]:
    """Return name -> content, or raise Refused listing every problem."""
    problems: list[str] = []
    contents: dict[str, bytes] = {}
    for name in files:
        path = lab_dir / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            problems.append(f"{name}: missing (expected in {lab_dir})")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(
                f"{name}: not a regular file (symbolic links and folders are not handed in)"
            )
            continue
        data = path.read_bytes()
        if not data:
            problems.append(f"{name}: empty")
            continue
        if max_bytes is not None and len(data) > max_bytes:
            problems.append(f"{name}: {len(data)} bytes, more than the limit of {max_bytes}")
            continue
        if sums.get(name) == hashlib.sha256(data).hexdigest():
            problems.append(f"{name}: unchanged skeleton file (do the TODOs first)")
            continue
        contents[name] = data
    if problems:
        raise Refused("cannot hand in:\n" + "\n".join(f"  {p}" for p in problems))
    return contents


def archive_name(lab: str, now: dt.datetime) -> str:
    return f"handin-{lab}-{now.strftime('%Y%m%dT%H%M%SZ')}.tar.gz"


def build_archive(contents: dict[str, bytes], mtime: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.type = tarfile.REGTYPE
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_archive(out_dir: Path, lab: str, data: bytes) -> Path:
    now = dt.datetime.now(dt.timezone.utc)
    base = archive_name(lab, now)
    path = out_dir / base
    n = 1
    while True:
        try:
            with path.open("xb") as fh:
                fh.write(data)
            os.chmod(path, 0o644)
            return path
        except FileExistsError:
            path = out_dir / base.replace(".tar.gz", f"-{n}.tar.gz")
            n += 1


def upload_config(config_path: Path | None) -> tuple[str | None, str | None]:
    """(url, token) from the environment, else from the INI file."""
    url = os.environ.get("COPYLAB_GRADER_URL") or None
    token = os.environ.get("COPYLAB_TOKEN") or None
    if url and token:
        return url, token
    if config_path is None:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        config_path = base / "copylab" / "handin.conf"
    if config_path.is_file():
        text = config_path.read_text(encoding="utf-8")
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(text if text.lstrip().startswith("[") else "[handin]\n" + text)
        except configparser.Error as exc:
            raise Refused(f"{config_path}: {exc}") from None
        section = parser["handin"] if parser.has_section("handin") else parser.defaults()
        url = url or section.get("url") or None
        token = token or section.get("token") or None
    return url, token


def url_problem(url: str) -> str | None:
    """None when the token may be sent to ``url``; else why not."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"grader URL {url!r} is not an http(s) URL"
    if parts.scheme == "https":
        return None
    host = parts.hostname
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host.lower() == "localhost"
    if local:
        return None
    return (
        f"grader URL {url} is plain http:// to another machine: the token would cross the "
        "network readable by anyone on the way; use the https:// address of the grader"
    )


class RedirectRefused(OSError):
    """The grader answered with a redirect; following it would send the token along."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise RedirectRefused(
            f"the grader answered HTTP {code} redirecting to {newurl}; handin does not follow "
            "redirects (the token would go along): set url to the grader's own address"
        )


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "copylab-" + uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/gzip\r\n\r\n"
    ).encode("ascii")
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


def upload(url: str, token: str, lab: str, archive: Path, data: bytes) -> dict:
    problem = url_problem(url)
    if problem:
        raise OSError(problem)
    endpoint = f"{url.rstrip('/')}/api/v1/labs/{urllib.parse.quote(lab, safe='')}/submissions"
    body, ctype = multipart("archive", archive.name, data)
    req = urllib.request.Request(
        endpoint,
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": ctype,
            "Accept": "application/json",
            "User-Agent": "copylab-handin/1",
        },
    )
    with urllib.request.build_opener(_NoRedirects).open(req, timeout=UPLOAD_TIMEOUT) as resp:
        raw = resp.read()
    try:
        receipt = json.loads(raw)
    except ValueError:
        raise OSError(
            f"{endpoint} answered with something that is not JSON: {raw[:200]!r}"
        ) from None
    if not isinstance(receipt, dict) or "id" not in receipt or "sha256" not in receipt:
        raise OSError(
            f"{endpoint} answered without a receipt (expected keys id and sha256): "
            f"{raw[:200]!r}"
        )
    return receipt


def http_error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read(2000).decode("utf-8", "replace").strip()
    except OSError:
        body = ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            body = str(parsed.get("error") or parsed.get("message") or parsed.get("detail") or body)
    except ValueError:
        pass
    text = f"HTTP {exc.code} {exc.reason}"
    return f"{text}: {body[:500]}" if body else text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Package and hand in a lab submission.")
    ap.add_argument(
        "--lab-dir", type=Path, default=Path("."), help="folder with the files (default: .)"
    )
    ap.add_argument("--spec", type=Path, help="lab.toml (default: <lab-dir>/lab.toml)")
    ap.add_argument("--skeleton-sums", type=Path, help="SHA256SUMS of the skeleton")
    ap.add_argument(
        "--out-dir", type=Path, help="where to write the archive (default: the lab folder)"
    )
    ap.add_argument(
        "--config",
        type=Path,
        help="INI file with url and token " "(default: ~/.config/copylab/handin.conf)",
    )
    ap.add_argument("--no-upload", action="store_true", help="only write the archive")
    args = ap.parse_args(argv)

    lab_dir: Path = args.lab_dir
    try:
        if not lab_dir.is_dir():
            raise Refused(f"lab folder {lab_dir} does not exist")
        spec_path = args.spec or lab_dir / "lab.toml"
        spec = load_spec(spec_path)
        lab = str(spec.get("lab", {}).get("id") or lab_dir.resolve().name)
        files = submission_files(spec, spec_path)
        max_bytes = spec.get("submission", {}).get("max_file_bytes")
        sums_path = find_sums(lab_dir, args.skeleton_sums)
        if sums_path is None:
            print(
                "handin: warning: no skeleton manifest (SHA256SUMS) found; "
                "cannot tell unchanged skeleton files apart",
                file=sys.stderr,
            )
            sums = {}
        else:
            sums = read_sums(sums_path)
        limit = max_bytes if isinstance(max_bytes, int) else None
        contents = check_files(lab_dir, files, sums, limit)
        answers = answers_file(spec, spec_path)
        if answers is not None:
            data, why = optional_answers(lab_dir, answers, sums, limit)
            if data is None:
                print(
                    f"handin: note: {why}: handing in without it "
                    "(you lose only the questions' points)",
                    file=sys.stderr,
                )
            else:
                contents[answers] = data
        url, token = (None, None) if args.no_upload else upload_config(args.config)
        if url and token and url_problem(url):
            raise Refused(url_problem(url))
    except Refused as exc:
        print(f"handin: {exc}", file=sys.stderr)
        return EXIT_REFUSED

    data = build_archive(contents, int(dt.datetime.now(dt.timezone.utc).timestamp()))
    # an absolute path: the student copies it from this output to wherever the course collects it
    out_dir = (args.out_dir or lab_dir).resolve()
    try:
        archive = write_archive(out_dir, lab, data)
    except OSError as exc:
        print(f"handin: cannot write the archive in {out_dir}: {exc}", file=sys.stderr)
        return 1
    digest = hashlib.sha256(data).hexdigest()
    print(f"handin: wrote {archive} ({', '.join(contents)}; sha256 {digest})")

    if args.no_upload:
        return 0
    if not (url and token):
        missing = " and ".join(
            n for n, v in (("COPYLAB_GRADER_URL", url), ("COPYLAB_TOKEN", token)) if not v
        )
        print(
            f"handin: not uploaded ({missing} not set): nothing was submitted; "
            f"hand in {archive} as your course says"
        )
        return 0

    try:
        receipt = upload(url, token, lab, archive, data)
    except urllib.error.HTTPError as exc:
        print(f"handin: upload to {url} failed: {http_error_text(exc)}", file=sys.stderr)
        print(f"handin: the archive is kept at {archive}", file=sys.stderr)
        return EXIT_UPLOAD_FAILED
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        print(f"handin: upload to {url} failed: {reason}", file=sys.stderr)
        print(f"handin: the archive is kept at {archive}", file=sys.stderr)
        return EXIT_UPLOAD_FAILED

    print(f"handin: submitted, receipt id {receipt['id']} sha256 {receipt['sha256']}")
    if str(receipt["sha256"]).lower() != digest:
        print(
            f"handin: warning: the receipt's sha256 differs from the archive's ({digest}); "
            f"the archive is kept at {archive}",
            file=sys.stderr,
        )
        return EXIT_UPLOAD_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
