"""Where 3DGS training starts: points triangulated from known poses lie on the true surfaces,
random frustum points lie in front of the cameras, instant-ngp's aabb_scale becomes a box, and
the trainer records and resumes what it started from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fmsplat.reconstruct.init import frustum_points, initial_gaussians
from fmsplat.scene import load_dataset
from fmsplat.scene.cameras import look_at_point
from fmsplat.scene.sfm import SfmConfig, triangulate_dataset, view_pairs
from fmsplat.scene.synthetic import load_depth, look_at_camera
from fmsplat.scene.transforms import ngp_scene_box


def depth_error(points: np.ndarray, data, root: Path) -> np.ndarray:
    """Per point: the smallest |z - true depth| over the views that see it (inf if none)."""
    best = np.full(len(points), np.inf)
    for i, cam in enumerate(data.cameras):
        depth = load_depth(root / "depth" / f"{i:04d}.png")
        xc = points @ cam.viewmat[:3, :3].T + cam.viewmat[:3, 3]
        z = xc[:, 2]
        u = np.floor(cam.K[0, 0] * xc[:, 0] / z + cam.K[0, 2]).astype(int)
        v = np.floor(cam.K[1, 1] * xc[:, 1] / z + cam.K[1, 2]).astype(int)
        ok = (z > 0) & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
        err = np.full(len(points), np.inf)
        err[ok] = np.abs(z[ok] - depth[v[ok], u[ok]])
        best = np.minimum(best, err)
    return best


@pytest.fixture(scope="module")
def room_320(tmp_path_factory) -> Path:
    """The tiny room at 320x240 (SIFT finds too little in 128x96 views), 12 views."""
    from fmsplat.scene.synthetic import make_scene

    return make_scene(tmp_path_factory.mktemp("room") / "data", preset="tiny", width=320, height=240, n_views=12,
                      supersample=1)


def test_triangulated_points_lie_on_the_true_surfaces(room_320, tmp_path):
    tiny_dataset = room_320
    data = load_dataset(tiny_dataset)
    data.points = None  # as a transforms.json without points
    cloud = triangulate_dataset(data, tmp_path / "sfm", SfmConfig(), progress=False)
    assert len(cloud.points) >= 80, cloud.report
    err = depth_error(cloud.points, data, tiny_dataset)
    room = 7.0  # the tiny preset's room side (metres)
    print(f"{len(cloud.points)} points, median depth error {np.median(err):.4f} m, 90th {np.percentile(err, 90):.3f}")
    assert np.median(err) < 0.01 * room
    assert np.percentile(err, 90) < 0.05 * room
    assert cloud.report["mean_reprojection_error"] < SfmConfig().max_reprojection_error
    assert cloud.report["views"] == len(data.train_indices)

    # A finished run is reused, not redone; different settings start afresh.
    again = triangulate_dataset(data, tmp_path / "sfm", SfmConfig(), progress=False)
    assert again.report.get("reused") and np.array_equal(again.points, cloud.points)
    other = triangulate_dataset(data, tmp_path / "sfm", SfmConfig(max_features=512), progress=False)
    assert not other.report.get("reused") and other.report["keypoints"] <= 512 * len(data.train_indices)


def test_view_pairs_prefer_views_that_look_the_same_way():
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    ring = [look_at_camera(np.array([4 * np.cos(a), 4 * np.sin(a), 1.0]), np.zeros(3), K, 64, 48)
            for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)]
    pairs = view_pairs(ring, neighbours=2)
    # On a ring, each view's two nearest are its neighbours on the ring: exactly 12 pairs.
    assert sorted(pairs) == sorted({(min(i, (i + 1) % 12), max(i, (i + 1) % 12)) for i in range(12)})
    assert len(view_pairs(ring, neighbours=0)) == 66


def test_look_at_point_and_frustum_points_on_a_capture_seen_from_outside(tmp_path):
    """Cameras on a ring around an object, looking in: the box of their centres is a flat ring
    the object is not inside of in depth terms, but the frustum start must be in front of every
    camera and around the object."""
    K = np.array([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]])
    target = np.array([0.3, -0.2, 0.5])
    cams = [look_at_camera(target + np.array([5 * np.cos(a), 5 * np.sin(a), 1.5 + 0.3 * np.sin(3 * a)]), target,
                           K, 64, 48, name=f"{k}") for k, a in enumerate(np.linspace(0, 2 * np.pi, 16, endpoint=False))]
    assert np.allclose(look_at_point(cams), target, atol=1e-6)

    from PIL import Image

    root = tmp_path / "ring"
    (root / "images").mkdir(parents=True)
    frames = []
    for k, cam in enumerate(cams):
        Image.fromarray(np.full((48, 64, 3), 40 + 10 * k, np.uint8)).save(root / "images" / f"{k}.png")
        c2w_gl = cam.c2w @ np.diag([1.0, -1.0, -1.0, 1.0])
        frames.append({"file_path": f"images/{k}.png", "transform_matrix": c2w_gl.tolist()})
    (root / "transforms.json").write_text(json.dumps({"fl_x": 60, "fl_y": 60, "cx": 32, "cy": 24, "w": 64, "h": 48,
                                                      "frames": frames}))
    data = load_dataset(root, test_every=0)
    pts, rgb = frustum_points(data, 2000, seed=3)
    assert pts.shape == (2000, 3) and rgb.shape == (2000, 3)
    seen = np.zeros(len(pts))
    for cam in data.cameras:
        xc = pts @ cam.viewmat[:3, :3].T + cam.viewmat[:3, 3]
        px = cam.K[0, 0] * xc[:, 0] / xc[:, 2] + cam.K[0, 2]
        py = cam.K[1, 1] * xc[:, 1] / xc[:, 2] + cam.K[1, 2]
        inside = (xc[:, 2] > 0) & (px >= 0) & (px < 64) & (py >= 0) & (py < 48)
        seen += inside
        assert inside.sum() > 100, "every camera sees many initial points"
    assert (seen >= 0.25 * len(cams)).all(), "points lie where the frusta overlap"
    print("frustum median distance", np.median(np.linalg.norm(pts - target, axis=1)))
    assert np.median(np.linalg.norm(pts - target, axis=1)) < 2.5, "points gather around what the cameras look at"
    # The old start: the box of the camera centres holds almost no point near the target's depth.
    model, info = initial_gaussians(data, "box", 2000, 0, 0.1, seed=3)
    assert info["kind"] == "box"
    print("box median distance", np.median(np.linalg.norm(model.means.numpy() - target, axis=1)))
    assert np.median(np.linalg.norm(model.means.numpy() - target, axis=1)) > \
        np.median(np.linalg.norm(pts - target, axis=1)) + 1.0

    # Colours come from the pixels the rays went through: each view is one flat grey.
    greys = {40 + 10 * k for k in range(len(cams))}
    assert set(np.unique(np.round(rgb[:, 0] * 255).astype(int))) <= greys

    # 'auto' on a textureless capture: triangulation finds nothing, the frustum start is used, and
    # the record says why.
    with pytest.warns(UserWarning, match="triangulation found only"):
        model, info = initial_gaussians(data, "auto", 500, 0, 0.1, sfm_dir=tmp_path / "sfm", progress=False)
    assert info["kind"] == "frustum" and "fallback_reason" in info and len(model) == 500
    with pytest.raises(ValueError, match="init 'points' needs a dataset with points"):
        initial_gaussians(data, "points", 500, 0, 0.1)


def test_aabb_scale_becomes_the_world_box_of_instant_ngp():
    lo, hi = ngp_scene_box({"aabb_scale": 4}, Path("t.json"))
    assert np.allclose(lo, -4 / 0.66) and np.allclose(hi, 4 / 0.66)
    # With an offset: ngp's box centre (0.5, 0.5, 0.5) maps back through ngp's (y, z, x) axis order.
    lo, hi = ngp_scene_box({"aabb_scale": 2, "scale": 0.5, "offset": [0.5, 1.0, 0.0]}, Path("t.json"))
    assert np.allclose((lo + hi) / 2, [1.0, 0.0, -1.0]) and np.allclose(hi - lo, 4.0)
    assert ngp_scene_box({}, Path("t.json")) is None
    from fmsplat.scene.errors import DatasetError

    with pytest.raises(DatasetError, match="t.json"):
        ngp_scene_box({"aabb_scale": -1}, Path("t.json"))
