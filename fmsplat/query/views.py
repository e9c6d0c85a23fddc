"""Text queries in one view of a field: relevancy maps, the 2D point, the LangSplat mask, the argmax
lifted through the rendered depth, and where a 3D answer (fmsplat.query.locate) falls in the view.

    from fmsplat.query import QueryCore, ViewQuery
    views = ViewQuery(QueryCore(field))
    rel = views.relevancy_map(camera, "cat")         # (H, W) LERF relevancy
    r = views.in_view(camera, locator.locate("cat"))  # QueryResult: relevancy, 2D point, mask, projection

One-off calls have module-level twins (`relevancy_map(field, camera, text)`, `localize_2d`, `segment`).

The relevancy map is the LERF relevancy (fmsplat.query.relevancy) of the rendered features; its argmax
pixel is the 2D location; the LangSplat post-processing (fmsplat.query.segment) gives the mask. The 2D
point of a 3D answer is the projection of its 3D point where it is not hidden. The argmax pixel lifted
through the rendered expected depth (pixel (col, row) has its centre at (col + 0.5, row + 0.5), as the
rasterizer samples it) is kept for comparison.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from fmsplat.errors import UserInputError
from fmsplat.fields.base import FeatureField, FieldError, FieldRender, camera_at, splat
from fmsplat.query.core import QueryCore
from fmsplat.query.locate import Answer, Selection
from fmsplat.query.presence import Concept, describe
from fmsplat.query.relevancy import CANONICAL_NEGATIVES, relevancy, relevancy_from_dots
from fmsplat.query.segment import argmax_pixel, langsplat_segmentation, mean_filter
from fmsplat.scene import Camera


def lift_pixel(camera: Camera, x: float, y: float, depth: float) -> np.ndarray:
    """World point (3,) of pixel (x, y) = (col, row) of `camera` at camera-space z-depth `depth`."""
    if not np.isfinite(depth) or depth <= 0:
        raise ValueError(f"cannot lift pixel ({x}, {y}): depth {depth} is not a positive number")
    uv1 = np.array([x + 0.5, y + 0.5, 1.0])
    p_cam = np.linalg.solve(camera.K, uv1) * depth  # K^-1 [u v 1] has z = 1
    c2w = camera.c2w
    return c2w[:3, :3] @ p_cam + c2w[:3, 3]


@dataclass
class QueryResult:
    """A 3D answer seen from one view, beside that view's own 2D answers to the phrase."""

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
    answer: Answer  # the 3D answer (Locator.locate): parts, presence, point, Gaussians
    projection: tuple[float, float] | None = None  # (x, y) of the 3D point in this view (None: outside it)
    visible: bool = False  # the 3D point is in this view and not hidden behind a surface
    empty_view: bool = False  # nothing of the scene is rendered in this view: the 2D answers stand on nothing
    timing_ms: dict[str, float] = field(default_factory=dict)
    render: FieldRender | None = None

    @property
    def found(self) -> bool:
        """The phrase is present in the scene (Locator.locate, fmsplat.query.presence)."""
        return self.answer.found

    @property
    def point_gaussians(self) -> np.ndarray:
        return self.answer.point

    @property
    def selection(self) -> Selection:
        return self.answer.selection

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "space": self.space,
            "view": self.view,
            "size": list(self.size),
            "found": self.found,
            "presence": None if self.answer.presence is None else self.answer.presence.to_json(),
            "answer_3d": self.answer.to_json(),
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


# A pixel belongs to a selection's mask when at least this share of its colour comes from the selection:
# on the tiny oracle room (exact labels, a 300-step scene whose object edges blend into the wall) 0.5
# gave masks a third of the true size (mIoU 0.50), 0.3 gave 0.6-0.7 per query; the bench room at 0.5: 67.7 %.
MASK_SHARE = 0.3


