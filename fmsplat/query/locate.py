"""The 3D answer to a phrase, one per scene (not per view): `Locator.locate` -> `Answer`.

    from fmsplat.query import Locator, QueryCore
    locator = Locator(QueryCore(field))
    a = locator.locate("espresso cup")       # Answer: found, presence, point, parts (box, Gaussians)

The LERF relevancy of every Gaussian's decoded feature; the opaque Gaussians above a cut (at least 0.5,
"better than the negatives", and `relative` of the way up the scene's range) are linked into spatially
connected parts (fmsplat.query.parts); the heaviest part (opacity x relevancy) is the object, its densest
point the 3D point, its Gaussians the selection and the exported PLY, its box the extent. `all_parts=True`
keeps every part of a fair weight (plurals: "the chairs"). Each part says whether the phrase is *present*
there (fmsplat.query.presence: does the phrase describe that place about as well as the concepts that
best describe it?). "What is here?" (`describe_point`) reads the same place features.

A locator caches the field's normalised per-Gaussian features and the opaque geometry: build a new one
(or call `reset()`) after changing the field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
import numpy as np
import torch

from fmsplat.errors import UserInputError
from fmsplat.fields.base import FeatureField, FieldError
from fmsplat.query.core import QueryCore
from fmsplat.query.parts import (GROW_RELATIVE, LOCATE_RELATIVE, MAX_OBJECT_SHARE, MIN_PART_GAUSSIANS, PART_SHARE,
                                 background_planes, connected_parts, linking_length, nearest_within, robust_diagonal)
from fmsplat.query.presence import Concept, Presence, describe, presence


def densest_point(points: torch.Tensor, weights: torch.Tensor, bandwidth: float, steps: int = 5) -> torch.Tensor:
    """Mode of the weighted Gaussian-kernel density of `points` (K, 3): start at the point of highest
    density among them, then `steps` mean-shift updates. Returns (3,) float64."""
    p = points.double()
    w = weights.double().clamp_min(0)
    if len(p) == 0:
        raise ValueError("densest_point: no points")
    inv = 1.0 / (2.0 * bandwidth * bandwidth)
    density = (torch.exp(-torch.cdist(p, p).square() * inv) * w[None]).sum(1)
    x = p[int(density.argmax())]
    for _ in range(steps):
        k = torch.exp(-(p - x).square().sum(1) * inv) * w
        x = (k[:, None] * p).sum(0) / k.sum().clamp_min(1e-300)
    return x


def index_mask(indices: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) bool, True at `indices`."""
    m = torch.zeros(n, dtype=torch.bool)
    m[indices] = True
    return m


@dataclass
class Selection:
    """Gaussians selected for a query: `mask` (N,) bool, the relevancy cut used, how many."""

    mask: torch.Tensor
    cutoff: float
    count: int
    relevancy: torch.Tensor  # (N,) per-Gaussian relevancy

    def to_json(self) -> dict:
        return {"count": self.count, "cutoff": self.cutoff}


@dataclass
class Part:
    """One spatially connected piece of the scene that matches a query."""

    point: np.ndarray  # (3,) densest point of the part (opacity x relevancy)
    box_min: np.ndarray  # (3,) axis-aligned box of its Gaussians' centres (2nd-98th percentiles: a few
    box_max: np.ndarray  #  stray Gaussians at the rim do not stretch it)
    indices: torch.Tensor  # (count,) indices of its Gaussians
    weight: float  # sum of opacity x relevancy
    presence: Presence

    @property
    def count(self) -> int:
        return int(len(self.indices))

    def mask(self, n: int) -> torch.Tensor:
        return index_mask(self.indices, n)

    def to_json(self) -> dict:
        return {"found": self.presence.found, "point": [float(v) for v in self.point],
                "box": {"min": [float(v) for v in self.box_min], "max": [float(v) for v in self.box_max]},
                "gaussians": self.count, "weight": round(self.weight, 4), "presence": self.presence.to_json()}


