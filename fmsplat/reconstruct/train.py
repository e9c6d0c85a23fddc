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
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from tqdm import tqdm

from fmsplat import __version__
from fmsplat.config import Settings, setting
from fmsplat.engine import Run, check_resume, optimise, torch_threads
from fmsplat.gaussians import GaussianModel
from fmsplat.gaussians.losses import psnr, rgb_loss, ssim
from fmsplat.reconstruct.densify import AdaptiveDensity, DensityControl
from fmsplat.reconstruct.init import INITS, initial_gaussians
from fmsplat.reconstruct.mcmc import MCMCConfig, MCMCStrategy
from fmsplat.reconstruct.strategy import Strategy
from fmsplat.reconstruct.renders import evenly_spaced, write_view_panels
from fmsplat.render.rgb import render_rgb
from fmsplat.scene import SceneDataset, load_dataset
from fmsplat.workspace import GAUSSIANS_PLY, Workspace

REFERENCE_STEPS = 30_000  # the schedule of the original code is given for this many steps
STRATEGIES = ("3dgs", "mcmc")


@dataclass
class TrainConfig(Settings):
    """3DGS training settings. Learning rates, loss and the 3DGS density-control rules are the
    defaults of Kerbl et al. 2023 (their schedule scaled to `steps`); the run length, the Gaussian
    budget, the strategy, the start and the resolution are sized for a 2-core CPU and chosen by
    measurement (bench/README.md, "Reconstruction")."""

    label: ClassVar[str] = "train config"
    steps: int = setting(1000, "optimisation steps; the schedule is scaled to this (bench/README.md, "
                               "'Reconstruction')", ge=1)
    downscale: float | None = setting(None, "image downscale (8 = 1/8 resolution); auto: the smallest power of two "
                                            "that brings every view to 0.1 megapixel or less "
                                            "(scene.dataset.auto_downscale)", gt=0)
    test_every: int = setting(8, "hold out every N-th view for evaluation (0: none)", ge=0)
    sh_degree: int = setting(3, "maximum spherical-harmonics degree", ge=0, le=3)
    seed: int = setting(0, "random seed (start, view order, densification draws)")
    background: tuple[float, float, float] = setting((0.0, 0.0, 0.0), "background colour (RGB, 0-1)")
    ssim_weight: float = setting(0.2, "photometric loss: (1 - w) L1 + w (1 - SSIM)", ge=0, le=1)
    lr_means: float = setting(1.6e-4, "Adam learning rate of the means at the first step, times the scene extent",
                              gt=0)
    lr_means_final: float = setting(1.6e-6, "... decayed exponentially to this at the last step", gt=0)
    lr_sh0: float = setting(2.5e-3, "Adam learning rate of the base colours (SH band 0)", gt=0)
    lr_shN: float = setting(2.5e-3 / 20, "Adam learning rate of the higher SH bands", gt=0)
    lr_opacities: float = setting(5e-2, "Adam learning rate of the opacities (logits)", gt=0)
    lr_scales: float = setting(5e-3, "Adam learning rate of the scales (logs)", gt=0)
    lr_quats: float = setting(1e-3, "Adam learning rate of the rotations", gt=0)
    strategy: Literal["3dgs", "mcmc"] = setting(
        "mcmc", "densification: mcmc (relocation, growth to max_gaussians and position noise, Kheradmand et al. "
                "2024; reconstruct/mcmc.py) or 3dgs (clone/split/prune with opacity resets, Kerbl et al. 2023). "
                "MCMC scored higher from every start and never spends steps after an opacity reset "
                "(bench/README.md, 'Reconstruction')")
    densify_from: float = setting(500 / REFERENCE_STEPS, "3dgs: densification starts after this fraction of the "
                                                         "steps (500 of 30,000)", ge=0, le=1)
    densify_until: float = setting(15_000 / REFERENCE_STEPS, "3dgs: ... and stops after this fraction (15,000 of "
                                                             "30,000)", ge=0, le=1)
    densify_every: int = setting(100, "3dgs: refinement interval at 30,000 steps; short runs refine relatively "
                                      "more often (schedule())", ge=1)
    reset_every: float = setting(3000 / REFERENCE_STEPS, "3dgs: opacity reset interval as a fraction of the steps "
                                                         "(3,000 of 30,000)", gt=0, le=1)
    # A reset leaves every opacity at 0.01, and Adam needs a number of steps to bring the surfaces back
    # whatever the run length: scaled linearly, short runs would reset again before recovering.
    min_reset_interval: int = setting(300, "3dgs: opacity resets are never closer than this many steps (runs too "
                                           "short for that get one, schedule(); bench/README.md, 'Reconstruction')",
                                      ge=1)
    sh_increase_every: float = setting(1000 / REFERENCE_STEPS, "the SH degree rises by one after each such fraction "
                                                               "of the steps (1,000 of 30,000)", gt=0, le=1)
    grad_threshold: float = setting(2e-4, "3dgs: densify Gaussians whose mean screen-space gradient (NDC units per "
                                          "view) reaches this", gt=0)
    percent_dense: float = setting(0.01, "3dgs: candidates larger than this fraction of the scene extent are split, "
                                         "smaller ones cloned", gt=0)
    prune_opacity: float = setting(0.005, "opacity of dead Gaussians: pruned (3dgs), relocated (mcmc)", gt=0, lt=1)
    max_screen_size: float = setting(20.0, "3dgs: Gaussians wider than this many pixels are pruned after the first "
                                           "opacity reset", gt=0)
    max_world_size: float = setting(0.1, "3dgs: ... and those larger than this fraction of the scene extent", gt=0)
    max_gaussians: int = setting(100_000, "Gaussian budget: 3dgs stops densifying here, mcmc grows to it; sized for "
                                          "views of 0.1 megapixel or less on a CPU (bench/README.md, "
                                          "'Reconstruction')", ge=1)
    init: Literal[INITS] = setting(  # the starts reconstruct/init.py implements
        "auto", "initial Gaussians: auto (the dataset's points, else triangulated with pycolmap from the known poses, "
                "else random in the view frusta), points, sfm, frustum, box (random in the camera centres' box; "
                "misses scenes seen from outside)")
    init_random_points: int = setting(20_000, "Gaussians of a random start", ge=1)
    init_opacity: float = setting(0.1, "opacity of the initial Gaussians", gt=0, lt=1)
    checkpoint_every: int = setting(500, "steps between resumable checkpoints (SCENE/checkpoints/train.pt)", ge=1,
                                    resume_free=True)
    train_eval_views: int = setting(8, "training views scored at the end (evenly spaced; 0: none)", ge=0,
                                    resume_free=True)
    eval_every: int = setting(0, "score the held-out views every this many steps (metrics.json 'curve'; not counted "
                                 "in train_seconds); 0: only at the end", ge=0, resume_free=True)
    torch_threads: int = setting(1, "torch intra-op threads while training (0: unchanged); one is faster beside the "
                                    "numba rasterizer's threads (bench/README.md, 'torch threads and numba threads')",
                                 ge=0, resume_free=True)

    def check(self) -> list[str]:
        if self.strategy == "mcmc":
            self.mcmc_config()  # the MCMC settings derived from these must be valid too
        return []

    def mcmc_config(self) -> MCMCConfig:
        """The MCMC settings of this run: gsplat's defaults with the refinement iterations scaled
        to `steps`, the cap max_gaussians and the death threshold prune_opacity."""
        return MCMCConfig(cap_max=self.max_gaussians, min_opacity=self.prune_opacity).scaled(self.steps, REFERENCE_STEPS)

    def schedule(self) -> dict:
        """Step numbers of the scaled schedule, 1-based as in the original code: at iteration
        `it` (= step + 1) the SH degree is it // sh_increase_every; see densify.is_refine_step and
        is_reset_step for density control. With strategy "mcmc": the SH schedule and MCMC's
        refinement iterations (relocate and grow after refine_start < it < refine_stop, every
        refine_every)."""
        s = self.steps
        if self.strategy == "mcmc":
            m = self.mcmc_config()
            return {"refine_start": m.refine_start_iter, "refine_stop": m.refine_stop_iter,
                    "refine_every": m.refine_every, "sh_increase_every": max(1, round(self.sh_increase_every * s))}
        # Refinement every 100 of 30k steps; short runs refine relatively 4x as often (at least
        # every 10 steps) so that densification still gets a few dozen rounds.
        every = max(10, min(self.densify_every, round(self.densify_every * s / REFERENCE_STEPS * 4)))
        until = round(self.densify_until * s)
        # An opacity reset needs several refinement rounds and ~100-200 steps to recover.
        reset = max(3 * every, self.min_reset_interval, round(self.reset_every * s))
        if 2 * reset > until:
            # Too short for spaced resets: keep one, half-way through densification. Without it
            # the floaters it clears stay, and screen/world-size pruning (after the first reset)
            # never starts (bench/README.md, "Reconstruction").
            reset = max(3 * every, until // 2)
        return {
            "densify_from": max(every, round(self.densify_from * s)),
            "densify_until": until,
            "densify_every": every,
            "reset_every": reset,
            "sh_increase_every": max(1, round(self.sh_increase_every * s)),
        }


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
    return torch.optim.Adam([{"params": [params[k]], "lr": lr, "name": k} for k, lr in lrs.items()], eps=1e-15)


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
    """The densification strategy of cfg.strategy for a model of n Gaussians."""
    if cfg.strategy == "mcmc":
        return MCMCStrategy(cfg.mcmc_config())
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
        run.note(f"{out_dir}: starting from {len(model)} Gaussians ({_describe_init(init_info)})")
        params = model.trainable()
    else:
        init_info = json.loads(run.saved["init"])
        params = {k: torch.nn.Parameter(v.clone()) for k, v in run.saved["params"].items()}
    optimizer = _make_optimizer(params, cfg, extent)
    strategy = _strategy(cfg, extent, sched, params["means"].shape[0])
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
    run.remove_checkpoint()
    return metrics


__all__ = ["TrainConfig", "evaluate_views", "train_gaussians"]
