"""``attnkit train --sweep``: a grid of runs (task x attention variant x width, each over
learning rates x seeds) and the quality table.

Each run is an ordinary run directory under ``OUT/runs/`` trained in its own process
(``python -m attnkit.train``), so a failing run is recorded and the grid goes on; a
sweep run again with the same ``--out`` reuses finished runs and resumes unfinished
ones from their checkpoints.

A *cell* of the table is one (task, variant, width). With ``lrs`` it is trained at
each learning rate and keeps the best (highest mean score over the seeds; then the
highest minimum; then the smaller rate), as Zoology keeps the best of its learning
rates; with ``seeds`` every rate is run with every seed, and the cell reports the mean
and the minimum over the seeds at the kept rate, so a "not learned" is not one unlucky
initialisation. Every run is recorded in ``quality.json``. The score is the run's final
evaluation: accuracy for sequence, image and graph tasks, exact match for translation.
The evaluation set doubles as the validation set that picks the rate (as in Zoology);
with 1000 held-out examples a pick among 3 rates moves a score by < 0.01 when runs
converge to the target.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .config import MAIN_METRIC, TrainConfig, run_slug
from .recipe import describe

__all__ = ["run_sweep", "write_table", "MAIN_METRIC", "summarise"]


def _flags(cfg: dict) -> list[str]:
    out = []
    for k, v in cfg.items():
        flag = f"--{k.replace('_', '-')}"
        if v is None:
            continue
        if isinstance(v, bool):
            out.append(flag if v else f"--no-{k.replace('_', '-')}")
        else:
            out += [flag, str(v)]
    return out


def _run_one(cfg: dict, run_dir: Path, threads: int | None) -> dict:
    """Train one run in its own process: resume it from its checkpoint if it is
    unfinished, extend it if it stopped at fewer steps than ``cfg`` asks (without
    reaching the target; constant schedule only, which extends exactly), else reuse it.
    The run's output streams into ``RUN.log`` as it trains."""
    metrics = run_dir / "metrics.json"
    resume = (run_dir / "config.json").is_file()
    extra = []
    if resume:
        stored = json.loads((run_dir / "config.json").read_text())
        if stored.get("schedule") == "constant":  # steps/target may change exactly
            extra = ["--steps", str(cfg["steps"])]
            if cfg.get("target_acc") is not None:
                extra += ["--target-acc", str(cfg["target_acc"])]
        if metrics.is_file():
            done = json.loads(metrics.read_text())
            if not extra or done.get("stopped") == "target" or done["steps"] >= cfg["steps"]:
                return {**done, "reused": True}
    cmd = [sys.executable, "-m", "attnkit.train", "--no-progress"]
    cmd += ["--resume", str(run_dir)] + extra if resume else _flags(cfg) + ["--out", str(run_dir)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    t0 = time.perf_counter()
    log = run_dir.with_name(run_dir.name + ".log")
    with open(log, "a" if resume else "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code == 130:
        return {"interrupted": True}
    if code != 0 or not metrics.is_file():
        lines = log.read_text().strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {code}",
                "wall_s": round(time.perf_counter() - t0, 1)}
    return {**json.loads(metrics.read_text()), "wall_s": round(time.perf_counter() - t0, 1)}


def _run_record(run: dict, res: dict, metric: str) -> dict:
    rec = {"lr": run["lr"], "seed": run["seed"], "run": str(run["dir"])}
    if "error" in res:
        return {**rec, "error": res["error"]}
    return {**rec, "score": res["eval"].get(metric), "eval": res["eval"],
            "final_loss": res["final_loss"], "steps": res["steps"],
            "stopped": res.get("stopped", "steps"), "parameters": res["parameters"],
            "train_time_s": res["train_time_s"]}


def summarise(runs: list[dict], target: float | None = None) -> dict:
    """A cell from its runs (``_run_record``s): per learning rate the seeds' scores,
    mean and min; the kept rate; the cell's mean/min/scores at that rate.

    The kept rate: the most seeds at the ``target`` score (when there is one), then --
    among rates where every seed got there -- the fewest steps on average (they all
    stopped near the target, so their scores differ by noise), else the highest mean
    score; then the highest minimum; then the smaller rate."""
    by_lr: dict = {}
    for r in runs:
        by_lr.setdefault(r["lr"], []).append(r)
    per_lr = []
    for lr, rs in by_lr.items():
        ok = [r for r in rs if "error" not in r]
        entry = {"lr": lr, "seeds": [r["seed"] for r in rs],
                 "scores": [r.get("score") for r in rs],
                 "errors": [r["error"] for r in rs if "error" in r]}
        if ok and not entry["errors"]:
            sc = [r["score"] for r in ok]
            entry.update(mean=statistics.fmean(sc), min=min(sc),
                         steps=[r["steps"] for r in ok],
                         train_time_s=sum(r["train_time_s"] for r in ok))
            if target is not None:
                entry["reached"] = sum(x >= target for x in sc)
        per_lr.append(entry)
    good = [e for e in per_lr if "mean" in e]
    if not good:
        return {"error": "; ".join(sorted({x for e in per_lr for x in e["errors"]})),
                "per_lr": per_lr}

    def rank(e):
        reached = e.get("reached", 0)
        every = target is not None and reached == len(e["scores"])
        return (reached, -statistics.fmean(e["steps"]) if every else e["mean"], e["min"],
                -e["lr"])
    best = max(good, key=rank)
    return {"score": best["mean"], "min": best["min"], "scores": best["scores"],
            "seeds": best["seeds"], "lr": best["lr"], "steps": best["steps"],
            "n_seeds": len(best["scores"]), "per_lr": per_lr,
            "train_time_s": sum(r["train_time_s"] for r in runs if "error" not in r)}


def run_sweep(tasks: list[str], variants: list[str], widths: list[int], out: Path, *,
              base: dict | None = None, jobs: int = 1, threads: int | None = None,
              progress: bool = True, lrs: list[float] | None = None,
              seeds: list[int] | None = None) -> dict:
    """Train every (task, variant, width) at every rate in ``lrs`` with every seed in
    ``seeds`` (default: ``base``'s lr and seed), with the shared settings ``base``
    (TrainConfig fields); write and return the quality table."""
    from .loop import TrainingInterrupted
    base = dict(base or {})
    lrs = lrs or [base.pop("lr", TrainConfig.lr)]
    seeds = seeds if seeds is not None else [base.pop("seed", TrainConfig.seed)]
    base.pop("lr", None), base.pop("seed", None)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected an int >= 1, got {jobs!r}")
    cells, runs = [], []
    for task in tasks:
        for width in widths:
            for variant in variants:
                cfg = {**base, "task": task, "attention": variant, "width": width}
                c = TrainConfig(**cfg, lr=lrs[0])   # validates before anything runs
                cell = {"task": task, "variant": variant, "width": width,
                        "kind": c.make_task().kind, "metric": c.main_metric,
                        "target": c.target_acc,
                        "recipe": describe(c, lrs if len(lrs) > 1 else None),
                        "runs": []}
                cells.append(cell)
                for lr in lrs:
                    for seed in seeds:
                        rc = {**cfg, "lr": lr, "seed": seed}
                        TrainConfig(**rc)
                        slug = run_slug(f"{task}-{variant}-d{width}-lr{lr:g}-s{seed}")
                        runs.append({"cell": cell, "cfg": rc, "lr": lr, "seed": seed,
                                     "dir": out / "runs" / slug})
    (out / "runs").mkdir(parents=True, exist_ok=True)
    results: list[dict | None] = [None] * len(runs)

    from rich.console import Console
    from rich.progress import Progress
    con = Console(stderr=True)
    with Progress(console=con, disable=not progress) as prog:
        bar = prog.add_task(f"sweep: {len(runs)} runs", total=len(runs))

        def work(i):
            r = runs[i]
            res = _run_one(r["cfg"], r["dir"], threads)
            results[i] = res
            c = r["cell"]
            if "interrupted" in res:
                return
            prog.console.print(
                f"{c['task']} {c['variant']} d{c['width']} lr {r['lr']:g} seed {r['seed']}: " +
                (f"error: {res['error']}" if "error" in res else
                 f"{c['metric']} {res['eval'].get(c['metric']):.3f}, loss "
                 f"{res['final_loss']:.4f}, {res['steps']} steps, {res['train_time_s']:.0f} s"))
            prog.advance(bar)
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(work, range(len(runs))))
    if any("interrupted" in r for r in results if r):
        raise TrainingInterrupted(out, -1)
    for r, res in zip(runs, results):
        r["cell"]["runs"].append(_run_record(r, res, r["cell"]["metric"]))
    table = {"tasks": tasks, "variants": variants, "widths": widths, "lrs": lrs,
             "seeds": seeds, "base": base, "cells": [{**c, **summarise(c["runs"], c["target"])}
                                                     for c in cells]}
    for p in write_table(table, out):
        con.print(f"wrote {p}")
    return table


