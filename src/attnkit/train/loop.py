"""The training loop: AdamW, warm-up then a constant or cosine schedule, evaluation,
stopping at a target score, checkpoints, resume, extension, Ctrl-C.

``train(cfg, out)`` runs ``cfg`` into the run directory ``out`` (see
:mod:`.checkpoint` for its layout); ``train(None, out, resume=True)`` continues the run
stored there from its latest checkpoint. Everything a step depends on -- weights,
optimizer moments, the RNG, the step number (data are a pure function of it), the
schedule (a function of it), the process settings that change float results
(:mod:`.settings`) -- is in the run directory, so on CPU a resumed run ends with
bit-identical weights and loss to an uninterrupted one (tested by killing it with
SIGKILL and resuming with ``--resume DIR`` alone).

Extension: ``train(None, out, resume=True, steps=N)`` continues a finished or
unfinished run to ``N`` steps. Under the constant schedule the learning rate at a step
does not depend on the total, so the result equals a run started with ``N`` steps
(weights, loss and evaluation history; the evaluation at the old end is dropped from
the history unless it lies on the ``eval_every`` grid). Under the cosine schedule it
cannot (every step's rate depends on the total): refused.

Ctrl-C (SIGINT): the step in flight completes, a checkpoint is written, and
:class:`TrainingInterrupted` is raised (the CLI prints how to resume, exit code 130);
a second Ctrl-C interrupts at once (the last complete checkpoint stays valid).
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from .build import build_model, evaluate, objective_for, to_device
from .checkpoint import (CheckpointError, clean_partial, latest_checkpoint, load_checkpoint,
                         save_checkpoint, write_atomic)
from .config import TrainConfig
from .dist import DistEnv
from .progress import ProgressBar
from .recipe import describe
from .settings import apply_threads, restore_settings, save_settings

__all__ = ["train", "lr_at", "RunExists", "TrainingInterrupted", "SigintFlag"]


class RunExists(ValueError):
    """``out`` already holds a run and ``resume`` was not asked for."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the run stopped after ``step`` with a checkpoint there, resumable."""

    def __init__(self, out: Path, step: int):
        super().__init__(f"interrupted at step {step}")
        self.out, self.step = Path(out), step


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant (``schedule="constant"``) or
    cosine decay to ``lr * min_lr_ratio`` at ``steps`` (``"cosine"``)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _optimizer(cfg: TrainConfig, model) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (dim >= 2) only, as in GPT-2/nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)


UNIT = {"lm": "tok", "seq2seq": "tok", "image": "img", "graph": "node"}


def _units(batch: dict, kind: str) -> int:
    """How much one batch is, in UNIT[kind], for the throughput."""
    if kind == "lm":
        return batch["input"].numel()
    if kind == "seq2seq":
        return batch["src"].numel() + batch["tgt_in"].numel()
    return int(batch["x" if kind == "graph" else "label"].shape[0])


def _load_config(out: Path) -> TrainConfig:
    path = out / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; nothing to resume in {out}")
    try:
        return TrainConfig.from_json(path.read_text())
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def _warn(text: str) -> None:
    print(f"attnkit train: warning: {text}", file=sys.stderr)


def _extend(cfg: TrainConfig, out: Path, steps: int | None, target_acc) -> TrainConfig:
    """``cfg`` with the overrides a resume may take (``steps``, ``target_acc``: neither
    changes a step's numbers), checked against the run's checkpoint."""
    changes = {}
    if steps is not None and steps != cfg.steps:
        if cfg.schedule == "cosine":
            raise ValueError(
                f"steps: this run's cosine schedule decays over its {cfg.steps} steps, so its "
                f"learning rate at every step differs from a {steps}-step run's: it cannot be "
                f"extended exactly; start a new run with --steps {steps} (runs with "
                f"--schedule constant, the default, extend exactly)")
        ckpt = latest_checkpoint(out)
        done = json.loads((ckpt / "state.json").read_text())["step"] if ckpt else 0
        if steps < done:
            raise ValueError(f"steps: the run in {out} is already at step {done}; expected "
                             f"--steps >= {done}, got {steps}")
        changes["steps"] = steps
    if target_acc is not None and target_acc != cfg.target_acc:
        changes["target_acc"] = target_acc
    return dataclasses.replace(cfg, **changes) if changes else cfg


