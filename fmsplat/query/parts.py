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
# Growth never takes a part holding more than this share of the opaque Gaussians (the fox, a close-up,
# is 40 % of its scene's; the tiny room's wall, reading 0.61 for "motorcycle", 65 %).
MAX_OBJECT_SHARE = 0.5
PART_SHARE = 0.25  # "every part": parts weighing at least this share of the heaviest
MIN_PART_GAUSSIANS = 8
# Background planes (background_planes): a plane through at least BACKGROUND_PLANE_SHARE of the opaque
# Gaussians that spans at least BACKGROUND_PLANE_EXTENT of the scene's robust diagonal both ways is a wall,
# floor or table top that growth must not cross. On the fox the wall holds 54 % (extent 0.75 x 0.49) and
# the next plane, a slice through the fox itself, 13 % at 0.54 x 0.27. The generated bench room's walls
# hold 8-17 % each, but as scattered pieces (no sheet: below), and none is taken.
BACKGROUND_PLANE_SHARE = 0.07
BACKGROUND_PLANE_EXTENT = 0.4
SHEET_SHARE = 0.5  # ... and one connected sheet holds at least this share of its Gaussians
# ... and they hug the plane: their RMS distance to it at most FLAT_RMS x the tolerance (a slab cut
# through a solid object fills the band evenly, 1/sqrt(3) = 0.58; the fox's wall 0.34)
FLAT_RMS = 0.45


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


def background_planes(points: np.ndarray, tolerance: float, share: float = BACKGROUND_PLANE_SHARE,
                      extent: float = BACKGROUND_PLANE_EXTENT, max_planes: int = 6, trials: int = 400,
                      seed: int = 0) -> np.ndarray:
    """(K,) bool: the `points` that lie within `tolerance` of a background plane. Planes are found one after
    the other by RANSAC (`trials` random triples scored on a sample, the best refitted by least squares to
    its inliers, which are then set aside); a plane is background when it holds at least `share` of all the
    points, its inliers span at least `extent` of the robust diagonal in both in-plane directions and they
    are one sheet (the largest connected part, linked within `tolerance`, holds SHEET_SHARE of them) that
    hugs the plane (RMS distance at most FLAT_RMS x `tolerance`, where a slab through a solid is 0.58). The
    search stops at the first plane that holds less than `share`, after `max_planes`."""
    pts = np.asarray(points, dtype=np.float64)
    on_plane = np.zeros(len(pts), dtype=bool)
    if len(pts) < 16 or not tolerance > 0:
        return on_plane
    rng = np.random.default_rng(seed)
    diag = robust_diagonal(pts)
    rest = np.arange(len(pts))
    for _ in range(max_planes):
        if len(rest) < max(16, share * len(pts)):
            break
        cloud = pts[rest]
        sample = cloud[rng.choice(len(cloud), min(4000, len(cloud)), replace=False)]
        triples = cloud[rng.integers(0, len(cloud), size=(trials, 3))]
        normals = np.cross(triples[:, 1] - triples[:, 0], triples[:, 2] - triples[:, 0])
        norms = np.linalg.norm(normals, axis=1)
        ok = norms > 1e-12
        if not ok.any():
            break
        normals, anchors = normals[ok] / norms[ok, None], triples[ok, 0]
        offsets = -(normals * anchors).sum(1)
        scores = (np.abs(sample @ normals.T + offsets) < tolerance).sum(0)
        best = int(np.argmax(scores))
        inliers = np.abs(cloud @ normals[best] + offsets[best]) < tolerance
        centre = cloud[inliers].mean(0)  # least-squares refit: the plane of the inliers' smallest spread
        normal = np.linalg.svd(cloud[inliers] - centre, full_matrices=False)[2][2]
        inliers = np.abs((cloud - centre) @ normal) < tolerance
        if inliers.sum() < share * len(pts):
            break
        flat = cloud[inliers] - cloud[inliers].mean(0)
        axes = np.linalg.svd(flat, full_matrices=False)[2][:2]
        spread = np.subtract(*np.percentile(flat @ axes.T, [98, 2], axis=0))
        sheet = connected_parts(cloud[inliers], np.ones(int(inliers.sum())), tolerance)[0]
        rms = float(np.sqrt((((cloud[inliers] - centre) @ normal) ** 2).mean()))
        if ((spread >= extent * diag).all() and len(sheet.members) >= SHEET_SHARE * inliers.sum()
                and rms <= FLAT_RMS * tolerance):
            on_plane[rest[inliers]] = True
        rest = rest[~inliers]
    return on_plane


def nearest_within(points: np.ndarray, anchors: np.ndarray, reach: float) -> np.ndarray:
    """(M,) int64: for each of `points` (M, 3) the index of its nearest anchor (K, 3) when that lies within
    `reach`, else -1."""
    if len(anchors) == 0 or len(points) == 0:
        return np.full(len(points), -1, dtype=np.int64)
    dist, nearest = cKDTree(anchors).query(points, k=1, distance_upper_bound=reach)
    return np.where(np.isfinite(dist), nearest, -1).astype(np.int64)


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


__all__ = ["BACKGROUND_PLANE_EXTENT", "BACKGROUND_PLANE_SHARE", "Component", "GROW_RELATIVE", "MAX_OBJECT_SHARE", "background_planes",
           "nearest_within", "LINK_FACTOR", "LOCATE_RELATIVE", "LINK_NEIGHBOUR", "MIN_PART_GAUSSIANS", "PART_SHARE", "connected_parts", "linking_length",
           "robust_diagonal"]