def _fmt(c: dict | None, lrs: list) -> str:
    if c is None:
        return "-"
    if "error" in c:
        return "error"
    txt = f"{c['score']:.3f}"
    if c.get("n_seeds", 1) > 1:
        txt += f" (min {c['min']:.3f})"
    if len(lrs) > 1:
        txt += f" @{c['lr']:g}"
    return txt


def write_table(table: dict, out: Path) -> list[Path]:
    """quality.md (rows: task x width; columns: variants), quality.json, quality.png."""
    out = Path(out)
    rows = [(t, w) for t in table["tasks"] for w in table["widths"]]
    by = {(c["task"], c["width"], c["variant"]): c for c in table["cells"]}
    lrs, seeds = table.get("lrs", [None]), table.get("seeds", [None])
    lines = ["| task | width | " + " | ".join(table["variants"]) + " |",
             "|---|---:|" + "---:|" * len(table["variants"])]
    for t, w in rows:
        lines.append(f"| {t} | {w} | " + " | ".join(_fmt(by.get((t, w, v)), lrs)
                                                 for v in table["variants"]) + " |")
    done = [c for c in table["cells"] if "error" not in c]
    total = sum(c["train_time_s"] for c in done)
    n_runs = sum(len(c.get("runs", [None])) for c in table["cells"])
    lines += ["", f"Score: final evaluation accuracy (exact match for translation)"
              + (f", mean over seeds {','.join(map(str, seeds))} (min in brackets)"
                 if len(seeds) > 1 else "")
              + (f", at the best of lr {', '.join(f'{x:g}' for x in lrs)} (after @)"
                 if len(lrs) > 1 else "")
              + f". {n_runs} runs, {total / 60:.1f} min of training in all."]
    recipes = sorted({c["recipe"] for c in table["cells"] if "recipe" in c})
    lines += [f"Recipe: {r}." for r in recipes]
    errors = [c for c in table["cells"] if "error" in c]
    lines += [f"- error in {c['task']} {c['variant']} d{c['width']}: {c['error']}" for c in errors]
    paths = [out / "quality.md", out / "quality.json"]
    paths[0].write_text("\n".join(lines) + "\n")
    paths[1].write_text(json.dumps(table, indent=1, default=str))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return paths
    grid = np.full((len(rows), len(table["variants"])), np.nan)
    for i, (t, w) in enumerate(rows):
        for j, v in enumerate(table["variants"]):
            c = by.get((t, w, v))
            if c is not None and "error" not in c:
                grid[i, j] = c["score"]
    ylabels = [f"{t} d{w}" for t, w in rows]
    # figure size from the labels' lengths (in characters, ~0.085 in each at 10 pt), so long
    # task names such as mqar:seq_len=256:n_pairs=16:vocab_size=512 fit beside the grid
    left = 0.085 * max(len(y) for y in ylabels) + 0.4
    bottom = 0.06 * max(len(str(v)) for v in table["variants"]) + 0.5
    width = max(left + 1.1 * len(table["variants"]) + 2.4, 6.5)
    fig, ax = plt.subplots(figsize=(width, 0.5 * len(rows) + bottom + 1.0))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(table["variants"])), table["variants"], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), ylabels)
    for i in range(len(rows)):
        for j in range(len(table["variants"])):
            txt = "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.3f}"
            ax.text(j, i, txt, ha="center", va="center",
                    color="white" if np.isnan(grid[i, j]) or grid[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="eval score" + (" (mean over seeds)" if len(seeds) > 1
                                                  else ""))
    fig.suptitle("attnkit train --sweep: quality by task and attention variant", fontsize=10)
    fig.tight_layout()
    paths.append(out / "quality.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
