"""Text queries on any feature field: relevancy maps, 2D/3D localisation, masks, Gaussian selection.

Everything here works through the FeatureField interface (fmsplat.fields.base), whatever the method::

    from fmsplat.query import QueryEngine
    engine = QueryEngine(field)                      # language space: field.language_space
    result = engine.query(camera, "espresso cup")    # QueryResult: relevancy, pixel, mask, 3D points, Gaussians
    rel = engine.relevancy_map(camera, "cat")        # (H, W) LERF relevancy

One-off calls have module-level twins (`relevancy_map(field, camera, text)`, `localize_3d(...)`, ...).
Text embeddings are cached per (space, text) for the whole process; an engine also caches the field's
normalised per-Gaussian features, so build a new engine (or call `reset()`) after changing the field.

2D: the relevancy map is the LERF relevancy (fmsplat.query.relevancy) of the rendered features; its
argmax pixel is the 2D location; the LangSplat post-processing (fmsplat.query.segment) gives the mask.

3D first (`QueryEngine.locate`, one answer per scene, not per view): the LERF relevancy of every
Gaussian's decoded feature; the opaque Gaussians above a cut (at least 0.5, "better than the negatives",
and `relative` of the way up the scene's range) are linked into spatially connected parts
(fmsplat.query.parts); the heaviest part (opacity x relevancy) is the object, its densest point the 3D
point, its Gaussians the selection and the exported PLY, its box the extent. `all_parts=True` keeps
every part of a fair weight (plurals: "the chairs"). Each part says whether the phrase is *present*
there (fmsplat.query.presence: does the phrase describe that place about as well as the concepts that
best describe it?). In a view, the 2D point of the answer is the projection of the 3D point where it
is not hidden.

Also per view: the argmax pixel lifted through the rendered expected depth (pixel (col, row) has its
centre at (col + 0.5, row + 0.5), as the rasterizer samples it), kept for comparison.

`select_gaussians` is the plain threshold over the whole scene (optionally near a point), the
building block `locate` refines.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from fmsplat.errors import UserInputError
from fmsplat.fields.base import FeatureField, FieldError, FieldRender, SpaceSpec
from fmsplat.query.parts import LOCATE_RELATIVE, MIN_PART_GAUSSIANS, PART_SHARE, connected_parts, linking_length, robust_diagonal
from fmsplat.query.presence import Concept, Presence, describe, presence, vocabulary_for
from fmsplat.query.relevancy import CANONICAL_NEGATIVES, LERF_TEMPERATURE, relevancy, relevancy_from_dots
from fmsplat.query.segment import argmax_pixel, langsplat_segmentation, mean_filter
from fmsplat.scene import Camera

# ------------------------------------------------------------------------------------------ text
_TEXT_CACHE: dict[tuple[SpaceSpec, str], torch.Tensor] = {}


def text_embeddings(spec: SpaceSpec, texts: Sequence[str]) -> torch.Tensor:
    """(T, D) float32 embeddings of `texts` in `spec`'s space, each computed once per process."""
    if isinstance(texts, str):
        texts = [texts]
    texts = [str(t) for t in texts]
    for t in texts:
        if not t.strip():
            raise UserInputError("empty query text")
    missing = [t for t in dict.fromkeys(texts) if (spec, t) not in _TEXT_CACHE]
    if missing:
        emb = spec.encode_text(missing).detach().float().cpu()
        if emb.shape != (len(missing), spec.dim):
            raise FieldError(f"space '{spec.alias}': encode_text returned {tuple(emb.shape)}, "
                             f"expected ({len(missing)}, {spec.dim})")
        if not torch.isfinite(emb).all():
            raise FieldError(f"space '{spec.alias}': encode_text returned non-finite values for {missing}")
        for t, e in zip(missing, emb):
            _TEXT_CACHE[(spec, t)] = e
    return torch.stack([_TEXT_CACHE[(spec, t)] for t in texts])


def clear_text_cache() -> None:
    _TEXT_CACHE.clear()


# ------------------------------------------------------------------------------------------ geometry
def lift_pixel(camera: Camera, x: float, y: float, depth: float) -> np.ndarray:
    """World point (3,) of pixel (x, y) = (col, row) of `camera` at camera-space z-depth `depth`."""
    if not np.isfinite(depth) or depth <= 0:
        raise ValueError(f"cannot lift pixel ({x}, {y}): depth {depth} is not a positive number")
    uv1 = np.array([x + 0.5, y + 0.5, 1.0])
    p_cam = np.linalg.solve(camera.K, uv1) * depth  # K^-1 [u v 1] has z = 1
    c2w = camera.c2w
    return c2w[:3, :3] @ p_cam + c2w[:3, 3]


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


