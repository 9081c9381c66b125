"""Photograph a rendered receipt the way a phone would: the paper's list of what makes photos hard.

Section II of the paper: photos are rotated, shifted, deformed, crumpled, partly hidden or covered;
background and lighting vary; some photos hold more than one receipt. Every draw is recorded in a
flat dict (the manifest's columns; `distortions` lists the ones applied). `difficulty` scales
probabilities and magnitudes of all of it; `only=<name>` applies one distortion alone on a neutral
set-up (for the notebook's gallery). The photo also records where the receipt's header (from its top
to the bottom of the logo) and body lie in the frame (`header_quad`, `body_quad`), for cue ablations.
"""
from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import paper, scene

DISTORTIONS = (
    "rotation", "perspective", "scale_translation", "faded", "crumple", "fold", "curl", "background", "lighting",
    "shadow", "glare", "occlusion", "second_receipt", "blur", "noise", "jpeg",
)

# Photos that ship inside scikit-image and scikit-learn (no download): textures and scenes as table tops.
def neutral_params() -> dict:
    """Every recorded parameter at its 'distortion off' value (the manifest has all of them, always)."""
    return {
        "distortions": "", "rotation_deg": 0.0, "perspective": 0.0, "scale": 1.0, "shift_x": 0.0, "shift_y": 0.0,
        "top_zoom": False, "visible_frac": 1.0, "faded": 0.0, "crumple": 0.0, "folds": 0, "curl": 0.0,
        "background": "plain", "bg_kind": "plain", "light_gradient": 0.0, "light_angle": 0.0, "vignette": 0.0,
        "exposure": 1.0, "wb_r": 1.0, "wb_b": 1.0, "shadow": 0.0, "glare": 0.0, "occluders": "", "n_occluders": 0,
        "occluded_frac": 0.0, "second_receipt": "none", "extra_receipts": 0, "blur": "none", "blur_px": 0.0,
        "motion_angle": 0.0, "noise_sigma": 0.0, "jpeg_quality": 0, "header_quad": "", "body_quad": "",
    }


PARAM_NAMES = tuple(neutral_params())
QUAD_COLUMNS = ("header_quad", "body_quad")  # geometry, not distortions: 8 numbers, x y of 4 corners / frame size


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


def _quad(points, size) -> str:
    """Corner points as the manifest stores them: 'x0 y0 x1 y1 ...' as fractions of the frame's width and height."""
    W, H = size
    return " ".join(f"{v:.4f}" for x, y in points for v in (x / W, y / H))


