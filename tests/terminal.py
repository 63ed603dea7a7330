"""The CLI's tables on an 80-column terminal: rich lays them out for COLUMNS (80 when the
output is not a terminal); every line must fit and nothing may be cut to '…'."""
import os

ENV80 = dict(os.environ, COLUMNS="80")


def assert_fits_80(text: str) -> None:
    long = [line for line in text.splitlines() if len(line) > 80]
    assert not long, f"{len(long)} line(s) wider than 80 columns, e.g. {long[0]!r}"
    cut = [line for line in text.splitlines() if "…" in line]
    assert not cut, f"a cell cut to '…' at 80 columns: {cut[0]!r}"
