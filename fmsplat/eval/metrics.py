"""Evaluation metrics: pure functions on arrays, each following a published protocol.

Images and maps are (H, W) (or (H, W, 3) / (D, h, w) where noted), numpy or torch; results are
Python floats / bools / numpy arrays. This module imports nothing from the pipeline above eval
except the shared image losses (fmsplat.gaussians.losses) so that PSNR/SSIM are computed once, and the
query layer's relevancy post-processing (fmsplat.query.segment), so that queries and scores agree.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fmsplat.gaussians.losses import psnr as _psnr
from fmsplat.gaussians.losses import ssim as _ssim

# The 2D post-processing of a relevancy map belongs to the query layer; the protocols score it from there.
from fmsplat.query.segment import (  # noqa: F401  (re-exported: part of this module's API)
    LANGSPLAT_KERNEL,
    LANGSPLAT_MAJORITY,
    LANGSPLAT_THRESHOLD,
    _map2d,
    _np,
    argmax_pixel,
    langsplat_segmentation,
    majority_filter,
    mean_filter,
)


# ---------------------------------------------------------------------------------------------
# 2D localisation (LERF)


def point_in_boxes(x: float, y: float, boxes) -> bool:
    """True when pixel (x, y) lies in any inclusive box [x1, y1, x2, y2] (corners in any order)."""
    b = _np(boxes).astype(np.float64).reshape(-1, 4)
    x_lo, x_hi = np.minimum(b[:, 0], b[:, 2]), np.maximum(b[:, 0], b[:, 2])
    y_lo, y_hi = np.minimum(b[:, 1], b[:, 3]), np.maximum(b[:, 1], b[:, 3])
    return bool(np.any((x >= x_lo) & (x <= x_hi) & (y >= y_lo) & (y <= y_hi)))


def localization_hit(relevancy_map, boxes, smooth_kernel: int | None = None) -> bool:
    """LERF localisation: correct when the argmax pixel of the relevancy map lies inside any
    ground-truth box of the queried category (LERF, Kerr et al. 2023, sec. 5.1).

    `smooth_kernel=30` first applies LangSplat's 30x30 mean filter (their evaluation code takes the
    argmax of the filtered map); None scores the raw map as LERF describes it.
    """
    r = _map2d(relevancy_map, "relevancy_map")
    if smooth_kernel:
        r = mean_filter(r, smooth_kernel)
    x, y = argmax_pixel(r)
    return point_in_boxes(x, y, boxes)


# ---------------------------------------------------------------------------------------------
# 2D segmentation (LangSplat; the mask itself comes from fmsplat.query.segment)


def iou(pred_mask, gt_mask) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    p = _np(pred_mask).astype(bool)
    g = _np(gt_mask).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"iou: mask shapes differ {p.shape} vs {g.shape}")
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else np.count_nonzero(p & g) / union


def pixel_accuracy(pred_mask, gt_mask) -> float:
    """Fraction of pixels where the predicted mask agrees with the ground truth (foreground and
    background alike): the per-query accuracy whose mean LangSplat reports as mAcc."""
    p = _np(pred_mask).astype(bool)
    g = _np(gt_mask).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"pixel_accuracy: mask shapes differ {p.shape} vs {g.shape}")
    return float(np.mean(p == g))


def mean_or_nan(values) -> float:
    """Mean of per-query scores (mIoU, mAcc, localisation accuracy); NaN for no queries."""
    v = np.asarray(list(values), dtype=np.float64)
    return float(v.mean()) if v.size else float("nan")


# ---------------------------------------------------------------------------------------------
# 3D localisation


def distance_to_aabb(points, aabb_min, aabb_max) -> np.ndarray | float:
    """Euclidean distance from point(s) (..., 3) to an axis-aligned box; 0 inside or on it."""
    p = _np(points).astype(np.float64)
    lo = _np(aabb_min).astype(np.float64)
    hi = _np(aabb_max).astype(np.float64)
    if p.shape[-1] != 3 or lo.shape != (3,) or hi.shape != (3,):
        raise ValueError(f"distance_to_aabb: expected (..., 3) points and (3,) corners, got {p.shape}, {lo.shape}, {hi.shape}")
    if np.any(hi < lo):
        raise ValueError(f"distance_to_aabb: box min {lo} exceeds max {hi}")
    outside = np.maximum(lo - p, 0.0) + np.maximum(p - hi, 0.0)
    d = np.linalg.norm(outside, axis=-1)
    return float(d) if d.ndim == 0 else d


def in_aabb(points, aabb_min, aabb_max) -> np.ndarray | bool:
    """Whether point(s) (..., 3) lie in the closed box."""
    d = distance_to_aabb(points, aabb_min, aabb_max)
    return bool(d == 0.0) if np.ndim(d) == 0 else d == 0.0


# ---------------------------------------------------------------------------------------------
# feature fidelity (M3)


def feature_fidelity(pred, teacher, valid=None) -> dict[str, float]:
    """M3's feature metrics (Zou et al. 2025) between a rendered feature map and the teacher's own
    features of the real image, both (D, h, w).

    The prediction is resized (bilinear) to the teacher's grid: the comparison happens at the
    teacher's resolution. Returns `one_minus_cos` (mean over pixels of 1 - cosine) and `mse`
    (per-channel squared error averaged over channels and pixels). `valid` (h, w) optionally
    restricts both to some pixels (e.g. where the teacher is non-zero).
    """
    p = torch.as_tensor(_np(pred), dtype=torch.float64)
    t = torch.as_tensor(_np(teacher), dtype=torch.float64)
    if p.dim() != 3 or t.dim() != 3 or p.shape[0] != t.shape[0]:
        raise ValueError(f"feature_fidelity: expected (D, h, w) maps with equal D, got {tuple(p.shape)}, {tuple(t.shape)}")
    if p.shape[1:] != t.shape[1:]:
        p = F.interpolate(p[None], size=t.shape[1:], mode="bilinear", align_corners=False)[0]
    cos = F.cosine_similarity(p, t, dim=0, eps=1e-12)
    sq = ((p - t) ** 2).mean(dim=0)
    if valid is not None:
        v = torch.as_tensor(_np(valid)).bool()
        if v.shape != t.shape[1:]:
            raise ValueError(f"feature_fidelity: valid mask {tuple(v.shape)} does not match teacher grid {tuple(t.shape[1:])}")
        if not v.any():
            raise ValueError("feature_fidelity: the valid mask selects no pixel")
        cos, sq = cos[v], sq[v]
    return {"one_minus_cos": float((1.0 - cos).mean()), "mse": float(sq.mean())}


# ---------------------------------------------------------------------------------------------
# RGB


def _image_tensor(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(_np(x), dtype=torch.float64)
    if t.dim() != 3 or t.shape[-1] != 3:
        raise ValueError(f"{name} must be (H, W, 3) in [0, 1], got {tuple(t.shape)}")
    return t


def rgb_psnr(pred, target) -> float:
    """PSNR in dB of (H, W, 3) images in [0, 1] (fmsplat.gaussians.losses.psnr)."""
    return float(_psnr(_image_tensor(pred, "pred"), _image_tensor(target, "target")))


def rgb_ssim(pred, target) -> float:
    """SSIM of (H, W, 3) images in [0, 1]: 11x11 Gaussian window, sigma 1.5 (as 3DGS reports it)."""
    return float(_ssim(_image_tensor(pred, "pred"), _image_tensor(target, "target")))
