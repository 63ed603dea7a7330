"""``attnkit bench --adapt N``: adapt each candidate variant of a bench run for N steps
(through :func:`attnkit.adaptation.adapt`, one run per variant and length) and hand bench's
report the adapted fidelity as data (``res["adaptation"]``, drawn by
:mod:`attnkit.bench.adapted`).

* **Held-out text.** Each run is adapt's own: trained on ``--text`` minus its held-out
  split, evaluated on ``--eval-text`` or on the last ``eval_fraction`` of ``--text``'s
  windows, which training never sees. Zero-shot (history step 0) and adapted (the last
  step) fidelity are both on those held-out windows, so they compare; bench's own
  zero-shot table is on the *first* windows of ``--text``, some of which adaptation
  trains on.
* **Speed and memory.** An adapted window/bigbird/linear model runs the same operations
  as the zero-shot variant at the same shapes (only the weights' values changed), so its
  speed and memory are bench's zero-shot row. A *learned* variant (``gqa:N``,
  ``linear:hedgehog``) cannot run zero-shot in bench; its adapted directory is benched
  (``variants=[v]`` against that directory's dense attention) for its speed and memory.
* **Directories.** ``root/<variant>@<n>`` (``:`` -> ``-``). One that holds this very run
  (its ``adapt.json`` equal to these settings) is reused when finished, resumed when not
  (a Ctrl-C'd bench continues where it stopped); one that holds anything else is refused.
* A variant that cannot be adapted (adapt's one-line refusal, e.g. ``gqa:3`` on 4 K/V
  heads) is listed zero-shot only, with that reason.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from ..engine.variants import parse_variant
from .config import AdaptConfig
from .run import adapt, split_windows
from .save import RUN_FILE

__all__ = ["Plan", "plan_runs", "run_plans", "slug"]

# adapt's option names -> bench's, for adapt's own one-line errors
_BENCH_NAMES = {"--steps": "--adapt", "--eval-every": "--adapt-every",
                "--batch-size": "--adapt-batch-size", "--out": "--adapt-dir"}


def _bench_names(msg: str) -> str:
    head, sep, rest = msg.partition(":")
    return _BENCH_NAMES.get(head, head) + sep + rest


def slug(variant: str, n: int) -> str:
    """The directory name of one run: ``window:64`` at 256 -> ``window-64@256``."""
    return f"{variant.replace(':', '-')}@{n}"


@dataclass
class Plan:
    """One adapt run to do (or to reuse / resume)."""
    variant: str
    n: int
    cfg: AdaptConfig | None         # None: not adaptable (``reason``)
    out: Path | None
    state: str = "new"              # new | resume | done | refused
    reason: str | None = None
    record: dict | None = field(default=None, repr=False)


def _existing(out: Path, cfg: AdaptConfig) -> tuple[str, dict | None]:
    """new | resume | done for ``out``; ValueError if it holds something else."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "new", None
    try:
        saved = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        raise ValueError(f"--adapt-dir: {out} already holds other files; give an empty or "
                         "new directory") from None
    new = cfg.to_dict()
    try:        # a run saved before a field existed: the value it was trained with
        saved = AdaptConfig.from_dict(saved).to_dict()
    except (ValueError, TypeError):
        pass
    diff = [k for k in new if saved.get(k) != new[k]] if isinstance(saved, dict) else ["?"]
    if diff:
        k = diff[0]
        was = saved.get(k) if isinstance(saved, dict) else None
        name = _bench_names("--" + k.replace("_", "-") + ":").rstrip(":")
        raise ValueError(f"--adapt-dir: {out} already holds an adapt run with other settings "
                         f"({name} {was!r} there, {new[k]!r} now); give an empty or new "
                         "directory")
    try:
        rec = json.loads((out / "config.json").read_text())["attnkit_adapted"]
    except (OSError, ValueError, KeyError, TypeError):
        return "resume", None
    return "done", rec


