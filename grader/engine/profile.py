"""Kernel profiles: grader/profiles/<release>.toml."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LabSpecError

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
REQUIRED_OFFSETS = ("iov_iter_iov_offset", "iov_iter_iov", "msghdr_msg_iter", "sk_buff_data")
REQUIRED_EVENTS = ("copylab_tx", "copylab_rxmsg", "copylab_rx")
# [witness] points and the argument registers each one reads (grader/vm/gdbwitness.py)
WITNESS_POINTS = {"copy1": ("msghdr", "dest", "len"), "rxmsg": ("msghdr",), "copy4": ("skb", "len")}


@dataclass
class KernelProfile:
    release: str
    arch: str
    symbols: dict[str, str]
    offsets: dict[str, int]
    kernel_min: int
    user_max: int
    trace_group: str
    event_templates: dict[str, str]
    lab_event_templates: dict[str, dict[str, str]] = field(default_factory=dict)
    path: Path | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def copy_from(self) -> str:
        return self.symbols["copy_from"]

    @property
    def copy_to(self) -> str:
        return self.symbols["copy_to"]

    def placeholders(self) -> dict[str, object]:
        o = self.offsets
        # every iov_iter field also as its offset in a msghdr (msghdr_iov, msghdr_ubuf, ...)
        in_msghdr = {"msghdr_" + k.removeprefix("iov_iter_"): o["msghdr_msg_iter"] + v
                     for k, v in o.items() if k.startswith("iov_iter_")}
        return {"group": self.trace_group, "skb_data": o["sk_buff_data"],
                **({"skb_len": o["sk_buff_len"]} if "sk_buff_len" in o else {}), **in_msghdr, **o}

    def kprobe_events(self, lab: str | None = None) -> dict[str, str]:
        """Event name -> tracefs ``kprobe_events`` line, offsets filled in: the events every lab
        traces, plus the lab's own ([trace.labs.<lab>.events], e.g. lab 2's driver functions)."""
        ph = self.placeholders()
        templates = dict(self.event_templates)
        if lab:
            templates.update(self.lab_event_templates.get(lab, {}))
        return {name: tpl.format(**ph) for name, tpl in templates.items()}

    def all_kprobe_events(self) -> dict[str, str]:
        """Every lab's events (what a reset removes)."""
        events = self.kprobe_events()
        for lab in self.lab_event_templates:
            events.update(self.kprobe_events(lab))
        return events

    def witness_plan(self) -> dict:
        """The [witness] section resolved for the gdb script: each point's symbol name and argument
        registers, the struct offsets from [offsets]. LabSpecError when the profile has none."""
        w = self.raw.get("witness")
        where = f"{self.path or self.release} [witness]"
        if not isinstance(w, dict):
            raise LabSpecError(f"{where}: missing: this kernel profile defines no witness points")
        points = {}
        for point, regs in WITNESS_POINTS.items():
            spec = w.get(point)
            if not isinstance(spec, dict):
                raise LabSpecError(f"{where}: missing [witness.{point}]")
            symbol = self.symbols.get(str(spec.get("symbol")))
            if symbol is None:
                raise LabSpecError(f"{where}.{point}: symbol must name a key of [symbols]: {spec.get('symbol')!r}")
            missing = [r for r in regs if not isinstance(spec.get(r), str)]
            if missing:
                raise LabSpecError(f"{where}.{point}: no register for {', '.join(missing)}")
            points[point] = {"symbol": symbol, **{r: spec[r] for r in regs}}
        for key in ("gdb_arch", "stack_register"):
            if not isinstance(w.get(key), str):
                raise LabSpecError(f"{where}: missing {key}")
        ph = self.placeholders()
        return {"gdb_arch": w["gdb_arch"], "stack_register": w["stack_register"], "points": points,
                "offsets": {"msghdr_iov": ph["msghdr_iov"], "msghdr_iov_offset": ph["msghdr_iov_offset"],
                            "skb_data": ph["skb_data"]}}

    def is_kernel_address(self, addr: int | None) -> bool:
        return addr is not None and addr >= self.kernel_min

    def is_user_address(self, addr: int | None) -> bool:
        return addr is not None and 0 < addr <= self.user_max


def _int(v, where):
    if isinstance(v, int):
        return v
    try:
        return int(str(v), 0)
    except ValueError as e:
        raise LabSpecError(f"{where}: not an integer: {v!r}") from e


def load_profile(release: str | Path, profiles_dir: str | Path | None = None) -> KernelProfile:
    p = Path(release)
    path = p if p.suffix == ".toml" else Path(profiles_dir or PROFILES_DIR) / f"{release}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise LabSpecError(f"no kernel profile {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise LabSpecError(f"{path}: {e}") from e
    where = str(path)
    try:
        offsets = {k: _int(v, where) for k, v in data["offsets"].items()}
        for k in REQUIRED_OFFSETS:
            if k not in offsets:
                raise LabSpecError(f"{where}: [offsets] missing {k}")
        events = dict(data["trace"]["events"])
        lab_events = {lab: dict(t.get("events", {})) for lab, t in data["trace"].get("labs", {}).items()}
        for k in REQUIRED_EVENTS:
            if k not in events:
                raise LabSpecError(f"{where}: [trace.events] missing {k}")
        prof = KernelProfile(
            release=data["release"], arch=data["arch"], symbols=dict(data["symbols"]),
            offsets=offsets, kernel_min=_int(data["addresses"]["kernel_min"], where),
            user_max=_int(data["addresses"]["user_max"], where),
            trace_group=data["trace"].get("group", "copylab"), event_templates=events,
            lab_event_templates=lab_events,
            path=path, raw=data)
    except KeyError as e:
        raise LabSpecError(f"{where}: missing {e}") from e
    try:
        prof.all_kprobe_events()
    except (KeyError, IndexError, ValueError) as e:
        raise LabSpecError(f"{where}: bad event template: {e}") from e
    return prof
