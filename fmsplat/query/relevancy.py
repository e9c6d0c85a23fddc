"""LERF relevancy: how much more a feature agrees with a query than with canonical negatives.

LERF (Kerr et al. 2023), for a feature phi, query embedding q and each canonical negative n_i::

    p_i = softmax(10 * [phi . q, phi . n_i])[0]
    relevancy = min_i p_i

Two-way softmax is a sigmoid of the difference, so relevancy = sigmoid(10 * (phi . q - max_i phi . n_i)):
computed that way, it is exact and stable. A value above 0.5 means the query beats every negative.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fmsplat.fields.base import squared_norms

CANONICAL_NEGATIVES: tuple[str, ...] = ("object", "things", "stuff", "texture")
LERF_TEMPERATURE = 10.0


def relevancy(
    features: torch.Tensor | np.ndarray,
    query: torch.Tensor | np.ndarray,
    negatives: torch.Tensor | np.ndarray,
    dim: int = 0,
    temperature: float = LERF_TEMPERATURE,
    normalize: bool = True,
) -> torch.Tensor:
    """LERF relevancy of every feature vector for one or more queries.

    features: tensor whose `dim` axis holds D-dimensional features, e.g. a (D, H, W) map (dim=0)
    or (N, D) rows (dim=-1). query: (D,) or (Q, D). negatives: (K, D), K >= 1 (embeddings of
    CANONICAL_NEGATIVES, or others). With `normalize`, features and embeddings are L2-normalised
    first (LERF compares unit vectors; a zero feature then scores sigmoid(0) = 0.5).

    Returns the features' shape without `dim`, with a leading Q axis when `query` is 2-D.
    """
    feats = torch.as_tensor(features)
    q = torch.as_tensor(query, dtype=feats.dtype, device=feats.device)
    neg = torch.as_tensor(negatives, dtype=feats.dtype, device=feats.device)
    if not feats.is_floating_point():
        raise TypeError(f"relevancy: features must be floating point, got {feats.dtype}")
    single = q.dim() == 1
    q = q.reshape(1, -1) if single else q
    if neg.dim() != 2 or neg.shape[0] == 0:
        raise ValueError(f"relevancy: negatives must be (K, D) with K >= 1, got {tuple(neg.shape)}")
    d = feats.shape[dim]
    if q.shape[1] != d or neg.shape[1] != d:
        raise ValueError(
            f"relevancy: feature dim {d} does not match query {tuple(q.shape)} / negatives {tuple(neg.shape)}"
        )
    # One matmul of the texts against the features as they lie (a (D, P) view for a (D, H, W) map),
    # divided by the feature norms: the same cosines as normalising every feature first, without
    # writing a normalised copy of the map (for a 1280-d 256x256 map that copy was 4/5 of the time).
    x = torch.movedim(feats, dim, 0)
    shape = x.shape[1:]
    flat = x.reshape(d, -1)
    texts = torch.cat([q, neg])
    if normalize:
        texts = F.normalize(texts, dim=-1)
    dots = (texts @ flat).reshape(-1, *shape)  # (Q + K, ...)
    sq = squared_norms(flat).reshape(shape) if normalize else None
    rel = relevancy_from_dots(dots, sq, q.shape[0], temperature)
    return rel[0] if single else rel


def relevancy_from_dots(dots: torch.Tensor, squared_norm: torch.Tensor | None, n_queries: int,
                        temperature: float = LERF_TEMPERATURE) -> torch.Tensor:
    """LERF relevancy from the dot products of *unit* texts with (unnormalised) features.

    dots: (Q + K, ...) — the Q queries first, then the K negatives; squared_norm: (...) the features'
    squared norms (None: the dots are already the similarities). Returns (Q, ...). This is what a
    field can compute without decoding its features to the model's full dimension
    (FeatureField.render_text_dots)."""
    cos = dots if squared_norm is None else dots / squared_norm.clamp_min(0).sqrt().clamp_min(1e-12)
    return torch.sigmoid(temperature * (cos[:n_queries] - cos[n_queries:].amax(dim=0)[None]))


def relevancy_upsampled(
    features: torch.Tensor,
    size: tuple[int, int],
    query: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = LERF_TEMPERATURE,
    chunk: int = 64,
) -> torch.Tensor:
    """LERF relevancy of a (D, h, w) feature map bilinearly upsampled to `size` = (H, W), without
    holding the (D, H, W) upsampled map: channels are upsampled `chunk` at a time and only their
    dot products with the texts and their squared norms are kept. Equals
    `relevancy(interpolate(features, size), query, negatives)` (L2-normalised, dim 0).

    query: (D,) or (Q, D); returns (H, W) or (Q, H, W).
    """
    feats = torch.as_tensor(features)
    if feats.dim() != 3 or not feats.is_floating_point():
        raise ValueError(f"relevancy_upsampled: features must be a float (D, h, w) map, got {tuple(feats.shape)} {feats.dtype}")
    q = torch.as_tensor(query, dtype=torch.float32, device=feats.device)
    neg = torch.as_tensor(negatives, dtype=torch.float32, device=feats.device)
    single = q.dim() == 1
    q = q.reshape(1, -1) if single else q
    d = feats.shape[0]
    if neg.dim() != 2 or neg.shape[0] == 0 or q.shape[1] != d or neg.shape[1] != d:
        raise ValueError(f"relevancy_upsampled: feature dim {d}, query {tuple(q.shape)}, negatives {tuple(neg.shape)}")
    texts = F.normalize(torch.cat([q, neg]), dim=-1)  # (Q + K, D)
    H, W = int(size[0]), int(size[1])
    if tuple(feats.shape[1:]) == (H, W):  # nothing to upsample: one pass
        flat = feats.reshape(d, -1).float()
        dots = (texts @ flat).reshape(-1, H, W)
        sq = squared_norms(flat).reshape(H, W)
        chunks = range(0)
    else:
        dots = torch.zeros(texts.shape[0], H, W, device=feats.device)
        sq = torch.zeros(H, W, device=feats.device)
        chunks = range(0, d, max(1, int(chunk)))
    for c in chunks:
        part = feats[c:c + chunk].float()
        if tuple(part.shape[1:]) != (H, W):
            part = F.interpolate(part[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        dots += torch.einsum("chw,tc->thw", part, texts[:, c:c + chunk])
        sq += part.square().sum(0)
    rel = relevancy_from_dots(dots, sq, q.shape[0], temperature)
    return rel[0] if single else rel
