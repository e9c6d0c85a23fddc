"""Multi-resolution hash encoding (Instant-NGP, Müller et al. 2022) on the CPU, and the scene contraction.

A `HashGrid` holds one feature table per level. Level l has an integer resolution r_l: the unit
cube is cut into r_l³ cells whose (r_l + 1)³ vertices each own a row of F features. A point's
level-l feature is the trilinear blend of the rows of its cell's 8 corners; the encoding
concatenates all levels, (N, L·F). Vertex (x, y, z) finds its row

- directly, ``x + V·y + V²·z`` with V = r_l + 1, when the level's V³ vertices fit the table size
  T (coarse levels: a dense grid, no collisions, a table of V³ rows only);
- through the spatial hash ``(x·1 ⊕ y·2654435761 ⊕ z·805459861) mod T`` otherwise (T = 2^k, so
  the 32-bit products of Instant-NGP and these 64-bit ones agree modulo T).

Resolutions grow geometrically, ``r_l = floor(r_min · b^l)``, b = (r_max / r_min)^(1/(L-1)).
`fmgs_grid()` is FMGS's pair of grids — 12 levels 16→128 and 12 levels 128→512, T = 2^19, F = 8 —
as one 24-level grid (192 features), each level with its own table, so that one kernel call
evaluates every level.

Speed: PyTorch's gather/embedding_bag/index_add paths materialise (N, L, 8) index and weight tensors
(bench/README.md, "Fields: per-step cost and M3 memory banks"). Two fused numba kernels avoid them:
the forward walks points in parallel, the backward walks levels in parallel (each level owns its
rows: no atomics) and recomputes the corners. Positions are constants: gradients reach the tables only.

Training with frozen geometry reads the same corners at every step. `HashGrid.freeze(x)` resolves
them once into a compact table of just the touched rows (renumbered so that nearby points read
nearby memory) with per-corner indices and weights; `encode_frozen(lookup, compact)` then gathers
from that small table. The optimiser state and step cost scale with the scene, not with the (up
to 2^19 rows × 24 levels) tables, and writing the compact rows back gives exactly the full-table
result (rows no point touches get zero gradient, so Adam-type optimisers never move them).

Contraction (Mip-NeRF 360, Barron et al. 2022): positions are first normalised by a scene box
(centre, half-extent per axis) so that the box becomes [-1, 1]³; then ``contract(x) = x`` inside
the unit ball and ``(2 - 1/‖x‖)·x/‖x‖`` outside, which maps all of space into the radius-2 ball;
``(contract(x) + 2) / 4`` lands in the unit cube the grid covers. The norm is L∞ by default (the
box itself stays uncontracted and the image is the cube [-2, 2]³, which a cubic grid fills) or L2
(the paper's ball).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange

from fmsplat.fields.configs import FMGSConfig, geometric_resolutions

PRIMES = (1, 2654435761, 805459861)  # Instant-NGP's per-axis hash primes


@dataclass(frozen=True)
class LevelLayout:
    """Where each level lives in the flattened table."""

    resolutions: tuple[int, ...]
    dense: tuple[bool, ...]
    sizes: tuple[int, ...]  # rows per level
    offsets: tuple[int, ...]  # first row of each level

    @property
    def rows(self) -> int:
        return int(sum(self.sizes))


def level_layout(resolutions, log2_table: int) -> LevelLayout:
    table = 1 << int(log2_table)
    dense, sizes, offsets, at = [], [], [], 0
    for r in resolutions:
        vertices = (int(r) + 1) ** 3
        d = vertices <= table
        dense.append(d)
        sizes.append(vertices if d else table)
        offsets.append(at)
        at += sizes[-1]
    return LevelLayout(tuple(int(r) for r in resolutions), tuple(dense), tuple(sizes), tuple(offsets))


# ------------------------------------------------------------------------------------------ kernels
@njit(cache=True, inline="always")
def _corner_row(cx, cy, cz, r, dense, offset, mask):
    if dense:
        v = r + 1
        return offset + cx + v * (cy + v * cz)
    h = (cx * 1) ^ (cy * 2654435761) ^ (cz * 805459861)
    return offset + (h & mask)


@njit(cache=True, inline="always")
def _cell(x, r):
    """Cell index (clamped so that x = 1 falls in the last cell) and the fraction inside it."""
    p = x * r
    i = int(math.floor(p))
    if i > r - 1:
        i = r - 1
    if i < 0:
        i = 0
    return i, p - i


@njit(cache=True, inline="always")
def _dealt(j, n_levels):
    """Level of the j-th iteration: even levels first, then odd ones. prange hands out contiguous
    blocks of iterations, and coarse (dense, cache-resident) levels are much cheaper than fine
    (hashed) ones; dealing them alternately gives each half of the range both kinds."""
    half = (n_levels + 1) // 2
    return 2 * j if j < half else 2 * (j - half) + 1


@njit(cache=True, parallel=True)
def _forward_kernel(x, res, dense, offsets, mask, table, out):
    n_points = x.shape[0]
    n_levels = res.shape[0]
    nf = table.shape[1]
    for n in prange(n_points):
        px = np.float64(x[n, 0])
        py = np.float64(x[n, 1])
        pz = np.float64(x[n, 2])
        for lv in range(n_levels):
            r = res[lv]
            ix, fx = _cell(px, r)
            iy, fy = _cell(py, r)
            iz, fz = _cell(pz, r)
            base = lv * nf
            for c in range(8):
                bx = c & 1
                by = (c >> 1) & 1
                bz = (c >> 2) & 1
                w = (fx if bx else 1.0 - fx) * (fy if by else 1.0 - fy) * (fz if bz else 1.0 - fz)
                row = _corner_row(ix + bx, iy + by, iz + bz, r, dense[lv], offsets[lv], mask)
                wf = np.float32(w)
                for k in range(nf):
                    out[n, base + k] += wf * table[row, k]


@njit(cache=True, parallel=True)
def _backward_kernel(x, res, dense, offsets, mask, grad_out, grad_table):
    # parallel over levels: a level's rows belong to it alone, so no two threads touch one row
    n_points = x.shape[0]
    n_levels = res.shape[0]
    nf = grad_table.shape[1]
    for j in prange(n_levels):
        lv = _dealt(j, n_levels)
        r = res[lv]
        base = lv * nf
        for n in range(n_points):
            ix, fx = _cell(np.float64(x[n, 0]), r)
            iy, fy = _cell(np.float64(x[n, 1]), r)
            iz, fz = _cell(np.float64(x[n, 2]), r)
            for c in range(8):
                bx = c & 1
                by = (c >> 1) & 1
                bz = (c >> 2) & 1
                w = (fx if bx else 1.0 - fx) * (fy if by else 1.0 - fy) * (fz if bz else 1.0 - fz)
                row = _corner_row(ix + bx, iy + by, iz + bz, r, dense[lv], offsets[lv], mask)
                wf = np.float32(w)
                for k in range(nf):
                    grad_table[row, k] += wf * grad_out[n, base + k]


@njit(cache=True, parallel=True)
def _lookup_kernel(x, res, dense, offsets, mask, rows, weights):
    """Full-table rows (N, L, 8) and trilinear weights (N, L, 8) of every point's corners."""
    n_points = x.shape[0]
    n_levels = res.shape[0]
    for n in prange(n_points):
        px = np.float64(x[n, 0])
        py = np.float64(x[n, 1])
        pz = np.float64(x[n, 2])
        for lv in range(n_levels):
            r = res[lv]
            ix, fx = _cell(px, r)
            iy, fy = _cell(py, r)
            iz, fz = _cell(pz, r)
            for c in range(8):
                bx = c & 1
                by = (c >> 1) & 1
                bz = (c >> 2) & 1
                weights[n, lv, c] = (fx if bx else 1.0 - fx) * (fy if by else 1.0 - fy) * (fz if bz else 1.0 - fz)
                rows[n, lv, c] = _corner_row(ix + bx, iy + by, iz + bz, r, dense[lv], offsets[lv], mask)


