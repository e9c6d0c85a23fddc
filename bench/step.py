"""Where one 3DGS training step's time goes, on a trained scene, alone and beside other CPU-bound work.

    python bench/step.py /tmp/runs/fox/gaussians.ply /work/shared/data/fox --downscale 8
    python bench/step.py SCENE.ply DATA --load 1        # beside one busy process (a pure-Python loop)
    python bench/step.py SCENE.ply DATA --compare-load 1  # alone, then beside one busy process, in one run

The step is the trainer's own (reconstruct.train: SH colours, projection, binning, compositing, the
L1 + SSIM loss and the MCMC regulariser, backward, Adam, MCMC position noise) on the scene's Gaussians,
over the dataset's training views in the trainer's order. Each stage is timed with perf_counter around
the function that does it (the kernels, projection and loss are wrapped for the run), and "autograd
(rest)" is the backward pass less the compositing kernel's backward: projection, SH and SSIM through
torch's autograd. The first --warmup steps (numba compilation, caches) are not counted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fmsplat.render as render  # noqa: E402
import fmsplat.render.numba_kernels as nk  # noqa: E402
from fmsplat.engine import torch_threads  # noqa: E402
from fmsplat.gaussians import GaussianModel  # noqa: E402
from fmsplat.reconstruct import TrainConfig  # noqa: E402
from fmsplat.reconstruct import mcmc, train  # noqa: E402
from fmsplat.scene import load_dataset  # noqa: E402

TIMES: dict[str, float] = collections.defaultdict(float)


def _timed(name: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - t0
    return wrapper


@contextlib.contextmanager
def _instrumented():
    """Wrap the stages' functions with timers for the block (their modules' own names, restored after)."""
    patches = [(nk, "bin_gaussians", "binning"), (nk, "rasterize_forward", "compositing forward"),
               (nk, "rasterize_backward", "compositing backward"), (render, "_project_numba", "projection"),
               (train, "rgb_loss", "loss (L1 + SSIM)"), (mcmc, "inject_noise", "MCMC noise")]
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in patches]
    for mod, attr, name in patches:
        setattr(mod, attr, _timed(name, getattr(mod, attr)))
    try:
        yield
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)


def _busy(stop, ready, training) -> None:
    """A pure-Python loop on one core, or (`training`: (ply, data, downscale)) another 3DGS training."""
    if training is None:
        ready.set()
        while not stop.is_set():
            sum(range(10_000))
        return
    ply, data_path, downscale = training
    model, data = GaussianModel.load_ply(ply), load_dataset(data_path, downscale=downscale)
    measure(model, data, 1, 0, TrainConfig())  # compiled and warm
    ready.set()
    while not stop.is_set():
        measure(model, data, 5, 0, TrainConfig())


def measure(model: GaussianModel, data, steps: int, warmup: int, cfg: TrainConfig) -> dict:
    """Seconds per step of each stage over `steps` steps (after `warmup`)."""
    params = model.trainable()
    optimizer = train._make_optimizer(params, cfg, max(data.extent, 1e-3))
    strategy = mcmc.MCMCStrategy(cfg.mcmc_config())
    bg = torch.zeros(3)
    views = list(np.random.default_rng(0).permutation(data.train_indices))
    generator = torch.Generator().manual_seed(0)
    totals = collections.defaultdict(float)
    with torch_threads(cfg.torch_threads), _instrumented():
        for i in range(warmup + steps):
            view = int(views[i % len(views)])
            cam = data.cameras[view]
            TIMES.clear()
            t0 = time.perf_counter()
            res = train.render_rgb(params, cam, model.sh_degree, bg)
            t1 = time.perf_counter()
            gt = train._image(data, view)
            loss = train.rgb_loss(res.image, gt, cfg.ssim_weight) + strategy.step_pre_backward(params, 10**9)
            t2 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t3 = time.perf_counter()
            optimizer.step()
            t4 = time.perf_counter()
            mcmc.inject_noise(params, 1e-6, generator)
            t5 = time.perf_counter()
            if i < warmup:
                continue
            stages = {
                "colours, depth sort, input checks": (t1 - t0) - TIMES["projection"] - TIMES["binning"] - TIMES["compositing forward"],
                "projection": TIMES["projection"],
                "binning (sort + tile lists)": TIMES["binning"],
                "compositing forward": TIMES["compositing forward"],
                "loss (L1 + SSIM) + regulariser": t2 - t1,
                "compositing backward": TIMES["compositing backward"],
                "autograd (rest: projection, SH, SSIM)": (t3 - t2) - TIMES["compositing backward"],
                "Adam": t4 - t3,
                "MCMC noise": t5 - t4,
                "step": t5 - t0,
            }
            for k, v in stages.items():
                totals[k] += v
    return {k: v / steps for k, v in totals.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ply", help="a trained scene's gaussians.ply (the state of a step late in training)")
    ap.add_argument("data", help="the dataset it was trained on")
    ap.add_argument("--downscale", type=float, default=None, help="default: the trainer's automatic choice")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--load", type=int, default=0, help="busy processes running beside the measurement")
    ap.add_argument("--gaussians", type=int, default=None, help="train on this many of the scene's Gaussians "
                    "(evenly spaced rows): a small scene's step")
    ap.add_argument("--chunksize", type=int, default=None, help="numba.set_parallel_chunksize for the kernels")
    ap.add_argument("--torch-threads", type=int, default=None, help="default: the trainer's (TrainConfig)")
    ap.add_argument("--fused-adam", action="store_true", help="torch's fused CPU Adam instead of the trainer's")
    ap.add_argument("--load-kind", choices=("python", "train"), default="python",
                    help="what each busy process runs: a pure-Python loop, or another training of the same scene")
    ap.add_argument("--compare-load", type=int, default=0,
                    help="measure alone, then beside this many busy processes, and print the ratio")
    args = ap.parse_args()

    if args.chunksize is not None:
        nk.numba.set_parallel_chunksize(args.chunksize)
    model = GaussianModel.load_ply(args.ply)
    if args.gaussians is not None and args.gaussians < len(model):
        model = model.subset(torch.linspace(0, len(model) - 1, args.gaussians).round().long())
    data = load_dataset(args.data, downscale=args.downscale)
    cam = data.cameras[0]
    cfg = TrainConfig() if args.torch_threads is None else TrainConfig(torch_threads=args.torch_threads)
    loads = [args.load] if not args.compare_load else [0, args.compare_load]
    columns = {}
    for load in loads:
        ctx = mp.get_context("spawn")  # a fresh interpreter: no forked numba or OpenMP thread state
        stop = ctx.Event()
        training = (args.ply, args.data, args.downscale) if args.load_kind == "train" else None
        readies = [ctx.Event() for _ in range(load)]
        workers = [ctx.Process(target=_busy, args=(stop, r, training), daemon=True)
                   for r in readies]
        for w in workers:
            w.start()
        for r in readies:
            r.wait()
        try:
            columns[load] = measure(model, data, args.steps, args.warmup, cfg)
        finally:
            stop.set()
            for w in workers:
                w.join()
    print(f"{len(model):,} Gaussians, {cam.width}x{cam.height}, {args.steps} steps after {args.warmup} warm-up; "
          f"torch threads {cfg.torch_threads}, numba threads {nk.numba.get_num_threads()} "
          f"({nk.numba.threading_layer()} layer)\n")
    head = " | ".join(f"ms, {n} busy beside" for n in columns)
    print(f"| stage | {head} |" + (" ratio |" if len(columns) == 2 else ""))
    print("|---|" + "---:|" * (len(columns) + (len(columns) == 2)))
    first = next(iter(columns.values()))
    for stage in first:
        cells = " | ".join(f"{1000 * col[stage]:.1f}" for col in columns.values())
        ratio = ""
        if len(columns) == 2:
            a, b = columns.values()
            ratio = f" {b[stage] / max(a[stage], 1e-9):.2f} |"
        name = f"**{stage}**" if stage == "step" else stage
        print(f"| {name} | {cells} |{ratio}")


if __name__ == "__main__":
    main()
