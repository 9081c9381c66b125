"""The scene around the receipt: what it lies on (photos shipped with scikit-image and scikit-learn, procedural
surfaces) and what lies on it or reaches into the frame (fingers, pens, coins, phones, papers, stains)."""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

SKIMAGE_BACKGROUNDS = ("brick", "coffee", "coins", "grass", "gravel", "immunohistochemistry", "moon", "rocket", "page",
                       "text", "hubble_deep_field", "chelsea")
SKLEARN_BACKGROUNDS = ("china.jpg", "flower.jpg")
PROCEDURAL_BACKGROUNDS = ("wood", "tablecloth", "granite", "desk", "marble", "fabric")
SKIN = ((233, 185, 150), (214, 160, 122), (190, 130, 95), (150, 98, 68), (112, 72, 50), (241, 204, 177))



@functools.lru_cache(maxsize=1)
def photo_backgrounds() -> tuple[tuple[str, np.ndarray], ...]:
    """Load once per process, downscaled so that cropping and resizing stay cheap."""
    import warnings

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import skimage.data

        for name in SKIMAGE_BACKGROUNDS:
            try:
                a = np.asarray(getattr(skimage.data, name)())
            except Exception:  # not bundled in this scikit-image: skip rather than download
                continue
            out.append((name, a))
        try:
            from sklearn.datasets import load_sample_image

            for name in SKLEARN_BACKGROUNDS:
                out.append((name.split(".")[0], np.asarray(load_sample_image(name))))
        except Exception:
            pass
    res = []
    for name, a in out:
        if a.dtype != np.uint8:
            a = (a * 255).astype(np.uint8) if a.max() <= 1 else a.astype(np.uint8)
        im = Image.fromarray(a[..., :3] if a.ndim == 3 else a)
        im.thumbnail((640, 640))
        res.append((name, np.asarray(im)))
    return tuple(res)


