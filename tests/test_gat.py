"""GAT against an independent dense computation (adjacency counts + masked row softmax)."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from attnkit.models.gat import GAT, GATConfig, GATLayer, scatter_softmax

DT = torch.float64


def dense_gat(layer: GATLayer, x, edge_index):
    """The paper's formula on a dense N x N grid, written independently of the layer.

    Edges are a multiset: cnt[i, j] = number of edges j -> i; a neighbour listed c times
    gets logit e_ij + log(c) (c copies of exp(e_ij) in the denominator). With self loops
    the diagonal is set to exactly 1, however many loops were passed (PyG's GATConv:
    remove_self_loops, then add_self_loops). Returns (out, per-edge alpha (E', H) for the
    layer's edge list, cnt)."""
    N, H, C = x.shape[0], layer.heads, layer.out_dim
    src, dst = edge_index
    cnt = torch.zeros(N, N, dtype=DT)
    cnt.index_put_((dst, src), torch.ones(src.numel(), dtype=DT), accumulate=True)
    if layer.add_self_loops:
        eye = torch.eye(N, dtype=DT)
        cnt = torch.where(eye > 0, eye, cnt)
    W = layer.lin.weight.view(H, C, -1)                                # (H, C, F)
    outs, alphas = [], []
    for k in range(H):
        wh = x @ W[k].T                                                # (N, C)
        a = torch.cat([layer.att_dst[k], layer.att_src[k]])            # (2C,)
        pair = torch.cat([wh[:, None, :].expand(N, N, C), wh[None, :, :].expand(N, N, C)], -1)
        e = F.leaky_relu(pair @ a, layer.negative_slope)               # (N, N): e[i, j]
        logits = torch.where(cnt > 0, e + torch.log(cnt.clamp_min(1)), float("-inf"))
        w = torch.softmax(logits, dim=1)
        w = torch.where(cnt.sum(1, keepdim=True) > 0, w, torch.zeros_like(w))  # empty rows
        outs.append(w @ wh)                                            # (N, C)
        # per-edge share: total weight on neighbour j split evenly over its c copies
        alphas.append(w / cnt.clamp_min(1))
    out = torch.stack(outs, 1)                                         # (N, H, C)
    out = out.reshape(N, H * C) if layer.concat else out.mean(1)
    if layer.bias is not None:
        out = out + layer.bias
    return out, alphas, cnt


def random_graph(seed, N, E, in_dim):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, in_dim, generator=g, dtype=DT)
    ei = torch.randint(0, N, (2, E), generator=g)  # duplicates and self loops included
    return x, ei


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), N=st.integers(1, 40), E=st.integers(0, 120),
       in_dim=st.integers(1, 5), out_dim=st.integers(1, 4), heads=st.integers(1, 3),
       concat=st.booleans(), loops=st.booleans(), slope=st.sampled_from([0.0, 0.2, 0.5]))
def test_layer_matches_dense_forward_backward(seed, N, E, in_dim, out_dim, heads, concat,
                                              loops, slope):
    torch.manual_seed(seed)
    layer = GATLayer(in_dim, out_dim, heads, concat=concat, add_self_loops=loops,
                     negative_slope=slope).double()
    with torch.no_grad():
        layer.bias.normal_()
    x, ei = random_graph(seed, N, E, in_dim)
    x.requires_grad_(True)
    out, att = layer(x, ei, return_attention=True)
    ref, ref_alpha, cnt = dense_gat(layer, x, ei)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)

    used = att.edge_index
    assert used.shape[1] == att.weights.shape[0]
    if loops:  # your non-loop edges in order, then one loop per node 0..N-1 (PyG)
        assert torch.equal(used[:, :-N], ei[:, ei[0] != ei[1]])
        assert torch.equal(used[:, -N:], torch.arange(N).expand(2, N))
    else:
        assert torch.equal(used, ei)                                  # as given, loops included
    for k in range(heads):
        torch.testing.assert_close(att.weights[:, k], ref_alpha[k][used[1], used[0]],
                                   rtol=1e-10, atol=1e-12)
    # per target, the weights of its incoming edges sum to 1 (0 for nodes with none)
    sums = torch.zeros(N, heads, dtype=DT).index_add(0, used[1], att.weights)
    has_in = (cnt.sum(1) > 0).to(DT)[:, None].expand(N, heads)
    torch.testing.assert_close(sums, has_in, rtol=0, atol=1e-12)

    g = torch.randn_like(out)
    params = [x] + list(layer.parameters())
    got = torch.autograd.grad((out * g).sum(), params, retain_graph=True)
    want = torch.autograd.grad((ref * g).sum(), params)
    for p, a, b in zip(["x", "lin", "att_dst", "att_src", "bias"], got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=p)


