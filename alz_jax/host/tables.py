"""The CSV files the project writes, safe to open in a spreadsheet.

A spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (and, in some, one that starts
with a tab or a carriage return) as a formula: a file name or scan ID written by us, but chosen
by whoever named the images, could then run commands on the reader's machine ("CSV injection").
Following OWASP's rule, every text cell that starts with one of those characters gets a leading
single quote `'`, which spreadsheets show as text and do not evaluate:

    =HYPERLINK("http://x")  ->  '=HYPERLINK("http://x")
    -2+3+cmd|' /C calc'!A0  ->  '-2+3+cmd|' /C calc'!A0

Left alone: numbers (int, float and numpy scalars), and text that is exactly a plain decimal
number such as "-0.123456" (a spreadsheet reads it as that number, not as a formula; a quote
would turn every negative logit into text). A cell that already starts with quotes followed by
one of those characters gets one more quote, so that `read_cell` can undo the quoting exactly:
`read_cell(safe_cell(x)) == str(x)` for every text `x`.

Every CSV writer in alz_jax goes through `write_csv` (or `safe_cell`), every reader of our own
CSVs through `read_cell`.
"""

from __future__ import annotations

import csv
import io
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

# First characters a spreadsheet may evaluate (OWASP: CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _needs_quote(text: str) -> bool:
    """Whether `text` (after any leading quotes) starts like a formula and isn't a number."""
    rest = text.lstrip("'")
    return rest.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(rest)


def safe_cell(value: object) -> object:
    """`value` as a CSV cell a spreadsheet won't evaluate: numbers as they are, text with a
    leading `'` when it would start a formula (see the module docstring)."""
    if value is None or isinstance(value, bool | numbers.Number):
        return value
    text = str(value)
    return "'" + text if _needs_quote(text) else text


def read_cell(text: str) -> str:
    """A cell of a CSV written by `write_csv`, as it was before `safe_cell` quoted it."""
    if text.startswith("'") and _needs_quote(text):
        return text[1:]
    return text


def write_csv(
    path_or_file: str | Path | IO[str],
    fieldnames: Sequence[str],
    rows: Iterable[Mapping[str, object]],
) -> None:
    """Writes a header and `rows` (dicts keyed by `fieldnames`) with every text cell made safe;
    to a path (created or replaced) or to an open text file."""
    if isinstance(path_or_file, str | Path):
        with open(path_or_file, "w", newline="") as f:
            write_csv(f, fieldnames, rows)
        return
    writer = csv.DictWriter(path_or_file, fieldnames=list(fieldnames))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: safe_cell(v) for k, v in row.items()})


def to_text(fieldnames: Sequence[str], rows: Iterable[Mapping[str, object]]) -> str:
    """The CSV `write_csv` would write, as a string (for storage paths such as gs://)."""
    buffer = io.StringIO(newline="")
    write_csv(buffer, fieldnames, rows)
    return buffer.getvalue()
