"""Plain PyTorch rasterizer: the oracle the tests hold the fast backends to.

It evaluates every (pixel, Gaussian) pair of a block of pixels densely, in depth order,
with the same rules as 3DGS (alpha clamp, 1/255 skip, stop once transmittance would fall
below 1e-4), and lets autograd do the backward. Blocks only skip Gaussians whose
opacity-aware radius cannot reach them, which changes no value.
"""

from __future__ import annotations

import torch

from fmsplat.render.projection import ALPHA_MAX, ALPHA_MIN, T_MIN, Projection

# exp of large negative arguments is slow on CPU; past this the alpha is < 1/255 anyway.
SIGMA_CLAMP = 30.0


def composite_reference(
    proj: Projection, opacities: torch.Tensor, feats: torch.Tensor, width: int, height: int, block: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out (H, W, C), alpha (H, W)) with autograd through every input."""
    n_ch = feats.shape[1]
    idx = torch.nonzero(proj.visible).squeeze(1)
    idx = idx[torch.argsort(proj.depths.detach()[idx], stable=True)]
    means2d, conics = proj.means2d[idx], proj.conics[idx]
    op, fe, radii = opacities[idx], feats[idx], proj.radii[idx]
    rows_out, alpha_rows = [], []
    for y0 in range(0, height, block):
        y1 = min(y0 + block, height)
        row_blocks, row_alpha = [], []
        for x0 in range(0, width, block):
            x1 = min(x0 + block, width)
            with torch.no_grad():
                mx, my = means2d[:, 0], means2d[:, 1]
                near_x = (mx + radii + 1 >= x0) & (mx - radii - 1 <= x1)
                near_y = (my + radii + 1 >= y0) & (my - radii - 1 <= y1)
                sel = torch.nonzero(near_x & near_y).squeeze(1)
            ys, xs = torch.meshgrid(
                torch.arange(y0, y1, dtype=feats.dtype) + 0.5, torch.arange(x0, x1, dtype=feats.dtype) + 0.5, indexing="ij"
            )
            px, py = xs.reshape(-1, 1), ys.reshape(-1, 1)
            if sel.numel() == 0:
                row_blocks.append(torch.zeros(y1 - y0, x1 - x0, n_ch, dtype=feats.dtype))
                row_alpha.append(torch.zeros(y1 - y0, x1 - x0, dtype=feats.dtype))
                continue
            m, cn = means2d[sel], conics[sel]
            dx = px - m[:, 0]
            dy = py - m[:, 1]
            sigma = 0.5 * (cn[:, 0] * dx * dx + cn[:, 2] * dy * dy) + cn[:, 1] * dx * dy
            alpha = torch.clamp(op[sel] * torch.exp(-torch.clamp(sigma, max=SIGMA_CLAMP)), max=ALPHA_MAX)
            alpha = torch.where((alpha >= ALPHA_MIN) & (sigma >= 0), alpha, torch.zeros_like(alpha))
            t_after = torch.cumprod(1.0 - alpha, dim=1)
            t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=1)
            # Transmittance only falls, so "not yet stopped" is a prefix of the depth order.
            keep = (t_after >= T_MIN).to(alpha.dtype)
            w = alpha * t_before * keep
            row_blocks.append((w @ fe[sel]).reshape(y1 - y0, x1 - x0, n_ch))
            row_alpha.append(w.sum(dim=1).reshape(y1 - y0, x1 - x0))
        rows_out.append(torch.cat(row_blocks, dim=1))
        alpha_rows.append(torch.cat(row_alpha, dim=1))
    return torch.cat(rows_out, dim=0), torch.cat(alpha_rows, dim=0)
