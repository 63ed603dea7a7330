"""Where ``attnkit inspect`` gets its model: attnkit's own ports or transformers.

The rule (``--via auto``, the default): a registered name (``minilm``) and any
directory that ``attnkit.load`` loads -- it loads only what its ports reproduce exactly
and refuses the rest with a CheckpointError -- run on attnkit's port (``--backend``
applies; weights recomputed only for the layers shown). Every other directory runs on
transformers (``AutoConfig`` + the model class of its ``architectures`` + its own
tokenizer / image processor, local files only), and the terminal and the page say why
the port was not used. ``--via attnkit`` / ``--via transformers`` force a path.

Before either path reads a weight, :func:`read_checkpoint` checks the directory:
config.json a JSON object, safetensors weights present (pickle files refused: loading
them can run code) and every file's header readable and complete (a truncated file
fails here). Every problem is a :class:`~attnkit.core.errors.UsageError`: one line, exit 2.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import CheckpointError, UnsupportedCall, UsageError
from .capture import Capture, View, assemble, parse_layers, piece_tokens, stack
from .words import from_offsets



def read_checkpoint(d: Path) -> tuple[dict, dict, dict]:
    """(config dict, {tensor: shape}, {tensor: file}) from headers only (the loader's
    readers, :mod:`attnkit.loading.files`; their errors as one ``--model`` line)."""
    from ..core.errors import CheckpointError
    from ..loading.files import Weights, read_config
    try:
        cfg, w = read_config(d), Weights(d)
        shapes = {k: w.shape(k) for k in w.names}
        where = {k: w.file(k) for k in w.names}
    except CheckpointError as e:
        raise UsageError(f"--model: {e}") from None
    if not shapes:
        raise UsageError(f"--model: {d}: the safetensors file(s) hold no tensors")
    return cfg, shapes, where


def _port_archs() -> list[str]:
    from .. import loading
    archs = getattr(loading, "ARCHITECTURES", {}) or {}
    return sorted(k for k in archs if k[:1].isupper())


def check_backend(name: str) -> None:
    """``--backend``: a registered name that can serve plain and causal calls on the CPU
    (probed on tiny calls, before any heavy work)."""
    from .. import masks
    from ..backends import available_backends, get_backend
    from ..engine.functional import make_call
    if name == "auto":
        return
    names = available_backends()
    if name not in names:
        raise UsageError(f"--backend: expected one of {['auto'] + names}, got {name!r}")
    q = torch.zeros(1, 2, 4, 8)                                          # (B, H, T, D)
    for mask in (None, masks.causal()):
        why = get_backend(name).unsupported(make_call(q, q, q, mask=mask))
        if why:
            raise UsageError(f"--backend {name}: cannot serve inspect's calls on the CPU: "
                             f"{why}")


def _check_words(toks, pairs, causal: bool) -> None:
    from .inspect import causal_order
    from .words import find_word
    try:
        idx = [find_word(toks.words, word, arg) for arg, word in pairs]
        if causal:
            causal_order(toks.words, idx[0], idx[1], pairs[0][1], pairs[1][1])
    except ValueError as e:
        raise UsageError(str(e)) from None


class AttnkitSource:
    """A checkpoint on attnkit's port (``attnkit.load``)."""
    via = "attnkit"

    def __init__(self, name: str, model, backend: str, notes: list[str]):
        from ..models import BERT, GPT
        self.name, self.model, self.backend, self.notes = name, model, backend, notes
        cfg = getattr(model, "hf_config", {}) or {}
        self.arch = (cfg.get("architectures") or [type(model).__name__])[0]
        if isinstance(model, GPT):
            self.kind = "decoder"
        elif isinstance(model, BERT):
            self.kind = "encoder"
        else:
            raise UsageError(f"--model: inspect has no view for {type(model).__name__}")
        if getattr(model, "tokenizer", None) is None:
            raise UsageError(f"--model: {name!r} has no tokenizer.json to read the text with")
        self.n_layers = self.n_decoder_layers = len(model.layers)
        self.can_generate = self.kind == "decoder"

    def check(self) -> None:
        pass    # check_backend ran before loading

    def check_words(self, text, pairs, generate=None) -> None:
        _, toks = self._encode(text, self.model.max_tokens, [], generate + 1 if generate else 0)
        _check_words(toks, pairs, self.kind == "decoder")

    def _encode(self, text: str, limit, notes, reserve=0):
        tok = self.model.tokenizer
        tok.no_truncation()
        full = tok.encode(text)
        enc = full
        if limit is not None and len(full.ids) > limit - reserve:
            if limit - reserve < 1:
                raise UsageError(f"--generate: leaves no room for the text ({limit} positions)")
            tok.enable_truncation(limit - reserve)
            enc = tok.encode(text)
            tok.no_truncation()
            notes.append(f"text truncated to its first {limit - reserve} of {len(full.ids)} "
                         f"tokens (the model's maximum: {limit} tokens"
                         f"{f', {reserve} kept for generation' if reserve else ''})")
        return torch.tensor([enc.ids]), from_offsets(text, enc.tokens, enc.offsets,
                                                     enc.special_tokens_mask)

    def capture(self, text, layers, generate=None, target=None, image=None) -> Capture:
        m = self.model
        notes = list(self.notes)
        reserve = generate + 1 if generate else 0
        ids, toks = self._encode(text, m.max_tokens, notes, reserve)
        want = set(layers)
        views, generated = [], None
        try:
            with torch.no_grad():
                if self.kind == "encoder":
                    _, ws = m(ids, torch.ones_like(ids), return_weights=want)
                    views.append(View("self", "self-attention (tokens x tokens)", toks, toks,
                                      stack(ws, layers), layers, False))
                elif not generate:
                    _, ws = m(ids, return_weights=want)
                    views.append(View("self", "causal self-attention (tokens x tokens)", toks,
                                      toks, stack(ws, layers), layers, True))
                else:
                    views, generated = self._generate(ids, toks, layers, generate, notes)
        except UnsupportedCall as e:
            raise UsageError(f"--backend {self.backend}: {e}") from None
        return Capture(self.name, self.arch, "attnkit", self.kind, text, views,
                       f"attnkit port, backend {self.backend}", notes, self.n_layers,
                       generated=generated)

    def _generate(self, ids, toks, layers, n, notes):
        m, tok = self.model, self.model.tokenizer
        eos = (getattr(m, "hf_config", {}) or {}).get("eos_token_id")
        eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        cache, want = m.new_cache(), set(layers)
        logits, ws = m(ids, cache=cache, return_weights=want)
        prompt = stack(ws, layers)                                        # (L, H, T, T)
        new, rows = [], []
        nxt = int(logits[0, -1].argmax())
        while True:
            new.append(nxt)
            logits, ws = m(torch.tensor([[nxt]]), cache=cache, return_weights=want)
            rows.append([ws[i][0] for i in layers])                       # (H, 1, k)
            if len(new) == n or nxt in eos:
                break
            nxt = int(logits[0, -1].argmax())
        if len(new) < n:
            notes.append(f"generation stopped at the end-of-sequence token after {len(new)} "
                         f"of {n} tokens")
        special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        raw = [tok.id_to_token(i) or f"<{i}>" for i in new]
        dec = [tok.decode([i], skip_special_tokens=False) for i in new]
        gen = piece_tokens(raw, dec, [i in special for i in new], like=toks)
        T = ids.shape[1]
        return [View("self", "causal self-attention of the prompt (tokens x tokens)", toks,
                     toks, prompt, layers, True),
                View("generation", f"{len(new)} generated tokens (greedy, KV cache) x prompt "
                     f"+ generated tokens", gen, toks + gen, assemble(rows, T + len(new)),
                     layers, True)], gen.labels