@njit(cache=True)
def _renumber_kernel(rows, order, offsets, sizes, level_rows):
    """Compact rows numbered level by level, within a level in first-touch order of `order`.

    rows (N, L, 8) full-table rows, overwritten with compact rows; returns the full row of each
    compact row. One scratch map of the level's own size (at most T entries) per level."""
    n_points, n_levels, _ = rows.shape
    full = np.empty(n_points * n_levels * 8, dtype=np.int64)
    count = 0
    for lv in range(n_levels):
        seen = np.full(sizes[lv], -1, dtype=np.int64)
        off = offsets[lv]
        for j in range(n_points):
            n = order[j]
            for c in range(8):
                local = rows[n, lv, c] - off
                k = seen[local]
                if k < 0:
                    k = count
                    seen[local] = k
                    full[count] = local + off
                    count += 1
                rows[n, lv, c] = k
        level_rows[lv + 1] = count
    return full[:count]


@njit(cache=True, parallel=True)
def _gather_kernel(idx, weights, table, out):
    n_points, n_levels, _ = idx.shape
    nf = table.shape[1]
    for n in prange(n_points):
        for lv in range(n_levels):
            base = lv * nf
            for c in range(8):
                row = idx[n, lv, c]
                w = weights[n, lv, c]
                for k in range(nf):
                    out[n, base + k] += w * table[row, k]


