"""What happens to the paper itself before the photo: crumpling and folding, fading of thermal print, curl."""
from __future__ import annotations

import numpy as np
from PIL import Image

def crumple_and_fold(img: Image.Image, rng, amp: float, folds: int, strength: float) -> Image.Image:
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
            s = s * (1 - 0.45 * strength * np.exp(-(dist / width) ** 2)) * np.where(dist > 0, 1 - 0.12 * strength, 1.0)
        shade = s
    if shade is not None:
        a = np.asarray(img)
        rgb = np.clip(a[..., :3].astype(np.float32) * shade[..., None], 0, 255).astype(np.uint8)
        img = Image.fromarray(np.dstack([rgb, a[..., 3]]), "RGBA")
    return img


def faded(img: Image.Image, amount: float) -> Image.Image:
    """Old thermal paper: the print fades towards the paper's colour."""
    a = np.asarray(img).astype(np.float32)
    paper = np.array(img.info.get("paper", np.median(a[..., :3].reshape(-1, 3), 0)), np.float32)
    a[..., :3] = paper + (a[..., :3] - paper) * np.float32(1 - amount)
    out = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGBA")
    out.info.update(img.info)
    return out


def curl(img: Image.Image, strength: float) -> Image.Image:
    """The paper curled across its width (thermal rolls do): a cylinder of arc half-angle 1.5 * strength seen
    from above. Columns crowd towards the edges, which also turn away from the light."""
    w, h = img.size
    phi = max(1e-3, 1.5 * strength)
    us = np.linspace(-1, 1, 13)
    xd = w / 2 + (w / 2) * np.sin(phi * us) / phi  # where the column at arc position u lands
    mesh = []
    for i in range(len(us) - 1):
        x0, x1 = int(round(xd[i])), max(int(round(xd[i])) + 1, int(round(xd[i + 1])))
        s0, s1 = (us[i] + 1) * w / 2, (us[i + 1] + 1) * w / 2
        mesh.append(((x0, 0, x1, h), (s0, 0, s0, h, s1, h, s1, 0)))
    out = img.transform((w, h), Image.MESH, mesh, Image.BILINEAR)
    # shading by the surface's angle: darker where it turns away, a little light from one side
    x = (np.arange(w) + 0.5 - w / 2) / (w / 2)  # output column, in half-widths from the middle
    ang = np.arcsin(np.clip(x * phi, -1, 1))  # the surface's angle there (x = sin(angle) / phi)
    shade = (1 - 0.5 * strength * (1 - np.cos(ang)) - 0.1 * strength * np.sin(ang)).astype(np.float32)
    a = np.asarray(out)
    rgb = np.clip(a[..., :3].astype(np.float32) * shade[None, :, None], 0, 255).astype(np.uint8)
    res = Image.fromarray(np.dstack([rgb, a[..., 3]]), "RGBA")
    res.info.update(img.info)
    return res
