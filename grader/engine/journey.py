"""The picture of a message's journey: one layout model, drawn as text and as SVG.

    python -m grader.engine.journey RESULT.json [--svg]

The model is a list of places (buffers, each at this run's address and in a region of the address
space) and a list of copies between them (arrows). Lab 1 has three places and two copies; a lab
that adds the network card's side adds places and copies, not new kinds of drawing. The regions are
the halves of the address space as the run's kernel profile ([addresses] in grader/profiles/) draws
them, so the split is never assumed per architecture.

Everything read from a result document is untrusted: numbers are taken only where they parse, and
every text is escaped (SVG) or stripped of control characters (text) before it is shown.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import LabSpecError
from .profile import PROFILES_DIR, load_profile

ADDRESS_TOP = (1 << 64) - 1
HEX = re.compile(r"(?<![0-9A-Za-z])0x([0-9a-fA-F]{1,16})(?![0-9A-Za-z])")
LEN = re.compile(r"(?<![0-9A-Za-z])len=(\d{1,9})(?!\d)")
TEXT_MAX = 48   # characters of any untrusted text shown in a picture


@dataclass(frozen=True)
class Region:
    """A range of virtual addresses drawn as one band (lab 1: the user and the kernel half)."""
    key: str
    label: str
    lo: int
    hi: int

    def holds(self, addr: int) -> bool:
        return self.lo <= addr <= self.hi

    @property
    def bounds(self) -> str:
        if self.hi == ADDRESS_TOP:
            return f"0x{self.lo:016x} and above"
        if self.lo == 0:
            return f"up to 0x{self.hi:016x}"
        return f"0x{self.lo:016x} to 0x{self.hi:016x}"


@dataclass(frozen=True)
class Place:
    """A buffer that holds the message. `region` is where its address lies (None: unknown address,
    drawn in `expected`; "" : an address in no region). `expected` may name no region at all (a
    card's memory): it is then drawn in a band of its own. `physical`: the buffer's physical
    address, where a lab measures it."""
    key: str
    label: str
    expected: str
    address: int | None
    region: str | None
    problem: str = ""
    physical: int | None = None


@dataclass(frozen=True)
class Copy:
    """One copy of the message, an arrow from place `src` to place `dest`; `src_addr` and
    `dest_addr` are the addresses the copy itself was seen to use, where known."""
    number: int
    src: str
    dest: str
    length: int | None
    how: str
    src_addr: int | None = None
    dest_addr: int | None = None
    title: str = ""       # a copy the narrative does not number (lab 2's copybreak)

    @property
    def name(self) -> str:
        return self.title or f"copy #{self.number}"

    @property
    def tag(self) -> str:
        return self.title or f"#{self.number}"


@dataclass
class Journey:
    regions: list[Region]
    places: list[Place]
    copies: list[Copy]
    payload_len: int | None
    message: str
    split_from: str                       # the kernel profile the halves come from, or why none
    missing: list[str] = field(default_factory=list)   # what the run did not show
    wrong: list[str] = field(default_factory=list)     # what it showed somewhere unexpected

    @property
    def headline(self) -> str:
        n, k = self.payload_len, len(self.places)
        copies = f"{len(self.copies)} {'copy' if len(self.copies) == 1 else 'copies'}"
        if n is None:
            return f"? bytes in {k} places, {copies}"
        return f"{n * k} bytes in {k} places ({n} bytes x {k}), {copies}"

    def place(self, key: str) -> Place:
        return next(p for p in self.places if p.key == key)

    def row_of(self, p: Place) -> str:
        """The band a place is drawn in: where its address lies, else where it belongs."""
        return p.expected if p.region is None else p.region


def clean(text: object, limit: int = TEXT_MAX) -> str:
    """Untrusted text, printable and short: control and format characters become U+FFFD."""
    s = "".join("\ufffd" if unicodedata.category(ch)[0] == "C" else ch for ch in str(text))
    return s if len(s) <= limit else s[:limit - 3] + "..."


def hex16(addr: int | None) -> str:
    return "?" if addr is None else f"0x{addr:016x}"


# --- the address-space split, from the kernel profiles ---------------------------------------------

@lru_cache(maxsize=None)
def _profile_split(release: str) -> tuple[str, int, int]:
    prof = load_profile(release)
    return prof.arch, prof.kernel_min, prof.user_max


def halves(environment: object) -> tuple[list[Region], str]:
    """The user and kernel halves for a result's environment, and the profile they come from.
    Only the profiles shipped in grader/profiles are read: a release is a name among them, never a
    path taken from the result."""
    env = environment if isinstance(environment, dict) else {}
    known = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
    release, arch = env.get("kernel_release"), env.get("arch")
    names = [release] if release in known else [n for n in known if arch and _arch(n) == arch]
    if not names:
        what = release if isinstance(release, str) else arch if isinstance(arch, str) else None
        why = f"no kernel profile for {clean(what)}" if what else "the run's kernel is unknown"
        return [], why
    _, kernel_min, user_max = _profile_split(names[0])
    return [Region("kernel", "kernel half", kernel_min, ADDRESS_TOP),
            Region("user", "user half", 0, user_max)], names[0]


def _arch(release: str) -> str | None:
    try:
        return _profile_split(release)[0]
    except LabSpecError:
        return None


# --- lab 1: the model from a result's trace_table --------------------------------------------------

def _rows(result: dict) -> dict[int, dict]:
    rows = result.get("trace_table")
    out = {}
    for r in rows if isinstance(rows, list) else []:
        if isinstance(r, dict) and isinstance(r.get("step"), int):
            out.setdefault(r["step"], r)
    return out


def _addresses(row: dict | None) -> list[int | None]:
    """The addresses of a trace_table location, in order ("A -> B" gives two; "?" gives None)."""
    text = row.get("location") if row else None
    if not isinstance(text, str):
        return []
    out = []
    for part in text.split("->"):
        m = HEX.search(part)
        out.append(int(m.group(1), 16) if m else None)
    return out


def _hexes(row: dict | None) -> list[int]:
    """Every address of a trace_table location, in order ("skb->data A (pa P)" gives A and P)."""
    text = row.get("location") if row else None
    return [int(h, 16) for h in HEX.findall(text)] if isinstance(text, str) else []


def _length(row: dict | None) -> int | None:
    text = row.get("data") if row else None
    m = LEN.search(text) if isinstance(text, str) else None
    return int(m.group(1)) if m else None


def _at(values: list[int | None], i: int) -> int | None:
    return values[i] if i < len(values) else None


def lab1_journey(result: dict) -> Journey:
    """Lab 1's three places and two copies from a result document (grader/engine/result.py)."""
    result = result if isinstance(result, dict) else {}
    rows = _rows(result)
    c1, c4 = _addresses(rows.get(3)), _addresses(rows.get(6))
    skb = _at(c1, 1) if _at(c1, 1) is not None else _at(_addresses(rows.get(4)), 0)
    specs = [
        ("sender", "sender's buffer", "user", _at(_addresses(rows.get(1)), 0), None,
         "no sender output and no [COPY1] src"),
        ("skb", "skb data", "kernel", skb, None, "no [COPY1] dest and no trace of the skb"),
        ("receiver", "receiver's buffer", "user", _at(_addresses(rows.get(7)), 0), None,
         "no receiver output and no [COPY4] dest"),
    ]
    copies = [Copy(1, "sender", "skb", _length(rows.get(3)), "_copy_from_iter during sendto()",
                   _at(c1, 0), _at(c1, 1)),
              Copy(4, "skb", "receiver", _length(rows.get(6)), "_copy_to_iter during recv()",
                   _at(c4, 0), _at(c4, 1))]
    return _journey(result, specs, copies)


def lab2_journey(result: dict) -> Journey:
    """Lab 2's places from its trace_table (grader/engine/result.py wire_table): the frame's
    buffers at the addresses of the [TX], [RX] and [COPYBREAK] records, with their physical
    addresses, and the card between them. The frame starts 42 header bytes before the payload, so
    copies #1 and #4 are compared with these buffers on their user side only (the checks compare
    the kernel side)."""
    result = result if isinstance(result, dict) else {}
    rows = _rows(result)
    tx, rx, brk = _hexes(rows.get(3)), _hexes(rows.get(5)), _addresses(rows.get(6))
    c1, c4 = _addresses(rows.get(2)), _addresses(rows.get(7))
    copied = _at(brk, 1) is not None
    specs = [
        ("sender", "sender's buffer", "user", _at(_addresses(rows.get(1)), 0), None,
         "no sender output"),
        ("tx", "frame sent", "kernel", _at(tx, 0), _at(tx, 1), "no [TX] record"),
        ("card", "the cards", "card", None, None, None),
        ("rx", "receive buffer", "kernel", _at(rx, 0), _at(rx, 1), "no [RX] record"),
    ]
    if copied:
        specs.append(("copy", "copybreak skb", "kernel", _at(brk, 1), None, ""))
    specs.append(("receiver", "receiver's buffer", "user", _at(_addresses(rows.get(8)), 0), None,
                  "no receiver output"))
    card_len = _length(rows.get(4))
    copies = [Copy(1, "sender", "tx", _length(rows.get(2)), "_copy_from_iter during sendto()",
                   _at(c1, 0)),
              Copy(2, "tx", "card", card_len or _length(rows.get(3)), "DMA: the sending card reads RAM"),
              Copy(3, "card", "rx", _length(rows.get(5)), "DMA: the receiving card writes RAM")]
    if copied:
        copies.append(Copy(0, "rx", "copy", _length(rows.get(6)), "the driver's CPU copy",
                           _at(brk, 0), _at(brk, 1), title="copybreak"))
    copies.append(Copy(4, "copy" if copied else "rx", "receiver", _length(rows.get(7)),
                       "_copy_to_iter during recv()", None, _at(c4, 1)))
    return _journey(result, specs, copies)


def _journey(result: dict, specs: list[tuple], copies: list[Copy]) -> Journey:
    """The journey of places (key, label, expected band, address, physical address, why the address
    may be unknown: None when a place has none) and the copies between them, with what is missing
    and what lies somewhere unexpected."""
    regions, split_from = halves(result.get("environment"))
    missing = [] if regions else [f"address halves unknown: {split_from}"]
    wrong, places = [], []
    for key, label, expected, addr, physical, why_unknown in specs:
        place = _place(key, label, expected, addr, regions, physical)
        places.append(place)
        if addr is None and why_unknown is not None:
            missing.append(f"{label}: address unknown ({why_unknown})")
        elif place.problem:
            wrong.append(f"{label}: {place.problem}")
    by_key = {p.key: p for p in places}
    for c in copies:
        if c.length is None:
            missing.append(f"{c.name}: no length recorded")
        for side, addr, place in (("read from", c.src_addr, by_key[c.src]),
                                  ("wrote to", c.dest_addr, by_key[c.dest])):
            if addr is not None and place.address is not None and addr != place.address:
                wrong.append(f"{c.name} {side} {hex16(addr)}, not the {place.label} "
                             f"({hex16(place.address)})")
    message = result.get("message")
    n = len(message.encode()) if isinstance(message, str) else None
    if n is None:
        n = next((c.length for c in copies if c.length is not None), None)
    return Journey(regions, places, copies, n, message if isinstance(message, str) else "",
                   split_from, missing, wrong)


def _place(key: str, label: str, expected: str, addr: int | None, regions: list[Region],
           physical: int | None = None) -> Place:
    if addr is None or not regions:
        return Place(key, label, expected, addr, None, physical=physical)
    where = next((r for r in regions if r.holds(addr)), None)
    want = next((r for r in regions if r.key == expected), None)
    if where is None:
        return Place(key, label, expected, addr, "", "the address lies in neither half", physical)
    if want is not None and where.key != want.key:
        return Place(key, label, expected, addr, where.key,
                     f"the address lies in the {where.label}, not the {want.label}", physical)
    return Place(key, label, expected, addr, where.key, physical=physical)


def journey_from_result(result: dict) -> Journey:
    """The journey of any result document, by the shape of its trace_table: lab 2's eight steps
    (the network cards' side) or lab 1's seven."""
    rows = result.get("trace_table") if isinstance(result, dict) else None
    wire = isinstance(rows, list) and any(isinstance(r, dict) and "card" in r for r in rows)
    return lab2_journey(result) if wire else lab1_journey(result)


# --- renderers -------------------------------------------------------------------------------------

def _bands(j: Journey) -> list[tuple[str, str]]:
    """(row key, label) top to bottom: the regions, higher addresses on top, then a band for each
    place drawn outside them (kernel before user when the halves are unknown); "neither" only when
    an address lies in no region."""
    rows = [(r.key, r.label) for r in sorted(j.regions, key=lambda r: -r.lo)]
    others = []
    for p in j.places:
        key = j.row_of(p)
        if key and key not in others and all(key != k for k, _ in rows):
            others.append(key)
    rank = {"kernel": 0, "user": 1}
    rows += [(k, f"{k} side") for k in sorted(others, key=lambda k: rank.get(k, 2))]
    if any(p.region == "" for p in j.places):
        rows.insert(1 if len(rows) > 1 else 0, ("", "neither half"))
    return rows


def _copy_line(j: Journey, c: Copy) -> str:
    length = "?" if c.length is None else c.length
    return (f"{c.name}: {j.place(c.src).label} -> {j.place(c.dest).label}, "
            f"{length} bytes ({c.how})")


def notes(j: Journey) -> list[str]:
    """The copies, what is missing and what is not where it should be, one line each (under both
    pictures)."""
    return ([_copy_line(j, c) for c in j.copies] + [f"missing: {m}" for m in j.missing]
            + [f"unexpected: {w}" for w in j.wrong])


def describe(j: Journey) -> list[str]:
    """The picture in sentences: the SVG's text alternative."""
    lines = [f"{j.headline}: the message {clean(j.message)!r}" if j.message else j.headline]
    lines += _region_lines(j)
    for p in j.places:
        where = next((lab for key, lab in _bands(j) if key == j.row_of(p)), "")
        pa = f" (physical {hex16(p.physical)})" if p.physical is not None else ""
        lines.append(f"{p.label} at {hex16(p.address)}{pa}, {where}")
    return lines + notes(j)


def _region_lines(j: Journey) -> list[str]:
    return [f"{r.label}: {r.bounds} (kernel profile {j.split_from})" for r in j.regions]


def render_text(j: Journey) -> str:
    """A compact text picture: one column per place, one row per half, the copies between rows."""
    bands = _bands(j)
    label_w = max(len(lab) for _, lab in bands) + 2
    col_w = max(20, *(len(p.label) + 2 for p in j.places))
    out = [f"the journey: {j.headline}", " " * label_w + "".join(p.label.ljust(col_w) for p in j.places)]
    col = {p.key: i for i, p in enumerate(j.places)}
    band_index = {key: i for i, (key, _) in enumerate(bands)}
    for bi, (key, lab) in enumerate(bands):
        cells = []
        for p in j.places:
            mark = "!" if p.problem else ""
            cells.append((hex16(p.address) + mark) if j.row_of(p) == key else "")
        out.append((lab.ljust(label_w) + "".join(c.ljust(col_w) for c in cells)).rstrip())
        if bi + 1 < len(bands):
            out.append(_arrow_row(j, bi, band_index, col, label_w, col_w))
    if any(p.physical is not None for p in j.places):
        out.append("physical".ljust(label_w) + "".join(
            ("" if p.physical is None else hex16(p.physical)).ljust(col_w) for p in j.places))
    out += ["  " + ln for ln in _region_lines(j) + notes(j)]
    return "\n".join(line.rstrip() for line in out if line.strip()) + "\n"


def _arrow_row(j: Journey, upper: int, band_index: dict, col: dict, label_w: int, col_w: int) -> str:
    """The copies that cross from band `upper` to the one below (or back), at their columns."""
    row = [" "] * (label_w + col_w * (len(j.places) + 1))
    for c in j.copies:
        a = band_index.get(j.row_of(j.place(c.src)))
        b = band_index.get(j.row_of(j.place(c.dest)))
        if {a, b} != {upper, upper + 1}:
            continue
        mid = label_w + (col[c.src] + col[c.dest]) * col_w // 2 + col_w // 2 - 3
        token = f"{c.tag} /" if a > b else f"\\ {c.tag}"
        row[mid:mid + len(token)] = token
    return "".join(row)


# SVG geometry (user units)
W, LEFT, TOP, BAND_H, BOX_W, BOX_H, LINE = 760, 170, 56, 120, 170, 62, 16
BAND_FILL = {"kernel": "#eef3fa", "user": "#f7f7f2", "": "#fdecea"}   # "": the band of no region


def render_svg(j: Journey, id_prefix: str = "journey") -> str:
    """Inline SVG: presentation attributes only (no style element or attribute, no script, no
    external reference), so a page with `style-src 'self'` and no script allowed shows it as is."""
    e = _esc
    bands = _bands(j)
    with_pa = any(p.physical is not None for p in j.places)
    box_h = BOX_H + (LINE if with_pa else 0)
    n = max(len(j.places), 1)
    width = max(W, LEFT + 10 + n * (BOX_W + 16))   # more places widen the picture, never squeeze boxes
    col_w = (width - LEFT - 10) / n
    height = TOP + BAND_H * len(bands) + 26 + LINE * (len(notes(j)))
    pid = re.sub(r"[^A-Za-z0-9_-]", "", id_prefix) or "journey"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="{pid}" class="journey" role="img" '
           f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'aria-labelledby="{pid}-title {pid}-desc" font-family="sans-serif" font-size="13">',
           f'<title id="{pid}-title">The message\'s journey: {e(j.headline)}</title>',
           f'<desc id="{pid}-desc">{e(". ".join(describe(j)))}</desc>',
           f'<defs><marker id="{pid}-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
           f'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#23395d"/>'
           f'</marker></defs>',
           f'<text x="{width / 2:.0f}" y="30" text-anchor="middle" font-size="20" font-weight="bold" '
           f'class="journey-headline">{e(j.headline)}</text>']
    if j.message:
        out.append(f'<text x="{width / 2:.0f}" y="48" text-anchor="middle" font-family="monospace">'
                   f'{e(repr(clean(j.message)))}</text>')
    band_y = {}
    for i, (key, label) in enumerate(bands):
        y = TOP + i * BAND_H
        band_y[key] = y
        fill = BAND_FILL.get(key, "#f2f2f2")
        region = next((r for r in j.regions if r.key == key), None)
        out.append(f'<rect x="0" y="{y}" width="{width}" height="{BAND_H}" fill="{fill}" stroke="#bbb"/>')
        out.append(f'<text x="10" y="{y + 24}" font-weight="bold">{e(label)}</text>')
        if region is not None:
            out.append(f'<text x="10" y="{y + 42}" font-family="monospace" font-size="11">'
                       f'{e(region.bounds)}</text>')
    centre = {}
    for i, p in enumerate(j.places):
        cx = LEFT + col_w * i + col_w / 2
        cy = band_y.get(j.row_of(p), TOP) + BAND_H / 2
        centre[p.key] = (cx, cy)
        x, y = cx - BOX_W / 2, cy - box_h / 2
        stroke = "#b3261e" if p.problem else "#23395d"
        dash = ' stroke-dasharray="5 4"' if p.address is None else ""
        out.append(f'<g class="journey-place" id="{pid}-{e(p.key)}">'
                   f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{box_h}" rx="6" fill="#fff" '
                   f'stroke="{stroke}" stroke-width="2"{dash}/>'
                   f'<text x="{cx:.0f}" y="{y + 18:.0f}" text-anchor="middle" font-weight="bold">'
                   f'{e(p.label)}</text>'
                   f'<text x="{cx:.0f}" y="{y + 36:.0f}" text-anchor="middle" font-family="monospace" '
                   f'class="journey-address">{e(hex16(p.address))}</text>'
                   f'<text x="{cx:.0f}" y="{y + 53:.0f}" text-anchor="middle" font-size="11">'
                   f'{e(_box_note(j, p))}</text>'
                   + (f'<text x="{cx:.0f}" y="{y + 53 + LINE:.0f}" text-anchor="middle" '
                      f'font-family="monospace" font-size="11" class="journey-physical">'
                      f'PA {e(hex16(p.physical))}</text>' if p.physical is not None else "")
                   + '</g>')
    for c in j.copies:
        (x1, y1), (x2, y2) = centre[c.src], centre[c.dest]
        ax, ay = _edge(x1, y1, x2, y2, box_h)
        bx, by = _edge(x2, y2, x1, y1, box_h)
        length = "?" if c.length is None else c.length
        out.append(f'<g class="journey-copy"><line x1="{x1 + ax:.0f}" y1="{y1 + ay:.0f}" '
                   f'x2="{x2 + bx:.0f}" y2="{y2 + by:.0f}" stroke="#23395d" stroke-width="2.5" '
                   f'marker-end="url(#{pid}-arrow)"/>'
                   f'<text x="{(x1 + x2) / 2:.0f}" y="{(y1 + y2) / 2 + 5:.0f}" text-anchor="middle" '
                   f'font-weight="bold" stroke="#fff" stroke-width="4" paint-order="stroke">'
                   f'{e(f"{c.name}: {length} bytes")}</text></g>')
    y = TOP + BAND_H * len(bands) + 20
    for line in notes(j):
        colour = "#b3261e" if line.startswith(("missing", "unexpected")) else "#1d1d1f"
        out.append(f'<text x="10" y="{y}" font-size="12" fill="{colour}">{e(line)}</text>')
        y += LINE
    out.append("</svg>")
    return "\n".join(out)


