"""The command-line side of :mod:`attnkit.analysis.causal` (``attnkit inspect --ablate``
and ``attnkit patch``): open a model on transformers with attnkit inside, read the text,
resolve the target, print tables that fit 80 columns, write the heatmap PNG and JSON.

Every user error is a :class:`~attnkit.core.errors.UsageError` (one line, exit 2), found before
the heavy work: a directory that is an ``attnkit train`` run (attnkit's own model, linear
and SSM variants included: the integration cannot run it), an architecture outside
transformers' ``AttentionInterface``, an encoder-decoder or image model (the Python API
serves those), a ``--target`` token not in the vocabulary or a word not in the text.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..core.errors import UsageError
from . import causal as C

__all__ = ["open_model", "encode_text", "make_target", "print_importance", "print_patching",
           "plot_grid", "write_json"]


def _train_run(d: Path) -> str | None:
    f = d / "config.json"
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(cfg, dict) and "model_type" not in cfg and "attention" in cfg and \
            ("task" in cfg or (d / "ckpt").is_dir()):
        return str(cfg.get("attention") or "dense")
    return None


def open_model(arg: str, what: str = "--ablate"):
    """(model with attnkit inside, tokenizer, plan) for a named model or HF directory."""
    from ..loading import resolve
    from ..core.errors import CheckpointError
    from ..sources import open_source
    try:
        d = resolve(arg)
    except (CheckpointError, FileNotFoundError, ValueError, TypeError) as e:
        raise UsageError(f"--model: {e}") from None
    att = _train_run(d)
    if att is not None:
        kind = "linear attention: no softmax heads" if att.startswith("linear") else \
            "an SSM: no attention heads" if att == "ssm" else f"attention {att!r}"
        raise UsageError(f"--model: {d} is an attnkit train run ({kind}), attnkit's own "
                         f"model, not a transformers checkpoint: {what} runs transformers "
                         f"models with attnkit inside")
    src = open_source(str(d), via="transformers")
    plan = src.plan
    if plan.kind not in ("encoder", "decoder"):
        raise UsageError(f"--model: {plan.arch} is {'an' if plan.kind[0] in 'ei' else 'a'} "
                         f"{plan.kind} model; {what} serves text encoders and decoders on the "
                         f"command line (others: attnkit.analysis.causal in Python)")
    from ..integrations import hf as integration
    tok = src.processor()
    model, notes = src.load_model()
    try:
        integration.check(model)
    except ValueError as e:
        raise UsageError(f"--model: {str(e).removeprefix('model: ')}") from None
    return model, tok, plan, notes


def encode_text(tok, plan, text: str, arg: str = "text"):
    """(inputs dict of batch 1, Tokens); refuses empty text and over-long text."""
    from ..sources.hf_views import encode, text_limit
    if not text or not text.strip():
        raise UsageError(f"{arg}: expected the text to run (a quoted sentence)")
    limit, why = text_limit(plan, tok)
    notes: list = []
    ids, toks = encode(tok, text, limit, why, notes)
    if notes:
        raise UsageError(f"{arg}: {notes[0]}; give a shorter text")
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, toks


def vocab_token(tok, token: str) -> int:
    """``--target`` for decoders: one token of the vocabulary (as written, or with the
    leading space a word in running text has)."""
    vocab = tok.get_vocab()
    for cand in (token, " " + token):
        ids = tok(cand, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return int(ids[0])
    for raw in (token, "Ġ" + token, "▁" + token):
        if raw in vocab:
            return int(vocab[raw])
    pieces = tok.convert_ids_to_tokens(tok(" " + token, add_special_tokens=False)["input_ids"])
    raise UsageError(f"--target: {token!r} is not one token of {tok.__class__.__name__}'s "
                     f"vocabulary (it splits into {pieces}); give a single token")


def make_target(plan, tok, toks, target: str | None, foil: str | None = None) -> C.Target:
    """Encoders: the pooled embedding, or the final state of the word ``target``.
    Decoders: the next token's log-prob (``target`` or the model's top token)."""
    from ..sources.words import find_word
    if plan.kind == "decoder":
        tid = None if target is None else vocab_token(tok, target)
        fid = None if foil is None else vocab_token(tok, foil)
        return C.Target("token", "next token" if target is None else repr(target),
                        token_id=tid, foil_id=fid)
    if target is None:
        return C.Target("embedding", "pooled embedding (mean of the final states)")
    try:
        w = find_word(toks.words, target, "--target")
    except ValueError as e:
        raise UsageError(str(e)) from None
    pos = toks.groups()[w][-1] if hasattr(toks, "groups") else w
    return C.Target("state", f"final state of {target!r}", position=int(pos))


def _tok_label(tok, i) -> str:
    return repr(tok.decode([i])) if i is not None else "-"


def describe_target(t: C.Target, tok) -> str:
    if t.kind == "token":
        s = f"log-prob of the next token {_tok_label(tok, t.token_id)}"
        return s + (f" minus {_tok_label(tok, t.foil_id)}'s" if t.foil_id is not None else "")
    return t.label


def print_importance(con, res: dict, names, top: int, tok) -> None:
    """The ranked table: 7 narrow columns, fits 80 columns."""
    from rich.table import Table
    tgt = res["target"]
    dec = tgt["kind"] == "token"
    what = "drop in log-prob" if dec else "1 - cos"
    t = Table(title=f"Heads ranked by ablation ({res['ablate']}): {what}")
    for c in ("rank", "layer", "head", what, *(["KL"] if dec else []),
              *(["gradient"] if "spearman" in res else [])):
        t.add_column(c, justify="right", no_wrap=True)
    for r in res["rows"][:top]:
        t.add_row(str(r["rank"]), names[r["layer"]], str(r["head"]), f"{r['effect']:.4g}",
                  *([f"{r['kl']:.4g}"] if dec else []),
                  *([f"{r['gradient']:.4g}"] if "gradient" in r else []))
    con.print(t)
    if "spearman" in res:
        con.print(f"agreement of ablation and head-mask gradient (Michel et al. 2019) over "
                  f"{len(res['rows'])} heads: Spearman {res['spearman']:.3f}")


def print_patching(con, res: dict, names, top: int) -> None:
    from rich.table import Table
    t = Table(title="Heads ranked by the share of the difference they restore")
    for c in ("rank", "layer", "head", "share restored"):
        t.add_column(c, justify="right", no_wrap=True)
    for k, r in enumerate(res["rows"][:top], 1):
        t.add_row(str(k), names[r["layer"]], str(r["head"]), f"{r['share']:+.3f}")
    con.print(t)
    con.print(summary(res, names))


def summary(res: dict, names) -> str:
    """Plain language: which heads carry the difference."""
    rows = res["rows"]
    top = [r for r in rows if r["share"] > 0][:3]
    best_layer = max(range(len(res["layers"])), key=lambda i: res["layers"][i])
    s = (f"Patching every head's clean output into the corrupted run restores "
         f"{res['every_head']:.0%} of the difference" + (
             " (the rest rides on the changed tokens' own residual streams). "
             if abs(res["every_head"] - 1) > 0.005 else ". "))
    if top:
        s += ("The heads that carry most of it: " + ", ".join(
            f"layer {names[r['layer']]} head {r['head']} ({r['share']:.0%})" for r in top)
            + f"; layer {names[best_layer]} as a whole restores "
            f"{res['layers'][best_layer]:.0%}. ")
    conc = sum(r["share"] for r in top)
    s += ("A few heads carry it." if conc >= 0.5 * res["every_head"] else
          "No few heads carry it: the difference is spread over many heads.")
    return s


def plot_grid(values, n_heads, names, path: str, title: str, label: str) -> None:
    """A layer x head heatmap of one number per head."""
    from .plots import _plt
    plt = _plt()
    L, Hm = len(n_heads), max(n_heads)
    grid = torch.full((L, Hm), float("nan"))
    for (li, h), v in values.items():
        grid[li, h] = v
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * Hm, 1.0 + 0.45 * L))
    vmax = float(grid.nan_to_num(0).abs().max()) or 1.0
    im = ax.imshow(grid.numpy(), cmap="magma" if float(grid.nan_to_num(0).min()) >= 0 else "RdBu_r",
                   vmin=0 if float(grid.nan_to_num(0).min()) >= 0 else -vmax, vmax=vmax,
                   aspect="auto", interpolation="nearest")
    ax.set_xticks(range(Hm))
    ax.set_yticks(range(L))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: str, doc: dict) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False)


def check_out(out: str | None) -> None:
    if out is None:
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out: expected a directory (created if missing), got the existing "
                         f"file {out!r}")
    from .plots import require_matplotlib
    require_matplotlib()
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out: cannot create the directory {out!r} ({e.strerror})") from None
