"""fmsplat.gaussians: the Gaussian model, spherical harmonics and 3DGS-layout PLY I/O."""

from fmsplat.gaussians.model import GaussianModel
from fmsplat.gaussians.ply import PlyFormatError, read_gaussian_ply, write_gaussian_ply
from fmsplat.gaussians.sh import (
    SH_C0,
    SH_C1,
    SH_C2,
    SH_C3,
    eval_sh,
    num_sh_coeffs,
    rgb_to_sh,
    sh_basis,
    sh_colors,
    sh_degree_from_coeffs,
    sh_to_rgb,
)

__all__ = [
    "GaussianModel",
    "PlyFormatError",
    "SH_C0",
    "SH_C1",
    "SH_C2",
    "SH_C3",
    "eval_sh",
    "num_sh_coeffs",
    "read_gaussian_ply",
    "rgb_to_sh",
    "sh_basis",
    "sh_colors",
    "sh_degree_from_coeffs",
    "sh_to_rgb",
    "write_gaussian_ply",
]
