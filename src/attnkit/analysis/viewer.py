"""A self-contained interactive attention viewer: one HTML file, inline JS/CSS, no network.

``write_page(path, capture, heads=..., ranking=...)`` embeds every view of a
:class:`~attnkit.sources.capture.Capture` (self, encoder/decoder/cross, generation,
patches): for each head its map as uint8, each row relative to its largest weight (the
row maxima travel along as float32, so the page shows a row's, the head's or the 0..1
scale without losing the small weights of long rows). The page has

* a compact title (model, path, token count; the text folded in a ``<details>``);
* pickers that scale to 80 layers x 64 heads: select boxes, arrow keys and an overview
  grid with one thumbnail per (layer, head) -- click one to open it;
* the heatmap with square cells, row (query) and column (key) labels aligned to the
  cells, a colour scale, a tooltip (query -> key: weight) and, once a row is picked, the
  key tokens as chips coloured by that row's weights (and for a ViT the patch map over
  the image);
* the head-type scores of the layer, the contrast ranking (``--from/--to``) and every
  note (truncation, downsampling, generation stopping early).

Large views are downsampled for display -- at most :data:`MAX_SIDE` cells a side and
:data:`MAX_BYTES` of maps per page, by blocks (queries averaged, keys summed, so rows stay
distributions) -- and the page says so for each view.
"""
from __future__ import annotations

import base64
import html
import json
import math

import torch
from torch import Tensor

from ..sources.capture import Capture, View
from .inspect import HEAD_TYPES
from .viewer_assets import CSS, JS

MAX_SIDE = 256
MAX_BYTES = 24 * 2**20


def downsample(w: Tensor, fq: int, fk: int) -> Tensor:
    """(..., Tq, Tk) -> (..., ceil(Tq/fq), ceil(Tk/fk)): keys summed and queries averaged
    over blocks (a partial last block averages over its real rows)."""
    Tq, Tk = w.shape[-2:]
    rq, rk = math.ceil(Tq / fq), math.ceil(Tk / fk)
    w = torch.nn.functional.pad(w, (0, rk * fk - Tk, 0, rq * fq - Tq))
    n = torch.tensor([min(fq, Tq - i * fq) for i in range(rq)], dtype=w.dtype).view(-1, 1)
    rows = w.unflatten(-2, (rq, fq)).sum(-2) / n
    return rows.unflatten(-1, (rk, fk)).sum(-1)


def display_factors(views: list[View], max_side: int = MAX_SIDE,
                    max_bytes: int = MAX_BYTES) -> list[tuple[int, int]]:
    """Block sizes (fq, fk) per view: each side <= max_side cells, all maps <= max_bytes."""
    fs = [(math.ceil(len(v.q) / max_side), math.ceil(len(v.k) / max_side)) for v in views]

    def size(fs):
        return sum(v.weights.shape[0] * v.weights.shape[1] * math.ceil(len(v.q) / fq)
                   * math.ceil(len(v.k) / fk) for v, (fq, fk) in zip(views, fs))
    while size(fs) > max_bytes:
        s = math.sqrt(size(fs) / max_bytes) * 1.02
        fs = [(max(fq, math.ceil(fq * s)) if len(v.q) > fq else fq,
               max(fk, math.ceil(fk * s)) if len(v.k) > fk else fk)
              for v, (fq, fk) in zip(views, fs)]
    return fs


def _view_data(v: View, fq: int, fk: int, heads: list[dict] | None) -> tuple[dict, str | None]:
    w = v.weights.detach().float().cpu()
    L, H, Tq, Tk = w.shape
    d = downsample(w, fq, fk) if (fq, fk) != (1, 1) else w
    rq, rk = d.shape[-2:]
    rmax = d.amax(-1)                                                    # (L, H, rq)
    mx = rmax.amax(-1)                                                   # (L, H)
    q = (d / rmax.clamp_min(1e-30)[..., None] * 255).round().clamp(0, 255).to(torch.uint8)
    note = None
    if (fq, fk) != (1, 1):
        note = (f"{v.name}: {Tq} x {Tk} tokens shown as {rq} x {rk} cells (blocks of "
                f"{fq} queries x {fk} keys: queries averaged, keys summed), to keep the "
                f"page small; hover a cell for its token range")
    rows = None
    if heads is not None:
        rows = [[r["head"], *[None if r[t] is None else round(r[t], 3) for t in HEAD_TYPES],
                 r["type"]] for r in heads]
    data = {"name": v.name, "about": v.about, "L": L, "H": H, "Tq": Tq, "Tk": Tk, "rq": rq,
            "rk": rk, "fq": fq, "fk": fk, "layers": v.layers, "causal": v.causal,
            "qlabels": v.q.labels, "klabels": v.k.labels,
            "max": [[round(float(x), 6) for x in row] for row in mx],
            "maps": base64.b64encode(q.numpy().tobytes()).decode(),
            "rmax": base64.b64encode(rmax.float().contiguous().numpy().tobytes()).decode(),
            "types": rows}
    return data, note


