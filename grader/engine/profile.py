"""Kernel profiles: grader/profiles/<release>.toml."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LabSpecError

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
REQUIRED_OFFSETS = ("iov_iter_iov_offset", "iov_iter_iov", "msghdr_msg_iter", "sk_buff_data")
REQUIRED_EVENTS = ("copylab_tx", "copylab_rxmsg", "copylab_rx")


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
        return {
            "group": self.trace_group,
            "msghdr_iov": o["msghdr_msg_iter"] + o["iov_iter_iov"],
            "msghdr_iov_offset": o["msghdr_msg_iter"] + o["iov_iter_iov_offset"],
            "skb_data": o["sk_buff_data"],
            **({"skb_len": o["sk_buff_len"]} if "sk_buff_len" in o else {}),
            **o,
        }

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
