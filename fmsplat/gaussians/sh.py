"""Real spherical harmonics up to degree 3, with the basis and constants of the original 3DGS code.

Coefficients are stored (N, K, 3): K = (degree + 1)^2 coefficients per colour channel, index 0 the
DC term. Colour = eval_sh(...) + 0.5, the offset 3DGS applies so that zero coefficients mean grey.
"""

from __future__ import annotations

import torch

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)

MAX_SH_DEGREE = 3


def num_sh_coeffs(degree: int) -> int:
    """Coefficients per channel for an SH expansion of `degree`."""
    return (degree + 1) ** 2


def sh_degree_from_coeffs(k: int) -> int:
    """Inverse of num_sh_coeffs; raises ValueError when `k` is not a square of 1..4."""
    for degree in range(MAX_SH_DEGREE + 1):
        if num_sh_coeffs(degree) == k:
            return degree
    raise ValueError(f"{k} SH coefficients per channel is not (degree+1)^2 for a degree 0..{MAX_SH_DEGREE}")


def eval_sh(degree: int, sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Evaluate SH of `degree` for unit view directions.

    sh: (..., K, C) with K >= (degree + 1)^2 (higher coefficients are ignored); dirs: (..., 3),
    expected to be unit vectors (as in 3DGS, no normalisation here). Returns (..., C), without
    the +0.5 offset. Differentiable in both sh and dirs.
    """
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    if sh.shape[-2] < num_sh_coeffs(degree):
        raise ValueError(f"degree {degree} needs {num_sh_coeffs(degree)} coefficients, sh has {sh.shape[-2]}")
    if dirs.shape[-1] != 3:
        raise ValueError(f"dirs must end in 3, got shape {tuple(dirs.shape)}")

    result = SH_C0 * sh[..., 0, :]
    if degree == 0:
        return result
    # Keep a trailing axis so each basis value broadcasts over the colour channels.
    x, y, z = dirs[..., 0:1], dirs[..., 1:2], dirs[..., 2:3]
    result = result - SH_C1 * y * sh[..., 1, :] + SH_C1 * z * sh[..., 2, :] - SH_C1 * x * sh[..., 3, :]
    if degree == 1:
        return result
    xx, yy, zz = x * x, y * y, z * z
    xy, yz, xz = x * y, y * z, x * z
    result = (
        result
        + SH_C2[0] * xy * sh[..., 4, :]
        + SH_C2[1] * yz * sh[..., 5, :]
        + SH_C2[2] * (2.0 * zz - xx - yy) * sh[..., 6, :]
        + SH_C2[3] * xz * sh[..., 7, :]
        + SH_C2[4] * (xx - yy) * sh[..., 8, :]
    )
    if degree == 2:
        return result
    result = (
        result
        + SH_C3[0] * y * (3.0 * xx - yy) * sh[..., 9, :]
        + SH_C3[1] * xy * z * sh[..., 10, :]
        + SH_C3[2] * y * (4.0 * zz - xx - yy) * sh[..., 11, :]
        + SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[..., 12, :]
        + SH_C3[4] * x * (4.0 * zz - xx - yy) * sh[..., 13, :]
        + SH_C3[5] * z * (xx - yy) * sh[..., 14, :]
        + SH_C3[6] * x * (xx - 3.0 * yy) * sh[..., 15, :]
    )
    return result


def rgb_to_sh(rgb):
    """DC coefficient whose colour (sh·C0 + 0.5) is `rgb`. Works on tensors and arrays."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh):
    """Colour of a DC coefficient: sh·C0 + 0.5. Works on tensors and arrays."""
    return sh * SH_C0 + 0.5


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """(N, (degree+1)^2) real SH basis of unit directions, the terms of eval_sh:
    colour = Σ_k basis[:, k] · sh[:, k]. Contracting against a basis costs one (N, K, 3) gradient
    instead of one per coefficient (eval_sh indexes sh per term), which matters at 10^5 Gaussians."""
    x, y, z = dirs.unbind(-1)
    cols = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        cols += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        cols += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2.0 * zz - xx - yy), SH_C2[3] * x * z,
                 SH_C2[4] * (xx - yy)]
    if degree >= 3:
        cols += [SH_C3[0] * y * (3.0 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4.0 * zz - xx - yy),
                 SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy), SH_C3[4] * x * (4.0 * zz - xx - yy),
                 SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3.0 * yy)]
    return torch.stack(cols, dim=-1)


def sh_colors(sh0: torch.Tensor, shN: torch.Tensor, degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """3DGS colours (N, 3) = max(0, SH(dirs) + 0.5) from the DC term sh0 (N, 1, 3) and the rest
    shN (N, K-1, 3), using the first (degree+1)^2 coefficients."""
    if degree > 0 and shN.shape[1] < num_sh_coeffs(degree) - 1:
        raise ValueError(f"SH degree {degree} needs {num_sh_coeffs(degree) - 1} higher coefficients, "
                         f"have {shN.shape[1]}")
    colors = SH_C0 * sh0[:, 0]
    if degree > 0:
        basis = sh_basis(degree, dirs)[:, 1:]
        colors = colors + torch.bmm(basis[:, None, :], shN[:, : basis.shape[1]])[:, 0]
    return (colors + 0.5).clamp_min(0.0)

