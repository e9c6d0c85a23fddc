"""3DGS training on posed photos: the photometric loss, SH schedule and density control of
Kerbl et al. 2023 with their schedule scaled to the number of steps, checkpoints and resume.

Entry point: `train_gaussians(data_path, out_dir, TrainConfig(...))`, or `fmsplat train`.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fmsplat import __version__, atomic
from fmsplat.gaussians import GaussianModel, eval_sh
from fmsplat.gaussians.losses import psnr, rgb_loss, ssim
from fmsplat.reconstruct.densify import DensityControl, reset_opacity
from fmsplat.render import rasterize
from fmsplat.scene import SceneDataset, load_dataset

REFERENCE_STEPS = 30_000  # the schedule of the original code is given for this many steps
CHECKPOINT = "checkpoints/train.pt"


@dataclass
class TrainConfig:
    """Every field has the 3DGS default (scaled to `steps` where the schedule is in steps)."""

    steps: int = 3000
    downscale: float = 1.0
    test_every: int = 8
    sh_degree: int = 3
    seed: int = 0
    background: tuple = (0.0, 0.0, 0.0)
    ssim_weight: float = 0.2
    # learning rates (means scaled by the scene extent, decayed exponentially to the final one)
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    lr_opacities: float = 5e-2
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    # density control (3DGS: from 500 to 15000, every 100, opacity reset every 3000 of 30000)
    densify_from: float = 500 / REFERENCE_STEPS
    densify_until: float = 15_000 / REFERENCE_STEPS
    densify_every: int = 100
    reset_every: float = 3000 / REFERENCE_STEPS
    sh_increase_every: float = 1000 / REFERENCE_STEPS
    grad_threshold: float = 2e-4
    percent_dense: float = 0.01
    max_gaussians: int = 300_000
    init_random_points: int = 20_000
    init_opacity: float = 0.1
    checkpoint_every: int = 500

    def schedule(self) -> dict:
        """Step numbers of the scaled schedule."""
        s = self.steps
        every = max(10, min(self.densify_every, round(self.densify_every * s / REFERENCE_STEPS * 4)))
        return {
            "densify_from": max(every, round(self.densify_from * s)),
            "densify_until": round(self.densify_until * s),
            "densify_every": every,
            # An opacity reset needs several refinement rounds after it to recover.
            "reset_every": max(3 * every, round(self.reset_every * s)),
            "sh_increase_every": max(1, round(self.sh_increase_every * s)),
        }


def _versions() -> dict:
    import numba

    return {"fmsplat": __version__, "torch": torch.__version__, "numba": numba.__version__,
            "python": platform.python_version()}


def _init_model(data: SceneDataset, cfg: TrainConfig) -> GaussianModel:
    if data.points is not None and len(data.points) >= 4:
        colors = data.point_colors if data.point_colors is not None else np.full_like(data.points, 0.5)
        return GaussianModel.from_points(data.points, colors, sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity)
    lo, hi = data.bounds()
    return GaussianModel.random(cfg.init_random_points, lo, hi, sh_degree=cfg.sh_degree, seed=cfg.seed,
                                init_opacity=cfg.init_opacity)


def _params_from_model(model: GaussianModel) -> dict:
    raw = {
        "means": model.means, "quats": model.quats, "scales": model.scales, "opacities": model.opacities,
        "sh0": model.sh[:, :1], "shN": model.sh[:, 1:],
    }
    return {k: torch.nn.Parameter(v.detach().float().clone().contiguous()) for k, v in raw.items()}


def model_from_params(params: dict, sh_degree: int) -> GaussianModel:
    return GaussianModel(
        means=params["means"].detach(), quats=params["quats"].detach(), scales=params["scales"].detach(),
        opacities=params["opacities"].detach(), sh=torch.cat([params["sh0"], params["shN"]], 1).detach(),
        sh_degree=sh_degree,
    )


def _make_optimizer(params: dict, cfg: TrainConfig, extent: float) -> torch.optim.Adam:
    lrs = {"means": cfg.lr_means * extent, "quats": cfg.lr_quats, "scales": cfg.lr_scales,
           "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN}
    return torch.optim.Adam([{"params": [params[k]], "lr": lr, "name": k} for k, lr in lrs.items()], eps=1e-15)


def _means_lr(step: int, cfg: TrainConfig, extent: float) -> float:
    t = min(1.0, step / max(1, cfg.steps))
    return extent * math.exp((1 - t) * math.log(cfg.lr_means) + t * math.log(cfg.lr_means_final))


def render_view(model_or_params, cam, sh_degree: int, background, backend: str = "auto"):
    """Render one camera from either a GaussianModel or the trainer's parameter dict."""
    if isinstance(model_or_params, GaussianModel):
        p = _params_from_model(model_or_params)
    else:
        p = model_or_params
    sh = torch.cat([p["sh0"], p["shN"]], 1)
    center = torch.as_tensor(cam.center, dtype=torch.float32)
    dirs = p["means"] - center
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    colors = (eval_sh(sh_degree, sh, dirs) + 0.5).clamp_min(0.0)
    return rasterize(
        p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]), colors,
        cam.viewmat_tensor(), cam.K_tensor(), cam.width, cam.height,
        background=torch.as_tensor(background, dtype=torch.float32), backend=backend,
    )