class ViewQuery:
    """Per-view queries of one QueryCore (field, space, negatives): renders, relevancy, 2D answers."""

    def __init__(self, core: QueryCore) -> None:
        self.core = core

    @property
    def field(self) -> FeatureField:
        return self.core.field

    # -- 2D
    def render(self, camera: Camera, size: tuple[int, int] | None = None) -> FieldRender:
        out = self.field.render(camera, spaces=[self.core.space], size=size)
        feats = out.features.get(self.core.space)
        if feats is None or feats.dim() != 3 or feats.shape[0] != self.core.spec.dim:
            raise FieldError(f"{self.field.method}.render gave {None if feats is None else tuple(feats.shape)} "
                             f"for space '{self.core.space}', expected ({self.core.spec.dim}, h, w)")
        return out

    def selection_coverage(self, camera: Camera, selections: torch.Tensor,
                           size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """((K, H, W) share of each pixel's colour that comes from each of the K selections (K, N) of
        Gaussians, (H, W) rendered opacity). All the Gaussians are rendered with the selection as their
        value, so a selected Gaussian hidden behind others does not show: occlusion-aware."""
        sel = torch.as_tensor(selections, dtype=torch.bool)
        if sel.dim() == 1:
            sel = sel[None]
        if sel.dim() != 2 or sel.shape[1] != len(self.field.gaussians):
            raise ValueError(f"selection_coverage: selections of shape {tuple(sel.shape)} for "
                             f"{len(self.field.gaussians)} Gaussians")
        with torch.no_grad():
            res = splat(self.field.gaussians, sel.T.float(), camera_at(camera, size))
        return res.image.clamp(0, 1).cpu().numpy(), res.alpha.cpu().numpy()

    def selection_masks(self, camera: Camera, selections: torch.Tensor, size: tuple[int, int] | None = None,
                        share: float = MASK_SHARE) -> np.ndarray:
        """(K, H, W) bool: where each of the K selections (K, N) is what the view sees — the 3D answer as a 2D
        mask: at least `share` of the pixel's colour comes from the selection and the scene covers the pixel
        (opacity >= 0.5)."""
        cover, alpha = self.selection_coverage(camera, selections, size)
        return (cover >= share * np.maximum(alpha, 1e-6)) & (alpha >= 0.5)[None]

    def relevancy_maps(self, render: FieldRender, texts: Sequence[str]) -> torch.Tensor:
        """(T, H, W) relevancy of several texts on one rendered view."""
        feats = render.features[self.core.space].detach().float()
        return relevancy(feats, self.core.embed(list(texts)), self.core.negative_embeddings, dim=0,
                         temperature=self.core.temperature)

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
        unit = torch.nn.functional.normalize(torch.cat([self.core.embed(texts), self.core.negative_embeddings]), dim=-1)
        dots, sq, render = self.field.render_text_dots(camera, self.core.space, unit, size)
        if dots.shape[0] != unit.shape[0] or dots.shape[1:] != sq.shape:
            raise FieldError(f"{self.field.method}.render_text_dots gave dots {tuple(dots.shape)} and norms "
                             f"{tuple(sq.shape)} for {unit.shape[0]} texts")
        return relevancy_from_dots(dots, sq, len(texts), self.core.temperature), render

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

    def describe_pixel(self, camera: Camera, x: int, y: int, k: int = 5, size: tuple[int, int] | None = None,
                       window: int = 3) -> list[Concept]:
        """What is here? The `k` concepts that best describe pixel (x, y) = (col, row) of `camera` (rendered at
        `size`), from the mean rendered feature of a `window` x `window` neighbourhood."""
        render = self.render(camera, size)
        feats = render.features[self.core.space].detach().float()
        _, h, w = feats.shape
        if not (0 <= x < w and 0 <= y < h):
            raise UserInputError(f"pixel ({x}, {y}) is outside the {w}x{h} view")
        if float(render.alpha[y, x]) < 0.5:
            raise UserInputError(f"pixel ({x}, {y}) of {camera.name or 'the view'} shows nothing (rendered opacity "
                             f"{float(render.alpha[y, x]):.2f}): there is no surface to describe")
        r = window // 2
        patch = feats[:, max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].reshape(feats.shape[0], -1)
        unit = torch.nn.functional.normalize(patch, dim=0).mean(1)
        return describe(unit, self.core.vocabulary, k)

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

    # -- a 3D answer in a view
    def in_view(self, camera: Camera, answer: Answer, size: tuple[int, int] | None = None,
                smooth_kernel: int | None = None, render: FieldRender | None = None, view: str = "") -> QueryResult:
        """The 3D `answer` (Locator.locate) seen from `camera`: its projection here, and this view's relevancy
        map of its phrase, 2D argmax, mask and lifted point, with the time of each step in milliseconds."""
        text = answer.text
        timing: dict[str, float] = {}
        t0 = time.perf_counter()
        self.core.embed([text])
        _ = self.core.negative_embeddings
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
        best = answer.parts[0]
        projection, visible = self.project(camera, answer.point, render,
                                           slack=0.5 * float(np.linalg.norm(best.box_max - best.box_min)))
        t5 = time.perf_counter()
        timing["gaussians_3d"] = 1e3 * (t5 - t4)  # the projection of the 3D point (the name is the JSON's)
        timing["total"] = 1e3 * (t5 - t0)
        h, w = rel_np.shape
        return QueryResult(text=text, space=self.core.space, view=view or camera.name, size=(w, h), relevancy=rel_np,
                           pixel=(x, y), lift_pixel=(lx, ly), score=float(rel_np[y, x]), mask=mask, point_lifted=point_lifted,
                           depth=depth, alpha=alpha, answer=answer, projection=projection, visible=visible, empty_view=empty_view,
                           timing_ms=timing, render=render)


# ------------------------------------------------------------------------------------------ one-off calls
def relevancy_map(field_: FeatureField, camera: Camera, text: str, space: str | None = None,
                  size: tuple[int, int] | None = None, negatives: Sequence[str] = CANONICAL_NEGATIVES) -> torch.Tensor:
    """(H, W) LERF relevancy of `text` on `field_` seen from `camera` (rendered at `size` = (w, h))."""
    return ViewQuery(QueryCore(field_, space, negatives)).relevancy_map(camera, text, size)


def localize_2d(field_: FeatureField, camera: Camera, text: str, space: str | None = None,
                size: tuple[int, int] | None = None, smooth_kernel: int | None = None) -> tuple[int, int]:
    """(x, y) pixel of the highest relevancy of `text`."""
    return ViewQuery.localize_2d(relevancy_map(field_, camera, text, space, size), smooth_kernel)


def segment(field_: FeatureField, camera: Camera, text: str, space: str | None = None,
            size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) bool mask of `text` by the LangSplat protocol."""
    return langsplat_segmentation(relevancy_map(field_, camera, text, space, size).numpy())


__all__ = ["QueryResult", "ViewQuery", "lift_pixel", "localize_2d", "relevancy_map", "segment"]
