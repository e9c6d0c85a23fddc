"""CUDA backend: gsplat's fused kernels behind the same `rasterize` contract.

gsplat is an optional extra (`pip install fmsplat[cuda]`); it compiles its kernels on first
use (needs nvcc). Its conventions match ours: OpenCV cameras, world-to-camera viewmats, pixel
centres at +0.5, the 0.3 px low-pass (`eps2d`), 16x16 tiles, 1/255 alpha cut-off, and in
"RGB+D" mode the accumulated (alpha-weighted, not normalised) z-depth as the last channel.

Channels: gsplat's kernels exist for {1..5, 8, 9, 16, 17, 32, 33, ...} channels and it pads any
other count up to the next power of two. `rasterization(channel_chunk=32)` slices the colours
(plus the depth channel) into chunks of at most 32 and rasterizes each against one shared
projection and tile list, so C channels cost ceil((C+1)/32) kernel passes with little padding,
and the projected means (`meta["means2d"]`) receive the gradient of every chunk.

Not run on this project's CPU-only machines: reviewed against gsplat's documented API
(`gsplat.rasterization`, versions 1.0 to 1.5: radii is (C, N) before 1.5 and (C, N, 2) after).
"""

from __future__ import annotations

import torch

CHANNEL_CHUNK = 32


def _screen_grad_proxy(full: torch.Tensor) -> torch.Tensor:
    """A leaf (N, 2) copy of gsplat's (1, N, 2) projected means whose `.grad` receives the
    gradient of `full` after backward (a view taken after rendering would not be in the graph)."""
    proxy = full.detach()[0].clone()
    if full.requires_grad:
        proxy.requires_grad_(True)

        def copy_grad(grad: torch.Tensor) -> None:
            g = grad.detach()[0]
            proxy.grad = g.clone() if proxy.grad is None else proxy.grad + g

        full.register_hook(copy_grad)
    return proxy


def rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height, background=None):
    try:
        from gsplat import rasterization
    except ImportError as exc:  # pragma: no cover - exercised only where CUDA exists
        raise RuntimeError(
            "rasterize(backend='gsplat') needs the optional gsplat package: pip install 'fmsplat[cuda]'"
        ) from exc
    from fmsplat.render import RenderResult

    if not means.is_cuda:
        raise ValueError("rasterize(backend='gsplat') needs CUDA tensors; use backend='numba' on the CPU")
    dtype = means.dtype
    out, alphas, meta = rasterization(
        means=means.float(), quats=quats.float(), scales=scales.float(), opacities=opacities.float(),
        colors=colors.float(), viewmats=viewmat.to(means.device).float()[None], Ks=K.to(means.device).float()[None],
        width=width, height=height, near_plane=0.01, eps2d=0.3, packed=False, render_mode="RGB+D",
        channel_chunk=CHANNEL_CHUNK, rasterize_mode="classic",
    )
    out = out[0]  # (H, W, C + 1); the depth is the last channel
    image, depth = out[..., :-1].to(dtype), out[..., -1].to(dtype)
    alpha = alphas[0, ..., 0].to(dtype)
    if background is not None:
        bg = torch.as_tensor(background, dtype=image.dtype, device=image.device).reshape(-1)
        image = image + (1.0 - alpha)[..., None] * bg
    radii = meta["radii"][0]
    if radii.dim() == 2:  # gsplat >= 1.5: per-axis radii
        radii = radii.max(dim=-1).values
    return RenderResult(
        image=image, alpha=alpha, depth=depth, means2d=_screen_grad_proxy(meta["means2d"]),
        radii=radii.to(dtype), backend="gsplat",
    )
