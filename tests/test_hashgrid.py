"""Multi-resolution hash encoding against a slow, obvious per-point implementation; contraction."""

from __future__ import annotations

import math

import pytest
import torch

from fmsplat.fields.hashgrid import (
    HashGrid,
    contract,
    fmgs_grid,
    geometric_resolutions,
    morton_order,
    scene_box,
    to_unit_cube,
)

# levels 2, 3, 5 are dense in a 2^8 = 256-row table ((r+1)^3 = 27, 64, 216); 9 and 40 are hashed
RESOLUTIONS = [2, 3, 5, 9, 40]
LOG2_T = 8
FEATS = 3


def slow_rows_and_weights(point, resolutions, log2_table):
    """[(level, row in the flattened table, weight)] for one point, the obvious way (Python ints)."""
    table = 2**log2_table
    out, offset = [], 0
    for level, r in enumerate(resolutions):
        v = r + 1
        dense = v**3 <= table
        cell, frac = [], []
        for coord in point:
            p = min(max(float(coord), 0.0), 1.0) * r
            i = min(int(math.floor(p)), r - 1)
            cell.append(i)
            frac.append(p - i)
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    x, y, z = cell[0] + dx, cell[1] + dy, cell[2] + dz
                    w = ((frac[0] if dx else 1 - frac[0]) * (frac[1] if dy else 1 - frac[1])
                         * (frac[2] if dz else 1 - frac[2]))
                    if dense:
                        row = x + v * y + v * v * z
                    else:  # Instant-NGP: 32-bit products, xor, modulo T
                        row = (((x * 1) & 0xFFFFFFFF) ^ ((y * 2654435761) & 0xFFFFFFFF) ^ ((z * 805459861) & 0xFFFFFFFF)) % table
                    out.append((level, offset + row, w))
        offset += v**3 if dense else table
    return out


def slow_encode(points, table, resolutions, log2_table, feats):
    out = torch.zeros(len(points), len(resolutions) * feats, dtype=torch.float64)
    for n, pt in enumerate(points.tolist()):
        for level, row, w in slow_rows_and_weights(pt, resolutions, log2_table):
            out[n, level * feats:(level + 1) * feats] += w * table[row].double()
    return out


def slow_table_grad(points, grad_out, n_rows, resolutions, log2_table, feats):
    grad = torch.zeros(n_rows, feats, dtype=torch.float64)
    for n, pt in enumerate(points.tolist()):
        for level, row, w in slow_rows_and_weights(pt, resolutions, log2_table):
            grad[row] += w * grad_out[n, level * feats:(level + 1) * feats].double()
    return grad


@pytest.fixture
def grid_and_points():
    torch.manual_seed(0)
    grid = HashGrid(RESOLUTIONS, log2_table=LOG2_T, features=FEATS, init_scale=1.0)
    corners = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [1.0, 0.0, 0.25], [0.2, 0.4, 0.6]])
    outside = torch.tensor([[-0.3, 0.5, 1.7]])  # clamped onto the cube
    points = torch.cat([corners, outside, torch.rand(40, 3)])
    return grid, points


def test_layout_dense_coarse_levels_hashed_fine_ones(grid_and_points):
    grid, _ = grid_and_points
    assert grid.layout.dense == (True, True, True, False, False)
    assert grid.layout.sizes == (27, 64, 216, 256, 256)
    assert grid.layout.offsets == (0, 27, 91, 307, 563)
    assert grid.table.shape == (819, FEATS) and grid.out_dim == 5 * FEATS


def test_values_match_the_slow_implementation(grid_and_points):
    grid, points = grid_and_points
    fast = grid(points)
    slow = slow_encode(points, grid.table.detach(), RESOLUTIONS, LOG2_T, FEATS)
    torch.testing.assert_close(fast.double(), slow, atol=1e-5, rtol=1e-5)
    # a point exactly on a vertex of a dense level reads that vertex's row alone
    level0 = grid(torch.tensor([[0.5, 0.5, 0.5]]))[0, :FEATS]
    torch.testing.assert_close(level0, grid.table.detach()[1 + 3 * 1 + 9 * 1])


def test_table_gradients_match_the_slow_implementation(grid_and_points):
    grid, points = grid_and_points
    g = torch.randn(len(points), grid.out_dim)
    grid(points).backward(g)
    slow = slow_table_grad(points, g, grid.layout.rows, RESOLUTIONS, LOG2_T, FEATS)
    torch.testing.assert_close(grid.table.grad.double(), slow, atol=1e-5, rtol=1e-5)
    # and torch's own autograd check on a few points (the backward is hand-written)
    small = HashGrid([2, 7], log2_table=6, features=2, init_scale=1.0)
    table = small.table.detach().double().requires_grad_()

    def f(t):
        from fmsplat.fields.hashgrid import _Encode

        return _Encode.apply(points[:6], t.float(), small).double()

    assert torch.autograd.gradcheck(f, (table,), eps=1e-3, atol=1e-3)


def test_positions_are_constants(grid_and_points):
    grid, points = grid_and_points
    with pytest.raises(ValueError, match="constants"):
        grid(points.clone().requires_grad_())
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        grid(points[:, :2])


