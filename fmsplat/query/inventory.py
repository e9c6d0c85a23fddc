"""What is in the scene? The Gaussians split into objects without a phrase, each named by the concepts
that best describe it: `inventory(locator)` -> `Inventory`.

    from fmsplat.query import SceneQuery
    inv = SceneQuery.open("runs/fox").inventory()
    for obj in inv.objects:                 # objects first (heaviest first), then background
        print(obj.index, obj.name, obj.point, obj.count)

How: the opaque Gaussians' unit features are grouped by spherical k-means (`clusters` groups; a fixed
seed, so the same field gives the same inventory), and each group is split into spatially connected
parts (fmsplat.query.parts, the linking length of the 3D answers): a group of similar features is often
several objects, and one object is one connected piece. Parts of too few Gaussians or too little weight
are dropped, and so are parts scattered among other things (less than MIN_PURITY of the opaque
Gaussians inside their box are their own: features that carry no information make only such parts).
Adjacent parts where one reads as the other (its nearest concept among the other's 5 nearest) and
whose mean features agree (cosine >= MERGE_COSINE) are then joined, the closest pair first (`merge_adjacent`): k-means cuts an object along
its feature gradients. An object can still be
listed as two pieces where its parts read as different things.

Each object's name is the vocabulary concept nearest its mean feature (fmsplat.query.presence.describe),
kept only when its Gaussians agree: at least NAME_AGREEMENT of them have that concept among their own 5
nearest. Otherwise it is an "unnamed object" with its box: the embedded vocabulary (ImageNet's classes
for the default model) has no word for it, and a wrong word would be worse than none. An object whose
box spans BACKGROUND_EXTENT of the scene's robust diagonal, or that is a large flat sheet, is marked
background (walls, floors, sky). Its presence is the phrase presence of its nearest concept at its
point, as a query for that word would report it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from fmsplat.errors import UserInputError
from fmsplat.query.locate import Locator, Part, densest_point, index_mask
from fmsplat.query.parts import connected_parts
from fmsplat.query.presence import Concept, Presence, describe, presence

INVENTORY_CLUSTERS = 32  # feature groups before the spatial split (bench/README.md, "Inventory")
MIN_OBJECT_GAUSSIANS = 30
MIN_OBJECT_WEIGHT = 0.002  # share of the scene's total opacity
NAME_AGREEMENT = 0.5  # share of an object's Gaussians with its name among their own 5 nearest concepts
MERGE_COSINE = 0.8  # adjacent pieces whose mean features agree this well are one object (the fox's pieces: 0.74-0.91)
MIN_PURITY = 0.3  # share of the opaque Gaussians inside an object's box that are its own
BACKGROUND_EXTENT = 0.5  # box diagonal, as a share of the scene's robust diagonal
FLAT_RATIO = 0.05  # thinnest / widest principal extent of a flat sheet ...
FLAT_EXTENT = 0.3  # ... whose widest extent is at least this share of the scene's diagonal
UNNAMED = "unnamed object"
BEST_VIEWS = 3


@dataclass
class InventoryObject:
    """One object of the scene (or a piece of background), found without a phrase."""

    index: int  # 1-based, in the inventory's order
    name: str  # the nearest concept, or UNNAMED
    concepts: list[Concept]  # the 5 nearest concepts of its mean feature, best first
    agreement: float  # share of its Gaussians that have `concepts[0]` among their own 5 nearest
    purity: float  # share of the opaque Gaussians inside its box that are its own
    background: bool
    point: np.ndarray  # (3,) densest point (opacity weighted)
    box_min: np.ndarray  # 2nd-98th percentile box of its Gaussians' centres
    box_max: np.ndarray
    indices: torch.Tensor  # indices of its Gaussians in the field's Gaussians
    weight: float  # sum of opacity
    presence: Presence  # of its nearest concept (its name, when named) at its point
    views: list[int] = field(default_factory=list)  # dataset views that see it best, best first

    @property
    def count(self) -> int:
        return int(len(self.indices))

    def mask(self, n: int) -> torch.Tensor:
        return index_mask(self.indices, n)

    def as_part(self) -> Part:
        """The object as one part of a 3D answer (fmsplat.query.locate.Part)."""
        return Part(point=self.point, box_min=self.box_min, box_max=self.box_max, indices=self.indices,
                    weight=self.weight, presence=self.presence)

    @property
    def named(self) -> bool:
        return self.name != UNNAMED

    def to_json(self) -> dict:
        return {"index": self.index, "name": self.name, "background": self.background, "named": self.named,
                "agreement": round(self.agreement, 4), "purity": round(self.purity, 4),
                "concepts": [c.to_json() for c in self.concepts], "point": [float(v) for v in self.point],
                "box": {"min": [float(v) for v in self.box_min], "max": [float(v) for v in self.box_max]},
                "size": [float(v) for v in self.box_max - self.box_min], "gaussians": self.count,
                "weight": round(self.weight, 4),
                "presence": self.presence.to_json(), "views": self.views}


@dataclass
class Inventory:
    space: str
    objects: list[InventoryObject]  # objects (heaviest first), then background
    clusters: int
    link: float
    n_gaussians: int
    seconds: float

    def grow(self, mask: torch.Tensor, share: float = 0.5) -> torch.Tensor:
        """`mask` (N,) joined with every object (not background) that holds at least `share` of the masked
        Gaussians or has at least `share` of its own among them: a phrase's answer, often one surface of
        the object, grown to the objects it falls in."""
        mask = torch.as_tensor(mask, dtype=torch.bool)
        out = mask.clone()
        total = max(int(mask.sum()), 1)
        for o in self.objects:
            if o.background:
                continue
            common = int(mask[o.indices].sum())
            if common >= share * total or common >= share * o.count:
                out[o.indices] = True
        return out

    def object(self, index: int) -> InventoryObject:
        """The object numbered `index` (1-based, as printed)."""
        if not 1 <= index <= len(self.objects):
            raise UserInputError(f"the inventory has {len(self.objects)} objects (1-{len(self.objects)}), not {index}")
        return self.objects[index - 1]

    def to_json(self) -> dict:
        return {"space": self.space, "clusters": self.clusters, "link": self.link, "gaussians": self.n_gaussians,
                "seconds": round(self.seconds, 3), "objects": [o.to_json() for o in self.objects]}


def spherical_kmeans(x: torch.Tensor, k: int, iterations: int = 25, sample: int = 20000, seed: int = 0) -> torch.Tensor:
    """(N,) cluster of each unit row of `x` (N, D): k-means on the cosine, centres from greedy k-means++
    seeding (Arthur and Vassilvitskii 2007, with 2 + log k draws a step) on a sample of `sample` rows (a
    fixed generator: the same rows give the same groups)."""
    n = len(x)
    k = max(1, min(int(k), n))
    gen = torch.Generator().manual_seed(seed)
    s = x[torch.randperm(n, generator=gen)[:sample]] if n > sample else x
    centres = s[torch.randint(len(s), (1,), generator=gen)]
    trials = 2 + int(np.log(k))
    d = (1.0 - (s @ centres.T)[:, 0]).clamp_min(0)
    for _ in range(1, k):  # greedy k-means++: of a few draws far (in cosine) from the chosen centres, the
        if float(d.sum()) <= 0:  # one that leaves the least distance in all
            break
        cand = s[torch.multinomial(d, trials, replacement=True, generator=gen)]
        after = torch.minimum(d[None, :], (1.0 - cand @ s.T).clamp_min(0))  # (trials, n)
        best = int(after.sum(dim=1).argmin())
        centres, d = torch.cat([centres, cand[best:best + 1]]), after[best]
    for _ in range(iterations):
        labels = (s @ centres.T).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, labels, s)
        empty = sums.norm(dim=1) == 0
        centres = torch.where(empty[:, None], centres, F.normalize(sums, dim=1))
    return torch.cat([(c @ centres.T).argmax(dim=1) for c in x.split(65536)])


def _nearest_concepts(feats: torch.Tensor, vocab_emb: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(N, k) indices of the k vocabulary concepts nearest each unit feature (in chunks: N x M is large)."""
    return torch.cat([torch.topk(c @ vocab_emb.T, min(k, len(vocab_emb)), dim=1).indices for c in feats.split(16384)])


