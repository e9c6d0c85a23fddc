"""3DGS training on posed photos: the photometric loss, SH schedule and density control of
Kerbl et al. 2023 with their schedule scaled to the number of steps, checkpoints and resume.

Entry point: `train_gaussians(data_path, out_dir, TrainConfig(...))`, or `fmsplat train`.
"""

from __future__ import annotations

import json
import math
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fmsplat import __version__
from fmsplat.engine import Run, check_resume, optimise, torch_threads
from fmsplat.gaussians import GaussianModel
from fmsplat.gaussians.losses import psnr, rgb_loss, ssim
from fmsplat.reconstruct.configs import TrainConfig
from fmsplat.reconstruct.densify import AdaptiveDensity, DensityControl
from fmsplat.reconstruct.init import initial_gaussians
from fmsplat.reconstruct.mcmc import MCMCStrategy
from fmsplat.reconstruct.strategy import Strategy
from fmsplat.reconstruct.renders import evenly_spaced, write_view_panels
from fmsplat.reconstruct.report import write_run_report
from fmsplat.render.rgb import render_rgb
from fmsplat.scene import SceneDataset, load_dataset
from fmsplat.workspace import GAUSSIANS_PLY, Workspace

def _versions() -> dict:
    import numba

    return {"fmsplat": __version__, "torch": torch.__version__, "numba": numba.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _init_model(data: SceneDataset, cfg: TrainConfig, out_dir: Path | None = None,
                progress: bool = False) -> tuple[GaussianModel, dict]:
    """The initial Gaussians for cfg.init and what was done (scene.json's "init"); SfM work
    files go to out_dir/sfm."""
    return initial_gaussians(data, cfg.init, cfg.init_random_points, cfg.sh_degree, cfg.init_opacity,
                             seed=cfg.seed, sfm_dir=None if out_dir is None else Workspace(out_dir).sfm_dir,
                             progress=progress)


def _make_optimizer(params: dict, cfg: TrainConfig, extent: float) -> torch.optim.Adam:
    lrs = {"means": cfg.lr_means * extent, "quats": cfg.lr_quats, "scales": cfg.lr_scales,
           "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN}
    # fused: one kernel over each parameter instead of a dozen tensor ops (bench/README.md, "One 3DGS step")
    return torch.optim.Adam([{"params": [params[k]], "lr": lr, "name": k} for k, lr in lrs.items()], eps=1e-15,
                            fused=True)


def _means_lr(iteration: int, cfg: TrainConfig, extent: float) -> float:
    """Log-linear decay from lr_means to lr_means_final over the run, times the scene extent."""
    t = min(1.0, iteration / max(1, cfg.steps))
    return extent * math.exp((1 - t) * math.log(cfg.lr_means) + t * math.log(cfg.lr_means_final))


def _image(data: SceneDataset, i: int, device=None) -> torch.Tensor:
    """View i as a tensor sharing the dataset's cached (read-only) array: never written to."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(data.image(i))
    return t if device is None else t.to(device)


def _valid(data: SceneDataset, i: int, device=None) -> torch.Tensor | None:
    """(H, W) bool of the pixels that come from the photo, or None when all do. Undistortion
    leaves a border with no photo behind it (filled with the background): it is neither
    trained on nor scored."""
    mask = data.valid_mask(i)
    if mask.all():
        return None
    t = torch.from_numpy(np.ascontiguousarray(mask))
    return t if device is None else t.to(device)


def _fill_invalid(gt: torch.Tensor, pred: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """The target with pixels outside `valid` replaced by the (detached) prediction: no loss there."""
    return gt if valid is None else torch.where(valid[..., None], gt, pred.detach())


def evaluate_views(model: GaussianModel, data: SceneDataset, indices, background) -> dict:
    """Mean PSNR / SSIM of the views `indices` rendered at the model's full SH degree, clamped
    to [0, 1], against the dataset's images (held-out views for the test score). Pixels that
    undistortion left without photo data are excluded from PSNR and count as exact in SSIM."""
    indices = [int(i) for i in indices]
    scores = []
    with torch.no_grad():
        for i in indices:
            res = render_rgb(model, data.cameras[i], model.sh_degree, background)
            pred = res.image.clamp(0, 1)
            valid = _valid(data, i, pred.device)
            gt = _fill_invalid(_image(data, i, pred.device), pred, valid)
            err = (pred - gt) ** 2
            mse = err.mean() if valid is None else err[valid].mean()
            scores.append((float(-10.0 * torch.log10(mse.clamp_min(1e-12))), float(ssim(pred, gt))))
    if not scores:
        return {"views": 0}
    arr = np.array(scores)
    return {"views": len(scores), "psnr": float(arr[:, 0].mean()), "ssim": float(arr[:, 1].mean()),
            "per_view": [{"view": data.cameras[i].name, "psnr": s[0], "ssim": s[1]} for i, s in zip(indices, scores)]}


def _data_identity(data: SceneDataset) -> dict:
    return {"path": str(Path(data.source).resolve()), "views": len(data), "downscale": data.downscale,
            "test_every": data.test_every, "train_views": [int(i) for i in data.train_indices]}


def _describe_init(info: dict) -> str:
    kind = info.get("kind")
    if kind == "sfm":
        r = info["sfm"]
        return (f"{info['points']} points triangulated from {r['views']} posed views"
                + (" (cached)" if r.get("reused") else f" in {sum(r['seconds'].values()):.0f} s"))
    text = {"points": "the dataset's points", "frustum": "random points in the view frusta",
            "box": "random points in the camera box"}.get(kind, str(kind))
    return text + (f"; {info['fallback_reason']}" if info.get("fallback_reason") else "")


def _train_eval_indices(data: SceneDataset, k: int) -> list[int]:
    train = data.train_indices
    if k <= 0 or not train:
        return []
    picks = np.unique(np.linspace(0, len(train) - 1, min(k, len(train))).round().astype(int))
    return [train[j] for j in picks]


def train_gaussians(data_path, out_dir, cfg: TrainConfig | None = None, resume: bool = False,
                    progress: bool = True, data: SceneDataset | None = None) -> dict:
    """Train a 3DGS on the dataset at `data_path` (or the already loaded `data`) and write the
    scene directory `out_dir`: gaussians.ply, scene.json, metrics.json (PSNR/SSIM on held-out
    views and on a few training views). While it runs, checkpoints/train.pt is rewritten
    atomically every `cfg.checkpoint_every` steps; `resume=True` continues from it (and the
    continued run matches an uninterrupted one). Returns the metrics."""
    cfg = cfg or TrainConfig()
    with torch_threads(cfg.torch_threads):
        return _train(data_path, out_dir, cfg, resume, progress, data)


def _strategy(cfg: TrainConfig, extent: float, sched: dict, n: int) -> Strategy:
    """The densification strategy of cfg.strategy for a model that started from n Gaussians (MCMC's
    growth is fitted to it: MCMCConfig.fitted_growth)."""
    if cfg.strategy == "mcmc":
        return MCMCStrategy(cfg.mcmc_config().fitted_growth(n))
    return AdaptiveDensity(DensityControl(n, extent, grad_threshold=cfg.grad_threshold, percent_dense=cfg.percent_dense,
                                          min_opacity=cfg.prune_opacity, max_screen_size=cfg.max_screen_size,
                                          max_world_size=cfg.max_world_size, max_gaussians=cfg.max_gaussians), sched)


def _train(data_path, out_dir, cfg: TrainConfig, resume: bool, progress: bool, data: SceneDataset | None) -> dict:
    out_dir = Path(out_dir)
    ws = Workspace(out_dir)
    ckpt_path = ws.train_checkpoint
    if data is None:
        data = load_dataset(data_path, downscale=cfg.downscale, test_every=cfg.test_every, background=cfg.background)
        if cfg.downscale is None and progress:
            cam = data.cameras[0]
            tqdm.write(f"{data.source}: training at 1/{data.downscale:g} resolution ({cam.width}x{cam.height}), "
                       "chosen for this CPU; pass --downscale to change it")
    if not data.train_indices:
        raise ValueError(f"{data.source}: no training views (all {len(data)} views are held out)")
    extent = max(data.extent, 1e-3)
    sched = cfg.schedule()
    identity = {"config": cfg.resume_identity(), "data": _data_identity(data)}
    finished = all(p.exists() for p in (ws.gaussians_ply, ws.metrics_json, ws.scene_json))
    if resume and finished and not ckpt_path.exists():
        scene = ws.read_meta()
        saved = {k: v for k, v in scene.get("train_config", {}).items() if k not in cfg.resume_free()}
        check_resume(ws.scene_json, {"config": saved, "data": scene.get("run_data", {})}, identity)
        if progress:
            tqdm.write(f"{out_dir}: already trained ({cfg.steps} steps); nothing to resume")
        return json.loads(ws.metrics_json.read_text())

    # The generator draws the strategy's randomness, rng the view order (one shuffled pass at a time).
    run = Run(name="3DGS", steps=cfg.steps, checkpoint=ckpt_path, identity=identity, seed=cfg.seed + 1,
              checkpoint_every=cfg.checkpoint_every, resume=resume, progress=progress)
    rng = np.random.default_rng(cfg.seed)
    if run.saved is None:
        torch.manual_seed(cfg.seed)
        model, init_info = _init_model(data, cfg, out_dir, progress)
        init_info["gaussians"] = len(model)
        run.note(f"{out_dir}: starting from {len(model)} Gaussians ({_describe_init(init_info)})")
        params = model.trainable()
    else:
        init_info = json.loads(run.saved["init"])
        params = {k: torch.nn.Parameter(v.clone()) for k, v in run.saved["params"].items()}
    optimizer = _make_optimizer(params, cfg, extent)
    # the start's count (saved with the run: a resumed run fits the same growth)
    strategy = _strategy(cfg, extent, sched, int(init_info.get("gaussians", params["means"].shape[0])))
    if isinstance(strategy, MCMCStrategy) and run.saved is None:
        m, base = strategy.cfg, cfg.mcmc_config()
        if m.grow_rate > base.grow_rate:
            full = m.budget_full_at(init_info["gaussians"])
            run.note(f"{out_dir}: a sparse start ({init_info['gaussians']:,} of a {m.cap_max:,} budget): MCMC grows "
                     f"{100 * m.grow_rate:.1f} % a refinement instead of {100 * base.grow_rate:.0f} %"
                     + (f", full by step {full}" if full else ""))
        init_info["grow_rate"] = m.grow_rate
    order: list[int] = []
    curve: list[dict] = []
    loss_ema = None

    def restore(saved: dict) -> None:
        nonlocal loss_ema
        for k, moments in saved["optimizer"].items():
            optimizer.state[params[k]] = {key: val.clone() for key, val in moments.items()}
        strategy.load_state_dict(saved["strategy"])
        rng.bit_generator.state = json.loads(saved["rng"])
        order[:] = [int(i) for i in saved["order"]]
        curve[:] = saved["curve"]
        loss_ema = saved["loss_ema"]

    run.restore(restore)
    bg = torch.as_tensor(cfg.background, dtype=torch.float32)
    valid_masks: dict[int, torch.Tensor | None] = {}

    def step(i: int) -> dict:
        nonlocal loss_ema
        it = i + 1  # 1-based iteration, as the schedule of the original code counts
        if not order:
            order.extend(int(j) for j in rng.permutation(data.train_indices))
        view = order.pop()
        cam = data.cameras[view]
        means_lr = _means_lr(it, cfg, extent)
        for group in optimizer.param_groups:
            if group["name"] == "means":
                group["lr"] = means_lr
        sh_active = min(cfg.sh_degree, it // sched["sh_increase_every"])
        res = render_rgb(params, cam, sh_active, bg)
        if view not in valid_masks:
            valid_masks[view] = _valid(data, view)
        gt = _fill_invalid(_image(data, view), res.image, valid_masks[view])
        loss = rgb_loss(res.image, gt, cfg.ssim_weight) + strategy.step_pre_backward(params, it)
        optimise(optimizer, loss)
        strategy.step_post_backward(params, optimizer, it=it, render=res, camera=cam, means_lr=means_lr,
                                    generator=run.generator)
        loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
        if cfg.eval_every and (it % cfg.eval_every == 0 or it == cfg.steps) and data.test_indices:
            with run.untimed():
                scores = evaluate_views(GaussianModel.from_params(params, sh_active), data, data.test_indices,
                                        cfg.background)
            curve.append({"step": it, "psnr": round(scores["psnr"], 3), "ssim": round(scores["ssim"], 4),
                          "gaussians": int(params["means"].shape[0]), "seconds": round(run.seconds, 2)})
        return {"loss": loss_ema, "psnr": float(psnr(res.image.detach(), gt)), "n": int(params["means"].shape[0]),
                "sh": sh_active}

    def state() -> dict:
        return {"params": {k: v.detach() for k, v in params.items()},
                "optimizer": {k: {s: optimizer.state[v][s] for s in ("exp_avg", "exp_avg_sq", "step")}
                              for k, v in params.items() if v in optimizer.state},
                "strategy": strategy.state_dict(), "rng": json.dumps(rng.bit_generator.state), "order": list(order),
                "loss_ema": loss_ema, "curve": curve, "init": json.dumps(init_info)}

    run.loop(step, state)
    train_seconds = run.seconds
    start = run.start

    model = GaussianModel.from_params(params, cfg.sh_degree)
    t_eval = time.perf_counter()
    metrics = {
        "test": evaluate_views(model, data, data.test_indices, cfg.background),
        "train": evaluate_views(model, data, _train_eval_indices(data, cfg.train_eval_views), cfg.background),
        "num_gaussians": len(model),
        "steps": cfg.steps,
        "resumed_from_step": start or None,
        "curve": curve,
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(time.perf_counter() - t_eval, 2),
    }
    scene = {
        "fmsplat_scene": 1,
        "gaussians": GAUSSIANS_PLY,
        "data": {"path": str(Path(data.source).resolve()), "downscale": data.downscale, "test_every": data.test_every},
        "run_data": _data_identity(data),
        "provenance": data.provenance(),
        "train_config": cfg.to_json(),
        "schedule": sched,
        "init": init_info,
        "scene_extent": extent,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # render | photo | error pictures of a few held-out views: a failed reconstruction shows at a glance
    panels = write_view_panels(model, data, evenly_spaced(data.test_indices, 4), ws.renders_dir / "test", cfg.background)
    metrics["panels"] = [p.relative_to(out_dir).as_posix() for p in panels]  # relative: scene dirs move
    ws.write_scene(model, scene, metrics, data)
    # one page to see whether the capture worked (after the scene is committed: a report never costs the run)
    write_run_report(out_dir, model, data, metrics, init_info)
    run.remove_checkpoint()
    return metrics


__all__ = ["TrainConfig", "evaluate_views", "train_gaussians"]
