"""Rasterizer benchmark: forward and forward+backward times and peak memory.

    python bench/rasterize.py                 # the full table (N x size x channels)
    python bench/rasterize.py --quick         # one row per size, fewer repeats

Rows: the numba backend, the project's PyTorch reference (the test oracle), and gsplat's own
PyTorch reference when gsplat imports and can run on this device. Times are the best of
`--repeats` runs after a warm-up (JIT compilation excluded); `f+b cpu s` is the process CPU
time of one fwd+bwd call over all threads (on an otherwise idle machine the wall time is at
least this divided by the thread count, and on a shared one it is the figure that moves
least with the load); peak memory is the process's
resident-set growth during one fwd+bwd call (freed memory is handed back to the OS first),
sampled every 2 ms: the inputs themselves are not counted. The scene: Gaussians uniform in a
box 2-6 units in front of the camera, log-uniform world scales, opacities uniform in
[0.05, 0.95] — a dense volume, harder than most trained scenes (no surface occludes early).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import platform
import threading
import time

import numba
import torch

from fmsplat.render import rasterize


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: freed memory may stay mapped, the peak then reads low
    _LIBC = None


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS, so that the next call's growth is its real peak."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class PeakMemory:
    """Peak resident-set growth over a block, sampled every 2 ms from a background thread."""

    def __enter__(self):
        release_freed_memory()
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def make_scene(n: int, channels: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, generator=g) * 4 + 2
    half = 0.5 * z  # fills a ~53° field of view
    xy = (torch.rand(n, 2, generator=g) * 2 - 1) * half[:, None]
    means = torch.cat([xy, z[:, None]], 1)
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.rand(n, 3, generator=g) * math.log(6.0) + math.log(0.005))
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.rand(n, channels, generator=g)
    f = float(size)
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    return [means, quats, scales, opacities, colors], torch.eye(4), K


def time_call(fn, repeats: int):
    """Best wall time of `repeats` calls after a warm-up (JIT compilation), the least process
    CPU time (all threads) of one call, and the largest resident-set growth of one call (freed
    memory is returned to the OS before each)."""
    fn()
    best, best_cpu, peak = math.inf, math.inf, 0.0
    for _ in range(repeats):
        with PeakMemory() as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        peak = max(peak, mem.mib)
    return best, best_cpu, peak


def fmsplat_runner(params, viewmat, K, size, backend, backward):
    def run():
        leaves = [p.clone().requires_grad_(backward) for p in params]
        res = rasterize(*leaves, viewmat, K, size, size, backend=backend)
        if backward:
            (res.image.sum() + res.alpha.sum()).backward()

    return run


def gsplat_reference_runner(params, viewmat, K, size, backward):
    """gsplat's own PyTorch path (projection + tiles + compositing), if it runs here."""
    from gsplat.cuda._torch_impl import (  # noqa: PLC0415
        _fully_fused_projection,
        _isect_offset_encode,
        _isect_tiles,
        _quat_scale_to_covar_preci,
        _rasterize_to_pixels,
    )

    def run():
        leaves = [p.clone().requires_grad_(backward) for p in params]
        means, quats, scales, opac, colors = leaves
        covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False, triu=False)
        radii, means2d, depths, conics, _ = _fully_fused_projection(means, covars, viewmat[None], K[None], size, size)
        tiles = math.ceil(size / 16)
        _, isect_ids, flatten_ids = _isect_tiles(means2d, radii, depths, 16, tiles, tiles)
        offsets = _isect_offset_encode(isect_ids, 1, tiles, tiles)
        img, alpha = _rasterize_to_pixels(
            means2d, conics, colors[None], opac[None], size, size, 16, offsets, flatten_ids
        )
        if backward:
            (img.sum() + alpha.sum()).backward()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--channels", type=int, nargs="+", default=[3, 35, 163])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-max-n", type=int, default=10_000,
                    help="run the PyTorch references only up to this N (50k at 512² needs ~20 GB for autograd)")
    ap.add_argument("--quick", action="store_true", help="200k Gaussians, 35 channels, both sizes")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default); the trainer uses 1")
    args = ap.parse_args()
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    if args.quick:
        args.n, args.channels, args.repeats, args.ref_max_n = [200_000], [35], 2, 0

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numba threads {numba.get_num_threads()}, "
          f"torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("load average at start: %.1f %.1f %.1f (other processes share the cores: times move with it)" % os.getloadavg())
    gsplat_note = None
    try:
        import gsplat

        print(f"gsplat {gsplat.__version__} imports; trying its PyTorch reference (projection, tiles, compositing)")
    except ImportError:
        gsplat_note = "gsplat not installed (pip install gsplat; its PyTorch reference still needs CUDA kernels)"

    header = (f"| {'N':>7} | {'size':>4} | {'C':>3} | {'backend':<17} | {'fwd s':>7} | {'fwd+bwd s':>9} | {'f+b cpu s':>9} | "
              f"{'fwd x numba':>11} | {'f+b x numba':>11} | {'peak MiB':>8} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for n in args.n:
        for size in args.sizes:
            for ch in args.channels:
                params, viewmat, K = make_scene(n, ch, size)
                rows = [("numba", lambda bw: fmsplat_runner(params, viewmat, K, size, "numba", bw))]
                if n <= args.ref_max_n:
                    rows.append(("fmsplat torch ref", lambda bw: fmsplat_runner(params, viewmat, K, size, "torch", bw)))
                    if gsplat_note is None:
                        rows.append(("gsplat torch ref", lambda bw: gsplat_reference_runner(params, viewmat, K, size, bw)))
                base = None
                base_f = None
                for name, make in rows:
                    try:
                        t_f, _, _ = time_call(make(False), args.repeats)
                        t_fb, cpu_fb, mem = time_call(make(True), args.repeats)
                    except Exception as exc:  # report, never hide: e.g. gsplat's reference needs CUDA
                        if name.startswith("gsplat"):
                            gsplat_note = f"gsplat's PyTorch reference cannot run here: {type(exc).__name__}: {exc}"
                            continue
                        raise
                    base, base_f = base or t_fb, base_f or t_f
                    print(f"| {n:>7} | {size:>4} | {ch:>3} | {name:<17} | {t_f:7.3f} | {t_fb:9.3f} | {cpu_fb:9.3f} | "
                          f"{t_f / base_f:11.1f} | {t_fb / base:11.1f} | {mem:8.0f} |", flush=True)
    print("\nload average at end: %.1f %.1f %.1f" % os.getloadavg())
    if gsplat_note:
        print(f"note: {gsplat_note}")


if __name__ == "__main__":
    main()