def test_frozen_lookup_reproduces_forward_and_gradients(grid_and_points):
    grid, points = grid_and_points
    lookup = grid.freeze(points)
    rows = lookup.rows
    assert len(torch.unique(rows)) == len(rows)  # each touched row once
    # rows are grouped by level, in level order
    for level in range(grid.levels):
        block = rows[lookup.level_rows[level]:lookup.level_rows[level + 1]]
        lo, size = grid.layout.offsets[level], grid.layout.sizes[level]
        assert ((block >= lo) & (block < lo + size)).all()
    compact = grid.table.detach()[rows].clone().requires_grad_()
    out = grid.encode_frozen(lookup, compact)
    torch.testing.assert_close(out, grid(points))
    g = torch.randn_like(out)
    out.backward(g)
    grid(points).backward(g)
    full = torch.zeros_like(grid.table)
    full[rows] = compact.grad
    torch.testing.assert_close(full, grid.table.grad)
    untouched = torch.ones(grid.layout.rows, dtype=torch.bool)
    untouched[rows] = False
    assert (grid.table.grad[untouched] == 0).all()
    with pytest.raises(ValueError, match="compact table"):
        grid.encode_frozen(lookup, compact.detach()[:-1])


def test_morton_order_keeps_neighbours_together():
    x = torch.rand(4000, 3)
    order = morton_order(x)
    assert sorted(order.tolist()) == list(range(4000))
    step = (x[order][1:] - x[order][:-1]).norm(dim=1).mean()
    assert step < 0.25 * (x[1:] - x[:-1]).norm(dim=1).mean()


def test_sparse_state_round_trip(grid_and_points):
    grid, points = grid_and_points
    zero = HashGrid(RESOLUTIONS, log2_table=LOG2_T, features=FEATS)
    assert (zero.table == 0).all()
    with torch.no_grad():
        zero.table[[3, 100, 700]] = torch.randn(3, FEATS)
    state = zero.sparse_state()
    assert state["rows"].tolist() == [3, 100, 700]
    other = HashGrid(RESOLUTIONS, log2_table=LOG2_T, features=FEATS, init_scale=1.0)
    other.load_sparse_state(state["rows"], state["values"])
    torch.testing.assert_close(other.table, zero.table)
    torch.testing.assert_close(other(points), zero(points))
    with pytest.raises(ValueError, match="outside the table"):
        other.load_sparse_state(torch.tensor([10_000]), torch.zeros(1, FEATS))


def test_fmgs_grids():
    assert geometric_resolutions(12, 16, 128) == [16, 19, 23, 28, 34, 41, 49, 60, 72, 87, 105, 128]
    assert geometric_resolutions(12, 128, 512)[0] == 128 and geometric_resolutions(12, 128, 512)[-1] == 512
    grid = fmgs_grid()
    assert grid.levels == 24 and grid.features == 8 and grid.out_dim == 192
    assert sum(grid.layout.dense) == 9  # (r + 1)^3 <= 2^19 up to r = 72
    assert max(grid.layout.sizes) == 2**19
    with pytest.raises(ValueError):
        geometric_resolutions(3, 10, 5)


@pytest.mark.parametrize("order", ["inf", "l2"])
def test_contraction(order):
    torch.manual_seed(1)
    norm = (lambda v: v.abs().amax(-1)) if order == "inf" else (lambda v: v.norm(dim=-1))
    inside = torch.rand(500, 3) * 2 - 1
    inside = inside[norm(inside) <= 1]
    torch.testing.assert_close(contract(inside, order), inside)  # identity inside the unit ball
    far = torch.randn(500, 3) * 100
    c = contract(far, order)
    assert (norm(c) < 2).all() and (norm(c) > 1.9).all()  # far points crowd the radius-2 shell
    # direction kept, radius monotone, continuous across the unit sphere
    d = torch.nn.functional.normalize(torch.randn(1, 3), dim=-1)
    radii = torch.linspace(0.5, 50, 200)[:, None]
    r = norm(contract(d * radii / norm(d), order))
    assert (r[1:] > r[:-1]).all()
    just_in, just_out = contract(d / norm(d) * 0.9999, order), contract(d / norm(d) * 1.0001, order)
    assert (just_in - just_out).norm() < 1e-3
    torch.testing.assert_close(torch.nn.functional.normalize(c, dim=-1), torch.nn.functional.normalize(far, dim=-1))
    with pytest.raises(ValueError, match="norm"):
        contract(far, "l1")


def test_scene_box_and_unit_cube():
    torch.manual_seed(2)
    pts = torch.rand(2000, 3) * torch.tensor([4.0, 2.0, 1.0]) + torch.tensor([10.0, -5.0, 0.0])
    pts = torch.cat([pts, torch.tensor([[1e4, 0.0, 0.0]])])  # one far outlier
    centre, half = scene_box(pts, quantile=0.01, margin=0.1)
    torch.testing.assert_close(centre, torch.tensor([12.0, -4.0, 0.5]), atol=0.1, rtol=0)
    assert 2.0 < half[0] < 2.5 and 1.0 < half[1] < 1.25  # box spans the bulk, the outlier is ignored
    u = to_unit_cube(pts, centre, half)
    assert (u >= 0).all() and (u <= 1).all()
    bulk = u[:-1]
    assert (bulk >= 0.25 - 1e-6).all() and (bulk <= 0.75 + 1e-6).all()  # the box fills the middle half
    assert u[-1, 0] > 0.99  # the outlier lands near the cube's edge, not outside
