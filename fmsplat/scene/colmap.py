"""COLMAP sparse models: reader and writer for the binary and text formats, and the dataset view.

Formats as documented by COLMAP (src/colmap/scene/reconstruction_io.cc):
  cameras   id, model, width, height, params
  images    id, qvec (w x y z), tvec, camera id, name, 2D points (x, y, point3D id)
  points3D  id, xyz, rgb (uint8), error, track (image id, 2D point index)
Image poses are world-to-camera in the OpenCV convention already; pixel coordinates have their
origin at the top-left image corner, as ours do.
"""

from __future__ import annotations

import math
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from fmsplat.atomic import write_bytes, write_text
from fmsplat.scene import checks
from fmsplat.scene.cameras import Camera
from fmsplat.scene.errors import DatasetError
from fmsplat.scene.raw import RawScene

# model id -> (name, number of parameters), COLMAP's numbering.
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
CAMERA_MODEL_IDS = {name: (model_id, n) for model_id, (name, n) in CAMERA_MODELS.items()}
# Models this package turns into a pinhole K plus OpenCV (k1, k2, p1, p2) distortion.
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")

# points3D.bin record header: id, xyz, rgb, error, track length (packed: 51 bytes).
_POINT_HEADER = np.dtype([("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("error", "<f8"), ("track_length", "<u8")])
_TRACK_ELEMENT = np.dtype([("image_id", "<i4"), ("point2d_idx", "<i4")])
_POINT2D = np.dtype([("xy", "<f8", (2,)), ("point3d_id", "<i8")])
_IMAGE_HEADER = struct.Struct("<i4d3di")  # id, qvec, tvec, camera id: 64 bytes


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # (4,) w x y z, world-to-camera rotation
    tvec: np.ndarray  # (3,) world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3d_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    @property
    def viewmat(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = qvec_to_rotmat(self.qvec)
        m[:3, 3] = self.tvec
        return m


@dataclass
class ColmapPoints:
    """All 3D points as arrays; tracks concatenated in point order (track_lengths splits them)."""

    ids: np.ndarray  # (P,) int64
    xyz: np.ndarray  # (P, 3) float64
    rgb: np.ndarray  # (P, 3) uint8
    errors: np.ndarray  # (P,) float64
    track_lengths: np.ndarray  # (P,) int64
    tracks: np.ndarray  # (T, 2) int32: image id, 2D point index

    @classmethod
    def from_arrays(cls, xyz, rgb, errors=None, ids=None) -> "ColmapPoints":
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        rgb = np.asarray(rgb)
        if np.issubdtype(rgb.dtype, np.floating):
            rgb = np.clip(np.round(rgb * 255.0), 0, 255)  # colours in [0, 1]
        p = len(xyz)
        return cls(
            ids=np.arange(1, p + 1, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64),
            xyz=xyz,
            rgb=rgb.astype(np.uint8).reshape(p, 3),
            errors=np.zeros(p) if errors is None else np.asarray(errors, dtype=np.float64),
            track_lengths=np.zeros(p, np.int64),
            tracks=np.zeros((0, 2), np.int32),
        )


@dataclass
class ColmapModel:
    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: ColmapPoints


# --------------------------------------------------------------------------------- rotations
def qvec_to_rotmat(qvec) -> np.ndarray:
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotmat_to_qvec(R) -> np.ndarray:
    """Unit quaternion (w x y z, w >= 0) of a rotation matrix (eigenvector method, robust)."""
    R = np.asarray(R, dtype=np.float64)
    Rxx, Ryx, Rzx, Rxy, Ryy, Rzy, Rxz, Ryz, Rzz = R.flat
    K = (
        np.array(
            [
                [Rxx - Ryy - Rzz, 0, 0, 0],
                [Ryx + Rxy, Ryy - Rxx - Rzz, 0, 0],
                [Rzx + Rxz, Rzy + Ryz, Rzz - Rxx - Ryy, 0],
                [Ryz - Rzy, Rzx - Rxz, Rxy - Ryx, Rxx + Ryy + Rzz],
            ]
        )
        / 3.0
    )
    eigvals, eigvecs = np.linalg.eigh(K)
    q = eigvecs[[3, 0, 1, 2], np.argmax(eigvals)]
    return -q if q[0] < 0 else q


# --------------------------------------------------------------------------------- binary
class _Cursor:
    """Sequential little-endian reads from a byte buffer; truncation is a DatasetError."""

    def __init__(self, path: Path):
        self.path = path
        self.buf = path.read_bytes()
        self.pos = 0

    def unpack(self, fmt: struct.Struct | str):
        s = fmt if isinstance(fmt, struct.Struct) else struct.Struct("<" + fmt)
        if self.pos + s.size > len(self.buf):
            raise DatasetError(f"{self.path}: file is truncated at byte {self.pos}")
        values = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return values

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        size = dtype.itemsize * count
        if self.pos + size > len(self.buf):
            raise DatasetError(f"{self.path}: file is truncated at byte {self.pos}")
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return out

    def cstring(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise DatasetError(f"{self.path}: unterminated image name at byte {self.pos}")
        try:
            text = self.buf[self.pos : end].decode("utf-8")
        except UnicodeDecodeError:
            raise DatasetError(f"{self.path}: image name at byte {self.pos} is not UTF-8 text") from None
        self.pos = end + 1
        return text

    def expect_end(self) -> None:
        if self.pos != len(self.buf):
            raise DatasetError(f"{self.path}: {len(self.buf) - self.pos} unexpected bytes after the last record")


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    cur = _Cursor(path)
    (count,) = cur.unpack("Q")
    cameras = {}
    for _ in range(count):  # one record per camera (few), params length depends on the model
        cam_id, model_id, width, height = cur.unpack("iiQQ")
        if model_id not in CAMERA_MODELS:
            raise DatasetError(f"{path}: camera {cam_id} has unknown model id {model_id}")
        name, n_params = CAMERA_MODELS[model_id]
        params = np.array(cur.unpack(f"{n_params}d"))
        _add_camera(cameras, ColmapCamera(cam_id, name, int(width), int(height), params), f"{path}: camera {cam_id}")
    cur.expect_end()
    return cameras


def _add_camera(cameras: dict, cam: ColmapCamera, where: str) -> None:
    """Check a camera record (unique id, sane size, finite parameters) and add it."""
    if cam.id in cameras:
        raise DatasetError(f"{where}: camera id {cam.id} appears twice")
    checks.image_size(cam.width, cam.height, where, keys=("width", "height"))
    if not np.isfinite(cam.params).all():
        raise DatasetError(f"{where}: non-finite camera parameters {cam.params.tolist()}")
    cameras[cam.id] = cam


def _add_image(images: dict, names: set, img: ColmapImage, where: str) -> None:
    """Check an image record (unique id and name, finite pose, a quaternion that is not zero) and add it."""
    if img.id in images:
        raise DatasetError(f"{where}: image id {img.id} appears twice")
    if not img.name or img.name in names:
        raise DatasetError(f"{where}: image name {img.name!r} is empty or appears twice")
    norm = float(np.linalg.norm(img.qvec)) if np.isfinite(img.qvec).all() else float("nan")
    if not (math.isfinite(norm) and 1e-6 < norm < 1e6):
        raise DatasetError(f"{where}: quaternion {img.qvec.tolist()} is not a rotation (zero, huge or non-finite)")
    if not np.isfinite(img.tvec).all():
        raise DatasetError(f"{where}: non-finite translation {img.tvec.tolist()}")
    if not np.isfinite(img.xys).all():
        raise DatasetError(f"{where}: non-finite 2D point coordinates")
    images[img.id] = img
    names.add(img.name)


def _check_points(points: "ColmapPoints", path: Path) -> "ColmapPoints":
    if len(points.xyz) and not np.isfinite(points.xyz).all():
        row = int(np.flatnonzero(~np.isfinite(points.xyz).all(axis=1))[0])
        raise DatasetError(f"{path}: point {int(points.ids[row])} has a non-finite position {points.xyz[row].tolist()}")
    if len(np.unique(points.ids)) != len(points.ids):
        raise DatasetError(f"{path}: point ids are not unique")
    return points


def read_images_binary(path: Path) -> dict[int, ColmapImage]:
    cur = _Cursor(path)
    (count,) = cur.unpack("Q")
    images: dict[int, ColmapImage] = {}
    names: set[str] = set()
    for _ in range(count):  # one record per registered image
        values = cur.unpack(_IMAGE_HEADER)
        image_id, qvec, tvec, camera_id = values[0], np.array(values[1:5]), np.array(values[5:8]), values[8]
        name = cur.cstring()
        (n_points,) = cur.unpack("Q")
        pts = cur.array(_POINT2D, n_points)
        _add_image(images, names, ColmapImage(image_id, qvec, tvec, camera_id, name, pts["xy"].copy(), pts["point3d_id"].copy()),
                   f"{path}: image {image_id}")
    cur.expect_end()
    return images


@numba.njit(cache=True)
def _point_record_offsets(buf, count, start):  # pragma: no cover - compiled
    """Byte offset of every points3D.bin record: records have variable length (their track),
    so each offset depends on the previous record; a compiled scan keeps this off Python."""
    offsets = np.empty(count, np.int64)
    pos = start
    for i in range(count):
        if pos + 51 > buf.shape[0]:
            return offsets, np.int64(-1)
        offsets[i] = pos
        n = np.int64(0)
        for b in range(7):  # low 7 bytes; a set 8th byte cannot be a real track length
            n |= np.int64(buf[pos + 43 + b]) << (8 * b)
        if buf[pos + 50] != 0 or n > buf.shape[0]:
            return offsets, np.int64(-1)
        pos += 51 + 8 * n
    return offsets, pos


def _gather(buf: np.ndarray, offsets: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Records of `dtype` starting at `offsets` in a byte array, one vectorised gather per byte."""
    out = np.empty((len(offsets), dtype.itemsize), np.uint8)
    for k in range(dtype.itemsize):  # loop over bytes of a record, not over records
        out[:, k] = buf[offsets + k]
    return out.view(dtype).reshape(len(offsets))


def _scatter(buf: np.ndarray, offsets: np.ndarray, records: np.ndarray) -> None:
    raw = np.ascontiguousarray(records).view(np.uint8).reshape(len(offsets), records.dtype.itemsize)
    for k in range(raw.shape[1]):
        buf[offsets + k] = raw[:, k]


def read_points3d_binary(path: Path) -> ColmapPoints:
    buf = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if len(buf) < 8:
        raise DatasetError(f"{path}: file is truncated (no point count)")
    count = int(buf[:8].view("<u8")[0])
    if count > (len(buf) - 8) // _POINT_HEADER.itemsize:
        raise DatasetError(f"{path}: file is truncated or corrupt ({count} points announced in {len(buf)} bytes)")
    offsets, end = _point_record_offsets(buf, count, 8)
    if end < 0 or end > len(buf):
        raise DatasetError(f"{path}: file is truncated ({count} points announced)")
    if end != len(buf):
        raise DatasetError(f"{path}: {len(buf) - end} unexpected bytes after the last point")
    header = _gather(buf, offsets, _POINT_HEADER)
    lengths = header["track_length"].astype(np.int64)
    if len(lengths) and lengths.sum() > len(buf):
        raise DatasetError(f"{path}: file is truncated or corrupt (track lengths exceed the file)")
    # Track element j of point i sits at offsets[i] + 51 + 8 j.
    track_offsets = _segments(lengths, np.zeros_like(lengths))
    starts = np.repeat(offsets + _POINT_HEADER.itemsize, lengths)
    track = _gather(buf, starts + _TRACK_ELEMENT.itemsize * track_offsets, _TRACK_ELEMENT)
    return _check_points(ColmapPoints(
        ids=header["id"].astype(np.int64),
        xyz=header["xyz"].astype(np.float64),
        rgb=header["rgb"].astype(np.uint8),
        errors=header["error"].astype(np.float64),
        track_lengths=lengths,
        tracks=np.stack([track["image_id"], track["point2d_idx"]], axis=1).astype(np.int32),
    ), path)


def write_cameras_binary(cameras: dict[int, ColmapCamera], path: Path) -> None:
    parts = [struct.pack("<Q", len(cameras))]
    for cam in cameras.values():
        model_id, n_params = _model_id(cam)
        parts.append(struct.pack("<iiQQ", cam.id, model_id, cam.width, cam.height))
        parts.append(np.asarray(cam.params, dtype="<f8").tobytes())
    write_bytes(path, b"".join(parts))


def write_images_binary(images: dict[int, ColmapImage], path: Path) -> None:
    parts = [struct.pack("<Q", len(images))]
    for img in images.values():
        parts.append(_IMAGE_HEADER.pack(img.id, *np.asarray(img.qvec, float), *np.asarray(img.tvec, float), img.camera_id))
        parts.append(img.name.encode("utf-8") + b"\x00")
        pts = np.empty(len(img.xys), _POINT2D)
        pts["xy"] = img.xys
        pts["point3d_id"] = img.point3d_ids
        parts.append(struct.pack("<Q", len(pts)) + pts.tobytes())
    write_bytes(path, b"".join(parts))


def write_points3d_binary(points: ColmapPoints, path: Path) -> None:
    p = len(points.ids)
    lengths = np.asarray(points.track_lengths, dtype=np.int64)
    sizes = _POINT_HEADER.itemsize + _TRACK_ELEMENT.itemsize * lengths
    offsets = 8 + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if p else np.zeros(0, np.int64)
    buf = np.zeros(8 + int(sizes.sum()), np.uint8)
    buf[:8] = np.frombuffer(struct.pack("<Q", p), np.uint8)
    header = np.empty(p, _POINT_HEADER)
    header["id"] = points.ids
    header["xyz"] = points.xyz
    header["rgb"] = points.rgb
    header["error"] = points.errors
    header["track_length"] = lengths
    _scatter(buf, offsets, header)
    if len(points.tracks):
        track = np.empty(len(points.tracks), _TRACK_ELEMENT)
        track["image_id"] = points.tracks[:, 0]
        track["point2d_idx"] = points.tracks[:, 1]
        starts = np.repeat(offsets + _POINT_HEADER.itemsize, lengths)
        _scatter(buf, starts + _TRACK_ELEMENT.itemsize * _segments(lengths, np.zeros_like(lengths)), track)
    write_bytes(path, buf.tobytes())


# --------------------------------------------------------------------------------- text
def _data_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc
    return text.splitlines()


_COUNT_COMMENT = re.compile(r"^#\s*Number of (cameras|images|points)\s*:\s*(\d+)", re.MULTILINE)


def _check_count(path: Path, text: str, found: int) -> None:
    """COLMAP's text files state their record count in a header comment: hold the data to it
    (a missing or extra record otherwise goes unnoticed)."""
    match = _COUNT_COMMENT.search(text[:4096])
    if match is not None and int(match.group(2)) != found:
        raise DatasetError(f"{path}: the header says {match.group(2)} {match.group(1)} but the file holds {found}")


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    for lineno, line in enumerate(_data_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        elems = line.split()
        try:
            cam_id, model, width, height = int(elems[0]), elems[1], int(elems[2]), int(elems[3])
            params = np.array([float(v) for v in elems[4:]])
        except (IndexError, ValueError):
            raise DatasetError(f"{path}:{lineno}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...'") from None
        if model not in CAMERA_MODEL_IDS:
            raise DatasetError(f"{path}:{lineno}: unknown camera model {model!r}")
        if len(params) != CAMERA_MODEL_IDS[model][1]:
            raise DatasetError(f"{path}:{lineno}: {model} takes {CAMERA_MODEL_IDS[model][1]} parameters, got {len(params)}")
        _add_camera(cameras, ColmapCamera(cam_id, model, width, height, params), f"{path}:{lineno}: camera {cam_id}")
    _check_count(path, "\n".join(_data_lines(path)[:20]), len(cameras))
    return cameras


def read_images_text(path: Path) -> dict[int, ColmapImage]:
    lines = _data_lines(path)
    images: dict[int, ColmapImage] = {}
    names: set[str] = set()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        # Two lines per image; the second (its 2D points) may be empty.
        points_line = lines[i] if i < len(lines) else ""
        lineno = i
        i += 1
        elems = line.split(maxsplit=9)
        try:
            image_id = int(elems[0])
            qvec = np.array([float(v) for v in elems[1:5]])
            tvec = np.array([float(v) for v in elems[5:8]])
            camera_id = int(elems[8])
            name = elems[9]
            values = np.array(points_line.split(), dtype=np.float64).reshape(-1, 3)
        except (IndexError, ValueError):
            raise DatasetError(
                f"{path}:{lineno}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME' and a line of 'X Y POINT3D_ID' triples"
            ) from None
        if len(qvec) != 4 or len(tvec) != 3:
            raise DatasetError(f"{path}:{lineno}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'")
        ids = values[:, 2]
        if not (np.isfinite(ids).all() and (ids == np.round(ids)).all() and (np.abs(ids) < 2**62).all()):
            raise DatasetError(f"{path}:{lineno + 1}: POINT3D_IDs must be whole numbers")
        _add_image(images, names, ColmapImage(image_id, qvec, tvec, camera_id, name, values[:, :2].copy(), ids.astype(np.int64)),
                   f"{path}:{lineno}: image {image_id}")
    _check_count(path, "\n".join(lines[:20]), len(images))
    return images


def _segments(lengths: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Flat positions of variable-length runs: run i covers starts[i] .. starts[i] + lengths[i] - 1."""
    lengths = np.asarray(lengths, dtype=np.int64)
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64), lengths) + within


def read_points3d_text(path: Path) -> ColmapPoints:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc
    head = text[:4096]
    # Normalise whitespace with C-speed string methods: single spaces between tokens, none at
    # line ends. Then each data line has (spaces + 1) tokens, countable with array ops.
    text = text.replace("\r", " ").replace("\t", " ")
    while "  " in text:
        text = text.replace("  ", " ")
    text = text.replace(" \n", "\n").replace("\n ", "\n").strip(" ") + "\n"
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    ends = np.flatnonzero(data == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1])[: len(ends)]
    keep_line = (ends > starts) & (data[starts] != ord("#"))  # drop empty and comment lines
    data = data[np.repeat(keep_line, ends - starts + 1)]

    ends = np.flatnonzero(data == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1])[: len(ends)]
    spaces = np.flatnonzero(data == ord(" "))
    counts = (np.searchsorted(spaces, ends) - np.searchsorted(spaces, starts)).astype(np.int64) + 1
    lengths = counts - 8
    if len(counts) and (lengths.min() < 0 or np.any(lengths % 2)):
        bad = int(np.flatnonzero((lengths < 0) | (lengths % 2 == 1))[0])
        line = data[starts[bad] : ends[bad]].tobytes().decode("utf-8")
        raise DatasetError(f"{path}: expected 'POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)...', got {line[:80]!r}")
    try:
        tokens = np.array(data.tobytes().split(), dtype=np.float64) if len(counts) else np.zeros(0)
    except ValueError as exc:
        raise DatasetError(f"{path}: non-numeric value ({exc})") from None
    _check_count(path, head, len(counts))
    line_starts = np.cumsum(counts) - counts
    header = tokens[line_starts[:, None] + np.arange(8)].reshape(-1, 8)
    tracks = tokens[_segments(lengths, line_starts + 8)].reshape(-1, 2)
    whole = lambda a: np.isfinite(a) & (a == np.round(a))  # noqa: E731
    bad = ~(whole(header[:, 0]) & (np.abs(header[:, 0]) < 2**62))
    bad |= ~(whole(header[:, 4:7]) & (header[:, 4:7] >= 0) & (header[:, 4:7] <= 255)).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{path}: point {header[row, 0]!r}: POINT3D_ID must be a whole number and R G B whole "
                           f"numbers in 0..255, got {header[row, [0, 4, 5, 6]].tolist()}")
    if len(tracks) and not (whole(tracks) & (np.abs(tracks) < 2**31)).all():
        raise DatasetError(f"{path}: track entries (IMAGE_ID POINT2D_IDX) must be whole 32-bit numbers")
    return _check_points(ColmapPoints(
        ids=header[:, 0].astype(np.int64),
        xyz=header[:, 1:4],
        rgb=header[:, 4:7].astype(np.uint8),
        errors=header[:, 7],
        track_lengths=lengths // 2,
        tracks=tracks.astype(np.int32),
    ), path)


def write_cameras_text(cameras: dict[int, ColmapCamera], path: Path) -> None:
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    lines.append(f"# Number of cameras: {len(cameras)}")
    for cam in cameras.values():
        _model_id(cam)
        lines.append(" ".join([str(cam.id), cam.model, str(cam.width), str(cam.height), *(repr(float(v)) for v in cam.params)]))
    write_text(path, "\n".join(lines) + "\n")


def write_images_text(images: dict[int, ColmapImage], path: Path) -> None:
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(images)}",
    ]
    for img in images.values():
        pose = " ".join(np.char.mod("%.17g", np.concatenate([img.qvec, img.tvec])).tolist())
        lines.append(f"{img.id} {pose} {img.camera_id} {img.name}")
        xys = np.char.mod("%.17g", np.asarray(img.xys, np.float64).reshape(-1, 2))
        ids = np.asarray(img.point3d_ids, np.int64).astype(str)[:, None]
        lines.append(" ".join(np.concatenate([xys, ids], axis=1).ravel().tolist()))
    write_text(path, "\n".join(lines) + "\n")


