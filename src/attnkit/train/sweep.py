"""``attnkit train --sweep``: a grid of runs (task x attention variant x width) and the
quality table.

Each cell is an ordinary run directory under ``OUT/runs/`` trained in its own process
(``python -m attnkit.train``), so a failing cell is recorded and the grid goes on; a
sweep run again with the same ``--out`` reuses finished cells and resumes unfinished
ones from their checkpoints. The table (``quality.md``, ``quality.json``,
``quality.png``) has one row per (task, width) and one column per variant; a cell is
the run's final evaluation score: accuracy for sequence, image and graph tasks, exact
match for translation.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .config import TrainConfig, run_slug

__all__ = ["run_sweep", "write_table", "MAIN_METRIC"]

MAIN_METRIC = {"lm": "accuracy", "seq2seq": "exact_match", "image": "accuracy",
               "graph": "accuracy"}


def _flags(cfg: dict) -> list[str]:
    out = []
    for k, v in cfg.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def _cell(cfg: dict, run_dir: Path, threads: int | None) -> dict:
    """Train one cell in its own process (resuming it if a checkpoint is there)."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        return {**json.loads(metrics.read_text()), "reused": True}
    resume = (run_dir / "config.json").is_file()
    cmd = [sys.executable, "-m", "attnkit.train", "--no-progress"]
    cmd += ["--resume", str(run_dir)] if resume else _flags(cfg) + ["--out", str(run_dir)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    run_dir.with_name(run_dir.name + ".log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not metrics.is_file():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}",
                "wall_s": round(time.perf_counter() - t0, 1)}
    return {**json.loads(metrics.read_text()), "wall_s": round(time.perf_counter() - t0, 1)}


def run_sweep(tasks: list[str], variants: list[str], widths: list[int], out: Path, *,
              base: dict | None = None, jobs: int = 1, threads: int | None = None,
              progress: bool = True) -> dict:
    """Train every (task, variant, width) with the shared settings ``base`` (TrainConfig
    fields); write and return the quality table."""
    base = dict(base or {})
    cells = []
    for task in tasks:
        for width in widths:
            for variant in variants:
                cfg = {**base, "task": task, "attention": variant, "width": width}
                c = TrainConfig(**cfg)              # validates before anything runs
                cells.append({"task": task, "variant": variant, "width": width, "cfg": cfg,
                              "kind": c.make_task().kind,
                              "dir": out / "runs" / run_slug(f"{task}-{variant}-d{width}")})
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected an int >= 1, got {jobs!r}")
    results: list[dict | None] = [None] * len(cells)

    from rich.console import Console
    from rich.progress import Progress
    con = Console(stderr=True)
    with Progress(console=con, disable=not progress) as prog:
        bar = prog.add_task(f"sweep: {len(cells)} runs", total=len(cells))

        def work(i):
            c = cells[i]
            res = _cell(c["cfg"], c["dir"], threads)
            results[i] = res
            score = res.get("eval", {}).get(MAIN_METRIC[c["kind"]])
            prog.console.print(f"{c['task']} {c['variant']} d{c['width']}: " +
                               (f"error: {res['error']}" if "error" in res else
                                f"{MAIN_METRIC[c['kind']]} {score:.3f}, loss "
                                f"{res['final_loss']:.4f}, {res['train_time_s']:.0f} s"))
            prog.advance(bar)
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(work, range(len(cells))))
    table = {"tasks": tasks, "variants": variants, "widths": widths, "base": base,
             "cells": [{k: c[k] for k in ("task", "variant", "width", "kind")} | {
                 "run": str(c["dir"]),
                 **({"error": r["error"]} if "error" in r else {
                     "metric": MAIN_METRIC[c["kind"]],
                     "score": r["eval"].get(MAIN_METRIC[c["kind"]]),
                     "eval": r["eval"], "final_loss": r["final_loss"],
                     "parameters": r["parameters"], "steps": r["steps"],
                     "train_time_s": r["train_time_s"]})}
                 for c, r in zip(cells, results)]}
    for p in write_table(table, out):
        con.print(f"wrote {p}")
    return table


def write_table(table: dict, out: Path) -> list[Path]:
    """quality.md (rows: task x width; columns: variants), quality.json, quality.png."""
    out = Path(out)
    rows = [(t, w) for t in table["tasks"] for w in table["widths"]]
    by = {(c["task"], c["width"], c["variant"]): c for c in table["cells"]}

    def cell(c):
        if c is None:
            return "-"
        return "error" if "error" in c else f"{c['score']:.3f}"
    lines = ["| task | width | " + " | ".join(table["variants"]) + " |",
             "|---|---:|" + "---:|" * len(table["variants"])]
    for t, w in rows:
        lines.append(f"| {t} | {w} | " + " | ".join(cell(by.get((t, w, v)))
                                                 for v in table["variants"]) + " |")
    done = [c for c in table["cells"] if "error" not in c]
    total = sum(c["train_time_s"] for c in done)
    lines += ["", f"Score: final evaluation accuracy (exact match for translation). "
              f"{len(done)} runs, {total / 60:.1f} min of training in all."]
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
    fig, ax = plt.subplots(figsize=(1.1 * len(table["variants"]) + 3, 0.5 * len(rows) + 1.8))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(table["variants"])), table["variants"], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [f"{t} d{w}" for t, w in rows])
    for i in range(len(rows)):
        for j in range(len(table["variants"])):
            txt = "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}"
            ax.text(j, i, txt, ha="center", va="center",
                    color="white" if np.isnan(grid[i, j]) or grid[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="eval score")
    ax.set_title("attnkit train --sweep: quality by task and attention variant")
    fig.tight_layout()
    paths.append(out / "quality.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