def test_isolated_nodes():
    torch.manual_seed(0)
    x = torch.randn(4, 3, dtype=DT)
    ei = torch.tensor([[0, 1], [1, 0]])                               # nodes 2, 3 isolated
    layer = GATLayer(3, 2, heads=2, add_self_loops=False).double()
    with torch.no_grad():
        layer.bias.normal_()
    out = layer(x, ei)
    torch.testing.assert_close(out[2:], layer.bias.expand(2, -1))     # zero aggregate + bias
    layer.add_self_loops = True
    out, att = layer(x, ei, return_attention=True)
    wh = (x @ layer.lin.weight.T)                                     # (N, H*C)
    # with a self loop an isolated node attends only to itself: weight 1, output Wh_i + b
    torch.testing.assert_close(out[2:], wh[2:] + layer.bias)
    assert torch.equal(att.edge_index[:, 2:], torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]))
    torch.testing.assert_close(att.weights[4:], torch.ones(2, 2, dtype=DT))
    assert torch.isfinite(out).all()


def pyg_style_gat(layer: GATLayer, x, edges):
    """GATConv's rule written per node with Python lists: for target i, the neighbour list
    is every non-loop edge j -> i (duplicates kept, a multiset) plus i itself once."""
    N, H, C = x.shape[0], layer.heads, layer.out_dim
    wh = (x @ layer.lin.weight.T).view(N, H, C)
    rows = []
    for i in range(N):
        nbrs = [j for j, t in edges if t == i and j != i] + [i]
        e = torch.stack([F.leaky_relu((wh[i] * layer.att_dst).sum(-1)
                                      + (wh[j] * layer.att_src).sum(-1), layer.negative_slope)
                         for j in nbrs])                                # (n, H)
        w = torch.softmax(e, dim=0)
        rows.append(sum(w[n][:, None] * wh[j] for n, j in enumerate(nbrs)))  # (H, C)
    out = torch.stack(rows)
    out = out.reshape(N, H * C) if layer.concat else out.mean(1)
    return out + layer.bias


@pytest.mark.parametrize("concat", [True, False])
def test_duplicated_self_loops_collapse_to_one_like_pyg(concat):
    """PyG's GATConv removes every self loop then adds one per node: a loop passed three
    times weighs like one (and like none passed). Non-loop duplicates still count twice."""
    torch.manual_seed(2)
    x = torch.randn(5, 3, dtype=DT)
    layer = GATLayer(3, 4, heads=2, concat=concat).double()
    with torch.no_grad():
        layer.bias.normal_()
    edges = [(0, 0), (1, 0), (0, 0), (2, 1), (2, 1), (3, 3), (0, 0), (4, 2), (3, 3), (1, 3)]
    ei = torch.tensor(edges).T.contiguous()
    out, att = layer(x, ei, return_attention=True)
    torch.testing.assert_close(out, pyg_style_gat(layer, x, edges), rtol=1e-12, atol=1e-12)
    no_loops = ei[:, ei[0] != ei[1]]
    torch.testing.assert_close(out, layer(x, no_loops), rtol=0, atol=0)
    torch.testing.assert_close(out, layer(x, torch.cat([no_loops, torch.arange(5).expand(2, 5)],
                                                       1)), rtol=0, atol=0)
    assert torch.equal(att.edge_index, torch.cat([no_loops, torch.arange(5).expand(2, 5)], 1))
    # without add_self_loops the edge list is used as given: node 0's three loops count 3x
    layer.add_self_loops = False
    out3, att3 = layer(x, ei, return_attention=True)
    ref, alphas, cnt = dense_gat(layer, x, ei)
    assert cnt[0, 0] == 3 and torch.equal(att3.edge_index, ei)
    torch.testing.assert_close(out3, ref, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out3[0], out[0])


