"""ListOps (LRA generator): every label against an independent stack evaluator, the
batch format, determinism, train/test disjointness, the length distribution against
its exact computation, label balance, and parameter errors."""
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CASES
from attnkit.tasks.base import IGNORE, make_task
from attnkit.tasks.listops import (END, OPERATORS, PAD, TOKENS, VALUE_P, VOCAB_SIZE, ListOps,
                                   decode, encode, evaluate, length_distribution, sample_tree,
                                   tree_tokens, tree_value)

SET = settings(deadline=None, max_examples=60)
SMALL = dict(n_train=300, n_test=150)


def labels_of(batch):
    """Check one batch's format; return (expression token lists, answer digits)."""
    inp, tgt, length = batch["input"], batch["target"], batch["length"]
    assert inp.dtype == tgt.dtype == length.dtype == torch.int64
    assert inp.shape == tgt.shape and inp.shape[0] == length.shape[0]
    B, T = inp.shape
    pos = torch.arange(T)
    real = pos[None, :] < length[:, None]                                  # (B, T)
    assert ((inp >= 0) & (inp < VOCAB_SIZE)).all()
    assert (inp[real] != PAD).all() and (inp[~real] == PAD).all()         # PAD only after
    last = pos[None, :] == (length - 1)[:, None]
    assert (tgt[~last] == IGNORE).all()
    exprs, answers = [], []
    for b in range(B):
        toks = decode(inp[b, :length[b]])
        (ans,) = decode([tgt[b, length[b] - 1]])
        assert ans in "0123456789" and len(ans) == 1
        exprs.append(toks)
        answers.append(int(ans))
    return exprs, answers


def check_batch(task, batch):
    exprs, answers = labels_of(batch)
    assert batch["input"].shape[1] == task.seq_len == task.max_length
    for toks, ans in zip(exprs, answers):
        assert task.min_length <= len(toks) <= task.max_length
        assert evaluate(toks) == ans, " ".join(toks)
    CASES["listops labels"] += len(answers)
    return exprs, answers


# ---------------------------------------------------------------------------
# the evaluator
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[SM 5 6 ]", 1),
    ("[SM 9 9 9 ]", 7),
    ("[MIN 7 [MAX 1 2 ] ]", 2),
    ("[MED 9 0 9 ]", 9),
    ("[MED 1 2 ]", 1),                 # int(np.median([1, 2])) = int(1.5) = 1
    ("[MED 0 9 ]", 4),                 # 4.5 -> 4
    ("[MED 3 4 5 6 ]", 4),
    ("[MED 8 1 9 2 ]", 5),             # sorted 1 2 8 9 -> 5.0
    ("[MED 7 7 0 0 ]", 3),
    ("[SM [MAX 3 8 ] [MED 1 2 3 ] [MIN 9 [SM 4 6 ] ] ]", 0),
    ("[MAX [MAX [MAX [MAX 1 2 ] 3 ] 4 ] 0 ]", 4),
    ("6", 6),
])
def test_evaluator_hand_cases(text, value):
    assert evaluate(text.split()) == value


@pytest.mark.parametrize("text", ["[MIN 1", "1 ]", "[MIN ]", "1 2", "", "[MIN 1 x ]",
                                  "( [MIN 1 2 ] )", "[MAX 1 2 ] ]"])
def test_evaluator_rejects_malformed(text):
    with pytest.raises(ValueError):
        evaluate(text.split())


@SET
@given(st.lists(st.integers(0, 9), min_size=1, max_size=12))
def test_operators_follow_lra(args):
    """MED is LRA's int(np.median(args)), SM is sum % 10; evaluator and tree agree."""
    expect = {"[MIN": min(args), "[MAX": max(args), "[MED": int(np.median(args)),
              "[SM": int(np.sum(args)) % 10}
    for op, v in expect.items():
        assert evaluate([op, *map(str, args), END]) == v
        assert tree_value((op, list(args))) == v
    CASES["listops operators"] += 1


@SET
@given(st.integers(0, 2**40), st.integers(2, 12), st.integers(2, 12))
def test_tree_value_matches_evaluator(seed, max_depth, max_args):
    rng = random.Random(seed)
    for _ in range(20):
        draw = sample_tree(rng, max_depth, max_args, 300)
        if draw is None:
            continue
        tree, length = draw
        toks = tree_tokens(tree)
        assert len(toks) == length <= 300
        assert evaluate(toks) == tree_value(tree)
        CASES["listops trees"] += 1