def train(cfg: TrainConfig | None, out, *, resume: bool = False, progress: bool = True,
          dist_timeout: float = 60.0, log=print, threads: int | None = None,
          steps: int | None = None, target_acc: float | None = None) -> dict:
    """Run (or with ``resume`` continue) a training run in directory ``out``; returns the
    final metrics (also written to ``out/metrics.json``).

    ``threads``: torch CPU threads (None: torch's default for a new run, the run's own
    on resume). ``steps`` / ``target_acc`` (resume only): extend or shorten the run,
    change its stopping score (see the module docstring)."""
    out = Path(out)
    apply_threads(threads)
    if resume:
        stored = _load_config(out)
        if cfg is not None and cfg.to_json() != stored.to_json():
            raise ValueError(f"resume: {out}/config.json differs from the configuration given; "
                             f"resume with the run's own configuration")
        cfg = _extend(stored, out, steps, target_acc)
    elif (out / "config.json").exists():
        raise RunExists(f"out: {out} already holds a run (config.json); pass resume to continue "
                        f"it, or choose another directory")
    elif steps is not None or target_acc is not None:
        raise ValueError("steps, target_acc: overrides of a resumed run; give them in cfg")
    env = DistEnv.from_env(cfg.device, dist_timeout)
    try:
        if resume:
            for w in restore_settings(out, cfg.device, threads):
                if env.main and log is not None:
                    _warn(w)
        return _run(cfg, out, env, resume, progress and env.main, log if env.main else None)
    finally:
        env.close()


class SigintFlag:
    """While active (main thread only), the first SIGINT sets ``raised`` instead of
    interrupting; the second gets the previous handler (KeyboardInterrupt)."""

    def __init__(self):
        self.raised, self._prev = False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True
        signal.signal(signal.SIGINT, self._prev)

    def __exit__(self, *exc):
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)


