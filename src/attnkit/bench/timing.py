"""Timing that can be trusted on a noisy, shared machine.

* :func:`interleaved` times several functions in *rounds* (each round runs every
  function once, in a rotated order), so a burst of load from another process hits all
  of them alike instead of one variant's whole measurement. It stops when every
  median is stable -- the estimated standard error of the median,
  ``1.2533 * (IQR / 1.349) / sqrt(runs)``, is at most ``rel_tol`` of the median -- or
  when ``budget_s`` or ``max_runs`` is spent (then ``stable`` is False).
* :func:`summary` -- min, quartiles, median, max of a list of times.
* :func:`ratio` -- dense time / variant time ("speed vs dense") with a conservative
  interval from the quartiles, ``[q1_dense / q3_variant, q3_dense / q1_variant]``;
  ``within_noise`` is True when that interval contains 1, i.e. when the two
  interquartile ranges overlap: the difference is then not shown to be real.
* :func:`fit_exponent` -- slope of log(time) against log(n) over every run, with its
  standard error (a slope from two noisy medians is not a fact).
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable

__all__ = ["summary", "interleaved", "timed_stable", "ratio", "fit_exponent", "fmt_ratio",
           "fmt_spread"]


def _quantile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = p * (len(s) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(times: list[float], *, stable: bool | None = None) -> dict:
    """``{"min_s", "q1_s", "median_s", "q3_s", "max_s", "runs", "stable", "times_s"}``."""
    if not times:
        raise ValueError("times: expected at least one measurement, got none")
    return {"min_s": min(times), "q1_s": _quantile(times, 0.25),
            "median_s": statistics.median(times), "q3_s": _quantile(times, 0.75),
            "max_s": max(times), "runs": len(times), "stable": stable,
            "times_s": [float(f"{t:.4g}") for t in times]}


def _median_se(times: list[float]) -> float:
    iqr = _quantile(times, 0.75) - _quantile(times, 0.25)
    return 1.2533 * (iqr / 1.349) / math.sqrt(len(times))


def interleaved(fns: dict[str, Callable[[], object]], *, min_runs: int = 5,
                max_runs: int = 200, budget_s: float = 10.0, rel_tol: float = 0.02,
                warmup: int = 1, sync: Callable[[], None] | None = None,
                setup: dict[str, Callable[[], None]] | None = None) -> dict[str, dict]:
    """Time every ``fns[name]()`` in rotated rounds; ``{name: summary(...)}``.
    ``setup[name]()`` (untimed) runs before each call of ``fns[name]`` (e.g. switching a
    model to that variant)."""
    if min_runs < 1 or max_runs < min_runs:
        raise ValueError(f"min_runs/max_runs: expected 1 <= min_runs <= max_runs, got "
                         f"{min_runs}, {max_runs}")
    sync = sync or (lambda: None)
    setup = setup or {}
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            setup.get(name, lambda: None)()
            fns[name]()
            sync()
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    stable = False
    for r in range(max_runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            setup.get(name, lambda: None)()
            t0 = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
        if r + 1 >= min_runs:
            stable = all(_median_se(ts) <= rel_tol * statistics.median(ts)
                         for ts in times.values())
            if stable or time.perf_counter() - start > budget_s:
                break
    return {n: summary(ts, stable=stable) for n, ts in times.items()}


def timed_stable(fn: Callable[[], object], **kw) -> dict:
    """:func:`interleaved` for one function."""
    return interleaved({"fn": fn}, **kw)["fn"]


def ratio(dense: dict, variant: dict) -> dict:
    """Speed vs dense (> 1: the variant is faster) with its quartile interval."""
    r = dense["median_s"] / variant["median_s"]
    lo = dense["q1_s"] / variant["q3_s"]
    hi = dense["q3_s"] / variant["q1_s"]
    return {"ratio": r, "low": lo, "high": hi, "within_noise": lo <= 1.0 <= hi}


def fmt_ratio(r: dict | None) -> str:
    if not r:
        return "—"
    # the interval's ends are separate words, so a narrow terminal column wraps between them
    s = f"{r['ratio']:.2f}x ({r['low']:.2f} – {r['high']:.2f})"
    return s + " within noise" if r["within_noise"] else s


def fmt_spread(t: dict | None, unit: float = 1e3) -> str:
    """``min / median / max`` in ms (``*`` when the median did not settle)."""
    if not t:
        return "—"
    star = "" if t.get("stable") in (True, None) else "*"
    return (f"{t['min_s'] * unit:,.2f} / {t['median_s'] * unit:,.2f} / "
            f"{t['max_s'] * unit:,.2f}{star}")


def fit_exponent(ns: list[int], times: list[list[float]]) -> dict | None:
    """Least-squares slope of log(t) on log(n) over every run at every n, with its
    standard error; None with fewer than two distinct n."""
    pts = [(math.log(n), math.log(t)) for n, ts in zip(ns, times) for t in ts if t > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    res = sum((y - my - slope * (x - mx)) ** 2 for x, y in pts)
    se = math.sqrt(res / (len(pts) - 2) / sxx) if len(pts) > 2 else float("nan")
    return {"exponent": slope, "stderr": se, "points": len(pts)}
