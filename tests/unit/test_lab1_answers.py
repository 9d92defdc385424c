"""Lab 1's answers file (the questions) and the feedback that names a mistake: the parser, the
answer checks and the mistake lines on the engine fixtures, the skeleton template, the handout's
questions, and the optional file in every validator and in `make handin`."""
from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from support import engine_runs
from support.engine_runs import KADDR, RBUF, SBUF, kmsg_text, sender_out, trace_text

from grader.engine.checkrun import run_checks
from grader.engine.evidence import ANSWER_MAX_CHARS, answer_number, parse_answers
from grader.engine.labspec import load_lab
from grader.engine.result import build_result
from grader.service.uploads import UploadPart, validate_upload
from grader.submission import Limits, SubmissionRejected, materialize

ROOT = Path(__file__).resolve().parents[2]
LAB_DIR = ROOT / "labs" / "lab1"
LAB = load_lab("lab1", kinds=None)
HANDOUT = (LAB_DIR / "README.md").read_text(encoding="utf-8")
SOLUTION_ANSWERS = (LAB_DIR / "solution" / "answers.txt").read_text(encoding="utf-8")
TEMPLATE = (LAB_DIR / "skeleton" / "answers.txt").read_text(encoding="utf-8")
QUESTIONS = [c.name for c in LAB.checks if c.part == "questions"]


def good_run(**over):
    """The fixtures' good run, with the lab's example addresses as GradingRun sets them."""
    return engine_runs.good_run(example_addresses=LAB.example_addresses, **over)


def results(run):
    return {r.name: r for r in run_checks(LAB.checks, run)}


def texts(r) -> str:
    return "\n".join(f"{e.mark}: {e.text}" for e in r.evidence)


def with_answers(**values) -> str:
    """The solution's answers with some replaced (None: left out)."""
    out = []
    for key, value in parse_answers(SOLUTION_ANSWERS).values.items():
        value = values.get(key, value)
        if value is not None:
            out.append(f"{key}: {value}")
    return "\n".join(out) + "\n"


# --- the parser ---------------------------------------------------------------------------------
def test_answers_are_key_value_lines_with_comments_and_continuations():
    a = parse_answers("# a comment\nheader_bytes: 42\nwhy: first\n  and second\n\nempty:\n")
    assert a.values == {"header_bytes": "42", "why": "first and second", "empty": ""}
    assert a.problems == [] and a.answered("empty") is None and a.answered("why") == "first and second"


def test_untrusted_lines_are_named_not_trusted():
    long = "x" * (ANSWER_MAX_CHARS + 50)
    a = parse_answers(f"Bad Key: 1\nno colon here\n  orphan\nk: 1\nk: 2\nlong: {long}\n"
                      "\x00weird: 3\n")
    assert a.values["k"] == "1" and len(a.values["long"]) == ANSWER_MAX_CHARS
    joined = "\n".join(a.problems)
    for needle in ("line 1: not a `key: value` line", "line 2: not a", "line 3: an indented line",
                   "line 5: k is answered twice", "line 7: not a"):
        assert needle in joined, joined
    assert len(parse_answers("".join(f"k{i}: {i}\n" for i in range(500))).values) == 100


@pytest.mark.parametrize("text, number", [
    ("0", 0), ("42 bytes", 42), ("0x2c", 44), ("-0x2c (below)", -44), ("+ 7", 7),
    ("forty-two", None), ("", None), (None, None), ("0x", None),
])
def test_answer_number_reads_the_leading_number(text, number):
    assert answer_number(text) == number


# --- the answer checks ----------------------------------------------------------------------------
def test_the_solution_answers_earn_every_question_point_and_leave_the_lab_score_alone():
    res = results(good_run(answers_text=SOLUTION_ANSWERS))
    for name in QUESTIONS:
        assert res[name].passed, texts(res[name])
    result = build_result(good_run(answers_text=SOLUTION_ANSWERS), list(res.values()),
                          max_score=LAB.max_score)
    assert result["score"] == result["max_score"] == 100
    assert result["questions"] == {"score": 10, "max_score": 10}
    assert result["answers"]["values"]["copy_distance_why"].startswith("Loopback hands")


