"""Scene readers: transforms.json variants, COLMAP binary/text, undistortion, the fox scene."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmsplat.scene import Camera, DatasetError, SceneDataset, load_dataset
from fmsplat.scene import colmap
from fmsplat.scene.images import distort_image, undistort_image

# Several tests use one view (or views at one spot); the extent warning is checked once, below.
pytestmark = pytest.mark.filterwarnings("ignore:.*all camera centres coincide:UserWarning")

FOX = Path(__file__).resolve().parents[2] / "shared" / "data" / "fox"
if not FOX.is_dir():
    FOX = Path("/work/shared/data/fox")

# --------------------------------------------------------------------------------------- helpers


def project(cam: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (P, 2) and depths (P,) of world points."""
    p = points @ cam.viewmat[:3, :3].T + cam.viewmat[:3, 3]
    uv = p @ cam.K.T
    return uv[:, :2] / uv[:, 2:3], p[:, 2]


def save_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)).save(path)


def look_at_opengl(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenGL camera-to-world (camera looks down its -z, y up), written independently of the package."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    cam_up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, cam_up, back, eye
    return m


def write_transforms(root: Path, meta: dict, name: str = "transforms.json") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text(json.dumps(meta))
    return path


def small_scene(root: Path, n: int = 4, size=(40, 30), ext: str = ".png") -> list[np.ndarray]:
    """n random-ish images and ring poses around the origin; returns the OpenGL c2w matrices."""
    rng = np.random.default_rng(0)
    poses = []
    for i in range(n):
        angle = 2 * math.pi * i / n
        poses.append(look_at_opengl([4 * math.cos(angle), 4 * math.sin(angle), 1.0], [0, 0, 0]))
        save_png(root / "images" / f"{i:04d}{ext}", rng.random((size[1], size[0], 3)))
    return poses


# --------------------------------------------------------------------------------------- fox


@pytest.fixture(scope="module")
def fox() -> SceneDataset:
    if not (FOX / "transforms.json").is_file():
        pytest.skip(f"fox scene not found at {FOX} (shared data folder absent)")
    return load_dataset(FOX, downscale=8)


def test_fox_cameras_intrinsics_and_split(fox):
    meta = json.loads((FOX / "transforms.json").read_text())
    assert len(fox) == 67 and fox.format == "transforms"
    cam = fox.cameras[0]
    assert (cam.width, cam.height) == (135, 240)
    assert cam.fx == pytest.approx(meta["fl_x"] / 8) and cam.fy == pytest.approx(meta["fl_y"] / 8)
    assert cam.K[0, 2] == pytest.approx(meta["cx"] / 8) and cam.K[1, 2] == pytest.approx(meta["cy"] / 8)
    assert cam.distortion is None  # undistorted on load
    assert cam.image_path.name == "0001.jpg"  # backslash path resolved
    assert fox.test_indices == list(range(0, 67, 8)) and len(fox.test_indices) == 9
    assert len(fox.train_indices) == 58 and not set(fox.train_indices) & set(fox.test_indices)
    assert fox.provenance()["pose_sha256"] == hashlib.sha256((FOX / "transforms.json").read_bytes()).hexdigest()


def test_fox_images_load_at_camera_size(fox):
    for i in (0, 33):
        img = fox.image(i)
        assert img.shape == (240, 135, 3) and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05
        assert fox.image(i) is img  # cached
        assert not img.flags.writeable  # the cache cannot be corrupted by a caller
    tensor = fox.image_tensor(0)
    tensor += 1.0  # a copy: the cached image is unchanged
    assert np.allclose(tensor.numpy() - 1.0, fox.image(0), atol=1e-6)
    # Undistortion moved pixels: the raw view differs from the undistorted one.
    raw = load_dataset(FOX, downscale=8, undistort=False)
    assert raw.cameras[0].distortion is not None
    assert np.abs(raw.image(0) - fox.image(0)).mean() > 0.005
    # fox has pincushion distortion (k1 > 0): the corners of the ideal view fall off the photo.
    mask = fox.valid_mask(0)
    assert not mask[0, 0] and mask[120, 67] and 0.9 < mask.mean() < 1.0


def test_fox_cameras_look_at_a_common_region(fox):
    # The point nearest (least squares) to every optical axis must lie in front of every camera
    # and project inside most images; a wrong axis flip or transposed pose breaks this.
    centers = np.stack([c.center for c in fox.cameras])
    axes = np.stack([c.viewmat[2, :3] for c in fox.cameras])  # camera +z in world coordinates
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, d in zip(centers, axes):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c
    focus = np.linalg.solve(A, b)
    inside = 0
    for cam in fox.cameras:
        uv, depth = project(cam, focus[None])
        assert depth[0] > 0
        inside += 0 <= uv[0, 0] < cam.width and 0 <= uv[0, 1] < cam.height
    assert inside >= 0.9 * len(fox)
    assert fox.extent == pytest.approx(1.1 * np.linalg.norm(centers - centers.mean(0), axis=1).max())


def test_fox_as_colmap_model_gives_the_same_views(fox, tmp_path):
    # Export fox's raw cameras (OPENCV lens) to a COLMAP model next to a link to its images:
    # the COLMAP reader must reproduce the transforms.json cameras and the undistorted pixels.
    raw = load_dataset(FOX, undistort=False, test_every=0)
    colmap.write_model(colmap.model_from_cameras(raw.cameras), tmp_path / "sparse" / "0")
    (tmp_path / "images").symlink_to(FOX / "images", target_is_directory=True)
    again = load_dataset(tmp_path, downscale=8)
    assert again.format == "colmap-binary" and len(again) == len(fox)
    for a, b in zip(fox.cameras, again.cameras):  # fox's names are already in sorted order
        assert a.name.endswith(b.name)
        # fox rotations are orthonormal only to ~1e-6; a quaternion stores the nearest rotation.
        assert np.allclose(a.K, b.K) and np.allclose(a.viewmat, b.viewmat, atol=1e-5)
    assert np.array_equal(again.image(5), fox.image(5))


# --------------------------------------------------------------------------------------- transforms.json


def test_opengl_pose_flip_projects_known_point(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((80, 100, 3)))
    # Camera at z = 5 looking down -z (OpenGL), y up: world (1, 0.5, 0) is right of and above
    # the centre, 5 units ahead -> u = 100*1/5 + 50 = 70, v = 40 - 100*0.5/5 = 30.
    c2w = np.eye(4)
    c2w[2, 3] = 5.0
    write_transforms(
        tmp_path,
        {"fl_x": 100, "fl_y": 100, "cx": 50, "cy": 40, "w": 100, "h": 80, "frames": [{"file_path": "a.png", "transform_matrix": c2w.tolist()}]},
    )
    with pytest.warns(UserWarning, match="all camera centres coincide"):
        ds = load_dataset(tmp_path, test_every=0)
    assert ds.extent == pytest.approx(1.1)  # a single view has no camera spread: unit size
    uv, depth = project(ds.cameras[0], np.array([[1.0, 0.5, 0.0]]))
    assert np.allclose(uv, [[70.0, 30.0]]) and depth[0] == pytest.approx(5.0)
    assert np.allclose(ds.cameras[0].center, [0, 0, 5])
    assert ds.test_indices == [] and ds.train_indices == [0]


def test_camera_angle_only_reads_size_from_image(tmp_path):
    poses = small_scene(tmp_path, n=2, size=(40, 30))
    angle_x = 2 * math.atan(20 / 50)  # fx = 50 for a 40 px wide image
    frames = [{"file_path": f"images/{i:04d}.png", "transform_matrix": p.tolist()} for i, p in enumerate(poses)]
    ds = load_dataset(write_transforms(tmp_path, {"camera_angle_x": angle_x, "frames": frames}))
    cam = ds.cameras[0]
    assert (cam.width, cam.height) == (40, 30)
    assert cam.fx == pytest.approx(50) and cam.fy == pytest.approx(50)
    assert cam.K[0, 2] == pytest.approx(20) and cam.K[1, 2] == pytest.approx(15)
    angle_y = 2 * math.atan(15 / 60)  # fy = 60
    ds = load_dataset(write_transforms(tmp_path, {"camera_angle_x": angle_x, "camera_angle_y": angle_y, "frames": frames}))
    assert ds.cameras[1].fy == pytest.approx(60) and ds.cameras[1].fx == pytest.approx(50)


def test_per_frame_intrinsics_override_global(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((30, 40, 3)))
    save_png(tmp_path / "b.png", np.zeros((60, 80, 3)))
    frames = [
        {"file_path": "a.png", "transform_matrix": np.eye(4).tolist()},
        {"file_path": "b.png", "transform_matrix": np.eye(4).tolist(), "fl_x": 90, "fl_y": 91, "cx": 41, "cy": 29, "w": 80, "h": 60},
    ]
    ds = load_dataset(write_transforms(tmp_path, {"fl_x": 45, "fl_y": 46, "cx": 20, "cy": 15, "w": 40, "h": 30, "frames": frames}))
    a, b = ds.cameras
    assert (a.fx, a.fy, a.K[0, 2], a.width) == (45, 46, 20, 40)
    assert (b.fx, b.fy, b.K[0, 2], b.K[1, 2], b.width, b.height) == (90, 91, 41, 29, 80, 60)
    assert ds.image(1).shape == (60, 80, 3) and ds.image(0).shape == (30, 40, 3)


def test_missing_extension_and_windows_separators(tmp_path):
    poses = small_scene(tmp_path, n=2)
    frames = [
        {"file_path": "./images/0000", "transform_matrix": poses[0].tolist()},  # Blender style: no extension
        {"file_path": "images\\0001.png", "transform_matrix": poses[1].tolist()},  # instant-ngp on Windows
    ]
    ds = load_dataset(write_transforms(tmp_path, {"camera_angle_x": 1.0, "frames": frames}))
    assert [c.image_path.name for c in ds.cameras] == ["0000.png", "0001.png"]


def test_missing_images_are_skipped_with_one_counting_warning(tmp_path):
    poses = small_scene(tmp_path, n=3)
    frames = [{"file_path": f"images/{i:04d}.png", "transform_matrix": p.tolist()} for i, p in enumerate(poses)]
    frames += [{"file_path": f"images/gone_{i}.png", "transform_matrix": poses[0].tolist()} for i in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(write_transforms(tmp_path, {"camera_angle_x": 1.0, "frames": frames}))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "skipped 2 of 5" in messages[0]
    assert len(ds) == 3 and ds.provenance()["skipped"] == 2


def test_no_image_left_is_an_error(tmp_path):
    frames = [{"file_path": "images/none.png", "transform_matrix": np.eye(4).tolist()}]
    path = write_transforms(tmp_path, {"camera_angle_x": 1.0, "frames": frames})
    with pytest.raises(DatasetError, match="none of the 1 frames"):
        load_dataset(path)


def test_malformed_files_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "transforms.json").write_text('{"frames": [ {"file_path": ')
    with pytest.raises(DatasetError, match=r"bad[/\\]transforms\.json.*malformed JSON"):
        load_dataset(bad)

    save_png(tmp_path / "ok" / "a.png", np.zeros((4, 4, 3)))
    no_matrix = write_transforms(tmp_path / "ok", {"camera_angle_x": 1.0, "frames": [{"file_path": "a.png"}]}, "transforms_a.json")
    with pytest.raises(DatasetError, match=r"transforms_a\.json: frame 0.*'transform_matrix'"):
        load_dataset(no_matrix)
    no_focal = write_transforms(tmp_path / "ok", {"frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}, "transforms_b.json")
    with pytest.raises(DatasetError, match=r"transforms_b\.json: frame 0.*'fl_x'"):
        load_dataset(no_focal)
    fisheye = write_transforms(
        tmp_path / "ok",
        {"camera_model": "OPENCV_FISHEYE", "camera_angle_x": 1.0, "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]},
        "transforms_d.json",
    )
    with pytest.raises(DatasetError, match=r"transforms_d\.json: camera_model 'OPENCV_FISHEYE' is not supported"):
        load_dataset(fisheye)
    no_frames = write_transforms(tmp_path / "ok", {"camera_angle_x": 1.0}, "transforms_c.json")
    with pytest.raises(DatasetError, match=r"transforms_c\.json.*'frames'"):
        load_dataset(no_frames)
    with pytest.raises(DatasetError, match="no dataset found.*transforms_a.json"):
        load_dataset(tmp_path / "ok")  # only transforms_*.json files: the error lists them
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    assert issubclass(DatasetError, ValueError)


def test_camera_size_against_the_image_is_checked_when_the_dataset_opens(tmp_path):
    """A camera whose aspect ratio differs from its image's is refused at load (headers only),
    naming both files; a uniformly scaled image (COLMAP's images_2) is accepted."""
    save_png(tmp_path / "images" / "a.png", np.zeros((30, 40, 3)))
    frame = [{"file_path": "images/a.png", "transform_matrix": np.eye(4).tolist()}]
    wrong = write_transforms(tmp_path, {"fl_x": 50.0, "fl_y": 50.0, "cx": 20, "cy": 15, "w": 40, "h": 40, "frames": frame})
    with pytest.raises(DatasetError, match=r"a\.png: image is 40x30 but its camera in .*transforms\.json is 40x40"):
        load_dataset(wrong)
    scaled = write_transforms(tmp_path, {"fl_x": 100.0, "fl_y": 100.0, "cx": 40, "cy": 30, "w": 80, "h": 60, "frames": frame})
    ds = load_dataset(scaled)
    assert (ds.cameras[0].width, ds.cameras[0].height) == (80, 60) and ds.image(0).shape == (60, 80, 3)


def test_rgba_composited_on_background_and_downscale(tmp_path):
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:20, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    write_transforms(tmp_path, {"fl_x": 60, "fl_y": 60, "cx": 30, "cy": 20, "w": 60, "h": 40, "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]})
    ds = load_dataset(tmp_path, downscale=2, background=(0.0, 1.0, 0.0))
    img = ds.image(0)
    assert img.shape == (20, 30, 3)
    assert ds.cameras[0].fx == pytest.approx(30) and ds.cameras[0].K[0, 2] == pytest.approx(15)
    assert np.allclose(img[2, 5], [1, 0, 0], atol=1e-3) and np.allclose(img[17, 5], [0, 1, 0], atol=1e-3)


def test_points_from_ply_file_path_and_bounds(tmp_path):
    poses = small_scene(tmp_path, n=3)
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, -1.0], [-1.0, 0.5, 0.5]], np.float32)
    header = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    header += "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    body = "".join(f"{x} {y} {z} 255 0 51\n" for x, y, z in pts)
    (tmp_path / "sparse_pc.ply").write_text(header + body)
    frames = [{"file_path": f"images/{i:04d}.png", "transform_matrix": p.tolist()} for i, p in enumerate(poses)]
    ds = load_dataset(write_transforms(tmp_path, {"camera_angle_x": 1.0, "ply_file_path": "sparse_pc.ply", "frames": frames}))
    assert np.allclose(ds.points, pts) and np.allclose(ds.point_colors, [[1.0, 0.0, 0.2]] * 3)
    lo, hi = ds.bounds()
    assert (lo < pts.min(0)).all() and (hi > pts.max(0)).all() and (hi - lo).max() < 3 * (pts.max(0) - pts.min(0)).max()


# --------------------------------------------------------------------------------------- undistortion


def opencv_distort(x, y, k1, k2, p1, p2):
    """The OpenCV lens model, written out here independently of the package."""
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    return x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y


def test_undistortion_recovers_a_synthetic_image(tmp_path):
    w, h = 160, 120
    K = np.array([[120.0, 0, 82.0], [0, 121.0, 58.0], [0, 0, 1]])
    dist = (-0.25, 0.06, 0.004, -0.003)

    def pattern(x, y):  # a smooth image defined on ideal (undistorted) normalised coordinates
        return np.stack([0.5 + 0.4 * np.sin(7 * x) * np.cos(5 * y), 0.5 + 0.4 * np.cos(9 * y), 0.5 + 0.3 * np.sin(4 * (x + y))], -1)

    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xd, yd = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]
    x, y = xd.copy(), yd.copy()
    for _ in range(50):  # invert the lens model by fixed-point iteration
        fx_, fy_ = opencv_distort(x, y, *dist)
        x, y = x - (fx_ - xd), y - (fy_ - yd)
    assert np.abs(np.stack(opencv_distort(x, y, *dist)) - np.stack([xd, yd])).max() < 1e-10
    distorted = pattern(x, y).astype(np.float32)  # what the lens recorded
    ideal = pattern(xd, yd).astype(np.float32)  # what a pinhole camera with K sees
    assert np.abs(distorted - ideal).max() > 0.2  # the distortion is substantial

    restored, coverage = undistort_image(distorted, K, dist)
    inner = (coverage > 0.999)
    inner[:8], inner[-8:], inner[:, :8], inner[:, -8:] = False, False, False, False
    assert inner.mean() > 0.6
    # Tight enough to catch a half-pixel convention slip (~0.005) or a 10% error in k1 (~0.025).
    assert np.abs(restored - ideal)[inner].max() < 0.002
    # Barrel distortion pulls the corners from outside the ideal frame: compare away from them.
    assert np.abs(distort_image(ideal, K, dist) - distorted)[12:-12, 12:-12].max() < 0.005

    # Through the dataset: the stored photo is distorted, the dataset hands out the ideal image.
    save_png(tmp_path / "d.png", distorted)
    write_transforms(
        tmp_path,
        {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": w, "h": h,
         "k1": dist[0], "k2": dist[1], "p1": dist[2], "p2": dist[3],
         "frames": [{"file_path": "d.png", "transform_matrix": np.eye(4).tolist()}]},
    )
    ds = load_dataset(tmp_path)
    assert ds.cameras[0].distortion is None and np.allclose(ds.cameras[0].K, K)
    assert np.abs(ds.image(0) - ideal)[inner].max() < 0.004  # 8-bit PNG quantisation included
    assert ds.valid_mask(0).all()  # barrel distortion: every ideal pixel lies inside the photo
    # Downscaled: the half-size ideal image (2x2 box average), undistorted with the scaled K.
    half = load_dataset(tmp_path, downscale=2)
    ideal_half = ideal.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    inner_half = inner.reshape(h // 2, 2, w // 2, 2).all(axis=(1, 3))
    inner_half[:3], inner_half[-3:], inner_half[:, :3], inner_half[:, -3:] = False, False, False, False
    assert half.image(0).shape == (h // 2, w // 2, 3)
    assert np.abs(half.image(0) - ideal_half)[inner_half].max() < 0.006  # a 1 px slip gives ~0.05
    raw = load_dataset(tmp_path, undistort=False)
    assert np.allclose(raw.cameras[0].distortion, dist)
    assert np.abs(raw.image(0) - distorted).max() < 0.01


# --------------------------------------------------------------------------------------- COLMAP


def _colmap_fixture():
    rng = np.random.default_rng(3)
    cameras = {
        1: colmap.ColmapCamera(1, "PINHOLE", 64, 48, np.array([70.0, 71.0, 32.5, 23.5])),
        2: colmap.ColmapCamera(2, "SIMPLE_PINHOLE", 64, 48, np.array([70.0, 32.0, 24.0])),
        3: colmap.ColmapCamera(3, "SIMPLE_RADIAL", 64, 48, np.array([70.0, 32.0, 24.0, 0.01])),
        4: colmap.ColmapCamera(4, "RADIAL", 64, 48, np.array([70.0, 32.0, 24.0, 0.01, -0.002])),
        5: colmap.ColmapCamera(5, "OPENCV", 64, 48, np.array([70.0, 72.0, 31.0, 25.0, 0.01, -0.002, 0.001, 0.0005])),
    }
    images = {}
    for i in range(1, 6):
        q = rng.normal(size=4)
        images[10 + i] = colmap.ColmapImage(
            10 + i, q / np.linalg.norm(q), rng.normal(size=3), i, f"img_{i}.png",
            rng.random((i, 2)) * 64, rng.integers(-1, 50, i),
        )
    points = colmap.ColmapPoints.from_arrays(rng.normal(size=(50, 3)), rng.integers(0, 256, (50, 3)).astype(np.uint8), rng.random(50))
    points.track_lengths = rng.integers(0, 4, 50)
    points.tracks = rng.integers(0, 20, (int(points.track_lengths.sum()), 2)).astype(np.int32)
    return colmap.ColmapModel(cameras, images, points)


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_model_round_trip(tmp_path, binary):
    model = _colmap_fixture()
    colmap.write_model(model, tmp_path, binary=binary)
    back, ext = colmap.read_model(tmp_path)
    assert ext == (".bin" if binary else ".txt")
    assert set(back.cameras) == set(model.cameras)
    for cid, cam in model.cameras.items():
        b = back.cameras[cid]
        assert (b.model, b.width, b.height) == (cam.model, cam.width, cam.height) and np.array_equal(b.params, cam.params)
    assert set(back.images) == set(model.images)
    for iid, img in model.images.items():
        b = back.images[iid]
        assert (b.name, b.camera_id) == (img.name, img.camera_id)
        assert np.array_equal(b.qvec, img.qvec) and np.array_equal(b.tvec, img.tvec)
        assert np.array_equal(b.xys, img.xys) and np.array_equal(b.point3d_ids, img.point3d_ids)
    for name in ("ids", "xyz", "rgb", "errors", "track_lengths", "tracks"):
        assert np.array_equal(getattr(back.points, name), getattr(model.points, name)), name


def test_colmap_points_text_tolerates_hand_edited_whitespace(tmp_path):
    text = "# comment\r\n1  0.5\t-1 2 255 0 7 0.25 3 4 5 6\r\n\n# another comment\n  2 1e-3 0 0 1 2 3 0.5  \n"
    (tmp_path / "points3D.txt").write_text(text)
    points = colmap.read_points3d_text(tmp_path / "points3D.txt")
    assert np.array_equal(points.ids, [1, 2]) and np.allclose(points.xyz, [[0.5, -1, 2], [1e-3, 0, 0]])
    assert np.array_equal(points.rgb, [[255, 0, 7], [1, 2, 3]]) and np.allclose(points.errors, [0.25, 0.5])
    assert np.array_equal(points.track_lengths, [2, 0]) and np.array_equal(points.tracks, [[3, 4], [5, 6]])
    (tmp_path / "points3D.txt").write_text("# only comments\n")
    assert len(colmap.read_points3d_text(tmp_path / "points3D.txt").ids) == 0
    (tmp_path / "points3D.txt").write_text("1 0 0 0 1 2 3 0.5 7\n")
    with pytest.raises(DatasetError, match=r"points3D\.txt: expected .*'1 0 0 0 1 2 3 0.5 7'"):
        colmap.read_points3d_text(tmp_path / "points3D.txt")
    (tmp_path / "points3D.txt").write_text("1 0 0 zero 1 2 3 0.5\n")
    with pytest.raises(DatasetError, match=r"points3D\.txt"):
        colmap.read_points3d_text(tmp_path / "points3D.txt")


def test_colmap_binary_truncation_and_unknown_model_are_errors(tmp_path):
    colmap.write_model(_colmap_fixture(), tmp_path, binary=True)
    data = (tmp_path / "points3D.bin").read_bytes()
    (tmp_path / "points3D.bin").write_bytes(data[:-5])
    with pytest.raises(DatasetError, match=r"points3D\.bin.*truncated"):
        colmap.read_model(tmp_path)
    (tmp_path / "cameras.bin").write_bytes((tmp_path / "cameras.bin").read_bytes()[:20])
    with pytest.raises(DatasetError, match=r"cameras\.bin.*truncated"):
        colmap.read_model(tmp_path)
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "cameras.txt").write_text("1 WEIRD 10 10 1 2 3\n")
    (tmp_path / "txt" / "images.txt").write_text("")
    with pytest.raises(DatasetError, match=r"cameras\.txt:1: unknown camera model 'WEIRD'"):
        colmap.read_model(tmp_path / "txt")


@pytest.mark.parametrize("layout,binary", [("sparse/0", True), ("sparse", False), (".", True)])
def test_colmap_dataset_agrees_with_transforms(tmp_path, layout, binary):
    # The same two views, written once as transforms.json (OpenGL c2w) and once as COLMAP
    # (OpenCV world-to-camera): points must project to the same pixels in both datasets.
    w, h = 64, 48
    K = np.array([[70.0, 0, 32.0], [0, 70.0, 24.0], [0, 0, 1]])
    c2w_gl = [look_at_opengl([4, 0, 1], [0, 0, 0]), look_at_opengl([0, 4, 2], [0.2, 0, 0])]
    rng = np.random.default_rng(1)
    world = rng.normal(scale=0.5, size=(20, 3))
    colors = rng.integers(0, 256, (20, 3)).astype(np.uint8)

    tf_root = tmp_path / "tf"
    frames = []
    for i, m in enumerate(c2w_gl):
        save_png(tf_root / f"v{i}.png", rng.random((h, w, 3)))
        frames.append({"file_path": f"v{i}.png", "transform_matrix": m.tolist()})
    write_transforms(tf_root, {"fl_x": 70, "fl_y": 70, "cx": 32, "cy": 24, "w": w, "h": h, "frames": frames})
    tf = load_dataset(tf_root)

    cm_root = tmp_path / "colmap"
    images = {}
    for i, m in enumerate(c2w_gl):
        w2c = np.linalg.inv(m @ np.diag([1.0, -1.0, -1.0, 1.0]))  # flip y and z: OpenGL -> OpenCV
        images[i + 1] = colmap.ColmapImage(i + 1, colmap.rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3], 1, f"v{i}.png")
        save_png(cm_root / "images" / f"v{i}.png", rng.random((h, w, 3)))
    model = colmap.ColmapModel(
        {1: colmap.ColmapCamera(1, "PINHOLE", w, h, np.array([70.0, 70.0, 32.0, 24.0]))},
        images,
        colmap.ColmapPoints.from_arrays(world, colors),
    )
    colmap.write_model(model, cm_root / layout, binary=binary)
    cm = load_dataset(cm_root)
    assert cm.format == ("colmap-binary" if binary else "colmap-text")
    assert len(cm) == 2 and [c.name for c in cm.cameras] == ["v0.png", "v1.png"]
    assert np.allclose(cm.points, world) and np.allclose(cm.point_colors, colors / 255.0)
    for a, b in zip(tf.cameras, cm.cameras):
        uv_a, z_a = project(a, world)
        uv_b, z_b = project(b, world)
        assert (z_a > 0).all() and np.abs(uv_a - uv_b).max() < 1e-6
    # The look-at target sits on the optical axis: it projects to the principal point.
    uv, _ = project(cm.cameras[0], np.zeros((1, 3)))
    assert np.allclose(uv, [[32.0, 24.0]], atol=1e-9)
    assert cm.image(1).shape == (h, w, 3)
    assert cm.provenance()["pose_file"].endswith(f"images{'.bin' if binary else '.txt'}")


def test_colmap_distortion_models_and_missing_images(tmp_path):
    model = _colmap_fixture()
    for img in model.images.values():
        if img.camera_id != 4:
            save_png(tmp_path / "images" / img.name, np.full((48, 64, 3), 0.5))
    colmap.write_model(model, tmp_path / "sparse" / "0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(tmp_path, undistort=False, test_every=0)
    assert len(caught) == 1 and "skipped 1 of 5" in str(caught[0].message)
    by_name = {c.name: c for c in ds.cameras}
    assert by_name["img_1.png"].distortion is None and by_name["img_2.png"].distortion is None
    assert np.allclose(by_name["img_3.png"].distortion, [0.01, 0, 0, 0])
    assert np.allclose(by_name["img_5.png"].distortion, [0.01, -0.002, 0.001, 0.0005])
    assert np.allclose(by_name["img_5.png"].K, [[70, 0, 31], [0, 72, 25], [0, 0, 1]])
    assert np.allclose(by_name["img_2.png"].K, [[70, 0, 32], [0, 70, 24], [0, 0, 1]])
    with pytest.warns(UserWarning, match="skipped 1 of 5"):
        undistorted = load_dataset(tmp_path, downscale=2)
    assert all(c.distortion is None for c in undistorted.cameras)
    assert undistorted.image(2).shape == (24, 32, 3)

    model.cameras[1] = colmap.ColmapCamera(1, "OPENCV_FISHEYE", 64, 48, np.zeros(8))
    colmap.write_model(model, tmp_path / "sparse" / "0")
    with pytest.raises(DatasetError, match="OPENCV_FISHEYE"):
        load_dataset(tmp_path)


def test_colmap_without_images_folder_is_an_error(tmp_path):
    colmap.write_model(_colmap_fixture(), tmp_path / "sparse" / "0", binary=False)
    with pytest.raises(DatasetError, match="no images folder"):
        load_dataset(tmp_path)


def test_model_from_cameras_round_trips_through_a_dataset(tmp_path):
    poses = small_scene(tmp_path / "src", n=3, size=(40, 30))
    frames = [{"file_path": f"images/{i:04d}.png", "transform_matrix": p.tolist()} for i, p in enumerate(poses)]
    src = load_dataset(write_transforms(tmp_path / "src", {"camera_angle_x": 1.0, "k1": 0.02, "frames": frames}), undistort=False)
    model = colmap.model_from_cameras(src.cameras, points=np.zeros((2, 3)), point_colors=np.full((2, 3), 0.5))
    colmap.write_model(model, tmp_path / "src" / "sparse" / "0", binary=False)
    (tmp_path / "src" / "transforms.json").rename(tmp_path / "src" / "poses.json")
    back = load_dataset(tmp_path / "src", undistort=False)
    assert back.format == "colmap-text"
    for a, b in zip(src.cameras, back.cameras):
        assert np.allclose(a.viewmat, b.viewmat, atol=1e-12) and np.allclose(a.K, b.K) and np.allclose(a.distortion, b.distortion)
    assert np.allclose(back.point_colors, 128 / 255)
