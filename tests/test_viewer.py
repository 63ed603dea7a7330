"""The offline attention viewer: embedded data, downsampling, page budget, and a real
browser (headless Chromium) measuring the layout at 13, 256 and 2,000 tokens and with
80 layers x 64 heads."""
import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from attnkit.sources.capture import Capture, View
from attnkit.analysis.inspect import classify_heads
from attnkit.analysis.viewer import MAX_BYTES, display_factors, downsample, write_page
from attnkit.sources.words import Tokens


def page_data(path):
    text = open(path, encoding="utf-8").read()
    assert "<script src" not in text and "http" not in text.replace("http-equiv", "")
    return json.loads(re.search(r'id="data">(.*?)</script>', text, re.S).group(1))


def weights(L, H, Tq, Tk=None, seed=0, causal=False):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(L, H, Tq, Tk or Tq, generator=g) * 3
    if causal:
        s = s.masked_fill(torch.ones(Tq, Tk or Tq, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1)


def toks(n, prefix="w"):
    labels = [f"{prefix}{i}" for i in range(n)]
    return Tokens(labels, labels, list(range(n)), labels)


def capture(*views, text="a test text"):
    return Capture("test-model", "TestArch", "attnkit", "encoder", text, list(views), "test")


def self_view(w, name="self", causal=False):
    T = w.shape[-1]
    return View(name, "self-attention", toks(T), toks(T), w, list(range(w.shape[0])), causal)


def decode(d, l, h):
    rq, rk, H = d["rq"], d["rk"], d["H"]
    q = np.frombuffer(base64.b64decode(d["maps"]), dtype=np.uint8).reshape(-1, H, rq, rk)
    rm = np.frombuffer(base64.b64decode(d["rmax"]), dtype=np.float32).reshape(-1, H, rq)
    return q[l, h] / 255.0 * rm[l, h][:, None]


def test_page_embeds_every_head_row_relative(tmp_path):
    w = weights(2, 3, 7)
    w[1, 2, 3] = 1e-4                                    # a tiny row keeps its precision
    w[1, 2, 3, 5] = 3e-4
    p = tmp_path / "a.html"
    write_page(str(p), capture(self_view(w)), {"self": classify_heads(w)})
    d = page_data(p)["views"][0]
    assert (d["L"], d["H"], d["rq"], d["rk"], d["fq"], d["fk"]) == (2, 3, 7, 7, 1, 1)
    got = decode(d, 1, 2)
    rel = np.abs(got - w[1, 2].numpy()) / w[1, 2].numpy().max(-1, keepdims=True)
    assert rel.max() <= 0.5 / 255 + 1e-6                  # per-row quantisation
    assert got[3, 5] == pytest.approx(3e-4, rel=1e-3)
    assert d["max"][1][2] == pytest.approx(float(w[1, 2].max()), rel=1e-6)


def test_downsample_blocks_and_rectangular_maps():
    w = weights(1, 2, 600, 37)
    d = downsample(w, 3, 4)
    assert d.shape == (1, 2, 200, 10)
    want = torch.nn.functional.pad(w, (0, 3)).reshape(1, 2, 200, 3, 10, 4).sum(-1).mean(-2)
    assert torch.allclose(d, want, atol=1e-6)
    assert torch.allclose(d.sum(-1), torch.ones(1, 2, 200), atol=1e-5)   # rows stay distributions
    short = downsample(weights(1, 1, 5), 2, 2)                           # a partial last block
    assert torch.allclose(short.sum(-1), torch.ones(1, 1, 3), atol=1e-5)


def test_long_and_many_head_pages_fit_the_budget_and_say_so(tmp_path):
    big = self_view(weights(1, 2, 2000, seed=1))
    gen = View("generation", "gen", toks(5, "g"), toks(2005), weights(1, 2, 5, 2005),
               [0])
    fs = display_factors([big, gen])
    assert fs == [(8, 8), (1, 8)]                                        # <= 256 cells a side
    many = [View("self", "s", toks(300), toks(300), torch.zeros(80, 64, 1, 1).expand(
        80, 64, 300, 300), list(range(80)))]
    (fq, fk), = display_factors(many)
    assert 80 * 64 * -(-300 // fq) * -(-300 // fk) <= MAX_BYTES and fq == fk > 2
    p = tmp_path / "long.html"
    info = write_page(str(p), capture(big, gen))
    assert info == {"self": (250, 250, 8, 8), "generation": (5, 251, 1, 8)}
    text = open(p, encoding="utf-8").read()
    assert "2000 x 2000 tokens shown as 250 x 250 cells" in text
    assert "5 x 2005 tokens shown as 5 x 251 cells" in text


def test_bad_inputs():
    with pytest.raises(ValueError, match="capture: expected a Capture"):
        write_page("x.html", None)
    with pytest.raises(ValueError, match="do not match"):
        View("self", "s", toks(3), toks(4), weights(1, 1, 3), [0])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed and tests/install_chromium.sh "
    "could not install it (not root / no apt)")


def shoot(page, tmp_path, frag, name, size="1400,1000"):
    out = tmp_path / name
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / ('p' + name)}",
                    f"--window-size={size}", f"--screenshot={out}", f"file://{page}#{frag}"],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image as mpimg
    return mpimg.imread(str(out))[..., :3]


