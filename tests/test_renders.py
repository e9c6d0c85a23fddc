"""Renders for people (fmsplat.reconstruct.renders, `fmsplat render`, the panels of `fmsplat train` and of
`fmsplat query`): panels show the inputs and their error, camera paths aim where they should, videos
decode back to the frames that were rendered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fmsplat.pictures import ERROR_MAX, ERROR_PALETTE, INVALID_COLOUR, apply_palette, comparison_panel, panel_layout, to_uint8
from fmsplat.reconstruct.renders import interpolated_path, is_forward_facing, orbit_path, render_video, spiral_path
from fmsplat.render.rgb import render_image
from fmsplat.scene import Camera
from fmsplat.scene.cameras import look_at_point
from fmsplat.scene.synthetic import look_at_camera

K = np.array([[60.0, 0.0, 32.0], [0.0, 60.0, 24.0], [0.0, 0.0, 1.0]])  # 64 x 48, principal point at the centre


def _heat(value: float) -> np.ndarray:
    return to_uint8(apply_palette(np.full((1, 1), value), ERROR_PALETTE, 0.0, ERROR_MAX))[0, 0]


def tile(panel: np.ndarray, lay: dict, name: str) -> np.ndarray:
    """One image of a comparison panel at its input size (panels enlarge small views)."""
    z = lay["zoom"]
    return panel[lay[name]][::z, ::z]


def _rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.arccos(np.clip((np.trace(a @ b.T) - 1.0) / 2.0, -1.0, 1.0)))


# ------------------------------------------------------------------------------------------ panels
def test_panel_shows_the_inputs_and_their_error_on_a_fixed_scale():
    rng = np.random.default_rng(0)
    h, w = 40, 56
    photo = rng.random((h, w, 3)).astype(np.float32)
    lay = panel_layout(h, w)

    same = comparison_panel(photo, photo)
    assert same.shape == (*lay["shape"], 3) and same.dtype == np.uint8
    np.testing.assert_array_equal(tile(same, lay, "render"), to_uint8(photo))
    np.testing.assert_array_equal(tile(same, lay, "photo"), to_uint8(photo))
    assert not tile(same, lay, "error").any(), "identical images must give an all-zero (black) error map"

    render = photo.copy()
    render[5:15, 5:20] = 1.0
    photo_far = photo.copy()
    photo_far[5:15, 5:20] = 0.0  # error 1.0: beyond the scale, shown at its top
    render[25:35, 30:50] = np.clip(photo[25:35, 30:50] + 0.25, 0, 1)
    photo_mid = photo_far.copy()
    photo_mid[25:35, 30:50] = render[25:35, 30:50] - 0.25  # error 0.25: the middle of the fixed scale
    panel = comparison_panel(render, photo_mid)
    np.testing.assert_array_equal(tile(panel, lay, "render"), to_uint8(render))
    np.testing.assert_array_equal(tile(panel, lay, "photo"), to_uint8(photo_mid))
    err = tile(panel, lay, "error").astype(int)
    assert (err[5:15, 5:20] == _heat(ERROR_MAX)).all()
    assert err[5:15, 5:20].sum(-1).min() == err.sum(-1).max(), "the largest error is the brightest"
    # the scale is fixed (0..ERROR_MAX), not stretched to the map's own maximum
    assert np.abs(err[27:33, 32:48] - _heat(0.25)).max() <= 3
    untouched = np.ones((h, w), bool)
    untouched[5:15, 5:20] = untouched[25:35, 30:50] = False
    assert not err[untouched].any()
    # the colour bar runs from no error to the top of the scale
    bar = panel[lay["colorbar"]]
    assert not bar[:, 0].any() and (bar[:, -1] == _heat(ERROR_MAX)).all()

    # pixels with no photo behind them: grey in the error map, left out of the PSNR
    valid = np.ones((h, w), bool)
    valid[5:15, 5:20] = False
    masked = comparison_panel(render, photo_far, valid)
    assert (tile(masked, lay, "error")[5:15, 5:20] == INVALID_COLOUR).all()

    with pytest.raises(ValueError, match="differ in size"):
        comparison_panel(photo, photo[:, :-1])


# ------------------------------------------------------------------------------------------ paths
def _ring(target, radii, heights, start=0.3):
    """Cameras on a ring around `target` (world +z up), each looking at it; opposite cameras mirror each
    other, so their mean up vector is +z."""
    n = len(radii)
    cams = []
    for k, (r, hgt) in enumerate(zip(radii, heights)):
        a = start + 2 * np.pi * k / n
        eye = target + np.array([r * np.cos(a), r * np.sin(a), hgt])
        cams.append(look_at_camera(eye, target, K, 64, 48, name=f"{k:04d}"))
    return cams


def test_look_target_is_where_the_optical_axes_meet():
    rng = np.random.default_rng(1)
    target = np.array([0.4, -1.0, 0.7])
    eyes = target + rng.normal(size=(7, 3)) * 2 + np.array([0, 0, 3.0])
    cams = [look_at_camera(e, target, K, 64, 48) for e in eyes]
    np.testing.assert_allclose(look_at_point(cams, strict=False), target, atol=1e-5)


def test_orbit_cameras_look_at_the_target_at_the_mean_radius_and_height():
    target = np.array([1.0, -2.0, 0.5])
    radii, heights = [2.5, 3.0, 3.5, 3.0] * 2, [1.0, 1.2, 1.4, 1.2] * 2
    cams = _ring(target, radii, heights)
    path = orbit_path(cams, 30)
    assert len(path) == 30
    centers = np.stack([c.center for c in path])
    off = centers - target
    np.testing.assert_allclose(np.linalg.norm(off[:, :2], axis=1), 3.0, atol=1e-6)
    np.testing.assert_allclose(off[:, 2], 1.2, atol=1e-6)
    # starts at the first camera's azimuth and goes once round, evenly
    a0 = np.arctan2(*(cams[0].center - target)[[1, 0]])
    np.testing.assert_allclose(np.arctan2(off[0, 1], off[0, 0]), a0, atol=1e-6)
    steps = np.linalg.norm(np.diff(centers, axis=0), axis=1)
    np.testing.assert_allclose(steps, 2 * 3.0 * np.sin(np.pi / 30), atol=1e-6)
    for cam in path:
        np.testing.assert_array_equal(cam.K, cams[0].K)
        assert (cam.width, cam.height) == (64, 48)
        p = cam.viewmat[:3, :3] @ target + cam.viewmat[:3, 3]
        assert p[2] > 0, "the target is in front of the camera"
        uv = (cam.K @ p)[:2] / p[2]
        np.testing.assert_allclose(uv, [32.0, 24.0], atol=1e-6)
        assert cam.viewmat[1, 2] < 0, "image rows run downwards (camera y against world up)"


def test_orbit_of_a_capture_that_covers_an_arc_stays_on_that_arc():
    """Cameras over 90 degrees in front of a wall-mounted object: the path must not go round
    behind the wall, and must reach both ends of the arc."""
    target = np.zeros(3)
    angles = np.deg2rad(np.linspace(-45, 45, 10))
    cams = [look_at_camera(np.array([4 * np.cos(a), 4 * np.sin(a), 1.0]), target, K, 64, 48) for a in angles]
    path = orbit_path(cams, 40)
    az = np.rad2deg(np.arctan2([c.center[1] for c in path], [c.center[0] for c in path]))
    assert az.min() == pytest.approx(-45, abs=1) and az.max() == pytest.approx(45, abs=1)
    centers = np.stack([c.center for c in path])
    steps = np.linalg.norm(np.diff(np.vstack([centers, centers[:1]]), axis=0), axis=1)
    # a sine sweep over 90 degrees at radius 4 moves at most 4 * (pi/4) * (2 pi / 40) per frame
    assert steps.max() < 1.05 * 4 * (np.pi / 4) * (2 * np.pi / 40), "smooth, and the loop closes"


def test_a_forward_facing_capture_gets_a_spiral_that_never_looks_behind_it():
    """LLFF-like: 12 cameras on a 1 x 0.6 grid all looking down +z. The orbit there looked backwards (the
    optical axes meet nowhere: its centre fell on the cameras' own plane, a frame looked along -z); the
    spiral stays within the capture's spread, looks forward at the focus, and loops."""
    cams = []
    for x in np.linspace(-0.5, 0.5, 4):
        for y in np.linspace(-0.3, 0.3, 3):
            view = np.eye(4)
            view[:3, 3] = -np.array([x, y, 0.0])
            cams.append(Camera(K=K, viewmat=view, width=64, height=48))
    assert is_forward_facing(cams)
    assert min(c.viewmat[2, 2] for c in orbit_path(cams, 30)) < 0  # what the orbit did
    path = spiral_path(cams, 40, focus_depth=4.0)
    forward = np.stack([c.viewmat[2, :3] for c in path])
    centres = np.stack([c.center for c in path])
    assert forward[:, 2].min() > np.cos(np.deg2rad(10))  # all look ahead, at the focus 4 units out
    focus = centres + 4.0 / forward[:, 2:3] * forward
    np.testing.assert_allclose(focus, np.broadcast_to([0.0, 0.0, 4.0], focus.shape), atol=1e-6)
    assert np.abs(centres[:, 0]).max() <= 0.5 + 1e-9 and np.abs(centres[:, 1]).max() <= 0.3 + 1e-9
    assert np.linalg.norm(centres[0] - centres[-1]) < 0.2  # the loop closes
    # an orbit capture and an arc in front of a wall are not forward-facing
    ring = [look_at_camera(np.array([4 * np.cos(a), 4 * np.sin(a), 1.0]), np.zeros(3), K, 64, 48)
            for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)]
    arc = [look_at_camera(np.array([4 * np.cos(a), 4 * np.sin(a), 1.0]), np.zeros(3), K, 64, 48)
           for a in np.deg2rad(np.linspace(-45, 45, 10))]
    assert not is_forward_facing(ring) and not is_forward_facing(arc)