@dataclass
class Answer:
    """The 3D answer to a phrase, one per scene: its parts (best first), whether it is present."""

    text: str
    space: str
    parts: list[Part]
    relevancy: torch.Tensor  # (N,) per-Gaussian LERF relevancy
    cutoff: float  # relevancy cut of the candidate Gaussians
    link: float  # linking length of the parts (scene units)
    n_gaussians: int
    timing_ms: dict[str, float] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return bool(self.parts) and self.parts[0].presence.found

    @property
    def presence(self) -> Presence | None:
        return self.parts[0].presence if self.parts else None

    @property
    def point(self) -> np.ndarray | None:
        return self.parts[0].point if self.parts else None

    @property
    def selection(self) -> "Selection":
        """All parts' Gaussians as one Selection (what the PLY export writes)."""
        mask = torch.zeros(self.n_gaussians, dtype=torch.bool)
        for p in self.parts:
            mask[p.indices] = True
        return Selection(mask=mask, cutoff=self.cutoff, count=int(mask.sum()), relevancy=self.relevancy)

    def to_json(self) -> dict:
        best = self.presence
        return {"text": self.text, "space": self.space, "found": self.found,
                "score": None if best is None else round(best.score, 4),
                "point": None if self.point is None else [float(v) for v in self.point],
                "parts": [p.to_json() for p in self.parts], "cutoff": round(self.cutoff, 4),
                "link": self.link, "timing_ms": {k: round(v, 3) for k, v in self.timing_ms.items()}}


