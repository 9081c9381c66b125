"""Photograph a rendered receipt the way a phone would: the paper's list of what makes photos hard.

Section II of the paper: photos are rotated, shifted, deformed, crumpled, partly hidden or covered;
background and lighting vary; some photos hold more than one receipt. Every draw is recorded in a
flat dict (the manifest's columns). `difficulty` scales probabilities and magnitudes of all of it;
`only=<name>` applies one distortion alone on a neutral set-up (for the notebook's gallery).
"""
from __future__ import annotations

import functools
import io
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DISTORTIONS = (
    "rotation", "perspective", "scale_translation", "crumple", "fold", "background", "lighting", "shadow",
    "occlusion", "second_receipt", "blur", "noise", "jpeg",
)

# Photos that ship inside scikit-image and scikit-learn (no download): textures and scenes as table tops.
SKIMAGE_BACKGROUNDS = ("brick", "coffee", "coins", "grass", "gravel", "immunohistochemistry", "moon", "rocket")
SKLEARN_BACKGROUNDS = ("china.jpg", "flower.jpg")
PROCEDURAL_BACKGROUNDS = ("wood", "tablecloth", "granite", "desk")
SKIN = ((233, 185, 150), (214, 160, 122), (190, 130, 95), (150, 98, 68), (112, 72, 50), (241, 204, 177))


def neutral_params() -> dict:
    """Every recorded parameter at its 'distortion off' value (the manifest has all of them, always)."""
    return {
        "rotation_deg": 0.0, "perspective": 0.0, "scale": 1.0, "shift_x": 0.0, "shift_y": 0.0, "top_zoom": False,
        "visible_frac": 1.0, "crumple": 0.0, "folds": 0, "background": "plain", "bg_kind": "plain",
        "light_gradient": 0.0, "light_angle": 0.0, "vignette": 0.0, "exposure": 1.0, "wb_r": 1.0, "wb_b": 1.0,
        "shadow": 0.0, "occluders": "", "n_occluders": 0, "occluded_frac": 0.0, "second_receipt": "none",
        "blur": "none", "blur_px": 0.0, "motion_angle": 0.0, "noise_sigma": 0.0, "jpeg_quality": 0,
    }


PARAM_NAMES = tuple(neutral_params())


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


def _photo_background(rng, W: int, H: int) -> tuple[Image.Image, str]:
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


def _lowres_noise(rng, h: int, w: int, cells: int) -> np.ndarray:
    g = rng.random((max(2, int(h / w * cells)), cells)).astype(np.float32)
    return np.asarray(Image.fromarray(g, "F").resize((w, h), Image.BICUBIC))


