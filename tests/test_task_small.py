"""The small literature tasks: toy translation (reverse/sort), sklearn digits, karate club."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from attnkit.models import Transformer, TransformerConfig
from attnkit.tasks import IGNORE, make_task
from attnkit.tasks.digits import Digits
from attnkit.tasks.graph import KarateClub
from attnkit.tasks.translation import ToyReverse, ToySort, exact_match


def same_batches(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- translation

TRANSLATE = {"reverse": lambda syms: syms[::-1], "sort": sorted}


@pytest.mark.parametrize("cls", [ToyReverse, ToySort])
def test_translation_targets_are_the_mapped_operation(cls):
    task = cls(n_symbols=7, min_len=2, max_len=9, seed=3)
    b = task.batch(5, 64)
    S = task.max_len
    assert b["src"].shape == (64, S) and b["src_len"].shape == (64,)
    assert b["tgt_in"].shape == b["tgt_out"].shape == (64, S + 1)
    assert all(t.dtype == torch.int64 for t in b.values())
    assert task.src_vocab == task.tgt_vocab == 3 + 7
    refs = task.reference(b["src"])
    for i in range(64):
        n = int(b["src_len"][i])
        assert task.min_len <= n <= task.max_len
        src = b["src"][i].tolist()
        symbols = [tok - 3 for tok in src[:n]]                   # source ids 3 + s
        assert all(0 <= s < 7 for s in symbols) and src[n:] == [0] * (S - n)
        target = [3 + (7 - 1 - s) for s in TRANSLATE[task.name](symbols)]  # target ids
        assert refs[i] == target
        assert b["tgt_in"][i].tolist() == [1] + target + [0] * (S - n)
        assert b["tgt_out"][i].tolist() == target + [2] + [IGNORE] * (S - n)
    assert len(b["src_len"].unique()) > 1                        # variable lengths


def source_to_target(task, batch) -> dict:
    """Source id -> target id of the same symbol, read off a ``reverse`` batch."""
    pairs = set()
    for src, ref, n in zip(batch["src"].tolist(), task.reference(batch["src"]),
                           batch["src_len"].tolist()):
        pairs |= set(zip(src[:n][::-1], ref))
    mapping = dict(pairs)
    assert len(mapping) == len(pairs)                           # one target id per symbol
    return mapping


@pytest.mark.parametrize("n_symbols, kept", [(16, set()), (5, {5})])
def test_translation_vocabularies_differ(n_symbols, kept):
    task = ToyReverse(n_symbols=n_symbols)
    mapping = source_to_target(task, task.batch(0, 256))
    assert sorted(mapping) == sorted(mapping.values()) == list(range(3, 3 + n_symbols))
    assert {s for s, t in mapping.items() if s == t} == kept   # odd n: the middle symbol


def test_translation_exact_match():
    task = ToySort(n_symbols=8, min_len=3, max_len=6)
    b = task.batch(1, 16)
    L = 1 + task.tgt_seq_len                                     # greedy: BOS + max_len tokens
    pred = torch.zeros(16, L, dtype=torch.long)                  # BOS, target, EOS, pads
    for i, ref in enumerate(task.reference(b["src"])):
        row = [1] + ref + [2]
        pred[i, :len(row)] = torch.tensor(row)
    assert exact_match(pred, b).tolist() == [True] * 16
    bad = pred.clone()
    bad[0, 1] = 3 + (bad[0, 1] - 3 + 1) % 8                      # a wrong token
    n1 = int(b["src_len"][1])
    bad[1, 1 + n1] = 4                                           # EOS late: one token too many
    bad[2, int(b["src_len"][2])] = 2                             # EOS early: one token short
    assert exact_match(bad, b).tolist() == [False] * 3 + [True] * 13
    after = pred.clone()
    after[:, -1] = 5                                             # tokens after EOS do not count
    short = b["src_len"] < task.max_len
    assert exact_match(after, b)[short].all() and not exact_match(after, b)[~short].any()
    one = {k: v[:1] for k, v in b.items()}
    n0 = int(b["src_len"][0])
    assert exact_match(pred[:1, :1 + n0], one).item()            # no EOS: the row taken whole
    assert not exact_match(pred[:1, :n0], one).item()
    assert exact_match(pred.cuda() if torch.cuda.is_available() else pred, b).all()
    with pytest.raises(ValueError, match="BOS"):
        exact_match(pred[:, 1:], b)


def test_translation_trains_with_the_transformer():
    task = ToyReverse(n_symbols=8, min_len=2, max_len=6)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset("tiny", vocab_size=task.src_vocab,
                                                 share_embeddings=False,
                                                 tgt_vocab_size=task.tgt_vocab))
    b = task.batch(0, 4)
    logits = model(b["src"], b["tgt_in"])
    assert logits.shape == (4, task.tgt_seq_len, task.tgt_vocab)
    loss = F.cross_entropy(logits.flatten(0, 1), b["tgt_out"].flatten(), ignore_index=IGNORE)
    assert torch.isfinite(loss)
    pred = model.greedy(b["src"], max_len=task.tgt_seq_len)
    match = exact_match(pred, b)
    assert match.shape == (4,) and match.dtype == torch.bool


def test_translation_determinism_and_registry():
    a, b = make_task("reverse", seed=1), ToyReverse(seed=1)
    assert same_batches(a.batch(7, 32), b.batch(7, 32))
    assert not torch.equal(a.batch(7, 32)["src"], a.batch(8, 32)["src"])
    assert not torch.equal(a.batch(7, 32)["src"], ToyReverse(seed=2).batch(7, 32)["src"])
    assert make_task("sort").name == "sort" and a.kind == "seq2seq"
    evals = a.eval_batches(64)
    assert sum(len(e["src"]) for e in evals) == a.n_eval == 500
    assert torch.equal(torch.cat([e["src"] for e in evals]),
                       torch.cat([e["src"] for e in b.eval_batches(7)]))
    assert not torch.equal(evals[0]["src"], a.batch(0, 64)["src"])


# ------------------------------------------------------------------------------ digits

@pytest.fixture(scope="module")
def digits():
    return Digits()


def test_digits_shapes_and_split(digits):
    assert (digits.image_size, digits.channels, digits.n_classes, digits.kind) == \
        (8, 1, 10, "image")
    assert digits.n_train + digits.n_test == 1797
    assert abs(digits.n_test - 0.2 * 1797) <= 5
    train, test = digits.train_indices, digits.test_indices
    assert len(np.intersect1d(train, test)) == 0
    assert len(np.union1d(train, test)) == 1797
    b = digits.batch(0, 32)
    assert b["images"].shape == (32, 1, 8, 8) and b["images"].dtype == torch.float32
    assert b["label"].shape == (32,) and b["label"].dtype == torch.int64
    evals = digits.eval_batches(100)
    labels = torch.cat([e["label"] for e in evals])
    assert len(labels) == digits.n_test and [len(e["label"]) for e in evals][:3] == [100] * 3
    counts = labels.bincount(minlength=10)
    assert (counts > 0).all()                                    # stratified
    y = load_digits().target
    assert torch.equal(labels, torch.from_numpy(y[test]))       # test split, in order
    share = counts.double() / torch.from_numpy(np.bincount(y)).double()
    assert ((share - 0.2).abs() < 0.01).all()


def test_digits_standardised_and_deterministic(digits):
    everything = digits.batch(3, digits.n_train)                 # the whole train split
    x = everything["images"].double()
    assert abs(x.mean().item()) < 1e-5 and abs(x.std(unbiased=False).item() - 1) < 1e-5
    pixels = load_digits().images[digits.train_indices] / 16.0
    expected = torch.from_numpy((pixels - pixels.mean()) / pixels.std()).float()
    # a batch of n_train is a permutation of the train split (no index repeated)
    got_rows, got_counts = torch.unique(everything["images"].flatten(1), dim=0,
                                        return_counts=True)
    want_rows, want_counts = torch.unique(expected.flatten(1), dim=0, return_counts=True)
    assert torch.allclose(got_rows, want_rows, atol=1e-5)
    assert torch.equal(got_counts, want_counts)
    b = digits.batch(2, 64)
    assert same_batches(b, Digits().batch(2, 64))
    assert not torch.equal(b["label"], digits.batch(4, 64)["label"])
    assert np.array_equal(Digits(seed=0).test_indices, digits.test_indices)
    assert not np.array_equal(Digits(seed=1).test_indices, digits.test_indices)
    assert same_batches(digits.eval_batches(50)[2], Digits().eval_batches(50)[2])


# ------------------------------------------------------------------------------ karate

def test_karate_graph():
    task = KarateClub()
    g = task.batch(0, 99)
    assert (task.kind, task.n_features, task.n_classes) == ("graph", 34, 2)
    assert g["x"].shape == (34, 34) and torch.equal(g["x"], torch.eye(34))
    ei = g["edge_index"]
    assert ei.shape == (2, 156) and ei.dtype == torch.int64
    assert (ei[0] != ei[1]).all()                                # no self loops
    pairs = set(map(tuple, ei.T.tolist()))
    assert len(pairs) == 156 and pairs == {(v, u) for u, v in pairs}
    assert g["label"].bincount().tolist() == [17, 17]
    assert g["label"][0] == 0 and g["label"][33] == 1
    train, test = g["train_mask"], g["test_mask"]
    assert train.dtype == torch.bool and not (train & test).any() and (train | test).all()
    assert train[0] and train[33]
    assert g["label"][train].bincount().tolist() == [4, 4]
    assert same_batches(g, task.eval_batches(1)[0])
    assert same_batches(g, KarateClub().batch(5, 1))


@pytest.mark.parametrize("k", [1, 2, 16])
def test_karate_train_size(k):
    masks = [KarateClub(n_train_per_class=k, seed=s).batch(0, 1)["train_mask"] for s in range(4)]
    label = KarateClub().batch(0, 1)["label"]
    for m in masks:
        assert label[m].bincount(minlength=2).tolist() == [k, k] and m[0] and m[33]
    if 1 < k < 16:
        assert any(not torch.equal(masks[0], m) for m in masks[1:])   # the seed chooses


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("make, words", [
    (lambda: ToyReverse(n_symbols=1), ["n_symbols", ">= 2", "got 1"]),
    (lambda: ToySort(min_len=0), ["min_len", ">= 1", "got 0"]),
    (lambda: ToySort(min_len=5, max_len=4), ["max_len", ">= 5", "got 4"]),
    (lambda: ToyReverse(n_eval=0), ["n_eval", "got 0"]),
    (lambda: ToyReverse(seed=-1), ["seed", ">= 0", "got -1"]),
    (lambda: ToyReverse().batch(0, 0), ["batch_size", "got 0"]),
    (lambda: ToyReverse().reference(torch.tensor([[3, 0, 4]])), ["src", "padding"]),
    (lambda: ToyReverse(n_symbols=4).reference(torch.tensor([[9]])), ["src", "[3, 7)", "9"]),
    (lambda: Digits(test_fraction=1.0), ["test_fraction", "(0, 1)", "1.0"]),
    (lambda: Digits(test_fraction=0), ["test_fraction", "(0, 1)", "0"]),
    (lambda: Digits(seed=-2), ["seed", "got -2"]),
    (lambda: Digits().batch(0, 5000), ["batch_size", "n_train=1438", "5000"]),
    (lambda: KarateClub(n_train_per_class=0), ["n_train_per_class", ">= 1", "got 0"]),
    (lambda: KarateClub(n_train_per_class=17), ["n_train_per_class", "at most 16", "got 17"]),
    (lambda: make_task("karate", n_train_per_class=20), ["n_train_per_class", "got 20"]),
])
def test_bad_parameters(make, words):
    with pytest.raises(ValueError) as e:
        make()
    for w in words:
        assert w in str(e.value), f"{w!r} not in {str(e.value)!r}"
