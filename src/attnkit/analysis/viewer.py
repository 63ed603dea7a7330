"""A self-contained interactive attention viewer: one HTML file, no network.

``write_page(path, tokens, weights (L, H, T, T), head_rows, title)`` embeds every head's
weights as uint8 (w * 255, base64) and inline JS/CSS: layer/head pickers (kept in the
URL hash, ``#layer=5&head=11``), a canvas heatmap, token chips (hover one: its attention
to the others shows as their background), and the head-type table. Inputs of 512 tokens
or more are downsampled by block averages to at most 256 x 256 and token hover is off;
the page says so.
"""
from __future__ import annotations

import base64
import html
import json
import math

import torch
from torch import Tensor

MAX_SIDE = 256

_JS = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const cv = document.getElementById('heatmap'), ctx = cv.getContext('2d');
const selL = document.getElementById('layer'), selH = document.getElementById('head');
const raw = D.heads.map(l => l.map(b64 => Uint8Array.from(atob(b64), c => c.charCodeAt(0))));
for (let l = 0; l < D.L; l++) selL.add(new Option('layer ' + l, l));
for (let h = 0; h < D.H; h++) selH.add(new Option('head ' + h, h));
function color(v) {  // 0..255 -> dark blue .. yellow
  const t = v / 255;
  return [Math.round(255 * Math.min(1, 2 * t)), Math.round(40 + 200 * t), Math.round(120 * (1 - t) + 40)];
}
function draw() {
  const l = +selL.value, h = +selH.value, n = D.side, w = raw[l][h];
  const img = ctx.createImageData(n, n);
  for (let i = 0; i < n * n; i++) {
    const c = color(w[i]); img.data.set([c[0], c[1], c[2], 255], 4 * i);
  }
  const off = document.createElement('canvas'); off.width = off.height = n;
  off.getContext('2d').putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false; ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.drawImage(off, 0, 0, cv.width, cv.height);
  location.hash = 'layer=' + l + '&head=' + h;
  document.querySelectorAll('#heads tr').forEach(r =>
    r.classList.toggle('cur', r.dataset.l == l && r.dataset.h == h));
}
function hover(i, on) {
  const l = +selL.value, h = +selH.value, n = D.side, w = raw[l][h];
  document.querySelectorAll('.tok').forEach((el, j) => {
    el.style.background = on ? 'rgba(255,140,0,' + (w[i * n + j] / 255).toFixed(3) + ')' : '';
  });
}
if (!D.downsampled) {
  const box = document.getElementById('tokens');
  D.tokens.forEach((t, i) => {
    const s = document.createElement('span'); s.className = 'tok'; s.textContent = t;
    s.onmouseenter = () => hover(i, true); s.onmouseleave = () => hover(i, false);
    box.appendChild(s);
  });
}
const m = /layer=(\d+)&head=(\d+)/.exec(location.hash);
if (m && +m[1] < D.L && +m[2] < D.H) { selL.value = m[1]; selH.value = m[2]; }
selL.onchange = selH.onchange = draw;
document.querySelectorAll('#heads tr[data-l]').forEach(r => r.onclick = () => {
  selL.value = r.dataset.l; selH.value = r.dataset.h; draw(); });
draw();
"""

_CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1200px}#heatmap{border:1px solid #999;
image-rendering:pixelated}.tok{display:inline-block;padding:2px 4px;margin:2px;border:1px solid #ddd;
border-radius:3px;cursor:default}#heads td,#heads th{padding:1px 6px;text-align:right;font-size:12px}
#heads tr.cur{background:#ffe9a8}#heads tr[data-l]{cursor:pointer}.row{display:flex;gap:2em}"""


def _downsample(w: Tensor, max_side: int) -> Tensor:
    """(..., T, T) -> (..., s, s), s <= max_side: keys summed and queries averaged over
    blocks of f = ceil(T / max_side) tokens (rows stay distributions)."""
    T = w.shape[-1]
    f = math.ceil(T / max_side)
    side = math.ceil(T / f)
    pad = f * side - T
    w = torch.nn.functional.pad(w, (0, pad, 0, pad))
    rows = w.unflatten(-2, (side, f)).sum(-2) / torch.tensor(
        [min(f, T - i * f) for i in range(side)], dtype=w.dtype).view(-1, 1)  # real rows only
    return rows.unflatten(-1, (side, f)).sum(-1)


def write_page(path: str, tokens: list[str], weights: Tensor, head_rows: list[dict],
               title: str) -> dict:
    """Write the viewer; returns what was embedded (side, downsampling factor)."""
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"weights: expected (L, H, T, T), got {tuple(weights.shape)}")
    L, H, T, _ = weights.shape
    if len(tokens) != T:
        raise ValueError(f"tokens: expected {T} tokens (from weights), got {len(tokens)}")
    w = weights.detach().float().cpu()
    downsampled = T >= 512
    side = T
    if downsampled:
        w = _downsample(w, MAX_SIDE)
        side = w.shape[-1]
    q = (w.clamp(0, 1) * 255).round().to(torch.uint8)                    # (L, H, side, side)
    heads = [[base64.b64encode(q[layer, h].numpy().tobytes()).decode() for h in range(H)]
             for layer in range(L)]
    data = {"L": L, "H": H, "side": side, "tokens": tokens, "downsampled": downsampled,
            "heads": heads}
    note = (f"{T} tokens: heatmaps downsampled to {side} x {side} (block averages of "
            f"{math.ceil(T / side)} tokens); token hover is off." if downsampled else
            f"{T} tokens. Hover a token to see where it attends (orange = weight).")
    types = ("previous", "next", "self", "first", "broad")
    rows = "".join(
        f'<tr data-l="{r["layer"]}" data-h="{r["head"]}"><td>{r["layer"]}</td><td>{r["head"]}'
        f'</td>' + "".join(f"<td>{r[t]:.2f}</td>" for t in types) +
        f'<td>{html.escape(r["type"] or "-")}</td></tr>' for r in head_rows)
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1><p id="note">{html.escape(note)}</p>
<p><select id="layer"></select> <select id="head"></select></p>
<div id="tokens"></div>
<div class="row"><canvas id="heatmap" width="560" height="560"></canvas>
<div><table id="heads"><tr><th>layer</th><th>head</th>{''.join(f'<th>{t}</th>' for t in types)}
<th>type</th></tr>{rows}</table></div></div>
<script type="application/json" id="data">{json.dumps(data)}</script>
<script>{_JS}</script></body></html>"""
    with open(path, "w") as f:
        f.write(page)
    return {"side": side, "downsampled": downsampled}