@njit(cache=True, parallel=True)
def _scatter_kernel(idx, weights, grad_out, grad_table):
    # rows are numbered level by level, so each level (one thread) writes only its own rows
    n_points, n_levels, _ = idx.shape
    nf = grad_table.shape[1]
    for j in prange(n_levels):
        lv = _dealt(j, n_levels)
        base = lv * nf
        for n in range(n_points):
            for c in range(8):
                row = idx[n, lv, c]
                w = weights[n, lv, c]
                for k in range(nf):
                    grad_table[row, k] += w * grad_out[n, base + k]


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, grid):
        xs = x.detach().contiguous().numpy()
        out = np.zeros((xs.shape[0], grid.levels * table.shape[1]), dtype=np.float32)
        _forward_kernel(xs, grid._res, grid._dense, grid._offsets, grid._mask, table.detach().contiguous().numpy(), out)
        ctx.grid, ctx.table_shape = grid, tuple(table.shape)
        ctx.save_for_backward(x)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        grid = ctx.grid
        grad_table = np.zeros(ctx.table_shape, dtype=np.float32)
        g = grad_out.detach().to(torch.float32).contiguous().numpy()
        _backward_kernel(x.numpy(), grid._res, grid._dense, grid._offsets, grid._mask, g, grad_table)
        return None, torch.from_numpy(grad_table), None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, idx, weights):
        out = np.zeros((idx.shape[0], idx.shape[1] * table.shape[1]), dtype=np.float32)
        _gather_kernel(idx.numpy(), weights.numpy(), table.detach().contiguous().numpy(), out)
        ctx.save_for_backward(idx, weights)
        ctx.table_shape = tuple(table.shape)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out):
        idx, weights = ctx.saved_tensors
        grad_table = np.zeros(ctx.table_shape, dtype=np.float32)
        _scatter_kernel(idx.numpy(), weights.numpy(), grad_out.detach().to(torch.float32).contiguous().numpy(), grad_table)
        return torch.from_numpy(grad_table), None, None


def morton_order(x: torch.Tensor, bits: int = 10) -> torch.Tensor:
    """Permutation sorting points of [0, 1]³ along a Z-order curve (neighbours in space end up near
    each other in the order)."""
    q = (x.clamp(0, 1) * ((1 << bits) - 1)).round().to(torch.int64)
    code = torch.zeros(len(x), dtype=torch.int64)
    for b in range(bits):  # loop over bits, not points
        for axis in range(3):
            code |= ((q[:, axis] >> b) & 1) << (3 * b + axis)
    return torch.argsort(code)


@dataclass
class FrozenLookup:
    """The corners of a fixed point set, resolved once: a compact table of the rows they touch.

    `rows` (U,): full-table row of each compact row, numbered level by level and, inside a level,
    in first-touch order along a Z-order curve of the points (so nearby points read nearby memory);
    `level_rows` (L + 1,): compact rows of level l are level_rows[l]:level_rows[l+1];
    `idx` (N, L, 8) int32: compact row of every corner; `weights` (N, L, 8): trilinear weights."""

    rows: torch.Tensor
    level_rows: torch.Tensor
    idx: torch.Tensor
    weights: torch.Tensor

    def __len__(self) -> int:
        return int(self.idx.shape[0])


