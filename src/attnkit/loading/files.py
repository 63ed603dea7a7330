"""Reading a checkpoint directory: ``config.json``, safetensors weights, the tokenizer.

Every failure is a :class:`~attnkit.core.errors.CheckpointError` whose message is one line
naming the file (and the field or tensor): missing, not JSON, truncated safetensors,
pickle-only weights, a shard listed in the index but absent...
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from ..core.errors import CheckpointError

__all__ = ["read_config", "Weights", "read_tokenizer", "read_max_tokens", "one_line"]

PICKLE = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")


def one_line(e: BaseException) -> str:
    """An exception's text on one line (library messages sometimes span several)."""
    return " ".join(str(e).split()) or type(e).__name__


def _read_json(f: Path, what: str):
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({one_line(e)})") from None
    except OSError as e:
        raise CheckpointError(f"{f}: cannot read {what} ({one_line(e)})") from None


def read_config(d: Path) -> dict:
    """``d/config.json`` as a dict."""
    f = d / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{f}: missing config.json (the architecture and sizes)")
    cfg = _read_json(f, "the config")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{f}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


class Weights:
    """The tensors of a checkpoint directory, by name, read lazily with ``safetensors``.

    ``model.safetensors`` or a sharded ``model.safetensors.index.json``; pickle files
    are refused (unpickling can run arbitrary code). ``names`` is every tensor in the
    file(s); ``get(name)`` reads one; ``file(name)`` says where it lives.
    """

    def __init__(self, d: Path):
        from safetensors import safe_open

        self.dir = d
        index, single = d / "model.safetensors.index.json", d / "model.safetensors"
        if index.is_file():
            wmap = _read_json(index, "the weight index")
            wmap = wmap.get("weight_map") if isinstance(wmap, dict) else None
            if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
                raise CheckpointError(f"{index}: expected an object with a 'weight_map' of "
                                      f"tensor name -> shard file")
            files = sorted({d / f for f in wmap.values()})
        elif single.is_file():
            files = [single]
        else:
            pickles = sorted(p.name for pat in PICKLE for p in d.glob(pat))
            if pickles:
                raise CheckpointError(f"{d}: found only pickle weights {pickles}; attnkit reads "
                                      f"safetensors only (unpickling can run code); convert "
                                      f"them to model.safetensors with the safetensors package")
            raise CheckpointError(f"{single}: missing (no model.safetensors or "
                                  f"model.safetensors.index.json in {d}: no weights)")
        self._where: dict[str, Path] = {}
        self._handles = {}
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: missing (listed in {index.name})")
            try:
                h = safe_open(str(f), "pt")
                keys = list(h.keys())
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"{f}: not a readable safetensors file, truncated or "
                                      f"corrupt ({one_line(e)})") from None
            self._handles[f] = h
            self._where.update({k: f for k in keys})
        self.names = frozenset(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def file(self, name: str) -> Path:
        return self._where[name]

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape from the file's header (nothing read)."""
        return tuple(self._handles[self._where[name]].get_slice(name).get_shape())

    def get(self, name: str) -> Tensor:
        if name not in self._where:
            raise CheckpointError(f"{self.dir}: missing tensor {name!r}")
        f = self._where[name]
        try:
            return self._handles[f].get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"{f}: cannot read tensor {name!r} ({one_line(e)})") from None

    def close(self) -> None:
        self._handles.clear()


def read_tokenizer(d: Path):
    """``d/tokenizer.json`` as a ``tokenizers.Tokenizer`` (no padding), or None."""
    f = d / "tokenizer.json"
    if not f.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise CheckpointError(f"{f}: reading it needs the 'tokenizers' package "
                              f"(pip install tokenizers)") from None
    try:
        tok = Tokenizer.from_file(str(f))
    except Exception as e:  # tokenizers raises plain Exceptions
        raise CheckpointError(f"{f}: not a readable tokenizer ({one_line(e)})") from None
    tok.no_padding()   # attnkit pads to the longest text itself (TextModel.tokenize)
    return tok


def read_max_tokens(d: Path, default):
    """``max_seq_length`` of a sentence-transformers ``sentence_bert_config.json``."""
    f = d / "sentence_bert_config.json"
    if not f.is_file():
        return default
    st = _read_json(f, "the sentence-transformers config")
    n = st.get("max_seq_length", default) if isinstance(st, dict) else None
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise CheckpointError(f"{f}: max_seq_length: expected an int >= 1, got {n!r}")
    return n
