"""Differentiable Gaussian splatting: one entry point, `rasterize`, three backends.

- ``numba``  CPU tile rasterizer with a hand-written backward (the default on CPU);
- ``gsplat`` gsplat's CUDA kernels, when the tensors are on a CUDA device and gsplat imports;
- ``torch``  the plain PyTorch reference (slow, the oracle of the tests).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np
import torch

from fmsplat.render.projection import Projection, project_gaussians, tile_grid

__all__ = ["RenderResult", "accumulate", "rasterize", "project_gaussians", "available_backends"]


@dataclass
class RenderResult:
    image: torch.Tensor  # (H, W, C)
    alpha: torch.Tensor  # (H, W)
    depth: torch.Tensor  # (H, W) alpha-weighted sum of camera-space depths
    means2d: torch.Tensor  # (N, 2) pixels; its .grad after backward drives densification
    radii: torch.Tensor  # (N,) pixels, 0 for Gaussians that touch no pixel
    backend: str

    @property
    def visible(self) -> torch.Tensor:
        return self.radii > 0

    def expected_depth(self) -> torch.Tensor:
        """Depth normalised by alpha (the surface depth where the view is covered)."""
        return self.depth / self.alpha.clamp_min(1e-6)


def _check_inputs(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if not torch.is_tensor(t):
            raise TypeError(f"rasterize: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.numel() == 0:
            continue
        # min/max propagate NaN and expose inf in one pass without a full-size mask; count only on failure
        lo, hi = torch.aminmax(t.detach())
        if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
            bad = int((~torch.isfinite(t.detach())).sum())
            raise ValueError(f"rasterize: {name} contains {bad} non-finite values (NaN or inf)")


@functools.lru_cache(maxsize=32)
def _tile_order(n_tiles: int) -> np.ndarray:
    # A fixed shuffle spreads dense tiles over threads (prange splits the range in blocks).
    return np.random.default_rng(0).permutation(n_tiles).astype(np.int64)


def _bin(proj: Projection, opacities: torch.Tensor, width: int, height: int):
    from fmsplat.render import numba_kernels as nk

    tiles_x, tiles_y = tile_grid(width, height)
    vis = torch.nonzero(proj.visible).squeeze(1)
    depths = proj.depths.detach()[vis]
    if depths.dtype == torch.float32 and not depths.is_cuda:  # the same order, a quarter of the time
        order = vis.to(torch.int64).numpy()[nk.argsort_stable(depths.contiguous().numpy())]
    else:
        order = vis[torch.argsort(depths, stable=True)].to(torch.int64).numpy()
    means2d, conics = (t.detach().to(torch.float32).contiguous().numpy() for t in (proj.means2d, proj.conics))
    opacities = opacities.detach().to(torch.float32).contiguous().numpy()
    offsets, ids, pixel_box = nk.bin_gaussians(means2d, conics, opacities, order, width, height, tiles_x, tiles_y)
    return offsets, ids, pixel_box, tiles_x, _tile_order(tiles_x * tiles_y)


class _NumbaProjection(torch.autograd.Function):
    """projection.project_gaussians as two numba kernels with a hand-written backward: no autograd graph
    over every Gaussian (bench/README.md, "One 3DGS step"). Camera gradients are not computed."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmat, K, width, height):
        from fmsplat.render import projection_kernels as pk

        arrays = [t.detach().to(torch.float32).contiguous().numpy() for t in (means, quats, scales)]
        view = viewmat.detach().to(torch.float32).contiguous().numpy()
        k = K.detach().to(torch.float32)
        intrinsics = np.array([k[0, 0], k[1, 1], k[0, 2], k[1, 2]], dtype=np.float32)
        means2d, conics, depths, radii, visible = pk.project_forward(
            *arrays, opacities.detach().to(torch.float32).contiguous().numpy(), view, intrinsics, width, height)
        ctx.saved = (arrays, view, intrinsics, width, height, means.dtype)
        out = [torch.from_numpy(a).to(means.dtype) for a in (means2d, conics, depths)]
        radii_t, visible_t = torch.from_numpy(radii).to(means.dtype), torch.from_numpy(visible)
        ctx.mark_non_differentiable(radii_t, visible_t)
        return (*out, radii_t, visible_t)

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_depths, _g_radii, _g_visible):
        from fmsplat.render import projection_kernels as pk

        arrays, view, intrinsics, width, height, dtype = ctx.saved
        n = arrays[0].shape[0]

        def arr(g, shape):
            return np.zeros(shape, np.float32) if g is None else g.detach().to(torch.float32).contiguous().numpy()

        d_means, d_quats, d_scales = pk.project_backward(
            *arrays, view, intrinsics, width, height, arr(g_means2d, (n, 2)), arr(g_conics, (n, 3)), arr(g_depths, (n,)))
        return (torch.from_numpy(d_means).to(dtype), torch.from_numpy(d_quats).to(dtype),
                torch.from_numpy(d_scales).to(dtype), None, None, None, None, None)


