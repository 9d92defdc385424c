"""Command line: ``python -m grader grade LAB SUBMISSION [--vm ...] [--json]``, ``python -m grader demo``
and ``python -m grader export-kit DEST [--format dir|tar|git] [--force]`` (the student kit)
(the service's own commands are ``flask --app grader ...``).

Exit status: 0 when grading finished (whatever the score) or the kit was exported, 1 with a one-line
reason when it could not, 2 for a usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from grader.errors import GraderError

REPO = Path(__file__).resolve().parents[1]
SUITE_CHOICES = ("bookworm", "trixie")     # labs/tools/manifest.json "kernels" (tests/unit/test_grader_cli.py)


def _progress(msg: str) -> None:
    print(f"[grader {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def open_vm(spec: str | None, known_hosts: str | None, key: str | None, shape: str = "",
            suite: str | None = None):
    """--vm: omitted or 'golden' (the newest cached golden image of --suite, default bookworm, via the
    QEMU runner), a golden image folder, or ssh://grader@HOST:PORT for an inventory host (with
    --known-hosts and --key). A QEMU VM has the shape the lab asks for ([vm] nics)."""
    from grader.vm.labvm import QemuLabVM, StaticHostVM, find_golden, shape_options

    if suite and not (spec is None or spec == "golden"):
        raise GraderError(f"--suite {suite} chooses a cached golden image: it cannot be combined with --vm {spec}")
    if spec is None or spec == "golden":
        return QemuLabVM(golden=find_golden(suite=suite), progress=_progress, **shape_options(shape))
    if spec.startswith("ssh://"):
        rest = spec[len("ssh://"):]
        user, _, hostport = rest.rpartition("@")
        host, _, port = hostport.partition(":")
        if not (known_hosts and key):
            raise GraderError("--vm ssh://... needs --known-hosts FILE (the pinned host key) and --key FILE")
        return StaticHostVM(host=host, port=int(port or 22), key=Path(key), known_hosts=Path(known_hosts),
                            user=user or "grader")
    if Path(spec).is_dir():
        return QemuLabVM(golden=Path(spec), progress=_progress, **shape_options(shape))
    raise GraderError(f"--vm {spec!r}: expected 'golden', a golden image folder or ssh://user@host:port")


def grade_command(args) -> int:
    from grader.engine.labspec import load_lab
    from grader.engine.result import render_text
    from grader.engine.run import grade
    from grader.submission import Limits, materialize

    lab = load_lab(args.lab)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"copylab-{lab.id}-"))
    with tempfile.TemporaryDirectory(prefix="copylab-sub-") as tmp:
        sub = materialize(Path(args.submission), lab.files, Path(tmp), Limits(file_bytes=lab.max_file_bytes),
                          lab.optional_files)
        vm = open_vm(args.vm, args.known_hosts, args.key, lab.vm_shape, args.suite)
        try:
            _progress(f"grading {args.submission} for {lab.id}")
            outcome = grade(lab, vm, sub, out)
        finally:
            vm.close()
    result = outcome.result
    if args.gradescope:
        from grader.engine.result import to_gradescope

        (out / "results.json").write_text(json.dumps(to_gradescope(result), indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render_text(result))
        print(f"\nresult and artifacts: {out}")
    return 0


def demo_command(args) -> int:
    """`make demo`: the grader service with a demo cohort, the lab 1 solution and skeleton graded on a
    real lab VM, served on localhost (grader/service/demo.py)."""
    from grader.service.demo import main as demo_main

    return demo_main(instance=Path(args.out) if args.out else None, port=args.port)


def export_kit_command(args) -> int:
    """The student kit (grader/kit.py): progress on stderr, the kit's path on stdout."""
    from grader.kit import export_kit

    try:
        kit = export_kit(REPO, Path(args.dest), fmt=args.format, force=args.force, progress=_progress,
                         suite=args.suite)
    except OSError as e:
        raise GraderError(str(e)) from e
    print(kit)
    return 0


COMMANDS = {"grade": (grade_command, "grade"), "demo": (demo_command, "grade"),
            "export-kit": (export_kit_command, "export")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m grader", description="copylab grader")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grade", help="grade one submission on a lab VM")
    g.add_argument("lab", help="lab id (labs/<lab>) or path to a lab folder")
    g.add_argument("submission", help="a folder or .tar.gz/.zip archive holding the lab's files")
    g.add_argument("--vm", help="'golden' (default), a golden image folder, or ssh://grader@HOST:PORT")
    g.add_argument("--suite", choices=SUITE_CHOICES,
                   help="with --vm golden: the Debian release (kernel) of the lab VM, bookworm (6.1, the default) "
                        "or trixie (6.12)")
    g.add_argument("--known-hosts", help="known_hosts file with the inventory host's pinned key")
    g.add_argument("--key", help="private key of the grader account (inventory host)")
    g.add_argument("--out", help="folder for result.json and artifacts (default: a new temp folder)")
    g.add_argument("--json", action="store_true", help="print the result JSON instead of text")
    g.add_argument("--gradescope", action="store_true", help="also write a Gradescope results.json")
    d = sub.add_parser("demo", help="the grader service with a demo cohort, the lab 1 solution and skeleton "
                                    "graded on a lab VM, served on localhost")
    d.add_argument("--out", help="instance folder (default build/demo-instance; replaced)")
    d.add_argument("--port", type=int, help="port on 127.0.0.1 (default 8000, else a free one)")
    k = sub.add_parser("export-kit", help="export the student kit (no solutions, hidden checks or secrets)")
    k.add_argument("dest", help="the kit's folder, or its .tar.gz with --format tar")
    k.add_argument("--format", choices=("dir", "tar", "git"), default="dir",
                   help="a folder (default), a reproducible .tar.gz, or a folder that is a git repository")
    k.add_argument("--force", action="store_true", help="replace DEST when it exists and is not empty")
    k.add_argument("--suite", choices=SUITE_CHOICES,
                   help="the course's Debian release: bookworm (12, kernel 6.1; the default) or trixie (13, 6.12)")
    args = ap.parse_args(argv)
    command, verb = COMMANDS[args.cmd]
    try:
        return command(args)
    except GraderError as e:
        print(f"grader: cannot {verb}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("grader: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