def _procedural_background(rng, W: int, H: int, kind: str) -> Image.Image:
    w, h = max(8, W // 2), max(8, H // 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "wood":
        a = rng.uniform(0, np.pi)
        u = (xx * np.cos(a) + yy * np.sin(a)) / w
        warp = _lowres_noise(rng, h, w, 4) * rng.uniform(2, 6)
        v = 0.5 + 0.5 * np.sin((u * rng.uniform(25, 60) + warp) * np.pi)
        v = v ** 3 * 0.7 + 0.3 * _lowres_noise(rng, h, w, 40)
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
        img *= (0.85 + 0.15 * _lowres_noise(rng, h, w, 3))[..., None]
    elif kind == "granite":
        base = np.array(rng.integers(60, 200, 3), np.float32)
        n = 0.6 * _lowres_noise(rng, h, w, 60) + 0.4 * _lowres_noise(rng, h, w, 12)
        img = base * (0.6 + 0.7 * n)[..., None]
        spk = rng.random((h, w)) < 0.03
        img[spk] *= 0.4
    else:  # desk: plain surface with a soft gradient
        base = np.array(rng.integers(40, 235, 3), np.float32)
        img = base * (0.8 + 0.3 * _lowres_noise(rng, h, w, 2))[..., None]
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return im.resize((W, H), Image.BILINEAR)


def _coeffs(dst, src) -> tuple:
    """PIL PERSPECTIVE coefficients mapping output (dst) points back to input (src) points."""
    A, b = [], []
    for (x, y), (X, Y) in zip(dst, src):
        A.append([x, y, 1, 0, 0, 0, -X * x, -X * y])
        A.append([0, 0, 0, x, y, 1, -Y * x, -Y * y])
        b += [X, Y]
    return tuple(np.linalg.solve(np.array(A, float), np.array(b, float)))


def _place(points, size, theta: float, center) -> np.ndarray:
    """Where `_warp` puts `points` of an image of `size` (w, h): turned by theta about its middle, moved to center."""
    w, h = size
    c, s = math.cos(theta), math.sin(theta)
    return (np.asarray(points, float) - (w / 2, h / 2)) @ np.array([[c, s], [-s, c]]) + np.asarray(center, float)


def _warp(img: Image.Image, theta: float, center, jitter: np.ndarray, size) -> tuple[Image.Image, np.ndarray]:
    """Rotate by theta (radians, image coordinates), place at center, jitter the corners (perspective)."""
    w, h = img.size
    src = np.array([(0, 0), (w, 0), (w, h), (0, h)], float)
    dst = _place(src, (w, h), theta, center) + jitter
    # Not premultiplied: the dark fringe this leaves at the paper's edge reads as the edge's own shadow.
    return img.transform(size, Image.PERSPECTIVE, _coeffs(dst, src), Image.BILINEAR), dst


def _header_in_frame(center, logo_box, scale_xy, size_wh, theta: float, frame_wh, margin: float = 0.04) -> tuple[float, float]:
    """`center` moved (as little as possible) so the receipt's logo lies inside the frame with a margin.

    A customer photographing a receipt aims at it: zoomed in or off-centre, the header with the chain's
    name stays in the picture (the bottom may run out of it). Without this, a strong zoom and shift could
    leave a photo labelled with a chain whose receipt shows only an anonymous corner: unlearnable noise.
    """
    (x0, y0, x1, y1), (kx, ky), (pw, ph), (W, H) = logo_box, scale_xy, size_wh, frame_wh
    box = _place(np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], float) * (kx, ky), (pw, ph), theta, center)
    moved = []
    for axis, size in ((0, W), (1, H)):
        lo, hi = box[:, axis].min(), box[:, axis].max()
        a, b = margin * size, (1 - margin) * size
        if hi - lo > b - a:
            d = (a + b - lo - hi) / 2  # larger than the frame: centre it
        else:
            d = max(0.0, a - lo) + min(0.0, b - hi)
        moved.append(float(center[axis] + d))
    return moved[0], moved[1]


def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def _crumple_and_fold(img: Image.Image, rng, amp: float, folds: int, strength: float) -> Image.Image:
    """Crumpling as a smooth mesh displacement with matching shading; folds as shaded crease lines."""
    w, h = img.size
    shade = None
    if amp > 0:
        gx = 6
        gy = max(3, int(round(gx * h / w)))
        xs = np.linspace(0, w, gx + 1).round().astype(int)
        ys = np.linspace(0, h, gy + 1).round().astype(int)
        disp = rng.normal(0, amp, (gy + 1, gx + 1, 2))
        mesh = []
        for j in range(gy):
            for i in range(gx):
                q = [(xs[i] + disp[j, i, 0], ys[j] + disp[j, i, 1]), (xs[i] + disp[j + 1, i, 0], ys[j + 1] + disp[j + 1, i, 1]),
                     (xs[i + 1] + disp[j + 1, i + 1, 0], ys[j + 1] + disp[j + 1, i + 1, 1]),
                     (xs[i + 1] + disp[j, i + 1, 0], ys[j] + disp[j, i + 1, 1])]
                mesh.append(((int(xs[i]), int(ys[j]), int(xs[i + 1]), int(ys[j + 1])), [v for p in q for v in p]))
        img = img.transform((w, h), Image.MESH, mesh, Image.BILINEAR)
        nodes = rng.normal(0, 1, (gy + 1, gx + 1)).astype(np.float32)
        shade = 1.0 + 0.05 * strength * np.asarray(Image.fromarray(nodes, "F").resize((w, h), Image.BILINEAR))
    if folds:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        s = np.ones((h, w), np.float32) if shade is None else shade
        for k in range(folds):
            y0 = h * (k + 1) / (folds + 1) + rng.normal(0, h * 0.03)
            slope = rng.normal(0, 0.05)
            dist = yy - (y0 + slope * (xx - w / 2))
            width = max(1.0, w * 0.006)
            s = s * (1 - 0.3 * strength * np.exp(-(dist / width) ** 2)) * np.where(dist > 0, 1 - 0.09 * strength, 1.0)
        shade = s
    if shade is not None:
        a = np.asarray(img)
        rgb = np.clip(a[..., :3].astype(np.float32) * shade[..., None], 0, 255).astype(np.uint8)
        img = Image.fromarray(np.dstack([rgb, a[..., 3]]), "RGBA")
    return img


