"""The synthetic scene generator: its images, masks, depths, boxes, labels and cameras agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fmsplat.scene.cameras import Camera
from fmsplat.scene.labels import (
    LabelFormatError,
    mask_bbox,
    polygons_to_mask,
    read_label_dir,
    read_objects,
    read_view_labels,
    write_view_labels,
)
from fmsplat.scene import synthetic
from fmsplat.scene.synthetic import build_scene, intersect, camera_rays, load_depth, load_instances, preset_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny preset, generated once through the CLI (so the command is exercised too)."""
    from typer.testing import CliRunner

    from fmsplat.apps.cli import app

    out = tmp_path_factory.mktemp("synthetic") / "tiny"
    result = CliRunner().invoke(app, ["make-scene", str(out), "--preset", "tiny", "--seed", "0"])
    assert result.exit_code == 0, result.output
    return out


def _cameras(root: Path) -> list[Camera]:
    meta = json.loads((root / "transforms.json").read_text())
    K = np.array([[meta["fl_x"], 0, meta["cx"]], [0, meta["fl_y"], meta["cy"]], [0, 0, 1]])
    return [
        Camera.from_c2w_opengl(np.array(f["transform_matrix"]), K, meta["w"], meta["h"], name=Path(f["file_path"]).stem)
        for f in meta["frames"]
    ]


def _corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def test_dataset_layout(tiny):
    meta = json.loads((tiny / "transforms.json").read_text())
    cfg = preset_config("tiny")
    assert (meta["w"], meta["h"]) == (cfg.width, cfg.height)
    assert len(meta["frames"]) == cfg.n_views
    for f in meta["frames"]:
        for key in ("file_path", "depth_file_path", "instance_file_path"):
            assert (tiny / f[key]).is_file()
    labelled = sorted(p.stem for p in (tiny / "labels").glob("*.json"))
    assert labelled == [f"{i:04d}" for i in range(cfg.n_views) if i % 8 == 0]
    assert (tiny / meta["ply_file_path"]).is_file()
    # No temporary directories are left beside the dataset.
    assert [p.name for p in tiny.parent.iterdir()] == ["tiny"]


def test_projected_boxes_match_instance_boxes(tiny):
    """Project each object's 3D box with the written camera; where the object is wholly in view and
    unoccluded, the projection's 2D box equals the instance mask's box (to a pixel)."""
    objects, _ = read_objects(tiny / "objects.json")
    scene = build_scene(preset_config("tiny"), 0)
    checked = 0
    for cam in _cameras(tiny):
        inst = load_instances(tiny / "instances" / f"{cam.name}.png")
        o, d = camera_rays(cam, np.array([[0.5, 0.5]]))
        for obj, box in zip(objects, scene.boxes):
            assert obj.instance_id == box.instance_id
            mask = inst == obj.instance_id
            _, alone, _, _ = intersect(scene, o, d, boxes=[box])
            if not mask.any() or not np.array_equal(mask, alone.reshape(mask.shape) == obj.instance_id):
                continue  # occluded: the mask is not the whole silhouette
            cam_pts = (cam.viewmat[:3, :3] @ _corners(obj.aabb_min, obj.aabb_max).T).T + cam.viewmat[:3, 3]
            if np.any(cam_pts[:, 2] <= 0):
                continue  # partly behind the camera
            uv = (cam.K @ cam_pts.T).T
            uv = uv[:, :2] / uv[:, 2:]
            if uv.min() < 1 or uv[:, 0].max() > cam.width - 1 or uv[:, 1].max() > cam.height - 1:
                continue  # cut by the frame
            # Pixel (c, r) is set when its centre (c + 0.5, r + 0.5) is inside the silhouette.
            expected = [np.ceil(uv[:, 0].min() - 0.5), np.ceil(uv[:, 1].min() - 0.5),
                        np.floor(uv[:, 0].max() - 0.5), np.floor(uv[:, 1].max() - 0.5)]
            assert np.abs(np.array(mask_bbox(mask)) - expected).max() <= 1, (cam.name, obj.label)
            checked += 1
    assert checked >= 5