def test_a_missing_answers_file_costs_only_the_questions():
    res = results(good_run())
    result = build_result(good_run(), list(res.values()), max_score=LAB.max_score)
    assert result["score"] == 100 and result["questions"] == {"score": 0, "max_score": 10}
    assert result["answers"] is None
    for name in QUESTIONS:
        assert [e.mark for e in res[name].evidence] == ["missing"], texts(res[name])
        assert "no answers file" in res[name].evidence[0].text


def test_the_distance_is_checked_against_this_run_s_trace():
    res = results(good_run(answers_text=with_answers(copy_distance="44")))
    t = texts(res["answer_copy_distance"])
    assert not res["answer_copy_distance"].passed
    assert f"skb->data {KADDR:#x}" in t and "gives 0" in t, t
    # a run where the two differ (not loopback's same skb): the trace's difference is the answer
    run = good_run(trace_text=trace_text(data=KADDR + 0x40), answers_text=with_answers(copy_distance="0x40"))
    assert results(run)["answer_copy_distance"].passed
    run = good_run(trace_text=None, answers_text=SOLUTION_ANSWERS)
    r = results(run)["answer_copy_distance"]
    assert not r.passed and "cannot check copy_distance" in texts(r)


def test_numbers_that_are_not_numbers_or_missing_keys_are_named():
    res = results(good_run(answers_text=with_answers(header_bytes="forty-two", copy_distance=None)))
    assert "does not start with a number" in texts(res["answer_header_bytes"])
    assert "no answer to copy_distance" in texts(res["answer_copy_distance"])
    res = results(good_run(answers_text=with_answers(header_bytes="44")))
    assert "header_bytes = 44, but Ethernet 14 + IPv4 20 + UDP 8" in texts(res["answer_header_bytes"])


def test_pagemap_numbers_must_agree_and_not_be_the_handout_s():
    assert not results(good_run(answers_text=with_answers(pagemap_pa="0x10a3b2000")))["answer_pagemap"].passed
    r = results(good_run(answers_text=with_answers(pagemap_va="0x7ffc8e41d2b0", pagemap_pa="0x10a3b22b0")))
    assert not r["answer_pagemap"].passed
    assert "mistake: pagemap_va=0x7ffc8e41d2b0 is an example address" in texts(r["answer_pagemap"])
    r = results(good_run(answers_text=with_answers(pagemap_pfn="0", pagemap_pa="0x6c0")))
    assert "0 means the page was not present or you were not root" in texts(r["answer_pagemap"])


# --- feedback that names the mistake --------------------------------------------------------------
def test_swapped_copy1_fields_are_named_and_the_symptom_kept():
    run = good_run(kmsg_text=kmsg_text(copy1=f"copytrace: [COPY1] src={KADDR:016x} dest={SBUF:016x} len=16"))
    r = results(run)["copy1_kernel_side"]
    t = texts(r)
    assert not r.passed
    assert "mistake: dest and src are swapped in [COPY1]" in t and "is the sender's buffer" in t, t
    assert f"dest={SBUF:#x} is not a kernel address" in t, t        # the symptom stays


def test_swapped_copy4_fields_are_named():
    run = good_run(kmsg_text=kmsg_text(copy4=f"copytrace: [COPY4] src={RBUF:016x} dest={KADDR:016x} len=16"))
    t = texts(results(run)["copy4_kernel_side"])
    assert "mistake: src and dest are swapped in [COPY4]" in t and "receiver's buffer" in t, t


def test_percent_p_hashes_are_named():
    run = good_run(kmsg_text=kmsg_text(
        copy1="copytrace: [COPY1] src=000000009b1c2d3e dest=00000000a1b2c3d4 len=16"))
    t = texts(results(run)["copy1_kernel_side"])
    assert "mistake: src=0x9b1c2d3e, dest=0xa1b2c3d4 look like what %p prints" in t, t
    assert "dest=0xa1b2c3d4 is not a kernel address" in t, t
    assert "swapped" not in t, t
    # a hashed user side only: the kernel side passes, the user side names it
    run = good_run(kmsg_text=kmsg_text(copy1=f"copytrace: [COPY1] src=000000009b1c2d3e dest={KADDR:016x} len=16"))
    t = texts(results(run)["copy1_record"])
    assert "looks like what %p prints" in t and f"the sender's buffer is at {SBUF:#x}" in t, t


