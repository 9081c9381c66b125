"""Where the receipt lies in each synthetic photo, as a transform: the oracle transformer, the hard slice, and
the checks that a learnt transformer undoes the photo's geometry.

    table = rl.data.photo_table(data_dir, paths)
    theta = oracle_theta(table, aspect=4 / 3)     # (N, 2, 3): the crop that sets each receipt upright, centred,
                                                  # at the size an aimed shot shows it (a perfect transformer)
    hard = hard_mask(table)                       # large rotation, strong perspective or a small receipt

Conventions (those of ``SpatialTransformer``): theta maps an output point in [-1, 1]^2 to the point of the
input it reads, in ``F.affine_grid`` coordinates of a photo squeezed to a square (the library resizes every
photo to S x S). A rigid turn of the photo is then not a rotation matrix in those coordinates; with
``aspect`` = H / W of the photo, ``rigid_theta`` builds the matrix that turns the photo's pixels rigidly and
``pixel_scale_angle`` reads zoom and angle back in pixel space.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# The aimed shot of synth/photo.py: the receipt fits 0.92 of the frame, scaled by about 0.95 (U(0.82, 1.02))
CANONICAL_FILL = 0.92 * 0.95

# The hard slice: what a transformer could undo and the +-45 degree augmentation mostly does not cover well
HARD_ROTATION_DEG = 25.0   # |rotation| at or beyond this
HARD_PERSPECTIVE = 0.04    # keystone at or beyond this (the quick preset draws up to 0.06)
HARD_SCALE = 0.7           # the receipt at or below 0.7 of its aimed size in frame


def rigid_theta(angle: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, *,
                aspect: float = 1.0) -> torch.Tensor:
    """(N, 2, 3) theta that reads, for each output pixel, the photo point turned by ``angle`` (radians, positive
    = the read region turned clockwise on screen, i.e. the output shows the photo turned counter-clockwise),
    zoomed by ``scale`` (< 1 reads a smaller region: zoom in) about the point (tx, ty) in [-1, 1] units.

    Rigid in the photo's pixels whatever the squeeze: with D = diag(1, aspect) (pixel units per normalised
    unit, up to W / 2), theta's 2x2 part is scale * D^-1 R(angle) D."""
    c, s = torch.cos(angle) * scale, torch.sin(angle) * scale
    row0 = torch.stack([c, -s * aspect, tx], dim=-1)
    row1 = torch.stack([s / aspect, c, ty], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def pixel_scale_angle(theta, *, aspect: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per theta: its zoom sqrt|det| (< 1 = zoom in) and rotation in degrees, measured in the photo's pixels
    (``rigid_theta``'s inverse for rigid thetas; for a general affine, those of its pixel-space matrix)."""
    t = np.asarray(theta, dtype=np.float64)
    a = t[..., :2, :2].copy()
    a[..., 0, 1] /= aspect  # D A D^-1 with D = diag(1, aspect)
    a[..., 1, 0] *= aspect
    det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
    angle = np.degrees(np.arctan2(a[..., 1, 0] - a[..., 0, 1], a[..., 0, 0] + a[..., 1, 1]))
    return np.sqrt(np.abs(det)), angle


def _quad_array(column) -> np.ndarray:
    """(N, 4, 2) corners (fractions of the frame) from a manifest quad column; NaN rows for blank entries."""
    out = np.full((len(column), 4, 2), np.nan)
    for i, text in enumerate(column):
        v = str(text).split() if isinstance(text, str) else []
        if len(v) == 8:
            out[i] = np.asarray(v, float).reshape(4, 2)
    return out


def receipt_frame(table) -> dict[str, np.ndarray]:
    """Per photo, from the manifest's ``header_quad`` and ``body_quad`` (corners top-left, top-right,
    bottom-right, bottom-left of the receipt's top and its rest, as fractions of the frame): the receipt's
    four corners (N, 4, 2) in that order and its centre (N, 2), as fractions of the frame. NaN where the
    photo has no quads (real photos)."""
    missing = [c for c in ("header_quad", "body_quad") if c not in table.columns]
    if missing:
        raise ValueError(f"photo table: expected the manifest columns header_quad, body_quad; missing {missing}")
    head, body = _quad_array(table["header_quad"]), _quad_array(table["body_quad"])
    corners = np.stack([head[:, 0], head[:, 1], body[:, 2], body[:, 3]], axis=1)  # TL, TR, BR, BL
    return {"corners": corners, "centre": corners.mean(1)}


def oracle_theta(table, *, aspect: float, fill: float = CANONICAL_FILL, max_zoom_out: float = 1.0) -> torch.Tensor:
    """(N, 2, 3) float32: the perfect rotation + scale + translation transformer of each photo. It reads the
    receipt's quad (``receipt_frame``) turned upright and at the size an aimed shot would show it (fitting
    ``fill`` of the frame), its top centred where that shot has it, i.e. it undoes the photo's rotation, zoom and
    shift (not its perspective or paper deformation). It zooms out by at most ``max_zoom_out``: a long receipt
    photographed from its top (the generator's ``top_zoom``) is not shrunk to fit, which would make its header
    illegible (measured: 0.594 against 0.935 as photographed on the quick test set's 138 such known photos); it
    keeps its size and shows its top. The identity where the photo has no quads."""
    frame = receipt_frame(table)
    corners = frame["corners"].copy()
    corners[..., 1] *= aspect  # fractions -> units of the frame's width, so lengths and angles are true
    down = (corners[:, 3] - corners[:, 0] + corners[:, 2] - corners[:, 1]) / 2   # TL->BL and TR->BR
    across = (corners[:, 1] - corners[:, 0] + corners[:, 2] - corners[:, 3]) / 2  # TL->TR and BL->BR
    height, width = np.linalg.norm(down, axis=1), np.linalg.norm(across, axis=1)
    # the angle that turns the frame's "down" (0, 1) onto the receipt's (on screen, y down)
    angle = np.arctan2(-down[:, 0], down[:, 1])
    # canonical height of the receipt in the same units: it fits `fill` of the frame (width 1, height aspect)
    canon = fill * np.minimum(height / np.maximum(width, 1e-9), aspect)
    scale = np.minimum(height / np.maximum(canon, 1e-9), max_zoom_out)
    shown = height / np.maximum(scale, 1e-9)  # the receipt's height in the output, in frame widths
    # anchor: the receipt's top centre goes where the canonical shot has it (centred receipt: its top at
    # -shown / aspect in [-1, 1] units), or just inside the top edge for a receipt taller than the frame
    y_top = -np.minimum(shown, 0.95 * aspect) / aspect
    top = (frame["corners"][:, 0] + frame["corners"][:, 1]) / 2 * 2 - 1  # fractions -> [-1, 1]
    ok = np.isfinite(angle) & np.isfinite(scale) & np.isfinite(top).all(1) & np.isfinite(y_top)
    angle, scale = np.where(ok, angle, 0.0), np.where(ok, scale, 1.0)
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    theta = rigid_theta(t(angle), t(scale), t(np.zeros(len(angle))), t(np.zeros(len(angle))), aspect=aspect)
    anchor = torch.stack([torch.zeros(len(angle)), t(np.where(ok, y_top, 0.0))], dim=1)  # output point
    target = t(np.where(ok[:, None], top, 0.0))  # the input point it must read
    shift = target - (theta[:, :, :2] @ anchor.unsqueeze(2)).squeeze(2)
    theta[:, :, 2] = torch.where(t(ok)[:, None] > 0, shift, torch.zeros_like(shift))
    return theta


def hard_mask(table, *, rotation_deg: float = HARD_ROTATION_DEG, perspective: float = HARD_PERSPECTIVE,
              scale: float = HARD_SCALE) -> np.ndarray:
    """Boolean mask over the table's photos: turned by at least ``rotation_deg``, keystoned by at least
    ``perspective`` or shown at ``scale`` or less of the aimed size (the manifest's rotation_deg, perspective,
    scale): the photos a transformer could help with."""
    missing = [c for c in ("rotation_deg", "perspective", "scale") if c not in table.columns]
    if missing:
        raise ValueError(f"photo table: expected the manifest columns rotation_deg, perspective, scale; missing {missing}")
    return ((table["rotation_deg"].abs() >= rotation_deg) | (table["perspective"] >= perspective)
            | (table["scale"] <= scale)).to_numpy(dtype=bool)


def circular_correlation(a_deg, b_deg) -> float:
    """Circular correlation (Fisher and Lee / Jammalamadaka) of two angles in degrees: 1 when one follows the
    other up to a constant offset, -1 when it mirrors it, ~0 when unrelated. Angles wrap, so a plain Pearson
    correlation would call -179 and 179 far apart."""
    a, b = np.radians(np.asarray(a_deg, float)), np.radians(np.asarray(b_deg, float))
    if len(a) < 3:
        return float("nan")
    ma = math.atan2(np.sin(a).sum(), np.cos(a).sum())
    mb = math.atan2(np.sin(b).sum(), np.cos(b).sum())
    sa, sb = np.sin(a - ma), np.sin(b - mb)
    den = math.sqrt((sa ** 2).sum() * (sb ** 2).sum())
    return float((sa * sb).sum() / den) if den > 0 else float("nan")