# ------------------------------------------------------------------------------------------ results
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
        m = torch.zeros(n, dtype=torch.bool)
        m[self.indices] = True
        return m

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


@dataclass
class QueryResult:
    text: str
    space: str
    view: str
    size: tuple[int, int]  # (width, height) of the maps
    relevancy: np.ndarray  # (H, W)
    pixel: tuple[int, int]  # (x, y) argmax
    lift_pixel: tuple[int, int]  # (x, y) lifted to 3D (argmax after a small mean filter)
    score: float  # relevancy at the argmax
    mask: np.ndarray  # (H, W) bool, LangSplat protocol
    point_lifted: np.ndarray | None  # (3,) world point of the argmax pixel (None: no surface there)
    depth: float  # expected depth at the argmax pixel
    alpha: float  # rendered opacity at the argmax pixel (low: the lifted point is unreliable)
    point_gaussians: np.ndarray  # (3,) the 3D answer's point (QueryEngine.locate)
    selection: Selection  # the 3D answer's Gaussians
    answer: Answer | None = None  # the 3D answer: parts, presence
    projection: tuple[float, float] | None = None  # (x, y) of the 3D point in this view (None: outside it)
    visible: bool = False  # the 3D point is in this view and not hidden behind a surface
    empty_view: bool = False  # nothing of the scene is rendered in this view: the 2D answers stand on nothing
    timing_ms: dict[str, float] = field(default_factory=dict)
    render: FieldRender | None = None

    @property
    def found(self) -> bool:
        """The phrase is present in the scene (QueryEngine.locate, fmsplat.query.presence)."""
        return self.answer is not None and self.answer.found

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "space": self.space,
            "view": self.view,
            "size": list(self.size),
            "found": self.found,
            "presence": None if self.answer is None or self.answer.presence is None else self.answer.presence.to_json(),
            "answer_3d": None if self.answer is None else self.answer.to_json(),
            "projection": None if self.projection is None else {"x": round(self.projection[0], 2),
                                                                "y": round(self.projection[1], 2), "visible": self.visible},
            "empty_view": self.empty_view,
            "location_2d": {"x": self.pixel[0], "y": self.pixel[1], "relevancy": self.score,
                            "relevancy_range": [float(self.relevancy.min()), float(self.relevancy.max())],
                            "relevancy_scale": [0.5, 1.0]},
            "mask_pixels": int(self.mask.sum()),
            "location_3d": {
                "lift_pixel": {"x": self.lift_pixel[0], "y": self.lift_pixel[1]},
                "lifted": None if self.point_lifted is None else [float(v) for v in self.point_lifted],
                "depth": self.depth,
                "alpha": self.alpha,
                "gaussians": [float(v) for v in self.point_gaussians],
            },
            "selection": self.selection.to_json(),
            "timing_ms": {k: round(v, 3) for k, v in self.timing_ms.items()},
        }


