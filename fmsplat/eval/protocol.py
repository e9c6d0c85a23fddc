"""`fmsplat eval SCENE`: score a fitted feature field on a labelled dataset, and the 2D teacher beside it.

For every labelled view (`labels/<stem>.json`, LERF-OVS format) and every category in it, the query
text is the category label:

- LERF localisation accuracy: the argmax pixel of the relevancy map lies in a ground-truth box;
- 3D masks: the category's 3D answer taken whole (SceneQuery.whole_object) rendered into the view
  (ViewQuery.selection_masks), scored like the LangSplat mask ("mask3d"; summary miou_3d, and
  miou_3d_if_found: the 3D mask where presence says found, the LangSplat mask elsewhere);
- LangSplat segmentation: mask by fmsplat.query.segment.langsplat_segmentation, IoU and pixel
  accuracy against the ground-truth mask; mIoU / mAcc are means over all (view, category) queries;
- 3D localisation (needs `objects.json`): the argmax pixel (after a small mean filter, see
  ViewQuery.lift_pixel_of) lifted through the rendered expected depth,
  and the point found from the per-Gaussian relevancy (once per category); distance to the
  category's nearest 3D box (0 inside) and in-box rate. A lifted point sits on the object's surface,
  so "in box" allows a margin of `box_margin` x the box diagonal on every side; `dist` is exact.
- 3D selection: precision (selected Gaussians inside the category's boxes) and recall (opaque
  Gaussians inside the boxes that were selected).

Also, on the held-out views (every `test_every`-th): feature fidelity per space (M3 protocol: mean
1 - cos and per-channel MSE of the rendered features, resized to the teacher's grid, against the
extractor's own features of the real image, from the scene's feature cache), RGB PSNR / SSIM of the
field's Gaussians, and query latency (median ms of render + relevancy for one text, text embedding
cached).

The *teacher* row scores the extractor itself on the held-out image (its cached features upsampled to
the label size, then the same relevancy and protocol): what the 2D model knows before any 3D.

Outputs under OUT (default SCENE/eval/<method>/): eval.json, eval.md, panels/<view>_<category>.png
(image | relevancy | prediction vs ground truth | teacher relevancy).
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fmsplat import __version__, atomic
from fmsplat.errors import FmsplatError
from fmsplat.eval import metrics as M
from fmsplat.fields import load_field
from fmsplat.foundation.cache import FeatureCache
from fmsplat.fields.base import FeatureField
from fmsplat.query import Locator, QueryCore, SceneQuery, ViewQuery, slugify
from fmsplat.query.relevancy import CANONICAL_NEGATIVES, relevancy_upsampled
from fmsplat.pictures import colorbar, draw_boxes, draw_marker, hstack, mask_overlay, relevancy_overlay, write_png
from fmsplat.scene.labels import SceneObjectInfo, ViewLabels, read_label_dir, read_objects
from fmsplat.workspace import Workspace

TEACHER = "teacher"


class EvalError(FmsplatError, RuntimeError):
    """Labels or scene that cannot be evaluated as asked (names the file and the problem)."""


# ------------------------------------------------------------------------------------------ helpers
def dataset_dir(bundle: Workspace) -> Path:
    src = Path(bundle.dataset.source)
    return src if src.is_dir() else src.parent


def _view_index(bundle: Workspace) -> dict[str, int]:
    """Image stem -> dataset index (labels are named after the image stem)."""
    out: dict[str, int] = {}
    for i, cam in enumerate(bundle.dataset.cameras):
        stem = Path(cam.image_path).stem if cam.image_path else Path(cam.name).stem
        if stem in out:
            raise EvalError(f"{bundle.dataset.source}: two views share the image stem '{stem}'; labels cannot name them apart")
        out[stem] = i
    return out


def _objects_for(category: str, objects: list[SceneObjectInfo], path: Path) -> list[SceneObjectInfo]:
    found = [o for o in objects if o.label == category]
    if not found:
        found = [o for o in objects if category in o.synonyms]
    if not found:
        raise EvalError(f"{path}: no object labelled (or with synonym) '{category}', which labels/ uses")
    return found


def _box_distance(point, objs: list[SceneObjectInfo], margin: float) -> tuple[float, bool]:
    """(distance to the nearest box, inside a box grown by margin x its diagonal)."""
    dists = [float(M.distance_to_aabb(point, o.aabb_min, o.aabb_max)) for o in objs]
    inside = any(d <= margin * float(np.linalg.norm(o.aabb_max - o.aabb_min)) for d, o in zip(dists, objs))
    return min(dists), inside


def _in_boxes(points: torch.Tensor, objs: list[SceneObjectInfo]) -> torch.Tensor:
    inside = torch.zeros(len(points), dtype=torch.bool)
    p = points.detach().double().cpu()
    for o in objs:
        lo, hi = torch.as_tensor(o.aabb_min), torch.as_tensor(o.aabb_max)
        inside |= ((p >= lo) & (p <= hi)).all(dim=1)
    return inside


def _mean(values) -> float:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _median(values) -> float:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.median(vals)) if vals else float("nan")


# ------------------------------------------------------------------------------------------ entry point
@dataclass(frozen=True)
class EvalConfig:
    """Settings of the evaluation protocol (evaluate_scene); the defaults are LERF's and LangSplat's."""

    negatives: tuple[str, ...] = CANONICAL_NEGATIVES  # canonical negatives of the LERF relevancy
    render_scale: float = 1.0  # render the field at this fraction of the label size
    box_margin: float = 0.1  # a lifted point within this fraction of the box diagonal counts as in the box
    seg_kernel: int = M.LANGSPLAT_KERNEL  # LangSplat's mean filter
    seg_threshold: float = M.LANGSPLAT_THRESHOLD  # LangSplat's mask threshold
    latency_repeats: int = 5  # timed relevancy maps for the latency median (0: skip)
    panels: bool = True  # write a PNG panel per query
    teacher: bool = True  # score the 2D extractor on the photos too
    fidelity: bool = True  # 1 - cos and MSE against the teacher on held-out views
    rgb: bool = True  # PSNR / SSIM of the 3DGS on held-out views
    masks_3d: bool = True  # also score the 3D answer's whole object rendered as the mask (score_masks_3d)

    def __post_init__(self) -> None:
        object.__setattr__(self, "negatives", tuple(str(n) for n in self.negatives))
        if not self.render_scale > 0:
            raise ValueError(f"render_scale must be positive, got {self.render_scale}")
        if self.latency_repeats < 0:
            raise ValueError(f"latency_repeats must be >= 0, got {self.latency_repeats}")


def evaluate_scene(scene_dir, data: str | None = None, method: str | None = None, out_dir=None, progress: bool = True,
                   field: FeatureField | None = None, space: str | None = None, config: "EvalConfig | None" = None,
                   ray: str | None = None, workers: int | None = None, **settings) -> dict:
    """Evaluate the field of `method` (default: the newest) in `scene_dir` on the labels of `data`
    (default: the scene's dataset); writes eval.json, eval.md and panels under `out_dir` (default
    SCENE/eval/<method>/, or SCENE/eval/<method>-<space>/ when `space` is given; `out_dir=False`
    writes nothing) and returns the result dict.

    `field` evaluates an already built FeatureField instead of loading one (tests, notebooks). The
    protocol's settings are `config` (EvalConfig), or EvalConfig's fields given as keywords; `teacher`,
    `fidelity`, `rgb`, `panels` and `latency_repeats=0` switch parts off for quick runs. The scorers:
    `score_views` (2D and lifted 3D per labelled view), `score_objects` (the 3D answers), then fidelity,
    RGB and latency on the held-out views. `ray`: the labelled views are scored on that Ray cluster
    (fmsplat.parallel; `workers` actors): the same result."""
    cfg = config if config is not None else EvalConfig(**settings)
    t_start = time.perf_counter()
    scene_dir = Path(scene_dir)
    bundle = Workspace.open(scene_dir, data=data)
    if field is None:
        field = load_field(scene_dir, method, bundle=bundle)
    sq = SceneQuery(bundle, QueryCore(field, space, cfg.negatives))
    root = dataset_dir(bundle)
    try:
        labels = read_label_dir(root)
    except FileNotFoundError as err:
        raise EvalError(f"{root}: no labels/ directory; evaluation needs LERF-OVS labels (labels/<image stem>.json)") from err
    if not labels:
        raise EvalError(f"{root / 'labels'}: no label files")
    objects_path = root / "objects.json"
    objects = read_objects(objects_path)[0] if objects_path.is_file() else None
    index = _view_index(bundle)
    missing = [s for s in labels if s not in index]
    if missing:
        raise EvalError(f"{root / 'labels'}: label files {missing} name no view of {bundle.dataset.source}")

    default_out = Workspace(scene_dir).eval_dir / (field.method if space is None else f"{field.method}-{sq.core.space}")
    out = None if out_dir is False else (Path(out_dir) if out_dir is not None else default_out)
    teacher_cache = FeatureCache(bundle.root, sq.core.spec.extractor()) if cfg.teacher else None
    queries, empty_views, panel_files, categories = score_views(
        sq.views, bundle, labels, index, objects, objects_path, out, teacher_cache, cfg, progress, ray, workers)
    if not queries and empty_views:
        raise EvalError(f"{scene_dir}: nothing is visible in any of the {len(empty_views)} labelled views with objects "
                        f"(rendered opacity < 0.5 everywhere); no metrics. Are the scene and the dataset {root} the same?")
    if not queries:
        raise EvalError(f"{root / 'labels'}: the label files hold no objects")
    if cfg.masks_3d:
        score_masks_3d(sq, labels, index, queries)
    per_object = score_objects(sq.locator, categories, objects, objects_path) if objects is not None else []

    # -------------------------------------------------------------- held-out views: fidelity, RGB, latency
    test_idx = list(bundle.dataset.test_indices)
    fidelity = _fidelity(bundle, field, test_idx, cfg.render_scale, progress) if cfg.fidelity else {}
    rgb = _rgb(bundle, field, test_idx) if cfg.rgb else {}
    latency = _latency(sq.views, bundle, test_idx or list(index.values()), cfg.render_scale, cfg.latency_repeats,
                       teacher_cache is not None)

    summary = _summary(queries, per_object, fidelity, rgb, latency, sq.core.space)
    result = {
        "fmsplat": __version__,
        "scene": str(scene_dir),
        "data": str(root),
        "method": field.method,
        "space": sq.core.space,
        "negatives": list(sq.core.negatives),
        "num_gaussians": len(field.gaussians),
        "field_summary": getattr(field, "summary", {}),
        "protocol": {"seg_kernel": cfg.seg_kernel, "seg_threshold": cfg.seg_threshold, "render_scale": cfg.render_scale,
                     "box_margin": cfg.box_margin, "labelled_views": len(labels), "queries": len(queries),
                     "empty_views": empty_views,
                     "held_out_views": len(test_idx), "objects_json": objects is not None},
        "summary": summary,
        TEACHER: _teacher_summary(queries, latency) if teacher_cache is not None else None,
        "queries": queries,
        "objects": per_object,
        "fidelity": fidelity,
        "rgb": rgb,
        "latency": latency,
        "panels": panel_files,
        "seconds": None,
    }
    result["seconds"] = round(time.perf_counter() - t_start, 2)
    if out is not None:
        from fmsplat.eval.report import scene_report

        atomic.write_json(out / "eval.json", _jsonable(result))
        atomic.write_text(out / "eval.md", scene_report(result))
        result["out_dir"] = str(out)
    return result


def score_views(views: ViewQuery, bundle: Workspace, labels: dict, index: dict, objects, objects_path: Path,
                out: Path | None, teacher_cache, cfg: "EvalConfig", progress: bool = False, ray: str | None = None,
                workers: int | None = None):
    """Scorer of the labelled views: LERF localisation and LangSplat segmentation of every labelled category
    (and of the 2D teacher), the argmax lifted to 3D, panels. Returns (queries, empty views, panel files,
    categories in order). With `ray` (a cluster address, fmsplat.parallel) every labelled view is a task on
    `workers` Ray actors, each holding the field (the teacher's features are extracted first, on the cluster
    too, so that workers only read the cache); the results are gathered in view order, as here."""
    scorer = ViewScorer(views, bundle, labels, index, objects, objects_path, out,
                        teacher_cache is not None, cfg)
    stems = list(labels)
    results: dict[int, tuple] = {}
    if ray is not None:
        from fmsplat.foundation.cache import extract_features
        from fmsplat.parallel import map_views

        if teacher_cache is not None:
            images = {bundle.view_name(index[s]): (lambda i=index[s]: bundle.dataset.image(i)) for s in stems}
            extract_features(images, teacher_cache.extractor, bundle.root, progress=progress, ray=ray, workers=workers)
        map_views(lambda sc=scorer: sc, "score", stems, results.__setitem__, address=ray, workers=workers,
                  progress=progress, desc=f"eval {views.field.method}")
    else:
        for k, stem in enumerate(tqdm(stems, desc=f"eval {views.field.method}", unit="view", disable=not progress)):
            results[k] = scorer.score(stem)
    queries: list[dict] = []
    empty_views: list[str] = []
    panel_files: list[str] = []
    categories: dict[str, None] = {}
    for k, stem in enumerate(stems):
        view_queries, empty, panels = results[k]
        if empty:
            empty_views.append(stem)
            warnings.warn(f"{bundle.root}: nothing is visible in labelled view {stem} (rendered opacity < 0.5 "
                          f"everywhere); its {len(labels[stem].categories())} queries are left out of the metrics",
                          stacklevel=2)
        for q in view_queries:
            categories[q["category"]] = None
        queries += view_queries
        panel_files += panels
    return queries, empty_views, panel_files, list(categories)


class ViewScorer:
    """Scores one labelled view (score_views): in this process, or as a Ray worker holding the field."""

    def __init__(self, views: ViewQuery, bundle: Workspace, labels: dict, index: dict, objects,
                 objects_path: Path, out: Path | None, teacher: bool, cfg: "EvalConfig") -> None:
        self.views, self.bundle, self.labels, self.index = views, bundle, labels, index
        self.objects, self.objects_path, self.out, self.cfg = objects, objects_path, out, cfg
        self.teacher = teacher
        self._teacher_cache = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_teacher_cache": None}

    def teacher_cache(self):
        if self.teacher and self._teacher_cache is None:
            self._teacher_cache = FeatureCache(self.bundle.root, self.views.core.spec.extractor())
        return self._teacher_cache

    def score(self, stem: str) -> tuple[list[dict], bool, list[str]]:
        """(queries, nothing visible, panel files) of labelled view `stem`."""
        views, core, bundle, cfg = self.views, self.views.core, self.bundle, self.cfg
        vl = self.labels[stem]
        objects, objects_path, out = self.objects, self.objects_path, self.out
        neg_emb = core.negative_embeddings
        render_scale, seg_kernel, seg_threshold = cfg.render_scale, cfg.seg_kernel, cfg.seg_threshold
        queries: list[dict] = []
        panel_files: list[str] = []
        i = self.index[stem]
        cam = bundle.dataset.cameras[i]
        cats = vl.categories()
        if not cats:
            return queries, False, panel_files
        label_size = (vl.width, vl.height)
        render_size = (max(1, round(vl.width * render_scale)), max(1, round(vl.height * render_scale)))
        render = views.render(cam, render_size)
        alpha = render.alpha.detach().cpu().numpy() if torch.is_tensor(render.alpha) else np.asarray(render.alpha)
        if not (alpha >= 0.5).any():
            # Nothing of the scene is in this view: its relevancy would be noise scored as an answer.
            return queries, True, panel_files
        text_emb = core.embed(cats)
        rel = relevancy_upsampled(render.features[core.space].detach().float(), (vl.height, vl.width), text_emb,
                                  neg_emb, core.temperature)
        t_rel = None
        teacher_cache = self.teacher_cache()
        if teacher_cache is not None:
            t_feats = teacher_cache.get_or_compute(bundle.view_name(i), bundle.dataset.image(i))
            t_rel = relevancy_upsampled(t_feats, (vl.height, vl.width), text_emb, neg_emb, core.temperature)
        image = _label_image(bundle, i, vl)
        for k, cat in enumerate(cats):
            q = _score_query(rel[k].numpy().astype(np.float64), vl, cat, seg_kernel, seg_threshold)
            q.update({"view": stem, "category": cat})
            # lift the (lightly smoothed) argmax through the rendered depth (render and label sizes may differ)
            lx, ly = views.lift_pixel_of(rel[k])
            sx, sy = render_size[0] / label_size[0], render_size[1] / label_size[1]
            rx = min(render_size[0] - 1, int((lx + 0.5) * sx))
            ry = min(render_size[1] - 1, int((ly + 0.5) * sy))
            point, depth, alpha = views.lift(render, rx, ry)
            q["lift"] = {"pixel": [lx, ly], "alpha": alpha, "depth": depth,
                         "point": None if point is None else point.tolist()}
            if objects is not None:
                objs = _objects_for(cat, objects, objects_path)
                if point is None:
                    q["lift"].update({"dist": None, "in_box": False})
                else:
                    d, inside = _box_distance(point, objs, cfg.box_margin)
                    q["lift"].update({"dist": d, "in_box": inside})
            if t_rel is not None:
                q[TEACHER] = _score_query(t_rel[k].numpy().astype(np.float64), vl, cat, seg_kernel, seg_threshold)
            if out is not None and cfg.panels:
                path = out / "panels" / f"{stem}_{slugify(cat)}.png"
                write_png(path, _panel(image, rel[k].numpy(), q, vl, cat, None if t_rel is None else t_rel[k].numpy(),
                                       seg_kernel, seg_threshold))
                panel_files.append(str(path.relative_to(out)))
            queries.append(q)
        return queries, False, panel_files


def score_masks_3d(sq: SceneQuery, labels: dict, index: dict, queries: list[dict]) -> None:
    """The second mask of every query (q["mask3d"]): each category asked once in 3D (every present part),
    taken whole (SceneQuery.whole_object) and rendered into each labelled view as an occlusion-aware mask
    (ViewQuery.selection_masks), scored like the LangSplat mask cut from the relevancy map."""
    cats = list(dict.fromkeys(q["category"] for q in queries))
    answers = [sq.ask(c, all_parts=True) for c in cats]
    selections = torch.stack([sq.whole_object(a) for a in answers])
    by_view: dict[str, list[dict]] = {}
    for q in queries:
        by_view.setdefault(q["view"], []).append(q)
    for stem, qs in by_view.items():
        vl = labels[stem]
        ks = [cats.index(q["category"]) for q in qs]
        masks = sq.views.selection_masks(sq.dataset.cameras[index[stem]], selections[ks], size=(vl.width, vl.height))
        for q, k, m in zip(qs, ks, masks):
            gt = vl.mask(q["category"])
            q["mask3d"] = {"iou": M.iou(m, gt), "acc": M.pixel_accuracy(m, gt), "gaussians": int(selections[k].sum()),
                           "found": answers[k].found}


def score_objects(locator: Locator, categories, objects, objects_path: Path) -> list[dict]:
    """Scorer of the 3D answers (Locator.locate) against the objects' 3D boxes, per category."""
    field = locator.field
    per_object = []
    means = field.gaussians.means.detach()
    opaque = torch.sigmoid(field.gaussians.opacities.detach().float()) >= 0.1
    for cat in categories:
        objs = _objects_for(cat, objects, objects_path)
        answer = locator.locate(cat)  # the product's 3D answer: the connected part, its point, presence
        point, sel = answer.point, answer.selection
        inside = _in_boxes(means, objs)
        d, in_box = _box_distance(point, objs, 0.0)
        truth = inside & opaque
        per_object.append({
            "category": cat, "point": point.tolist(), "dist": d, "in_box": in_box, "found": answer.found,
            "presence": answer.presence.score,
            "selected": sel.count, "cutoff": sel.cutoff,
            "precision": float((sel.mask & inside).sum()) / max(sel.count, 1) if sel.count else float("nan"),
            "recall": float((sel.mask & truth).sum()) / float(truth.sum()) if truth.any() else float("nan"),
            "gaussians_in_box": int(truth.sum()),
        })
    return per_object


