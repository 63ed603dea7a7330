"""Tokens -> readable labels and words, for any tokenizer.

Two sources of truth, best first:

* **offsets** (``tokenizers``' ``Encoding.offsets``, transformers' ``offset_mapping``):
  each token's character span in the text. The text is split into words (runs of
  letters/digits, or runs of punctuation); a token belongs to the word its span
  overlaps first; its label is the text it covers. Works the same for WordPiece
  (``##ness``), byte-level BPE (``Ġit``) and SentencePiece (``▁it``).
* **pieces** (no offsets: generated tokens, slow tokenizers): the markers decide.
  ``Ġ`` / ``▁`` (or a decoded leading space) start a word, ``##`` continues one,
  punctuation is a word of its own; special tokens belong to no word.

A :class:`Tokens` holds, per token, the raw string, the label shown and the word index
(None for special tokens and bare whitespace).
"""
from __future__ import annotations

import dataclasses
import re

SPECIAL = {"[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "<s>", "</s>", "<pad>", "<unk>",
           "<mask>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>", "<eos>"}
_WORD = re.compile(r"\w+|[^\w\s]+")
_PUNCT = re.compile(r"[^\w\s]+")
_SPACE_MARKS = ("Ġ", "▁", "Ċ", "ĉ")   # byte-level space/newline/tab, SentencePiece space


@dataclasses.dataclass
class Tokens:
    raw: list[str]                 # the tokenizer's strings ('Ġit', '▁it', '##ness')
    labels: list[str]              # what the viewer shows ('it', 'ness')
    word_of: list[int | None]      # token -> word index (None: special / whitespace)
    words: list[str]               # the words, in order

    def __post_init__(self):   # control characters (byte-level pieces) shown escaped
        self.labels = [clean(x) for x in self.labels]
        self.words = [clean(x) for x in self.words]

    def __len__(self):
        return len(self.raw)

    def groups(self) -> list[list[int]]:
        """For each word, the indices of its tokens."""
        out: list[list[int]] = [[] for _ in self.words]
        for i, w in enumerate(self.word_of):
            if w is not None:
                out[w].append(i)
        return out

    def slice(self, start: int, stop: int) -> "Tokens":
        """Tokens ``start:stop``; word indices renumbered from 0."""
        wo = self.word_of[start:stop]
        used = sorted({w for w in wo if w is not None})
        remap = {w: n for n, w in enumerate(used)}
        return Tokens(self.raw[start:stop], self.labels[start:stop],
                      [None if w is None else remap[w] for w in wo],
                      [self.words[w] for w in used])

    def __add__(self, other: "Tokens") -> "Tokens":
        n = len(self.words)
        return Tokens(self.raw + other.raw, self.labels + other.labels,
                      self.word_of + [None if w is None else w + n for w in other.word_of],
                      self.words + other.words)


def clean(s: str) -> str:
    """``s`` with non-printable characters escaped (``'\\x12'``)."""
    return s if s.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1]
                                             for c in s)


def _is_special(tok: str, special: bool) -> bool:
    return special or tok in SPECIAL or (len(tok) > 2 and tok[0] == "<" and tok[-1] == ">"
                                         and " " not in tok)


def from_offsets(text: str, raw: list[str], offsets, special_mask=None) -> Tokens:
    """Labels and words from character spans ``offsets[i] = (start, end)``."""
    if len(offsets) != len(raw):
        raise ValueError(f"offsets: expected one (start, end) per token ({len(raw)}), got "
                         f"{len(offsets)}")
    spans = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
    labels, word_of, words, seen = [], [], [], {}
    for i, (tok, (s, e)) in enumerate(zip(raw, offsets)):
        s, e = int(s), int(e)
        sp = bool(special_mask[i]) if special_mask is not None else False
        if _is_special(tok, sp) or e <= s:
            labels.append(tok)
            word_of.append(None)
            continue
        piece = text[s:e].strip()
        labels.append(piece if piece else "␣")
        hit = next((n for n, (ws, we, _) in enumerate(spans) if ws < e and s < we), None)
        if hit is None:                              # whitespace only
            word_of.append(None)
            continue
        if hit not in seen:
            seen[hit] = len(words)
            words.append(spans[hit][2])
        word_of.append(seen[hit])
    return Tokens(list(raw), labels, word_of, words)


def detect_scheme(raw: list[str]) -> str:
    """'marked' (byte-level BPE / SentencePiece: a marker starts a word) or 'wordpiece'
    (``##`` continues a word, anything else starts one)."""
    return "marked" if any(t.startswith(_SPACE_MARKS) for t in raw) else "wordpiece"


def piece_label(tok: str, decoded: str | None = None,
                scheme: str = "marked") -> tuple[str, bool]:
    """(label, starts a new word) for one token without offsets. ``decoded`` is the
    tokenizer's own decoding of the single token, when available."""
    if tok.startswith("##"):
        return tok[2:] or tok, False
    if scheme == "wordpiece":
        return tok, True
    starts = tok.startswith(_SPACE_MARKS)
    if decoded is not None and "\ufffd" not in decoded:
        lab = decoded.strip()
        starts = starts or decoded[:1].isspace()
    else:
        lab = tok.lstrip("".join(_SPACE_MARKS))
    return (lab or "␣"), starts


def from_pieces(raw: list[str], decoded: list[str] | None = None, special_mask=None,
                scheme: str | None = None) -> Tokens:
    """Labels and words from the token strings alone (markers, see the module doc)."""
    scheme = scheme or detect_scheme(raw)
    labels, word_of, words = [], [], []
    prev_punct = False
    for i, tok in enumerate(raw):
        sp = bool(special_mask[i]) if special_mask is not None else False
        if _is_special(tok, sp):
            labels.append(tok)
            word_of.append(None)
            continue
        lab, starts = piece_label(tok, None if decoded is None else decoded[i], scheme)
        labels.append(lab)
        if lab == "␣":
            word_of.append(None)
            continue
        punct = bool(_PUNCT.fullmatch(lab))
        if starts or not words or word_of[-1] is None or punct != prev_punct:
            words.append(lab)
        else:
            words[-1] += lab
        word_of.append(len(words) - 1)
        prev_punct = punct
    return Tokens(list(raw), labels, word_of, words)


def find_word(words: list[str], word: str, arg: str) -> int:
    """Index of ``word`` among ``words`` (case-insensitive; first occurrence; ``word#2``
    picks the second). Raises ValueError naming ``arg`` and listing the words."""
    if not isinstance(word, str) or not word.strip():
        raise ValueError(f"{arg}: expected a word of the text, got {word!r}")
    base, nth = word, 1
    m = re.fullmatch(r"(.+)#(\d+)", word)
    if m:
        base, nth = m.group(1), int(m.group(2))
    key = _strip_marks(base).lower()
    hits = [i for i, w in enumerate(words) if w.lower() == key]
    if len(hits) < max(nth, 1):
        shown = ", ".join(words[:40]) + (" ..." if len(words) > 40 else "")
        what = f"{base!r} is not a word of the text" if not hits else \
            f"{base!r} occurs {len(hits)} time(s), not {nth}"
        raise ValueError(f"{arg}: {what}; its words are {shown}")
    return hits[max(nth, 1) - 1]


def _strip_marks(w: str) -> str:
    """'Ġit' / '▁it' / '##it' (a user copying a raw token) -> 'it'."""
    w = w.strip()
    if w.startswith("##"):
        return w[2:]
    return w.lstrip("".join(_SPACE_MARKS)) or w
