"""Change a scene by words: a new scene directory without the Gaussians of a phrase's answer, or with only
them: `edit_scene(sq, "chair", out, mode="remove")`.

The answer is the 3D answer of `fmsplat query` (Locator.locate: the heaviest connected part, or with
`all_parts` every part of a fair weight), taken whole by `SceneQuery.whole_object`: grown over the object
by hysteresis and to the inventory objects it falls in, never across a background plane (the wall the fox
hangs on), with the faint Gaussians that draw the same surface. Those matter most: on the fox 80 % of the
Gaussians are under 0.1 opacity, and an edit of the opaque ones alone left the fox fainter, not gone
(bench/README.md, "Inventory and edits"). What was hidden behind a removed object was never seen and
renders as whatever the training left there.

The edited scene is a scene like any other: gaussians.ply (the kept Gaussians), scene.json (the source's, with the edit recorded and the new Gaussians' identity), and
every field of the source that renders the same Gaussians, cut to the kept ones (FeatureField.subset:
each kept Gaussian renders and answers as before). A field that owns other Gaussians than the edited ones
(M3's joint training) cannot follow and is left out, named in the record. renders/ holds before | after
pictures of the views that see the answer best.

Nothing is written for a phrase that is not found (the refusal gives its presence score), and the edit
is built in a hidden sibling folder that is renamed into place last: a failed or killed edit leaves no
half-written scene. The source scene is only read.
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
from pathlib import Path

import torch

from fmsplat.errors import UserInputError
from fmsplat.fields import load_field
from fmsplat.pictures import hstack, write_png
from fmsplat.query.inventory import best_views
from fmsplat.query.locate import Answer
from fmsplat.query.scene_query import SceneQuery, check_text
from fmsplat.render.rgb import render_image
from fmsplat.workspace import Workspace

MODES = ("remove", "keep")
EDIT_VIEWS = 3


def edit_scene(sq: SceneQuery, text: str, out, mode: str = "remove", all_parts: bool = False,
               views: int = EDIT_VIEWS, grow: bool = True, answer: Answer | None = None) -> dict:
    """Write the edited scene to `out` (a new directory) and return the record of the edit. `grow`: the
    answer's Gaussians grown by hysteresis (Locator.grow) and joined with the inventory objects they fall
    in (Inventory.grow): the answer alone is the object's surest surface, and removing it leaves the rest
    of the object showing. `answer`: the phrase already asked (the viewer's, at its slider's cut)."""
    if mode not in MODES:
        raise UserInputError(f"edit mode must be one of {MODES}, got {mode!r}")
    text = check_text(text)
    out = Path(out)
    src = sq.root.resolve()
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out}: is a file; an edit writes a new scene directory (choose another --out)")
    if out.is_dir() and any(out.iterdir()):
        raise UserInputError(f"{out}: exists and is not empty; an edit writes a new scene (choose another --out)")
    if out.resolve() == src or src in out.resolve().parents:
        raise UserInputError(f"{out}: inside the source scene {src}; an edit never writes into the scene it reads")
    if answer is None:
        answer = sq.ask(text, all_parts=all_parts)
    elif answer.text != text:
        raise UserInputError(f"edit: the answer given is to '{answer.text}', not to '{text}'")
    best = answer.presence
    if not answer.found:
        there = ", ".join(c.name for c in best.concepts[:3]) if best is not None else "nothing"
        raise UserInputError(f"'{text}' is not found in {sq.root} (presence score {best.score if best else 0:.2f}; "
                             f"there: {there}); nothing edited")
    selected = answer.selection.mask
    answered = int(selected.sum())
    selected = sq.whole_object(answer, grow)
    keep = ~selected if mode == "remove" else selected
    if not keep.any():
        raise UserInputError(f"removing '{text}' would remove every Gaussian of {sq.root}; nothing edited")
    field_ = sq.field
    gaussians = field_.gaussians.detach().subset(keep)
    record = {"source": str(src), "mode": mode, "text": text, "all_parts": all_parts, "method": field_.method,
              "presence": best.to_json(), "answer_gaussians": answered, "grown": grow, "selected": int(selected.sum()),
              "gaussians_before": len(keep), "gaussians_after": int(keep.sum()), "fields": [], "fields_left_out": {}}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.edit-{secrets.token_hex(4)}"
    try:
        ws = Workspace(tmp)
        meta = copy.deepcopy(sq.bundle.meta)
        meta.pop("identity", None)
        meta["edit"] = {k: record[k] for k in ("source", "mode", "text", "all_parts", "method", "answer_gaussians",
                                               "grown", "selected", "gaussians_before", "gaussians_after")}
        metrics = {"edit": meta["edit"], "note": "an edited scene: the source's PSNR against the photos does not apply"}
        ws.write_scene(gaussians, meta, metrics, sq.dataset)
        for method in sq.bundle.saved_methods():
            other = field_ if method == field_.method else load_field(sq.root, method, bundle=sq.bundle)
            same = other is field_ or (not other.owns_geometry and not field_.owns_geometry)
            if not same:
                record["fields_left_out"][method] = "renders other Gaussians than the edited ones; fit it again"
                continue
            cut = other.subset(keep)
            cut.owns_geometry = False  # its Gaussians are now the scene's gaussians.ply
            cut.save(ws)
            record["fields"].append(method)
        _pictures(sq, answer, gaussians, ws, mode, text, views)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record["out"] = str(out)
    return record


def _pictures(sq: SceneQuery, answer, edited, ws: Workspace, mode: str, text: str, n: int) -> None:
    part = answer.parts[0]
    chosen = best_views(sq.dataset.cameras, part.box_min, part.box_max, n) or [sq.view_index(None)]
    ws.renders_dir.mkdir(parents=True, exist_ok=True)
    bg = sq.bundle.background()
    for i in chosen:
        cam = sq.dataset.cameras[i]
        with torch.no_grad():
            before, after = render_image(sq.field.gaussians, cam, bg), render_image(edited, cam, bg)
        write_png(ws.renders_dir / f"edit_{i:04d}.png",
                  hstack([before, after], titles=[f"before (view {i})", f"after --{mode} '{text}'"]))


__all__ = ["EDIT_VIEWS", "MODES", "edit_scene"]
