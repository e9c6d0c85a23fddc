"""From a relevancy map to an answer in the image: the argmax pixel and the LangSplat mask.

These are the query layer's 2D post-processing steps. The evaluation protocols (fmsplat.eval.metrics)
import them from here, so that a query and its score always use the same procedure.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import uniform_filter

LANGSPLAT_KERNEL = 30
LANGSPLAT_THRESHOLD = 0.4
LANGSPLAT_MAJORITY = 7


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _map2d(x, name: str) -> np.ndarray:
    a = _np(x).astype(np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) map, got shape {a.shape}")
    return a


def argmax_pixel(relevancy_map) -> tuple[int, int]:
    """(x, y) = (column, row) of the highest value; ties go to the first in row-major order."""
    r = _map2d(relevancy_map, "relevancy_map")
    if not np.isfinite(r).all():
        raise ValueError("relevancy_map contains NaN or inf")
    row, col = np.unravel_index(int(np.argmax(r)), r.shape)
    return int(col), int(row)


def mean_filter(image, size: int) -> np.ndarray:
    """size x size box mean with mirrored borders (OpenCV filter2D's default BORDER_REFLECT_101,
    anchor at size // 2), as LangSplat's evaluation applies it."""
    return uniform_filter(_map2d(image, "image"), size=size, mode="mirror")


def majority_filter(mask, size: int = LANGSPLAT_MAJORITY) -> np.ndarray:
    """Each pixel takes the majority value of the size x size window around it (truncated at the
    image border; a tie goes to 0): the clean-up LangSplat applies to its predicted masks."""
    m = _np(mask).astype(np.float64)
    counts = uniform_filter(np.ones_like(m), size=size, mode="constant") * size * size
    ones = uniform_filter(m, size=size, mode="constant") * size * size
    return ones > 0.5 * counts + 1e-9


def langsplat_segmentation(
    relevancy_map,
    kernel: int = LANGSPLAT_KERNEL,
    threshold: float = LANGSPLAT_THRESHOLD,
    majority: int | None = LANGSPLAT_MAJORITY,
) -> np.ndarray:
    """Binary mask from a relevancy map by the LangSplat protocol (Qin et al. 2024, evaluation code):

    1. r' = 0.5 * (mean_filter_30x30(r) + r);
    2. min-max normalise to [0, 1];
    3. rescale to [-1, 1] and clip to [0, 1] (their code does this, so threshold 0.4 there is 0.7
       on the normalised map);
    4. mask = value > threshold (0.4);
    5. majority vote over 7 x 7 windows (their `smooth`; `majority=None` skips it).

    A constant map gives an empty mask.
    """
    r = _map2d(relevancy_map, "relevancy_map")
    r = 0.5 * (mean_filter(r, kernel) + r)
    r = r - r.min()
    r = r / (r.max() + 1e-9)
    r = np.clip(2.0 * r - 1.0, 0.0, 1.0)
    mask = r > threshold
    if majority:
        mask = majority_filter(mask, majority)
    return mask


__all__ = [
    "LANGSPLAT_KERNEL", "LANGSPLAT_MAJORITY", "LANGSPLAT_THRESHOLD", "argmax_pixel", "langsplat_segmentation",
    "majority_filter", "mean_filter",
]
