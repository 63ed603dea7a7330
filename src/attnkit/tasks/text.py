"""``lm``: next-token prediction on the user's own text files (kind ``lm``).

The texts (``TrainConfig.text``: paths, read as UTF-8 in the order given) are joined
into one corpus, documents separated by the end-of-text token. The corpus is split by
characters *before* anything is learned from it: the last ``heldout`` fraction (cut at
a line start) is the held-out split, which neither the tokenizer nor the model ever
sees in training. A tokenizer (Hugging Face ``tokenizers``) is trained on the training
split:

* ``bpe``: byte-level BPE (GPT-2's pre-tokenizer and byte alphabet, so every string is
  encodable), ``vocab_size`` entries including the special token;
* ``byte``: the 256 byte symbols and the special token (a BPE with no merges).

Batches: training batch ``step`` is ``batch_size`` windows of ``seq_len + 1`` tokens at
offsets drawn from ``seed_for(seed, "train", step)`` over the training token stream
(``input`` the first ``seq_len``, ``target`` the next-token shift; every position
scored). The held-out set is the held-out stream cut into consecutive, non-overlapping
windows (at most ``n_eval`` of them): its mean loss is the held-out loss.

The task is lazy: ``prepare(run_dir)`` reads, splits, trains (or, when resuming, loads
the run's ``tokenizer.json``) and tokenizes; the trainer calls it before building the
model, whose vocabulary is the tokenizer's. Too little text for one training batch or
one held-out window is refused by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .base import Task, register_task, seed_for

__all__ = ["TextLM", "EOS", "TOKENIZERS", "train_tokenizer", "split_text", "read_texts",
           "stdlib_files"]

EOS = "<|endoftext|>"
TOKENIZERS = ("bpe", "byte")
TOKENIZER_FILE = "tokenizer.json"


def stdlib_files() -> list[Path]:
    """The shipped decoder's training data: the Python standard library's top-level
    ``*.py`` files (``sysconfig``'s ``stdlib`` directory of the running interpreter), sorted
    by name, without ``_sysconfigdata*`` (generated per machine)."""
    import sysconfig
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if not p.name.startswith("_sysconfigdata"))


def read_texts(paths) -> list[str]:
    """The files' texts (UTF-8); a missing, unreadable or empty file is refused by name."""
    if not paths:
        raise ValueError("text: expected one or more text files, got none")
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ValueError(f"text: expected a readable text file, got {str(p)!r} (no such "
                             f"file)")
        try:
            s = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"text: expected a UTF-8 text file, got {str(p)!r} ({e})") from None
        if not s.strip():
            raise ValueError(f"text: expected a non-empty text file, got {str(p)!r} (empty)")
        out.append(s)
    return out


def split_text(docs: list[str], heldout: float) -> tuple[str, str]:
    """(training text, held-out text): the corpus (documents joined by EOS) cut at the
    first line start after ``1 - heldout`` of its characters."""
    corpus = EOS.join(docs)
    cut = int(len(corpus) * (1 - heldout))
    nl = corpus.find("\n", cut)
    cut = nl + 1 if nl >= 0 else len(corpus)
    return corpus[:cut], corpus[cut:]