# ------------------------------------------------------------------------------------------ engine
class QueryEngine:
    """Queries in one language-aligned space of one field, with caches for repeated use."""

    def __init__(self, field_: FeatureField, space: str | None = None, negatives: Sequence[str] = CANONICAL_NEGATIVES,
                 temperature: float = LERF_TEMPERATURE) -> None:
        self.field = field_
        self.space = space or field_.language_space
        self.spec = field_.space(self.space)
        if not self.spec.language_aligned:
            raise FieldError(f"space '{self.space}' ({self.spec.name}) is not language-aligned; text queries need "
                             f"one of {[a for a, s in field_.spaces.items() if s.language_aligned] or 'none'}")
        self.negatives = tuple(str(n) for n in negatives)
        if not self.negatives:
            raise ValueError("relevancy needs at least one negative phrase")
        self.temperature = float(temperature)
        self._gauss: torch.Tensor | None = None
        self._neg_gauss: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the cached per-Gaussian features (after the field changed)."""
        self._gauss = self._neg_gauss = None
        self._geometry_key = None

    # -- text
    def embed(self, texts: str | Sequence[str]) -> torch.Tensor:
        return text_embeddings(self.spec, [texts] if isinstance(texts, str) else texts)

    @property
    def negative_embeddings(self) -> torch.Tensor:
        return text_embeddings(self.spec, self.negatives)

    # -- 2D
    def render(self, camera: Camera, size: tuple[int, int] | None = None) -> FieldRender:
        out = self.field.render(camera, spaces=[self.space], size=size)
        feats = out.features.get(self.space)
        if feats is None or feats.dim() != 3 or feats.shape[0] != self.spec.dim:
            raise FieldError(f"{self.field.method}.render gave {None if feats is None else tuple(feats.shape)} "
                             f"for space '{self.space}', expected ({self.spec.dim}, h, w)")
        return out

    def relevancy_maps(self, render: FieldRender, texts: Sequence[str]) -> torch.Tensor:
        """(T, H, W) relevancy of several texts on one rendered view."""
        feats = render.features[self.space].detach().float()
        return relevancy(feats, self.embed(list(texts)), self.negative_embeddings, dim=0,
                         temperature=self.temperature)

    def relevancy_map(self, camera: Camera | None, text: str, size: tuple[int, int] | None = None,
                      render: FieldRender | None = None) -> torch.Tensor:
        """(H, W) relevancy of `text` seen from `camera` (rendered at `size`, or the given `render`)."""
        if render is None:
            if camera is None:
                raise ValueError("relevancy_map: pass a camera or a render")
            return self.relevancy_fast(camera, [text], size)[0][0]
        return self.relevancy_maps(render, [text])[0]

    def relevancy_fast(self, camera: Camera, texts: Sequence[str], size: tuple[int, int] | None = None
                       ) -> tuple[torch.Tensor, FieldRender]:
        """(T, H, W) relevancy of `texts` seen from `camera`, and the render (alpha, depth; no features),
        through FeatureField.render_text_dots: fields with a linear last stage never build the (D, H, W)
        feature map. Equal to `relevancy_maps(render(camera), texts)` up to float rounding."""
        texts = list(texts)
        unit = torch.nn.functional.normalize(torch.cat([self.embed(texts), self.negative_embeddings]), dim=-1)
        dots, sq, render = self.field.render_text_dots(camera, self.space, unit, size)
        if dots.shape[0] != unit.shape[0] or dots.shape[1:] != sq.shape:
            raise FieldError(f"{self.field.method}.render_text_dots gave dots {tuple(dots.shape)} and norms "
                             f"{tuple(sq.shape)} for {unit.shape[0]} texts")
        return relevancy_from_dots(dots, sq, len(texts), self.temperature), render

    @staticmethod
    def localize_2d(relevancy_map, smooth_kernel: int | None = None) -> tuple[int, int]:
        """(x, y) of the argmax (after a `smooth_kernel` mean filter when given, as LangSplat does)."""
        r = relevancy_map.detach().cpu().numpy() if isinstance(relevancy_map, torch.Tensor) else np.asarray(relevancy_map)
        return argmax_pixel(mean_filter(r, smooth_kernel) if smooth_kernel else r)

    @staticmethod
    def segment(relevancy_map, **kw) -> np.ndarray:
        """(H, W) bool mask by the LangSplat protocol (fmsplat.query.segment.langsplat_segmentation)."""
        return langsplat_segmentation(relevancy_map, **kw)

    @staticmethod
    def lift_pixel_of(relevancy_map, kernel: int | None = None) -> tuple[int, int]:
        """The pixel to lift to 3D: argmax of the relevancy after a small mean filter (`kernel`, default
        5% of the shorter side, at least 3 px). A raw argmax may sit on the rim of a plateau of equal
        values (first in row-major order) or on a one-pixel spike, where the expected depth mixes the
        object with what lies behind it; the filtered argmax sits inside the answer."""
        r = relevancy_map.detach().cpu().numpy() if isinstance(relevancy_map, torch.Tensor) else np.asarray(relevancy_map)
        k = kernel if kernel is not None else max(3, round(0.05 * min(r.shape)))
        return argmax_pixel(mean_filter(r, k) if k > 1 else r)

    @staticmethod
    def lift(render: FieldRender, x: int, y: int, min_alpha: float = 0.5) -> tuple[np.ndarray | None, float, float]:
        """(world point or None, depth, alpha) of pixel (x, y) of a render; None where the rendered
        opacity there is below `min_alpha` (no surface to put the point on)."""
        h, w = render.alpha.shape
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"pixel ({x}, {y}) outside the {w}x{h} render")
        alpha = float(render.alpha[y, x])
        depth = float(render.depth[y, x])
        if alpha < min_alpha or not np.isfinite(depth) or depth <= 0:
            return None, depth, alpha
        return lift_pixel(render.camera, x, y, depth), depth, alpha

    # -- 3D
    def _gaussian_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._gauss is None:
            g = self.field.gaussian_features(self.space).detach().float()
            n = len(self.field.gaussians)
            if g.shape != (n, self.spec.dim):
                raise FieldError(f"{self.field.method}.gaussian_features('{self.space}') has shape {tuple(g.shape)}, "
                                 f"expected ({n}, {self.spec.dim})")
            self._gauss = torch.nn.functional.normalize(g, dim=-1)
            neg = torch.nn.functional.normalize(self.negative_embeddings, dim=-1)
            self._neg_gauss = (self._gauss @ neg.T).amax(dim=1)
        return self._gauss, self._neg_gauss

    def gaussian_relevancy(self, text: str) -> torch.Tensor:
        """(N,) LERF relevancy of every Gaussian's decoded feature for `text`."""
        g, neg_max = self._gaussian_cache()
        q = torch.nn.functional.normalize(self.embed([text]), dim=-1)[0]
        return torch.sigmoid(self.temperature * (g @ q - neg_max))

    def _opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.field.gaussians.opacities.detach().float())

    def gaussian_point(self, text: str, top_fraction: float = 0.01, min_top: int = 16, max_top: int = 4096,
                       min_opacity: float = 0.1, bandwidth: float | None = None,
                       gaussian_relevancy: torch.Tensor | None = None) -> np.ndarray:
        """(3,) world point of `text` from the Gaussians: densest cluster of the most relevant ones.

        Takes the top `top_fraction` (at least `min_top`, at most `max_top`) of the Gaussians with
        opacity >= `min_opacity` by relevancy, weights them by opacity x relevancy, and returns the
        mode of their kernel density (bandwidth default: 5% of the scene's robust diagonal)."""
        rel = self.gaussian_relevancy(text) if gaussian_relevancy is None else gaussian_relevancy
        opac = self._opacities()
        keep = torch.nonzero(opac >= min_opacity).squeeze(1)
        if len(keep) == 0:
            raise FieldError(f"{self.field.method}: no Gaussian has opacity >= {min_opacity}")
        k = int(min(max(min_top, round(top_fraction * len(keep))), max_top, len(keep)))
        top = keep[torch.topk(rel[keep], k).indices]
        means = self.field.gaussians.means.detach()
        if bandwidth is None:
            bandwidth = 0.05 * robust_diagonal(means[keep].double().cpu().numpy())
        point = densest_point(means[top], opac[top] * rel[top], bandwidth)
        return point.numpy()

    def select_gaussians(self, text: str, relative: float = 0.7, threshold: float | None = None,
                         min_opacity: float = 0.1, near=None, radius: float | None = None,
                         gaussian_relevancy: torch.Tensor | None = None) -> Selection:
        """The Gaussians of `text`: relevancy >= lowest + `relative` x (highest - lowest) over the
        Gaussians with opacity >= `min_opacity`, and >= `threshold` when given; with `near` (3,) and
        `radius`, only those within `radius` of `near`."""
        if not 0.0 <= relative <= 1.0:
            raise UserInputError(f"relative must be in [0, 1], got {relative}")
        if (near is None) != (radius is None):
            raise ValueError("select_gaussians: pass both `near` and `radius`, or neither")
        rel = self.gaussian_relevancy(text) if gaussian_relevancy is None else gaussian_relevancy
        keep = self._opacities() >= min_opacity
        if not keep.any():
            raise FieldError(f"{self.field.method}: no Gaussian has opacity >= {min_opacity}")
        lo, hi = float(rel[keep].min()), float(rel[keep].max())
        cutoff = lo + relative * (hi - lo)
        if threshold is not None:
            cutoff = max(cutoff, float(threshold))
        mask = keep & (rel >= cutoff)
        if near is not None:
            centre = torch.as_tensor(np.asarray(near, dtype=np.float32)).reshape(3)
            mask &= (self.field.gaussians.means.detach().float() - centre).norm(dim=1) <= float(radius)
        return Selection(mask=mask, cutoff=cutoff, count=int(mask.sum()), relevancy=rel)

    # -- 3D first: presence, connected parts, "what is here?"
    @property
    def vocabulary(self):
        """The concepts presence competes against (fmsplat.query.presence.vocabulary_for)."""
        return vocabulary_for(self.spec)

    def _opaque_geometry(self, min_opacity: float):
        """(indices of the opaque Gaussians, their centres as float64 numpy, linking length, scene diagonal),
        cached: they depend on the geometry only."""
        key = ("geometry", float(min_opacity))
        if getattr(self, "_geometry_key", None) != key:
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
        return presence(self.place_feature(point, radius), self.embed([text])[0], self.vocabulary)

    def describe_point(self, point, k: int = 5, radius: float | None = None) -> list[Concept]:
        """What is here? The `k` vocabulary concepts that best describe the place around world `point`."""
        return describe(self.place_feature(point, radius), self.vocabulary, k)

    def describe_pixel(self, camera: Camera, x: int, y: int, k: int = 5, size: tuple[int, int] | None = None,
                       window: int = 3) -> list[Concept]:
        """What is here? The `k` concepts that best describe pixel (x, y) = (col, row) of `camera` (rendered at
        `size`), from the mean rendered feature of a `window` x `window` neighbourhood."""
        render = self.render(camera, size)
        feats = render.features[self.space].detach().float()
        _, h, w = feats.shape
        if not (0 <= x < w and 0 <= y < h):
            raise UserInputError(f"pixel ({x}, {y}) is outside the {w}x{h} view")
        if float(render.alpha[y, x]) < 0.5:
            raise UserInputError(f"pixel ({x}, {y}) of {camera.name or 'the view'} shows nothing (rendered opacity "
                             f"{float(render.alpha[y, x]):.2f}): there is no surface to describe")
        r = window // 2
        patch = feats[:, max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].reshape(feats.shape[0], -1)
        unit = torch.nn.functional.normalize(patch, dim=0).mean(1)
        return describe(unit, self.vocabulary, k)

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
        q = self.embed([text])[0]
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
                              presence=presence(self.place_feature(point, min_opacity=min_opacity), q, self.vocabulary)))
        if all_parts:  # present parts first, then by weight
            parts.sort(key=lambda p: (not p.presence.found, -p.weight))
        t2 = time.perf_counter()
        return Answer(text=text, space=self.space, parts=parts, relevancy=rel, cutoff=cutoff, link=link,
                      n_gaussians=n, timing_ms={"parts": 1e3 * (t1 - t0), "presence": 1e3 * (t2 - t1)})

    @staticmethod
    def project(camera: Camera, point, render: FieldRender | None = None, slack: float = 0.0,
                tolerance: float = 0.1) -> tuple[tuple[float, float] | None, bool]:
        """((x, y), visible) of world `point` in `camera` (pixel coordinates of `render` when given, else of
        the camera): None when behind the camera or outside the image; not visible when the render has a
        surface more than `slack` (scene units: the object's own half size, as the point may lie inside
        it) plus `tolerance` x depth in front of it."""
        cam = render.camera if render is not None else camera
        p = np.asarray(point, dtype=np.float64).reshape(3)
        pc = cam.viewmat[:3, :3] @ p + cam.viewmat[:3, 3]
        if pc[2] <= 1e-9:
            return None, False
        u, v, _ = cam.K @ (pc / pc[2])
        x, y = u - 0.5, v - 0.5
        if not (-0.5 <= x < cam.width - 0.5 and -0.5 <= y < cam.height - 0.5):
            return None, False
        if render is None:
            return (float(x), float(y)), True
        xi, yi = int(round(x)), int(round(y))
        xi, yi = min(max(xi, 0), cam.width - 1), min(max(yi, 0), cam.height - 1)
        alpha, depth = float(render.alpha[yi, xi]), float(render.depth[yi, xi])
        hidden = alpha >= 0.5 and np.isfinite(depth) and depth < pc[2] * (1.0 - tolerance) - slack
        return (float(x), float(y)), not hidden

    # -- all at once
    def query(self, camera: Camera, text: str, size: tuple[int, int] | None = None, smooth_kernel: int | None = None,
              render: FieldRender | None = None, locate: dict | None = None, view: str = "",
              answer: Answer | None = None) -> QueryResult:
        """The 3D answer of `text` (QueryEngine.locate with the `locate` options, or the given `answer`)
        seen from `camera`: its projection here, and this view's relevancy map, 2D argmax, mask and
        lifted point, with the time of each step in milliseconds."""
        timing: dict[str, float] = {}
        t0 = time.perf_counter()
        self.embed([text])
        _ = self.negative_embeddings
        t1 = time.perf_counter()
        timing["text"] = 1e3 * (t1 - t0)
        if render is None:  # render and relevancy in one step (see relevancy_fast)
            rel_t, render = self.relevancy_fast(camera, [text], size)
            rel = rel_t[0].cpu()
            t3 = time.perf_counter()
            timing["render_relevancy"] = 1e3 * (t3 - t1)
        else:
            t2 = time.perf_counter()
            timing["render"] = 1e3 * (t2 - t1)
            rel = self.relevancy_maps(render, [text])[0].cpu()
            t3 = time.perf_counter()
            timing["relevancy"] = 1e3 * (t3 - t2)
        rel_np = rel.numpy().astype(np.float64)
        empty_view = not bool((render.alpha >= 0.5).any())
        if empty_view:
            warnings.warn(f"{view or camera.name or 'the view'}: nothing of the scene is visible (rendered opacity "
                          "< 0.5 everywhere); its 2D answers stand on nothing", stacklevel=2)
        x, y = self.localize_2d(rel_np, smooth_kernel)
        mask = self.segment(rel_np)
        lx, ly = self.lift_pixel_of(rel_np)
        point_lifted, depth, alpha = self.lift(render, lx, ly)
        t4 = time.perf_counter()
        timing["localize_segment_2d"] = 1e3 * (t4 - t3)
        if answer is None:
            answer = self.locate(text, **(locate or {}))
        best = answer.parts[0]
        projection, visible = self.project(camera, answer.point, render,
                                           slack=0.5 * float(np.linalg.norm(best.box_max - best.box_min)))
        t5 = time.perf_counter()
        timing["gaussians_3d"] = 1e3 * (t5 - t4)
        timing["total"] = 1e3 * (t5 - t0)
        h, w = rel_np.shape
        return QueryResult(text=text, space=self.space, view=view or camera.name, size=(w, h), relevancy=rel_np,
                           pixel=(x, y), lift_pixel=(lx, ly), score=float(rel_np[y, x]), mask=mask, point_lifted=point_lifted,
                           depth=depth, alpha=alpha, point_gaussians=answer.point, selection=answer.selection,
                           answer=answer, projection=projection, visible=visible, empty_view=empty_view,
                           timing_ms=timing, render=render)


