"""Two attnkit source trees side by side, interleaved: the same workloads, the same run.

Each tree gets one persistent worker process (``PYTHONPATH=TREE/src``, ``--threads``
torch threads); the driver asks them for one timed call at a time, alternating the
order every round (A B, B A, ...), so a burst of load from other processes hits both
alike. Workloads are those of ``benchmarks/attention.py`` (``attn:BACKEND:MODE:N``:
B 1, H 8, D 64 fp32, MODE causal or window = causal window-256, through
``get_backend(BACKEND).forward(make_call(...))``, or ``attnkit.attention(...)`` for
BACKEND ``auto``: selection included) and of ``benchmarks/scaling.py``
(``scale:VARIANT:N``: B 1, H 4, D 64, built by *that tree's* ``benchmarks/scaling.py``).

For each workload: min / median / max of each tree, the ratio of medians B/A and the
interval [q1_B/q3_A, q3_B/q1_A]; "within noise" when the interval contains 1.

    python benchmarks/ab.py --a old=/path/to/old --b new=. \\
        --work attn:tiled:causal:4096,scale:local:16384 --rounds 7
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _worker(threads: int) -> None:  # runs inside the tree under test
    import torch
    torch.set_num_threads(threads)
    import attnkit
    print(json.dumps({"attnkit": os.path.dirname(attnkit.__file__)}), flush=True)
    cache = {}

    def build(work: str, backward: bool):
        kind, *rest = work.split(":")
        g = torch.Generator().manual_seed(0)
        if kind == "attn":
            from attnkit.backends import get_backend
            from attnkit.bench.points import workload_mask
            from attnkit import make_call          # public: the same in every tree
            backend, mode, n = rest[0], rest[1], int(rest[2])
            shape = (1, 8, n, 64)
            mask = workload_mask(mode)
            if backend == "auto":
                fn = lambda q, k, v: attnkit.attention(q, k, v, mask=mask)  # noqa: E731
            else:
                be = get_backend(backend)
                fn = lambda q, k, v: be.forward(make_call(q, k, v, mask=mask))  # noqa: E731
        elif kind == "scale":
            sys.path.insert(0, os.path.join(os.environ["AB_TREE"], "benchmarks"))
            import scaling
            name, n = rest[0], int(rest[1])
            shape = (1, 4, n, 64)
            fn = scaling.build(name, n)[0]
        else:
            raise ValueError(f"workload: expected attn:... or scale:..., got {work!r}")
        q, k, v = (torch.randn(*shape, generator=g) for _ in range(3))
        if backward:
            for t in (q, k, v):
                t.requires_grad_()

        clock = time.process_time if os.environ.get("AB_CLOCK") == "cpu" else time.perf_counter

        def once():
            t0 = clock()
            if backward:
                out = fn(q, k, v)
                out.backward(torch.ones_like(out))
                for t in (q, k, v):
                    t.grad = None
            else:
                with torch.inference_mode():
                    fn(q, k, v)
            return clock() - t0
        return once

    for line in sys.stdin:
        cmd = json.loads(line)
        key = (cmd["work"], cmd["backward"])
        try:
            if key not in cache:
                cache.clear()                      # one workload at a time: memory
                cache[key] = build(*key)
                cache[key]()                       # warm-up, not counted
            res = {"t": cache[key]()}
        except Exception as e:  # reported, the sweep goes on
            res = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(res), flush=True)


class Tree:
    def __init__(self, label: str, path: str, threads: int):
        self.label, self.path = label, os.path.abspath(path)
        env = dict(os.environ, PYTHONPATH=os.path.join(self.path, "src"), AB_TREE=self.path,
                   OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                                      "--threads", str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.module = json.loads(self.proc.stdout.readline())["attnkit"]

    def time(self, work: str, backward: bool) -> dict:
        self.proc.stdin.write(json.dumps({"work": work, "backward": backward}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def quartiles(xs):
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[0], q[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", default=None, help="LABEL=TREE (the baseline)")
    ap.add_argument("--b", default=None, help="LABEL=TREE (compared with A)")
    ap.add_argument("--work", default="", help="comma-separated workloads (see the doc)")
    ap.add_argument("--rounds", type=int, default=7, help="timed calls per tree and workload")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backward", action="store_true", help="time forward+backward")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or the worker's CPU time (steadier on a shared machine "
                    "with --threads 1: other jobs' load does not count)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        _worker(a.threads)
        return 0
    if not (a.a and a.b and a.work) or "=" not in a.a or "=" not in a.b:
        ap.error("--a LABEL=TREE, --b LABEL=TREE and --work are required")
    os.environ["AB_CLOCK"] = a.clock
    trees = [Tree(*s.split("=", 1), a.threads) for s in (a.a, a.b)]
    print(f"# {trees[0].label} = {trees[0].module}\n# {trees[1].label} = {trees[1].module}\n"
          f"# {a.threads} thread(s), {'forward+backward' if a.backward else 'forward'}, "
          f"{a.rounds} interleaved rounds, {a.clock} clock; load average at start "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    A, Bl = trees[0].label, trees[1].label
    print(f"| workload | {A} min / med / max (s) | {Bl} min / med / max (s) | {Bl}/{A} "
          "(interval) | verdict |\n|---|---:|---:|---:|---|", flush=True)
    try:
        for work in a.work.split(","):
            times = {t.label: [] for t in trees}
            err = None
            for r in range(a.rounds):
                for t in (trees if r % 2 == 0 else trees[::-1]):
                    res = t.time(work, a.backward)
                    if "error" in res:
                        err = f"{t.label}: {res['error']}"
                        break
                    times[t.label].append(res["t"])
                if err:
                    break
            if err:
                print(f"| {work} | — | — | — | {err} |", flush=True)
                continue
            ta, tb = times[A], times[Bl]
            (qa1, qa3), (qb1, qb3) = quartiles(ta), quartiles(tb)
            ratio = statistics.median(tb) / statistics.median(ta)
            lo, hi = qb1 / qa3, qb3 / qa1
            verdict = "within noise" if lo <= 1 <= hi else ("faster" if hi < 1 else "slower")
            cell = lambda x: f"{min(x):.4f} / {statistics.median(x):.4f} / {max(x):.4f}"  # noqa
            print(f"| {work} | {cell(ta)} | {cell(tb)} | {ratio:.3f} ({lo:.2f}–{hi:.2f}) | "
                  f"{verdict} |", flush=True)
    finally:
        for t in trees:
            t.close()
    print(f"# load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
