"""Numba kernels of the view-dependent colour (sh.py's `sh_colors` of the unit directions from a camera
centre) and its hand-written backward to the coefficients and the means: one pass over the Gaussians
instead of a torch graph of ~40 tensor operations over all of them (bench/README.md, "One 3DGS step").
tests/test_train.py checks both against torch's autograd of sh.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from fmsplat.gaussians.sh import SH_C0, SH_C1, SH_C2, SH_C3, num_sh_coeffs, sh_colors

# The basis is evaluated in float64 (every constant and direction a float64): one type in its tuple,
# which numba then indexes like an array.
DIR_MIN = 1e-12
C0 = float(SH_C0)
C1 = float(SH_C1)
K2 = tuple(float(c) for c in SH_C2)
K3 = tuple(float(c) for c in SH_C3)


@njit(cache=True, inline="always")
def _basis(x, y, z):
    """The 15 non-constant basis values of sh.sh_basis (degree 3), as a homogeneous tuple."""
    xx, yy, zz = x * x, y * y, z * z
    return (-C1 * y, C1 * z, -C1 * x,
            K2[0] * x * y, K2[1] * y * z, K2[2] * (2 * zz - xx - yy), K2[3] * x * z, K2[4] * (xx - yy),
            K3[0] * y * (3 * xx - yy), K3[1] * x * y * z, K3[2] * y * (4 * zz - xx - yy),
            K3[3] * z * (2 * zz - 3 * xx - 3 * yy), K3[4] * x * (4 * zz - xx - yy), K3[5] * z * (xx - yy),
            K3[6] * x * (xx - 3 * yy))


@njit(cache=True, inline="always")
def _basis_grad(x, y, z, g):
    """d/d(x, y, z) of Σ_k g[k]·basis_k, the basis of `_basis` (g: its 15 weights, zero past the degree)."""
    xx, yy, zz = x * x, y * y, z * z
    gx = (-C1 * g[2] + K2[0] * y * g[3] - 2 * K2[2] * x * g[5] + K2[3] * z * g[6] + 2 * K2[4] * x * g[7]
          + 6 * K3[0] * x * y * g[8] + K3[1] * y * z * g[9] - 2 * K3[2] * x * y * g[10] - 6 * K3[3] * x * z * g[11]
          + K3[4] * (4 * zz - 3 * xx - yy) * g[12] + 2 * K3[5] * x * z * g[13] + 3 * K3[6] * (xx - yy) * g[14])
    gy = (-C1 * g[0] + K2[0] * x * g[3] + K2[1] * z * g[4] - 2 * K2[2] * y * g[5] - 2 * K2[4] * y * g[7]
          + 3 * K3[0] * (xx - yy) * g[8] + K3[1] * x * z * g[9] + K3[2] * (4 * zz - xx - 3 * yy) * g[10]
          - 6 * K3[3] * y * z * g[11] - 2 * K3[4] * x * y * g[12] - 2 * K3[5] * y * z * g[13]
          - 6 * K3[6] * x * y * g[14])
    gz = (C1 * g[1] + K2[1] * y * g[4] + 4 * K2[2] * z * g[5] + K2[3] * x * g[6] + K3[1] * x * y * g[9]
          + 8 * K3[2] * y * z * g[10] + K3[3] * (6 * zz - 3 * xx - 3 * yy) * g[11] + 8 * K3[4] * x * z * g[12]
          + K3[5] * (xx - yy) * g[13])
    return gx, gy, gz


@njit(cache=True, inline="always")
def _direction(means, center, i):
    dx = np.float64(means[i, 0]) - center[0]
    dy = np.float64(means[i, 1]) - center[1]
    dz = np.float64(means[i, 2]) - center[2]
    norm = math.sqrt(dx * dx + dy * dy + dz * dz)
    n = max(norm, DIR_MIN)
    return dx / n, dy / n, dz / n, n, norm >= DIR_MIN


@njit(parallel=True, cache=True)
def colors_forward(means, center, sh0, shN, degree):
    """(N, 3) colours max(0, C0·sh0 + Σ_k basis_k(dir)·shN[k] + 0.5), dir the unit vector from `center`
    to each mean, with the first (degree+1)²-1 rows of shN (N, K-1, 3)."""
    n = means.shape[0]
    k_used = (degree + 1) * (degree + 1) - 1
    out = np.empty((n, 3), dtype=np.float32)
    for i in prange(n):
        x, y, z, _, _ = _direction(means, center, i)
        basis = _basis(x, y, z)
        for c in range(3):
            v = C0 * sh0[i, 0, c]
            for k in range(k_used):
                v += basis[k] * shN[i, k, c]
            out[i, c] = max(v + 0.5, 0.0)
    return out


@njit(parallel=True, cache=True)
def colors_backward(means, center, sh0, shN, degree, grad):
    """d(sh0 (N,1,3), shN (N,K-1,3), means (N,3)) from d(colours) `grad` (N, 3)."""
    n = means.shape[0]
    k_used = (degree + 1) * (degree + 1) - 1
    d_sh0 = np.zeros(sh0.shape, dtype=np.float32)
    d_shN = np.zeros(shN.shape, dtype=np.float32)
    d_means = np.zeros((n, 3), dtype=np.float32)
    weights = np.zeros((n, 15), dtype=np.float64)  # per Gaussian: d/d(basis_k), no allocation in the loop
    for i in prange(n):
        x, y, z, norm, free = _direction(means, center, i)
        basis = _basis(x, y, z)
        g0 = 0.0
        g1 = 0.0
        g2 = 0.0
        for c in range(3):
            v = C0 * sh0[i, 0, c]
            for k in range(k_used):
                v += basis[k] * shN[i, k, c]
            g = np.float64(grad[i, c]) if v + 0.5 >= 0.0 else 0.0  # clamp_min passes the gradient at 0
            if c == 0:
                g0 = g
            elif c == 1:
                g1 = g
            else:
                g2 = g
            d_sh0[i, 0, c] = C0 * g
            for k in range(k_used):
                d_shN[i, k, c] = basis[k] * g
        if degree == 0:
            continue
        wb = weights[i]
        for k in range(k_used):
            wb[k] = shN[i, k, 0] * g0 + shN[i, k, 1] * g1 + shN[i, k, 2] * g2
        gx, gy, gz = _basis_grad(x, y, z, wb)
        if free:  # d/d(means) through dir = d / |d|
            dot = x * gx + y * gy + z * gz
            gx, gy, gz = gx - x * dot, gy - y * dot, gz - z * dot
        d_means[i, 0] = gx / norm
        d_means[i, 1] = gy / norm
        d_means[i, 2] = gz / norm
    return d_sh0, d_shN, d_means


class _ViewColors(torch.autograd.Function):
    """the kernels above as an autograd function: one numba pass forward and one backward."""

    @staticmethod
    def forward(ctx, sh0, shN, means, center, degree):
        arrays = [t.detach().contiguous().numpy() for t in (means, sh0, shN)]
        c = center.detach().to(torch.float64).numpy()
        ctx.saved = (arrays, c, degree)
        return torch.from_numpy(colors_forward(arrays[0], c, arrays[1], arrays[2], degree))

    @staticmethod
    def backward(ctx, grad):
        (means, sh0, shN), c, degree = ctx.saved
        d_sh0, d_shN, d_means = colors_backward(means, c, sh0, shN, degree,
                                                           grad.detach().to(torch.float32).contiguous().numpy())
        return torch.from_numpy(d_sh0), torch.from_numpy(d_shN), torch.from_numpy(d_means), None, None


def view_colors(sh0: torch.Tensor, shN: torch.Tensor, degree: int, means: torch.Tensor,
                center: torch.Tensor) -> torch.Tensor:
    """`sh_colors` seen from `center` (3,): the unit directions from it to the means (N, 3), differentiable
    in sh0, shN and means. CPU float32 runs the numba kernels (no autograd graph over the Gaussians);
    anything else the torch functions of sh.py."""
    if degree > 0 and shN.shape[1] < num_sh_coeffs(degree) - 1:
        raise ValueError(f"SH degree {degree} needs {num_sh_coeffs(degree) - 1} higher coefficients, "
                         f"have {shN.shape[1]}")
    if all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (sh0, shN, means)):
        return _ViewColors.apply(sh0, shN, means, center, int(degree))
    dirs = means - center
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return sh_colors(sh0, shN, degree, dirs)
