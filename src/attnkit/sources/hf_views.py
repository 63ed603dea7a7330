"""Running a transformers model for ``attnkit inspect``: text (encoder, decoder,
encoder-decoder, greedy generation with the model's cache) and images (ViT patches).

Generation: ``model.generate`` (greedy, the model's KV cache) returns one row of weights
per step; the step that consumes generated token g_s happens after generate stops for
the last token, so one more cached forward step gives g_{N-1}'s row. The rows are
assembled into one rectangular map (:func:`attnkit.sources.capture.assemble`).
"""
from __future__ import annotations

import io

import torch

from ..core.errors import UsageError
from .capture import View, assemble, looks_causal, piece_tokens, stack
from .hf_plan import Plan, attention_implementation_for_inspect
from .words import Tokens, from_offsets, from_pieces


def text_limit(p: Plan, tok, reserve: int = 0) -> tuple[int | None, str]:
    """The most tokens the model takes (minus ``reserve`` for generation) and why."""
    lims = []
    if p.max_len:
        lims.append((p.max_len, f"{p.max_len} positions in config.json"))
    ml = getattr(tok, "model_max_length", None)
    if isinstance(ml, int) and 0 < ml < 1_000_000:
        lims.append((ml, f"the tokenizer's model_max_length {ml}"))
    if not lims:
        return None, ""
    n, why = min(lims)
    return n - reserve, why


def encode(tok, text: str, limit: int | None, why: str, notes: list, what: str = "text"):
    """``input_ids (1, T)`` and :class:`Tokens`, truncated to ``limit`` with a note."""
    full = len(tok(text)["input_ids"])
    kw = {}
    if limit is not None and full > limit:
        if limit < 1:
            raise UsageError(f"--generate: leaves no room for the {what} ({why})")
        kw = {"truncation": True, "max_length": limit}
        notes.append(f"{what} truncated to its first {limit} of {full} tokens (the model's "
                     f"maximum: {why})")
    try:
        enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True, **kw)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError):   # slow tokenizers have no offsets
        enc, offsets = tok(text, return_special_tokens_mask=True, **kw), None
    ids = list(enc["input_ids"])
    raw = tok.convert_ids_to_tokens(ids)
    special = list(enc.get("special_tokens_mask") or [0] * len(ids))
    if offsets is not None:
        toks = from_offsets(text, raw, offsets, special)
    else:
        toks = from_pieces(raw, [tok.decode([i]) for i in ids], special)
    return torch.tensor([ids]), toks


def id_tokens(tok, ids: list[int], like: Tokens) -> Tokens:
    """Tokens for generated ids (no offsets: decoded one by one)."""
    raw = tok.convert_ids_to_tokens(ids)
    special = [i in set(tok.all_special_ids) for i in ids]
    return piece_tokens(raw, [tok.decode([i]) for i in ids], special, like=like)


def _cache(model, g) -> dict:
    """generate()'s KV cache as the forward argument of this transformers version
    (``cache`` in 5.x, ``past_key_values`` before)."""
    import inspect
    kv = getattr(g, "cache", None)
    if kv is None:
        kv = getattr(g, "past_key_values", None)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else \
        "past_key_values"
    return {name: kv, "use_cache": True}


def _steps(atts, layers, first: int = 0) -> list[list[torch.Tensor]]:
    """generate()'s per-step attentions -> [step][chosen layer] (H, 1, k) rows."""
    return [[a[li][0, :, -1:] for li in layers] for a in atts[first:]]


def _gen_kwargs(model, n: int) -> dict:
    gc = model.generation_config
    pad = gc.pad_token_id if gc.pad_token_id is not None else (
        gc.eos_token_id if isinstance(gc.eos_token_id, int) else 0)
    _, call_kw = attention_implementation_for_inspect(None)
    return dict(max_new_tokens=n, do_sample=False, num_beams=1, return_dict_in_generate=True,
                pad_token_id=pad, temperature=None, top_k=None, top_p=None, **call_kw)


def _stopped(notes, got: int, n: int) -> None:
    if got < n:
        notes.append(f"generation stopped at the end-of-sequence token after {got} of {n} "
                     f"tokens")


def capture_text(p: Plan, model, tok, text: str, layers: list[int], dec_layers: list[int],
                 generate: int | None, target: str | None, notes: list):
    """Views for a text model; returns (views, generated token labels or None)."""
    _, call_kw = attention_implementation_for_inspect(layers)
    reserve = (generate + 1) if (generate and p.kind == "decoder") else 0
    limit, why = text_limit(p, tok, reserve)
    ids, toks = encode(tok, text, limit, why, notes)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        if p.kind == "encoder":
            out = model(input_ids=ids, attention_mask=mask, **call_kw)
            w = stack(out.attentions, layers)
            return [View("self", "self-attention (tokens x tokens)", toks, toks, w, layers,
                         looks_causal(w))], None
        if p.kind == "decoder":
            return _decoder(model, tok, ids, toks, layers, generate, notes)
        return _encdec(p, model, tok, ids, toks, layers, dec_layers, generate, target, notes)