def _project_numba(means, quats, scales, opacities, viewmat, K, width, height) -> Projection:
    """project_gaussians through _NumbaProjection; the torch function where a camera needs gradients."""
    if viewmat.requires_grad or K.requires_grad or means.is_cuda or means.dtype != torch.float32:
        return project_gaussians(means, quats, scales, opacities, viewmat, K, width, height)
    means2d, conics, depths, radii, visible = _NumbaProjection.apply(means, quats, scales, opacities, viewmat, K,
                                                                     width, height)
    return Projection(means2d=means2d, conics=conics, depths=depths, radii=radii, visible=visible)


class _NumbaComposite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, feats, binning, width, height):
        from fmsplat.render import numba_kernels as nk

        offsets, ids, pixel_box, tiles_x, order = binning
        arrays = [t.detach().to(torch.float32).contiguous().numpy() for t in (means2d, conics, opacities, feats)]
        out, t_final, n_used = nk.rasterize_forward(
            offsets, ids, *arrays, pixel_box, width, height, tiles_x, order
        )
        ctx.binning = binning
        ctx.size = (width, height)
        ctx.arrays = arrays
        ctx.t_final, ctx.n_used = t_final, n_used
        ctx.dtypes = [t.dtype for t in (means2d, conics, opacities, feats)]
        alpha = torch.from_numpy(1.0 - t_final)
        return torch.from_numpy(out).to(feats.dtype), alpha.to(feats.dtype)

    @staticmethod
    def backward(ctx, grad_out, grad_alpha):
        from fmsplat.render import numba_kernels as nk

        offsets, ids, pixel_box, tiles_x, order = ctx.binning
        width, height = ctx.size
        if grad_out is None:
            grad_out = torch.zeros(height, width, ctx.arrays[3].shape[1])
        if grad_alpha is None:
            grad_alpha = torch.zeros(height, width)
        g_out = grad_out.detach().to(torch.float32).contiguous().numpy()
        g_alpha = grad_alpha.detach().to(torch.float32).contiguous().numpy()
        buf_feats, buf_geom = nk.rasterize_backward(
            offsets, ids, *ctx.arrays, pixel_box, width, height, tiles_x, order,
            ctx.t_final, ctx.n_used, g_out, g_alpha, numba.get_num_threads(),
        )
        d_feats = torch.from_numpy(buf_feats).sum(0)
        d_geom = torch.from_numpy(buf_geom).sum(0)
        dt = ctx.dtypes
        return (
            d_geom[:, 0:2].to(dt[0]),
            d_geom[:, 2:5].to(dt[1]),
            d_geom[:, 5].to(dt[2]),
            d_feats.to(dt[3]),
            None, None, None,
        )