def box_corners(lo, hi) -> np.ndarray:
    """(8, 3) corners of the axis-aligned box [lo, hi]."""
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def _is_background(pts: np.ndarray, lo: np.ndarray, hi: np.ndarray, diag: float) -> bool:
    """A box spanning BACKGROUND_EXTENT of the scene, or a large flat sheet (lo, hi: the points' box)."""
    if np.linalg.norm(hi - lo) >= BACKGROUND_EXTENT * diag:
        return True
    if len(pts) < 4:
        return False
    spread = np.sqrt(np.maximum(np.linalg.eigvalsh(np.cov((pts - pts.mean(0)).T)), 0.0))  # ascending
    return spread[-1] * 4 >= FLAT_EXTENT * diag and spread[0] <= FLAT_RATIO * spread[-1]


def best_views(cameras, box_min, box_max, n: int = BEST_VIEWS) -> list[int]:
    """Views whose image holds the box's centre, by the share of the image its projected box fills
    (clipped to the image), largest first."""
    corners = box_corners(box_min, box_max)
    centre = 0.5 * (np.asarray(box_min) + np.asarray(box_max))
    scores = []
    for i, cam in enumerate(cameras):
        R, t = cam.viewmat[:3, :3], cam.viewmat[:3, 3]
        c = R @ centre + t
        if c[2] <= 1e-6:
            continue
        u, v, _ = cam.K @ (c / c[2])
        if not (0 <= u < cam.width and 0 <= v < cam.height):
            continue
        pc = corners @ R.T + t
        pc = pc[pc[:, 2] > 1e-6]
        uv = (pc @ cam.K.T)[:, :2] / pc[:, 2:3]
        x0, y0 = np.clip(uv.min(0), 0, [cam.width, cam.height])
        x1, y1 = np.clip(uv.max(0), 0, [cam.width, cam.height])
        scores.append(((x1 - x0) * (y1 - y0) / (cam.width * cam.height), i))
    scores.sort(key=lambda s: -s[0])
    return [i for _, i in scores[:n]]


