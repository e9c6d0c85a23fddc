"""3DGS reconstruction: held-out PSNR against steps for each initialisation and densification strategy.

    python bench/reconstruct.py /work/shared/data/fox --downscale 8 --steps 1000
    python bench/reconstruct.py DATA --only sfm-mcmc,sfm-3dgs --eval-every 100
    python bench/reconstruct.py DATA --inits frustum,box --strategies mcmc
    python bench/reconstruct.py /tmp/bench-room/data --inits points --steps 1500 --max-gaussians 60000 --sh-degree 2

Each variant (initialisation x strategy) trains with `fmsplat train`'s trainer into its own folder
under --work (default /tmp/fmsplat-bench-reconstruct/<dataset>/<variant>/), scoring the held-out
views every --eval-every steps (the curve in its metrics.json). A variant already trained is read
back, not redone (rerun the same command to resume a stopped table). The SfM points are computed
once and shared: every variant's sfm/ folder links the first one's. Wall seconds are those of the
trainer (training only; SfM, loading and evaluation excluded, the SfM seconds printed apart), on
whatever the machine was doing: compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmsplat.reconstruct import TrainConfig, train_gaussians  # noqa: E402
from fmsplat.scene import load_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--downscale", type=float, default=None, help="default: the trainer's automatic choice")
    ap.add_argument("--steps", type=int, default=None, help="default: the trainer's")
    ap.add_argument("--inits", default="sfm,frustum,box")
    ap.add_argument("--strategies", default="mcmc,3dgs")
    ap.add_argument("--only", default=None, help="comma-separated variants <init>-<strategy>")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--max-gaussians", type=int, default=None)
    ap.add_argument("--sh-degree", type=int, default=None)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()

    data_path = Path(args.data)
    work = Path(args.work or f"/tmp/fmsplat-bench-reconstruct/{data_path.resolve().name}")
    variants = [f"{i}-{s}" for i in args.inits.split(",") for s in args.strategies.split(",")]
    if args.only:
        variants = [v for v in args.only.split(",") if v]
    extra = {} if args.max_gaussians is None else {"max_gaussians": args.max_gaussians}
    if args.steps is not None:
        extra["steps"] = args.steps
    if args.sh_degree is not None:
        extra["sh_degree"] = args.sh_degree
    rows = []
    sfm_source: Path | None = None
    for name in variants:
        init, strategy = name.split("-", 1)
        cfg = TrainConfig(init=init, strategy=strategy, eval_every=args.eval_every, downscale=args.downscale, **extra)
        out = work / name
        if init == "sfm":
            # Share one triangulation: link the first variant's sfm/ folder.
            if sfm_source is None:
                sfm_source = out / "sfm"
            elif not (out / "sfm").exists():
                out.mkdir(parents=True, exist_ok=True)
                shutil.copytree(sfm_source, out / "sfm")
        metrics_path = out / "metrics.json"
        if metrics_path.exists():
            metrics = json.loads(metrics_path.read_text())
            print(f"{name}: read back from {metrics_path}", file=sys.stderr)
        else:
            t = time.perf_counter()
            metrics = train_gaussians(data_path, out, cfg, resume=(out / "checkpoints" / "train.pt").exists())
            print(f"{name}: {time.perf_counter() - t:.0f} s wall", file=sys.stderr)
        scene = json.loads((out / "scene.json").read_text())
        rows.append((name, metrics, scene))

    steps = sorted({c["step"] for _, m, _ in rows for c in m.get("curve", [])})
    shown = [s for s in steps if s % (4 * args.eval_every) == 0 or s == steps[-1]] if len(steps) > 8 else steps
    data = load_dataset(data_path, downscale=rows[0][2]["data"]["downscale"])
    print(f"\n{data_path}: {len(data)} views at {data.cameras[0].width}x{data.cameras[0].height}, "
          f"{len(data.test_indices)} held out; held-out PSNR (dB) at each step\n")
    print("| variant | start | " + " | ".join(str(s) for s in shown) + " | final SSIM | Gaussians | train s |")
    print("|---" * (len(shown) + 5) + "|")
    for name, m, scene in rows:
        curve = {c["step"]: c["psnr"] for c in m.get("curve", [])}
        init = scene.get("init", {})
        start = f"{init.get('kind')} ({init.get('points', '?')})"
        cells = [f"{curve[s]:.2f}" if s in curve else "–" for s in shown]
        print(f"| {name} | {start} | " + " | ".join(cells)
              + f" | {m['test']['ssim']:.3f} | {m['num_gaussians']:,} | {m['train_seconds']:.0f} |")
    sfm = next((s["init"]["sfm"] for _, _, s in rows if s.get("init", {}).get("sfm")), None)
    if sfm:
        print(f"\nSfM: {sfm['points']} points from {sfm['views']} views at {sfm['image_size'][0]}x{sfm['image_size'][1]}, "
              f"seconds {sfm['seconds']}")


if __name__ == "__main__":
    main()