def evaluate_views(model: GaussianModel, data: SceneDataset, indices, background) -> dict:
    """Mean PSNR / SSIM of `indices` (held-out views) rendered at full SH degree."""
    params = _params_from_model(model)
    scores = []
    with torch.no_grad():
        for i in indices:
            res = render_view(params, data.cameras[i], model.sh_degree, background)
            gt = torch.from_numpy(np.ascontiguousarray(data.image(i)))
            pred = res.image.clamp(0, 1)
            scores.append((float(psnr(pred, gt)), float(ssim(pred, gt))))
    if not scores:
        return {"views": 0}
    arr = np.array(scores)
    return {"views": len(scores), "psnr": float(arr[:, 0].mean()), "ssim": float(arr[:, 1].mean()),
            "per_view": [{"view": data.cameras[i].name, "psnr": s[0], "ssim": s[1]} for i, s in zip(indices, scores)]}


def _save_checkpoint(path: Path, step: int, params: dict, optimizer, control: DensityControl, sh_active: int,
                     rng_state) -> None:
    state = {
        "step": step,
        "sh_active": sh_active,
        "params": {k: v.detach() for k, v in params.items()},
        "optimizer": {k: {s: optimizer.state[v][s] for s in ("exp_avg", "exp_avg_sq", "step")}
                      for k, v in params.items() if v in optimizer.state},
        "stats": {"grad_accum": control.grad_accum, "count": control.count, "max_radii": control.max_radii},
        "rng": rng_state,
    }
    atomic.write_with(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path: Path, cfg: TrainConfig, extent: float, control: DensityControl):
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"{path}: cannot read the training checkpoint ({exc}); delete it to start afresh") from exc
    params = {k: torch.nn.Parameter(v.clone()) for k, v in state["params"].items()}
    optimizer = _make_optimizer(params, cfg, extent)
    for k, s in state["optimizer"].items():
        optimizer.state[params[k]] = {key: val.clone() for key, val in s.items()}
    control.grad_accum, control.count, control.max_radii = (
        state["stats"]["grad_accum"], state["stats"]["count"], state["stats"]["max_radii"])
    return state["step"], state["sh_active"], params, optimizer, state["rng"]