def _box_note(j: Journey, p: Place) -> str:
    if p.problem:
        return p.problem
    if p.address is None:
        return "address unknown"
    return f"{j.payload_len} bytes" if j.payload_len is not None else ""


def _edge(x1: float, y1: float, x2: float, y2: float, box_h: float) -> tuple[float, float]:
    """Offset from a box's centre to where the line towards (x2, y2) leaves the box."""
    dx, dy = x2 - x1, y2 - y1
    if dx == 0 and dy == 0:
        return 0.0, 0.0
    sx = (BOX_W / 2) / abs(dx) if dx else float("inf")
    sy = (box_h / 2 + 4) / abs(dy) if dy else float("inf")
    s = min(sx, sy)
    return dx * s, dy * s


def _esc(text: object) -> str:
    return html.escape(clean(text, 10_000), quote=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="journey", description="Draw a result's journey picture.")
    ap.add_argument("result", type=Path, help="a result.json written by the grader or make check")
    ap.add_argument("--svg", action="store_true", help="SVG instead of the text picture")
    args = ap.parse_args(argv)
    try:
        result = json.loads(args.result.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"journey: {args.result}: {e}", file=sys.stderr)
        return 2
    j = journey_from_result(result)
    sys.stdout.write(render_svg(j) + "\n" if args.svg else render_text(j))
    return 0


if __name__ == "__main__":
    sys.exit(main())
