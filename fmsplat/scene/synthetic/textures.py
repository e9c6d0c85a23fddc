"""Surfaces of the synthetic room: the bundled photos its objects carry and the procedural wood,
brick and plaster textures of its floor and walls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.transform import resize


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        if name == "motorcycle":
            return skimage.data.stereo_motorcycle()[0]
        return getattr(skimage.data, name)()

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            from sklearn.datasets import load_sample_image
        except ImportError as e:
            raise ImportError(
                f"the photo {filename!r} ships with scikit-learn, which is not installed: "
                "`pip install scikit-learn` or choose objects from scikit-image's photos"
            ) from e
        return load_sample_image(filename)

    return load


@dataclass(frozen=True)
class PhotoSpec:
    label: str
    synonyms: tuple[str, ...]
    source: str  # provenance, written to objects.json
    load: Callable[[], np.ndarray]
    crop: tuple[int, int, int, int]  # rows r0:r1, cols c0:c1 in the original photo
    kind: str  # "cube" (photo on 4 sides) or "panel" (photo on the 2 large faces)
    height: float  # nominal object height in metres


# Crops keep the thing the label names and little else, so that the label is the right answer.
PHOTOS: dict[str, PhotoSpec] = {
    p.label: p
    for p in [
        PhotoSpec("cat", ("kitten", "tabby cat", "Egyptian cat"), "skimage.data.chelsea", _skimage("chelsea"),
                  (0, 300, 40, 420), "cube", 0.85),
        PhotoSpec("espresso cup", ("coffee cup", "espresso", "cup of coffee"), "skimage.data.coffee", _skimage("coffee"),
                  (0, 400, 90, 570), "cube", 0.85),
        PhotoSpec("rocket", ("missile", "space rocket", "launch vehicle"), "skimage.data.rocket", _skimage("rocket"),
                  (30, 427, 250, 420), "cube", 1.5),
        PhotoSpec("motorcycle", ("motorbike", "moped", "motor scooter"), "skimage.data.stereo_motorcycle",
                  _skimage("motorcycle"), (80, 480, 80, 700), "panel", 1.0),
        PhotoSpec("astronaut", ("spacesuit", "space shuttle", "person in a space suit"), "skimage.data.astronaut",
                  _skimage("astronaut"), (0, 512, 0, 512), "panel", 1.2),
        PhotoSpec("flower", ("dahlia", "daisy", "blossom"), "sklearn.datasets.load_sample_image('flower.jpg')",
                  _sklearn("flower.jpg"), (50, 400, 140, 480), "cube", 0.9),
        PhotoSpec("pagoda", ("temple", "palace", "chinese tower"), "sklearn.datasets.load_sample_image('china.jpg')",
                  _sklearn("china.jpg"), (20, 400, 60, 360), "panel", 1.4),
        PhotoSpec("camera tripod", ("tripod", "cameraman", "photographer"), "skimage.data.camera",
                  _skimage("camera"), (0, 512, 0, 512), "panel", 1.2),
    ]
}


def wood_texture(rng: np.random.Generator, n: int = 256, planks: int = 8) -> np.ndarray:
    """Wood planks running along x: per-plank tone, grain from smoothed noise, dark joints."""
    y, x = np.mgrid[0:n, 0:n] / n
    plank = np.minimum((y * planks).astype(int), planks - 1)
    tone = rng.uniform(0.8, 1.15, planks)[plank]
    noise = gaussian_filter(rng.standard_normal((n, n)), sigma=(1.0, 12.0), mode="wrap")
    noise /= noise.std() + 1e-9
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (y * planks * 6.0 + 0.6 * noise + rng.uniform(0, 1, planks)[plank]))
    base = np.array([0.62, 0.42, 0.25])
    tex = base * (tone * (0.85 + 0.15 * grain))[..., None]
    # Dark gaps between planks and at staggered plank ends.
    gap_y = (y * planks) % 1.0 < 0.04
    offsets = rng.uniform(0, 1, planks)[plank]
    gap_x = ((x + offsets) * 2.0) % 1.0 < 0.008
    tex[gap_y | gap_x] *= 0.45
    return np.clip(tex, 0, 1).astype(np.float32)


def brick_texture(rng: np.random.Generator, n: int = 256, rows: int = 16, per_row: int = 4) -> np.ndarray:
    """Running-bond brick wall: per-brick tone, light mortar joints, half-brick offset per row."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    row = (y * rows / n).astype(int)
    shifted = x + (row % 2) * (n / per_row / 2)
    col = (shifted * per_row / n).astype(int) % per_row
    tone = rng.uniform(0.8, 1.15, (rows, per_row))[row, col]
    noise = gaussian_filter(rng.standard_normal((n, n)), sigma=1.5, mode="wrap")
    brick = np.array([0.62, 0.3, 0.22]) * (tone * (1.0 + 0.06 * noise / (noise.std() + 1e-9)))[..., None]
    joint = ((y % (n / rows)) < 2) | ((shifted % (n / per_row)) < 2)
    brick[joint] = np.array([0.72, 0.7, 0.66])
    return np.clip(brick, 0, 1).astype(np.float32)


def plaster_texture(rng: np.random.Generator, n: int = 128) -> np.ndarray:
    noise = gaussian_filter(rng.standard_normal((n, n)), sigma=6.0, mode="wrap")
    noise /= noise.std() + 1e-9
    base = np.array([0.82, 0.80, 0.72], dtype=np.float32)
    return np.clip(base * (1.0 + 0.02 * noise[..., None]), 0, 1).astype(np.float32)


def load_photo(spec: PhotoSpec, texture_size: int) -> np.ndarray:
    img = np.asarray(spec.load())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    r0, r1, c0, c1 = spec.crop
    if r1 > img.shape[0] or c1 > img.shape[1]:
        raise ValueError(f"crop {spec.crop} of {spec.source} exceeds its size {img.shape[:2]}")
    img = img[r0:r1, c0:c1].astype(np.float32) / 255.0
    scale = texture_size / max(img.shape[:2])
    shape = (max(2, round(img.shape[0] * scale)), max(2, round(img.shape[1] * scale)))
    return resize(img, shape, anti_aliasing=True, preserve_range=True).astype(np.float32)