def _run(cfg: TrainConfig, out: Path, env: DistEnv, resume: bool, progress: bool, log) -> dict:
    task = cfg.make_task()
    if task.kind == "graph" and env.world > 1:
        raise ValueError(f"task {cfg.task!r}: one graph is one batch; it cannot be split across "
                         f"{env.world} processes (run it in one)")
    env.check_batch(cfg.batch_size)
    _prepare(task, out, env, resume)
    objective = objective_for(cfg, task)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, task).to(env.device)
    opt = _optimizer(cfg, model)
    state = {"history": [], "elapsed_s": 0.0, "units": 0}
    step, loss = 0, float("nan")
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        clean_partial(out)
        if not resume:
            write_atomic(out / "config.json", cfg.to_json())
            save_settings(out, cfg.device)
        elif (out / "config.json").read_text() != cfg.to_json():     # extended
            write_atomic(out / "config.json", cfg.to_json())
            (out / "metrics.json").unlink(missing_ok=True)
    env.barrier()
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, opt)
        step, loss = state.pop("step"), state.pop("loss")
        # an extended run's history is the one a run started with cfg.steps would have
        state["history"] = [h for h in state["history"]
                            if h["step"] % cfg.eval_every == 0 or h["step"] == cfg.steps]
        if log:
            log(f"resumed {out} at step {step} from {ckpt.name}")
    ddp = env.wrap(model)
    eval_sets = task.eval_batches(cfg.eval_batch_size)
    mine = eval_sets[env.rank::env.world] if len(eval_sets) >= env.world else eval_sets
    reduce = env.all_sum if len(eval_sets) >= env.world else (lambda t: t)
    n_params = sum(p.numel() for p in model.parameters())
    unit = UNIT[task.kind]
    t_start, units0 = time.perf_counter(), state["units"]

    hist = state["history"]
    reached = (cfg.target_acc is not None and bool(hist) and hist[-1]["step"] == step
               and hist[-1].get(cfg.main_metric, -1) >= cfg.target_acc)
    saved = step                                   # the step of the newest checkpoint
    bar = ProgressBar(cfg.label(), cfg.steps, step, progress, fields=("loss", "rate"))
    try:
        with SigintFlag() as sigint:
            while step < cfg.steps and not reached:
                lr = lr_at(cfg, step)
                for g in opt.param_groups:
                    g["lr"] = lr
                full = task.batch(step, cfg.batch_size)
                b = to_device(env.shard(full), env.device)
                loss_sum, count = objective.loss(ddp, b)
                # one collective: scored targets, summed loss, Ctrl-C on any process
                totals = env.all_sum(torch.tensor([count, loss_sum.item(), sigint.raised],
                                                  dtype=torch.float64))
                count_all = max(float(totals[0]), 1.0)
                loss = float(totals[1]) / count_all
                stop = float(totals[2]) > 0
                opt.zero_grad(set_to_none=True)
                (loss_sum * env.world / count_all).backward()        # DDP averages over world
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                state["units"] += _units(full, task.kind)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {step} (lr {lr:.3g}); "
                                             f"try a smaller --lr")
                rate = (state["units"] - units0) / max(time.perf_counter() - t_start, 1e-9)
                bar.update(step, loss=f"loss {loss:.4f}", rate=f"{rate:,.0f} {unit}/s")
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    metrics = evaluate(ddp, objective, mine, env.device, reduce)
                    state["history"].append({"step": step, "loss": loss, **metrics})
                    if log:
                        bar.log(f"step {step}: loss {loss:.4f}, " +
                                ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                    if cfg.target_acc is not None and \
                            metrics.get(cfg.main_metric, -1) >= cfg.target_acc:
                        reached = True
                if step % cfg.ckpt_every == 0 or step == cfg.steps or reached or stop:
                    state["elapsed_s"] += time.perf_counter() - t_start
                    t_start, units0 = time.perf_counter(), state["units"]
                    if env.main:
                        save_checkpoint(out, step, model, opt, {**state, "loss": loss},
                                        keep=cfg.keep_ckpts)
                    env.barrier()
                    saved = step
                if stop:
                    raise TrainingInterrupted(out, saved)
    finally:
        bar.close()
    final = {
        "config": json.loads(cfg.to_json()),
        "task": task.describe(),
        "parameters": n_params,
        "world_size": env.world,
        "steps": step,
        "stopped": ("target" if reached and step < cfg.steps else "steps"),
        "recipe": describe(cfg),
        "final_loss": loss,
        "eval": {k: v for k, v in (state["history"][-1] if state["history"] else {}).items()
                 if k not in ("step", "loss")},
        "history": state["history"],
        "train_time_s": round(state["elapsed_s"], 3),
        f"{unit}_per_s": round(state["units"] / max(state["elapsed_s"], 1e-9), 1),
    }
    if env.main and cfg.model == "llama":
        from .hf_lm import export
        final["model_dir"] = str(export(out, model, task, final["eval"]))
        if log and "heldout_loss" in final["eval"]:
            log(f"held-out loss {final['eval']['heldout_loss']:.4f} (perplexity "
                f"{math.exp(final['eval']['heldout_loss']):.2f}); wrote {final['model_dir']}")
    if env.main:
        write_atomic(out / "metrics.json", json.dumps(final, indent=1))
    return final


def _prepare(task, out: Path, env: DistEnv, resume: bool) -> None:
    """Tasks that read files (``lm``) prepare their data before the model is built: the
    main process trains the tokenizer and writes it into the run (a resumed run reads
    its own), then the others read it."""
    if not hasattr(task, "prepare"):
        return
    if env.main:
        task.prepare(out, load=resume)
    env.barrier()
    if not env.main:
        task.prepare(out, load=True)