# ---------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------
def test_vocabulary():
    assert PAD == 0 and TOKENS[PAD] == "<pad>"
    assert VOCAB_SIZE == len(TOKENS) == 16 == ListOps.vocab_size
    assert set(TOKENS[1:]) == {*map(str, range(10)), *OPERATORS, END}
    toks = "[SM 5 [MED 0 9 ] ]".split()
    assert decode(encode(toks)) == toks
    assert ListOps.decode(torch.tensor(ListOps.encode(toks))) == toks
    with pytest.raises(ValueError):
        encode(["(", "1"])
    with pytest.raises(ValueError):
        decode([VOCAB_SIZE])


# ---------------------------------------------------------------------------
# batches and the evaluation set
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(), dict(min_length=1, max_length=20),
                                dict(min_length=8, max_length=8, max_depth=3, max_args=4),
                                dict(min_length=200, max_length=512, n_train=40, n_test=20)])
def test_every_label_in_batches_and_eval(kw):
    task = ListOps(**{**SMALL, **kw})
    for step in (0, 1, 17):
        exprs, _ = check_batch(task, task.batch(step, 48))
        assert len(exprs) == 48
    batches = task.eval_batches(64)
    sizes = [b["input"].shape[0] for b in batches]
    assert sum(sizes) == task.n_test and all(s == 64 for s in sizes[:-1]) and sizes[-1] <= 64
    got = [e for b in batches for e in check_batch(task, b)[0]]
    # in order (example i of the test stream; one big batch gives the same)
    assert got == [list(k) for k in task.split_data("test")["keys"]]
    if task.min_length > 1:     # no repeats to skip at these lengths
        assert got[:5] == [task.example("test", i)[1] for i in range(5)]
    (whole,) = task.eval_batches(10_000)
    assert all(torch.equal(torch.cat([b[k] for b in batches]), whole[k]) for k in whole)


def test_labels_cover_the_whole_test_set_at_defaults():
    task = ListOps(n_train=50)                  # n_test = 1000 at the default lengths
    exprs, answers = [], []
    for b in task.eval_batches(256):
        e, a = check_batch(task, b)
        exprs += e
        answers += a
    assert len(answers) == 1000
    assert len({tuple(e) for e in exprs}) == 1000                  # distinct, as LRA's set


def test_determinism():
    a, b = ListOps(**SMALL, seed=3), ListOps(**SMALL, seed=3)
    for step in (0, 5, 10**9):
        x, y = a.batch(step, 32), b.batch(step, 32)
        assert x.keys() == y.keys() == {"input", "target", "length"}
        assert all(torch.equal(x[k], y[k]) for k in x)
        assert all(torch.equal(x[k], v) for k, v in a.batch(step, 32).items())  # repeatable
    assert not torch.equal(a.batch(5, 32)["input"], a.batch(6, 32)["input"])
    other = ListOps(**SMALL, seed=4)
    assert not torch.equal(a.batch(5, 32)["input"], other.batch(5, 32)["input"])
    assert not torch.equal(a.eval_batches(32)[0]["input"], other.eval_batches(32)[0]["input"])


