"""Load and validate labs/<lab>/lab.toml."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LabSpecError
from .checkrun import REGISTRY, topo_order
from .phases import DEFAULT_TIMEOUTS, PHASE_NAMES

REPO_ROOT = Path(__file__).resolve().parents[2]
LABS_DIR = REPO_ROOT / "labs"

CHECK_KEYS = {"name", "kind", "points", "depends", "hint", "title", "part"}
# "lab": the checks of the lab's score; "questions": the answers file's checks, scored apart so that
# a submission without answers keeps its lab score
PARTS = ("lab", "questions")
# the VM shapes a lab may ask for ([vm] nics); grader/vm/labvm.py turns a shape into runner options
VM_SHAPES = ("", "e1000e-pair")
# how the receiver is started: as the program account (lab 1), or through the helper's net-run inside
# the receiver's network namespace (lab 2)
RECEIVER_VIA = ("", "net-run")


@dataclass
class CheckSpec:
    name: str
    kind: str
    points: int
    depends: list[str] = field(default_factory=list)
    hint: str = ""
    title: str = ""
    options: dict = field(default_factory=dict)
    part: str = "lab"


@dataclass
class LabSpec:
    id: str
    title: str
    dir: Path
    files: list[str]
    max_file_bytes: int
    build_files: list[str]
    build_command: str
    build_outputs: list[str]
    kernel: str
    module: str
    module_file: str
    load_args: list[str]
    receiver_command: str
    sender_command: str
    send_comm: str
    recv_comm: str
    message_length: int
    message_alphabet: str
    port_range: tuple[int, int]
    timeouts: dict[str, float]
    checks: list[CheckSpec]
    max_score: int                       # the lab part's points ([grading] total)
    raw: dict = field(default_factory=dict, repr=False)
    # every kernel release (grader/profiles/<release>.toml) the lab runs on besides `kernel`, the
    # default profile taken until the VM says which kernel it runs
    kernels: list[str] = field(default_factory=list)
    # sources of evidence from outside the guest (grader/engine/hostevidence.py) the lab asks for;
    # those in host_evidence_required fail the verify phase when the VM cannot offer them
    host_evidence: list[str] = field(default_factory=list)
    host_evidence_required: list[str] = field(default_factory=list)
    # [vm] nics: the VM shape ("" = the plain lab VM; "e1000e-pair" = lab 2's two network cards)
    vm_shape: str = ""
    # [network]: the helper command (args) that sets the lab's network up in verify, before student
    # code; how the receiver starts; the address the programs use; the driver's copybreak
    net_setup: list[str] = field(default_factory=list)
    receiver_via: str = ""
    receiver_addr: str = "127.0.0.1"
    copybreak: int | None = None
    # an optional submission file of `key: value` answers, read by the answer checks on the grader
    # (never uploaded to the VM); a submission without it loses only those checks' points
    answers_file: str | None = None
    # addresses printed as examples in the handout and the narrative: a record that repeats one
    # was copied from there, and the feedback says so
    example_addresses: frozenset[int] = frozenset()

    @property
    def questions_max(self) -> int:
        return sum(c.points for c in self.checks if c.part == "questions")

    @property
    def optional_files(self) -> list[str]:
        return [self.answers_file] if self.answers_file else []

    def supported_kernels(self) -> list[str]:
        """The kernel releases a lab VM may run for this lab, the default first."""
        return list(dict.fromkeys([self.kernel, *self.kernels]))

    def timeout(self, phase: str) -> float:
        return float(self.timeouts[phase])

    def check(self, name: str) -> CheckSpec:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


def _kernels(run: dict, where: str) -> list[str]:
    """[run] kernels: a list of releases, or a table naming one release per `uname -m`."""
    kernels = run.get("kernels", [])
    if isinstance(kernels, dict):
        kernels = list(kernels.values())
    if not isinstance(kernels, list):
        raise LabSpecError(f"{where}: [run] kernels must be a list of kernel releases")
    for release in kernels:
        if not isinstance(release, str) or not re.fullmatch(r"[0-9][A-Za-z0-9.+_-]*", release):
            raise LabSpecError(f"{where}: [run] kernels: {release!r} is not a kernel release")
    return kernels


def _get(d: dict, key: str, typ, where: str, default=...):
    if key not in d:
        if default is ...:
            raise LabSpecError(f"{where}: missing key {key!r}")
        return default
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise LabSpecError(f"{where}: {key!r} must be {typ.__name__}, not {type(v).__name__}")
    return v


def _str_list(d, key, where, default=...):
    v = _get(d, key, list, where, default)
    if not all(isinstance(x, str) for x in v):
        raise LabSpecError(f"{where}: {key!r} must be a list of strings")
    return list(v)


def load_lab(lab: str | Path, labs_dir: str | Path | None = None,
             kinds: set[str] | None = None) -> LabSpec:
    """Load ``labs/<lab>/lab.toml`` (``lab`` is a lab id, a lab directory or a lab.toml path)."""
    p = Path(lab)
    if p.suffix == ".toml":
        path = p
    elif p.is_dir():
        path = p / "lab.toml"
    else:
        path = Path(labs_dir or LABS_DIR) / str(lab) / "lab.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise LabSpecError(f"no lab spec at {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise LabSpecError(f"{path}: {e}") from e
    return parse_lab(data, path.parent, kinds=kinds, where=str(path))


def parse_lab(data: dict, lab_dir: str | Path, kinds: set[str] | None = None,
              where: str = "lab.toml") -> LabSpec:
    if kinds is None:
        kinds = set(REGISTRY)
    lab = _get(data, "lab", dict, where)
    sub = _get(data, "submission", dict, where)
    build = _get(data, "build", dict, where, {})
    run = _get(data, "run", dict, where, {})
    grading = _get(data, "grading", dict, where, {})
    tmo = dict(DEFAULT_TIMEOUTS)
    for k, v in _get(data, "timeouts", dict, where, {}).items():
        if k not in PHASE_NAMES:
            raise LabSpecError(f"{where}: [timeouts] unknown phase {k!r} (phases: {', '.join(PHASE_NAMES)})")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise LabSpecError(f"{where}: [timeouts] {k} must be a positive number")
        tmo[k] = float(v)
    pr = _get(run, "port_range", list, f"{where} [run]", [20000, 60000])
    if len(pr) != 2 or not all(isinstance(x, int) for x in pr) or not 1024 <= pr[0] < pr[1] <= 65535:
        raise LabSpecError(f"{where}: [run] port_range must be [low, high] within 1024..65535")
    evidence = _get(data, "evidence", dict, where, {})
    host = _str_list(evidence, "host", f"{where} [evidence]", [])
    required = _str_list(evidence, "host_required", f"{where} [evidence]", [])
    if not set(required) <= set(host):
        raise LabSpecError(f"{where}: [evidence] host_required names sources missing from host: "
                           f"{', '.join(sorted(set(required) - set(host)))}")
    vm = _get(data, "vm", dict, where, {})
    shape = _get(vm, "nics", str, f"{where} [vm]", "")
    if shape not in VM_SHAPES:
        raise LabSpecError(f"{where}: [vm] nics must be one of {', '.join(repr(x) for x in VM_SHAPES)}")
    net = _get(data, "network", dict, where, {})
    receiver_via = _get(net, "receiver_via", str, f"{where} [network]", "")
    if receiver_via not in RECEIVER_VIA:
        raise LabSpecError(f"{where}: [network] receiver_via must be one of "
                           f"{', '.join(repr(x) for x in RECEIVER_VIA)}")
    receiver_addr = _get(net, "receiver_addr", str, f"{where} [network]", "127.0.0.1")
    if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", receiver_addr):
        raise LabSpecError(f"{where}: [network] receiver_addr must be an IPv4 address")
    copybreak = _get(net, "copybreak", int, f"{where} [network]", None) if "copybreak" in net else None
    checks = _parse_checks(_get(data, "checks", list, where, []), kinds, where)
    total = sum(c.points for c in checks if c.part == "lab")
    declared = _get(grading, "total", int, f"{where} [grading]", total)
    if declared != total:
        raise LabSpecError(f"{where}: check points add up to {total}, but [grading] total = {declared}")
    files = _str_list(sub, "files", f"{where} [submission]")
    answers_file = _get(sub, "answers_file", str, f"{where} [submission]", None)
    if answers_file is not None and (answers_file in files or "/" in answers_file
                                     or not re.fullmatch(r"[\w.-]+", answers_file)):
        raise LabSpecError(f"{where}: [submission] answers_file must be a plain file name that is "
                           f"not one of the required files")
    feedback = _get(data, "feedback", dict, where, {})
    try:
        examples = frozenset(int(a, 16) for a in _str_list(feedback, "example_addresses",
                                                            f"{where} [feedback]", []))
    except ValueError as e:
        raise LabSpecError(f"{where}: [feedback] example_addresses must be hex strings ({e})") from None
    return LabSpec(
        id=_get(lab, "id", str, f"{where} [lab]"),
        title=_get(lab, "title", str, f"{where} [lab]", ""),
        dir=Path(lab_dir),
        files=files,
        max_file_bytes=_get(sub, "max_file_bytes", int, f"{where} [submission]", 65536),
        build_files=_str_list(build, "files", f"{where} [build]", ["Makefile", "Kbuild"]),
        build_command=_get(build, "command", str, f"{where} [build]", "make"),
        build_outputs=_str_list(build, "outputs", f"{where} [build]", []),
        kernel=_get(run, "kernel", str, f"{where} [run]", ""),
        kernels=_kernels(run, where),
        module=_get(run, "module", str, f"{where} [run]", ""),
        module_file=_get(run, "module_file", str, f"{where} [run]", ""),
        load_args=_str_list(run, "load_args", f"{where} [run]", []),
        receiver_command=_get(run, "receiver", str, f"{where} [run]", "./receiver {port}"),
        sender_command=_get(run, "sender", str, f"{where} [run]", "./sender {message} {port}"),
        send_comm=_get(run, "send_comm", str, f"{where} [run]", "sender"),
        recv_comm=_get(run, "recv_comm", str, f"{where} [run]", "receiver"),
        message_length=_get(run, "message_length", int, f"{where} [run]", 16),
        message_alphabet=_get(run, "message_alphabet", str, f"{where} [run]",
                              "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"),
        port_range=(pr[0], pr[1]),
        timeouts=tmo, checks=checks, max_score=total, raw=data,
        host_evidence=host, host_evidence_required=required, vm_shape=shape,
        net_setup=_str_list(net, "setup", f"{where} [network]", []), receiver_via=receiver_via,
        receiver_addr=receiver_addr, copybreak=copybreak, answers_file=answers_file,
        example_addresses=examples)


def _parse_checks(items: list, kinds: set[str], where: str) -> list[CheckSpec]:
    checks: list[CheckSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        w = f"{where} [[checks]] #{i + 1}"
        if not isinstance(item, dict):
            raise LabSpecError(f"{w}: must be a table")
        name = _get(item, "name", str, w)
        w = f"{where} check {name!r}"
        if name in seen:
            raise LabSpecError(f"{w}: duplicate check name")
        seen.add(name)
        kind = _get(item, "kind", str, w)
        if kind not in kinds:
            raise LabSpecError(f"{w}: unknown kind {kind!r} (known: {', '.join(sorted(kinds))})")
        points = _get(item, "points", int, w)
        if points < 0:
            raise LabSpecError(f"{w}: points must be >= 0")
        part = _get(item, "part", str, w, "lab")
        if part not in PARTS:
            raise LabSpecError(f"{w}: part must be one of {', '.join(PARTS)}, not {part!r}")
        checks.append(CheckSpec(
            name=name, kind=kind, points=points, depends=_str_list(item, "depends", w, []),
            hint=_get(item, "hint", str, w, ""), title=_get(item, "title", str, w, ""),
            options={k: v for k, v in item.items() if k not in CHECK_KEYS}, part=part))
    parts = {c.name: c.part for c in checks}
    for c in checks:
        for d in c.depends:
            if d not in seen:
                raise LabSpecError(f"{where} check {c.name!r}: depends on unknown check {d!r}")
            if c.part == "lab" and parts[d] == "questions":
                raise LabSpecError(f"{where} check {c.name!r}: a lab check cannot depend on the "
                                   f"questions check {d!r}")
    topo_order(checks, where)
    return checks