def _join_lines(fields: list[np.ndarray], run_lengths: np.ndarray | None = None, run_tokens: np.ndarray | None = None) -> str:
    """Text lines from per-line fixed fields (each (L,) or (L, k) strings, at least one) followed
    by a variable-length run of tokens per line, assembled with array ops (no per-line loop)."""
    fixed = np.concatenate([f.reshape(len(f), int(np.prod(f.shape[1:]))) for f in fields], axis=1)
    n_lines, n_fixed = fixed.shape
    run_lengths = np.zeros(n_lines, np.int64) if run_lengths is None else np.asarray(run_lengths, np.int64)
    run_tokens = np.zeros(0, str) if run_tokens is None else run_tokens
    counts = n_fixed + run_lengths
    line_starts = np.cumsum(counts) - counts
    tokens = np.empty(int(counts.sum()), dtype=object)
    tokens[(line_starts[:, None] + np.arange(n_fixed)).ravel()] = fixed.ravel()
    tokens[_segments(run_lengths, line_starts + n_fixed)] = run_tokens
    separators = np.full(len(tokens), " ", dtype=object)
    separators[line_starts + counts - 1] = "\n"
    return "".join((tokens + separators).tolist())


def write_points3d_text(points: ColmapPoints, path: Path) -> None:
    header = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        f"# Number of points: {len(points.ids)}",
    ]
    # %.17g floats round-trip float64 exactly.
    body = _join_lines(
        [points.ids.astype(str), np.char.mod("%.17g", points.xyz), points.rgb.astype(str), np.char.mod("%.17g", points.errors)],
        run_lengths=2 * np.asarray(points.track_lengths, np.int64),
        run_tokens=np.asarray(points.tracks, np.int64).astype(str).ravel(),
    )
    write_text(path, "\n".join(header) + "\n" + body)


