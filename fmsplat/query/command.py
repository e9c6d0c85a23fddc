"""Ask a fitted scene in words: `SceneQuery` (load once, ask many times) and `fmsplat query`.

    from fmsplat.query import SceneQuery
    sq = SceneQuery.open("runs/fox")               # the newest fitted field; text encoder loaded once
    a = sq.ask("fox")                              # Answer: found, score, point, parts (box, Gaussians)
    if a.found:
        sq.export(a, "fox.ply")                    # the object's Gaussians, a 3DGS PLY
    r = sq.in_view(a, view=3)                      # QueryResult: relevancy map, 2D point, mask in view 3
    sq.what_is_here(point=a.point)                 # [Concept(name, similarity), ...]

`fmsplat query SCENE "text" ["text" ...]` writes, under OUT (default SCENE/queries/<method>/), for each
phrase (file names from the phrase, in any script, unique per phrase):

- `<name>_relevancy.png`  relevancy over the view's photo on the fixed scale (colour bar), the 3D point's
                          projection marked (ring: visible; dashed: hidden or outside), the 2D argmax (cross);
- `<name>_mask.png`       the LangSplat-protocol mask of the view (white = object);
- `<name>_overlay.png`    3DGS render | photo | relevancy over the render | the selected part, seen in the view;
- `<name>.ply`            the selected part's Gaussians (only when the phrase is found, or with export_absent);
- `<name>.json`           found, presence score and best concepts, 3D point and box per part, the view's 2D
                          answers, timing.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fmsplat.workspace import Workspace
from fmsplat import atomic
from fmsplat.errors import UserInputError
from fmsplat.fields import load_field
from fmsplat.fields.base import FieldError, camera_at, splat
from fmsplat.query.engine import LOCATE_RELATIVE, Answer, QueryEngine, QueryResult, export_selection
from fmsplat.query.presence import Concept
from fmsplat.query.relevancy import CANONICAL_NEGATIVES
from fmsplat.pictures import colorbar, draw_marker, hstack, mask_overlay, relevancy_overlay, resize_map, write_png
from fmsplat.render.rgb import render_image

MAX_TEXT_LENGTH = 200


def slugify(text: str) -> str:
    """A file name for a phrase, readable in any script and distinct for distinct phrases: letters and
    digits of every script kept, lower-cased, other runs turned into '-'; when that loses anything
    (case, punctuation, spacing), a short hash of the exact phrase is appended ('espresso cup' ->
    'espresso-cup', 'Cat!' -> 'cat-<hash>', '猫' -> '猫')."""
    norm = unicodedata.normalize("NFC", text.strip())
    readable = re.sub(r"[\W_]+", "-", norm.lower()).strip("-")[:60]
    if re.fullmatch(r"[^\W_]+( [^\W_]+)*", norm) and norm == norm.lower() and len(norm) <= 60:
        return readable  # lower-case words and single spaces: the name says it all
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}" if readable else f"phrase-{digest}"


def check_text(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise UserInputError("a query phrase is empty")
    if len(text) > MAX_TEXT_LENGTH:
        raise UserInputError(f"a query phrase has {len(text)} characters; at most {MAX_TEXT_LENGTH} are allowed")
    return text


class SceneQuery:
    """A fitted scene opened for questions: the field, its dataset and one query engine, loaded once."""

    def __init__(self, scene, method: str | None = None, space: str | None = None,
                 negatives: Sequence[str] = CANONICAL_NEGATIVES, data: str | None = None) -> None:
        self.root = Path(scene)
        self.bundle = Workspace.open(self.root, data=data)
        self.field = load_field(self.root, method, bundle=self.bundle)
        self.engine = QueryEngine(self.field, space, negatives)

    @classmethod
    def open(cls, scene, method: str | None = None, space: str | None = None,
             negatives: Sequence[str] = CANONICAL_NEGATIVES, data: str | None = None) -> "SceneQuery":
        """Open a scene directory with a fitted field (`fmsplat fit`); `method` defaults to the newest."""
        return cls(scene, method, space, negatives, data)

    @property
    def dataset(self):
        return self.bundle.dataset

    def view_index(self, view: int | None) -> int:
        """`view`, checked; None: the first held-out view (else view 0)."""
        n = len(self.dataset)
        if view is None:
            return self.dataset.test_indices[0] if self.dataset.test_indices else 0
        if not isinstance(view, (int, np.integer)) or not 0 <= int(view) < n:
            raise FieldError(f"{self.root}: view {view} does not exist (the dataset {self.dataset.source} has {n} "
                             f"views, 0-{n - 1})")
        return int(view)

    def ask(self, text: str, all_parts: bool = False, **locate) -> Answer:
        """The 3D answer to `text` (QueryEngine.locate): found or not, score, point, parts."""
        return self.engine.locate(check_text(text), all_parts=all_parts, **locate)

    def ask_many(self, texts: Sequence[str], all_parts: bool = False, **locate) -> list[Answer]:
        return [self.ask(t, all_parts, **locate) for t in texts]

    def in_view(self, answer: Answer | str, view: int | None = None, scale: float = 1.0) -> QueryResult:
        """The answer seen from dataset view `view` (rendered at `scale` of its size): projection of the 3D
        point, relevancy map, 2D argmax, mask, lifted point."""
        if not scale > 0:
            raise UserInputError(f"scale must be positive, got {scale}")
        if isinstance(answer, str):
            answer = self.ask(answer)
        i = self.view_index(view)
        camera = self.dataset.cameras[i]
        size = (max(1, round(camera.width * scale)), max(1, round(camera.height * scale)))
        return self.engine.query(camera, answer.text, size=size, view=self.bundle.view_name(i), answer=answer)

    def what_is_here(self, point=None, view: int | None = None, pixel: tuple[int, int] | None = None,
                     k: int = 5) -> list[Concept]:
        """The `k` concepts that best describe a world `point`, or `pixel` (x, y) of dataset view `view`."""
        if (point is None) == (pixel is None):
            raise UserInputError("what_is_here: give a 3D point or a pixel (with its view), not both")
        if point is not None:
            return self.engine.describe_point(point, k)
        i = self.view_index(view)
        return self.engine.describe_pixel(self.dataset.cameras[i], int(pixel[0]), int(pixel[1]), k)

    def export(self, answer: Answer, path) -> int:
        """Write the answer's Gaussians (all its parts) as a 3DGS PLY; returns how many."""
        return export_selection(self.field, answer.selection, path)

    # -- pictures
    def selection_coverage(self, answer: Answer, camera) -> np.ndarray:
        """(H, W) share of each pixel's colour that comes from the answer's Gaussians, occlusion included."""
        mask = answer.selection.mask.float()[:, None]
        with torch.no_grad():
            res = splat(self.field.gaussians, mask, camera)
        return res.image[0].clamp(0, 1).cpu().numpy()

    def pictures(self, result: QueryResult, view: int) -> dict[str, np.ndarray]:
        """The relevancy (photo), mask and overlay panel pictures of a view's answer."""
        camera = self.dataset.cameras[view]
        image = self.dataset.image(view)
        rh, rw = result.relevancy.shape
        sy, sx = image.shape[0] / rh, image.shape[1] / rw
        rel_img = resize_map(result.relevancy, image.shape[:2])
        mask_img = resize_map(result.mask.astype(float), image.shape[:2]) > 0.5

        def marks(img):
            px, py = (result.pixel[0] + 0.5) * sx - 0.5, (result.pixel[1] + 0.5) * sy - 0.5
            img = draw_marker(img, px, py, colour=(255, 255, 255), radius=3)
            if result.projection is not None:
                qx, qy = (result.projection[0] + 0.5) * sx - 0.5, (result.projection[1] + 0.5) * sy - 0.5
                colour = (40, 255, 40) if result.visible and result.found else (255, 60, 60)
                img = draw_marker(img, qx, qy, colour=colour, radius=max(6, image.shape[1] // 60))
            return img

        render = render_image(self.field.gaussians, camera, self.bundle.background())
        cover = self.selection_coverage(result.answer, camera_at(camera, (image.shape[1], image.shape[0])))
        part = mask_overlay(render, cover > 0.3, alpha=0.6)
        state = "found" if result.found else "NOT FOUND"
        score = result.answer.presence.score if result.answer.presence else float("nan")
        titles = ["3DGS render", "photo", f"'{result.text}': {state} ({score:.2f})",
                  f"3D answer: {result.answer.selection.count} Gaussians"]
        panel = hstack([render, image, marks(relevancy_overlay(render, rel_img)), part], titles=titles)
        return {"relevancy": colorbar(marks(relevancy_overlay(image, rel_img))), "mask": result.mask,
                "overlay": colorbar(panel)}


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
    out = Path(out) if out is not None else sq.root / "queries" / sq.field.method
    records = []
    for text in dict.fromkeys(texts):
        t0 = time.perf_counter()
        answer = sq.ask(text, all_parts=all_parts, relative=relative)
        result = sq.in_view(answer, view, scale)
        name = slugify(text)
        pics = sq.pictures(result, view)
        files = {k: write_png(out / f"{name}_{k}.png", pics[k]) for k in ("relevancy", "mask", "overlay")}
        record = result.to_json()
        if answer.found or export_absent:
            files["gaussians"] = out / f"{name}.ply"
            sq.export(answer, files["gaussians"])
        else:
            record["answer_3d"]["note"] = "not found: no PLY written (export_absent to write the best guess anyway)"
        record.update({
            "scene": str(sq.root), "method": sq.field.method, "view_index": view,
            "negatives": list(sq.engine.negatives), "selection_params": {"relative": relative, "all_parts": all_parts},
            "vocabulary": sq.engine.vocabulary.source,
            "load_ms": round(1e3 * (t_load - t_start), 3),
            "wall_ms": round(1e3 * (time.perf_counter() - t0), 3),
            "files": {k: str(v) for k, v in files.items()},
        })
        files["json"] = out / f"{name}.json"
        record["files"]["json"] = str(files["json"])
        atomic.write_json(files["json"], record)
        records.append(record)
    return records


__all__ = ["MAX_TEXT_LENGTH", "SceneQuery", "check_text", "run_query", "slugify"]
