"""`fmsplat inventory`: the CLI back-end that lists what is in a fitted scene (fmsplat.query.inventory) and
writes it, under OUT (default SCENE/inventory/<method>/):

- `inventory.json`      every object: name (or "unnamed object"), nearest concepts, 3D point, box, size,
                        Gaussian count, presence, the views that see it best; background marked;
- `inventory.png`       the render of the view that sees the most objects, each object's box and number;
- `inventory_map.png`   top-down map (seen along the cameras' mean up axis): the Gaussians, each object's
                        box and number;
- `objects/<n>-<name>.ply`  each object's Gaussians (with `ply`).

The JSON records the field it was made from (its manifest's SHA-256) and the settings: a second run on
the same field reads it back instead of computing it again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fmsplat import atomic
from fmsplat.pictures import font, label_size, to_uint8, write_png
from fmsplat.query import SceneQuery, export_selection, slugify
from fmsplat.query.inventory import INVENTORY_CLUSTERS, Inventory, box_corners
from fmsplat.render.rgb import render_image
from fmsplat.scene.cameras import top_down_basis
from fmsplat.workspace import FIELD_MANIFEST, sha256_file

COLOURS = [(255, 220, 40), (60, 200, 255), (255, 90, 90), (120, 255, 120), (255, 140, 255), (255, 160, 60),
           (160, 160, 255), (200, 255, 255)]


def _label(draw: ImageDraw.ImageDraw, xy, text: str, colour, size: int) -> None:
    f = font(size)
    x, y = xy
    box = draw.textbbox((x, y), text, font=f)
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text((x, y), text, fill=colour, font=f)


def _in_image(cam, p_cam) -> bool:
    u, v, _ = cam.K @ (p_cam / p_cam[2])
    return bool(p_cam[2] > 1e-6 and 0 <= u < cam.width and 0 <= v < cam.height)


def view_picture(sq: SceneQuery, inv: Inventory, view: int) -> np.ndarray:
    """The render of `view` with each object's projected box and "n name" drawn on it."""
    cam = sq.dataset.cameras[view]
    pil = Image.fromarray(to_uint8(render_image(sq.field.gaussians, cam, sq.bundle.background())))
    scale = max(1, 512 // max(cam.width, 1))
    if scale > 1:
        pil = pil.resize((cam.width * scale, cam.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    R, t = cam.viewmat[:3, :3], cam.viewmat[:3, 3]
    for obj in inv.objects:
        if obj.background:
            continue
        pc = box_corners(obj.box_min, obj.box_max) @ R.T + t
        centre = 0.5 * (obj.box_min + obj.box_max) @ R.T + t
        if (pc[:, 2] <= 1e-6).any() or view not in obj.views and not _in_image(cam, centre):
            continue  # behind the camera, or its centre out of the picture: drawn in its own best views
        uv = (pc @ cam.K.T)[:, :2] / pc[:, 2:3] * scale
        x0, y0 = uv.min(0)
        x1, y1 = uv.max(0)
        if x1 < 0 or y1 < 0 or x0 >= pil.width or y0 >= pil.height:
            continue
        colour = COLOURS[(obj.index - 1) % len(COLOURS)]
        draw.rectangle([float(x0), float(y0), float(x1), float(y1)], outline=colour, width=2)
        _label(draw, (max(0.0, float(x0)) + 2, max(0.0, float(y0)) + 2), f"{obj.index} {obj.name}", colour,
               label_size(pil.width))
    return np.asarray(pil)


def map_picture(sq: SceneQuery, inv: Inventory, size: int = 640) -> np.ndarray:
    """Top-down map: the opaque Gaussians seen along the cameras' mean up axis, each object's box and number."""
    keep, pts, _, _ = sq.locator.opaque_geometry()
    plane = top_down_basis(sq.dataset.cameras)
    uv = pts @ plane
    lo, hi = np.percentile(uv, [1, 99], axis=0)
    span = max(float((hi - lo).max()), 1e-9)
    margin = 24

    def pix(q):
        return (q - lo) / span * (size - 2 * margin) + margin

    canvas = np.full((size, size, 3), 18, np.uint8)
    p = pix(uv).astype(int)
    ok = ((p >= 0) & (p < size)).all(axis=1)
    canvas[size - 1 - p[ok, 1], p[ok, 0]] = (110, 110, 110)
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    for obj in inv.objects:
        if obj.background:
            continue
        c = pix(box_corners(obj.box_min, obj.box_max) @ plane)
        x0, y1 = c.min(0)
        x1, y0 = c.max(0)
        colour = COLOURS[(obj.index - 1) % len(COLOURS)]
        draw.rectangle([float(x0), float(size - 1 - y0), float(x1), float(size - 1 - y1)], outline=colour, width=2)
        _label(draw, (float(x0) + 2, float(size - 1 - y0) + 2), str(obj.index), colour, 14)
    return np.asarray(pil)


def field_digest(sq: SceneQuery) -> str:
    """SHA-256 of the field's manifest (it names every file of the field with its own SHA-256)."""
    return sha256_file(sq.bundle.field_dir(sq.field.method) / FIELD_MANIFEST)


def run_inventory(scene, method: str | None = None, out=None, clusters: int = INVENTORY_CLUSTERS,
                  ply: bool = False, sq: SceneQuery | None = None) -> tuple[dict, Path, bool]:
    """(inventory JSON, its folder, whether it was read back from an earlier run) of `scene`."""
    sq = sq if sq is not None else SceneQuery.open(scene, method)
    out = Path(out) if out else sq.bundle.inventory_dir(sq.field.method)
    digest = field_digest(sq)
    path = out / "inventory.json"
    if path.is_file() and not ply:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            old = None  # unreadable: computed again and replaced
        if isinstance(old, dict) and old.get("field_sha256") == digest and old.get("clusters") == clusters:
            return old, out, True
    inv = sq.inventory(clusters)
    out.mkdir(parents=True, exist_ok=True)
    record = {"scene": str(sq.root), "method": sq.field.method, "field_sha256": digest, **inv.to_json()}
    shown = [o for o in inv.objects if not o.background]
    votes = np.zeros(len(sq.dataset), int)
    for o in shown:
        for v in o.views:
            votes[v] += 1
    view = int(votes.argmax()) if shown else sq.view_index(None)
    files = {"json": str(path), "picture": str(out / "inventory.png"), "map": str(out / "inventory_map.png")}
    write_png(out / "inventory.png", view_picture(sq, inv, view))
    write_png(out / "inventory_map.png", map_picture(sq, inv))
    if ply:
        for o in inv.objects:
            target = out / "objects" / f"{o.index:02d}-{slugify(o.name)}.ply"
            target.parent.mkdir(parents=True, exist_ok=True)
            export_selection(sq.field, o.mask(len(sq.field.gaussians)), target)
            files.setdefault("ply", []).append(str(target))
    record.update(view=view, files=files)
    atomic.write_json(path, record)
    return record, out, False


__all__ = ["map_picture", "run_inventory", "view_picture"]