def inventory(locator: Locator, cameras=(), clusters: int = INVENTORY_CLUSTERS, min_opacity: float = 0.1) -> Inventory:
    """The objects of the field of `locator`, found without a phrase (see the module docstring); `cameras`:
    the dataset's, to name the views that see each object best."""
    if not isinstance(clusters, int) or clusters < 1:
        raise UserInputError(f"clusters must be a whole number >= 1, got {clusters!r}")
    t0 = time.perf_counter()
    keep, pts, link, diag = locator.opaque_geometry(min_opacity)
    feats = locator.unit_features()[keep]
    opac = torch.sigmoid(locator.field.gaussians.opacities.detach().float())[keep].double()
    vocab = locator.core.vocabulary
    nearest = _nearest_concepts(feats, vocab.embeddings)  # (K, 5)
    groups = spherical_kmeans(feats, clusters)
    total = float(opac.sum())
    pieces = []  # local indices into keep, one tensor per piece
    for g in range(int(groups.max()) + 1):
        members = torch.nonzero(groups == g).squeeze(1)
        if len(members) < MIN_OBJECT_GAUSSIANS:
            continue
        for comp in connected_parts(pts[members.numpy()], opac[members].numpy(), link):
            local = members[torch.as_tensor(comp.members)]
            if len(local) >= MIN_OBJECT_GAUSSIANS and comp.weight >= MIN_OBJECT_WEIGHT * total:
                pieces.append(local)
    pieces = merge_adjacent(pieces, pts, feats, opac, link, vocab.embeddings)
    objects = []
    for local in pieces:
        ppts = pts[local.numpy()]
        lo, hi = np.percentile(ppts, [2, 98], axis=0)
        in_box = int(((pts >= lo) & (pts <= hi)).all(axis=1).sum())
        purity = float(((ppts >= lo) & (ppts <= hi)).all(axis=1).sum()) / max(in_box, 1)
        if purity < MIN_PURITY:  # a scatter among other things, not a piece of its own
            continue
        w = opac[local]
        mean = F.normalize((w[:, None].float() * feats[local]).sum(0), dim=0)
        best = int(torch.argmax(vocab.embeddings @ mean))  # of the merged object
        concepts = describe(mean, vocab, 5)
        agreement = float((nearest[local] == best).any(dim=1).double().mean())
        name = vocab.names[best] if agreement >= NAME_AGREEMENT else UNNAMED
        top = torch.topk(w, min(1024, len(w))).indices  # the density step is quadratic
        point = densest_point(torch.as_tensor(ppts)[top], w[top], bandwidth=max(link, 0.02 * diag)).numpy()
        pres = presence(locator.place_feature(point, min_opacity=min_opacity), vocab.embeddings[best], vocab)
        objects.append(InventoryObject(index=0, name=name, concepts=concepts, agreement=agreement, purity=purity,
                                       background=bool(_is_background(ppts, lo, hi, diag)), point=point, box_min=lo,
                                       box_max=hi,
                                       indices=keep[local], weight=float(w.sum()), presence=pres,
                                       views=best_views(cameras, lo, hi)))
    objects.sort(key=lambda o: (o.background, -o.weight))
    for i, o in enumerate(objects, 1):
        o.index = i
    return Inventory(space=locator.core.space, objects=objects, clusters=clusters, link=float(link),
                     n_gaussians=len(locator.field.gaussians), seconds=time.perf_counter() - t0)


