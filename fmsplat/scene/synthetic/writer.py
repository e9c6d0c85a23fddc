"""Writers of the synthetic room to disk: the labelled dataset (`make_scene`), the walk-through
video (`make_video`), the surface point cloud, and readers of the depth and instance images."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from fmsplat.atomic import write_json, write_with
from fmsplat.scene.cameras import GL_TO_CV, Camera
from fmsplat.scene.labels import SceneObjectInfo, labels_from_instances, write_objects, write_view_labels
from fmsplat.scene.synthetic.cameras import UP, intrinsics, sample_cameras, silhouette_pixels, video_path
from fmsplat.scene.synthetic.layout import Scene, build_scene, preset_config
from fmsplat.scene.synthetic.raycast import albedo, render_view, shade

GENERATOR_VERSION = 1


def sample_surface_points(scene: Scene, n_points: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random points on the visible surfaces (object faces except bottoms; room floor, walls,
    ceiling) with their shaded colours: half on the objects, half on the room, by area."""
    rng = np.random.default_rng([seed, 2])
    faces = []  # (lo, hi, axis, sign, owner id)
    for b in scene.boxes:
        for ax in range(3):
            for sign in (-1.0, 1.0):
                if ax == 2 and sign < 0:
                    continue  # bottom rests on the floor
                faces.append((b.lo, b.hi, ax, sign, b.instance_id))
    room_faces = [(scene.room.lo, scene.room.hi, ax, sign, 0) for ax in range(3) for sign in (-1.0, 1.0)]

    def area(f):
        size = f[1] - f[0]
        return float(np.prod(np.delete(size, f[2])))

    pts, normals, ids = [], [], []
    for group, count in ((faces, n_points // 2), (room_faces, n_points - n_points // 2)):
        if not group:
            continue
        areas = np.array([area(f) for f in group])
        which = rng.choice(len(group), size=count, p=areas / areas.sum())
        for k, f in enumerate(group):
            m = int(np.count_nonzero(which == k))
            if m == 0:
                continue
            lo, hi, ax, sign, owner = f
            p = rng.uniform(lo, hi, size=(m, 3))
            on_max = sign > 0
            if owner == 0:
                on_max = not on_max  # room faces are seen from inside
            p[:, ax] = hi[ax] if on_max else lo[ax]
            n = np.zeros((m, 3))
            n[:, ax] = sign if owner != 0 else -sign
            pts.append(p)
            normals.append(n)
            ids.append(np.full(m, owner, dtype=np.int32))
    points = np.concatenate(pts)
    normal = np.concatenate(normals)
    instance = np.concatenate(ids)
    axis = np.abs(normal).argmax(axis=1)
    colour = shade(scene, points, normal, albedo(scene, points, instance, axis, normal))
    return points, normal, colour


def _write_ply(path: Path, points: np.ndarray, normals: np.ndarray, colours: np.ndarray) -> None:
    from plyfile import PlyData, PlyElement

    dtype = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("nx", "f4"), ("ny", "f4"), ("nz", "f4"),
             ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(len(points), dtype=dtype)
    for k, name in enumerate("xyz"):
        vertex[name] = points[:, k]
        vertex["n" + name] = normals[:, k]
    rgb8 = np.clip(np.round(colours * 255), 0, 255).astype(np.uint8)
    for k, name in enumerate(("red", "green", "blue")):
        vertex[name] = rgb8[:, k]
    write_with(path, lambda tmp: PlyData([PlyElement.describe(vertex, "vertex")], text=False).write(str(tmp)))


def _write_png(path: Path, array: np.ndarray) -> None:
    write_with(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def make_scene(out_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0, overwrite: bool = False,
               **overrides) -> Path:
    """Generate a labelled scene dataset in `out_dir` and return its path.

    The scene is written into a temporary directory beside `out_dir` and renamed into place at
    the end, so an interrupted run leaves no partial dataset. `overrides` replace preset fields
    of `SceneConfig` (width, height, n_views, objects, ...). An existing `out_dir` is an error
    unless `overwrite` is set.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass --overwrite, or overwrite=True in Python, to replace it)")
    config = preset_config(preset, **overrides)
    scene = build_scene(config, seed)
    cameras = sample_cameras(scene, seed)

    return _into_place(out_dir, lambda tmp: _write_dataset(tmp, scene, cameras, preset, seed))


def _into_place(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Run `write` on a temporary directory beside `out_dir`, then rename it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        write(tmp)
        meta_path = tmp / "transforms.json"
        if not meta_path.exists():
            raise RuntimeError(f"{meta_path}: not written")
        if out_dir.exists():
            # Move the old dataset aside first so that the rename below cannot half-replace it.
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def make_video(out_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0, frames: int = 120, fps: float = 30.0,
               overwrite: bool = False, progress: bool = False, **overrides) -> Path:
    """Render the scene of `preset`/`seed` along `video_path` into out_dir/video.mp4, with its true
    poses beside it in out_dir/transforms.json (one frame per video frame; file_path
    images/frame_<index>.jpg, the names `fmsplat process-data` gives the frames it keeps, so
    sfm.pose_errors can compare them by name). Default size 320x240 (SIFT finds too little in
    the tiny preset's 128x96); `overrides` replace SceneConfig fields. Written atomically."""
    from fmsplat.pictures import write_video

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass --overwrite, or overwrite=True in Python, to replace it)")
    if frames < 2 or not fps > 0:
        raise ValueError(f"make_video: needs frames >= 2 and fps > 0, got {frames} and {fps}")
    overrides = {"width": 320, "height": 240, "distinct_faces": True, **overrides}
    if overrides["width"] % 2 or overrides["height"] % 2:
        raise ValueError(f"make_video: width and height must be even (H.264), got {overrides['width']}x{overrides['height']}")
    config = preset_config(preset, **overrides)
    scene = build_scene(config, seed)
    cameras = video_path(scene, frames)

    def write(root: Path) -> None:
        from tqdm import tqdm

        def rendered():
            for cam in tqdm(cameras, desc="render", disable=not progress, dynamic_ncols=True):
                yield np.round(render_view(scene, cam, config.supersample)[0] * 255).astype(np.uint8)

        write_video(root / "video.mp4", rendered(), fps)
        K = intrinsics(config)
        write_json(root / "transforms.json", {
            "camera_model": "OPENCV",
            "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
            "w": config.width, "h": config.height,
            "fmsplat_synthetic": {"generator": "fmsplat.scene.synthetic.make_video", "generator_version": GENERATOR_VERSION,
                                  "preset": preset, "seed": seed, "video": "video.mp4", "fps": fps,
                                  "room_aabb": {"min": scene.room.lo.tolist(), "max": scene.room.hi.tolist()}},
            "frames": [{"file_path": f"images/frame_{k:05d}.jpg", "frame_index": k, "time": k / fps,
                        "transform_matrix": (cam.c2w @ GL_TO_CV).tolist()} for k, cam in enumerate(cameras)],
        })

    return _into_place(out_dir, write)


def _write_dataset(root: Path, scene: Scene, cameras: list[Camera], preset: str, seed: int) -> None:
    cfg = scene.config
    K = intrinsics(cfg)
    min_pixels = max(1, int(round(cfg.min_label_fraction * cfg.width * cfg.height)))
    frames = []
    labelled = []
    for i, cam in enumerate(cameras):
        stem = f"{i:04d}"
        rgb, instance, depth = render_view(scene, cam, cfg.supersample)
        _write_png(root / "images" / f"{stem}.png", np.round(rgb * 255).astype(np.uint8))
        _write_png(root / "instances" / f"{stem}.png", instance.astype(np.uint16))
        _write_png(root / "depth" / f"{stem}.png", np.round(depth * 1000.0).astype(np.uint16))
        if i % cfg.label_every == 0:
            # Label the objects a person would name in this view: large enough, and not mostly
            # hidden behind others or cut off by the frame.
            counts = np.bincount(instance.reshape(-1), minlength=len(scene.boxes) + 1)
            shown = {
                b.instance_id: b.label
                for b in scene.boxes
                if counts[b.instance_id] >= min_pixels
                and counts[b.instance_id] >= cfg.min_visible_share * silhouette_pixels(scene, cam, b)
            }
            labels = labels_from_instances(instance, shown, name=f"{stem}.png", min_pixels=min_pixels)
            write_view_labels(root / "labels" / f"{stem}.json", labels)
            labelled.append(stem)
        c2w_gl = cam.c2w @ GL_TO_CV
        frames.append({
            "file_path": f"images/{stem}.png",
            "depth_file_path": f"depth/{stem}.png",
            "instance_file_path": f"instances/{stem}.png",
            "transform_matrix": c2w_gl.tolist(),
        })

    points, normals, colours = sample_surface_points(scene, cfg.n_points, seed)
    _write_ply(root / "points3d.ply", points, normals, colours)

    scene_meta = {
        "generator": "fmsplat.scene.synthetic",
        "generator_version": GENERATOR_VERSION,
        "preset": preset,
        "seed": seed,
        "up": UP.tolist(),
        "room_aabb": {"min": scene.room.lo.tolist(), "max": scene.room.hi.tolist()},
        "label_every": cfg.label_every,
        "labelled_views": labelled,
        "depth_unit": "millimetre z-depth (camera frame), uint16 PNG",
        "instances": "uint16 PNG, 0 = room",
    }
    objects = [
        SceneObjectInfo(b.instance_id, b.label, list(b.synonyms), b.lo.copy(), b.hi.copy(),
                        extra={"kind": b.kind, "photo": b.source})
        for b in scene.boxes
    ]
    write_objects(root / "objects.json", objects, scene_meta)
    write_json(root / "transforms.json", {
        "camera_model": "OPENCV",
        "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
        "w": cfg.width, "h": cfg.height,
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "depth_unit_scale_factor": 0.001,
        "ply_file_path": "points3d.ply",
        "fmsplat_synthetic": scene_meta,
        "frames": frames,
    })


def load_instances(path: str | Path) -> np.ndarray:
    """Instance-id image written by `make_scene` (int32, 0 = room)."""
    return np.asarray(Image.open(path), dtype=np.int32)


def load_depth(path: str | Path, scale: float = 0.001) -> np.ndarray:
    """Z-depth image written by `make_scene`, in metres (float32)."""
    return (np.asarray(Image.open(path), dtype=np.float64) * scale).astype(np.float32)
