"""The parity matrix of attnkit inside transformers, printed as a markdown table.

For every architecture in tests/hf_models.py (random weights, saved with save_pretrained):
``attn_implementation="attnkit"`` against ``"eager"`` on a padded batch of 2 (left padding
for decoders, right for encoders): max |difference| of the outputs (logits or last hidden
state) at real positions, of the ``output_attentions`` weights at real query rows, and
whether greedy generation with the cache (6 tokens) gives identical tokens.

    python benchmarks/hf_parity.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import attnkit.hf  # noqa: E402
from hf_models import CASES, REFUSED, batch, save  # noqa: E402


def _load(path, impl):
    import transformers
    cfg = transformers.AutoConfig.from_pretrained(path)
    cls = getattr(transformers, cfg.architectures[0])
    return cls.from_pretrained(path, attn_implementation=impl).eval()


def _out(o):
    return o.logits if getattr(o, "logits", None) is not None else o.last_hidden_state


def row(case, root: Path) -> dict:
    path = save(case, root / case.name)
    eager, ours = _load(path, "eager"), _load(path, attnkit.hf.register())
    inputs, real = batch(case)
    with torch.no_grad():
        a, b = eager(**inputs, output_attentions=True), ours(**inputs, output_attentions=True)
        out = float((_out(a)[real] - _out(b)[real]).abs().max())
        w = 0.0
        for key in ("attentions", "encoder_attentions", "decoder_attentions", "cross_attentions"):
            for x, y in zip(getattr(a, key, None) or (), getattr(b, key, None) or ()):
                rows = real
                if key == "encoder_attentions":
                    m = inputs.get("attention_mask")
                    rows = m.bool() if m is not None else torch.ones(x.shape[0], x.shape[2],
                                                                      dtype=bool)
                w = max(w, float((x.transpose(1, 2)[rows] - y.transpose(1, 2)[rows]).abs().max()))
        gen = "—"
        if case.kind in ("decoder", "seq2seq", "audio"):
            kw = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
            g = dict(max_new_tokens=6, do_sample=False, use_cache=True)
            gen = "identical" if torch.equal(eager.generate(**kw, **g), ours.generate(**kw, **g)) \
                else "DIFFERENT"
    return {"model": type(ours).__name__, "note": case.note, "out": out, "w": w, "gen": gen}


def refused(case, root: Path) -> dict:
    """A model attnkit refuses: the first forward of a plain from_pretrained raises."""
    path = save(case, root / case.name)
    ours = _load(path, attnkit.hf.register())
    inputs, _ = batch(case)
    try:
        ours(**inputs)
    except attnkit.UnsupportedCall as e:
        return {"model": type(ours).__name__, "note": case.note, "refused": str(e)}
    raise AssertionError(f"{case.name}: expected attnkit to refuse it")


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        rows = [row(c, Path(d)) for c in CASES]
        no = [refused(c, Path(d)) for c in REFUSED]
    print("| model | what it exercises | outputs max \\|Δ\\| | weights max \\|Δ\\| | greedy generation |")
    print("|---|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {r['note'] or '—'} | {r['out']:.1e} | {r['w']:.1e} | {r['gen']} |")
    for r in no:
        print(f"| {r['model']} | {r['note']} | refused | refused | refused |")


if __name__ == "__main__":
    main()