def _adjacent_pairs(pieces: list, pts: np.ndarray, link: float) -> set[tuple[int, int]]:
    """Pairs of pieces with Gaussians in one cell of a grid of `link`-sized cells (about: within a linking
    length of each other), without pairing Gaussians one by one (trained Gaussians come in dense clumps)."""
    idx = np.concatenate([p.numpy() for p in pieces])
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(pieces)])
    cells = np.floor((pts[idx] - pts[idx].min(0)) / link).astype(np.int64)
    _, cell = np.unique(cells, axis=0, return_inverse=True)
    pairs = np.unique(np.stack([cell.reshape(-1), owner], axis=1), axis=0)  # (cell, piece), sorted by cell
    pairs_out: set[tuple[int, int]] = set()
    starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
    ends = np.r_[starts[1:], len(pairs)]
    for s0, e0 in zip(starts, ends):
        if e0 - s0 > 1:
            owners = pairs[s0:e0, 1]
            pairs_out.update((int(a), int(b)) for i, a in enumerate(owners) for b in owners[i + 1:])
    return pairs_out


def merge_adjacent(pieces: list, pts: np.ndarray, feats: torch.Tensor, opac: torch.Tensor, link: float,
                   vocab_emb: torch.Tensor, cosine: float | None = None) -> list:
    """Agglomerate adjacent pieces: of the adjacent pairs where one's nearest concept (of `vocab_emb`) is
    among the other's 5 nearest, the one whose mean features (opacity weighted) agree best is joined,
    while that agreement is at least `cosine` (MERGE_COSINE); a joined piece's mean is its Gaussians'
    mean. k-means cuts an object along its feature gradients (the fox's head, back and tail read as
    different dog breeds); joining by a centroid's similarity, not a single pair's, keeps an object and
    the wall it touches apart."""
    cosine = MERGE_COSINE if cosine is None else cosine
    if len(pieces) < 2:
        return list(pieces)
    sums = [(opac[p, None].float() * feats[p]).sum(0) for p in pieces]
    adjacent = _adjacent_pairs(pieces, pts, link)
    members = {i: [i] for i in range(len(pieces))}

    def concepts(i):  # (nearest concept, the 5 nearest)
        top = torch.topk(vocab_emb @ F.normalize(sums[i], dim=0), min(5, len(vocab_emb))).indices.tolist()
        return top[0], set(top)

    named = {i: concepts(i) for i in members}
    while True:
        best, pair = -2.0, None
        for a, b in adjacent:
            if named[a][0] not in named[b][1] and named[b][0] not in named[a][1]:
                continue  # they read as different things: the cat and the lamp beside it stay apart
            c = float(F.normalize(sums[a], dim=0) @ F.normalize(sums[b], dim=0))
            if c > best:
                best, pair = c, (a, b)
        if pair is None or best < cosine:
            break
        a, b = pair
        sums[a] = sums[a] + sums[b]
        members[a] += members.pop(b)
        named[a] = concepts(a)
        renamed = ((a if x == b else x, a if y == b else y) for x, y in adjacent if {x, y} != {a, b})
        adjacent = {(min(x, y), max(x, y)) for x, y in renamed if x != y}
    return [torch.cat([pieces[j] for j in group]) for group in members.values()]


__all__ = ["BACKGROUND_EXTENT", "INVENTORY_CLUSTERS", "Inventory", "InventoryObject", "NAME_AGREEMENT", "UNNAMED",
           "best_views", "box_corners", "inventory", "merge_adjacent", "spherical_kmeans"]
