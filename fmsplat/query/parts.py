"""The object as one piece: spatially connected parts of the Gaussians that match a query.

A threshold over the whole scene selects every Gaussian that resembles the phrase, wherever it is
(on the fox it spanned the room). Here the Gaussians above the cut are linked when their centres lie
within a linking length of each other (a k-d tree, scipy), and the connected components are the
candidate objects, ranked by their weight (sum of opacity x relevancy). The answer is the heaviest
part; "every part" keeps those whose weight is a fair share of the heaviest.

The linking length follows the scene's own sampling: a multiple of the median distance from an opaque
Gaussian to its 8th nearest neighbour (a surface's Gaussians sit about that far apart; two objects
usually far more), floored at a small fraction of the scene's size. Not the nearest neighbour: trained
Gaussians come in tight clumps (on the fox, half of them have a twin within 1 cm while the surface
between clumps is sampled every 8 cm), and a clump's own spacing would cut one object into hundreds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

LINK_FACTOR = 2.0  # linking length = LINK_FACTOR x median distance to the LINK_NEIGHBOUR-th neighbour
LINK_NEIGHBOUR = 8
MIN_LINK_FRACTION = 0.005  # ... and at least this fraction of the scene's robust diagonal
# Candidate cut of the 3D answer (Locator.locate): 0.8 of the way from the lowest to the highest
# relevancy. On the bench room it put 7 of 8 points in their boxes with a median box IoU of 0.25,
# against 6 of 8 and 0.04 at LangSplat's 0.7, and gave the fox alone rather than the fox and the
# wallpaper around it (bench/README.md, "Answers a user can trust").
LOCATE_RELATIVE = 0.8
# Lower cut of Locator.grow (hysteresis from the answer's Gaussians): on the fox it took the answer's 3,937
# Gaussians to 8,044 (0.6: 7,001; 0.4: 8,168, as the 0.5 floor of the relevancy then holds).
GROW_RELATIVE = 0.5
PART_SHARE = 0.25  # "every part": parts weighing at least this share of the heaviest
MIN_PART_GAUSSIANS = 8


def robust_diagonal(points: np.ndarray) -> float:
    """Diagonal of the 2nd-98th percentile box of `points` (robust to floaters)."""
    if len(points) < 2:
        return 1.0
    lo, hi = np.percentile(points, [2, 98], axis=0)
    return max(float(np.linalg.norm(hi - lo)), 1e-6)


def linking_length(points: np.ndarray, factor: float = LINK_FACTOR, neighbour: int = LINK_NEIGHBOUR,
                   sample: int = 20000, seed: int = 0) -> float:
    """`factor` x the median distance from a point to its `neighbour`-th nearest neighbour among `points`
    (a sample of them for large scenes), floored at MIN_LINK_FRACTION of the robust diagonal."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 2:
        return 1.0
    tree = cKDTree(pts)
    idx = np.random.default_rng(seed).choice(len(pts), min(sample, len(pts)), replace=False)
    k = min(neighbour, len(pts) - 1)
    d, _ = tree.query(pts[idx], k=k + 1)
    spacing = float(np.median(d[:, k]))
    return max(factor * spacing, MIN_LINK_FRACTION * robust_diagonal(pts))


@dataclass
class Component:
    members: np.ndarray  # indices into the candidate array given to `connected_parts`
    weight: float


def connected_parts(points: np.ndarray, weights: np.ndarray, link: float, exact: bool = False) -> list[Component]:
    """Connected components of `points` (K, 3) linked within `link`, heaviest first.

    Trained Gaussians come in dense clumps, where every point has hundreds of others within `link`, so
    linking the points pairwise costs millions of pairs. Instead (unless `exact`) the points are binned
    into cells of link / 2 (all of a cell's points lie within 0.87 link of each other) and the occupied
    cells' centres are linked within `link`: the same parts up to a cell's width, in milliseconds."""
    pts = np.asarray(points, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if len(pts) == 0:
        return []
    if not link > 0:
        raise ValueError(f"connected_parts: linking length must be positive, got {link}")
    if exact:
        nodes, inverse = pts, np.arange(len(pts))
    else:
        cell = 0.5 * link
        keys = np.floor((pts - pts.min(0)) / cell).astype(np.int64)
        cells, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        nodes = (cells + 0.5) * cell
    pairs = cKDTree(nodes).query_pairs(link * (1 + 1e-9), output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(nodes), len(nodes)))
    _, node_labels = connected_components(graph, directed=False)
    _, labels = np.unique(node_labels[inverse], return_inverse=True)
    labels = labels.reshape(-1)
    n = int(labels.max()) + 1
    totals = np.bincount(labels, weights=w, minlength=n)
    order = np.argsort(-totals, kind="stable")
    members = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[members], np.arange(n + 1))
    return [Component(members=members[starts[c]:starts[c + 1]], weight=float(totals[c])) for c in order]


__all__ = ["Component", "GROW_RELATIVE", "LINK_FACTOR", "LOCATE_RELATIVE", "LINK_NEIGHBOUR", "MIN_PART_GAUSSIANS", "PART_SHARE", "connected_parts", "linking_length",
           "robust_diagonal"]
