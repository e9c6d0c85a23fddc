"""Surfaces of the synthetic room: the bundled photos its objects carry and the procedural wood,
brick and plaster textures of its floor and walls."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
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


# The calibration pool: photos the tests and the bench room never show, for the family of rooms the
# presence rule is measured on (bench/presence_family.py). They come from OpenCV's sample images as
# Debian ships them (`apt-get install opencv-doc`), read in place, never copied into the package.
OPENCV_SAMPLES_ENV = "FMSPLAT_OPENCV_SAMPLES"
OPENCV_SAMPLES_DIR = "/usr/share/doc/opencv-doc/examples/data"


def _opencv_sample(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from PIL import Image

        path = Path(os.environ.get(OPENCV_SAMPLES_ENV, OPENCV_SAMPLES_DIR)) / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path}: OpenCV's sample photo is missing (the calibration pool needs "
                                    f"`apt-get install opencv-doc`, or ${OPENCV_SAMPLES_ENV} naming a folder with it)")
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))

    return load


def _pool(specs: list[PhotoSpec]) -> dict[str, PhotoSpec]:
    return {p.label: p for p in specs}


def _sample(label, synonyms, filename, crop, kind, height) -> PhotoSpec:
    return PhotoSpec(label, synonyms, f"opencv-doc: {filename}", _opencv_sample(filename), crop, kind, height)


CALIBRATION_PHOTOS: dict[str, PhotoSpec] = _pool([
    _sample("apple", ("Granny Smith", "red apple", "fruit"), "apple.jpg", (20, 500, 40, 470), "cube", 0.6),
    _sample("orange", ("citrus fruit", "tangerine", "navel orange"), "orange.jpg", (30, 500, 40, 490), "cube", 0.6),
    _sample("baboon", ("mandrill", "monkey", "primate"), "baboon.jpg", (0, 512, 0, 512), "panel", 1.0),
    _sample("butterfly", ("swallowtail", "moth", "insect"), "butterfly.jpg", (0, 356, 0, 493), "panel", 1.0),
    _sample("dog", ("Pekinese", "puppy", "lapdog"), "chicky_512.png", (0, 512, 0, 512), "panel", 1.0),
    _sample("squirrel", ("fox squirrel", "rodent", "chipmunk"), "squirrel_cls.jpg", (0, 426, 100, 420), "panel", 1.0),
    _sample("sudoku", ("crossword puzzle", "number puzzle", "puzzle"), "sudoku.png", (0, 563, 0, 558), "panel", 1.0),
    _sample("circuit board", ("printed circuit board", "motherboard", "electronics"), "board.jpg", (0, 480, 0, 640),
            "cube", 0.8),
    _sample("cookie box", ("carton", "package", "box of biscuits"), "box.png", (0, 223, 0, 324), "cube", 0.7),
    _sample("palace", ("castle", "mansion", "tower"), "home.jpg", (0, 384, 0, 512), "panel", 1.3),
    _sample("car", ("sedan", "automobile", "license plate"), "licenseplate_motion.jpg", (0, 482, 0, 600), "panel", 1.2),
    _sample("potted plant", ("aloe", "houseplant", "flowerpot"), "aloeL.jpg", (100, 1110, 200, 1100), "panel", 1.2),
    _sample("fish", ("goldfish", "cartoon fish", "tropical fish"), "HappyFish.jpg", (0, 194, 0, 259), "panel", 0.8),
    _sample("painting", ("Van Gogh", "starry night", "artwork"), "starry_night.jpg", (0, 600, 0, 752), "panel", 1.2),
])


def photo_spec(name: str) -> PhotoSpec:
    """An object's photo by label, from the bundled photos or the calibration pool."""
    spec = PHOTOS.get(name) or CALIBRATION_PHOTOS.get(name)
    if spec is None:
        raise ValueError(f"unknown object {name!r}; available: {sorted(PHOTOS)}, calibration pool: "
                         f"{sorted(CALIBRATION_PHOTOS)}")
    return spec


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
