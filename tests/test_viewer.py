"""The offline attention viewer: embedded data, downsampling, and a real browser."""
import base64
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from attnkit.analysis.inspect import classify_heads
from attnkit.analysis.viewer import write_page


def page_data(path):
    text = open(path).read()
    assert "<script src" not in text and "http" not in text.replace("http-equiv", "")
    return json.loads(re.search(r'id="data">(.*?)</script>', text, re.S).group(1))


def weights(L, H, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(L, H, T, T, generator=g) * 3, dim=-1)


def test_page_embeds_every_head_as_uint8(tmp_path):
    w = weights(2, 3, 7)
    p = tmp_path / "a.html"
    write_page(str(p), [f"t{i}" for i in range(7)], w, classify_heads(w), "t")
    d = page_data(p)
    assert (d["L"], d["H"], d["side"], d["downsampled"]) == (2, 3, 7, False)
    got = np.frombuffer(base64.b64decode(d["heads"][1][2]), dtype=np.uint8).reshape(7, 7)
    assert np.abs(got / 255.0 - w[1, 2].numpy()).max() <= 0.5 / 255 + 1e-6


def test_long_inputs_are_downsampled_and_say_so(tmp_path):
    w = weights(1, 2, 600)
    p = tmp_path / "long.html"
    info = write_page(str(p), ["x"] * 600, w, classify_heads(w), "long")
    d = page_data(p)
    assert info["downsampled"] and d["side"] == 200          # blocks of 3 tokens
    blk = np.frombuffer(base64.b64decode(d["heads"][0][1]), dtype=np.uint8).reshape(200, 200)
    want = w[0, 1].reshape(200, 3, 200, 3).sum(3).mean(1).numpy()
    assert np.abs(blk / 255.0 - want).max() <= 0.5 / 255 + 1e-6
    assert "downsampled to 200 x 200" in open(p).read()


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"weights: expected \(L, H, T, T\)"):
        write_page("x.html", ["a"], torch.ones(2, 2), [], "t")
    with pytest.raises(ValueError, match="tokens: expected 3 tokens"):
        write_page("x.html", ["a"], weights(1, 1, 3), [], "t")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def shoot(page, tmp_path, frag, name):
    out = tmp_path / name
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / ('p' + name)}",
                    "--window-size=1000,800", f"--screenshot={out}", f"file://{page}#{frag}"],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image as mpimg
    return mpimg.imread(str(out))[..., :3]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed and "
                    "tests/install_chromium.sh could not install it (not root / no apt)")
def test_viewer_in_headless_chromium(tmp_path):
    w = weights(2, 4, 12)
    w[1, 3] = torch.eye(12)                              # a distinctive head
    page = tmp_path / "view.html"
    toks = [f"w{i}" for i in range(12)]
    write_page(str(page), toks, w, classify_heads(w), "viewer test")
    a = shoot(page, tmp_path, "layer=0&head=0", "a.png")
    b = shoot(page, tmp_path, "layer=1&head=3", "b.png")
    assert a.std() > 0.05 and b.std() > 0.05             # not blank
    heat = (slice(150, 700), slice(20, 580))              # where the canvas is drawn
    assert np.abs(a[heat] - b[heat]).mean() > 0.02        # another head, another picture
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'pd'}", "--dump-dom",
                          f"file://{page}#layer=1&head=3"], capture_output=True, text=True,
                         timeout=120).stdout
    assert '<canvas id="heatmap"' in dom and 'class="tok"' in dom and "w11" in dom
