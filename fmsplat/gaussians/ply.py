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
from fmsplat.gaussians.sh import MAX_SH_DEGREE, num_sh_coeffs

EXTRA_COMMENT = "fmsplat-extra"
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


class PlyFormatError(ValueError):
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
    """Write Gaussians (raw parameters) as a 3DGS PLY, atomically."""
    n = means.shape[0]
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

    def columns(names: list[str]) -> np.ndarray:
        missing = [name for name in names if name not in present]
        if missing:
            raise PlyFormatError(f"{path}: missing vertex propert{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)}")
        if not names:
            return np.zeros((n, 0), np.float32)
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
    for comment in ply.comments:
        parts = comment.split()
        if not parts or parts[0] != EXTRA_COMMENT:
            continue
        if len(parts) != 4 or parts[2] not in _TORCH_DTYPES:
            raise PlyFormatError(f"{path}: malformed extra-tensor comment {comment!r}")
        name, dtype_name, shape_text = parts[1:]
        try:
            shape = () if shape_text == "scalar" else tuple(int(d) for d in shape_text.split("x"))
        except ValueError:
            raise PlyFormatError(f"{path}: malformed shape in extra-tensor comment {comment!r}") from None
        width = int(np.prod(shape, dtype=np.int64))
        flat = columns([f"extra_{name}_{i}" for i in range(width)])
        extras[name] = torch.from_numpy(flat.reshape((n, *shape))).to(_TORCH_DTYPES[dtype_name])

    return {
        "means": torch.from_numpy(columns(["x", "y", "z"])),
        "quats": torch.from_numpy(columns([f"rot_{i}" for i in range(4)])),
        "scales": torch.from_numpy(columns([f"scale_{i}" for i in range(3)])),
        "opacities": torch.from_numpy(columns(["opacity"])[:, 0].copy()),
        "sh": torch.from_numpy(np.ascontiguousarray(sh)),
        "extras": extras,
        "sh_degree": degree,
    }
