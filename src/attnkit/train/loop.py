"""The training loop: AdamW, warm-up + cosine schedule, evaluation, checkpoints, resume.

``train(cfg, out)`` runs ``cfg`` into the run directory ``out`` (see
:mod:`.checkpoint` for its layout); ``train(None, out, resume=True)`` continues the run
stored there from its latest checkpoint. Everything a step depends on -- weights,
optimizer moments, the RNG, the step number (data are a pure function of it), the
schedule (a function of it) -- is in the checkpoint, so on CPU a resumed run ends with
bit-identical weights and loss to an uninterrupted one (tested by killing it with
SIGKILL).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from .build import OBJECTIVES, build_model, evaluate, to_device
from .checkpoint import (CheckpointError, clean_partial, latest_checkpoint, load_checkpoint,
                         save_checkpoint, write_atomic)
from .config import TrainConfig
from .dist import DistEnv

__all__ = ["train", "lr_at", "RunExists"]


class RunExists(ValueError):
    """``out`` already holds a run and ``resume`` was not asked for."""


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``lr * min_lr_ratio``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
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


def train(cfg: TrainConfig | None, out, *, resume: bool = False, progress: bool = True,
          dist_timeout: float = 60.0, log=print) -> dict:
    """Run (or with ``resume`` continue) a training run in directory ``out``; returns the
    final metrics (also written to ``out/metrics.json``)."""
    out = Path(out)
    if resume:
        stored = _load_config(out)
        if cfg is not None and cfg.to_json() != stored.to_json():
            raise ValueError(f"resume: {out}/config.json differs from the configuration given; "
                             f"resume with the run's own configuration")
        cfg = stored
    elif (out / "config.json").exists():
        raise RunExists(f"out: {out} already holds a run (config.json); pass resume to continue "
                        f"it, or choose another directory")
    env = DistEnv.from_env(cfg.device, dist_timeout)
    try:
        return _run(cfg, out, env, resume, progress and env.main, log if env.main else None)
    finally:
        env.close()


def _run(cfg: TrainConfig, out: Path, env: DistEnv, resume: bool, progress: bool, log) -> dict:
    task = cfg.make_task()
    if task.kind == "graph" and env.world > 1:
        raise ValueError(f"task {cfg.task!r}: one graph is one batch; it cannot be split across "
                         f"{env.world} processes (run it in one)")
    env.check_batch(cfg.batch_size)
    objective = OBJECTIVES[task.kind]
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
    env.barrier()
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, opt)
        step, loss = state.pop("step"), state.pop("loss")
        if log:
            log(f"resumed {out} at step {step} from {ckpt.name}")
    ddp = env.wrap(model)
    eval_sets = task.eval_batches(cfg.eval_batch_size)
    mine = eval_sets[env.rank::env.world] if len(eval_sets) >= env.world else eval_sets
    reduce = env.all_sum if len(eval_sets) >= env.world else (lambda t: t)
    n_params = sum(p.numel() for p in model.parameters())
    unit = UNIT[task.kind]
    t_start, units0 = time.perf_counter(), state["units"]

    bar = _Bar(cfg, step, progress)
    try:
        while step < cfg.steps:
            lr = lr_at(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr
            full = task.batch(step, cfg.batch_size)
            b = to_device(env.shard(full), env.device)
            loss_sum, count = objective.loss(ddp, b)
            # one collective: scored targets and summed loss over every process
            totals = env.all_sum(torch.tensor([count, loss_sum.item()], dtype=torch.float64))
            count_all = max(float(totals[0]), 1.0)
            loss = float(totals[1]) / count_all
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
            bar.update(step, loss, f"{rate:,.0f} {unit}/s")
            if step % cfg.eval_every == 0 or step == cfg.steps:
                metrics = evaluate(ddp, objective, mine, env.device, reduce)
                state["history"].append({"step": step, "loss": loss, **metrics})
                if log:
                    bar.log(f"step {step}: loss {loss:.4f}, " +
                            ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                state["elapsed_s"] += time.perf_counter() - t_start
                t_start, units0 = time.perf_counter(), state["units"]
                if env.main:
                    save_checkpoint(out, step, model, opt, {**state, "loss": loss},
                                    keep=cfg.keep_ckpts)
                env.barrier()
    finally:
        bar.close()
    final = {
        "config": json.loads(cfg.to_json()),
        "task": task.describe(),
        "parameters": n_params,
        "world_size": env.world,
        "steps": step,
        "final_loss": loss,
        "eval": {k: v for k, v in (state["history"][-1] if state["history"] else {}).items()
                 if k not in ("step", "loss")},
        "history": state["history"],
        "train_time_s": round(state["elapsed_s"], 3),
        f"{unit}_per_s": round(state["units"] / max(state["elapsed_s"], 1e-9), 1),
    }
    if env.main:
        write_atomic(out / "metrics.json", json.dumps(final, indent=1))
    return final


class _Bar:
    """A rich progress bar (step, loss, throughput, ETA) on the main process, or nothing."""

    def __init__(self, cfg: TrainConfig, start: int, enabled: bool):
        self.prog = None
        self.console = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.console = Console(stderr=True)
        self.prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                             TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                             TextColumn("eta"), TimeRemainingColumn(), console=self.console)
        self.prog.start()
        self.task = self.prog.add_task(cfg.label(), total=cfg.steps, completed=start,
                                       loss="-", rate="-")

    def update(self, step: int, loss: float, rate: str) -> None:
        if self.prog:
            self.prog.update(self.task, completed=step, loss=f"{loss:.4f}", rate=rate)

    def log(self, text: str) -> None:
        (self.prog.console.print if self.prog else print)(text)

    def close(self) -> None:
        if self.prog:
            self.prog.stop()
