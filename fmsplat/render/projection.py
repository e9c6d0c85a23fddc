"""EWA projection of 3D Gaussians to screen-space ellipses (Zwicker et al. 2001, as in 3DGS).

Everything here is plain differentiable torch: the hand-written backward of the rasterizer
stops at the 2D quantities (means2d, conics, depths) and autograd carries the gradient on
to means, quats and scales. Both the numba backend and the PyTorch reference call this one
function, so they differ only in how they composite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NEAR_PLANE = 0.01
LOW_PASS = 0.3  # px², added to the 2D covariance (3DGS anti-aliasing filter)
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
TILE = 16


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """(N, 4) wxyz quaternions, not necessarily unit -> (N, 3, 3) rotation matrices."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


@dataclass
class Projection:
    """Screen-space Gaussians. Pixel (row i, col j) has its centre at (j + 0.5, i + 0.5)."""

    means2d: torch.Tensor  # (N, 2) pixels
    conics: torch.Tensor  # (N, 3) upper triangle (a, b, c) of the inverse 2D covariance
    depths: torch.Tensor  # (N,) camera-space z
    radii: torch.Tensor  # (N,) float pixels; 0 where the Gaussian cannot touch any pixel
    visible: torch.Tensor  # (N,) bool


def project_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    near: float = NEAR_PLANE,
) -> Projection:
    R = viewmat[:3, :3]
    t = viewmat[:3, 3]
    p_cam = means @ R.T + t
    z = p_cam[:, 2]
    in_front = z > near
    # Culled Gaussians still flow through autograd: keep their arithmetic finite.
    z_safe = torch.where(in_front, z, torch.ones_like(z))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    x_n = p_cam[:, 0] / z_safe
    y_n = p_cam[:, 1] / z_safe
    means2d = torch.stack([fx * x_n + cx, fy * y_n + cy], dim=-1)

    # The Jacobian is evaluated at a point clamped to 1.3x the field of view, as 3DGS does,
    # so that Gaussians far off-screen do not blow up.
    lim_x = 1.3 * 0.5 * width / fx
    lim_y = 1.3 * 0.5 * height / fy
    tx = torch.clamp(x_n, -lim_x, lim_x) * z_safe
    ty = torch.clamp(y_n, -lim_y, lim_y) * z_safe
    zero = torch.zeros_like(z_safe)
    J = torch.stack(
        [fx / z_safe, zero, -fx * tx / (z_safe * z_safe), zero, fy / z_safe, -fy * ty / (z_safe * z_safe)],
        dim=-1,
    ).reshape(-1, 2, 3)

    rot = quat_to_rotmat(quats)
    M = rot * scales[:, None, :]  # R·S
    cov3d = M @ M.transpose(1, 2)
    T = J @ R[None]  # (N, 2, 3)
    cov2d = T @ cov3d @ T.transpose(1, 2)
    a = cov2d[:, 0, 0] + LOW_PASS
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + LOW_PASS
    det = (a * c - b * b).clamp_min(1e-12)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)

    # Opacity-aware radius: alpha = o·exp(-½dᵀΣ⁻¹d) >= 1/255 needs |d|² <= 2·λmax·ln(255·o),
    # so pixels beyond it can never contribute and tiles beyond it need no entry.
    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam_max = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.0))
        log_term = torch.log(torch.clamp(opacities.detach() * 255.0, min=1e-12))
        radii = torch.sqrt(2.0 * lam_max * torch.clamp(log_term, min=0.0))
        mx, my = means2d[:, 0].detach(), means2d[:, 1].detach()
        on_screen = (mx + radii > 0) & (mx - radii < width) & (my + radii > 0) & (my - radii < height)
        visible = in_front & (log_term > 0) & on_screen & torch.isfinite(radii)
        radii = torch.where(visible, radii, torch.zeros_like(radii))
    return Projection(means2d=means2d, conics=conics, depths=z, radii=radii, visible=visible)


def tile_grid(width: int, height: int) -> tuple[int, int]:
    return math.ceil(width / TILE), math.ceil(height / TILE)
