"""Checks shared by the readers: every value that comes from a file is validated here before it
is used, and a bad one is a DatasetError (or the caller's error class) naming the file, the field
and the value."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fmsplat.scene.errors import DatasetError

# Largest image side and pixel count a camera may declare (a 100-megapixel sensor is 11648 x 8736).
MAX_IMAGE_SIDE = 65_536
MAX_IMAGE_PIXELS = 1 << 28
# Largest |R^T R - I| entry accepted for a rotation block (float32-rounded matrices are ~1e-7).
ROTATION_TOLERANCE = 1e-2


def json_number(value, where: str, key: str, error=DatasetError) -> float:
    """A JSON number (int or float, not bool, not a string) as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{where}: {key!r} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        raise error(f"{where}: {key!r} is out of range ({value!r})") from None


def finite(value: float, where: str, key: str, error=DatasetError) -> float:
    if not math.isfinite(value):
        raise error(f"{where}: {key!r} must be finite, got {value!r}")
    return value


def positive(value: float, where: str, key: str, error=DatasetError) -> float:
    if not (math.isfinite(value) and value > 0):
        raise error(f"{where}: {key!r} must be positive and finite, got {value!r}")
    return value


def image_side(value: float, where: str, key: str, error=DatasetError) -> int:
    """An image width or height: a whole number of pixels in 1..MAX_IMAGE_SIDE."""
    if not (math.isfinite(value) and value == int(value) and 1 <= value <= MAX_IMAGE_SIDE):
        raise error(f"{where}: {key!r} must be a whole number of pixels in 1..{MAX_IMAGE_SIDE}, got {value!r}")
    return int(value)


def image_size(width: float, height: float, where: str, keys=("w", "h"), error=DatasetError) -> tuple[int, int]:
    w, h = image_side(width, where, keys[0], error), image_side(height, where, keys[1], error)
    if w * h > MAX_IMAGE_PIXELS:
        raise error(f"{where}: image size {w}x{h} exceeds {MAX_IMAGE_PIXELS} pixels")
    return w, h


def intrinsics(fx: float, fy: float, cx: float, cy: float, width: int, height: int, where: str) -> None:
    """Focal lengths positive and finite; the principal point finite and within a few image sizes
    of the image (a cropped view may put it outside, never kilometres away)."""
    side = max(width, height)
    for key, value in (("fl_x", fx), ("fl_y", fy)):
        # 0.02 x the image side is a field of view of ~176 degrees; 1000 x is a 0.06-degree telescope.
        if not (math.isfinite(value) and 0.02 * side <= value <= 1000 * side):
            raise DatasetError(f"{where}: {key!r} must be a focal length in pixels between {0.02 * side:g} and "
                               f"{1000 * side:g} for a {width}x{height} image, got {value!r}")
    for key, value, size in (("cx", cx, width), ("cy", cy, height)):
        if not (math.isfinite(value) and -2 * size <= value <= 3 * size):
            raise DatasetError(f"{where}: {key!r} must be finite and near the {width}x{height} image, got {value!r}")


def distortion(coeffs, where: str, keys=("k1", "k2", "p1", "p2", "k3")) -> None:
    """OpenCV coefficients of normalised coordinates: radial |k| <= 50, tangential |p| <= 1 (real
    lenses have |k1| < 2 and |p| < 0.01; far larger values come from a broken file)."""
    for key, value in zip(keys, np.asarray(coeffs, dtype=np.float64).reshape(-1).tolist()):
        bound = 1.0 if key.startswith("p") else 50.0
        if not (math.isfinite(value) and abs(value) <= bound):
            raise DatasetError(f"{where}: distortion {key!r} must be finite and at most {bound:g} in size, got {value!r}")


def rotation(R: np.ndarray, where: str, what: str) -> None:
    """A proper rotation: orthonormal (within ROTATION_TOLERANCE) with determinant +1."""
    R = np.asarray(R, dtype=np.float64)
    err = float(np.abs(R.T @ R - np.eye(3)).max())
    if not err <= ROTATION_TOLERANCE:
        raise DatasetError(f"{where}: {what} is not a rotation (|R^T R - I| = {err:.3g}; scaled or sheared?)")
    if np.linalg.det(R) < 0:
        raise DatasetError(f"{where}: {what} is a reflection (determinant -1), not a rotation")


def check_ply_body(path: Path, error=DatasetError) -> None:
    """Compare a PLY's header with its body before anything is allocated: element counts must
    describe exactly the bytes (binary) or lines (ASCII) that follow the header. Elements with
    list properties have no fixed size; their body is left to the PLY parser."""
    sizes = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
             "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise error(f"{path}: not a PLY file (no 'ply' magic or no end_header in the first 64 KiB)")
    newline = head.find(b"\n", end)
    if newline < 0:
        raise error(f"{path}: header does not end with a newline")
    try:
        header = head[:end].decode("ascii")
    except UnicodeDecodeError:
        raise error(f"{path}: PLY header is not ASCII text") from None
    fmt = None
    elements: list[list] = []  # [name, count, row bytes or None]
    for lineno, line in enumerate(header.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0] in ("ply", "comment", "obj_info"):
            continue
        if parts[0] == "format" and len(parts) >= 2:
            fmt = parts[1]
        elif parts[0] == "element":
            if len(parts) != 3 or not parts[2].isdigit():
                raise error(f"{path}: header line {lineno}: expected 'element NAME COUNT', got {line!r}")
            elements.append([parts[1], int(parts[2]), 0])
        elif parts[0] == "property":
            if not elements:
                raise error(f"{path}: header line {lineno}: property before any element")
            if len(parts) >= 2 and parts[1] == "list":
                elements[-1][2] = None
            elif len(parts) == 3 and parts[1] in sizes:
                if elements[-1][2] is not None:
                    elements[-1][2] += sizes[parts[1]]
            else:
                raise error(f"{path}: header line {lineno}: malformed property {line!r}")
        else:
            raise error(f"{path}: header line {lineno}: unknown keyword {parts[0]!r}")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise error(f"{path}: unknown PLY format {fmt!r}")
    if any(size is None for _, _, size in elements):
        return
    body = path.stat().st_size - (newline + 1)
    if fmt == "ascii":
        with open(path, "rb") as f:
            f.seek(newline + 1)
            lines = sum(1 for line in f if line.strip())
        rows = sum(count for _, count, _ in elements)
        if lines != rows:
            raise error(f"{path}: header declares {rows} rows ({', '.join(f'{n} {c}' for n, c, _ in elements)}) "
                        f"but the body has {lines} lines")
        return
    expected = sum(count * size for _, count, size in elements)
    if body != expected:
        counts = ", ".join(f"{name} {count}" for name, count, _ in elements)
        raise error(f"{path}: header declares {counts} ({expected} bytes of data) but the file holds {body} bytes "
                    f"after the header (wrong count, truncated or padded)")