def test_interpolated_path_passes_through_the_cameras_at_their_frames():
    target = np.zeros(3)
    eyes = [np.array([3.0, 0, 1]), np.array([2, 2, 1.5]), np.array([0, 3, 1]), np.array([-2, 2, 2]), np.array([-3, 0, 1])]
    cams = [look_at_camera(e, target, K * [[1], [1], [1]], 64, 48) for e in eyes]
    cams[2] = cams[2].resized(128, 96)  # a different image size: its K is scaled back to the first's
    q = 4
    path = interpolated_path(cams, q * (len(cams) - 1) + 1)
    assert len(path) == 17
    for j, cam in enumerate(cams):
        np.testing.assert_allclose(path[q * j].viewmat, cam.viewmat, atol=1e-9)
        np.testing.assert_allclose(path[q * j].K, K, atol=1e-9)
    for cam in path:
        r = cam.viewmat[:3, :3]
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(r) > 0 and (cam.width, cam.height) == (64, 48)
    # rotations are slerped: the frame half-way between two cameras is equally far from both
    for j in range(len(cams) - 1):
        mid = path[q * j + q // 2].viewmat[:3, :3]
        a, b = cams[j].viewmat[:3, :3], cams[j + 1].viewmat[:3, :3]
        np.testing.assert_allclose(_rotation_angle(mid, a), _rotation_angle(mid, b), atol=1e-9)
        np.testing.assert_allclose(_rotation_angle(mid, a), 0.5 * _rotation_angle(a, b), atol=1e-9)
    # positions move smoothly: no jump far larger than the average step
    steps = np.linalg.norm(np.diff(np.stack([c.center for c in path]), axis=0), axis=1)
    assert steps.max() < 2.0 * steps.mean()


# ------------------------------------------------------------------------------------------ video
@pytest.fixture(scope="module")
def blobs():
    """Large soft Gaussians around the origin with distinct colours (a smooth picture an encoder keeps)."""
    from fmsplat.gaussians import GaussianModel

    model = GaussianModel.random(60, [-1, -1, -1], [1, 1, 1], sh_degree=0, seed=3, init_opacity=0.8)
    model.scales = torch.full_like(model.scales, np.log(0.25))
    return model


def test_video_decodes_to_the_rendered_frames(blobs, tmp_path):
    import av

    cams = orbit_path(_ring(np.zeros(3), [4.0] * 4, [1.0] * 4), 8)
    cams = [c.resized(61, 45) for c in cams]  # odd sizes: padded to even for yuv420p
    out = render_video(blobs, cams, tmp_path / "v" / "orbit.mp4", fps=10, frames_dir=tmp_path / "frames",
                       progress=False)
    assert out == tmp_path / "v" / "orbit.mp4"
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["orbit.mp4"], "no temp file left behind"
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 8
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (62, 46)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 8
    renders = [render_image(blobs, c) for c in cams]
    diffs = np.array([[np.abs(f[:45, :61] / 255.0 - r).mean() for r in renders] for f in frames])
    assert diffs.diagonal().max() < 0.02, diffs.diagonal()
    # each frame is its own render (in order), not merely alike: the views differ far more than that
    off = diffs + np.eye(8)
    assert (diffs.diagonal() < 0.5 * off.min(axis=1)).all()


# ------------------------------------------------------------------------------------------ on a scene
@pytest.fixture(scope="module")
def quick_scene(tiny_dataset, tmp_path_factory):
    """A scene directory from a few seconds of 3DGS on the tiny preset: blurry, but a scene."""
    from fmsplat.reconstruct import TrainConfig, train_gaussians

    out = tmp_path_factory.mktemp("renders") / "scene"
    metrics = train_gaussians(tiny_dataset, out, TrainConfig(steps=12, init_random_points=3000, sh_degree=1),
                              progress=False)
    return out, metrics


def test_train_writes_held_out_panels(quick_scene):
    from PIL import Image

    from fmsplat.scene import load_dataset

    scene, metrics = quick_scene
    data = load_dataset(json.loads((scene / "scene.json").read_text())["data"]["path"])
    assert len(data.test_indices) == 3
    assert metrics["panels"] == ["renders/test/0000.png", "renders/test/0008.png", "renders/test/0016.png"]
    assert json.loads((scene / "metrics.json").read_text())["panels"] == metrics["panels"]
    lay = panel_layout(96, 128)
    panel = np.asarray(Image.open(scene / metrics["panels"][1]).convert("RGB"))
    assert panel.shape == (*lay["shape"], 3)
    np.testing.assert_array_equal(tile(panel, lay, "photo"), to_uint8(data.image(8)))


def test_render_cli_writes_panels_and_videos(quick_scene, tmp_path):
    import av
    from PIL import Image
    from typer.testing import CliRunner

    from fmsplat.apps.cli import app
    from fmsplat.gaussians import GaussianModel
    from fmsplat.scene import load_dataset

    scene, _ = quick_scene
    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["render", str(scene), "--out", str(out)])
    assert res.exit_code == 0, res.output
    written = sorted(out.rglob("*.png"))
    assert [p.relative_to(out).as_posix() for p in written] == ["test/0000.png", "test/0008.png", "test/0016.png"]
    assert res.stdout.split() == [str(p) for p in written]

    res = CliRunner().invoke(app, ["render", str(scene), "--out", str(out), "--views", "1,8",
                                   "--path", "interpolate", "--frames", "5", "--downscale", "2"])
    assert res.exit_code == 0, res.output
    data = load_dataset(json.loads((scene / "scene.json").read_text())["data"]["path"], downscale=2)
    panel = np.asarray(Image.open(out / "train" / "0001.png").convert("RGB"))
    lay = panel_layout(48, 64)
    np.testing.assert_array_equal(tile(panel, lay, "photo"), to_uint8(data.image(1)))
    render = render_image(GaussianModel.load_ply(scene / "gaussians.ply"), data.cameras[1])
    np.testing.assert_array_equal(tile(panel, lay, "render"), to_uint8(render))
    with av.open(str(out / "interpolate.mp4")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (64, 48)


def test_render_cli_reports_a_missing_scene_or_gaussians_in_one_line(quick_scene, tmp_path):
    from typer.testing import CliRunner

    from fmsplat.apps.cli import app

    res = CliRunner().invoke(app, ["render", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "scene.json" in res.stderr

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "scene.json").write_text((quick_scene[0] / "scene.json").read_text())
    res = CliRunner().invoke(app, ["render", str(bare)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "gaussians.ply" in res.stderr


def test_query_panel_shows_the_render_beside_the_photo(quick_scene, tiny_dataset, tmp_path, monkeypatch):
    import shutil

    from PIL import Image

    import fmsplat.fields as fields
    from fmsplat.eval.oracle import OracleField
    from fmsplat.workspace import Workspace
    from fmsplat.apps.query import run_query

    scene = tmp_path / "scene"
    shutil.copytree(quick_scene[0], scene)
    bundle = Workspace.open(scene)
    OracleField.paint(bundle.gaussians, Path(tiny_dataset) / "objects.json").save(scene)
    monkeypatch.setitem(fields.METHODS, "oracle", "fmsplat.eval.oracle")
    rec = run_query(scene, "espresso cup", view=8, method="oracle", out=tmp_path / "q")[0]
    panel = np.asarray(Image.open(rec["files"]["overlay"]).convert("RGB"))
    top, w = 14, 128  # hstack: 14 px titles, 4 px gaps
    np.testing.assert_array_equal(panel[top:top + 96, :w], to_uint8(render_image(bundle.gaussians, bundle.dataset.cameras[8])))
    np.testing.assert_array_equal(panel[top:top + 96, w + 4:2 * w + 4], to_uint8(bundle.dataset.image(8)))