# ------------------------------------------------------------------------------------------ pieces
def _label_image(bundle: Workspace, i: int, vl: ViewLabels) -> np.ndarray:
    img = bundle.dataset.image(i)
    if img.shape[:2] != (vl.height, vl.width):
        from fmsplat.foundation.base import resize

        t = torch.as_tensor(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
        img = resize(t, (vl.height, vl.width))[0].permute(1, 2, 0).clamp(0, 1).numpy()
    return img


def _score_query(rel: np.ndarray, vl: ViewLabels, cat: str, kernel: int, threshold: float) -> dict:
    boxes = vl.boxes(cat)
    gt = vl.mask(cat)
    x, y = M.argmax_pixel(rel)
    pred = M.langsplat_segmentation(rel, kernel=kernel, threshold=threshold)
    return {"hit": M.point_in_boxes(x, y, boxes), "pixel": [x, y], "iou": M.iou(pred, gt),
            "acc": M.pixel_accuracy(pred, gt), "relevancy_max": float(rel.max()),
            "chance": _box_fraction(boxes, vl.height, vl.width)}


def _box_fraction(boxes: np.ndarray, height: int, width: int) -> float:
    """Fraction of the image's pixels inside any of the inclusive boxes: the hit rate of a random argmax."""
    inside = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        xa, xb = sorted((x1, x2))
        ya, yb = sorted((y1, y2))
        inside[max(0, int(np.ceil(ya))):max(0, int(np.floor(yb)) + 1), max(0, int(np.ceil(xa))):max(0, int(np.floor(xb)) + 1)] = True
    return float(inside.mean())


def _panel(image, rel, q, vl: ViewLabels, cat: str, t_rel, kernel, threshold) -> np.ndarray:
    gt = vl.mask(cat)
    pred = M.langsplat_segmentation(rel, kernel=kernel, threshold=threshold)
    x, y = q["pixel"]
    rel_img = draw_marker(draw_boxes(relevancy_overlay(image, rel), vl.boxes(cat)), x, y,
                          colour=(0, 255, 0) if q["hit"] else (255, 0, 0))
    tiles = [image, rel_img, mask_overlay(image, pred, gt)]
    titles = [f"{q['view']}: {cat}", f"relevancy {'hit' if q['hit'] else 'miss'}", f"IoU {q['iou']:.2f}"]
    if t_rel is not None:
        tx, ty = q[TEACHER]["pixel"]
        tiles.append(draw_marker(draw_boxes(relevancy_overlay(image, t_rel), vl.boxes(cat)), tx, ty,
                                 colour=(0, 255, 0) if q[TEACHER]["hit"] else (255, 0, 0)))
        titles.append("teacher")
    return colorbar(hstack(tiles, titles=titles))  # relevancy on the fixed scale (fmsplat.pictures)


def _fidelity(bundle: Workspace, field: FeatureField, test_idx: list[int], render_scale: float, progress: bool) -> dict:
    out: dict = {}
    if not test_idx:
        return out
    caches = {a: FeatureCache(bundle.root, s.extractor()) for a, s in field.spaces.items()}
    per: dict[str, list[dict]] = {a: [] for a in field.spaces}
    for i in tqdm(test_idx, desc="feature fidelity", unit="view", disable=not progress):
        cam = bundle.dataset.cameras[i]
        size = (max(1, round(cam.width * render_scale)), max(1, round(cam.height * render_scale)))
        render = field.render(cam, spaces=list(field.spaces), size=size)
        for alias in field.spaces:
            teacher = caches[alias].get_or_compute(bundle.view_name(i), bundle.dataset.image(i))
            valid = teacher.abs().amax(dim=0) > 0
            scores = M.feature_fidelity(render.features[alias].detach().float(), teacher,
                                        None if bool(valid.all()) else valid)
            per[alias].append({"view": bundle.view_name(i), **scores})
    for alias, rows in per.items():
        out[alias] = {"one_minus_cos": _mean(r["one_minus_cos"] for r in rows), "mse": _mean(r["mse"] for r in rows),
                      "grid": list(caches[alias].get(bundle.view_name(test_idx[0])).shape[1:]), "per_view": rows}
    return out


def _rgb(bundle: Workspace, field: FeatureField, test_idx: list[int]) -> dict:
    from fmsplat.render.rgb import render_rgb

    background = tuple((bundle.meta.get("train_config") or {}).get("background", bundle.dataset.background))
    rows = []
    with torch.no_grad():
        for i in test_idx:
            res = render_rgb(field.gaussians.detach(), bundle.dataset.cameras[i], field.gaussians.sh_degree, background)
            pred = res.image.clamp(0, 1)
            gt = bundle.dataset.image_tensor(i)
            rows.append({"view": bundle.view_name(i), "psnr": M.rgb_psnr(pred, gt), "ssim": M.rgb_ssim(pred, gt)})
    return {"psnr": _mean(r["psnr"] for r in rows), "ssim": _mean(r["ssim"] for r in rows),
            "background": list(background), "per_view": rows}


def _latency(views: ViewQuery, bundle: Workspace, indices: list[int], render_scale: float, repeats: int,
             teacher: bool) -> dict:
    """Median ms of one relevancy map: render the language space + relevancy of one (cached) text."""
    if repeats < 1:
        return {}
    cam = bundle.dataset.cameras[indices[0]]
    size = (max(1, round(cam.width * render_scale)), max(1, round(cam.height * render_scale)))
    text = "object of interest"
    emb, neg = views.core.embed([text]), views.core.negative_embeddings
    times, t_times = [], []
    for r in range(repeats + 1):  # the first call warms up (kernels, allocations) and is not counted
        t0 = time.perf_counter()
        views.relevancy_map(cam, text, size)
        t1 = time.perf_counter()
        if r:
            times.append(1e3 * (t1 - t0))
    out = {"relevancy_ms": statistics.median(times), "size": list(size), "repeats": repeats}
    if teacher:
        image = bundle.dataset.image(indices[0])
        extractor = views.core.spec.extractor()
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            feats = extractor.encode_images(image)[0]
            relevancy_upsampled(feats, (size[1], size[0]), emb[0], neg, views.core.temperature)
            t1 = time.perf_counter()
            if r:
                t_times.append(1e3 * (t1 - t0))
        out["teacher_ms"] = statistics.median(t_times)
    return out


def _summary(queries, per_object, fidelity, rgb, latency, space) -> dict:
    s = {
        "loc_acc": _mean(q["hit"] for q in queries),
        "loc_chance": _mean(q["chance"] for q in queries),
        "miou": _mean(q["iou"] for q in queries),
        "macc": _mean(q["acc"] for q in queries),
        "miou_3d": _mean(q["mask3d"]["iou"] for q in queries) if queries and "mask3d" in queries[0] else None,
        "macc_3d": _mean(q["mask3d"]["acc"] for q in queries) if queries and "mask3d" in queries[0] else None,
        # the 3D mask where presence trusts the answer, the relevancy cut elsewhere
        "miou_3d_if_found": _mean(q["mask3d"]["iou"] if q["mask3d"]["found"] else q["iou"] for q in queries)
        if queries and "mask3d" in queries[0] else None,
        "lift_in_box": _mean(q["lift"].get("in_box") for q in queries) if queries and "in_box" in queries[0]["lift"] else None,
        "lift_dist_median": _median(q["lift"].get("dist") for q in queries) if queries and "dist" in queries[0]["lift"] else None,
        "lift_missing": sum(q["lift"]["point"] is None for q in queries),
        "gauss_in_box": _mean(o["in_box"] for o in per_object) if per_object else None,
        "gauss_dist_median": _median(o["dist"] for o in per_object) if per_object else None,
        "sel_precision": _mean(o["precision"] for o in per_object) if per_object else None,
        "sel_recall": _mean(o["recall"] for o in per_object) if per_object else None,
        "found": _mean(o["found"] for o in per_object) if per_object else None,  # presence of present objects
        "fidelity": {a: {"one_minus_cos": f["one_minus_cos"], "mse": f["mse"]} for a, f in fidelity.items()},
        "psnr": rgb.get("psnr") if rgb else None,
        "ssim": rgb.get("ssim") if rgb else None,
        "latency_ms": latency.get("relevancy_ms"),
        "space": space,
    }
    return s


def _teacher_summary(queries, latency) -> dict:
    t = [q[TEACHER] for q in queries]
    return {"loc_acc": _mean(q["hit"] for q in t), "miou": _mean(q["iou"] for q in t), "macc": _mean(q["acc"] for q in t),
            "latency_ms": latency.get("teacher_ms")}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return x


__all__ = ["EvalConfig", "EvalError", "TEACHER", "evaluate_scene", "score_objects", "score_views"]