# ------------------------------------------------------------------------------------------ module
class HashGrid(torch.nn.Module):
    """Multi-resolution hash encoding of points in the unit cube: (N, 3) -> (N, levels · features).

    `resolutions`: one integer resolution per level (see `geometric_resolutions`); `log2_table`:
    log2 of the table size T; `features`: F per level. The flattened table (`self.table`, rows of
    every level one after another) starts at zero unless `init_scale` > 0 (uniform ±init_scale, as
    Instant-NGP); with zeros, rows that no point ever touches stay zero, which `sparse_state` uses.
    Points outside [0, 1]³ are clamped onto the cube. Gradients flow to the table, not to positions.
    """

    def __init__(self, resolutions, log2_table: int = 19, features: int = 8,
                 init_scale: float = 0.0) -> None:
        super().__init__()
        resolutions = [int(r) for r in resolutions]
        if not resolutions or min(resolutions) < 1:
            raise ValueError(f"HashGrid needs at least one level of resolution >= 1, got {resolutions}")
        if not 1 <= int(log2_table) <= 30:
            raise ValueError(f"HashGrid log2_table must lie in [1, 30], got {log2_table}")
        if features < 1:
            raise ValueError(f"HashGrid features per level must be >= 1, got {features}")
        self.layout = level_layout(resolutions, log2_table)
        self.log2_table = int(log2_table)
        self.features = int(features)
        table = torch.zeros(self.layout.rows, self.features)
        if init_scale > 0:
            table.uniform_(-init_scale, init_scale)
        self.table = torch.nn.Parameter(table)
        self._res = np.asarray(self.layout.resolutions, dtype=np.int64)
        self._dense = np.asarray(self.layout.dense, dtype=np.bool_)
        self._offsets = np.asarray(self.layout.offsets, dtype=np.int64)
        self._mask = np.int64((1 << self.log2_table) - 1)

    @property
    def levels(self) -> int:
        return len(self.layout.resolutions)

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def extra_repr(self) -> str:
        dense = sum(self.layout.dense)
        return (f"levels={self.levels} ({dense} dense), resolutions {self.layout.resolutions[0]}..{self.layout.resolutions[-1]}, "
                f"T=2^{self.log2_table}, F={self.features}, rows={self.layout.rows}")

    @staticmethod
    def _points(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != 3:
            raise ValueError(f"HashGrid: positions must be (N, 3), got {tuple(x.shape)}")
        if x.requires_grad:
            raise ValueError("HashGrid: positions are constants (gradients flow to the tables only); pass x.detach()")
        if x.device.type != "cpu":
            raise ValueError(f"HashGrid runs on the CPU; positions are on {x.device}")
        return x.to(torch.float32).clamp(0.0, 1.0).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode (N, 3) points in [0, 1]³ -> (N, levels · features), level-major."""
        return _Encode.apply(self._points(x), self.table, self)

    def freeze(self, x: torch.Tensor) -> FrozenLookup:
        """Resolve the corners of fixed points `x` once (see `FrozenLookup`); then
        `encode_frozen(lookup, compact)` with compact = table[lookup.rows] gives forward(x)."""
        x = self._points(x)
        n, levels = len(x), self.levels
        rows = np.empty((n, levels, 8), dtype=np.int64)
        weights = np.empty((n, levels, 8), dtype=np.float32)
        _lookup_kernel(x.numpy(), self._res, self._dense, self._offsets, self._mask, rows, weights)
        level_rows = np.zeros(levels + 1, dtype=np.int64)
        order = morton_order(x).numpy()
        full = _renumber_kernel(rows, order, self._offsets, np.asarray(self.layout.sizes, dtype=np.int64), level_rows)
        return FrozenLookup(rows=torch.from_numpy(full.copy()), level_rows=torch.from_numpy(level_rows),
                            idx=torch.from_numpy(rows.astype(np.int32)), weights=torch.from_numpy(weights))

    def encode_frozen(self, lookup: FrozenLookup, compact: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        """forward(x) for the points `lookup` was built from (or the subset of them indexed by `points`),
        reading the compact table `compact` ((len(lookup.rows), F), e.g. a trainable copy of table[lookup.rows])."""
        if compact.shape != (len(lookup.rows), self.features) or compact.dtype != torch.float32:
            raise ValueError(f"HashGrid: compact table must be float32 ({len(lookup.rows)}, {self.features}), "
                             f"got {compact.dtype} {tuple(compact.shape)}")
        if points is None:
            return _Gather.apply(compact, lookup.idx, lookup.weights)
        return _Gather.apply(compact, lookup.idx[points].contiguous(), lookup.weights[points].contiguous())

    # -- compact persistence: a zero-initialised table is mostly zeros after training
    def sparse_state(self) -> dict[str, torch.Tensor]:
        """{'rows', 'values'}: the non-zero rows of the table (exact when it started at zero)."""
        t = self.table.detach()
        rows = torch.nonzero(t.abs().amax(dim=1) > 0).flatten()
        return {"rows": rows, "values": t[rows].contiguous()}

    def load_sparse_state(self, rows: torch.Tensor, values: torch.Tensor, where: str = "hash grid") -> None:
        rows = rows.to(torch.int64)
        if rows.ndim != 1 or values.shape != (len(rows), self.features):
            raise ValueError(f"{where}: rows {tuple(rows.shape)} / values {tuple(values.shape)} do not fit a table "
                             f"of {self.features} features")
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= self.layout.rows):
            raise ValueError(f"{where}: row indices outside the table of {self.layout.rows} rows (another grid layout?)")
        with torch.no_grad():
            self.table.zero_()
            self.table[rows] = values.to(torch.float32)


def fmgs_grid(config=None) -> HashGrid:
    """FMGS's grids (fields.configs.FMGSConfig: 12 levels 16→128 and 12 levels 128→512, T = 2^19, F = 8)
    as one 24-level grid."""
    config = config or FMGSConfig()
    return HashGrid(config.resolutions, log2_table=config.log2_table, features=config.grid_features)


# ------------------------------------------------------------------------------------------ contraction
def contract(x: torch.Tensor, order: str = "inf") -> torch.Tensor:
    """Mip-NeRF 360 contraction of (..., 3) points: identity inside the unit ball of the `order`
    norm ("inf" or "l2"), (2 - 1/‖x‖)·x/‖x‖ outside; the image lies in the radius-2 ball."""
    if order == "inf":
        n = x.abs().amax(dim=-1, keepdim=True)
    elif order == "l2":
        n = x.norm(dim=-1, keepdim=True)
    else:
        raise ValueError(f"contraction norm must be 'inf' or 'l2', got {order!r}")
    safe = n.clamp_min(1.0)
    return torch.where(n <= 1.0, x, (2.0 - 1.0 / safe) * x / safe)


def scene_box(points: torch.Tensor, quantile: float = 0.01, margin: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre (3,), half-extent (3,)) of the box spanning the per-axis [quantile, 1 - quantile]
    range of `points`, widened by `margin` × its size (outliers beyond it are contracted, not lost)."""
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"scene_box needs (N >= 1, 3) points, got {tuple(points.shape)}")
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"scene_box quantile must lie in [0, 0.5), got {quantile}")
    p = points.detach().to(torch.float64)
    lo = torch.quantile(p, quantile, dim=0) if quantile > 0 else p.amin(0)
    hi = torch.quantile(p, 1.0 - quantile, dim=0) if quantile > 0 else p.amax(0)
    centre = (lo + hi) / 2
    half = ((hi - lo) / 2 * (1.0 + 2 * margin)).clamp_min(1e-6 * max(float((hi - lo).max()), 1.0))
    return centre.float(), half.float()


def to_unit_cube(points: torch.Tensor, centre: torch.Tensor, half: torch.Tensor, order: str = "inf") -> torch.Tensor:
    """World points -> the hash grid's [0, 1]³: normalise by the scene box, contract, (c + 2) / 4."""
    return ((contract((points - centre) / half, order) + 2.0) / 4.0).clamp(0.0, 1.0)


__all__ = [
    "FrozenLookup", "HashGrid", "LevelLayout", "PRIMES", "contract", "fmgs_grid",
    "geometric_resolutions", "level_layout", "morton_order", "scene_box", "to_unit_cube",
]