def _model_id(cam: ColmapCamera) -> tuple[int, int]:
    if cam.model not in CAMERA_MODEL_IDS:
        raise ValueError(f"camera {cam.id}: unknown COLMAP model {cam.model!r}")
    model_id, n_params = CAMERA_MODEL_IDS[cam.model]
    if len(cam.params) != n_params:
        raise ValueError(f"camera {cam.id}: {cam.model} takes {n_params} parameters, got {len(cam.params)}")
    return model_id, n_params


# --------------------------------------------------------------------------------- models
def read_model(model_dir: Path) -> tuple[ColmapModel, str]:
    """Read cameras, images and points3D (binary preferred when both exist). Returns (model, ext)."""
    model_dir = Path(model_dir)
    ext = ".bin" if (model_dir / "cameras.bin").is_file() else ".txt"
    for name in ("cameras", "images"):
        if not (model_dir / f"{name}{ext}").is_file():
            raise DatasetError(f"{model_dir}: COLMAP model has no {name}{ext}")
    binary = ext == ".bin"
    try:
        cameras = (read_cameras_binary if binary else read_cameras_text)(model_dir / f"cameras{ext}")
        images = (read_images_binary if binary else read_images_text)(model_dir / f"images{ext}")
        points_path = model_dir / f"points3D{ext}"
        points = (
            (read_points3d_binary if binary else read_points3d_text)(points_path)
            if points_path.is_file()
            else ColmapPoints.from_arrays(np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
        )
    except (struct.error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{model_dir}: malformed COLMAP model ({exc})") from exc
    return ColmapModel(cameras, images, points), ext


def write_model(model: ColmapModel, model_dir: Path, binary: bool = True) -> None:
    """Write cameras, images and points3D (.bin or .txt) into `model_dir`, each file atomically."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    if binary:
        write_cameras_binary(model.cameras, model_dir / "cameras.bin")
        write_images_binary(model.images, model_dir / "images.bin")
        write_points3d_binary(model.points, model_dir / "points3D.bin")
    else:
        write_cameras_text(model.cameras, model_dir / "cameras.txt")
        write_images_text(model.images, model_dir / "images.txt")
        write_points3d_text(model.points, model_dir / "points3D.txt")


def model_from_cameras(cameras: list[Camera], points=None, point_colors=None) -> ColmapModel:
    """A COLMAP model for posed cameras (PINHOLE, or OPENCV when a camera has distortion);
    image names are the cameras' image file names. Handy to export or to build test data."""
    colmap_cameras, images = {}, {}
    for index, cam in enumerate(cameras, 1):
        fx, fy, cx, cy = cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]
        if cam.distortion is None:
            model, params = "PINHOLE", [fx, fy, cx, cy]
        else:
            d = np.asarray(cam.distortion, dtype=np.float64)
            if d.size == 5 and d[4] != 0:
                raise ValueError(f"camera {cam.name or index}: k3 distortion has no OPENCV equivalent")
            model, params = "OPENCV", [fx, fy, cx, cy, *d[:4]]
        colmap_cameras[index] = ColmapCamera(index, model, cam.width, cam.height, np.array(params, dtype=np.float64))
        name = cam.image_path.name if cam.image_path is not None else (cam.name or f"{index:05d}.png")
        images[index] = ColmapImage(index, rotmat_to_qvec(cam.viewmat[:3, :3]), cam.viewmat[:3, 3].copy(), index, name)
    if points is None:
        pts = ColmapPoints.from_arrays(np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    else:
        colors = np.full((len(points), 3), 128, np.uint8) if point_colors is None else point_colors
        pts = ColmapPoints.from_arrays(points, colors)
    return ColmapModel(colmap_cameras, images, pts)


# --------------------------------------------------------------------------------- dataset
def find_colmap_model(path: Path) -> Path | None:
    """The COLMAP model directory inside a dataset directory (sparse/0, sparse, or itself)."""
    for candidate in (path / "sparse" / "0", path / "sparse", path):
        if (candidate / "cameras.bin").is_file() or (candidate / "cameras.txt").is_file():
            return candidate
    return None


def colmap_camera_intrinsics(cam: ColmapCamera, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(K, OpenCV distortion or None) for the supported COLMAP models."""
    p = cam.params
    if cam.model == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], None
    elif cam.model == "PINHOLE":
        fx, fy, cx, cy, dist = p[0], p[1], p[2], p[3], None
    elif cam.model == "SIMPLE_RADIAL":
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], np.array([p[3], 0.0, 0.0, 0.0])
    elif cam.model == "RADIAL":
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], np.array([p[3], p[4], 0.0, 0.0])
    elif cam.model == "OPENCV":
        fx, fy, cx, cy, dist = p[0], p[1], p[2], p[3], np.array(p[4:8])
    else:
        raise DatasetError(
            f"{where}: camera {cam.id} uses COLMAP model {cam.model}, which is not supported "
            f"(supported: {', '.join(SUPPORTED_MODELS)}); run `colmap image_undistorter` first"
        )
    checks.intrinsics(float(fx), float(fy), float(cx), float(cy), cam.width, cam.height, f"{where}: camera {cam.id}")
    if dist is not None:
        checks.distortion(dist, f"{where}: camera {cam.id}")
    if dist is not None and not np.any(dist):
        dist = None
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), dist


def read_colmap_scene(root: Path, model_dir: Path) -> RawScene:
    """Cameras sorted by image name (as 3DGS does), images from images/, points3D as the points."""
    model, ext = read_model(model_dir)
    images_dir = None
    search = [root / "images"]
    if model_dir == root:  # the user pointed at the model folder itself, e.g. sparse/0
        search += [root.parent / "images", root.parent.parent / "images"]
    for candidate in search:
        if candidate.is_dir():
            images_dir = candidate
            break
    if images_dir is None:
        raise DatasetError(f"{root}: COLMAP model found in {model_dir} but no images folder (looked in {[str(s) for s in search]})")

    cameras_file = model_dir / f"cameras{ext}"
    if not model.images:
        raise DatasetError(f"{model_dir / f'images{ext}'}: the COLMAP model holds no images")
    cameras: list[Camera] = []
    missing: list[str] = []
    for img in sorted(model.images.values(), key=lambda im: im.name):
        if img.camera_id not in model.cameras:
            raise DatasetError(f"{model_dir / f'images{ext}'}: image {img.name!r} refers to camera {img.camera_id}, not in {cameras_file}")
        image_path = images_dir / img.name.replace("\\", "/")
        if not image_path.is_file():
            missing.append(img.name)
            continue
        K, dist = colmap_camera_intrinsics(model.cameras[img.camera_id], str(cameras_file))
        cam = model.cameras[img.camera_id]
        cameras.append(Camera(K=K, viewmat=img.viewmat, width=cam.width, height=cam.height, image_path=image_path, name=img.name, distortion=dist))
    if missing:
        if not cameras:
            raise DatasetError(f"{images_dir}: none of the {len(model.images)} COLMAP images exists (first: {missing[0]!r})")
        warnings.warn(
            f"{images_dir}: skipped {len(missing)} of {len(model.images)} COLMAP images whose file is missing (first: {missing[0]!r})",
            stacklevel=4,  # point at the caller of load_dataset
        )
    points = model.points.xyz if len(model.points.ids) else None
    colors = model.points.rgb.astype(np.float64) / 255.0 if len(model.points.ids) else None
    return RawScene(
        cameras=cameras,
        format="colmap-binary" if ext == ".bin" else "colmap-text",
        pose_file=model_dir / f"images{ext}",
        skipped=len(missing),
        points=points,
        point_colors=colors,
        intrinsics_file=cameras_file,
        extra_files=[cameras_file] + ([model_dir / f"points3D{ext}"] if (model_dir / f"points3D{ext}").is_file() else []),
    )
