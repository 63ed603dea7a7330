"""``attnkit inspect TEXT --model M --ablate zero|mean [--target T]``: which heads matter
for this output -- every head ablated (batched), ranked by the change in the target, with
Michel et al.'s head-mask gradient beside it (:mod:`attnkit.analysis.causal`). With
``--out``: ``ablation.png`` (layer x head heatmap), ``gradient.png``, ``ablation.json``."""
from __future__ import annotations

import os
import time

from ..core.errors import UsageError

_NOT_WITH = (("--from", "from_word"), ("--versus", "versus"), ("--generate", "generate"),
             ("--image", "image"), ("--layers", "layers"))


def run(args) -> int:
    from rich.console import Console

    from ..analysis import causal as C
    from ..analysis import causal_report as R
    for opt, name in _NOT_WITH:
        if getattr(args, name, None) is not None:
            raise UsageError(f"{opt}: does not combine with --ablate (which ranks every head "
                             f"by its effect on the output)")
    if args.top < 1:
        raise UsageError(f"--top: expected an integer >= 1, got {args.top}")
    R.check_out(args.out)
    if args.backend != "auto":
        raise UsageError(f"--backend: --ablate runs the model on attnkit's default backend; "
                         f"got {args.backend!r}")
    model, tok, plan, notes = R.open_model(args.model, "--ablate")
    inputs, toks = R.encode_text(tok, plan, args.text)
    target = R.make_target(plan, tok, toks, args.target)
    con = Console()
    t0 = time.perf_counter()
    probe = C.Probe(model, inputs, target)
    res = C.head_importance(probe, args.ablate)
    secs = time.perf_counter() - t0
    names = C.layer_names(model, probe.modules)
    con.print(f"[bold]{args.model}[/]: {plan.arch} ({plan.kind}), {len(toks)} tokens, "
              f"{sum(probe.n_heads)} heads; target: {R.describe_target(target, tok)}")
    for n in notes:
        con.print(f"[yellow]note:[/] {n}")
    con.print(f"every head ablated ({args.ablate}) in {res['passes']} batched forward "
              f"pass(es), gradients in one backward per {probe.chunk} rows; {secs:.1f} s")
    R.print_importance(con, res, names, args.top, tok)
    if args.out:
        eff = {(r["layer"], r["head"]): r["effect"] for r in res["rows"]}
        what = "drop in log-prob" if target.kind == "token" else "1 - cos"
        R.plot_grid(eff, probe.n_heads, names, os.path.join(args.out, "ablation.png"),
                    f"{args.model}: {args.ablate}-ablating one head, {what} of the\n"
                    f"{R.describe_target(target, tok)}", what)
        grad = {(r["layer"], r["head"]): r["gradient"] for r in res["rows"]}
        R.plot_grid(grad, probe.n_heads, names, os.path.join(args.out, "gradient.png"),
                    f"{args.model}: head-mask gradient (Michel et al. 2019)", "|gradient|")
        res.update(text=args.text, model=args.model, arch=plan.arch, kind=plan.kind,
                   tokens=toks.labels, layer_names=names, seconds=secs,
                   target_text=R.describe_target(target, tok))
        R.write_json(os.path.join(args.out, "ablation.json"), res)
        _page(args, res, probe, names, what)
        for p in ("ablation.png", "gradient.png", "ablation.json", "attention.html"):
            con.print(f"wrote {os.path.join(args.out, p)}")
    return 0


def _page(args, res, probe, names, what) -> None:
    """attention.html: the raw maps, the rollout and the ablation grid (rows: layers,
    columns: heads), opened on the most important head's map."""
    import torch

    from ..sources.capture import View
    from ..analysis.rollout import flow_view, rollout_view
    from ..sources import open_source
    from ..analysis.viewer import write_page
    from ..sources.words import from_pieces
    src = open_source(args.model, via="transformers")
    cap = src.capture(args.text, list(range(src.n_layers)))
    roll = [f(cap.main, cap.n_layers) for f in (rollout_view, flow_view)]
    L, Hm = len(probe.n_heads), max(probe.n_heads)
    grid = torch.zeros(1, 1, L, Hm)
    for r in res["rows"]:
        grid[0, 0, r["layer"], r["head"]] = max(r["effect"], 0.0)
    rows = from_pieces([f"layer {n}" for n in names])
    cols = from_pieces([f"head {h}" for h in range(Hm)])
    cap.views.append(View("ablation", f"{args.ablate}-ablating one head: {what} of the "
                          f"{res['target_text']} (rows: layers, columns: heads; negative "
                          f"changes shown as 0)", rows, cols, grid, [0], False))
    cap.views += [v for v in roll if v is not None]
    top = res["rows"][0]
    q = probe.target.position if probe.target.kind == "state" else len(cap.main.q) - 1 \
        if probe.target.kind == "token" else None
    write_page(os.path.join(args.out, "attention.html"), cap,
               open_on={"view": 0, "layer": int(names[top["layer"]]) if
                        names[top["layer"]].isdigit() else 0, "head": top["head"], "q": q})
