"""`fmsplat query`: the CLI back-end that answers phrases on a fitted scene (fmsplat.query.SceneQuery) and
writes the answers to files.

`fmsplat query SCENE "text" ["text" ...]` writes, under OUT (default SCENE/queries/<method>/), for each
phrase (file names from the phrase, in any script, unique per phrase):

- `<name>_relevancy.png`  relevancy over the view's photo on the fixed scale (colour bar), the 3D point's
                          projection marked (ring: visible; dashed: hidden or outside), the 2D argmax (cross);
- `<name>_mask.png`       the LangSplat-protocol mask of the view (white = object), cut from the relevancy map;
- `<name>_mask3d.png`     the 3D answer's whole object (SceneQuery.whole_object) seen in the view, occlusion-
                          aware (only when the phrase is found: otherwise there is no object to show);
- `<name>_overlay.png`    3DGS render | photo | relevancy over the render | the selected part, seen in the view;
- `<name>.ply`            the whole object's Gaussians (as `<name>_mask3d.png` shows it) when the phrase is found;
                          with export_absent, an absent phrase's best guess (the answer's own part);
- `<name>.json`           found, presence score and best concepts, 3D point and box per part, the view's 2D
                          answers, timing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from fmsplat import atomic
from fmsplat.errors import UserInputError
from fmsplat.pictures import colorbar, draw_marker, hstack, mask_overlay, relevancy_overlay, resize_map, write_png
from fmsplat.query import QueryResult, SceneQuery, check_text, slugify
from fmsplat.query.locate import export_selection
from fmsplat.query.parts import LOCATE_RELATIVE
from fmsplat.query.relevancy import CANONICAL_NEGATIVES
from fmsplat.render.rgb import render_image


def pictures(sq: SceneQuery, result: QueryResult, view: int, whole=None) -> dict[str, np.ndarray]:
    """The relevancy (photo), mask and overlay panel pictures of a view's answer; with `whole` (N,) bool,
    the answer's whole object, its mask in the view and the overlay's last panel show that instead."""
    camera = sq.dataset.cameras[view]
    image = sq.dataset.image(view)
    rh, rw = result.relevancy.shape
    sy, sx = image.shape[0] / rh, image.shape[1] / rw
    rel_img = resize_map(result.relevancy, image.shape[:2])

    def marks(img):
        px, py = (result.pixel[0] + 0.5) * sx - 0.5, (result.pixel[1] + 0.5) * sy - 0.5
        img = draw_marker(img, px, py, colour=(255, 255, 255), radius=3)
        if result.projection is not None:
            qx, qy = (result.projection[0] + 0.5) * sx - 0.5, (result.projection[1] + 0.5) * sy - 0.5
            colour = (40, 255, 40) if result.visible and result.found else (255, 60, 60)
            img = draw_marker(img, qx, qy, colour=colour, radius=max(6, image.shape[1] // 60))
        return img

    render = render_image(sq.field.gaussians, camera, sq.bundle.background())
    shown = result.answer.selection.mask if whole is None else whole
    part = mask_overlay(render, sq.views.selection_masks(camera, shown, (image.shape[1], image.shape[0]))[0], alpha=0.6)
    state = "found" if result.found else "NOT FOUND"
    score = result.answer.presence.score if result.answer.presence else float("nan")
    what = (f"3D answer: {result.answer.selection.count} Gaussians" if whole is None
            else f"object: {int(whole.sum())} Gaussians")
    titles = ["3DGS render", "photo", f"'{result.text}': {state} ({score:.2f})", what]
    panel = hstack([render, image, marks(relevancy_overlay(render, rel_img)), part], titles=titles)
    pics = {"relevancy": colorbar(marks(relevancy_overlay(image, rel_img))), "mask": result.mask,
            "overlay": colorbar(panel)}
    if whole is not None:
        pics["mask3d"] = sq.views.selection_masks(camera, whole, result.size)[0]
    return pics


def run_query(scene, texts: str | Sequence[str], view: int | None = None, method: str | None = None, out=None,
              space: str | None = None, scale: float = 1.0, negatives=CANONICAL_NEGATIVES, all_parts: bool = False,
              relative: float = LOCATE_RELATIVE, data: str | None = None, export_absent: bool = False,
              sq: SceneQuery | None = None) -> list[dict]:
    """Answer each phrase of `texts` on a fitted scene, seen from view `view` (default: the first
    held-out view), and write its files (module docstring). Returns one JSON record per phrase (with the
    written paths under "files")."""
    t_start = time.perf_counter()
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise UserInputError("no phrase to look for")
    for t in texts:
        check_text(t)
    if not scale > 0:
        raise UserInputError(f"scale must be positive, got {scale}")
    sq = sq or SceneQuery.open(scene, method, space, negatives, data)
    view = sq.view_index(view)
    t_load = time.perf_counter()
    out = Path(out) if out is not None else sq.bundle.queries_dir / sq.field.method
    records = []
    for text in dict.fromkeys(texts):
        t0 = time.perf_counter()
        answer = sq.ask(text, all_parts=all_parts, relative=relative)
        result = sq.in_view(answer, view, scale)
        name = slugify(text)
        whole = sq.whole_object(answer) if answer.found else None
        pics = pictures(sq, result, view, whole)
        files = {k: write_png(out / f"{name}_{k}.png", pics[k]) for k in ("relevancy", "mask", "mask3d", "overlay")
                 if k in pics}
        if whole is None:  # no object: no object mask, not a stale one from an earlier run
            (out / f"{name}_mask3d.png").unlink(missing_ok=True)
        record = result.to_json()
        if whole is not None:
            record["object"] = {"gaussians": int(whole.sum()), "mask_pixels": int(pics["mask3d"].sum())}
        if answer.found or export_absent:
            files["gaussians"] = out / f"{name}.ply"
            export_selection(sq.field, whole if whole is not None else answer.selection, files["gaussians"])
        else:
            record["answer_3d"]["note"] = "not found: no PLY written (export_absent to write the best guess anyway)"
        record.update({
            "scene": str(sq.root), "method": sq.field.method, "view_index": view,
            "negatives": list(sq.core.negatives), "selection_params": {"relative": relative, "all_parts": all_parts},
            "vocabulary": sq.core.vocabulary.source,
            "load_ms": round(1e3 * (t_load - t_start), 3),
            "wall_ms": round(1e3 * (time.perf_counter() - t0), 3),
            "files": {k: str(v) for k, v in files.items()},
        })
        files["json"] = out / f"{name}.json"
        record["files"]["json"] = str(files["json"])
        atomic.write_json(files["json"], record)
        records.append(record)
    return records


__all__ = ["pictures", "run_query"]
