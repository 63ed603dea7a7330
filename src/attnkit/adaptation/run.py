"""One adapt run: data, the two stages, evaluation, checkpoints and exact resume.

Steps ``1 .. stage1`` are attention transfer (only the stage-1 parameters get gradients,
lr ``lr1``), the rest distillation of the whole model (full fine-tuning, lr ``lr2``). One
AdamW holds every parameter of the student; its state, the step, the history and the
time spent are checkpointed with :mod:`attnkit.train.checkpoint` (atomic, survives
``kill -9``). A step's batch is drawn from a generator seeded by (seed, step), and the
student runs in eval mode (dropout off: it is distilled towards a deterministic teacher),
so a resumed run repeats the same steps exactly. Ctrl-C: the step in flight completes, a
checkpoint is written, the run says how to resume.

Data parallel (``torchrun --nproc_per_node P -m attnkit adapt ...``; gloo on CPU), with
:class:`attnkit.train.dist.DistEnv`: every process loads the same teacher and student and
draws the same global batch, keeps its rows ``[r*B/P, (r+1)*B/P)`` (``--batch-size`` must
divide by P) and computes its additive share of the global loss
(:mod:`.objectives`: numerators over its rows, denominators summed over the processes);
after ``backward`` the gradients are summed over the processes explicitly
(:meth:`DistEnv.sum_grads`), then clipped and stepped -- the same on every process, so the
weights stay identical and a step equals the single-process step on the whole batch up to
the order of float sums. Not DistributedDataParallel: stage 1 calls the student's
attention modules directly (on the teacher's inputs), outside any wrapper's forward, so
DDP's reducer would never be prepared for that backward; and the trainable set changes
between the stages (``requires_grad``), which a DDP wrapper fixes at construction.
Evaluation runs on every process, identically (no collective to time out on a long
evaluation); only rank 0 writes (run file, checkpoints, the adapted directory), prints
and shows the progress bar. The loss and Ctrl-C are agreed in one collective per step,
so every process stops at the same step: a terminal's Ctrl-C reaches torchrun's agent,
which forwards SIGINT once to each worker; they finish the step, checkpoint and exit
(tested, as is SIGKILL of the whole job). ``--resume DIR`` under torchrun with the same
process count continues exactly; with another count (or none) it continues the same run,
equal up to the order of float sums.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..train.checkpoint import (clean_partial, latest_checkpoint, load_checkpoint,
                                save_checkpoint, write_atomic)
from ..train.dist import DistEnv
from ..train.loop import SigintFlag
from ..train.progress import ProgressBar
from .config import AdaptConfig
from .objectives import distill_loss, evaluate, matches_weights, transfer_loss
from .save import RUN_FILE, check_out, save_adapted
from .student import open_pair

__all__ = ["adapt", "split_windows"]

STAGE2 = ("full fine-tuning of every weight (peft is not a dependency of attnkit and the "
          "models adapted here are small enough to train whole)")


def stage1_loss(pair, weights: float) -> dict:
    """The record's description of stage 1's loss (``loss``, and ``weights``: the weight
    of the weight-matching term, None where the variant has none)."""
    out = "attention-module output, relative MSE, summed over layers"
    if not matches_weights(pair):
        return {"loss": out + " (outputs only: attention weights are matched for linear "
                "and gqa variants)", "weights": None}
    if not weights:
        why = (", the default for a fixed feature map" if pair.variant.is_linear
               and not pair.variant.learned else "")
        return {"loss": f"{out} (attention-weight matching off: --stage1-weights 0{why})",
                "weights": 0.0}
    row = ("the linear attention's normalised row phi(q)phi(k)^T / sum_j phi(q)phi(k_j)^T"
           if pair.variant.is_linear else
           "the student's softmax row softmax(q pool(k)^T * scale), its keys mean-pooled")
    return {"loss": (f"{out} + {weights:g} x attention-weight matching: KL(teacher's softmax "
                     f"row, from the teacher's q/k || {row}), same causal/padding mask, "
                     "mean over (batch, head, query), summed over layers"),
            "weights": float(weights)}


def _read(path, option: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{option}: {path} is not a file")
    text = p.read_text(errors="replace")
    if not text.strip():
        raise ValueError(f"{option}: {path} is empty")
    return text


def split_windows(pair, cfg: AdaptConfig) -> tuple[list, list]:
    """(training windows, held-out windows), each a list of ``(1, seq)`` id tensors."""
    def wins(path, option):
        try:
            return pair.source.windows(_read(path, option), cfg.seq)
        except ValueError as e:
            raise ValueError(f"{option}: {str(e).split(': ', 1)[-1]}") from None
    if cfg.seq > pair.source.max_tokens:
        raise ValueError(f"--seq: {cfg.model} takes at most {pair.source.max_tokens} tokens, "
                         f"got {cfg.seq}")
    train = wins(cfg.text, "--text")
    if cfg.eval_text is not None:
        held = wins(cfg.eval_text, "--eval-text")
        if not held:
            raise ValueError(f"--eval-text: {cfg.eval_text} is shorter than one {cfg.seq}-token "
                             "window")
    else:
        n = max(1, round(len(train) * cfg.eval_fraction))
        if len(train) - n < cfg.batch_size:
            raise ValueError(f"--text: {cfg.text} gives {len(train)} windows of {cfg.seq} "
                             f"tokens; a batch of {cfg.batch_size} plus a held-out split needs "
                             f"at least {cfg.batch_size + 1}")
        train, held = train[:-n], train[-n:]
    if len(train) < cfg.batch_size:
        raise ValueError(f"--text: {cfg.text} gives {len(train)} windows of {cfg.seq} tokens, "
                         f"fewer than one batch ({cfg.batch_size})")
    return train, held[:cfg.eval_windows]


def headline(kind: str, m: dict) -> str:
    """The fidelity in one short phrase (bench's names)."""
    if kind == "encoder":
        return (f"embedding_cosine {m['embedding_cosine']:.4f} (min "
                f"{m['embedding_cosine_min']:.4f}), worst_layer_error "
                f"{m['worst_layer_error']:.3f}")
    return (f"kl {m['kl']:.4f}, top1_agreement {m['top1_agreement']:.3f}, ppl_change "
            f"{m['ppl_change']:+.3f}")


def _batch(train: list, cfg: AdaptConfig, step: int):
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    idx = torch.randperm(len(train), generator=g)[:cfg.batch_size].tolist()
    return torch.cat([train[i] for i in idx])                       # (B, seq)


def _set_stage(pair, opt, cfg: AdaptConfig, step: int) -> str:
    stage1 = step <= cfg.stage1
    keep = {id(p) for p in pair.stage1_params}
    for p in pair.student.parameters():
        p.requires_grad_(not stage1 or id(p) in keep)
    for g in opt.param_groups:
        g["lr"] = cfg.lr1 if stage1 else cfg.lr2
    return "stage 1" if stage1 else "stage 2"


def adapt(model: str | None = None, variant: str | None = None, text=None, steps=None,
          out=None, *, resume: bool = False, progress: bool = True, log=print,
          dist_timeout: float = 60.0, **options) -> dict:
    """Adapt ``model`` to ``variant`` on ``text`` (a file) for ``steps`` and write the
    adapted Hugging Face directory ``out``; ``resume=True`` continues the run in ``out``
    (``steps`` may extend it). ``options``: the other :class:`AdaptConfig` fields.
    Under torchrun (WORLD_SIZE > 1): data parallel, see the module doc (``dist_timeout``:
    the process group's, seconds). Returns the record stored in the directory's config
    (fidelity before, during and after; time spent). ValueError (one line) on bad input."""
    out = Path(out) if out is not None else None
    if out is None:
        raise ValueError("--out: expected a directory for the adapted model")
    check_out(out, resume)
    if resume:
        saved = json.loads((out / RUN_FILE).read_text())
        if steps is not None:
            saved["steps"] = steps
        cfg = AdaptConfig.from_dict(saved)
    else:
        cfg = AdaptConfig(model=model, variant=variant, text=text, steps=steps, **options)
    env = DistEnv.from_env("cpu", dist_timeout)
    try:
        env.check_batch(cfg.batch_size, "--batch-size")
        return _adapt(cfg, out, env, resume, progress and env.main,
                      log if env.main else (lambda *a: None))
    finally:
        env.close()


def _adapt(cfg: AdaptConfig, out: Path, env: DistEnv, resume: bool, progress: bool,
           log) -> dict:
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    pair = open_pair(cfg.model, cfg.variant)
    train, held = split_windows(pair, cfg)
    opt = torch.optim.AdamW(pair.student.parameters(), lr=cfg.lr2, weight_decay=0.0)
    env.barrier()                   # every process has checked `out` before rank 0 writes
    step, history, elapsed = 0, [], 0.0
    if resume and env.main:
        clean_partial(out)
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, pair.student, opt)
        step, history, elapsed = state["step"], state["history"], state["elapsed"]
    else:
        if env.main:
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(out / RUN_FILE, json.dumps(cfg.to_dict(), indent=1))
        history.append({"step": 0, **evaluate(pair, held, cfg.batch_size)})
        log(f"{cfg.variant} zero-shot: {headline(pair.kind, history[0])}")
    total = env.all_sum if env.world > 1 else None
    bar = ProgressBar(cfg.label(), cfg.steps, step, progress, fields=("stage", "loss", "fid"))
    t0 = time.perf_counter()
    interrupted = False
    try:
        with SigintFlag() as sig:
            while step < cfg.steps:
                step += 1
                stage = _set_stage(pair, opt, cfg, step)
                opt.zero_grad(set_to_none=True)
                ids = env.shard({"ids": _batch(train, cfg, step)})["ids"]   # (B/P, seq)
                loss = (transfer_loss(pair, ids, total, cfg.stage1_weights)
                        if stage == "stage 1" else distill_loss(pair, ids, total))
                loss.backward()
                env.sum_grads(pair.student.parameters())
                torch.nn.utils.clip_grad_norm_(
                    [p for p in pair.student.parameters() if p.grad is not None], 1.0)
                opt.step()
                # one collective: the global loss, Ctrl-C on any process
                agreed = env.all_sum(torch.tensor([loss.item(), sig.raised],
                                                  dtype=torch.float64))
                stop = float(agreed[1]) > 0
                bar.update(step, stage=stage, loss=f"loss {float(agreed[0]):.4f}")
                last = step == cfg.steps
                if step % cfg.every == 0 or last:
                    history.append({"step": step, "stage": stage,
                                    **evaluate(pair, held, cfg.batch_size)})
                    bar.update(step, fid=headline(pair.kind, history[-1]).split(",")[0])
                if step % (cfg.ckpt_every or cfg.every) == 0 or last or stop:
                    if env.main:
                        save_checkpoint(out, step, pair.student, opt, {
                            "history": history,
                            "elapsed": elapsed + time.perf_counter() - t0}, keep=1)
                    env.barrier()
                if stop and not last:
                    interrupted = True
                    break
    finally:
        bar.close()
    elapsed += time.perf_counter() - t0
    if interrupted:
        launch = (f"torchrun --nproc_per_node {env.world} -m attnkit adapt" if env.world > 1
                  else "attnkit adapt")
        log(f"interrupted at step {step}; continue with: {launch} --resume {out}")
        raise KeyboardInterrupt
    record = {"teacher": str(pair.source.plan.directory), "steps": cfg.steps,
              "stage1": {"steps": cfg.stage1, "trains": pair.stage1_what, "lr": cfg.lr1,
                         **stage1_loss(pair, cfg.stage1_weights)},
              "stage2": {"steps": cfg.steps - cfg.stage1, "trains": STAGE2, "lr": cfg.lr2,
                         "loss": ("pooled-embedding cosine + per-layer hidden MSE"
                                  if pair.kind == "encoder" else "KL(teacher || student)")},
              "seq": cfg.seq, "batch_size": cfg.batch_size, "processes": env.world,
              "held_out_windows": len(held), "seconds": round(elapsed, 1), "history": history}
    rec = save_adapted(pair, out, record) if env.main else record
    env.barrier()
    log(f"{cfg.variant} adapted ({cfg.steps} steps, {elapsed:.0f} s): "
        f"{headline(pair.kind, history[-1])}")
    log(f"wrote {out}: load it with attnkit.hf.from_pretrained({str(out)!r}) or "
        f"AutoModel.from_pretrained(..., attn_implementation={pair.name!r})")
    return rec