def test_numbers_copied_from_the_handout_or_the_narrative_are_named():
    # the handout's example run, printed by programs and module alike (consistent, but not this run)
    run = good_run(
        sender_out=sender_out(buf=0x55D0C0FFEE00),
        kmsg_text=kmsg_text(copy1="copytrace: [COPY1] src=000055d0c0ffee00 dest=ffff888004a7c62c len=16",
                            copy4="copytrace: [COPY4] src=ffff8882cbbe612c dest=00007ffc8e41d2b0 len=16"))
    res = results(run)
    t1, t4 = texts(res["copy1_kernel_side"]), texts(res["copy4_kernel_side"])
    assert "mistake: src=0x55d0c0ffee00, dest=0xffff888004a7c62c are example addresses" in t1, t1
    assert "does not describe this run's copy" in t1, t1
    assert "src=0xffff8882cbbe612c, dest=0x7ffc8e41d2b0 are example addresses" in t4, t4


def test_a_correct_run_names_no_mistake():
    res = results(good_run(answers_text=SOLUTION_ANSWERS))
    assert not any("mistake:" in e.text for r in res.values() for e in r.evidence)


def test_the_example_addresses_are_the_handout_s():
    """lab.toml's list holds every address the handout prints as an example value (the sample
    `make check` block is one real run, regenerated by labs/tools/samplecheck.py: not listed)."""
    head, rest = HANDOUT.split("<!-- BEGIN sample make check", 1)
    prose = head + rest.split("<!-- END sample make check -->", 1)[1]
    shown = set()
    for m in re.finditer(r"(?:buffer at |src=|dest=|VA `)(?:0x)?([0-9a-f]{12,16})\b", prose):
        shown.add(int(m[1], 16))
    assert shown and shown <= LAB.example_addresses, sorted(hex(a) for a in shown - LAB.example_addresses)


# --- template, handout ----------------------------------------------------------------------------
def test_the_template_is_the_solution_without_its_answers():
    sol, tpl = parse_answers(SOLUTION_ANSWERS), parse_answers(TEMPLATE)
    assert list(sol.values) == list(tpl.values) and not sol.problems and not tpl.problems
    assert all(v == "" for v in tpl.values.values())
    assert all(v for v in sol.values.values())
    checked = {c.options.get("question") for c in LAB.checks if c.part == "questions"} | \
        {c.options[k] for c in LAB.checks if c.kind == "answer_pagemap" for k in ("va", "pfn", "pa")}
    assert checked - {None} <= set(tpl.values)


def test_every_question_is_in_the_handout_with_its_number_and_key():
    numbers = re.findall(r"^# (Q\d+\.\d+) \(section (\d+)", TEMPLATE, re.M)
    assert len(numbers) >= 6
    for q, section in numbers:
        body = HANDOUT.split(f"\n## {section}. ", 1)[1].split("\n## ", 1)[0]
        assert f"**{q}" in body, f"{q} is not asked in section {section}"
    for key in parse_answers(TEMPLATE).values:
        assert f"`{key}`" in HANDOUT, key


# --- validators, handin -------------------------------------------------------------------------
LIMITS = Limits(file_bytes=65536, archive_bytes=1 << 20, members=20, unpacked_bytes=1 << 20)
C_FILES = {n: (LAB_DIR / "solution" / n).read_bytes() for n in LAB.files}


def tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_the_service_accepts_the_optional_answers_file_in_every_form():
    answers = SOLUTION_ANSWERS.encode()
    parts = [UploadPart(n, n, d) for n, d in C_FILES.items()]
    assert set(validate_upload(parts, LAB.files, LIMITS, LAB.optional_files)) == set(LAB.files)
    got = validate_upload(parts + [UploadPart("answers.txt", "answers.txt", answers)], LAB.files, LIMITS,
                          LAB.optional_files)
    assert got["answers.txt"] == answers
    got = validate_upload([UploadPart("archive", "a.tgz", tgz({**C_FILES, "answers.txt": answers}))],
                          LAB.files, LIMITS, LAB.optional_files)
    assert got["answers.txt"] == answers
    # empty: the same as none; binary: refused with its name; without the lab's leave: refused
    got = validate_upload(parts + [UploadPart("answers.txt", "answers.txt", b" \n")], LAB.files, LIMITS,
                          LAB.optional_files)
    assert "answers.txt" not in got
    with pytest.raises(SubmissionRejected, match="answers.txt is not a text file"):
        validate_upload(parts + [UploadPart("answers.txt", "answers.txt", b"a\0b")], LAB.files, LIMITS,
                        LAB.optional_files)
    with pytest.raises(SubmissionRejected, match="unexpected upload field 'answers.txt'"):
        validate_upload(parts + [UploadPart("answers.txt", "answers.txt", answers)], LAB.files, LIMITS)


def test_the_cli_takes_the_optional_answers_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for n, d in C_FILES.items():
        (src / n).write_bytes(d)
    out = materialize(src, LAB.files, tmp_path / "a", Limits(LAB.max_file_bytes), LAB.optional_files)
    assert sorted(p.name for p in out.iterdir()) == sorted(LAB.files)
    (src / "answers.txt").write_text(SOLUTION_ANSWERS)
    out = materialize(src, LAB.files, tmp_path / "b", Limits(LAB.max_file_bytes), LAB.optional_files)
    assert (out / "answers.txt").read_text() == SOLUTION_ANSWERS
    archive = tmp_path / "s.tar.gz"
    archive.write_bytes(tgz({**C_FILES, "answers.txt": SOLUTION_ANSWERS.encode()}))
    out = materialize(archive, LAB.files, tmp_path / "c", Limits(LAB.max_file_bytes), LAB.optional_files)
    assert (out / "answers.txt").is_file()
    (src / "answers.txt").unlink()
    (src / "answers.txt").symlink_to("/etc/passwd")
    with pytest.raises(SubmissionRejected, match="answers.txt .* is not a regular file"):
        materialize(src, LAB.files, tmp_path / "d", Limits(LAB.max_file_bytes), LAB.optional_files)


def handin(lab_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "labs" / "tools" / "handin.py"), "--lab-dir",
                           str(lab_dir), "--spec", str(LAB_DIR / "lab.toml"), "--skeleton-sums",
                           str(LAB_DIR / "skeleton" / "SHA256SUMS"), "--no-upload"],
                          capture_output=True, text=True, timeout=60)


def handed_in(lab_dir: Path) -> list[str]:
    [archive] = sorted(lab_dir.glob("handin-*.tar.gz"))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    archive.unlink()
    return names


def test_make_handin_takes_the_answers_file_when_it_holds_answers(tmp_path):
    for n, d in C_FILES.items():
        (tmp_path / n).write_bytes(d)
    r = handin(tmp_path)
    assert r.returncode == 0 and "no answers.txt" in r.stderr and "only the questions' points" in r.stderr
    assert "answers.txt" not in handed_in(tmp_path)
    (tmp_path / "answers.txt").write_text(TEMPLATE)
    r = handin(tmp_path)
    assert r.returncode == 0 and "answers.txt is the unchanged template" in r.stderr
    assert "answers.txt" not in handed_in(tmp_path)
    (tmp_path / "answers.txt").write_text(SOLUTION_ANSWERS)
    r = handin(tmp_path)
    assert r.returncode == 0 and "answers.txt" in r.stdout
    assert sorted(handed_in(tmp_path)) == sorted([*LAB.files, "answers.txt"])
    (tmp_path / "answers.txt").unlink()
    (tmp_path / "answers.txt").symlink_to(tmp_path / "sender.c")
    r = handin(tmp_path)
    assert r.returncode == 2 and "answers.txt: not a regular file" in r.stderr