def test_determinism_across_processes():
    code = ("import torch; from attnkit.tasks.listops import ListOps; "
            "t = ListOps(n_train=40, n_test=10, seed=7); b = t.batch(3, 8); "
            "e = t.eval_batches(4)[-1]; "
            "print(int((b['input'] * torch.arange(128)).sum()), int(b['target'].sum()), "
            "int((e['input'] * torch.arange(128)).sum()), int(e['target'].sum()))")
    env = {**os.environ, "PYTHONHASHSEED": "123", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    t = ListOps(n_train=40, n_test=10, seed=7)
    b, e = t.batch(3, 8), t.eval_batches(4)[-1]
    here = [int((b["input"] * torch.arange(128)).sum()), int(b["target"].sum()),
            int((e["input"] * torch.arange(128)).sum()), int(e["target"].sum())]
    assert list(map(int, out)) == here


def test_train_and_test_are_disjoint_streams():
    task = ListOps(**SMALL)
    train = {tuple(decode(r[:n])) for r, n in zip(task.split_data("train")["tokens"],
                                                       task.split_data("train")["length"])}
    test = {tuple(e) for b in task.eval_batches(100) for e in labels_of(b)[0]}
    assert len(train) == task.n_train and len(test) == task.n_test     # distinct within
    assert not train & test
    for i in range(20):     # the streams differ, not merely the sets
        assert task.example("train", i)[1] != task.example("test", i)[1]
    # a tiny window forces repeats: train still skips everything in the test set
    tiny = ListOps(min_length=4, max_length=5, max_depth=2, max_args=3, n_train=500, n_test=500)
    tr = set(tiny.split_data("train")["keys"])
    te = set(tiny.split_data("test")["keys"])
    assert len(tr) == 500 and len(te) == 500 and not tr & te


# ---------------------------------------------------------------------------
# distribution
# ---------------------------------------------------------------------------
def test_length_distribution_exact_small_case():
    p = length_distribution(2, 3, 10)           # a root op with 2 or 3 digits, or a digit
    expect = np.zeros(11)
    expect[1], expect[4], expect[5] = 1 - VALUE_P, VALUE_P / 2, VALUE_P / 2
    np.testing.assert_allclose(p, expect, atol=1e-12)
    p = length_distribution(3, 2, 20)           # children: digit (3/4) or [OP d d ] (1/4)
    q = VALUE_P * np.array([(3 / 4) ** 2, 2 * 3 / 16, 1 / 16])
    np.testing.assert_allclose(p[[4, 7, 10]], q, atol=1e-12)
    assert abs(p.sum() - 1) < 1e-12


def test_window_probability_matches_unconditioned_draws():
    rng, hits, n = random.Random(11), 0, 20_000
    for _ in range(n):
        draw = sample_tree(rng, 10, 10, 128)
        hits += draw is not None and draw[1] >= 32
    p = ListOps(n_train=1, n_test=1).window_probability
    assert 0.015 < p < 0.019
    assert abs(hits / n - p) < 5 * (p * (1 - p) / n) ** 0.5


def test_labels_and_lengths_follow_the_distribution():
    """2000 examples at the default lengths: a non-degenerate label distribution (LRA's
    majority class is about 17%) and the mean length that the exact law predicts."""
    task = ListOps(n_train=2000, n_test=1)
    data = task.split_data("train")
    counts = np.bincount(data["answer"].numpy(), minlength=10)
    freq = counts / counts.sum()
    assert (counts > 0).all()
    assert 0.1 < freq.max() < 0.5, freq
    assert freq[0] > freq[5] and freq[9] > freq[5]      # MIN/MAX pile up on 0 and 9
    p = length_distribution(10, 10, 128)[32:]
    p = p / p.sum()
    lengths = np.arange(32, 129)
    mean, sd = (p * lengths).sum(), ((p * lengths ** 2).sum() - (p * lengths).sum() ** 2) ** .5
    got = data["length"].double().mean().item()
    assert abs(got - mean) < 5 * sd / len(data["length"]) ** 0.5, (got, mean)


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("field, kw", [
    ("min_length", dict(min_length=0)),
    ("min_length", dict(min_length="32")),
    ("min_length", dict(min_length=True)),
    ("max_length", dict(min_length=64, max_length=63)),
    ("max_length", dict(max_length=5000)),
    ("max_depth", dict(max_depth=1)),
    ("max_depth", dict(max_depth=33)),
    ("max_args", dict(max_args=1)),
    ("max_args", dict(max_args=40)),
    ("n_train", dict(n_train=0)),
    ("n_test", dict(n_test=-1)),
    ("seed", dict(seed=-1)),
    ("min_length", dict(min_length=123, max_depth=3)),            # longest is 122
    ("min_length/max_length", dict(min_length=110, max_length=122, max_depth=3)),  # ~never
    ("min_length/max_length", dict(min_length=4, max_length=4, max_depth=2, max_args=2)),
])
def test_bad_parameters(field, kw):
    with pytest.raises(ValueError, match=f"listops: {field}: expected"):
        ListOps(**kw)


def test_bad_call_arguments_and_registry():
    task = ListOps(**SMALL)
    for kw in (dict(step=-1, batch_size=4), dict(step=0, batch_size=0),
               dict(step=1.5, batch_size=4)):
        with pytest.raises(ValueError, match="step|batch_size"):
            task.batch(**kw)
    with pytest.raises(ValueError, match="batch_size"):
        task.eval_batches(0)
    with pytest.raises(ValueError, match="max_args"):
        make_task("listops", max_args=1)
    t = make_task("listops", min_length=16, max_length=64)
    assert t.name == "listops" and t.kind == "lm" and t.seq_len == 64
    assert t.describe().startswith("listops(min_length=16, max_length=64, max_depth=10")
