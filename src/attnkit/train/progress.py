"""One progress display for long runs (``attnkit train``, ``attnkit adapt``): a rich bar on
a terminal; where stderr is not a terminal (a log file, a pipe) a plain line at most every
``LINE_EVERY_S`` seconds and at the last step; nothing when disabled."""
from __future__ import annotations

import sys
import time

__all__ = ["ProgressBar"]


class ProgressBar:
    """``fields``: the names of the text columns after the step count; ``update(step,
    **values)`` sets any of them (preformatted strings; a field keeps its last value)."""

    LINE_EVERY_S = 10.0

    def __init__(self, label: str, total: int, start: int, enabled: bool,
                 fields: tuple[str, ...]):
        self.prog = self.lines = None
        self.label, self.total, self.start = label, total, start
        self.values = {f: "-" for f in fields}
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        console = Console(stderr=True)
        if not console.is_terminal:
            self.t0 = self.lines = time.perf_counter()
            return
        columns = [TextColumn(f"{{task.fields[{f}]}}") for f in fields]
        self.prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                             MofNCompleteColumn(), *columns, TimeElapsedColumn(),
                             TextColumn("eta"), TimeRemainingColumn(), console=console)
        self.prog.start()
        self.task = self.prog.add_task(label, total=total, completed=start, **self.values)

    def update(self, step: int, **values: str) -> None:
        self.values.update(values)
        if self.prog:
            self.prog.update(self.task, completed=step, **values)
        elif self.lines is not None:
            now = time.perf_counter()
            if now - self.lines >= self.LINE_EVERY_S or step == self.total:
                self.lines = now
                spent = now - self.t0
                eta = spent / max(step - self.start, 1) * (self.total - step)
                shown = ", ".join(v for v in self.values.values() if v not in ("", "-"))
                print(f"{self.label}: step {step}/{self.total}, {shown}, {spent:.0f} s, "
                      f"eta {eta:.0f} s", file=sys.stderr, flush=True)

    def log(self, text: str) -> None:
        if self.prog:
            self.prog.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.prog:
            self.prog.stop()
