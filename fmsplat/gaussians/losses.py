"""Image losses and metrics shared by 3DGS training and evaluation (differentiable, torch)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=8)
def _gaussian_taps(size: int, sigma: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Per-channel convolution of (1, C, H, W) with the 2D window outer(taps, taps), zero padded: as two
    1D passes (the window is separable; 2k instead of k² multiply-adds a pixel)."""
    c, k = x.shape[1], taps.shape[0]
    x = F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), padding=(k // 2, 0), groups=c)
    return F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), padding=(0, k // 2), groups=c)


def ssim(img1: torch.Tensor, img2: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of two images (H, W, C) or (B, C, H, W) with values in [0, 1].

    Gaussian 11x11 window, sigma 1.5, zero padding: the form the 3DGS loss uses. The five local
    moments are blurred in one batched separable convolution.
    """
    if img1.dim() == 3:
        img1 = img1.permute(2, 0, 1)[None]
        img2 = img2.permute(2, 0, 1)[None]
    b, c = img1.shape[:2]
    taps = _gaussian_taps(window, sigma, img1.dtype, str(img1.device))
    stacked = torch.cat([img1, img2, img1 * img1, img2 * img2, img1 * img2], dim=1)
    moments = _blur(stacked.reshape(1, b * 5 * c, *img1.shape[2:]), taps).reshape(b, 5, c, *img1.shape[2:])
    mu1, mu2, e11, e22, e12 = moments.unbind(1)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = e11 - mu1_sq
    s2 = e22 - mu2_sq
    s12 = e12 - mu12
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
