"""Image loading for datasets: decode, composite alpha, resize to the camera, undistort.

Pixel convention (shared with Camera.scaled and COLMAP): the centre of pixel (i, j) sits at
(j + 0.5, i + 0.5) in the coordinates K maps to, i.e. the origin is the top-left image corner.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fmsplat.scene.errors import DatasetError

# Tried in this order when a transforms.json file_path has no extension.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG", ".webp", ".bmp", ".tif", ".tiff")

# Relative aspect-ratio mismatch between a file and its camera above which we refuse to stretch.
_ASPECT_TOLERANCE = 0.01


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from exc


def check_image_matches(path: Path, width: int, height: int, camera_file: Path | None = None) -> None:
    """Refuse, from the header alone, an image whose aspect ratio differs from its camera's: the
    file or the camera entry is wrong, and stretching would silently bend every ray. A uniformly
    smaller or larger image (e.g. COLMAP's images_2) is fine: it is resized on load."""
    src_w, src_h = image_size(path)
    if src_w < 1 or src_h < 1:
        raise DatasetError(f"{path}: image is {src_w}x{src_h} pixels")
    if not (int(width) >= 1 and int(height) >= 1):
        raise DatasetError(f"{path}: its camera has size {width}x{height}; both must be at least 1 pixel")
    if abs((src_w / src_h) / (width / height) - 1.0) > _ASPECT_TOLERANCE:
        where = f" in {camera_file}" if camera_file is not None else ""
        raise DatasetError(f"{path}: image is {src_w}x{src_h} but its camera{where} is {width}x{height} "
                           "(different aspect ratio)")


def load_rgb(path: Path, width: int, height: int, background=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Decode `path` into float32 (height, width, 3) in [0, 1].

    Alpha is composited on `background` before resizing. Downsizing uses an antialiased
    (triangle-filter) resample, so no aliasing at large factors; JPEGs are first decoded at a
    reduced DCT scale when that still leaves at least the target size (much faster at 1/8).
    """
    check_image_matches(path, width, height)
    try:
        img = Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from exc
    with img:
        src_w, src_h = img.size
        if img.format == "JPEG" and src_w > width and src_h > height:
            img.draft("RGB", (width, height))
        try:
            rgba = _to_float_rgba(img)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"{path}: cannot decode image ({exc})") from exc

    rgb = rgba[..., :3]
    if rgba.shape[-1] == 4:
        alpha = rgba[..., 3:4]
        rgb = rgb * alpha + np.asarray(background, dtype=np.float32).reshape(1, 1, 3) * (1.0 - alpha)
    if rgb.shape[:2] != (height, width):
        rgb = resize(rgb, width, height)
    return np.ascontiguousarray(np.clip(rgb, 0.0, 1.0), dtype=np.float32)


def _to_float_rgba(img: Image.Image) -> np.ndarray:
    """(H, W, 3 or 4) float32 in [0, 1] from any common PIL mode."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(img, dtype=np.float32) / 65535.0
        return np.repeat(grey[..., None], 3, axis=-1)
    if img.mode == "F":
        grey = np.asarray(img, dtype=np.float32)
        return np.repeat(grey[..., None], 3, axis=-1)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    converted = img.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(converted, dtype=np.float32) / 255.0


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize (H, W, C) float32 with an antialiased bilinear filter."""
    t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    antialias = width < rgb.shape[1] or height < rgb.shape[0]
    out = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias)
    return out[0].permute(1, 2, 0).numpy()


def distort_normalized(x: np.ndarray, y: np.ndarray, distortion) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV distortion of normalised camera coordinates.

    distortion: (k1, k2, p1, p2) or (k1, k2, p1, p2, k3), OpenCV order.
    """
    d = np.zeros(5)
    coeffs = np.asarray(distortion, dtype=np.float64).reshape(-1)
    if coeffs.size not in (4, 5):
        raise ValueError(f"distortion must be (k1, k2, p1, p2[, k3]), got {coeffs.size} values")
    d[: coeffs.size] = coeffs
    k1, k2, p1, p2, k3 = d
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return xd, yd


def undistort_image(
    rgb: np.ndarray, K: np.ndarray, distortion, background=(0.0, 0.0, 0.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Remove OpenCV lens distortion from `rgb` (H, W, C), keeping the same K and size.

    For every output pixel, the undistorted ray is pushed through the distortion model to find
    where the lens put it in the source, which is sampled bilinearly. Returns (image, coverage):
    coverage (H, W) in [0, 1] is the fraction of the bilinear footprint inside the source image;
    uncovered parts are filled with `background`.
    """
    h, w = rgb.shape[:2]
    K = np.asarray(K, dtype=np.float64)
    key = (w, h, tuple(K.ravel().tolist()), tuple(np.asarray(distortion, dtype=np.float64).ravel().tolist()))
    index, weights = _undistort_lookup(*key)
    flat = np.ascontiguousarray(rgb, dtype=np.float32).reshape(h * w, -1)
    # Four gathers of whole rows (the bilinear corners) instead of a per-pixel loop.
    out = np.take(flat, index[0], axis=0) * weights[0][:, None]
    for corner in range(1, 4):
        out += np.take(flat, index[corner], axis=0) * weights[corner][:, None]
    coverage = weights.sum(axis=0)
    out += (1.0 - coverage)[:, None] * np.asarray(background, dtype=np.float32).reshape(1, -1)
    return out.reshape(h, w, -1), coverage.reshape(h, w)


@functools.lru_cache(maxsize=4)
def _undistort_lookup(w: int, h: int, K: tuple, distortion: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear source indices and weights (4, H*W) for undistorting one camera; cached because
    all views of a rig usually share intrinsics. Corners outside the source get weight 0."""
    fx, _, cx, _, fy, cy = K[:6]
    u = np.arange(w, dtype=np.float64) + 0.5
    v = np.arange(h, dtype=np.float64) + 0.5
    x = np.broadcast_to(((u - cx) / fx)[None, :], (h, w))
    y = np.broadcast_to(((v - cy) / fy)[:, None], (h, w))
    xd, yd = distort_normalized(x, y, distortion)
    # Source position in pixel-index space (pixel centres at integers).
    src_x = (fx * xd + cx - 0.5).ravel()
    src_y = (fy * yd + cy - 0.5).ravel()
    x0 = np.floor(src_x)
    y0 = np.floor(src_y)
    tx = (src_x - x0).astype(np.float32)
    ty = (src_y - y0).astype(np.float32)
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    index = np.empty((4, h * w), np.int64)
    weights = np.empty((4, h * w), np.float32)
    for corner, (dx, dy, wx, wy) in enumerate(((0, 0, 1 - tx, 1 - ty), (1, 0, tx, 1 - ty), (0, 1, 1 - tx, ty), (1, 1, tx, ty))):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        index[corner] = np.clip(yi, 0, h - 1) * w + np.clip(xi, 0, w - 1)
        weights[corner] = np.where(inside, wx * wy, 0.0)
    return index, weights


def distort_image(rgb: np.ndarray, K: np.ndarray, distortion, iterations: int = 20) -> np.ndarray:
    """Apply lens distortion to an ideal pinhole image (the inverse of undistort_image).

    For each distorted output pixel the undistorted position is found by fixed-point iteration
    (the model has no closed-form inverse). Used to synthesise test images and by users who
    need to compare renders with raw photos.
    """
    h, w = rgb.shape[:2]
    K = np.asarray(K, dtype=np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    u = np.arange(w, dtype=np.float64) + 0.5
    v = np.arange(h, dtype=np.float64) + 0.5
    xd = ((u - cx) / fx)[None, :].repeat(h, axis=0)
    yd = ((v - cy) / fy)[:, None].repeat(w, axis=1)
    x, y = xd.copy(), yd.copy()
    for _ in range(iterations):  # iterations over the whole image, not per pixel
        fx_, fy_ = distort_normalized(x, y, distortion)
        x = x - (fx_ - xd)
        y = y - (fy_ - yd)
    grid = np.stack([2.0 * (fx * x + cx) / w - 1.0, 2.0 * (fy * y + cy) / h - 1.0], axis=-1)
    img_t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.grid_sample(img_t, torch.from_numpy(grid).float()[None], mode="bilinear", padding_mode="border", align_corners=False)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())


def resolve_image_path(path: Path) -> Path | None:
    """`path` itself if it exists, else with the first image extension that exists, else None."""
    if path.is_file():
        return path
    for ext in IMAGE_EXTENSIONS:
        candidate = path.with_name(path.name + ext)
        if candidate.is_file():
            return candidate
    return None
