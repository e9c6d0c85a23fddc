"""Gaussian PLY files in the layout of the original 3DGS code (Kerbl et al. 2023).

One `vertex` element, float32, binary little endian, properties in this order:

    x y z  nx ny nz  f_dc_0..2  f_rest_0..M-1  opacity  scale_0..2  rot_0..3  [extra_<name>_<i> ...]

Values are stored raw (log-scales, logit-opacities, unnormalised wxyz quaternions), exactly as
3DGS writes them, so files open in standard viewers. f_rest is channel-major (all higher-order
coefficients of R, then G, then B), which is what 3DGS's `features_rest.transpose(1, 2)` yields.
Named extra tensors are flattened per Gaussian; their name, dtype and per-Gaussian shape sit
in a header comment (`fmsplat-extra <name> <dtype> <d0>x<d1>...`) so they round-trip. Their
values travel as float32 (exact for float32/float16/bfloat16 and integers up to 2^24; float64
is rounded); safetensors checkpoints are the lossless route.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from numpy.lib.recfunctions import structured_to_unstructured
from plyfile import PlyData, PlyElement

from fmsplat.atomic import atomic_path
from fmsplat.errors import FmsplatError
from fmsplat.gaussians.sh import MAX_SH_DEGREE, num_sh_coeffs

EXTRA_COMMENT = "fmsplat-extra"
# Beyond these a Gaussian is a mistake, not a scene: exp(30) is 1e13 scene units (the float32 covariance of
# a log-scale near 44 is already infinite), and a centre past 1e12 squares beyond float32's range.
MAX_LOG_SCALE = 30.0
MAX_COORDINATE = 1e12
_EXTRA_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int32": torch.int32,
    "int64": torch.int64,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


class PlyFormatError(FmsplatError, ValueError):
    """A PLY file that is not a readable Gaussian splat file."""


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _TORCH_DTYPES:
        raise ValueError(f"extra tensors of dtype {dtype} cannot be stored in a PLY")
    return name


def write_gaussian_ply(
    path: str | Path,
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    sh: torch.Tensor,
    extras: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write Gaussians (raw parameters) as a 3DGS PLY, atomically. At least one Gaussian: the reader refuses
    an empty file (no scene has no Gaussians)."""
    n = means.shape[0]
    if n == 0:
        raise ValueError(f"{path}: no Gaussians to write")
    k = sh.shape[1]
    extras = extras or {}

    def as_np(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy().reshape(n, -1)

    sh_np = sh.detach().to("cpu", torch.float32).numpy()
    columns: list[tuple[list[str], np.ndarray]] = [
        (["x", "y", "z"], as_np(means)),
        (["nx", "ny", "nz"], np.zeros((n, 3), np.float32)),
        ([f"f_dc_{i}" for i in range(3)], sh_np[:, 0, :]),
        # (N, K-1, 3) -> (N, 3, K-1): channel-major, as 3DGS flattens features_rest.
        ([f"f_rest_{i}" for i in range(3 * (k - 1))], sh_np[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)),
        (["opacity"], as_np(opacities)),
        ([f"scale_{i}" for i in range(3)], as_np(scales)),
        ([f"rot_{i}" for i in range(4)], as_np(quats)),
    ]
    comments = []
    for name, tensor in extras.items():
        if not _EXTRA_NAME.match(name):
            raise ValueError(f"extra tensor name {name!r} must match [A-Za-z0-9_]+ to be a PLY property")
        if tensor.shape[0] != n:
            raise ValueError(f"extra tensor {name!r} has {tensor.shape[0]} rows for {n} Gaussians")
        shape = tuple(tensor.shape[1:])
        if not tensor.dtype.is_floating_point and tensor.dtype != torch.bool and tensor.numel() and tensor.abs().max() > 2**24:
            # Integers travel as float32 properties: beyond 2^24 they would silently change.
            raise ValueError(f"extra tensor {name!r} holds integers beyond 2^24, which float32 PLY properties cannot store exactly")
        flat = as_np(tensor)
        comments.append(f"{EXTRA_COMMENT} {name} {_dtype_name(tensor.dtype)} {'x'.join(map(str, shape)) or 'scalar'}")
        columns.append(([f"extra_{name}_{i}" for i in range(flat.shape[1])], flat))

    names = [name for group, _ in columns for name in group]
    table = np.ascontiguousarray(np.concatenate([values for _, values in columns], axis=1), dtype="<f4")
    # A contiguous (N, P) float32 table viewed as N records of P float32 fields: no per-row copy.
    records = table.view(np.dtype([(name, "<f4") for name in names])).reshape(n)
    element = PlyElement.describe(records, "vertex")
    with atomic_path(path) as tmp:
        PlyData([element], text=False, byte_order="<", comments=comments).write(str(tmp))


def read_gaussian_ply(path: str | Path) -> dict:
    """Read a 3DGS PLY. Returns dict(means, quats, scales, opacities, sh, extras, sh_degree).

    nx/ny/nz and unknown properties are optional and ignored; a missing required property is a
    PlyFormatError naming the file and the property.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such Gaussian PLY file", str(path))
    from fmsplat.scene.checks import check_ply_body

    check_ply_body(path, PlyFormatError)  # header counts match the body, before anything is allocated
    try:
        ply = PlyData.read(str(path))
    except FileNotFoundError:
        raise
    except Exception as exc:  # plyfile raises several types for corrupt headers/bodies
        raise PlyFormatError(f"{path}: not a readable PLY file ({exc})") from exc
    if "vertex" not in ply:
        raise PlyFormatError(f"{path}: no 'vertex' element (elements: {[e.name for e in ply.elements]})")
    vertex = ply["vertex"].data
    present = set(vertex.dtype.names or ())
    n = len(vertex)
    if n == 0:
        raise PlyFormatError(f"{path}: holds no Gaussians (0 vertices)")

    def columns(names: list[str]) -> np.ndarray:
        missing = [name for name in names if name not in present]
        if missing:
            raise PlyFormatError(f"{path}: missing vertex propert{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)}")
        if not names:
            return np.zeros((n, 0), np.float32)
        ints = [name for name in names if vertex.dtype[name].kind != "f" and not name.startswith("extra_")]
        if ints:  # a Gaussian's own properties are real numbers; an integer type is another kind of PLY
            raise PlyFormatError(f"{path}: vertex property {ints[0]} is stored as {vertex.dtype[ints[0]]}, "
                                 "expected float or double")
        # One multi-field view, converted in a single pass (much faster than stacking columns).
        return structured_to_unstructured(vertex[names], dtype=np.float32)

    rest_names = [name for name in present if name.startswith("f_rest_")]
    n_rest = len(rest_names)
    k = n_rest // 3 + 1
    degree = round(math.sqrt(k)) - 1
    if n_rest % 3 or num_sh_coeffs(degree) != k or degree > MAX_SH_DEGREE:
        raise PlyFormatError(
            f"{path}: {n_rest} f_rest_* properties do not match an SH degree 0..{MAX_SH_DEGREE} "
            f"(expected 0, 9, 24 or 45)"
        )
    sh_dc = columns([f"f_dc_{i}" for i in range(3)])
    sh_rest = columns([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k - 1).transpose(0, 2, 1)
    sh = np.concatenate([sh_dc[:, None, :], sh_rest], axis=1)

    extras: dict[str, torch.Tensor] = {}
    claimed: set[str] = set()
    for comment in ply.comments:
        parts = comment.split()
        if not parts or parts[0] != EXTRA_COMMENT:
            continue
        if len(parts) != 4 or parts[2] not in _TORCH_DTYPES or not _EXTRA_NAME.match(parts[1]):
            raise PlyFormatError(f"{path}: malformed extra-tensor comment {comment!r}")
        name, dtype_name, shape_text = parts[1:]
        if name in extras:
            raise PlyFormatError(f"{path}: extra tensor {name!r} is declared twice")
        try:
            shape = () if shape_text == "scalar" else tuple(int(d) for d in shape_text.split("x"))
        except ValueError:
            raise PlyFormatError(f"{path}: malformed shape in extra-tensor comment {comment!r}") from None
        if any(d < 0 for d in shape) or not shape_text.replace("x", "").isdigit() and shape_text != "scalar":
            raise PlyFormatError(f"{path}: extra tensor {name!r} declares shape {shape_text!r} (dimensions must be >= 0)")
        width = math.prod(shape)
        if width > len(present):  # checked before any allocation: the file cannot hold it
            raise PlyFormatError(f"{path}: extra tensor {name!r} declares shape {shape_text} ({width} values per "
                                 f"Gaussian) but the file has only {len(present)} properties")
        names = [f"extra_{name}_{i}" for i in range(width)]
        flat = columns(names)
        claimed.update(names)
        values = flat.reshape((n, *shape))
        target = _TORCH_DTYPES[dtype_name]
        if not target.is_floating_point:
            lo, hi = (0, 1) if target == torch.bool else (torch.iinfo(target).min, torch.iinfo(target).max)
            if values.size and not (np.isfinite(values).all() and (values == np.round(values)).all()
                                    and values.min() >= lo and values.max() <= hi):
                raise PlyFormatError(f"{path}: extra tensor {name!r} ({dtype_name}) holds values that are not "
                                     f"whole numbers in {lo}..{hi}")
        if not np.isfinite(values).all():
            raise PlyFormatError(f"{path}: extra tensor {name!r} holds non-finite values")
        extras[name] = torch.from_numpy(values).to(target)
    unclaimed = sorted(p for p in present if p.startswith("extra_") and p not in claimed)
    if unclaimed:
        raise PlyFormatError(f"{path}: vertex properties {', '.join(unclaimed[:3])}{', ...' if len(unclaimed) > 3 else ''} "
                             f"belong to no declared extra tensor (no or a smaller '{EXTRA_COMMENT}' comment)")

    arrays = {
        "means": columns(["x", "y", "z"]),
        "quats": columns([f"rot_{i}" for i in range(4)]),
        "scales": columns([f"scale_{i}" for i in range(3)]),
        "opacities": columns(["opacity"])[:, 0].copy(),
        "sh": np.ascontiguousarray(sh),
    }
    for key, values in arrays.items():
        bad = ~np.isfinite(values.reshape(n, -1)).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise PlyFormatError(f"{path}: Gaussian {row} has non-finite {key} {values[row].reshape(-1)[:6].tolist()}")
    for key, limit, what in (("means", MAX_COORDINATE, "a coordinate"), ("scales", MAX_LOG_SCALE, "a log-scale")):
        big = (np.abs(arrays[key]) > limit).any(axis=1) if key == "means" else (arrays[key] > limit).any(axis=1)
        if big.any():
            row = int(np.flatnonzero(big)[0])
            raise PlyFormatError(f"{path}: Gaussian {row} has {what} beyond {limit:g} ({key} "
                                 f"{arrays[key][row].tolist()}): not a Gaussian of a scene")
    zero = np.linalg.norm(arrays["quats"], axis=1) < 1e-12
    if zero.any():
        raise PlyFormatError(f"{path}: Gaussian {int(np.flatnonzero(zero)[0])} has a zero rotation quaternion")
    return {
        **{key: torch.from_numpy(values) for key, values in arrays.items()},
        "extras": extras,
        "sh_degree": degree,
    }
