"""Attention rollout (Abnar & Zuidema 2020) against hand-built cases, and its view."""
import pytest
import torch

from attnkit.sources.capture import View
from attnkit.analysis.rollout import rollout, rollout_view
from attnkit.sources.words import from_pieces


def test_rollout_of_self_attention_is_identity_and_rows_are_distributions():
    T = 5
    eye = torch.eye(T).expand(3, 2, T, T)
    assert torch.allclose(rollout(eye), torch.eye(T).expand(3, T, T))
    w = torch.softmax(torch.randn(4, 3, T, T, dtype=torch.float64), -1)
    r = rollout(w).double()
    assert torch.allclose(r.sum(-1), torch.ones(4, T, dtype=torch.float64), atol=1e-6)


def test_rollout_two_layers_by_hand():
    # layer 0: every token reads token 0; layer 1: every token reads the last token
    T = 3
    a0 = torch.zeros(1, 1, T, T); a0[..., 0] = 1
    a1 = torch.zeros(1, 1, T, T); a1[..., -1] = 1
    r = rollout(torch.cat([a0, a1]))
    h0 = 0.5 * a0[0, 0] + 0.5 * torch.eye(T)
    h1 = 0.5 * a1[0, 0] + 0.5 * torch.eye(T)
    assert torch.allclose(r[0], h0) and torch.allclose(r[1], h1 @ h0)
    # token 1 after both layers: 1/4 itself, 1/4 + 1/2 * 1/2 via token 0 twice, ...
    assert torch.allclose(r[1, 1], torch.tensor([0.5, 0.25, 0.25]))


def test_rollout_view_needs_every_layer_and_square_maps():
    toks = from_pieces(["a", "b", "c"])
    w = torch.softmax(torch.randn(2, 4, 3, 3), -1)
    v = rollout_view(View("self", "", toks, toks, w, [0, 1]), 2)
    assert v.weights.shape == (2, 1, 3, 3) and v.name == "rollout"
    assert rollout_view(View("self", "", toks, toks, w[:1], [1]), 2) is None
    with pytest.raises(ValueError, match="weights"):
        rollout(torch.zeros(2, 3, 4))


def _page_data(path):
    import json
    import re
    s = path.read_text()
    blob = re.search(r'<script type="application/json" id="data">(.*?)</script>', s, re.S)
    return json.loads(blob.group(1).replace("<\\/", "</"))


def test_page_opens_on_the_top_ranked_head_and_its_query(tmp_path):
    from attnkit.sources.capture import Capture
    from attnkit.analysis.viewer import write_page
    toks = from_pieces(["the", "cat", "sat", "it"])
    w = torch.softmax(torch.randn(2, 3, 4, 4), -1)
    v = View("self", "", toks, toks, w, [0, 1])
    cap = Capture("m", "A", "attnkit", "encoder", "the cat sat it", [v, rollout_view(v, 2)], "x")
    rank = {"from": "it", "to": "cat", "view": 0, "q": 3,
            "rows": [{"layer": 1, "head": 2, "weight": 0.5, "others": 0.1, "contrast": 0.4,
                      "ratio": 5.0, "type": None}]}
    write_page(str(tmp_path / "a.html"), cap, ranking=rank)
    d = _page_data(tmp_path / "a.html")
    assert d["open"] == {"view": 0, "layer": 1, "head": 2, "q": 3}
    assert [x["name"] for x in d["views"]] == ["self", "rollout"]
    write_page(str(tmp_path / "b.html"), cap, open_on={"view": 1, "layer": 0, "head": 0})
    assert _page_data(tmp_path / "b.html")["open"]["view"] == 1


def test_flow_by_hand_one_layer_is_the_map_and_two_layers_add_paths():
    from attnkit.analysis.rollout import flow
    T = 3
    a0 = torch.zeros(1, 1, T, T); a0[..., 0] = 1             # everyone reads token 0
    a1 = torch.zeros(1, 1, T, T); a1[..., -1] = 1            # everyone reads the last token
    f = flow(torch.cat([a0, a1]))
    h0 = 0.5 * a0[0, 0] + 0.5 * torch.eye(T)
    assert torch.allclose(f[0], h0, atol=1e-6)              # one layer: the edge itself
    # token 1 after both layers from input 0: two paths of 0.5 (via tokens 1 and 2) = 1.0,
    # where rollout's product gives 0.5
    assert abs(float(f[1, 1, 0]) - 1.0) < 1e-6
    assert abs(float(rollout(torch.cat([a0, a1]))[1, 1, 0]) - 0.5) < 1e-6
    with pytest.raises(ValueError, match="at most"):
        flow(torch.softmax(torch.randn(1, 1, 65, 65), -1))
