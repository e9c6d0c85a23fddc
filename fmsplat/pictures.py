"""Pictures: everything fmsplat draws, below every stage that draws (it imports nothing of the pipeline).

uint8 conversion, colour maps and bars, side-by-side strips, labels, render | photo | error panels,
relevancy and mask overlays, markers and boxes, atomic PNG writes and MP4 encoding. Images are float
(H, W, 3) in [0, 1] (numpy or torch) or uint8; pictures come out as uint8 (H, W, 3).

Relevancy is always drawn on one fixed scale, RELEVANCY_SCALE = (0.5, 1.0): LERF relevancy 0.5 means
"no better than the canonical negatives", so nothing below it is coloured, and the same colour means
the same value in every picture. A map is never stretched to its own range (that made every query
look like a hit); `colorbar` puts the scale beside the picture.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from fmsplat import atomic

# ---------------------------------------------------------------------------------- pictures
def as_numpy(x) -> np.ndarray:
    """A torch tensor (detached, on the CPU) or array-like as a numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_uint8(image) -> np.ndarray:
    """(H, W, 3) float in [0, 1] (or uint8, or (3, H, W)) -> uint8 (H, W, 3)."""
    a = as_numpy(image)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = np.moveaxis(a, 0, -1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    return (np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def apply_palette(values, palette, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) values -> (H, W, 3) float colours of `palette` = (stops in [0, 1], (S, 3) colours),
    over [vmin, vmax] (default: the map's own range), clipped at both ends."""
    v = as_numpy(values).astype(np.float64)
    if v.ndim != 2:
        raise ValueError(f"a colour map needs an (H, W) map, got shape {v.shape}")
    stops, colours = palette
    lo = float(v.min()) if vmin is None else float(vmin)
    hi = float(v.max()) if vmax is None else float(vmax)
    t = np.clip((v - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return np.stack([np.interp(t, stops, colours[:, c]) for c in range(3)], axis=-1)


@functools.lru_cache(maxsize=8)
def font(size: int):
    """PIL's bundled font at `size` px (Pillow < 10.1 has no scalable default: its bitmap font)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def label_size(width: int) -> int:
    """Label font size for tiles `width` px wide: readable on a 128 px thumbnail, not tiny on 1080p."""
    return int(np.clip(width // 40, 10, 28))


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
    a = as_numpy(image)
    if a.ndim == 2:
        a = (a.astype(bool).astype(np.uint8) * 255) if a.dtype != np.uint8 else a
        pil = Image.fromarray(np.ascontiguousarray(a))
    else:
        pil = Image.fromarray(to_uint8(a))
    path = Path(path)
    atomic.write_with(path, lambda tmp: pil.save(tmp, format="PNG"))
    return path


# ------------------------------------------------------------------------------------ panels
# Error heat map (inferno-like): black is exact, pale yellow is an error of ERROR_MAX or more.
ERROR_MAX = 0.5
ERROR_PALETTE = (
    np.array([0.0, 0.25, 0.5, 0.75, 1.0]),
    np.array([[0.0, 0.0, 0.0], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04], [0.99, 1.0, 0.64]]),
)
INVALID_COLOUR = (128, 128, 128)  # error-map pixels with no photo behind them (undistortion border)


PANEL_MIN_WIDTH = 240  # px per image in a comparison panel; smaller views are enlarged


def panel_layout(height: int, width: int) -> dict:
    """Where comparison_panel puts things for (height, width) inputs: name -> (rows, cols) slices
    of the panel for "render", "photo", "error" and "colorbar"; "shape" -> the panel's (H, W);
    "zoom" -> the integer factor small views are enlarged by (pixel copies), so that a 67x120
    view's panel stays readable and its labels fit."""
    zoom = max(1, math.ceil(PANEL_MIN_WIDTH / width))
    height, width = height * zoom, width * zoom
    size = label_size(width)
    gap, top = 4, size + 6
    bar_h, bottom = max(6, size // 2), max(6, size // 2) + size + 8
    x = [k * (width + gap) for k in range(3)]
    rows = slice(top, top + height)
    return {
        "render": (rows, slice(x[0], x[0] + width)),
        "photo": (rows, slice(x[1], x[1] + width)),
        "error": (rows, slice(x[2], x[2] + width)),
        "colorbar": (slice(top + height + 3, top + height + 3 + bar_h), slice(x[2], x[2] + width)),
        "shape": (top + height + bottom, 3 * width + 2 * gap),
        "font_size": size,
        "zoom": zoom,
    }


def comparison_panel(render, photo, valid=None) -> np.ndarray:
    """render | photo | error heat map, labelled, as uint8 (H', W', 3) (see panel_layout).

    The error is the per-pixel absolute error averaged over RGB on a fixed scale 0..ERROR_MAX
    (a colour bar under it shows the scale), so panels of different views and runs compare at a
    glance. PSNR is over the `valid` pixels (bool (H, W), None: all), as evaluate_views scores, of
    the 8-bit pictures shown; pixels outside `valid` are grey in the error map."""
    r = to_uint8(render)
    p = to_uint8(photo)
    if r.shape != p.shape:
        raise ValueError(f"comparison_panel: render {r.shape} and photo {p.shape} differ in size")
    h, w = r.shape[:2]
    # the error of the pictures shown (uint8), so the heat map matches what one sees
    err = np.abs(r.astype(np.float64) - p.astype(np.float64)) / 255.0
    keep = np.ones((h, w), bool) if valid is None else as_numpy(valid).astype(bool)
    if keep.shape != (h, w):
        raise ValueError(f"comparison_panel: valid mask {keep.shape} does not match the images {(h, w)}")
    mse = float((err[keep] ** 2).mean()) if keep.any() else float("nan")
    psnr = -10.0 * math.log10(max(mse, 1e-12)) if keep.any() else float("nan")
    heat = to_uint8(apply_palette(err.mean(-1), ERROR_PALETTE, 0.0, ERROR_MAX))
    heat[~keep] = INVALID_COLOUR

    lay = panel_layout(h, w)
    size, z = lay["font_size"], lay["zoom"]
    w = w * z
    out = np.full((*lay["shape"], 3), 255, np.uint8)
    for name, tile in (("render", r), ("photo", p), ("error", heat)):
        out[lay[name]] = tile.repeat(z, 0).repeat(z, 1)
    bar_rows, bar_cols = lay["colorbar"]
    ramp = np.linspace(0.0, ERROR_MAX, w)[None, :].repeat(bar_rows.stop - bar_rows.start, 0)
    out[bar_rows, bar_cols] = to_uint8(apply_palette(ramp, ERROR_PALETTE, 0.0, ERROR_MAX))

    pil = Image.fromarray(out)
    d = ImageDraw.Draw(pil)
    f = font(size)
    titles = {"render": f"render  PSNR {psnr:.2f} dB", "photo": "photo", "error": f"|error| 0..{ERROR_MAX:g}"}
    for name, text in titles.items():
        d.text((lay[name][1].start + 2, 3), text, fill=(0, 0, 0), font=f)
    y = bar_rows.stop + 2
    d.text((bar_cols.start, y), "0", fill=(0, 0, 0), font=f)
    top_label = f"{ERROR_MAX:g}+"
    d.text((bar_cols.stop - d.textlength(top_label, font=f), y), top_label, fill=(0, 0, 0), font=f)
    return np.asarray(pil)


# --------------------------------------------------------------------------------- relevancy
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
    values = as_numpy(values).astype(np.float64)
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
    r = resize_map(as_numpy(relevancy).astype(np.float64), img.shape[:2])
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
    p = np.zeros(shape, bool) if pred is None else as_numpy(pred).astype(bool)
    g = np.zeros(shape, bool) if gt is None else as_numpy(gt).astype(bool)
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


# ------------------------------------------------------------------------------------- video
def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even width and height by repeating the last row/column."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(path, frames, fps: float = 30.0, rotation: int = 0, crf: int = 18, pad_odd: bool = False,
                codec: str | None = None) -> Path:
    """Encode RGB uint8 frames (an iterable of (H, W, 3), one size, even sides) as an MP4 (H.264
    when PyAV has libx264, else MPEG-4), atomically. `rotation`: display rotation metadata,
    counter-clockwise degrees, as a phone writes it. `pad_odd`: odd sides are padded to even by
    repeating the last row/column (yuv420p halves both) instead of refused. `codec`: a PyAV codec name
    (default as above)."""
    import av

    codec = codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")

    def encode(tmp: Path) -> None:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.pix_fmt = "yuv420p"
            if rotation:
                stream.set_display_rotation(rotation)
            if codec == "libx264":
                stream.options = {"crf": str(crf)}
            first = True
            for frame in frames:
                frame = np.ascontiguousarray(_even(frame) if pad_odd else frame)
                if first:
                    stream.height, stream.width = frame.shape[:2]
                    if stream.width % 2 or stream.height % 2:
                        raise ValueError(f"write_video: frame sides must be even (yuv420p), got {frame.shape[1]}x{frame.shape[0]}")
                    if codec != "libx264":
                        stream.bit_rate = int(max(2e6, 2 * stream.width * stream.height * float(fps)))
                    first = False
                    size = frame.shape[:2]
                elif frame.shape[:2] != size:
                    raise ValueError(f"write_video: every frame must have the first frame's size {size[1]}x{size[0]}, got "
                                     f"{frame.shape[1]}x{frame.shape[0]}")
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))  # flush the encoder's delayed frames

    path = Path(path)
    atomic.write_with(path, encode)
    return path


__all__ = ["ERROR_MAX", "RELEVANCY_SCALE", "apply_palette", "as_numpy", "colorbar", "colormap", "comparison_panel",
           "draw_boxes", "draw_marker", "font", "hstack", "label_size", "mask_overlay", "panel_layout",
           "relevancy_overlay", "resize_map", "to_uint8", "write_png", "write_video"]
