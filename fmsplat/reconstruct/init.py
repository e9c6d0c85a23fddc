"""Where training starts: the initial Gaussians of a 3DGS run.

Four starts, chosen by `TrainConfig.init`:
- `points`: the dataset's own points (COLMAP's points3D, transforms.json's `ply_file_path`);
- `sfm`: points triangulated by fmsplat from the dataset's poses (fmsplat.scene.sfm), cached in the
  scene folder as `sfm/` (never in the dataset, which may be read-only);
- `frustum`: random points where the cameras' view frusta overlap, coloured by the pixel they were
  cast from: a start that cannot miss a scene the cameras look at;
- `box`: random points in the box of the camera centres (or of the points), the old default, kept
  for comparison only: a capture that circles an object from outside has the object outside that box.

`auto` (the default) takes the first that applies: points, else sfm, else frustum (with a warning
that says why). Measured on the fox and the bench room in bench/README.md, "Reconstruction".
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from fmsplat.gaussians import GaussianModel
from fmsplat.reconstruct.configs import INITS
from fmsplat.scene import SceneDataset
from fmsplat.scene.cameras import look_at_point

# Fewer triangulated points than this make a poor start: auto falls back to the frustum then.
MIN_SFM_POINTS = 100


def frustum_points(data: SceneDataset, n: int, seed: int = 0, indices=None,
                   min_views: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """`n` points (and their colours) along rays of the views `indices` (default: training views),
    kept where at least `min_views` of those views see them.

    Depths are drawn uniformly between near and far bounds per camera: with a point the cameras
    look at (look_at_point), 0.25x to 1.75x its depth; otherwise 0.05x to 2x the scene extent.
    The dataset's scene box, when it declares one, bounds them too. A point's colour is the pixel
    its ray went through, so the start already resembles the photos."""
    indices = [int(i) for i in (data.train_indices if indices is None else indices)]
    if not indices:
        raise ValueError(f"{data.source}: no views to cast initial points from")
    if n < 2:
        raise ValueError(f"frustum initialisation needs at least 2 points, got {n}")
    rng = np.random.default_rng(seed)
    cams = [data.cameras[i] for i in indices]
    target = look_at_point(cams)
    centers = np.stack([c.center for c in cams])
    if target is not None:
        depth = np.einsum("ni,ni->n", target[None] - centers, np.stack([c.viewmat[2, :3] for c in cams]))
        near, far = 0.25 * depth, 1.75 * depth
    else:
        near = np.full(len(cams), 0.05 * data.extent)
        far = np.full(len(cams), 2.0 * data.extent)

    # Candidates: several times n, then kept by how many frusta hold them.
    m = 8 * n
    which = rng.integers(0, len(cams), m)
    u, v, t = rng.random(m), rng.random(m), rng.random(m)
    pts = np.empty((m, 3))
    rgb = np.empty((m, 3))
    for k, cam in enumerate(cams):
        sel = np.nonzero(which == k)[0]
        if not len(sel):
            continue
        px, py = u[sel] * cam.width, v[sel] * cam.height
        z = near[k] + t[sel] * (far[k] - near[k])
        xc = np.stack([(px - cam.K[0, 2]) / cam.K[0, 0] * z, (py - cam.K[1, 2]) / cam.K[1, 1] * z, z], axis=1)
        c2w = cam.c2w
        pts[sel] = xc @ c2w[:3, :3].T + c2w[:3, 3]
        img = np.asarray(data.image(indices[k]))
        rgb[sel] = img[np.minimum(py.astype(int), cam.height - 1), np.minimum(px.astype(int), cam.width - 1)]

    seen = np.zeros(m)
    for cam in cams:
        xc = pts @ cam.viewmat[:3, :3].T + cam.viewmat[:3, 3]
        z = xc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            px = cam.K[0, 0] * xc[:, 0] / z + cam.K[0, 2]
            py = cam.K[1, 1] * xc[:, 1] / z + cam.K[1, 2]
        seen += (z > 1e-6) & (px >= 0) & (px < cam.width) & (py >= 0) & (py < cam.height)
    frac = seen / len(cams)
    keep = frac >= min(min_views, frac.max())
    if data.scene_box is not None:
        lo, hi = data.scene_box
        inside = np.all((pts >= lo) & (pts <= hi), axis=1)
        if inside.sum() >= n:
            keep &= inside
    idx = np.nonzero(keep)[0]
    # Where more frusta overlap, more points: weight by the squared fraction of views that see them.
    weights = frac[idx] ** 2 / (frac[idx] ** 2).sum()
    chosen = rng.choice(idx, size=min(n, len(idx)), replace=False, p=weights)
    return pts[chosen], rgb[chosen]


def initial_gaussians(data: SceneDataset, kind: str, n_random: int, sh_degree: int, init_opacity: float,
                      seed: int = 0, sfm_dir: Path | None = None, sfm_config=None,
                      progress: bool = True) -> tuple[GaussianModel, dict]:
    """The initial model for `kind` (one of INITS) and a record of what was done (for scene.json)."""
    if kind not in INITS:
        raise ValueError(f"unknown initialisation {kind!r}; choose one of {', '.join(INITS)}")
    has_points = data.points is not None and len(data.points) >= 4
    info: dict = {"requested": kind}
    if kind == "points" and not has_points:
        raise ValueError(f"{data.source}: init 'points' needs a dataset with points (COLMAP points3D or "
                         "transforms.json ply_file_path); use 'sfm' to triangulate them")
    if kind in ("auto", "points") and has_points:
        colors = data.point_colors if data.point_colors is not None else np.full_like(data.points, 0.5)
        info.update(kind="points", points=int(len(data.points)))
        return _from_points(data.points, colors, sh_degree, init_opacity), info
    if kind in ("auto", "sfm"):
        from fmsplat.scene.sfm import triangulate_dataset

        if sfm_dir is None:
            raise ValueError("init 'sfm' needs a folder for its work files (the scene directory's sfm/)")
        cloud = triangulate_dataset(data, sfm_dir, sfm_config, box=data.scene_box, progress=progress)
        info["sfm"] = cloud.report
        if len(cloud.points) >= MIN_SFM_POINTS:
            info.update(kind="sfm", points=int(len(cloud.points)))
            return _from_points(cloud.points, cloud.colors, sh_degree, init_opacity), info
        if kind == "sfm":
            raise ValueError(f"{data.source}: triangulation found only {len(cloud.points)} points "
                             f"(need {MIN_SFM_POINTS}); the photos may lack texture or overlap. "
                             "Try --init frustum")
        reason = f"triangulation found only {len(cloud.points)} points (need {MIN_SFM_POINTS})"
        warnings.warn(f"{data.source}: {reason}; starting from random points in the view frusta instead",
                      stacklevel=3)
        info["fallback_reason"] = reason
    if kind in ("auto", "sfm", "frustum"):
        pts, rgb = frustum_points(data, n_random, seed=seed)
        info.update(kind="frustum", points=int(len(pts)))
        return _from_points(pts, rgb, sh_degree, init_opacity), info
    lo, hi = data.bounds()
    info.update(kind="box", points=int(n_random))
    return GaussianModel.random(n_random, lo, hi, sh_degree=sh_degree, seed=seed, init_opacity=init_opacity), info


def _from_points(points, colors, sh_degree: int, init_opacity: float) -> GaussianModel:
    return GaussianModel.from_points(np.asarray(points, dtype=np.float64), np.clip(np.asarray(colors), 0.0, 1.0),
                                     sh_degree=sh_degree, init_opacity=init_opacity)


__all__ = ["INITS", "frustum_points", "initial_gaussians"]