def photo_background(rng, W: int, H: int) -> tuple[Image.Image, str]:
    bgs = photo_backgrounds()
    name, a = bgs[int(rng.integers(len(bgs)))]
    h, w = a.shape[:2]
    f = rng.uniform(0.35, 1.0)
    ch = int(min(h, w * H / W) * f)
    cw = int(ch * W / H)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    im = Image.fromarray(a[y0:y0 + ch, x0:x0 + cw]).resize((W, H), Image.BILINEAR)
    if im.mode == "L":  # grey textures (brick, gravel, ...) get an earthy colour
        col = np.array([rng.uniform(0.6, 1.1), rng.uniform(0.55, 1.0), rng.uniform(0.45, 0.95)], np.float32)
        im = Image.fromarray(np.clip(np.asarray(im, np.float32)[..., None] * col, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return im.convert("RGB"), name


def lowres_noise(rng, h: int, w: int, cells: int) -> np.ndarray:
    g = rng.random((max(2, int(h / w * cells)), cells)).astype(np.float32)
    return np.asarray(Image.fromarray(g, "F").resize((w, h), Image.BICUBIC))


def procedural_background(rng, W: int, H: int, kind: str) -> Image.Image:
    w, h = max(8, W // 2), max(8, H // 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "wood":
        a = rng.uniform(0, np.pi)
        u = (xx * np.cos(a) + yy * np.sin(a)) / w
        warp = lowres_noise(rng, h, w, 4) * rng.uniform(2, 6)
        v = 0.5 + 0.5 * np.sin((u * rng.uniform(25, 60) + warp) * np.pi)
        v = v ** 3 * 0.7 + 0.3 * lowres_noise(rng, h, w, 40)
        dark = np.array(rng.uniform([70, 40, 20], [130, 80, 45]), np.float32)
        light = dark + np.array(rng.uniform([50, 40, 25], [110, 80, 50]), np.float32)
        img = light - (light - dark) * v[..., None]
    elif kind == "tablecloth":
        a = rng.uniform(-0.4, 0.4)
        u = xx * np.cos(a) + yy * np.sin(a)
        v = -xx * np.sin(a) + yy * np.cos(a)
        p = rng.uniform(8, 30) * w / 192
        s = ((u // p) % 2) + ((v // p) % 2)
        c1 = np.array(rng.integers(120, 255, 3), np.float32)
        c0 = np.array([245, 242, 235], np.float32)
        img = c0 + (c1 - c0) * (s / 2)[..., None]
        img *= (0.85 + 0.15 * lowres_noise(rng, h, w, 3))[..., None]
    elif kind == "granite":
        base = np.array(rng.integers(60, 200, 3), np.float32)
        n = 0.6 * lowres_noise(rng, h, w, 60) + 0.4 * lowres_noise(rng, h, w, 12)
        img = base * (0.6 + 0.7 * n)[..., None]
        spk = rng.random((h, w)) < 0.03
        img[spk] *= 0.4
    elif kind == "marble":
        base = np.array(rng.integers(170, 245, 3), np.float32)
        vein = np.abs(np.sin((xx / w * rng.uniform(3, 8) + lowres_noise(rng, h, w, 6) * rng.uniform(3, 7)) * np.pi))
        img = base * (1 - 0.35 * (1 - vein) ** 8)[..., None] * (0.92 + 0.08 * lowres_noise(rng, h, w, 30))[..., None]
    elif kind == "fabric":
        p = max(2.0, rng.uniform(2, 5) * w / 192)
        weave = 0.5 + 0.25 * (np.sin(xx / p * np.pi) + np.sin(yy / p * np.pi))
        base = np.array(rng.integers(30, 220, 3), np.float32)
        img = base * (0.75 + 0.35 * weave)[..., None] * (0.85 + 0.15 * lowres_noise(rng, h, w, 4))[..., None]
    else:  # desk: plain surface with a soft gradient
        base = np.array(rng.integers(40, 235, 3), np.float32)
        img = base * (0.8 + 0.3 * lowres_noise(rng, h, w, 2))[..., None]
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return im.resize((W, H), Image.BILINEAR)


def rot_rect(cx, cy, w, h, a):
    c, s = math.cos(a), math.sin(a)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]


def edge_point(rng, W, H):
    """A point on the frame edge and the inward direction (fingers and phones come from outside)."""
    side = int(rng.integers(4))
    t = rng.uniform(0.1, 0.9)
    p, n = [((t * W, 0), (0, 1)), ((W, t * H), (-1, 0)), ((t * W, H), (0, -1)), ((0, t * H), (1, 0))][side]
    a = math.atan2(n[1], n[0]) + rng.normal(0, 0.4)
    return p, (math.cos(a), math.sin(a))


def occluder(draw: ImageDraw.ImageDraw, kind: str, rng, W: int, H: int, sf: float):
    if kind == "finger":
        (x, y), (dx, dy) = edge_point(rng, W, H)
        L = rng.uniform(0.14, 0.3) * H
        wd = rng.uniform(0.11, 0.16) * W
        col = np.array(SKIN[int(rng.integers(len(SKIN)))], float)
        tip = (x + dx * L, y + dy * L)
        start = (x - dx * wd, y - dy * wd)
        # a rounded cylinder: darker rim, lighter ridge (no lighting model, just three nested capsules)
        for frac, shade in ((1.0, 0.72), (0.78, 0.88), (0.42, 1.0)):
            c = tuple(int(min(255, v * shade)) for v in col) + (255,)
            r = wd * frac / 2
            t = (tip[0] - dx * (wd / 2 - r), tip[1] - dy * (wd / 2 - r))
            draw.line((start, t), fill=c, width=int(2 * r))
            draw.ellipse((t[0] - r, t[1] - r, t[0] + r, t[1] + r), fill=c)
        nail = (tip[0] - dx * wd * 0.3, tip[1] - dy * wd * 0.3)
        r = wd * 0.27
        draw.ellipse((nail[0] - r, nail[1] - r, nail[0] + r, nail[1] + r), fill=tuple(int(min(255, v * 0.9 + 45)) for v in col) + (255,))
    elif kind == "pen":
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        a = rng.uniform(0, np.pi)
        L, wd = rng.uniform(0.5, 0.9) * H, max(3, 0.025 * W)
        col = [(20, 40, 140), (20, 20, 20), (170, 20, 20), (230, 230, 230)][int(rng.integers(4))]
        p0, p1 = (cx - math.cos(a) * L / 2, cy - math.sin(a) * L / 2), (cx + math.cos(a) * L / 2, cy + math.sin(a) * L / 2)
        draw.line((p0, p1), fill=col + (255,), width=int(wd))
        draw.line((p0, (p0[0] * 0.8 + p1[0] * 0.2, p0[1] * 0.8 + p1[1] * 0.2)), fill=(40, 40, 40, 255), width=int(wd * 1.2))
    elif kind == "coin":
        cx, cy, r = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(0.04, 0.08) * W
        col = np.array([(190, 170, 90), (170, 170, 165), (180, 110, 60)][int(rng.integers(3))])
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in col * 0.8) + (255,))
        draw.ellipse((cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8), fill=tuple(int(v) for v in col) + (255,))
    elif kind == "phone":
        (x, y), (dx, dy) = edge_point(rng, W, H)
        ww, hh = 0.35 * W, 0.6 * H
        cx, cy = x + dx * hh * rng.uniform(0.1, 0.3), y + dy * hh * rng.uniform(0.1, 0.3)
        poly = rot_rect(cx, cy, ww, hh, math.atan2(dy, dx) + np.pi / 2 + rng.normal(0, 0.2))
        draw.polygon(poly, fill=(25, 25, 30, 255), outline=(90, 90, 95, 255), width=max(1, int(3 * sf)))
    elif kind == "paper":
        cx, cy = rng.uniform(-0.1, 1.1) * W, rng.uniform(-0.1, 1.1) * H
        a = rng.uniform(0, np.pi)
        ww, hh = rng.uniform(0.3, 0.6) * W, rng.uniform(0.4, 0.8) * H
        g = int(rng.integers(215, 250))
        draw.polygon(rot_rect(cx, cy, ww, hh, a), fill=(g, g, g - int(rng.integers(0, 12)), 255))
        c, s = math.cos(a), math.sin(a)
        for k in range(int(rng.integers(3, 9))):
            oy = -hh / 2 + hh * (k + 1) / 10
            ox0, ox1 = -ww * 0.4, ww * rng.uniform(-0.2, 0.4)
            draw.line(((cx + ox0 * c - oy * s, cy + ox0 * s + oy * c), (cx + ox1 * c - oy * s, cy + ox1 * s + oy * c)),
                      fill=(120, 120, 120, 255), width=max(1, int(2 * sf)))
    else:  # stain: a coffee ring, translucent
        cx, cy, r = rng.uniform(0.2, 0.8) * W, rng.uniform(0.2, 0.8) * H, rng.uniform(0.06, 0.12) * W
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(120, 75, 30, 120), width=max(2, int(r * 0.12)))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(150, 100, 50, 35))
