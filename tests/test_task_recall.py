"""The recall/copying tasks (attnkit.tasks.recall): the stated properties of every example,
formats, determinism, the fixed evaluation set, MQAR's power-law gaps, parameter errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CASES

# The package __init__ imports sibling task modules too; should one of them be missing or
# broken, load this module on its own (the registry lives in .base, shared either way).
_IMPORT = """
import importlib, pathlib, sys, types
try:
    import attnkit.tasks.recall as R
except ImportError:
    import attnkit
    pkg = types.ModuleType("attnkit.tasks")
    pkg.__path__ = [str(pathlib.Path(attnkit.__file__).parent / "tasks")]
    sys.modules["attnkit.tasks"] = pkg
    R = importlib.import_module("attnkit.tasks.recall")
"""
_ns: dict = {}
exec(_IMPORT, _ns)
R = _ns["R"]
from attnkit.tasks.base import IGNORE, make_task, parse_task_args, task_names  # noqa: E402

SETTINGS = dict(deadline=None, derandomize=True, database=None, max_examples=25,
                suppress_health_check=[HealthCheck.too_slow])
DEFAULTS = [R.MQAR(), R.AssociativeRecall(), R.InductionHeads(), R.SelectiveCopy()]
IDS = [t.name for t in DEFAULTS]


# ---- the stated properties, example by example -------------------------------------------

def check_mqar(t: R.MQAR, b: dict) -> None:
    inp, tgt = b["input"], b["target"]
    V, P = t.vocab_size, t.n_pairs
    for x, y in zip(inp.tolist(), tgt.tolist()):
        keys, values = x[0:2 * P:2], x[1:2 * P:2]
        assert all(1 <= k < V // 2 for k in keys), keys            # first half, never 0
        assert all(V // 2 <= v < V for v in values), values        # second half
        assert len(set(keys)) == P and len(set(values)) == P       # distinct within example
        value_of = dict(zip(keys, values))
        scored = [i for i, v in enumerate(y) if v != IGNORE]
        assert len(scored) == P                                    # exactly n_pairs queries
        queried = []
        for i in scored:
            assert i >= 2 * P and (i - 2 * P) % 2 == 0             # query region, even offset
            assert x[i] in value_of                                # the query key is there
            assert y[i] == value_of[x[i]]                          # its value, from context
            queried.append(x[i])
        assert sorted(queried) == sorted(keys)                     # each key queried once


def _check_prefix(t, b: dict) -> None:
    """Before the answer: every next token in training batches (lm_loss, as safari trains),
    nothing scored in the evaluation set (or with lm_loss=False)."""
    inp, tgt = b["input"], b["target"]
    if t.lm_loss and not b.get("eval"):
        assert torch.equal(tgt[:, :-1], inp[:, 1:])
    else:
        assert (tgt[:, :-1] == IGNORE).all()


def check_assoc(t: R.AssociativeRecall, b: dict) -> None:
    inp, tgt = b["input"], b["target"]
    T, V, K = t.seq_len, t.vocab_size, t.n_keys
    _check_prefix(t, b)
    assert (inp[:, T - 2] == V - 1).all()                          # "=>" marker
    for x, y in zip(inp.tolist(), tgt.tolist()):
        keys, values = x[0:T - 2:2], x[1:T - 2:2]
        assert all(1 <= k <= K for k in keys) and all(K < v <= V - 2 for v in values)
        mapping: dict = {}
        for k, v in zip(keys, values):
            assert mapping.setdefault(k, v) == v                   # one value per key
        q = x[T - 1]
        assert q in mapping                                        # query seen in context
        assert y[T - 1] == mapping[q]
        assert x.count(V - 1) == 1 and 0 not in x                  # 0 reserved, unused


def check_induction(t: R.InductionHeads, b: dict) -> None:
    inp, tgt = b["input"], b["target"]
    T, trig = t.seq_len, t.vocab_size - 1
    _check_prefix(t, b)
    assert (inp[:, -1] == trig).all()
    for x, y in zip(inp.tolist(), tgt.tolist()):
        assert x.count(trig) == 2 and 0 not in x                   # body once + the end
        p = x.index(trig)
        assert p < T - 3                                            # safari's placement
        assert y[T - 1] == x[p + 1]                                 # the token after it


def check_selective(t: R.SelectiveCopy, b: dict) -> None:
    inp, tgt = b["input"], b["target"]
    C, M, V = t.context_len, t.n_tokens, t.vocab_size
    assert (inp[:, C:] == V - 1).all()                              # M markers
    assert (tgt[:, :C] == IGNORE).all()
    for x, y in zip(inp.tolist(), tgt.tolist()):
        data = [v for v in x[:C] if v != R.SelectiveCopy.NOISE]
        assert data == y[C:]                                        # in order, all of them
        assert len(data) == M and all(1 <= v <= V - 2 for v in data)


CHECKS = {"mqar": check_mqar, "assoc_recall": check_assoc, "induction": check_induction,
          "selective_copy": check_selective}


def check_format(t, b: dict, n: int) -> None:
    assert set(b) == {"input", "target"}
    for k in ("input", "target"):
        assert b[k].shape == (n, t.seq_len) and b[k].dtype == torch.int64
    assert b["input"].min() >= 0 and b["input"].max() < t.vocab_size
    scored = b["target"] != IGNORE
    assert scored.any(dim=1).all()
    assert (b["target"][scored] >= 0).all() and (b["target"][scored] < t.vocab_size).all()


@pytest.mark.parametrize("task", DEFAULTS, ids=IDS)
def test_defaults_properties_and_format(task):
    b = task.batch(0, 256)
    check_format(task, b, 256)
    CHECKS[task.name](task, b)
    CASES["recall tasks"] += 1


@st.composite
def task_params(draw):
    name = draw(st.sampled_from(sorted(CHECKS)))
    seed = draw(st.integers(0, 2**40))
    if name == "mqar":
        P = draw(st.integers(1, 12))
        T = 2 * draw(st.integers(2 * P, 2 * P + 40))
        t = R.MQAR(vocab_size=draw(st.integers(T + 1, T + 300)), seq_len=T, n_pairs=P,
                   power_a=draw(st.sampled_from([0.01, 0.1, 0.5, 1.0, 2.0])), seed=seed)
    elif name == "assoc_recall":
        t = R.AssociativeRecall(vocab_size=draw(st.integers(4, 60)),
                                seq_len=2 * draw(st.integers(2, 40)), seed=seed)
    elif name == "induction":
        t = R.InductionHeads(vocab_size=draw(st.integers(4, 60)),
                             seq_len=draw(st.integers(4, 80)), seed=seed)
    else:
        C = draw(st.integers(1, 100))
        t = R.SelectiveCopy(vocab_size=draw(st.integers(3, 40)), context_len=C,
                            n_tokens=draw(st.integers(1, C)), seed=seed)
    return t, draw(st.integers(0, 10**6)), draw(st.integers(1, 40))


@settings(**SETTINGS)
@given(task_params())
def test_random_parameters_properties(case):
    task, step, n = case
    b = task.batch(step, n)
    check_format(task, b, n)
    CHECKS[task.name](task, b)
    CASES["recall tasks"] += 1


# ---- determinism and the evaluation set --------------------------------------------------

@pytest.mark.parametrize("task", DEFAULTS, ids=IDS)
def test_deterministic(task):
    a, b = task.batch(5, 32), type(task)().batch(5, 32)
    assert all(torch.equal(a[k], b[k]) for k in a)                 # same step, same tensors
    c = task.batch(6, 32)
    assert not torch.equal(a["input"], c["input"])                 # next step differs
    d = type(task)(seed=1).batch(5, 32)
    assert not torch.equal(a["input"], d["input"])                 # another seed differs


def test_same_batches_in_another_process():
    code = _IMPORT + (
        "import torch\n"
        "for cls in (R.MQAR, R.AssociativeRecall, R.InductionHeads, R.SelectiveCopy):\n"
        "    b = cls(seed=3).batch(7, 16)\n"
        "    print(b['input'].tolist(), b['target'].tolist())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    here = []
    for cls in (R.MQAR, R.AssociativeRecall, R.InductionHeads, R.SelectiveCopy):
        b = cls(seed=3).batch(7, 16)
        here.append(f"{b['input'].tolist()} {b['target'].tolist()}")
    assert out.stdout.splitlines() == here


@pytest.mark.parametrize("task", DEFAULTS, ids=IDS)
def test_eval_set_fixed(task):
    t = type(task)(n_eval=300)
    ev = t.eval_batches(64)
    assert [len(e["input"]) for e in ev] == [64, 64, 64, 64, 44]
    whole = {k: torch.cat([e[k] for e in ev]) for k in ev[0]}
    for bs in (1000, 7):                                            # whatever the batch size
        again = {k: torch.cat([e[k] for e in t.eval_batches(bs)]) for k in ev[0]}
        assert all(torch.equal(whole[k], again[k]) for k in whole)
    bigger = type(task)(n_eval=700).eval_set()                      # a prefix of a larger one
    assert torch.equal(bigger["input"][:300], whole["input"])
    check_format(t, whole, 300)
    CHECKS[t.name](t, {**whole, "eval": True})
    train = torch.cat([t.batch(s, 300)["input"] for s in range(3)])  # not the training data
    ev_rows = {tuple(r) for r in whole["input"].tolist()}
    assert sum(tuple(r) in ev_rows for r in train.tolist()) < 5    # chance repeats only


# ---- MQAR gaps ---------------------------------------------------------------------------

def _gaps(t: R.MQAR, b: dict) -> torch.Tensor:
    scored = (b["target"] != IGNORE).nonzero()[:, 1]
    return (scored - 2 * t.n_pairs) // 2


def test_mqar_gaps_power_law():
    t = R.MQAR(vocab_size=300, seq_len=256, n_pairs=4, power_a=0.01)
    space = (256 - 8) // 2
    b = t.batch(0, 4000)
    gaps = _gaps(t, b)
    assert gaps.min() >= 0 and gaps.max() < space
    counts = torch.bincount(gaps, minlength=space).double()
    assert counts[: space // 2].sum() > 3 * counts[space // 2:].sum()   # short gaps dominate
    assert counts[:10].sum() > 3 * counts[-10:].sum()
    assert counts[0] == counts.max()
    # the first pair's query gap follows the first draw, p ∝ a i^(a-1), exactly
    pos0 = ((b["target"] != IGNORE) & (b["input"] == b["input"][:, :1])).float().argmax(1)
    first = (pos0 - 8) // 2
    p = t.gap_probs()
    for g in (0, 1, 5):
        assert abs((first == g).double().mean() - p[g]) < 0.025
    # power_a = 1: uniform gaps
    u = R.MQAR(vocab_size=300, seq_len=256, n_pairs=4, power_a=1.0)
    uc = torch.bincount(_gaps(u, u.batch(0, 4000)), minlength=space).double()
    assert 0.45 < uc[: space // 2].sum() / uc.sum() < 0.55


# ---- registry and parameter errors -------------------------------------------------------

def test_registered():
    assert {"mqar", "assoc_recall", "induction", "selective_copy"} <= set(task_names())
    t = make_task("mqar", **parse_task_args("mqar", "seq_len=128,n_pairs=8,power_a=0.5"))
    assert isinstance(t, R.MQAR) and (t.seq_len, t.n_pairs, t.power_a) == (128, 8, 0.5)
    assert make_task("selective_copy", context_len=100, n_tokens=16).seq_len == 116
    for t in DEFAULTS:
        assert t.kind == "lm" and t.describe().startswith(t.name + "(")


BAD = [
    (R.MQAR, dict(n_pairs=20), "n_pairs", "expected 4 * n_pairs <= seq_len=64, got n_pairs=20"),
    (R.MQAR, dict(n_pairs=0), "n_pairs", None),
    (R.MQAR, dict(seq_len=63), "seq_len", "got seq_len=63"),
    (R.MQAR, dict(vocab_size=64), "vocab_size", "vocab_size > seq_len=64"),
    (R.MQAR, dict(power_a=0.0), "power_a", None),
    (R.MQAR, dict(power_a=float("nan")), "power_a", None),
    (R.MQAR, dict(n_eval=0), "n_eval", None),
    (R.MQAR, dict(seed=-1), "seed", None),
    (R.AssociativeRecall, dict(seq_len=41), "seq_len", "got seq_len=41"),
    (R.AssociativeRecall, dict(seq_len=2), "seq_len", None),
    (R.AssociativeRecall, dict(vocab_size=3), "vocab_size", None),
    (R.InductionHeads, dict(seq_len=3), "seq_len", None),
    (R.InductionHeads, dict(vocab_size=3), "vocab_size", None),
    (R.SelectiveCopy, dict(n_tokens=65), "n_tokens", "n_tokens <= context_len=64"),
    (R.SelectiveCopy, dict(n_tokens=0), "n_tokens", None),
    (R.SelectiveCopy, dict(context_len=0), "context_len", None),
    (R.SelectiveCopy, dict(vocab_size=2), "vocab_size", None),
]


@pytest.mark.parametrize("cls,kw,field,text", BAD, ids=[f"{c.name}-{f}" for c, _, f, _ in BAD])
def test_bad_parameters(cls, kw, field, text):
    with pytest.raises(ValueError, match=rf"^{field}: expected .*, got ") as e:
        cls(**kw)
    if text:
        assert text in str(e.value)


def test_bad_types_and_call_arguments():
    with pytest.raises(TypeError, match="^seq_len:"):
        R.MQAR(seq_len=64.0)
    with pytest.raises(TypeError, match="^power_a:"):
        R.MQAR(power_a="0.5")
    t = R.InductionHeads()
    with pytest.raises(ValueError, match="^batch_size:"):
        t.batch(0, 0)
    with pytest.raises(ValueError, match="^step:"):
        t.batch(-1, 4)
    with pytest.raises(ValueError, match="^batch_size:"):
        t.eval_batches(0)


def test_lm_loss_scores_every_next_token():
    for cls in (R.AssociativeRecall, R.InductionHeads):
        b = cls().batch(0, 8)
        assert (b["target"][:, :-1] == IGNORE).all() and (b["target"][:, -1] != IGNORE).all()
        on = cls(lm_loss=True).batch(0, 8)
        assert torch.equal(on["input"], b["input"]) and torch.equal(on["target"][:, -1],
                                                                      b["target"][:, -1])
