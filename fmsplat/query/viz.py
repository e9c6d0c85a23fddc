"""Pictures of query answers: colour-mapped relevancy over an image, masks, side-by-side panels.

Images are float (H, W, 3) in [0, 1] (numpy or torch) or uint8; outputs are uint8 (H, W, 3) arrays,
written as PNG atomically (fmsplat.atomic).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from fmsplat import atomic

# Relevancy colour map: dark blue (low) -> blue -> cyan -> yellow -> red (high).
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([
    [0.05, 0.03, 0.35],
    [0.10, 0.35, 0.95],
    [0.15, 0.85, 0.85],
    [0.98, 0.90, 0.15],
    [0.85, 0.08, 0.05],
])


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_uint8(image) -> np.ndarray:
    """(H, W, 3) float in [0, 1] (or uint8) -> uint8 (H, W, 3)."""
    a = _np(image)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = np.moveaxis(a, 0, -1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    return (np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colormap(values, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) values -> (H, W, 3) float colours; range [vmin, vmax] (default: the map's own)."""
    v = _np(values).astype(np.float64)
    if v.ndim != 2:
        raise ValueError(f"colormap expects an (H, W) map, got shape {v.shape}")
    lo = float(v.min()) if vmin is None else float(vmin)
    hi = float(v.max()) if vmax is None else float(vmax)
    t = np.clip((v - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return np.stack([np.interp(t, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1)


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


def hstack(images, gap: int = 4, titles: list[str] | None = None) -> np.ndarray:
    """Images side by side (heights padded to the tallest) with an optional title strip above each."""
    arrs = [to_uint8(im) for im in images]
    if not arrs:
        raise ValueError("hstack: no images")
    h = max(a.shape[0] for a in arrs)
    top = 14 if titles else 0
    width = sum(a.shape[1] for a in arrs) + gap * (len(arrs) - 1)
    out = np.full((h + top, width, 3), 255, np.uint8)
    x = 0
    for a in arrs:
        out[top:top + a.shape[0], x:x + a.shape[1]] = a
        x += a.shape[1] + gap
    if titles:
        pil = Image.fromarray(out)
        d = ImageDraw.Draw(pil)
        x = 0
        for a, t in zip(arrs, titles):
            d.text((x + 2, 1), str(t), fill=(0, 0, 0))
            x += a.shape[1] + gap
        out = np.asarray(pil)
    return out


def write_png(path, image) -> Path:
    """Write an (H, W, 3) image or an (H, W) bool/uint8 mask as PNG, atomically."""
    a = _np(image)
    if a.ndim == 2:
        a = (a.astype(bool).astype(np.uint8) * 255) if a.dtype != np.uint8 else a
        pil = Image.fromarray(np.ascontiguousarray(a))
    else:
        pil = Image.fromarray(to_uint8(a))
    path = Path(path)
    atomic.write_with(path, lambda tmp: pil.save(tmp, format="PNG"))
    return path


__all__ = ["colormap", "draw_boxes", "draw_marker", "hstack", "mask_overlay", "relevancy_overlay", "resize_map",
           "to_uint8", "write_png"]
