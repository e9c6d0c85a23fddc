"""`fmsplat query SCENE "text"`: answer one text query on a fitted scene and write what it found.

Files, under OUT (default SCENE/queries/<method>/), named after the query (`espresso-cup_...`):

- `<slug>_relevancy.png`  colour-mapped relevancy over the view's image, argmax marked;
- `<slug>_mask.png`       the LangSplat-protocol mask (white = object);
- `<slug>_overlay.png`    3DGS render | photo | relevancy over the render | mask panel;
- `<slug>.ply`            the selected Gaussians, a 3DGS PLY of their own;
- `<slug>.json`           2D location, 3D points (lifted and from the Gaussians), selection, timing.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from fmsplat import atomic
from fmsplat.fields import load_field, open_scene
from fmsplat.fields.base import FieldError
from fmsplat.query.engine import QueryEngine, export_selection
from fmsplat.query.relevancy import CANONICAL_NEGATIVES
from fmsplat.query.viz import draw_marker, hstack, mask_overlay, relevancy_overlay, resize_map, write_png
from fmsplat.reconstruct.renders import render_image, scene_background


def slugify(text: str) -> str:
    """Filesystem-safe short name of a query ('espresso cup' -> 'espresso-cup')."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text.strip().lower()).strip("-")[:60] or "query"


def run_query(scene, text: str, view: int | None = None, method: str | None = None, out=None,
              space: str | None = None, scale: float = 1.0, negatives=CANONICAL_NEGATIVES,
              radius: float | None = None, relative: float = 0.7, data: str | None = None) -> dict:
    """Run one query on view `view` (default: the first held-out view) and write its files. Returns
    the JSON record (with the written paths under "files")."""
    t_start = time.perf_counter()
    scene = Path(scene)
    bundle = open_scene(scene, data=data)
    field_ = load_field(scene, method, bundle=bundle)
    dataset = bundle.dataset
    if view is None:
        view = dataset.test_indices[0] if dataset.test_indices else 0
    if not 0 <= view < len(dataset):
        raise FieldError(f"{scene}: view {view} does not exist (the dataset {dataset.source} has {len(dataset)} views)")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    t_load = time.perf_counter()
    camera = dataset.cameras[view]
    size = (max(1, round(camera.width * scale)), max(1, round(camera.height * scale)))
    engine = QueryEngine(field_, space, negatives)
    result = engine.query(camera, text, size=size, view=bundle.view_name(view))
    select = None
    if radius is not None:
        anchor = result.point_lifted if result.point_lifted is not None else result.point_gaussians
        select = engine.select_gaussians(text, relative=relative, near=anchor, radius=radius,
                                         gaussian_relevancy=result.selection.relevancy)
    elif relative != 0.7:
        select = engine.select_gaussians(text, relative=relative, gaussian_relevancy=result.selection.relevancy)
    if select is not None:
        result.selection = select

    out = Path(out) if out is not None else scene / "queries" / field_.method
    slug = slugify(text)
    image = dataset.image(view)
    if image.shape[:2] != result.relevancy.shape:
        # show the answer on the photo: maps are resized to it, the marker scaled with them
        sy, sx = image.shape[0] / result.relevancy.shape[0], image.shape[1] / result.relevancy.shape[1]
        rel_img = resize_map(result.relevancy, image.shape[:2])
        mask_img = resize_map(result.mask.astype(float), image.shape[:2]) > 0.5
    else:
        sy = sx = 1.0
        rel_img, mask_img = result.relevancy, result.mask
    px, py = (result.pixel[0] + 0.5) * sx - 0.5, (result.pixel[1] + 0.5) * sy - 0.5
    overlay = draw_marker(relevancy_overlay(image, rel_img), px, py)
    # the answer drawn on the field's own 3DGS render beside the photo: a failed reconstruction or
    # a misplaced answer shows at once
    render = render_image(field_.gaussians, camera, scene_background(bundle.meta))
    panel = [render, image, draw_marker(relevancy_overlay(render, rel_img), px, py), mask_overlay(render, mask_img)]
    files = {
        "relevancy": write_png(out / f"{slug}_relevancy.png", overlay),
        "mask": write_png(out / f"{slug}_mask.png", result.mask),
        "overlay": write_png(out / f"{slug}_overlay.png",
                             hstack(panel, titles=["3DGS render", "photo", text, "mask"])),
    }
    record = result.to_json()
    if result.selection.count:
        files["gaussians"] = out / f"{slug}.ply"
        export_selection(field_, result.selection, files["gaussians"])
    else:
        record["selection"]["note"] = "no Gaussian selected (radius too small?); no PLY written"
    record.update({
        "scene": str(scene),
        "method": field_.method,
        "view_index": view,
        "negatives": list(engine.negatives),
        "selection_params": {"relative": relative, "radius": radius},
        "load_ms": round(1e3 * (t_load - t_start), 3),
        "wall_ms": round(1e3 * (time.perf_counter() - t_start), 3),
        "files": {k: str(v) for k, v in files.items()},
    })
    files["json"] = out / f"{slug}.json"
    record["files"]["json"] = str(files["json"])
    atomic.write_json(files["json"], record)
    return record


__all__ = ["run_query", "slugify"]