def _rot_rect(cx, cy, w, h, a):
    c, s = math.cos(a), math.sin(a)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]


def _edge_point(rng, W, H):
    """A point on the frame edge and the inward direction (fingers and phones come from outside)."""
    side = int(rng.integers(4))
    t = rng.uniform(0.1, 0.9)
    p, n = [((t * W, 0), (0, 1)), ((W, t * H), (-1, 0)), ((t * W, H), (0, -1)), ((0, t * H), (1, 0))][side]
    a = math.atan2(n[1], n[0]) + rng.normal(0, 0.4)
    return p, (math.cos(a), math.sin(a))


def _occluder(draw: ImageDraw.ImageDraw, kind: str, rng, W: int, H: int, sf: float):
    if kind == "finger":
        (x, y), (dx, dy) = _edge_point(rng, W, H)
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
        (x, y), (dx, dy) = _edge_point(rng, W, H)
        ww, hh = 0.35 * W, 0.6 * H
        cx, cy = x + dx * hh * rng.uniform(0.1, 0.3), y + dy * hh * rng.uniform(0.1, 0.3)
        poly = _rot_rect(cx, cy, ww, hh, math.atan2(dy, dx) + np.pi / 2 + rng.normal(0, 0.2))
        draw.polygon(poly, fill=(25, 25, 30, 255), outline=(90, 90, 95, 255), width=max(1, int(3 * sf)))
    elif kind == "paper":
        cx, cy = rng.uniform(-0.1, 1.1) * W, rng.uniform(-0.1, 1.1) * H
        a = rng.uniform(0, np.pi)
        ww, hh = rng.uniform(0.3, 0.6) * W, rng.uniform(0.4, 0.8) * H
        g = int(rng.integers(215, 250))
        draw.polygon(_rot_rect(cx, cy, ww, hh, a), fill=(g, g, g - int(rng.integers(0, 12)), 255))
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


def _motion_blur(img: Image.Image, length: float, angle: float) -> Image.Image:
    a = np.asarray(img, np.float32)
    n = max(2, int(round(length)))
    acc = np.zeros_like(a)
    for t in np.linspace(-length / 2, length / 2, n):
        acc += np.roll(a, (int(round(t * math.sin(angle))), int(round(t * math.cos(angle)))), axis=(0, 1))
    return Image.fromarray(np.clip(acc / n, 0, 255).astype(np.uint8))


