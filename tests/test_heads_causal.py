"""Per-head edits inside transformers' attention function (attnkit.integrations.hf.heads):
ablating a head through attnkit equals weight surgery (the output projection's input
columns of that head zeroed, or replaced by its mean) on random BERT, Llama (GQA) and T5
(cross-attention); a batched ablation equals one run per head; patching a head with its
own run changes nothing; patching every head restores the clean output."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnkit.hf  # noqa: E402
from attnkit.integrations.hf import heads  # noqa: E402
from hf_models import CASES, batch  # noqa: E402

BY_NAME = {c.name: c for c in CASES}
TOL = 2e-5


def build(name):
    torch.manual_seed(0)
    return attnkit.hf.use(BY_NAME[name].build().eval())


def out_of(model, inputs):
    with torch.no_grad():
        o = model(**inputs)
    return o.logits if getattr(o, "logits", None) is not None else o.last_hidden_state


def sites(name, model):
    """[(attention module, its output projection)] per architecture (the reference)."""
    if name == "bert":
        return [(l.attention.self, l.attention.output.dense) for l in model.encoder.layer]
    if name == "llama":
        return [(l.self_attn, l.self_attn.o_proj) for l in model.model.layers]
    if name == "t5":   # cross-attention
        return [(b.layer[1].EncDecAttention, b.layer[1].EncDecAttention.o)
                for b in model.decoder.block]
    raise KeyError(name)


def surgery(model, name, layer, head, mean=None):
    """A copy of the model with ``head``'s columns of the output projection zeroed, the
    head's mean output (Dv,) folded into the bias when given."""
    m = copy.deepcopy(model)
    _, o = sites(name, m)[layer]
    d = o.weight.shape[1] // m.config.num_attention_heads if name != "t5" else m.config.d_kv
    cols = slice(head * d, (head + 1) * d)
    with torch.no_grad():
        if mean is not None:
            extra = o.weight[:, cols] @ mean
            if o.bias is None:
                o.bias = torch.nn.Parameter(torch.zeros(o.weight.shape[0]))
            o.bias += extra
        o.weight[:, cols] = 0
    return m


@pytest.mark.parametrize("name", ["bert", "llama", "t5"])
@pytest.mark.parametrize("how", ["zero", "mean"])
def test_ablation_equals_weight_surgery(name, how):
    model = build(name)
    inputs, real = batch(BY_NAME[name])
    with heads.record() as rec, torch.no_grad():
        model(**inputs)
    layer, head = 1, 2
    mod = sites(name, model)[layer][0]
    assert mod in rec.modules
    rec_out = rec.outputs[mod]                                   # (B, Tq, H, Dv)
    H = rec_out.shape[2]
    mean = rec_out.mean(dim=(0, 1))[head] if how == "mean" else None
    e = heads.HeadEdit.zero([head], H) if how == "zero" else \
        heads.HeadEdit.replace([head], H, rec_out.mean(dim=(0, 1)))
    with heads.edit({mod: e}):
        ours = out_of(model, inputs)
    ref = out_of(surgery(model, name, layer, head, mean), inputs)
    clean = out_of(model, inputs)
    assert (ours - ref)[real].abs().max() < TOL
    assert (ours - clean)[real].abs().max() > 1e-3             # the edit did something


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_batched_ablation_equals_one_run_per_head(name):
    model = build(name)
    inputs, real = batch(BY_NAME[name])
    one = {k: v[:1] for k, v in inputs.items()}
    with heads.record() as rec, torch.no_grad():
        model(**one)
    mod = rec.modules[0]
    H = rec.outputs[mod].shape[2]
    rep = {k: v.repeat(H, 1) for k, v in one.items()}
    with heads.edit({mod: heads.HeadEdit(mask=torch.eye(H, dtype=torch.bool)[:, None])}):
        batched = out_of(model, rep)                              # row h: head h ablated
    for h in range(H):
        with heads.edit({mod: heads.HeadEdit.zero([h], H)}):
            single = out_of(model, one)
        assert (batched[h] - single[0]).abs().max() < TOL


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_patching_own_run_changes_nothing_and_every_head_restores_clean(name):
    model = build(name)
    inputs, _ = batch(BY_NAME[name])
    clean = {k: v[:1] for k, v in inputs.items()}
    corrupted = {k: v.clone() for k, v in clean.items()}
    pos = 3
    corrupted["input_ids"][0, pos] = (corrupted["input_ids"][0, pos] + 1) % 90 + 3
    with heads.record() as rc, torch.no_grad():
        clean_out = model(**clean)
    clean_out = clean_out.logits if hasattr(clean_out, "logits") else clean_out.last_hidden_state
    mods = rc.modules
    with heads.record() as rx:
        corr_out = out_of(model, corrupted)
    # own run: every head replaced by its own output -> identical
    own = {m: heads.HeadEdit(mask=torch.ones(1, 1, rx.outputs[m].shape[2], dtype=torch.bool),
                             value=rx.outputs[m]) for m in mods}
    with heads.edit(own):
        assert torch.equal(out_of(model, corrupted), corr_out)
    every = {m: heads.HeadEdit(mask=torch.ones(1, 1, rc.outputs[m].shape[2], dtype=torch.bool),
                               value=rc.outputs[m]) for m in mods}
    with heads.edit(every):
        patched = out_of(model, corrupted)
    same = torch.ones(clean_out.shape[1], dtype=torch.bool)
    same[pos] = False                  # the changed token's own stream is no head's output
    assert (patched[0, same] - clean_out[0, same]).abs().max() < TOL
    assert (corr_out[0, same] - clean_out[0, same]).abs().max() > 1e-3