def test_duplicate_edge_counts_twice():
    torch.manual_seed(1)
    x = torch.randn(3, 4, dtype=DT)
    layer = GATLayer(4, 3, heads=1, add_self_loops=False).double()
    _, a2 = layer(x, torch.tensor([[1, 1, 2], [0, 0, 0]]), return_attention=True)
    _, a1 = layer(x, torch.tensor([[1, 2], [0, 0]]), return_attention=True)
    w = a2.weights[:, 0]
    assert w[0] == w[1]                                               # each copy its own share
    # neighbour 1's total weight: 2e/(2e + f) vs e/(e + f)
    r = a1.weights[0, 0] / a1.weights[1, 0]                           # e / f
    torch.testing.assert_close(w[0] + w[1], 2 * r / (2 * r + 1))


def test_scatter_softmax_is_stable():
    s = torch.tensor([[1e4], [1e4 - 1.0], [-1e4], [5.0]], dtype=torch.float32)
    idx = torch.tensor([0, 0, 1, 1])
    p = scatter_softmax(s, idx, 3)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p[:2, 0], torch.softmax(torch.tensor([1e4, 1e4 - 1.0]), 0))
    torch.testing.assert_close(p[2:, 0], torch.tensor([0.0, 1.0]))


def test_model_forward_backward_shapes():
    torch.manual_seed(0)
    cfg = GATConfig(in_dim=5, out_dim=3, hidden_dim=4, heads=3, out_heads=2, n_layers=3)
    model = GAT(cfg)
    x, ei = random_graph(0, 12, 30, 5)
    logits, atts = model(x.float(), ei, return_attention=True)
    assert logits.shape == (12, 3)
    assert [a.weights.shape[1] for a in atts] == [3, 3, 2]
    logits.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    torch.testing.assert_close(model(x.float(), ei), model(x.float(), ei))  # no dropout in eval