def test_depth_unprojects_onto_object_boxes(tiny):
    """Instance pixels lifted through their depth land on the surface of that object's 3D box;
    room pixels land on the room's walls."""
    objects, scene_meta = read_objects(tiny / "objects.json")
    room_lo = np.array(scene_meta["room_aabb"]["min"])
    room_hi = np.array(scene_meta["room_aabb"]["max"])
    tol = 3e-3  # 1 mm depth quantisation, scaled along oblique rays
    for cam in _cameras(tiny)[::3]:
        inst = load_instances(tiny / "instances" / f"{cam.name}.png")
        depth = load_depth(tiny / "depth" / f"{cam.name}.png")
        rows, cols = np.mgrid[0 : cam.height, 0 : cam.width]
        x = (cols + 0.5 - cam.K[0, 2]) / cam.K[0, 0] * depth
        y = (rows + 0.5 - cam.K[1, 2]) / cam.K[1, 1] * depth
        pts_cam = np.stack([x, y, depth], -1).reshape(-1, 3)
        pts = (cam.c2w[:3, :3] @ pts_cam.T).T + cam.c2w[:3, 3]
        ids = inst.reshape(-1)
        for obj in objects:
            p = pts[ids == obj.instance_id]
            if len(p) == 0:
                continue
            assert np.all(p >= obj.aabb_min - tol) and np.all(p <= obj.aabb_max + tol), obj.label
            to_face = np.minimum(np.abs(p - obj.aabb_min), np.abs(p - obj.aabb_max)).min(axis=1)
            assert to_face.max() < tol, obj.label
        room = pts[ids == 0]
        assert np.all(room >= room_lo - tol) and np.all(room <= room_hi + tol)
        assert np.minimum(np.abs(room - room_lo), np.abs(room - room_hi)).min(axis=1).max() < tol


def test_label_polygons_rasterise_to_instance_masks(tiny):
    objects, _ = read_objects(tiny / "objects.json")
    by_label = {o.label: o.instance_id for o in objects}
    labels = read_label_dir(tiny)
    n = 0
    for stem, view in labels.items():
        inst = load_instances(tiny / "instances" / f"{stem}.png")
        assert (view.width, view.height, view.name) == (inst.shape[1], inst.shape[0], f"{stem}.png")
        assert len(view.objects) >= 2, "labelled views frame at least two objects"
        for o in view.objects:
            truth = inst == by_label[o.category]
            raster = o.mask(view.height, view.width)
            iou = (raster & truth).sum() / (raster | truth).sum()
            assert iou > 0.9, (stem, o.category, iou)
            assert tuple(o.bbox) == mask_bbox(truth)
            # Labelled objects are plainly visible, not slivers at the frame's edge.
            assert truth.mean() >= preset_config("tiny").min_label_fraction
            n += 1
    assert n >= 5
    # The labelled views between them frame every object.
    assert {o.category for v in labels.values() for o in v.objects} == set(by_label)


def test_objects_are_large_in_many_views(tiny):
    """The photos must be big enough in the views for a 2D classifier to recognise them."""
    objects, _ = read_objects(tiny / "objects.json")
    largest = []
    seen = {o.instance_id: 0 for o in objects}
    for cam in _cameras(tiny):
        inst = load_instances(tiny / "instances" / f"{cam.name}.png")
        counts = np.bincount(inst.reshape(-1), minlength=len(objects) + 1)[1:] / inst.size
        largest.append(counts.max())
        for k, frac in enumerate(counts, start=1):
            seen[k] += frac > 0.05
    assert np.median(largest) > 0.12
    assert min(seen.values()) >= 3, seen