class Locator:
    """The 3D answers of one QueryCore (field, space, negatives), with the per-Gaussian caches they need."""

    def __init__(self, core: QueryCore) -> None:
        self.core = core
        self.reset()

    @property
    def field(self) -> FeatureField:
        return self.core.field

    def reset(self) -> None:
        """Forget the cached per-Gaussian features and geometry (after the field changed)."""
        self._gauss: torch.Tensor | None = None
        self._neg_gauss: torch.Tensor | None = None
        self._geometry_key = None
        self._planes_key = None
        self._anchors_key = None

    def _gaussian_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._gauss is None:
            g = self.field.gaussian_features(self.core.space).detach().float()
            n = len(self.field.gaussians)
            if g.shape != (n, self.core.spec.dim):
                raise FieldError(f"{self.field.method}.gaussian_features('{self.core.space}') has shape {tuple(g.shape)}, "
                                 f"expected ({n}, {self.core.spec.dim})")
            self._gauss = torch.nn.functional.normalize(g, dim=-1)
            neg = torch.nn.functional.normalize(self.core.negative_embeddings, dim=-1)
            self._neg_gauss = (self._gauss @ neg.T).amax(dim=1)
        return self._gauss, self._neg_gauss

    def unit_features(self) -> torch.Tensor:
        """(N, D) unit feature of every Gaussian in this core's space (cached)."""
        return self._gaussian_cache()[0]

    def opaque_geometry(self, min_opacity: float = 0.1):
        """(indices of the Gaussians with opacity >= `min_opacity`, their centres (K, 3) float64, the linking
        length of their parts, the scene's robust diagonal); cached."""
        return self._opaque_geometry(min_opacity)

    def gaussian_relevancy(self, text: str) -> torch.Tensor:
        """(N,) LERF relevancy of every Gaussian's decoded feature for `text`."""
        g, neg_max = self._gaussian_cache()
        q = torch.nn.functional.normalize(self.core.embed([text]), dim=-1)[0]
        return torch.sigmoid(self.core.temperature * (g @ q - neg_max))

    def _opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.field.gaussians.opacities.detach().float())

    def _opaque_geometry(self, min_opacity: float):
        """(indices of the opaque Gaussians, their centres as float64 numpy, linking length, scene diagonal),
        cached: they depend on the geometry only."""
        key = ("geometry", float(min_opacity))
        if self._geometry_key != key:
            keep = torch.nonzero(self._opacities() >= min_opacity).squeeze(1)
            if len(keep) == 0:
                raise FieldError(f"{self.field.method}: no Gaussian has opacity >= {min_opacity}; nothing can be found")
            pts = self.field.gaussians.means.detach().double().cpu().numpy()[keep.numpy()]
            self._geometry = (keep, pts, linking_length(pts), robust_diagonal(pts))
            self._geometry_key = key
        return self._geometry

    def place_feature(self, point, radius: float | None = None, min_opacity: float = 0.1) -> torch.Tensor:
        """(D,) unit feature of the place around the world `point`: the mean of the opaque Gaussians' unit
        features, weighted by opacity and a Gaussian kernel of width `radius` (default 2.5% of the scene's
        robust diagonal; the nearest Gaussian's alone when none lies within 3 `radius`)."""
        keep, pts, _, diag = self._opaque_geometry(min_opacity)
        radius = 0.025 * diag if radius is None else float(radius)
        if not radius > 0:
            raise UserInputError(f"radius must be positive, got {radius}")
        p = np.asarray(point, dtype=np.float64).reshape(3)
        if not np.isfinite(p).all():
            raise UserInputError(f"point {p.tolist()} is not finite")
        d2 = ((pts - p) ** 2).sum(1)
        near = np.nonzero(d2 <= (3 * radius) ** 2)[0]
        if len(near) == 0:
            near = np.array([int(np.argmin(d2))])
        g, _ = self._gaussian_cache()
        idx = keep[torch.as_tensor(near)]
        w = self._opacities()[idx].double() * torch.exp(-torch.as_tensor(d2[near]) / (2 * radius * radius))
        feat = (w[:, None].float() * g[idx]).sum(0)
        return torch.nn.functional.normalize(feat, dim=0)

    def presence_at(self, text: str, point, radius: float | None = None) -> Presence:
        """Is `text` what best describes the place around `point`? (fmsplat.query.presence)"""
        return presence(self.place_feature(point, radius), self.core.embed([text])[0], self.core.vocabulary,
                        named=self.core.named_concepts(text))

    def describe_point(self, point, k: int = 5, radius: float | None = None) -> list[Concept]:
        """What is here? The `k` vocabulary concepts that best describe the place around world `point`."""
        return describe(self.place_feature(point, radius), self.core.vocabulary, k)

    def background(self, min_opacity: float = 0.1) -> torch.Tensor:
        """(N,) bool: the opaque Gaussians on a background plane (a wall, floor or table top:
        fmsplat.query.parts.background_planes, within one linking length of the plane); cached."""
        key = float(min_opacity)
        if self._planes_key != key:
            keep, pts, link, _ = self._opaque_geometry(min_opacity)
            mask = torch.zeros(len(self.field.gaussians), dtype=torch.bool)
            mask[keep[torch.as_tensor(background_planes(pts, link))]] = True
            self._planes, self._planes_key = mask, key
        return self._planes

    def with_translucent(self, mask: torch.Tensor, min_opacity: float = 0.1) -> torch.Tensor:
        """(N,) bool: `mask` (over the opaque Gaussians) with every fainter Gaussian whose nearest opaque
        Gaussian, within one linking length, is in it. Answers are cut from the opaque Gaussians, but a
        trained scene draws much of an object with faint ones (on the fox 80 % of the Gaussians are under
        0.1 opacity): an edit that leaves them behind leaves a ghost of the object."""
        keep, _, _, _ = self._opaque_geometry(min_opacity)
        faint, nearest = self._faint_anchors(min_opacity)
        mask = torch.as_tensor(mask, dtype=torch.bool)
        out = mask.clone()
        out[faint] |= mask[keep[nearest.clamp_min(0)]] & (nearest >= 0)
        return out

    def _faint_anchors(self, min_opacity: float):
        """(indices of the faint Gaussians, index into the opaque ones of each one's nearest opaque Gaussian
        within one linking length, -1 for none); cached: they depend on the geometry only."""
        key = float(min_opacity)
        if self._anchors_key != key:
            keep, pts, link, _ = self._opaque_geometry(min_opacity)
            faint = torch.ones(len(self.field.gaussians), dtype=torch.bool)
            faint[keep] = False
            faint = torch.nonzero(faint).squeeze(1)
            means = self.field.gaussians.means.detach().double().cpu().numpy()[faint.numpy()]
            self._anchors = (faint, torch.as_tensor(nearest_within(means, pts, link)))
            self._anchors_key = key
        return self._anchors

    def grow(self, answer: "Answer", relative: float = GROW_RELATIVE, min_opacity: float = 0.1,
             planes: bool = True) -> torch.Tensor:
        """(N,) bool: the answer's Gaussians grown by hysteresis, as edges are in images: the opaque Gaussians
        whose relevancy is at least 0.5 and `relative` of the way up the scene's range (a lower cut than the
        answer's own) form connected parts (the answer's linking length), and every part that holds one of
        the answer's Gaussians is kept whole. The answer's cut finds the object's surest Gaussians; this
        follows them over the rest of the object without jumping to another one; a part holding more than
        MAX_OBJECT_SHARE of the opaque Gaussians is not taken. With `planes`, growth does
        not cross a background plane (`background`): the wall a mounted head hangs on reads partly as the
        head, since the teacher's patches straddle both."""
        keep, pts, _, _ = self._opaque_geometry(min_opacity)
        rel = answer.relevancy[keep].double()
        lo, hi = float(rel.min()), float(rel.max())
        cut = max(0.5, lo + relative * (hi - lo))
        grown = answer.selection.mask.clone()
        allowed = rel >= cut
        if planes:
            allowed &= ~self.background(min_opacity)[keep] | grown[keep]
        cand = torch.nonzero(allowed).squeeze(1)
        if len(cand) == 0:
            return grown
        seeds = grown[keep[cand]].numpy()
        for comp in connected_parts(pts[cand.numpy()], np.ones(len(cand)), answer.link):
            # an object is not the larger half of the scene: a part that big is the background reading
            # a little like the phrase (the tiny room's wall at 0.61 for "motorcycle", over its cut)
            if seeds[comp.members].any() and len(comp.members) <= MAX_OBJECT_SHARE * len(keep):
                grown[keep[cand[torch.as_tensor(comp.members)]]] = True
        return grown

    def locate(self, text: str, all_parts: bool = False, relative: float = LOCATE_RELATIVE, min_opacity: float = 0.1,
               share: float = PART_SHARE, link: float | None = None,
               gaussian_relevancy: torch.Tensor | None = None) -> Answer:
        """The 3D answer to `text`: the spatially connected part(s) of the matching Gaussians, each with its
        densest point, box and presence. Candidates are the opaque Gaussians whose relevancy is at least 0.5
        and at least lowest + `relative` x (highest - lowest) (default LOCATE_RELATIVE); parts are linked within `link` (default: the
        scene's own spacing, fmsplat.query.parts.linking_length). With `all_parts`, every part weighing at
        least `share` of the heaviest (and of MIN_PART_GAUSSIANS Gaussians) is kept; otherwise the heaviest."""
        t0 = time.perf_counter()
        if not 0.0 <= relative <= 1.0:
            raise UserInputError(f"relative must be in [0, 1], got {relative}")
        keep, pts, auto_link, diag = self._opaque_geometry(min_opacity)
        link = auto_link if link is None else float(link)
        rel = self.gaussian_relevancy(text) if gaussian_relevancy is None else gaussian_relevancy
        n = len(self.field.gaussians)
        r_keep = rel[keep].double()
        lo, hi = float(r_keep.min()), float(r_keep.max())
        cutoff = max(0.5, lo + relative * (hi - lo))
        cand = torch.nonzero(r_keep >= cutoff).squeeze(1)
        if len(cand) == 0:  # nothing beats the negatives: the best Gaussians still give a place to test
            cand = torch.topk(r_keep, min(MIN_PART_GAUSSIANS, len(r_keep))).indices
            cutoff = float(r_keep[cand].min())
        opac = self._opacities()[keep].double()
        weights = (opac * r_keep)[cand].numpy()
        comps = connected_parts(pts[cand.numpy()], weights, link)
        t1 = time.perf_counter()
        chosen = [comps[0]]
        if all_parts:
            chosen = [c for c in comps if c.weight >= share * comps[0].weight and len(c.members) >= MIN_PART_GAUSSIANS]
            chosen = chosen or [comps[0]]
        q = self.core.embed([text])[0]
        named = self.core.named_concepts(text)
        parts = []
        for comp in chosen:
            local = cand[torch.as_tensor(comp.members)]  # indices into `keep`
            ppts = torch.as_tensor(pts[local.numpy()])
            w = (opac * r_keep)[local]
            if len(local) > 1024:  # the density step is quadratic: its heaviest 1024 are enough
                top = torch.topk(w, 1024).indices
                point = densest_point(ppts[top], w[top], bandwidth=max(link, 0.02 * diag))
            else:
                point = densest_point(ppts, w, bandwidth=max(link, 0.02 * diag))
            point = point.numpy()
            lo, hi = np.percentile(ppts.numpy(), [2, 98], axis=0)
            parts.append(Part(point=point, box_min=lo, box_max=hi,
                              indices=keep[local], weight=float(comp.weight),
                              presence=presence(self.place_feature(point, min_opacity=min_opacity), q, self.core.vocabulary,
                                                named=named)))
        if all_parts:  # present parts first, then by weight
            parts.sort(key=lambda p: (not p.presence.found, -p.weight))
        t2 = time.perf_counter()
        return Answer(text=text, space=self.core.space, parts=parts, relevancy=rel, cutoff=cutoff, link=link,
                      n_gaussians=n, timing_ms={"parts": 1e3 * (t1 - t0), "presence": 1e3 * (t2 - t1)})


def export_selection(field_: FeatureField, mask, path) -> int:
    """Write the selected Gaussians (bool mask (N,) or a Selection) as their own 3DGS PLY; returns the count."""
    if isinstance(mask, Selection):
        mask = mask.mask
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if mask.shape != (len(field_.gaussians),):
        raise ValueError(f"export_selection: mask of shape {tuple(mask.shape)} for {len(field_.gaussians)} Gaussians")
    if not mask.any():
        raise ValueError(f"export_selection: nothing selected, {path} not written")
    subset = field_.gaussians.detach().subset(mask)
    subset.save_ply(path)
    return len(subset)


__all__ = ["Answer", "Locator", "Part", "Selection", "densest_point", "export_selection", "index_mask"]