def _project(points, src, dst) -> np.ndarray:
    """Map points of the (resized) receipt through the perspective that took its corners src to dst."""
    a, b, c, d, e, f, g, h = _coeffs(src, dst)
    pts = np.asarray(points, float)
    den = g * pts[:, 0] + h * pts[:, 1] + 1
    return np.stack([(a * pts[:, 0] + b * pts[:, 1] + c) / den, (d * pts[:, 0] + e * pts[:, 1] + f) / den], 1)


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

    applied = []

    def on(name: str, p: float) -> bool:
        r = rng.random()  # drawn either way, so `only` photos follow the same stream
        hit = name == only if only else (r < p * d)
        if hit:
            applied.append(name)
        return hit

    want_second = on("second_receipt", 0.15) or (logo_in_frame and only is None)
    if logo_in_frame and only is None and "second_receipt" not in applied:
        applied.append("second_receipt")
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
    if on("scale_translation", 0.6):
        # smaller in frame than the aimed shot, or closer; off-centre, the body may run out of the frame
        scale = float(math.exp(rng.uniform(-0.75, 0.5) * d))
        sx, sy = rng.uniform(-0.3, 0.3) * d, rng.uniform(-0.3, 0.3) * d
    top_zoom = False
    if only is None and rh / rw > 2.2 and rng.random() < 0.35:
        # long receipts are often shot from the top: width fills the frame, the bottom runs out of it
        top_zoom = True
        scale = rng.uniform(0.6, 0.85) * W / (rw * fit)
    if logo_in_frame and only is None:
        scale *= 0.85
    px = fit * scale
    pw, ph = max(8, int(rw * px)), max(8, int(rh * px))
    if on("faded", 0.3):
        P["faded"] = round(float(rng.uniform(0.3, 0.8) * min(1.0, d)), 4)
        receipt = paper.faded(receipt, P["faded"])
    img = receipt.resize((pw, ph), Image.BILINEAR, reducing_gap=2.0)
    # --- paper deformation
    amp, folds, cstr = 0.0, 0, 0.0
    if on("crumple", 0.5):
        cstr = rng.uniform(0.4, 1.0) * d
        amp = cstr * 0.018 * pw
    if on("fold", 0.35):
        folds = int(rng.integers(1, 4))
        cstr = max(cstr, rng.uniform(0.5, 1.0) * min(1.0, d))
    if amp or folds:
        img = paper.crumple_and_fold(img, rng, amp, folds, cstr)
    if on("curl", 0.35):
        P["curl"] = round(float(rng.uniform(0.3, 1.0) * min(1.0, d)), 4)
        img = paper.curl(img, P["curl"])
    jitter = np.zeros((4, 2))
    if on("perspective", 0.6):
        P["perspective"] = round(float(rng.uniform(0.02, 0.1) * d), 4)
        jitter = rng.uniform(-1, 1, (4, 2)) * P["perspective"] * max(pw, ph)
    center = (W / 2 + sx * W, H / 2 + sy * H)
    if top_zoom:
        c, s = math.cos(theta), math.sin(theta)
        top_mid = np.array([0, -ph / 2]) @ np.array([[c, s], [-s, c]])
        center = (center[0], H * rng.uniform(0.04, 0.12) - top_mid[1])
    # --- background: at difficulty >= 0.5 every photo lies on a photographed or procedural surface
    if on("background", 1.9):
        r = rng.random()
        if r < 0.55:
            bg, P["background"] = scene.photo_background(rng, W, H)
            P["bg_kind"] = "photo"
        else:
            kind = scene.PROCEDURAL_BACKGROUNDS[int(rng.integers(len(scene.PROCEDURAL_BACKGROUNDS)))]
            bg, P["background"], P["bg_kind"] = scene.procedural_background(rng, W, H, kind), kind, "procedural"
    else:
        bg = Image.new("RGB", (W, H), (128, 124, 118))
    frame = bg.convert("RGBA")
    extra = 0

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
        extra = 1
        if rng.random() < 0.35 * d:  # several receipts on the desk: one more, from another edge
            third = second() if callable(second) else other
            o3 = third.resize((max(8, int(third.width * s2)), max(8, int(third.height * s2))), Image.BILINEAR, reducing_gap=2.0)
            n3 = -normal if rng.random() < 0.5 else normal[::-1]
            e3 = np.array([W / 2, H / 2]) + n3 * np.array([W / 2, H / 2]) + (1 - np.abs(n3)) * rng.uniform(-0.4, 0.4, 2) * (W, H)
            layer3, _ = _warp(o3, rng.uniform(-np.pi, np.pi), e3 + n3 * rng.uniform(0.05, 0.3) * max(o3.size),
                              np.zeros((4, 2)), (W, H))
            drop_shadow(layer3, 0.35)
            frame.alpha_composite(layer3)
            extra = 2
    P["extra_receipts"] = extra
    if only is None and "logo_box" in receipt.info:
        center = _header_in_frame(center, receipt.info["logo_box"], (pw / rw, ph / rh), (pw, ph), theta, (W, H))
        sx, sy = center[0] / W - 0.5, center[1] / H - 0.5  # the shift the photo shows, after aiming
    layer, corners = _warp(img, theta, center, jitter, (W, H))
    if "logo_box" in receipt.info:
        yb = min(ph, receipt.info["logo_box"][3] * ph / rh)  # header: the top of the receipt down to the logo's bottom
        src = np.array([(0, 0), (pw, 0), (pw, ph), (0, ph)], float)
        P["header_quad"] = _quad(_project([(0, 0), (pw, 0), (pw, yb), (0, yb)], src, corners), (W, H))
        P["body_quad"] = _quad(_project([(0, yb), (pw, yb), (pw, ph), (0, ph)], src, corners), (W, H))
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
            scene.occluder(od, k, rng, W, H, sf)
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
        P["exposure"] = round(float(math.exp(rng.normal(0, 0.2 * d))), 4)
        # warm bulbs to cool daylight
        P["wb_r"], P["wb_b"] = round(float(math.exp(rng.normal(0, 0.12 * d))), 4), round(float(math.exp(rng.normal(0, 0.12 * d))), 4)
        a = math.radians(P["light_angle"])
        u = ((xx / lw - 0.5) * math.cos(a) + (yy / lh - 0.5) * math.sin(a))
        r2 = (xx / lw - 0.5) ** 2 + (yy / lh - 0.5) ** 2
        field *= (1 + P["light_gradient"] * u) * (1 - P["vignette"] * r2 * 2) * P["exposure"]
        wb = np.array([P["wb_r"], 1.0, P["wb_b"]], np.float32)
    if on("shadow", 0.3):
        P["shadow"] = round(float(rng.uniform(0.2, 0.55) * min(1.0, d)), 4)
        sm = Image.new("L", (lw * 4, lh * 4), 0)
        (x, y), (dx, dy) = scene.edge_point(rng, lw * 4, lh * 4)
        L = rng.uniform(0.4, 1.0) * lh * 4
        sd = ImageDraw.Draw(sm)
        sd.line(((x, y), (x + dx * L, y + dy * L)), fill=255, width=int(rng.uniform(0.25, 0.6) * lw * 4))
        sm = sm.filter(ImageFilter.GaussianBlur(lw * 0.25)).resize((lw, lh), Image.BILINEAR)
        field *= 1 - P["shadow"] * np.asarray(sm, np.float32) / 255
    full = np.asarray(Image.fromarray(field, "F").resize((W, H), Image.BILINEAR))
    arr = np.asarray(out, np.float32) * (full[..., None] * wb)
    if on("glare", 0.3):  # a lamp's reflection on glossy thermal paper washes a patch out
        P["glare"] = round(float(rng.uniform(0.4, 0.95) * min(1.0, d)), 4)
        gy, gx = np.mgrid[0:lh, 0:lw].astype(np.float32)
        cx, cy = rng.uniform(0.2, 0.8) * lw, rng.uniform(0.15, 0.85) * lh
        rx, ry, ga = rng.uniform(0.08, 0.25) * lw, rng.uniform(0.05, 0.2) * lh, rng.uniform(0, np.pi)
        u = ((gx - cx) * math.cos(ga) + (gy - cy) * math.sin(ga)) / rx
        v = (-(gx - cx) * math.sin(ga) + (gy - cy) * math.cos(ga)) / ry
        blob = np.exp(-(u ** 2 + v ** 2)).astype(np.float32)
        g = np.asarray(Image.fromarray(blob, "F").resize((W, H), Image.BILINEAR))[..., None] * np.float32(P["glare"])
        arr = arr + (255 - arr) * g
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
    P["distortions"] = "+".join(n for n in DISTORTIONS if n in applied)
    return out, P