def _preview(text: str, n: int = 90) -> str:
    t = " ".join(text.split())
    return t if len(t) <= n else t[:n].rstrip() + " …"


def write_page(path: str, capture: Capture, heads: dict[str, list[dict]] | None = None,
               ranking: dict | None = None, max_bytes: int = MAX_BYTES,
               open_on: dict | None = None) -> dict:
    """Write the viewer for ``capture``; ``heads`` maps a view name to its head-type rows
    (:func:`attnkit.analysis.inspect.classify_heads`), ``ranking`` is ``{"from", "to",
    "rows"}`` (:func:`rank_heads`). The page opens (without URL parameters) on
    ``open_on`` ``{"view", "layer", "head", "q"}``, by default the ranking's top head and
    its query ``ranking["q"]``. Returns what was embedded per view: (rows, cols, fq, fk)."""
    if not isinstance(capture, Capture) or not capture.views:
        raise ValueError(f"capture: expected a Capture with at least one view, got "
                         f"{type(capture).__name__}")
    heads = heads or {}
    fs = display_factors(capture.views, MAX_SIDE, max_bytes)
    views, notes = [], list(capture.notes)
    for v, (fq, fk) in zip(capture.views, fs):
        d, note = _view_data(v, fq, fk, heads.get(v.name))
        views.append(d)
        if note:
            notes.append(note)
    image = None
    if capture.image:
        vi = next(i for i, v in enumerate(capture.views) if v.name == "patches")
        v = capture.views[vi]
        first = capture.image["first"]
        cls = v.weights[:, :, :max(first, 1), :].float()                # (L, H, first, T)
        mx = cls.amax(-1, keepdim=True).clamp_min(1e-12)
        rows = (cls / mx * 255).round().to(torch.uint8)
        image = {"png": base64.b64encode(capture.image["png"]).decode(), "view": vi,
                 "grid": list(capture.image["grid"]), "first": first,
                 "rows": base64.b64encode(rows.numpy().tobytes()).decode(),
                 "rowmax": mx[..., 0].flatten().tolist()}
    n = len(capture.main.k)
    title = f"attnkit inspect · {capture.model}"
    sub = (f"{capture.arch} · {capture.attention} · {capture.kind} · "
           f"{n} tokens" + (f" · {capture.n_layers} layers" if capture.n_layers else ""))
    if open_on is None and ranking and ranking.get("rows"):
        top = ranking["rows"][0]
        open_on = {"view": ranking.get("view", 0), "layer": top["layer"], "head": top["head"],
                   "q": ranking.get("q")}
    data = {"views": views, "image": image, "ranking": ranking, "types": list(HEAD_TYPES),
            "open": open_on}
    text = capture.text or ""
    blob = json.dumps(data).replace("</", "<\\/")
    body = f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body>
<header><h1>{html.escape(title)}</h1><div class="sub">{html.escape(sub)}</div>
<details id="text"><summary>{html.escape(_preview(text))}</summary>
<div class="full">{html.escape(text)}</div></details></header>
<ul id="notes">{''.join(f'<li>{html.escape(x)}</li>' for x in notes)}</ul>
<div id="controls"><label>view <select id="view"></select></label>
<label>layer <select id="layer"></select></label> <label>head <select id="head"></select>
</label> <label>colour scale <select id="scale"><option value="head">0 .. this head's max
</option><option value="row">0 .. each row's max</option><option value="abs">0 .. 1</option>
</select></label>
<span class="hint">arrow keys: ←/→ head, ↑/↓ layer</span></div>
<div id="about"></div>
<div id="main"><div id="mapwrap"><div id="mapbox"><div id="corner"></div><div id="collabels"></div>
<div id="rowlabels"></div><div id="cells"><canvas id="heatmap"></canvas>
<canvas id="overlay"></canvas></div></div></div>
<div id="side"><div id="legend"><canvas id="legendbar" width="220" height="14"></canvas>
<div id="legendticks"></div><div class="cap">attention weight</div></div>
<div id="imagebox"></div><div id="headinfo"></div>
<div id="headsbox"><table id="heads"></table></div>
<div id="ranking"></div></div></div>
<h3 id="striptitle"></h3><div id="strip"></div>
<h3>All heads <span class="hint">(each thumbnail scaled to its own maximum; click to open)
</span></h3><div id="overviewbox"><canvas id="overview"></canvas></div>
<div id="tip"></div><pre id="selftest"></pre>
<script type="application/json" id="data">{blob}</script>
<script>{JS}</script></body></html>"""
    with open(path, "w", encoding="utf-8") as f:
        f.write(body)
    return {v["name"]: (v["rq"], v["rk"], v["fq"], v["fk"]) for v in views}
