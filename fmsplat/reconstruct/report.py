"""One page per training run, so that a user sees at once whether a capture worked: SCENE/report.html.

It holds what the run was given and did (views, resolution, start, Gaussians, steps, time), held-out and
training PSNR / SSIM, every held-out view's PSNR (lowest first; a view more than LOW_VIEW_DB under the
mean is flagged: a bad pose or a part of the scene no training view saw; so is a view that process-data's
registration check does not trust), the held-out PSNR along
training, the render | photo | error panels, and renders/overview.png: the Gaussians' centres and the
cameras seen from above (along the cameras' mean up axis), each camera a dot with a tick along its view.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fmsplat import atomic
from fmsplat.gaussians import GaussianModel
from fmsplat.pictures import write_png
from fmsplat.scene import SceneDataset
from fmsplat.scene.cameras import top_down_basis
from fmsplat.scene.sfm import trust_line

LOW_VIEW_DB = 3.0
CAMERA_COLOUR = (230, 40, 40)
OVERVIEW = "renders/overview.png"


def overview_picture(points: np.ndarray, cameras, size: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """(image, pixel (x, y) of each camera centre): points grey, cameras red with a tick along their view."""
    plane = top_down_basis(cameras)
    centres = np.stack([c.center for c in cameras])
    uv_pts, uv_cam = points @ plane, centres @ plane
    extent = [uv_cam] + ([np.percentile(uv_pts, [1, 99], axis=0)] if len(points) else [])
    lo, hi = np.concatenate(extent).min(0), np.concatenate(extent).max(0)
    span = max(float((hi - lo).max()), 1e-9)
    margin = 20

    def pix(q):
        p = (q - lo) / span * (size - 2 * margin) + margin
        return np.stack([p[..., 0], size - 1 - p[..., 1]], axis=-1)

    canvas = np.full((size, size, 3), 250, np.uint8)
    if len(points):
        p = np.round(pix(uv_pts)).astype(int)
        ok = ((p >= 0) & (p < size)).all(axis=1)
        canvas[p[ok, 1], p[ok, 0]] = (120, 120, 120)
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    cam_px = pix(uv_cam)
    tick = 0.04 * span
    for cam, (x, y) in zip(cameras, cam_px):
        fwd = cam.c2w[:3, 2] @ plane
        end = pix(cam.center @ plane + tick * fwd / max(float(np.linalg.norm(fwd)), 1e-12))
        draw.line([float(x), float(y), float(end[0]), float(end[1])], fill=CAMERA_COLOUR, width=1)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=CAMERA_COLOUR)
    return np.asarray(pil), cam_px


def _untrusted_views(data: SceneDataset) -> dict:
    """What process-data's registration check said about this dataset's photos (its report.json beside the
    COLMAP model), as {"line", "views"}; {} for datasets that did not come from process-data."""
    try:
        trust = json.loads((Path(data.source) / "report.json").read_text())["sfm"]["trust"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not trust.get("checks"):
        return {"line": f"not checked ({trust.get('note', 'no repeat solve')})", "views": []}
    line = trust_line(trust) or (f"all {trust['views']} posed views agree across {trust['checks']} repeat "
                                 f"structure-from-motion solves")
    return {"line": line, "views": list(trust.get("untrusted") or [])}


def _row(cells) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def write_run_report(out_dir, model: GaussianModel, data: SceneDataset, metrics: dict, init_info: dict) -> Path:
    """Write SCENE/report.html and renders/overview.png for a finished run; returns the page's path."""
    out_dir = Path(out_dir)
    picture, _ = overview_picture(model.means.detach().double().cpu().numpy(), data.cameras)
    write_png(out_dir / OVERVIEW, picture)
    test, train = metrics.get("test") or {}, metrics.get("train") or {}
    sizes = Counter(f"{c.width}x{c.height}" for c in data.cameras)
    untrusted = _untrusted_views(data)
    facts = [
        ("dataset", f"{data.source} ({data.format}, {len(data)} views: {len(data.train_indices)} train, "
                    f"{len(data.test_indices)} held out)"),
        ("resolution", ", ".join(size + (f" ({n} views)" if len(sizes) > 1 else "") for size, n in sizes.most_common())
                       + f" (1/{data.downscale:g} of the photos)"),
        *([("registration", untrusted["line"])] if untrusted else []),
        ("start", f"{init_info.get('kind', '?')}, {init_info.get('points', '?')} points"
                  + (f"; MCMC growth {100 * init_info['grow_rate']:.1f} % a refinement" if "grow_rate" in init_info else "")),
        ("Gaussians", metrics.get("num_gaussians")),
        ("steps", f"{metrics.get('steps')} in {metrics.get('train_seconds')} s"),
        ("held-out PSNR / SSIM", f"{test.get('psnr', float('nan')):.2f} dB / {test.get('ssim', float('nan')):.3f}"
                                 if test.get("views") else "no held-out views"),
        ("training PSNR / SSIM", f"{train.get('psnr', float('nan')):.2f} dB / {train.get('ssim', float('nan')):.3f}"
                                 if train.get("views") else "-"),
    ]
    per_view = sorted(test.get("per_view") or [], key=lambda v: v["psnr"])
    mean = test.get("psnr")
    doubted = set(untrusted.get("views", [])) if untrusted else set()
    views = "".join(_row([v["view"], f"{v['psnr']:.2f}", f"{v['ssim']:.3f}",
                          " ".join(flag for flag, on in (("LOW", mean is not None and v["psnr"] < mean - LOW_VIEW_DB),
                                                         ("NOT TRUSTED", v["view"] in doubted)) if on)])
                    for v in per_view)
    curve = "".join(_row([c["step"], f"{c['psnr']:.2f}", c.get("ssim", "")]) for c in metrics.get("curve") or []) \
        or _row(["no evaluation during training (--eval-every)", "", ""])
    panels = "".join(f'<figure><img src="{html.escape(p)}" style="max-width:100%"><figcaption>{html.escape(p)}'
                     "</figcaption></figure>" for p in metrics.get("panels") or [])
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fmsplat run: {html.escape(out_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:1em auto}}td{{padding:2px 10px}}
tr:nth-child(even){{background:#f2f2f2}}</style></head><body>
<h1>{html.escape(out_dir.name)}</h1>
<table>{''.join(_row(f) for f in facts)}</table>
<h2>Held-out views, lowest PSNR first</h2>
<p>LOW: more than {LOW_VIEW_DB:g} dB under the mean: a wrong pose, or a part of the scene no training view saw.
NOT TRUSTED: a repeat structure-from-motion solve placed the view elsewhere (registration, above).</p>
<table><tr><th>view</th><th>PSNR (dB)</th><th>SSIM</th><th></th></tr>{views}</table>
<h2>Seen from above</h2><p>Gaussian centres (grey) and cameras (red, a tick along each view).</p>
<img src="{OVERVIEW}" width="640">
<h2>Held-out PSNR during training</h2>
<table><tr><th>step</th><th>PSNR (dB)</th><th>SSIM</th></tr>{curve}</table>
<h2>Render | photo | error</h2>{panels}
</body></html>
"""
    path = out_dir / "report.html"
    atomic.write_text(path, page)
    return path


__all__ = ["LOW_VIEW_DB", "OVERVIEW", "overview_picture", "write_run_report"]
