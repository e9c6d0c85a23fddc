"""What a format reader hands to SceneDataset: full-resolution cameras and optional points."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmsplat.scene.cameras import Camera


@dataclass
class RawScene:
    """Cameras at the resolution of the stored images; `distortion` set where the lens has one."""

    cameras: list[Camera]
    format: str
    pose_file: Path
    skipped: int = 0
    points: np.ndarray | None = None
    point_colors: np.ndarray | None = None
    extra_files: list[Path] = field(default_factory=list)
    # (lo, hi) world-space box the format declares the scene to lie in (instant-ngp's aabb_scale)
    scene_box: tuple[np.ndarray, np.ndarray] | None = None
    # the file that states the cameras' image sizes (COLMAP's cameras file; else the pose file)
    intrinsics_file: Path | None = None
    # factor -> folder holding every image `factor` times smaller under the same name (LLFF's images_4/)
    downscaled_dirs: dict[int, Path] = field(default_factory=dict)
