"""Shared test setup: the count of property cases run, reported at the end."""
import collections

CASES = collections.Counter()


def pytest_terminal_summary(terminalreporter):
    if CASES:
        total = sum(CASES.values())
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(CASES.items()))
        terminalreporter.write_line(f"attnkit property cases run: {total} ({detail})")
