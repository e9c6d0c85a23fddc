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
    x = torch.movedim(feats, dim, -1)
    if normalize:
        x = F.normalize(x, dim=-1)
        q = F.normalize(q, dim=-1)
        neg = F.normalize(neg, dim=-1)
    pos_sim = torch.einsum("...d,qd->q...", x, q)
    neg_sim = torch.einsum("...d,kd->...k", x, neg).amax(dim=-1)
    return torch.sigmoid(temperature * (pos_sim - neg_sim[None]))[0 if single else slice(None)]