def plan_runs(model: str, text: str, variants: list[str], seqs: list[int], steps: int,
              root, *, source, eval_text: str | None = None, every: int | None = None,
              batch_size: int | None = None, threads: int | None = None) -> list[Plan]:
    """Check every run before any starts (ValueError, one line, naming bench's option):
    the adapt settings, that the text gives a batch plus a held-out split at each length
    (with bench's already opened ``source``'s tokenizer), and the directories."""
    model = model if not os.path.exists(model) else os.path.abspath(model)
    opts = {"eval_text": None if eval_text is None else os.path.abspath(eval_text),
            "eval_every": every, "threads": threads or None}
    if batch_size is not None:
        opts["batch_size"] = batch_size
    plans = []
    for v in variants:
        var = parse_variant(v)
        if var.is_dense:
            continue
        for n in seqs:
            try:
                cfg = AdaptConfig(model=model, variant=var.text, text=os.path.abspath(text),
                                  steps=steps, seq=n, **opts)
            except ValueError as e:
                if str(e).startswith("--variant"):
                    plans.append(Plan(var.text, n, None, None, "refused", str(e)))
                    continue
                raise ValueError(_bench_names(str(e))) from None
            try:
                split_windows(SimpleNamespace(source=source), cfg)
            except ValueError as e:
                raise ValueError(f"{_bench_names(str(e))} (--adapt needs it at --seq {n})") \
                    from None
            out = Path(root) / slug(var.text, n)
            state, rec = _existing(out, cfg)
            plans.append(Plan(var.text, n, cfg, out, state, record=rec))
    return plans


def _run_one(p: Plan, log, progress: bool) -> None:
    if p.state == "done":
        log(f"{p.variant} at n={p.n}: reusing the finished run in {p.out}")
        return
    try:
        if p.state == "resume":
            log(f"{p.variant} at n={p.n}: continuing the run in {p.out}")
            p.record = adapt(out=p.out, resume=True, progress=progress, log=log)
        else:
            c = p.cfg.to_dict()
            p.record = adapt(c.pop("model"), c.pop("variant"), c.pop("text"), c.pop("steps"),
                             p.out, progress=progress, log=log, **c)
    except KeyboardInterrupt:
        log("interrupted; run the same bench command again to continue (finished runs are "
            "reused, the interrupted one resumes)")
        raise
    except ValueError as e:                # adapt's one-line refusal: not adaptable here
        p.state, p.reason = "refused", _bench_names(str(e))
        return
    p.state = "done"


def _timing(p: Plan, text: str, bench_cfg) -> dict:
    """Speed and memory of a learned variant: its adapted directory, benched at ``n``."""
    from dataclasses import replace

    from ..bench.model_bench import run_model_bench
    from ..core.errors import UsageError
    from ..sources import open_source
    cfg = replace(bench_cfg, seqs=[p.n], variants=[p.variant], layers=None, max_windows=1)
    try:
        res = run_model_bench(open_source(str(p.out)).ready(), text, cfg)
    except (ValueError, UsageError) as e:      # reported in the row, not a crash
        return {"error": f"not timed: {str(e).splitlines()[0]}"}
    row = next(r for r in res["rows"] if r["variant"] == p.variant)
    keep = ("model_time", "attention_time", "model_speedup", "attention_speedup",
            "peak_bytes", "memory_ratio", "memory_method", "served_by")
    return {k: row[k] for k in keep if k in row} | {
        "from": f"the adapted directory, against its own dense attention ({p.out})"}


def _held_out(cfg: AdaptConfig) -> str:
    if cfg.eval_text is not None:
        return f"--eval-text {cfg.eval_text}"
    return (f"the last {cfg.eval_fraction:.0%} of --text's windows at each length, which "
            "adaptation never trains on")


def run_plans(plans: list[Plan], text: str, bench_cfg, *, log=print,
              progress: bool = True, keep: bool = True) -> dict:
    """Run (or reuse) every plan; the ``res["adaptation"]`` dict of bench's report.
    ``text``: bench's text (for timing learned variants); ``keep``: whether the adapted
    directories are kept (False: a temporary root, said in the report)."""
    runs = []
    for p in plans:
        if p.state != "refused":
            _run_one(p, log, progress)
        run = {"variant": p.variant, "n": p.n, "learned": parse_variant(p.variant).learned}
        if p.state == "refused":
            runs.append(run | {"status": "not adapted", "reason": p.reason})
            continue
        rec, h = p.record, p.record["history"]
        run |= {"status": "adapted", "dir": str(p.out) if keep else None,
                "steps": rec["steps"], "stage1_steps": rec["stage1"]["steps"],
                "stage1_trains": rec["stage1"]["trains"], "seconds": rec["seconds"],
                "held_out_windows": rec["held_out_windows"], "history": h,
                "zero_shot": h[0], "adapted": h[-1]}
        if run["learned"]:
            if progress:
                log(f"{p.variant} at n={p.n}: timing the adapted model")
            run["timing"] = _timing(p, text, bench_cfg)
        runs.append(run)
    cfgs = [p.cfg for p in plans if p.cfg is not None]
    first = cfgs[0] if cfgs else None
    return {"steps": first.steps if first else None,
            "every": first.every if first else None,
            "batch_size": first.batch_size if first else None,
            "held_out": _held_out(first) if first else None,
            "dir": str(next(p.out for p in plans if p.out).parent) if keep and cfgs else None,
            "runs": runs}