def test_edit_shapes_are_checked():
    e = heads.HeadEdit(mask=torch.ones(1, 1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="HeadEdit.mask"):
        e.apply(torch.zeros(2, 5, 4, 8))
    with pytest.raises(TypeError, match="edits"):
        with heads.edit({object(): 0}):
            pass


def test_pruned_checkpoint_reloads_and_matches_the_masked_model(tmp_path):
    from attnkit.bench import prune as P
    model = build("bert")
    inputs, real = batch(BY_NAME["bert"])
    removed = {0: [1, 3], 1: [0, 1, 2, 3]}            # layer 1 loses every head
    with P.masked(model, removed):
        ref = out_of(model, inputs)
    P.save_pruned(model, removed, tmp_path / "pruned")
    small = P.load_pruned(tmp_path / "pruned")
    att = small.encoder.layer[0].attention.self
    assert att.query.weight.shape[0] == 2 * 8 and att.num_attention_heads == 2
    n_full = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in small.parameters()) < n_full
    assert (out_of(small, inputs) - ref)[real].abs().max() < TOL
    assert (out_of(model, inputs) - ref)[real].abs().max() > 1e-3
    with pytest.raises(ValueError, match="not served"):
        P.sites(build("llama"))
    # mean removal: the heads' mean output folded into the bias
    means = P.head_means(model, [{k: v[:1] for k, v in inputs.items()}])
    with P.masked(model, removed, means):
        ref_mean = out_of(model, inputs)
    P.save_pruned(model, removed, tmp_path / "pruned_mean", means)
    small = P.load_pruned(tmp_path / "pruned_mean")
    assert (out_of(small, inputs) - ref_mean)[real].abs().max() < TOL
    assert (ref_mean - ref)[real].abs().max() > 1e-3


def test_sequence_target_is_the_loss_on_a_span():
    from attnkit.analysis import causal as C
    model = build("llama")
    ids = torch.randint(3, 90, (1, 12), generator=torch.Generator().manual_seed(1))
    probe = C.Probe(model, {"input_ids": ids}, C.Target("sequence", "loss", span=(5, 11)))
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    ref = -torch.nn.functional.cross_entropy(logits[0, 5:11], ids[0, 6:12])
    assert abs(float(probe.clean[0, 0]) - float(ref)) < 1e-9
    res = C.head_importance(probe, "zero")
    mod = probe.modules[res["rows"][0]["layer"]]
    with heads.edit({mod: heads.HeadEdit.zero([res["rows"][0]["head"]], 4)}), torch.no_grad():
        lg = model(input_ids=ids).logits.double()
    loss = torch.nn.functional.cross_entropy(lg[0, 5:11], ids[0, 6:12])
    assert abs(float(loss + ref) - res["rows"][0]["effect"]) < 1e-9


def test_mean_ablation_by_a_given_mean_equals_that_replacement():
    from attnkit.analysis import causal as C
    model = build("bert")
    inputs, _ = batch(BY_NAME["bert"])
    one = {k: v[:1] for k, v in inputs.items()}
    probe = C.Probe(model, one, C.Target("embedding", "pooled"))
    g = torch.Generator().manual_seed(3)
    means = [torch.randn(n, 8, generator=g) for n in probe.n_heads]      # (H, Dv) each
    res = C.head_importance(probe, "mean", gradient=False, means=means)
    r = res["rows"][0]
    mod = probe.modules[r["layer"]]
    with heads.edit({mod: heads.HeadEdit.replace([r["head"]], 4, means[r["layer"]])}), \
            torch.no_grad():
        f = probe.readout(model(**one))
    cos = torch.nn.functional.cosine_similarity(f, probe.clean)[0]
    assert abs(float(1 - cos) - r["effect"]) < 1e-9
    with pytest.raises(ValueError, match="means"):
        C.head_importance(probe, "zero", gradient=False, means=means)