def _decoder(model, tok, ids, toks, layers, generate, notes):
    _, call_kw = attention_implementation_for_inspect(layers)
    if not generate:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **call_kw)
        w = stack(out.attentions, layers)
        return [View("self", "causal self-attention (tokens x tokens)", toks, toks, w, layers,
                     True)], None
    T = ids.shape[1]
    g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                       **_gen_kwargs(model, generate))
    new = g.sequences[0, T:].tolist()
    _stopped(notes, len(new), generate)
    prompt = stack(g.attentions[0], layers)                              # (L, H, T, T)
    seq = g.sequences
    last = model(input_ids=seq[:, -1:], attention_mask=torch.ones_like(seq),
                 **_cache(model, g), **call_kw)
    rows = _steps(g.attentions, layers, first=1) + [[last.attentions[li][0] for li in layers]]
    gen = id_tokens(tok, new, toks)
    w = assemble(rows, T + len(new))                                     # (L, H, N, T + N)
    return [View("self", "causal self-attention of the prompt (tokens x tokens)", toks, toks,
                 prompt, layers, True),
            View("generation", f"{len(new)} generated tokens (greedy, KV cache) x prompt + "
                 f"generated tokens", gen, toks + gen, w, layers, True)], gen.labels


def _encdec(p, model, tok, ids, toks, layers, dec_layers, generate, target, notes):
    _, call_kw = attention_implementation_for_inspect(layers)
    mask = torch.ones_like(ids)
    start = model.generation_config.decoder_start_token_id
    if start is None:
        start = getattr(p.config, "decoder_start_token_id", None)
    if start is None:
        raise UsageError(f"--model: {p.arch} has no decoder_start_token_id (config.json)")
    if target is not None:
        limit, why = text_limit(p, tok, 1)
        tids, _ = encode(tok, target, limit, why, notes, what="--target")
        dec = torch.cat([torch.tensor([[start]]), tids], 1)
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, **call_kw)
        enc_w, dec_w = stack(out.encoder_attentions, layers), stack(out.decoder_attentions,
                                                                     dec_layers)
        cross = stack(out.cross_attentions, dec_layers)
        dtoks = id_tokens(tok, dec[0].tolist(), toks)
        about = "--target"
        generated = None
    else:
        g = model.generate(input_ids=ids, attention_mask=mask, **_gen_kwargs(model, generate))
        seq = g.sequences                                                # (1, 1 + N)
        new = seq[0, 1:].tolist()
        _stopped(notes, len(new), generate)
        enc_out = model.get_encoder()(input_ids=ids, attention_mask=mask)
        last = model(encoder_outputs=enc_out, attention_mask=mask, decoder_input_ids=seq[:, -1:],
                     **_cache(model, g), **call_kw)
        enc_w = stack(g.encoder_attentions, layers)
        dsteps = _steps(g.decoder_attentions, dec_layers) + \
            [[last.decoder_attentions[li][0] for li in dec_layers]]
        csteps = _steps(g.cross_attentions, dec_layers) + \
            [[last.cross_attentions[li][0] for li in dec_layers]]
        dec_w = assemble(dsteps, seq.shape[1])
        cross = assemble(csteps, ids.shape[1])
        dtoks = id_tokens(tok, seq[0].tolist(), toks)
        about = f"{len(new)} generated tokens (greedy, KV cache)"
        generated = dtoks.labels[1:]
    return [View("encoder", "encoder self-attention (source x source)", toks, toks, enc_w,
                 layers, False),
            View("decoder", f"decoder self-attention, causal ({about})", dtoks, dtoks, dec_w,
                 dec_layers, True),
            View("cross", f"cross-attention: decoder tokens ({about}) x source tokens", dtoks,
                 toks, cross, dec_layers, False)], generated


def capture_image(p: Plan, model, proc, path: str, layers: list[int], notes: list):
    """Views for a vision transformer and the image as the model saw it."""
    from PIL import Image, UnidentifiedImageError
    try:
        img = Image.open(path)
        img.load()
    except (OSError, UnidentifiedImageError) as e:
        raise UsageError(f"--image: {path}: not an image PIL can read ({e})") from None
    w0, h0 = img.size
    pv = proc(images=img.convert("RGB"), return_tensors="pt")["pixel_values"]  # (1, 3, h, w)
    _, call_kw = attention_implementation_for_inspect(layers)
    with torch.no_grad():
        out = model(pixel_values=pv, **call_kw)
    w = stack(out.attentions, layers)                                    # (L, H, T, T)
    T = w.shape[-1]
    ps = getattr(p.config, "patch_size", None)
    ph, pw = (ps, ps) if isinstance(ps, int) else tuple(ps or (0, 0))
    gh, gw = (pv.shape[-2] // ph, pv.shape[-1] // pw) if ph and pw else (0, 0)
    first = T - gh * gw
    image = None
    if gh and 0 <= first <= 8:
        names = ["[CLS]", "[DIST]"] + [f"[REG{i}]" for i in range(first)]
        labels = names[:first] + [f"{r},{c}" for r in range(gh) for c in range(gw)]
        image = {"png": _png(pv[0], proc), "grid": (gh, gw), "first": first}
        notes.append(f"image {w0}x{h0} px, resized by the image processor to "
                     f"{pv.shape[-1]}x{pv.shape[-2]}: {gh}x{gw} patches of {ph}x{pw} px")
    else:
        labels = [f"t{i}" for i in range(T)]
        notes.append(f"{T} tokens do not form a patch grid of this image; no patch map")
    toks = Tokens(labels, labels, [None] * T, [])
    return [View("patches", "[CLS] and patch tokens (row,col) x the same", toks, toks, w,
                 layers, False)], image


def _png(x: torch.Tensor, proc) -> bytes:
    """A (3, h, w) normalised image -> PNG bytes as the model saw it."""
    from PIL import Image
    x = x.float()
    if getattr(proc, "do_normalize", False):
        mean = torch.tensor(proc.image_mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(proc.image_std, dtype=torch.float32).view(-1, 1, 1)
        x = x * std + mean
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
