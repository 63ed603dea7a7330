"""The approximation-error report: inputs mean what they claim, errors show the trade."""
import pytest
import torch

import attnkit
from attnkit import masks, sparse
from attnkit.analysis import approx


@pytest.mark.parametrize("kind, target", [("near", lambda i: max(i - 1, 0)),
                                          ("far", lambda i: i // 2)])
def test_structured_inputs_put_the_weight_on_the_target(kind, target):
    n = 256
    q, k, v = approx.make_inputs(kind, n)
    _, w = attnkit.attention(q, k, v, mask=masks.causal(), backend="reference",
                             return_weights=True)
    on_target = w[0, :, torch.arange(n), [target(i) for i in range(n)]]   # (H, n)
    assert float(on_target.mean()) > 0.9


def test_report_rows_and_the_trade():
    n = 256
    rows = approx.report([n], seed=0)
    names = [v.name for v in approx.default_variants(n)]
    assert len(rows) == len(names) * len(approx.INPUTS)
    assert {(r.variant, r.input) for r in rows} == {(a, b) for a in names
                                                   for b in approx.INPUTS}
    err = {(r.variant, r.input): r.rel_error for r in rows}
    assert all(e >= 0 and e == e for e in err.values())
    loc = sparse.window(n // 16).name
    # a local window finds the key next door and misses the one far away
    assert err[(loc, "near")] < 0.05 and err[(loc, "far")] > 0.5
    # the errors equal an independent computation of the same quantity
    q, k, v = approx.make_inputs("far", n)
    ref = attnkit.attention(q, k, v, mask=masks.causal(), backend="reference")
    out = attnkit.attention(q, k, v, mask=sparse.window(n // 16), backend="reference")
    assert err[(loc, "far")] == pytest.approx(float((out - ref).norm() / ref.norm()), rel=1e-9)
    dens = {r.variant: r.density for r in rows}
    assert dens[loc] == pytest.approx(sparse.window(n // 16).density(n))
    assert dens["linear elu"] is None


def test_markdown_and_cli(capsys):
    rows = [approx.Row("a", "random", 64, 0.5, 0.125), approx.Row("a", "far", 64, 0.5, 1.0),
            approx.Row("lin", "random", 64, None, 0.25)]
    md = approx.to_markdown(rows)
    assert "| variant | density | random rel. err | far rel. err |" in md
    assert "| a | 0.500 | 0.125 | 1 |" in md and "| lin | - | 0.25 |  |" in md
    approx.main(["--n", "64"])
    out = capsys.readouterr().out
    assert out.startswith("n = 64") and "log_sparse()" in out and "favor+(256)" in out


def test_bad_inputs():
    with pytest.raises(ValueError, match="kind"):
        approx.make_inputs("uniform", 8)
    with pytest.raises(ValueError, match="n"):
        approx.make_inputs("random", 0)
