"""Colour renders of a Gaussian model: view-dependent SH colours, then `rasterize`.

The one RGB path of the package: the 3DGS trainer renders its parameter dict through it, every
picture (panels, videos, the server's and viewer's renders) renders a GaussianModel through it.
"""

from __future__ import annotations

import numpy as np
import torch

from fmsplat.gaussians import GaussianModel
from fmsplat.gaussians.sh_kernels import view_colors
from fmsplat.render import RenderResult, rasterize


def render_rgb(model_or_params, camera, sh_degree: int, background=(0.0, 0.0, 0.0),
               backend: str = "auto") -> RenderResult:
    """Render `camera` from a GaussianModel or a trainer's parameter dict (GaussianModel.param_tensors
    keys), with the colours of SH degree `sh_degree` seen from the camera centre (differentiable
    when the parameters require gradients)."""
    p = model_or_params.param_tensors() if isinstance(model_or_params, GaussianModel) else model_or_params
    means = p["means"]
    device, dtype = means.device, means.dtype
    center = torch.as_tensor(camera.center, dtype=dtype, device=device)
    colors = view_colors(p["sh0"], p["shN"], sh_degree, means, center)
    return rasterize(
        means, p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]), colors,
        camera.viewmat_tensor(device, dtype), camera.K_tensor(device, dtype), camera.width, camera.height,
        background=torch.as_tensor(background, dtype=dtype, device=device), backend=backend,
    )


def render_image(model: GaussianModel, camera, background=(0.0, 0.0, 0.0)) -> np.ndarray:
    """`model` seen by `camera` at its full SH degree: float32 (H, W, 3) in [0, 1]."""
    with torch.no_grad():
        res = render_rgb(model, camera, model.sh_degree, background)
    return res.image.clamp(0.0, 1.0).cpu().numpy()


__all__ = ["render_image", "render_rgb"]