def test_point_cloud_lies_on_surfaces(tiny):
    from plyfile import PlyData

    v = PlyData.read(str(tiny / "points3d.ply"))["vertex"]
    pts = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64)
    assert len(pts) == preset_config("tiny").n_points
    objects, meta = read_objects(tiny / "objects.json")
    lo, hi = np.array(meta["room_aabb"]["min"]), np.array(meta["room_aabb"]["max"])
    on_room = np.minimum(np.abs(pts - lo), np.abs(pts - hi)).min(axis=1) < 1e-5
    on_object = np.zeros(len(pts), bool)
    for o in objects:
        inside = np.all((pts >= o.aabb_min - 1e-5) & (pts <= o.aabb_max + 1e-5), axis=1)
        on_face = np.minimum(np.abs(pts - o.aabb_min), np.abs(pts - o.aabb_max)).min(axis=1) < 1e-5
        on_object |= inside & on_face
    assert np.all(on_room | on_object)
    assert 0.3 < on_object.mean() < 0.7
    rgb = np.stack([v["red"], v["green"], v["blue"]], 1)
    assert rgb.std() > 10  # textured, not one flat colour


def test_deterministic_for_a_seed(tmp_path):
    small = dict(n_views=3, width=48, height=36, n_points=500)
    a = synthetic.make_scene(tmp_path / "a", "tiny", seed=3, **small)
    b = synthetic.make_scene(tmp_path / "b", "tiny", seed=3, **small)
    c = synthetic.make_scene(tmp_path / "c", "tiny", seed=4, **small)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "transforms.json").read_bytes() != (c / "transforms.json").read_bytes()


def test_existing_output_and_interrupted_run(tmp_path, monkeypatch):
    small = dict(n_views=2, width=32, height=24, n_points=100)
    out = synthetic.make_scene(tmp_path / "s", "tiny", seed=0, **small)
    with pytest.raises(FileExistsError, match=str(out)):
        synthetic.make_scene(out, "tiny", seed=0, **small)

    def crash(root, *args, **kwargs):
        (root / "images").mkdir()
        (root / "images" / "0000.png").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic.writer, "_write_dataset", crash)
    with pytest.raises(KeyboardInterrupt):
        synthetic.make_scene(tmp_path / "killed", "tiny", seed=0, **small)
    with pytest.raises(KeyboardInterrupt):
        synthetic.make_scene(out, "tiny", seed=1, overwrite=True, **small)
    # Nothing half-written: no new dataset, no leftovers, the old dataset intact.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    assert (out / "transforms.json").is_file()


def test_bad_presets_are_named():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_config("huge")
    with pytest.raises(ValueError, match="unknown object"):
        preset_config("tiny", objects=("cat", "unicorn"))
    with pytest.raises(ValueError, match="at least one object"):
        preset_config("tiny", objects=())


def test_label_files_round_trip(tmp_path, tiny):
    view = read_view_labels(tiny / "labels" / "0000.json")
    write_view_labels(tmp_path / "copy.json", view)
    again = read_view_labels(tmp_path / "copy.json")
    assert again.to_json() == view.to_json()
    for cat in view.categories():
        assert np.array_equal(again.mask(cat), view.mask(cat))
        assert np.array_equal(again.boxes(cat), view.boxes(cat))


def test_label_reader_accepts_published_point_list_form(tmp_path):
    # LERF-OVS as published: one polygon per object as a list of [x, y] points.
    path = tmp_path / "frame_00001.json"
    path.write_text(json.dumps({
        "info": {"width": 10, "height": 8, "name": "frame_00001.jpg"},
        "objects": [{"category": "mug", "bbox": [2, 1, 5, 4], "segmentation": [[2, 1], [5, 1], [5, 4], [2, 4]]}],
    }))
    view = read_view_labels(path)
    mask = view.mask("mug")
    expected = np.zeros((8, 10), bool)
    expected[1:5, 2:6] = True
    assert np.array_equal(mask, expected)
    assert view.boxes("mug").tolist() == [[2, 1, 5, 4]]


def test_polygons_use_even_odd_rule():
    outer = np.array([[0, 0], [9, 0], [9, 9], [0, 9]], float)
    hole = np.array([[3, 3], [6, 3], [6, 6], [3, 6]], float)
    mask = polygons_to_mask([outer, hole], 10, 10)
    assert mask.sum() == 100 - 16 and not mask[4, 4] and mask[1, 1]


