"""The extractor protocol shared by every foundation model, and the helpers around it.

An extractor turns images into dense feature maps in its own joint space:

- ``key``: stable, filesystem-safe string naming the model *and* every setting that changes its
  output; it names the feature-cache folder, so two extractors with equal keys must agree.
- ``dim``: channel count D of its features.
- ``encode_images(images) -> (B, D, h, w)``: images are float in [0, 1], either (B, 3, H, W)
  (channels first, the canonical layout) or (B, H, W, 3) (channels last, as datasets return
  them); a single image without the batch axis is accepted too. Conversion happens inside.

A language-aligned extractor (``language_aligned = True``) also has

- ``encode_text(texts) -> (T, D)``: text embeddings in the same space as the dense features;
- ``encode_pooled(images) -> (B, D)``: one embedding per whole image (used by the FMGS pyramid);

and in every such space similarity is the cosine of L2-normalised vectors
(:func:`cosine_similarity`), which is what the query layer computes between a rendered feature and
a text embedding.
"""

from __future__ import annotations

import re
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from fmsplat.errors import FmsplatError


class ModelUnavailableError(FmsplatError, RuntimeError):
    """Weights or configuration of a foundation model could not be found or loaded."""


@runtime_checkable
class Extractor(Protocol):
    key: str
    dim: int
    language_aligned: bool

    def encode_images(self, images) -> torch.Tensor: ...


@runtime_checkable
class LanguageExtractor(Extractor, Protocol):
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor: ...

    def encode_pooled(self, images) -> torch.Tensor: ...


def safe_key(*parts: object) -> str:
    """Join parts into a filesystem-safe cache key (letters, digits, '.', '_', '-', '+', '=')."""
    text = "__".join(str(p) for p in parts)
    return re.sub(r"[^A-Za-z0-9._+=-]+", "-", text).strip("-")


def to_bchw(images, name: str = "images") -> torch.Tensor:
    """Return images as a float32 (B, 3, H, W) tensor, checking layout, dtype and range.

    Accepts torch tensors or numpy arrays, (B, 3, H, W) or (B, H, W, 3), or one image without the
    batch axis. A layout with 3 in both candidate positions is read as channels first.
    """
    if isinstance(images, np.ndarray):
        # torch cannot share a read-only array (e.g. a cached dataset image): copy those
        images = torch.from_numpy(np.ascontiguousarray(images) if images.flags.writeable else np.array(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a torch tensor or numpy array, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(
            f"{name}: expected float images in [0, 1], got dtype {images.dtype} "
            "(divide 8-bit images by 255 first)"
        )
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"{name}: expected (B, 3, H, W) or (B, H, W, 3), got shape {tuple(images.shape)}")
    if images.shape[1] != 3:
        if images.shape[-1] != 3:
            raise ValueError(f"{name}: no axis of size 3 for RGB in shape {tuple(images.shape)}")
        images = images.permute(0, 3, 1, 2)
    images = images.float()
    if images.numel():
        lo, hi = float(images.amin()), float(images.amax())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"{name}: values must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]")
    return images.contiguous()


def cosine_similarity(features: torch.Tensor, text: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Cosine between dense features and text embeddings.

    features: (..., D, ...) with channels on `dim` (default: (B, D, h, w)); text: (T, D).
    Returns the features' shape with the channel axis replaced by T.
    """
    feats = F.normalize(features.float(), dim=dim)
    txt = F.normalize(text.float(), dim=-1)
    moved = feats.movedim(dim, -1)
    return (moved @ txt.T).movedim(-1, dim)


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W), antialiased when shrinking; a no-op at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrink)
