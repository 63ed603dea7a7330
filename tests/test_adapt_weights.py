"""Stage 1's attention-weight matching (``attnkit adapt``, linear and gqa variants): the
row KL between the teacher's softmax weights and the linear attention's normalised weights
(or, for gqa, the softmax rows over the student's mean-pooled keys) against a direct
float64 computation (causal, key padding, GQA), zero where the rows are equal; the term is
in the stage-1 loss, built from the teacher's own q/k and the features the student's
linear calls multiplied (gqa: the q/k its calls used); training on it alone lowers it; the
record says so; sparse variants are refused in one line."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnkit.adaptation.objectives import (transfer_loss, weight_kl,  # noqa: E402
                                           weight_match)
from attnkit.integrations.hf.calls import collect_linear, record  # noqa: E402


def _rows_kl(q, k, scale, student_row, causal, keep):
    """KL(teacher softmax row || student row) one row at a time, float64: (sum, rows);
    ``student_row(b, h, i, js)`` gives the student's probabilities over keys ``js``."""
    q, k = q.detach().double(), k.detach().double()
    B, H, T, _ = q.shape
    G = H // k.shape[1]
    total, rows = 0.0, 0
    for b in range(B):
        for h in range(H):
            for i in range(T):
                if keep is not None and not keep[b, i]:
                    continue
                js = [j for j in range(T) if (not causal or j <= i)
                      and (keep is None or keep[b, j])]
                if not js:
                    continue
                pt = torch.stack([q[b, h, i] @ k[b, h // G, j] * scale for j in js]).softmax(0)
                ps = student_row(b, h, i, js)
                total += float((pt * (pt.log() - ps.log())).sum())
                rows += 1
    return total, rows


def _direct(q, k, scale, fq, fk, causal, keep):
    """Linear student rows phi(q).phi(k_j) / sum_j (features fq, fk)."""
    fq, fk = fq.detach().double(), fk.detach().double()
    G = fq.shape[1] // fk.shape[1]

    def row(b, h, i, js):
        a = torch.stack([fq[b, h, i] @ fk[b, h // G, j] for j in js])
        return a / a.sum()
    return _rows_kl(q, k, scale, row, causal, keep)


@pytest.mark.parametrize("causal", [True, False])
def test_weight_kl_equals_the_direct_float64_rows(causal):
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, T, D = 2, 4, 2, 7, 5
    q, k = torch.randn(B, H, T, D, generator=g), torch.randn(B, Hkv, T, D, generator=g)
    fq = torch.nn.functional.elu(torch.randn(B, H, T, 6, generator=g)) + 1
    fk = torch.nn.functional.elu(torch.randn(B, Hkv, T, 6, generator=g)) + 1
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[0, :2] = False                                       # left padding
    keep[1, -3:] = False                                      # right padding
    for kp in (None, keep):
        got, n = weight_kl(q, k, 0.7, fq, fk, causal, kp)
        want, m = _direct(q, k, 0.7, fq, fk, causal, kp)
        assert int(n) == m * 1 and m > 0
        assert got.dtype == torch.float32
        assert math.isclose(float(got), want, rel_tol=1e-5), (float(got), want)
        got64, _ = weight_kl(q.double(), k.double(), 0.7, fq.double(), fk.double(), causal, kp)
        assert got64.dtype == torch.float64 and math.isclose(float(got64), want, rel_tol=1e-12)


def test_weight_kl_is_zero_when_the_linear_rows_are_the_softmax_rows():
    """One-hot keys: q.k_j = q_j, so features exp(scale q) and k give phi(q).phi(k_j) =
    exp(scale q_j), the softmax's numerator: the rows are equal, the KL is 0."""
    g = torch.Generator().manual_seed(1)
    B, H, T = 2, 2, 6
    q = torch.randn(B, H, T, T, generator=g)
    k = torch.eye(T).expand(B, 1, T, T).contiguous()          # key j = e_j (one KV head)
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[1, :2] = False
    for causal in (True, False):
        kl, n = weight_kl(q, k, 0.5, torch.exp(0.5 * q), k, causal, keep)
        assert int(n) == (B * T - 2) * H and abs(float(kl)) < 1e-5 * int(n), float(kl)
        kl, _ = weight_kl(q, k, 0.5, torch.exp(0.4 * q), k, causal, keep)  # not equal
        assert float(kl) > 1e-3


def test_a_relu_zero_feature_gives_a_finite_kl():
    q, k = torch.randn(1, 1, 4, 3), torch.randn(1, 1, 4, 3)
    fq, fk = torch.ones(1, 1, 4, 2), torch.tensor([[[[1.0, 0], [0, 0], [2, 0], [0, 0]]]])
    fq.requires_grad_(True)
    kl, n = weight_kl(q, k, 1.0, fq, fk, True, None)
    kl.backward()
    assert torch.isfinite(kl) and int(n) == 4 and torch.isfinite(fq.grad).all()


TEXT = Path(__file__).resolve().parents[1] / "src" / "attnkit" / "data" / "bench_text.txt"


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """A tiny random GQA decoder (4 heads, 2 K/V heads) with a word-level tokenizer."""
    import tokenizers as tk
    t = transformers
    path = tmp_path_factory.mktemp("wm") / "dec"
    torch.manual_seed(0)
    t.LlamaForCausalLM(t.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=64,
                                     initializer_range=0.3)).save_pretrained(path)
    tok = tk.Tokenizer(tk.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    tok.train_from_iterator([TEXT.read_text()], tk.trainers.WordLevelTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]"]))
    t.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                              pad_token="[PAD]").save_pretrained(path)
    return str(path)


def _ids(n=4, T=24, seed=0):
    return torch.randint(2, 300, (n, T), generator=torch.Generator().manual_seed(seed))


def _pair(decoder, variant):
    from attnkit.adaptation.student import open_pair
    return open_pair(decoder, variant)


def _terms(pair, ids, student_calls=collect_linear):
    """The per-layer mean row KLs of transfer_loss's weight term, the teacher's recorded
    calls and the student's (``collect_linear`` for linear variants, ``record`` for gqa)."""
    from attnkit.adaptation.objectives import _layer_errors, _teacher_layers
    with record() as calls:
        rec, _ = _teacher_layers(pair, ids)
    with student_calls() as s_calls:
        _layer_errors(pair, rec)
    return [a / c for a, c in weight_match(pair, calls, s_calls)], calls, s_calls


def test_the_weight_term_is_in_the_stage1_loss_from_the_teachers_rows(decoder):
    """transfer_loss(weights=w) = outputs-only loss + w x the sum over layers of the mean
    row KL; each layer's term is weight_kl of the teacher's recorded q/k (after RoPE,
    causal) against the hedgehog features of the same q/k, checked in float64."""
    pair = _pair(decoder, "linear:hedgehog")
    ids = _ids()
    terms, calls, linear = _terms(pair, ids)
    assert len(calls) == len(linear) == 2 and all(c.causal for c in linear)
    for i, (c, term) in enumerate(zip(calls, terms)):
        fm = pair.s_mods[i].attnkit_feature_map
        q, k = c.query.double(), c.key.double()                # (4, 4, 24, 8), (4, 2, 24, 8)
        with torch.no_grad():
            fq, fk = fm.double().queries(q), fm.keys(k)
            fm.float()
            want, n = _direct(q, k, c.args["scaling"], fq, fk, True, None)
        assert n == 4 * 4 * 24
        assert math.isclose(term.item(), want / n, rel_tol=1e-5), (term.item(), want / n)
        assert term.item() > 0.05
    with torch.no_grad():
        l0 = transfer_loss(pair, ids, None, 0.0)
        l2 = transfer_loss(pair, ids, None, 2.0)
    assert math.isclose(float(l2 - l0), 2 * sum(terms).item(), rel_tol=1e-4)


def test_fixed_maps_match_the_teachers_weights_not_the_students(decoder):
    """linear:elu trains the q/k projections in stage 1: the softmax rows must stay the
    teacher's. After the student's q projection changes, the term still takes the
    teacher's q/k, and the student's elu features of its own q."""
    pair = _pair(decoder, "linear:elu")
    with torch.no_grad():
        pair.s_mods[0].q_proj.weight.mul_(1.5)
    ids = _ids(2)
    terms, calls, linear = _terms(pair, ids)
    t_q = calls[0].query
    with record() as s_calls:                                  # the student's own q
        pair.run(pair.student, ids)
    s_q = s_calls[0].query
    assert not torch.allclose(t_q, s_q)
    assert torch.allclose(linear[0].query_features,
                          torch.nn.functional.elu(s_q) + 1, atol=1e-6)
    want, n = weight_kl(t_q, calls[0].key, calls[0].args["scaling"],
                        torch.nn.functional.elu(s_q) + 1, linear[0].key_features, True, None)
    assert math.isclose(terms[0].item(), (want / n).item(), rel_tol=1e-6)


@pytest.mark.parametrize("variant", ["linear:hedgehog", "gqa:1"])
def test_data_parallel_shares_add_up_to_the_global_loss(decoder, variant):
    """Under torchrun each process divides by the global counts (``total``): two halves'
    losses and gradients add up to the whole batch's, the weight term included."""
    pair = _pair(decoder, variant)
    ids = _ids(4)
    halves, seen = (ids[:2], ids[2:]), {}

    def share(h, total):
        pair.student.zero_grad(set_to_none=True)
        loss = transfer_loss(pair, halves[h], total, 1.0)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in pair.stage1_params]

    for h in (0, 1):                          # what each process contributes to the sum
        share(h, lambda x, h=h: seen.setdefault(h, x.clone()))
    parts = [share(h, lambda x, h=h: x + seen[1 - h]) for h in (0, 1)]
    pair.student.zero_grad(set_to_none=True)
    loss = transfer_loss(pair, ids, None, 1.0)
    loss.backward()
    assert math.isclose(parts[0][0] + parts[1][0], loss.item(), rel_tol=1e-5)
    for a, b, p in zip(parts[0][1], parts[1][1], pair.stage1_params):
        assert torch.allclose(a + b, p.grad, rtol=1e-4, atol=1e-7)


def test_training_on_the_weight_term_alone_lowers_it(decoder):
    """A few Adam steps on the learnable maps with only the weight term (no output loss)
    bring the linear rows towards the teacher's softmax rows, on a held-out batch too --
    fails if the linear path stops noting its features or the term stops reaching them."""
    pair = _pair(decoder, "linear:hedgehog")
    held = _ids(4, seed=9)
    with torch.no_grad():
        before = float(sum(_terms(pair, held)[0]))
    opt = torch.optim.Adam(pair.stage1_params, lr=3e-2)
    for step in range(20):
        opt.zero_grad()
        loss = sum(_terms(pair, _ids(4, seed=step))[0])
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(sum(_terms(pair, held)[0]))
    assert after < 0.9 * before, (before, after)          # 1.53 -> 1.28 here


def test_adapt_records_the_stage1_loss_and_the_held_out_attention_kl(decoder, tmp_path):
    import attnkit
    from attnkit.adaptation.config import AdaptConfig
    fast = dict(seq=24, batch_size=4, eval_windows=4, lr1=3e-2, progress=False,
                log=lambda *a: None)
    rec = attnkit.adapt(decoder, "linear:hedgehog", str(TEXT), 6, str(tmp_path / "a"),
                        stage1_steps=6, eval_every=3, **fast)
    s1 = rec["stage1"]
    assert s1["weights"] == 1.0 and "KL(teacher's softmax row" in s1["loss"], s1
    assert json.loads((tmp_path / "a" / "config.json").read_text())[
        "attnkit_adapted"]["stage1"] == s1
    h = rec["history"]
    assert all("attention_kl" in x for x in h) and h[-1]["attention_kl"] < h[0]["attention_kl"]
    off = attnkit.adapt(decoder, "linear:hedgehog", str(TEXT), 2, str(tmp_path / "b"),
                        stage1_steps=2, stage1_weights=0, **fast)["stage1"]
    assert off["weights"] == 0.0 and "off" in off["loss"]
    win = attnkit.adapt(decoder, "window:4", str(TEXT), 2, str(tmp_path / "c"),
                        stage1_steps=2, **fast)
    assert win["stage1"]["weights"] is None and "attention_kl" not in win["history"][0]
    # a run saved before the field existed resumes with outputs only, as it was trained
    saved = json.loads((tmp_path / "a" / "adapt.json").read_text())
    assert saved["stage1_weights"] == 1.0
    saved.pop("stage1_weights")
    assert AdaptConfig.from_dict(saved).stage1_weights == 0.0

    def cfg(variant, **kw):
        return AdaptConfig(model=decoder, variant=variant, text=str(TEXT), steps=2, **kw)
    assert cfg("linear:hedgehog").stage1_weights == 1.0   # the defaults: learnable maps on,
    assert cfg("linear:elu").stage1_weights == 0.0        # fixed maps off (opt in: > 0)
    assert cfg("linear:elu", stage1_weights=2).stage1_weights == 2.0
    assert cfg("window:4", stage1_weights=0).stage1_weights == 0.0
    with pytest.raises(ValueError, match="--stage1-weights: expected a number >= 0"):
        cfg("linear:elu", stage1_weights=-1.0)
    with pytest.raises(ValueError, match="only a linear or gqa variant's stage 1 matches"):
        cfg("window:4", stage1_weights=1.0)


def test_bench_reuses_a_run_saved_before_the_field_and_refuses_a_changed_recipe(tmp_path):
    """bench --adapt's directories: an adapt.json without stage1_weights was trained with
    outputs only -- the same recipe for window (reused), not for hedgehog (refused)."""
    from attnkit.adaptation.config import AdaptConfig
    from attnkit.adaptation.sweep import _existing
    for variant, ok in (("window:4", True), ("linear:hedgehog", False)):
        cfg = AdaptConfig(model="m", variant=variant, text=str(TEXT), steps=4)
        out = tmp_path / variant.replace(":", "-")
        out.mkdir()
        old = cfg.to_dict()
        old.pop("stage1_weights")
        (out / "adapt.json").write_text(json.dumps(old))
        if ok:
            assert _existing(out, cfg)[0] == "resume"
        else:
            with pytest.raises(ValueError, match=r"--stage1-weights 0.0 there, 1.0 now"):
                _existing(out, cfg)


def test_the_linear_path_notes_the_calls_mask_and_only_when_asked(decoder):
    """A padded batch through attnkit:linear:elu: each layer's call is noted with its
    causal flag and key padding (the model's attention_mask), features elu(x) + 1 of the
    call's q/k; outside collect_linear nothing is kept."""
    import attnkit.hf
    from attnkit.integrations.hf.calls import collecting_linear
    model = attnkit.hf.from_pretrained(decoder, "linear:elu")
    ids, mask = _ids(2, 12), torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0                                            # left padding
    assert not collecting_linear()
    with torch.no_grad(), collect_linear() as linear, record() as calls:
        model(input_ids=ids, attention_mask=mask)
    assert not collecting_linear() and len(linear) == len(calls) == 2
    for c, lin in zip(calls, linear):
        assert lin.causal and torch.equal(lin.keep, mask.bool()), lin.keep
        assert torch.equal(lin.query_features, torch.nn.functional.elu(c.query) + 1)
        assert torch.equal(lin.key_features, torch.nn.functional.elu(c.key) + 1)


# ---- gqa:N: the student's rows are a softmax over its mean-pooled keys ------------------

def _direct_softmax(q, k, scale, q_s, k_s, causal, keep):
    """Softmax student rows over its own q_s and (pooled) keys k_s."""
    q_s, k_s = q_s.detach().double(), k_s.detach().double()
    Gs = q_s.shape[1] // k_s.shape[1]

    def row(b, h, i, js):
        return torch.stack([q_s[b, h, i] @ k_s[b, h // Gs, j] * scale for j in js]).softmax(0)
    return _rows_kl(q, k, scale, row, causal, keep)


@pytest.mark.parametrize("causal", [True, False])
def test_softmax_kl_equals_the_direct_float64_rows(causal):
    """gqa's term: teacher 4 query heads on 2 K/V heads, the student's keys pooled into 1
    (and a drifted q), causal or not, left and right key padding."""
    from attnkit.adaptation.objectives import softmax_kl
    from attnkit.engine.variants import pool_heads
    g = torch.Generator().manual_seed(2)
    B, H, Hkv, T, D = 2, 4, 2, 7, 5
    q, k = torch.randn(B, H, T, D, generator=g), torch.randn(B, Hkv, T, D, generator=g)
    q_s = q + 0.3 * torch.randn(B, H, T, D, generator=g)
    k_s = pool_heads(k + 0.5 * torch.randn(B, Hkv, T, D, generator=g), 1)   # (B, 1, T, D)
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[0, :2] = False
    keep[1, -3:] = False
    for kp in (None, keep):
        got, n = softmax_kl(q, k, 0.7, q_s, k_s, causal, kp)
        want, m = _direct_softmax(q, k, 0.7, q_s, k_s, causal, kp)
        assert int(n) == m and m > 0 and got.dtype == torch.float32
        assert math.isclose(float(got), want, rel_tol=1e-5), (float(got), want)
        got64, _ = softmax_kl(q.double(), k.double(), 0.7, q_s.double(), k_s.double(),
                              causal, kp)
        assert got64.dtype == torch.float64 and math.isclose(float(got64), want, rel_tol=1e-12)
    q_s.requires_grad_(True)
    k_s = k_s.detach().requires_grad_(True)
    kl, _ = softmax_kl(q, k, 0.7, q_s, k_s, causal, keep)
    kl.backward()                       # masked keys and uncounted rows: finite gradients
    assert torch.isfinite(q_s.grad).all() and torch.isfinite(k_s.grad).all()
    assert k_s.grad.abs().sum() > 0


def test_softmax_kl_is_zero_when_the_student_rows_are_the_teachers():
    from attnkit.adaptation.objectives import softmax_kl
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 4, 6, 3, generator=g), torch.randn(2, 2, 6, 3, generator=g)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, :2] = False
    for causal in (True, False):
        kl, n = softmax_kl(q, k, 0.5, q, k, causal, keep)
        assert int(n) == (2 * 6 - 2) * 4 and abs(float(kl)) < 1e-6 * int(n), float(kl)
        # a student with one K/V head repeating the teacher's head 0: equal rows for the
        # query heads of group 0 only
        kl, _ = softmax_kl(q, k, 0.5, q, k[:, :1], causal, keep)
        assert float(kl) > 1e-3


def _gqa_terms(pair, ids):
    return _terms(pair, ids, student_calls=record)


def test_gqa_weight_term_is_in_the_stage1_loss_from_the_pooled_keys(decoder):
    """gqa:1 on the 2-K/V-head decoder: each layer's term is the teacher's rows (its own
    per-head keys) against softmax rows of the student's q and its keys mean-pooled into
    one head, checked in float64; transfer_loss(w) = outputs-only + w x their sum, and the
    term's gradient reaches the (pooled) K projections."""
    from attnkit.engine.variants import pool_heads
    pair = _pair(decoder, "gqa:1")
    ids = _ids()
    terms, calls, s_calls = _gqa_terms(pair, ids)
    assert len(calls) == len(s_calls) == 2
    for c, s, term in zip(calls, s_calls, terms):
        assert torch.equal(s.query, c.query) and not torch.allclose(s.key, c.key)
        want, n = _direct_softmax(c.query, c.key, c.args["scaling"], s.query,
                                  pool_heads(s.key, 1), True, None)
        assert n == 4 * 4 * 24
        assert math.isclose(term.item(), want / n, rel_tol=1e-5), (term.item(), want / n)
        assert term.item() > 1e-3
    with torch.no_grad():
        l0 = transfer_loss(pair, ids, None, 0.0)
        l2 = transfer_loss(pair, ids, None, 2.0)
    assert math.isclose(float(l2 - l0), 2 * sum(terms).item(), rel_tol=1e-4)
    pair.student.zero_grad(set_to_none=True)
    sum(terms).backward()
    k_proj = pair.s_mods[0].k_proj.weight
    assert k_proj.grad is not None and k_proj.grad.abs().sum() > 0
    assert pair.s_mods[0].v_proj.weight.grad is None          # rows do not depend on V


def test_gqa_weight_term_is_zero_when_the_teachers_keys_are_already_pooled(decoder):
    """A teacher whose K/V heads of a group are equal (its K projection = the student's
    pooled one): the student's pooled keys are its keys, the rows equal, the term 0."""
    pair = _pair(decoder, "gqa:1")
    with torch.no_grad():
        for t, s in zip(pair.t_mods, pair.s_mods):
            t.k_proj.weight.copy_(s.k_proj.weight)
            if t.k_proj.bias is not None:
                t.k_proj.bias.copy_(s.k_proj.bias)
        terms = _gqa_terms(pair, _ids(2))[0]
    assert all(abs(t.item()) < 1e-6 for t in terms), terms


def test_gqa_weight_term_reads_the_calls_causal_and_padding_mask(decoder):
    """The teacher's recorded call of a left-padded batch gives (causal, keep = the
    attention_mask) to the term; an unmasked encoder-style call gives (False, None)."""
    import attnkit.hf
    from attnkit.adaptation.objectives import _causal_keep
    model = attnkit.hf.from_pretrained(decoder)
    ids, mask = _ids(2, 12), torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad(), record() as calls:
        model(input_ids=ids, attention_mask=mask)
    for c in calls:
        causal, keep = _causal_keep(c)
        assert causal and torch.equal(keep, mask.bool()), keep


@pytest.mark.parametrize("variant", ["window:4", "bigbird:4"])
def test_sparse_stage1_weights_are_refused_in_one_line(decoder, variant):
    from attnkit.adaptation.config import AdaptConfig
    with pytest.raises(ValueError) as e:
        AdaptConfig(model=decoder, variant=variant, text=str(TEXT), steps=2,
                    stage1_weights=1.0)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--stage1-weights:"), msg
    assert "renormalised" in msg
    assert AdaptConfig(model=decoder, variant="gqa:1", text=str(TEXT), steps=2,
                       stage1_weights=1.0).stage1_weights == 1.0
    assert AdaptConfig(model=decoder, variant="gqa:1", text=str(TEXT),
                       steps=2).stage1_weights == 0.0          # measured: off by default


def test_adapt_records_the_gqa_weight_term_and_its_held_out_attention_kl(decoder, tmp_path):
    import attnkit
    fast = dict(seq=24, batch_size=4, eval_windows=4, lr1=3e-2, progress=False,
                log=lambda *a: None)
    rec = attnkit.adapt(decoder, "gqa:1", str(TEXT), 2, str(tmp_path / "g"), stage1_steps=2,
                        stage1_weights=1.0, eval_every=1, **fast)
    s1 = rec["stage1"]
    assert s1["weights"] == 1.0 and "mean-pooled" in s1["loss"], s1
    assert all(x["attention_kl"] > 0 for x in rec["history"])
    off = attnkit.adapt(decoder, "gqa:1", str(TEXT), 1, str(tmp_path / "h"), stage1_steps=1,
                        **fast)["stage1"]
    assert off["weights"] == 0.0 and "off" in off["loss"] and "feature map" not in off["loss"]