def test_training_loss_falls():
    # two communities (dense inside, sparse across), weak noisy features: node classification
    g = torch.Generator().manual_seed(0)
    N = 40
    y = torch.arange(N) % 2
    same = y[:, None] == y[None, :]
    prob = torch.where(same, 0.3, 0.02)
    adj = torch.rand(N, N, generator=g) < prob
    adj = (adj | adj.T) & ~torch.eye(N, dtype=torch.bool)
    ei = adj.nonzero().T.contiguous()
    x = torch.randn(N, 6, generator=g) + 0.5 * F.one_hot(y, 6).float()
    torch.manual_seed(0)
    model = GAT(GATConfig(in_dim=6, out_dim=2, hidden_dim=8, heads=4, dropout=0.1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x, ei), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    assert (model(x, ei).argmax(1) == y).float().mean() > 0.9


@pytest.mark.parametrize("x, ei, exc, match", [
    (torch.randn(4, 3), torch.tensor([[0, 1], [1, 2]]).float(), TypeError, "edge_index.*int64"),
    (torch.randn(4, 3), torch.tensor([[0, 1], [1, 2]]).int(), TypeError, "edge_index.*int32"),
    (torch.randn(4, 3), torch.tensor([0, 1, 2]), ValueError, r"edge_index.*\(2, E\)"),
    (torch.randn(4, 3), torch.zeros(3, 2, dtype=torch.long), ValueError, r"edge_index.*\(3, 2\)"),
    (torch.randn(4, 3), torch.tensor([[0, 4], [1, 2]]), ValueError, r"edge_index.*\[0, 4\).*4"),
    (torch.randn(4, 3), torch.tensor([[0, -1], [1, 2]]), ValueError, r"edge_index.*-1"),
    (torch.randn(4, 3), [[0, 1], [1, 2]], TypeError, "edge_index.*list"),
    (torch.randn(4), torch.tensor([[0], [1]]), ValueError, r"x: expected a 2-D"),
    (torch.randn(4, 2), torch.tensor([[0], [1]]), ValueError, r"x: expected 3 features.*got 2"),
    (torch.ones(4, 3, dtype=torch.long), torch.tensor([[0], [1]]), TypeError, "x:.*floating"),
])
def test_bad_graph_inputs(x, ei, exc, match):
    layer = GATLayer(3, 2, heads=2)
    with pytest.raises(exc, match=match):
        layer(x, ei)
    with pytest.raises(exc, match=match):
        GAT(GATConfig(in_dim=3, out_dim=2))(x, ei)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(in_dim=0, out_dim=2, heads=1), ValueError, "in_dim"),
    (dict(in_dim=3, out_dim=2, heads=0), ValueError, "heads"),
    (dict(in_dim="3", out_dim=2, heads=1), TypeError, "in_dim.*str"),
    (dict(in_dim=3, out_dim=2, heads=1, dropout=1.0), ValueError, "dropout"),
    (dict(in_dim=3, out_dim=2, heads=1, negative_slope="x"), TypeError, "negative_slope"),
])
def test_bad_layer_args(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GATLayer(**kwargs)


def test_bad_model_config():
    with pytest.raises(ValueError, match="n_layers"):
        GAT(GATConfig(in_dim=3, out_dim=2, n_layers=0))
    with pytest.raises(TypeError, match="cfg: expected a GATConfig"):
        GAT({"in_dim": 3})


# ----------------------------------------------------------------------------- against PyG itself
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("concat, add_self_loops", [(True, True), (False, True), (True, False)])
def test_matches_pyg_gatconv(seed, concat, add_self_loops):
    """The same weights in torch_geometric's GATConv: outputs, attention weights and
    gradients agree on random multigraphs (duplicate edges, repeated self loops, isolated
    nodes)."""
    pyg = pytest.importorskip("torch_geometric.nn")
    g = torch.Generator().manual_seed(seed)
    N = int(torch.randint(2, 12, (), generator=g))
    E = int(torch.randint(1, 3 * N, (), generator=g))
    F_in, C, H = 5, 3, int(torch.randint(1, 4, (), generator=g))
    ei = torch.randint(0, N, (2, E), generator=g)
    loops = torch.randint(0, N, (int(torch.randint(0, 4, (), generator=g)),), generator=g)
    ei = torch.cat([ei, ei[:, : E // 3], loops.expand(2, -1), loops.expand(2, -1)], 1)
    x = torch.randn(N, F_in, dtype=DT, generator=g)
    ours = GATLayer(F_in, C, heads=H, concat=concat, add_self_loops=add_self_loops).double()
    ref = pyg.GATConv(F_in, C, heads=H, concat=concat, add_self_loops=add_self_loops,
                      negative_slope=ours.negative_slope).double()
    with torch.no_grad():
        ours.att_src.normal_(generator=g), ours.att_dst.normal_(generator=g)
        ours.bias.normal_(generator=g)
        ref.lin.weight.copy_(ours.lin.weight)
        ref.att_src.copy_(ours.att_src[None]), ref.att_dst.copy_(ours.att_dst[None])
        ref.bias.copy_(ours.bias)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, att = ours(xa, ei, return_attention=True)
    out_ref, (ei_ref, alpha_ref) = ref(xb, ei, return_attention_weights=True)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    # the same edges (as multisets) with the same weights
    key = lambda e, a: sorted(zip(e[0].tolist(), e[1].tolist(), [tuple(r) for r in
                                                                 a.detach().tolist()]))
    for (s1, d1, a1), (s2, d2, a2) in zip(key(att.edge_index, att.weights),
                                          key(ei_ref, alpha_ref)):
        assert (s1, d1) == (s2, d2)
        assert max(abs(u - v) for u, v in zip(a1, a2)) < 1e-10
    w = torch.randn(out.shape, dtype=DT, generator=g)
    (out * w).sum().backward(), (out_ref * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.lin.weight.grad, ref.lin.weight.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.att_src.grad, ref.att_src.grad[0], rtol=1e-10, atol=1e-10)
