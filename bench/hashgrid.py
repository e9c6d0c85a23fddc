"""Hash-encoding benchmark: FMGS's 24-level grid (16→128 and 128→512, T = 2^19, F = 8, 192 features).

    python bench/hashgrid.py              # 20k, 200k, 1M points
    python bench/hashgrid.py --quick      # 20k and 200k, fewer repeats

Rows per point count and distribution:
- `any points`: `HashGrid.forward` (corners computed in the kernel, full tables of 8.8M rows);
  its backward returns a dense gradient of the full tables (280 MB), as any caller of a plain
  nn.Parameter gets.
- `frozen points`: what FMGS training uses (the Gaussians do not move): `freeze` once (its time
  is the `freeze` column), then `encode_frozen` on a compact table of the touched rows only.

Distributions: `uniform` in the unit cube (the worst case for memory locality: every fine-level
corner a cache miss) and `surface` (points on the walls of a box and on spheres, scene-box
normalised and contracted as FMGS does with Gaussian means). Times are the best of `--repeats`
runs after a warm-up (numba compilation excluded). The machine's thread count and load average
are printed: on a shared machine the figures move with its load.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numba
import torch

from fmsplat.fields.hashgrid import fmgs_grid, scene_box, to_unit_cube


def surface_points(n: int, generator: torch.Generator) -> torch.Tensor:
    face = torch.randint(0, 6, (n,), generator=generator)
    box = torch.rand(n, 3, generator=generator) * 2 - 1
    box[torch.arange(n), face % 3] = ((face // 3) * 2 - 1).float()
    sph = torch.randn(n, 3, generator=generator)
    sph = sph / sph.norm(dim=1, keepdim=True) * 0.2 + torch.rand(n, 1, generator=generator) * 0.5
    world = torch.where(torch.rand(n, 1, generator=generator) < 0.5, box, sph)
    return to_unit_cube(world, *scene_box(world))


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    counts = [20_000, 200_000] if args.quick else [20_000, 200_000, 1_000_000]
    repeats = args.repeats or (2 if args.quick else 3)

    torch.manual_seed(0)
    grid = fmgs_grid()
    with torch.no_grad():
        grid.table.normal_(0, 1e-2)
    print(f"# {grid}")
    print(f"# {platform.processor() or platform.machine()}, numba threads {numba.get_num_threads()}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'points':>9} {'distribution':>12} | {'any: fwd s':>10} {'fwd+bwd s':>10} | {'frozen: freeze s':>16} "
          f"{'rows':>9} {'fwd s':>7} {'fwd+bwd s':>10}")
    gen = torch.Generator().manual_seed(0)
    for n in counts:
        for dist in ("uniform", "surface"):
            x = torch.rand(n, 3, generator=gen) if dist == "uniform" else surface_points(n, gen)

            def fwd():
                with torch.no_grad():
                    grid(x)

            def fwd_bwd():
                out = grid(x)
                out.backward(torch.ones_like(out))
                grid.table.grad = None

            t_fwd, t_fb = best_of(fwd, repeats), best_of(fwd_bwd, repeats)
            t0 = time.perf_counter()
            lookup = grid.freeze(x)
            t_freeze = time.perf_counter() - t0
            compact = grid.table.detach()[lookup.rows].clone().requires_grad_()

            def cfwd():
                with torch.no_grad():
                    grid.encode_frozen(lookup, compact)

            def cfwd_bwd():
                out = grid.encode_frozen(lookup, compact)
                out.backward(torch.ones_like(out))
                compact.grad = None

            t_cf, t_cfb = best_of(cfwd, repeats), best_of(cfwd_bwd, repeats)
            print(f"{n:>9,} {dist:>12} | {t_fwd:>10.3f} {t_fb:>10.3f} | {t_freeze:>16.2f} {len(lookup.rows):>9,} "
                  f"{t_cf:>7.3f} {t_cfb:>10.3f}", flush=True)
            del lookup, compact


if __name__ == "__main__":
    main()
