"""Cue ablation: the masks cover the region the manifest names, and the model sees the masked photos."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from receiptlib import ablation, photos, synth
from receiptlib.common import wilson_interval


def test_mask_quads_paints_the_region_with_the_paper_colour():
    img = Image.new("RGB", (40, 60), (30, 90, 30))  # a green desk
    a = np.asarray(img).copy()
    a[10:50, 10:30] = (240, 235, 225)  # the receipt
    a[12:18, 12:28] = 0  # its logo, in the header
    img = Image.fromarray(a)
    header = [(10, 10), (30, 10), (30, 20), (10, 20)]
    body = [(10, 20), (30, 20), (30, 50), (10, 50)]
    out = np.asarray(photos.mask_quads(img, [header], [header, body]))
    assert (out[12:18, 12:28] == (240, 235, 225)).all()  # the logo is gone: blank paper
    assert (out[25:45, 12:28] == a[25:45, 12:28]).all() and (out[:5] == a[:5]).all()  # the rest untouched
    assert photos.parse_quad("0 0 0.5 0 0.5 0.5 0 0.5", (40, 60)) == [(0, 0), (20, 0), (20, 30), (0, 30)]
    with pytest.raises(ValueError, match="header_quad"):
        photos.parse_quad("1 2 3", (40, 60), where="x.jpg: header_quad")


def test_the_manifest_regions_cover_the_logo_of_a_generated_photo():
    """Masking the header of a flat, upright photo removes the logo's ink: the region is where the logo is."""
    w = synth.make_world(0)
    receipt = synth.render_receipt(w.known[2], np.random.default_rng(3), width=160)
    img, p = synth.photograph(receipt, np.random.default_rng(4), size=(128, 170), only="noise", difficulty=0.0)
    header = photos.parse_quad(p["header_quad"], img.size)
    body = photos.parse_quad(p["body_quad"], img.size)
    x0, y0, x1, y1 = receipt.info["logo_box"]
    masked = np.asarray(photos.mask_quads(img, [header], [header, body]).convert("L"), float)
    ys = int(min(q[1] for q in header)) + 1, int(max(q[1] for q in header)) - 1
    xs = int(min(q[0] for q in header)) + 1, int(max(q[0] for q in header)) - 1
    before = np.asarray(img.convert("L"), float)[ys[0]:ys[1], xs[0]:xs[1]]
    after = masked[ys[0]:ys[1], xs[0]:xs[1]]
    assert before.std() > 15 and after.std() < 1  # print before, blank paper after
    assert x1 > x0 and y1 > y0


def test_wilson_interval():
    low, high = wilson_interval(99, 100)
    assert 0.94 < low < 0.99 < high < 1.0
    assert wilson_interval(0, 10)[0] == 0.0 and 0.2 < wilson_interval(0, 10)[1] < 0.35
    assert np.isnan(wilson_interval(0, 0)[0])
    for k, n in ((0, 7), (7, 7), (0, 1), (1, 3)):  # always brackets the share: error bars never negative
        low, high = wilson_interval(k, n)
        assert low <= k / n <= high
    with pytest.raises(ValueError, match="cue ablation needs|region="):
        ablation.masked_logits(None, "logo")


@pytest.mark.parametrize("only,seed", [("rotation", 1), ("perspective", 2), (None, 3), (None, 8)])
def test_the_header_quad_holds_the_logo_and_the_body_quad_does_not(only, seed):
    """Paint the receipt's logo box solid red, photograph it and the plain receipt with the same draws: every pixel
    the red reaches lies in the header quad and (but for the shared edge) outside the body quad."""
    from PIL import ImageDraw, ImageFilter

    w = synth.make_world(0)
    receipt = synth.render_receipt(w.known[4], np.random.default_rng(seed), width=200)
    red = receipt.copy()
    red.info.update(receipt.info)
    ImageDraw.Draw(red).rectangle(receipt.info["logo_box"], fill=(255, 0, 0, 255))
    size = (192, 256)
    a, p = synth.photograph(receipt, np.random.default_rng(seed), size=size, only=only, difficulty=1.0)
    b, q = synth.photograph(red, np.random.default_rng(seed), size=size, only=only, difficulty=1.0)
    assert p["header_quad"] == q["header_quad"]
    diff = np.abs(np.asarray(b, float) - np.asarray(a, float)).sum(2) > 60
    assert diff.sum() > 20  # the logo is in frame
    masks = {}
    for name in ("header_quad", "body_quad"):
        m = Image.new("L", size, 0)
        ImageDraw.Draw(m).polygon(photos.parse_quad(p[name], size), fill=255)
        masks[name] = np.asarray(m.filter(ImageFilter.MaxFilter(7))) > 0
    # crumpling displaces the paper and blur spreads the red a few pixels past the flat receipt's quad: not all of it
    assert masks["header_quad"][diff].mean() > 0.9
    assert masks["body_quad"][diff].mean() < 0.5