def available_backends() -> list[str]:
    names = ["numba", "torch"]
    if torch.cuda.is_available():
        try:
            import gsplat  # noqa: F401

            names.insert(0, "gsplat")
        except ImportError:
            pass
    return names


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    background: torch.Tensor | float | None = None,
    backend: str = "auto",
) -> RenderResult:
    """Render N Gaussians with C channels each into an (H, W, C) image.

    Inputs are *activated*: `scales` (N,3) positive, `opacities` (N,) in [0, 1], `quats` (N,4)
    wxyz (normalised here), `colors` (N, C) for any C. `viewmat` is world-to-camera (OpenCV),
    `K` the 3x3 intrinsics. Gradients flow to means, quats, scales, opacities and colors, and
    `result.means2d.grad` holds the screen-space gradient after backward (densification).
    """
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"rasterize: image size must be positive, got {width}x{height}")
    if colors.dim() == 1:
        colors = colors[:, None]
    n = means.shape[0]
    expected = {"means": (means, (n, 3)), "quats": (quats, (n, 4)), "scales": (scales, (n, 3)), "opacities": (opacities, (n,))}
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"rasterize: {name} must have shape {shape}, got {tuple(t.shape)}")
    if colors.shape[0] != n:
        raise ValueError(f"rasterize: colors must have shape ({n}, C), got {tuple(colors.shape)}")
    _check_inputs(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmat=viewmat, K=K)
    if (scales.detach() < 0).any():
        raise ValueError("rasterize: scales must be activated (positive); pass exp(log_scales)")

    if backend == "auto":
        backend = "gsplat" if means.is_cuda and "gsplat" in available_backends() else "numba"
    if backend == "gsplat":
        from fmsplat.render.gsplat_backend import rasterize_gsplat

        return rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background)
    if backend not in ("numba", "torch"):
        raise ValueError(f"rasterize: unknown backend {backend!r}; choose from {available_backends()}")

    viewmat = viewmat.to(means.dtype)
    K = K.to(means.dtype)
    project = _project_numba if backend == "numba" else project_gaussians
    proj = project(means, quats, scales, opacities, viewmat, K, width, height)
    means2d = proj.means2d
    if means2d.requires_grad:
        means2d.retain_grad()
    # Depth travels as one more channel, so both backends composite it with the colours.
    feats = torch.cat([colors, proj.depths[:, None].to(colors.dtype)], dim=1)
    if backend == "numba":
        binning = _bin(proj, opacities, width, height)
        out, alpha = _NumbaComposite.apply(means2d, proj.conics, opacities, feats, binning, width, height)
    else:
        from fmsplat.render.reference import composite_reference

        out, alpha = composite_reference(proj, opacities, feats, width, height)
    image, depth = out[..., :-1], out[..., -1]
    if background is not None:
        bg = torch.as_tensor(background, dtype=image.dtype).reshape(-1)
        image = image + (1.0 - alpha)[..., None] * bg
    return RenderResult(image=image, alpha=alpha, depth=depth, means2d=means2d, radii=proj.radii, backend=backend)


def accumulate(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    signal: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The adjoint of `rasterize` for per-Gaussian channels: for an (H, W, C) `signal` over the image,
    returns (sums (N, C), weights (N,)) where sums[g] = sum over pixels p of w_gp * signal[p] and
    weights[g] = sum_p w_gp, w_gp being Gaussian g's blending weight at p (alpha x transmittance).
    Rendering channels x gives image = sum_g w_gp x_g, so sums = d<image, signal>/dx: a 2D map lifted
    onto the Gaussians with no optimisation (sums / weights is each Gaussian's weighted mean of it).
    Geometry is read, never differentiated. Backends as `rasterize`; numba runs a forward-only kernel."""
    if signal.dim() != 3:
        raise ValueError(f"accumulate: signal must be (H, W, C), got shape {tuple(signal.shape)}")
    height, width = int(signal.shape[0]), int(signal.shape[1])
    if backend == "auto":
        backend = "gsplat" if means.is_cuda and "gsplat" in available_backends() else "numba"
    geometry = [t.detach() for t in (means, quats, scales, opacities)]
    if backend != "numba":  # autograd through the chosen rasterizer: exact, slower
        ones = signal.new_ones(height, width, 1)
        channels = torch.zeros(means.shape[0], signal.shape[2] + 1, dtype=signal.dtype, device=signal.device,
                               requires_grad=True)
        with torch.enable_grad():
            res = rasterize(*geometry, channels, viewmat, K, width, height, backend=backend)
            (grad,) = torch.autograd.grad((res.image * torch.cat([signal.detach(), ones], dim=2)).sum(), channels)
        return grad[:, :-1], grad[:, -1]
    from fmsplat.render import numba_kernels as nk

    _check_inputs(means=geometry[0], quats=geometry[1], scales=geometry[2], opacities=geometry[3], signal=signal)
    means, quats, scales, opacities = geometry
    with torch.no_grad():
        proj = _project_numba(means, quats, scales, opacities, viewmat.to(means.dtype), K.to(means.dtype), width, height)
    offsets, ids, pixel_box, tiles_x, order = _bin(proj, opacities, width, height)
    arrays = [t.detach().to(torch.float32).contiguous().numpy() for t in (proj.means2d, proj.conics, opacities)]
    buf = nk.accumulate_weights(offsets, ids, *arrays, pixel_box, width, height, tiles_x, order,
                                signal.detach().to(torch.float32).contiguous().numpy(), numba.get_num_threads())
    out = torch.from_numpy(buf).sum(0)
    return out[:, :-1].to(signal.dtype), out[:, -1].to(signal.dtype)