def test_label_reader_errors_name_file_and_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"info": {"width": 4, "height": 4, "name": "x"}, "objects": [{"category": "a", "bbox": [1, 2]}]}))
    with pytest.raises(LabelFormatError, match=r"bad\.json.*segmentation"):
        read_view_labels(bad)
    bad.write_text(json.dumps({"info": {"width": 4, "height": 4, "name": "x"},
                               "objects": [{"category": "a", "bbox": [1, 2], "segmentation": []}]}))
    with pytest.raises(LabelFormatError, match=r"bad\.json.*bbox must have 4"):
        read_view_labels(bad)
    bad.write_text("{not json")
    with pytest.raises(LabelFormatError, match=r"bad\.json: not valid JSON"):
        read_view_labels(bad)


def test_loads_through_load_dataset(tiny):
    """The generated dataset opens with the project's reader: same cameras, images, points."""
    from fmsplat.scene import load_dataset
    from fmsplat.scene.synthetic import build_scene, sample_cameras

    ds = load_dataset(tiny, downscale=1.0, test_every=8)
    cfg = preset_config("tiny")
    truth = sample_cameras(build_scene(cfg, 0), 0)
    assert len(ds) == len(truth)
    assert ds.test_indices == [i for i in range(len(truth)) if i % 8 == 0]
    labelled = sorted(p.stem for p in (tiny / "labels").glob("*.json"))
    assert [Path(ds.cameras[i].image_path).stem for i in ds.test_indices] == labelled
    for cam, ref in zip(ds.cameras, truth):
        assert (cam.width, cam.height) == (cfg.width, cfg.height)
        np.testing.assert_allclose(cam.K, ref.K, atol=1e-9)
        np.testing.assert_allclose(cam.viewmat, ref.viewmat, atol=1e-9)
    img = ds.image(0)
    assert img.shape == (cfg.height, cfg.width, 3) and 0.0 <= img.min() and img.max() <= 1.0
    from PIL import Image

    np.testing.assert_allclose(img, np.asarray(Image.open(tiny / "images" / "0000.png")) / 255.0, atol=1e-6)
    assert ds.points is not None and len(ds.points) == cfg.n_points
    assert ds.point_colors is not None


def test_the_calibration_pool_shares_no_photo_or_name_with_the_tests_and_says_what_it_needs(tmp_path, monkeypatch):
    """The presence rule is measured on rooms of the calibration pool (bench/presence_family.py): it must
    share no photo and no label with the bundled photos the tests and the bench room use, and a missing
    sample photo is one clear error naming the file and the package, before any room is built."""
    from fmsplat.scene.synthetic.textures import CALIBRATION_PHOTOS, OPENCV_SAMPLES_ENV, PHOTOS, load_photo

    assert len(CALIBRATION_PHOTOS) > len(PHOTOS)
    assert not set(CALIBRATION_PHOTOS) & set(PHOTOS)
    # words may meet where the things are near (the calibration's "palace" is a synonym of the pagoda), no more
    words = lambda pool: {w.lower() for p in pool.values() for w in (p.label, *p.synonyms)}  # noqa: E731
    assert words(CALIBRATION_PHOTOS) & words(PHOTOS) == {"palace"}
    assert not {p.source for p in CALIBRATION_PHOTOS.values()} & {p.source for p in PHOTOS.values()}
    monkeypatch.setenv(OPENCV_SAMPLES_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"apple\.jpg.*apt-get install opencv-doc"):
        load_photo(CALIBRATION_PHOTOS["apple"], 64)
    with pytest.raises(FileNotFoundError, match="opencv-doc"):
        synthetic.make_scene(tmp_path / "room", "tiny", seed=0, objects=("apple", "cat"))
    assert not (tmp_path / "room").exists()
    assert preset_config("tiny", objects=("apple", "cat")).objects == ("apple", "cat")  # a mix is a valid config
