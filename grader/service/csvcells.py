"""The one CSV writer of the service: every CSV it produces (the gradebook on the web and from
`flask --app grader export-grades`) goes through `csv_text`, so a cell a student controls (a roster name,
an e-mail address, a student number) never reaches a spreadsheet as a live formula.

Text cells are neutralised as OWASP's "CSV Injection" page recommends: a cell whose first character is
one that starts a formula (= + - @ TAB CR), also after leading spaces and quotes (spreadsheets skip
those), gets a single quote in front, and every text cell is quoted. Numbers (ints and floats) are
written unquoted, so scores stay numbers in the spreadsheet.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
SKIPPED_BEFORE_FORMULA = " \t\r\n\"'"   # what a spreadsheet may pass over before the formula character


def is_number(value) -> bool:
    """An int or float cell (bool is not a number here: it would be written as True/False)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def neutralise(text: str) -> str:
    """`text` as a cell a spreadsheet shows as text: a single quote in front when it could start a formula."""
    if text.startswith(FORMULA_STARTS) or text.lstrip(SKIPPED_BEFORE_FORMULA).startswith(FORMULA_STARTS):
        return "'" + text
    return text


def cell(value):
    """One cell: ints as they are, floats to 6 significant digits (whole ones without ".0", as the
    pages show scores), None as an empty cell, everything else as neutralised text."""
    if isinstance(value, float):
        short = float(f"{value:.6g}")
        return int(short) if short.is_integer() else short
    if is_number(value):
        return value
    return "" if value is None else neutralise(str(value))


def csv_text(fieldnames: list[str], rows: Iterable[Mapping]) -> str:
    """A CSV document (header row, CRLF line ends): text cells quoted and neutralised, numbers unquoted."""
    out = io.StringIO()
    w = csv.writer(out, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\r\n")
    w.writerow([cell(f) for f in fieldnames])
    for row in rows:
        w.writerow([cell(row.get(f)) for f in fieldnames])
    return out.getvalue()
