"""Reader for transforms.json (nerfstudio, instant-ngp and Blender/NeRF-synthetic variants).

Poses are OpenGL camera-to-world matrices; they become OpenCV world-to-camera via
Camera.from_c2w_opengl. Intrinsics may be global or per frame (a frame's keys win), given as
fl_x/fl_y/cx/cy/w/h or only as camera_angle_x (and camera_angle_y). OpenCV distortion
k1 k2 p1 p2 (k3) is attached to the cameras; SceneDataset undistorts the images.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
from plyfile import PlyData

from fmsplat.scene.cameras import Camera
from fmsplat.scene.errors import DatasetError
from fmsplat.scene.images import image_size, resolve_image_path
from fmsplat.scene.raw import RawScene

# Lens models whose parameters are the OpenCV k1 k2 p1 p2 (k3) this reader understands.
_SUPPORTED_MODELS = {"OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"}
_DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3")


def read_transforms(json_path: Path) -> RawScene:
    json_path = Path(json_path)
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{json_path}: malformed JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{json_path}: not UTF-8 text ({exc})") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"{json_path}: expected a JSON object at the top level, got {type(meta).__name__}")
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise DatasetError(f"{json_path}: missing key 'frames' (a list of frames)")
    if not frames:
        raise DatasetError(f"{json_path}: 'frames' is empty")

    root = json_path.parent
    camera_model = meta.get("camera_model")
    if camera_model is not None and camera_model not in _SUPPORTED_MODELS:
        raise DatasetError(
            f"{json_path}: camera_model {camera_model!r} is not supported (supported: {sorted(_SUPPORTED_MODELS)})"
        )

    # Resolve image files first: missing ones are skipped as a group, with one warning.
    resolved: list[tuple[int, dict, Path]] = []
    missing: list[str] = []
    for index, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise DatasetError(f"{json_path}: frame {index} is not a JSON object")
        file_path = frame.get("file_path")
        if not isinstance(file_path, str) or not file_path:
            raise DatasetError(f"{json_path}: frame {index} is missing key 'file_path'")
        # Windows separators: instant-ngp writes 'images\\0001.jpg'.
        image_path = resolve_image_path(root / file_path.replace("\\", "/"))
        if image_path is None:
            missing.append(file_path)
            continue
        resolved.append((index, frame, image_path))
    if missing:
        if not resolved:
            raise DatasetError(
                f"{json_path}: none of the {len(frames)} frames has an image file (first missing: {missing[0]!r})"
            )
        warnings.warn(
            f"{json_path}: skipped {len(missing)} of {len(frames)} frames whose image file is missing "
            f"(first: {missing[0]!r})",
            stacklevel=4,  # point at the caller of load_dataset
        )

    default_size: tuple[int, int] | None = None
    cameras: list[Camera] = []
    for index, frame, image_path in resolved:
        where = f"{json_path}: frame {index}"

        def get(key: str, required: bool = False):
            value = frame.get(key, meta.get(key))
            if value is None:
                if required:
                    raise DatasetError(f"{where}: missing key {key!r}")
                return None
            try:
                return float(value)
            except (TypeError, ValueError):
                raise DatasetError(f"{where}: key {key!r} is not a number ({value!r})") from None

        width, height = get("w"), get("h")
        if width is None or height is None:
            if default_size is None:
                # No size in the JSON (Blender variant): every frame shares the first image's size.
                default_size = image_size(resolved[0][2])
            width = default_size[0] if width is None else width
            height = default_size[1] if height is None else height

        fl_x = get("fl_x")
        if fl_x is None:
            angle_x = get("camera_angle_x")
            if angle_x is None:
                raise DatasetError(f"{where}: missing key 'fl_x' (or 'camera_angle_x')")
            fl_x = 0.5 * width / math.tan(0.5 * angle_x)
        fl_y = get("fl_y")
        if fl_y is None:
            angle_y = get("camera_angle_y")
            fl_y = fl_x if angle_y is None else 0.5 * height / math.tan(0.5 * angle_y)
        cx = get("cx")
        cy = get("cy")
        cx = 0.5 * width if cx is None else cx
        cy = 0.5 * height if cy is None else cy
        K = np.array([[fl_x, 0.0, cx], [0.0, fl_y, cy], [0.0, 0.0, 1.0]])

        coeffs = np.array([get(key) or 0.0 for key in _DISTORTION_KEYS])
        distortion = None
        if np.any(coeffs != 0.0):
            distortion = coeffs if coeffs[4] != 0.0 else coeffs[:4]

        matrix = frame.get("transform_matrix")
        if matrix is None:
            raise DatasetError(f"{where}: missing key 'transform_matrix'")
        try:
            c2w = np.asarray(matrix, dtype=np.float64)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: 'transform_matrix' is not a numeric matrix") from None
        if c2w.shape == (3, 4):
            c2w = np.vstack([c2w, [0.0, 0.0, 0.0, 1.0]])
        if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
            raise DatasetError(f"{where}: 'transform_matrix' must be a finite 4x4 (or 3x4) matrix, got shape {c2w.shape}")
        if abs(np.linalg.det(c2w[:3, :3])) < 1e-8:
            raise DatasetError(f"{where}: 'transform_matrix' has a singular rotation part")

        cameras.append(
            Camera.from_c2w_opengl(
                c2w,
                K,
                int(round(width)),
                int(round(height)),
                image_path=image_path,
                name=image_path.relative_to(root).as_posix() if image_path.is_relative_to(root) else image_path.name,
                distortion=distortion,
            )
        )

    points = colors = None
    extra_files: list[Path] = []
    ply_rel = meta.get("ply_file_path")
    if ply_rel is not None:
        ply_path = root / str(ply_rel).replace("\\", "/")
        points, colors = read_point_ply(ply_path)
        extra_files.append(ply_path)

    return RawScene(
        cameras=cameras,
        format="transforms",
        pose_file=json_path,
        skipped=len(missing),
        points=points,
        point_colors=colors,
        extra_files=extra_files,
        scene_box=ngp_scene_box(meta, json_path),
    )


def ngp_scene_box(meta: dict, json_path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The world-space box instant-ngp's `aabb_scale` declares, or None without the key.

    instant-ngp maps a transforms.json point p to (p_y, p_z, p_x) * scale + offset (defaults
    0.33 and 0.5) and bounds the scene by the cube of side aabb_scale centred at 0.5 in that
    space; undone here, that is a cube of side aabb_scale / scale."""
    if "aabb_scale" not in meta:
        return None
    try:
        aabb = float(meta["aabb_scale"])
        scale = float(meta.get("scale", 0.33))
        offset = np.asarray(meta.get("offset", [0.5, 0.5, 0.5]), dtype=np.float64).reshape(3)
    except (TypeError, ValueError):
        raise DatasetError(f"{json_path}: 'aabb_scale', 'scale' and 'offset' must be numbers "
                           f"(offset three of them)") from None
    if not (math.isfinite(aabb) and aabb > 0 and math.isfinite(scale) and scale > 0 and np.isfinite(offset).all()):
        raise DatasetError(f"{json_path}: 'aabb_scale' and 'scale' must be positive and finite, "
                           f"got aabb_scale {meta['aabb_scale']!r}, scale {meta.get('scale', 0.33)!r}")
    # ngp axes (x, y, z) hold world (y, z, x): the box centre back in world axes.
    centre_ngp = (0.5 - offset) / scale
    centre = np.array([centre_ngp[2], centre_ngp[0], centre_ngp[1]])
    half = 0.5 * aabb / scale
    return centre - half, centre + half


def read_point_ply(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Points (P,3) and colours (P,3) in [0,1] (None when the PLY has none) from a point-cloud PLY."""
    if not path.is_file():
        raise DatasetError(f"{path}: point cloud file (ply_file_path) does not exist")
    try:
        vertex = PlyData.read(str(path))["vertex"].data
    except KeyError:
        raise DatasetError(f"{path}: no 'vertex' element in the point cloud") from None
    except Exception as exc:  # plyfile raises several exception types for corrupt files
        raise DatasetError(f"{path}: not a readable PLY file ({exc})") from exc
    names = set(vertex.dtype.names or ())
    for key in ("x", "y", "z"):
        if key not in names:
            raise DatasetError(f"{path}: point cloud is missing vertex property {key!r}")
    points = np.stack([np.asarray(vertex[k], dtype=np.float64) for k in ("x", "y", "z")], axis=1)
    colors = None
    if {"red", "green", "blue"} <= names:
        raw = np.stack([np.asarray(vertex[k]) for k in ("red", "green", "blue")], axis=1)
        # 8-bit colours are the norm; float colours are taken as already in [0, 1].
        colors = raw.astype(np.float64) / 255.0 if np.issubdtype(raw.dtype, np.integer) else raw.astype(np.float64)
    return points, colors
