"""Image losses and metrics shared by 3DGS training and evaluation (differentiable, torch)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=8)
def _gaussian_window(size: int, sigma: float, channels: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    w2 = torch.outer(g, g).to(dtype=dtype, device=device)
    return w2.expand(channels, 1, size, size).contiguous()


def ssim(img1: torch.Tensor, img2: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of two images (H, W, C) or (B, C, H, W) with values in [0, 1].

    Gaussian 11x11 window, sigma 1.5, zero padding: the form the 3DGS loss uses.
    """
    if img1.dim() == 3:
        img1 = img1.permute(2, 0, 1)[None]
        img2 = img2.permute(2, 0, 1)[None]
    c = img1.shape[1]
    w = _gaussian_window(window, sigma, c, img1.dtype, str(img1.device))
    pad = window // 2
    mu1 = F.conv2d(img1, w, padding=pad, groups=c)
    mu2 = F.conv2d(img2, w, padding=pad, groups=c)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = F.conv2d(img1 * img1, w, padding=pad, groups=c) - mu1_sq
    s2 = F.conv2d(img2 * img2, w, padding=pad, groups=c) - mu2_sq
    s12 = F.conv2d(img1 * img2, w, padding=pad, groups=c) - mu12
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return m.mean()


def psnr(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for images in [0, 1]."""
    mse = torch.mean((img1 - img2) ** 2)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def rgb_loss(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.2) -> torch.Tensor:
    """The 3DGS photometric loss: (1 - w)·L1 + w·(1 - SSIM)."""
    l1 = (pred - target).abs().mean()
    return (1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - ssim(pred, target))