def train_tokenizer(text: str, kind: str, vocab_size: int):
    """A ``tokenizers.Tokenizer`` trained on ``text`` (see the module docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind == "bpe")
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    size = vocab_size if kind == "bpe" else len(alphabet) + 1
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=[EOS], min_frequency=2,
                                  initial_alphabet=alphabet, show_progress=False)
    chunk = 1 << 16                                # an iterator of pieces, not one huge string
    tok.train_from_iterator((text[i:i + chunk] for i in range(0, len(text), chunk)), trainer)
    return tok


def _encode(tok, text: str) -> torch.Tensor:
    """Token ids of ``text`` (EOS markers become the special token) as int64 (N,)."""
    ids: list[int] = []
    eos = tok.token_to_id(EOS)
    for i, doc in enumerate(text.split(EOS)):
        if i:
            ids.append(eos)
        if doc:
            ids.extend(tok.encode(doc).ids)
    return torch.tensor(ids, dtype=torch.int64)


@register_task
@dataclass
class TextLM(Task):
    """Next-token prediction on text files; ``text`` is given by the trainer."""
    name = "lm"
    kind = "lm"
    seq_len: int = 256
    tokenizer: str = "bpe"           # bpe | byte
    vocab_size: int = 4096           # bpe: the tokenizer's size (byte: 257, fixed)
    heldout: float = 0.05            # fraction of the characters held out (the tail)
    n_eval: int = 256                # held-out windows evaluated (at most)
    seed: int = 0
    text: tuple = ()                 # the files (TrainConfig.text, not the task spec)

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer: expected one of {', '.join(TOKENIZERS)}, got "
                             f"{self.tokenizer!r}")
        for f, lo in (("seq_len", 2), ("vocab_size", 258), ("n_eval", 1)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{f}: expected an int >= {lo}, got {v!r}")
        if not 0 < self.heldout < 1:
            raise ValueError(f"heldout: expected a fraction in (0, 1), got {self.heldout!r}")
        self.text = tuple(str(p) for p in self.text)
        self._data: dict = {}                      # filled by prepare()
        if self.tokenizer == "byte":
            if self.vocab_size not in (4096, 257):
                raise ValueError(f"vocab_size: the byte tokenizer has 257 entries (256 bytes "
                                 f"and {EOS}); got {self.vocab_size}")
            self.vocab_size = 257

    def describe(self) -> str:
        n = len(self.text)
        return (f"lm(seq_len={self.seq_len}, tokenizer={self.tokenizer}, vocab_size="
                f"{self.vocab_size}, heldout={self.heldout}, seed={self.seed}, text={n} "
                f"file{'s' if n != 1 else ''})")

    # ---------------------------------------------------------------- data preparation
    def prepare(self, run_dir=None, *, load: bool = False) -> None:
        """Read, split, train or load the tokenizer, tokenize; with ``run_dir`` write the
        tokenizer there (``load``: read the run's own instead of training one)."""
        from tokenizers import Tokenizer
        train_text, held_text = split_text(read_texts(self.text), self.heldout)
        path = Path(run_dir) / TOKENIZER_FILE if run_dir is not None else None
        if load:
            if path is None or not path.is_file():
                raise ValueError(f"text: the run's tokenizer {path} is missing; cannot resume")
            tok = Tokenizer.from_file(str(path))
        else:
            tok = train_tokenizer(train_text, self.tokenizer, self.vocab_size)
        train_ids, held_ids = _encode(tok, train_text), _encode(tok, held_text)
        need = self.seq_len + 2
        if len(train_ids) < need:
            raise ValueError(f"text: too short: the training split has {len(train_ids)} tokens, "
                             f"one batch needs windows of seq_len + 1 = {self.seq_len + 1} "
                             f"(and a choice of offsets); give more text or a smaller seq_len")
        if len(held_ids) < self.seq_len + 1:
            raise ValueError(f"text: too short for the held-out split: its last "
                             f"{self.heldout:g} holds {len(held_ids)} tokens, one window needs "
                             f"seq_len + 1 = {self.seq_len + 1}; give more text, a smaller "
                             f"seq_len or a larger heldout")
        if path is not None and not load:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tok.save(str(tmp))
            tmp.replace(path)
        self._data.update(tokenizer=tok, train=train_ids, heldout=held_ids)

    def _need(self) -> dict:
        if not self._data:
            self.prepare()
        return self._data

    @property
    def tokenizer_object(self):
        """The trained ``tokenizers.Tokenizer``."""
        return self._need()["tokenizer"]

    @property
    def n_vocab(self) -> int:
        """The model's vocabulary: the tokenizer's actual size (small texts give fewer
        merges than asked)."""
        return self.tokenizer_object.get_vocab_size()

    def token_counts(self) -> dict:
        d = self._need()
        return {"train_tokens": len(d["train"]), "heldout_tokens": len(d["heldout"])}

    # ---------------------------------------------------------------- batches
    def batch(self, step: int, batch_size: int) -> dict:
        ids = self._need()["train"]                                        # (N,)
        g = torch.Generator().manual_seed(seed_for(self.seed, "train", step))
        starts = torch.randint(0, len(ids) - self.seq_len, (batch_size,), generator=g)  # T+1 fit
        win = ids[starts[:, None] + torch.arange(self.seq_len + 1)]        # (B, T + 1)
        return {"input": win[:, :-1].contiguous(), "target": win[:, 1:].contiguous()}

    def eval_windows(self) -> torch.Tensor:
        """The held-out windows, (n, seq_len + 1)."""
        ids = self._need()["heldout"]
        n = min(self.n_eval, (len(ids) - 1) // self.seq_len)
        idx = torch.arange(n)[:, None] * self.seq_len + torch.arange(self.seq_len + 1)
        return ids[idx]

    def eval_batches(self, batch_size: int) -> list[dict]:
        win = self.eval_windows()
        return [{"input": w[:, :-1].contiguous(), "target": w[:, 1:].contiguous()}
                for w in win.split(batch_size)]
