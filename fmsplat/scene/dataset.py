"""SceneDataset and load_dataset: one entry for posed image collections on disk."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fmsplat.scene.cameras import Camera
from fmsplat.scene.errors import DatasetError
from fmsplat.scene.images import IMAGE_EXTENSIONS, check_image_matches, load_rgb, undistort_image
from fmsplat.scene.raw import RawScene


class SceneDataset:
    """Posed views of one scene, ready for training.

    `cameras` are scaled by `downscale`; when `undistort` is on their distortion is None and
    `image(i)` returns undistorted pixels (same K). Split: view i is held out when
    i % test_every == 0 (the 3DGS / LERF protocol); test_every = 0 holds out nothing.
    """

    def __init__(
        self,
        raw: RawScene,
        source: Path,
        downscale: float = 1.0,
        test_every: int = 8,
        undistort: bool = True,
        background=(0.0, 0.0, 0.0),
    ) -> None:
        if not downscale > 0:
            raise ValueError(f"downscale must be positive, got {downscale}")
        if test_every < 0:
            raise ValueError(f"test_every must be >= 0, got {test_every}")
        if not raw.cameras:
            raise DatasetError(f"{source}: no cameras")
        self.source = Path(source)
        self.format = raw.format
        self.downscale = float(downscale)
        self.test_every = int(test_every)
        self.undistort = bool(undistort)
        self.background = tuple(float(c) for c in background)
        if len(self.background) != 3:
            raise ValueError(f"background must be an RGB triple, got {background!r}")
        self.points = raw.points
        self.point_colors = raw.point_colors
        self.scene_box = raw.scene_box
        self._raw = raw
        for cam in raw.cameras:  # headers only: a wrong camera size fails here, not hours into training
            if cam.image_path is not None:
                check_image_matches(cam.image_path, cam.width, cam.height, raw.intrinsics_file or raw.pose_file)
        # Downscale factor d means images d times smaller (downscale=8: 1080 -> 135).
        scaled = [cam.scaled(1.0 / self.downscale) for cam in raw.cameras]
        # The lens distortion to remove from each (scaled) image; normalised coefficients do not
        # change with resolution.
        self._distortions = [cam.distortion for cam in scaled]
        if self.undistort:
            scaled = [replace(cam, distortion=None) for cam in scaled]
        self.cameras: list[Camera] = scaled
        n = len(scaled)
        if self.test_every:
            self.test_indices = [i for i in range(n) if i % self.test_every == 0]
        else:
            self.test_indices = []
        held_out = set(self.test_indices)
        self.train_indices = [i for i in range(n) if i not in held_out]
        self._cache: dict[int, np.ndarray] = {}
        self._coverage: dict[int, np.ndarray] = {}

        centers = np.stack([cam.center for cam in self.cameras])
        if not np.isfinite(centers).all():  # the readers reject bad poses; this guards hand-built scenes
            bad = int(np.flatnonzero(~np.isfinite(centers).all(axis=1))[0])
            raise DatasetError(f"{raw.pose_file}: view {bad} ({self.cameras[bad].name}) has no finite camera centre")
        self.scene_center = centers.mean(axis=0)
        # 3DGS's cameras_extent (getNerfppNorm): 1.1 x the largest camera distance from the mean.
        radius = float(np.linalg.norm(centers - self.scene_center, axis=1).max())
        if radius < 1e-9:
            # One view (or all views at one spot): no camera spread to measure. Use the point
            # cloud's size, else unit size, and say so; a zero extent would zero the learning rates.
            lo, hi = self.bounds(padding=0.0)
            size = 0.5 * float(np.linalg.norm(hi - lo)) if self.points is not None and len(self.points) else 0.0
            radius = size if size > 1e-9 else 1.0
            warnings.warn(f"{self.source}: all camera centres coincide; scene extent set from {'the points' if size > 1e-9 else 'unit size'} ({1.1 * radius:.3g})", stacklevel=3)
        self.extent = float(1.1 * radius)

    def __len__(self) -> int:
        return len(self.cameras)

    def __repr__(self) -> str:
        return (
            f"SceneDataset({self.source}, format={self.format}, views={len(self)}, "
            f"train={len(self.train_indices)}, test={len(self.test_indices)}, downscale={self.downscale})"
        )

    @property
    def raw_cameras(self) -> list[Camera]:
        """The cameras at the stored photos' resolution (with their lens distortion)."""
        return self._raw.cameras

    def at_downscale(self, downscale: float) -> "SceneDataset":
        """The same views and split at another resolution (images loaded anew, lazily)."""
        other = SceneDataset(self._raw, self.source, downscale=downscale, test_every=self.test_every,
                             undistort=self.undistort, background=self.background)
        other.train_indices, other.test_indices = list(self.train_indices), list(self.test_indices)
        return other

    @property
    def train_cameras(self) -> list[Camera]:
        return [self.cameras[i] for i in self.train_indices]

    @property
    def test_cameras(self) -> list[Camera]:
        return [self.cameras[i] for i in self.test_indices]

    def image(self, i: int) -> np.ndarray:
        """View i as float32 (H, W, 3) in [0, 1] at the camera's size.

        Cached in memory; the array is the cache entry itself and read-only (copy it, or use
        image_tensor, to get a writable one)."""
        if i in self._cache:
            return self._cache[i]
        cam = self.cameras[i]
        rgb = load_rgb(self.image_file(i), cam.width, cam.height, self.background)
        coverage = None
        distortion = self._distortions[i]
        if self.undistort and distortion is not None:
            rgb, coverage = undistort_image(rgb, cam.K, distortion, self.background)
        rgb.setflags(write=False)
        self._cache[i] = rgb
        if coverage is not None:
            coverage.setflags(write=False)
            self._coverage[i] = coverage
        return rgb

    def image_file(self, i: int) -> Path:
        """The file view i is read from: the full-size image, or its copy in the dataset's most reduced
        folder that is still at least the camera's size (LLFF's images_4/ for a 1/4 or 1/6 scene): the
        same pixels after the resize, a fraction of the decoding."""
        path = self.cameras[i].image_path
        usable = [f for f in self._raw.downscaled_dirs if f <= self.downscale + 1e-9]
        if path is None or not usable:
            return path
        return self._raw.downscaled_dirs[max(usable)] / path.name

    def image_tensor(self, i: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """View i as a fresh float32 torch tensor (H, W, 3) on `device`."""
        return torch.tensor(self.image(i), device=device)

    def valid_mask(self, i: int) -> np.ndarray:
        """(H, W) bool: pixels of view i that come from the photo (False where undistortion
        pulled in pixels from outside the sensor, which are filled with the background)."""
        self.image(i)
        coverage = self._coverage.get(i)
        if coverage is None:
            return np.ones((self.cameras[i].height, self.cameras[i].width), dtype=bool)
        return coverage > 0.999

    def bounds(self, padding: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box around the SfM points if any, else the camera centres, padded on every
        side by `padding` x its largest side."""
        if self.points is not None and len(self.points):
            pts = np.asarray(self.points, dtype=np.float64)
        else:
            pts = np.stack([cam.center for cam in self.cameras])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        pad = padding * max(float((hi - lo).max()), 1e-6)
        return lo - pad, hi + pad

    def provenance(self) -> dict:
        """Where the data came from, for scene.json."""
        files = [self._raw.pose_file, *self._raw.extra_files]
        return {
            "path": str(self.source.resolve()),
            "format": self.format,
            "frames": len(self.cameras),
            "skipped": self._raw.skipped,
            "downscale": self.downscale,
            "test_every": self.test_every,
            "undistort": self.undistort,
            "pose_file": str(self._raw.pose_file.resolve()),
            "pose_sha256": _sha256(self._raw.pose_file),
            "files_sha256": {str(p.resolve()): _sha256(p) for p in files},
        }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Pixels per training view that a 2-core CPU trains on in minutes (the fox at 1/8: 135x240).
AUTO_MAX_PIXELS = 100_000


def auto_downscale(cameras: list[Camera], max_pixels: int = AUTO_MAX_PIXELS) -> float:
    """The smallest power-of-two downscale that brings the largest view to at most `max_pixels`."""
    largest = max(c.width * c.height for c in cameras)
    factor = 1.0
    while largest / factor**2 > max_pixels:
        factor *= 2.0
    return factor


def load_dataset(
    path,
    downscale: float | None = 1.0,
    test_every: int = 8,
    undistort: bool = True,
    background=(0, 0, 0),
) -> SceneDataset:
    """Open a dataset: a transforms*.json file, a directory holding transforms.json, an LLFF directory
    (poses_bounds.npy beside images/), or a COLMAP directory (sparse/0/, sparse/ or cameras.bin|txt
    directly; images in images/).
    downscale None: auto_downscale (a size a CPU trains on in minutes)."""
    path = Path(path)
    raw = _read_raw(path)
    if downscale is None:
        downscale = auto_downscale(raw.cameras)
    return SceneDataset(raw, path, downscale=downscale, test_every=test_every, undistort=undistort, background=background)


def _read_raw(path: Path) -> RawScene:
    from fmsplat.scene.transforms import read_transforms

    if not path.exists():
        raise DatasetError(f"{path}: does not exist (expected a transforms.json file or a dataset directory)")
    from fmsplat.scene.llff import POSES_BOUNDS, is_llff, read_llff

    if path.is_file():
        if path.suffix.lower() == ".json":
            return read_transforms(path)
        if path.name == POSES_BOUNDS:
            return read_llff(path.parent)
        raise DatasetError(f"{path}: not a transforms*.json file; pass a .json file or a dataset directory")
    if (path / "transforms.json").is_file():
        return read_transforms(path / "transforms.json")
    if is_llff(path):
        return read_llff(path)
    # Imported only here: the COLMAP reader pulls in numba, which transforms.json users never need.
    from fmsplat.scene.colmap import find_colmap_model, read_colmap_scene

    model = find_colmap_model(path)
    if model is not None:
        return read_colmap_scene(path, model)
    others = sorted(p.name for p in path.glob("transforms*.json"))
    hint = f"; found {others}: pass one of them as the path" if others else ""
    photos = [p for p in (path / "images").glob("*") if p.suffix in IMAGE_EXTENSIONS] if (path / "images").is_dir() else []
    if photos and not hint:
        hint = (f"; its images/ holds {len(photos)} photos without poses: fmsplat train {path / 'images'} "
                "--out SCENE poses them first")
    raise DatasetError(
        f"{path}: no dataset found (expected transforms.json, poses_bounds.npy (LLFF), or a COLMAP model in sparse/0/, sparse/ "
        f"or cameras.bin|txt with images/){hint}"
    )
