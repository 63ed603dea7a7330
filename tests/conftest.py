"""Shared test setup: the count of property cases run, reported at the end.

``CASES[tag]`` counts the property cases of the hypothesis tests (each compared with an
independent result). The oracle sweep (tests/test_oracle_sweep.py) counts its own:
``ORACLE["backend dtype"]`` (forward + gradients vs the float64 reference),
``REFUSED["backend: reason"]`` (calls a backend declined: never counted as passes) and
``ORACLE_SECONDS`` (time per part; "problems": the number of problems drawn) and
``ORACLE_WORST`` (the largest error / tolerance ratio per "backend dtype").
"""
import collections

CASES = collections.Counter()
ORACLE = collections.Counter()
REFUSED = collections.Counter()
ORACLE_SECONDS = collections.Counter()
ORACLE_WORST = {}   # "backend dtype" -> the largest error / tolerance seen

NAIVE = "oracle"   # ORACLE's tag for the fp64 reference checked against the naive fp64


def pytest_terminal_summary(terminalreporter):
    w = terminalreporter.write_line
    if CASES or ORACLE:
        total = sum(CASES.values()) + sum(ORACLE.values())
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(CASES.items()))
        sweep = f"oracle sweep: {sum(ORACLE.values())}" if ORACLE else ""
        w(f"attnkit property cases run: {total} ({', '.join(x for x in (detail, sweep) if x)})")
    if not ORACLE:
        return
    per, dt = collections.Counter(), collections.defaultdict(list)
    for tag, n in sorted(ORACLE.items()):
        if tag == NAIVE:
            continue
        backend, _, dtype = tag.rpartition(" ") if "(" not in tag else (tag, "", "")
        per[backend] += n
        worst = f" (worst err/tol {ORACLE_WORST[tag]:.2f})" if tag in ORACLE_WORST else ""
        dt[backend].append(f"{dtype} {n}{worst}" if dtype else f"{n}{worst}")
    secs = sum(v for k, v in ORACLE_SECONDS.items() if k != "problems")
    w(f"attnkit oracle sweep: {sum(per.values())} backend cases vs the fp64 reference (forward "
      f"+ gradients) over {ORACLE_SECONDS['problems']} problems in {secs:.0f} s, plus "
      f"{ORACLE[NAIVE]} fp64 reference vs naive fp64 (worst err/tol "
      f"{ORACLE_WORST.get(NAIVE, 0.0):.1e} at tol 1e-10)")
    for b in per:
        w(f"    {per[b]:6d}  {b} ({', '.join(dt[b])})")
    if REFUSED:
        w(f"attnkit oracle sweep: refused (not counted as passes): {sum(REFUSED.values())}")
        for key, n in sorted(REFUSED.items()):
            w(f"    {n:6d}  {key}")
