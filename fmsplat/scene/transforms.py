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

from fmsplat.scene import checks
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
    except RecursionError:
        raise DatasetError(f"{json_path}: JSON nested too deeply") from None
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
    if camera_model is not None and (not isinstance(camera_model, str) or camera_model not in _SUPPORTED_MODELS):
        raise DatasetError(
            f"{json_path}: camera_model {camera_model!r} is not supported (supported: {sorted(_SUPPORTED_MODELS)})"
        )

    # Resolve image files first: missing ones are skipped as a group, with one warning.
    resolved: list[tuple[int, dict, Path]] = []
    missing: list[str] = []
    seen: dict[str, int] = {}
    for index, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise DatasetError(f"{json_path}: frame {index} is not a JSON object")
        file_path = frame.get("file_path")
        if not isinstance(file_path, str) or not file_path:
            raise DatasetError(f"{json_path}: frame {index}: 'file_path' must be a non-empty string, got {file_path!r}")
        key = file_path.replace("\\", "/")
        if key in seen:
            raise DatasetError(f"{json_path}: frames {seen[key]} and {index} name the same image {file_path!r}")
        seen[key] = index
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
            if key in frame or key in meta:
                value = frame[key] if key in frame else meta[key]
                if value is None:  # present but null: a mistake, not "use the default"
                    raise DatasetError(f"{where}: {key!r} must be a number, got null")
            else:
                value = None
            if value is None:
                if required:
                    raise DatasetError(f"{where}: missing key {key!r}")
                return None
            return checks.finite(checks.json_number(value, where, key), where, key)

        width, height = get("w"), get("h")
        if width is None or height is None:
            if default_size is None:
                # No size in the JSON (Blender variant): every frame shares the first image's size.
                default_size = image_size(resolved[0][2])
            width = default_size[0] if width is None else width
            height = default_size[1] if height is None else height
        width, height = checks.image_size(width, height, where)

        def angle(key: str) -> float | None:
            value = get(key)
            if value is not None and not 0.0 < value < math.pi:
                raise DatasetError(f"{where}: {key!r} must be a field of view in (0, pi) radians, got {value!r}")
            return value

        angle_x, angle_y = angle("camera_angle_x"), angle("camera_angle_y")  # checked even when unused
        fl_x = get("fl_x")
        if fl_x is None:
            if angle_x is None:
                raise DatasetError(f"{where}: missing key 'fl_x' (or 'camera_angle_x')")
            fl_x = 0.5 * width / math.tan(0.5 * angle_x)
        fl_y = get("fl_y")
        if fl_y is None:
            fl_y = fl_x if angle_y is None else 0.5 * height / math.tan(0.5 * angle_y)
        cx = get("cx")
        cy = get("cy")
        cx = 0.5 * width if cx is None else cx
        cy = 0.5 * height if cy is None else cy
        checks.intrinsics(fl_x, fl_y, cx, cy, width, height, where)
        K = np.array([[fl_x, 0.0, cx], [0.0, fl_y, cy], [0.0, 0.0, 1.0]])

        coeffs = np.array([get(key) or 0.0 for key in _DISTORTION_KEYS])
        checks.distortion(coeffs, where, _DISTORTION_KEYS)
        distortion = None
        if np.any(coeffs != 0.0):
            distortion = coeffs if coeffs[4] != 0.0 else coeffs[:4]

        matrix = frame.get("transform_matrix")
        if matrix is None:
            raise DatasetError(f"{where}: missing key 'transform_matrix'")
        if not (isinstance(matrix, list) and all(isinstance(row, list) for row in matrix)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for row in matrix for v in row)):
            raise DatasetError(f"{where}: 'transform_matrix' must be a list of rows of numbers, got {str(matrix)[:80]}")
        try:
            c2w = np.asarray(matrix, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise DatasetError(f"{where}: 'transform_matrix' is not a numeric matrix") from None
        if c2w.shape == (3, 4):
            c2w = np.vstack([c2w, [0.0, 0.0, 0.0, 1.0]])
        if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
            raise DatasetError(f"{where}: 'transform_matrix' must be a finite 4x4 (or 3x4) matrix, got shape {c2w.shape}")
        if np.abs(c2w[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6:
            raise DatasetError(f"{where}: 'transform_matrix' must end with the row [0, 0, 0, 1], got {c2w[3].tolist()}")
        checks.rotation(c2w[:3, :3], where, "the rotation block of 'transform_matrix'")

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
        if not isinstance(ply_rel, str) or not ply_rel:
            raise DatasetError(f"{json_path}: 'ply_file_path' must be a file name, got {ply_rel!r}")
        ply_path = root / ply_rel.replace("\\", "/")
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
        aabb = checks.json_number(meta["aabb_scale"], str(json_path), "aabb_scale")
        scale = checks.json_number(meta.get("scale", 0.33), str(json_path), "scale")
        offset_value = meta.get("offset", [0.5, 0.5, 0.5])
        if not isinstance(offset_value, list):
            raise TypeError
        offset = np.array([checks.json_number(v, str(json_path), "offset") for v in offset_value]).reshape(3)
    except (TypeError, ValueError):
        raise DatasetError(f"{json_path}: 'aabb_scale', 'scale' and 'offset' must be numbers "
                           f"(offset three of them)") from None
    if not (math.isfinite(aabb) and 0 < aabb <= 1e4 and math.isfinite(scale) and scale > 0 and np.isfinite(offset).all()):
        raise DatasetError(f"{json_path}: 'aabb_scale' (at most 10000; instant-ngp uses 1..128) and 'scale' must be positive and finite, "
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
    checks.check_ply_body(path)
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
    if not np.isfinite(points).all():
        row = int(np.flatnonzero(~np.isfinite(points).all(axis=1))[0])
        raise DatasetError(f"{path}: point {row} has a non-finite position {points[row].tolist()}")
    colors = None
    if {"red", "green", "blue"} <= names:
        raw = np.stack([np.asarray(vertex[k], dtype=np.float64) for k in ("red", "green", "blue")], axis=1)
        # 8-bit colours are the norm; float colours are taken as already in [0, 1].
        integer = all(np.issubdtype(vertex[k].dtype, np.integer) for k in ("red", "green", "blue"))
        top = 255.0 if integer else 1.0
        bad = ~((raw >= 0) & (raw <= top)).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"{path}: point {row} has colour {raw[row].tolist()}, outside 0..{top:g}")
        colors = raw / 255.0 if integer else raw
    return points, colors