def photograph(receipt: Image.Image, rng: np.random.Generator, *, size: tuple[int, int] = (384, 512),
               difficulty: float = 1.0, only: str | None = None,
               second: Image.Image | Callable[[], Image.Image] | None = None,
               logo_in_frame: bool = False) -> tuple[Image.Image, dict]:
    """A phone photo (RGB, `size` = (width, height)) of `receipt` (RGBA from `render_receipt`) and its parameters.

    second: another receipt (or a function making one, called only when needed) that may lie partly in
    frame under the dominant one; logo_in_frame=True forces it in, with its logo visible near an edge
    (paper Fig. 10: the photo is still labelled by the dominant receipt). With `only`, every distortion
    but that one is off and the receipt sits upright in the middle on a plain surface.
    """
    if only is not None and only not in DISTORTIONS:
        raise ValueError(f"photograph: only={only!r} is not one of {DISTORTIONS}")
    if difficulty < 0:
        raise ValueError(f"photograph: difficulty={difficulty} must be >= 0")
    W, H = size
    d = float(difficulty)
    sf = max(W, H) / 512
    P = neutral_params()

    def on(name: str, p: float) -> bool:
        r = rng.random()  # drawn either way, so `only` photos follow the same stream
        return name == only if only else (r < p * d)

    want_second = on("second_receipt", 0.12) or (logo_in_frame and only is None)
    # --- geometry of the dominant receipt
    angle = 0.0
    if on("rotation", 1.0):
        angle = rng.uniform(-30, 30) if rng.random() < 0.85 else rng.uniform(-180, 180)
        angle = float((angle * d + 180) % 360 - 180)
    theta = -math.radians(angle)  # positive angle = counter-clockwise on screen
    rw, rh = receipt.size
    bw = abs(math.cos(theta)) * rw + abs(math.sin(theta)) * rh
    bh = abs(math.sin(theta)) * rw + abs(math.cos(theta)) * rh
    fit = min(0.92 * W / bw, 0.92 * H / bh)
    scale, sx, sy = 0.95, 0.0, 0.0
    if only is None:
        scale, sx, sy = rng.uniform(0.82, 1.02), rng.normal(0, 0.03), rng.normal(0, 0.03)
    if on("scale_translation", 0.45):
        scale = float(math.exp(rng.uniform(-0.3, 0.55) * d))
        sx, sy = rng.uniform(-0.22, 0.22) * d, rng.uniform(-0.22, 0.22) * d
    top_zoom = False
    if only is None and rh / rw > 2.2 and rng.random() < 0.35:
        # long receipts are often shot from the top: width fills the frame, the bottom runs out of it
        top_zoom = True
        scale = rng.uniform(0.6, 0.85) * W / (rw * fit)
    if logo_in_frame and only is None:
        scale *= 0.85
    px = fit * scale
    pw, ph = max(8, int(rw * px)), max(8, int(rh * px))
    img = receipt.resize((pw, ph), Image.BILINEAR, reducing_gap=2.0)
    # --- paper deformation
    amp, folds, cstr = 0.0, 0, 0.0
    if on("crumple", 0.5):
        cstr = rng.uniform(0.4, 1.0) * d
        amp = cstr * 0.018 * pw
    if on("fold", 0.3):
        folds = int(rng.integers(1, 3))
        cstr = max(cstr, rng.uniform(0.5, 1.0) * d)
    if amp or folds:
        img = _crumple_and_fold(img, rng, amp, folds, cstr)
    jitter = np.zeros((4, 2))
    if on("perspective", 0.6):
        P["perspective"] = round(float(rng.uniform(0.02, 0.1) * d), 4)
        jitter = rng.uniform(-1, 1, (4, 2)) * P["perspective"] * max(pw, ph)
    center = (W / 2 + sx * W, H / 2 + sy * H)
    if top_zoom:
        c, s = math.cos(theta), math.sin(theta)
        top_mid = np.array([0, -ph / 2]) @ np.array([[c, s], [-s, c]])
        center = (center[0], H * rng.uniform(0.04, 0.12) - top_mid[1])
    # --- background
    if on("background", 0.95):
        r = rng.random()
        if r < 0.55:
            bg, P["background"] = _photo_background(rng, W, H)
            P["bg_kind"] = "photo"
        else:
            kind = PROCEDURAL_BACKGROUNDS[int(rng.integers(len(PROCEDURAL_BACKGROUNDS)))]
            bg, P["background"], P["bg_kind"] = _procedural_background(rng, W, H, kind), kind, "procedural"
    else:
        bg = Image.new("RGB", (W, H), (128, 124, 118))
    frame = bg.convert("RGBA")

    def drop_shadow(layer: Image.Image, strength: float):
        a = layer.getchannel("A").filter(ImageFilter.BoxBlur(max(1, int(4 * sf))))
        a = a.point(lambda v: int(v * strength))
        frame.paste((0, 0, 0, 255), (int(3 * sf), int(4 * sf)), a)

    # --- second receipt, under the dominant one
    if want_second:
        other = second() if callable(second) else second
        other = receipt if other is None else other
        s2 = px * rng.uniform(0.9, 1.1)
        o = other.resize((max(8, int(other.width * s2)), max(8, int(other.height * s2))), Image.BILINEAR, reducing_gap=2.0)
        side = int(rng.integers(4))
        normal = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)][side], float)  # outward: left, right, top, bottom
        if logo_in_frame and only is None:
            P["second_receipt"] = "logo_in_frame"
            ang = math.atan2(normal[1], normal[0]) + rng.uniform(-0.6, 0.6)
            u = np.array([math.cos(ang), math.sin(ang)])  # the receipt's "down" points out of the frame
            beta = math.atan2(-u[0], u[1])
            lx0, ly0, lx1, ly1 = other.info.get("logo_box", (0, 0, other.width, other.height // 8))
            logo = np.array([(lx0 + lx1) / 2 * s2 - o.width / 2, (ly0 + ly1) / 2 * s2 - o.height / 2])
            along = rng.uniform(0.15, 0.85)
            inset = rng.uniform(0.06, 0.16)
            t = {0: (inset * W, along * H), 1: ((1 - inset) * W, along * H), 2: (along * W, inset * H), 3: (along * W, (1 - inset) * H)}[side]
            c, s = math.cos(beta), math.sin(beta)
            c2 = np.array(t) - logo @ np.array([[c, s], [-s, c]])
            center = (center[0] - normal[0] * rng.uniform(0.1, 0.16) * W, center[1] - normal[1] * rng.uniform(0.1, 0.16) * H)
        else:
            P["second_receipt"] = "random"
            beta = rng.uniform(-np.pi, np.pi)
            edge = np.array([W / 2, H / 2]) + normal * np.array([W / 2, H / 2]) + (1 - np.abs(normal)) * rng.uniform(-0.4, 0.4, 2) * (W, H)
            c2 = edge + normal * rng.uniform(0.0, 0.3) * max(o.size)
        layer2, _ = _warp(o, beta, c2, np.zeros((4, 2)), (W, H))
        drop_shadow(layer2, 0.35)
        frame.alpha_composite(layer2)
    if only is None and "logo_box" in receipt.info:
        center = _header_in_frame(center, receipt.info["logo_box"], (pw / rw, ph / rh), (pw, ph), theta, (W, H))
        sx, sy = center[0] / W - 0.5, center[1] / H - 0.5  # the shift the photo shows, after aiming
    layer, corners = _warp(img, theta, center, jitter, (W, H))
    alpha = np.asarray(layer.getchannel("A"), np.float32)
    drop_shadow(layer, rng.uniform(0.2, 0.5))
    frame.alpha_composite(layer)
    P["rotation_deg"], P["scale"] = round(angle, 3), round(float(scale), 4)
    P["shift_x"], P["shift_y"], P["top_zoom"] = round(float(sx), 4), round(float(sy), 4), top_zoom
    P["crumple"], P["folds"] = round(float(amp / max(pw, 1)), 5), folds
    P["visible_frac"] = round(float(min(1.0, alpha.sum() / 255 / max(1.0, _poly_area(corners)))), 4)
    # --- occlusion: fingers, pens, coins, phones, other papers, stains
    if on("occlusion", 0.45):
        kinds = ("finger", "finger", "finger", "paper", "pen", "coin", "phone", "stain")
        n = int(min(4, 1 + rng.poisson(0.4 * d)))
        chosen = [kinds[int(rng.integers(len(kinds)))] for _ in range(n)]
        occ = Image.new("RGBA", (W, H), (0, 0, 0, 0))
        od = ImageDraw.Draw(occ)
        for k in chosen:
            _occluder(od, k, rng, W, H, sf)
        occ = occ.filter(ImageFilter.BoxBlur(max(0.5, 0.6 * sf)))
        drop_shadow(occ, 0.4)
        frame.alpha_composite(occ)
        oa = np.asarray(occ.getchannel("A"), np.float32)
        P["occluders"], P["n_occluders"] = "+".join(chosen), n
        P["occluded_frac"] = round(float((oa * alpha).sum() / max(1.0, 255.0 * alpha.sum())), 4)
    out = frame.convert("RGB")
    # --- optics: defocus or hand shake (before sensor noise, as in a camera)
    if on("blur", 0.55):
        if rng.random() < 0.7:
            P["blur"], P["blur_px"] = "defocus", round(float(rng.uniform(0.3, 1.4) * d * sf), 3)
            out = out.filter(ImageFilter.GaussianBlur(P["blur_px"]))
        else:
            P["blur"], P["blur_px"] = "motion", round(float(rng.uniform(2, 6) * d * sf), 3)
            P["motion_angle"] = round(float(rng.uniform(0, 180)), 2)
            out = _motion_blur(out, P["blur_px"], math.radians(P["motion_angle"]))
    # --- light: gradient, vignette, white balance and exposure, cast shadow of a hand or phone
    lw, lh = max(4, W // 16), max(4, H // 16)
    field = np.ones((lh, lw), np.float32)
    wb = np.ones(3, np.float32)
    if on("lighting", 0.85):
        yy, xx = np.mgrid[0:lh, 0:lw].astype(np.float32)
        P["light_angle"] = round(float(rng.uniform(0, 360)), 2)
        P["light_gradient"] = round(float(rng.uniform(0.05, 0.45) * d), 4)
        P["vignette"] = round(float(rng.uniform(0.0, 0.35) * d), 4)
        P["exposure"] = round(float(math.exp(rng.normal(0, 0.15 * d))), 4)
        P["wb_r"], P["wb_b"] = round(float(math.exp(rng.normal(0, 0.07 * d))), 4), round(float(math.exp(rng.normal(0, 0.07 * d))), 4)
        a = math.radians(P["light_angle"])
        u = ((xx / lw - 0.5) * math.cos(a) + (yy / lh - 0.5) * math.sin(a))
        r2 = (xx / lw - 0.5) ** 2 + (yy / lh - 0.5) ** 2
        field *= (1 + P["light_gradient"] * u) * (1 - P["vignette"] * r2 * 2) * P["exposure"]
        wb = np.array([P["wb_r"], 1.0, P["wb_b"]], np.float32)
    if on("shadow", 0.3):
        P["shadow"] = round(float(rng.uniform(0.2, 0.55) * min(1.0, d)), 4)
        sm = Image.new("L", (lw * 4, lh * 4), 0)
        (x, y), (dx, dy) = _edge_point(rng, lw * 4, lh * 4)
        L = rng.uniform(0.4, 1.0) * lh * 4
        sd = ImageDraw.Draw(sm)
        sd.line(((x, y), (x + dx * L, y + dy * L)), fill=255, width=int(rng.uniform(0.25, 0.6) * lw * 4))
        sm = sm.filter(ImageFilter.GaussianBlur(lw * 0.25)).resize((lw, lh), Image.BILINEAR)
        field *= 1 - P["shadow"] * np.asarray(sm, np.float32) / 255
    full = np.asarray(Image.fromarray(field, "F").resize((W, H), Image.BILINEAR))
    arr = np.asarray(out, np.float32) * (full[..., None] * wb)
    # --- sensor noise
    if on("noise", 0.8):
        P["noise_sigma"] = round(float(rng.uniform(1.0, 6.0) * d), 3)
        arr += rng.standard_normal((H, W, 1), dtype=np.float32) * np.float32(P["noise_sigma"])
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    # --- JPEG artefacts of a messenger app / upload
    if on("jpeg", 0.35):
        P["jpeg_quality"] = int(np.clip(rng.uniform(12, 60) / max(d, 0.2), 8, 95))
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=P["jpeg_quality"])
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return out, P