class HFSource:
    """A checkpoint on transformers (:mod:`attnkit.analysis.hf`)."""
    via = "transformers"

    def __init__(self, name, plan, backend, notes):
        self.name, self.plan, self.backend, self.notes = name, plan, backend, notes
        self.arch, self.kind = plan.arch, plan.kind
        self.n_layers, self.n_decoder_layers = plan.n_layers, plan.n_decoder_layers
        self.can_generate = plan.can_generate and self.kind in ("decoder", "encoder-decoder")
        self._proc = None

    def check(self) -> None:
        from ..integrations import hf as hf_api
        if self.backend != "auto":
            try:
                hf_api.implementation_name(self.backend)
            except ValueError as e:
                raise UsageError(f"--backend: {e}") from None

    def processor(self):
        from . import hf
        if self._proc is None:
            self._proc = hf.load_processor(self.plan)
        return self._proc

    def check_words(self, text, pairs, generate=None) -> None:
        from . import hf_capture
        reserve = generate + 1 if generate and self.kind == "decoder" else 0
        limit, why = hf_capture.text_limit(self.plan, self.processor(), reserve)
        _, toks = hf_capture.encode(self.processor(), text, limit, why, [])
        _check_words(toks, pairs, self.kind == "decoder")

    def capture(self, text, layers, generate=None, target=None, image=None,
                dec_layers=None) -> Capture:
        from . import hf, hf_capture
        proc = self.processor()
        model, notes = hf.load_model(self.plan, self.backend)
        notes = list(self.notes) + notes
        generated, img = None, None
        # only the shown layers recompute their weights (encoder and decoder layers share
        # layer indices in encoder-decoders: there every layer does)
        with hf.weights_context(None if self.kind == "encoder-decoder" else layers):
            if self.kind == "image":
                views, img = hf_capture.capture_image(self.plan, model, proc, image, layers,
                                                      notes)
            else:
                views, generated = hf_capture.capture_text(
                    self.plan, model, proc, text, layers, dec_layers or layers, generate,
                    target, notes)
        return Capture(self.name, self.arch, "transformers", self.kind,
                       image if self.kind == "image" else text, views,
                       hf.describe_implementation(self.backend), notes, self.n_layers, image=img,
                       generated=generated)