# ------------------------------------------------------------------------------------------ one-off calls
def relevancy_map(field_: FeatureField, camera: Camera, text: str, space: str | None = None,
                  size: tuple[int, int] | None = None, negatives: Sequence[str] = CANONICAL_NEGATIVES) -> torch.Tensor:
    """(H, W) LERF relevancy of `text` on `field_` seen from `camera` (rendered at `size` = (w, h))."""
    return QueryEngine(field_, space, negatives).relevancy_map(camera, text, size)


def localize_2d(field_: FeatureField, camera: Camera, text: str, space: str | None = None,
                size: tuple[int, int] | None = None, smooth_kernel: int | None = None) -> tuple[int, int]:
    """(x, y) pixel of the highest relevancy of `text`."""
    return QueryEngine.localize_2d(relevancy_map(field_, camera, text, space, size), smooth_kernel)


def localize_3d(field_: FeatureField, camera: Camera, text: str, space: str | None = None,
                size: tuple[int, int] | None = None, min_alpha: float = 0.5) -> np.ndarray | None:
    """World point of the (lightly smoothed, see QueryEngine.lift_pixel_of) argmax pixel of `text`, lifted
    through the rendered expected depth (None where the render has no surface at that pixel)."""
    engine = QueryEngine(field_, space)
    render = engine.render(camera, size)
    x, y = engine.lift_pixel_of(engine.relevancy_map(None, text, render=render))
    return engine.lift(render, x, y, min_alpha)[0]


def gaussian_point(field_: FeatureField, text: str, space: str | None = None, **kw) -> np.ndarray:
    """World point of `text` from the per-Gaussian relevancy (QueryEngine.gaussian_point)."""
    return QueryEngine(field_, space).gaussian_point(text, **kw)


def segment(field_: FeatureField, camera: Camera, text: str, space: str | None = None,
            size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) bool mask of `text` by the LangSplat protocol."""
    return langsplat_segmentation(relevancy_map(field_, camera, text, space, size).numpy())


def select_gaussians(field_: FeatureField, text: str, space: str | None = None, **kw) -> Selection:
    """The Gaussians of `text` (QueryEngine.select_gaussians)."""
    return QueryEngine(field_, space).select_gaussians(text, **kw)


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


__all__ = [
    "Answer", "Part", "QueryEngine", "QueryResult", "Selection", "clear_text_cache", "densest_point", "export_selection",
    "gaussian_point", "lift_pixel", "localize_2d", "localize_3d", "relevancy_map", "segment", "select_gaussians",
    "text_embeddings",
]
