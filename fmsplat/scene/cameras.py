"""Pinhole cameras in the OpenCV convention (x right, y down, z forward)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

# OpenGL/Blender camera axes (x right, y up, z backward) -> OpenCV (x right, y down, z forward).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class Camera:
    """One posed view.

    viewmat: (4, 4) world-to-camera, OpenCV convention. K: (3, 3) intrinsics in pixels for
    an image of `width` x `height`. `distortion` holds OpenCV (k1, k2, p1, p2) of the *stored*
    image; readers that undistort on load leave it None for the returned pixels.
    """

    K: np.ndarray
    viewmat: np.ndarray
    width: int
    height: int
    image_path: Path | None = None
    name: str = ""
    distortion: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.viewmat = np.asarray(self.viewmat, dtype=np.float64).reshape(4, 4)
        self.width = int(self.width)
        self.height = int(self.height)
        if self.distortion is not None:
            self.distortion = np.asarray(self.distortion, dtype=np.float64).reshape(-1)

    @property
    def c2w(self) -> np.ndarray:
        """Camera-to-world (OpenCV axes)."""
        return np.linalg.inv(self.viewmat)

    @property
    def center(self) -> np.ndarray:
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @classmethod
    def from_c2w_opengl(cls, c2w_gl: np.ndarray, K: np.ndarray, width: int, height: int, **kw) -> "Camera":
        """Build from an OpenGL camera-to-world matrix (transforms.json convention)."""
        c2w_cv = np.asarray(c2w_gl, dtype=np.float64).reshape(4, 4) @ GL_TO_CV
        return cls(K=K, viewmat=np.linalg.inv(c2w_cv), width=width, height=height, **kw)

    def scaled(self, factor: float) -> "Camera":
        """The same camera for an image resized by `factor` (0.5 = half size)."""
        return self.resized(max(1, int(round(self.width * factor))), max(1, int(round(self.height * factor))))

    def resized(self, w: int, h: int) -> "Camera":
        """The same camera for the image resized to exactly `w` x `h` pixels."""
        w, h = int(w), int(h)
        K = self.K.copy()
        # Scale about the pixel-corner origin so that pixel centres stay consistent.
        K[0, :] *= w / self.width
        K[1, :] *= h / self.height
        K[2, :] = [0.0, 0.0, 1.0]
        return replace(self, K=K, width=w, height=h)

    def viewmat_tensor(self, device: str | torch.device = "cpu", dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(self.viewmat, dtype=dtype, device=device)

    def K_tensor(self, device: str | torch.device = "cpu", dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(self.K, dtype=dtype, device=device)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "K": self.K.tolist(),
            "viewmat": self.viewmat.tolist(),
            "image_path": str(self.image_path) if self.image_path else None,
        }


def up_direction(cameras: list[Camera]) -> np.ndarray:
    """(3,) unit world direction of the cameras' mean up (OpenCV: the image's -y)."""
    up = -np.mean([c.viewmat[1, :3] for c in cameras], axis=0)
    return up / max(float(np.linalg.norm(up)), 1e-12)


def top_down_basis(cameras: list[Camera]) -> np.ndarray:
    """(3, 2): two unit axes of the plane normal to `up_direction` (a map of the scene seen from above)."""
    up = up_direction(cameras)
    a = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    return np.stack([a, np.cross(up, a)], axis=1)


def look_at_point(cameras: list[Camera], strict: bool = True) -> np.ndarray | None:
    """The point closest, in least squares, to every camera's optical axis: where a capture that
    circles an object looks. Minimises sum_i |(I - a_i a_i^T)(p - c_i)|^2 over p (a_i the unit
    +z of camera i, c_i its centre), plus a tiny pull towards the mean centre so that directions
    no axis constrains still get a value.

    strict: None when the axes are (nearly) parallel or the point lies behind most cameras
    (forward-facing and inside-out captures look at no single point); otherwise the solution
    is returned whatever it is (a camera path needs some centre)."""
    centers = np.stack([c.center for c in cameras])
    axes = np.stack([c.viewmat[2, :3] for c in cameras])
    proj = np.eye(3)[None] - axes[:, :, None] * axes[:, None, :]
    eps = 1e-9 * len(centers)
    A = proj.sum(0) + eps * np.eye(3)
    b = np.einsum("nij,nj->i", proj, centers) + eps * centers.mean(0)
    point = np.linalg.solve(A, b)
    if not strict:
        return point
    if np.linalg.cond(proj.sum(0)) > 1e6:
        return None
    in_front = np.einsum("ni,ni->n", point[None] - centers, axes) > 0
    return point if in_front.mean() > 0.5 else None
