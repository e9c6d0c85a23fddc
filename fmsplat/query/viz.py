"""Pictures of query answers: colour-mapped relevancy over an image, masks, side-by-side panels.

Images are float (H, W, 3) in [0, 1] (numpy or torch) or uint8; outputs are uint8 (H, W, 3) arrays,
written as PNG atomically (fmsplat.atomic).

Relevancy is always drawn on one fixed scale, RELEVANCY_SCALE = (0.5, 1.0): LERF relevancy 0.5 means
"no better than the canonical negatives", so nothing below it is coloured, and the same colour means
the same value in every picture. A map is never stretched to its own range (that made every query
look like a hit); `colorbar` puts the scale beside the picture.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

# The generic helpers live with reconstruct's renders (below query in the pipeline); re-exported here.
from fmsplat.reconstruct.renders import apply_palette, font, hstack, label_size, to_uint8, write_png
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


RELEVANCY_SCALE = (0.5, 1.0)  # (no better than the negatives, certain): the fixed range of every picture


def colormap(values, vmin: float | None = RELEVANCY_SCALE[0], vmax: float | None = RELEVANCY_SCALE[1]) -> np.ndarray:
    """(H, W) values -> (H, W, 3) float colours over [vmin, vmax] (default: the fixed relevancy scale;
    None: the map's own end)."""
    return apply_palette(values, (_STOPS, _COLOURS), vmin, vmax)


def resize_map(values, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (H, W) map to `shape` = (rows, cols)."""
    values = _np(values).astype(np.float64)
    if values.shape == tuple(shape):
        return values
    t = torch.as_tensor(values, dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def relevancy_overlay(image, relevancy, alpha: float = 0.7, vmin: float | None = RELEVANCY_SCALE[0],
                      vmax: float | None = RELEVANCY_SCALE[1]) -> np.ndarray:
    """Colour-mapped relevancy blended over `image` (resized to the image when sizes differ), on the
    fixed scale [vmin, vmax] (None: the map's own end); the blend weight grows with relevancy, so
    areas at or below vmin show the image untouched."""
    img = to_uint8(image).astype(np.float64) / 255.0
    r = resize_map(_np(relevancy).astype(np.float64), img.shape[:2])
    colours = colormap(r, vmin, vmax)
    lo = float(r.min()) if vmin is None else vmin
    hi = float(r.max()) if vmax is None else vmax
    w = alpha * np.clip((r - lo) / max(hi - lo, 1e-12), 0.0, 1.0)[..., None]
    return to_uint8((1.0 - w) * img + w * colours)


def colorbar(image, vmin: float = RELEVANCY_SCALE[0], vmax: float = RELEVANCY_SCALE[1], label: str = "relevancy",
             ticks: tuple[float, ...] | None = None) -> np.ndarray:
    """`image` with a vertical colour bar of the relevancy palette on its right, ticks labelled, so a
    reader knows what a colour means. The bar's colours depend only on [vmin, vmax]."""
    img = to_uint8(image)
    h, w = img.shape[:2]
    size = label_size(max(w, 160))
    f = font(size)
    ticks = ticks if ticks is not None else tuple(np.linspace(vmin, vmax, 3))
    bar_w = max(8, size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = int(max(probe.textlength(f"{t:.2f}", font=f) for t in ticks)) + 4
    margin = size // 2 + 2
    label_w = int(probe.textlength(label, font=f)) + 4
    out = Image.new("RGB", (w + 6 + max(bar_w + 4 + text_w, label_w), h), (255, 255, 255))
    out.paste(Image.fromarray(img), (0, 0))
    top, bottom = margin + size + 2, h - margin  # leaves room for the label above the bar
    if bottom - top < 8:  # a tiny image: the bar takes the whole height
        top, bottom = 0, h
    values = np.linspace(vmax, vmin, max(bottom - top, 1))[:, None].repeat(bar_w, axis=1)
    out.paste(Image.fromarray(to_uint8(colormap(values, vmin, vmax))), (w + 6, top))
    d = ImageDraw.Draw(out)
    if top > 0:
        d.text((w + 6, max(0, top - size - 3)), label, fill=(0, 0, 0), font=f)
    for t in ticks:
        y = top + (vmax - t) / max(vmax - vmin, 1e-12) * (bottom - top - 1)
        d.line([(w + 6 + bar_w, y), (w + 6 + bar_w + 3, y)], fill=(0, 0, 0))
        d.text((w + 6 + bar_w + 4, min(max(0, y - size / 2), h - size)), f"{t:.2f}", fill=(0, 0, 0), font=f)
    return np.asarray(out)


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


__all__ = ["RELEVANCY_SCALE", "colorbar", "colormap", "draw_boxes", "draw_marker", "hstack", "mask_overlay", "relevancy_overlay", "resize_map",
           "to_uint8", "write_png"]