def open_source(model: str, via: str = "auto", backend: str = "auto"):
    """Resolve ``--model`` and choose the path (module doc); nothing heavy runs yet
    except ``attnkit.load`` for a directory its port accepts."""
    from ..loading import NAMED_MODELS, load, resolve
    named = str(model).lower() in NAMED_MODELS and not Path(model).exists()
    try:
        d = resolve(model)
    except (CheckpointError, FileNotFoundError, ValueError, TypeError) as e:
        raise UsageError(f"--model: {e}") from None
    cfg, shapes, files = read_checkpoint(d)
    port_error = None
    if via in ("auto", "attnkit"):
        try:
            m = load(d, backend=backend)
        except CheckpointError as e:
            if via == "attnkit" or named:
                raise UsageError(f"--model: {e}") from None
            port_error = str(e)
        else:
            return AttnkitSource(str(model), m, backend, [])
    from . import hf
    archs = _port_archs()
    try:
        plan = hf.plan(d, cfg, shapes, files, archs)
    except UsageError as e:
        arch = (cfg.get("architectures") or [None])[0]
        if port_error and arch in archs:      # a port exists and refused: say both
            hf_why = str(e).removeprefix("--model: ")
            raise UsageError(f"--model: attnkit's port: {port_error}; transformers: "
                             f"{hf_why}") from None
        raise
    notes = []
    if port_error and (cfg.get("architectures") or [None])[0] not in archs and archs:
        notes.append(f"attnkit has no port of {plan.arch}: running it on transformers")
    elif port_error:
        notes.append(f"attnkit's port does not load it ({port_error}); running it on "
                     f"transformers' {plan.arch}")
    return HFSource(str(model), plan, backend, notes)


__all__ = ["open_source", "read_checkpoint", "check_backend", "AttnkitSource", "HFSource",
           "parse_layers"]