def train_gaussians(data_path, out_dir, cfg: TrainConfig | None = None, resume: bool = False,
                    progress: bool = True, data: SceneDataset | None = None) -> dict:
    """Train a 3DGS on the dataset at `data_path` and write the scene directory `out_dir`:
    gaussians.ply, scene.json, metrics.json (held-out PSNR/SSIM) and a resumable checkpoint."""
    cfg = cfg or TrainConfig()
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT
    if data is None:
        data = load_dataset(data_path, downscale=cfg.downscale, test_every=cfg.test_every, background=cfg.background)
    if not data.train_indices:
        raise ValueError(f"{data_path}: no training views (all {len(data)} views are held out)")
    torch.manual_seed(cfg.seed)
    extent = max(data.extent, 1e-3)
    sched = cfg.schedule()
    control = DensityControl(0, extent, grad_threshold=cfg.grad_threshold, percent_dense=cfg.percent_dense,
                             max_gaussians=cfg.max_gaussians)
    rng = np.random.default_rng(cfg.seed)
    if resume and ckpt_path.exists():
        start, sh_active, params, optimizer, rng_state = _load_checkpoint(ckpt_path, cfg, extent, control)
        rng.bit_generator.state = json.loads(rng_state)
    elif resume and (out_dir / "gaussians.ply").exists() and (out_dir / "metrics.json").exists():
        return json.loads((out_dir / "metrics.json").read_text())
    else:
        model = _init_model(data, cfg)
        params = _params_from_model(model)
        optimizer = _make_optimizer(params, cfg, extent)
        control.reset_stats(len(model))
        start, sh_active = 0, 0
    bg = torch.as_tensor(cfg.background, dtype=torch.float32)
    generator = torch.Generator().manual_seed(cfg.seed + 1)

    t0 = time.time()
    order: list[int] = []
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="3DGS", disable=not progress,
               dynamic_ncols=True)
    loss_ema = None
    for step in bar:
        if not order:
            order = list(rng.permutation(data.train_indices))
        i = int(order.pop())
        cam = data.cameras[i]
        for group in optimizer.param_groups:
            if group["name"] == "means":
                group["lr"] = _means_lr(step, cfg, extent)
        if step > 0 and step % sched["sh_increase_every"] == 0:
            sh_active = min(cfg.sh_degree, sh_active + 1)

        res = render_view(params, cam, sh_active, bg)
        gt = torch.from_numpy(np.ascontiguousarray(data.image(i)))
        loss = rgb_loss(res.image, gt, cfg.ssim_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

        if step < sched["densify_until"]:
            control.observe(res.means2d.grad, res.radii, cam.width, cam.height)
        optimizer.step()

        done = step + 1
        if sched["densify_from"] <= done <= sched["densify_until"] and done % sched["densify_every"] == 0:
            control.refine(params, optimizer, prune_large=done > sched["reset_every"], generator=generator)
        if done <= sched["densify_until"] and done % sched["reset_every"] == 0:
            reset_opacity(params, optimizer)

        loss_ema = float(loss) if loss_ema is None else 0.9 * loss_ema + 0.1 * float(loss)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_ema:.4f}", psnr=f"{float(psnr(res.image.detach(), gt)):.2f}",
                            n=params["means"].shape[0])
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            _save_checkpoint(ckpt_path, done, params, optimizer, control, sh_active,
                             json.dumps(rng.bit_generator.state))
    bar.close()

    model = model_from_params(params, cfg.sh_degree)
    train_time = time.time() - t0
    metrics = {
        "test": evaluate_views(model, data, data.test_indices, cfg.background),
        "num_gaussians": len(model),
        "steps": cfg.steps,
        "train_seconds_this_run": round(train_time, 2),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_ply(out_dir / "gaussians.ply")
    scene = {
        "fmsplat_scene": 1,
        "data": {"path": str(Path(data.source).resolve()), "downscale": data.downscale, "test_every": data.test_every},
        "provenance": data.provenance(),
        "train_config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        "schedule": sched,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic.write_json(out_dir / "scene.json", scene)
    atomic.write_json(out_dir / "metrics.json", metrics)
    if ckpt_path.exists():
        ckpt_path.unlink()
    return metrics


__all__ = ["TrainConfig", "train_gaussians", "evaluate_views", "render_view", "model_from_params"]
