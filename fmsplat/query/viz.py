"""Pictures of query answers: colour-mapped relevancy over an image, masks, side-by-side panels.

Images are float (H, W, 3) in [0, 1] (numpy or torch) or uint8; outputs are uint8 (H, W, 3) arrays,
written as PNG atomically (fmsplat.atomic).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

# The generic helpers live with reconstruct's renders (below query in the pipeline); re-exported here.
from fmsplat.reconstruct.renders import apply_palette, hstack, to_uint8, write_png
from fmsplat.reconstruct.renders import as_numpy as _np

# Relevancy colour map: dark blue (low) -> blue -> cyan -> yellow -> red (high).
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([
    [0.05, 0.03, 0.35],
    [0.10, 0.35, 0.95],
    [0.15, 0.85, 0.85],
    [0.98, 0.90, 0.15],
    [0.85, 0.08, 0.05],
])


def colormap(values, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) values -> (H, W, 3) float colours; range [vmin, vmax] (default: the map's own)."""
    return apply_palette(values, (_STOPS, _COLOURS), vmin, vmax)


def resize_map(values, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (H, W) map to `shape` = (rows, cols)."""
    values = _np(values).astype(np.float64)
    if values.shape == tuple(shape):
        return values
    t = torch.as_tensor(values, dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def relevancy_overlay(image, relevancy, alpha: float = 0.6, vmin: float | None = None,
                      vmax: float | None = None) -> np.ndarray:
    """Colour-mapped relevancy blended over `image` (resized to the image when sizes differ);
    blend weight grows with relevancy, so low-relevancy areas show the image."""
    img = to_uint8(image).astype(np.float64) / 255.0
    r = resize_map(_np(relevancy).astype(np.float64), img.shape[:2])
    colours = colormap(r, vmin, vmax)
    lo = float(r.min()) if vmin is None else vmin
    hi = float(r.max()) if vmax is None else vmax
    w = alpha * np.clip((r - lo) / max(hi - lo, 1e-12), 0.0, 1.0)[..., None]
    return to_uint8((1.0 - w) * img + w * colours)


def mask_overlay(image, pred=None, gt=None, alpha: float = 0.5) -> np.ndarray:
    """Prediction vs ground truth over `image`: true positives green, false positives red, misses blue
    (only the masks given are drawn; a prediction alone is green)."""
    img = to_uint8(image).astype(np.float64) / 255.0
    shape = img.shape[:2]
    p = np.zeros(shape, bool) if pred is None else _np(pred).astype(bool)
    g = np.zeros(shape, bool) if gt is None else _np(gt).astype(bool)
    for m, name in ((p, "pred"), (g, "gt")):
        if m.shape != shape:
            raise ValueError(f"mask_overlay: {name} mask {m.shape} does not match the image {shape}")
    colour = np.zeros_like(img)
    paint = np.zeros(shape, bool)
    if gt is None:
        colour[p] = (0.1, 0.9, 0.2)
        paint |= p
    else:
        for m, c in ((p & g, (0.1, 0.9, 0.2)), (p & ~g, (0.95, 0.1, 0.1)), (~p & g, (0.1, 0.3, 1.0))):
            colour[m] = c
            paint |= m
    w = alpha * paint[..., None]
    return to_uint8((1.0 - w) * img + w * colour)


def draw_marker(image: np.ndarray, x: float, y: float, colour=(255, 255, 255), radius: int = 4) -> np.ndarray:
    """A cross with a ring at pixel (x, y) (image coordinates of `image`)."""
    pil = Image.fromarray(to_uint8(image))
    d = ImageDraw.Draw(pil)
    cx, cy = x + 0.5, y + 0.5
    d.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=(0, 0, 0), width=3)
    d.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=tuple(colour), width=1)
    return np.asarray(pil)


def draw_boxes(image: np.ndarray, boxes, colour=(255, 255, 0)) -> np.ndarray:
    """Inclusive [x1, y1, x2, y2] boxes outlined on `image`."""
    pil = Image.fromarray(to_uint8(image))
    d = ImageDraw.Draw(pil)
    for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        d.rectangle([float(b[0]), float(b[1]), float(b[2]), float(b[3])], outline=tuple(colour), width=1)
    return np.asarray(pil)


__all__ = ["colormap", "draw_boxes", "draw_marker", "hstack", "mask_overlay", "relevancy_overlay", "resize_map",
           "to_uint8", "write_png"]