def measure(page, tmp_path, frag):
    """The page's own layout measurements (the selftest hook), read from the DOM."""
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'pd'}",
                          "--window-size=1400,1000", "--dump-dom",
                          f"file://{page}#{frag}&selftest"], capture_output=True, text=True,
                         timeout=120).stdout
    m = re.search(r'<pre id="selftest">(.*?)</pre>', dom, re.S)
    assert m and m.group(1), "the page's script did not run to the end"
    return json.loads(m.group(1).replace("&quot;", '"')), dom


def check_layout(s, rq, rk):
    assert s["ok"] and (s["rq"], s["rk"]) == (rq, rk)
    assert s["width"] == s["cell"] * rk and s["height"] == s["cell"] * rq   # square cells
    assert s["dx"] <= 1.0 and s["dy"] <= 1.0        # labels centred on their columns / rows
    assert s["labels_above"] and s["ncol"] >= min(rk, 40) // 2
    assert s["title_height"] < 120                  # a compact title, whatever the text


@needs_chromium
def test_viewer_13_tokens_in_headless_chromium(tmp_path):
    w = weights(2, 4, 13)
    w[1, 3] = torch.eye(13)                              # a distinctive head
    page = tmp_path / "view.html"
    write_page(str(page), capture(self_view(w), text="x " * 2000), {"self": classify_heads(w)})
    s, dom = measure(page, tmp_path, "layer=1&head=3")
    check_layout(s, 13, 13)
    assert s["cell"] == 32 and s["ncol"] == s["nrow"] == 13 and s["strip"] == 13
    assert (s["layer"], s["head"]) == (1, 3)
    assert 'id="legendbar"' in dom and "w12" in dom and "attention weight" in dom
    a = shoot(page, tmp_path, "layer=0&head=0", "a.png")
    b = shoot(page, tmp_path, "layer=1&head=3", "b.png")
    assert a.std() > 0.05 and b.std() > 0.05             # not blank
    assert np.abs(a - b).mean() > 0.005                   # another head, another picture


@needs_chromium
@pytest.mark.parametrize("T", [256, 2000])
def test_viewer_long_inputs_in_headless_chromium(tmp_path, T):
    w = weights(1, 2, T, causal=True)
    page = tmp_path / "long.html"
    write_page(str(page), capture(self_view(w, causal=True)))
    side = T if T <= 256 else 250
    s, dom = measure(page, tmp_path, "layer=0&head=1")
    check_layout(s, side, side)
    assert s["cell"] == 3 and 40 <= s["ncol"] <= 90      # every k-th label, still aligned
    assert ("2000 x 2000 tokens shown as 250 x 250 cells" in dom) == (T > 256)
    img = shoot(page, tmp_path, "layer=0&head=1", f"l{T}.png")
    assert img.std() > 0.05


@needs_chromium
def test_viewer_80_layers_64_heads_and_a_rectangular_view(tmp_path):
    L, H = 80, 64
    w = weights(L, H, 9, seed=3)
    cross = View("cross", "decoder x encoder", toks(4, "d"), toks(9), weights(L, H, 4, 9),
                 list(range(L)))
    page = tmp_path / "big.html"
    write_page(str(page), capture(self_view(w), cross))
    s, _ = measure(page, tmp_path, "layer=79&head=63")
    check_layout(s, 9, 9)
    assert (s["layer"], s["head"]) == (79, 63)
    assert 6 <= s["thumb"] <= 14 and s["overview"][0] <= 1000     # one grid, not 5120 buttons
    r, _ = measure(page, tmp_path, "view=cross&layer=2&head=5")
    check_layout(r, 4, 9)
    assert r["view"] == "cross" and r["cell"] >= 10
