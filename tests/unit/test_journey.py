"""The journey picture (grader/engine/journey.py): the model from a result document (full, partial,
failed, hostile, arm64's split), its text picture and its SVG, and the handout's copy of the picture."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support.engine_runs import KADDR, MSG, RBUF, SBUF, good_run, kmsg_text

from grader.engine.checkrun import run_checks
from grader.engine.journey import Copy, Journey, Place, halves, journey_from_result, render_svg, render_text
from grader.engine.labspec import load_lab
from grader.engine.profile import load_profile
from grader.engine.result import build_result, to_gradescope
from grader.engine.result import render_text as result_text

REPO = Path(__file__).resolve().parents[2]
HANDOUT = REPO / "labs" / "lab1" / "README.md"
BEGIN = "<!-- BEGIN journey picture"
END = "<!-- END journey picture -->"
SVG = "{http://www.w3.org/2000/svg}"
LAB = load_lab("lab1")


def result_of(run=None) -> dict:
    run = run or good_run()
    return build_result(run, run_checks(LAB.checks, run), max_score=LAB.max_score)


def svg_tree(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML, or this raises


def texts(svg: str) -> list[str]:
    return ["".join(t.itertext()) for t in svg_tree(svg).iter(f"{SVG}text")]


def test_full_run_three_places_two_copies_at_this_runs_addresses():
    j = journey_from_result(result_of())
    amd64 = load_profile("6.1.0-50-amd64")
    assert [(p.key, p.address, p.region) for p in j.places] == [
        ("sender", SBUF, "user"), ("skb", KADDR, "kernel"), ("receiver", RBUF, "user")]
    assert [(r.key, r.lo, r.hi) for r in j.regions] == [
        ("kernel", amd64.kernel_min, 2**64 - 1), ("user", 0, amd64.user_max)]
    assert [(c.number, c.src, c.dest, c.length) for c in j.copies] == [
        (1, "sender", "skb", 16), (4, "skb", "receiver", 16)]
    assert j.split_from == "6.1.0-50-amd64" and j.missing == [] and j.wrong == []
    assert j.headline.startswith("48 bytes in 3 places")


def test_text_picture_puts_each_buffer_in_its_half_with_the_copies_between():
    text = render_text(journey_from_result(result_of()))
    lines = text.splitlines()
    assert lines[0] == "the journey: 48 bytes in 3 places (16 bytes x 3), 2 copies"
    kernel = next(ln for ln in lines if ln.startswith("kernel half"))
    user = next(ln for ln in lines if ln.startswith("user half"))
    arrows = lines[lines.index(kernel) + 1]
    assert kernel.split()[2:] == [f"0x{KADDR:016x}"]
    assert user.split()[2:] == [f"0x{SBUF:016x}", f"0x{RBUF:016x}"]
    # copy #1 rises between the sender's and the skb's column, copy #4 falls between skb and receiver
    assert user.index("0x") < arrows.index("#1 /") < kernel.index("0x") < arrows.index("\\ #4") \
        < user.rindex("0x")
    assert "  copy #1: sender's buffer -> skb data, 16 bytes (_copy_from_iter during sendto())" in lines
    assert "  kernel half: 0xff00000000000000 and above (kernel profile 6.1.0-50-amd64)" in lines
    assert all(len(ln) <= 100 for ln in lines)


def test_terminal_and_gradescope_output_show_the_picture_before_the_table():
    result = result_of()
    out = result_text(result)
    assert out.index("the journey: 48 bytes in 3 places") < out.index("the message's journey (2 copies")
    gradescope = to_gradescope(result)["output"]
    assert gradescope.index(render_text(journey_from_result(result))) < gradescope.index("step  action")


def test_svg_has_title_desc_the_three_boxes_and_two_arrows():
    svg = render_svg(journey_from_result(result_of()))
    root = svg_tree(svg)
    assert root.get("role") == "img" and root.get("aria-labelledby") == "journey-title journey-desc"
    assert "48 bytes in 3 places" in root.find(f"{SVG}title").text
    desc = root.find(f"{SVG}desc").text
    assert f"sender's buffer at 0x{SBUF:016x}, user half" in desc and "copy #4" in desc
    places = [g for g in root.iter(f"{SVG}g") if g.get("class") == "journey-place"]
    assert [g.get("id") for g in places] == ["journey-sender", "journey-skb", "journey-receiver"]
    addresses = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "journey-address"]
    assert addresses == [f"0x{SBUF:016x}", f"0x{KADDR:016x}", f"0x{RBUF:016x}"]
    lines = [g.find(f"{SVG}line") for g in root.iter(f"{SVG}g") if g.get("class") == "journey-copy"]
    assert len(lines) == 2 and all(ln.get("marker-end") == "url(#journey-arrow)" for ln in lines)
    # copy #1 goes up (user -> kernel half), copy #4 down
    assert float(lines[0].get("y2")) < float(lines[0].get("y1"))
    assert float(lines[1].get("y2")) > float(lines[1].get("y1"))
    # nothing a page's CSP would refuse: no style, script, or reference outside the document
    assert "<style" not in svg and "style=" not in svg and "<script" not in svg and "href" not in svg


def test_arm64_split_comes_from_its_profile():
    arm = load_profile("6.1.0-50-arm64")
    result = result_of()
    result["environment"].update(kernel_release="6.1.0-50-arm64", arch="aarch64")
    steps = {r["step"]: r for r in result["trace_table"]}
    steps[1]["location"] = "sender buffer 0xaaaad6f71010"
    steps[3]["location"] = "0xaaaad6f71010 -> 0xffff00000a3f642c"
    steps[6]["location"] = "0xffff00000a3f642c -> 0xffffe1c2a3b0"
    steps[7]["location"] = "receiver buffer 0xffffe1c2a3b0"
    j = journey_from_result(result)
    assert [(r.key, r.lo, r.hi) for r in j.regions] == [
        ("kernel", arm.kernel_min, 2**64 - 1), ("user", 0, arm.user_max)]
    assert [(p.address, p.region) for p in j.places] == [
        (0xaaaad6f71010, "user"), (0xffff00000a3f642c, "kernel"), (0xffffe1c2a3b0, "user")]
    assert j.missing == [] and j.wrong == [] and j.split_from == "6.1.0-50-arm64"
    # the arch alone finds the profile too
    del result["environment"]["kernel_release"]
    assert journey_from_result(result).split_from == "6.1.0-50-arm64"


def test_an_address_on_the_wrong_side_is_drawn_where_it_lies_and_named():
    result = result_of()
    # on arm64 a 0x00ff... address is in neither half; on x86_64 the same one is a user address
    result["trace_table"][0]["location"] = "sender buffer 0xffff888004a7c000"
    result["trace_table"][6]["location"] = "receiver buffer 0x00f0000000000000"
    j = journey_from_result(result)
    assert j.places[0].region == "kernel" and "lies in the kernel half, not the user half" in j.places[0].problem
    assert j.places[2].region == "user" and not j.places[2].problem
    result["environment"].update(kernel_release="6.1.0-50-arm64")
    j = journey_from_result(result)
    assert j.places[2].region == "" and "receiver's buffer: the address lies in neither half" in j.wrong
    text = render_text(j)
    assert "neither half" in text and "0x00f0000000000000!" in text
    assert "neither half" in texts(render_svg(j))


def test_a_module_that_swaps_copy1s_fields_is_seen_in_the_picture():
    swapped = f"copytrace: [COPY1] src={KADDR:016x} dest={SBUF:016x} len=16"
    j = journey_from_result(result_of(good_run(kmsg_text=kmsg_text(copy1=swapped))))
    skb = j.place("skb")
    assert skb.address == SBUF and skb.region == "user"
    assert j.wrong == ["skb data: the address lies in the user half, not the kernel half",
                       f"copy #1 read from 0x{KADDR:016x}, not the sender's buffer (0x{SBUF:016x})",
                       f"copy #4 read from 0x{KADDR:016x}, not the skb data (0x{SBUF:016x})"]
    text = render_text(j)
    assert f"0x{SBUF:016x}!" in text and "unexpected: copy #1 read from" in text
    svg = svg_tree(render_svg(j))
    box = next(g for g in svg.iter(f"{SVG}g") if g.get("id") == "journey-skb").find(f"{SVG}rect")
    assert box.get("stroke") == "#b3261e"


def test_partial_run_draws_what_is_known_and_names_what_is_missing():
    run = good_run(receiver_out="", receiver_exit=1, kmsg_text=kmsg_text(copy4=""))
    run.trace_text = None
    j = journey_from_result(result_of(run))
    assert [p.address for p in j.places] == [SBUF, KADDR, None]
    assert "receiver's buffer: address unknown (no receiver output and no [COPY4] dest)" in j.missing
    assert "copy #4: no length recorded" in j.missing
    assert j.headline.startswith("48 bytes in 3 places")
    text = render_text(j)
    assert f"0x{SBUF:016x}" in text and "?" in text and "missing: receiver's buffer" in text
    svg = render_svg(j)
    receiver = next(g for g in svg_tree(svg).iter(f"{SVG}g") if g.get("id") == "journey-receiver")
    assert receiver.find(f"{SVG}rect").get("stroke-dasharray")
    assert "address unknown" in "".join(receiver.itertext())


@pytest.mark.parametrize("result", [
    {},
    {"trace_table": "not a list", "environment": [], "message": 5},
    {"trace_table": [None, 7, {"step": "1", "location": 3}, {"step": 3, "location": ["0x1"]}]},
])
def test_failed_or_malformed_result_still_draws_three_unknown_places(result):
    j = journey_from_result(result)
    assert [p.address for p in j.places] == [None, None, None]
    assert j.headline == "? bytes in 3 places, 2 copies"
    assert "address halves unknown: the run's kernel is unknown" in j.missing
    assert render_text(j).count("?") >= 3
    svg_tree(render_svg(j))


def test_hostile_text_is_escaped_and_never_read_as_a_path():
    result = result_of()
    result["message"] = '<script>alert(1)</script>"&\x1b[31m\x00'
    result["environment"]["kernel_release"] = "../../../../etc/passwd"
    result["environment"]["arch"] = "<b>x</b>"
    result["trace_table"][0]["location"] = '<svg onload="alert(1)"> 0x4141 </svg>'
    j = journey_from_result(result)
    assert j.places[0].address == 0x4141
    assert j.split_from == "no kernel profile for ../../../../etc/passwd" and j.regions == []
    svg = render_svg(j)
    root = svg_tree(svg)  # still well-formed: nothing of the text became markup
    assert {el.tag for el in root.iter()} <= {f"{SVG}{t}" for t in
                                              ("svg", "title", "desc", "defs", "marker", "path", "text",
                                               "rect", "g", "line")}
    assert "<script" not in svg and "\x1b" not in svg and "\x00" not in svg
    assert "&lt;script&gt;" in svg
    text = render_text(j)
    assert "\x1b" not in text and "\x00" not in text
    long_message = dict(result, message="A" * 5000)
    assert max(len(t) for t in texts(render_svg(journey_from_result(long_message)))) < 200


def test_the_cli_draws_a_result_file(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps(result_of()))
    r = subprocess.run([sys.executable, "-m", "grader.engine.journey", str(path)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == render_text(journey_from_result(result_of()))
    r = subprocess.run([sys.executable, "-m", "grader.engine.journey", "--svg", str(path)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and svg_tree(r.stdout).tag == f"{SVG}svg"
    r = subprocess.run([sys.executable, "-m", "grader.engine.journey", str(tmp_path / "none.json")],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "none.json" in r.stderr


def test_the_handouts_picture_is_the_renderers_output_for_the_fixture_run():
    text = HANDOUT.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    block = text.split(BEGIN, 1)[1].split("\n", 1)[1].split(END, 1)[0]
    want = "```\n" + render_text(journey_from_result(result_of())) + "```\n"
    assert block == want, "labs/lab1/README.md's journey picture is out of date; it should read:\n" + want


def test_the_picture_does_not_change_the_result_it_reads():
    result = result_of()
    before = copy.deepcopy(result)
    render_svg(journey_from_result(result))
    assert result == before
    assert MSG in render_svg(journey_from_result(result))


def test_more_places_and_copies_with_physical_addresses_draw_like_lab_ones():
    """What lab 2 adds (the card's side): five places, four copies, physical addresses, a band
    for the card outside the virtual halves."""
    regions, release = halves({"kernel_release": "6.1.0-50-amd64"})
    user, kernel = "user", "kernel"
    places = [Place("sender", "sender's buffer", user, SBUF, user, physical=0x10a2b3060),
              Place("txskb", "tx skb", kernel, KADDR, kernel, physical=0x4a7c62c),
              Place("card", "card's buffer", "card", None, None, physical=0x5e00000),
              Place("rxskb", "rx skb", kernel, KADDR + 0x1000, kernel),
              Place("receiver", "receiver's buffer", user, RBUF, user)]
    copies = [Copy(n, a, b, 16, how) for n, a, b, how in (
        (1, "sender", "txskb", "CPU"), (2, "txskb", "card", "DMA"), (3, "card", "rxskb", "DMA"),
        (4, "rxskb", "receiver", "CPU"))]
    j = Journey(regions, places, copies, 16, MSG, release)
    assert j.headline == "80 bytes in 5 places (16 bytes x 5), 4 copies"
    lines = render_text(j).splitlines()
    assert [ln.split()[0] for ln in lines[2:]][:6] == ["kernel", "#1", "user", "card", "physical", "kernel"]
    assert lines[lines.index(next(ln for ln in lines if ln.startswith("physical")))].split()[1:] == [
        "0x000000010a2b3060", "0x0000000004a7c62c", "0x0000000005e00000"]
    root = svg_tree(render_svg(j))
    boxes = [g.find(f"{SVG}rect") for g in root.iter(f"{SVG}g") if g.get("class") == "journey-place"]
    xs = [float(b.get("x")) for b in boxes]
    assert all(b - a >= float(boxes[0].get("width")) for a, b in zip(xs, xs[1:]))   # no box overlaps
    assert sum(1 for g in root.iter(f"{SVG}g") if g.get("class") == "journey-copy") == 4
    assert [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "journey-physical"] == [
        "PA 0x000000010a2b3060", "PA 0x0000000004a7c62c", "PA 0x0000000005e00000"]
    assert "card side" in texts(render_svg(j))
